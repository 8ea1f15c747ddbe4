//! The store conformance suite on a MongoDB wire-protocol server (nx-27017
//! from `scripts/services.sh`, or a real mongod through
//! MULTISESSION_MONGO_URL), awkward keys, and a server restart.

mod common;
#[path = "support/outage.rs"]
mod outage;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mongodb::bson::doc;
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use multisession::StoreKey;
use multisession::store::{MongoStore, Store};
use multisession::testing::Harness;
use multisession::{SessionConfig, Sessions};
use outage::OwnServer;

fn url() -> String {
    std::env::var("MULTISESSION_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27090/multisession_test?directConnection=true".to_owned())
}

struct Mongo {
    store: Arc<MongoStore>,
    commands: Arc<AtomicU64>,
}

/// A store in a collection of the test's own, on a client that counts the
/// commands it sends.
async fn mongo() -> Mongo {
    let url = url();
    let mut options = mongodb::options::ClientOptions::parse(&url).await.expect("a MongoDB URL");
    let commands = Arc::new(AtomicU64::new(0));
    let counter = commands.clone();
    options.command_event_handler = Some(EventHandler::callback(move |event: CommandEvent| {
        let bookkeeping = ["hello", "isMaster", "ismaster", "ping", "endSessions", "buildInfo"];
        if let CommandEvent::Started(started) = event
            && !bookkeeping.contains(&started.command_name.as_str())
        {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }));
    let database = options.default_database.clone().unwrap_or_else(|| "multisession_test".to_owned());
    let client = mongodb::Client::with_options(options).expect("a client");
    let key = multisession::SessionId::generate().expect("rng").store_key().to_string();
    let store = MongoStore::from_database(&client.database(&database), &format!("t_{}", &key[..12]))
        .await
        .unwrap_or_else(|e| panic!("no MongoDB at {url} ({e}): start nx-27017 with `scripts/services.sh start`"));
    Mongo { store: Arc::new(store), commands }
}

#[async_trait::async_trait]
impl Harness for Mongo {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        let update = doc! { "$set": { "data": "not a document" } };
        let done = self.store.collection().update_one(doc! { "_id": key.to_string() }, update).await.expect("updated");
        assert_eq!(done.matched_count, 1);
    }

    async fn holds(&self, key: &StoreKey) -> Option<bool> {
        let count = self.store.collection().count_documents(doc! { "_id": key.to_string() }).await.expect("counted");
        Some(count > 0)
    }

    async fn work(&self) -> Option<u64> {
        Some(self.commands.load(Ordering::SeqCst))
    }

    fn caps_logins_atomically(&self) -> bool {
        false
    }

    /// The TTL index removes expired documents too, unreported.
    fn reports_expired_logins(&self) -> bool {
        false
    }
}

multisession::store_conformance_tests!(mongo());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_mongodb_cannot_take_as_field_names_round_trip() {
    let db = mongo().await;
    let sessions = Sessions::new(db.store(), SessionConfig::default()).expect("valid");
    let session = sessions.session([], Default::default());
    for (key, value) in [("a.b", 1), ("$x", 2), ("", 3)] {
        session.insert(key, value).await.expect("insert");
    }
    let cookie = session.commit().await.expect("commit").set_cookies.remove(0);
    let header = cookie.split(';').next().expect("name=value").to_owned();
    let again = sessions.session([header.as_bytes()], Default::default());
    for (key, value) in [("a.b", 1), ("$x", 2), ("", 3)] {
        assert_eq!(again.get::<i32>(key).await.expect("read"), Some(value), "key {key:?}");
    }
    again.insert("a.b", 10).await.expect("insert");
    again.remove("$x").await.expect("remove");
    again.commit().await.expect("commit");
    let third = sessions.session([header.as_bytes()], Default::default());
    assert_eq!(third.get::<i32>("a.b").await.expect("read"), Some(10));
    assert_eq!(third.get::<i32>("$x").await.expect("read"), None);
    assert_eq!(third.get::<i32>("").await.expect("read"), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_503_while_the_server_is_down_and_succeed_once_it_is_back() {
    let mut server = OwnServer::new(|port, dir| {
        let services =
            std::env::var("MULTISESSION_SERVICES_DIR").unwrap_or_else(|_| "/tmp/multisession-services".to_owned());
        let mut nx = Command::new(format!("{services}/nx-venv/bin/nx-27017"));
        nx.args(["--host", "127.0.0.1", "-p", &port.to_string(), "--db", "memory", "--threaded"]);
        // nx-27017 refuses a second instance that shares its default pid file.
        nx.arg("--pid-file").arg(dir.join("nx.pid"));
        nx
    });
    let url = format!("mongodb://127.0.0.1:{}/outage?directConnection=true", server.port);
    let store = MongoStore::connect(&url, "sessions").await.expect("connects");
    let sessions = Sessions::new(store, SessionConfig::default()).expect("valid");
    // nx-27017 runs in memory here: the device starts anew.
    outage::outage_gives_503_then_recovery(&mut server, sessions, false).await;
}
