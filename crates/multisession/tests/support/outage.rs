//! Stopping a backend mid-run: servers of a test's own, and the one outage
//! flow every store's test runs.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::{App, Device, app, process_log};
use multisession::Sessions;

/// How long a test waits for a server to start or a store to recover: a
/// bound against a hang, never a guess at how long that takes.
const PATIENCE: Duration = Duration::from_secs(60);

/// A backend a test can stop and start again.
pub trait Server {
    fn start(&mut self);
    fn kill(&mut self);
}

/// How to start a server: its command for a port and a data folder.
type Launch = Box<dyn Fn(u16, &Path) -> Command + Send>;
/// Whether the server on a port is ours and answers.
type Probe = Box<dyn Fn(u16) -> bool + Send>;

/// A server process of the test's own on a free loopback port.
pub struct OwnServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    command: Launch,
    probe: Probe,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts `command(port, dir)` on a free port and waits until it
    /// answers there (see [`probe_for`]).
    pub fn new(command: impl Fn(u16, &Path) -> Command + Send + 'static) -> Self {
        let probe = probe_for(command(0, Path::new("")).get_program());
        Self::with_probe(command, probe)
    }

    /// [`OwnServer::new`] with a probe of the caller's: whether the server on
    /// a port answers as only this one can.
    pub fn with_probe(
        command: impl Fn(u16, &Path) -> Command + Send + 'static,
        probe: impl Fn(u16) -> bool + Send + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut server = Self { port: 0, dir, command: Box::new(command), probe: Box::new(probe), child: None };
        start_on_a_free_port(|port| server.try_start(port));
        server
    }

    /// Spawns the server on `port` and waits until it answers the probe
    /// while still running; `false` if it exited first (the port was taken).
    fn try_start(&mut self, port: u16) -> bool {
        let mut child = (self.command)(port, self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server runs (scripts/services.sh installs it)");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answered = (self.probe)(port);
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if answered {
                self.port = port;
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not answer on port {port} within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A port nothing listens on now. Another process may take it before the
/// server binds it: see [`start_on_a_free_port`].
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Calls `start` with a free port, and again with another while it answers
/// `false`: the port was taken between our choosing it and the server
/// binding it.
pub fn start_on_a_free_port(mut start: impl FnMut(u16) -> bool) {
    if !(0..5).any(|_| start(free_port())) {
        panic!("the server did not start on any of five free ports");
    }
}

/// Calls `start` until it answers `true`, for up to a minute: a server
/// started again on its old port (the store under test knows no other)
/// fails while someone else holds that port.
pub fn start_again(port: u16, mut start: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !start() {
        assert!(Instant::now() < deadline, "the server did not start again on port {port} within a minute");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether the server on `port` answers `ask` with a reply holding `reply`.
/// A reply only that kind of server gives: nothing else on the port, nor
/// our own bytes echoed by a connection that met itself (connecting to a
/// free port in the ephemeral range can do that), gives it.
pub fn answers(port: u16, ask: &[u8], reply: &[u8]) -> bool {
    use std::io::{Read, Write};
    let wait = Some(Duration::from_secs(2));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
    else {
        return false;
    };
    if stream
        .set_read_timeout(wait)
        .and_then(|()| stream.set_write_timeout(wait))
        .and_then(|()| stream.write_all(ask))
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    while got.len() < 65536 {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
        if got.windows(reply.len()).any(|w| w == reply) {
            return true;
        }
    }
    false
}

/// `{ping: 1, $db: "admin"}` as a MongoDB `OP_MSG`.
const MONGO_PING: &[u8] =
    b"3\0\0\0\x07\0\0\0\0\0\0\0\xdd\x07\0\0\0\0\0\0\0\x1e\0\0\0\x10ping\0\x01\0\0\0\x02$db\0\x06\0\0\0admin\0\0";

/// The probe for a server program: a request, and a piece of the reply
/// that only that kind of server gives.
fn probe_for(program: &OsStr) -> impl Fn(u16) -> bool + Send + 'static {
    let name = Path::new(program).file_name().and_then(OsStr::to_str);
    let (ask, reply): (&'static [u8], &'static [u8]) = match name {
        Some("redis-server") => (b"PING\r\n", b"+PONG"),
        Some("memcached") => (b"version\r\n", b"VERSION "),
        // MariaDB speaks first: its greeting names it.
        Some("mariadbd") => (b"", b"-MariaDB"),
        // The Firestore emulator.
        Some("java") => (b"GET / HTTP/1.0\r\n\r\n", b"\r\n\r\nOk"),
        Some("nx-27017") => (MONGO_PING, b"ok\0"),
        _ => panic!("no probe for {program:?}: add one to probe_for"),
    };
    move |port| answers(port, ask, reply)
}

impl Server for OwnServer {
    fn start(&mut self) {
        let port = self.port;
        start_again(port, || self.try_start(port));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends GET `path` until it answers 200, for up to a minute.
async fn succeeds(device: &mut Device, path: &str) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while device.get(path).await.status != 200 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    true
}

/// The store key of a session id from a cookie: SHA-256 of the id's bytes.
pub fn store_key_of(id: &str) -> [u8; 32] {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id).expect("an id is base64url");
    sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(bytes)).into()
}

/// Where the server is, as the traffic sees it.
const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;

/// What one flowing device saw, by the phase its request started in.
#[derive(Default)]
pub struct Seen {
    pub ok: [u64; 3],
    pub unavailable: [u64; 3],
    /// Answers other than 200 and 503, or requests that took too long.
    pub wrong: Vec<String>,
    /// The highest count a write answered 200 for, started before the restart.
    pub acknowledged: i64,
    /// The count of the first write that answered 200 after the restart.
    pub first_after: Option<i64>,
}

/// Devices that keep writing to their own logged-in sessions, one request
/// after another, while the test stops the server and starts it again.
pub struct Traffic {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    pub seen: Vec<Arc<Mutex<Seen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Each device's session id, which no log line may hold.
    pub ids: Vec<String>,
}

impl Traffic {
    /// Logs in `n` devices (users `flow-0`…) and sets them writing.
    pub async fn start(app: &App, n: usize) -> Self {
        let mut devices = Vec::new();
        for i in 0..n {
            let mut device = Device::new(app.clone(), "flow", "127.0.0.1:2");
            assert!(succeeds(&mut device, &format!("/login/flow-{i}")).await, "the server never answered");
            devices.push(device);
        }
        Self::of(devices).await
    }

    /// Sets these logged-in devices writing.
    pub async fn of(devices: Vec<Device>) -> Self {
        let (phase, stop) = (Arc::new(AtomicU8::new(UP)), Arc::new(AtomicBool::new(false)));
        let (mut seen, mut tasks, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        for mut device in devices {
            ids.push(device.cookies.get("session").cloned().expect("logged in"));
            let mine = Arc::new(Mutex::new(Seen::default()));
            let (phase, stop, record) = (phase.clone(), stop.clone(), mine.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let (started_in, started) = (phase.load(Ordering::SeqCst), Instant::now());
                    let reply = device.get("/write").await;
                    let n = reply.body.strip_prefix("n=").and_then(|n| n.parse::<i64>().ok());
                    let unavailable = reply.status == 503;
                    {
                        let mut seen = record.lock().expect("not poisoned");
                        let took = started.elapsed();
                        if took > Duration::from_secs(15) {
                            seen.wrong.push(format!("a write took {took:?}"));
                        }
                        match (reply.status.as_u16(), n) {
                            (200, Some(n)) => {
                                seen.ok[usize::from(started_in)] += 1;
                                if started_in == BACK {
                                    seen.first_after.get_or_insert(n);
                                } else {
                                    seen.acknowledged = seen.acknowledged.max(n);
                                }
                            }
                            (503, _) => seen.unavailable[usize::from(started_in)] += 1,
                            (status, _) => seen.wrong.push(format!("{status}: {}", reply.body)),
                        }
                    }
                    if unavailable {
                        // Not hammering a dead server; no timing rests on it.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
            seen.push(mine);
        }
        let traffic = Self { phase, stop, seen, tasks, ids };
        traffic.wait_until("every device wrote while the server was up", |s| s.ok[UP as usize] >= 3).await;
        traffic
    }

    /// Waits until `condition` holds for every device, for up to a minute.
    pub async fn wait_until(&self, what: &str, condition: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !self.seen.iter().all(|s| condition(&s.lock().expect("not poisoned"))) {
            assert!(Instant::now() < deadline, "not within a minute: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server is being stopped: requests from now on are of the outage.
    pub fn going_down(&self) {
        self.phase.store(DOWN, Ordering::SeqCst);
    }

    /// The server answers again.
    pub fn back(&self) {
        self.phase.store(BACK, Ordering::SeqCst);
    }

    /// Stops the devices, and checks what they saw: only 200 and 503, each
    /// answer within 15 s, and, where the server keeps its data, every
    /// acknowledged write still counted after the restart.
    pub async fn finish(self, data_survives: bool) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("a device's requests do not panic");
        }
        for (i, seen) in self.seen.iter().enumerate() {
            let seen = seen.lock().expect("not poisoned");
            assert!(seen.wrong.is_empty(), "device {i} got wrong answers: {:?}", seen.wrong);
            if data_survives {
                let after = seen.first_after.expect("a write after the restart");
                assert!(
                    after > seen.acknowledged,
                    "device {i}: an acknowledged write was lost ({} acknowledged, then n={after})",
                    seen.acknowledged
                );
            }
        }
    }
}

/// Logs a device in, stops the server while other devices keep writing:
/// session routes answer 503 within the store's timeout and others keep
/// working; starts it again: requests succeed on the same `Sessions`, the
/// flowing ones included, by themselves. Whether the sessions are still
/// there depends on whether the server keeps data across a restart.
pub async fn outage_gives_503_then_recovery(server: &mut dyn Server, sessions: Sessions, data_survives: bool) {
    let log = process_log();
    let app = app(sessions);
    let mut device = Device::new(app.clone(), "ua", "127.0.0.1:1");
    assert!(succeeds(&mut device, "/login/23").await, "the server never answered");
    let traffic = Traffic::start(&app, 4).await;
    assert_eq!(device.get("/write").await.body, "n=1");
    let id = device.cookies.get("session").cloned().expect("logged in");
    let key = store_key_of(&id);

    traffic.going_down();
    server.kill();
    for path in ["/read", "/write", "/login/24", "/devices"] {
        let started = Instant::now();
        let reply = device.get(path).await;
        assert_eq!(reply.status, 503, "{path} while the server is down");
        assert!(started.elapsed() < Duration::from_secs(15), "{path} hung for {:?}", started.elapsed());
    }
    assert_eq!(device.get("/none").await.status, 200, "a route without the session failed");

    traffic.wait_until("every device got 503 while the server was down", |s| s.unavailable[DOWN as usize] >= 1).await;

    server.start();
    traffic.back();
    let probe = if data_survives { "/read" } else { "/write" };
    assert!(succeeds(&mut device, probe).await, "the store did not recover after the server came back");
    let expected = if data_survives { "user=23 n=1" } else { "user=anonymous n=1" };
    assert_eq!(device.get("/read").await.body, expected);
    traffic.wait_until("every device's writes succeed again by themselves", |s| s.ok[BACK as usize] >= 3).await;
    let ids = traffic.ids.clone();
    traffic.finish(data_survives).await;

    // The outage was logged, and no line names the session.
    use base64::Engine as _;
    let text = log.text();
    assert!(text.contains("unavailable"), "no log line for the outage");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let forms = [id, hex, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)].into_iter().chain(ids);
    for form in forms {
        assert!(!text.contains(&form), "a log line names the session:\n{text}");
    }
}
