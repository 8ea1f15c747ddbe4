//! Stopping a backend mid-run: servers of a test's own, and the one outage
//! flow every store's test runs.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{Device, app, process_log};
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
fn free_port() -> u16 {
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

/// Logs a device in, stops the server: session routes answer 503 within the
/// store's timeout and others keep working; starts it again: requests
/// succeed on the same `Sessions`. Whether the session itself is still
/// there depends on whether the server keeps data across a restart.
pub async fn outage_gives_503_then_recovery(server: &mut dyn Server, sessions: Sessions, data_survives: bool) {
    let log = process_log();
    let mut device = Device::new(app(sessions), "ua", "127.0.0.1:1");
    assert!(succeeds(&mut device, "/login/23").await, "the server never answered");
    assert_eq!(device.get("/write").await.body, "n=1");
    let id = device.cookies.get("session").cloned().expect("logged in");
    // The store key: SHA-256 of the id's bytes.
    let key: [u8; 32] = {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&id).expect("an id is base64url");
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(bytes)).into()
    };

    server.kill();
    for path in ["/read", "/write", "/login/24", "/devices"] {
        let started = Instant::now();
        let reply = device.get(path).await;
        assert_eq!(reply.status, 503, "{path} while the server is down");
        assert!(started.elapsed() < Duration::from_secs(15), "{path} hung for {:?}", started.elapsed());
    }
    assert_eq!(device.get("/none").await.status, 200, "a route without the session failed");

    server.start();
    let probe = if data_survives { "/read" } else { "/write" };
    assert!(succeeds(&mut device, probe).await, "the store did not recover after the server came back");
    let expected = if data_survives { "user=23 n=1" } else { "user=anonymous n=1" };
    assert_eq!(device.get("/read").await.body, expected);

    // The outage was logged, and no line names the session.
    use base64::Engine as _;
    let text = log.text();
    assert!(text.contains("unavailable"), "no log line for the outage");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let forms = [id, hex, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)];
    for form in forms {
        assert!(!text.contains(&form), "a log line names the session:\n{text}");
    }
}
