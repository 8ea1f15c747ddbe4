//! The store conformance suite on Google's Firestore emulator, and an
//! emulator restart.

mod common;
#[path = "support/outage.rs"]
mod outage;

use std::process::Command;
use std::sync::Arc;

use multisession::StoreKey;
use multisession::store::{FirestoreStore, Store};
use multisession::testing::Harness;
use multisession::{SessionConfig, Sessions};
use outage::OwnServer;

const JAR: &str = "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar";

fn emulator() -> String {
    std::env::var("MULTISESSION_FIRESTORE_URL").unwrap_or_else(|_| "http://127.0.0.1:8790".to_owned())
}

struct Firestore {
    store: Arc<FirestoreStore>,
    collection: String,
}

/// A store in a collection of the test's own.
async fn firestore() -> Firestore {
    let url = emulator();
    let key = multisession::SessionId::generate().expect("rng").store_key().to_string();
    let collection = format!("t_{}", &key[..12]);
    // Built first: it installs the TLS crypto provider reqwest needs.
    let store = FirestoreStore::connect(&url, "multisession-test", &collection).expect("a store");
    if reqwest::get(&url).await.is_err() {
        panic!("no Firestore emulator at {url}: start it with `scripts/services.sh start`");
    }
    Firestore { store: Arc::new(store), collection }
}

#[async_trait::async_trait]
impl Harness for Firestore {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        let url = format!(
            "{}/v1/projects/multisession-test/databases/(default)/documents/{}/{key}?updateMask.fieldPaths=data",
            emulator(),
            self.collection
        );
        let body = r#"{"fields":{"data":{"integerValue":"7"}}}"#;
        let reply = reqwest::Client::new().patch(url).body(body).send().await.expect("the corrupting update runs");
        assert!(reply.status().is_success(), "{}", reply.text().await.unwrap_or_default());
    }

    async fn holds(&self, key: &StoreKey) -> Option<bool> {
        let url = format!(
            "{}/v1/projects/multisession-test/databases/(default)/documents/{}/{key}",
            emulator(),
            self.collection
        );
        let reply = reqwest::get(url).await.expect("the emulator answers");
        Some(reply.status().is_success())
    }

    async fn work(&self) -> Option<u64> {
        Some(self.store.operations())
    }

    fn caps_logins_atomically(&self) -> bool {
        false
    }
}

multisession::store_conformance_tests!(firestore());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_503_while_the_emulator_is_down_and_succeed_once_it_is_back() {
    let mut server = OwnServer::new(|port, _| {
        let mut java = Command::new("java");
        java.args(["-Duser.language=en", "-cp", JAR, "com.google.cloud.datastore.emulator.firestore.CloudFirestore"]);
        java.args(["start", "--host=127.0.0.1", &format!("--port={port}")]);
        java
    });
    let store =
        FirestoreStore::connect(&format!("http://127.0.0.1:{}", server.port), "outage", "sessions").expect("a store");
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid");
    // The emulator keeps nothing across a restart: the device starts anew.
    outage::outage_gives_503_then_recovery(&mut server, sessions, false).await;
}

/// Serves the emulator's API on a port of its own, refusing a commit of more
/// than 500 writes as Firestore does (the emulator takes any number); the
/// base URL to give a store.
async fn firestore_with_its_write_limit() -> String {
    use axum::body::{Body, to_bytes};
    use axum::extract::Request;
    use axum::http::{Response, StatusCode};

    async fn forward(request: Request) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = to_bytes(body, 64 << 20).await.expect("a request body");
        if parts.uri.path().ends_with(":commit") {
            let commit: serde_json::Value = serde_json::from_slice(&body).expect("a JSON commit");
            let writes = commit["writes"].as_array().map_or(0, Vec::len);
            if writes > 500 {
                let error = r#"{"error":{"code":400,"message":"maximum 500 writes allowed per request","status":"INVALID_ARGUMENT"}}"#;
                return Response::builder().status(StatusCode::BAD_REQUEST).body(Body::from(error)).expect("a reply");
            }
        }
        let url = format!("{}{}", emulator(), parts.uri);
        let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).expect("a method");
        let reply = reqwest::Client::new()
            .request(method, url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the emulator answers");
        let status = reply.status().as_u16();
        let bytes = reply.bytes().await.expect("the emulator's reply");
        Response::builder().status(status).body(Body::from(bytes)).expect("a reply")
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(forward)).await });
    url
}

/// Firestore takes at most 500 writes in one commit: logging out a user
/// with 600 sessions everywhere commits in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_devices_ends_600_sessions_in_commits_of_at_most_500_writes() {
    let db = firestore().await;
    let limited = firestore_with_its_write_limit().await;
    let store = FirestoreStore::connect(&limited, "multisession-test", &db.collection).expect("a store");
    let sessions = Sessions::new(store, SessionConfig::default().with_unlimited_sessions_per_user()).expect("valid");
    let mut cookie = String::new();
    for _ in 0..600 {
        let session = sessions.session([], Default::default());
        session.login("busy").await.expect("login");
        let set = session.commit().await.expect("commit").set_cookies;
        cookie = set[0].split(';').next().expect("name=value").to_owned();
    }
    let session = sessions.session([cookie.as_bytes()], Default::default());
    assert_eq!(session.logout_all_devices().await.expect("logout_all_devices"), 600);
    session.commit().await.expect("commit");
    assert!(sessions.user_sessions("busy").await.expect("listed").is_empty());
}
