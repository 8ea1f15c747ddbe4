//! Logging in and out on one device: id rotation, the permanent flag,
//! lifetimes and the per-user session limit; what goes through requests, on
//! axum and on actix-web.

mod common;

use std::sync::Arc;

use common::{App, Device, Framework, session_cookie};
use multisession::store::{MemoryStore, Store};
use multisession::testing::wait_past;
use multisession::{Device as DeviceFacts, OnLimit, SessionConfig, SessionId, Sessions};
use time::{Duration, OffsetDateTime};

fn setup(fw: Framework, config: SessionConfig) -> (Arc<MemoryStore>, App) {
    let store = Arc::new(MemoryStore::new());
    (store.clone(), fw.app(Sessions::new(store, fw.config(config)).expect("valid config")))
}

// The permanent flag's test is about the cookie's Max-Age; the rest also
// runs for clients that carry their id in a header.
common::every_client!(
    cookie_only: [the_permanent_flag_survives_later_requests_and_sets_max_age],
    all: [
        login_changes_the_id_keeps_the_data_and_the_old_id_no_longer_loads,
        login_records_the_user_agent_and_client_address,
        logout_deletes_the_session_and_expires_the_cookie,
        cycle_id_changes_the_id_and_keeps_user_and_data,
        an_expired_session_is_no_session,
        a_session_limit_evicts_the_least_recently_active_session,
        a_session_limit_can_refuse_the_login_instead,
        logging_in_as_another_user_does_not_inherit_the_previous_users_data,
        a_refused_login_as_another_user_leaves_the_browser_as_it_was,
    ],
);

async fn login_changes_the_id_keeps_the_data_and_the_old_id_no_longer_loads(fw: Framework) {
    let (store, app) = setup(fw, SessionConfig::default());
    let mut device = Device::new(app.clone(), "ua", "127.0.0.1:1");
    device.get("/write").await;
    let before = session_cookie(&device).expect("a session");
    device.get("/login/23").await;
    let after = session_cookie(&device).expect("a session");
    assert_ne!(before, after, "login kept the id");
    assert_eq!(device.get("/read").await.body, "user=23 n=1", "login lost the data");

    let mut old = Device::new(app, "ua", "127.0.0.1:1");
    old.cookies.insert("session".into(), before.clone());
    assert_eq!(old.get("/read").await.body, "user=anonymous n=0", "the pre-login id still works");
    let sessions = store.user_sessions("23").await.expect("listed");
    assert_eq!(sessions.len(), 1, "the pre-login session was not replaced");
}

async fn login_records_the_user_agent_and_client_address(fw: Framework) {
    let (store, app) = setup(fw, SessionConfig::default());
    let mut device = Device::new(app, "Mozilla/5.0 (X11; Linux)", "198.51.100.7:5555");
    device.get("/login/23").await;
    let info = &store.user_sessions("23").await.expect("listed")[0];
    assert_eq!(info.device.user_agent.as_deref(), Some("Mozilla/5.0 (X11; Linux)"));
    assert_eq!(info.device.ip, "198.51.100.7".parse().ok());
}

async fn logout_deletes_the_session_and_expires_the_cookie(fw: Framework) {
    let (store, app) = setup(fw, SessionConfig::default());
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    let reply = device.get("/logout").await;
    assert!(reply.ends_the_id(), "the logout did not tell the client to drop its id");
    assert!(session_cookie(&device).is_none());
    assert!(store.user_sessions("23").await.expect("listed").is_empty());
}

async fn the_permanent_flag_survives_later_requests_and_sets_max_age(fw: Framework) {
    let (_, app) = setup(fw, SessionConfig::default());
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    let reply = device.get("/permanent").await;
    let set = reply.set_cookies();
    assert!(set.iter().any(|c| c.contains("Max-Age=267")), "a permanent cookie lasts 31 days: {set:?}");
    device.get("/write").await;
    device.get("/write").await;
    let reply = device.get("/write").await;
    assert!(reply.set_cookies().iter().any(|c| c.contains("Max-Age=")), "the permanent flag was lost");
}

async fn cycle_id_changes_the_id_and_keeps_user_and_data(fw: Framework) {
    let (_, app) = setup(fw, SessionConfig::default());
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    device.get("/write").await;
    let before = session_cookie(&device);
    device.get("/cycle").await;
    assert_ne!(session_cookie(&device), before);
    assert_eq!(device.get("/read").await.body, "user=23 n=1");
}

#[tokio::test]
async fn an_absolute_lifetime_caps_the_expiry_however_active_the_session() {
    let config = SessionConfig::default().with_absolute_lifetime(Duration::minutes(10));
    let sessions = Sessions::new(MemoryStore::new(), config).expect("valid config");
    let session = sessions.session([], DeviceFacts::default());
    session.login("23").await.expect("login");
    session.commit().await.expect("commit");
    let info = &sessions.user_sessions("23").await.expect("listed")[0];
    let limit = OffsetDateTime::now_utc() + Duration::minutes(10);
    assert!(info.expires_at <= limit, "the idle lifetime of a day outlived the absolute ten minutes");
}

