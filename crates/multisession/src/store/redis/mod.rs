//! Sessions in Redis, standalone or Redis Cluster.

mod cache;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisError, Script, Value as Reply};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

pub use self::cache::CacheStats;
use self::cache::ClientCache;
use super::{ExpiredBatch, PageCursor, SessionInfo, SessionsPage, Store};
use crate::record::{from_millis, to_millis};
use crate::{Change, Device, Error, ErrorKind, Meta, Record, Result, SessionLimit, StoreKey};

/// How long a connection attempt or a reply may take before the store
/// answers `Unavailable`.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The version of the hash layout, kept in each session's `_v` field.
const LAYOUT_VERSION: &str = "1";

/// The most sessions a `client_cache` may hold.
const MAX_CLIENT_CACHE: usize = 10_000_000;

/// Reads a session hash for [`Store::sessions_page`]: its fields, nothing
/// for a key gone meanwhile, 0 for a key of another type.
const READ_IF_HASH: &str = "local t = redis.call('TYPE', KEYS[1]).ok \
    if t == 'hash' then return redis.call('HGETALL', KEYS[1]) elseif t == 'none' then return false end return 0";

/// The most nodes of a cluster [`Store::sessions_page`] reads from
/// `CLUSTER NODES` (Redis Cluster allows about a thousand).
const MAX_CLUSTER_NODES: usize = 2_000;

/// The most commands [`RedisStore::each`] has in flight on a cluster.
const CLUSTER_IN_FLIGHT: usize = 64;

/// How often a cached store asks Redis for its connection's id: a
/// connection that does not answer drops the cache (its pushes may be lost),
/// and one replaced without a word is noticed by its new id.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Sessions in Redis: one hash per session, expiring natively, and one sorted
/// set per user indexing that user's sessions by expiry.
///
/// Layout, under a key prefix (default `session`):
/// - `{prefix}:s:{store key}` — a hash: `_v` (layout version), `_user`,
///   `_meta` (creation time, absolute expiry, device, as JSON), `_la` and
///   `_exp` (last activity and expiry, Unix ms), `_ix` (the index score),
///   `_ver` (counts the session's writes), `_perm`, `_sib` (the device's
///   other session parts, as JSON), and one field `.{name}` per session key
///   holding its JSON value. `PEXPIREAT` is the session's expiry.
/// - `{prefix}:u:{user}` — a sorted set of the user's store keys, each
///   scored by its session's expiry, itself expiring with its last session.
///
/// Every write is one Lua script, so a change to a session that was deleted
/// meanwhile finds no hash and reports `Gone`: nothing is recreated. Index
/// scores never fall below a session's real expiry (the index moves first,
/// or in the same script), so members whose score has passed are pruned by
/// score; members whose hash is gone are pruned when met. A score runs a
/// grain ahead of its session's expiry (`_ix` keeps it), so that on a
/// standalone Redis a session written on every request updates its index
/// once per grain, not per write (a cluster still moves the index first on
/// every write). Listing or
/// clearing a user reads that user's sorted set and hashes: a fixed number
/// of round trips whatever the size of the store, never a `SCAN`.
///
/// A login counts the user's sessions, evicts and creates in one script on a
/// standalone Redis, so the session cap holds under concurrent logins.
///
/// On Redis Cluster a session's hash and its user's index live in different
/// hash slots, so they cannot change in one atomic step: the index is
/// written first (a login is indexed before its session exists; a touch
/// raises the score before the session's expiry) and, for a new session,
/// again once it exists (a logout-all that ran in between and dropped the
/// entry cannot leave the session unlisted); commands for several slots go
/// out concurrently, and an index entry left behind by a failure is pruned
/// when met. The session cap is counted, then applied, so logins at the
/// same moment may pass it (by one session each; see
/// [`Store::create_login`](crate::store::Store::create_login)).
///
/// A Redis that is down answers `Unavailable` within two seconds; the
/// connection is re-established on the next call once Redis is back.
///
/// # Client-side cache
///
/// `client_cache=N` in a standalone Redis URL keeps up to `N` sessions this
/// process read in its memory, so that reading a hot session costs no round
/// trip and a request that writes it costs one. Redis tells the process
/// when another client changes or deletes a cached session (RESP3
/// `CLIENT TRACKING`, Redis 6 or later; tested on 7.0), and the process
/// applies its own writes to the cache itself:
///
/// - A write, logout or revoke made by this process is seen by its next
///   request at once. One made by another process drops the cached copy
///   when Redis's push arrives, a moment after that write's reply; a
///   request served in between still sees the session as it was.
/// - A lost connection drops the whole cache, since pushes sent while it was
///   down are lost. The store also asks Redis for its connection's id every
///   second: no answer within two seconds, or a new connection, drops the
///   cache too, so a silently broken connection serves cached sessions for
///   at most about three seconds.
/// - Sessions whose stored hash exceeds 16 KiB are never cached; the least
///   recently used go first. Parsed, a cached session takes a few times its
///   stored size, so budget `N` × 16 KiB × a few.
/// - Redis remembers every key the process read or missed (unknown cookies
///   included) in its tracking table (`tracking-table-max-keys`; when full,
///   it drops old keys by pushing invalidations). Hits no longer touch the
///   Redis key, so under a `volatile-lru` or `volatile-lfu` eviction policy
///   Redis would see the hottest sessions as idle: give Redis the memory
///   for its sessions, or use `noeviction`.
///
/// [`RedisStore::cache_stats`] counts hits, misses and invalidations. Redis
/// Cluster has no client-side cache here: `client_cache` in a cluster URL is
/// refused.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::RedisStore;
/// let standalone = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let cluster = RedisStore::connect_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).await?;
/// let cached = RedisStore::connect("redis://127.0.0.1:6379/?client_cache=10000").await?;
/// # let _ = (standalone, cluster, cached);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    /// The client-side cache, on a standalone Redis with `client_cache`.
    cache: Option<Arc<ClientCache>>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.conn {
            Conn::Single(_) => "standalone",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("mode", &mode)
            .field("prefix", &self.prefix)
            .field("client_cache", &self.cache.is_some())
            .finish()
    }
}

/// The parts of [`Meta`] that never change after creation.
#[derive(Serialize, Deserialize)]
struct Fixed {
    #[serde(with = "crate::record::millis")]
    created_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    absolute_expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
}

