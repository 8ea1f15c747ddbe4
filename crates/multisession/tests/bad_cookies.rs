//! Cookies a client can send that the server never issued: none gives a 5xx,
//! a panic, or a session; and an id the server never issued is not adopted.
//! On axum and on actix-web, down to the raw bytes of the `Cookie` header.

mod common;

use std::sync::Arc;

use common::{App, Device, Framework, send_raw, session_cookie};
use http::{HeaderValue, Request, header};
use multisession::store::{MemoryStore, Store};
use multisession::testing::CountingStore;
use multisession::{Key, KeyRing, SessionConfig, Sessions};

fn signed() -> SessionConfig {
    SessionConfig::default().with_signed_id(KeyRing::new(vec![Key::generate()]).expect("a key"))
}

async fn logged_in(fw: Framework, config: SessionConfig) -> (Arc<CountingStore<MemoryStore>>, App, String) {
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let app = fw.app(Sessions::new(store.clone(), config).expect("valid config"));
    let mut device = Device::new(app.clone(), "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    let cookie = session_cookie(&device).expect("logged in");
    (store, app, cookie)
}

common::both_frameworks!(
    tampered_truncated_oversized_and_non_ascii_cookies_are_no_session,
    a_cookie_signed_with_an_unknown_key_is_no_session_and_costs_no_store_read,
    an_id_the_server_never_issued_is_not_adopted,
    duplicate_and_foreign_cookies_do_not_confuse_the_lookup,
    corrupt_stored_data_is_no_session_not_an_error,
    another_apps_non_ascii_cookie_beside_ours_hides_nothing,
    a_shadowing_cookie_of_the_same_name_neither_hides_the_session_nor_defeats_logout,
    a_logout_that_never_read_the_session_ends_every_id_it_was_sent,
    at_most_three_ids_of_one_name_are_tried_first_come_first_served,
);

fn bad_values(valid: &str) -> Vec<Vec<u8>> {
    let mut tampered = valid.as_bytes().to_vec();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    vec![
        tampered,
        valid.as_bytes()[..valid.len() - 1].to_vec(),
        valid.as_bytes()[..10].to_vec(),
        format!("{valid}x").into_bytes(),
        "A".repeat(10 * 1024).into_bytes(),
        "é".repeat(43).into_bytes(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"%ZZ%".to_vec(),
        b"".to_vec(),
        b"\"quoted\"".to_vec(),
        format!("{valid}.{valid}").into_bytes(),
    ]
}

async fn send_cookie(app: &App, raw: &[u8]) -> common::Reply {
    let mut header = b"session=".to_vec();
    header.extend_from_slice(raw);
    let mut request = Request::get("/read").body(Vec::new()).expect("a request");
    if let Ok(value) = HeaderValue::from_bytes(&header) {
        request.headers_mut().insert(header::COOKIE, value);
    }
    send_raw(app, request).await
}

async fn tampered_truncated_oversized_and_non_ascii_cookies_are_no_session(fw: Framework) {
    for config in [SessionConfig::default(), signed()] {
        let (_, app, valid) = logged_in(fw, config).await;
        assert_eq!(send_cookie(&app, valid.as_bytes()).await.body, "user=23 n=0", "the valid cookie works");
        for raw in bad_values(&valid) {
            let reply = send_cookie(&app, &raw).await;
            assert_eq!(reply.status, 200, "cookie {:?} gave {}", String::from_utf8_lossy(&raw), reply.status);
            assert_eq!(reply.body, "user=anonymous n=0", "cookie {:?} was accepted", String::from_utf8_lossy(&raw));
        }
    }
}

async fn a_cookie_signed_with_an_unknown_key_is_no_session_and_costs_no_store_read(fw: Framework) {
    let (_, other_app, foreign) = logged_in(fw, signed()).await;
    drop(other_app);
    let (store, app, _) = logged_in(fw, signed()).await;
    let before = store.counts();
    let reply = send_cookie(&app, foreign.as_bytes()).await;
    assert_eq!(reply.body, "user=anonymous n=0");
    assert_eq!(store.counts().loads, before.loads, "a forged signature reached the store");
    assert!(reply.set_cookies().iter().any(|c| c.contains("Max-Age=0")), "the bad cookie is not cleared");
}

async fn an_id_the_server_never_issued_is_not_adopted(fw: Framework) {
    let store = Arc::new(MemoryStore::new());
    let app = fw.app(Sessions::new(store.clone(), SessionConfig::default()).expect("valid config"));
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
    // A well-formed id of the attacker's choosing.
    let planted = multisession::Sessions::new(MemoryStore::new(), SessionConfig::default())
        .expect("valid config")
        .session([], Default::default());
    planted.insert("x", 1).await.expect("insert");
    let commit = planted.commit().await.expect("commit");
    let planted_cookie = cookie::Cookie::parse_encoded(commit.set_cookies.first().cloned().expect("a cookie"))
        .expect("parses")
        .value()
        .to_owned();
    device.cookies.insert("session".into(), planted_cookie.clone());
    device.get("/write").await;
    let issued = session_cookie(&device).expect("a session was created");
    assert_ne!(issued, planted_cookie, "the server adopted the client's id");
    device.get("/login/23").await;
    assert_ne!(session_cookie(&device), Some(planted_cookie));
    assert_eq!(device.get("/read").await.body, "user=23 n=1");
}

async fn duplicate_and_foreign_cookies_do_not_confuse_the_lookup(fw: Framework) {
    let (_, app, valid) = logged_in(fw, SessionConfig::default()).await;
    let header = format!("theme=dark; session=garbage; session={valid}; other=1");
    let request = Request::get("/read").header(header::COOKIE, header).body(Vec::new()).expect("a request");
    assert_eq!(send_raw(&app, request).await.body, "user=23 n=0");
}

async fn corrupt_stored_data_is_no_session_not_an_error(fw: Framework) {
    let store = Arc::new(MemoryStore::new());
    let app = fw.app(Sessions::new(store.clone(), SessionConfig::default()).expect("valid config"));
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    let user_sessions = store.user_sessions("23").await.expect("listed");
    store.write_raw(&user_sessions[0].key, b"\x00not json");
    let reply = device.get("/read").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "user=anonymous n=0"));
}

