//! Sessions in Memcached, on one server or several.

mod client;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use self::client::{Client, Mode, Stored};
use super::{ExpiredBatch, SessionInfo, Store};
use crate::record::to_millis;
use crate::{Change, Error, ErrorKind, Record, Result, StoreKey};

/// How often a conditional write is retried when another writer's change
/// landed between its read and its write.
const CAS_ATTEMPTS: usize = 200;
/// Index entries expire on this grain (seconds), rounded up, so a session
/// touched once a minute adds to its user's index once in ten minutes.
const GRAIN: i64 = 600;
/// An index entry younger than this (seconds) is kept even when its session
/// is not found: the session may be being created.
const GRACE: i64 = 60;
/// An index is compacted once it has grown past twice its compacted size
/// plus this many bytes, or past [`MemcachedStore::append_limit`].
const SLACK: u64 = 4096;
/// Deletes in flight at once for one call.
const CONCURRENCY: usize = 8;
/// How long listing or clearing one user may take in all, however many
/// round trips it makes, before `Unavailable`: a slow server does not hold
/// a request for long. (Listing 10 000 sessions takes under a second, and
/// clearing them about two, on a local server in a debug build.)
const CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Memcached reads an expiry above this many seconds as a Unix time.
const RELATIVE_MAX: i64 = 30 * 24 * 3600;

/// Sessions in Memcached: one item per session (the versioned record) and
/// one index item per user, spread over the servers by consistent hashing.
///
/// Concurrent changes to one session are serialised with CAS: each change
/// re-reads and retries (up to 200 times, then `Conflict`), so requests that
/// set different keys all survive, and a change to a session that no longer
/// exists is `Gone` — a CAS write never recreates an item.
///
/// A user's index is one line per session, `key expiry written`. A session
/// is indexed (a line appended) before it is written; a touch adds a line
/// only when the expiry crosses a ten-minute grain, so a line's expiry is
/// never below its session's. Whenever the index is rewritten — a delete
/// drops its session's line, a listing the lines of sessions that are gone
/// (older than a minute: younger ones may be mid-creation), and a writer
/// whose line would outlive the index or that finds it grown past twice its
/// last compacted size — it is compacted: one line per session, expired
/// lines gone. Rewrites use CAS, so no concurrent append is lost. The index
/// item expires one grain after its latest line (an append keeps an item's
/// expiry, hence the rewrite when a line would outlive it): it outlives
/// every session it lists and goes soon after they have; an index left
/// empty is deleted. An index holds about 67 bytes per session, so
/// Memcached's default 1 MiB item holds some 13 000 — far above the default
/// cap of 100 sessions per user; beyond that, the user's logins fail as
/// `TooLarge`.
///
/// A record larger than the maximum item size (1 MiB, Memcached's default
/// `-I`; see [`MemcachedStore::with_max_item_size`]) is refused as
/// `TooLarge` before it is sent, as is one the server refuses as too large:
/// never `Unavailable`.
///
/// Bounds: a listing reads 16 MiB / the item size keys per round trip (16
/// by default, at most 100), so that it holds at most 16 MiB of values at
/// once, and keeps only what it lists; clearing deletes at most eight at a time;
/// listing or clearing one user takes at most a minute in all. Each server
/// has at most 16 connections, and each command at most two seconds. After
/// a server restart, a read that meets a dead pooled connection is retried
/// once on a new one.
///
/// Servers are `host:port`, the host a name or an IPv4 address:
/// `async-memcached` connects over IPv4 only, and Memcached's protocol has
/// no user or password.
///
/// The session cap is counted, then applied, so logins at the same moment
/// may pass it (by one session each; see
/// [`Store::create_login`](crate::store::Store::create_login)).
///
/// **Memcached may evict any item at any time.** A session can vanish (its
/// user is logged out, as with any expiry); "log out all devices" still ends
/// every session that exists, because a vanished session is already gone.
/// An evicted *index* is rebuilt as each of the user's sessions is next
/// created or touched across the grain; until then, such a session may be
/// missed by listing or logout-all. Give Memcached room enough not to evict,
/// or use a store that does not evict (SQL, Redis without an eviction
/// policy) for logins that must be revocable at once.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::MemcachedStore;
/// let store = MemcachedStore::connect(["10.0.0.1:11211", "10.0.0.2:11211"])?.with_key_prefix("shop");
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemcachedStore {
    client: Arc<Client>,
    prefix: String,
}

