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
use outage::{OwnServer, Server as _};
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

    // Memcached has no way to list its keys a page at a time
    // (`lru_crawler metadump` dumps every key of the cache in one go).
    fn walks_sessions(&self) -> bool {
        false
    }

    fn caps_logins_atomically(&self) -> bool {
        false
    }

    /// Memcached expires items by itself, unreported.
    fn reports_expired_logins(&self) -> bool {
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

/// The seconds `item` has left to live, asked of the server with
/// `mg <item> t`; `None` if no server holds it.
async fn time_left(item: &str) -> Option<i64> {
    let mut found = None;
    for addr in servers() {
        let reply = raw(&addr, format!("mg {item} t\r\n").as_bytes()).await;
        if let Some(t) = reply.first().and_then(|l| l.strip_prefix("HD t")) {
            found = t.trim().parse::<i64>().ok();
        }
    }
    found
}

fn index_item(prefix: &str, user: &str) -> String {
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(user.as_bytes()));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}:u:{hex}")
}

/// A record of `user` expiring `lifetime` from now, holding `bytes` of data.
fn record_of(user: &str, lifetime: time::Duration, bytes: usize) -> multisession::Record {
    let now = time::OffsetDateTime::now_utc();
    multisession::Record {
        data: serde_json::Map::from_iter([("blob".to_owned(), serde_json::json!("x".repeat(bytes)))]),
        meta: multisession::Meta {
            user_id: Some(user.to_owned()),
            created_at: now,
            last_active_at: now,
            expires_at: now + lifetime,
            absolute_expires_at: None,
            permanent: false,
            device: Default::default(),
            siblings: Default::default(),
        },
    }
}

/// Index entries are rounded up to this grain (seconds).
const GRAIN: i64 = 600;

/// A session item expires in Memcached when its session does (to the
/// second, plus the one Memcached's clock may lag), and its user's index
/// after it, but no more than a grain (and the rounding up to it) after:
/// asked of the server with `mg <key> t`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_expire_with_their_sessions_and_the_index_outlives_them() {
    let mc = memcached().await;
    let sessions = Sessions::new(mc.store(), SessionConfig::default()).expect("valid");
    let session = sessions.session([], Default::default());
    session.login("expiring").await.expect("login");
    session.commit().await.expect("commit");
    let key = mc.store.user_sessions("expiring").await.expect("listed")[0].key;
    let day = 24 * 3600;
    let session_ttl = time_left(&format!("{}:s:{key}", mc.prefix)).await.expect("the session is on a server");
    assert!((day - 30..=day + 2).contains(&session_ttl), "a day's session lives {session_ttl}s in Memcached");
    let index_ttl = time_left(&index_item(&mc.prefix, "expiring")).await.expect("the index is on a server");
    assert!(index_ttl > session_ttl, "the index ({index_ttl}s) would expire before its session ({session_ttl}s)");
    assert!(
        index_ttl <= session_ttl + 2 * GRAIN + 2,
        "the index ({index_ttl}s) outlives its only session ({session_ttl}s) by more than a grain"
    );
}

/// The index's expiry follows its latest session: it lives a grain past
/// the longest, shrinks when that one ends, and the index item is deleted
/// (not kept empty) when the last one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_expires_after_its_latest_session_and_an_empty_index_is_deleted() {
    let mc = memcached().await;
    let store = mc.store();
    let index = index_item(&mc.prefix, "ending");
    let short = multisession::SessionId::generate().expect("rng").store_key();
    let long = multisession::SessionId::generate().expect("rng").store_key();
    store.create(&short, &record_of("ending", time::Duration::hours(1), 0)).await.expect("created");
    store.create(&long, &record_of("ending", time::Duration::days(3), 0)).await.expect("created");
    let (hour, days) = (3600, 3 * 24 * 3600);
    let ttl = time_left(&index).await.expect("an index");
    assert!((days..=days + 2 * GRAIN + 2).contains(&ttl), "with a 3-day session the index lives {ttl}s");
    assert!(store.delete(&long).await.expect("deleted"));
    let ttl = time_left(&index).await.expect("an index");
    assert!((hour..=hour + 2 * GRAIN + 2).contains(&ttl), "with a 1-hour session left the index lives {ttl}s");
    assert!(store.delete(&short).await.expect("deleted"));
    assert_eq!(time_left(&index).await, None, "an index with no session left is kept");
    assert!(mc.index_lines("ending").await.is_empty());
}

