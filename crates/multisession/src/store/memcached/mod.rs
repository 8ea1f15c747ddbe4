//! Sessions in Memcached, on one server or several.

mod client;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use self::client::{Client, Stored};
use super::{SessionInfo, Store};
use crate::record::to_millis;
use crate::{Change, Error, ErrorKind, Record, Result, StoreKey};

/// How often a field-level change is retried when another writer's change
/// landed between its `gets` and its `cas`.
const CAS_ATTEMPTS: usize = 200;

/// Sessions in Memcached: one item per session (the versioned record) and
/// one index item per user, spread over the servers by consistent hashing.
///
/// Concurrent changes to one session are serialised with `gets`/`cas`:
/// each change re-reads and retries (up to 200 times, then `Conflict`), so
/// requests that set different keys all survive, and a change to a session
/// that no longer exists is `Gone` — `cas` never recreates an item.
///
/// The user index is a list of `store-key expiry` lines that writers
/// `append` to before they write the session, so an entry never expires
/// before its session does; listing or clearing a user reads the index,
/// checks each session it names, and rewrites the index without the ones
/// that are gone. The cost grows with that user's sessions, never with the
/// cache.
///
/// **Memcached may evict any item at any time.** A session can vanish (its
/// user is logged out, as with any expiry); "log out all devices" still ends
/// every session that exists, because a vanished session is already gone.
/// An evicted *index* is rebuilt as each of the user's sessions is next
/// written or touched (each write re-registers itself); until then, a
/// session that has been neither may be missed by listing or logout-all.
/// Give Memcached room enough not to evict, or use a store that does not
/// evict (SQL, Redis without an eviction policy) for logins that must be
/// revocable at once.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::MemcachedStore;
/// let store = MemcachedStore::connect(["10.0.0.1:11211", "10.0.0.2:11211"]).with_key_prefix("shop");
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

/// Unix seconds at or after `t`: Memcached's absolute expiry.
fn exptime(t: OffsetDateTime) -> i64 {
    let ms = to_millis(t);
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0)
}

impl MemcachedStore {
    /// A store on the servers at `addrs` (`host:port` each). Connections are
    /// made on first use; a server that does not answer makes the calls that
    /// need it `Unavailable`.
    ///
    /// ```
    /// let store = multisession::store::MemcachedStore::connect(["127.0.0.1:11211"]);
    /// # let _ = store;
    /// ```
    pub fn connect<I, S>(addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let addrs = addrs.into_iter().map(|a| a.as_ref().to_owned()).collect();
        Self { client: Arc::new(Client::new(addrs)), prefix: "session".to_owned() }
    }

