//! The SQLite store's hot path: reading a session and applying a request's
//! change to it, through rusqlite over the same bundled SQLite as sqlx.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every
//! statement and row across channels. For these small statements that
//! hand-off was the whole cost: under load more than half the server's CPU
//! went to waking threads, and SQLite's own work was under 1%.
//!
//! - A read takes an idle connection and runs one cached statement on the
//!   calling thread. In WAL mode a reader never waits for a writer, so this
//!   takes microseconds.
//! - A change runs on a blocking thread, on the one connection that applies
//!   changes, as one immediate transaction: one hand-off instead of four.
//!
//! Logins, deletes, listings and the schema stay on sqlx's connections.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use std::sync::Arc;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::{Change, Device, Error, Meta, Record, Result};

/// Idle connections kept for reuse; more concurrent readers open their own.
const IDLE: usize = 8;

/// How long a statement waits for a lock (a read, only for a checkpoint's
/// reset of the WAL) before the store answers `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections to one SQLite file for reading sessions and applying changes.
pub(super) struct HotPath {
    path: PathBuf,
    /// The `SELECT` of one live session, with the table name in it.
    load_sql: String,
    /// The statements of a change, with the table name in them.
    data_sql: String,
    update_sql: String,
    touch_sql: String,
    idle: Mutex<Vec<Connection>>,
    /// The connection that applies changes, opened when first needed.
    writer: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for HotPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotPath").finish_non_exhaustive()
    }
}

impl HotPath {
    /// The hot path of `table` in the file at `path`, which must exist (the
    /// store has created it and its table first).
    pub(super) fn new(path: PathBuf, table: &str) -> Result<Self> {
        let load_sql = format!(
            "SELECT data, user_id, created_at, last_active_at, expires_at, absolute_expires_at, permanent, \
             user_agent, ip, siblings FROM {table} WHERE namespace = ?1 AND session_key = ?2 AND expires_at > ?3"
        );
        let live = "WHERE namespace = ?1 AND session_key = ?2 AND expires_at > ?3";
        let reads = Self {
            path,
            load_sql,
            data_sql: format!("SELECT data FROM {table} {live}"),
            update_sql: format!(
                "UPDATE {table} SET data = ?4, permanent = COALESCE(?5, permanent), \
                 siblings = COALESCE(?6, siblings), last_active_at = ?7, expires_at = ?8 {live}"
            ),
            touch_sql: format!("UPDATE {table} SET last_active_at = ?4, expires_at = ?5 {live}"),
            idle: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
        };
        // Open one now, so a file that cannot be read fails at start-up.
        let conn = reads.connect()?;
        reads.put_back(conn);
        Ok(reads)
    }

    fn connect(&self) -> Result<Connection> {
        // Read-write (though it only reads): a read-only connection cannot
        // create the WAL's shared-memory file when no other connection has it.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(unavailable)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        // As on the store's other connections (see `SqlStore::connect_with`).
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn put_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE
        {
            idle.push(conn);
        }
    }

    /// The live session `key` names in `namespace`, if any.
    pub(super) fn load(&self, namespace: &str, key: &str, now_ms: i64) -> Result<Option<Record>> {
        let conn = self.take()?;
        let result = self.load_on(&conn, namespace, key, now_ms);
        // A connection that failed is dropped, not reused.
        if !matches!(result, Err(ref e) if e.kind() == crate::ErrorKind::Unavailable) {
            self.put_back(conn);
        }
        result
    }

    /// Applies `change` to the live session `key` names; `false` if there is
    /// none.
    pub(super) async fn apply(
        self: &Arc<Self>,
        namespace: &str,
        key: &str,
        change: &Change,
        now_ms: i64,
    ) -> Result<bool> {
        let (this, namespace, key, change) = (Arc::clone(self), namespace.to_owned(), key.to_owned(), change.clone());
        tokio::task::spawn_blocking(move || {
            let mut writer = this.writer.lock().map_err(|_| {
                Error::new(crate::ErrorKind::Unavailable, "the SQLite session store failed: a change panicked")
            })?;
            if writer.is_none() {
                *writer = Some(this.connect()?);
            }
            let Some(conn) = writer.as_mut() else {
                return Err(Error::new(crate::ErrorKind::Unavailable, "the SQLite session store has no connection"));
            };
            let result = this.apply_on(conn, &namespace, &key, &change, now_ms);
            if matches!(result, Err(ref e) if e.kind() == crate::ErrorKind::Unavailable) {
                // Never reuse a connection that failed, nor one left in a transaction.
                *writer = None;
            }
            result
        })
        .await
        .map_err(|e| Error::unavailable("a write of the SQLite session store failed", e))?
    }

