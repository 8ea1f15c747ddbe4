//! A store's `key_prefix`: one rule for every store (1 to 64 printable ASCII
//! characters without spaces), refused at start-up where configuration can
//! fail, and never a failure on every request where it cannot.

use multisession::store::{SqlStore, Store};
use multisession::{Device, ErrorKind, Meta, Record};

/// A SQLite file in `dir`, and the PostgreSQL and MySQL servers
/// `scripts/services.sh` starts.
fn sql_urls(dir: &tempfile::TempDir) -> Vec<String> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    vec![
        format!("sqlite://{}?mode=rwc", dir.path().join("prefixes.db").display()),
        env("MULTISESSION_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/multisession_test"),
        env("MULTISESSION_MYSQL_URL", "mysql://root@127.0.0.1:3306/multisession_test"),
    ]
}

fn record(user: &str) -> Record {
    let now = time::OffsetDateTime::now_utc();
    Record {
        data: Default::default(),
        meta: Meta {
            user_id: Some(user.to_owned()),
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::HOUR,
            absolute_expires_at: None,
            permanent: false,
            device: Device::default(),
            siblings: Default::default(),
        },
    }
}

/// Prefixes that broke every request: longer than MySQL's 191-character
/// column, or holding a NUL that PostgreSQL text cannot.
#[tokio::test]
async fn sql_prefixes_no_column_can_hold_still_work_and_keep_applications_apart() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for url in sql_urls(&dir) {
        let store = |prefix: String| {
            let url = url.clone();
            async move { SqlStore::connect(&url).await.expect("connects").with_key_prefix(prefix) }
        };
        let user = format!("prefix-{}", multisession::SessionId::generate().expect("rng").store_key());
        let long = store("p".repeat(300)).await;
        let longer = store("p".repeat(301)).await;
        let nul = store("app\0one".to_owned()).await;
        let key = multisession::SessionId::generate().expect("rng").store_key();
        for (name, prefixed) in [("300 characters", &long), ("a NUL", &nul)] {
            prefixed.create(&key, &record(&user)).await.unwrap_or_else(|e| panic!("{url}: a prefix of {name}: {e}"));
            assert!(prefixed.load(&key).await.expect("loads").is_some(), "{url}: {name}");
            assert_eq!(prefixed.user_sessions(&user).await.expect("lists").len(), 1, "{url}: {name}");
        }
        assert!(longer.load(&key).await.expect("loads").is_none(), "{url}: two long prefixes share sessions");
        assert_eq!(long.delete_user_sessions(&user, None).await.expect("clears"), 1, "{url}");
        assert_eq!(
            nul.user_sessions(&user).await.expect("lists").len(),
            1,
            "{url}: clearing one prefix ended another's"
        );
        assert_eq!(nul.delete_user_sessions(&user, None).await.expect("clears"), 1, "{url}");
    }
}

#[tokio::test]
async fn store_urls_refuse_a_prefix_no_store_keeps_naming_key_prefix() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = &format!("sqlite://{}", dir.path().join("refused.db").display());
    for bad in [String::new(), "p".repeat(65), "app\0one".to_owned(), "my app".to_owned()] {
        let err = multisession::store::open(url, Some(&bad)).await.expect_err("accepted");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("key_prefix:"), "{err}");
    }
    let longest = multisession::store::open(url, Some(&"p".repeat(64))).await.expect("64 bytes");
    let key = multisession::SessionId::generate().expect("rng").store_key();
    longest.create(&key, &record("u")).await.expect("created");
}