/// Adds or raises an index entry and keeps the index alive as long as its
/// longest session. KEYS[n]: the index; ARGV: score, member, `XX` to only
/// update an entry that exists.
macro_rules! index_upsert {
    ($key:literal, $score:literal, $member:literal, $mode:literal) => {
        concat!(
            "if ",
            $mode,
            " == 'XX' then redis.call('ZADD', ",
            $key,
            ", 'XX', 'GT', ",
            $score,
            ", ",
            $member,
            ") else redis.call('ZADD', ",
            $key,
            ", 'GT', ",
            $score,
            ", ",
            $member,
            ") end\n",
            "local top = redis.call('ZRANGE', ",
            $key,
            ", -1, -1, 'WITHSCORES')\n",
            "if top[2] then redis.call('PEXPIREAT', ",
            $key,
            ", top[2]) end\n"
        )
    };
}

/// Lua: `chunked(cmd, key, first, last)` runs `cmd` on `key` with
/// `ARGV[first..=last]`, 1 000 arguments at a time (an even number, so
/// field/value pairs stay whole): Lua's `unpack` takes at most about 8 000,
/// and a session may have more keys than that.
macro_rules! lua_chunked {
    () => {
        "local function chunked(cmd, key, first, last)\n\
           for i = first, last, 1000 do\n\
             redis.call(cmd, key, unpack(ARGV, i, math.min(i + 999, last)))\n\
           end\n\
         end\n"
    };
}

/// KEYS: index. ARGV: score, member, mode.
const INDEX: &str = concat!(index_upsert!("KEYS[1]", "ARGV[1]", "ARGV[2]", "ARGV[3]"), "return 1");

/// KEYS: session[, index]. ARGV: expiry, member, index score, then
/// field/value pairs (`_ix` among them).
const CREATE: &str = concat!(
    lua_chunked!(),
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n",
    "if KEYS[2] then\n",
    index_upsert!("KEYS[2]", "ARGV[3]", "ARGV[2]", "''"),
    "end\n",
    "chunked('HSET', KEYS[1], 4, #ARGV)\n",
    "redis.call('PEXPIREAT', KEYS[1], ARGV[1])\n",
    "return 1"
);

/// KEYS: session[, index]. ARGV: expiry, member, now (ms), clear (0/1),
/// number of fields to remove, index score, track (0/1), the fields to
/// remove, then field/value pairs to set. Returns 0 if the session is gone,
/// else its new `_ver`. A session past its `_exp` by the application's clock
/// is gone, whatever Redis's own clock says. The index is visited only when
/// the new expiry passes the score it holds (`_ix`, see [`index_score`]):
/// most writes leave it alone. With `track`, the script reads the hash last:
/// Redis stops tracking a key for the client cache once it is written, and
/// that read has it tracked again.
const APPLY: &str = concat!(
    lua_chunked!(),
    "local f = redis.call('HMGET', KEYS[1], '_exp', '_ix', '_ver')\n",
    "if not f[1] or (tonumber(f[1]) or 0) <= tonumber(ARGV[3]) then return 0 end\n",
    // `_ix` and `_ver` join the fields set below: one HSET, not three.
    "if tonumber(ARGV[1]) > (tonumber(f[2]) or 0) then\n",
    "  if KEYS[2] then\n",
    index_upsert!("KEYS[2]", "ARGV[6]", "ARGV[2]", "'XX'"),
    "  end\n",
    "  table.insert(ARGV, '_ix')\n",
    "  table.insert(ARGV, ARGV[6])\n",
    "end\n",
    // A `_ver` that is not a small count (written by hand) starts again.
    "local version = (tonumber(f[3]) or 0) + 1\n",
    "if version < 1 or version > 4503599627370496 or version % 1 ~= 0 then version = 1 end\n",
    "table.insert(ARGV, '_ver')\n",
    "table.insert(ARGV, string.format('%d', version))\n",
    "if ARGV[4] == '1' then\n",
    "  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do\n",
    "    if string.sub(f, 1, 1) == '.' then redis.call('HDEL', KEYS[1], f) end\n",
    "  end\n",
    "end\n",
    "local n = tonumber(ARGV[5])\n",
    "chunked('HDEL', KEYS[1], 8, 7 + n)\n",
    "chunked('HSET', KEYS[1], 8 + n, #ARGV)\n",
    "redis.call('PEXPIREAT', KEYS[1], ARGV[1])\n",
    "if ARGV[7] == '1' then redis.call('HEXISTS', KEYS[1], '_ver') end\n",
    "return version"
);

/// KEYS: index. ARGV: member/score pairs as read. Removes each member whose
/// score is still the one read: a session indexed again meanwhile (a
/// cluster's new session, indexed once more once it exists) stays.
const UNINDEX: &str = concat!(
    "local n = 0\n",
    "for i = 1, #ARGV, 2 do\n",
    "  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 1]) then\n",
    "    n = n + redis.call('ZREM', KEYS[1], ARGV[i])\n",
    "  end\n",
    "end\n",
    "return n"
);

static INDEX_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(INDEX));
static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE));
static APPLY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY));
static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE));
static LOGIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LOGIN));
static UNINDEX_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(UNINDEX));

/// KEYS: session. ARGV: now (ms). Deletes it; returns whether a live
/// session was deleted, and its user.
const DELETE: &str = "local u = redis.call('HGET', KEYS[1], '_user')\n\
                      local exp = redis.call('HGET', KEYS[1], '_exp')\n\
                      local n = redis.call('DEL', KEYS[1])\n\
                      local live = 0\n\
                      if n == 1 and exp and tonumber(exp) > tonumber(ARGV[1]) then live = 1 end\n\
                      return {live, u or ''}";

/// The fields a listing reads of each session hash.
const INFO_FIELDS: [&str; 7] = ["_v", "_meta", "_user", "_la", "_exp", "_perm", "_sib"];

