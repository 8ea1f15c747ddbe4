//! The store conformance suite on PostgreSQL, the planner's use of the user
//! index, table and schema options, and a database restart.

mod common;
#[path = "support/outage.rs"]
mod outage;
#[path = "support/own_sql.rs"]
mod own_sql;
#[path = "support/sql.rs"]
mod support;

use multisession::store::{SqlOptions, SqlStore, Store};
use multisession::testing::Harness;

multisession::store_conformance_tests!(support::postgres());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_sessions_query_plan_uses_the_user_index() {
    let pg = support::postgres().await;
    let sessions = multisession::Sessions::new(pg.store(), Default::default()).expect("valid");
    for i in 0..2000 {
        let session = sessions.session([], Default::default());
        session.login(&format!("user-{}", i % 500)).await.expect("login");
        session.commit().await.expect("commit");
    }
    assert!(pg.store.user_queries_use_index().await.expect("EXPLAIN"), "PostgreSQL scans the table for a user");
    let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(
        pg.statement("EXPLAIN SELECT session_key FROM {t} WHERE namespace = ? AND user_id = ? AND expires_at > ?"),
    ))
    .bind("session")
    .bind("user-7")
    .bind(0_i64)
    .fetch_all(pg.store.pool())
    .await
    .expect("EXPLAIN")
    .iter()
    .map(|row| sqlx::Row::get::<String, _>(row, 0))
    .collect();
    assert!(plan.iter().any(|line| line.contains("_user")), "{plan:#?}");
}

#[tokio::test]
async fn tables_and_schemas_are_configurable_and_checked() {
    let url = support::postgres_url();
    let store = SqlStore::connect_with(&url, SqlOptions::default().schema("ms_schema_test").table("custom_sessions"))
        .await
        .expect("a custom schema and table");
    assert_eq!(store.table(), "ms_schema_test.custom_sessions");
    assert!(store.user_sessions("nobody").await.expect("queries").is_empty());
    for (options, field) in [
        (SqlOptions::default().table("x; DROP TABLE y"), "table"),
        (SqlOptions::default().schema("1abc"), "schema"),
        (SqlOptions::default().table("a".repeat(64)), "table"),
    ] {
        let err = SqlStore::connect_with(&url, options).await.expect_err("an unsafe identifier was accepted");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_postgres_gives_503_and_recovery_without_restart() {
    let mut server = own_sql::OwnPostgres::new();
    let store = multisession::store::SqlStore::connect(&server.url()).await.expect("connects");
    let sessions = multisession::Sessions::new(store, Default::default()).expect("valid config");
    // The database keeps its data across the restart: the session survives.
    outage::outage_gives_503_then_recovery(&mut server, sessions, true).await;
}
