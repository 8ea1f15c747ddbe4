//! The store conformance suite on a 3-master Redis Cluster, and index repair
//! across hash slots.

mod common;
#[path = "support/outage.rs"]
mod outage;
#[path = "support/redis.rs"]
mod support;

use std::process::Command;

use common::Device;
use multisession::store::{RedisStore, Store};
use multisession::testing::Harness;
use multisession::{SessionConfig, Sessions};
use outage::{OwnServer, Server as _, Traffic};

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

/// One master of a 3-master cluster of the test's own is killed while
/// devices keep writing, and started again.
///
/// What redis-rs (its async cluster client, as `RedisStore::connect_cluster`
/// configures it: one retry, the store's timeouts) does here: a command for
/// a slot of the dead master fails once its connection is refused, and the
/// store answers `Unavailable` (503); commands for the other masters' slots
/// go on as before, also after the survivors have marked the dead one
/// `fail`; once the master is back on its port, the client connects to it
/// again by itself. The cluster runs with `cluster-require-full-coverage
/// no`: with Redis's default (`yes`), Redis documents that every master
/// refuses every command once the dead one is marked `fail`, so the whole
/// store would be unavailable until it is back (not run here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_only_its_own_sessions_and_the_cluster_recovers_when_it_is_back() {
    let (mut nodes, buses): (Vec<OwnServer>, Vec<u16>) = (0..3).map(|_| cluster_node()).unzip();
    let urls: Vec<String> = nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect();
    let mut conns = Vec::new();
    for url in &urls {
        let client = redis::Client::open(url.as_str()).expect("a URL");
        conns.push(client.get_multiplexed_async_connection().await.expect("connects"));
    }
    let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
    for (conn, (first, last)) in conns.iter_mut().zip(ranges) {
        let _: () =
            redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(first).arg(last).query_async(conn).await.expect("slots");
    }
    for (node, bus) in nodes[1..].iter().zip(&buses[1..]) {
        let meet = redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(node.port).arg(bus).clone();
        let _: () = meet.query_async(&mut conns[0]).await.expect("meets");
    }
    support::wait_for("the cluster to form", || {
        let conns = conns.clone();
        async move { every_node_says(conns, "cluster_state:ok", "cluster_known_nodes:3").await }
    })
    .await;

    let store = RedisStore::connect_cluster(&urls).await.expect("connects");
    let app = common::app(Sessions::new(store, SessionConfig::default()).expect("valid config"));
    // Devices until at least two have every key on the surviving masters
    // (their session and their user's index) and two their session on the
    // one that dies.
    let (mut survivors, mut doomed) = (Vec::new(), Vec::new());
    for i in 0..200 {
        if survivors.len() >= 2 && doomed.len() >= 2 {
            break;
        }
        let mut device = Device::new(app.clone(), "flow", "127.0.0.1:2");
        let user = format!("m-{i}");
        assert_eq!(device.get(&format!("/login/{user}")).await.status, 200);
        let id = device.cookies.get("session").cloned().expect("logged in");
        let key: String = outage::store_key_of(&id).iter().map(|b| format!("{b:02x}")).collect();
        let on_dead = |slot: i64| slot >= ranges[2].0;
        let session = slot_of(&mut conns[0], &format!("session:s:{key}")).await;
        let index = slot_of(&mut conns[0], &format!("session:u:{user}")).await;
        if on_dead(session) {
            doomed.push(device);
        } else if !on_dead(index) {
            survivors.push(device);
        }
    }
    assert!(survivors.len() >= 2 && doomed.len() >= 2, "no devices on both sides");
    let (survivors, doomed) = (Traffic::of(survivors).await, Traffic::of(doomed).await);

    survivors.going_down();
    doomed.going_down();
    nodes[2].kill();
    doomed.wait_until("the dead master's sessions to answer 503", |s| s.unavailable[1] >= 1).await;
    support::wait_for("the survivors to mark the dead master fail", || {
        let mut conn = conns[0].clone();
        async move {
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await.unwrap_or_default();
            nodes.lines().any(|line| line.split(' ').nth(2).is_some_and(|flags| flags.split(',').any(|f| f == "fail")))
        }
    })
    .await;
    let before: Vec<u64> = survivors.seen.iter().map(|s| s.lock().expect("not poisoned").ok[1]).collect();
    survivors
        .wait_until("the survivors' writes to go on after the mark", |s| {
            s.ok[1] >= 3 + before.iter().max().copied().unwrap_or(0)
        })
        .await;
    for (i, seen) in survivors.seen.iter().enumerate() {
        let seen = seen.lock().expect("not poisoned");
        assert_eq!(seen.unavailable[1], 0, "survivor {i} got 503 with its keys on a live master");
    }

    nodes[2].start();
    survivors.back();
    doomed.back();
    support::wait_for("the cluster to heal", || {
        let urls = urls.clone();
        async move {
            let mut conns = Vec::new();
            for url in &urls {
                let Ok(client) = redis::Client::open(url.as_str()) else { return false };
                let Ok(conn) = client.get_multiplexed_async_connection().await else { return false };
                conns.push(conn);
            }
            every_node_says(conns, "cluster_state:ok", "cluster_slots_ok:16384").await
        }
    })
    .await;
    for traffic in [&survivors, &doomed] {
        traffic.wait_until("every device's writes to succeed again by themselves", |s| s.ok[2] >= 3).await;
    }
    // The survivors' sessions never went away; the restarted master kept
    // nothing (no persistence), so its devices started anew.
    survivors.finish(true).await;
    doomed.finish(false).await;
}

/// Whether every node's `CLUSTER INFO` holds both lines.
async fn every_node_says(conns: Vec<redis::aio::MultiplexedConnection>, a: &str, b: &str) -> bool {
    for mut conn in conns {
        let info: String = match redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await {
            Ok(info) => info,
            Err(_) => return false,
        };
        if !info.contains(a) || !info.contains(b) {
            return false;
        }
    }
    true
}

async fn slot_of(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(conn).await.expect("a slot")
}

/// A cluster-enabled Redis of the test's own, its bus on a port of its own
/// (kept across a restart, so the others find it again).
fn cluster_node() -> (OwnServer, u16) {
    let bus = outage::free_port();
    let server = OwnServer::new(move |port, dir| {
        let mut redis = Command::new("redis-server");
        redis.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        redis.args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()]);
        redis.args(["--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"]);
        redis.arg("--cluster-config-file").arg(dir.join("nodes.conf"));
        redis.arg("--dir").arg(dir);
        redis
    });
    (server, bus)
}
