//! The same set-up from a TOML file: what loads, and what is refused with a
//! message naming the line, the field or the secret.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::{Device, Framework};
use multisession::{ErrorKind, Key, Sessions};

struct Folder(tempfile::TempDir);

impl Folder {
    fn new() -> Self {
        let folder = Self(tempfile::tempdir().expect("a temporary directory"));
        let key = base64::engine::general_purpose::STANDARD.encode(Key::generate().master());
        let old = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Key::generate().master());
        folder.write("keys.txt", &format!("{key}\n{old}\n"));
        folder
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("a file is written");
        path
    }

    async fn load(&self, toml: &str) -> multisession::Result<Sessions> {
        Sessions::from_config_file(self.write("multisession.toml", toml)).await
    }
}

const THREE_PARTS: &str = r#"
[[session]]
cookie_name = "csrf"
backend = "cookie://"
fields = ["csrf_token"]
key_file = "keys.txt"

[[session]]
cookie_name = "session"
backend = "sqlite://sessions.db"
fields = { include = ["user_id", "user_data"] }
lifetime = "2h"
permanent_lifetime = "14d"
touch_interval = "1m"
same_site = "strict"
secure = false
key_prefix = "shop"

[[session]]
cookie_name = "data"
backend = "cookie://"
fields = "auto"
key_file = "keys.txt"
revocation = "sqlite://sessions.db"
"#;

common::both_frameworks!(
    flask_session_plus_three_parts_load_and_route,
    durations_too_long_for_any_session_are_refused_naming_the_field
);

async fn flask_session_plus_three_parts_load_and_route(fw: Framework) {
    let folder = Folder::new();
    let sessions = folder.load(THREE_PARTS).await.expect("the configuration loads");
    assert!(folder.path().join("sessions.db").exists(), "sqlite:// is relative to the file's folder");
    let mut browser = Device::new(fw.app(sessions.clone()), "ua", "127.0.0.1:1");

    let reply = browser.get("/set/csrf_token/t").await;
    assert_eq!(reply.set_cookies().len(), 1);
    assert!(reply.set_cookies()[0].starts_with("csrf="));
    let reply = browser.get("/login/23").await;
    let set = reply.set_cookies();
    let session = set.iter().find(|c| c.starts_with("session=")).expect("login sets the session cookie");
    assert!(session.contains("SameSite=Strict") && !session.contains("Secure"), "{set:?}");
    assert!(set.iter().any(|c| c.starts_with("csrf=;")), "login does not end the pre-login CSRF token: {set:?}");
    assert!(browser.get("/set/theme/dark").await.set_cookies()[0].starts_with("data="));
    assert_eq!(browser.get("/read").await.body, "user=23 n=0");

    let listed = sessions.user_sessions("23").await.expect("listed");
    let lifetime = listed[0].expires_at - listed[0].last_active_at;
    assert_eq!(lifetime, time::Duration::hours(2), "lifetime = \"2h\" was not applied");
}

#[tokio::test]
async fn unknown_keys_and_bad_values_are_refused_with_their_line() {
    let folder = Folder::new();
    for (toml, words) in [
        ("[[session]]\ncookie_name = \"s\"\nbackend = \"memory://\"\ncolour = \"blue\"\n", &["colour", "line 4"][..]),
        (
            "[[session]]\ncookie_name = \"s\"\nbackend = \"memory://\"\nlifetime = \"1 fortnight\"\n",
            &["fortnight", "line 4"],
        ),
        ("[[session]]\ncookie_name = \"s\"\nbackend = \"redis-ish://x\"\n", &["redis-ish://x", "line 3"]),
        (
            "[[session]]\ncookie_name = \"s\"\nbackend = \"memory://\"\nsame_site = \"sometimes\"\n",
            &["sometimes", "line 4"],
        ),
        ("[[session]]\ncookie_name = \"s\"\nbackend = \"memory://\"\nkey = \"c2VjcmV0\"\n", &["key", "line 4"]),
    ] {
        let err = folder.load(toml).await.expect_err("an invalid file was accepted");
        assert_eq!(err.kind(), ErrorKind::Config);
        for word in words {
            assert!(err.to_string().contains(word), "{err} does not mention {word}");
        }
    }
}

