//! One session split across cookies and backends: routing, cookie parts,
//! ownership, revocation and start-up validation; what goes through
//! requests, on axum and on actix-web.

mod common;

use std::sync::Arc;

use common::{Device, Framework};
use multisession::store::{CookieStore, MemoryStore, Store};
use multisession::testing::CountingStore;
use multisession::{ErrorKind, Fields, Key, KeyRing, SessionConfig, SessionSpec, Sessions};

common::both_frameworks!(
    each_key_lands_in_its_own_cookie_and_reads_back_as_one_session,
    changing_only_a_csrf_key_sets_only_the_csrf_cookie_and_touches_no_store,
    a_key_named_by_two_parts_is_written_to_both,
    a_forged_or_replayed_data_cookie_carrying_user_id_logs_nobody_in,
    logout_ends_every_part_for_this_device,
    logout_all_devices_refuses_cookie_sessions_captured_before_it,
    logout_other_devices_on_cookie_sessions_keeps_the_caller,
    a_cookie_under_a_rotated_out_key_is_read_and_reissued_under_the_new_one,
    a_5_kb_value_in_a_cookie_part_fails_with_the_documented_error_and_no_cookie,
);

fn named(name: &str) -> SessionConfig {
    SessionConfig::default().with_cookie_name(name)
}

fn ring(keys: &[&Key]) -> KeyRing {
    KeyRing::new(keys.iter().map(|k| (*k).clone()).collect()).expect("keys")
}

/// flask-session-plus's three parts: `csrf` and `data` cookies around a
/// server-side `session` that keeps the login.
fn three_parts(key: &Key, store: Arc<CountingStore<MemoryStore>>) -> Sessions {
    Sessions::from_specs([
        SessionSpec::new(CookieStore::new(ring(&[key])), named("csrf")).with_fields(Fields::include(["csrf_token"])),
        SessionSpec::new(store, named("session")).with_fields(Fields::include(["user_id", "user_data"])),
        SessionSpec::new(CookieStore::new(ring(&[key])), named("data")).with_fields(Fields::Auto),
    ])
    .expect("valid configuration")
}

fn cookie_names(reply: &common::Reply) -> Vec<String> {
    let mut names: Vec<String> =
        reply.set_cookies().iter().filter_map(|c| c.split('=').next().map(str::to_owned)).collect();
    names.sort();
    names
}

async fn each_key_lands_in_its_own_cookie_and_reads_back_as_one_session(fw: Framework) {
    let key = Key::generate();
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let mut browser = Device::new(fw.app(three_parts(&key, store.clone())), "ua", "127.0.0.1:1");
    assert_eq!(cookie_names(&browser.get("/set/csrf_token/before").await), ["csrf"]);
    assert_eq!(cookie_names(&browser.get("/set/theme/dark").await), ["data"]);
    assert_eq!(cookie_names(&browser.get("/set/user_data/profile").await), ["session"]);
    let login = browser.get("/login/23").await;
    assert_eq!(cookie_names(&login), ["csrf", "session"], "login re-issues the id cookie and ends the CSRF token");
    assert_eq!(browser.get("/get/csrf_token").await.body, "none", "the pre-login CSRF token survived the login");
    assert_eq!(cookie_names(&browser.get("/set/csrf_token/t0k3n").await), ["csrf"]);
    assert_eq!(browser.get("/get/csrf_token").await.body, "\"t0k3n\"");
    assert_eq!(browser.get("/get/theme").await.body, "\"dark\"");
    assert_eq!(browser.get("/get/user_data").await.body, "\"profile\"");
    assert_eq!(browser.get("/read").await.body, "user=23 n=0");
    let stored = store.inner().user_sessions("23").await.expect("listed");
    assert_eq!(stored.len(), 1, "the login lives in the server part");
}

async fn changing_only_a_csrf_key_sets_only_the_csrf_cookie_and_touches_no_store(fw: Framework) {
    let key = Key::generate();
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let mut browser = Device::new(fw.app(three_parts(&key, store.clone())), "ua", "127.0.0.1:1");
    browser.get("/login/23").await;
    browser.get("/set/theme/dark").await;
    let before = store.counts();
    let reply = browser.get("/set/csrf_token/fresh").await;
    assert_eq!(cookie_names(&reply), ["csrf"]);
    assert_eq!(store.counts(), before, "the server-side part was read or written");
    assert_eq!(browser.get("/read").await.body, "user=23 n=0");
}

