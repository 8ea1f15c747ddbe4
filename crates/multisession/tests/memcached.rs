//! The store conformance suite on two Memcached servers, how keys spread
//! over them, and a Memcached restart.

mod common;
#[path = "support/outage.rs"]
mod outage;

use std::process::Command;
use std::sync::Arc;

use multisession::StoreKey;
use multisession::store::{MemcachedStore, Store};
use multisession::testing::Harness;
use multisession::{SessionConfig, Sessions};
use outage::OwnServer;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_503_while_memcached_is_down_and_succeed_once_it_is_back() {
    let mut server = OwnServer::new(|port, _| {
        let mut memcached = Command::new("memcached");
        memcached.args(["-u", "root", "-l", "127.0.0.1", "-U", "0", "-m", "16", "-p", &port.to_string()]);
        memcached
    });
    let store = MemcachedStore::connect([format!("127.0.0.1:{}", server.port)]);
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid");
    // Memcached keeps nothing across a restart: the device starts anew.
    outage::outage_gives_503_then_recovery(&mut server, sessions, false).await;
}