    /// The prefix of every item this store writes (default `session`).
    /// A prefix Memcached cannot take in a key (spaces, control characters)
    /// is used by its hash.
    ///
    /// ```
    /// let store = multisession::store::MemcachedStore::connect(["127.0.0.1:11211"]).with_key_prefix("shop");
    /// # let _ = store;
    /// ```
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let fits = !prefix.is_empty() && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_graphic());
        self.prefix = if fits { prefix } else { hex(&Sha256::digest(prefix.as_bytes())[..8]) };
        self
    }

    fn session_key(&self, key: &StoreKey) -> String {
        format!("{}:s:{key}", self.prefix)
    }

    /// A user's index item: users are hashed, as their ids may hold any
    /// character.
    fn index_key(&self, user: &str) -> String {
        format!("{}:u:{}", self.prefix, hex(&Sha256::digest(user.as_bytes())))
    }

    /// Records that `key`, a session of `user`, lives until `expires_at`.
    async fn register(&self, user: &str, key: &StoreKey, expires_at: OffsetDateTime) -> Result<()> {
        let index = self.index_key(user);
        let line = format!("{key} {}\n", to_millis(expires_at));
        for _ in 0..CAS_ATTEMPTS {
            // Index items never expire by themselves: they are rewritten
            // without their dead entries when read.
            match self.client.store("append", &index, line.as_bytes(), 0).await? {
                Stored::Done => return Ok(()),
                _ => match self.client.store("add", &index, line.as_bytes(), 0).await? {
                    Stored::Done => return Ok(()),
                    _ => continue,
                },
            }
        }
        Err(Error::new(ErrorKind::Conflict, "the user index kept changing"))
    }

    /// The live entries of a user's index (latest expiry per session) and
    /// the index's CAS token, if it exists.
    async fn entries(&self, user: &str) -> Result<(HashMap<StoreKey, i64>, Option<u64>)> {
        let Some(item) = self.client.gets(&self.index_key(user)).await? else { return Ok((HashMap::new(), None)) };
        let now = to_millis(OffsetDateTime::now_utc());
        let mut entries = HashMap::new();
        for line in String::from_utf8_lossy(&item.value).lines() {
            let Some((key, expires)) = line.split_once(' ') else { continue };
            let (Ok(key), Ok(expires)) = (key.parse::<StoreKey>(), expires.parse::<i64>()) else { continue };
            let latest = entries.entry(key).or_insert(expires);
            *latest = (*latest).max(expires);
        }
        entries.retain(|_, expires| *expires > now);
        Ok((entries, Some(item.cas)))
    }

    /// Rewrites a user's index to `keep`, unless someone appended meanwhile
    /// (then the next reader prunes).
    async fn rewrite(&self, user: &str, keep: &HashMap<StoreKey, i64>, cas: Option<u64>) -> Result<()> {
        let Some(cas) = cas else { return Ok(()) };
        let index = self.index_key(user);
        if keep.is_empty() {
            // A delete could drop an entry appended since the read; a cas of
            // an empty list cannot.
            self.client.store(&format!("cas {cas}"), &index, b"", 0).await?;
            return Ok(());
        }
        let text: String = keep.iter().map(|(key, expires)| format!("{key} {expires}\n")).collect();
        self.client.store(&format!("cas {cas}"), &index, text.as_bytes(), 0).await?;
        Ok(())
    }

    /// The records of `keys`, read concurrently; `None` for those gone.
    async fn records(&self, keys: Vec<StoreKey>) -> Result<Vec<(StoreKey, Option<Record>)>> {
        let mut reads = tokio::task::JoinSet::new();
        for key in keys {
            let store = self.clone();
            reads.spawn(async move { (key, store.load(&key).await) });
        }
        let mut out = Vec::new();
        while let Some(done) = reads.join_next().await {
            let (key, record) = done.map_err(|e| Error::unavailable("a memcached read task failed", e))?;
            match record {
                Ok(record) => out.push((key, record)),
                // A record that no longer decodes is no session of this user.
                Err(e) if e.kind() == ErrorKind::Corrupt => out.push((key, None)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Store for MemcachedStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        let Some(item) = self.client.gets(&self.session_key(key)).await? else { return Ok(None) };
        let record = Record::from_bytes(&item.value)?;
        Ok((!record.meta.is_expired(OffsetDateTime::now_utc())).then_some(record))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        if let Some(user) = &record.meta.user_id {
            // Indexed first: a session is never live without its entry.
            self.register(user, key, record.meta.expires_at).await?;
        }
        let bytes = record.to_bytes()?;
        match self.client.store("add", &self.session_key(key), &bytes, exptime(record.meta.expires_at)).await? {
            Stored::Done => Ok(()),
            _ => Err(Error::new(ErrorKind::Conflict, "a session with this key exists")),
        }
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        if let Some(user) = &change.user_id {
            self.register(user, key, change.expires_at).await?;
        }
        let item_key = self.session_key(key);
        for attempt in 0..CAS_ATTEMPTS {
            let Some(item) = self.client.gets(&item_key).await? else { return Err(Error::gone()) };
            let mut record = Record::from_bytes(&item.value)?;
            if record.meta.is_expired(OffsetDateTime::now_utc()) {
                return Err(Error::gone());
            }
            record.apply(change);
            let bytes = record.to_bytes()?;
            let command = format!("cas {}", item.cas);
            match self.client.store(&command, &item_key, &bytes, exptime(change.expires_at)).await? {
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
        // The user's index entry stays until the index is next read.
        self.client.delete(&self.session_key(key)).await
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        let (mut entries, cas) = self.entries(user).await?;
        let records = self.records(entries.keys().copied().collect()).await?;
        let now = OffsetDateTime::now_utc();
        let mut sessions = Vec::new();
        let before = entries.len();
        for (key, record) in records {
            match record.filter(|r| r.meta.user_id.as_deref() == Some(user) && !r.meta.is_expired(now)) {
                Some(record) => sessions.extend(SessionInfo::from_meta(key, &record.meta)),
                None => {
                    entries.remove(&key);
                }
            }
        }
        if entries.len() < before {
            self.rewrite(user, &entries, cas).await?;
        }
        Ok(sessions)
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        let (entries, cas) = self.entries(user).await?;
        let mut deletes = tokio::task::JoinSet::new();
        for &key in entries.keys().filter(|k| Some(*k) != keep) {
            let store = self.clone();
            deletes.spawn(async move { store.delete(&key).await });
        }
        let mut deleted = 0;
        while let Some(done) = deletes.join_next().await {
            if done.map_err(|e| Error::unavailable("a memcached delete task failed", e))?? {
                deleted += 1;
            }
        }
        let kept: HashMap<StoreKey, i64> = entries.into_iter().filter(|(k, _)| Some(k) == keep).collect();
        self.rewrite(user, &kept, cas).await?;
        Ok(deleted)
    }

    async fn delete_expired(&self) -> Result<u64> {
        // Items expire natively.
        Ok(0)
    }
}
