//! Sessions in MongoDB, through the official driver.

use std::net::IpAddr;

use async_trait::async_trait;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, Database, IndexModel};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::field_name::decode as decode_key;
use super::{ExpiredBatch, PageCursor, SessionInfo, SessionsPage, Store};
use crate::record::{from_millis, to_millis};
use crate::{Change, Device, Error, ErrorKind, Meta, Record, Result, StoreKey};

/// The version of the document layout, kept in each document's `v`.
const LAYOUT_VERSION: i32 = 1;

/// Sessions in a MongoDB collection, one document per session:
///
/// ```text
/// { _id: <store key>, v: 1, user_id, data: { <key>: <JSON text>, … },
///   created_ms, last_active_ms, expires_ms, absolute_ms, expires_at: <date>,
///   permanent: 0 | 1, device: { user_agent, ip }, siblings: <JSON text> }
/// ```
///
/// The store creates an index on `user_id` and a TTL index on `expires_at`,
/// which lets MongoDB remove expired sessions by itself. TTL deletion lags
/// (about a minute), so every read and every conditional write checks
/// `expires_ms` instead: an expired session is never returned or changed.
///
/// A change is one `update_one` without upsert — `$set` and `$unset` on
/// `data.<key>` — filtered on the session being live, so concurrent changes
/// to different keys all survive and a change to a deleted session matches
/// nothing (`Gone`) instead of recreating it. Values are kept as JSON text,
/// which round-trips every JSON number (BSON has no unsigned 64-bit
/// integer). Keys MongoDB cannot take as field names (containing `.` or a
/// NUL, starting with `$`, or empty) are stored %-encoded and decoded on
/// read.
///
/// The session cap is counted, then applied, so logins at the same moment
/// may pass it (by one session each; see
/// [`Store::create_login`](crate::store::Store::create_login)).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::MongoStore;
/// let store = MongoStore::connect("mongodb://127.0.0.1:27017/app", "sessions").await?;
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MongoStore {
    sessions: Collection<Document>,
}

/// A MongoDB field name for a session key: `.` and NUL anywhere and a
/// leading `$` are not allowed.
fn encode_key(key: &str) -> String {
    super::field_name::encode(key, &['.', '\0'], &['$'])
}

/// The store's error for a driver error. A server's message may quote the
/// document it refused (a duplicate-key error holds the `_id`, the store
/// key), so write and command errors keep only their code; connection and
/// server-selection errors keep their cause.
fn unavailable(e: mongodb::error::Error) -> Error {
    use mongodb::error::{ErrorKind as Kind, WriteFailure};
    let code = match &*e.kind {
        Kind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        Kind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        Kind::Command(c) => Some(c.code),
        Kind::InsertMany(_) | Kind::BulkWrite(_) => Some(-1),
        _ => None,
    };
    match code {
        Some(code) => Error::new(
            ErrorKind::Unavailable,
            format!("the MongoDB session store failed: the server refused an operation with code {code}"),
        ),
        None => Error::unavailable("the MongoDB session store failed", e),
    }
}

fn now_ms() -> i64 {
    to_millis(OffsetDateTime::now_utc())
}

