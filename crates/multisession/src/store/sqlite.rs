//! The embedded default: sessions in a SQLite file, through sqlx.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::{SessionInfo, Store};
use crate::{Change, Device, Error, ErrorKind, Meta, Record, Result, StoreKey};

/// Rows removed per statement by [`Store::delete_expired`], so cleanup never
/// holds the write lock for long.
const EXPIRED_BATCH: i64 = 500;

/// Sessions in a SQLite database: one row per session with the user id and
/// expiry as indexed columns, the data as a JSON object.
///
/// The table (`sessions`) and its indexes are created when the store opens.
/// Field-level changes run as a read-modify-write inside one `BEGIN
/// IMMEDIATE` transaction: SQLite serialises writers, so concurrent requests
/// that set different keys all survive, and a change to a deleted session
/// finds no row and reports `Gone` instead of recreating it.
///
/// `key_prefix` (default `session`) separates applications that share one
/// database file: each sees only its own sessions and users.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::{SqliteStore, Store};
///
/// let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
/// let store = SqliteStore::open(dir.path().join("sessions.db")).await?;
/// assert_eq!(store.delete_expired().await?, 0);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    prefix: String,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sessions (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        user_id TEXT,
        data TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_active_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        absolute_expires_at INTEGER,
        permanent INTEGER NOT NULL,
        user_agent TEXT,
        ip TEXT,
        PRIMARY KEY (namespace, key)
    )",
    // A rowid table: WITHOUT ROWID makes the planner prefer a walk of the
    // primary key over this index (checked by `user_queries_use_index`).
    "CREATE INDEX IF NOT EXISTS sessions_user ON sessions (namespace, user_id)",
    "CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires_at)",
];

const USER_SESSIONS_SQL: &str = "SELECT key, user_id, created_at, last_active_at, expires_at, absolute_expires_at,
    permanent, user_agent, ip FROM sessions WHERE namespace = ? AND user_id = ? AND expires_at > ?";
const LOAD_SQL: &str = "SELECT key, user_id, created_at, last_active_at, expires_at, absolute_expires_at,
    permanent, user_agent, ip, data FROM sessions WHERE namespace = ? AND key = ? AND expires_at > ?";
const DELETE_USER_SQL: &str =
    "DELETE FROM sessions WHERE namespace = ? AND user_id = ? AND key IS NOT ? AND expires_at > ?";

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, in WAL mode,
    /// and creates the table and indexes.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the file cannot be opened or the schema not created.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqliteStore::open(dir.path().join("sessions.db")).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| Error::unavailable("cannot open the SQLite session database", e))?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool (which must point at a file, not `:memory:`,
    /// unless it holds a single connection), creating the table and indexes.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the schema cannot be created.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1)
    ///     .connect("sqlite::memory:").await
    ///     .map_err(|e| multisession::Error::unavailable("sqlite", e))?;
    /// let store = multisession::store::SqliteStore::from_pool(pool).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&pool).await.map_err(db_error)?;
        }
        Ok(Self { pool, prefix: "session".to_owned() })
    }

    /// Keeps this store's sessions apart from other applications' in the same
    /// database (default `session`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqliteStore::open(dir.path().join("s.db")).await?.with_key_prefix("shop");
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The connection pool, for tooling and tests.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqliteStore::open(dir.path().join("s.db")).await?;
    /// assert!(!store.pool().is_closed());
    /// # Ok(()) }
    /// ```
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Whether SQLite's planner answers every per-user statement of this
    /// store through the user index rather than a table scan (`EXPLAIN QUERY
    /// PLAN`), for the conformance suite.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the database cannot be asked.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqliteStore::open(dir.path().join("s.db")).await?;
    /// assert!(store.user_queries_use_index().await?);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "testing")]
    pub async fn user_queries_use_index(&self) -> Result<bool> {
        let mut indexed = true;
        for sql in [USER_SESSIONS_SQL, DELETE_USER_SQL] {
            let mut query =
                sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))).bind(&self.prefix).bind("user");
            if sql == DELETE_USER_SQL {
                query = query.bind(None::<String>);
            }
            let rows = query.bind(0_i64).fetch_all(&self.pool).await.map_err(db_error)?;
            let plan: Vec<String> = rows.iter().filter_map(|r| r.try_get::<String, _>("detail").ok()).collect();
            indexed &= plan.iter().any(|step| step.contains("USING INDEX sessions_user"))
                && !plan.iter().any(|step| step.starts_with("SCAN"));
        }
        Ok(indexed)
    }

    /// A touch: one UPDATE of the times, without reading or rewriting data.
    async fn touch(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let done = sqlx::query(
            "UPDATE sessions SET last_active_at = ?, expires_at = ?
             WHERE namespace = ? AND key = ? AND expires_at > ?",
        )
        .bind(millis(change.last_active_at))
        .bind(millis(change.expires_at))
        .bind(&self.prefix)
        .bind(key.to_string())
        .bind(millis(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 { Err(Error::gone()) } else { Ok(()) }
    }

    fn info(row: &SqliteRow) -> Result<SessionInfo> {
        let meta = meta(row)?;
        let key: String = row.try_get("key").map_err(db_error)?;
        SessionInfo::from_meta(key.parse()?, &meta).ok_or_else(|| Error::corrupt("a user's session row has no user"))
    }
}

fn millis(t: OffsetDateTime) -> i64 {
    crate::record::to_millis(t)
}

fn from_millis(ms: i64) -> Result<OffsetDateTime> {
    crate::record::from_millis(ms).ok_or_else(|| Error::corrupt("a stored timestamp is out of range"))
}

fn db_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::new(ErrorKind::Conflict, "a session with this key exists").with_source(e)
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            Error::corrupt("a stored session row does not decode").with_source(e)
        }
        _ => Error::unavailable("the SQLite session store failed", e),
    }
}

