//! The SQL stores under test: SQLite in a file of the test's own, and
//! PostgreSQL / MariaDB in the database `scripts/services.sh` creates, each
//! test in a table of its own.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use multisession::StoreKey;
use multisession::store::{Dialect, SqlOptions, SqlStore, Store};
use multisession::testing::Harness;

pub fn postgres_url() -> String {
    std::env::var("MULTISESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/multisession_test".to_owned())
}

pub fn mysql_url() -> String {
    std::env::var("MULTISESSION_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/multisession_test".to_owned())
}

pub struct Sql {
    pub store: Arc<SqlStore>,
    _dir: Option<tempfile::TempDir>,
}

fn table() -> String {
    let key = multisession::SessionId::generate().expect("rng").store_key().to_string();
    format!("t_{}", &key[..12])
}

pub async fn sqlite() -> Sql {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqlStore::open(dir.path().join("sessions.db")).await.expect("SQLite opens");
    Sql { store: Arc::new(store), _dir: Some(dir) }
}

async fn server(url: String, what: &str) -> Sql {
    let store = SqlStore::connect_with(&url, SqlOptions::default().table(table())).await.unwrap_or_else(|e| {
        panic!("no {what} at {url} ({e}): start it with `scripts/services.sh start`, or set the URL variable")
    });
    Sql { store: Arc::new(store), _dir: None }
}

pub async fn postgres() -> Sql {
    server(postgres_url(), "PostgreSQL").await
}

pub async fn mysql() -> Sql {
    server(mysql_url(), "MariaDB/MySQL").await
}

impl Sql {
    /// A statement by hand, `?` placeholders in any dialect.
    pub fn statement(&self, sql: &str) -> String {
        let sql = sql.replace("{t}", self.store.table());
        if self.store.dialect() != Dialect::Postgres {
            return sql;
        }
        let mut n = 0;
        sql.chars()
            .map(|c| {
                if c == '?' {
                    n += 1;
                    format!("${n}")
                } else {
                    c.to_string()
                }
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Harness for Sql {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn corrupt(&self, key: &StoreKey) {
        let sql = self.statement("UPDATE {t} SET data = '[1]' WHERE session_key = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key.to_string())
            .execute(self.store.pool())
            .await
            .expect("the corrupting update runs");
    }

    async fn holds(&self, key: &StoreKey) -> Option<bool> {
        let sql = self.statement("SELECT COUNT(*) FROM {t} WHERE session_key = ?");
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(key.to_string())
            .fetch_one(self.store.pool())
            .await
            .expect("the count runs");
        Some(count > 0)
    }

    async fn user_queries_use_index(&self) -> Option<bool> {
        Some(self.store.user_queries_use_index().await.expect("EXPLAIN runs"))
    }
}
