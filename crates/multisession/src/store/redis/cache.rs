//! The Redis store's client-side cache: session hashes this process read,
//! kept true by Redis's invalidation pushes (RESP3 `CLIENT TRACKING`).
//!
//! Why not redis-rs's own `cache-aio`: it stores a reply in the caller's task
//! after the connection's task may already have handled the invalidation
//! that makes it stale (a revoked session could then be served for its
//! whole client-side TTL), and it cannot apply this process's own writes.
//! This cache closes both gaps with three rules:
//!
//! - A reply is stored only if nothing touched its key (a push, a write of
//!   ours whose outcome is unknown, an eviction) and the connection was not
//!   lost between sending the read and storing it: each read takes a
//!   [`Ticket`] first. Nor is it stored over a newer version.
//! - Redis tracks our reads with `NOLOOP`, so our own writes send us no
//!   pushes: each one updates or drops its entry here, even when the
//!   request that made it is dropped mid-way ([`Writing`]). A write's script
//!   bumps the hash's `_ver` and reads the hash last, so Redis keeps
//!   tracking the key, and the entry is updated only if it held the version
//!   just before ours (no write of anyone else came between).
//! - An entry is served only while the connection it was tracked on is the
//!   current one: a lost connection (whose pushes are lost with it) flushes
//!   everything. A replaced one is noticed by its client id: a reply from
//!   another connection is not stored, and the heartbeat (see `RedisStore`)
//!   moves the cache over to the new one, emptied, or empties it when Redis
//!   stops answering.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use hashlink::LruCache;
use redis::{PushInfo, PushKind, Value as Reply};
use time::OffsetDateTime;

use crate::{Change, Record};

/// Sessions whose stored hash is larger than this are read from Redis
/// every time. Parsed, a session takes a few times its stored size.
const MAX_ENTRY_BYTES: usize = 16 * 1024;

/// Counters that say which keys were touched since a read went out; a key
/// maps to one of them.
const STRIPES: usize = 1024;

/// What a [`RedisStore`](super::RedisStore)'s client-side cache has done
/// since the store connected.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// let store = multisession::store::RedisStore::connect("redis://127.0.0.1:6379/?client_cache=10000").await?;
/// let stats = store.cache_stats().expect("the URL turned the cache on");
/// println!("{} hits, {} misses, {} sessions cached", stats.hits, stats.misses, stats.entries);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Loads answered from the cache, without a round trip.
    pub hits: u64,
    /// Loads that went to Redis.
    pub misses: u64,
    /// Cached sessions dropped because Redis said another client changed
    /// them.
    pub invalidations: u64,
    /// Times the whole cache was dropped: a lost connection, a flushed
    /// database, a new connection.
    pub flushes: u64,
    /// Sessions held now.
    pub entries: usize,
}

/// Taken before a read is sent; storing its reply needs it unchanged.
#[derive(Clone, Copy)]
pub(super) struct Ticket {
    epoch: u64,
    stripe: usize,
    touched: u64,
}

struct Entry {
    /// Shared, so that a hit clones it outside the lock.
    record: Arc<Record>,
    version: u64,
    /// The stored hash's size in bytes, grown by each write applied here.
    size: usize,
}

struct Inner {
    entries: LruCache<String, Entry>,
    /// Bumped by every flush: a reply sent before it is never stored.
    epoch: u64,
    /// Per stripe of keys, bumped whenever one of its keys is touched.
    touched: Box<[u64]>,
    /// The client id of the connection the entries are tracked on.
    connection: Option<i64>,
    stats: CacheStats,
}

/// The cache; shared by a store's clones and its connection's push handler.
pub(super) struct ClientCache {
    inner: Mutex<Inner>,
    hasher: RandomState,
}

/// A write of ours in flight. Redis sends us no push for it (`NOLOOP`), so
/// unless it ends in [`Writing::applied`] or [`Writing::done`], dropping it
/// (the write failed, or the request was dropped while Redis may still run
/// it) forgets its keys: all of them when they are unknown.
pub(super) struct Writing<'a> {
    cache: &'a ClientCache,
    keys: Option<&'a [String]>,
    done: bool,
}