impl MongoStore {
    /// Connects to `url` (`mongodb://…`; the database comes from the URL's
    /// path, `sessions` if it has none) and keeps sessions in `collection`.
    ///
    /// # Errors
    ///
    /// `Config` for a URL that does not parse; `Unavailable` if the indexes
    /// cannot be created.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let store = multisession::store::MongoStore::connect("mongodb://127.0.0.1:27017/app", "sessions").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, collection: &str) -> Result<Self> {
        let mut options = mongodb::options::ClientOptions::parse(url)
            .await
            .map_err(|e| Error::config(format!("mongodb url: {}", super::scrub(&e.to_string(), url))))?;
        options.server_selection_timeout = Some(std::time::Duration::from_secs(2));
        options.connect_timeout = Some(std::time::Duration::from_secs(2));
        let database = options.default_database.clone().unwrap_or_else(|| "sessions".to_owned());
        let client = Client::with_options(options)
            .map_err(|e| Error::config(format!("mongodb url: {}", super::scrub(&e.to_string(), url))))?;
        Self::from_database(&client.database(&database), collection).await
    }

    /// Keeps sessions in `collection` of a database handle the application
    /// already has, as flask-mongo-sessions did.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the indexes cannot be created.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await
    /// #     .map_err(|e| multisession::Error::unavailable("mongodb", e))?;
    /// let store = multisession::store::MongoStore::from_database(&client.database("app"), "sessions").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn from_database(database: &Database, collection: &str) -> Result<Self> {
        let sessions = database.collection::<Document>(collection);
        let ttl = IndexOptions::builder().expire_after(std::time::Duration::ZERO).build();
        sessions
            .create_indexes([
                IndexModel::builder().keys(doc! { "user_id": 1 }).build(),
                IndexModel::builder().keys(doc! { "expires_at": 1 }).options(ttl).build(),
            ])
            .await
            .map_err(unavailable)?;
        Ok(Self { sessions })
    }

    /// The collection, for tooling and tests.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let store = multisession::store::MongoStore::connect("mongodb://127.0.0.1:27017/app", "sessions").await?;
    /// assert_eq!(store.collection().name(), "sessions");
    /// # Ok(()) }
    /// ```
    pub fn collection(&self) -> &Collection<Document> {
        &self.sessions
    }
}

fn meta(doc: &Document) -> Result<Meta> {
    let corrupt = |field: &str| Error::corrupt(format!("stored session field {field} is missing or malformed"));
    if doc.get_i32("v").ok() != Some(LAYOUT_VERSION) {
        return Err(corrupt("v"));
    }
    let ms = |field: &str| -> Result<OffsetDateTime> {
        doc.get_i64(field).ok().and_then(from_millis).ok_or_else(|| corrupt(field))
    };
    let device = doc.get_document("device").ok();
    let text = |d: Option<&Document>, field: &str| d.and_then(|d| d.get_str(field).ok()).map(str::to_owned);
    let ip = text(device, "ip").map(|ip| ip.parse::<IpAddr>().map_err(|_| corrupt("device.ip"))).transpose()?;
    Ok(Meta {
        user_id: doc.get_str("user_id").ok().map(str::to_owned),
        created_at: ms("created_ms")?,
        last_active_at: ms("last_active_ms")?,
        expires_at: ms("expires_ms")?,
        absolute_expires_at: match doc.get("absolute_ms") {
            None | Some(Bson::Null) => None,
            Some(_) => Some(ms("absolute_ms")?),
        },
        permanent: doc.get_i32("permanent").map_err(|_| corrupt("permanent"))? != 0,
        device: Device { user_agent: text(device, "user_agent"), ip },
        siblings: match doc.get_str("siblings") {
            Ok(text) => serde_json::from_str(text)?,
            Err(_) => Default::default(),
        },
    })
}

fn data(doc: &Document) -> Result<Map<String, Value>> {
    let fields = doc.get_document("data").map_err(|_| Error::corrupt("stored session data is not a document"))?;
    let mut data = Map::new();
    for (field, value) in fields {
        let text = value.as_str().ok_or_else(|| Error::corrupt("a stored session value is not JSON text"))?;
        data.insert(decode_key(field)?, serde_json::from_str(text)?);
    }
    Ok(data)
}

fn json_text(value: &Value) -> Result<Bson> {
    Ok(Bson::String(serde_json::to_string(value)?))
}

