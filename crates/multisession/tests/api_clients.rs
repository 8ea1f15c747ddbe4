//! Clients that carry their session id in a header (API and mobile apps):
//! what is specific to them. The request-level suites in `login.rs` and
//! `devices.rs` also run for such clients (`every_client!`).

mod common;

use common::{App, Framework, Reply, send_raw};
use http::{Request, header};
use multisession::store::{CookieStore, MemoryStore};
use multisession::{ErrorKind, IdHeader, Key, KeyRing, SessionConfig, SessionSpec, Sessions};

fn app(config: SessionConfig) -> App {
    Framework::Axum.app(Sessions::new(MemoryStore::new(), config).expect("valid config"))
}

async fn get(app: &App, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send_raw(app, request.body(Vec::new()).expect("a request")).await
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `session` cookie's value a reply sets.
fn cookie_id(reply: &Reply) -> String {
    let set = reply.set_cookies();
    let value = set.iter().find_map(|c| c.strip_prefix("session=")).expect("a session cookie");
    value.split(';').next().expect("a value").to_owned()
}

#[tokio::test]
async fn a_login_answers_in_the_header_the_client_sent_and_sets_no_cookie() {
    let app = app(SessionConfig::default().with_id_header(IdHeader::named("X-Auth-Token")));
    let reply = get(&app, "/login/23", &[("x-auth-token", "")]).await;
    let id = header(&reply, "x-auth-token").expect("the id in the header").to_owned();
    assert!(!id.is_empty());
    assert!(reply.set_cookies().is_empty(), "a header client was sent a cookie");
    assert!(reply.headers.get_all(header::VARY).iter().any(|v| v == "x-auth-token"), "no Vary on the header");
    let read = get(&app, "/read", &[("x-auth-token", &id)]).await;
    assert_eq!(read.body, "user=23 n=0");
    assert!(header(&read, "x-auth-token").is_none(), "an unchanged id was answered again");
}

#[tokio::test]
async fn a_client_without_the_header_gets_a_cookie_unless_the_part_takes_none() {
    let app = app(SessionConfig::default().with_id_header(IdHeader::named("X-Auth-Token")));
    let reply = get(&app, "/login/23", &[]).await;
    assert!(header(&reply, "x-auth-token").is_none());
    assert_eq!(reply.set_cookies().len(), 1, "a browser gets its cookie");

    let app = app_bearer_only();
    let reply = get(&app, "/login/23", &[]).await;
    assert!(reply.set_cookies().is_empty(), "a part without a cookie set one");
    let answered = header(&reply, "authorization").expect("the id in Authorization");
    let id = answered.strip_prefix("Bearer ").expect("a Bearer credential");
    let read = get(&app, "/read", &[("authorization", &format!("bearer {id}"))]).await;
    assert_eq!(read.body, "user=23 n=0", "the scheme is case-insensitive");
}

fn app_bearer_only() -> App {
    Framework::Axum.app(
        Sessions::new(MemoryStore::new(), SessionConfig::default().with_id_header(IdHeader::bearer().without_cookie()))
            .expect("valid config"),
    )
}

/// A script on a page can add the header to the browser's requests, but a
/// session that came by cookie is answered by cookie: its id never shows in
/// a header the script could read.
#[tokio::test]
async fn a_session_that_came_by_cookie_is_never_answered_in_the_header() {
    let app = app(SessionConfig::default().with_id_header(IdHeader::named("X-Auth-Token")));
    let mut cookie = format!("session={}", cookie_id(&get(&app, "/login/23", &[]).await));
    for (path, value) in [("/permanent", ""), ("/write", "garbage"), ("/cycle", ""), ("/login/23", "")] {
        let reply = get(&app, path, &[("cookie", &cookie), ("x-auth-token", value)]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(header(&reply, "x-auth-token").is_none(), "{path}: the cookie's session was answered in the header");
        assert!(!reply.set_cookies().is_empty(), "{path}: the browser's cookie was not renewed");
        cookie = format!("session={}", cookie_id(&reply));
    }
    assert_eq!(get(&app, "/read", &[("cookie", &cookie)]).await.body, "user=23 n=1");
}

#[tokio::test]
async fn an_id_answered_in_a_header_is_not_cached() {
    let app = app_bearer_only();
    let reply = get(&app, "/write", &[]).await;
    assert!(header(&reply, "authorization").is_some_and(|v| v.starts_with("Bearer ")), "no id answered");
    assert_eq!(header(&reply, "cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_logout_that_carried_both_clears_both() {
    let app = app(SessionConfig::default().with_id_header(IdHeader::named("X-Auth-Token")));
    let id = cookie_id(&get(&app, "/login/23", &[]).await);
    let reply = get(&app, "/logout", &[("cookie", &format!("session={id}")), ("x-auth-token", "")]).await;
    assert_eq!(header(&reply, "x-auth-token"), Some(""), "the header was not cleared");
    assert!(reply.set_cookies().iter().any(|c| c.starts_with("session=;")), "the cookie was not expired");
}

#[tokio::test]
async fn a_logout_answers_the_header_empty() {
    let app = app_bearer_only();
    let reply = get(&app, "/login/23", &[]).await;
    let answered = header(&reply, "authorization").expect("an id").to_owned();
    let reply = get(&app, "/logout", &[("authorization", &answered)]).await;
    assert_eq!(header(&reply, "authorization"), Some(""), "the logout did not tell the client");
    assert_eq!(get(&app, "/read", &[("authorization", &answered)]).await.body, "user=anonymous n=0");
}

#[tokio::test]
async fn the_header_wins_over_the_cookie_unless_the_config_says_the_cookie_does() {
    for (header_config, winner) in [
        (IdHeader::named("X-Auth-Token"), "user=bob n=0"),
        (IdHeader::named("X-Auth-Token").cookie_wins(), "user=alice n=0"),
    ] {
        let app = app(SessionConfig::default().with_id_header(header_config));
        let alice = cookie_id(&get(&app, "/login/alice", &[]).await);
        let bob = get(&app, "/login/bob", &[("x-auth-token", "")]).await;
        let bob = header(&bob, "x-auth-token").expect("an id").to_owned();
        let cookie = format!("session={alice}");
        let read = get(&app, "/read", &[("cookie", &cookie), ("x-auth-token", &bob)]).await;
        assert_eq!(read.body, winner);
        // Either one alone still works: a dead or garbage one never hides the other.
        let read = get(&app, "/read", &[("cookie", &cookie), ("x-auth-token", "garbage")]).await;
        assert_eq!(read.body, "user=alice n=0", "a garbage header hid the cookie's session");
    }
}

/// ASVS 14.2.1: an id in the URL (a query parameter, a path parameter)
/// is never read.
#[tokio::test]
async fn an_id_in_the_url_is_never_accepted() {
    let app = app(SessionConfig::default().with_id_header(IdHeader::named("X-Auth-Token")));
    let reply = get(&app, "/login/23", &[("x-auth-token", "")]).await;
    let id = header(&reply, "x-auth-token").expect("an id").to_owned();
    for path in [
        format!("/read?session={id}"),
        format!("/read?x-auth-token={id}"),
        format!("/read?access_token={id}"),
        format!("/read;session={id}"),
        format!("/read;jsessionid={id}"),
    ] {
        // A path parameter makes another route (404 here): either way, no login.
        let reply = get(&app, &path, &[]).await;
        assert!(!reply.body.contains("user=23"), "{path} was logged in");
        assert!(reply.status == 404 || reply.body == "user=anonymous n=0", "{path}: {}", reply.status);
    }
}

#[tokio::test]
async fn garbage_in_the_header_is_no_session_and_no_error() {
    let app = app_bearer_only();
    for value in ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-an-id", &"a".repeat(8000)] {
        let reply = get(&app, "/read", &[("authorization", value)]).await;
        assert_eq!(reply.status, 200, "{value:?}");
        assert_eq!(reply.body, "user=anonymous n=0");
    }
    let raw = Request::get("/read")
        .header("authorization", http::HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("bytes"))
        .body(Vec::new())
        .expect("a request");
    assert_eq!(send_raw(&app, raw).await.body, "user=anonymous n=0", "a non-UTF-8 header");
}

#[tokio::test]
async fn clear_site_data_is_sent_on_logout_only_when_asked_for() {
    for (clear, expected) in [(false, None), (true, Some("\"cookies\""))] {
        let app = app(SessionConfig::default().with_clear_site_data(clear));
        let id = cookie_id(&get(&app, "/login/23", &[]).await);
        let cookie = format!("session={id}");
        let reply = get(&app, "/read", &[("cookie", &cookie)]).await;
        assert!(header(&reply, "clear-site-data").is_none(), "sent without a logout");
        for path in ["/logout", "/logout_all"] {
            let id = cookie_id(&get(&app, "/login/23", &[]).await);
            let reply = get(&app, path, &[("cookie", &format!("session={id}"))]).await;
            assert_eq!(header(&reply, "clear-site-data"), expected, "{path}, asked for: {clear}");
        }
    }
}

#[test]
fn an_id_header_is_refused_where_it_cannot_work_naming_the_field() {
    let refused = |specs: Vec<SessionSpec>| {
        let e = Sessions::from_specs(specs).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("id_header"), "{e}");
    };
    let keys = KeyRing::new(vec![Key::generate()]).expect("keys");
    let with = |h: IdHeader| SessionConfig::default().with_id_header(h);
    refused(vec![SessionSpec::new(CookieStore::new(keys), with(IdHeader::named("X-Auth-Token")))]);
    refused(vec![SessionSpec::new(MemoryStore::new(), with(IdHeader::named("X Auth")))]);
    refused(vec![SessionSpec::new(MemoryStore::new(), with(IdHeader::named("Cookie")))]);
    refused(vec![SessionSpec::new(MemoryStore::new(), with(IdHeader::bearer().without_cookie().cookie_wins()))]);
    refused(vec![SessionSpec::new(MemoryStore::new(), with(IdHeader::named("Authorization")))]);
    refused(vec![SessionSpec::new(MemoryStore::new(), with(IdHeader::named("Cache-Control")))]);
    // A header client could not carry the ids of a part without a header.
    refused(vec![
        SessionSpec::new(MemoryStore::new(), with(IdHeader::named("X-Auth-Token")))
            .with_fields(multisession::Fields::include(["user_id"])),
        SessionSpec::new(MemoryStore::new(), SessionConfig::default().with_cookie_name("data"))
            .with_fields(multisession::Fields::Auto),
    ]);
}

#[tokio::test]
async fn authenticated_at_is_the_login_time_and_an_id_change_keeps_it() {
    let sessions = Sessions::new(MemoryStore::new(), SessionConfig::default()).expect("valid config");
    let session = sessions.session([], Default::default());
    session.insert("cart", 1).await.expect("insert");
    let commit = session.commit().await.expect("commit");
    let cookie = commit.set_cookies[0].split(';').next().expect("a pair").to_owned();
    let anonymous = sessions.session([cookie.as_bytes()], Default::default());
    assert_eq!(anonymous.authenticated_at().await.expect("reads"), None, "an anonymous session was authenticated");
    anonymous.login("23").await.expect("login");
    let at_login = anonymous.authenticated_at().await.expect("reads").expect("logged in");
    let commit = anonymous.commit().await.expect("commit");
    let cookie = commit.set_cookies[0].split(';').next().expect("a pair").to_owned();

    let later = sessions.session([cookie.as_bytes()], Default::default());
    let stored = later.authenticated_at().await.expect("reads").expect("logged in");
    assert!(stored >= at_login, "stored {stored}, before the login at {at_login}");
    multisession::testing::wait_past(stored).await;
    later.cycle_id().await.expect("cycle");
    let commit = later.commit().await.expect("commit");
    let cookie = commit.set_cookies[0].split(';').next().expect("a pair").to_owned();
    let after_cycle = sessions.session([cookie.as_bytes()], Default::default());
    assert_eq!(after_cycle.authenticated_at().await.expect("reads"), Some(stored), "an id change moved it");
    after_cycle.login("23").await.expect("login again");
    let relogin = after_cycle.authenticated_at().await.expect("reads").expect("logged in");
    assert!(relogin > stored, "a new login did not move it");
}
