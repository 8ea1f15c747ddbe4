//! The store conformance suite on SQLite, plus what only SQLite shows.

#[path = "support/sql.rs"]
mod support;

use multisession::store::{SqlStore, Store};

multisession::store_conformance_tests!(support::sqlite());

/// A session of `user`, an hour from its end, with no data.
fn record_of(user: &str) -> multisession::Record {
    let now = time::OffsetDateTime::now_utc();
    multisession::Record {
        data: Default::default(),
        meta: multisession::Meta {
            user_id: Some(user.into()),
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::HOUR,
            absolute_expires_at: None,
            permanent: false,
            device: multisession::Device::default(),
            siblings: Default::default(),
        },
    }
}

#[tokio::test]
async fn key_prefixes_keep_applications_apart() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("shared.db");
    let plain = SqlStore::open(&path).await.expect("opens");
    let shop = SqlStore::open(&path).await.expect("opens").with_key_prefix("shop");
    let record = record_of("23");
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
    let mut record = record_of("23");
    record.data.insert("n".to_owned(), serde_json::json!(1));
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

#[tokio::test]
async fn sqlite_urls_the_store_cannot_write_through_are_refused_at_start_up_naming_the_field() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("s.db");
    SqlStore::open(&file).await.expect("the file exists");
    let path = file.display();
    for url in [
        format!("sqlite://{path}?mode=ro"),
        format!("sqlite://{path}?immutable=true"),
        format!("sqlite://{path}?vfs=unix-none"),
        "sqlite::memory:".to_owned(),
        "sqlite://".to_owned(),
    ] {
        let error = SqlStore::connect(&url).await.expect_err("refused");
        assert_eq!(error.kind(), multisession::ErrorKind::Config, "{url}: {error}");
        assert!(error.to_string().contains("backend"), "{url}: {error}");
    }
}

/// Requests' changes go through the writer thread, logins and logouts
/// through sqlx: under a steady stream of changes, the others still get
/// their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_logouts_get_their_turn_under_a_steady_stream_of_changes() {
    use multisession::Change;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = std::sync::Arc::new(SqlStore::open(dir.path().join("s.db")).await.expect("opens"));
    let now = time::OffsetDateTime::now_utc();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (store, stop) = (store.clone(), stop.clone());
        let key = multisession::SessionId::generate().expect("rng").store_key();
        store.create(&key, &record_of(&format!("writer-{w}"))).await.expect("created");
        writers.spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut change = Change::new(now, now + time::Duration::HOUR);
                change.set.insert("n".into(), n.into());
                store.apply(&key, &change).await.expect("a change is applied");
                n += 1;
            }
            n
        });
    }
    for i in 0..100 {
        let key = multisession::SessionId::generate().expect("rng").store_key();
        store.create_login(&key, &record_of("visitor"), None, None).await.expect("a login gets its turn");
        if i % 2 == 0 {
            assert!(store.delete(&key).await.expect("a logout gets its turn"));
        }
    }
    assert_eq!(store.delete_user_sessions("visitor", None).await.expect("cleared"), 50);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut changes = 0;
    while let Some(done) = writers.join_next().await {
        changes += done.expect("a writer task");
    }
    assert!(changes > 0);
}
