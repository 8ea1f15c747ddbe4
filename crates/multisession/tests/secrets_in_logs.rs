//! No session value, session id or store key appears in an error message,
//! a response body or a log line, whatever fails: a value of the wrong type,
//! stored data that does not decode, a store that is down, a cookie too
//! large to send; on axum and on actix-web.

mod common;
#[path = "support/switchable.rs"]
mod switchable;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::Captured;
use common::{Device, Framework, Reply};
use multisession::store::{CookieStore, Store};
use multisession::{Fields, Key, KeyRing, SessionConfig, SessionSpec, Sessions};
use switchable::Switchable;

const SECRET: &str = "tok-5ecr3t";

/// Panics if `text` shows the planted value, the session's id or its key.
fn assert_clean(what: &str, text: &str, id: &str, key: &str) {
    for (name, secret) in [("a session value", SECRET), ("the session id", id), ("the store key", key)] {
        assert!(!text.contains(secret), "{what} shows {name}:\n{text}");
    }
}

common::both_frameworks!(every_error_path_keeps_values_ids_and_keys_out_of_logs_and_bodies);

async fn every_error_path_keeps_values_ids_and_keys_out_of_logs_and_bodies(fw: Framework) {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let store = Arc::new(Switchable::default());
    let key = Key::generate();
    // A server part for the login, and a cookie part that can grow too large.
    let sessions = Sessions::from_specs([
        SessionSpec::new(store.clone(), SessionConfig::default()).with_fields(Fields::exclude(["big"])),
        SessionSpec::new(
            CookieStore::new(KeyRing::new(vec![key]).expect("a key")),
            SessionConfig::default().with_cookie_name("c"),
        )
        .with_fields(Fields::include(["big"])),
    ])
    .expect("valid configuration");
    let mut device = Device::new(fw.app(sessions), "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    let id = common::session_cookie(&device).expect("logged in");
    let store_key = store.inner.user_sessions("23").await.expect("listed")[0].key.to_string();
    let mut replies: Vec<(&str, Reply)> = Vec::new();

    // A value of another type: serde's message would quote it.
    device.get(&format!("/set/n/{SECRET}")).await;
    replies.push(("a type error", device.get("/read").await));
    assert_eq!(replies.last().map(|(_, r)| r.status.as_u16()), Some(500));

    // A cookie part over 4096 bytes.
    replies.push(("an oversized cookie", device.get(&format!("/set/big/{SECRET}{}", "x".repeat(5000))).await));

    // The store down.
    store.down.store(true, Ordering::SeqCst);
    replies.push(("an outage", device.get("/write").await));
    store.down.store(false, Ordering::SeqCst);

    // Stored data that does not decode, holding the secret where a decoder
    // would quote it.
    let corrupt = format!(r#"{{"v":1,"data":{{"n":"{SECRET}"}},"meta":"{SECRET}","{store_key}":1}}"#);
    store.inner.write_raw(&store_key.parse().expect("a key"), corrupt.as_bytes());
    replies.push(("corrupt data", device.get("/read").await));
    assert_eq!(replies.last().map(|(_, r)| r.body.as_str()), Some("user=anonymous n=0"));

    for (what, reply) in &replies {
        assert_clean(what, &reply.body, &id, &store_key);
    }
    let logs = logs.text();
    assert!(
        logs.contains("not of the requested type") || logs.contains("is not a"),
        "no log of the type error:\n{logs}"
    );
    assert!(logs.contains("4096") && logs.contains("unavailable") && logs.contains("could not be decoded"), "{logs}");
    assert_clean("the log", &logs, &id, &store_key);
}

#[tokio::test]
async fn a_type_error_says_what_was_expected_and_not_what_was_found() {
    let sessions = Sessions::new(multisession::store::MemoryStore::new(), SessionConfig::default()).expect("valid");
    let session = sessions.session([], Default::default());
    session.insert("token", SECRET).await.expect("insert");
    let err = session.get::<u32>("token").await.expect_err("a string read as a number");
    let text = format!("{err} {err:?}");
    assert!(text.contains("u32") && text.contains("token") && !text.contains(SECRET), "{text}");
}
