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
//!   ours) and the connection was not lost between sending the read and
//!   storing it: each read takes a [`Ticket`] first.
//! - Redis tracks our reads with `NOLOOP`, so our own writes send us no
//!   pushes: each one updates or drops its entry here. A write's script
//!   bumps the hash's `_ver` and re-reads it last, so Redis keeps tracking
//!   the key, and the entry is updated only if it held the version just
//!   before ours (no write of anyone else came between).
//! - An entry is served only while the connection it was tracked on is the
//!   current one: a lost connection (whose pushes are lost with it) flushes
//!   everything, and a replaced one is noticed by its client id, in every
//!   tracked command's reply and in a heartbeat (see `RedisStore`), which
//!   also flushes the cache when Redis stops answering.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use hashlink::LruCache;
use redis::{PushInfo, PushKind, Value as Reply};
use time::OffsetDateTime;

use crate::{Change, Record};

/// Sessions whose hash is larger than this are read from Redis every time:
/// the cache's memory stays under its capacity times this.
pub(super) const MAX_ENTRY_BYTES: usize = 64 * 1024;

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
    /// Keys dropped because Redis said another client changed them.
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
    record: Record,
    version: u64,
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
        let mut inner = self.lock();
        let record = inner
            .connection
            .is_some()
            .then(|| inner.entries.get(key).map(|entry| entry.record.clone()))
            .flatten()
            .filter(|record| !record.meta.is_expired(now));
        match record {
            Some(_) => inner.stats.hits += 1,
            None => inner.stats.misses += 1,
        }
        record
    }

    /// Taken before reading `key` from Redis.
    pub(super) fn ticket(&self, key: &str) -> Ticket {
        let stripe = self.stripe(key);
        let inner = self.lock();
        Ticket { epoch: inner.epoch, stripe, touched: inner.touched[stripe] }
    }

    /// Notes that the connection with client id `connection` answered; a
    /// different connection than the entries were tracked on drops them.
    fn heard(inner: &mut Inner, connection: i64) {
        if inner.connection != Some(connection) {
            // What the other connection tracked gets no pushes here.
            if inner.connection.is_some() {
                inner.entries.clear();
                inner.stats.flushes += 1;
            }
            inner.connection = Some(connection);
        }
    }

    fn flush(inner: &mut Inner) {
        inner.entries.clear();
        inner.epoch = inner.epoch.wrapping_add(1);
        inner.stats.flushes += 1;
    }

    fn touch(&self, inner: &mut Inner, key: &str) {
        let stripe = self.stripe(key);
        inner.touched[stripe] = inner.touched[stripe].wrapping_add(1);
        inner.entries.remove(key);
    }

    /// Stores what a tracked read of `key` on connection `connection` found,
    /// unless the key or the connection changed since `ticket`.
    pub(super) fn insert(&self, key: &str, ticket: Ticket, connection: i64, record: Record, version: u64) {
        let mut inner = self.lock();
        if inner.epoch != ticket.epoch {
            return;
        }
        Self::heard(&mut inner, connection);
        if inner.epoch != ticket.epoch || inner.touched[ticket.stripe] != ticket.touched {
            return;
        }
        inner.entries.insert(key.to_owned(), Entry { record, version });
    }

    /// Our own `change` to `key` was applied on connection `connection`,
    /// making it `version`: the entry follows if it held the version before.
    pub(super) fn applied(&self, key: &str, connection: i64, change: &Change, version: u64) {
        let mut inner = self.lock();
        let follows = inner.connection == Some(connection)
            && inner.entries.get(key).is_some_and(|entry| entry.version.checked_add(1) == Some(version));
        let stripe = self.stripe(key);
        inner.touched[stripe] = inner.touched[stripe].wrapping_add(1);
        if !follows {
            inner.entries.remove(key);
            return;
        }
        if let Some(entry) = inner.entries.get_mut(key) {
            entry.record.apply(change);
            entry.version = version;
        }
    }

    /// Our own write to `key` ended (or failed, leaving it unknown): the
    /// next load reads it from Redis.
    pub(super) fn forget(&self, key: &str) {
        let mut inner = self.lock();
        self.touch(&mut inner, key);
    }

    /// The heartbeat heard from the connection with client id `connection`.
    pub(super) fn confirmed(&self, connection: i64) {
        Self::heard(&mut self.lock(), connection);
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
        let mut inner = self.lock();
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Reply::Array(keys)) => {
                    for key in keys {
                        let key = match key {
                            Reply::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
                            Reply::SimpleString(text) => Some(text.as_str()),
                            _ => None,
                        };
                        if let Some(key) = key {
                            self.touch(&mut inner, key);
                            inner.stats.invalidations += 1;
                        }
                    }
                }
                _ => Self::flush(&mut inner),
            },
            PushKind::Disconnection => {
                Self::flush(&mut inner);
                inner.connection = None;
            }
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
        cache.insert("k", ticket, 7, record(1), 1);
        assert_eq!(n(cache.get("k", OffsetDateTime::now_utc())), None);
        let ticket = cache.ticket("k");
        cache.insert("k", ticket, 7, record(2), 2);
        assert_eq!(n(cache.get("k", OffsetDateTime::now_utc())), Some(2));
    }

    #[test]
    fn a_reply_sent_before_a_lost_connection_is_not_stored_and_the_loss_empties_the_cache() {
        let cache = cache();
        let ticket = cache.ticket("a");
        cache.insert("a", ticket, 7, record(1), 1);
        let late = cache.ticket("b");
        cache.on_push(&PushInfo { kind: PushKind::Disconnection, data: vec![] });
        cache.insert("b", late, 7, record(1), 1);
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(n(cache.get("a", OffsetDateTime::now_utc())), None);
    }

    #[test]
    fn a_new_connection_drops_what_the_old_one_tracked() {
        let cache = cache();
        let ticket = cache.ticket("a");
        cache.insert("a", ticket, 7, record(1), 1);
        let ticket = cache.ticket("b");
        cache.insert("b", ticket, 8, record(2), 1);
        assert_eq!(n(cache.get("a", OffsetDateTime::now_utc())), None);
        assert_eq!(n(cache.get("b", OffsetDateTime::now_utc())), Some(2));
    }

    #[test]
    fn our_write_updates_the_entry_only_on_top_of_the_version_it_holds() {
        let cache = cache();
        let ticket = cache.ticket("k");
        cache.insert("k", ticket, 7, record(1), 4);
        let now = OffsetDateTime::now_utc();
        let mut change = Change::new(now, now + time::Duration::HOUR);
        change.set.insert("n".into(), 2.into());
        cache.applied("k", 7, &change, 5);
        assert_eq!(n(cache.get("k", now)), Some(2));
        // Someone else's write came between: version 7 does not follow 5.
        cache.applied("k", 7, &change, 7);
        assert_eq!(n(cache.get("k", now)), None);
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_and_a_flushdb_empties_it() {
        let cache = cache();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            let ticket = cache.ticket(key);
            cache.insert(key, ticket, 7, record(i as i64), 1);
        }
        assert_eq!(cache.stats().entries, 2);
        cache.on_push(&PushInfo { kind: PushKind::Invalidate, data: vec![Reply::Nil] });
        assert_eq!(cache.stats().entries, 0);
    }
}