/// A login within the user's session cap, on one node. KEYS: session, index.
/// ARGV: expiry, member, index score, now, max, `refuse` or `evict`, the
/// member it replaces (or ''), the session key prefix, then field/value
/// pairs.
/// Returns {0} if the session exists, {-2} if the one it replaces is gone,
/// {-1, count} if refused, else {1, evicted sessions' info fields (member
/// first), ...}. It reads the hashes its index names, which only a single
/// node allows.
const LOGIN: &str = concat!(
    lua_chunked!(),
    "if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end\n",
    "if ARGV[7] ~= '' then\n",
    "  local exp = redis.call('HGET', ARGV[8] .. ARGV[7], '_exp')\n",
    "  if not exp or (tonumber(exp) or 0) <= tonumber(ARGV[4]) then return {-2} end\n",
    "end\n",
    "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])\n",
    "local live = {}\n",
    "for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do\n",
    "  if m ~= ARGV[2] and m ~= ARGV[7] then\n",
    "    local f = redis.call('HMGET', ARGV[8] .. m, '_la', '_exp')\n",
    "    if not f[1] then redis.call('ZREM', KEYS[2], m)\n",
    "    elseif (tonumber(f[2]) or 0) > tonumber(ARGV[4]) then table.insert(live, {m, tonumber(f[1]) or 0}) end\n",
    "  end\n",
    "end\n",
    "local max = tonumber(ARGV[5])\n",
    "local out = {1}\n",
    "if #live >= max then\n",
    "  if ARGV[6] == 'refuse' then return {-1, #live} end\n",
    "  table.sort(live, function(a, b) return a[2] < b[2] end)\n",
    "  for i = 1, #live + 1 - max do\n",
    "    local h = ARGV[8] .. live[i][1]\n",
    "    local f = redis.call('HMGET', h, '_v', '_meta', '_user', '_la', '_exp', '_perm', '_sib')\n",
    "    table.insert(f, 1, live[i][1])\n",
    "    table.insert(out, f)\n",
    "    redis.call('DEL', h)\n",
    "    redis.call('ZREM', KEYS[2], live[i][1])\n",
    "  end\n",
    "end\n",
    index_upsert!("KEYS[2]", "ARGV[3]", "ARGV[2]", "''"),
    "chunked('HSET', KEYS[1], 9, #ARGV)\n",
    "redis.call('PEXPIREAT', KEYS[1], ARGV[1])\n",
    "return out"
);

impl RedisStore {
    /// Connects to a standalone Redis (`redis://[:password@]host:port[/db]`,
    /// or `rediss://` with the `redis-tls` feature). `?client_cache=N` turns
    /// on the [client-side cache](RedisStore#client-side-cache) for up to `N`
    /// sessions.
    ///
    /// # Errors
    ///
    /// `Config` for a URL that does not parse or a `client_cache` that is
    /// not a number from 1 to 10 000 000; `Unavailable` if Redis does not
    /// answer.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let store = multisession::store::RedisStore::connect("redis://127.0.0.1:6379/2").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        let (info, cache) = connection_info(url)?;
        let client = redis::Client::open(info)
            .map_err(|e| Error::config(format!("redis url: {}", super::scrub(&e.to_string(), url))))?;
        Self::managed(client, cache).await
    }

    /// Connects to a standalone Redis over TLS (`rediss://`), trusting the
    /// certificate authority in `root_ca_pem` instead of the system's, as a
    /// private deployment needs. (Plain [`RedisStore::connect`] with a
    /// `rediss://` URL trusts the system's roots.)
    ///
    /// # Errors
    ///
    /// `Config` for a URL or certificate that does not parse; `Unavailable`
    /// if Redis does not answer or the TLS handshake fails.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let ca = std::fs::read("/etc/redis/ca.pem").map_err(|e| multisession::Error::config("ca").with_source(e))?;
    /// let store = multisession::store::RedisStore::connect_tls("rediss://redis.internal:6380", &ca).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis-tls")]
    pub async fn connect_tls(url: &str, root_ca_pem: &[u8]) -> Result<Self> {
        let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_ca_pem.to_vec()) };
        let (info, cache) = connection_info(url)?;
        let client = redis::Client::build_with_tls(info, certificates).map_err(|e| {
            Error::config(format!("redis TLS url or certificate: {}", super::scrub(&e.to_string(), url)))
        })?;
        Self::managed(client, cache).await
    }

    async fn managed(client: redis::Client, cache_size: Option<NonZeroUsize>) -> Result<Self> {
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let cache = cache_size.map(|size| Arc::new(ClientCache::new(size)));
        if let Some(cache) = &cache {
            // Weak: the connection must not keep the cache alive, nor the
            // cache the connection, once the store is dropped.
            let cache = Arc::downgrade(cache);
            config = config.set_push_sender(move |push: redis::PushInfo| {
                if let Some(cache) = cache.upgrade() {
                    cache.on_push(&push);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        }
        let manager = ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?;
        if let Some(cache) = &cache {
            heartbeat(Arc::downgrade(cache), manager.clone());
        }
        Ok(Self { conn: Conn::Single(manager), prefix: "session".to_owned(), cache })
    }

    /// What the [client-side cache](RedisStore#client-side-cache) has done;
    /// `None` when it is off.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let store = multisession::store::RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// assert_eq!(store.cache_stats(), None);
    /// # Ok(()) }
    /// ```
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|cache| cache.stats())
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs.
    ///
    /// # Errors
    ///
    /// `Config` for a URL that does not parse; `Unavailable` if no node
    /// answers.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let store = multisession::store::RedisStore::connect_cluster(["redis://127.0.0.1:7000"]).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        if urls.is_empty() {
            return Err(Error::config("redis cluster: give at least one node URL"));
        }
        if urls.iter().any(|url| query_param(url, "client_cache").is_some()) {
            return Err(Error::config(
                "redis cluster url: client_cache is for a standalone Redis; remove it from the cluster's URLs",
            ));
        }
        let client = ClusterClientBuilder::new(urls.clone())
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .retries(1)
            .build()
            .map_err(|e| {
                let text = urls.iter().fold(e.to_string(), |text, url| super::scrub(&text, url));
                Error::config(format!("redis cluster url: {text}"))
            })?;
        let conn = client.get_async_connection().await.map_err(unavailable)?;
        Ok(Self { conn: Conn::Cluster(conn), prefix: "session".to_owned(), cache: None })
    }

    /// The prefix of every key this store writes (default `session`), so
    /// several applications can share one Redis.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let store = multisession::store::RedisStore::connect("redis://127.0.0.1:6379").await?.with_key_prefix("shop");
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn session_key(&self, key: &StoreKey) -> String {
        format!("{}:s:{key}", self.prefix)
    }

    fn index_key(&self, user: &str) -> String {
        format!("{}:u:{user}", self.prefix)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// The cluster's serving masters, and who serves which slots.
    async fn layout(&self) -> Result<Layout> {
        let nodes: String = self.query(&redis::cmd("CLUSTER").arg("NODES").clone()).await?;
        layout_of(&nodes)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
        .map_err(unavailable)
    }

    async fn run<T: redis::FromRedisValue>(&self, script: &Script, keys: &[&str], args: &[Vec<u8>]) -> Result<T> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(arg.as_slice());
        }
        match &self.conn {
            Conn::Single(c) => invocation.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
        }
        .map_err(unavailable)
    }

    /// Runs commands that may touch several hash slots: one pipeline on a
    /// standalone Redis, concurrently (one round trip of latency) on a
    /// cluster. Replies in order.
    async fn each(&self, cmds: Vec<Cmd>) -> Result<Vec<Reply>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match &self.conn {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(&mut c.clone()).await.map_err(unavailable)
            }
            Conn::Cluster(c) => {
                // At most CLUSTER_IN_FLIGHT at once: 10 000 commands sent
                // together queue long enough to outlast the reply timeout.
                let mut replies = vec![Reply::Nil; cmds.len()];
                let mut pending = cmds.into_iter().enumerate();
                let mut tasks = tokio::task::JoinSet::new();
                loop {
                    while tasks.len() < CLUSTER_IN_FLIGHT {
                        let Some((i, cmd)) = pending.next() else { break };
                        let mut conn = c.clone();
                        tasks.spawn(async move { (i, cmd.query_async::<Reply>(&mut conn).await) });
                    }
                    let Some(done) = tasks.join_next().await else { break };
                    let (i, reply) = done.map_err(|e| Error::unavailable("a Redis request task failed", e))?;
                    if let Some(slot) = replies.get_mut(i) {
                        *slot = reply.map_err(unavailable)?;
                    }
                }
                Ok(replies)
            }
        }
    }

    /// Raises (or, with `XX`, only updates) a user's index entry to `score`;
    /// used alone on a cluster, where it cannot share a script with the
    /// session.
    async fn index(&self, user: &str, score: i64, member: &str, mode: &str) -> Result<()> {
        let args = [score.to_string().into_bytes(), member.into(), mode.into()];
        self.run::<i64>(&INDEX_SCRIPT, &[&self.index_key(user)], &args).await.map(drop)
    }

    /// Runs a session script together with the user's index entry (`score`
    /// and `mode` as for [`INDEX`]): in the same script on one node; on a
    /// cluster, where the two live in different slots, the index first, so a
    /// session is never live without an entry and a score never falls below
    /// its session's expiry.
    async fn indexed(
        &self,
        script: &Script,
        key: &StoreKey,
        user: Option<&str>,
        score: i64,
        mode: &str,
        args: &[Vec<u8>],
    ) -> Result<i64> {
        let session = self.session_key(key);
        match user {
            Some(user) if self.is_cluster() => {
                self.index(user, score, &key.to_string(), mode).await?;
                self.run(script, &[&session], args).await
            }
            Some(user) => self.run(script, &[&session, &self.index_key(user)], args).await,
            None => self.run(script, &[&session], args).await,
        }
    }

    /// Deletes a session and its index entry; whether it was live.
    async fn delete_session(&self, key: &StoreKey) -> Result<bool> {
        let now = to_millis(OffsetDateTime::now_utc()).to_string().into_bytes();
        let (deleted, user): (i64, String) = self.run(&DELETE_SCRIPT, &[&self.session_key(key)], &[now]).await?;
        if !user.is_empty() {
            self.query::<i64>(redis::cmd("ZREM").arg(self.index_key(&user)).arg(key.to_string())).await?;
        }
        Ok(deleted > 0)
    }

    /// Deletes session hashes; how many existed.
    async fn delete_keys(&self, keys: &[String]) -> Result<u64> {
        if self.is_cluster() {
            let cmds = keys.iter().map(|k| redis::cmd("DEL").arg(k).clone()).collect();
            let replies = self.each(cmds).await?;
            Ok(replies.into_iter().map(|r| redis::from_redis_value::<u64>(r).unwrap_or(0)).sum())
        } else {
            self.query(redis::cmd("DEL").arg(keys)).await
        }
    }

    /// A user's index members with their scores (as Redis wrote them),
    /// after pruning those whose score has passed.
    async fn members(&self, user: &str) -> Result<Vec<(String, String)>> {
        let index = self.index_key(user);
        let mut pipe = redis::pipe();
        let now = to_millis(OffsetDateTime::now_utc());
        pipe.cmd("ZREMRANGEBYSCORE").arg(&index).arg("-inf").arg(now).ignore();
        pipe.cmd("ZRANGE").arg(&index).arg(0).arg(-1).arg("WITHSCORES");
        let (members,): (Vec<(String, String)>,) = match &self.conn {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => pipe.query_async(&mut c.clone()).await,
        }
        .map_err(unavailable)?;
        Ok(members)
    }

    /// Drops `members` (as [`RedisStore::members`] read them) from `user`'s
    /// index, each only if its score has not moved since.
    async fn unindex(&self, user: &str, members: &[&(String, String)]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let args: Vec<Vec<u8>> =
            members.iter().flat_map(|(m, score)| [m.clone().into_bytes(), score.clone().into_bytes()]).collect();
        self.run::<i64>(&UNINDEX_SCRIPT, &[&self.index_key(user)], &args).await.map(drop)
    }
}

