//! Connecting the tests to the Redis servers `scripts/services.sh` starts,
//! and counting the commands they run.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use multisession::StoreKey;
use multisession::store::{RedisStore, Store};
use multisession::testing::Harness;
use tokio::sync::{Mutex, MutexGuard};

/// Waits until `condition` holds, for at most 10 s (a push crosses loopback
/// in well under a millisecond; the bound only turns a lost one into a
/// failure).
pub async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // A bound against a hang, not a guess at how long it takes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "waited a minute for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Command counts are server-wide: tests of one binary take turns.
static TURN: Mutex<()> = Mutex::const_new(());

pub fn standalone_url() -> String {
    std::env::var("MULTISESSION_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".to_owned())
}

pub fn cluster_urls() -> Vec<String> {
    std::env::var("MULTISESSION_REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6391,redis://127.0.0.1:6392,redis://127.0.0.1:6393".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn missing(what: &str, e: impl std::fmt::Display) -> ! {
    panic!(
        "no {what} ({e}): start it with `scripts/services.sh start`, or point MULTISESSION_REDIS_URL / MULTISESSION_REDIS_CLUSTER_URLS at one"
    )
}

/// A Redis for one test: the store under a prefix of its own, and a plain
/// connection to every node for writing by hand and reading statistics.
pub struct Redis {
    pub store: Arc<RedisStore>,
    pub prefix: String,
    nodes: Vec<redis::aio::MultiplexedConnection>,
    raw: Raw,
    _turn: MutexGuard<'static, ()>,
}

enum Raw {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

fn prefix() -> String {
    let key = multisession::SessionId::generate().expect("rng").store_key().to_string();
    format!("t{}", &key[..10])
}

async fn node(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap_or_else(|e| missing(url, e));
    client.get_multiplexed_async_connection().await.unwrap_or_else(|e| missing(url, e))
}

pub async fn standalone() -> Redis {
    on(&standalone_url()).await
}

/// `url` with the client-side cache on, for up to `size` sessions.
pub fn with_client_cache(url: &str, size: usize) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}client_cache={size}")
}

/// Standalone Redis through a store with the client-side cache on.
pub async fn cached() -> Redis {
    on(&with_client_cache(&standalone_url(), 1000)).await
}

/// The standalone Redis at `url` (client-side cache as the URL says).
pub async fn on(url: &str) -> Redis {
    let turn = TURN.lock().await;
    let prefix = prefix();
    let store = RedisStore::connect(url).await.unwrap_or_else(|e| missing("Redis", e)).with_key_prefix(&prefix);
    let conn = node(url).await;
    Redis { store: Arc::new(store), prefix, nodes: vec![conn.clone()], raw: Raw::Single(conn), _turn: turn }
}

pub async fn cluster() -> Redis {
    let turn = TURN.lock().await;
    let urls = cluster_urls();
    let prefix = prefix();
    let store = RedisStore::connect_cluster(&urls)
        .await
        .unwrap_or_else(|e| missing("Redis Cluster", e))
        .with_key_prefix(&prefix);
    let mut nodes = Vec::new();
    for url in &urls {
        nodes.push(node(url).await);
    }
    let client = redis::cluster::ClusterClient::new(urls.clone()).unwrap_or_else(|e| missing("Redis Cluster", e));
    let raw = client.get_async_connection().await.unwrap_or_else(|e| missing("Redis Cluster", e));
    Redis { store: Arc::new(store), prefix, nodes, raw: Raw::Cluster(raw), _turn: turn }
}

impl Redis {
    /// Runs one command by hand, routed to the node that holds its key.
    pub async fn raw<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match &self.raw {
            Raw::Single(c) => cmd.query_async(&mut c.clone()).await,
            Raw::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
        .expect("a hand-written Redis command")
    }

    /// Runs a pipeline by hand (standalone only).
    pub async fn raw_pipe(&self, pipe: &redis::Pipeline) {
        match &self.raw {
            Raw::Single(c) => pipe.query_async::<()>(&mut c.clone()).await.expect("a hand-written pipeline"),
            Raw::Cluster(_) => panic!("pipelines by hand are for standalone Redis"),
        }
    }

    /// Data commands run so far on every node, from `INFO commandstats`
    /// (leaving out the statistics, connection and cluster bookkeeping
    /// commands themselves).
    pub async fn commands(&self) -> u64 {
        let mut total = 0;
        for node in &self.nodes {
            let info: String =
                redis::cmd("INFO").arg("commandstats").query_async(&mut node.clone()).await.expect("INFO commandstats");
            for line in info.lines() {
                let Some((name, stats)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                    continue;
                };
                if ["info", "cluster", "client", "ping", "hello", "command", "readonly", "select"]
                    .iter()
                    .any(|skip| name == *skip || name.starts_with(&format!("{skip}|")))
                {
                    continue;
                }
                let calls =
                    stats.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|n| n.parse::<u64>().ok());
                total += calls.unwrap_or(0);
            }
        }
        total
    }

    /// Calls of one command (lower case, as `INFO commandstats` names it)
    /// so far on every node, inside scripts included.
    pub async fn calls_of(&self, command: &str) -> u64 {
        let mut total = 0;
        for node in &self.nodes {
            let info: String =
                redis::cmd("INFO").arg("commandstats").query_async(&mut node.clone()).await.expect("INFO commandstats");
            let prefix = format!("cmdstat_{command}:calls=");
            total += info
                .lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    pub fn session_key(&self, key: &StoreKey) -> String {
        format!("{}:s:{key}", self.prefix)
    }
}

#[async_trait::async_trait]
impl Harness for Redis {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        self.raw::<i64>(redis::cmd("HSET").arg(self.session_key(key)).arg("_meta").arg("{not json")).await;
        // A store with the client-side cache hears of another client's
        // write through Redis's push, a moment after the write's reply.
        if self.store.cache_stats().is_some() {
            wait_for("the cache to drop the corrupted session", || async { self.store.load(key).await.is_err() }).await;
        }
    }

    async fn holds(&self, key: &StoreKey) -> Option<bool> {
        Some(self.raw::<i64>(redis::cmd("EXISTS").arg(self.session_key(key))).await == 1)
    }

    async fn index_entries(&self, user: &str) -> Option<u64> {
        Some(self.raw::<u64>(redis::cmd("ZCARD").arg(format!("{}:u:{user}", self.prefix))).await)
    }

    async fn work(&self) -> Option<u64> {
        Some(self.commands().await)
    }

    /// One script on one node; a cluster counts, then creates.
    fn caps_logins_atomically(&self) -> bool {
        matches!(self.raw, Raw::Single(_))
    }

    /// Redis expires sessions by itself, unreported.
    fn reports_expired_logins(&self) -> bool {
        false
    }
}
