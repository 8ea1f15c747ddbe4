//! The store conformance suite on SQLite, plus what only SQLite shows.

use std::sync::Arc;

use multisession::StoreKey;
use multisession::store::{SqliteStore, Store};
use multisession::testing::Harness;

struct Sqlite {
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> Sqlite {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path().join("sessions.db")).await.expect("SQLite opens");
    Sqlite { store: Arc::new(store), _dir: dir }
}

#[async_trait::async_trait]
impl Harness for Sqlite {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        sqlx::query("UPDATE sessions SET data = '{not json' WHERE key = ?")
            .bind(key.to_string())
            .execute(self.store.pool())
            .await
            .expect("the corrupting update runs");
    }

    async fn user_queries_use_index(&self) -> Option<bool> {
        Some(self.store.user_queries_use_index().await.expect("EXPLAIN QUERY PLAN runs"))
    }
}

multisession::store_conformance_tests!(sqlite());

#[tokio::test]
async fn key_prefixes_keep_applications_apart() {
    use multisession::{Device, Meta, Record};
    let h = sqlite().await;
    let shop = SqliteStore::from_pool(h.store.pool().clone()).await.expect("opens").with_key_prefix("shop");
    let now = time::OffsetDateTime::now_utc();
    let record = Record {
        data: Default::default(),
        meta: Meta {
            user_id: Some("23".into()),
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::HOUR,
            absolute_expires_at: None,
            permanent: false,
            device: Device::default(),
        },
    };
    let key = multisession::SessionId::generate().expect("rng").store_key();
    shop.create(&key, &record).await.expect("created");
    assert!(h.store.load(&key).await.expect("loads").is_none(), "another prefix sees the session");
    assert!(h.store.user_sessions("23").await.expect("lists").is_empty());
    assert_eq!(h.store.delete_user_sessions("23", None).await.expect("clears"), 0);
    assert_eq!(shop.user_sessions("23").await.expect("lists").len(), 1);
}

#[tokio::test]
async fn schema_is_created_once_and_reopening_keeps_sessions() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("sessions.db");
    let first = SqliteStore::open(&path).await.expect("opens");
    let key = multisession::SessionId::generate().expect("rng").store_key();
    let now = time::OffsetDateTime::now_utc();
    let record = multisession::Record {
        data: [("n".to_owned(), serde_json::json!(1))].into_iter().collect(),
        meta: multisession::Meta {
            user_id: None,
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::HOUR,
            absolute_expires_at: None,
            permanent: false,
            device: Default::default(),
        },
    };
    first.create(&key, &record).await.expect("created");
    first.pool().close().await;
    let second = SqliteStore::open(&path).await.expect("reopens");
    assert!(second.load(&key).await.expect("loads").is_some());
}
