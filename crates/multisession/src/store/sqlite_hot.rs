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
//! - A change goes to the store's writer thread, which owns the one
//!   connection that applies changes. It takes every change waiting (at
//!   most [`BATCH`]) into one immediate transaction, so that concurrent
//!   writes share a commit, and answers each once that commit is done.
//!
//! Logins, deletes, listings and the schema stay on sqlx's connections.
//! Every write of the store, on either side, first takes its turn at one
//! fair lock ([`HotPath::write_turn`]), so that writers queue in order
//! instead of meeting in SQLite's busy handler, whose sleeps can starve one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::sql::MetaColumns;
use crate::{Change, Error, ErrorKind, Record, Result};

/// Idle connections kept for reuse; more concurrent readers open their own.
const IDLE: usize = 8;

/// Changes committed together at most, and changes waiting for the writer
/// at most (the rest wait to be queued).
const BATCH: usize = 64;

/// How long a change waits for the database's write lock (held by another
/// process) or for its turn in the queue before the store answers
/// `Unavailable`.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a read waits for a lock. In WAL mode a reader waits only for
/// rare work such as recovery after a crash, and it waits on the request's
/// own thread, so briefly.
const READ_TIMEOUT: Duration = Duration::from_millis(250);

/// Connections to one SQLite file for reading sessions and applying changes.
pub(super) struct HotPath {
    files: Arc<Files>,
    idle: Mutex<Vec<Connection>>,
    /// The writer thread's queue; the thread ends when this is dropped.
    changes: mpsc::Sender<Job>,
}

/// The turn to write, for every writer of one store.
pub(super) type WriteTurn<'a> = tokio::sync::MutexGuard<'a, ()>;

/// The file and the statements on its table.
struct Files {
    path: PathBuf,
    /// The `SELECT` of one live session, with the table name in it.
    load_sql: String,
    /// The statements of a change, with the table name in them.
    data_sql: String,
    update_sql: String,
    touch_sql: String,
    /// Whose turn it is to write: the writer thread's batches and the
    /// store's other writes take turns, first come first served.
    turn: tokio::sync::Mutex<()>,
}

/// One change for the writer thread, and where to answer.
struct Job {
    namespace: String,
    key: String,
    change: Change,
    now_ms: i64,
    /// Past this, the change is answered `Unavailable` without being tried.
    deadline: Instant,
    done: oneshot::Sender<Result<bool>>,
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
        let files = Arc::new(Files {
            path,
            load_sql,
            data_sql: format!("SELECT data FROM {table} {live}"),
            update_sql: format!(
                "UPDATE {table} SET data = ?4, permanent = COALESCE(?5, permanent), \
                 siblings = COALESCE(?6, siblings), last_active_at = ?7, expires_at = ?8 {live}"
            ),
            touch_sql: format!("UPDATE {table} SET last_active_at = ?4, expires_at = ?5 {live}"),
            turn: tokio::sync::Mutex::new(()),
        });
        // Open one now, so a file that cannot be read fails at start-up.
        let first = files.connect(READ_TIMEOUT)?;
        let (changes, queue) = mpsc::channel(BATCH);
        let writer = Arc::clone(&files);
        std::thread::Builder::new()
            .name("multisession-sqlite-writer".to_owned())
            .spawn(move || writer.write(queue))
            .map_err(|e| Error::unavailable("the SQLite session store could not start its writer thread", e))?;
        let hot = Self { files, idle: Mutex::new(Vec::new()), changes };
        hot.put_back(first);
        Ok(hot)
    }
}

impl Files {
    /// A connection whose statements wait at most `busy` for a lock.
    fn connect(&self, busy: Duration) -> Result<Connection> {
        // Read-write (though it only reads): a read-only connection cannot
        // create the WAL's shared-memory file when no other connection has it.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(unavailable)?;
        conn.busy_timeout(busy).map_err(unavailable)?;
        // As on the store's other connections (see `SqlStore::connect_with`).
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
        Ok(conn)
    }
}

impl HotPath {
    fn take(&self) -> Result<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => self.files.connect(READ_TIMEOUT),
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
        let result = self.files.load_on(&conn, namespace, key, now_ms);
        // A connection that failed is dropped, not reused.
        if !matches!(result, Err(ref e) if e.kind() == ErrorKind::Unavailable) {
            self.put_back(conn);
        }
        result
    }

    /// Applies `change` to the live session `key` names; `false` if there is
    /// none.
    pub(super) async fn apply(&self, namespace: &str, key: &str, change: &Change, now_ms: i64) -> Result<bool> {
        let (done, answer) = oneshot::channel();
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let change = change.clone();
        let job = Job { namespace: namespace.to_owned(), key: key.to_owned(), change, now_ms, deadline, done };
        match tokio::time::timeout(WRITE_TIMEOUT, self.changes.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(writer_gone()),
            Err(_) => return Err(too_busy()),
        }
        answer.await.map_err(|_| writer_gone())?
    }

    /// Waits for this store's turn to write, for a write outside the writer
    /// thread; `Unavailable` after [`WRITE_TIMEOUT`].
    pub(super) async fn write_turn(&self) -> Result<WriteTurn<'_>> {
        tokio::time::timeout(WRITE_TIMEOUT, self.files.turn.lock()).await.map_err(|_| too_busy())
    }
}