impl Writing<'_> {
    /// The write was applied as version `version`, growing the hash by at
    /// most `grown_by` bytes.
    pub(super) fn applied(mut self, change: &Change, version: u64, grown_by: usize) {
        self.done = true;
        match self.keys {
            Some([key]) => self.cache.applied(key, change, version, grown_by),
            Some(keys) => keys.iter().for_each(|key| self.cache.forget(key)),
            None => self.cache.clear(),
        }
    }

    /// The write ended and its keys were dealt with.
    pub(super) fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.keys {
            Some(keys) => keys.iter().for_each(|key| self.cache.forget(key)),
            None => self.cache.clear(),
        }
    }
}

impl ClientCache {
    pub(super) fn new(capacity: NonZeroUsize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: LruCache::new(capacity.get()),
                epoch: 0,
                touched: vec![0; STRIPES].into_boxed_slice(),
                connection: None,
                stats: CacheStats::default(),
            }),
            hasher: RandomState::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave an entry half-written
        // (each change is one map operation), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stripe(&self, key: &str) -> usize {
        // `as usize` then `%`: the remainder is below STRIPES whatever the width.
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// The cached session under `key`, if it may be served now.
    pub(super) fn get(&self, key: &str, now: OffsetDateTime) -> Option<Record> {
        let found = {
            let mut inner = self.lock();
            let found = match inner.connection {
                Some(_) => inner.entries.get(key).map(|entry| Arc::clone(&entry.record)),
                None => None,
            };
            let found = match found {
                // Expired by the application's clock: Redis decides what is left.
                Some(record) if record.meta.is_expired(now) => {
                    inner.entries.remove(key);
                    None
                }
                found => found,
            };
            match found {
                Some(_) => inner.stats.hits += 1,
                None => inner.stats.misses += 1,
            }
            found
        };
        found.map(|record| Record::clone(&record))
    }

    /// Taken before reading `key` from Redis.
    pub(super) fn ticket(&self, key: &str) -> Ticket {
        let stripe = self.stripe(key);
        let inner = self.lock();
        Ticket { epoch: inner.epoch, stripe, touched: inner.touched[stripe] }
    }

    /// A write of ours to the `keys` about to go out (see [`Writing`]).
    pub(super) fn writing<'a>(&'a self, keys: &'a [String]) -> Writing<'a> {
        Writing { cache: self, keys: Some(keys), done: false }
    }

    /// A write of ours to keys it will name only in its reply.
    pub(super) fn writing_unknown(&self) -> Writing<'_> {
        Writing { cache: self, keys: None, done: false }
    }

    fn flush(inner: &mut Inner) {
        inner.entries.clear();
        inner.epoch = inner.epoch.wrapping_add(1);
        inner.stats.flushes += 1;
    }

    /// Moves `key`'s stripe and drops its entry; whether there was one.
    fn touch(&self, inner: &mut Inner, key: &str) -> bool {
        let stripe = self.stripe(key);
        inner.touched[stripe] = inner.touched[stripe].wrapping_add(1);
        inner.entries.remove(key).is_some()
    }

    /// Stores what a tracked read of `key` (`size` bytes) on connection
    /// `connection` found, unless the key or the connection changed since
    /// `ticket`. Only the heartbeat moves the cache to another connection:
    /// a late reply from an abandoned one is not stored.
    pub(super) fn insert(&self, key: &str, ticket: Ticket, connection: i64, record: Record, version: u64, size: usize) {
        if size > MAX_ENTRY_BYTES {
            return;
        }
        let mut inner = self.lock();
        if inner.epoch != ticket.epoch || inner.touched[ticket.stripe] != ticket.touched {
            return;
        }
        match inner.connection {
            Some(current) if current != connection => return,
            Some(_) => {}
            None => inner.connection = Some(connection),
        }
        // A reply older than what a write of ours already put here is not.
        if inner.entries.peek(key).is_some_and(|entry| entry.version >= version) {
            return;
        }
        if inner.entries.len() >= inner.entries.capacity() && !inner.entries.contains_key(key) {
            // The evicted session's stripe moves too: a reply of it still in
            // flight may be older than a write of ours that updated it here.
            if let Some((evicted, _)) = inner.entries.remove_lru() {
                let stripe = self.stripe(&evicted);
                inner.touched[stripe] = inner.touched[stripe].wrapping_add(1);
            }
        }
        inner.entries.insert(key.to_owned(), Entry { record: Arc::new(record), version, size });
    }

    /// Our own `change` to `key` was applied, making it `version`: the entry
    /// follows if it held the version before and stays under the size
    /// limit; otherwise it goes, and so does any reply of it in flight.
    fn applied(&self, key: &str, change: &Change, version: u64, grown_by: usize) {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(key).filter(|entry| {
            entry.version.checked_add(1) == Some(version) && entry.size.saturating_add(grown_by) <= MAX_ENTRY_BYTES
        });
        match entry {
            Some(entry) => {
                Arc::make_mut(&mut entry.record).apply(change);
                entry.version = version;
                entry.size = entry.size.saturating_add(grown_by);
            }
            None => {
                self.touch(&mut inner, key);
            }
        }
    }

    /// Our own write to `key` ended (or failed, leaving it unknown): the
    /// next load reads it from Redis.
    pub(super) fn forget(&self, key: &str) {
        let mut inner = self.lock();
        self.touch(&mut inner, key);
    }

    /// The heartbeat heard from the connection with client id `connection`:
    /// if it is not the one the entries were tracked on, they go.
    pub(super) fn confirmed(&self, connection: i64) {
        let mut inner = self.lock();
        if inner.connection != Some(connection) {
            if inner.connection.is_some() {
                Self::flush(&mut inner);
            }
            inner.connection = Some(connection);
        }
    }

    /// The connection failed: pushes may have been lost with it.
    pub(super) fn lost(&self) {
        let mut inner = self.lock();
        Self::flush(&mut inner);
        inner.connection = None;
    }

    /// Drops everything: our own write may have changed sessions we cannot
    /// name (a login script whose reply was lost).
    pub(super) fn clear(&self) {
        Self::flush(&mut self.lock());
    }

    /// Handles a push from the connection: an invalidation drops its keys
    /// (all of them after `FLUSHDB`), a lost connection drops everything.
    pub(super) fn on_push(&self, push: &PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                let mut inner = self.lock();
                match push.data.first() {
                    Some(Reply::Array(keys)) => {
                        for key in keys {
                            let key = match key {
                                Reply::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
                                Reply::SimpleString(text) => Some(text.as_str()),
                                _ => None,
                            };
                            if let Some(key) = key
                                && self.touch(&mut inner, key)
                            {
                                inner.stats.invalidations += 1;
                            }
                        }
                    }
                    _ => Self::flush(&mut inner),
                }
            }
            PushKind::Disconnection => self.lost(),
            _ => {}
        }
    }

    pub(super) fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats { entries: inner.entries.len(), ..inner.stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Meta};

    fn record(n: i64) -> Record {
        let now = OffsetDateTime::now_utc();
        let meta = Meta {
            user_id: None,
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::HOUR,
            absolute_expires_at: None,
            permanent: false,
            device: Device::default(),
            siblings: Default::default(),
        };
        let mut data = serde_json::Map::new();
        data.insert("n".into(), n.into());
        Record { data, meta }
    }

    fn cache() -> ClientCache {
        ClientCache::new(NonZeroUsize::new(2).expect("non-zero"))
    }

    fn invalidate(key: &str) -> PushInfo {
        PushInfo { kind: PushKind::Invalidate, data: vec![Reply::Array(vec![Reply::BulkString(key.into())])] }
    }

    fn n(record: Option<Record>) -> Option<i64> {
        record.and_then(|r| r.data["n"].as_i64())
    }

    #[test]
    fn a_reply_whose_key_was_invalidated_after_its_read_went_out_is_not_stored() {
        let cache = cache();
        let ticket = cache.ticket("k");
        cache.on_push(&invalidate("k"));
        cache.insert("k", ticket, 7, record(1), 1, 100);
        assert_eq!(n(cache.get("k", OffsetDateTime::now_utc())), None);
        let ticket = cache.ticket("k");
        cache.insert("k", ticket, 7, record(2), 2, 100);
        assert_eq!(n(cache.get("k", OffsetDateTime::now_utc())), Some(2));
    }

    #[test]
    fn a_reply_sent_before_a_lost_connection_is_not_stored_and_the_loss_empties_the_cache() {
        let cache = cache();
        let ticket = cache.ticket("a");
        cache.insert("a", ticket, 7, record(1), 1, 100);
        let late = cache.ticket("b");
        cache.on_push(&PushInfo { kind: PushKind::Disconnection, data: vec![] });
        cache.insert("b", late, 7, record(1), 1, 100);
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(n(cache.get("a", OffsetDateTime::now_utc())), None);
    }

    #[test]
    fn a_reply_from_another_connection_is_not_stored_and_the_heartbeat_moves_the_cache_over() {
        let cache = cache();
        let ticket = cache.ticket("a");
        cache.insert("a", ticket, 7, record(1), 1, 100);
        let ticket = cache.ticket("b");
        cache.insert("b", ticket, 8, record(2), 1, 100);
        assert_eq!(n(cache.get("b", OffsetDateTime::now_utc())), None);
        assert_eq!(n(cache.get("a", OffsetDateTime::now_utc())), Some(1));
        cache.confirmed(8);
        assert_eq!(n(cache.get("a", OffsetDateTime::now_utc())), None);
        let ticket = cache.ticket("b");
        cache.insert("b", ticket, 8, record(2), 1, 100);
        assert_eq!(n(cache.get("b", OffsetDateTime::now_utc())), Some(2));
    }

    #[test]
    fn a_write_dropped_unfinished_forgets_its_keys_or_everything_when_it_named_none() {
        let cache = cache();
        for key in ["a", "b"] {
            let ticket = cache.ticket(key);
            cache.insert(key, ticket, 7, record(1), 1, 100);
        }
        let keys = ["a".to_owned()];
        drop(cache.writing(&keys));
        assert_eq!(n(cache.get("a", OffsetDateTime::now_utc())), None);
        assert_eq!(n(cache.get("b", OffsetDateTime::now_utc())), Some(1));
        cache.writing_unknown().done();
        assert_eq!(cache.stats().entries, 1);
        drop(cache.writing_unknown());
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn sessions_over_the_size_limit_are_not_kept() {
        let cache = cache();
        let ticket = cache.ticket("big");
        cache.insert("big", ticket, 7, record(1), 1, MAX_ENTRY_BYTES + 1);
        assert_eq!(cache.stats().entries, 0);
        let ticket = cache.ticket("k");
        cache.insert("k", ticket, 7, record(1), 1, MAX_ENTRY_BYTES - 10);
        let now = OffsetDateTime::now_utc();
        cache.applied("k", &Change::new(now, now + time::Duration::HOUR), 2, 11);
        assert_eq!(cache.stats().entries, 0, "a write grew it past the limit");
    }

    #[test]
    fn our_write_updates_the_entry_only_on_top_of_the_version_it_holds() {
        let cache = cache();
        let ticket = cache.ticket("k");
        cache.insert("k", ticket, 7, record(1), 4, 100);
        let now = OffsetDateTime::now_utc();
        let mut change = Change::new(now, now + time::Duration::HOUR);
        change.set.insert("n".into(), 2.into());
        cache.applied("k", &change, 5, 10);
        assert_eq!(n(cache.get("k", now)), Some(2));
        // Someone else's write came between: version 7 does not follow 5.
        cache.applied("k", &change, 7, 10);
        assert_eq!(n(cache.get("k", now)), None);
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_and_a_flushdb_empties_it() {
        let cache = cache();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            let ticket = cache.ticket(key);
            cache.insert(key, ticket, 7, record(i as i64), 1, 100);
        }
        assert_eq!(cache.stats().entries, 2);
        cache.on_push(&PushInfo { kind: PushKind::Invalidate, data: vec![Reply::Nil] });
        assert_eq!(cache.stats().entries, 0);
    }
}
