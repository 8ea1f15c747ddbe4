//! What each kind of request costs the store, counted by a wrapper around a
//! real store; on axum and on actix-web.

mod common;

use std::sync::Arc;

use common::{Device, Framework};
use multisession::store::MemoryStore;
use multisession::testing::{CountingStore, Counts};
use multisession::{SessionConfig, Sessions};

fn setup(fw: Framework, config: SessionConfig) -> (Arc<CountingStore<MemoryStore>>, Device) {
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let sessions = Sessions::new(store.clone(), config).expect("valid config");
    (store, Device::new(fw.app(sessions), "test-agent", "127.0.0.1:4000"))
}

common::both_frameworks!(
    a_route_that_never_touches_the_session_costs_nothing,
    a_read_only_request_costs_exactly_one_load_and_no_write,
    reading_without_a_cookie_costs_nothing_and_stores_nothing,
    a_new_session_is_one_create_and_a_change_is_one_apply,
    a_read_touches_only_once_the_expiry_moved_past_the_touch_interval,
);

fn delta(after: Counts, before: Counts) -> Counts {
    Counts {
        loads: after.loads - before.loads,
        creates: after.creates - before.creates,
        applies: after.applies - before.applies,
        touches: after.touches - before.touches,
        deletes: after.deletes - before.deletes,
        user_reads: after.user_reads - before.user_reads,
        user_deletes: after.user_deletes - before.user_deletes,
    }
}

async fn a_route_that_never_touches_the_session_costs_nothing(fw: Framework) {
    let (store, mut device) = setup(fw, SessionConfig::default());
    device.get("/write").await;
    let before = store.counts();
    let reply = device.get("/none").await;
    assert_eq!(delta(store.counts(), before).total(), 0);
    assert!(reply.set_cookies().is_empty());
    assert!(reply.headers.get("vary").is_none(), "an untouched session must not add Vary");
}

async fn a_read_only_request_costs_exactly_one_load_and_no_write(fw: Framework) {
    let (store, mut device) = setup(fw, SessionConfig::default());
    device.get("/write").await;
    let before = store.counts();
    let reply = device.get("/read").await;
    assert_eq!(reply.body, "user=anonymous n=1");
    let cost = delta(store.counts(), before);
    assert_eq!(cost, Counts { loads: 1, ..Counts::default() });
    assert!(reply.set_cookies().is_empty(), "a read-only request re-sent the cookie");
    assert_eq!(reply.headers.get("vary").and_then(|v| v.to_str().ok()), Some("cookie"));
}

async fn reading_without_a_cookie_costs_nothing_and_stores_nothing(fw: Framework) {
    let (store, mut device) = setup(fw, SessionConfig::default());
    let reply = device.get("/read").await;
    assert_eq!(reply.body, "user=anonymous n=0");
    assert_eq!(store.counts().total(), 0);
    assert!(reply.set_cookies().is_empty(), "an empty session must not be created");
}

async fn a_new_session_is_one_create_and_a_change_is_one_apply(fw: Framework) {
    let (store, mut device) = setup(fw, SessionConfig::default());
    device.get("/write").await;
    assert_eq!(store.counts(), Counts { creates: 1, ..Counts::default() });
    let before = store.counts();
    device.get("/write").await;
    assert_eq!(delta(store.counts(), before), Counts { loads: 1, applies: 1, ..Counts::default() });
}

async fn a_read_touches_only_once_the_expiry_moved_past_the_touch_interval(fw: Framework) {
    // One store, read through two configurations: an hour's interval, which
    // no test run outlasts, and none at all, once the clock has moved.
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let through = |interval| {
        let config = SessionConfig::default().with_touch_interval(interval);
        fw.app(Sessions::new(store.clone(), config).expect("valid config"))
    };
    let mut device = Device::new(through(time::Duration::HOUR), "test-agent", "127.0.0.1:4000");
    device.get("/write").await;
    let written = time::OffsetDateTime::now_utc();
    let before = store.counts();
    device.get("/read").await;
    assert_eq!(delta(store.counts(), before).touches, 0, "touched within the interval");

    let mut later = Device::new(through(time::Duration::ZERO), "test-agent", "127.0.0.1:4000");
    later.cookies = device.cookies.clone();
    while time::OffsetDateTime::now_utc() - written < time::Duration::milliseconds(2) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let before = store.counts();
    later.get("/read").await;
    assert_eq!(delta(store.counts(), before), Counts { loads: 1, touches: 1, ..Counts::default() });
}
