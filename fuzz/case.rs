//! The replay form of an input. With `MULTISESSION_FUZZ_CASE` set, a
//! target also prints one JSON line per input: a structured target what it
//! fed the decoder and the outcome, the form the library's replay tests
//! read from `crates/multisession/tests/fuzz_cases/TARGET.jsonl`; a target
//! of raw bytes only the outcome (the input file itself is the case, in
//! `tests/fuzz_cases/TARGET/`, named for that outcome). Run corpus files
//! through the built target to see them:
//! `MULTISESSION_FUZZ_CASE=1 $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/TARGET FILE…`.

#![allow(dead_code)] // each target uses what it needs

use std::sync::OnceLock;

use serde_json::Value;

/// Whether to print cases.
pub fn wanted() -> bool {
    static WANTED: OnceLock<bool> = OnceLock::new();
    *WANTED.get_or_init(|| std::env::var_os("MULTISESSION_FUZZ_CASE").is_some())
}

/// Bytes as a JSON string when they are UTF-8, else an array of numbers.
pub fn bytes(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => bytes.iter().map(|&b| Value::from(b)).collect(),
    }
}

pub fn print(case: Value) {
    println!("{case}");
}
