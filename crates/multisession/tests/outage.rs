//! A store that cannot be reached gives 503 and a log line without the
//! session id, and routes that do not need the session keep working; on
//! axum and on actix-web.

mod common;
#[path = "support/switchable.rs"]
mod switchable;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::Captured;
use common::{Device, Framework};
use multisession::{SessionConfig, Sessions};
use switchable::Switchable;

common::both_frameworks!(
    an_unreachable_store_gives_503_and_recovers_without_restart,
    what_a_request_logs_of_the_outage_is_inside_its_session_span,
);

async fn an_unreachable_store_gives_503_and_recovers_without_restart(fw: Framework) {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());

    let store = Arc::new(Switchable::default());
    let app = fw.app(Sessions::new(store.clone(), SessionConfig::default()).expect("valid config"));
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
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

/// The store's failure and the answer to it are logged inside the request's
/// `session` span, whichever framework served it.
async fn what_a_request_logs_of_the_outage_is_inside_its_session_span(fw: Framework) {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let store = Arc::new(Switchable::default());
    let app = fw.app(Sessions::new(store.clone(), SessionConfig::default()).expect("valid config"));
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
    device.get("/write").await;
    store.down.store(true, Ordering::SeqCst);
    assert_eq!(device.get("/read").await.status, 503);

    let logs = logs.text();
    let lines: Vec<&str> = logs.lines().filter(|line| line.contains("unavailable")).collect();
    assert!(!lines.is_empty(), "no log line for the outage:\n{logs}");
    for line in lines {
        // The fmt subscriber writes a line's spans, outermost first, before
        // its target: `ERROR session: multisession::error: ...`.
        assert!(line.contains(" session:") || line.contains(" session{"), "outside the session span: {line}");
    }
}
