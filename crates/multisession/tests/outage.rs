//! A store that cannot be reached gives 503 and a log line without the
//! session id, and routes that do not need the session keep working.

mod common;
#[path = "support/switchable.rs"]
mod switchable;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::Captured;
use common::{Device, app};
use multisession::{SessionConfig, Sessions};
use switchable::Switchable;

#[tokio::test]
async fn an_unreachable_store_gives_503_and_recovers_without_restart() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());

    let store = Arc::new(Switchable::default());
    let router = app(Sessions::new(store.clone(), SessionConfig::default()).expect("valid config"));
    let mut device = Device::new(router, "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    device.get("/write").await;
    let cookie = common::session_cookie(&device).expect("logged in");

    store.down.store(true, Ordering::SeqCst);
    for path in ["/read", "/write", "/login/24", "/logout_all", "/devices"] {
        let reply = device.get(path).await;
        assert_eq!(reply.status, 503, "{path} during the outage");
        assert!(!reply.body.contains(&cookie), "the body leaks the session id");
    }
    assert_eq!(device.get("/none").await.status, 200, "a route without the session failed");

    store.down.store(false, Ordering::SeqCst);
    assert_eq!(device.get("/read").await.body, "user=23 n=1", "the session did not survive the outage");

    let logs = logs.text();
    assert!(logs.contains("session store unavailable"), "no log line for the outage:\n{logs}");
    assert!(!logs.contains(&cookie), "the logs contain the session id");
}