impl Files {
    /// The writer thread: applies changes as they come, those waiting
    /// together, until the store is dropped.
    fn write(&self, mut queue: mpsc::Receiver<Job>) {
        let mut conn: Option<Connection> = None;
        let mut jobs = Vec::with_capacity(BATCH);
        while let Some(job) = queue.blocking_recv() {
            jobs.push(job);
            while jobs.len() < BATCH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            // Changes that waited too long are answered, not tried.
            let now = Instant::now();
            for job in jobs.extract_if(.., |job| job.deadline <= now) {
                let _ = job.done.send(Err(too_busy()));
            }
            if jobs.is_empty() {
                continue;
            }
            if conn.is_none() {
                conn = self.connect(WRITE_TIMEOUT).ok();
            }
            let turn = self.turn.blocking_lock();
            let results = match conn.as_mut() {
                Some(c) => self.commit_together(c, &jobs),
                None => Err(Error::new(ErrorKind::Unavailable, "the SQLite session store cannot open its file")),
            };
            drop(turn);
            match results {
                Ok(results) => {
                    for (job, result) in jobs.drain(..).zip(results) {
                        let _ = job.done.send(result);
                    }
                }
                Err(e) => {
                    // Nothing of this batch was kept. A connection that
                    // failed is not reused, nor one left in a transaction.
                    conn = None;
                    for job in jobs.drain(..) {
                        let _ = job.done.send(Err(Error::new(e.kind(), e.to_string())));
                    }
                }
            }
        }
    }

    /// `jobs` in one immediate transaction: each one's answer, or the
    /// error that undid them all. A change that finds no session, or a
    /// stored row that does not decode, answers alone.
    fn commit_together(&self, conn: &mut Connection, jobs: &[Job]) -> Result<Vec<Result<bool>>> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.apply_on(&tx, &job.namespace, &job.key, &job.change, job.now_ms) {
                Err(e) if e.kind() == ErrorKind::Unavailable => return Err(e),
                result => results.push(result),
            }
        }
        tx.commit().map_err(unavailable)?;
        Ok(results)
    }

    /// One change, inside the writer's transaction.
    fn apply_on(&self, tx: &Connection, namespace: &str, key: &str, change: &Change, now_ms: i64) -> Result<bool> {
        let last_active = crate::record::to_millis(change.last_active_at);
        let expires = crate::record::to_millis(change.expires_at);
        if !change.alters() {
            let mut touch = tx.prepare_cached(&self.touch_sql).map_err(unavailable)?;
            return Ok(touch.execute((namespace, key, now_ms, last_active, expires)).map_err(unavailable)? > 0);
        }
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
        Ok(updated > 0)
    }

    fn load_on(&self, conn: &Connection, namespace: &str, key: &str, now_ms: i64) -> Result<Option<Record>> {
        let mut statement = conn.prepare_cached(&self.load_sql).map_err(unavailable)?;
        let row = statement
            .query_row((namespace, key, now_ms), |row| {
                let data: String = row.get(0)?;
                let meta = MetaColumns {
                    user_id: row.get(1)?,
                    created_at: row.get(2)?,
                    last_active_at: row.get(3)?,
                    expires_at: row.get(4)?,
                    absolute_expires_at: row.get(5)?,
                    permanent: row.get(6)?,
                    user_agent: row.get(7)?,
                    ip: row.get(8)?,
                    siblings: row.get(9)?,
                };
                Ok((data, meta))
            })
            .optional()
            .map_err(read_error)?;
        let Some((data, meta)) = row else { return Ok(None) };
        Ok(Some(Record { data: super::sql::data(&data)?, meta: meta.into_meta()? }))
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
        ErrorKind::Unavailable,
        format!("the SQLite session store failed ({code}); the database file may be locked, full or unreadable"),
    )
}

fn writer_gone() -> Error {
    Error::new(ErrorKind::Unavailable, "the SQLite session store failed: its writer thread has stopped")
}

fn too_busy() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the SQLite session store failed: its writes waited over 2 seconds for the database",
    )
}
