//! Sessions in SQL: SQLite (the embedded default), PostgreSQL and
//! MySQL/MariaDB, from one implementation with per-dialect statements.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::{EXPIRED_BATCH, ExpiredBatch, PageCursor, SessionInfo, SessionsPage, Store};
use crate::{Change, Device, Error, ErrorKind, Meta, Record, Result, SessionLimit, StoreKey};

/// How long a request waits for a connection before the store answers
/// `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The SQL databases the store speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// SQLite 3 (bundled).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

/// Where a [`SqlStore`] keeps its rows: table `sessions` by default,
/// optionally in a named schema (PostgreSQL) or database (MySQL). Names are
/// checked as plain identifiers (letters, digits, `_`; at most 63).
///
/// ```
/// let options = multisession::store::SqlOptions::default().table("web_sessions").schema("auth");
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct SqlOptions {
    table: String,
    schema: Option<String>,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self { table: "sessions".to_owned(), schema: None }
    }
}

impl SqlOptions {
    /// The table's name (default `sessions`).
    ///
    /// ```
    /// let options = multisession::store::SqlOptions::default().table("web_sessions");
    /// # let _ = options;
    /// ```
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The schema (PostgreSQL) or database (MySQL) holding the table,
    /// created if missing on PostgreSQL. Not for SQLite.
    ///
    /// ```
    /// let options = multisession::store::SqlOptions::default().schema("auth");
    /// # let _ = options;
    /// ```
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

fn identifier(field: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let starts = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts || name.len() > 63 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::config(format!(
            "{field}: {name:?} is not a plain SQL identifier (letters, digits and _, not starting with a digit, at most \
             63 characters)"
        )));
    }
    Ok(())
}

/// Sessions in a SQL database: one row per session with the user id and the
/// expiry as indexed columns and the data as a JSON object (`jsonb` on
/// PostgreSQL, `JSON` on MySQL, text on SQLite). Times are Unix
/// milliseconds. The table and its indexes are created when the store
/// connects.
///
/// A change is applied field by field in one statement on PostgreSQL
/// (`data = (data || $set) - $remove`) and MySQL (`JSON_SET` over
/// `JSON_REMOVE`), and as a read-modify-write inside one `BEGIN IMMEDIATE`
/// transaction on SQLite, whose JSON paths cannot name every key and which
/// serialises writers anyway. Every change is conditional on the row being
/// live, so a write after a logout finds no row and reports `Gone`.
///
/// A login's session cap is held in one transaction that counts, evicts and
/// inserts while logins of that user wait: SQLite's `BEGIN IMMEDIATE`,
/// PostgreSQL's transaction-scoped advisory lock, MySQL's named lock
/// (`GET_LOCK`, two seconds at most).
///
/// PostgreSQL's `jsonb` cannot hold U+0000, so on PostgreSQL strings and
/// keys of session data are stored with U+0000 written as U+0001 `0` (and
/// U+0001 as U+0001 `1`), and read back as they were.
///
/// `key_prefix` (default `session`) separates applications sharing a table;
/// user ids are compared exactly (binary collation on MySQL, where they are at
/// most 255 characters).
///
/// Cleanup ([`Store::delete_expired_batch`]) removes 500 expired rows of the
/// prefix at a time and names the logins among them: `DELETE … RETURNING`
/// on SQLite and PostgreSQL; on MySQL, which has no `RETURNING`, the rows
/// are read `FOR UPDATE SKIP LOCKED` (MySQL 8, MariaDB 10.6) and deleted in
/// one read-committed transaction (which a server logging statements,
/// `binlog_format = STATEMENT`, refuses; row and mixed logging, the
/// defaults, are fine).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::{SqlStore, Store};
///
/// let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
/// let store = SqlStore::open(dir.path().join("sessions.db")).await?;
/// assert_eq!(store.delete_expired_batch().await?.removed, 0);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    /// The connections writes use: on SQLite one of its own, else `pool`.
    writer: AnyPool,
    /// SQLite: session reads and changes through rusqlite (see `sqlite_hot`).
    #[cfg(feature = "sqlite")]
    hot: Option<std::sync::Arc<super::sqlite_hot::HotPath>>,
    dialect: Dialect,
    /// The table, qualified with its schema.
    table: String,
    /// The bare table name, for index names.
    name: String,
    prefix: String,
}

const COLUMNS: &str = "session_key, user_id, created_at, last_active_at, expires_at, absolute_expires_at, permanent, \
                       user_agent, ip, siblings";