    fn apply_on(
        &self,
        conn: &mut Connection,
        namespace: &str,
        key: &str,
        change: &Change,
        now_ms: i64,
    ) -> Result<bool> {
        let last_active = crate::record::to_millis(change.last_active_at);
        let expires = crate::record::to_millis(change.expires_at);
        if !change.alters() {
            let mut touch = conn.prepare_cached(&self.touch_sql).map_err(unavailable)?;
            return Ok(touch.execute((namespace, key, now_ms, last_active, expires)).map_err(unavailable)? > 0);
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
        let data: Option<String> = tx
            .prepare_cached(&self.data_sql)
            .map_err(unavailable)?
            .query_row((namespace, key, now_ms), |row| row.get(0))
            .optional()
            .map_err(read_error)?;
        let Some(data) = data else { return Ok(false) };
        let mut map = super::sql::data(&data)?;
        change.apply_to_data(&mut map);
        // `{}` rather than NULL for no siblings, which COALESCE would keep.
        let siblings = change.siblings.as_ref().map(serde_json::to_string).transpose()?;
        let updated = tx
            .prepare_cached(&self.update_sql)
            .map_err(unavailable)?
            .execute(rusqlite::params![
                namespace,
                key,
                now_ms,
                serde_json::to_string(&map)?,
                change.permanent.map(i64::from),
                siblings,
                last_active,
                expires
            ])
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(updated > 0)
    }

    fn load_on(&self, conn: &Connection, namespace: &str, key: &str, now_ms: i64) -> Result<Option<Record>> {
        let mut statement = conn.prepare_cached(&self.load_sql).map_err(unavailable)?;
        let row = statement
            .query_row((namespace, key, now_ms), |row| {
                Ok(Row {
                    data: row.get(0)?,
                    user_id: row.get(1)?,
                    created_at: row.get(2)?,
                    last_active_at: row.get(3)?,
                    expires_at: row.get(4)?,
                    absolute_expires_at: row.get(5)?,
                    permanent: row.get(6)?,
                    user_agent: row.get(7)?,
                    ip: row.get(8)?,
                    siblings: row.get(9)?,
                })
            })
            .optional()
            .map_err(read_error)?;
        row.map(Row::into_record).transpose()
    }
}

/// One session row as SQLite typed it.
struct Row {
    data: String,
    user_id: Option<String>,
    created_at: i64,
    last_active_at: i64,
    expires_at: i64,
    absolute_expires_at: Option<i64>,
    permanent: i64,
    user_agent: Option<String>,
    ip: Option<String>,
    siblings: Option<String>,
}

impl Row {
    fn into_record(self) -> Result<Record> {
        let time =
            |ms| crate::record::from_millis(ms).ok_or_else(|| Error::corrupt("a stored timestamp is out of range"));
        let ip = self
            .ip
            .map(|ip| IpAddr::from_str(&ip).map_err(|_| Error::corrupt("a stored client address does not parse")))
            .transpose()?;
        let siblings = self.siblings.map(|text| serde_json::from_str(&text)).transpose()?.unwrap_or_default();
        let meta = Meta {
            user_id: self.user_id,
            created_at: time(self.created_at)?,
            last_active_at: time(self.last_active_at)?,
            expires_at: time(self.expires_at)?,
            absolute_expires_at: self.absolute_expires_at.map(time).transpose()?,
            permanent: self.permanent != 0,
            device: Device { user_agent: self.user_agent, ip },
            siblings,
        };
        Ok(Record { data: super::sql::data(&self.data)?, meta })
    }
}

/// A column of the wrong type is a corrupt row; anything else, the store
/// failing. SQLite's own message may quote a value, so it is not kept.
fn read_error(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => Error::corrupt("a stored session row does not decode"),
        e => unavailable(e),
    }
}

fn unavailable(e: rusqlite::Error) -> Error {
    let code = e.sqlite_error_code().map_or_else(|| "unknown".to_owned(), |code| format!("{code:?}"));
    Error::new(
        crate::ErrorKind::Unavailable,
        format!("the SQLite session store failed ({code}); the database file may be locked, full or unreadable"),
    )
}