#[tokio::test]
async fn secrets_come_from_the_environment_or_a_key_file_and_are_checked() {
    let folder = Folder::new();
    folder.write("short.txt", &base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
    folder.write("empty.txt", "\n");
    let part = |source: &str| format!("[[session]]\ncookie_name = \"c\"\nbackend = \"cookie://\"\n{source}\n");
    for (source, words) in [
        ("", &["`c`", "key_env"][..]),
        ("key_env = \"MULTISESSION_SURELY_UNSET_VARIABLE\"", &["`c`", "MULTISESSION_SURELY_UNSET_VARIABLE", "not set"]),
        ("key_env = \"PATH\"", &["`c`", "PATH", "not base64"]),
        ("key_file = \"missing.txt\"", &["`c`", "missing.txt"]),
        ("key_file = \"short.txt\"", &["`c`", "32 bytes", "64"]),
        ("key_file = \"empty.txt\"", &["`c`", "no key"]),
        ("key_file = \"keys.txt\"\nkey_env = \"PATH\"", &["`c`", "not both"]),
    ] {
        let err = folder.load(&part(source)).await.expect_err("a part without a usable key was accepted");
        for word in words {
            assert!(err.to_string().contains(word), "{err} does not mention {word}");
        }
    }
    folder.load(&part("key_file = \"keys.txt\"")).await.expect("a key file with two keys loads");
}

#[tokio::test]
async fn option_combinations_that_cannot_work_are_refused() {
    let folder = Folder::new();
    let head = "[[session]]\ncookie_name = \"s\"\n";
    for (rest, words) in [
        ("backend = \"memory://\"\nkey_prefix = \"x\"\n", &["`s`", "key_prefix"][..]),
        ("backend = \"memory://\"\nrevocation = \"memory://\"\n", &["`s`", "revocation"]),
        ("backend = \"memory://\"\nsigned_id = true\n", &["`s`", "signed_id"]),
        ("backend = \"memory://\"\non_limit = \"refuse\"\n", &["`s`", "on_limit"]),
        ("backend = \"cookie://\"\nkey_file = \"keys.txt\"\nrevocation = \"cookie://\"\n", &["`s`", "revocation"]),
        ("backend = \"memory://\"\nlifetime = \"1m\"\n", &["`s`", "touch_interval"]),
    ] {
        let err = folder.load(&format!("{head}{rest}")).await.expect_err("accepted");
        for word in words {
            assert!(err.to_string().contains(word), "{err} does not mention {word}");
        }
    }
}

#[tokio::test]
async fn the_shipped_example_configuration_loads() {
    let folder = Folder::new();
    let example = include_str!("../examples/multisession.toml");
    let keys = std::fs::read_to_string(folder.path().join("keys.txt")).expect("keys");
    let example = example.replace("key_env = \"MULTISESSION_KEYS\"", "key_file = \"keys.txt\"");
    assert_ne!(keys, "");
    folder.load(&example).await.expect("examples/multisession.toml loads");
}

async fn durations_too_long_for_any_session_are_refused_naming_the_field(fw: Framework) {
    let folder = Folder::new();
    for (value, field) in [
        ("\"99999999999999999w\"", "lifetime"),
        ("\"9223372036854775807d\"", "lifetime"),
        ("\"401d\"", "lifetime"),
        ("99999999999999", "lifetime"),
    ] {
        let toml = format!("[[session]]\ncookie_name = \"s\"\nbackend = \"memory://\"\n{field} = {value}\n");
        let err = folder.load(&toml).await.expect_err("an impossible lifetime was accepted");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains(field), "{err} does not name {field}");
    }
    let toml = "[[session]]\ncookie_name = \"s\"\nbackend = \"memory://\"\nlifetime = \"400d\"\n";
    let sessions = folder.load(toml).await.expect("400 days load");
    let mut browser = Device::new(fw.app(sessions), "ua", "127.0.0.1:1");
    assert_eq!(browser.get("/login/23").await.status, 200);
    assert_eq!(browser.get("/read").await.body, "user=23 n=0");
}

