//! A Memcached session item and a user's index item, read as the Memcached
//! store reads them: the item `Corrupt` or a record that re-encodes to
//! itself, the index the same entries once rendered and read again; never
//! a panic. Index lines are built well formed or raw, so that the fuzzer
//! reaches the merging of entries.
#![no_main]

#[path = "../case.rs"]
mod case;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use multisession::fuzzing::Decode;

#[derive(Arbitrary, Debug)]
enum Line {
    /// `key until written`, the key as the store writes it (base64url).
    Entry {
        key: [u8; 4],
        until: i64,
        written: Option<i64>,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    now_ms: i64,
    item: Vec<u8>,
    index: Vec<Line>,
}

/// 32 key bytes from 4, so that lines name the same session often.
fn key(seed: [u8; 4]) -> String {
    let bytes: Vec<u8> = seed.iter().cycle().take(32).copied().collect();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let live = Decode::memcached_item(&input.item, input.now_ms);
    let mut index = Vec::new();
    for line in input.index {
        match line {
            Line::Entry { key: seed, until, written } => {
                index.extend_from_slice(key(seed).as_bytes());
                index.extend_from_slice(format!(" {until}").as_bytes());
                if let Some(written) = written {
                    index.extend_from_slice(format!(" {written}").as_bytes());
                }
            }
            Line::Raw(bytes) => index.extend_from_slice(&bytes),
        }
        index.push(b'\n');
    }
    let sessions = Decode::memcached_index(&index);
    if case::wanted() {
        let (now_ms, item, index) = (input.now_ms, case::bytes(&input.item), case::bytes(&index));
        case::print(serde_json::json!({
            "now_ms": now_ms, "item": item, "live": live, "index": index, "sessions": sessions,
        }));
    }
});