impl SqlStore {
    /// Opens (creating if needed) the SQLite database file at `path`, in WAL
    /// mode.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the file cannot be opened or the schema not created.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqlStore::open(dir.path().join("sessions.db")).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_string_lossy();
        let escaped: String = path
            .chars()
            .map(|c| match c {
                '%' => "%25".to_owned(),
                '?' => "%3F".to_owned(),
                '#' => "%23".to_owned(),
                c => c.to_string(),
            })
            .collect();
        Self::connect(&format!("sqlite://{escaped}?mode=rwc")).await
    }

    /// Connects to the database a URL names — `sqlite://PATH`,
    /// `postgres://…` (or `postgresql://`), `mysql://…` (or `mariadb://`) —
    /// and creates the `sessions` table if needed.
    ///
    /// # Errors
    ///
    /// `Config` for an unknown scheme; `Unavailable` if the database does not
    /// answer or the schema cannot be created.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    /// let store = multisession::store::SqlStore::connect(&url).await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, SqlOptions::default()).await
    }

    /// Like [`SqlStore::connect`], with the table (and schema) of `options`.
    ///
    /// # Errors
    ///
    /// As [`SqlStore::connect`], and `Config` naming `table` or `schema` for
    /// a name that is not a plain identifier.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// use multisession::store::{SqlOptions, SqlStore};
    /// let err = SqlStore::connect_with("sqlite::memory:", SqlOptions::default().table("x; DROP")).await.unwrap_err();
    /// assert!(err.to_string().contains("table"));
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(url: &str, options: SqlOptions) -> Result<Self> {
        identifier("table", &options.table)?;
        if let Some(schema) = &options.schema {
            identifier("schema", schema)?;
        }
        let (dialect, url) = match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => (Dialect::Sqlite, url.to_owned()),
            Some("postgres" | "postgresql") => (Dialect::Postgres, url.to_owned()),
            Some("mysql") => (Dialect::MySql, url.to_owned()),
            Some("mariadb") => (Dialect::MySql, url.replacen("mariadb", "mysql", 1)),
            _ => {
                return Err(Error::config(format!(
                    "backend: {:?} is not a sqlite://, postgres:// or mysql:// URL",
                    super::redacted(url)
                )));
            }
        };
        if dialect == Dialect::Sqlite && ["mode=ro", "immutable=", "vfs="].iter().any(|o| url.contains(o)) {
            return Err(Error::config(
                "backend: the SQLite store writes its file through connections of its own, with SQLite's own \
                 file access; leave out mode=ro, immutable and vfs",
            ));
        }
        // The SQLite file, for the hot path's own connections.
        #[cfg(feature = "sqlite")]
        let file = match dialect {
            Dialect::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                    .map_err(|e| Error::config(format!("backend: {}", super::scrub(&e.to_string(), &url))))?;
                if options.get_filename().as_os_str().is_empty() {
                    return Err(Error::config("backend: give the SQLite file's path, as in sqlite://sessions.db"));
                }
                Some(options.get_filename().to_owned())
            }
            _ => None,
        };
        if dialect == Dialect::Sqlite && (url.contains(":memory:") || url.contains("mode=memory")) {
            return Err(Error::config(
                "backend: an in-memory SQLite database is private to one connection and this store uses several; \
                 use memory:// or a SQLite file",
            ));
        }
        if dialect == Dialect::Sqlite && options.schema.is_some() {
            return Err(Error::config("schema: SQLite keeps one schema per file; leave schema unset"));
        }
        sqlx::any::install_default_drivers();
        let pool_options = |max_connections| {
            let options = AnyPoolOptions::new().max_connections(max_connections).acquire_timeout(ACQUIRE_TIMEOUT);
            if dialect != Dialect::Sqlite {
                return options;
            }
            // A file has no connection to lose: no ping before each use.
            let options = options.test_before_acquire(false);
            // In WAL mode NORMAL syncs at checkpoints, not at every commit:
            // the file stays consistent through a crash, and a power cut may
            // lose the last moments' session writes. SQLite's default, FULL,
            // made every write wait for the disk.
            options.after_connect(|conn, _| {
                Box::pin(
                    async move { sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous = NORMAL").await.map(drop) },
                )
            })
        };
        let connect_error = |e: sqlx::Error| match e {
            sqlx::Error::Configuration(_) => Error::config(format!("backend: {}", super::scrub(&e.to_string(), &url))),
            e => Error::new(
                ErrorKind::Unavailable,
                format!("cannot connect to the SQL session store: {}", super::scrub(&e.to_string(), &url)),
            ),
        };
        let (pool, writer) = if dialect == Dialect::Sqlite {
            // SQLite takes one writer at a time. Writers on several
            // connections wait for its lock in the busy handler's sleeps
            // (milliseconds each); one writing connection queues them here
            // in order instead, while reads go on beside it.
            let writer = pool_options(1).connect(&url).await.map_err(connect_error)?;
            (pool_options(8).connect(&url).await.map_err(connect_error)?, writer)
        } else {
            let pool = pool_options(16).connect(&url).await.map_err(connect_error)?;
            (pool.clone(), pool)
        };
        let table = match &options.schema {
            Some(schema) => format!("{schema}.{}", options.table),
            None => options.table.clone(),
        };
        let store = Self {
            pool,
            writer,
            dialect,
            table,
            name: options.table,
            prefix: "session".to_owned(),
            #[cfg(feature = "sqlite")]
            hot: None,
        };
        store.migrate(options.schema.as_deref()).await?;
        #[cfg(feature = "sqlite")]
        if let Some(file) = file {
            let hot = super::sqlite_hot::HotPath::new(file, &store.table)?;
            return Ok(Self { hot: Some(std::sync::Arc::new(hot)), ..store });
        }
        Ok(store)
    }

    /// Keeps this store's sessions apart from other applications' in the same
    /// table (default `session`).
    ///
    /// A prefix is 1 to 64 printable ASCII characters without spaces, one
    /// rule for every store ([`store::open`](crate::store::open) and the
    /// TOML loader refuse any other at start-up). This method cannot fail,
    /// so it keeps any other prefix as 16 hex digits of its SHA-256, as
    /// `MemcachedStore` does: still one namespace per prefix, where the
    /// prefix as given would fail every request (MySQL's column holds 191
    /// characters, PostgreSQL no NUL).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqlStore::open(dir.path().join("s.db")).await?.with_key_prefix("shop");
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        use sha2::Digest as _;
        let prefix = prefix.into();
        self.prefix = match crate::config::check_key_prefix(&prefix) {
            Ok(()) => prefix,
            Err(_) => sha2::Sha256::digest(prefix.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect(),
        };
        self
    }

    /// Which database this is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqlStore::open(dir.path().join("s.db")).await?;
    /// assert_eq!(store.dialect(), multisession::store::Dialect::Sqlite);
    /// # Ok(()) }
    /// ```
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The connection pool, for tooling and tests.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqlStore::open(dir.path().join("s.db")).await?;
    /// assert!(!store.pool().is_closed());
    /// # Ok(()) }
    /// ```
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The qualified table name, for tooling and tests.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqlStore::open(dir.path().join("s.db")).await?;
    /// assert_eq!(store.table(), "sessions");
    /// # Ok(()) }
    /// ```
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `sql`, written with `?` placeholders and `{t}` for the table, in this
    /// dialect (`$1`, `$2`, … on PostgreSQL).
    fn sql(&self, sql: &str) -> AssertSqlSafe<String> {
        let sql = sql.replace("{t}", &self.table).replace("{n}", &self.name);
        if self.dialect != Dialect::Postgres {
            return AssertSqlSafe(sql);
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        AssertSqlSafe(out)
    }

    /// The data column as JSON text.
    fn data_text(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "data",
            Dialect::Postgres => "data::text",
            Dialect::MySql => "CAST(data AS CHAR)",
        }
    }

    /// Creates the table and its indexes if missing.
    async fn migrate(&self, schema: Option<&str>) -> Result<()> {
        let mut statements: Vec<String> = Vec::new();
        match self.dialect {
            Dialect::Sqlite => {
                // Readers never wait for writers in WAL mode: the hot
                // path reads on the request's own thread counting on it.
                let mode: String =
                    sqlx::query_scalar("PRAGMA journal_mode = WAL").fetch_one(&self.writer).await.map_err(db_error)?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(Error::config(format!(
                        "backend: SQLite kept this file in {mode} journal mode instead of WAL, which the store \
                         needs; put the file on a local file system"
                    )));
                }
                // A rowid table: WITHOUT ROWID makes the planner walk the
                // primary key instead of the user index.
                statements.push(
                    "CREATE TABLE IF NOT EXISTS {t} (namespace TEXT NOT NULL, session_key TEXT NOT NULL, user_id TEXT,
                     data TEXT NOT NULL, created_at INTEGER NOT NULL, last_active_at INTEGER NOT NULL,
                     expires_at INTEGER NOT NULL, absolute_expires_at INTEGER, permanent INTEGER NOT NULL,
                     user_agent TEXT, ip TEXT, siblings TEXT, PRIMARY KEY (namespace, session_key))"
                        .to_owned(),
                );
                statements.push("CREATE INDEX IF NOT EXISTS {n}_user ON {t} (namespace, user_id)".to_owned());
                statements.push("CREATE INDEX IF NOT EXISTS {n}_expires ON {t} (expires_at)".to_owned());
            }
            Dialect::Postgres => {
                if let Some(schema) = schema {
                    statements.push(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
                }
                statements.push(
                    "CREATE TABLE IF NOT EXISTS {t} (namespace TEXT NOT NULL, session_key TEXT NOT NULL, user_id TEXT,
                     data JSONB NOT NULL, created_at BIGINT NOT NULL, last_active_at BIGINT NOT NULL,
                     expires_at BIGINT NOT NULL, absolute_expires_at BIGINT, permanent BIGINT NOT NULL,
                     user_agent TEXT, ip TEXT, siblings TEXT, PRIMARY KEY (namespace, session_key))"
                        .to_owned(),
                );
                statements.push("CREATE INDEX IF NOT EXISTS {n}_user ON {t} (namespace, user_id)".to_owned());
                statements.push("CREATE INDEX IF NOT EXISTS {n}_expires ON {t} (expires_at)".to_owned());
            }
            Dialect::MySql => statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {{t}} (namespace VARCHAR(191) NOT NULL, session_key CHAR(64) NOT NULL,
                 user_id VARCHAR(255) NULL, data JSON NOT NULL, created_at BIGINT NOT NULL,
                 last_active_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, absolute_expires_at BIGINT NULL,
                 permanent BIGINT NOT NULL, user_agent VARCHAR(512) NULL, ip VARCHAR(45) NULL, siblings TEXT NULL,
                 PRIMARY KEY (namespace, session_key), INDEX {{n}}_user (namespace, user_id),
                 INDEX {{n}}_expires (expires_at)) DEFAULT CHARSET = utf8mb4 COLLATE = {}",
                self.exact_collation().await?
            )),
        }
        // Indexes come after the probe below, which they would fail before.
        let (tables, indexes): (Vec<String>, Vec<String>) =
            statements.into_iter().partition(|statement| !statement.starts_with("CREATE INDEX"));
        for statement in &tables {
            sqlx::query(self.sql(statement)).execute(&self.writer).await.map_err(db_error)?;
        }
        // A table of the same name made by something else fails here, at
        // start-up, not as 503s on every request. The layout before the
        // `siblings` column gains it.
        let probe = |columns: &str| format!("SELECT {columns}, data FROM {{t}} WHERE 1 = 0");
        if sqlx::query(self.sql(&probe(COLUMNS))).fetch_all(&self.pool).await.is_err() {
            let earlier = COLUMNS.replace(", siblings", "");
            sqlx::query(self.sql(&probe(&earlier))).fetch_all(&self.pool).await.map_err(|_| {
                Error::config(format!(
                    "table: {} exists but does not have the session columns ({COLUMNS}, data); use another table \
                     name or drop it",
                    self.table
                ))
            })?;
            sqlx::query(self.sql("ALTER TABLE {t} ADD COLUMN siblings TEXT"))
                .execute(&self.writer)
                .await
                .map_err(db_error)?;
        }
        for statement in &indexes {
            sqlx::query(self.sql(statement)).execute(&self.writer).await.map_err(db_error)?;
        }
        Ok(())
    }

    /// A binary NO PAD collation, so user ids compare byte for byte: with a
    /// PAD SPACE collation such as `utf8mb4_bin`, `"alice "` would match
    /// `"alice"`. MariaDB calls it `utf8mb4_nopad_bin`, MySQL 8
    /// `utf8mb4_0900_bin`.
    async fn exact_collation(&self) -> Result<String> {
        let found: Option<String> = sqlx::query_scalar(self.sql(
            "SELECT COLLATION_NAME FROM information_schema.COLLATIONS
             WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin') ORDER BY COLLATION_NAME DESC LIMIT 1",
        ))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        found.ok_or_else(|| {
            Error::config("backend: this MySQL has no binary NO PAD collation (MariaDB 10.2+ or MySQL 8 needed)")
        })
    }

    /// Whether the database's planner answers every per-user statement of
    /// this store through the user index rather than a full scan (`EXPLAIN`),
    /// for the conformance suite. On PostgreSQL the table is analyzed first,
    /// as autovacuum would.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the database cannot be asked.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let store = multisession::store::SqlStore::open(dir.path().join("s.db")).await?;
    /// // On an empty table a planner may rightly prefer another path; the
    /// // conformance suite asks once the table holds 10 000 sessions.
    /// let indexed: bool = store.user_queries_use_index().await?;
    /// # let _ = indexed;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "testing")]
    pub async fn user_queries_use_index(&self) -> Result<bool> {
        let index = format!("{}_user", self.name);
        if self.dialect == Dialect::Postgres {
            sqlx::query(self.sql("ANALYZE {t}")).execute(&self.writer).await.map_err(db_error)?;
        }
        let mut indexed = true;
        for (sql, keep) in [(USER_SESSIONS_SQL, false), (DELETE_USER_SQL, true)] {
            let explain = match self.dialect {
                Dialect::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
                Dialect::Postgres | Dialect::MySql => format!("EXPLAIN {sql}"),
            };
            let mut query = sqlx::query(self.sql(&explain)).bind(&self.prefix).bind("user").bind(0_i64);
            if keep {
                query = query.bind("");
            }
            let rows = query.fetch_all(&self.pool).await.map_err(db_error)?;
            let plan: Vec<String> = rows
                .iter()
                .filter_map(|row| match self.dialect {
                    Dialect::Sqlite => row.try_get::<String, _>("detail").ok(),
                    Dialect::Postgres => row.try_get::<String, _>(0).ok(),
                    Dialect::MySql => row.try_get::<Option<String>, _>("key").ok().flatten(),
                })
                .collect();
            indexed &= match self.dialect {
                Dialect::Sqlite => {
                    plan.iter().any(|s| s.contains(&format!("USING INDEX {index}")))
                        && !plan.iter().any(|s| s.starts_with("SCAN"))
                }
                Dialect::Postgres => {
                    plan.iter().any(|s| s.contains(&index)) && !plan.iter().any(|s| s.contains("Seq Scan"))
                }
                Dialect::MySql => plan.contains(&index),
            };
        }
        Ok(indexed)
    }

    /// A touch: one UPDATE of the times, without reading or rewriting data.
    async fn touch(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let done = sqlx::query(self.sql(
            "UPDATE {t} SET last_active_at = ?, expires_at = ?
             WHERE namespace = ? AND session_key = ? AND expires_at > ?",
        ))
        .bind(millis(change.last_active_at))
        .bind(millis(change.expires_at))
        .bind(&self.prefix)
        .bind(key.to_string())
        .bind(millis(OffsetDateTime::now_utc()))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 { Err(Error::gone()) } else { Ok(()) }
    }

    /// A field-level UPDATE setting `data` to `data_expression`, then the
    /// flags and times, for a live row only; [`SqlStore::bind_tail`] binds
    /// what follows the expression's own parameters.
    fn update_sql(&self, data_expression: &str) -> AssertSqlSafe<String> {
        self.sql(&format!(
            "UPDATE {{t}} SET data = {data_expression}, permanent = COALESCE(?, permanent),
             siblings = COALESCE(?, siblings), last_active_at = ?, expires_at = ?
             WHERE namespace = ? AND session_key = ? AND expires_at > ?"
        ))
    }

    fn bind_tail<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
        key: &str,
        change: &Change,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        query
            .bind(change.permanent.map(i64::from))
            // `{}` rather than NULL for none, which COALESCE would keep.
            .bind(change.siblings.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default()))
            .bind(millis(change.last_active_at))
            .bind(millis(change.expires_at))
            .bind(self.prefix.clone())
            .bind(key.to_owned())
            .bind(millis(OffsetDateTime::now_utc()))
    }

    /// PostgreSQL: `(data || $set) - $remove` in one UPDATE.
    async fn apply_postgres(&self, key: &str, change: &Change) -> Result<u64> {
        let removed: Vec<Cow<'_, str>> = change.remove.iter().map(|k| pg_escape(k)).collect();
        let set: Map<String, Value> =
            change.set.iter().map(|(k, v)| (pg_escape(k).into_owned(), pg_value(v, pg_escape))).collect();
        let data = "(CASE WHEN ? = 1 THEN '{}'::jsonb ELSE data END || ?::jsonb)
                    - ARRAY(SELECT jsonb_array_elements_text(?::jsonb))";
        let query = sqlx::query(self.update_sql(data))
            .bind(i64::from(change.clear))
            .bind(serde_json::to_string(&set)?)
            .bind(serde_json::to_string(&removed)?);
        let done = self.bind_tail(query, key, change).execute(&self.writer).await.map_err(db_error)?;
        Ok(done.rows_affected())
    }

    /// MySQL/MariaDB: `JSON_SET(JSON_REMOVE(data, …), …)` in one UPDATE.
    async fn apply_mysql(&self, key: &str, change: &Change) -> Result<u64> {
        let mut expression = "CASE WHEN ? = 1 THEN JSON_OBJECT() ELSE data END".to_owned();
        if !change.remove.is_empty() {
            expression = format!("JSON_REMOVE({expression}{})", ", ?".repeat(change.remove.len()));
        }
        if !change.set.is_empty() {
            expression = format!("JSON_SET({expression}{})", ", ?, JSON_EXTRACT(?, '$[0]')".repeat(change.set.len()));
        }
        let mut query = sqlx::query(self.update_sql(&expression)).bind(i64::from(change.clear));
        for name in &change.remove {
            query = query.bind(json_path(name));
        }
        for (name, value) in &change.set {
            query = query.bind(json_path(name)).bind(serde_json::to_string(&[value])?);
        }
        let done = self.bind_tail(query, key, change).execute(&self.writer).await.map_err(db_error)?;
        Ok(done.rows_affected())
    }
}

