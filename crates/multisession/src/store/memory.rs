//! An in-process store: for tests, single-process apps and development.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{ExpiredBatch, PageCursor, SessionInfo, SessionsPage, Store};
use crate::{Change, Error, ErrorKind, Record, Result, SessionLimit, StoreKey};

/// Sessions in this process's memory, with a per-user index.
///
/// Records are kept as they are, shared with no one: a load hands out a
/// copy, made outside the store's lock, and a change copies a record a load
/// still holds before writing it. A login's session cap is counted and
/// applied under the store's lock, so concurrent logins never pass it.
/// Expired records are never returned and are removed by
/// [`Store::delete_expired_batch`] (see
/// [`Sessions::spawn_cleanup`](crate::Sessions::spawn_cleanup)). Everything
/// is lost when the process exits.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::{MemoryStore, Store};
///
/// let store = MemoryStore::new();
/// let key = multisession::SessionId::generate()?.store_key();
/// assert!(store.load(&key).await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    examined: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ordered by key, so that [`Store::sessions_page`] resumes in place.
    sessions: BTreeMap<StoreKey, Entry>,
    users: HashMap<String, HashSet<StoreKey>>,
}

#[derive(Debug)]
struct Entry {
    record: Stored,
    user: Option<String>,
    expires_at: OffsetDateTime,
}

/// A record as the store keeps it: the record itself, or bytes a test wrote
/// by hand ([`MemoryStore::write_raw`]), decoded (or refused) when read.
#[derive(Debug)]
enum Stored {
    Record(Arc<Record>),
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Raw(Vec<u8>),
}

impl Stored {
    /// The record, shared until the caller copies it.
    fn shared(&self) -> Result<Arc<Record>> {
        match self {
            Self::Record(record) => Ok(record.clone()),
            Self::Raw(bytes) => Record::from_bytes(bytes).map(Arc::new),
        }
    }

    fn meta(&self) -> Result<crate::Meta> {
        match self {
            Self::Record(record) => Ok(record.meta.clone()),
            Self::Raw(bytes) => Ok(Record::from_bytes(bytes)?.meta),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    ///
    /// ```
    /// let store = multisession::store::MemoryStore::new();
    /// # let _ = store;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::new(ErrorKind::Unavailable, "the memory store's lock is poisoned by a panic"))
    }

    /// How many session entries the user operations have examined so far: the
    /// memory store's own measure of work, for the conformance suite.
    ///
    /// ```
    /// assert_eq!(multisession::store::MemoryStore::new().entries_examined(), 0);
    /// ```
    #[cfg(feature = "testing")]
    pub fn entries_examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    /// Whether the store holds an entry under `key`, expired or not, as the
    /// conformance suite asks after cleanup.
    ///
    /// ```
    /// let store = multisession::store::MemoryStore::new();
    /// assert!(!store.holds(&multisession::SessionId::generate()?.store_key()));
    /// # Ok::<(), multisession::Error>(())
    /// ```
    #[cfg(feature = "testing")]
    pub fn holds(&self, key: &StoreKey) -> bool {
        self.inner.lock().is_ok_and(|inner| inner.sessions.contains_key(key))
    }

    /// Replaces the stored bytes of `key` by hand, as a test of corrupt data
    /// does. The entry keeps its user index and expiry.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// use multisession::store::{MemoryStore, Store};
    /// let store = MemoryStore::new();
    /// let key = multisession::SessionId::generate()?.store_key();
    /// store.write_raw(&key, b"garbage");           // no such session: nothing happens
    /// assert!(store.load(&key).await?.is_none());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "testing")]
    pub fn write_raw(&self, key: &StoreKey, bytes: &[u8]) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(entry) = inner.sessions.get_mut(key)
        {
            entry.record = Stored::Raw(bytes.to_vec());
        }
    }
}

impl Inner {
    fn live(&self, key: &StoreKey, now: OffsetDateTime) -> Option<&Entry> {
        self.sessions.get(key).filter(|e| e.expires_at > now)
    }

    fn insert(&mut self, key: &StoreKey, record: &Record) {
        let user = record.meta.user_id.clone();
        if let Some(user) = &user {
            self.users.entry(user.clone()).or_default().insert(*key);
        }
        let expires_at = record.meta.expires_at;
        self.sessions.insert(*key, Entry { record: Stored::Record(Arc::new(record.clone())), user, expires_at });
    }

