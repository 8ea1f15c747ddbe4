//! Entry points into the private decoders of outside input, for the
//! cargo-fuzz targets in `fuzz/` only (the `fuzzing` feature), and for the
//! library's own tests, which replay the targets' kept cases through them
//! (see `tests` below). Not an API.
//!
//! Each decoder's module is private, so each entry point is defined next to
//! the decoder it wraps, as an associated function of [`Decode`]. An entry
//! point decodes its input as the store or loader does; whatever it decoded
//! it encodes again as the store writes it and decodes once more, and panics
//! if that second decode differs: a panic here is a finding. A decoder that
//! refuses its input must say `Corrupt` (`Config` for the configuration).

/// The decoders' entry points (see the module docs).
#[derive(Debug)]
pub struct Decode;

/// What a decoder answered, if it answered with a value.
///
/// # Panics
///
/// On a refusal that is not `Corrupt`: stored data that does not decode is
/// corrupt, never a store failure or a usage error.
#[cfg_attr(
    not(any(
        feature = "redis",
        feature = "memcached",
        feature = "mongodb",
        feature = "firestore",
        feature = "sqlite",
        feature = "postgres",
        feature = "mysql"
    )),
    allow(dead_code)
)]
pub(crate) fn refused_as_corrupt<T>(decoded: crate::Result<T>) -> Option<T> {
    match decoded {
        Ok(value) => Some(value),
        Err(e) => {
            assert!(e.kind() == crate::ErrorKind::Corrupt, "a decoder refused its input as {:?}", e.kind());
            None
        }
    }
}

/// The BSON types of [`Decode::mongodb_document`]'s input.
#[cfg(feature = "mongodb")]
pub use mongodb::bson;

/// A session row's columns as the database typed them, for
/// [`Decode::sql_row`]: the `data` text and key as stored, timestamps in
/// Unix milliseconds, `permanent` as an integer.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[derive(Clone, Debug, Default)]
#[allow(missing_docs)] // the columns of the same names
pub struct SqlRow {
    pub session_key: String,
    pub data: String,
    pub user_id: Option<String>,
    pub created_at: i64,
    pub last_active_at: i64,
    pub expires_at: i64,
    pub absolute_expires_at: Option<i64>,
    pub permanent: i64,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub siblings: Option<String>,
}