async fn an_expired_session_is_no_session(fw: Framework) {
    let config =
        SessionConfig::default().with_lifetime(Duration::milliseconds(200)).with_touch_interval(Duration::ZERO);
    let (store, app) = setup(fw, config);
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    wait_past(store.user_sessions("23").await.expect("listed")[0].expires_at).await;
    assert_eq!(device.get("/read").await.body, "user=anonymous n=0");
}

async fn a_session_limit_evicts_the_least_recently_active_session(fw: Framework) {
    let (store, app) = setup(fw, SessionConfig::default().with_max_sessions_per_user(2, OnLimit::EvictLeastRecent));
    let mut devices: Vec<Device> =
        (0..3).map(|i| Device::new(app.clone(), &format!("device-{i}"), "127.0.0.1:1")).collect();
    for device in &mut devices {
        device.get("/login/23").await;
        // Activity is kept to the millisecond: the next login is later.
        let listed = store.user_sessions("23").await.expect("listed");
        wait_past(listed.iter().map(|s| s.last_active_at).max().expect("a session")).await;
    }
    let agents: Vec<String> =
        store.user_sessions("23").await.expect("listed").into_iter().filter_map(|s| s.device.user_agent).collect();
    assert_eq!(agents.len(), 2);
    assert!(!agents.contains(&"device-0".to_owned()), "the oldest session survived: {agents:?}");
    assert_eq!(devices[0].get("/read").await.body, "user=anonymous n=0");
}

async fn a_session_limit_can_refuse_the_login_instead(fw: Framework) {
    let (store, app) = setup(fw, SessionConfig::default().with_max_sessions_per_user(1, OnLimit::RefuseLogin));
    let mut first = Device::new(app.clone(), "first", "127.0.0.1:1");
    let mut second = Device::new(app, "second", "127.0.0.1:2");
    first.get("/login/23").await;
    let reply = second.get("/login/23").await;
    assert_eq!(reply.status, 409);
    assert!(reply.body.contains("log out on another device"));
    assert_eq!(store.user_sessions("23").await.expect("listed").len(), 1);
    assert_eq!(first.get("/login/23").await.status, 200, "re-login on the same device is not an extra session");
}

#[tokio::test]
async fn ids_are_fresh_every_time() {
    let ids: std::collections::HashSet<String> =
        (0..1000).map(|_| SessionId::generate().expect("rng").store_key().to_string()).collect();
    assert_eq!(ids.len(), 1000);
}

async fn logging_in_as_another_user_does_not_inherit_the_previous_users_data(fw: Framework) {
    let (_, app) = setup(fw, SessionConfig::default());
    let mut device = Device::new(app, "shared computer", "127.0.0.1:1");
    device.get("/write").await;
    device.get("/login/alice").await;
    assert_eq!(device.get("/read").await.body, "user=alice n=1", "an anonymous visitor's data follows the login");
    device.get("/write").await;
    device.get("/login/bob").await;
    assert_eq!(device.get("/read").await.body, "user=bob n=0", "alice's data passed to bob");
}

/// Bob, at his session cap, is refused on Alice's browser: Alice stays
/// logged in with her data, as if Bob had not tried.
async fn a_refused_login_as_another_user_leaves_the_browser_as_it_was(fw: Framework) {
    let (_, app) = setup(fw, SessionConfig::default().with_max_sessions_per_user(1, OnLimit::RefuseLogin));
    let mut elsewhere = Device::new(app.clone(), "bob's phone", "127.0.0.1:2");
    elsewhere.get("/login/bob").await;
    let mut shared = Device::new(app, "shared computer", "127.0.0.1:1");
    shared.get("/login/alice").await;
    shared.get("/write").await;
    assert_eq!(shared.get("/login/bob").await.status, 409);
    assert_eq!(shared.get("/read").await.body, "user=alice n=1", "a refused login changed the session");
}

#[tokio::test]
async fn by_default_a_user_holds_at_most_100_sessions_and_unlimited_is_a_choice() {
    for (config, expected) in
        [(SessionConfig::default(), 100), (SessionConfig::default().with_unlimited_sessions_per_user(), 130)]
    {
        let sessions = Sessions::new(MemoryStore::new(), config).expect("valid config");
        for _ in 0..130 {
            let session = sessions.session([], DeviceFacts::default());
            session.login("23").await.expect("login");
            session.commit().await.expect("commit");
        }
        assert_eq!(sessions.user_sessions("23").await.expect("listed").len(), expected);
    }
}
