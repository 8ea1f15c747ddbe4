//! A span around every store call, whoever makes it.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument as _;

use super::{ExpiredBatch, PageCursor, SessionInfo, SessionsPage, Store};
use crate::{Change, Record, Result, SessionLimit, StoreKey};

/// Wraps the store a [`Sessions`](crate::Sessions) uses, so that each call
/// runs in a `store` span named for the operation. Keys, ids and data are
/// never recorded.
pub(crate) struct Traced(pub(crate) Arc<dyn Store>);

fn span(op: &'static str) -> tracing::Span {
    tracing::debug_span!("store", op)
}

#[async_trait]
impl Store for Traced {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        self.0.load(key).instrument(span("load")).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        self.0.create(key, record).instrument(span("create")).await
    }
    async fn create_login(
        &self,
        key: &StoreKey,
        record: &Record,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        self.0.create_login(key, record, replaces, limit).instrument(span("create_login")).await
    }
    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let op = if change.alters() { "apply" } else { "touch" };
        self.0.apply(key, change).instrument(span(op)).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        self.0.delete(key).instrument(span("delete")).await
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        self.0.user_sessions(user).instrument(span("user_sessions")).await
    }
    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        self.0.delete_user_sessions(user, keep).instrument(span("delete_user_sessions")).await
    }
    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        self.0.delete_expired_batch().instrument(span("delete_expired_batch")).await
    }
    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        self.0.sessions_page(cursor, limit).instrument(span("sessions_page")).await
    }
}
