//! The store conformance suite on AWS's DynamoDB Local (started by
//! `scripts/services.sh`), what only DynamoDB shows (changes too large for
//! one expression, the item size limit, the table's set-up), and a DynamoDB
//! Local restart.

mod common;
#[path = "support/outage.rs"]
mod outage;

use std::process::Command;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use multisession::store::{DynamoDbStore, Store, aws_sdk_dynamodb};
use multisession::testing::Harness;
use multisession::{Change, ErrorKind, SessionConfig, Sessions, StoreKey};
use outage::{OwnServer, Server};
use serde_json::json;

fn endpoint() -> String {
    std::env::var("MULTISESSION_DYNAMODB_URL").unwrap_or_else(|_| "http://127.0.0.1:8794".to_owned())
}

/// A table name of the test's own.
fn table() -> String {
    let key = multisession::SessionId::generate().expect("rng").store_key().to_string();
    format!("t_{}", &key[..12])
}

struct Dynamo {
    store: Arc<DynamoDbStore>,
}

/// A store in a table of the test's own.
async fn dynamodb() -> Dynamo {
    let url = endpoint();
    let store = DynamoDbStore::connect(&url, &table())
        .await
        .unwrap_or_else(|e| panic!("no DynamoDB Local at {url} ({e}): start it with `scripts/services.sh start`"));
    Dynamo { store: Arc::new(store) }
}

#[async_trait::async_trait]
impl Harness for Dynamo {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        self.store
            .client()
            .update_item()
            .table_name(self.store.table())
            .key("session_key", AttributeValue::S(key.to_string()))
            .update_expression("SET #d = :n")
            .expression_attribute_names("#d", "data")
            .expression_attribute_values(":n", AttributeValue::N("7".to_owned()))
            .send()
            .await
            .expect("the corrupting update runs");
    }

    /// DynamoDB deletes expired items by the table's TTL on a clock of its
    /// own (within days), and `delete_expired_batch` leaves them to it.
    async fn holds(&self, _key: &StoreKey) -> Option<bool> {
        None
    }

    async fn work(&self) -> Option<u64> {
        Some(self.store.operations())
    }

    fn caps_logins_atomically(&self) -> bool {
        false
    }

    /// The table's TTL removes expired items, unreported.
    fn reports_expired_logins(&self) -> bool {
        false
    }
}

multisession::store_conformance_tests!(dynamodb());

fn record(data: serde_json::Value) -> multisession::Record {
    let now = time::OffsetDateTime::now_utc();
    multisession::Record {
        data: serde_json::from_value(data).expect("a map"),
        meta: multisession::Meta {
            user_id: None,
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::hours(1),
            absolute_expires_at: None,
            permanent: false,
            device: Default::default(),
            siblings: Default::default(),
        },
    }
}

fn change(keys: impl IntoIterator<Item = (String, serde_json::Value)>) -> Change {
    let now = time::OffsetDateTime::now_utc();
    let mut change = Change::new(now, now + time::Duration::hours(1));
    change.set = keys.into_iter().collect();
    change
}

/// Changes of 300 keys (past what one DynamoDB expression can name, so each
/// is read, changed and written whole, conditional on the version read) and
/// changes of one key, all at once on one session: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_data_writes_and_field_writes_at_once_lose_nothing() {
    let db = dynamodb().await;
    let store: Arc<dyn Store> = db.store.clone();
    let key = multisession::SessionId::generate().expect("rng").store_key();
    store.create(&key, &record(json!({"base": 0}))).await.expect("created");
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4 {
        let store = store.clone();
        writers.spawn(async move {
            let keys = (0..300).map(|i| (format!("big{writer}-{i}"), json!(i)));
            store.apply(&key, &change(keys)).await
        });
    }
    for writer in 0..20 {
        let store = store.clone();
        writers.spawn(async move { store.apply(&key, &change([(format!("small{writer}"), json!(writer))])).await });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("a writer task").expect("the change applies");
    }
    let data = store.load(&key).await.expect("loads").expect("the session is there").data;
    assert_eq!(data.len(), 1 + 4 * 300 + 20, "changes were lost");
    assert_eq!(data.get("big3-299"), Some(&json!(299)));
    assert_eq!(data.get("small19"), Some(&json!(19)));
}

/// A session past DynamoDB's 400 KB item limit is refused as too large, at
/// its creation and at a change, and the session it would have changed is
/// left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_the_item_limit_is_too_large() {
    let db = dynamodb().await;
    let big = json!("x".repeat(450 * 1024));
    let key = multisession::SessionId::generate().expect("rng").store_key();
    let err = db.store.create(&key, &record(json!({ "big": big }))).await.expect_err("a 450 KB item was stored");
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    db.store.create(&key, &record(json!({"n": 1}))).await.expect("created");
    let err = db.store.apply(&key, &change([("big".to_owned(), big)])).await.expect_err("grew past 400 KB");
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    let data = db.store.load(&key).await.expect("loads").expect("still there").data;
    assert_eq!(data.get("n"), Some(&json!(1)));
    assert!(!data.contains_key("big"));
}

