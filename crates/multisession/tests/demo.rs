//! The demo app, driven as two browsers of one user, on both its twins:
//! `demo` (axum) and `demo_actix` (actix-web), one test source
//! (scripts/demo-smoke does the same over real HTTP against the built
//! binaries).
// Each demo is a binary that includes `examples/shared/demo.rs` itself, and
// this test includes both demos (and the shared file, for `sessions`).
#![allow(clippy::duplicate_mod)]

mod common;

#[allow(dead_code)]
#[path = "../examples/demo.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../examples/demo_actix.rs"]
mod demo_actix;
#[allow(dead_code)]
#[path = "../examples/shared/demo.rs"]
mod shared;

use common::{App, Device, Framework, Reply};
use http::{Request, header};
use multisession::SessionConfig;
use multisession::store::SqlStore;

common::both_frameworks!(
    the_index_offers_a_login_to_anonymous_visitors_and_greets_users,
    both_devices_are_listed_on_either,
    logout_all_devices_from_one_makes_the_other_anonymous,
    logout_other_devices_ends_the_other_and_keeps_the_caller,
    revoking_the_other_device_from_the_devices_page_logs_it_out,
    user_ids_and_user_agents_are_escaped,
    bad_login_input_re_shows_the_form_with_a_400,
    anonymous_visitors_to_devices_are_sent_to_login,
    a_login_without_this_sessions_token_is_refused,
    cross_site_and_cross_origin_posts_are_refused_even_with_a_token,
    the_logout_routes_do_not_act_on_a_get,
    an_unknown_path_gets_the_not_found_page,
);

/// The demo on a throwaway SQLite file, or on the store that
/// `MULTISESSION_DEMO_TEST_STORE` names (scripts/test runs these tests again
/// on Redis with its client-side cache), under a key prefix of its own.
async fn demo_app(fw: Framework) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = SessionConfig::default().with_secure(false);
    let sessions = match std::env::var("MULTISESSION_DEMO_TEST_STORE") {
        Ok(url) => {
            let prefix =
                format!("demo{}", &multisession::SessionId::generate().expect("rng").store_key().to_string()[..8]);
            let store = multisession::store::open(&url, Some(&prefix)).await.expect("the store opens");
            shared::sessions(store, config)
        }
        Err(_) => {
            let store = SqlStore::open(dir.path().join("demo.db")).await.expect("SQLite opens");
            shared::sessions(store, config)
        }
    };
    let sessions = sessions.expect("valid config");
    let for_actix = sessions.clone();
    (fw.app_with(|| demo::app(sessions), move || demo_actix::app(for_actix)), dir)
}