async fn a_key_named_by_two_parts_is_written_to_both(fw: Framework) {
    let key = Key::generate();
    let store = Arc::new(MemoryStore::new());
    let sessions = Sessions::from_specs([
        SessionSpec::new(CookieStore::new(ring(&[&key])), named("a")).with_fields(Fields::include(["shared"])),
        SessionSpec::new(store, named("b")).with_fields(Fields::include(["shared", "user_id"])),
    ])
    .expect("valid configuration");
    let mut browser = Device::new(fw.app(sessions), "ua", "127.0.0.1:1");
    assert_eq!(cookie_names(&browser.get("/set/shared/1").await), ["a", "b"]);
    browser.cookies.remove("a");
    assert_eq!(browser.get("/get/shared").await.body, "\"1\"", "the server part lost its copy");
}

async fn a_forged_or_replayed_data_cookie_carrying_user_id_logs_nobody_in(fw: Framework) {
    let key = Key::generate();
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let app = fw.app(three_parts(&key, store.clone()));
    // Someone with the key (or a copy of another config) mints a `data` cookie
    // that logs in as admin and carries `user_id` as data.
    let forger = Sessions::new(CookieStore::new(ring(&[&key])), named("data")).expect("valid configuration");
    let forged = forger.session([], Default::default());
    forged.login("admin").await.expect("login");
    forged.insert("theme", "stolen").await.expect("insert");
    let set = forged.commit().await.expect("commit").set_cookies.remove(0);
    let value = cookie::Cookie::parse_encoded(set).expect("parses").value().to_owned();

    let mut attacker = Device::new(app, "ua", "127.0.0.1:1");
    attacker.cookies.insert("data".into(), value);
    assert_eq!(attacker.get("/read").await.body, "user=anonymous n=0", "the data cookie logged someone in");
    assert_eq!(attacker.get("/get/user_id").await.body, "none");
    assert_eq!(attacker.get("/get/theme").await.body, "\"stolen\"", "keys the part keeps still read");
}

async fn logout_ends_every_part_for_this_device(fw: Framework) {
    let key = Key::generate();
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let mut browser = Device::new(fw.app(three_parts(&key, store.clone())), "ua", "127.0.0.1:1");
    browser.get("/set/csrf_token/t").await;
    browser.get("/set/theme/dark").await;
    browser.get("/login/23").await;
    let reply = browser.get("/logout").await;
    assert_eq!(cookie_names(&reply), ["csrf", "data", "session"]);
    assert!(browser.cookies.is_empty(), "cookies left: {:?}", browser.cookies.keys());
    assert!(store.inner().user_sessions("23").await.expect("listed").is_empty());
}

fn revocable(key: &Key, counters: Arc<MemoryStore>) -> Sessions {
    Sessions::new(CookieStore::new(ring(&[key])).with_revocation(counters), SessionConfig::default())
        .expect("valid configuration")
}

async fn logout_all_devices_refuses_cookie_sessions_captured_before_it(fw: Framework) {
    let key = Key::generate();
    let counters = Arc::new(MemoryStore::new());
    let app = fw.app(revocable(&key, counters.clone()));
    let (mut laptop, mut phone) = (Device::new(app.clone(), "l", "127.0.0.1:1"), Device::new(app, "p", "127.0.0.1:2"));
    laptop.get("/login/23").await;
    phone.get("/login/23").await;
    let captured = laptop.cookies.clone();
    assert_eq!(laptop.get("/read").await.body, "user=23 n=0");

    phone.get("/logout_all").await;
    assert_eq!(laptop.get("/read").await.body, "user=anonymous n=0", "the laptop survived logout-all");
    laptop.cookies = captured;
    assert_eq!(laptop.get("/read").await.body, "user=anonymous n=0", "a captured cookie was accepted");
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
    phone.get("/login/23").await;
    assert_eq!(phone.get("/read").await.body, "user=23 n=0", "logging in again works");
}

async fn logout_other_devices_on_cookie_sessions_keeps_the_caller(fw: Framework) {
    let key = Key::generate();
    let app = fw.app(revocable(&key, Arc::new(MemoryStore::new())));
    let (mut laptop, mut phone) = (Device::new(app.clone(), "l", "127.0.0.1:1"), Device::new(app, "p", "127.0.0.1:2"));
    laptop.get("/login/23").await;
    phone.get("/login/23").await;
    laptop.get("/logout_others").await;
    assert_eq!(laptop.get("/read").await.body, "user=23 n=0");
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
}

