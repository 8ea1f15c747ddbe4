//! A Redis session hash, as `HGETALL` and `HMGET` answer it, read as the
//! Redis store reads it, and `CLUSTER NODES` text read as the cluster layout
//! reads it: `Corrupt` or a record that re-encodes to itself, never a
//! panic. The fields are built from the store's own field names and value
//! shapes, so that the fuzzer gets past the layout version.
#![no_main]

#[path = "../case.rs"]
mod case;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use multisession::fuzzing::Decode;

#[derive(Arbitrary, Debug)]
enum Name {
    Version,
    IndexScore,
    WriteVersion,
    Meta,
    LastActive,
    Expires,
    Permanent,
    User,
    Siblings,
    /// A data key, `.` and the key.
    Data(String),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Raw(Vec<u8>),
    Number(i64),
    /// The `_meta` field's JSON, well formed but for its values.
    Fixed {
        created_at: i64,
        absolute_expires_at: Option<i64>,
        user_agent: Option<String>,
        ip: Option<String>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    resp3: bool,
    now_ms: i64,
    member: String,
    fields: Vec<(Name, Value)>,
    nodes: String,
}

fn name(name: Name) -> Vec<u8> {
    let known = |n: &str| n.as_bytes().to_vec();
    match name {
        Name::Version => known("_v"),
        Name::IndexScore => known("_ix"),
        Name::WriteVersion => known("_ver"),
        Name::Meta => known("_meta"),
        Name::LastActive => known("_la"),
        Name::Expires => known("_exp"),
        Name::Permanent => known("_perm"),
        Name::User => known("_user"),
        Name::Siblings => known("_sib"),
        Name::Data(key) => format!(".{key}").into_bytes(),
        Name::Raw(bytes) => bytes,
    }
}

fn value(value: Value) -> Vec<u8> {
    match value {
        Value::Raw(bytes) => bytes,
        Value::Number(n) => n.to_string().into_bytes(),
        Value::Fixed { created_at, absolute_expires_at, user_agent, ip } => serde_json::json!({
            "created_at": created_at,
            "absolute_expires_at": absolute_expires_at,
            "user_agent": user_agent,
            "ip": ip,
        })
        .to_string()
        .into_bytes(),
    }
}

fuzz_target!(|input: Input| {
    let fields: Vec<(Vec<u8>, Vec<u8>)> = input.fields.into_iter().map(|(n, v)| (name(n), value(v))).collect();
    let live = Decode::redis_hash(&fields, input.resp3, input.now_ms, &input.member);
    if case::wanted() {
        let pairs: Vec<serde_json::Value> =
            fields.iter().map(|(n, v)| serde_json::json!([case::bytes(n), case::bytes(v)])).collect();
        let (resp3, now_ms, member) = (input.resp3, input.now_ms, &input.member);
        case::print(serde_json::json!({
            "resp3": resp3, "now_ms": now_ms, "member": member, "fields": pairs, "live": live,
        }));
    }
    let _ = Decode::redis_cluster_nodes(&input.nodes);
});