/// `connect` makes a missing table, finds a made one again, and refuses a
/// table of another layout by name, before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_makes_the_table_once_and_refuses_a_foreign_one() {
    let db = dynamodb().await;
    let again = DynamoDbStore::connect(&endpoint(), db.store.table()).await.expect("the made table is found");
    assert_eq!(again.table(), db.store.table());

    let foreign = table();
    let key = aws_sdk_dynamodb::types::KeySchemaElement::builder()
        .attribute_name("id")
        .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
        .build()
        .expect("a key");
    let id = aws_sdk_dynamodb::types::AttributeDefinition::builder()
        .attribute_name("id")
        .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
        .build()
        .expect("an attribute");
    db.store
        .client()
        .create_table()
        .table_name(&foreign)
        .key_schema(key)
        .attribute_definitions(id)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .send()
        .await
        .expect("a foreign table is made");
    let err = DynamoDbStore::connect(&endpoint(), &foreign).await.expect_err("a foreign table was taken");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains(&foreign), "{err}");

    let err = DynamoDbStore::connect(&endpoint(), "no").await.expect_err("a two-letter table name");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

/// `dynamodb://HOST:PORT/TABLE` opens the store, as the demo and the TOML
/// configuration name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_url_opens_the_store() {
    let url = format!("dynamodb://{}/{}", endpoint().trim_start_matches("http://"), table());
    let store = multisession::store::open(&url, None).await.expect("the URL opens");
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid");
    let session = sessions.session([], Default::default());
    session.login("23").await.expect("login");
    session.commit().await.expect("commit");
    assert_eq!(sessions.user_sessions("23").await.expect("listed").len(), 1);
    let err = multisession::store::open(&url, Some("app")).await.expect_err("a key prefix");
    assert_eq!(err.kind(), ErrorKind::Config);
}

/// DynamoDB Local's jar, where `scripts/services.sh` put it.
fn jar_home() -> String {
    let home = std::env::var("MULTISESSION_DYNAMODB_HOME")
        .unwrap_or_else(|_| "/tmp/multisession-services/dynamodb-local/package/emulator".to_owned());
    assert!(
        std::path::Path::new(&home).join("DynamoDBLocal.jar").is_file(),
        "no DynamoDB Local at {home}: fetch it with `scripts/services.sh start`"
    );
    home
}

/// ListTables, as only DynamoDB answers it (DynamoDB Local wants an
/// Authorization header, and checks no signature).
const LIST_TABLES: &[u8] = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\
X-Amz-Target: DynamoDB_20120810.ListTables\r\nContent-Type: application/x-amz-json-1.0\r\n\
Authorization: AWS4-HMAC-SHA256 Credential=local/20240101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0\r\n\
Content-Length: 2\r\nConnection: close\r\n\r\n{}";

/// DynamoDB Local of the test's own, in memory (`persist: false`) or in a
/// database file of its folder.
fn own_dynamodb(persist: bool) -> OwnServer {
    let home = jar_home();
    OwnServer::with_probe(
        move |port, dir| {
            let mut java = Command::new("java");
            // It writes a metadata file where it runs.
            java.current_dir(dir);
            java.arg(format!("-Djava.library.path={home}/DynamoDBLocal_lib"));
            java.args(["-jar", &format!("{home}/DynamoDBLocal.jar"), "-disableTelemetry", "-sharedDb"]);
            if persist {
                java.arg("-dbPath").arg(dir);
            } else {
                java.arg("-inMemory");
            }
            java.args(["-port", &port.to_string()]);
            java
        },
        |port| outage::answers(port, LIST_TABLES, b"\"TableNames\""),
    )
}

/// DynamoDB Local in memory loses its tables with the process, which
/// DynamoDB never does: its restart here makes the table again, as the
/// table of a DynamoDB coming back would be there.
struct InMemory {
    server: OwnServer,
    table: &'static str,
}

impl Server for InMemory {
    fn start(&mut self) {
        self.server.start();
        let url = format!("http://127.0.0.1:{}", self.server.port);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(DynamoDbStore::connect(&url, self.table))
        })
        .expect("the table is made again");
    }

    fn kill(&mut self) {
        self.server.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_503_while_dynamodb_is_down_and_succeed_once_it_is_back() {
    let mut server = InMemory { server: own_dynamodb(false), table: "sessions" };
    let url = format!("http://127.0.0.1:{}", server.server.port);
    let store = DynamoDbStore::connect(&url, server.table).await.expect("connects");
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid");
    // DynamoDB Local runs in memory here (-inMemory): the device starts anew.
    outage::outage_gives_503_then_recovery(&mut server, sessions, false).await;
}

/// The same outage on a DynamoDB Local that keeps its database in a file:
/// every write acknowledged before the kill is still there after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamodb_that_persists_keeps_every_acknowledged_write_across_a_kill() {
    let mut server = own_dynamodb(true);
    let url = format!("http://127.0.0.1:{}", server.port);
    let store = DynamoDbStore::connect(&url, "sessions").await.expect("connects");
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid");
    outage::outage_gives_503_then_recovery(&mut server, sessions, true).await;
}

/// Of deletes of one session at the same moment, exactly one answers that
/// it deleted a live session: the engine relies on it to pick the one login
/// of two that replaced the same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_deletes_of_one_session_one_deletes_it() {
    let db = dynamodb().await;
    for _ in 0..50 {
        let key = multisession::SessionId::generate().expect("rng").store_key();
        db.store.create(&key, &record(json!({"n": 1}))).await.expect("created");
        let mut deletes = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let store = db.store.clone();
            deletes.spawn(async move { store.delete(&key).await });
        }
        let mut deleted = 0;
        while let Some(done) = deletes.join_next().await {
            deleted += u32::from(done.expect("a delete task").expect("the delete succeeds"));
        }
        assert_eq!(deleted, 1, "{deleted} of 4 concurrent deletes said they deleted the session");
    }
}
