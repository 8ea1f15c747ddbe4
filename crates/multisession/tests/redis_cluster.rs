//! The store conformance suite on a 3-master Redis Cluster, and index repair
//! across hash slots.

#[path = "support/redis.rs"]
mod support;

use multisession::store::Store;
use multisession::testing::Harness;

multisession::store_conformance_tests!(support::cluster());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangling_index_entries_are_pruned_when_met() {
    let redis = support::cluster().await;
    let sessions = multisession::Sessions::new(redis.store(), Default::default()).expect("valid config");
    let mut keys = Vec::new();
    for _ in 0..5 {
        let session = sessions.session([], Default::default());
        session.login("carol").await.expect("login");
        session.commit().await.expect("commit");
    }
    for info in redis.store.user_sessions("carol").await.expect("listed") {
        keys.push(info.key);
    }
    // Two sessions vanish behind the index's back (a crash between the two
    // steps of a cross-slot write, or an eviction).
    for key in &keys[..2] {
        redis.raw::<i64>(redis::cmd("DEL").arg(redis.session_key(key))).await;
    }
    assert_eq!(redis.store.user_sessions("carol").await.expect("listed").len(), 3);
    let index = format!("{}:u:carol", redis.prefix);
    assert_eq!(redis.raw::<i64>(redis::cmd("ZCARD").arg(&index)).await, 3, "dangling entries were not pruned");
    assert_eq!(redis.store.delete_user_sessions("carol", None).await.expect("cleared"), 3);
    assert_eq!(redis.raw::<i64>(redis::cmd("EXISTS").arg(&index)).await, 0);
}
