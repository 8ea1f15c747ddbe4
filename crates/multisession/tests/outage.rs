//! A store that cannot be reached gives 503 and a log line without the
//! session id, and routes that do not need the session keep working.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use common::{Device, app};
use multisession::store::{MemoryStore, SessionInfo, Store};
use multisession::{Change, Error, Record, Result, SessionConfig, Sessions, StoreKey};

/// A real memory store behind a switch that makes every call fail as an
/// unreachable backend does.
#[derive(Default)]
struct Switchable {
    inner: MemoryStore,
    down: AtomicBool,
}

impl Switchable {
    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::unavailable("connection refused", std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Switchable {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        self.check()?;
        self.inner.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        self.check()?;
        self.inner.create(key, record).await
    }
    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        self.check()?;
        self.inner.apply(key, change).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        self.check()?;
        self.inner.delete(key).await
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        self.check()?;
        self.inner.user_sessions(user).await
    }
    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        self.check()?;
        self.inner.delete_user_sessions(user, keep).await
    }
    async fn delete_expired(&self) -> Result<u64> {
        self.check()?;
        self.inner.delete_expired().await
    }
}

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_unreachable_store_gives_503_and_recovers_without_restart() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = Arc::new(Switchable::default());
    let router = app(Sessions::new(store.clone(), SessionConfig::default()).expect("valid config"));
    let mut device = Device::new(router, "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    device.get("/write").await;
    let cookie = common::session_cookie(&device).expect("logged in");

    store.down.store(true, Ordering::SeqCst);
    for path in ["/read", "/write", "/login/24", "/logout_all", "/devices"] {
        let reply = device.get(path).await;
        assert_eq!(reply.status, 503, "{path} during the outage");
        assert!(!reply.body.contains(&cookie), "the body leaks the session id");
    }
    assert_eq!(device.get("/none").await.status, 200, "a route without the session failed");

    store.down.store(false, Ordering::SeqCst);
    assert_eq!(device.get("/read").await.body, "user=23 n=1", "the session did not survive the outage");

    let logs = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8 logs");
    assert!(logs.contains("session store unavailable"), "no log line for the outage:\n{logs}");
    assert!(!logs.contains(&cookie), "the logs contain the session id");
}