/// A MySQL JSON path naming one top-level key, whatever its characters:
/// quoted, with `"`, `\` and control characters (NUL among them) escaped as
/// in a JSON string.
fn json_path(key: &str) -> String {
    let mut path = String::with_capacity(key.len() + 4);
    path.push_str("$.\"");
    for c in key.chars() {
        match c {
            '"' => path.push_str("\\\""),
            '\\' => path.push_str("\\\\"),
            c if (c as u32) < 0x20 => path.push_str(&format!("\\u{:04x}", c as u32)),
            c => path.push(c),
        }
    }
    path.push('"');
    path
}

const USER_SESSIONS_SQL: &str = "SELECT session_key, user_id, created_at, last_active_at, expires_at,
    absolute_expires_at, permanent, user_agent, ip, siblings FROM {t}
    WHERE namespace = ? AND user_id = ? AND expires_at > ?";
const DELETE_USER_SQL: &str =
    "DELETE FROM {t} WHERE namespace = ? AND user_id = ? AND expires_at > ? AND session_key <> ?";

fn millis(t: OffsetDateTime) -> i64 {
    crate::record::to_millis(t)
}

fn from_millis(ms: i64) -> Result<OffsetDateTime> {
    crate::record::from_millis(ms).ok_or_else(|| Error::corrupt("a stored timestamp is out of range"))
}

