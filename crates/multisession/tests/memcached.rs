//! The store conformance suite on two Memcached servers, how keys spread
//! over them, and a Memcached restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{Device, app};
use multisession::StoreKey;
use multisession::store::{MemcachedStore, Store};
use multisession::testing::Harness;
use multisession::{SessionConfig, Sessions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, MutexGuard};

/// Command counts are server-wide: tests take turns.
static TURN: Mutex<()> = Mutex::const_new(());

fn servers() -> Vec<String> {
    std::env::var("MULTISESSION_MEMCACHED_SERVERS")
        .unwrap_or_else(|_| "127.0.0.1:11290,127.0.0.1:11291".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Sends one text command to one server and returns the reply's lines up to
/// `END` (or the single reply line).
async fn raw(addr: &str, request: &[u8]) -> Vec<String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("no memcached at {addr} ({e}): start it with `scripts/services.sh start`"));
    let (read, mut write) = stream.into_split();
    write.write_all(request).await.expect("a memcached command is sent");
    let mut lines = BufReader::new(read).lines();
    let mut out = Vec::new();
    while let Some(line) = lines.next_line().await.expect("a memcached reply") {
        let done = line == "END" || !(line.starts_with("STAT") || line.starts_with("VALUE") || !out.is_empty());
        out.push(line);
        if done {
            break;
        }
    }
    out
}

struct Memcached {
    store: Arc<MemcachedStore>,
    prefix: String,
    _turn: MutexGuard<'static, ()>,
}

async fn memcached() -> Memcached {
    let turn = TURN.lock().await;
    let key = multisession::SessionId::generate().expect("rng").store_key().to_string();
    let prefix = format!("t{}", &key[..10]);
    let store = MemcachedStore::connect(servers()).with_key_prefix(&prefix);
    Memcached { store: Arc::new(store), prefix, _turn: turn }
}

impl Memcached {
    /// Every get, store and delete the servers have run so far.
    async fn commands(&self) -> u64 {
        let mut total = 0;
        for addr in servers() {
            for line in raw(&addr, b"stats\r\n").await {
                let mut parts = line.split(' ');
                let (Some("STAT"), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                if ["cmd_get", "cmd_set", "cmd_touch", "delete_hits", "delete_misses"].contains(&name) {
                    total += value.parse::<u64>().unwrap_or(0);
                }
            }
        }
        total
    }
}

#[async_trait::async_trait]
impl Harness for Memcached {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        let item = format!("{}:s:{key}", self.prefix);
        let value = b"{not json";
        let request = format!("set {item} 0 0 {}\r\n{}\r\n", value.len(), String::from_utf8_lossy(value));
        for addr in servers() {
            // Written to every server: only the one the ring picks is read.
            assert_eq!(raw(&addr, request.as_bytes()).await, ["STORED"]);
        }
    }

    async fn work(&self) -> Option<u64> {
        Some(self.commands().await)
    }
}

multisession::store_conformance_tests!(memcached());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_both_servers() {
    let mc = memcached().await;
    let sessions = Sessions::new(mc.store(), SessionConfig::default()).expect("valid");
    let mut keys = Vec::new();
    for _ in 0..40 {
        let session = sessions.session([], Default::default());
        session.login("spread").await.expect("login");
        session.commit().await.expect("commit");
    }
    for info in mc.store.user_sessions("spread").await.expect("listed") {
        keys.push(format!("{}:s:{}", mc.prefix, info.key));
    }
    assert_eq!(keys.len(), 40);
    let mut per_server = Vec::new();
    for addr in servers() {
        let mut found = 0;
        for key in &keys {
            if raw(&addr, format!("get {key}\r\n").as_bytes()).await.len() > 1 {
                found += 1;
            }
        }
        per_server.push(found);
    }
    assert_eq!(per_server.iter().sum::<usize>(), 40, "a session is on no server or on two: {per_server:?}");
    assert!(per_server.iter().all(|n| *n > 0), "the ring put everything on one server: {per_server:?}");
}

/// A memcached of the test's own, to kill and restart.
struct OwnMemcached {
    port: u16,
    child: Option<Child>,
}

impl OwnMemcached {
    fn new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let mut own = Self { port, child: None };
        own.start();
        own
    }

    fn start(&mut self) {
        let child = Command::new("memcached")
            .args(["-u", "root", "-l", "127.0.0.1", "-U", "0", "-m", "16", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("memcached runs (scripts/services.sh installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("memcached on port {} did not start", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnMemcached {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_503_while_memcached_is_down_and_succeed_once_it_is_back() {
    let mut server = OwnMemcached::new();
    let store = MemcachedStore::connect([format!("127.0.0.1:{}", server.port)]);
    let mut device =
        Device::new(app(Sessions::new(store, SessionConfig::default()).expect("valid")), "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    assert_eq!(device.get("/write").await.body, "n=1");
    server.kill();
    for path in ["/read", "/write", "/devices"] {
        assert_eq!(device.get(path).await.status, 503, "{path} while memcached is down");
    }
    server.start();
    // Memcached keeps nothing across a restart: the device starts anew.
    assert_eq!(device.get("/write").await.status, 200);
    assert_eq!(device.get("/read").await.body, "user=anonymous n=1");
}
