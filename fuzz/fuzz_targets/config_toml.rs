//! A TOML configuration file, as text, parsed and checked as
//! `Sessions::from_config_file` does, offline (no environment, files or
//! servers: keys come from the input, server stores are memory stores),
//! and the text as a duration: `Config` or sessions, never a panic.
//!
//! The input is the TOML text, then optionally a 0xFF byte (never in UTF-8)
//! and the text every `key_env` / `key_file` holds; without it, one valid
//! 64-byte key.
#![no_main]

#[path = "../case.rs"]
mod case;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use multisession::fuzzing::Decode;

/// 64 bytes of 0x2a, in standard base64.
const KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKg==";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"))
}

fuzz_target!(|bytes: &[u8]| {
    let (text, keys) = match bytes.iter().position(|&b| b == 0xff) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, KEY.as_bytes()),
    };
    let (Ok(text), Ok(keys)) = (std::str::from_utf8(text), std::str::from_utf8(keys)) else { return };
    let _ = Decode::config_duration(text);
    let ok = runtime().block_on(Decode::config_toml(text, keys));
    if case::wanted() {
        // The input file is the case; only its outcome, for its name.
        case::print(serde_json::json!({ "ok": ok }));
    }
});
