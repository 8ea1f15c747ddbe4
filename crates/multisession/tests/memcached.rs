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
    let store = MemcachedStore::connect(servers()).expect("server addresses").with_key_prefix(&prefix);
    Memcached { store: Arc::new(store), prefix, _turn: turn }
}

impl Memcached {
    /// The lines of a user's index item, read by hand from every server.
    async fn index_lines(&self, user: &str) -> Vec<String> {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(user.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let item = format!("{}:u:{hex}", self.prefix);
        let mut lines = Vec::new();
        for addr in servers() {
            let reply = raw(&addr, format!("get {item}\r\n").as_bytes()).await;
            // VALUE line, then the value's lines, then END.
            if reply.len() > 2 {
                lines.extend(reply[1..reply.len() - 1].iter().filter(|l| !l.is_empty()).cloned());
            }
        }
        lines
    }

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

    /// Memcached lets go of expired items on a clock of its own that ticks
    /// once a second: when cannot be observed exactly.
    async fn holds(&self, _key: &StoreKey) -> Option<bool> {
        None
    }

    async fn index_entries(&self, user: &str) -> Option<u64> {
        Some(self.index_lines(user).await.len() as u64)
    }

    async fn work(&self) -> Option<u64> {
        Some(self.commands().await)
    }

    fn caps_logins_atomically(&self) -> bool {
        false
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
    let store = MemcachedStore::connect([format!("127.0.0.1:{}", server.port)]).expect("a server address");
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid");
    // Memcached keeps nothing across a restart: the device starts anew.
    outage::outage_gives_503_then_recovery(&mut server, sessions, false).await;
}

/// The connections the servers hold open now, from `stats`.
async fn connections() -> u64 {
    let mut total = 0;
    for addr in servers() {
        for line in raw(&addr, b"stats\r\n").await {
            if let Some(n) = line.strip_prefix("STAT curr_connections ") {
                total += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// A user logged in 20 000 times on one device (each login replacing the
/// last), then touched 20 000 times: the index keeps a line or two and
/// logins still work. (The index used to gain a line per write until it
/// passed Memcached's 1 MB limit, after about 13 000 writes, and logins
/// answered 500.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_logins_and_touches_of_one_user_keep_the_index_small() {
    let mc = memcached().await;
    let config = SessionConfig::default().with_touch_interval(time::Duration::ZERO);
    let sessions = Sessions::new(mc.store(), config).expect("valid");
    let mut cookie: Option<String> = None;
    for _ in 0..20_000 {
        let header = cookie.clone().unwrap_or_default();
        let session = sessions.session([header.as_bytes()], Default::default());
        session.login("regular").await.expect("login");
        let set = session.commit().await.expect("commit").set_cookies;
        cookie = set.first().and_then(|c| c.split(';').next()).map(str::to_owned);
    }
    assert_eq!(mc.index_lines("regular").await.len(), 1, "20 000 logins left more than one index line");
    let store = mc.store();
    let key = store.user_sessions("regular").await.expect("listed")[0].key;
    let start = multisession::Change::new(time::OffsetDateTime::now_utc(), time::OffsetDateTime::now_utc()).expires_at;
    for i in 1..=20_000 {
        // Every touch moves the expiry by a minute, crossing the index's
        // ten-minute grain one touch in ten.
        let mut touch = multisession::Change::new(start, start + time::Duration::minutes(i));
        touch.user_id = Some("regular".into());
        store.apply(&key, &touch).await.expect("touch");
    }
    let lines = mc.index_lines("regular").await;
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(bytes < 16 * 1024, "after 20 000 touches the index is {bytes} bytes ({} lines)", lines.len());
    let header = cookie.expect("a cookie");
    let session = sessions.session([header.as_bytes()], Default::default());
    session.login("regular").await.expect("login");
    session.commit().await.expect("a login after 20 000 touches works");
    assert_eq!(store.user_sessions("regular").await.expect("listed").len(), 1);
}

/// Listing and clearing a user with 10 000 sessions opens no more than the
/// pool's connections per server, and other users keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_of_one_user_use_a_bounded_number_of_connections() {
    let mc = memcached().await;
    let store = mc.store();
    let record = |user: &str| multisession::Record {
        data: Default::default(),
        meta: multisession::Meta {
            user_id: Some(user.to_owned()),
            created_at: time::OffsetDateTime::now_utc(),
            last_active_at: time::OffsetDateTime::now_utc(),
            expires_at: time::OffsetDateTime::now_utc() + time::Duration::HOUR,
            absolute_expires_at: None,
            permanent: false,
            device: Default::default(),
            siblings: Default::default(),
        },
    };
    for _ in 0..10_000 {
        let key = multisession::SessionId::generate().expect("rng").store_key();
        store.create(&key, &record("many")).await.expect("created");
    }
    let before = connections().await;
    let (listed, peak) = tokio::join!(store.user_sessions("many"), async {
        let mut peak = 0;
        for _ in 0..20 {
            peak = peak.max(connections().await);
            let key = multisession::SessionId::generate().expect("rng").store_key();
            store.create(&key, &record("bystander")).await.expect("a bystander is served");
            assert!(store.load(&key).await.expect("a bystander loads").is_some());
        }
        peak
    });
    assert_eq!(listed.expect("listed").len(), 10_000);
    assert_eq!(store.delete_user_sessions("many", None).await.expect("cleared"), 10_000);
    let per_server = 16 * servers().len() as u64;
    assert!(peak.max(connections().await) <= before + per_server, "connections grew from {before} to {peak}");
}

/// A session item expires in Memcached when its session does (to the
/// second, plus the one Memcached's clock may lag), and its user's index no
/// earlier: asked of the server with `mg <key> t`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_expire_with_their_sessions_and_the_index_outlives_them() {
    let mc = memcached().await;
    let sessions = Sessions::new(mc.store(), SessionConfig::default()).expect("valid");
    let session = sessions.session([], Default::default());
    session.login("expiring").await.expect("login");
    session.commit().await.expect("commit");
    let key = mc.store.user_sessions("expiring").await.expect("listed")[0].key;
    let ttl = |item: String| async move {
        let mut found = None;
        for addr in servers() {
            let reply = raw(&addr, format!("mg {item} t\r\n").as_bytes()).await;
            if let Some(t) = reply.first().and_then(|l| l.strip_prefix("HD t")) {
                found = t.trim().parse::<i64>().ok();
            }
        }
        found.expect("the item is on a server")
    };
    let day = 24 * 3600;
    let session_ttl = ttl(format!("{}:s:{key}", mc.prefix)).await;
    assert!((day - 30..=day + 2).contains(&session_ttl), "a day's session lives {session_ttl}s in Memcached");
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(b"expiring"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let index_ttl = ttl(format!("{}:u:{hex}", mc.prefix)).await;
    assert!(index_ttl > session_ttl, "the index ({index_ttl}s) would expire before its session ({session_ttl}s)");
}