/// Asks for the connection's client id every [`HEARTBEAT`] while the
/// cache lives, so that the cache hears of a replaced connection (a new id)
/// or one that stopped answering (which drops it), even when every load is
/// a hit and nothing else goes to Redis.
fn heartbeat(cache: std::sync::Weak<ClientCache>, conn: ConnectionManager) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(cache) = cache.upgrade() else { return };
            match redis::cmd("CLIENT").arg("ID").query_async::<i64>(&mut conn.clone()).await {
                Ok(id) => cache.confirmed(id),
                Err(_) => cache.lost(),
            }
        }
    });
}

/// The value of query parameter `name` in a URL. Redis URLs carry no other
/// `?`: a password holding one must be percent-encoded.
fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1.split('#').next()?;
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// The connection settings of a standalone Redis URL and its `client_cache`
/// size. A cached connection speaks RESP3, which carries Redis's pushes.
fn connection_info(url: &str) -> Result<(ConnectionInfo, Option<NonZeroUsize>)> {
    let info = url
        .into_connection_info()
        .map_err(|e| Error::config(format!("redis url: {}", super::scrub(&e.to_string(), url))))?;
    let Some(size) = query_param(url, "client_cache") else {
        return Ok((info, None));
    };
    let size =
        size.parse::<usize>().ok().filter(|n| *n <= MAX_CLIENT_CACHE).and_then(NonZeroUsize::new).ok_or_else(|| {
            Error::config(format!("redis url: client_cache must be a number of sessions from 1 to {MAX_CLIENT_CACHE}"))
        })?;
    if matches!(query_param(url, "protocol"), Some("2" | "resp2")) {
        return Err(Error::config("redis url: client_cache needs RESP3; remove protocol=resp2"));
    }
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    Ok((info.set_redis_settings(settings), Some(size)))
}

fn unavailable(e: RedisError) -> Error {
    Error::unavailable("the Redis session store failed", e)
}

