//! The demo app, driven as two browsers of one user (scripts/demo-smoke does
//! the same over real HTTP against the built binary).

mod common;

#[allow(dead_code)]
#[path = "../examples/demo.rs"]
mod demo;

use common::Device;
use multisession::store::SqlStore;
use multisession::{SessionConfig, Sessions};

async fn demo_app() -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqlStore::open(dir.path().join("demo.db")).await.expect("SQLite opens");
    let sessions = Sessions::new(store, SessionConfig::default().with_secure(false)).expect("valid config");
    (demo::app(sessions), dir)
}

async fn two_devices_of(user: &str) -> (Device, Device, tempfile::TempDir) {
    let (app, dir) = demo_app().await;
    let mut laptop = Device::new(app.clone(), "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0", "192.0.2.1:1");
    let mut phone =
        Device::new(app, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Version/17.0 Safari/604.1", "192.0.2.2:1");
    for device in [&mut laptop, &mut phone] {
        let reply = device.post("/login", &format!("user_id={user}")).await;
        assert_eq!((reply.status.as_u16(), reply.location()), (303, Some("/")));
    }
    (laptop, phone, dir)
}

fn revoke_buttons(page: &str) -> usize {
    page.matches(r#"name="handle""#).count()
}

#[tokio::test]
async fn the_index_offers_a_login_to_anonymous_visitors_and_greets_users() {
    let (app, _dir) = demo_app().await;
    let mut browser = Device::new(app, "ua", "127.0.0.1:1");
    assert!(browser.get("/").await.body.contains("Please log in"));
    browser.post("/login", "user_id=23").await;
    let page = browser.get("/").await.body;
    assert!(page.contains("logged in as 23") && !page.contains("Please log in"));
}

#[tokio::test]
async fn both_devices_are_listed_on_either() {
    let (mut laptop, mut phone, _dir) = two_devices_of("23").await;
    for device in [&mut laptop, &mut phone] {
        let page = device.get("/devices").await.body;
        assert!(page.contains("this device"));
        assert_eq!(revoke_buttons(&page), 1, "exactly the other device can be revoked");
        assert!(page.contains("192.0.2.1") && page.contains("192.0.2.2"));
        assert!(page.contains("Firefox 128 on Linux") && page.contains("Safari 17 on iPhone"), "{page}");
    }
}

#[tokio::test]
async fn logout_all_devices_from_one_makes_the_other_anonymous() {
    let (mut laptop, mut phone, _dir) = two_devices_of("23").await;
    assert_eq!(laptop.post("/logout_all_devices", "").await.status, 303);
    assert!(phone.get("/").await.body.contains("Please log in"));
    assert!(laptop.get("/").await.body.contains("Please log in"));
}

#[tokio::test]
async fn logout_other_devices_ends_the_other_and_keeps_the_caller() {
    let (mut laptop, mut phone, _dir) = two_devices_of("23").await;
    let reply = laptop.post("/logout_other_devices", "").await;
    assert_eq!(reply.location(), Some("/devices"));
    let page = laptop.get("/devices").await.body;
    assert!(page.contains("Logged out 1 other device."));
    assert_eq!(revoke_buttons(&page), 0);
    assert!(phone.get("/").await.body.contains("Please log in"));
    assert!(laptop.get("/").await.body.contains("logged in as 23"));
}

#[tokio::test]
async fn revoking_the_other_device_from_the_devices_page_logs_it_out() {
    let (mut laptop, mut phone, _dir) = two_devices_of("23").await;
    let page = laptop.get("/devices").await.body;
    let handle = page
        .split(r#"name="handle" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a revoke form")
        .to_owned();
    assert_eq!(laptop.post("/devices/revoke", &format!("handle={handle}")).await.status, 303);
    assert!(phone.get("/").await.body.contains("Please log in"));
    assert!(laptop.get("/").await.body.contains("logged in as 23"));
    assert_eq!(laptop.post("/devices/revoke", "handle=not-a-handle").await.status, 400);
}

#[tokio::test]
async fn user_ids_and_user_agents_are_escaped() {
    let (app, _dir) = demo_app().await;
    let mut browser = Device::new(app, "<script>alert(1)</script>", "127.0.0.1:1");
    browser.post("/login", "user_id=%3Cb%3E%26%22x%22").await;
    for path in ["/", "/devices"] {
        let page = browser.get(path).await.body;
        assert!(!page.contains("<script>alert") && !page.contains("<b>&"), "{path} is not escaped");
        assert!(page.contains("&lt;b&gt;&amp;"), "{path} does not show the escaped user id");
    }
}

#[tokio::test]
async fn bad_login_input_re_shows_the_form_with_a_400() {
    let (app, _dir) = demo_app().await;
    let mut browser = Device::new(app, "ua", "127.0.0.1:1");
    for form in ["user_id=", "user_id=%20%20", &format!("user_id={}", "x".repeat(65))] {
        let reply = browser.post("/login", form).await;
        assert_eq!(reply.status, 400, "{form}");
        assert!(reply.body.contains(r#"name="user_id""#));
    }
    assert!(browser.get("/").await.body.contains("Please log in"));
}

#[tokio::test]
async fn anonymous_visitors_to_devices_are_sent_to_login() {
    let (app, _dir) = demo_app().await;
    let reply = Device::new(app, "ua", "127.0.0.1:1").get("/devices").await;
    assert_eq!((reply.status.as_u16(), reply.location()), (303, Some("/login")));
}