/// A session created while its user's only other session is deleted is
/// never lost from the index: the delete that empties the index is
/// CAS-checked, and an append never recreates a deleted index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_an_index_never_loses_a_concurrent_new_entry() {
    let mc = memcached().await;
    let store = mc.store();
    let mut previous = multisession::SessionId::generate().expect("rng").store_key();
    store.create(&previous, &record_of("racing", time::Duration::hours(1), 0)).await.expect("created");
    for round in 0..200 {
        let next = multisession::SessionId::generate().expect("rng").store_key();
        let record = record_of("racing", time::Duration::hours(1), 0);
        let (deleted, created) = tokio::join!(store.delete(&previous), store.create(&next, &record));
        assert!(deleted.expect("deleted"));
        created.expect("created");
        let listed: Vec<_> = store.user_sessions("racing").await.expect("listed").into_iter().map(|s| s.key).collect();
        assert_eq!(listed, [next], "round {round}: the new session is not listed");
        previous = next;
    }
}

/// A record over the item size limit is refused as `TooLarge` before it is
/// sent, naming neither key nor value: never `Unavailable` (503). This holds
/// for the default limit (Memcached's 1 MiB), for a smaller one configured,
/// and when the server's own `-I` is below the configured limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_over_the_item_size_are_refused_as_too_large_not_unavailable() {
    let mc = memcached().await;
    let store = mc.store();
    let check = |e: multisession::Error, key: &StoreKey| {
        assert_eq!(e.kind(), multisession::ErrorKind::TooLarge, "{e}");
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&key.to_string()) && !text.contains("xxxx"), "the error shows the key or value: {text}");
    };
    let key = multisession::SessionId::generate().expect("rng").store_key();
    let err = store.create(&key, &record_of("large", time::Duration::HOUR, 2 << 20)).await.expect_err("refused");
    check(err, &key);
    assert!(store.load(&key).await.expect("loads").is_none(), "a refused record was stored");
    // Growing a record past the limit is refused as well, and leaves it as it was.
    store.create(&key, &record_of("large", time::Duration::HOUR, 10)).await.expect("a small record is stored");
    let mut grow = multisession::Change::new(time::OffsetDateTime::now_utc(), time::OffsetDateTime::now_utc());
    grow.expires_at += time::Duration::HOUR;
    grow.set.insert("more".to_owned(), serde_json::json!("x".repeat(1 << 20)));
    check(store.apply(&key, &grow).await.expect_err("refused"), &key);
    assert!(store.load(&key).await.expect("loads").expect("still there").data.get("more").is_none());
    // Through the engine: the commit fails as TooLarge.
    let sessions = Sessions::new(mc.store(), SessionConfig::default()).expect("valid");
    let session = sessions.session([], Default::default());
    session.insert("blob", "x".repeat(2 << 20)).await.expect("inserted");
    let err = session.commit().await.expect_err("refused");
    assert_eq!(err.kind(), multisession::ErrorKind::TooLarge, "{err}");

    // A smaller limit, configured.
    let small = MemcachedStore::connect(servers())
        .expect("server addresses")
        .with_key_prefix(&mc.prefix)
        .with_max_item_size(64 << 10)
        .expect("a valid size");
    let key = multisession::SessionId::generate().expect("rng").store_key();
    check(small.create(&key, &record_of("large", time::Duration::HOUR, 100 << 10)).await.expect_err("refused"), &key);
    small.create(&key, &record_of("large", time::Duration::HOUR, 10 << 10)).await.expect("a record that fits");
    assert_eq!(
        MemcachedStore::connect(servers()).expect("addresses").with_max_item_size(10).err().map(|e| e.kind()),
        Some(multisession::ErrorKind::Config)
    );

    // A server whose -I (64 KiB) is below the store's limit (the default).
    let server = OwnServer::new(|port, _| {
        let mut memcached = Command::new("memcached");
        memcached.args(["-u", "root", "-l", "127.0.0.1", "-U", "0", "-m", "16", "-p", &port.to_string()]);
        memcached.args(["-I", "64k", "-o", "slab_chunk_max=32768"]);
        memcached
    });
    let own = MemcachedStore::connect([format!("127.0.0.1:{}", server.port)]).expect("a server address");
    let key = multisession::SessionId::generate().expect("rng").store_key();
    check(own.create(&key, &record_of("large", time::Duration::HOUR, 100 << 10)).await.expect_err("refused"), &key);
    // The connection is still in step: the next command works.
    own.create(&key, &record_of("large", time::Duration::HOUR, 10)).await.expect("a small record is stored");
    assert!(own.load(&key).await.expect("loads").is_some());
}

