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

/// The same outage on a Redis that persists every write before answering
/// (`appendfsync always`): killed and started again, it still holds every
/// session and every write it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_persists_keeps_every_acknowledged_write_across_a_kill() {
    let mut server = OwnServer::new(|port, dir| {
        let mut redis = Command::new("redis-server");
        redis.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        redis.args(["--appendonly", "yes", "--appendfsync", "always"]);
        redis.arg("--dir").arg(dir);
        redis
    });
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{}", server.port)).await.expect("connects");
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid config");
    outage::outage_gives_503_then_recovery(&mut server, sessions, true).await;
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

/// The store with its client-side cache on (`?client_cache=N`): the same
/// conformance suite, and what only the cache shows.
mod client_cache {
    use super::*;

    multisession::store_conformance_tests!(super::support::cached());

    fn device_on(store: std::sync::Arc<RedisStore>) -> Device {
        Device::new(app(Sessions::new(store, SessionConfig::default()).expect("valid config")), "ua", "127.0.0.1:1")
    }

    /// Runs `requests` and gives what they cost in Redis commands, counted
    /// by `count`; again if the cache was dropped meanwhile (a heartbeat
    /// that went unanswered for 2 s on a stalled machine empties it, and the
    /// next request rightly asks Redis).
    async fn cost_while_cached<F, Fut>(
        redis: &support::Redis,
        mut count: impl AsyncFnMut() -> u64,
        mut requests: F,
    ) -> u64
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        for _ in 0..5 {
            let flushes = redis.store.cache_stats().expect("the cache is on").flushes;
            let before = count().await;
            requests().await;
            let cost = count().await - before;
            if redis.store.cache_stats().expect("on").flushes == flushes {
                return cost;
            }
        }
        panic!("the cache was dropped during five tries in a row")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hot_sessions_reads_run_no_redis_command_and_its_writes_one_script_each() {
        let redis = support::cached().await;
        let device = tokio::sync::Mutex::new(device_on(redis.store.clone()));
        device.lock().await.get("/login/23").await;
        device.lock().await.get("/write").await;
        let reads = cost_while_cached(
            &redis,
            async || redis.commands().await,
            || async {
                for _ in 0..10 {
                    assert_eq!(device.lock().await.get("/read").await.body, "user=23 n=1");
                }
            },
        )
        .await;
        assert_eq!(reads, 0, "a cached read went to Redis");

        let n = std::sync::atomic::AtomicU64::new(1);
        let writes = cost_while_cached(
            &redis,
            async || redis.calls_of("hgetall").await,
            || async {
                for _ in 0..10 {
                    let next = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    assert_eq!(device.lock().await.get("/write").await.body, format!("n={next}"));
                }
            },
        )
        .await;
        assert_eq!(writes, 0, "a write request read the session from Redis");
        let scripts = redis.calls_of("evalsha").await;
        device.lock().await.get("/write").await;
        assert_eq!(redis.calls_of("evalsha").await - scripts, 1);
        let stats = redis.store.cache_stats().expect("the cache is on");
        assert!(stats.hits >= 20 && stats.entries == 1, "{stats:?}");
    }