/// The index score, kept in the session's `_ix` field too, for a session
/// expiring at `expires_at`: that expiry plus a grain of an eighth of the
/// time left, between 1 second and 10 minutes. A later write whose expiry
/// stays below it leaves the index alone, so a session written on every
/// request visits its index once per grain. Entries outlive their sessions
/// by at most the grain; listings judge liveness by the session itself.
fn index_score(expires_at: OffsetDateTime, now: OffsetDateTime) -> i64 {
    let expires = to_millis(expires_at);
    let left = expires.saturating_sub(to_millis(now)).max(0);
    expires.saturating_add((left / 8).clamp(1_000, 600_000))
}

/// The arguments of [`CREATE`]: expiry, member, index score, then the
/// hash's fields.
fn create_args(key: &StoreKey, record: &Record, score: i64) -> Result<Vec<Vec<u8>>> {
    let meta = &record.meta;
    let fixed = Fixed {
        created_at: meta.created_at,
        absolute_expires_at: meta.absolute_expires_at.map(to_millis),
        user_agent: meta.device.user_agent.clone(),
        ip: meta.device.ip,
    };
    let expires = to_millis(meta.expires_at).to_string();
    let score = score.to_string();
    let mut args: Vec<Vec<u8>> =
        vec![expires.clone().into_bytes(), key.to_string().into_bytes(), score.clone().into_bytes()];
    let mut field = |name: &str, value: Vec<u8>| {
        args.push(name.as_bytes().to_vec());
        args.push(value);
    };
    field("_v", LAYOUT_VERSION.into());
    field("_ix", score.into_bytes());
    field("_ver", b"1".to_vec());
    field("_meta", serde_json::to_vec(&fixed)?);
    field("_la", to_millis(meta.last_active_at).to_string().into_bytes());
    field("_exp", expires.into_bytes());
    field("_perm", if meta.permanent { b"1".to_vec() } else { b"0".to_vec() });
    if let Some(user) = &meta.user_id {
        field("_user", user.clone().into_bytes());
    }
    if !meta.siblings.is_empty() {
        field("_sib", serde_json::to_vec(&meta.siblings)?);
    }
    for (name, value) in &record.data {
        field(&format!(".{name}"), serde_json::to_vec(value)?);
    }
    Ok(args)
}

/// Reads with `cmd` on a cached store's connection, so that Redis tracks the
/// keys it reads for this connection: tracking turned on (again: the
/// connection may be new; `NOLOOP`: no pushes for our own writes, which the
/// cache applies itself), then the connection's client id and `cmd`'s
/// reply. One round trip.
async fn tracked(conn: &ConnectionManager, cmd: &Cmd) -> Result<(i64, Reply)> {
    let mut pipe = redis::pipe();
    pipe.cmd("CLIENT").arg("TRACKING").arg("ON").arg("NOLOOP").ignore();
    pipe.cmd("CLIENT").arg("ID");
    pipe.add_command(cmd.clone());
    pipe.query_async(&mut conn.clone()).await.map_err(unavailable)
}

/// A session hash as Redis answered it, borrowed from the reply: its
/// bookkeeping fields (`_…`, a handful) apart from its data (`.…`).
#[derive(Default)]
struct Fields<'a> {
    meta: Vec<(&'a [u8], &'a [u8])>,
    data: Vec<(&'a [u8], &'a [u8])>,
    /// The bytes of every name and value.
    size: usize,
}

impl<'a> Fields<'a> {
    fn push(&mut self, name: &'a [u8], value: &'a [u8]) {
        self.size = self.size.saturating_add(name.len()).saturating_add(value.len());
        if name.first() == Some(&b'.') {
            self.data.push((name, value));
        } else {
            self.meta.push((name, value));
        }
    }

    fn is_empty(&self) -> bool {
        self.meta.is_empty() && self.data.is_empty()
    }

    /// A bookkeeping field as text.
    fn text(&self, name: &str) -> Result<Option<&'a str>> {
        self.meta
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, value)| {
                std::str::from_utf8(value).map_err(|_| Error::corrupt(format!("field {name} is not UTF-8")))
            })
            .transpose()
    }

    fn millis(&self, name: &str) -> Result<OffsetDateTime> {
        self.text(name)?
            .and_then(|t| t.parse::<i64>().ok())
            .and_then(from_millis)
            .ok_or_else(|| Error::corrupt(format!("stored session field {name} is not a timestamp")))
    }
}

/// The bytes of a string reply.
fn bytes_of(value: &Reply) -> Option<&[u8]> {
    match value {
        Reply::BulkString(bytes) => Some(bytes),
        Reply::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// An `HGETALL` reply as a session hash: a map (RESP3) or a flat array of
/// pairs (RESP2). Read in place, without redis-rs's conversion, whose error
/// would quote the reply (session data) and which copies every field.
fn fields_of(reply: &Reply) -> Result<Fields<'_>> {
    let bad = || Error::corrupt("a session hash");
    let mut fields = Fields::default();
    match reply {
        Reply::Map(pairs) => {
            for (name, value) in pairs {
                fields.push(bytes_of(name).ok_or_else(bad)?, bytes_of(value).ok_or_else(bad)?);
            }
        }
        Reply::Array(items) if items.len() % 2 == 0 => {
            for pair in items.chunks_exact(2) {
                if let [name, value] = pair {
                    fields.push(bytes_of(name).ok_or_else(bad)?, bytes_of(value).ok_or_else(bad)?);
                }
            }
        }
        Reply::Nil => {}
        _ => return Err(bad()),
    }
    Ok(fields)
}

/// A session hash as a live record and its `_ver`; `None` if the hash is
/// gone or past its expiry by the application's clock.
fn record_of(fields: &Fields<'_>, now: OffsetDateTime) -> Result<Option<(Record, u64)>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let meta = meta(fields)?;
    if meta.is_expired(now) {
        return Ok(None);
    }
    let mut data = Map::new();
    for (name, value) in &fields.data {
        let key = name.get(1..).and_then(|key| std::str::from_utf8(key).ok());
        let key = key.ok_or_else(|| Error::corrupt("a session key is not UTF-8"))?;
        data.insert(key.to_owned(), serde_json::from_slice::<Value>(value)?);
    }
    let version = fields.text("_ver")?.and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Some((Record { data, meta }, version)))
}

