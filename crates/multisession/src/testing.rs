//! The store conformance suite every store must pass, public so that a
//! third-party store can prove itself against the same bar; and
//! [`CountingStore`], which counts the calls the engine makes.
//!
//! A store's test file implements [`Harness`] and invokes
//! [`store_conformance_tests!`](crate::store_conformance_tests), which
//! generates one `#[tokio::test]` per behaviour:
//!
//! ```
//! use std::sync::Arc;
//! use multisession::{StoreKey, store::{MemoryStore, Store}, testing::Harness};
//!
//! struct Memory(Arc<MemoryStore>);
//!
//! #[async_trait::async_trait]
//! impl Harness for Memory {
//!     fn store(&self) -> Arc<dyn Store> { self.0.clone() }
//!     async fn corrupt(&self, key: &StoreKey) { self.0.write_raw(key, b"{not json"); }
//!     async fn holds(&self, key: &StoreKey) -> Option<bool> { Some(self.0.holds(key)) }
//!     async fn work(&self) -> Option<u64> { Some(self.0.entries_examined()) }
//! }
//!
//! // In tests/memory.rs:
//! // multisession::store_conformance_tests!(async { Memory(Arc::new(MemoryStore::new())) });
//! # let _ = Memory(Arc::new(MemoryStore::new()));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use time::{Duration, OffsetDateTime};

use crate::store::{SessionInfo, Store};
use crate::{Change, Device, ErrorKind, Meta, Record, Result, SessionId, SessionLimit, StoreKey};

/// What the suite needs from a backend besides the store itself.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The store under test. Each generated test gets a fresh harness; the
    /// suite uses users and keys of its own, so a shared backend is fine.
    fn store(&self) -> Arc<dyn Store>;

    /// Overwrites the stored session `key` by hand, through the backend's
    /// own client, with data the store cannot decode.
    async fn corrupt(&self, key: &StoreKey);

    /// Whether the backend still holds a record under `key`, expired or not,
    /// asked through its own client; `None` where the backend expires
    /// records itself on a clock of its own (Memcached's ticks once a
    /// second), so when it lets go of one cannot be observed exactly.
    async fn holds(&self, key: &StoreKey) -> Option<bool>;

    /// How many entries the backend's separate index of `user`'s sessions
    /// holds, where the store keeps one beside the sessions (Redis, Memcached).
    async fn index_entries(&self, _user: &str) -> Option<u64> {
        None
    }

    /// Whether the store holds a login's session cap in one step
    /// ([`Store::create_login`]), so that concurrent logins never pass it.
    fn caps_logins_atomically(&self) -> bool {
        true
    }

    /// The backend's own count of work done so far (commands, or entries
    /// examined), where it keeps one. Listing and deleting one user's
    /// sessions must cost the same with 10 and with 10 000 other sessions.
    async fn work(&self) -> Option<u64> {
        None
    }

    /// For backends without a work counter (SQL databases): whether the
    /// planner runs every user query of the store through an index, asked of
    /// the backend itself (`EXPLAIN`). A harness must provide this or
    /// [`Harness::work`].
    async fn user_queries_use_index(&self) -> Option<bool> {
        None
    }

    /// Whether the store keeps a user index. Without one, the user checks
    /// expect `Unsupported`.
    fn has_user_index(&self) -> bool {
        true
    }

    /// Whether [`Store::delete_expired_batch`] names the logins it removes
    /// ([`ExpiredBatch::logins`](crate::store::ExpiredBatch::logins)). Without it, the
    /// check expects it to name none: a store whose backend removes expired
    /// records by itself cannot tell.
    fn reports_expired_logins(&self) -> bool {
        true
    }

    /// Whether the store can walk all its sessions a page at a time
    /// ([`Store::sessions_page`]). Without it, the walk check expects
    /// `Unsupported`.
    fn walks_sessions(&self) -> bool {
        true
    }
}

/// Generates one `#[tokio::test]` per conformance check, each calling
/// `$harness` (an expression evaluating to a future of a [`Harness`]).
#[macro_export]
macro_rules! store_conformance_tests {
    ($harness:expr) => {
        $crate::store_conformance_tests!(@tests $harness;
            create_then_load_round_trips,
            values_and_keys_round_trip_exactly,
            create_never_overwrites,
            unknown_key_loads_nothing,
            expired_record_is_never_loaded,
            corrupt_record_is_a_corrupt_error,
            apply_changes_only_named_keys,
            concurrent_applies_keep_every_key,
            deleted_session_is_gone_and_stays_gone,
            expired_session_is_gone,
            touch_moves_expiry_and_keeps_data,
            delete_answers_whether_it_deleted,
            user_sessions_lists_exactly_live_sessions,
            session_moves_between_users_on_relogin,
            delete_user_sessions_spares_keep_and_others,
            user_operations_cost_does_not_grow_with_store,
            delete_expired_removes_only_expired_and_names_each_expired_login_once,
            errors_name_no_key,
            a_maximal_user_id_and_nul_characters_round_trip,
            the_user_index_stays_the_size_of_the_live_sessions,
            ten_thousand_sessions_of_one_user_are_listed_and_cleared_while_others_are_served,
            no_path_brings_back_a_session_ended_after_its_request_loaded_it,
            logins_refuse_user_ids_no_store_can_hold,
            concurrent_logins_hold_the_session_cap,
            login_gives_every_server_part_of_the_device_a_new_id,
            ending_a_device_ends_every_server_part_it_has,
            a_session_of_ten_thousand_keys_round_trips,
            a_part_made_or_moved_while_its_user_is_logged_out_everywhere_reads_nothing,
            every_live_session_is_walked_a_page_at_a_time,
            a_device_writing_while_its_user_logs_out_everywhere_ends_logged_out,
            two_hundred_concurrent_requests_writing_their_own_keys_lose_none,
            requests_beside_a_login_of_their_session_keep_the_browser_logged_in,
            a_late_login_replaces_only_its_users_session_and_fits_the_cap,
        );
    };
    (@tests $harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness.await;
                $crate::testing::checks::$check(&harness).await;
            }
        )*
    };
}

/// Waits until the clock sessions read (the wall clock, to the millisecond)
/// has passed `t`: for a test that needs a later timestamp or an expiry
/// behind it, a condition on that clock rather than a sleep of a guessed
/// length on another.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let t = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(3);
/// multisession::testing::wait_past(t).await;
/// assert!(time::OffsetDateTime::now_utc() > t);
/// # }
/// ```
pub async fn wait_past(t: OffsetDateTime) {
    loop {
        let left = t - crate::record::now();
        if left.is_negative() {
            return;
        }
        let left = std::time::Duration::try_from(left).unwrap_or_default();
        tokio::time::sleep(left + std::time::Duration::from_millis(1)).await;
    }
}

/// A wrapper that counts every call the engine makes to a store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::{store::{MemoryStore, Store}, testing::CountingStore};
/// let store = CountingStore::new(MemoryStore::new());
/// store.load(&multisession::SessionId::generate()?.store_key()).await?;
/// assert_eq!(store.counts().loads, 1);
/// assert_eq!(store.counts().writes(), 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct CountingStore<S> {
    inner: S,
    loads: AtomicU64,
    creates: AtomicU64,
    applies: AtomicU64,
    touches: AtomicU64,
    deletes: AtomicU64,
    user_reads: AtomicU64,
    user_deletes: AtomicU64,
}

/// Calls made so far, by method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Counts {
    pub loads: u64,
    pub creates: u64,
    pub applies: u64,
    pub touches: u64,
    pub deletes: u64,
    pub user_reads: u64,
    pub user_deletes: u64,
}

impl Counts {
    /// Every call that writes.
    ///
    /// ```
    /// assert_eq!(multisession::testing::Counts::default().writes(), 0);
    /// ```
    pub fn writes(&self) -> u64 {
        self.creates + self.applies + self.touches + self.deletes + self.user_deletes
    }

    /// Every call.
    ///
    /// ```
    /// assert_eq!(multisession::testing::Counts::default().total(), 0);
    /// ```
    pub fn total(&self) -> u64 {
        self.writes() + self.loads + self.user_reads
    }
}