/// The store's error for a database error. A database's own message may
/// quote the row it refused (MySQL's "Duplicate entry '…'" holds the store
/// key), so only its SQLSTATE code is kept; connection-level errors keep
/// their cause.
fn db_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::new(ErrorKind::Conflict, "a session with this key exists")
        }
        sqlx::Error::Database(db) => Error::new(
            ErrorKind::Unavailable,
            format!(
                "the SQL session store failed: the database refused a statement with SQLSTATE {}; its log says why",
                db.code().as_deref().unwrap_or("unknown")
            ),
        ),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            Error::corrupt("a stored session row does not decode")
        }
        _ => Error::unavailable("the SQL session store failed", e),
    }
}

/// `Meta::siblings` as its column's JSON text, or NULL when empty.
fn siblings_text(siblings: &BTreeMap<String, StoreKey>) -> Option<String> {
    (!siblings.is_empty()).then(|| serde_json::to_string(siblings).unwrap_or_default())
}

/// On PostgreSQL, U+0000 as U+0001 `0` and U+0001 as U+0001 `1`: `jsonb`
/// refuses U+0000 in strings and keys.
fn pg_escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['\0', '\u{1}']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        match c {
            '\0' => out.push_str("\u{1}0"),
            '\u{1}' => out.push_str("\u{1}1"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// What [`pg_escape`] made `text` from.
fn pg_unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('\u{1}') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some('1') => out.push('\u{1}'),
            // Not written by this store: kept as found.
            Some(other) => out.extend([c, other]),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `value` with every string and key passed through `f`.
fn pg_value(value: &Value, f: fn(&str) -> Cow<'_, str>) -> Value {
    match value {
        Value::String(s) => Value::String(f(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(|v| pg_value(v, f)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (f(k).into_owned(), pg_value(v, f))).collect()),
        other => other.clone(),
    }
}

fn meta(row: &AnyRow) -> Result<Meta> {
    let get = |column: &str| -> Result<i64> { row.try_get(column).map_err(db_error) };
    let text = |column: &str| -> Result<Option<String>> { row.try_get(column).map_err(db_error) };
    MetaColumns {
        user_id: text("user_id")?,
        created_at: get("created_at")?,
        last_active_at: get("last_active_at")?,
        expires_at: get("expires_at")?,
        absolute_expires_at: row.try_get("absolute_expires_at").map_err(db_error)?,
        permanent: get("permanent")?,
        user_agent: text("user_agent")?,
        ip: text("ip")?,
        siblings: text("siblings")?,
    }
    .into_meta()
}

/// A session row's metadata columns as the database typed them, whichever
/// driver read them.
pub(super) struct MetaColumns {
    pub(super) user_id: Option<String>,
    pub(super) created_at: i64,
    pub(super) last_active_at: i64,
    pub(super) expires_at: i64,
    pub(super) absolute_expires_at: Option<i64>,
    pub(super) permanent: i64,
    pub(super) user_agent: Option<String>,
    pub(super) ip: Option<String>,
    pub(super) siblings: Option<String>,
}

impl MetaColumns {
    /// The metadata; `Corrupt` for a timestamp, address or JSON that does
    /// not parse.
    pub(super) fn into_meta(self) -> Result<Meta> {
        let ip = self
            .ip
            .map(|ip| IpAddr::from_str(&ip).map_err(|_| Error::corrupt("a stored client address does not parse")))
            .transpose()?;
        let siblings = self.siblings.map(|text| serde_json::from_str(&text)).transpose()?.unwrap_or_default();
        Ok(Meta {
            user_id: self.user_id,
            created_at: from_millis(self.created_at)?,
            last_active_at: from_millis(self.last_active_at)?,
            expires_at: from_millis(self.expires_at)?,
            absolute_expires_at: self.absolute_expires_at.map(from_millis).transpose()?,
            permanent: self.permanent != 0,
            device: Device { user_agent: self.user_agent, ip },
            siblings,
        })
    }
}

pub(super) fn data(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text)? {
        Value::Object(map) => Ok(map),
        _ => Err(Error::corrupt("stored session data is not a JSON object")),
    }
}

/// A row's `data` text as `dialect` keeps it, as a session's data.
fn dialect_data(dialect: Dialect, text: &str) -> Result<Map<String, Value>> {
    let data = data(text)?;
    Ok(match dialect {
        Dialect::Postgres => {
            data.into_iter().map(|(k, v)| (pg_unescape(&k).into_owned(), pg_value(&v, pg_unescape))).collect()
        }
        _ => data,
    })
}

/// A session's data as the `data` text `dialect` keeps.
fn data_json(dialect: Dialect, data: &Map<String, Value>) -> Result<String> {
    Ok(match dialect {
        Dialect::Postgres => serde_json::to_string(&pg_value(&Value::Object(data.clone()), pg_escape))?,
        _ => serde_json::to_string(data)?,
    })
}

fn info(row: &AnyRow) -> Result<SessionInfo> {
    let meta = meta(row)?;
    let key: String = row.try_get("session_key").map_err(db_error)?;
    SessionInfo::from_meta(key.trim().parse()?, &meta).ok_or_else(|| Error::corrupt("a user's session row has no user"))
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

impl SqlStore {
    /// The record a row of `COLUMNS` and `data` holds.
    fn record(&self, row: &AnyRow) -> Result<Record> {
        let text: String = row.try_get("data").map_err(db_error)?;
        Ok(Record { data: dialect_data(self.dialect, &text)?, meta: meta(row)? })
    }

    /// The INSERT of a new session.
    fn insert(&self, key: &StoreKey, record: &Record) -> Result<AnyQuery<'_>> {
        let meta = &record.meta;
        let json = if self.dialect == Dialect::Postgres { "?::jsonb" } else { "?" };
        let sql = format!(
            "INSERT INTO {{t}} (namespace, session_key, user_id, data, created_at, last_active_at, expires_at,
                absolute_expires_at, permanent, user_agent, ip, siblings) VALUES (?, ?, ?, {json}, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let data = data_json(self.dialect, &record.data)?;
        Ok(sqlx::query(self.sql(&sql))
            .bind(self.prefix.clone())
            .bind(key.to_string())
            .bind(meta.user_id.clone())
            .bind(data)
            .bind(millis(meta.created_at))
            .bind(millis(meta.last_active_at))
            .bind(millis(meta.expires_at))
            .bind(meta.absolute_expires_at.map(millis))
            .bind(i64::from(meta.permanent))
            .bind(meta.device.user_agent.clone())
            .bind(meta.device.ip.map(|ip| ip.to_string()))
            .bind(siblings_text(&meta.siblings)))
    }

    /// A login's count, evictions and insert, on a connection that holds the
    /// user's lock (or SQLite's write lock).
    async fn login_locked(
        &self,
        conn: &mut sqlx::AnyConnection,
        key: &StoreKey,
        record: &Record,
        user: &str,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        if let Some(old) = replaces {
            let live =
                sqlx::query(self.sql("SELECT 1 FROM {t} WHERE namespace = ? AND session_key = ? AND expires_at > ?"))
                    .bind(&self.prefix)
                    .bind(old.to_string())
                    .bind(millis(OffsetDateTime::now_utc()))
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?;
            if live.is_none() {
                return Err(Error::gone());
            }
        }
        let Some(limit) = limit else {
            self.insert(key, record)?.execute(&mut *conn).await.map_err(db_error)?;
            return Ok(Vec::new());
        };
        let rows = sqlx::query(self.sql(USER_SESSIONS_SQL))
            .bind(&self.prefix)
            .bind(user)
            .bind(millis(OffsetDateTime::now_utc()))
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let others: Vec<SessionInfo> = rows
            .iter()
            .map(info)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|s| Some(&s.key) != replaces)
            .collect();
        let evict = limit.evictions(others)?;
        for info in &evict {
            sqlx::query(self.sql("DELETE FROM {t} WHERE namespace = ? AND session_key = ?"))
                .bind(&self.prefix)
                .bind(info.key.to_string())
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        self.insert(key, record)?.execute(&mut *conn).await.map_err(db_error)?;
        Ok(evict)
    }

    /// A login on MySQL: under the user's named lock (`GET_LOCK`, two
    /// seconds at most), released before the connection goes back to the
    /// pool, or the connection closed.
    async fn mysql_login(
        &self,
        key: &StoreKey,
        record: &Record,
        user: &str,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        let mut conn = self.writer.acquire().await.map_err(db_error)?;
        let name = self.lock_name(user);
        let locked: Option<i64> = sqlx::query_scalar(self.sql("SELECT GET_LOCK(?, 2)"))
            .bind(&name)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        if locked != Some(1) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "the SQL session store failed: another login of this user held its lock for 2 seconds",
            ));
        }
        let result = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db_error)?;
            let evicted = self.login_locked(&mut tx, key, record, user, replaces, limit).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(evicted)
        }
        .await;
        let released = sqlx::query(self.sql("SELECT RELEASE_LOCK(?)")).bind(&name).execute(&mut *conn).await;
        if released.is_err() {
            // Closing the connection releases the lock.
            drop(conn.detach());
        }
        result
    }

    /// On SQLite, waits for this store's turn to write (see `sqlite_hot`):
    /// its writes queue in order rather than in SQLite's busy handler.
    /// Elsewhere the database orders writers itself, and this is `None`.
    async fn write_turn(&self) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>> {
        #[cfg(feature = "sqlite")]
        if let Some(hot) = &self.hot {
            return hot.write_turn().await.map(Some);
        }
        Ok(None)
    }

    /// One batch of cleanup on MySQL: the expired rows of the prefix, read
    /// and deleted in one transaction, returned.
    async fn mysql_expired(&self, now: i64) -> Result<Vec<AnyRow>> {
        // Cleanup never waits for a lock, so it is in no deadlock with a
        // request's writes or another cleanup: `SKIP LOCKED` passes the rows
        // another transaction holds, and read committed locks only the rows
        // that match, not every row a small table's full scan reads (nor the
        // gaps between them). `SET` goes by the text protocol, for servers
        // that do not prepare it. A connection that failed on the way is
        // closed, not pooled, lest it keep the level pending.
        let mut conn = self.writer.acquire().await.map_err(db_error)?;
        let batch = async {
            sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db_error)?;
            let sql = format!(
                "SELECT {COLUMNS} FROM {{t}} WHERE namespace = ? AND expires_at <= ? LIMIT ? FOR UPDATE SKIP LOCKED"
            );
            let rows = sqlx::query(self.sql(&sql))
                .bind(&self.prefix)
                .bind(now)
                .bind(EXPIRED_BATCH as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
            // One key at a time: a primary-key lookup touches only the row
            // this transaction holds, where an `IN` list over a small table
            // was planned as a scan that waited on the rows another cleanup
            // held.
            for row in &rows {
                let key: String = row.try_get("session_key").map_err(db_error)?;
                sqlx::query(self.sql("DELETE FROM {t} WHERE namespace = ? AND session_key = ?"))
                    .bind(&self.prefix)
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
            Ok(rows)
        }
        .await;
        if batch.is_err() {
            conn.close_on_drop();
        }
        batch
    }

    /// The name of a user's login lock: MySQL keeps at most 64 characters.
    fn lock_name(&self, user: &str) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("{}\0{user}", self.prefix).as_bytes());
        let hex: String = digest.iter().take(24).map(|b| format!("{b:02x}")).collect();
        format!("multisession:{hex}")
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        #[cfg(feature = "sqlite")]
        if let Some(hot) = &self.hot {
            return hot.load(&self.prefix, &key.to_string(), millis(OffsetDateTime::now_utc()));
        }
        let sql = format!(
            "SELECT {COLUMNS}, {} AS data FROM {{t}} WHERE namespace = ? AND session_key = ? AND expires_at > ?",
            self.data_text()
        );
        let row = sqlx::query(self.sql(&sql))
            .bind(&self.prefix)
            .bind(key.to_string())
            .bind(millis(OffsetDateTime::now_utc()))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|row| self.record(&row)).transpose()
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        let _turn = self.write_turn().await?;
        self.insert(key, record)?.execute(&self.writer).await.map_err(db_error)?;
        Ok(())
    }

    async fn create_login(
        &self,
        key: &StoreKey,
        record: &Record,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        // Logins of one user under a cap wait for each other; the check of
        // `replaces` and the insert are one transaction either way.
        let user = record.meta.user_id.as_deref().filter(|_| limit.is_some());
        if let (Dialect::MySql, Some(user)) = (self.dialect, user) {
            // A task of its own, so that a caller that gives up (a client
            // gone, a timeout layer) cannot leave the named lock held on a
            // pooled connection: the lock is always released or its
            // connection closed.
            let (store, key, record, user) = (self.clone(), *key, record.clone(), user.to_owned());
            let replaces = replaces.copied();
            return tokio::spawn(
                async move { store.mysql_login(&key, &record, &user, replaces.as_ref(), limit).await },
            )
            .await
            .map_err(|e| Error::unavailable("a login task of the SQL session store failed", e))?;
        }
        let begin = match self.dialect {
            // One writer at a time: the count and the insert see no other login.
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            // READ COMMITTED whatever the server's default, so the count
            // after the lock sees the login that held it.
            Dialect::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Dialect::MySql => "BEGIN",
        };
        let _turn = self.write_turn().await?;
        let mut tx = self.writer.begin_with(begin).await.map_err(db_error)?;
        if let (Dialect::Postgres, Some(user)) = (self.dialect, user) {
            sqlx::query(self.sql("SET LOCAL lock_timeout = '2s'")).execute(&mut *tx).await.map_err(db_error)?;
            sqlx::query(self.sql("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))"))
                .bind(self.lock_name(user))
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        let evicted = self.login_locked(&mut tx, key, record, user.unwrap_or_default(), replaces, limit).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(evicted)
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        #[cfg(feature = "sqlite")]
        if let Some(hot) = &self.hot {
            let applied = hot.apply(&self.prefix, &key.to_string(), change, millis(OffsetDateTime::now_utc())).await?;
            return if applied { Ok(()) } else { Err(Error::gone()) };
        }
        if !change.alters() {
            return self.touch(key, change).await;
        }
        let key = key.to_string();
        let matched = match self.dialect {
            Dialect::Postgres => self.apply_postgres(&key, change).await?,
            Dialect::MySql => self.apply_mysql(&key, change).await?,
            // A SQLite store is opened with its hot path, which applied the
            // change above.
            Dialect::Sqlite => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the SQLite session store has no connection for changes",
                ));
            }
        };
        if matched == 0 { Err(Error::gone()) } else { Ok(()) }
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        let _turn = self.write_turn().await?;
        let delete = |live: bool| {
            let sql = if live {
                "DELETE FROM {t} WHERE namespace = ? AND session_key = ? AND expires_at > ?"
            } else {
                "DELETE FROM {t} WHERE namespace = ? AND session_key = ?"
            };
            let mut query = sqlx::query(self.sql(sql)).bind(&self.prefix).bind(key.to_string());
            if live {
                query = query.bind(millis(OffsetDateTime::now_utc()));
            }
            query.execute(&self.writer)
        };
        if delete(true).await.map_err(db_error)?.rows_affected() > 0 {
            return Ok(true);
        }
        // An expired row is no session, but it goes too.
        delete(false).await.map_err(db_error)?;
        Ok(false)
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        let rows = sqlx::query(self.sql(USER_SESSIONS_SQL))
            .bind(&self.prefix)
            .bind(user)
            .bind(millis(OffsetDateTime::now_utc()))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(info).collect()
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        let _turn = self.write_turn().await?;
        let done = sqlx::query(self.sql(DELETE_USER_SQL))
            .bind(&self.prefix)
            .bind(user)
            .bind(millis(OffsetDateTime::now_utc()))
            .bind(keep.map(StoreKey::to_string).unwrap_or_default())
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        let limit = super::page_limit(limit)?;
        // The cursor is the last row's key as stored, so that even a row
        // whose key is not one of ours cannot stop the walk.
        let after = cursor.map_or("", PageCursor::as_str);
        if after.len() > 256 {
            return Err(Error::usage("this page cursor was not made by this store"));
        }
        // Keyset paging on the primary key (namespace, session_key): each
        // page starts where the last ended, whatever the table's size.
        let sql = format!(
            "SELECT {COLUMNS}, {} AS data FROM {{t}} WHERE namespace = ? AND session_key > ? \
             ORDER BY session_key LIMIT ?",
            self.data_text()
        );
        let rows = sqlx::query(self.sql(&sql))
            .bind(&self.prefix)
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let now = OffsetDateTime::now_utc();
        let mut page = SessionsPage::default();
        let mut last = None;
        for row in &rows {
            let key: String = row.try_get("session_key").map_err(db_error)?;
            match (key.trim().parse::<StoreKey>(), self.record(row)) {
                (Ok(key), Ok(record)) if !record.meta.is_expired(now) => page.sessions.push((key, record)),
                (Ok(_), Ok(_)) => {}
                _ => page.unreadable += 1,
            }
            // The key as stored (not trimmed), so the next page starts
            // right after this row whatever its key holds.
            last = Some(key);
        }
        if rows.len() == limit {
            page.next = last.map(PageCursor::new);
        }
        Ok(page)
    }

    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        let now = millis(OffsetDateTime::now_utc());
        let _turn = self.write_turn().await?;
        // One statement returns the rows it deleted, so that of two cleanups
        // at once each reports only the rows it removed. MySQL has no
        // `DELETE … RETURNING`: it locks the rows, then deletes them.
        let rows = match self.dialect {
            Dialect::Sqlite | Dialect::Postgres => {
                let pick = if self.dialect == Dialect::Sqlite {
                    "rowid IN (SELECT rowid FROM {t} WHERE namespace = ? AND expires_at <= ? LIMIT ?)"
                } else {
                    "ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE namespace = ? AND expires_at <= ? LIMIT ?))"
                };
                sqlx::query(self.sql(&format!("DELETE FROM {{t}} WHERE {pick} RETURNING {COLUMNS}")))
                    .bind(&self.prefix)
                    .bind(now)
                    .bind(EXPIRED_BATCH as i64)
                    .fetch_all(&self.writer)
                    .await
                    .map_err(db_error)?
            }
            Dialect::MySql => {
                // A task of its own, so that a caller that gives up cannot
                // return the connection to the pool with its isolation level
                // set for the next transaction, or inside this one.
                let store = self.clone();
                tokio::spawn(async move { store.mysql_expired(now).await })
                    .await
                    .map_err(|e| Error::unavailable("a cleanup task of the SQL session store failed", e))??
            }
        };
        Ok(ExpiredBatch {
            removed: rows.len() as u64,
            // A row without a user, or one that does not decode, is removed
            // all the same.
            logins: rows.iter().filter_map(|row| info(row).ok()).collect(),
            more: rows.len() >= EXPIRED_BATCH,
        })
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl crate::fuzzing::Decode {
    /// A session row's columns as the database typed them, read at the Unix
    /// millisecond `now_ms` as [`SqlStore`] reads a session (its data as
    /// `dialect` keeps it) and a listing reads its metadata and key. Whether
    /// a live record came out; it re-encodes (as the INSERT binds it) to the
    /// same record.
    ///
    /// # Panics
    ///
    /// On a finding: a refusal that is not `Corrupt`, or a record that does
    /// not survive its own encoding.
    pub fn sql_row(row: &crate::fuzzing::SqlRow, dialect: Dialect, now_ms: i64) -> bool {
        let now = crate::record::from_millis(now_ms).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let columns = || MetaColumns {
            user_id: row.user_id.clone(),
            created_at: row.created_at,
            last_active_at: row.last_active_at,
            expires_at: row.expires_at,
            absolute_expires_at: row.absolute_expires_at,
            permanent: row.permanent,
            user_agent: row.user_agent.clone(),
            ip: row.ip.clone(),
            siblings: row.siblings.clone(),
        };
        let listed = columns().into_meta().and_then(|meta| {
            SessionInfo::from_meta(row.session_key.trim().parse()?, &meta)
                .ok_or_else(|| Error::corrupt("a user's session row has no user"))
        });
        crate::fuzzing::refused_as_corrupt(listed);
        let read = dialect_data(dialect, &row.data).and_then(|data| Ok(Record { data, meta: columns().into_meta()? }));
        let Some(record) = crate::fuzzing::refused_as_corrupt(read) else { return false };
        let meta = &record.meta;
        let again = MetaColumns {
            user_id: meta.user_id.clone(),
            created_at: millis(meta.created_at),
            last_active_at: millis(meta.last_active_at),
            expires_at: millis(meta.expires_at),
            absolute_expires_at: meta.absolute_expires_at.map(millis),
            permanent: i64::from(meta.permanent),
            user_agent: meta.device.user_agent.clone(),
            ip: meta.device.ip.map(|ip| ip.to_string()),
            siblings: siblings_text(&meta.siblings),
        };
        let again = data_json(dialect, &record.data)
            .and_then(|text| dialect_data(dialect, &text))
            .and_then(|data| Ok(Record { data, meta: again.into_meta()? }))
            .ok();
        assert!(again.as_ref() == Some(&record), "a decoded SQL row re-encodes to another record");
        !record.meta.is_expired(now)
    }
}