/// A store URL for each scheme `store::open` knows, at the servers
/// `scripts/services.sh` starts.
fn store_urls(folder: &Folder) -> Vec<String> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let cluster = env("MULTISESSION_REDIS_CLUSTER_URLS", "redis://127.0.0.1:6391").replace("redis://", "");
    let firestore = env("MULTISESSION_FIRESTORE_URL", "http://127.0.0.1:8790").replace("http://", "");
    let dynamodb = env("MULTISESSION_DYNAMODB_URL", "http://127.0.0.1:8794").replace("http://", "");
    vec![
        "memory://".to_owned(),
        format!("sqlite://{}", folder.path().join("all.db").display()),
        env("MULTISESSION_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/multisession_test"),
        env("MULTISESSION_MYSQL_URL", "mysql://root@127.0.0.1:3306/multisession_test"),
        env("MULTISESSION_REDIS_URL", "redis://127.0.0.1:6390"),
        format!("redis+cluster://{cluster}"),
        format!("memcached://{}", env("MULTISESSION_MEMCACHED_SERVERS", "127.0.0.1:11290")),
        env("MULTISESSION_MONGO_URL", "mongodb://127.0.0.1:27090/multisession_test?directConnection=true"),
        format!("firestore://{firestore}/multisession-test"),
        format!("dynamodb://{dynamodb}/multisession-test"),
    ]
}

#[tokio::test]
async fn every_store_url_store_open_takes_works_in_toml() {
    let folder = Folder::new();
    for url in store_urls(&folder) {
        multisession::store::open(&url, None).await.unwrap_or_else(|e| panic!("store::open({url}): {e}"));
        let toml = format!("[[session]]\ncookie_name = \"s\"\nbackend = \"{url}\"\n");
        let sessions = folder.load(&toml).await.unwrap_or_else(|e| panic!("{url} in TOML: {e}"));
        let session = sessions.session([], Default::default());
        session.insert("n", 1).await.expect("insert");
        session.commit().await.unwrap_or_else(|e| panic!("a session on {url}: {e}"));
    }
}

#[tokio::test]
async fn store_passwords_never_appear_in_configuration_errors() {
    let folder = Folder::new();
    let password = "s3cretpw";
    for url in [
        format!("postgres://app:{password}@127.0.0.1:1/db"),
        format!("mysql://app:{password}@127.0.0.1:1/db"),
        format!("redis://:{password}@127.0.0.1:1"),
        format!("mongodb://app:{password}@127.0.0.1:1/db?serverSelectionTimeoutMS=100"),
        format!("carrier-pigeon://app:{password}@loft"),
        format!("postgres://app:{password}@127.0.0.1:notaport/db"),
    ] {
        let toml = format!("[[session]]\ncookie_name = \"s\"\nbackend = \"{url}\"\n");
        let err = folder.load(&toml).await.expect_err("an unreachable store was accepted");
        assert!(!format!("{err} {err:?}").contains(password), "the error shows the password: {err}");
        let err = multisession::store::open(&url, None).await.expect_err("an unreachable store opened");
        assert!(!format!("{err} {err:?}").contains(password), "the error shows the password: {err}");
    }
    // A syntax error on the line of the URL does not echo the line.
    let toml = format!("[[session]]\ncookie_name = \"s\"\nbackend = \"postgres://app:{password}@db/app\n");
    let err = folder.load(&toml).await.expect_err("a broken file loaded");
    assert!(err.to_string().contains("line 3") && !err.to_string().contains(password), "{err}");
}