impl<S: Store> CountingStore<S> {
    /// Wraps `inner`.
    ///
    /// ```
    /// let store = multisession::testing::CountingStore::new(multisession::store::MemoryStore::new());
    /// assert_eq!(store.counts().total(), 0);
    /// ```
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            loads: AtomicU64::new(0),
            creates: AtomicU64::new(0),
            applies: AtomicU64::new(0),
            touches: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            user_reads: AtomicU64::new(0),
            user_deletes: AtomicU64::new(0),
        }
    }

    /// The calls so far.
    ///
    /// ```
    /// let store = multisession::testing::CountingStore::new(multisession::store::MemoryStore::new());
    /// assert_eq!(store.counts(), Default::default());
    /// ```
    pub fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        Counts {
            loads: get(&self.loads),
            creates: get(&self.creates),
            applies: get(&self.applies),
            touches: get(&self.touches),
            deletes: get(&self.deletes),
            user_reads: get(&self.user_reads),
            user_deletes: get(&self.user_deletes),
        }
    }

    /// The wrapped store.
    ///
    /// ```
    /// let store = multisession::testing::CountingStore::new(multisession::store::MemoryStore::new());
    /// let _memory: &multisession::store::MemoryStore = store.inner();
    /// ```
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

#[async_trait]
impl<S: Store> Store for CountingStore<S> {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        bump(&self.loads);
        self.inner.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        bump(&self.creates);
        self.inner.create(key, record).await
    }
    async fn create_login(
        &self,
        key: &StoreKey,
        record: &Record,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        bump(&self.creates);
        self.inner.create_login(key, record, replaces, limit).await
    }
    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        bump(if change.alters() { &self.applies } else { &self.touches });
        self.inner.apply(key, change).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        bump(&self.deletes);
        self.inner.delete(key).await
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        bump(&self.user_reads);
        self.inner.user_sessions(user).await
    }
    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        bump(&self.user_deletes);
        self.inner.delete_user_sessions(user, keep).await
    }
    async fn delete_expired_batch(&self) -> Result<crate::store::ExpiredBatch> {
        self.inner.delete_expired_batch().await
    }
    async fn sessions_page(
        &self,
        cursor: Option<&crate::store::PageCursor>,
        limit: usize,
    ) -> Result<crate::store::SessionsPage> {
        self.inner.sessions_page(cursor, limit).await
    }
}

/// The checks behind [`store_conformance_tests!`](crate::store_conformance_tests),
/// one function per behaviour. Each panics with a message that says what the
/// store got wrong.
pub mod checks {
    use super::*;

    fn now() -> OffsetDateTime {
        crate::record::now()
    }

    fn key() -> StoreKey {
        SessionId::generate().expect("the OS random number generator works").store_key()
    }

    /// A user id no other test uses, so the suite can share a backend.
    fn user(label: &str) -> String {
        format!("{label}-{}", &key().to_string()[..12])
    }

    fn record(user: Option<&str>, data: Map<String, Value>) -> Record {
        let now = now();
        Record {
            data,
            meta: Meta {
                user_id: user.map(str::to_owned),
                created_at: now - Duration::minutes(5),
                last_active_at: now,
                expires_at: now + Duration::hours(1),
                absolute_expires_at: Some(now + Duration::days(2)),
                permanent: true,
                device: Device::new(Some("Mozilla/5.0 (conformance)".into()), "203.0.113.9".parse().ok()),
                siblings: BTreeMap::from([("data".to_owned(), key())]),
            },
        }
    }