/// Server addresses are `host:port`, the host a name or an IPv4 address:
/// an IPv6 address (async-memcached connects over IPv4 only) and a user or
/// password (Memcached has none) are refused as `Config` when the store is
/// made, and no message shows the user or password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_addresses_refuse_ipv6_and_user_information_without_showing_it() {
    use multisession::ErrorKind::Config;
    let ipv6 = MemcachedStore::connect(["[::1]:11211"]).expect_err("IPv6 is refused");
    assert_eq!(ipv6.kind(), Config);
    assert!(ipv6.to_string().contains("IPv4"), "{ipv6}");
    let opened = multisession::store::open("memcached://[::1]:11211", None).await.expect_err("IPv6 is refused");
    assert_eq!(opened.kind(), Config);
    for addr in
        ["app:s3cret@127.0.0.1:11211", "app:s3cret@cache", "app:s3cret@[::1]:11211", "cache:11211/?password=s3cret"]
    {
        let err = MemcachedStore::connect([addr]).expect_err("user information is refused");
        assert_eq!(err.kind(), Config);
        let text = format!("{err} {err:?}");
        assert!(!text.contains("s3cret") && !text.contains("app:"), "the error shows user information: {text}");
    }
    let opened = multisession::store::open("memcached://app:s3cret@127.0.0.1:11211", None).await.expect_err("refused");
    assert_eq!(opened.kind(), Config);
    assert!(!opened.to_string().contains("s3cret"), "{opened}");
}

/// After a Memcached restart every pooled connection is dead. A read that
/// meets one is retried once on a new connection, and the other dead
/// ones are let go, so no request fails; before, each dead connection
/// failed one request with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_memcached_restart_do_not_fail_on_dead_pooled_connections() {
    let mut server = OwnServer::new(|port, _| {
        let mut memcached = Command::new("memcached");
        memcached.args(["-u", "root", "-l", "127.0.0.1", "-U", "0", "-m", "16", "-p", &port.to_string()]);
        memcached
    });
    let addr = format!("127.0.0.1:{}", server.port);
    let store = Arc::new(MemcachedStore::connect([addr.as_str()]).expect("a server address"));
    let key = multisession::SessionId::generate().expect("rng").store_key();
    // Fill the pool: loads in parallel, each holding a connection while it runs.
    let loads = |store: Arc<MemcachedStore>| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let store = store.clone();
            tasks.spawn(async move {
                let mut failed = 0;
                for _ in 0..20 {
                    failed += usize::from(store.load(&key).await.is_err());
                }
                failed
            });
        }
        let mut failed = 0;
        while let Some(done) = tasks.join_next().await {
            failed += done.expect("a load task");
        }
        failed
    };
    assert_eq!(loads(store.clone()).await, 0);
    let opened = raw(&addr, b"stats\r\n")
        .await
        .iter()
        .find_map(|l| l.strip_prefix("STAT total_connections ").and_then(|n| n.trim().parse::<u64>().ok()))
        .expect("a connection count");
    assert!(opened > 2, "the pool held {opened} connections: too few to test");
    server.kill();
    server.start();
    assert_eq!(loads(store.clone()).await, 0, "loads failed on dead pooled connections");
    store.create(&key, &record_of("restarted", time::Duration::HOUR, 0)).await.expect("a write after the restart");
    assert_eq!(store.user_sessions("restarted").await.expect("listed").len(), 1);
}