/// The metadata of a session hash; `Corrupt` for anything malformed.
fn meta(fields: &Fields<'_>) -> Result<Meta> {
    if fields.text("_v")? != Some(LAYOUT_VERSION) {
        return Err(Error::corrupt("stored session has no known layout version"));
    }
    let fixed: Fixed = serde_json::from_str(fields.text("_meta")?.unwrap_or_default())?;
    Ok(Meta {
        user_id: fields.text("_user")?.map(str::to_owned),
        created_at: fixed.created_at,
        last_active_at: fields.millis("_la")?,
        expires_at: fields.millis("_exp")?,
        absolute_expires_at: fixed
            .absolute_expires_at
            .map(|ms| from_millis(ms).ok_or_else(|| Error::corrupt("absolute expiry out of range")))
            .transpose()?,
        permanent: fields.text("_perm")? == Some("1"),
        device: Device { user_agent: fixed.user_agent, ip: fixed.ip },
        siblings: match fields.text("_sib")? {
            Some(json) => serde_json::from_str(json)?,
            None => Default::default(),
        },
    })
}

/// One session's [`INFO_FIELDS`] values, as `HMGET` answers them, as a
/// listing entry; `None` if the hash is gone.
fn info_of(member: &str, reply: Reply) -> Result<Option<SessionInfo>> {
    let values: Vec<Option<Vec<u8>>> = redis::from_redis_value(reply).map_err(|_| Error::corrupt("a session hash"))?;
    let mut fields = Fields::default();
    for (name, value) in INFO_FIELDS.iter().zip(&values) {
        if let Some(value) = value {
            fields.push(name.as_bytes(), value);
        }
    }
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(SessionInfo::from_meta(member.parse()?, &meta(&fields)?))
}