    /// Polls `write` once and drops it; whether it was still waiting then.
    async fn abandon<T>(write: impl std::future::Future<Output = T>) -> bool {
        tokio::pin!(write);
        tokio::select! {
            biased;
            _ = &mut write => false,
            () = std::future::ready(()) => true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_abandoned_in_flight_leaves_its_session_uncached() {
        let redis = support::cached().await;
        let mut device = device_on(redis.store.clone());
        device.get("/login/kim").await;
        device.get("/write").await;
        assert_eq!(device.get("/read").await.body, "user=kim n=1");
        assert_eq!(redis.store.cache_stats().expect("the cache is on").entries, 1);
        let key = redis.store.user_sessions("kim").await.expect("listed")[0].key;
        // Polled once, then dropped, as when the request's client goes away:
        // Redis may or may not run it, and sends this process no push for
        // its own write either way. (A delete that finished on that poll
        // forgot the session too.)
        abandon(redis.store.delete(&key)).await;
        assert_eq!(redis.store.cache_stats().expect("on").entries, 0, "an abandoned delete left its session cached");
        let misses = redis.store.cache_stats().expect("on").misses;
        redis.store.load(&key).await.expect("loads");
        assert_eq!(redis.store.cache_stats().expect("on").misses, misses + 1, "the next load did not ask Redis");

        // The same for a change.
        let mut device = device_on(redis.store.clone());
        device.get("/login/lee").await;
        device.get("/write").await;
        assert_eq!(device.get("/read").await.body, "user=lee n=1");
        // kim's session is cached again if the abandoned delete never ran.
        let before = redis.store.cache_stats().expect("on");
        assert!(before.entries >= 1, "{before:?}");
        let key = redis.store.user_sessions("lee").await.expect("listed")[0].key;
        let now = time::OffsetDateTime::now_utc();
        let mut change = multisession::Change::new(now, now + time::Duration::HOUR);
        change.set.insert("n".into(), 7.into());
        change.user_id = Some("lee".to_owned());
        // A change that finished on its first poll (its thread was paused
        // for a round trip) rightly updated the copy: try again.
        for _ in 0..20 {
            if abandon(redis.store.apply(&key, &change)).await {
                break;
            }
        }
        let after = redis.store.cache_stats().expect("on");
        // (Unless a heartbeat Redis left unanswered for 2 s emptied it all.)
        if after.flushes == before.flushes {
            assert_eq!(after.entries, before.entries - 1, "an abandoned change left its session cached");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_by_another_client_reaches_the_cache_and_the_next_read_sees_it() {
        let redis = support::cached().await;
        let mut device = device_on(redis.store.clone());
        device.get("/login/ada").await;
        device.get("/write").await;
        assert_eq!(device.get("/read").await.body, "user=ada n=1");
        let key = redis.store.user_sessions("ada").await.expect("listed")[0].key;
        assert_eq!(redis.store.cache_stats().expect("the cache is on").entries, 1);
        redis.raw::<i64>(redis::cmd("HSET").arg(redis.session_key(&key)).arg(".n").arg("41")).await;
        support::wait_for("the push to drop the session", || async {
            redis.store.cache_stats().expect("on").entries == 0
        })
        .await;
        assert_eq!(device.get("/write").await.body, "n=42", "a write built on the stale copy");
        assert_eq!(device.get("/read").await.body, "user=ada n=42");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_logged_out_everywhere_by_another_process_is_anonymous_on_the_next_request() {
        let redis = support::cached().await;
        let device = tokio::sync::Mutex::new(device_on(redis.store.clone()));
        device.lock().await.get("/login/grace").await;
        device.lock().await.get("/write").await;
        let cost = cost_while_cached(
            &redis,
            async || redis.commands().await,
            || async {
                assert_eq!(device.lock().await.get("/read").await.body, "user=grace n=1");
            },
        )
        .await;
        assert_eq!(cost, 0, "the session was not served from the cache");

        assert_eq!(redis.store.cache_stats().expect("the cache is on").entries, 1);
        let process_b = std::process::Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--ignored", "--exact", "client_cache::process_b_logs_a_user_out_everywhere", "--nocapture"])
            .env("PROCESS_B_REDIS_URL", support::with_client_cache(&support::standalone_url(), 10))
            .env("PROCESS_B_PREFIX", &redis.prefix)
            .env("PROCESS_B_USER", "grace")
            .output()
            .expect("process B runs");
        let said = String::from_utf8_lossy(&process_b.stdout);
        assert!(process_b.status.success() && said.contains("ended 1 sessions"), "process B: {said}");

        support::wait_for("process B's logout to drop the session from this process's cache", || async {
            redis.store.cache_stats().expect("on").entries == 0
        })
        .await;
        assert_eq!(device.lock().await.get("/read").await.body, "user=anonymous n=0");
    }

    /// Process B of the test above: another process with a store of its
    /// own, which logs `PROCESS_B_USER` out everywhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "process B of a_user_logged_out_everywhere_by_another_process_is_anonymous_on_the_next_request, which runs it"]
    async fn process_b_logs_a_user_out_everywhere() {
        if std::env::var_os("PROCESS_B_REDIS_URL").is_none() {
            println!("process B runs only when the test above starts it");
            return;
        }
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by process A"));
        let store = RedisStore::connect(&var("PROCESS_B_REDIS_URL")).await.expect("connects");
        let sessions = Sessions::new(store.with_key_prefix(var("PROCESS_B_PREFIX")), SessionConfig::default())
            .expect("valid config");
        let session = sessions.session([], Default::default());
        let ended = session.clear_user_sessions(&var("PROCESS_B_USER")).await.expect("cleared");
        println!("ended {ended} sessions");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_connection_empties_the_cache_so_nothing_stale_is_served_after_it() {
        let mut server = OwnServer::new(|port, dir| {
            let mut redis = Command::new("redis-server");
            redis.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
            redis.arg("--dir").arg(dir);
            redis
        });
        let url = format!("redis://127.0.0.1:{}/?client_cache=10", server.port);
        let store = std::sync::Arc::new(RedisStore::connect(&url).await.expect("connects"));
        let mut device = device_on(store.clone());
        device.get("/login/lin").await;
        assert_eq!(device.get("/read").await.body, "user=lin n=0");
        assert_eq!(device.get("/read").await.body, "user=lin n=0");
        let flushes = store.cache_stats().expect("the cache is on").flushes;
        // The restarted Redis holds nothing, and its pushes to the old
        // connection were lost: only an emptied cache reads that.
        outage::Server::kill(&mut server);
        support::wait_for("the cache to hear of the lost connection", || async {
            store.cache_stats().expect("on").flushes > flushes
        })
        .await;
        outage::Server::start(&mut server);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let reply = loop {
            let reply = device.get("/read").await;
            if reply.status.is_success() {
                break reply;
            }
            assert!(std::time::Instant::now() < deadline, "Redis did not serve again within a minute");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(reply.body, "user=anonymous n=0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_holds_at_most_its_size_and_serves_every_session_right() {
        let redis = support::on(&support::with_client_cache(&support::standalone_url(), 3)).await;
        let mut devices: Vec<Device> = (0..10).map(|_| device_on(redis.store.clone())).collect();
        for (i, device) in devices.iter_mut().enumerate() {
            device.get(&format!("/login/u{i}")).await;
            for _ in 0..=i {
                device.get("/write").await;
            }
        }
        for _ in 0..3 {
            for (i, device) in devices.iter_mut().enumerate() {
                assert_eq!(device.get("/read").await.body, format!("user=u{i} n={}", i + 1));
            }
        }
        assert!(redis.store.cache_stats().expect("on").entries <= 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_script_redis_lost_is_loaded_again() {
        let redis = support::cached().await;
        let mut device = device_on(redis.store.clone());
        device.get("/login/sam").await;
        redis.raw::<String>(redis::cmd("SCRIPT").arg("FLUSH")).await;
        assert_eq!(device.get("/write").await.body, "n=1");
        assert_eq!(device.get("/write").await.body, "n=2");
    }

    #[tokio::test]
    async fn client_cache_must_be_a_size_and_standalone_and_resp3() {
        for url in [
            "redis://127.0.0.1:1/?client_cache=0",
            "redis://127.0.0.1:1/?client_cache=many",
            "redis://127.0.0.1:1/?client_cache=10000001",
            "redis://127.0.0.1:1/?client_cache=10&protocol=resp2",
        ] {
            let err = RedisStore::connect(url).await.expect_err(url);
            assert_eq!(err.kind(), multisession::ErrorKind::Config, "{url}: {err}");
            assert!(err.to_string().contains("client_cache"), "{url}: {err}");
        }
        let err = RedisStore::connect_cluster(["redis://127.0.0.1:1/?client_cache=10"]).await.expect_err("cluster");
        assert!(err.to_string().contains("standalone"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_under_the_prefix_is_unreadable_and_does_not_stop_the_walk() {
    let redis = support::standalone().await;
    let store = redis.store();
    let now = time::OffsetDateTime::now_utc();
    let record = multisession::Record {
        data: serde_json::Map::new(),
        meta: multisession::Meta {
            user_id: None,
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::hours(1),
            absolute_expires_at: None,
            permanent: false,
            device: multisession::Device::default(),
            siblings: Default::default(),
        },
    };
    let key = multisession::SessionId::generate().expect("rng").store_key();
    store.create(&key, &record).await.expect("created");
    let _: () = redis.raw(redis::cmd("SET").arg(format!("{}:s:not-a-hash", redis.prefix)).arg("hello")).await;
    let _: () = redis.raw(redis::cmd("RPUSH").arg(format!("{}:s:a-list", redis.prefix)).arg("x")).await;

    let (mut found, mut unreadable, mut cursor) = (Vec::new(), 0, None);
    loop {
        let page = store.sessions_page(cursor.as_ref(), 5).await.expect("the walk goes on past foreign keys");
        unreadable += page.unreadable;
        found.extend(page.sessions.into_iter().map(|(key, _)| key));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(found.contains(&key), "the session was not walked");
    assert!(unreadable >= 2, "the foreign keys were not counted as unreadable");
}