impl std::fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix seconds at or after `t`.
fn secs_up(t: OffsetDateTime) -> i64 {
    let ms = to_millis(t);
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0)
}

/// An index entry's expiry for a session expiring at `t`: on the grain.
fn grained(t: OffsetDateTime) -> i64 {
    let s = secs_up(t);
    s.saturating_add(GRAIN - 1).div_euclid(GRAIN).saturating_mul(GRAIN)
}

/// Memcached's expiry argument for an item that must live until the Unix
/// second `until`: relative seconds when it can be (Memcached's clock counts
/// those itself, whatever the wall clock did since it started), a Unix time
/// past 30 days; a second more either way, as Memcached's clock ticks once a
/// second; never 0, which would mean "never".
fn ttl(until: i64) -> u64 {
    let left = until.saturating_sub(now_secs()).saturating_add(1).max(1);
    let value = if left <= RELATIVE_MAX { left } else { until.saturating_add(1) };
    u64::try_from(value).unwrap_or(1)
}

/// One session's line in its user's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// The Unix second the entry lasts until (at or after its session's expiry).
    until: i64,
    /// The Unix second it was written.
    written: i64,
}

/// A user's index: one entry per session, the latest line of each.
type Entries = BTreeMap<StoreKey, Entry>;

/// A user's index, and how many lines it held (more than its entries when
/// it holds duplicates or garbage).
fn parse_index(bytes: &[u8]) -> (Entries, usize) {
    let mut entries = Entries::new();
    let mut lines = 0;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        lines += 1;
        let text = String::from_utf8_lossy(line);
        let mut fields = text.split(' ');
        let (Some(key), Some(until)) = (fields.next(), fields.next()) else { continue };
        let written = fields.next().and_then(|w| w.parse::<i64>().ok()).unwrap_or(0);
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(key) else { continue };
        let (Ok(key), Ok(until)) = (<[u8; 32]>::try_from(bytes), until.parse::<i64>()) else { continue };
        let entry = entries.entry(StoreKey::from_bytes(key)).or_insert(Entry { until, written });
        entry.until = entry.until.max(until);
        entry.written = entry.written.max(written);
    }
    (entries, lines)
}

fn render_line(out: &mut Vec<u8>, key: &StoreKey, entry: Entry) {
    out.extend_from_slice(URL_SAFE_NO_PAD.encode(key.as_bytes()).as_bytes());
    out.extend_from_slice(format!(" {} {}\n", entry.until, entry.written).as_bytes());
}

fn render_index(entries: &Entries) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 68);
    for (key, entry) in entries {
        render_line(&mut out, key, *entry);
    }
    out
}

