//! A MongoDB session document, read as the MongoDB store reads it:
//! `Corrupt` or a record that re-encodes to itself, never a panic. The
//! first byte chooses the input's form: raw BSON bytes (what the driver
//! decodes from the wire), or a document built from the store's own field
//! names with values of any BSON type, so that the fuzzer gets past the
//! layout version.
#![no_main]

#[path = "../case.rs"]
mod case;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use multisession::fuzzing::Decode;
use multisession::fuzzing::bson::{Bson, Document};

#[derive(Arbitrary, Debug)]
enum Name {
    Id,
    Version,
    UserId,
    Data,
    CreatedMs,
    LastActiveMs,
    ExpiresMs,
    AbsoluteMs,
    ExpiresAt,
    Permanent,
    Device,
    UserAgent,
    Ip,
    Siblings,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Int32(i32),
    Int64(i64),
    /// An `Int64` timestamp near 2027 (Unix milliseconds), so that records
    /// decode often enough to test their re-encoding.
    Millis(i32),
    Double(f64),
    String(String),
    Bool(bool),
    Null,
    Date(i64),
    Binary(Vec<u8>),
    Document(Vec<(Name, Value)>),
    Array(Vec<Value>),
}

fn name(name: Name) -> String {
    match name {
        Name::Id => "_id",
        Name::Version => "v",
        Name::UserId => "user_id",
        Name::Data => "data",
        Name::CreatedMs => "created_ms",
        Name::LastActiveMs => "last_active_ms",
        Name::ExpiresMs => "expires_ms",
        Name::AbsoluteMs => "absolute_ms",
        Name::ExpiresAt => "expires_at",
        Name::Permanent => "permanent",
        Name::Device => "device",
        Name::UserAgent => "user_agent",
        Name::Ip => "ip",
        Name::Siblings => "siblings",
        Name::Other(name) => return name,
    }
    .to_owned()
}

fn document(fields: Vec<(Name, Value)>) -> Document {
    fields.into_iter().map(|(n, v)| (name(n), bson(v))).collect()
}

fn bson(value: Value) -> Bson {
    match value {
        Value::Int32(n) => Bson::Int32(n),
        Value::Int64(n) => Bson::Int64(n),
        Value::Millis(n) => Bson::Int64(1_800_000_000_000 + i64::from(n) * 1000),
        Value::Double(n) => Bson::Double(n),
        Value::String(s) => Bson::String(s),
        Value::Bool(b) => Bson::Boolean(b),
        Value::Null => Bson::Null,
        Value::Date(ms) => Bson::DateTime(multisession::fuzzing::bson::DateTime::from_millis(ms)),
        Value::Binary(bytes) => Bson::Binary(multisession::fuzzing::bson::Binary {
            subtype: multisession::fuzzing::bson::spec::BinarySubtype::Generic,
            bytes,
        }),
        Value::Document(fields) => Bson::Document(document(fields)),
        Value::Array(items) => Bson::Array(items.into_iter().map(bson).collect()),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, rest)) = bytes.split_first() else { return };
    let mut input = Unstructured::new(rest);
    let Ok(now_ms) = input.arbitrary::<i64>() else { return };
    let doc = if mode % 2 == 0 {
        match Document::from_reader(input.take_rest()) {
            Ok(doc) => doc,
            Err(_) => return,
        }
    } else {
        match input.arbitrary::<Vec<(Name, Value)>>() {
            Ok(fields) => document(fields),
            Err(_) => return,
        }
    };
    let live = Decode::mongodb_document(&doc, now_ms);
    if case::wanted() {
        let bson: String =
            multisession::fuzzing::bson::to_vec(&doc).unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect();
        case::print(serde_json::json!({ "now_ms": now_ms, "bson": bson, "live": live }));
    }
});
