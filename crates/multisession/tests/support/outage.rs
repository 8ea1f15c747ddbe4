//! Stopping a backend mid-run: servers of a test's own, and the one outage
//! flow every store's test runs.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::common::{Device, app, process_log};
use multisession::Sessions;

/// A backend a test can stop and start again.
pub trait Server {
    fn start(&mut self);
    fn kill(&mut self);
}

/// How to start a server: its command for a port and a data folder.
type Launch = Box<dyn Fn(u16, &Path) -> Command + Send>;

/// A server process of the test's own on a free loopback port.
pub struct OwnServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    command: Launch,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts `command(port, dir)` on a free port and waits until it
    /// answers there. A port someone else took between our choosing it and
    /// the server binding it makes the server exit: then another is chosen.
    pub fn new(command: impl Fn(u16, &Path) -> Command + Send + 'static) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut server = Self { port: 0, dir, command: Box::new(command), child: None };
        for _ in 0..5 {
            server.port =
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            if server.try_start() {
                return server;
            }
        }
        panic!("the server did not start on any of five free ports");
    }

    /// Spawns the server and waits until it answers on its port; `false`
    /// if it exited first.
    fn try_start(&mut self) -> bool {
        let mut child = (self.command)(self.port, self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the server runs (scripts/services.sh installs it)");
        // A slow start (a JVM on a loaded machine) is waited for, up to a
        // minute: a bound against hanging, not a guess at the start time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                let _ = child.wait();
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nothing answered on port {} within a minute", self.port);
    }
}

/// Waits until something answers on `port`, up to a minute.
pub fn wait_for(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing answered on port {port} within a minute");
}

impl Server for OwnServer {
    /// Starts the server again on its port (the store under test knows no
    /// other); a start that exits at once, as while the old process's port
    /// is still being released, is retried.
    fn start(&mut self) {
        for _ in 0..20 {
            if self.try_start() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!("the server did not start again on port {}", self.port);
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

/// Logs a device in, stops the server: session routes answer 503 within the
/// store's timeout and others keep working; starts it again: requests
/// succeed on the same `Sessions`. Whether the session itself is still
/// there depends on whether the server keeps data across a restart.
pub async fn outage_gives_503_then_recovery(server: &mut dyn Server, sessions: Sessions, data_survives: bool) {
    let log = process_log();
    let mut device = Device::new(app(sessions), "ua", "127.0.0.1:1");
    let mut ready = false;
    for _ in 0..60 {
        if device.get("/login/23").await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(ready, "the server never answered");
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
        let started = std::time::Instant::now();
        let reply = device.get(path).await;
        assert_eq!(reply.status, 503, "{path} while the server is down");
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{path} hung for {:?}", started.elapsed());
    }
    assert_eq!(device.get("/none").await.status, 200, "a route without the session failed");

    server.start();
    let probe = if data_survives { "/read" } else { "/write" };
    let mut recovered = false;
    for _ in 0..60 {
        if device.get(probe).await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(recovered, "the store did not recover after the server came back");
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
