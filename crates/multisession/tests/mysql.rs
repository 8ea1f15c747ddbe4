//! The store conformance suite on MariaDB (MySQL dialect), the planner's use
//! of the user index, exact user matching, and a database restart.

mod common;
#[path = "support/outage.rs"]
mod outage;
#[path = "support/own_sql.rs"]
mod own_sql;
#[path = "support/sql.rs"]
mod support;

use multisession::store::Store;
use multisession::testing::Harness;

multisession::store_conformance_tests!(support::mysql());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_ids_are_matched_exactly_not_by_collation() {
    let db = support::mysql().await;
    let sessions = multisession::Sessions::new(db.store(), Default::default()).expect("valid");
    for user in ["Alice", "alice", "alice "] {
        let session = sessions.session([], Default::default());
        session.login(user).await.expect("login");
        session.commit().await.expect("commit");
    }
    for user in ["Alice", "alice", "alice "] {
        let listed = db.store.user_sessions(user).await.expect("listed");
        assert_eq!(listed.len(), 1, "{user:?} matched {} sessions", listed.len());
        assert_eq!(listed[0].user_id, user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_mariadb_gives_503_and_recovery_without_restart() {
    let mut server = own_sql::own_mariadb();
    let store = multisession::store::SqlStore::connect(&own_sql::mariadb_url(&server)).await.expect("connects");
    let sessions = multisession::Sessions::new(store, Default::default()).expect("valid config");
    // The database keeps its data across the restart: the session survives.
    outage::outage_gives_503_then_recovery(&mut server, sessions, true).await;
}
