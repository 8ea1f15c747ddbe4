//! A stored record, as bytes, decoded as every store that keeps the JSON
//! form (memory, Memcached, the cookie envelope's payload) decodes it:
//! `Corrupt` or a record, never a panic, and a record re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multisession::Record;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = Record::from_bytes(bytes) {
        let again = record.to_bytes().expect("a decoded record encodes");
        let _ = Record::from_bytes(&again).expect("an encoded record decodes");
    }
});
