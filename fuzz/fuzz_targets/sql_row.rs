//! A SQL session row's columns, as SQLite, PostgreSQL or MySQL type them,
//! read as the SQL store reads a session and a listing entry: `Corrupt` or
//! a record that re-encodes to itself, never a panic.
#![no_main]

#[path = "../case.rs"]
mod case;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use multisession::fuzzing::{Decode, SqlRow};
use multisession::store::Dialect;

#[derive(Arbitrary, Debug)]
enum Key {
    /// A key as the store writes it: 64 hex digits (of 4 bytes, repeated).
    Hex([u8; 4]),
    Raw(String),
}

/// A timestamp column: near 2027 (Unix milliseconds), so that records
/// decode often enough to test their re-encoding, or any integer.
#[derive(Arbitrary, Debug)]
enum Millis {
    Near(i32),
    Raw(i64),
}

impl Millis {
    fn get(self) -> i64 {
        match self {
            Self::Near(n) => 1_800_000_000_000 + i64::from(n) * 1000,
            Self::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    dialect: u8,
    now_ms: Millis,
    session_key: Key,
    data: String,
    user_id: Option<String>,
    created_at: Millis,
    last_active_at: Millis,
    expires_at: Millis,
    absolute_expires_at: Option<Millis>,
    permanent: i64,
    user_agent: Option<String>,
    ip: Option<String>,
    siblings: Option<String>,
}

fuzz_target!(|input: Input| {
    let dialect = match input.dialect % 3 {
        0 => Dialect::Sqlite,
        1 => Dialect::Postgres,
        _ => Dialect::MySql,
    };
    let session_key = match input.session_key {
        Key::Hex(seed) => seed.iter().cycle().take(32).map(|b| format!("{b:02x}")).collect(),
        Key::Raw(text) => text,
    };
    let row = SqlRow {
        session_key,
        data: input.data,
        user_id: input.user_id,
        created_at: input.created_at.get(),
        last_active_at: input.last_active_at.get(),
        expires_at: input.expires_at.get(),
        absolute_expires_at: input.absolute_expires_at.map(Millis::get),
        permanent: input.permanent,
        user_agent: input.user_agent,
        ip: input.ip,
        siblings: input.siblings,
    };
    let now_ms = input.now_ms.get();
    let live = Decode::sql_row(&row, dialect, now_ms);
    if case::wanted() {
        case::print(serde_json::json!({
            "dialect": format!("{dialect:?}"),
            "now_ms": now_ms,
            "session_key": row.session_key,
            "data": row.data,
            "user_id": row.user_id,
            "created_at": row.created_at,
            "last_active_at": row.last_active_at,
            "expires_at": row.expires_at,
            "absolute_expires_at": row.absolute_expires_at,
            "permanent": row.permanent,
            "user_agent": row.user_agent,
            "ip": row.ip,
            "siblings": row.siblings,
            "live": live,
        }));
    }
});