#[tokio::test]
async fn passwords_with_url_delimiters_typos_or_in_the_query_never_appear_in_errors() {
    let folder = Folder::new();
    let password = "s3cretpw";
    for url in [
        format!("postgres:/app:{password}@127.0.0.1:1/db"),
        format!("postgres//app:{password}@127.0.0.1:1/db"),
        format!("postgres://app:{password}/x@127.0.0.1:1/db"),
        format!("postgres://app:{password}?x@127.0.0.1:1/db"),
        format!("mysql://app:{password}#x@127.0.0.1:1/db"),
        format!("redis://:{password}/x@127.0.0.1:1"),
        format!("postgres://app@127.0.0.1:1/db?sslpassword={password}"),
        format!("mongodb://127.0.0.1:1/db?tlsCertificateKeyFilePassword={password}&serverSelectionTimeoutMS=100"),
    ] {
        let toml = format!("[[session]]\ncookie_name = \"s\"\nbackend = \"{url}\"\n");
        let err = folder.load(&toml).await.expect_err("an unreachable store was accepted");
        assert!(!format!("{err} {err:?}").contains(password), "{url}: the error shows the password: {err}");
        let err = multisession::store::open(&url, None).await.expect_err("an unreachable store opened");
        assert!(!format!("{err} {err:?}").contains(password), "{url}: the error shows the password: {err}");
    }
}

#[tokio::test]
async fn cookies_browsers_would_drop_and_touches_that_come_too_late_are_refused_naming_the_field() {
    let folder = Folder::new();
    let part =
        |name: &str, rest: &str| format!("[[session]]\ncookie_name = \"{name}\"\nbackend = \"memory://\"\n{rest}");
    for (toml, field) in [
        (part("__Host-sid", "secure = false\n"), "secure"),
        (part("__Host-sid", "domain = \"example.com\"\n"), "domain"),
        (part("__Host-sid", "path = \"/app\"\n"), "path"),
        (part("__Secure-sid", "secure = false\n"), "secure"),
        (part("s", "max_age = \"0s\"\n"), "max_age"),
        (part("s", "max_age = \"500ms\"\n"), "max_age"),
        (part("s", "permanent_lifetime = \"1h\"\ntouch_interval = \"2h\"\n"), "touch_interval"),
        (part("s", "id_header = \"X Auth\"\n"), "id_header"),
        (part("s", "id_header_mode = \"header_only\"\n"), "id_header_mode"),
        (part("s", "id_header = \"bearer\"\nid_header_mode = \"sometimes\"\n"), "id_header_mode"),
    ] {
        let err = folder.load(&toml).await.expect_err("a configuration that cannot work was accepted");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains(&format!("{field}:")), "{err} does not name {field}");
    }
    folder.load(&part("__Host-sid", "max_age = \"1s\"\n")).await.expect("a __Host- cookie with the defaults loads");
    for (rest, header) in [
        ("id_header = \"X-Auth-Token\"\nclear_site_data = true\n", "x-auth-token"),
        ("id_header = \"bearer\"\nid_header_mode = \"header_only\"\n", "authorization"),
    ] {
        let sessions = folder.load(&part("s", rest)).await.expect("an id header loads");
        assert_eq!(sessions.id_headers().collect::<Vec<_>>(), [header]);
    }
}

#[tokio::test]
async fn key_prefixes_no_store_can_keep_are_refused_at_start_up_for_every_store() {
    let folder = Folder::new();
    // Nothing listens on port 1: the prefix is refused before any store is opened.
    for backend in
        ["sqlite://prefixed.db", "postgres://app@127.0.0.1:1/db", "redis://127.0.0.1:1", "memcached://127.0.0.1:1"]
    {
        for prefix in [String::new(), "p".repeat(65), "app\\u0000one".to_owned(), "my app".to_owned()] {
            let toml =
                format!("[[session]]\ncookie_name = \"s\"\nbackend = \"{backend}\"\nkey_prefix = \"{prefix}\"\n");
            let err = folder.load(&toml).await.expect_err("an impossible prefix was accepted");
            assert_eq!(err.kind(), ErrorKind::Config, "{backend}: {err}");
            assert!(err.to_string().contains("`s`: key_prefix:"), "{backend}: {err}");
        }
    }
    let toml = format!(
        "[[session]]\ncookie_name = \"s\"\nbackend = \"sqlite://prefixed.db\"\nkey_prefix = \"{}\"\n",
        "p".repeat(64)
    );
    folder.load(&toml).await.expect("a prefix of 64 bytes loads");
}
