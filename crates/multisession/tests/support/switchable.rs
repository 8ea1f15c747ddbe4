//! A memory store that can be switched off like an unreachable backend.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use multisession::store::{MemoryStore, SessionInfo, Store};
use multisession::{Change, Error, Record, Result, StoreKey};

/// A real memory store behind a switch that makes every call fail as an
/// unreachable backend does.
#[derive(Default)]
pub struct Switchable {
    pub inner: MemoryStore,
    pub down: AtomicBool,
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
    async fn delete_expired_batch(&self) -> Result<multisession::store::ExpiredBatch> {
        self.check()?;
        self.inner.delete_expired_batch().await
    }
}