fn meta(row: &SqliteRow) -> Result<Meta> {
    let get_ms = |column: &str| -> Result<i64> { row.try_get(column).map_err(db_error) };
    let ip: Option<String> = row.try_get("ip").map_err(db_error)?;
    let ip = ip
        .map(|ip| {
            IpAddr::from_str(&ip).map_err(|e| Error::corrupt("a stored client address does not parse").with_source(e))
        })
        .transpose()?;
    let absolute: Option<i64> = row.try_get("absolute_expires_at").map_err(db_error)?;
    Ok(Meta {
        user_id: row.try_get("user_id").map_err(db_error)?,
        created_at: from_millis(get_ms("created_at")?)?,
        last_active_at: from_millis(get_ms("last_active_at")?)?,
        expires_at: from_millis(get_ms("expires_at")?)?,
        absolute_expires_at: absolute.map(from_millis).transpose()?,
        permanent: row.try_get("permanent").map_err(db_error)?,
        device: Device { user_agent: row.try_get("user_agent").map_err(db_error)?, ip },
    })
}

fn data(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text)? {
        Value::Object(map) => Ok(map),
        _ => Err(Error::corrupt("stored session data is not a JSON object")),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        let row = sqlx::query(LOAD_SQL)
            .bind(&self.prefix)
            .bind(key.to_string())
            .bind(millis(OffsetDateTime::now_utc()))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get("data").map_err(db_error)?;
        Ok(Some(Record { data: data(&text)?, meta: meta(&row)? }))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        let meta = &record.meta;
        sqlx::query(
            "INSERT INTO sessions (namespace, key, user_id, data, created_at, last_active_at, expires_at,
                absolute_expires_at, permanent, user_agent, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&self.prefix)
        .bind(key.to_string())
        .bind(&meta.user_id)
        .bind(serde_json::to_string(&record.data)?)
        .bind(millis(meta.created_at))
        .bind(millis(meta.last_active_at))
        .bind(millis(meta.expires_at))
        .bind(meta.absolute_expires_at.map(millis))
        .bind(meta.permanent)
        .bind(&meta.device.user_agent)
        .bind(meta.device.ip.map(|ip| ip.to_string()))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        if !change.alters() {
            return self.touch(key, change).await;
        }
        let key = key.to_string();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
        let row = sqlx::query("SELECT data FROM sessions WHERE namespace = ? AND key = ? AND expires_at > ?")
            .bind(&self.prefix)
            .bind(&key)
            .bind(millis(OffsetDateTime::now_utc()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some(row) = row else { return Err(Error::gone()) };
        let mut map = data(&row.try_get::<String, _>("data").map_err(db_error)?)?;
        change.apply_to_data(&mut map);
        sqlx::query(
            "UPDATE sessions SET data = ?, permanent = COALESCE(?, permanent), last_active_at = ?, expires_at = ?
             WHERE namespace = ? AND key = ?",
        )
        .bind(serde_json::to_string(&map)?)
        .bind(change.permanent)
        .bind(millis(change.last_active_at))
        .bind(millis(change.expires_at))
        .bind(&self.prefix)
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        let done = sqlx::query("DELETE FROM sessions WHERE namespace = ? AND key = ?")
            .bind(&self.prefix)
            .bind(key.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        let rows = sqlx::query(USER_SESSIONS_SQL)
            .bind(&self.prefix)
            .bind(user)
            .bind(millis(OffsetDateTime::now_utc()))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(Self::info).collect()
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        let done = sqlx::query(DELETE_USER_SQL)
            .bind(&self.prefix)
            .bind(user)
            .bind(keep.map(StoreKey::to_string))
            .bind(millis(OffsetDateTime::now_utc()))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn delete_expired(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM sessions WHERE rowid IN (SELECT rowid FROM sessions WHERE expires_at <= ? LIMIT ?)",
            )
            .bind(millis(OffsetDateTime::now_utc()))
            .bind(EXPIRED_BATCH)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
            total += done.rows_affected();
            if done.rows_affected() < EXPIRED_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
