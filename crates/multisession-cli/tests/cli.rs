//! The `multisession` binary, run as a process against real stores (SQLite,
//! and the Redis `scripts/services.sh` starts), on sessions made by browsers
//! logging in to the demo.

// The demo binary includes `examples/shared/demo.rs` itself; this test
// includes it too, for the demo's `sessions`.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)]
#[path = "../../multisession/examples/demo.rs"]
mod demo;
#[allow(dead_code)]
#[path = "../../multisession/examples/shared/demo.rs"]
mod shared;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, header};
use http_body_util::BodyExt;
use multisession::store::Store;
use multisession::{Device, Meta, Record, SessionConfig, SessionId};
use serde_json::Value;
use tower::ServiceExt;

/// One browser: its cookies, User-Agent and address, talking to a demo.
struct Browser {
    cookies: BTreeMap<String, String>,
    user_agent: &'static str,
    addr: SocketAddr,
}

impl Browser {
    fn new(user_agent: &'static str, addr: &str) -> Self {
        Self { cookies: BTreeMap::new(), user_agent, addr: addr.parse().expect("an address") }
    }

    async fn send(&mut self, app: &Router, request: http::request::Builder, body: String) -> (u16, String) {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let mut request = request
            .header(header::USER_AGENT, self.user_agent)
            .header(header::COOKIE, cookie)
            .body(Body::from(body))
            .expect("a request");
        request.extensions_mut().insert(ConnectInfo(self.addr));
        let response = app.clone().oneshot(request).await.expect("the demo answers");
        for set in response.headers().get_all(header::SET_COOKIE) {
            let pair = set.to_str().expect("ASCII").split(';').next().expect("name=value");
            let (name, value) = pair.split_once('=').expect("name=value");
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("a body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn home(&mut self, app: &Router) -> String {
        self.send(app, Request::get("/"), String::new()).await.1
    }

    /// Logs in through the demo's form, as a person does.
    async fn log_in(&mut self, app: &Router, user: &str) {
        let (_, page) = self.send(app, Request::get("/login"), String::new()).await;
        let token = page
            .split(r#"name="csrf_token" value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the login form has a CSRF token")
            .to_owned();
        let form = format!("csrf_token={token}&user_id={user}");
        let post = Request::post("/login").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        assert_eq!(self.send(app, post, form).await.0, 303, "the demo refused the login");
        assert!(self.home(app).await.contains(&format!("logged in as {user}")));
    }
}

/// The demo on `store`.
fn demo_on(store: Arc<dyn Store>) -> Router {
    demo::app(shared::sessions(store, SessionConfig::default().with_secure(false)).expect("valid config"))
}

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "the command failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts a failure with `code`, told in one line and nothing else.
    fn fails_in_one_line(&self, code: i32, says: &str) {
        assert_eq!(self.code, code, "exit code; stderr: {}", self.stderr);
        assert!(self.stdout.is_empty(), "a failure printed to stdout: {}", self.stdout);
        assert_eq!(self.stderr.lines().count(), 1, "not one line: {}", self.stderr);
        assert!(self.stderr.starts_with("multisession: "), "{}", self.stderr);
        assert!(self.stderr.contains(says), "`{says}` not in: {}", self.stderr);
        assert!(!self.stderr.contains("panicked") && !self.stderr.contains("backtrace"), "{}", self.stderr);
    }
}

async fn multisession(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_multisession"))
        .args(args)
        .output()
        .await
        .expect("the binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn redis_url() -> String {
    std::env::var("MULTISESSION_REDIS_URL")
        .expect("MULTISESSION_REDIS_URL is not set: run `eval \"$(scripts/services.sh env)\"` (scripts/test does)")
}

/// A key prefix, user id or file name no other test uses.
fn unique(label: &str) -> String {
    format!("{label}{}", &SessionId::generate().expect("rng").store_key().to_string()[..10])
}

/// A store the CLI can name: its URL, its key prefix, and the store opened
/// the same way for the demo.
struct Target {
    url: String,
    prefix: Option<String>,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("sessions.db").display());
        let store = multisession::store::open(&url, None).await.expect("SQLite opens");
        Self { url, prefix: None, store, _dir: Some(dir) }
    }

    async fn redis() -> Self {
        Self::redis_with_prefix(unique("cli")).await
    }

    async fn redis_with_prefix(prefix: String) -> Self {
        let url = redis_url();
        let store = multisession::store::open(&url, Some(&prefix)).await.expect("Redis answers");
        Self { url, prefix: Some(prefix), store, _dir: None }
    }

    /// `args` with `--store` (and `--key-prefix`) naming this store.
    async fn run(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--store", &self.url]);
        if let Some(prefix) = &self.prefix {
            all.extend(["--key-prefix", prefix]);
        }
        multisession(&all).await
    }
}

const LAPTOP: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0";
const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Version/17.0 Safari/604.1";

/// Two devices log in to the demo; the CLI lists, inspects and counts
/// their sessions, revokes the phone's (whose next request is anonymous),
/// then logs the user out everywhere.
async fn demo_sessions_are_listed_inspected_and_revoked(target: Target) {
    let app = demo_on(target.store.clone());
    let user = unique("ada");
    let (mut laptop, mut phone) = (Browser::new(LAPTOP, "192.0.2.1:1"), Browser::new(PHONE, "192.0.2.2:1"));
    laptop.log_in(&app, &user).await;
    phone.log_in(&app, &user).await;

    let table = target.run(&["users", &user, "list"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two sessions:\n{}", table.stdout);
    for column in ["HANDLE", "DEVICE", "IP", "CREATED", "LAST ACTIVE", "EXPIRES"] {
        assert!(lines[0].contains(column), "no {column} column: {}", lines[0]);
    }
    assert!(table.stdout.contains("192.0.2.1") && table.stdout.contains("192.0.2.2"));
    assert!(table.stdout.contains("X11; Linux x86_64") && table.stdout.contains("iPhone OS 17_0"), "{}", table.stdout);

    let listed = target.run(&["users", &user, "list", "--json"]).await.json();
    let sessions = listed["sessions"].as_array().expect("a list");
    assert_eq!(sessions.len(), 2);
    let handle_of = |agent: &str| -> String {
        let found = sessions.iter().find(|s| s["user_agent"] == agent).expect("the device is listed");
        found["handle"].as_str().expect("a handle").to_owned()
    };
    let (laptop_handle, phone_handle) = (handle_of(LAPTOP), handle_of(PHONE));

    // Something in the phone's session data, which only --show-data shows.
    let handle: multisession::SessionHandle = phone_handle.parse().expect("a handle");
    let listed = target.store.user_sessions(&user).await.expect("listed");
    let key = listed.iter().find(|s| handle.matches(&s.key)).expect("the phone's session").key;
    let now = time::OffsetDateTime::now_utc();
    let mut change = multisession::Change::new(now, now + time::Duration::hours(1));
    change.set.insert("theme".to_owned(), serde_json::json!("solarized"));
    change.user_id = Some(user.clone());
    target.store.apply(&key, &change).await.expect("applied");

    let shown = target.run(&["inspect", &phone_handle]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(shown.stdout.contains(&user) && shown.stdout.contains("192.0.2.2"), "{}", shown.stdout);
    assert!(shown.stdout.contains("--show-data prints them"), "{}", shown.stdout);
    assert!(shown.stdout.contains("1 keys") && !shown.stdout.contains("solarized"), "data without --show-data");
    let with_data = target.run(&["inspect", &phone_handle, "--show-data", "--json"]).await.json();
    assert_eq!(with_data["user"], user.as_str());
    assert_eq!(with_data["data"]["theme"], "solarized", "{with_data}");

    let stats = target.run(&["stats", "--json"]).await.json();
    assert_eq!((stats["logged_in"].as_u64(), stats["users"].as_u64()), (Some(2), Some(1)), "{stats}");

    let revoked = target.run(&["revoke", &phone_handle]).await;
    assert_eq!((revoked.code, revoked.stdout.trim()), (0, format!("revoked {phone_handle}").as_str()));
    assert!(phone.home(&app).await.contains("Please log in"), "the revoked phone is still logged in");
    assert!(laptop.home(&app).await.contains(&format!("logged in as {user}")), "the laptop was logged out too");
    target.run(&["revoke", &phone_handle]).await.fails_in_one_line(1, "no live session has the handle");

    let kept = target.run(&["users", &user, "revoke", "--keep", &laptop_handle]).await;
    assert_eq!(kept.stdout.trim(), format!("logged out 0 sessions of user {user}"), "{}", kept.stderr);
    let ended = target.run(&["users", &user, "revoke", "--json"]).await.json();
    assert_eq!(ended["ended"], 1);
    assert!(laptop.home(&app).await.contains("Please log in"), "logged out everywhere, the laptop is not");
    assert_eq!(target.run(&["users", &user, "list"]).await.stdout.trim(), format!("user {user} has no live sessions"));

    let gc = target.run(&["gc", "--json"]).await.json();
    assert!(gc["deleted"].is_u64(), "{gc}");
}

#[tokio::test]
async fn on_sqlite_demo_sessions_are_listed_inspected_and_revoked() {
    demo_sessions_are_listed_inspected_and_revoked(Target::sqlite().await).await;
}

#[tokio::test]
async fn on_redis_demo_sessions_are_listed_inspected_and_revoked() {
    demo_sessions_are_listed_inspected_and_revoked(Target::redis().await).await;
}

/// `n` sessions of 100 users, written straight into `store`.
async fn crowd(store: &Arc<dyn Store>, n: usize) {
    let now = time::OffsetDateTime::now_utc();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = store.clone();
        tasks.spawn(async move {
            let record = Record {
                data: serde_json::json!({ "cart": [i], "theme": "dark" }).as_object().cloned().unwrap_or_default(),
                meta: Meta {
                    user_id: Some(format!("crowd-{}", i % 100)),
                    created_at: now,
                    last_active_at: now,
                    expires_at: now + time::Duration::hours(2),
                    absolute_expires_at: Some(now + time::Duration::days(1)),
                    permanent: i % 2 == 0,
                    device: Device::new(Some(format!("agent {i}")), "198.51.100.7".parse().ok()),
                    siblings: BTreeMap::new(),
                },
            };
            let key = SessionId::generate().expect("rng").store_key();
            store.create(&key, &record).await.expect("created");
        });
        if tasks.len() >= 64 {
            tasks.join_next().await.expect("a task").expect("no panic");
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("no panic");
    }
}

/// `gc` deletes expired sessions and keeps live ones, and names each
/// expired login on standard error (an audit trail for cron), never its id
/// or key.
#[tokio::test]
async fn gc_deletes_expired_sessions_and_names_each_expired_login_on_stderr() {
    let target = Target::sqlite().await;
    let now = time::OffsetDateTime::now_utc();
    let record = |user: Option<&str>, expires_at| Record {
        data: Default::default(),
        meta: Meta {
            user_id: user.map(str::to_owned),
            created_at: now,
            last_active_at: now,
            expires_at,
            absolute_expires_at: None,
            permanent: false,
            device: Device::new(Some(LAPTOP.to_owned()), "198.51.100.7".parse().ok()),
            siblings: BTreeMap::new(),
        },
    };
    let soon = now + time::Duration::milliseconds(200);
    let mut keys = Vec::new();
    for (user, expires_at) in [(Some("ann"), soon), (None, soon), (Some("bob"), now + time::Duration::hours(1))] {
        let key = SessionId::generate().expect("rng").store_key();
        target.store.create(&key, &record(user, expires_at)).await.expect("created");
        keys.push(key.to_string());
    }
    multisession::testing::wait_past(soon).await;
    let gc = target.run(&["gc", "--json"]).await;
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    let summary = gc.json();
    assert_eq!((summary["deleted"].as_u64(), summary["expired_logins"].as_u64()), (Some(2), Some(1)), "{summary}");
    let lines: Vec<&str> = gc.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", gc.stderr);
    assert!(lines[0].starts_with("expired: user ann session "), "{}", lines[0]);
    assert!(lines[0].contains("Firefox 128 on Linux"), "{}", lines[0]);
    for key in &keys {
        assert!(!gc.stderr.contains(key.as_str()) && !gc.stdout.contains(key.as_str()), "a store key was printed");
    }
    let again = target.run(&["gc"]).await;
    assert_eq!(again.stdout.trim(), "deleted 0 expired sessions (0 of them logged in)", "{}", again.stderr);
    assert_eq!(target.store.user_sessions("bob").await.expect("listed").len(), 1, "gc deleted a live session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_ten_thousand_sessions_from_sqlite_to_redis_and_a_browser_stays_logged_in() {
    let from = Target::sqlite().await;
    let mut browser = Browser::new(LAPTOP, "192.0.2.1:1");
    let user = unique("grace");
    browser.log_in(&demo_on(from.store.clone()), &user).await;
    crowd(&from.store, 10_000).await;
    let counted = from.run(&["stats", "--json"]).await.json();
    let live = counted["sessions"].as_u64().expect("a count");
    assert_eq!(counted["logged_in"].as_u64(), Some(10_001), "{counted}");

    let prefix = unique("migrated");
    let args = ["migrate", "--from", &from.url, "--to", &redis_url(), "--to-prefix", &prefix, "--batch", "700"];
    let moved = multisession(&[&args[..], &["--json"]].concat()).await.json();
    assert_eq!((moved["copied"].as_u64(), moved["already_there"].as_u64()), (Some(live), Some(0)), "{moved}");
    assert_eq!(moved["unreadable"], 0);

    // Safe to run again: everything is there already.
    let again = multisession(&[&args[..], &["--json"]].concat()).await.json();
    assert_eq!((again["copied"].as_u64(), again["already_there"].as_u64()), (Some(0), Some(live)), "{again}");

    let to = Target::redis_with_prefix(prefix).await;
    let recounted = to.run(&["stats", "--json"]).await.json();
    assert_eq!((recounted["sessions"].as_u64(), recounted["users"].as_u64()), (Some(live), Some(101)));

    // The browser's cookie, from the SQLite demo, logs it in on the Redis one.
    let home = browser.home(&demo_on(to.store.clone())).await;
    assert!(home.contains(&format!("logged in as {user}")), "the migrated session did not log the browser in");
    // Each session kept its id, user, device, times and data.
    let crowd_user = from.store.user_sessions("crowd-7").await.expect("listed");
    assert_eq!(crowd_user.len(), 100);
    for info in crowd_user {
        let (old, new) =
            (from.store.load(&info.key).await.expect("read"), to.store.load(&info.key).await.expect("read"));
        assert_eq!(old, new, "a session changed on its way");
    }
    assert_eq!(to.store.user_sessions("crowd-7").await.expect("listed").len(), 100, "the user index was not moved");
}

#[tokio::test]
async fn a_bad_url_an_unreachable_store_and_an_unknown_handle_each_get_one_clear_line() {
    multisession(&["stats", "--store", "nope://somewhere"]).await.fails_in_one_line(2, "not a store URL");
    multisession(&["stats", "--store", "redis://127.0.0.1:1"]).await.fails_in_one_line(1, "unavailable");
    multisession(&["stats", "--store", "redis://user:hunter2@127.0.0.1:1"]).await.fails_in_one_line(1, "--store");
    let hidden = multisession(&["stats", "--store", "redis://user:hunter2@127.0.0.1:1"]).await;
    assert!(!hidden.stderr.contains("hunter2"), "the password is shown: {}", hidden.stderr);
    multisession(&["stats"]).await.fails_in_one_line(2, "--store URL or --config FILE");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = format!("sqlite://{}", dir.path().join("typo.db").display());
    multisession(&["stats", "--store", &missing]).await.fails_in_one_line(2, "there is no SQLite file");
    assert!(!dir.path().join("typo.db").exists(), "a mistyped path made a database");

    let sqlite = Target::sqlite().await;
    sqlite.run(&["revoke", "0123456789abcdef.MjM"]).await.fails_in_one_line(1, "no live session has the handle");
    sqlite.run(&["inspect", "0123456789abcdef.MjM"]).await.fails_in_one_line(1, "no live session has the handle");
    sqlite.run(&["revoke", "garbage"]).await.fails_in_one_line(2, "is not a session handle");
    let missing_too = format!("sqlite://{}", dir.path().join("typo.db").display());
    multisession(&["migrate", "--from", &missing_too, "--to", &sqlite.url])
        .await
        .fails_in_one_line(2, "no SQLite file");
    sqlite
        .run(&["users", "23", "revoke", "--keep", "0123456789abcdef.MjM"])
        .await
        .fails_in_one_line(1, "no live session");

    let memcached = std::env::var("MULTISESSION_MEMCACHED_SERVERS").expect("MULTISESSION_MEMCACHED_SERVERS is not set");
    let from = format!("memcached://{memcached}");
    let to = sqlite.url.clone();
    multisession(&["migrate", "--from", &from, "--to", &to]).await.fails_in_one_line(1, "cannot be migrated");
    multisession(&["migrate", "--from", &to, "--to", &to]).await.fails_in_one_line(2, "the same store");
    multisession(&["migrate", "--from", &to, "--to", "memory://"]).await.fails_in_one_line(2, "inside its application");
}

#[tokio::test]
async fn help_names_every_command_and_each_command_explains_itself() {
    let help = multisession(&["--help"]).await;
    assert_eq!(help.code, 0);
    for command in ["users", "revoke", "inspect", "stats", "gc", "migrate"] {
        assert!(help.stdout.contains(&format!("  {command} ")), "--help does not list {command}");
        let own = multisession(&[command, "--help"]).await;
        assert_eq!(own.code, 0, "{command} --help: {}", own.stderr);
        assert!(own.stdout.contains("Usage: multisession"), "{command} --help: {}", own.stdout);
    }
    for sub in [["users", "23", "list", "--help"], ["users", "23", "revoke", "--help"]] {
        assert_eq!(multisession(&sub).await.code, 0);
    }
    assert!(help.stdout.contains("Store URLs:") && help.stdout.contains("Examples:"));
}

#[tokio::test]
async fn a_configuration_file_names_the_store_of_its_login_part() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("multisession.toml");
    let toml = "[[session]]\ncookie_name = \"session\"\nbackend = \"sqlite://sessions.db\"\nkey_prefix = \"shop\"\n";
    std::fs::write(&config, toml).expect("written");
    let url = format!("sqlite://{}", dir.path().join("sessions.db").display());
    let store = multisession::store::open(&url, Some("shop")).await.expect("SQLite opens");
    let app = demo_on(store);
    let user = unique("linus");
    Browser::new(LAPTOP, "192.0.2.1:1").log_in(&app, &user).await;

    let config = config.to_str().expect("a UTF-8 path");
    let listed = multisession(&["users", &user, "list", "--json", "--config", config]).await.json();
    assert_eq!(listed["sessions"].as_array().map(Vec::len), Some(1), "{listed}");
    // Without the prefix, the same file holds no sessions of that user.
    let elsewhere = multisession(&["users", &user, "list", "--json", "--store", &url]).await.json();
    assert_eq!(elsewhere["sessions"].as_array().map(Vec::len), Some(0), "{elsewhere}");

    std::fs::write(dir.path().join("bad.toml"), "[[session]]\ncookie_name = \"s\"\nlifetime = \"soon\"\n")
        .expect("written");
    let bad = dir.path().join("bad.toml");
    multisession(&["stats", "--config", bad.to_str().expect("UTF-8")]).await.fails_in_one_line(2, "lifetime");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `eval \"$(scripts/services.sh env)\"`"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_sessions_between_every_kind_of_backend_unchanged() {
    let sqlite = Target::sqlite().await;
    crowd(&sqlite.store, 200).await;
    let cluster: Vec<String> = env("MULTISESSION_REDIS_CLUSTER_URLS")
        .split(',')
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    let mongo = env("MULTISESSION_MONGO_URL").replace("/multisession_test?", &format!("/{}?", unique("m")));
    let firestore =
        format!("firestore://{}/{}", env("MULTISESSION_FIRESTORE_URL").trim_start_matches("http://"), unique("p"));
    let dynamodb =
        format!("dynamodb://{}/{}", env("MULTISESSION_DYNAMODB_URL").trim_start_matches("http://"), unique("d"));
    // SQLite, then each backend in turn, each hop to the next.
    let hops: Vec<(String, Option<String>)> = vec![
        (sqlite.url.clone(), None),
        (env("MULTISESSION_POSTGRES_URL"), Some(unique("pg"))),
        (format!("redis+cluster://{}", cluster.join(",")), Some(unique("rc"))),
        (mongo, None),
        (firestore, None),
        (dynamodb, None),
        (env("MULTISESSION_MYSQL_URL"), Some(unique("my"))),
        (redis_url(), Some(unique("r"))),
    ];
    let original = walk(&sqlite.store).await;
    assert_eq!(original.len(), 200);
    for pair in hops.windows(2) {
        let [(from, from_prefix), (to, to_prefix)] = pair else { unreachable!("windows of two") };
        let mut args = vec!["migrate", "--from", from, "--to", to, "--batch", "30", "--json"];
        if let Some(prefix) = from_prefix {
            args.extend(["--from-prefix", prefix]);
        }
        if let Some(prefix) = to_prefix {
            args.extend(["--to-prefix", prefix]);
        }
        let moved = multisession(&args).await.json();
        let shown = (multisession::store::redacted(from), multisession::store::redacted(to));
        assert_eq!(moved["copied"].as_u64(), Some(200), "{shown:?}: {moved}");
        let landed = multisession::store::open(to, to_prefix.as_deref()).await.expect("the target opens");
        assert_eq!(walk(&landed).await, original, "{shown:?}: sessions changed on their way");
    }
}

/// Every live session of `store`, by key.
async fn walk(store: &Arc<dyn Store>) -> BTreeMap<multisession::StoreKey, Record> {
    let (mut all, mut cursor) = (BTreeMap::new(), None);
    loop {
        let page = store.sessions_page(cursor.as_ref(), 64).await.expect("a page");
        all.extend(page.sessions);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_migration_after_the_switch_copies_new_sessions_and_brings_back_no_logout() {
    let from = Target::sqlite().await;
    let (mut early, mut late) = (Browser::new(LAPTOP, "192.0.2.1:1"), Browser::new(PHONE, "192.0.2.2:1"));
    let (ada, bob) = (unique("ada"), unique("bob"));
    early.log_in(&demo_on(from.store.clone()), &ada).await;
    let prefix = unique("switch");
    let args = ["migrate", "--from", &from.url, "--to", &redis_url(), "--to-prefix", &prefix, "--json"];
    let first = multisession(&args).await.json();
    assert_eq!(first["copied"], 1, "{first}");
    let after = first["next_created_after"].as_str().expect("a time for the next run").to_owned();

    // The application switches; meanwhile bob logged in on the old store,
    // and on the new one ada is logged out by an admin.
    late.log_in(&demo_on(from.store.clone()), &bob).await;
    let to = Target::redis_with_prefix(prefix.clone()).await;
    assert_eq!(to.run(&["users", &ada, "revoke", "--json"]).await.json()["ended"], 1);

    let second = multisession(&[&args[..], &["--created-after", &after]].concat()).await.json();
    assert_eq!(second["copied"], 1, "only bob's new session: {second}");
    let app = demo_on(to.store.clone());
    assert!(late.home(&app).await.contains(&format!("logged in as {bob}")), "bob's session was not carried over");
    assert!(early.home(&app).await.contains("Please log in"), "ada's logout was undone by the second run");

    let bad = multisession(&[&args[..], &["--created-after", "yesterday"]].concat()).await;
    bad.fails_in_one_line(2, "--created-after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_target_refuses_is_counted_and_the_rest_are_copied() {
    let from = Target::sqlite().await;
    crowd(&from.store, 20).await;
    // Memcached keeps items of at most 1 MiB; SQLite keeps this one.
    let now = time::OffsetDateTime::now_utc();
    let mut huge = Record {
        data: serde_json::Map::new(),
        meta: Meta {
            user_id: Some(unique("big")),
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::hours(1),
            absolute_expires_at: None,
            permanent: false,
            device: Device::default(),
            siblings: BTreeMap::new(),
        },
    };
    huge.data.insert("blob".to_owned(), serde_json::json!("x".repeat(2 << 20)));
    from.store.create(&SessionId::generate().expect("rng").store_key(), &huge).await.expect("SQLite keeps it");

    let memcached = format!("memcached://{}", env("MULTISESSION_MEMCACHED_SERVERS"));
    let prefix = unique("refuse");
    let run =
        multisession(&["migrate", "--from", &from.url, "--to", &memcached, "--to-prefix", &prefix, "--json"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("--to refused 1 sessions"), "{}", run.stderr);
    let tally: Value = serde_json::from_str(&run.stdout).expect("the counts, as JSON");
    assert_eq!((tally["copied"].as_u64(), tally["refused"].as_u64()), (Some(20), Some(1)), "{tally}");
}
