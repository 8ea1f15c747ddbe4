//! The store conformance suite on Google's Firestore emulator, and an
//! emulator restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{Device, app};
use multisession::StoreKey;
use multisession::store::{FirestoreStore, Store};
use multisession::testing::Harness;
use multisession::{SessionConfig, Sessions};

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

    async fn work(&self) -> Option<u64> {
        Some(self.store.operations())
    }
}

multisession::store_conformance_tests!(firestore());

/// An emulator of the test's own, to kill and restart.
struct OwnEmulator {
    port: u16,
    child: Option<Child>,
}

impl OwnEmulator {
    fn new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let mut own = Self { port, child: None };
        own.start();
        own
    }

    fn start(&mut self) {
        let child = Command::new("java")
            .args(["-Duser.language=en", "-cp", JAR, "com.google.cloud.datastore.emulator.firestore.CloudFirestore"])
            .args(["start", "--host=127.0.0.1", &format!("--port={}", self.port)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Firestore emulator runs (scripts/services.sh installs it)");
        self.child = Some(child);
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the Firestore emulator on port {} did not start", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnEmulator {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_503_while_the_emulator_is_down_and_succeed_once_it_is_back() {
    let mut server = OwnEmulator::new();
    let url = format!("http://127.0.0.1:{}", server.port);
    let store = FirestoreStore::connect(&url, "outage", "sessions").expect("a store");
    let mut device =
        Device::new(app(Sessions::new(store, SessionConfig::default()).expect("valid")), "ua", "127.0.0.1:1");
    let mut ready = false;
    for _ in 0..40 {
        if device.get("/login/23").await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(ready, "the emulator never answered");
    assert_eq!(device.get("/write").await.body, "n=1");
    server.kill();
    for path in ["/read", "/write", "/devices"] {
        assert_eq!(device.get(path).await.status, 503, "{path} while the emulator is down");
    }
    server.start();
    let mut recovered = false;
    for _ in 0..60 {
        if device.get("/write").await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(recovered, "the store did not recover after the emulator came back");
}