#[async_trait]
impl Store for RedisStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        let session = self.session_key(key);
        let now = OffsetDateTime::now_utc();
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(&session);
        let (Some(cache), Conn::Single(conn)) = (&self.cache, &self.conn) else {
            let reply: Reply = self.query(&hgetall).await?;
            return Ok(record_of(&fields_of(&reply)?, now)?.map(|(record, _)| record));
        };
        if let Some(record) = cache.get(&session, now) {
            return Ok(Some(record));
        }
        let ticket = cache.ticket(&session);
        let (connection, reply) = tracked(conn, &hgetall).await?;
        let fields = fields_of(&reply)?;
        let found = record_of(&fields, now)?;
        if let Some((record, version)) = &found {
            cache.insert(&session, ticket, connection, record.clone(), *version, fields.size);
        }
        Ok(found.map(|(record, _)| record))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        let user = record.meta.user_id.as_deref();
        let score = index_score(record.meta.expires_at, OffsetDateTime::now_utc());
        let args = create_args(key, record, score)?;
        let created = self.indexed(&CREATE_SCRIPT, key, user, score, "", &args).await?;
        if created == 0 {
            return Err(Error::new(ErrorKind::Conflict, "a session with this key exists"));
        }
        if let Some(user) = user.filter(|_| self.is_cluster()) {
            // Again, now that the session exists, a millisecond higher: a
            // listing or logout-all that read the first entry and found no
            // session removes it only if its score has not moved.
            self.index(user, score.saturating_add(1), &key.to_string(), "").await?;
        }
        Ok(())
    }

    async fn create_login(
        &self,
        key: &StoreKey,
        record: &Record,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        let (Some(user), Some(limit)) = (record.meta.user_id.as_deref().filter(|_| !self.is_cluster()), limit) else {
            return super::counted_login(self, key, record, replaces, limit).await;
        };
        let score = index_score(record.meta.expires_at, OffsetDateTime::now_utc());
        let mut args = create_args(key, record, score)?;
        let rest = args.split_off(3);
        args.extend([
            to_millis(OffsetDateTime::now_utc()).to_string().into_bytes(),
            limit.max.to_string().into_bytes(),
            match limit.on_limit {
                crate::OnLimit::RefuseLogin => b"refuse".to_vec(),
                crate::OnLimit::EvictLeastRecent => b"evict".to_vec(),
            },
            replaces.map(|k| k.to_string()).unwrap_or_default().into_bytes(),
            format!("{}:s:", self.prefix).into_bytes(),
        ]);
        args.extend(rest);
        // The script may evict sessions this process cached, and Redis sends
        // no push for our own writes: unless their names come back, the
        // whole cache goes.
        let mut writing = self.cache.as_deref().map(ClientCache::writing_unknown);
        let reply: Vec<Reply> =
            self.run(&LOGIN_SCRIPT, &[&self.session_key(key), &self.index_key(user)], &args).await?;
        let mut replies = reply.into_iter();
        let status = replies.next().map(redis::from_redis_value::<i64>);
        if let Some(Ok(-2..=0)) = status {
            // Refused before it changed anything.
            if let Some(writing) = writing.take() {
                writing.done();
            }
        }
        match status {
            Some(Ok(1)) => {}
            Some(Ok(0)) => return Err(Error::new(ErrorKind::Conflict, "a session with this key exists")),
            Some(Ok(-2)) => return Err(Error::gone()),
            Some(Ok(-1)) => {
                let count = replies.next().and_then(|r| redis::from_redis_value::<usize>(r).ok()).unwrap_or(limit.max);
                return Err(limit.refusal(count));
            }
            _ => return Err(Error::corrupt("an unexpected reply from the login script")),
        }
        let mut members = Vec::new();
        for reply in replies {
            let mut values: Vec<Reply> =
                redis::from_redis_value(reply).map_err(|_| Error::corrupt("a session hash"))?;
            if values.is_empty() {
                continue;
            }
            let member: String =
                redis::from_redis_value(values.remove(0)).map_err(|_| Error::corrupt("a session index entry"))?;
            members.push((member, values));
        }
        // Every evicted session forgotten before any is parsed.
        if let (Some(writing), Some(cache)) = (writing, &self.cache) {
            for (member, _) in &members {
                cache.forget(&format!("{}:s:{member}", self.prefix));
            }
            writing.done();
        }
        let mut evicted = Vec::new();
        for (member, values) in members {
            evicted.extend(info_of(&member, Reply::Array(values))?);
        }
        Ok(evicted)
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let expires = to_millis(change.expires_at).to_string();
        let now = OffsetDateTime::now_utc();
        let score = index_score(change.expires_at, now);
        let mut args: Vec<Vec<u8>> = vec![
            expires.clone().into_bytes(),
            key.to_string().into_bytes(),
            to_millis(now).to_string().into_bytes(),
            if change.clear { b"1".to_vec() } else { b"0".to_vec() },
            change.remove.len().to_string().into_bytes(),
            score.to_string().into_bytes(),
            if self.cache.is_some() { b"1".to_vec() } else { b"0".to_vec() },
        ];
        args.extend(change.remove.iter().map(|name| format!(".{name}").into_bytes()));
        // What the hash can grow by: the data it sets and the device's
        // parts (the other fields it rewrites keep their size).
        let mut grown_by = 0usize;
        for (name, value) in &change.set {
            let value = serde_json::to_vec(value)?;
            grown_by = grown_by.saturating_add(name.len() + 1).saturating_add(value.len());
            args.push(format!(".{name}").into_bytes());
            args.push(value);
        }
        args.extend([b"_la".to_vec(), to_millis(change.last_active_at).to_string().into_bytes()]);
        args.extend([b"_exp".to_vec(), expires.into_bytes()]);
        if let Some(permanent) = change.permanent {
            args.extend([b"_perm".to_vec(), if permanent { b"1".to_vec() } else { b"0".to_vec() }]);
        }
        if let Some(siblings) = &change.siblings {
            let siblings = serde_json::to_vec(siblings)?;
            grown_by = grown_by.saturating_add(siblings.len());
            args.extend([b"_sib".to_vec(), siblings]);
        }
        // `XX`: a change never re-adds an index entry a logout removed.
        let user = change.user_id.as_deref();
        let cached = self.cache.as_deref().map(|cache| (cache, [self.session_key(key)]));
        let writing = cached.as_ref().map(|(cache, session)| cache.writing(session));
        let version = self.indexed(&APPLY_SCRIPT, key, user, score, "XX", &args).await?;
        let version = u64::try_from(version).ok().filter(|v| *v > 0).ok_or_else(Error::gone)?;
        if let Some(writing) = writing {
            writing.applied(change, version, grown_by);
        }
        Ok(())
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        let session = [self.session_key(key)];
        let _writing = self.cache.as_deref().map(|cache| cache.writing(&session));
        self.delete_session(key).await
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        let members = self.members(user).await?;
        let cmds = members
            .iter()
            .map(|(m, _)| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(format!("{}:s:{m}", self.prefix)).arg(&INFO_FIELDS);
                cmd
            })
            .collect();
        let replies = self.each(cmds).await?;
        let now = OffsetDateTime::now_utc();
        let mut sessions = Vec::with_capacity(members.len());
        let mut dangling = Vec::new();
        for (entry, reply) in members.iter().zip(replies) {
            match info_of(&entry.0, reply)? {
                None => dangling.push(entry),
                Some(info) if info.user_id == user && info.expires_at > now => sessions.push(info),
                Some(_) => {}
            }
        }
        self.unindex(user, &dangling).await?;
        Ok(sessions)
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        let keep = keep.map(StoreKey::to_string);
        let members = self.members(user).await?;
        let doomed: Vec<&(String, String)> = members.iter().filter(|(m, _)| Some(m) != keep.as_ref()).collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = doomed.iter().map(|(m, _)| format!("{}:s:{m}", self.prefix)).collect();
        let writing = self.cache.as_deref().map(|cache| cache.writing(&keys));
        let deleted = self.delete_keys(&keys).await?;
        drop(writing);
        self.unindex(user, &doomed).await?;
        Ok(deleted)
    }

    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        // Sessions and indexes expire natively.
        Ok(ExpiredBatch::default())
    }

    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        let limit = super::page_limit(limit)?;
        let bad_cursor = || Error::usage("this page cursor was not made by this store");
        // `SCAN` walks the keyspace by its own cursor, `limit` keys' worth of
        // buckets per call; a cluster is walked node by node, its masters in
        // address order, the cursor naming the node.
        let (layout, node, scan) = match cursor.map(PageCursor::as_str) {
            None => (None, None, 0u64),
            Some(text) if self.is_cluster() => {
                let mut parts = text.splitn(3, '/');
                let (Some(layout), Some(node), Some(scan)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(bad_cursor());
                };
                (Some(layout.to_owned()), Some(node.to_owned()), scan.parse().map_err(|_| bad_cursor())?)
            }
            Some(text) => (None, None, text.parse().map_err(|_| bad_cursor())?),
        };
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(scan).arg("MATCH").arg(format!("{}:s:*", glob_escaped(&self.prefix))).arg("COUNT").arg(limit);
        let (next_scan, names, place): (u64, Vec<Vec<u8>>, Option<(String, String)>) = match &self.conn {
            Conn::Single(c) => {
                let (next, names) = cmd.query_async(&mut c.clone()).await.map_err(unavailable)?;
                (next, names, None)
            }
            Conn::Cluster(c) => {
                let cluster = self.layout().await?;
                if layout.as_ref().is_some_and(|layout| *layout != cluster.fingerprint) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        "the Redis Cluster's masters or slots changed during the walk: start it again",
                    ));
                }
                let node = match node {
                    Some(node) if cluster.masters.contains(&node) => node,
                    Some(_) => return Err(bad_cursor()),
                    None => match cluster.masters.first() {
                        Some(first) => first.clone(),
                        None => return Ok(SessionsPage::default()),
                    },
                };
                let (host, port) = node.rsplit_once(':').ok_or_else(bad_cursor)?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port: port.parse().map_err(|_| bad_cursor())?,
                });
                let reply = c.clone().route_command(cmd, routing).await.map_err(unavailable)?;
                let (next, names) = redis::from_redis_value(reply).map_err(|_| Error::corrupt("a SCAN reply"))?;
                let node = if next == 0 { cluster.masters.iter().find(|m| **m > node).cloned() } else { Some(node) };
                (next, names, node.map(|node| (cluster.fingerprint, node)))
            }
        };
        let session_prefix = format!("{}:s:", self.prefix);
        // A script per key, not HGETALL: a key of another type under the
        // prefix (not ours) answers 0 and is counted as unreadable, where
        // HGETALL's WRONGTYPE would fail the whole page.
        let reads = names
            .iter()
            .map(|name| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(READ_IF_HASH).arg(1).arg(name);
                cmd
            })
            .collect();
        let replies = self.each(reads).await?;
        let now = OffsetDateTime::now_utc();
        let mut page = SessionsPage::default();
        for (name, reply) in names.iter().zip(&replies) {
            let key = std::str::from_utf8(name)
                .ok()
                .and_then(|name| name.strip_prefix(&session_prefix))
                .and_then(|key| key.parse::<StoreKey>().ok());
            let record = fields_of(reply).and_then(|fields| record_of(&fields, now));
            match (key, record) {
                (Some(key), Ok(Some((record, _)))) => page.sessions.push((key, record)),
                (Some(_), Ok(None)) => {}
                _ => page.unreadable += 1,
            }
        }
        page.next = match (&self.conn, place) {
            (Conn::Single(_), _) if next_scan != 0 => Some(PageCursor::new(next_scan.to_string())),
            (Conn::Cluster(_), Some((layout, node))) => Some(PageCursor::new(format!("{layout}/{node}/{next_scan}"))),
            _ => None,
        };
        Ok(page)
    }
}

