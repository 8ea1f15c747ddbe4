//! The store conformance suite on SQLite, plus what only SQLite shows.

#[path = "support/sql.rs"]
mod support;

use multisession::store::{SqlStore, Store};

multisession::store_conformance_tests!(support::sqlite());

#[tokio::test]
async fn key_prefixes_keep_applications_apart() {
    use multisession::{Device, Meta, Record};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("shared.db");
    let plain = SqlStore::open(&path).await.expect("opens");
    let shop = SqlStore::open(&path).await.expect("opens").with_key_prefix("shop");
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
            siblings: Default::default(),
        },
    };
    let key = multisession::SessionId::generate().expect("rng").store_key();
    shop.create(&key, &record).await.expect("created");
    assert!(plain.load(&key).await.expect("loads").is_none(), "another prefix sees the session");
    assert!(plain.user_sessions("23").await.expect("lists").is_empty());
    assert_eq!(plain.delete_user_sessions("23", None).await.expect("clears"), 0);
    assert_eq!(shop.user_sessions("23").await.expect("lists").len(), 1);
}

#[tokio::test]
async fn schema_is_created_once_and_reopening_keeps_sessions() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("sessions.db");
    let first = SqlStore::open(&path).await.expect("opens");
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
            siblings: Default::default(),
        },
    };
    first.create(&key, &record).await.expect("created");
    first.pool().close().await;
    let second = SqlStore::open(&path).await.expect("reopens");
    assert!(second.load(&key).await.expect("loads").is_some());
}

#[tokio::test]
async fn a_path_with_spaces_and_question_marks_opens() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("my sessions?.db");
    SqlStore::open(&path).await.expect("opens");
    assert!(path.exists());
}

#[tokio::test]
async fn a_foreign_table_of_the_same_name_is_refused_at_start_up() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("app.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("connects");
    sqlx::query("CREATE TABLE sessions (id INTEGER PRIMARY KEY, blob TEXT)").execute(&pool).await.expect("created");
    let err = SqlStore::open(&path).await.expect_err("a foreign table was accepted");
    assert_eq!(err.kind(), multisession::ErrorKind::Config);
    assert!(err.to_string().contains("sessions") && err.to_string().contains("another table name"), "{err}");
}
