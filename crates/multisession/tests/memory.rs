//! The store conformance suite on the in-memory store.

use std::sync::Arc;

use multisession::StoreKey;
use multisession::store::{MemoryStore, Store};
use multisession::testing::Harness;

struct Memory(Arc<MemoryStore>);

#[async_trait::async_trait]
impl Harness for Memory {
    fn store(&self) -> Arc<dyn Store> {
        self.0.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        self.0.write_raw(key, br#"{"v":1,"data":"not an object""#);
    }

    async fn holds(&self, key: &StoreKey) -> Option<bool> {
        Some(self.0.holds(key))
    }

    async fn work(&self) -> Option<u64> {
        Some(self.0.entries_examined())
    }
}

multisession::store_conformance_tests!(async { Memory(Arc::new(MemoryStore::new())) });

#[tokio::test]
async fn the_cleanup_task_sweeps_expired_sessions_and_reports_expired_logins() {
    use multisession::{AuditKind, Sessions};
    let store = Arc::new(MemoryStore::new());
    let record = record(Some("23"), time::OffsetDateTime::now_utc() + time::Duration::milliseconds(50));
    let key = multisession::SessionId::generate().expect("rng").store_key();
    store.create(&key, &record).await.expect("created");
    assert!(store.holds(&key));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let sessions = Sessions::new(store.clone(), Default::default())
        .expect("valid config")
        .on_audit(move |event| log.lock().expect("not poisoned").push(event.clone()));
    let task = sessions.spawn_cleanup(multisession::Duration::seconds(1));
    // The task sweeps once a second; wait for it to have swept the entry
    // (an expired one) rather than for a guess at how long that takes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.holds(&key) {
        assert!(std::time::Instant::now() < deadline, "the cleanup task never swept the expired entry");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.abort();
    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].kind, seen[0].user.as_str(), seen[0].at), (AuditKind::Expired, "23", record.meta.expires_at));
    assert!(seen[0].handle.as_ref().is_some_and(|h| h.user() == "23"));
}

/// `Sessions::delete_expired` cleans a cookie part's revocation store too,
/// and reports nothing from it: its records are no logins.
#[tokio::test]
async fn a_cookie_parts_revocation_store_is_cleaned_too() {
    use multisession::store::CookieStore;
    use multisession::{Key, KeyRing, Sessions};
    let revocations = Arc::new(MemoryStore::new());
    let cookie =
        CookieStore::new(KeyRing::new(vec![Key::generate()]).expect("one key")).with_revocation(revocations.clone());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let sessions = Sessions::new(cookie, Default::default())
        .expect("valid config")
        .on_audit(move |event| log.lock().expect("not poisoned").push(event.kind));
    let expired = record(None, time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    let key = multisession::SessionId::generate().expect("rng").store_key();
    revocations.create(&key, &expired).await.expect("created");
    assert!(revocations.holds(&key));
    assert_eq!(sessions.delete_expired().await.expect("cleaned"), 1);
    assert!(!revocations.holds(&key), "the revocation store kept its expired record");
    assert!(seen.lock().expect("not poisoned").is_empty(), "a revocation record was reported");
}

/// A record of `user` that expires at `expires_at`.
fn record(user: Option<&str>, expires_at: time::OffsetDateTime) -> multisession::Record {
    let now = time::OffsetDateTime::now_utc();
    multisession::Record {
        data: Default::default(),
        meta: multisession::Meta {
            user_id: user.map(str::to_owned),
            created_at: now,
            last_active_at: now,
            expires_at,
            absolute_expires_at: None,
            permanent: false,
            device: multisession::Device::default(),
            siblings: Default::default(),
        },
    }
}