/// The document of a new session, as `create` inserts it.
fn document(key: &StoreKey, record: &Record) -> Result<Document> {
    let meta = &record.meta;
    let mut data = Document::new();
    for (name, value) in &record.data {
        data.insert(encode_key(name), json_text(value)?);
    }
    let mut device = Document::new();
    if let Some(user_agent) = &meta.device.user_agent {
        device.insert("user_agent", user_agent);
    }
    if let Some(ip) = meta.device.ip {
        device.insert("ip", ip.to_string());
    }
    Ok(doc! {
        "_id": key.to_string(),
        "v": LAYOUT_VERSION,
        "user_id": meta.user_id.as_deref().map_or(Bson::Null, |u| Bson::String(u.to_owned())),
        "data": data,
        "created_ms": to_millis(meta.created_at),
        "last_active_ms": to_millis(meta.last_active_at),
        "expires_ms": to_millis(meta.expires_at),
        "absolute_ms": meta.absolute_expires_at.map_or(Bson::Null, |t| Bson::Int64(to_millis(t))),
        "expires_at": DateTime::from_millis(to_millis(meta.expires_at)),
        "permanent": i32::from(meta.permanent),
        "device": device,
        "siblings": serde_json::to_string(&meta.siblings)?,
    })
}

#[async_trait]
impl Store for MongoStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        let found = self.sessions.find_one(doc! { "_id": key.to_string() }).await.map_err(unavailable)?;
        let Some(doc) = found else { return Ok(None) };
        let meta = meta(&doc)?;
        if meta.is_expired(OffsetDateTime::now_utc()) {
            return Ok(None);
        }
        Ok(Some(Record { data: data(&doc)?, meta }))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        match self.sessions.insert_one(document(key, record)?).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref w)) if w.code == 11000) => {
                Err(Error::new(ErrorKind::Conflict, "a session with this key exists"))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let mut set = doc! {
            "last_active_ms": to_millis(change.last_active_at),
            "expires_ms": to_millis(change.expires_at),
            "expires_at": DateTime::from_millis(to_millis(change.expires_at)),
        };
        if let Some(permanent) = change.permanent {
            set.insert("permanent", i32::from(permanent));
        }
        if let Some(siblings) = &change.siblings {
            set.insert("siblings", serde_json::to_string(siblings)?);
        }
        let mut unset = Document::new();
        if change.clear {
            let mut data = Document::new();
            for (name, value) in &change.set {
                data.insert(encode_key(name), json_text(value)?);
            }
            set.insert("data", data);
        } else {
            for (name, value) in &change.set {
                set.insert(format!("data.{}", encode_key(name)), json_text(value)?);
            }
            for name in &change.remove {
                unset.insert(format!("data.{}", encode_key(name)), "");
            }
        }
        let mut update = doc! { "$set": set };
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        let live = doc! { "_id": key.to_string(), "expires_ms": { "$gt": now_ms() } };
        let done = self.sessions.update_one(live, update).await.map_err(unavailable)?;
        if done.matched_count == 0 { Err(Error::gone()) } else { Ok(()) }
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        let deleted = self
            .sessions
            .find_one_and_delete(doc! { "_id": key.to_string() })
            .projection(doc! { "expires_ms": 1 })
            .await
            .map_err(unavailable)?;
        Ok(deleted.is_some_and(|doc| doc.get_i64("expires_ms").is_ok_and(|ms| ms > now_ms())))
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        let filter = doc! { "user_id": user, "expires_ms": { "$gt": now_ms() } };
        let mut cursor = self.sessions.find(filter).projection(doc! { "data": 0 }).await.map_err(unavailable)?;
        let mut sessions = Vec::new();
        while cursor.advance().await.map_err(unavailable)? {
            let doc = cursor.deserialize_current().map_err(|_| Error::corrupt("a session document does not decode"))?;
            let key: StoreKey = doc.get_str("_id").map_err(|_| Error::corrupt("a session _id"))?.parse()?;
            sessions.extend(SessionInfo::from_meta(key, &meta(&doc)?));
        }
        Ok(sessions)
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        let mut filter = doc! { "user_id": user, "expires_ms": { "$gt": now_ms() } };
        if let Some(keep) = keep {
            filter.insert("_id", doc! { "$ne": keep.to_string() });
        }
        let done = self.sessions.delete_many(filter).await.map_err(unavailable)?;
        Ok(done.deleted_count)
    }

    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        let limit = super::page_limit(limit)?;
        // In `_id` order from the last page's `_id`: the primary index
        // serves each page where it left off.
        let after = cursor.map_or("", PageCursor::as_str);
        if after.len() > 256 {
            return Err(Error::usage("this page cursor was not made by this store"));
        }
        let mut found = self
            .sessions
            .find(doc! { "_id": { "$gt": after } })
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(unavailable)?;
        let now = OffsetDateTime::now_utc();
        let (mut page, mut last, mut read) = (SessionsPage::default(), None, 0usize);
        while found.advance().await.map_err(unavailable)? {
            read += 1;
            // The `_id` from the raw document first, so that the walk moves
            // past a document that does not decode.
            let id = found.current().get_str("_id").ok().map(str::to_owned);
            last = id.clone().or(last);
            let Ok(doc) = found.deserialize_current() else {
                page.unreadable += 1;
                continue;
            };
            let key = id.as_deref().and_then(|id| id.parse::<StoreKey>().ok());
            let record = meta(&doc).and_then(|meta| Ok(Record { data: data(&doc)?, meta }));
            match (key, record) {
                (Some(key), Ok(record)) if !record.meta.is_expired(now) => page.sessions.push((key, record)),
                (Some(_), Ok(_)) => {}
                _ => page.unreadable += 1,
            }
        }
        if read == limit {
            page.next = last.map(PageCursor::new);
        }
        Ok(page)
    }

    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        // The TTL index does this on MongoDB, about once a minute; this
        // removes what it has not reached yet. Which logins expired cannot
        // be told: the TTL monitor removes them unreported.
        let done = self.sessions.delete_many(doc! { "expires_ms": { "$lte": now_ms() } }).await.map_err(unavailable)?;
        Ok(ExpiredBatch { removed: done.deleted_count, ..ExpiredBatch::default() })
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl crate::fuzzing::Decode {
    /// A session document as the driver hands it over, read at the Unix
    /// millisecond `now_ms` as [`MongoStore`]'s `load` and a listing read
    /// it. Whether a live record came out; it re-encodes (as `create`
    /// writes it, through BSON bytes) to the same record.
    ///
    /// # Panics
    ///
    /// On a finding: a refusal that is not `Corrupt`, or a record that does
    /// not survive its own encoding.
    pub fn mongodb_document(doc: &Document, now_ms: i64) -> bool {
        let now = from_millis(now_ms).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let listed = meta(doc).and_then(|meta| {
            let key: StoreKey = doc.get_str("_id").map_err(|_| Error::corrupt("a session _id"))?.parse()?;
            Ok(SessionInfo::from_meta(key, &meta))
        });
        crate::fuzzing::refused_as_corrupt(listed);
        let read = |doc: &Document| meta(doc).and_then(|meta| Ok(Record { data: data(doc)?, meta }));
        let Some(record) = crate::fuzzing::refused_as_corrupt(read(doc)) else { return false };
        let again = document(&StoreKey::derive("fuzzing", "a session"), &record)
            .ok()
            .and_then(|doc| mongodb::bson::to_vec(&doc).ok())
            .and_then(|bytes| Document::from_reader(bytes.as_slice()).ok())
            .and_then(|doc| read(&doc).ok());
        assert!(again.as_ref() == Some(&record), "a decoded MongoDB document re-encodes to another record");
        !record.meta.is_expired(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_keys_encode_to_valid_field_names_and_back() {
        for key in ["a.b", "$x", "", "%", "%2E", "a$b", "nul\0l", "ключ", "plain", "x.$.y"] {
            let field = encode_key(key);
            assert!(!field.is_empty() && !field.contains('.') && !field.starts_with('$') && !field.contains('\0'));
            assert_eq!(decode_key(&field).expect("decodes"), key, "{key:?} via {field:?}");
        }
    }
}
