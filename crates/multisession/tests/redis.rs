//! The store conformance suite on standalone Redis, and what only Redis
//! shows: the command cost of requests, and surviving a Redis restart.

mod common;
#[path = "support/outage.rs"]
mod outage;
#[path = "support/redis.rs"]
mod support;

use std::process::Command;

use common::{Device, app};
use multisession::store::{RedisStore, Store};
use multisession::testing::Harness;
use multisession::{SessionConfig, Sessions};
use outage::OwnServer;

multisession::store_conformance_tests!(support::standalone());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_request_is_one_redis_command() {
    let redis = support::standalone().await;
    let mut device =
        Device::new(app(Sessions::new(redis.store(), SessionConfig::default()).expect("valid")), "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    device.get("/write").await;
    let before = redis.commands().await;
    assert_eq!(device.get("/read").await.body, "user=23 n=1");
    assert_eq!(redis.commands().await - before, 1, "a read-only request ran more than one Redis command");
    let before = redis.commands().await;
    device.get("/none").await;
    assert_eq!(redis.commands().await - before, 0);
}

/// Commands to log a user with 50 sessions out everywhere, among `others`
/// sessions of other users.
async fn logout_all_cost(redis: &support::Redis, user: &str, others: usize) -> u64 {
    let mut filler = Vec::with_capacity(others);
    for chunk in (0..others).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let key = format!("{}:s:filler-{user}-{i}", redis.prefix);
            pipe.cmd("HSET").arg(&key).arg("_v").arg("1").arg("_user").arg(format!("other-{i}")).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(3_600_000).ignore();
            filler.push(key);
        }
        redis.raw_pipe(&pipe).await;
    }
    let sessions = Sessions::new(redis.store(), SessionConfig::default()).expect("valid config");
    let mut last = None;
    for _ in 0..50 {
        let session = sessions.session([], Default::default());
        session.login(user).await.expect("login");
        let set = session.commit().await.expect("commit").set_cookies.remove(0);
        last = Some(set.split(';').next().expect("name=value").to_owned());
    }
    let header = last.expect("a cookie");
    let before = redis.commands().await;
    let session = sessions.session([header.as_bytes()], Default::default());
    assert_eq!(session.logout_all_devices().await.expect("logout all"), 50);
    session.commit().await.expect("commit");
    let cost = redis.commands().await - before;
    for chunk in filler.chunks(10_000) {
        redis.raw::<i64>(redis::cmd("DEL").arg(chunk)).await;
    }
    cost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_devices_costs_the_same_among_10_or_100_000_other_sessions() {
    let redis = support::standalone().await;
    let small = logout_all_cost(&redis, "few-neighbours", 10).await;
    let large = logout_all_cost(&redis, "many-neighbours", 100_000).await;
    assert!(small > 0);
    assert_eq!(small, large, "logout_all_devices ran {small} commands among 10 others and {large} among 100 000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_503_while_redis_is_down_and_succeed_once_it_is_back() {
    let mut server = OwnServer::new(|port, dir| {
        let mut redis = Command::new("redis-server");
        redis.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        redis.arg("--dir").arg(dir);
        redis
    });
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{}", server.port)).await.expect("connects");
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid config");
    // The restarted Redis kept nothing: the device starts a new session.
    outage::outage_gives_503_then_recovery(&mut server, sessions, false).await;
}

/// Unix milliseconds, as Redis scores hold them.
fn ms(t: time::OffsetDateTime) -> f64 {
    (t.unix_timestamp_nanos() / 1_000_000) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_within_the_index_grain_leave_the_index_alone_and_a_longer_expiry_raises_it() {
    let redis = support::standalone().await;
    let mut device =
        Device::new(app(Sessions::new(redis.store(), SessionConfig::default()).expect("valid")), "ua", "127.0.0.1:1");
    device.get("/login/grain").await;
    device.get("/write").await;
    let index = format!("{}:u:grain", redis.prefix);
    let key = redis.store.user_sessions("grain").await.expect("listed")[0].key;
    let member = key.to_string();
    let zscore = redis::cmd("ZSCORE").arg(&index).arg(&member).clone();
    let before = redis.raw::<f64>(&zscore).await;
    let index_writes = redis.calls_of("zadd").await;
    for _ in 0..20 {
        device.get("/write").await;
    }
    assert_eq!(device.get("/read").await.body, "user=grain n=21");
    assert_eq!(redis.calls_of("zadd").await, index_writes, "writes within the grain visited the index");
    assert_eq!(redis.raw::<f64>(&zscore).await, before);
    let listed = redis.store.user_sessions("grain").await.expect("listed");
    assert!(before >= ms(listed[0].expires_at), "the score fell below the expiry");

    // A write past the score raises it, and the index's own expiry with it.
    let now = time::OffsetDateTime::now_utc();
    let mut change = multisession::Change::new(now, now + time::Duration::days(3));
    change.user_id = Some("grain".to_owned());
    redis.store.apply(&key, &change).await.expect("applied");
    let raised = redis.raw::<f64>(&zscore).await;
    assert!(raised >= ms(change.expires_at), "the score fell below the expiry");
    let ttl: i64 = redis.raw(redis::cmd("PTTL").arg(&index)).await;
    assert!(ttl as f64 >= raised - ms(time::OffsetDateTime::now_utc()) - 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangling_index_entries_are_pruned_when_met() {
    let redis = support::standalone().await;
    let sessions = Sessions::new(redis.store(), SessionConfig::default()).expect("valid config");
    for _ in 0..3 {
        let session = sessions.session([], Default::default());
        session.login("dora").await.expect("login");
        session.commit().await.expect("commit");
    }
    let keys: Vec<_> = redis.store.user_sessions("dora").await.expect("listed").into_iter().map(|s| s.key).collect();
    redis.raw::<i64>(redis::cmd("DEL").arg(redis.session_key(&keys[0]))).await;
    assert_eq!(redis.store.user_sessions("dora").await.expect("listed").len(), 2);
    let index = format!("{}:u:dora", redis.prefix);
    assert_eq!(redis.raw::<i64>(redis::cmd("ZCARD").arg(&index)).await, 2);
    let ttl: i64 = redis.raw(redis::cmd("PTTL").arg(&index)).await;
    assert!(ttl > 0, "the index does not expire with its sessions");
}