/// The CSRF token of the first form on a page.
fn token(page: &str) -> String {
    page.split(r#"name="csrf_token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF field on the page: {page}"))
        .to_owned()
}

/// Submits a form of the page at `from` to `action`, as a browser does: the
/// page's token with `fields`.
async fn submit(device: &mut Device, from: &str, action: &str, fields: &str) -> Reply {
    let page = device.get(from).await.body;
    let separator = if fields.is_empty() { "" } else { "&" };
    device.post(action, &format!("csrf_token={}{separator}{fields}", token(&page))).await
}

async fn log_in(device: &mut Device, user: &str) {
    let reply = submit(device, "/login", "/login", &format!("user_id={user}")).await;
    assert_eq!((reply.status.as_u16(), reply.location()), (303, Some("/")));
}

async fn two_devices_of(fw: Framework, user: &str) -> (Device, Device, tempfile::TempDir) {
    let (app, dir) = demo_app(fw).await;
    let mut laptop = Device::new(app.clone(), "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0", "192.0.2.1:1");
    let mut phone =
        Device::new(app, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Version/17.0 Safari/604.1", "192.0.2.2:1");
    for device in [&mut laptop, &mut phone] {
        log_in(device, user).await;
    }
    (laptop, phone, dir)
}

/// A POST as a browser sends it from a page of `origin`, with the cookies
/// `device` holds.
async fn post_from(device: &mut Device, origin: &str, site: Option<&str>, path: &str, form: &str) -> Reply {
    let mut request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "127.0.0.1:3000")
        .header(header::ORIGIN, origin);
    if let Some(site) = site {
        request = request.header("sec-fetch-site", site);
    }
    device.send(request.body(form.as_bytes().to_vec()).expect("a request")).await
}

fn revoke_buttons(page: &str) -> usize {
    page.matches(r#"name="handle""#).count()
}

async fn the_index_offers_a_login_to_anonymous_visitors_and_greets_users(fw: Framework) {
    let (app, _dir) = demo_app(fw).await;
    let mut browser = Device::new(app, "ua", "127.0.0.1:1");
    assert!(browser.get("/").await.body.contains("Please log in"));
    log_in(&mut browser, "23").await;
    let page = browser.get("/").await.body;
    assert!(page.contains("logged in as 23") && !page.contains("Please log in"));
}

async fn both_devices_are_listed_on_either(fw: Framework) {
    let (mut laptop, mut phone, _dir) = two_devices_of(fw, "23").await;
    for device in [&mut laptop, &mut phone] {
        let page = device.get("/devices").await.body;
        assert!(page.contains("this device"));
        assert_eq!(revoke_buttons(&page), 1, "exactly the other device can be revoked");
        assert!(page.contains("192.0.2.1") && page.contains("192.0.2.2"));
        assert!(page.contains("Firefox 128 on Linux") && page.contains("Safari 17 on iPhone"), "{page}");
    }
}

async fn logout_all_devices_from_one_makes_the_other_anonymous(fw: Framework) {
    let (mut laptop, mut phone, _dir) = two_devices_of(fw, "23").await;
    assert_eq!(submit(&mut laptop, "/", "/logout_all_devices", "").await.status, 303);
    assert!(phone.get("/").await.body.contains("Please log in"));
    assert!(laptop.get("/").await.body.contains("Please log in"));
}

async fn logout_other_devices_ends_the_other_and_keeps_the_caller(fw: Framework) {
    let (mut laptop, mut phone, _dir) = two_devices_of(fw, "23").await;
    let reply = submit(&mut laptop, "/devices", "/logout_other_devices", "").await;
    assert_eq!(reply.location(), Some("/devices"));
    let page = laptop.get("/devices").await.body;
    assert!(page.contains("Logged out 1 other device."));
    assert_eq!(revoke_buttons(&page), 0);
    assert!(phone.get("/").await.body.contains("Please log in"));
    assert!(laptop.get("/").await.body.contains("logged in as 23"));
}

async fn revoking_the_other_device_from_the_devices_page_logs_it_out(fw: Framework) {
    let (mut laptop, mut phone, _dir) = two_devices_of(fw, "23").await;
    let page = laptop.get("/devices").await.body;
    let handle = page
        .split(r#"name="handle" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a revoke form")
        .to_owned();
    assert_eq!(submit(&mut laptop, "/devices", "/devices/revoke", &format!("handle={handle}")).await.status, 303);
    assert!(phone.get("/").await.body.contains("Please log in"));
    assert!(laptop.get("/").await.body.contains("logged in as 23"));
    assert_eq!(submit(&mut laptop, "/devices", "/devices/revoke", "handle=not-a-handle").await.status, 400);
}

async fn user_ids_and_user_agents_are_escaped(fw: Framework) {
    let (app, _dir) = demo_app(fw).await;
    let mut browser = Device::new(app, "<script>alert(1)</script>", "127.0.0.1:1");
    log_in(&mut browser, "%3Cb%3E%26%22x%22").await;
    for path in ["/", "/devices"] {
        let page = browser.get(path).await.body;
        assert!(!page.contains("<script>alert") && !page.contains("<b>&"), "{path} is not escaped");
        assert!(page.contains("&lt;b&gt;&amp;"), "{path} does not show the escaped user id");
    }
}

async fn bad_login_input_re_shows_the_form_with_a_400(fw: Framework) {
    let (app, _dir) = demo_app(fw).await;
    let mut browser = Device::new(app, "ua", "127.0.0.1:1");
    for form in ["user_id=", "user_id=%20%20", &format!("user_id={}", "x".repeat(65))] {
        let reply = submit(&mut browser, "/login", "/login", form).await;
        assert_eq!(reply.status, 400, "{form}");
        assert!(reply.body.contains(r#"name="user_id""#));
    }
    assert!(browser.get("/").await.body.contains("Please log in"));
}

async fn anonymous_visitors_to_devices_are_sent_to_login(fw: Framework) {
    let (app, _dir) = demo_app(fw).await;
    let reply = Device::new(app, "ua", "127.0.0.1:1").get("/devices").await;
    assert_eq!((reply.status.as_u16(), reply.location()), (303, Some("/login")));
}

async fn a_login_without_this_sessions_token_is_refused(fw: Framework) {
    let (app, _dir) = demo_app(fw).await;
    let mut victim = Device::new(app.clone(), "ua", "127.0.0.1:1");
    let mut attacker = Device::new(app, "ua", "127.0.0.1:2");
    // A forged form: no token, or the attacker's own token.
    let theirs = token(&attacker.get("/login").await.body);
    victim.get("/login").await;
    for form in ["user_id=attacker".to_owned(), format!("csrf_token={theirs}&user_id=attacker")] {
        let reply = victim.post("/login", &form).await;
        assert_eq!(reply.status, 403, "{form}");
        assert!(reply.body.contains("nothing was changed"));
    }
    assert!(victim.get("/").await.body.contains("Please log in"), "login CSRF logged the victim in");
}

async fn cross_site_and_cross_origin_posts_are_refused_even_with_a_token(fw: Framework) {
    let (mut laptop, mut phone, _dir) = two_devices_of(fw, "23").await;
    let valid = token(&laptop.get("/").await.body);
    let cases = [
        ("https://evil.example", Some("cross-site")),
        // Another origin of the same site.
        ("http://other.127.0.0.1:3000", Some("same-site")),
        // A browser that sends no Fetch metadata.
        ("http://evil.example", None),
        ("http://127.0.0.1:4000", None),
    ];
    for (origin, site) in cases {
        for path in ["/logout_all_devices", "/logout", "/logout_other_devices", "/login"] {
            let form = format!("csrf_token={valid}&user_id=evil");
            let reply = post_from(&mut laptop, origin, site, path, &form).await;
            assert_eq!(reply.status, 403, "{path} from {origin} ({site:?})");
        }
    }
    let same = post_from(
        &mut laptop,
        "http://127.0.0.1:3000",
        Some("same-origin"),
        "/logout_other_devices",
        &format!("csrf_token={valid}"),
    )
    .await;
    assert_eq!(same.status, 303, "a same-origin form was refused");
    assert!(phone.get("/").await.body.contains("Please log in"));
    assert!(laptop.get("/").await.body.contains("logged in as 23"));
}

async fn the_logout_routes_do_not_act_on_a_get(fw: Framework) {
    let (mut laptop, mut phone, _dir) = two_devices_of(fw, "23").await;
    for path in ["/logout", "/logout_all_devices", "/logout_other_devices", "/devices/revoke"] {
        assert_eq!(laptop.get(path).await.status, 405, "GET {path}");
    }
    assert_eq!(laptop.post("/devices", "").await.status, 405, "POST /devices");
    assert!(laptop.get("/").await.body.contains("logged in as 23"));
    assert!(phone.get("/").await.body.contains("logged in as 23"));
}

async fn an_unknown_path_gets_the_not_found_page(fw: Framework) {
    let (app, _dir) = demo_app(fw).await;
    let mut browser = Device::new(app, "ua", "127.0.0.1:1");
    for path in ["/no/such/page", "/devices/revoke/x"] {
        let reply = browser.get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.body.contains("There is no such page."), "{path}: {}", reply.body);
    }
}
