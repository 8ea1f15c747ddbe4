//! The calls that name a user refuse, as `Usage`, the user ids `login`
//! refuses: no store can hold them, and PostgreSQL answered a NUL with 503.

use std::sync::Arc;

use multisession::store::{MemoryStore, SqlStore, Store};
use multisession::{Device, ErrorKind, MAX_USER_ID_BYTES, SessionConfig, Sessions};

async fn stores(dir: &tempfile::TempDir) -> Vec<(&'static str, Arc<dyn Store>)> {
    let postgres = std::env::var("MULTISESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/multisession_test".to_owned());
    vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("sqlite", Arc::new(SqlStore::open(dir.path().join("users.db")).await.expect("SQLite opens"))),
        ("postgres", Arc::new(SqlStore::connect(&postgres).await.expect("PostgreSQL (scripts/services.sh)"))),
    ]
}

#[tokio::test]
async fn admin_calls_refuse_user_ids_no_store_can_hold_as_usage() {
    let too_long = "é".repeat(MAX_USER_ID_BYTES / 2 + 1);
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, store) in stores(&dir).await {
        let sessions = Sessions::new(store, SessionConfig::default()).expect("valid config");
        let session = sessions.session([], Device::default());
        for bad in ["", "nul\0", "line\nbreak", too_long.as_str()] {
            let listed = sessions.user_sessions(bad).await.map(|_| ());
            let cleared = sessions.clear_user_sessions(bad).await.map(|_| ());
            let cleared_in_request = session.clear_user_sessions(bad).await.map(|_| ());
            let keep = "0123456789abcdef.MjM".parse().expect("a handle");
            let all_but = sessions.clear_user_sessions_except(bad, &keep).await.map(|_| ());
            for (call, result) in [
                ("Sessions::user_sessions", listed),
                ("Sessions::clear_user_sessions", cleared),
                ("Sessions::clear_user_sessions_except", all_but),
                ("Session::clear_user_sessions", cleared_in_request),
            ] {
                let err = result.expect_err("an impossible user id was accepted");
                assert_eq!(err.kind(), ErrorKind::Usage, "{name}: {call}({bad:?}): {err}");
            }
        }
        let longest = "x".repeat(MAX_USER_ID_BYTES);
        assert!(sessions.user_sessions(&longest).await.expect("a maximal id lists").is_empty(), "{name}");
        assert_eq!(sessions.clear_user_sessions(&longest).await.expect("a maximal id clears"), 0, "{name}");
        assert_eq!(session.clear_user_sessions(&longest).await.expect("a maximal id clears"), 0, "{name}");
    }
}