/// Sends `/read` (or `path`) with a raw `Cookie` header of any bytes.
async fn with_header(app: &App, path: &str, header: &[u8]) -> common::Reply {
    let mut request = Request::get(path).body(Vec::new()).expect("a request");
    request.headers_mut().insert(header::COOKIE, HeaderValue::from_bytes(header).expect("a header value"));
    send_raw(app, request).await
}

async fn another_apps_non_ascii_cookie_beside_ours_hides_nothing(fw: Framework) {
    let (store, app, valid) = logged_in(fw, SessionConfig::default()).await;
    for foreign in [&b"theme=caf\xc3\xa9"[..], b"latin1=caf\xe9", b"\xff\xfe=\x80"] {
        let mut header = foreign.to_vec();
        header.extend_from_slice(format!("; session={valid}").as_bytes());
        let reply = with_header(&app, "/read", &header).await;
        assert_eq!(reply.body, "user=23 n=0", "{:?} hid the session", String::from_utf8_lossy(foreign));
    }
    let mut header = b"latin1=caf\xe9; session=".to_vec();
    header.extend_from_slice(valid.as_bytes());
    assert_eq!(with_header(&app, "/logout", &header).await.body, "logged out");
    assert!(store.inner().user_sessions("23").await.expect("listed").is_empty(), "logout left the session alive");
}

async fn a_shadowing_cookie_of_the_same_name_neither_hides_the_session_nor_defeats_logout(fw: Framework) {
    let (store, app, valid) = logged_in(fw, SessionConfig::default()).await;
    let shadow = "A".repeat(43);
    let header = format!("session={shadow}; session={valid}");
    assert_eq!(with_header(&app, "/read", header.as_bytes()).await.body, "user=23 n=0");
    assert_eq!(with_header(&app, "/logout", header.as_bytes()).await.body, "logged out");
    assert!(store.inner().user_sessions("23").await.expect("listed").is_empty(), "logout deleted nothing");
}

async fn a_logout_that_never_read_the_session_ends_every_id_it_was_sent(fw: Framework) {
    let (store, app, valid) = logged_in(fw, SessionConfig::default()).await;
    let before = store.counts();
    let header = format!("session={}; session={valid}", "B".repeat(43));
    let request = Request::get("/logout").header(header::COOKIE, header).body(Vec::new()).expect("a request");
    send_raw(&app, request).await;
    assert!(store.inner().user_sessions("23").await.expect("listed").is_empty());
    assert!(store.counts().deletes - before.deletes <= 2, "more deletes than ids sent");
}

async fn at_most_three_ids_of_one_name_are_tried_first_come_first_served(fw: Framework) {
    let (store, app, valid) = logged_in(fw, SessionConfig::default()).await;
    // Well-formed ids no session has (43 characters whose last is canonical).
    let fakes: Vec<String> = ["C", "D", "E"].iter().map(|c| format!("session={}A", c.repeat(42))).collect();
    let before = store.counts().loads;
    let header = format!("{}; session={valid}", fakes.join("; "));
    assert_eq!(with_header(&app, "/read", header.as_bytes()).await.body, "user=anonymous n=0");
    // Three ids tried, then, since none named a session, the same three
    // checked once each for a login beside this request that replaced it.
    assert_eq!(store.counts().loads - before, 6, "a request made more than two store reads per id tried");
    let header = format!("{}; session={valid}", fakes[..2].join("; "));
    assert_eq!(with_header(&app, "/read", header.as_bytes()).await.body, "user=23 n=0");
}