    /// Panics if an error's text shows `key`, in any form a store keeps it
    /// (hex, base64).
    fn assert_names_no_key(err: &crate::Error, key: &StoreKey) {
        use base64::Engine as _;
        let text = format!("{err} {err:?}");
        let base64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes());
        assert!(!text.contains(&key.to_string()) && !text.contains(&base64), "an error shows a store key: {text}");
    }

    fn data(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    async fn create(store: &dyn Store, record: &Record) -> StoreKey {
        let key = key();
        store.create(&key, record).await.expect("create succeeds");
        key
    }

    async fn load(store: &dyn Store, key: &StoreKey) -> Option<Record> {
        store.load(key).await.expect("load succeeds")
    }

    fn change(set: &[(&str, Value)], remove: &[&str]) -> Change {
        let now = now();
        let mut change = Change::new(now, now + Duration::hours(2));
        change.set = set.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<BTreeMap<_, _>>();
        change.remove = remove.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>();
        change
    }

    /// A change that only moves the times: a touch.
    fn touch(user: Option<&str>) -> Change {
        let now = now();
        let mut change = Change::new(now, now + Duration::hours(5));
        change.user_id = user.map(str::to_owned);
        change
    }

    fn keys_of(list: &[SessionInfo]) -> BTreeSet<StoreKey> {
        list.iter().map(|s| s.key).collect()
    }

    /// `create` then `load` returns the same data and metadata.
    pub async fn create_then_load_round_trips(h: &dyn Harness) {
        let store = h.store();
        let u = user("round-trip");
        let original = record(Some(&u), data(&[("cart", json!([1, 2, 3])), ("theme", json!("dark"))]));
        let key = create(&*store, &original).await;
        assert_eq!(load(&*store, &key).await, Some(original), "the loaded record differs from the created one");
    }

    /// Nested JSON, unicode, 100 kB values, numbers at the edges and
    /// awkward keys come back unchanged.
    pub async fn values_and_keys_round_trip_exactly(h: &dyn Harness) {
        let store = h.store();
        let long_key = "k".repeat(1024);
        let mut original = record(None, Map::new());
        for (k, v) in [
            ("nested", json!({"a": {"b": [1, {"c": null}], "d": true}})),
            ("unicode", json!("héllo wörld ✓ 日本 🎉")),
            ("big", json!("x".repeat(100 * 1024))),
            ("i64_min", json!(i64::MIN)),
            ("i64_max", json!(i64::MAX)),
            ("u64_max", json!(u64::MAX)),
            ("f64_max", json!(f64::MAX)),
            ("f64_tiny", json!(f64::MIN_POSITIVE)),
            ("f64_frac", json!(0.1_f64)),
            ("null", Value::Null),
            ("a.b", json!(1)),
            ("$x", json!(2)),
            ("", json!(3)),
            ("ключ", json!(4)),
            ("quote\"d", json!(5)),
            (long_key.as_str(), json!(6)),
        ] {
            original.data.insert(k.to_owned(), v);
        }
        let key = create(&*store, &original).await;
        let loaded = load(&*store, &key).await.expect("the record loads");
        for (k, v) in &original.data {
            assert_eq!(loaded.data.get(k), Some(v), "key {:?} did not round-trip", &k[..k.len().min(20)]);
        }
        assert_eq!(loaded.data.len(), original.data.len(), "extra keys came back");

        let mut change = change(&[("a.b", json!("set")), ("$y", json!([]))], &["$x", ""]);
        change.set.insert(long_key.clone(), json!("updated"));
        store.apply(&key, &change).await.expect("apply succeeds");
        let loaded = load(&*store, &key).await.expect("the record loads");
        assert_eq!(loaded.data.get("a.b"), Some(&json!("set")));
        assert_eq!(loaded.data.get("$y"), Some(&json!([])));
        assert_eq!(loaded.data.get(&long_key), Some(&json!("updated")));
        assert!(!loaded.data.contains_key("$x") && !loaded.data.contains_key(""), "removed keys remain");
    }

    /// A second `create` on the same key is `Conflict` and changes nothing.
    pub async fn create_never_overwrites(h: &dyn Harness) {
        let store = h.store();
        let first = record(None, data(&[("n", json!(1))]));
        let key = create(&*store, &first).await;
        let err = store.create(&key, &record(None, data(&[("n", json!(2))]))).await.expect_err("create overwrote");
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(load(&*store, &key).await.map(|r| r.data), Some(first.data));
    }

    /// An unknown key loads `None`.
    pub async fn unknown_key_loads_nothing(h: &dyn Harness) {
        assert_eq!(load(&*h.store(), &key()).await, None);
    }

    /// A record past its expiry loads `None`, even if the backend still holds it.
    pub async fn expired_record_is_never_loaded(h: &dyn Harness) {
        let store = h.store();
        let mut expired = record(None, data(&[("n", json!(1))]));
        expired.meta.expires_at = now() - Duration::seconds(1);
        let key = key();
        // A store may refuse to keep an already expired record; it must not return one.
        let _ = store.create(&key, &expired).await;
        assert_eq!(load(&*store, &key).await, None, "an expired record was loaded");

        let mut short = record(None, data(&[("n", json!(1))]));
        short.meta.expires_at = now() + Duration::milliseconds(300);
        let key = create(&*store, &short).await;
        wait_past(short.meta.expires_at).await;
        assert_eq!(load(&*store, &key).await, None, "a record was loaded after it expired");
    }

    /// Undecodable stored data is a `Corrupt` error, not a panic.
    pub async fn corrupt_record_is_a_corrupt_error(h: &dyn Harness) {
        let store = h.store();
        let key = create(&*store, &record(None, data(&[("n", json!(1))]))).await;
        h.corrupt(&key).await;
        let err = store.load(&key).await.expect_err("corrupt data loaded");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    }

    /// `apply` sets and removes the named keys and leaves the rest.
    pub async fn apply_changes_only_named_keys(h: &dyn Harness) {
        let store = h.store();
        let original = record(None, data(&[("keep", json!(1)), ("drop", json!(2)), ("change", json!(3))]));
        let key = create(&*store, &original).await;
        let mut c = change(&[("change", json!("new")), ("add", json!({"x": 1}))], &["drop", "absent"]);
        c.permanent = Some(false);
        store.apply(&key, &c).await.expect("apply succeeds");
        let loaded = load(&*store, &key).await.expect("the record loads");
        assert_eq!(loaded.data, data(&[("keep", json!(1)), ("change", json!("new")), ("add", json!({"x": 1}))]));
        assert_eq!(loaded.meta.expires_at, c.expires_at, "apply must move the expiry");
        assert_eq!(loaded.meta.last_active_at, c.last_active_at);
        assert!(!loaded.meta.permanent, "apply must set the permanent flag");
        assert_eq!(loaded.meta.user_id, original.meta.user_id);
        assert_eq!(loaded.meta.created_at, original.meta.created_at);

        let mut clear = change(&[("fresh", json!(true))], &[]);
        clear.clear = true;
        store.apply(&key, &clear).await.expect("apply succeeds");
        assert_eq!(load(&*store, &key).await.map(|r| r.data), Some(data(&[("fresh", json!(true))])));
    }

    /// 50 concurrent `apply` calls, each setting its own key: all 50 survive.
    pub async fn concurrent_applies_keep_every_key(h: &dyn Harness) {
        let store = h.store();
        let key = create(&*store, &record(None, data(&[("base", json!(0))]))).await;
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..50 {
            let store = store.clone();
            writers.spawn(async move { store.apply(&key, &change(&[(&format!("k{i}"), json!(i))], &[])).await });
        }
        while let Some(done) = writers.join_next().await {
            done.expect("writer task").expect("apply succeeds");
        }
        let loaded = load(&*store, &key).await.expect("the record loads");
        let missing: Vec<_> = (0..50).filter(|i| loaded.data.get(&format!("k{i}")) != Some(&json!(i))).collect();
        assert!(missing.is_empty(), "lost updates for writers {missing:?}");
        assert_eq!(loaded.data.get("base"), Some(&json!(0)));
    }

    /// `apply` and a touch after `delete` are `Gone`; nothing reappears.
    pub async fn deleted_session_is_gone_and_stays_gone(h: &dyn Harness) {
        let store = h.store();
        let u = user("gone");
        let key = create(&*store, &record(Some(&u), data(&[("n", json!(1))]))).await;
        assert!(store.delete(&key).await.expect("delete succeeds"));
        let err = store.apply(&key, &change(&[("n", json!(2))], &[])).await.expect_err("apply recreated");
        assert_eq!(err.kind(), ErrorKind::Gone, "{err}");
        let err = store.apply(&key, &touch(Some(&u))).await.expect_err("touch recreated");
        assert_eq!(err.kind(), ErrorKind::Gone, "{err}");
        assert_eq!(load(&*store, &key).await, None, "a deleted session came back");
        if h.has_user_index() {
            let listed = store.user_sessions(&u).await.expect("user_sessions succeeds");
            assert!(listed.is_empty(), "the user index still lists a deleted session");
        }
    }

    /// `apply` and a touch on an expired session are `Gone`.
    pub async fn expired_session_is_gone(h: &dyn Harness) {
        let store = h.store();
        let mut short = record(None, data(&[("n", json!(1))]));
        short.meta.expires_at = now() + Duration::milliseconds(300);
        let key = create(&*store, &short).await;
        wait_past(short.meta.expires_at).await;
        let err = store.apply(&key, &change(&[("n", json!(2))], &[])).await.expect_err("apply revived");
        assert_eq!(err.kind(), ErrorKind::Gone, "{err}");
        let err = store.apply(&key, &touch(None)).await.expect_err("touch revived");
        assert_eq!(err.kind(), ErrorKind::Gone, "{err}");
        assert_eq!(load(&*store, &key).await, None);
    }

    /// A touch (a change that alters nothing) moves the expiry and activity
    /// time and keeps the data.
    pub async fn touch_moves_expiry_and_keeps_data(h: &dyn Harness) {
        let store = h.store();
        let original = record(None, data(&[("n", json!(1))]));
        let key = create(&*store, &original).await;
        let change = touch(None);
        let (active, expires) = (change.last_active_at, change.expires_at);
        store.apply(&key, &change).await.expect("touch succeeds");
        let loaded = load(&*store, &key).await.expect("the record loads");
        assert_eq!(loaded.meta.expires_at, expires);
        assert_eq!(loaded.meta.last_active_at, active);
        assert_eq!(loaded.data, original.data);
    }

    /// `delete` says whether it deleted; twice is not an error.
    pub async fn delete_answers_whether_it_deleted(h: &dyn Harness) {
        let store = h.store();
        let key = create(&*store, &record(None, data(&[("n", json!(1))]))).await;
        assert!(store.delete(&key).await.expect("delete succeeds"));
        assert!(!store.delete(&key).await.expect("a second delete succeeds"));
    }

    /// `user_sessions` lists exactly the user's live sessions, with device
    /// facts and timestamps.
    pub async fn user_sessions_lists_exactly_live_sessions(h: &dyn Harness) {
        let store = h.store();
        let (u, other) = (user("list"), user("other"));
        if !h.has_user_index() {
            let err = store.user_sessions(&u).await.expect_err("a store without a user index listed users");
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            return;
        }
        let live = record(Some(&u), Map::new());
        let a = create(&*store, &live).await;
        let b = create(&*store, &live).await;
        let deleted = create(&*store, &live).await;
        store.delete(&deleted).await.expect("delete succeeds");
        let mut short = record(Some(&u), Map::new());
        short.meta.expires_at = now() + Duration::milliseconds(300);
        let _expired = create(&*store, &short).await;
        let _theirs = create(&*store, &record(Some(&other), Map::new())).await;
        wait_past(short.meta.expires_at).await;

        let listed = store.user_sessions(&u).await.expect("user_sessions succeeds");
        assert_eq!(keys_of(&listed), BTreeSet::from([a, b]), "wrong sessions listed");
        let info = listed.iter().find(|s| s.key == a).expect("listed");
        assert_eq!(info.user_id, u);
        assert_eq!(info.device, live.meta.device);
        assert_eq!((info.created_at, info.last_active_at), (live.meta.created_at, live.meta.last_active_at));
        assert_eq!((info.expires_at, info.permanent), (live.meta.expires_at, live.meta.permanent));
    }

    /// Logging out and in as someone else moves the session between lists.
    pub async fn session_moves_between_users_on_relogin(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        let store = h.store();
        let (first, second) = (user("first"), user("second"));
        let old = create(&*store, &record(Some(&first), Map::new())).await;
        store.delete(&old).await.expect("delete succeeds");
        let new = create(&*store, &record(Some(&second), Map::new())).await;
        assert!(store.user_sessions(&first).await.expect("listed").is_empty());
        assert_eq!(keys_of(&store.user_sessions(&second).await.expect("listed")), BTreeSet::from([new]));
    }

    /// `delete_user_sessions` deletes all but `keep`, counts them, and leaves
    /// other users alone; without `keep`, all.
    pub async fn delete_user_sessions_spares_keep_and_others(h: &dyn Harness) {
        let store = h.store();
        let (u, other) = (user("clear"), user("bystander"));
        if !h.has_user_index() {
            let err = store.delete_user_sessions(&u, None).await.expect_err("a store without a user index cleared");
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            return;
        }
        let mine: Vec<StoreKey> = {
            let mut keys = Vec::new();
            for _ in 0..4 {
                keys.push(create(&*store, &record(Some(&u), Map::new())).await);
            }
            keys
        };
        let theirs = create(&*store, &record(Some(&other), Map::new())).await;
        let deleted = store.delete_user_sessions(&u, Some(&mine[0])).await.expect("delete_user_sessions succeeds");
        assert_eq!(deleted, 3, "wrong count of deleted sessions");
        assert_eq!(keys_of(&store.user_sessions(&u).await.expect("listed")), BTreeSet::from([mine[0]]));
        for key in &mine[1..] {
            assert_eq!(load(&*store, key).await, None, "a cleared session still loads");
        }
        assert!(load(&*store, &theirs).await.is_some(), "another user's session was deleted");
        assert_eq!(store.delete_user_sessions(&u, None).await.expect("succeeds"), 1);
        assert_eq!(load(&*store, &mine[0]).await, None);
        assert_eq!(keys_of(&store.user_sessions(&other).await.expect("listed")), BTreeSet::from([theirs]));
    }

    /// Listing and clearing a user costs the same backend work with 10 and
    /// with 10 000 other sessions in the store: counted where the backend
    /// counts, or by the planner's choice of an index.
    pub async fn user_operations_cost_does_not_grow_with_store(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        let store = h.store();
        async fn fill(store: &dyn Store, n: usize) {
            // Short-lived, so a backend that keeps them (a shared cache)
            // lets go of them soon after the run.
            let mut crowd = record(None, Map::new());
            crowd.meta.expires_at = now() + Duration::minutes(10);
            for i in 0..n {
                crowd.meta.user_id = Some(format!("crowd-{i}"));
                create(store, &crowd).await;
            }
        }
        async fn cost(h: &dyn Harness, store: &dyn Store, label: &str) -> Option<u64> {
            let u = user(label);
            let mine = [
                create(store, &record(Some(&u), Map::new())).await,
                create(store, &record(Some(&u), Map::new())).await,
            ];
            let before = h.work().await;
            assert_eq!(store.user_sessions(&u).await.expect("listed").len(), 2);
            assert_eq!(store.delete_user_sessions(&u, Some(&mine[0])).await.expect("cleared"), 1);
            Some(h.work().await? - before?)
        }
        fill(&*store, 10).await;
        let small = cost(h, &*store, "small").await;
        fill(&*store, 10_000).await;
        let large = cost(h, &*store, "large").await;
        // A cost-based planner rightly scans a table of ten rows; what must
        // hold is that it uses the user index once the store is large.
        let indexed = h.user_queries_use_index().await;
        match (small, large, indexed) {
            (Some(small), Some(large), _) => {
                assert!(small > 0, "the harness reports no work: its counter is not wired to the backend");
                assert_eq!(small, large, "user operations cost {small} with 10 others and {large} with 10 010");
            }
            (None, None, Some(indexed)) => {
                assert!(indexed, "with 10 010 other sessions, a user query does not use the user index");
            }
            _ => panic!("the harness must report either a work counter or whether user queries use an index"),
        }
    }

    /// Calls `delete_expired_batch` until it says nothing is left; the logins it
    /// named.
    async fn sweep(store: &dyn Store) -> Vec<SessionInfo> {
        let mut logins = Vec::new();
        for _ in 0..100_000 {
            let done = store.delete_expired_batch().await.expect("delete_expired_batch succeeds");
            assert!(done.removed >= done.logins.len() as u64, "delete_expired_batch named more logins than it removed");
            logins.extend(done.logins);
            if !done.more {
                return logins;
            }
        }
        panic!("delete_expired_batch still says more after 100 000 calls");
    }

    /// `delete_expired_batch` removes expired records and keeps live ones; an
    /// expired record is no session to `delete` either. Of two cleanups
    /// running at once, each expired login is named by exactly one, with its
    /// user, device and expiry; live sessions and expired sessions without
    /// a user are never named. Stores that cannot tell name none. (One
    /// check, so that no other check of the suite sweeps at the same time.)
    pub async fn delete_expired_removes_only_expired_and_names_each_expired_login_once(h: &dyn Harness) {
        let store = h.store();
        let (gone_user, live_user) = (user("expired"), user("still-live"));
        let live = create(&*store, &record(Some(&live_user), data(&[("n", json!(1))]))).await;
        // Each expires 300 ms after its own creation, however slow the backend.
        let short = |user: Option<&str>| {
            let mut short = record(user, data(&[("n", json!(2))]));
            short.meta.expires_at = now() + Duration::milliseconds(300);
            short
        };
        let mut expired = BTreeMap::new();
        for _ in 0..40 {
            let record = short(Some(&gone_user));
            expired.insert(create(&*store, &record).await, record);
        }
        let nobody = create(&*store, &short(None)).await;
        let gone = create(&*store, &short(None)).await;
        // Past the expiry of the last one made.
        wait_past(now() + Duration::milliseconds(300)).await;
        let (a, b) = tokio::join!(sweep(&*store), sweep(&*store));
        assert!(load(&*store, &live).await.is_some(), "delete_expired_batch removed a live session");
        assert_eq!(load(&*store, &nobody).await, None);
        if let Some(held) = h.holds(&nobody).await {
            assert!(!held, "delete_expired_batch left the expired record in the backend");
        }
        if let Some(held) = h.holds(&live).await {
            assert!(held, "the harness's probe does not see a live record");
        }
        assert!(!store.delete(&gone).await.expect("delete succeeds"), "deleting an expired session counted as one");

        let named: Vec<SessionInfo> = a
            .into_iter()
            .chain(b)
            .filter(|info| [&gone_user, &live_user].contains(&&info.user_id) || [live, nobody].contains(&info.key))
            .collect();
        if !h.reports_expired_logins() {
            assert!(named.is_empty(), "a store that cannot tell named expired logins: {named:?}");
            return;
        }
        let keys: Vec<StoreKey> = named.iter().map(|info| info.key).collect();
        let distinct: BTreeSet<StoreKey> = keys.iter().copied().collect();
        assert_eq!(keys.len(), distinct.len(), "of two cleanups at once, both named one expired login");
        assert!(
            distinct.iter().eq(expired.keys()),
            "the expired logins named ({}) are not the {} that expired",
            distinct.len(),
            expired.len()
        );
        for info in &named {
            let record = &expired[&info.key];
            assert_eq!(info.user_id, gone_user);
            assert_eq!(info.device, record.meta.device);
            assert_eq!(info.expires_at, record.meta.expires_at);
        }
    }

    /// No error a store returns shows a store key: not a conflict, not
    /// corrupt data, not a change to a session that is gone.
    pub async fn errors_name_no_key(h: &dyn Harness) {
        let store = h.store();
        let key = create(&*store, &record(Some(&user("errors")), data(&[("n", json!(1))]))).await;
        let err = store.create(&key, &record(None, Map::new())).await.expect_err("create overwrote");
        assert_names_no_key(&err, &key);
        h.corrupt(&key).await;
        let err = store.load(&key).await.expect_err("corrupt data loaded");
        assert_names_no_key(&err, &key);
        store.delete(&key).await.expect("delete succeeds");
        let err = store.apply(&key, &change(&[("n", json!(2))], &[])).await.expect_err("apply recreated");
        assert_names_no_key(&err, &key);
    }

    /// A user id of [`MAX_USER_ID_BYTES`](crate::MAX_USER_ID_BYTES) (of
    /// three-byte characters) is kept and listed whole, and U+0000 and
    /// U+0001 in keys and values round-trip, through `create` and `apply`.
    pub async fn a_maximal_user_id_and_nul_characters_round_trip(h: &dyn Harness) {
        let store = h.store();
        let tag = &key().to_string()[..12];
        let long_user: String =
            format!("{tag}{}", "日".repeat((crate::MAX_USER_ID_BYTES - tag.len()) / 3)).chars().take(200).collect();
        let long_user = {
            let mut u = long_user;
            while u.len() < crate::MAX_USER_ID_BYTES {
                u.push('x');
            }
            u
        };
        assert_eq!(long_user.len(), crate::MAX_USER_ID_BYTES);
        let original = record(
            Some(&long_user),
            data(&[("nul\0key", json!("a\0b")), ("one\u{1}", json!(["\u{1}0", "\0", {"\0": "\u{1}1"}]))]),
        );
        let key = create(&*store, &original).await;
        assert_eq!(load(&*store, &key).await, Some(original.clone()), "NUL characters did not round-trip");
        if h.has_user_index() {
            let listed = store.user_sessions(&long_user).await.expect("user_sessions succeeds");
            assert_eq!(keys_of(&listed), BTreeSet::from([key]), "a maximal user id was not listed whole");
        }
        let mut c = change(&[("set\0", json!("\0\u{1}"))], &["nul\0key"]);
        c.siblings = Some(BTreeMap::new());
        store.apply(&key, &c).await.expect("apply succeeds");
        let loaded = load(&*store, &key).await.expect("the record loads");
        assert_eq!(loaded.data.get("set\0"), Some(&json!("\0\u{1}")));
        assert!(!loaded.data.contains_key("nul\0key"));
        assert!(loaded.meta.siblings.is_empty(), "apply did not clear the siblings");
    }

    /// Logins and touches of one user leave the user's index the size of
    /// the user's live sessions: a session replaced by a new login leaves
    /// nothing behind, and a thousand touches that each move the expiry
    /// leave it under a bound that does not grow with the writes.
    pub async fn the_user_index_stays_the_size_of_the_live_sessions(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        let store = h.store();
        let u = user("steady");
        let stays = create(&*store, &record(Some(&u), Map::new())).await;
        let mut device = create(&*store, &record(Some(&u), Map::new())).await;
        for _ in 0..200 {
            let next = create(&*store, &record(Some(&u), Map::new())).await;
            assert!(store.delete(&device).await.expect("delete succeeds"));
            device = next;
        }
        // Read before listing, which may compact the index itself.
        if let Some(entries) = h.index_entries(&u).await {
            assert!(entries <= 2, "after 200 logins the user's index holds {entries} entries for 2 live sessions");
        }
        let listed = store.user_sessions(&u).await.expect("user_sessions succeeds");
        assert_eq!(keys_of(&listed), BTreeSet::from([stays, device]));
        // A touch by half a minute from just past a whole hour stays within
        // any grain a store rounds index entries to (of half a minute to an
        // hour, dividing an hour), and a write of data alone leaves the
        // expiry where it is: neither adds to the index.
        let hour = now().replace_minute(0).and_then(|t| t.replace_second(1)).and_then(|t| t.replace_millisecond(0));
        let mut settle = touch(Some(&u));
        settle.expires_at = hour.expect("a valid time") + Duration::hours(3);
        store.apply(&stays, &settle).await.expect("touch succeeds");
        let before = h.index_entries(&u).await;
        let mut small = touch(Some(&u));
        small.expires_at = settle.expires_at + Duration::seconds(29);
        store.apply(&stays, &small).await.expect("touch succeeds");
        let mut data_only = change(&[("k", json!(1))], &[]);
        (data_only.user_id, data_only.expires_at) = (Some(u.clone()), small.expires_at);
        store.apply(&stays, &data_only).await.expect("write succeeds");
        assert_eq!(h.index_entries(&u).await, before, "a touch within a grain or a write of data grew the index");
        let start = now();
        for i in 1..=1000 {
            // Each touch moves the expiry by an hour, past any grain a store
            // rounds index entries to.
            let mut touch = touch(Some(&u));
            touch.expires_at = start + Duration::hours(i);
            store.apply(&stays, &touch).await.expect("touch succeeds");
        }
        if let Some(entries) = h.index_entries(&u).await {
            assert!(entries <= 100, "after 1000 touches the user's index holds {entries} entries for 2 live sessions");
        }
        store.delete_user_sessions(&u, None).await.expect("cleared");
    }

    /// A user with 10 000 sessions is listed and cleared whole, while other
    /// users' sessions keep being created, read and deleted without error.
    pub async fn ten_thousand_sessions_of_one_user_are_listed_and_cleared_while_others_are_served(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        let store = h.store();
        let u = user("crowded");
        let mut writers = tokio::task::JoinSet::new();
        for chunk in 0..16 {
            let (store, u) = (store.clone(), u.clone());
            writers.spawn(async move {
                for _ in 0..10_000 / 16 + usize::from(chunk < 10_000 % 16) {
                    create(&*store, &record(Some(&u), Map::new())).await;
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.expect("a writer task");
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bystander = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut served = 0_u64;
                while !stop.load(Ordering::SeqCst) || served == 0 {
                    let key = key();
                    store.create(&key, &record(Some(&user("bystander")), Map::new())).await?;
                    assert!(store.load(&key).await?.is_some(), "a bystander's session did not load");
                    store.delete(&key).await?;
                    served += 1;
                }
                Ok::<u64, crate::Error>(served)
            })
        };
        let listed = store.user_sessions(&u).await.expect("listing 10 000 sessions succeeds");
        assert_eq!(listed.len(), 10_000, "listed {} of 10 000 sessions", listed.len());
        let cleared = store.delete_user_sessions(&u, None).await.expect("clearing 10 000 sessions succeeds");
        assert_eq!(cleared, 10_000);
        stop.store(true, Ordering::SeqCst);
        let served = bystander.await.expect("the bystander task").expect("other users are served meanwhile");
        assert!(served > 0);
        assert!(store.user_sessions(&u).await.expect("listed").is_empty(), "cleared sessions are still listed");
    }

    /// Sessions over the store under test, one part, for the engine-level
    /// checks.
    fn sessions(h: &dyn Harness, config: crate::SessionConfig) -> crate::Sessions {
        crate::Sessions::new(h.store(), config).expect("a valid configuration")
    }

    /// The `name=value` of a commit's session cookie, if it sets one.
    fn cookie_of(commit: &crate::Commit) -> Option<String> {
        let set = commit.set_cookies.first()?;
        let pair = set.split(';').next()?;
        (!pair.ends_with('=')).then(|| pair.to_owned())
    }

    /// Logs `user` in on a new device; its cookie.
    async fn logged_in(sessions: &crate::Sessions, user: &str) -> String {
        let session = sessions.session([], Device::default());
        session.login(user).await.expect("login succeeds");
        cookie_of(&session.commit().await.expect("commit succeeds")).expect("a login sets a cookie")
    }

    /// `login` refuses, as `Usage` and not as a store failure, user ids no
    /// store can keep: empty, longer than
    /// [`MAX_USER_ID_BYTES`](crate::MAX_USER_ID_BYTES), or holding NUL or
    /// other control characters; one of the maximal length logs in.
    pub async fn logins_refuse_user_ids_no_store_can_hold(h: &dyn Harness) {
        let sessions = sessions(h, crate::SessionConfig::default());
        let too_long = "é".repeat(crate::MAX_USER_ID_BYTES / 2 + 1);
        for bad in ["", "nul\0", "line\nbreak", too_long.as_str()] {
            let session = sessions.session([], Device::default());
            let err = session.login(bad).await.expect_err("an impossible user id logged in");
            assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        }
        let tag = user("max");
        let longest = format!("{tag}{}", "x".repeat(crate::MAX_USER_ID_BYTES - tag.len()));
        let cookie = logged_in(&sessions, &longest).await;
        let session = sessions.session([cookie.as_bytes()], Device::default());
        assert_eq!(session.user().await.expect("loads").as_deref(), Some(longest.as_str()));
    }

    /// Concurrent logins of one user never pass the session cap on a store
    /// that says it holds it in one step: with a cap of 2, of ten logins at
    /// once exactly two succeed, or, evicting, two sessions are left. On
    /// other stores the next evicting login trims the excess.
    pub async fn concurrent_logins_hold_the_session_cap(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        for on_limit in [crate::OnLimit::RefuseLogin, crate::OnLimit::EvictLeastRecent] {
            if on_limit == crate::OnLimit::RefuseLogin && !h.caps_logins_atomically() {
                continue;
            }
            let sessions = sessions(h, crate::SessionConfig::default().with_max_sessions_per_user(2, on_limit));
            let u = user("capped");
            // Every login passes its early check before any commits, so the
            // commits alone must hold the cap, however they interleave.
            let mut pending = Vec::new();
            for _ in 0..10 {
                let session = sessions.session([], Device::default());
                session.login(&u).await.expect("no session is stored yet");
                pending.push(session);
            }
            let mut logins = tokio::task::JoinSet::new();
            for session in pending {
                logins.spawn(async move { session.commit().await });
            }
            let mut succeeded = 0;
            while let Some(done) = logins.join_next().await {
                match done.expect("a login task") {
                    Ok(_) => succeeded += 1,
                    Err(e) => assert_eq!(e.kind(), ErrorKind::TooManySessions, "{e}"),
                }
            }
            let live = h.store().user_sessions(&u).await.expect("listed").len();
            if h.caps_logins_atomically() {
                assert!(live <= 2, "{live} sessions under a cap of 2 ({on_limit:?})");
                if on_limit == crate::OnLimit::RefuseLogin {
                    assert_eq!((succeeded, live), (2, 2), "refused logins: {} of 10", 10 - succeeded);
                }
            } else {
                logged_in(&sessions, &u).await;
                let live = h.store().user_sessions(&u).await.expect("listed").len();
                assert_eq!(live, 2, "the next login left {live} sessions under a cap of 2");
            }
        }
    }

    /// A browser's cookies for the multi-part checks: what each commit set
    /// or expired.
    #[derive(Clone, Default)]
    struct Jar(BTreeMap<String, String>);

    impl Jar {
        fn request(&self, sessions: &crate::Sessions) -> crate::Session {
            let header: Vec<String> = self.0.iter().map(|(name, value)| format!("{name}={value}")).collect();
            sessions.session([header.join("; ").as_bytes()], Device::default())
        }

        fn absorb(&mut self, commit: &crate::Commit) {
            for set in &commit.set_cookies {
                let pair = set.split(';').next().unwrap_or_default();
                let Some((name, value)) = pair.split_once('=') else { continue };
                if value.is_empty() {
                    self.0.remove(name);
                } else {
                    self.0.insert(name.to_owned(), value.to_owned());
                }
            }
        }

        /// Commits `session`, a request of this browser's.
        async fn commit(&mut self, session: &crate::Session) {
            self.absorb(&session.commit().await.expect("the commit succeeds"));
        }

        /// One request that sets `key`.
        async fn set(&mut self, sessions: &crate::Sessions, key: &str, value: &str) {
            let session = self.request(sessions);
            session.insert(key, value).await.expect("insert succeeds");
            self.commit(&session).await;
        }

        /// One request that logs `user` in.
        async fn login(&mut self, sessions: &crate::Sessions, user: &str) {
            let session = self.request(sessions);
            session.login(user).await.expect("login succeeds");
            self.commit(&session).await;
        }
    }

    /// A device's session in `n` server-side parts, all in the store under
    /// test: one part keeps everything; with more, `session` keeps the login
    /// and `user_data`, `data` everything else, and with three parts `prefs`
    /// keeps `prefs`.
    fn server_parts(h: &dyn Harness, n: usize, config: crate::SessionConfig) -> crate::Sessions {
        server_parts_over(h.store(), n, config)
    }

    /// [`server_parts`] over `store`.
    fn server_parts_over(store: Arc<dyn Store>, n: usize, config: crate::SessionConfig) -> crate::Sessions {
        use crate::{Fields, SessionConfig, SessionSpec};
        let named = |name: &str| SessionConfig::default().with_cookie_name(name);
        if n == 1 {
            return crate::Sessions::new(store, config.with_cookie_name("session")).expect("a valid configuration");
        }
        let mut specs = vec![
            SessionSpec::new(store.clone(), config.with_cookie_name("session"))
                .with_fields(Fields::include(["user_id", "user_data"])),
            SessionSpec::new(store.clone(), named("data")).with_fields(Fields::Auto),
        ];
        if n == 3 {
            specs.push(SessionSpec::new(store, named("prefs")).with_fields(Fields::include(["prefs"])));
        }
        crate::Sessions::from_specs(specs).expect("a valid configuration")
    }

    /// Each part's cookie name with a key it keeps.
    fn part_keys(n: usize) -> &'static [(&'static str, &'static str)] {
        match n {
            1 => &[("session", "user_data"), ("session", "theme")],
            _ => &[("session", "user_data"), ("data", "theme"), ("prefs", "prefs")][..n],
        }
    }

    /// What each part's cookie in `jar` reads on its own, as someone who
    /// stole that one cookie would.
    async fn stolen_reads(sessions: &crate::Sessions, jar: &Jar, n: usize) -> Vec<String> {
        let mut found = Vec::new();
        for (cookie, key) in part_keys(n) {
            let Some(value) = jar.0.get(*cookie) else { continue };
            let thief = Jar(BTreeMap::from([((*cookie).to_owned(), value.clone())])).request(sessions);
            if let Some(read) = thief.get::<Value>(key).await.expect("a stolen cookie reads") {
                found.push(format!("{cookie} reads {key} = {read}"));
            }
        }
        found
    }

    /// Login gives every server-side part of the device a new id: with two
    /// and three parts, cookies captured while the visitor was anonymous
    /// read nothing stored after the login.
    pub async fn login_gives_every_server_part_of_the_device_a_new_id(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        for n in [2, 3] {
            let sessions = server_parts(h, n, crate::SessionConfig::default());
            let mut victim = Jar::default();
            for (_, key) in &part_keys(n)[1..] {
                victim.set(&sessions, key, "anonymous").await;
            }
            let captured = victim.clone();
            assert_eq!(captured.0.len(), n - 1, "{n} parts: the visitor has a cookie per data part");
            victim.login(&sessions, &user("rotated")).await;
            for (cookie, key) in part_keys(n) {
                assert_ne!(victim.0.get(*cookie), captured.0.get(*cookie), "{n} parts: login kept the id of {cookie}");
                victim.set(&sessions, key, "after-login").await;
            }
            assert_eq!(stolen_reads(&sessions, &captured, n).await, Vec::<String>::new(), "{n} parts");
            let session = victim.request(&sessions);
            assert_eq!(session.get::<String>("theme").await.expect("reads").as_deref(), Some("after-login"));
        }
    }

    /// Ending a device's session (logout, logout-all, logout-others, revoke,
    /// admin clear, eviction by the cap) ends every server-side part of it:
    /// none of its cookies reads anything afterwards.
    pub async fn ending_a_device_ends_every_server_part_it_has(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        for n in [2, 3] {
            for ender in ["logout", "logout_all", "logout_others", "revoke", "admin_clear", "eviction"] {
                let config =
                    crate::SessionConfig::default().with_max_sessions_per_user(2, crate::OnLimit::EvictLeastRecent);
                let sessions = server_parts(h, n, config);
                let u = user(ender);
                let (mut victim, mut other) = (Jar::default(), Jar::default());
                victim.login(&sessions, &u).await;
                for (_, key) in part_keys(n) {
                    victim.set(&sessions, key, "secret").await;
                }
                // The other device is the more recently active: an eviction
                // picks the victim.
                wait_past(now()).await;
                other.login(&sessions, &u).await;
                let stolen = victim.clone();
                assert_eq!(stolen.0.len(), n, "{n} parts: the victim has a cookie per part");
                let request = match ender {
                    "logout" => {
                        let session = victim.request(&sessions);
                        session.logout().await.expect("logout");
                        session
                    }
                    "logout_all" => {
                        let session = other.request(&sessions);
                        assert_eq!(session.logout_all_devices().await.expect("logout_all"), 2);
                        session
                    }
                    "logout_others" => {
                        let session = other.request(&sessions);
                        assert_eq!(session.logout_other_devices().await.expect("logout_others"), 1);
                        session
                    }
                    "revoke" => {
                        let session = other.request(&sessions);
                        let devices = session.devices().await.expect("devices");
                        let victim = devices.iter().find(|d| !d.current).expect("the victim is listed");
                        assert!(session.revoke(&victim.handle).await.expect("revoke"));
                        session
                    }
                    "admin_clear" => {
                        assert_eq!(sessions.clear_user_sessions(&u).await.expect("cleared"), 2);
                        other.request(&sessions)
                    }
                    _ => {
                        let third = Jar::default().request(&sessions);
                        third.login(&u).await.expect("login");
                        third
                    }
                };
                request.commit().await.expect("the commit succeeds");
                let leftovers = stolen_reads(&sessions, &stolen, n).await;
                assert!(leftovers.is_empty(), "{n} parts, after {ender}: {leftovers:?}");
            }
        }
    }

    /// A request loads a session (with two parts, only the part that does
    /// not keep the login); another request or admin code ends the device
    /// (logout-all elsewhere, an admin clear, a revoke, or a login that
    /// evicts it); then the first request writes, touches, changes its id,
    /// makes the session permanent or logs in again, and commits. Nothing
    /// the ended device stored comes back under any id: neither its old
    /// cookies nor those the commit sent read it, and no session joins the
    /// user's list (but a new login's, with two parts).
    pub async fn no_path_brings_back_a_session_ended_after_its_request_loaded_it(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        let config = || {
            crate::SessionConfig::default()
                .with_touch_interval(Duration::ZERO)
                .with_max_sessions_per_user(1, crate::OnLimit::EvictLeastRecent)
        };
        for n in [1, 2] {
            let sessions = server_parts(h, n, config());
            for ender in ["logout_all", "clear", "revoke", "evict"] {
                for path in ["write", "touch", "cycle_id", "set_permanent", "login"] {
                    let u = user(&format!("{ender}-{path}"));
                    let mut victim = Jar::default();
                    victim.login(&sessions, &u).await;
                    victim.set(&sessions, "user_data", "secret").await;
                    victim.set(&sessions, "theme", "secret").await;
                    let request = victim.request(&sessions);
                    assert_eq!(request.get::<String>("theme").await.expect("loads").as_deref(), Some("secret"));
                    let loaded_at = now();
                    match ender {
                        "logout_all" => {
                            let device = victim.request(&sessions);
                            device.logout_all_devices().await.expect("logout_all succeeds");
                            device.commit().await.expect("commit succeeds");
                        }
                        "clear" => {
                            sessions.clear_user_sessions(&u).await.expect("clear succeeds");
                        }
                        "revoke" => {
                            let listed = sessions.user_sessions(&u).await.expect("listed");
                            assert!(sessions.revoke(&listed[0].handle).await.expect("revoke succeeds"));
                        }
                        _ => Jar::default().login(&sessions, &u).await,
                    }
                    let survivors = keys_of(&h.store().user_sessions(&u).await.expect("listed"));
                    wait_past(loaded_at).await;
                    match path {
                        "write" => request.insert("cart", json!([1, 2])).await.expect("insert"),
                        "touch" => {}
                        "cycle_id" => request.cycle_id().await.expect("cycle_id"),
                        "set_permanent" => request.set_permanent(true).await.expect("set_permanent"),
                        _ => request.login(&u).await.expect("login"),
                    }
                    let mut after = victim.clone();
                    after.commit(&request).await;
                    let context = format!("{n} parts, after {ender}, a request's {path}");
                    for jar in [&victim, &after] {
                        let leftovers = stolen_reads(&sessions, jar, n).await;
                        assert!(leftovers.is_empty(), "{context} brought back {leftovers:?}");
                    }
                    // With two parts the request had not read the login, so
                    // its own login is a new one, not the ended one's.
                    if n == 1 || path != "login" {
                        let listed = keys_of(&h.store().user_sessions(&u).await.expect("listed"));
                        assert_eq!(listed, survivors, "{context} brought a session back");
                    }
                }
            }
        }
    }

    /// A session with ten thousand keys is created, has all of them changed
    /// at once, then is cleared down to five thousand, and reads back whole
    /// each time: no store's command or script has a limit on the keys of
    /// one change below that (Lua's `unpack`, in Redis scripts, has one at
    /// about 8 000 arguments).
    pub async fn a_session_of_ten_thousand_keys_round_trips(h: &dyn Harness) {
        let store = h.store();
        let numbered =
            |n: i64, sign: i64| -> Map<String, Value> { (0..n).map(|i| (format!("k{i}"), json!(sign * i))).collect() };
        let key = create(&*store, &record(None, numbered(10_000, 1))).await;
        let mut change = change(&[], &[]);
        change.set = numbered(10_000, -1).into_iter().collect();
        store.apply(&key, &change).await.expect("a change of 10 000 keys applies");
        let loaded = load(&*store, &key).await.expect("the session is there");
        assert!(loaded.data == numbered(10_000, -1), "10 000 changed keys did not round-trip");
        change.clear = true;
        change.set = numbered(5_000, 1).into_iter().collect();
        store.apply(&key, &change).await.expect("a clear keeping 5 000 keys applies");
        let loaded = load(&*store, &key).await.expect("the session is there");
        assert!(loaded.data == numbered(5_000, 1), "a clear to 5 000 keys read back {} keys", loaded.data.len());
    }

    /// A store that, asked to delete a user's sessions, first commits the
    /// request waiting beside it: a device that changes while its user is
    /// being logged out everywhere, at the worst moment.
    struct CommitsBeside {
        inner: Arc<dyn Store>,
        request: tokio::sync::Mutex<Option<crate::Session>>,
        committed: tokio::sync::Mutex<Option<crate::Commit>>,
    }

    #[async_trait]
    impl Store for CommitsBeside {
        async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
            self.inner.load(key).await
        }
        async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
            self.inner.create(key, record).await
        }
        async fn create_login(
            &self,
            key: &StoreKey,
            record: &Record,
            replaces: Option<&StoreKey>,
            limit: Option<SessionLimit>,
        ) -> Result<Vec<SessionInfo>> {
            self.inner.create_login(key, record, replaces, limit).await
        }
        async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
            self.inner.apply(key, change).await
        }
        async fn delete(&self, key: &StoreKey) -> Result<bool> {
            self.inner.delete(key).await
        }
        async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
            self.inner.user_sessions(user).await
        }
        async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
            if let Some(request) = self.request.lock().await.take() {
                *self.committed.lock().await = Some(request.commit().await?);
            }
            self.inner.delete_user_sessions(user, keep).await
        }
        async fn delete_expired_batch(&self) -> Result<crate::store::ExpiredBatch> {
            self.inner.delete_expired_batch().await
        }
    }

    /// While a user is logged out everywhere (or cleared by an admin), one
    /// of their devices gives a part its first session, or changes its ids
    /// (an id change or a login), after the ender listed the device. Neither
    /// the device's old cookies nor those that request sent read anything
    /// afterwards.
    pub async fn a_part_made_or_moved_while_its_user_is_logged_out_everywhere_reads_nothing(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        for ender in ["clear", "logout_all"] {
            for path in ["first_write", "cycle_id", "login"] {
                let store = Arc::new(CommitsBeside {
                    inner: h.store(),
                    request: Default::default(),
                    committed: Default::default(),
                });
                let sessions = server_parts_over(store.clone(), 2, crate::SessionConfig::default());
                let u = user(&format!("{ender}-{path}"));
                let mut victim = Jar::default();
                victim.login(&sessions, &u).await;
                victim.set(&sessions, "user_data", "secret").await;
                if path != "first_write" {
                    victim.set(&sessions, "theme", "secret").await;
                }
                let request = victim.request(&sessions);
                request.user().await.expect("loads");
                match path {
                    "first_write" => request.insert("theme", "secret").await.expect("insert"),
                    "cycle_id" => request.cycle_id().await.expect("cycle_id"),
                    _ => request.login(&u).await.expect("login"),
                }
                *store.request.lock().await = Some(request);
                match ender {
                    "clear" => {
                        sessions.clear_user_sessions(&u).await.expect("clear succeeds");
                    }
                    _ => {
                        let device = victim.request(&sessions);
                        device.logout_all_devices().await.expect("logout_all succeeds");
                        device.commit().await.expect("commit succeeds");
                    }
                }
                let committed = store.committed.lock().await.take().expect("the request ran beside the ender");
                let mut after = victim.clone();
                after.absorb(&committed);
                for jar in [&victim, &after] {
                    let leftovers = stolen_reads(&sessions, jar, 2).await;
                    assert!(leftovers.is_empty(), "{path} beside {ender}: {leftovers:?}");
                }
            }
        }
    }

    /// [`Store::sessions_page`] walks the whole store: every live session
    /// appears with its record, nothing deleted or expired does, no page is
    /// much larger than asked, and the walk ends. (What a page costs is not
    /// measured here: the backends' work counters are shared by the tests
    /// running beside this one.)
    pub async fn every_live_session_is_walked_a_page_at_a_time(h: &dyn Harness) {
        let store = h.store();
        if !h.walks_sessions() {
            let err = store.sessions_page(None, 10).await.expect_err("a store that cannot walk its sessions walked");
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            return;
        }
        assert_eq!(store.sessions_page(None, 0).await.expect_err("a page of 0").kind(), ErrorKind::Usage);
        let u = user("walk");
        let mut mine = BTreeMap::new();
        for i in 0..23 {
            let record = record((i % 2 == 0).then_some(u.as_str()), data(&[("i", json!(i))]));
            mine.insert(create(&*store, &record).await, record);
        }
        let deleted = create(&*store, &record(Some(&u), Map::new())).await;
        store.delete(&deleted).await.expect("delete succeeds");
        let mut short = record(None, Map::new());
        short.meta.expires_at = now() + Duration::milliseconds(300);
        let expired = create(&*store, &short).await;
        wait_past(short.meta.expires_at).await;

        const LIMIT: usize = 7;
        let (mut seen, mut cursor, mut pages) = (BTreeMap::new(), None, 0u64);
        loop {
            let page = store.sessions_page(cursor.as_ref(), LIMIT).await.expect("sessions_page succeeds");
            assert!(page.sessions.len() <= 2 * LIMIT + 8, "a page of {LIMIT} held {}", page.sessions.len());
            assert_eq!(page.unreadable, 0, "the store reports unreadable records it never held");
            for (key, record) in page.sessions {
                assert!(key != deleted && key != expired, "the walk returned a deleted or expired session");
                if mine.contains_key(&key) {
                    seen.insert(key, record);
                }
            }
            pages += 1;
            assert!(pages < 1_000_000, "the walk does not end");
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, mine, "the walk missed sessions or changed their records");

        // Records that do not decode are counted and walked past, even where
        // one ends a page.
        let broken: Vec<StoreKey> = mine.keys().take(4).copied().collect();
        for key in &broken {
            h.corrupt(key).await;
        }
        let (mut readable, mut unreadable, mut cursor) = (BTreeSet::new(), 0, None);
        loop {
            let page = store.sessions_page(cursor.as_ref(), 3).await.expect("a walk past corrupt records");
            unreadable += page.unreadable;
            readable.extend(page.sessions.into_iter().map(|(key, _)| key).filter(|key| mine.contains_key(key)));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let intact: BTreeSet<StoreKey> = mine.keys().filter(|key| !broken.contains(key)).copied().collect();
        assert_eq!(readable, intact, "the walk lost intact sessions after corrupt ones");
        assert!(unreadable >= broken.len() as u64, "{unreadable} unreadable records counted, not {}", broken.len());
    }

    /// One device keeps writing, request after request, while another
    /// device of the same user logs out everywhere. Afterwards the store
    /// holds no session of that user, and the writing device's next request
    /// is anonymous: no write in flight brought a session back.
    pub async fn a_device_writing_while_its_user_logs_out_everywhere_ends_logged_out(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        let sessions = server_parts(h, 1, crate::SessionConfig::default().with_touch_interval(Duration::ZERO));
        let u = user("race-logout");
        let (mut writer, mut other) = (Jar::default(), Jar::default());
        writer.login(&sessions, &u).await;
        other.login(&sessions, &u).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writes = {
            let (sessions, stop, mut writer) = (sessions.clone(), stop.clone(), writer.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                // Until told to stop, and at least 50 requests, however the
                // scheduler interleaves the two tasks.
                while n < 50 || !stop.load(Ordering::SeqCst) {
                    let request = writer.request(&sessions);
                    request.insert("n", n).await.expect("insert succeeds");
                    // Ended meanwhile: the commit creates nothing for the
                    // user; the browser keeps whatever cookie it is sent.
                    if let Ok(commit) = request.commit().await {
                        writer.absorb(&commit);
                    }
                    n += 1;
                }
                writer
            })
        };
        tokio::task::yield_now().await;
        let request = other.request(&sessions);
        request.logout_all_devices().await.expect("logout_all succeeds");
        request.commit().await.expect("commit succeeds");
        stop.store(true, Ordering::SeqCst);
        let writer = writes.await.expect("the writer does not panic");
        assert!(h.store().user_sessions(&u).await.expect("listed").is_empty(), "a session of the user survived");
        let next = writer.request(&sessions);
        assert_eq!(next.user().await.expect("reads"), None, "the writing device is still logged in");
    }

    /// Two requests of one browser carry the same session while one of them
    /// logs in: the other logs in too, writes, or only reads. The user holds
    /// exactly one live session, and the browser ends logged in whichever
    /// response arrives last, except when the second, also a login, read
    /// the session only after the first had replaced it: it logs in afresh
    /// (a double-submitted form whose first answer the browser dropped must
    /// log in) and replaces the first one's session, so the browser is
    /// logged in when the answers arrive in the order the requests ran.
    /// Then two logins spawned at once: one session is left, and exactly
    /// one of the two answers carries it.
    pub async fn requests_beside_a_login_of_their_session_keep_the_browser_logged_in(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        for parts in [1, 2] {
            let sessions = server_parts(h, parts, crate::SessionConfig::default());
            let cases = [false, true].into_iter().flat_map(|logged_in| {
                [true, false]
                    .into_iter()
                    .flat_map(move |overlap| ["login", "write", "read"].map(|then| (logged_in, overlap, then)))
            });
            for (round, (logged_in, overlap, then)) in cases.enumerate() {
                let u = user(&format!("race-login-{parts}-{round}"));
                let mut browser = Jar::default();
                browser.set(&sessions, "cart", "1").await;
                if logged_in {
                    // A re-login: every part, the login's included, is replaced.
                    browser.login(&sessions, &u).await;
                }
                let (first, second) = (browser.request(&sessions), browser.request(&sessions));
                first.login(&u).await.expect("login succeeds");
                if overlap {
                    // Both read the old session before either commits.
                    second.get::<String>("cart").await.expect("reads");
                }
                let one = first.commit().await.expect("the first commit succeeds");
                match then {
                    "login" => second.login(&u).await.expect("login succeeds"),
                    "write" => second.insert("cart", "2").await.expect("insert succeeds"),
                    _ => drop(second.get::<String>("cart").await.expect("reads")),
                }
                let two = second.commit().await.expect("the second commit succeeds");
                let what = format!(
                    "{parts} part(s), logged in before: {logged_in}, overlapping: {overlap}, the second request: {then}"
                );
                let live = h.store().user_sessions(&u).await.expect("listed");
                assert_eq!(live.len(), 1, "{what}: the user holds {} sessions", live.len());
                let late_login = then == "login" && !overlap;
                let orders: &[[&crate::Commit; 2]] =
                    if late_login { &[[&one, &two]] } else { &[[&one, &two], [&two, &one]] };
                for order in orders {
                    let mut jar = browser.clone();
                    order.iter().for_each(|commit| jar.absorb(commit));
                    let user = jar.request(&sessions).user().await.expect("reads");
                    assert_eq!(user.as_deref(), Some(u.as_str()), "{what}: the browser is not logged in");
                }
            }
            for round in 0..10 {
                let u = user(&format!("race-login-spawned-{parts}-{round}"));
                let mut browser = Jar::default();
                browser.set(&sessions, "cart", "1").await;
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..2 {
                    let (request, u) = (browser.request(&sessions), u.clone());
                    tasks.spawn(async move {
                        request.login(&u).await?;
                        request.commit().await
                    });
                }
                let mut answers = Vec::new();
                while let Some(done) = tasks.join_next().await {
                    answers.push(done.expect("no panic").expect("the commit succeeds"));
                }
                let what = format!("spawned round {round}, {parts} part(s)");
                let live = h.store().user_sessions(&u).await.expect("listed");
                assert_eq!(live.len(), 1, "{what}: the user holds {} sessions", live.len());
                let mut carry = Vec::new();
                for answer in &answers {
                    let mut jar = browser.clone();
                    jar.absorb(answer);
                    carry.push(jar.request(&sessions).user().await.expect("reads").is_some());
                }
                assert_eq!(carry.iter().filter(|&&c| c).count(), 1, "{what}: answers logging in: {carry:?}");
                let (winner, loser) = if carry[0] { (&answers[0], &answers[1]) } else { (&answers[1], &answers[0]) };
                let mut jar = browser.clone();
                jar.absorb(loser);
                jar.absorb(winner);
                let user = jar.request(&sessions).user().await.expect("reads");
                assert_eq!(user.as_deref(), Some(u.as_str()), "{what}: the browser is not logged in");
            }
        }
    }

    /// A login that reads its device's session only after another login
    /// replaced it replaces that one in turn, but only a session of the same
    /// user: a browser that logs in as someone else leaves the first user's
    /// session alone. And at a cap of one that refuses logins, the late
    /// login is not refused for the session it is about to replace.
    pub async fn a_late_login_replaces_only_its_users_session_and_fits_the_cap(h: &dyn Harness) {
        if !h.has_user_index() {
            return;
        }
        let limited = crate::SessionConfig::default().with_max_sessions_per_user(1, crate::OnLimit::RefuseLogin);
        for (round, (parts, config)) in
            [(1, crate::SessionConfig::default()), (2, crate::SessionConfig::default()), (1, limited)]
                .into_iter()
                .enumerate()
        {
            let sessions = server_parts(h, parts, config);
            let (first_user, second_user) = (user(&format!("late-a-{round}")), user(&format!("late-b-{round}")));
            let mut browser = Jar::default();
            browser.set(&sessions, "cart", "1").await;
            let (first, second) = (browser.request(&sessions), browser.request(&sessions));
            first.login(&first_user).await.expect("login succeeds");
            let one = first.commit().await.expect("the first commit succeeds");
            // The same user, late: one session left, the second's.
            let late = browser.request(&sessions);
            late.login(&first_user).await.expect("a late login at the cap is not refused");
            let two = late.commit().await.expect("the late commit succeeds");
            let live = h.store().user_sessions(&first_user).await.expect("listed");
            assert_eq!(live.len(), 1, "round {round}: the user holds {} sessions", live.len());
            let mut jar = browser.clone();
            jar.absorb(&one);
            jar.absorb(&two);
            assert_eq!(jar.request(&sessions).user().await.expect("reads"), Some(first_user.clone()));
            // Another user, late, on the same old id: the first user's session stays.
            second.login(&second_user).await.expect("login succeeds");
            second.commit().await.expect("the other user's commit succeeds");
            let live = h.store().user_sessions(&first_user).await.expect("listed");
            assert_eq!(live.len(), 1, "round {round}: another user's late login ended the first user's session");
            assert_eq!(jar.request(&sessions).user().await.expect("reads"), Some(first_user));
            assert_eq!(h.store().user_sessions(&second_user).await.expect("listed").len(), 1);
        }
    }

    /// 200 requests of one session at the same moment, each writing a key of
    /// its own: every key is there afterwards.
    pub async fn two_hundred_concurrent_requests_writing_their_own_keys_lose_none(h: &dyn Harness) {
        let sessions = server_parts(h, 1, crate::SessionConfig::default());
        let mut device = Jar::default();
        device.set(&sessions, "start", "1").await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let request = device.request(&sessions);
            tasks.spawn(async move {
                request.insert(&format!("key-{i}"), i).await?;
                request.commit().await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("no panic").expect("every write commits");
        }
        let request = device.request(&sessions);
        for i in 0..200 {
            assert_eq!(request.get::<i64>(&format!("key-{i}")).await.expect("reads"), Some(i), "key-{i} was lost");
        }
    }
}