/// The fuzz targets' kept cases, replayed by `cargo test` through the same
/// entry points (no `fuzzing` feature needed: this module is compiled for
/// the library's own tests too). They live in `tests/fuzz_cases/`: one JSON
/// line per case for the structured targets, one file per case for the
/// others, named for the outcome it had when kept. Add a case by running a
/// corpus file through its target with `MULTISESSION_FUZZ_CASE=1` (see
/// `fuzz/case.rs`), or by copying a raw input file.
#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::Value;

    #[allow(unused_imports)] // with no store feature, only the JSON record and the cookie are replayed
    use super::Decode;

    /// Read where `cargo test` runs the package, not where it was compiled:
    /// a test binary built in another checkout sharing the target
    /// directory would look in that checkout.
    fn folder() -> PathBuf {
        let package = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        PathBuf::from(package).join("tests/fuzz_cases")
    }

    /// The cases of a structured target: one JSON object a line.
    #[allow(dead_code)] // with no store feature, no target is structured
    fn lines(target: &str) -> Vec<Value> {
        let path = folder().join(format!("{target}.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cases: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("a JSON case"))
            .collect();
        assert!(!cases.is_empty(), "{} holds no case", path.display());
        cases
    }

    /// The cases of a target whose input is raw bytes: (file name, bytes).
    fn files(target: &str) -> Vec<(String, Vec<u8>)> {
        let path = folder().join(target);
        let mut cases: Vec<(String, Vec<u8>)> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|entry| {
                let entry = entry.expect("a directory entry");
                (entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).expect("a case"))
            })
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "{} holds no case", path.display());
        cases
    }

    /// Bytes as [`fuzz/case.rs`] writes them: a string, or an array of
    /// numbers for bytes that are not UTF-8.
    #[allow(dead_code)] // with no store feature, no target is structured
    fn bytes(value: &Value) -> Vec<u8> {
        match value {
            Value::String(text) => text.as_bytes().to_vec(),
            Value::Array(items) => {
                items.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()).expect("a byte")).collect()
            }
            other => panic!("not bytes: {other}"),
        }
    }

    #[test]
    fn kept_json_record_cases_decode_as_named_and_records_re_encode() {
        for (name, input) in files("record_json") {
            let decoded = crate::Record::from_bytes(&input);
            match &decoded {
                Ok(record) => {
                    let again = record.to_bytes().and_then(|bytes| crate::Record::from_bytes(&bytes));
                    assert_eq!(again.as_ref().ok(), Some(record), "{name} re-encodes");
                }
                Err(e) => assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{name}"),
            }
            assert_eq!(decoded.is_ok(), name.starts_with("record-"), "{name}");
        }
    }

    #[tokio::test]
    async fn kept_cookie_header_cases_are_no_session_and_a_sealed_part_still_opens() {
        use crate::store::{CookieStore, MemoryStore};
        use crate::{Device, Fields, Key, KeyRing, SessionConfig, SessionSpec, Sessions};
        // The fuzz target's set-up: the same fixed keys.
        let ring = |byte: u8| KeyRing::new(vec![Key::from(&[byte; 64])]).expect("a key ring");
        let cookies = CookieStore::new(ring(2));
        let sessions = Sessions::from_specs([
            SessionSpec::new(MemoryStore::new(), SessionConfig::default().with_signed_id(ring(1)))
                .with_fields(Fields::include(["user_id"])),
            SessionSpec::new(cookies.clone(), SessionConfig::default().with_cookie_name("data"))
                .with_fields(Fields::Auto),
        ])
        .expect("a valid configuration");
        for (name, header) in files("cookie_header") {
            let session = sessions.session([header.as_slice()], Device::default());
            assert_eq!(session.user().await.ok(), Some(None), "{name}");
            assert_eq!(session.get::<Value>("theme").await.ok(), Some(None), "{name}");
            assert!(session.commit().await.is_ok(), "{name}");
        }
        // A well-formed part among the hostile ones still opens.
        let now = crate::record::to_millis(time::OffsetDateTime::now_utc());
        let later = now + 3_600_000;
        let json = format!(
            r#"{{"v":1,"data":{{"theme":"dark"}},"meta":{{"created_at":{now},"last_active_at":{now},"expires_at":{later},"permanent":false}}}}"#
        );
        let record = crate::Record::from_bytes(json.as_bytes()).expect("a record");
        let sealed = cookies.seal("data", &record, 0).expect("a sealed part");
        let header = format!("session=x; data={sealed}");
        let session = sessions.session([header.as_bytes()], Device::default());
        assert_eq!(session.get::<String>("theme").await.ok(), Some(Some("dark".to_owned())));
    }

    #[cfg(feature = "redis")]
    #[test]
    fn kept_redis_hash_cases_decode_as_recorded() {
        for case in lines("redis_hash") {
            let fields: Vec<(Vec<u8>, Vec<u8>)> = case["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .map(|pair| (bytes(&pair[0]), bytes(&pair[1])))
                .collect();
            let (resp3, now_ms, member) = (case["resp3"].as_bool(), case["now_ms"].as_i64(), case["member"].as_str());
            let live =
                Decode::redis_hash(&fields, resp3.expect("resp3"), now_ms.expect("now_ms"), member.expect("member"));
            assert_eq!(Some(live), case["live"].as_bool(), "{case}");
        }
    }

    #[cfg(feature = "memcached")]
    #[test]
    fn kept_memcached_item_and_index_cases_decode_as_recorded() {
        for case in lines("memcached_item") {
            let live = Decode::memcached_item(&bytes(&case["item"]), case["now_ms"].as_i64().expect("now_ms"));
            assert_eq!(Some(live), case["live"].as_bool(), "{case}");
            let sessions = Decode::memcached_index(&bytes(&case["index"]));
            assert_eq!(Some(sessions as u64), case["sessions"].as_u64(), "{case}");
        }
    }

    #[cfg(feature = "mongodb")]
    #[test]
    fn kept_mongodb_document_cases_decode_as_recorded() {
        for case in lines("mongodb_document") {
            let hex = case["bson"].as_str().expect("bson");
            let raw: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).expect("hex"), 16).expect("hex"))
                .collect();
            let doc = super::bson::Document::from_reader(raw.as_slice()).expect("a BSON document");
            let live = Decode::mongodb_document(&doc, case["now_ms"].as_i64().expect("now_ms"));
            assert_eq!(Some(live), case["live"].as_bool(), "{case}");
        }
    }

    /// Files named `live-…` hold a live session document; the first eight
    /// bytes are the reading time, as in the fuzz target.
    #[cfg(feature = "firestore")]
    #[test]
    fn kept_firestore_reply_cases_decode_as_named() {
        for (name, input) in files("firestore_document") {
            let (now, reply) = input.split_first_chunk::<8>().expect("eight bytes of time");
            let live = Decode::firestore_reply(reply, i64::from_le_bytes(*now));
            assert_eq!(live, name.starts_with("live-"), "{name}");
        }
    }

    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    #[test]
    fn kept_sql_row_cases_decode_as_recorded() {
        use crate::store::Dialect;
        for case in lines("sql_row") {
            let text = |name: &str| case[name].as_str().map(str::to_owned);
            let number = |name: &str| case[name].as_i64().expect("a number");
            let row = super::SqlRow {
                session_key: text("session_key").expect("session_key"),
                data: text("data").expect("data"),
                user_id: text("user_id"),
                created_at: number("created_at"),
                last_active_at: number("last_active_at"),
                expires_at: number("expires_at"),
                absolute_expires_at: case["absolute_expires_at"].as_i64(),
                permanent: number("permanent"),
                user_agent: text("user_agent"),
                ip: text("ip"),
                siblings: text("siblings"),
            };
            let dialect = match case["dialect"].as_str() {
                Some("Postgres") => Dialect::Postgres,
                Some("MySql") => Dialect::MySql,
                _ => Dialect::Sqlite,
            };
            let live = Decode::sql_row(&row, dialect, number("now_ms"));
            assert_eq!(Some(live), case["live"].as_bool(), "{case}");
        }
    }

    /// Files named `ok-…` make sessions; the input is the fuzz target's:
    /// the TOML text, then optionally a 0xFF byte and the keys' text.
    #[cfg(feature = "toml")]
    #[tokio::test]
    async fn kept_configuration_cases_load_as_named() {
        const KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKg==";
        for (name, input) in files("config_toml") {
            let (text, keys) = match input.iter().position(|&b| b == 0xff) {
                Some(at) => (&input[..at], &input[at + 1..]),
                None => (input.as_slice(), KEY.as_bytes()),
            };
            let (text, keys) = (std::str::from_utf8(text).expect("UTF-8"), std::str::from_utf8(keys).expect("UTF-8"));
            Decode::config_duration(text);
            assert_eq!(Decode::config_toml(text, keys).await, name.starts_with("ok-"), "{name}");
        }
    }
}