impl MemcachedStore {
    /// A store on the servers at `addrs` (`host:port` each, the host a name
    /// or an IPv4 address). Connections are made on first use; a server
    /// that does not answer makes the calls that need it `Unavailable`.
    ///
    /// # Errors
    ///
    /// `Config` for no server, or one that is not `host:port`: an IPv6
    /// address (`async-memcached` connects over IPv4 only), or one with a
    /// user or password (Memcached's protocol has none; the message does not
    /// show them).
    ///
    /// ```
    /// use multisession::store::MemcachedStore;
    /// let store = MemcachedStore::connect(["127.0.0.1:11211"])?;
    /// assert!(MemcachedStore::connect(Vec::<String>::new()).is_err());
    /// assert!(MemcachedStore::connect(["[::1]:11211"]).is_err());
    /// let err = MemcachedStore::connect(["app:s3cret@cache:11211"]).unwrap_err();
    /// assert!(!err.to_string().contains("s3cret"));
    /// # let _ = store;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn connect<I, S>(addrs: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let addrs = addrs.into_iter().map(|a| a.as_ref().trim().to_owned()).collect();
        Ok(Self { client: Arc::new(Client::new(addrs)?), prefix: "session".to_owned() })
    }

    /// The prefix of every item this store writes (default `session`).
    /// A prefix Memcached cannot take in a key (spaces, control characters)
    /// is used by its hash.
    ///
    /// ```
    /// let store = multisession::store::MemcachedStore::connect(["127.0.0.1:11211"])?.with_key_prefix("shop");
    /// # let _ = store;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let fits = !prefix.is_empty() && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_graphic());
        self.prefix = if fits { prefix } else { hex(&Sha256::digest(prefix.as_bytes())[..8]) };
        self
    }

    /// The largest item the servers hold, in bytes: their `-I` (default
    /// 1 MiB, as Memcached's). A session record, or a user's index, that
    /// would not fit (with its key and Memcached's item header) is refused
    /// as `TooLarge` before it is sent; a larger value read back is refused
    /// as `Corrupt` (a listing skips it), and a listing holds at most 16 MiB
    /// of values at once, whatever the size.
    ///
    /// # Errors
    ///
    /// `Config` outside Memcached's own range for `-I`, 1 KiB to 1 GiB.
    ///
    /// ```
    /// use multisession::store::MemcachedStore;
    /// let store = MemcachedStore::connect(["127.0.0.1:11211"])?.with_max_item_size(4 << 20)?;
    /// assert!(MemcachedStore::connect(["127.0.0.1:11211"])?.with_max_item_size(100).is_err());
    /// # let _ = store;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn with_max_item_size(mut self, bytes: usize) -> Result<Self> {
        if !(1 << 10..=1 << 30).contains(&bytes) {
            return Err(Error::config(format!(
                "memcached max_item_size: {bytes} bytes is outside memcached's own range for -I, 1 KiB to 1 GiB"
            )));
        }
        Arc::make_mut(&mut self.client).max_item = bytes;
        Ok(self)
    }

    fn session_key(&self, key: &StoreKey) -> String {
        format!("{}:s:{key}", self.prefix)
    }

    /// A user's index item: users are hashed, as their ids may hold any
    /// character.
    fn index_key(&self, user: &str) -> String {
        format!("{}:u:{}", self.prefix, hex(&Sha256::digest(user.as_bytes())))
    }

    /// Past this size an index is compacted before it is written to again,
    /// so that appends, which nothing checks, stay below the item limit.
    fn append_limit(&self) -> u64 {
        u64::try_from(self.client.max_item / 8 * 7).unwrap_or(u64::MAX)
    }

    /// The unexpired entries of a user's index, its CAS token if it exists,
    /// and whether it holds more lines than those entries (duplicates,
    /// expired lines).
    async fn entries(&self, user: &str) -> Result<(Entries, Option<u64>, bool)> {
        let Some(item) = self.client.get(&self.index_key(user)).await? else {
            return Ok((Entries::new(), None, false));
        };
        let now = now_secs();
        let (mut entries, lines) = parse_index(&item.value);
        entries.retain(|_, entry| entry.until > now);
        let loose = lines > entries.len();
        Ok((entries, Some(item.cas), loose))
    }

    /// Rewrites a user's index compacted, with `edit` applied — unless
    /// `edit` changed nothing and the index holds nothing to compact away —
    /// to expire one grain after its latest entry; an index left empty is
    /// deleted. Tries up to `attempts` times when another writer came
    /// between; whether it is done.
    ///
    /// The delete is CAS-checked, and loses no concurrent append: an append
    /// that lands first changes the CAS, so the delete fails and the index
    /// is read again; one that lands after finds no item, and an append
    /// never creates one (`register` then writes the index anew).
    async fn rewrite_index(&self, user: &str, attempts: usize, edit: impl Fn(&mut Entries) -> bool) -> Result<bool> {
        let index = self.index_key(user);
        for attempt in 0..attempts {
            let (mut entries, cas, loose) = self.entries(user).await?;
            if !edit(&mut entries) && !loose {
                return Ok(true);
            }
            let outcome = match (entries.values().map(|e| e.until).max(), cas) {
                (None, None) => Stored::Done,
                (None, Some(cas)) => match self.client.delete(&index, Some(cas)).await? {
                    Stored::NotFound => Stored::Done,
                    outcome => outcome,
                },
                (Some(latest), cas) => {
                    let text = render_index(&entries);
                    let size = u32::try_from(text.len()).unwrap_or(u32::MAX);
                    let mode = cas.map_or(Mode::Add, Mode::Cas);
                    let until = ttl(latest.saturating_add(GRAIN));
                    self.client
                        .store(&index, &text, mode, until, size)
                        .await
                        .map_err(|e| e.context("the user's session index"))?
                }
            };
            if outcome == Stored::Done {
                return Ok(true);
            }
            if attempt > 8 {
                tokio::time::sleep(std::time::Duration::from_millis(attempt as u64 % 7)).await;
            }
        }
        Ok(false)
    }

    /// [`MemcachedStore::rewrite_index`] until it is done, or `Conflict`.
    async fn rewrite_index_surely(&self, user: &str, edit: impl Fn(&mut Entries) -> bool) -> Result<()> {
        if self.rewrite_index(user, CAS_ATTEMPTS, edit).await? {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Conflict, "the user index kept changing under concurrent writers"))
        }
    }

    /// Records that `key`, a session of `user`, lives until `expires_at`.
    ///
    /// One appended line, while the index lives past the line (an append
    /// keeps the item's expiry) and is below twice its compacted size;
    /// otherwise a rewrite, which also sets the expiry. A rewrite that read
    /// the index before the append, dropped its latest entries and so
    /// shortened its life can land between the check and the append: a look
    /// after the append settles it, as every rewrite after the append holds
    /// this line and lives past it. Where the index has grown, a writer
    /// first tries one compacting rewrite (concurrent appends may win the
    /// race: then it appends, and a later writer compacts); past
    /// [`MemcachedStore::append_limit`], or with no index yet, it rewrites
    /// until one rewrite — its own or another writer's — has made room.
    async fn register(&self, user: &str, key: &StoreKey, expires_at: OffsetDateTime) -> Result<()> {
        let index = self.index_key(user);
        let entry = Entry { until: grained(expires_at), written: now_secs() };
        let add = |entries: &mut Entries| {
            let e = entries.entry(*key).or_insert(entry);
            e.until = e.until.max(entry.until);
            e.written = entry.written;
            true
        };
        // Past the line by a second, as Memcached's clock ticks once a second.
        let lives_past = |ttl: i64| ttl < 0 || now_secs().saturating_add(ttl) > entry.until;
        let mut line = Vec::with_capacity(68);
        render_line(&mut line, key, entry);
        for attempt in 0..CAS_ATTEMPTS {
            match self.client.probe(&index).await? {
                Some(probe) if probe.size <= self.append_limit() && lives_past(probe.ttl) => {
                    let grown = probe.size > 2 * u64::from(probe.client_flags) + SLACK;
                    if grown && self.rewrite_index(user, 1, add).await? {
                        return Ok(());
                    }
                    if self.client.append(&index, &line).await?
                        && self.client.probe(&index).await?.is_some_and(|p| lives_past(p.ttl))
                    {
                        return Ok(());
                    }
                }
                _ => {}
            }
            if self.rewrite_index(user, 1, add).await? {
                return Ok(());
            }
            if attempt > 8 {
                tokio::time::sleep(std::time::Duration::from_millis(attempt as u64 % 7)).await;
            }
        }
        Err(Error::new(ErrorKind::Conflict, "the user index kept changing under concurrent writers"))
    }

    /// Drops from `user`'s index the entries `drop` picks (and compacts it).
    async fn unregister(&self, user: &str, drop: impl Fn(&StoreKey, &Entry) -> bool) -> Result<()> {
        self.rewrite_index_surely(user, |entries| {
            let before = entries.len();
            entries.retain(|key, entry| !drop(key, entry));
            entries.len() < before
        })
        .await
    }

    /// Calls `each` with every record of `keys` that exists and decodes
    /// (corrupt ones are no session of anyone's), read a batch at a time and
    /// kept by none.
    async fn scan(&self, keys: &[StoreKey], mut each: impl FnMut(StoreKey, Record)) -> Result<()> {
        let names: Vec<String> = keys.iter().map(|k| self.session_key(k)).collect();
        self.client
            .scan(&names, |n, bytes| {
                if let (Some(key), Ok(record)) = (keys.get(n), Record::from_bytes(bytes)) {
                    each(*key, record);
                }
            })
            .await
    }

    async fn list(&self, user: &str) -> Result<Vec<SessionInfo>> {
        // Taken before any session is read: an entry is dropped for want of
        // its session only if it was written GRACE before the look.
        let settled = now_secs().saturating_sub(GRACE);
        let (entries, _, loose) = self.entries(user).await?;
        let keys: Vec<StoreKey> = entries.keys().copied().collect();
        let now = OffsetDateTime::now_utc();
        let mut sessions = Vec::new();
        self.scan(&keys, |key, record| {
            if record.meta.user_id.as_deref() == Some(user) && !record.meta.is_expired(now) {
                sessions.extend(SessionInfo::from_meta(key, &record.meta));
            }
        })
        .await?;
        // Entries of sessions that are gone, unless so young that their
        // session may be being created; duplicates and expired lines go in
        // the same rewrite.
        let listed: HashSet<StoreKey> = sessions.iter().map(|s| s.key).collect();
        let stale = |key: &StoreKey, entry: &Entry| !listed.contains(key) && entry.written < settled;
        if loose || entries.iter().any(|(k, e)| stale(k, e)) {
            self.unregister(user, stale).await?;
        }
        Ok(sessions)
    }

    async fn clear(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        // Taken before any session is read: an entry is dropped for want of
        // its session only if it was written GRACE before the look.
        let settled = now_secs().saturating_sub(GRACE);
        let (entries, _, _) = self.entries(user).await?;
        let targets: Vec<StoreKey> = entries.keys().filter(|k| Some(*k) != keep).copied().collect();
        let now = OffsetDateTime::now_utc();
        let mut live = HashSet::new();
        self.scan(&targets, |key, record| {
            if record.meta.user_id.as_deref() == Some(user) && !record.meta.is_expired(now) {
                live.insert(key);
            }
        })
        .await?;
        let mut deleted = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for &key in &targets {
            if tasks.len() >= CONCURRENCY
                && let Some(done) = tasks.join_next().await
            {
                deleted += done.map_err(|e| Error::unavailable("a memcached delete task failed", e))??;
            }
            let (client, name, counts) = (self.client.clone(), self.session_key(&key), live.contains(&key));
            tasks.spawn(async move {
                Ok::<u64, Error>(u64::from(client.delete(&name, None).await? == Stored::Done && counts))
            });
        }
        while let Some(done) = tasks.join_next().await {
            deleted += done.map_err(|e| Error::unavailable("a memcached delete task failed", e))??;
        }
        // A young entry whose session was not there may belong to a login
        // still being written: it stays, to be listed or pruned later.
        let young: HashSet<StoreKey> =
            entries.iter().filter(|(k, e)| e.written >= settled && !live.contains(k)).map(|(k, _)| *k).collect();
        let targets: HashSet<StoreKey> = targets.into_iter().collect();
        self.unregister(user, |key, _| targets.contains(key) && !young.contains(key)).await?;
        Ok(deleted)
    }
}

