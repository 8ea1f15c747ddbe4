//! A reply of Firestore's REST API, as JSON bytes, read as the Firestore
//! store reads a session document, a listing's page and a query's answer:
//! `Corrupt` or records that re-encode to themselves, never a panic. The
//! first eight bytes are the reading time (Unix milliseconds).
#![no_main]

#[path = "../case.rs"]
mod case;

use libfuzzer_sys::fuzz_target;
use multisession::fuzzing::Decode;

fuzz_target!(|bytes: &[u8]| {
    let Some((now, reply)) = bytes.split_first_chunk::<8>() else { return };
    let live = Decode::firestore_reply(reply, i64::from_le_bytes(*now));
    if case::wanted() {
        // The input file is the case; only its outcome, for its name.
        case::print(serde_json::json!({ "live": live }));
    }
});