    fn remove(&mut self, key: &StoreKey) -> Option<Entry> {
        let entry = self.sessions.remove(key)?;
        if let Some(user) = &entry.user
            && let Some(keys) = self.users.get_mut(user)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.users.remove(user);
            }
        }
        Some(entry)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        let now = OffsetDateTime::now_utc();
        let shared = self.lock()?.live(key, now).map(|e| e.record.shared()).transpose()?;
        // Copied outside the lock; a change meanwhile copies its own.
        Ok(shared.map(Arc::unwrap_or_clone))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        let now = OffsetDateTime::now_utc();
        let mut inner = self.lock()?;
        if inner.live(key, now).is_some() {
            return Err(Error::new(ErrorKind::Conflict, "a session with this key exists"));
        }
        inner.remove(key);
        inner.insert(key, record);
        Ok(())
    }

    async fn create_login(
        &self,
        key: &StoreKey,
        record: &Record,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        let now = OffsetDateTime::now_utc();
        let mut inner = self.lock()?;
        if inner.live(key, now).is_some() {
            return Err(Error::new(ErrorKind::Conflict, "a session with this key exists"));
        }
        if replaces.is_some_and(|old| inner.live(old, now).is_none()) {
            return Err(Error::gone());
        }
        let mut others = Vec::new();
        if let Some(user) = &record.meta.user_id
            && limit.is_some()
            && let Some(keys) = inner.users.get(user)
        {
            self.examined.fetch_add(keys.len() as u64, Ordering::Relaxed);
            for other in keys.iter().filter(|k| *k != key && Some(*k) != replaces) {
                if let Some(entry) = inner.live(other, now) {
                    others.extend(SessionInfo::from_meta(*other, &entry.record.meta()?));
                }
            }
        }
        let evicted = match limit {
            Some(limit) => limit.evictions(others)?,
            None => Vec::new(),
        };
        for info in &evicted {
            inner.remove(&info.key);
        }
        inner.remove(key);
        inner.insert(key, record);
        Ok(evicted)
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let now = OffsetDateTime::now_utc();
        let mut inner = self.lock()?;
        let entry = match inner.sessions.get_mut(key) {
            Some(entry) if entry.expires_at > now => entry,
            _ => return Err(Error::gone()),
        };
        let Stored::Record(record) = &mut entry.record else {
            return Err(Error::corrupt("the stored session could not be decoded"));
        };
        // In place, unless a load still holds this version.
        Arc::make_mut(record).apply(change);
        entry.expires_at = record.meta.expires_at;
        Ok(())
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        let now = OffsetDateTime::now_utc();
        Ok(self.lock()?.remove(key).is_some_and(|e| e.expires_at > now))
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        let now = OffsetDateTime::now_utc();
        let inner = self.lock()?;
        let Some(keys) = inner.users.get(user) else { return Ok(Vec::new()) };
        self.examined.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(entry) = inner.live(key, now) {
                out.extend(SessionInfo::from_meta(*key, &entry.record.meta()?));
            }
        }
        Ok(out)
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        let now = OffsetDateTime::now_utc();
        let mut inner = self.lock()?;
        let Some(keys) = inner.users.get(user) else { return Ok(0) };
        self.examined.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let doomed: Vec<StoreKey> = keys.iter().filter(|k| Some(*k) != keep).copied().collect();
        let mut deleted = 0;
        for key in doomed {
            if inner.remove(&key).is_some_and(|e| e.expires_at > now) {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        // All at once: the entries are in memory already, and a batch would
        // walk the live ones again for each.
        let now = OffsetDateTime::now_utc();
        let mut inner = self.lock()?;
        let expired: Vec<StoreKey> =
            inner.sessions.iter().filter(|(_, e)| e.expires_at <= now).map(|(k, _)| *k).collect();
        let mut done = ExpiredBatch::default();
        for key in expired {
            let Some(entry) = inner.remove(&key) else { continue };
            done.removed += 1;
            if let Stored::Record(record) = &entry.record
                && let Some(info) = SessionInfo::from_meta(key, &record.meta)
            {
                done.logins.push(info);
            }
        }
        Ok(done)
    }

    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        let limit = super::page_limit(limit)?;
        let after = super::cursor_key(cursor)?;
        let now = OffsetDateTime::now_utc();
        let (entries, next) = {
            let inner = self.lock()?;
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            let mut range = inner.sessions.range((start, Bound::Unbounded));
            let (mut entries, mut last, mut examined) = (Vec::new(), None, 0u64);
            for (key, entry) in range.by_ref().take(limit) {
                last = Some(*key);
                examined += 1;
                if entry.expires_at > now {
                    entries.push((*key, entry.record.shared()));
                }
            }
            self.examined.fetch_add(examined, Ordering::Relaxed);
            (entries, range.next().and(last))
        };
        let mut page = SessionsPage { next: next.map(|k| PageCursor::new(k.to_string())), ..SessionsPage::default() };
        for (key, record) in entries {
            match record {
                Ok(record) => page.sessions.push((key, Record::clone(&record))),
                Err(_) => page.unreadable += 1,
            }
        }
        Ok(page)
    }
}