/// `text` with the characters `SCAN MATCH` treats as a pattern escaped.
fn glob_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The serving masters of a cluster, and a fingerprint of who serves which
/// slots, from `CLUSTER NODES`: one line per node, `id host:port@bus[,hostname]
/// flags master-id ping pong epoch link slot…`.
struct Layout {
    /// `host:port` of each master, in address order.
    masters: Vec<String>,
    /// Changes whenever a master or its slots change.
    fingerprint: String,
}

/// The number of hash slots of a Redis Cluster.
const CLUSTER_SLOTS: u32 = 16_384;

fn layout_of(nodes: &str) -> Result<Layout> {
    use sha2::Digest as _;
    let (mut masters, mut described): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut slots = 0u32;
    for line in nodes.lines().take(MAX_CLUSTER_NODES) {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else { continue };
        let flag = |name: &str| flags.split(',').any(|f| f == name);
        if !flag("master") || flag("fail") || flag("noaddr") || flag("handshake") {
            continue;
        }
        let Some(address) = address.split(['@', ',']).next().filter(|a| !a.is_empty()) else { continue };
        // Slot ranges `a-b` or single slots; `[…]` entries are slots on
        // their way in or out, still served here.
        for range in fields.iter().skip(8).filter(|f| !f.starts_with('[')) {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            let (Ok(first), Ok(last)) = (first.parse::<u32>(), last.parse::<u32>()) else { continue };
            slots = slots.saturating_add(last.saturating_sub(first).saturating_add(1));
        }
        masters.push(address.to_owned());
        // Id, address and slots: not the ping times, which move, nor the
        // flags, which mark whichever node answered as `myself`.
        described.push(fields.iter().take(2).chain(fields.iter().skip(8)).copied().collect::<Vec<&str>>().join(" "));
    }
    if slots != CLUSTER_SLOTS {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "the Redis Cluster's reachable masters serve {slots} of its {CLUSTER_SLOTS} slots: wait for it to heal"
            ),
        ));
    }
    masters.sort();
    // Each node lists the others in an order of its own.
    described.sort();
    let mut digest = sha2::Sha256::new();
    for line in &described {
        digest.update(line.as_bytes());
        digest.update(b"\n");
    }
    let fingerprint = digest.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(Layout { masters, fingerprint })
}

#[cfg(any(test, feature = "fuzzing"))]
impl crate::fuzzing::Decode {
    /// A session hash as `HGETALL` answers it (`fields` as a RESP2 array of
    /// pairs, or a RESP3 map when `resp3`), read at the Unix millisecond
    /// `now_ms` as [`RedisStore`]'s `load` reads it, and its [`INFO_FIELDS`]
    /// as a listing reads them for `member`. Whether a live record came out;
    /// it re-encodes (as `create` writes it) to the same record.
    ///
    /// # Panics
    ///
    /// On a finding: a refusal that is not `Corrupt`, or a record that does
    /// not survive its own encoding.
    pub fn redis_hash(fields: &[(Vec<u8>, Vec<u8>)], resp3: bool, now_ms: i64, member: &str) -> bool {
        let bulk = |bytes: &Vec<u8>| Reply::BulkString(bytes.clone());
        let reply = if resp3 {
            Reply::Map(fields.iter().map(|(name, value)| (bulk(name), bulk(value))).collect())
        } else {
            Reply::Array(fields.iter().flat_map(|(name, value)| [bulk(name), bulk(value)]).collect())
        };
        let now = from_millis(now_ms).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let info = INFO_FIELDS
            .iter()
            .map(|wanted| match fields.iter().find(|(name, _)| name == wanted.as_bytes()) {
                Some((_, value)) => bulk(value),
                None => Reply::Nil,
            })
            .collect();
        crate::fuzzing::refused_as_corrupt(info_of(member, Reply::Array(info)));
        let decoded = fields_of(&reply).and_then(|fields| record_of(&fields, now));
        let Some((record, _)) = crate::fuzzing::refused_as_corrupt(decoded).flatten() else { return false };
        let key = StoreKey::derive("fuzzing", "a session");
        let again = create_args(&key, &record, index_score(record.meta.expires_at, now)).and_then(|args| {
            let mut fields = Fields::default();
            for pair in args.get(3..).unwrap_or_default().chunks_exact(2) {
                if let [name, value] = pair {
                    fields.push(name, value);
                }
            }
            record_of(&fields, now)
        });
        let again = again.ok().flatten().map(|(record, _)| record);
        assert!(again.as_ref() == Some(&record), "a decoded Redis hash re-encodes to another record");
        true
    }

    /// `CLUSTER NODES` text as the cluster layout reads it: a layout, or
    /// `Unavailable` for a cluster whose masters do not serve every slot.
    pub fn redis_cluster_nodes(text: &str) -> bool {
        layout_of(text).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
8df7 127.0.0.1:6392@16392 master - 0 1796224313277 2 connected 5461-10922
0fef 127.0.0.1:6391@16391 myself,master - 0 1796224312000 1 connected 0-5460
bfed 127.0.0.1:6393@16393 master - 0 1796224313277 0 connected 10923-16382 16383
a1b2 127.0.0.1:6394@16394 slave 0fef 0 1796224313277 1 connected";

    #[test]
    fn the_layout_lists_masters_in_address_order_whoever_answers() {
        let layout = layout_of(NODES).expect("every slot served");
        assert_eq!(layout.masters, ["127.0.0.1:6391", "127.0.0.1:6392", "127.0.0.1:6393"]);
        // Another node answers: its own line says `myself`, the order and
        // the ping times differ; the fingerprint does not.
        let elsewhere = NODES
            .replace("myself,master - 0 1796224312000", "master - 0 1796224399999")
            .replace("8df7 127.0.0.1:6392@16392 master", "8df7 127.0.0.1:6392@16392 myself,master");
        let mut lines: Vec<&str> = elsewhere.lines().collect();
        lines.reverse();
        assert_eq!(layout_of(&lines.join("\n")).expect("served").fingerprint, layout.fingerprint);
    }

    #[test]
    fn a_moved_slot_changes_the_fingerprint_and_a_lost_master_is_refused() {
        let layout = layout_of(NODES).expect("every slot served");
        let moved = NODES.replace("10923-16382 16383", "10923-16382").replace("0-5460", "0-5460 16383");
        assert_ne!(layout_of(&moved).expect("served").fingerprint, layout.fingerprint);
        let failed = NODES.replace("myself,master", "myself,master,fail");
        assert_eq!(layout_of(&failed).err().map(|e| e.kind()), Some(ErrorKind::Unavailable));
    }
}