#[tokio::test]
async fn cookie_sessions_without_a_revocation_store_answer_unsupported() {
    let sessions = Sessions::new(CookieStore::new(ring(&[&Key::generate()])), SessionConfig::default())
        .expect("valid configuration");
    let session = sessions.session([], Default::default());
    session.login("23").await.expect("a cookie session can still carry a login");
    for result in [session.logout_all_devices().await.map(|_| ()), session.devices().await.map(|_| ())] {
        assert_eq!(result.expect_err("answered as if supported").kind(), ErrorKind::Unsupported);
    }
    let err = sessions.user_sessions("23").await.expect_err("listed a cookie store's users");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

async fn a_cookie_under_a_rotated_out_key_is_read_and_reissued_under_the_new_one(fw: Framework) {
    let (old, new) = (Key::generate(), Key::generate());
    let before = Sessions::new(CookieStore::new(ring(&[&old])), SessionConfig::default()).expect("valid");
    let mut browser = Device::new(fw.app(before), "ua", "127.0.0.1:1");
    browser.get("/write").await;
    let old_cookie = browser.cookies.clone();

    let rotated = Sessions::new(CookieStore::new(ring(&[&new, &old])), SessionConfig::default()).expect("valid");
    let mut browser = Device::new(fw.app(rotated), "ua", "127.0.0.1:1");
    browser.cookies = old_cookie.clone();
    let reply = browser.get("/read").await;
    assert_eq!(reply.body, "user=anonymous n=1");
    assert_eq!(cookie_names(&reply), ["session"], "a read-only request under an old key is re-issued");
    let reissued = browser.cookies.clone();
    assert_ne!(reissued, old_cookie);

    let only_new = Sessions::new(CookieStore::new(ring(&[&new])), SessionConfig::default()).expect("valid");
    let mut browser = Device::new(fw.app(only_new.clone()), "ua", "127.0.0.1:1");
    browser.cookies = reissued;
    assert_eq!(browser.get("/read").await.body, "user=anonymous n=1", "the re-issued cookie is not under the new key");
    let mut stranger = Device::new(fw.app(only_new), "ua", "127.0.0.1:1");
    stranger.cookies = old_cookie;
    assert_eq!(stranger.get("/read").await.body, "user=anonymous n=0", "a cookie under an unknown key was read");
}

async fn a_5_kb_value_in_a_cookie_part_fails_with_the_documented_error_and_no_cookie(fw: Framework) {
    let key = Key::generate();
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let mut browser = Device::new(fw.app(three_parts(&key, store.clone())), "ua", "127.0.0.1:1");
    browser.get("/set/theme/dark").await;
    let before_cookies = browser.cookies.clone();
    let before = store.counts();
    let reply = browser.get(&format!("/set/big/{}", "x".repeat(5 * 1024))).await;
    assert_eq!(reply.status, 500);
    assert!(reply.set_cookies().is_empty(), "a cookie was sent with the failure");
    assert_eq!(browser.cookies, before_cookies);
    assert_eq!(store.counts(), before);
    assert_eq!(browser.get("/get/theme").await.body, "\"dark\"", "the old cookie still works");
}

#[tokio::test]
async fn the_too_large_error_names_the_cookie_and_the_size() {
    let sessions = Sessions::new(CookieStore::new(ring(&[&Key::generate()])), named("data")).expect("valid");
    let session = sessions.session([], Default::default());
    session.insert("big", "x".repeat(5 * 1024)).await.expect("insert");
    let err = session.commit().await.expect_err("a 5 kB cookie was committed");
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    let text = err.to_string();
    assert!(text.contains("`data`") && text.contains("4096") && text.contains("bytes"), "{text}");
}

#[test]
fn invalid_configurations_are_refused_naming_the_cookie_and_the_key() {
    let keys = ring(&[&Key::generate()]);
    let cookie = || CookieStore::new(keys.clone());
    let server = || MemoryStore::new();
    let cases: Vec<(Vec<SessionSpec>, &[&str])> = vec![
        (
            vec![
                SessionSpec::new(server(), named("s")),
                SessionSpec::new(cookie(), named("s")).with_fields(Fields::Auto),
            ],
            &["cookie_name", "`s`"],
        ),
        (
            vec![SessionSpec::new(server(), named("s")).with_fields(Fields::exclude(["csrf_token"]))],
            &["`s`", "`csrf_token`"],
        ),
        (
            vec![
                SessionSpec::new(server(), named("a")).with_fields(Fields::include(["user_id"])),
                SessionSpec::new(server(), named("b")).with_fields(Fields::include(["user_id", "x"])),
            ],
            &["`user_id`", "`a`", "`b`"],
        ),
        (vec![SessionSpec::new(cookie(), named("c")).with_fields(Fields::include(["user_id"]))], &["`c`", "`user_id`"]),
        (
            vec![
                SessionSpec::new(server(), named("all")),
                SessionSpec::new(cookie(), named("auto")).with_fields(Fields::Auto),
            ],
            &["`auto`", "`all`"],
        ),
        (
            vec![
                SessionSpec::new(cookie().with_revocation(MemoryStore::new()), named("login"))
                    .with_fields(Fields::include(["user_id"])),
                SessionSpec::new(server(), named("cart")).with_fields(Fields::Auto),
            ],
            &["`cart`", "`login`", "`user_id`"],
        ),
        (
            vec![
                SessionSpec::new(server(), named("session")).with_fields(Fields::include(["user_id"])),
                SessionSpec::new(server(), named("shop").with_path("/shop")).with_fields(Fields::Auto),
            ],
            &["`shop`", "path", "`session`"],
        ),
    ];
    for (specs, words) in cases {
        let err = Sessions::from_specs(specs).expect_err("an invalid configuration was accepted");
        assert_eq!(err.kind(), ErrorKind::Config);
        for word in words {
            assert!(err.to_string().contains(word), "{err} does not name {word}");
        }
    }
}

#[test]
fn a_cookie_part_refuses_signed_ids_it_does_not_use() {
    let keys = ring(&[&Key::generate()]);
    let err = Sessions::new(CookieStore::new(keys.clone()), named("c").with_signed_id(keys)).expect_err("accepted");
    assert!(err.to_string().contains("signed_id") && err.to_string().contains("`c`"), "{err}");
}

/// The `name=value` pairs a commit set.
fn set_pairs(commit: &multisession::Commit) -> Vec<String> {
    commit.set_cookies.iter().filter_map(|c| c.split(';').next().map(str::to_owned)).collect()
}

/// A `data` cookie planted beside a logged-in device (from a sibling
/// subdomain, with a longer path so the browser sends it first) names a
/// session that is not this device's: it is passed over, and what the
/// victim writes lands in the device's own part, out of the planter's reach.
#[tokio::test]
async fn a_planted_part_cookie_beside_a_login_is_passed_over() {
    let store = Arc::new(MemoryStore::new());
    let sessions = Sessions::from_specs([
        SessionSpec::new(store.clone(), named("session")).with_fields(Fields::include(["user_id"])),
        SessionSpec::new(store, named("data")).with_fields(Fields::Auto),
    ])
    .expect("valid configuration");
    // The attacker's own anonymous `data` session.
    let planter = sessions.session([], Default::default());
    planter.insert("theme", "planted").await.expect("insert");
    let planted = set_pairs(&planter.commit().await.expect("commit")).remove(0);
    // The victim logs in and keeps a `data` part of their own.
    let victim = sessions.session([], Default::default());
    victim.login("23").await.expect("login");
    victim.insert("theme", "mine").await.expect("insert");
    let own = set_pairs(&victim.commit().await.expect("commit")).join("; ");
    let header = format!("{planted}; {own}");
    let request = sessions.session([header.as_bytes()], Default::default());
    assert_eq!(request.get::<String>("theme").await.expect("reads").as_deref(), Some("mine"));
    request.insert("card", "4111").await.expect("insert");
    request.commit().await.expect("commit");
    let attacker = sessions.session([planted.as_bytes()], Default::default());
    assert_eq!(attacker.get::<String>("card").await.expect("reads"), None, "the planted part read the victim's write");
}

/// A logout in one tab while another tab of the same device changes its
/// ids: the id change finds the device ended and hands out no new login.
#[tokio::test]
async fn a_logout_beside_an_id_change_of_the_same_device_ends_the_device() {
    let store = Arc::new(MemoryStore::new());
    let sessions = Sessions::from_specs([
        SessionSpec::new(store.clone(), named("session")).with_fields(Fields::include(["user_id"])),
        SessionSpec::new(store.clone(), named("data")).with_fields(Fields::Auto),
    ])
    .expect("valid configuration");
    let device = sessions.session([], Default::default());
    device.login("23").await.expect("login");
    device.insert("theme", "dark").await.expect("insert");
    let cookies = set_pairs(&device.commit().await.expect("commit")).join("; ");
    let rotating = sessions.session([cookies.as_bytes()], Default::default());
    rotating.cycle_id().await.expect("cycle_id");
    let leaving = sessions.session([cookies.as_bytes()], Default::default());
    leaving.logout().await.expect("logout");
    let rotated = rotating.commit().await.expect("commit");
    leaving.commit().await.expect("commit");
    assert!(
        set_pairs(&rotated).iter().all(|pair| pair.ends_with('=')),
        "the id change handed out a new login: {:?}",
        rotated
    );
    assert!(store.user_sessions("23").await.expect("listed").is_empty(), "the device outlived its logout");
}