/// `call`, or `Unavailable` once it has taken [`CALL_LIMIT`] (what it has
/// in flight is dropped, which closes those connections).
async fn within_call_limit<T>(what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(CALL_LIMIT, call).await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Unavailable,
            format!("memcached: {what} took longer than {}s in all", CALL_LIMIT.as_secs()),
        ))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Store for MemcachedStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        let Some(item) = self.client.get(&self.session_key(key)).await? else { return Ok(None) };
        let record = Record::from_bytes(&item.value)?;
        Ok((!record.meta.is_expired(OffsetDateTime::now_utc())).then_some(record))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        let name = self.session_key(key);
        let bytes = record.to_bytes()?;
        // Refused before the index gains a line for it.
        self.client.check_fits(&name, &bytes).map_err(|e| e.context("a session record"))?;
        let user = record.meta.user_id.as_deref();
        if let Some(user) = user {
            // Indexed first: a session is never live without its entry.
            self.register(user, key, record.meta.expires_at).await?;
        }
        let until = secs_up(record.meta.expires_at);
        if self.client.store(&name, &bytes, Mode::Add, ttl(until), 0).await? != Stored::Done {
            return Err(Error::new(ErrorKind::Conflict, "a session with this key exists"));
        }
        if let Some(user) = user {
            // Again, now that the session exists (one more line; the next
            // compaction merges them): a listing or logout-all that met the
            // first line while the session did not exist yet, and dropped
            // it, cannot leave the session unlisted.
            self.register(user, key, record.meta.expires_at).await?;
        }
        Ok(())
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let item_key = self.session_key(key);
        let mut registered = false;
        for attempt in 0..CAS_ATTEMPTS {
            let Some(item) = self.client.get(&item_key).await? else { return Err(Error::gone()) };
            let mut record = Record::from_bytes(&item.value)?;
            if record.meta.is_expired(OffsetDateTime::now_utc()) {
                return Err(Error::gone());
            }
            // The entry was written on the grain of the old expiry: only a
            // move past it needs the index.
            let moved = grained(change.expires_at) > grained(record.meta.expires_at);
            record.apply(change);
            let bytes = record.to_bytes()?;
            self.client.check_fits(&item_key, &bytes).map_err(|e| e.context("a session record"))?;
            if !registered
                && moved
                && let Some(user) = record.meta.user_id.as_deref()
            {
                self.register(user, key, change.expires_at).await?;
                registered = true;
            }
            let until = secs_up(change.expires_at);
            let stored = self.client.store(&item_key, &bytes, Mode::Cas(item.cas), ttl(until), 0).await?;
            match stored {
                Stored::Done => return Ok(()),
                Stored::NotFound => return Err(Error::gone()),
                Stored::Exists => {
                    if attempt > 8 {
                        tokio::time::sleep(std::time::Duration::from_millis(attempt as u64 % 7)).await;
                    }
                }
            }
        }
        Err(Error::new(ErrorKind::Conflict, "the session kept changing under concurrent writers"))
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        let item_key = self.session_key(key);
        // Read first: for its user's index, and because Memcached's own clock
        // may still hold a session that has expired.
        let Some(item) = self.client.get(&item_key).await? else { return Ok(false) };
        let record = Record::from_bytes(&item.value).ok();
        let deleted = self.client.delete(&item_key, None).await? == Stored::Done;
        if let Some(user) = record.as_ref().and_then(|r| r.meta.user_id.as_deref()) {
            self.unregister(user, |k, _| k == key).await?;
        }
        Ok(deleted && record.is_some_and(|r| !r.meta.is_expired(OffsetDateTime::now_utc())))
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        within_call_limit("listing a user's sessions", self.list(user)).await
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        within_call_limit("clearing a user's sessions", self.clear(user, keep)).await
    }

    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        // Items expire natively.
        Ok(ExpiredBatch::default())
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl crate::fuzzing::Decode {
    /// A session item's value, read at the Unix millisecond `now_ms` as
    /// [`MemcachedStore`]'s `load` reads it. Whether a live record came
    /// out; it re-encodes to the same record.
    ///
    /// # Panics
    ///
    /// On a finding: a refusal that is not `Corrupt`, or a record that does
    /// not survive its own encoding.
    pub fn memcached_item(value: &[u8], now_ms: i64) -> bool {
        let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let Some(record) = crate::fuzzing::refused_as_corrupt(Record::from_bytes(value)) else { return false };
        let again = record.to_bytes().and_then(|bytes| Record::from_bytes(&bytes)).ok();
        assert!(again.as_ref() == Some(&record), "a decoded Memcached item re-encodes to another record");
        !record.meta.is_expired(now)
    }

    /// A user's index item, as the store reads it: the number of sessions
    /// it names. Rendered and read again, it names the same entries, one
    /// line each.
    ///
    /// # Panics
    ///
    /// On a finding: an index that does not survive its own rendering.
    pub fn memcached_index(value: &[u8]) -> usize {
        let (entries, lines) = parse_index(value);
        assert!(entries.len() <= lines, "an index names more sessions than it has lines");
        let again = parse_index(&render_index(&entries));
        assert!(again == (entries.clone(), entries.len()), "a read index renders to another index");
        entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_keeps_each_session_once_at_its_latest_expiry() {
        let (a, b) = (StoreKey::from_bytes([1; 32]), StoreKey::from_bytes([2; 32]));
        let at = |until, written| Entry { until, written };
        let entries = Entries::from([(a, at(100, 1)), (b, at(200, 2))]);
        let mut text = render_index(&entries);
        text.extend_from_slice(&render_index(&Entries::from([(a, at(300, 3))])));
        text.extend_from_slice(b"garbage\n\xff\xfe x\n");
        assert_eq!(parse_index(&text), (Entries::from([(a, at(300, 3)), (b, at(200, 2))]), 5));
        assert!(render_index(&entries).len() <= 2 * 68, "an entry takes about 66 bytes");
    }

    #[test]
    fn expiries_round_up_to_the_grain_and_never_ask_for_forever() {
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_001).expect("a time");
        assert_eq!(grained(t) % GRAIN, 0);
        assert!(grained(t) >= 1_800_000_001 && grained(t) < 1_800_000_001 + GRAIN);
        assert_eq!(ttl(0), 1, "an item already expired still gets a finite life");
        assert!(ttl(now_secs() + 10) <= 11);
        assert!(ttl(now_secs() + 40 * 24 * 3600) > RELATIVE_MAX as u64, "past 30 days it is a Unix time");
    }
}
