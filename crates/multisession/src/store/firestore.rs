//! Sessions in Google Cloud Firestore, through its REST API.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::field_name::decode as decode_key;
use super::{ExpiredBatch, PageCursor, SessionInfo, SessionsPage, Store};
use crate::record::{from_millis, to_millis};
use crate::{Change, Device, Error, ErrorKind, Meta, Record, Result, StoreKey};

/// How long one request may take before the store answers `Unavailable`.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often a change is retried when another writer changed the document
/// between its read and its write.
const ATTEMPTS: usize = 200;
/// How often a request Firestore aborted for contention is sent.
const ABORTED_ATTEMPTS: usize = 8;
/// Documents deleted per commit by [`Store::delete_expired_batch`].
const BATCH: usize = 300;
/// The fields of a session document besides its data, which queries read.
const META_FIELDS: [&str; 10] = [
    "v",
    "user_id",
    "created_ms",
    "last_active_ms",
    "expires_ms",
    "absolute_ms",
    "permanent",
    "user_agent",
    "ip",
    "siblings",
];
/// Firestore takes at most 500 writes in one commit.
const MAX_WRITES: usize = 500;
/// Whole documents read per page of [`Store::sessions_page`].
const WALK_PAGE: usize = 50;
/// Documents read per page of a user's sessions.
const PAGE: usize = 500;
/// The largest reply body read: a page of 500 documents holding a session's
/// metadata and data stays far below; anything larger is refused, not
/// buffered.
const MAX_REPLY: usize = 64 << 20;

/// Supplies OAuth access tokens for Firestore in Google Cloud (the emulator
/// needs none). With the `gcp-auth` feature, `store::GcpAuth` is one, over
/// Application Default Credentials; or implement it over another
/// credentials library.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A current access token with the `datastore` scope.
    async fn token(&self) -> Result<String>;
}

/// Sessions in a Firestore collection, one document per session, through
/// the REST API with `reqwest` — leaner than the gRPC client, and the
/// emulator needs no credentials. Document id: the store key. Fields:
/// `v`, `user_id`, `data` (a map of JSON texts, keys %-encoded where
/// Firestore would not take them), `created_ms`, `last_active_ms`,
/// `expires_ms`, `absolute_ms`, `permanent`, `user_agent`, `ip`, and
/// `expires_at` as a timestamp for an optional TTL policy.
///
/// - `load` is one GET and checks `expires_ms` itself: a TTL policy, where
///   configured, only removes documents later.
/// - A change reads the document, refuses it if expired, and writes only
///   the changed fields (an update mask) with the read's `updateTime` as a
///   precondition, retrying if another writer came between; a deleted
///   document fails the precondition, so nothing is recreated (`Gone`).
/// - A user's sessions come from an equality query on `user_id`, which
///   Firestore's automatic single-field index serves (expiry is checked on
///   the results, so no composite index is needed).
/// - `delete_expired_batch` deletes expired documents in batches, for the
///   cleanup task, and names the logins among them. Firestore's own TTL
///   policy on `expires_at` is a bonus, not relied on; what it removes is
///   not reported as expired.
/// - The session cap is counted, then applied, so logins at the same moment
///   may pass it (by one session each; see
///   [`Store::create_login`](crate::store::Store::create_login)).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::FirestoreStore;
/// // The emulator (FIRESTORE_EMULATOR_HOST=127.0.0.1:8080):
/// let store = FirestoreStore::connect("http://127.0.0.1:8080", "my-project", "sessions")?;
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FirestoreStore {
    http: reqwest::Client,
    /// `{base}/v1/projects/{project}/databases/(default)/documents`
    documents: String,
    collection: String,
    tokens: Option<Arc<dyn TokenSource>>,
    requests: Arc<AtomicU64>,
}

impl std::fmt::Debug for FirestoreStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirestoreStore")
            .field("documents", &self.documents)
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::unavailable("the Firestore session store failed", e)
}

/// A request Firestore answered with an error: its status and Firestore's
/// error code, never the reply itself (it can name documents, whose ids are
/// store keys).
fn refused(what: &str, status: StatusCode, reply: &Value) -> Error {
    let code = reply.pointer("/error/status").and_then(Value::as_str).unwrap_or("no error code");
    Error::new(ErrorKind::Unavailable, format!("the Firestore session store failed: {what} answered {status} ({code})"))
}

/// A Firestore map key for a session key: `.`, backticks and backslashes
/// would need quoting in field paths, and names of the form `__x__` are
/// reserved.
fn encode_key(key: &str) -> String {
    super::field_name::encode(key, &['.', '`', '\\', '\0'], &['_'])
}

/// The update-mask path of `data.<key>`: the key backtick-quoted.
fn data_path(field: &str) -> String {
    format!("data.`{field}`")
}

fn integer(n: i64) -> Value {
    json!({ "integerValue": n.to_string() })
}

fn string(s: &str) -> Value {
    json!({ "stringValue": s })
}

fn timestamp(t: OffsetDateTime) -> Value {
    json!({ "timestampValue": t.format(&Rfc3339).unwrap_or_default() })
}

fn optional(s: Option<&str>) -> Value {
    s.map_or(json!({ "nullValue": null }), string)
}

impl FirestoreStore {
    /// A store on Firestore's REST endpoint at `base` (the emulator's
    /// `http://host:port`, or `https://firestore.googleapis.com` with a
    /// [`TokenSource`]), keeping sessions in `collection` of `project`'s
    /// default database.
    ///
    /// TLS uses rustls; if the application has not installed a process-wide
    /// rustls crypto provider, this installs ring's.
    ///
    /// # Errors
    ///
    /// `Config` if the HTTP client cannot be built.
    ///
    /// ```
    /// let store = multisession::store::FirestoreStore::connect("http://127.0.0.1:8080", "demo", "sessions")?;
    /// # let _ = store;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn connect(base: &str, project: &str, collection: &str) -> Result<Self> {
        // rustls needs a process-wide crypto provider: ring, the one this
        // crate already builds, unless the application installed another.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::config(format!("firestore: {e}")))?;
        let documents = format!("{}/v1/projects/{project}/databases/(default)/documents", base.trim_end_matches('/'));
        Ok(Self {
            http,
            documents,
            collection: collection.to_owned(),
            tokens: None,
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Authenticates every request with tokens from `tokens`.
    ///
    /// ```
    /// # struct Static;
    /// # #[async_trait::async_trait]
    /// # impl multisession::store::TokenSource for Static {
    /// #     async fn token(&self) -> multisession::Result<String> { Ok("token".into()) }
    /// # }
    /// let store = multisession::store::FirestoreStore::connect("https://firestore.googleapis.com", "p", "sessions")?
    ///     .with_token_source(Static);
    /// # let _ = store;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn with_token_source(mut self, tokens: impl TokenSource) -> Self {
        self.tokens = Some(Arc::new(tokens));
        self
    }

    /// Requests and documents this store has sent and read so far: what
    /// Firestore does work (and bills) for.
    ///
    /// ```
    /// let store = multisession::store::FirestoreStore::connect("http://127.0.0.1:8080", "demo", "sessions")?;
    /// assert_eq!(store.operations(), 0);
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn operations(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn document(&self, key: &StoreKey) -> String {
        format!("{}/{}/{key}", self.documents, self.collection)
    }

    /// Sends one request; the JSON reply and its status. A request
    /// Firestore aborted for contention with another transaction (`409
    /// ABORTED`, which applied nothing) is sent again, a few times, after a
    /// short pause that grows: Google's documented answer to it.
    async fn send(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut pause = Duration::from_millis(5);
        for _ in 1..ABORTED_ATTEMPTS {
            let (status, reply) = self.send_once(method.clone(), url, query, body.clone()).await?;
            if status != StatusCode::CONFLICT
                || reply.pointer("/error/status").and_then(Value::as_str) != Some("ABORTED")
            {
                return Ok((status, reply));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        self.send_once(method, url, query, body).await
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.http.request(method, url).query(query);
        if let Some(tokens) = &self.tokens {
            request = request.bearer_auth(tokens.token().await?);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        // reqwest's errors name the URL, whose last segment is a store key.
        let mut response = request.send().await.map_err(|e| unavailable(e.without_url()))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unavailable(e.without_url()))? {
            if body.len() + chunk.len() > MAX_REPLY {
                return Err(unavailable(format!("Firestore sent a reply of more than {MAX_REPLY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|_| unavailable("Firestore sent a reply that is not JSON"))?
        };
        if status.is_server_error() || status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(refused("a request", status, &value));
        }
        Ok((status, value))
    }

    /// Runs a query for documents whose `field` compares to `value`, at
    /// most `limit`, from after the document named `after` (in name order).
    async fn query(
        &self,
        field: &str,
        op: &str,
        value: Value,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<Value>> {
        // The metadata only: a session's data is never needed here, and
        // could make a page of documents large.
        let fields: Vec<Value> = META_FIELDS.iter().map(|f| json!({ "fieldPath": f })).collect();
        let mut structured = json!({
            "select": { "fields": fields },
            "from": [{ "collectionId": self.collection }],
            "where": { "fieldFilter": { "field": { "fieldPath": field }, "op": op, "value": value } },
            "limit": limit,
        });
        if let Some(after) = after {
            structured["orderBy"] = json!([{ "field": { "fieldPath": "__name__" }, "direction": "ASCENDING" }]);
            structured["startAt"] = json!({ "values": [{ "referenceValue": after }], "before": false });
        } else if op == "EQUAL" {
            structured["orderBy"] = json!([{ "field": { "fieldPath": "__name__" }, "direction": "ASCENDING" }]);
        }
        let url = format!("{}:runQuery", self.documents);
        let (status, reply) =
            self.send(Method::POST, &url, &[], Some(json!({ "structuredQuery": structured }))).await?;
        if !status.is_success() {
            return Err(refused("a query", status, &reply));
        }
        let documents: Vec<Value> =
            reply.as_array().into_iter().flatten().filter_map(|r| r.get("document").cloned()).collect();
        self.requests.fetch_add(documents.len() as u64, Ordering::Relaxed);
        Ok(documents)
    }

    /// Every document of `user`, a page at a time.
    async fn user_documents(&self, user: &str) -> Result<Vec<Value>> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let after = all.last().and_then(|d| d.get("name")).and_then(Value::as_str);
            let page = self.query("user_id", "EQUAL", string(user), PAGE, after).await?;
            let full = page.len() == PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Deletes documents by full name, at most 500 to a commit (Firestore's
    /// limit); how many there were.
    async fn delete_names(&self, names: &[String]) -> Result<u64> {
        let url = format!("{}:commit", self.documents);
        for batch in names.chunks(MAX_WRITES) {
            let writes: Vec<Value> = batch.iter().map(|n| json!({ "delete": n })).collect();
            let (status, reply) = self.send(Method::POST, &url, &[], Some(json!({ "writes": writes }))).await?;
            if !status.is_success() {
                return Err(refused("a commit", status, &reply));
            }
        }
        Ok(names.len() as u64)
    }
}

fn field<'a>(document: &'a Value, name: &str) -> Option<&'a Value> {
    document.get("fields")?.get(name)
}

fn field_str<'a>(document: &'a Value, name: &str) -> Option<&'a str> {
    field(document, name)?.get("stringValue")?.as_str()
}

fn field_int(document: &Value, name: &str) -> Option<i64> {
    field(document, name)?.get("integerValue")?.as_str()?.parse().ok()
}

fn meta(document: &Value) -> Result<Meta> {
    let corrupt = |name: &str| Error::corrupt(format!("stored session field {name} is missing or malformed"));
    if field_int(document, "v") != Some(1) {
        return Err(corrupt("v"));
    }
    let ms = |name: &str| field_int(document, name).and_then(from_millis).ok_or_else(|| corrupt(name));
    let ip = field_str(document, "ip").map(|ip| ip.parse::<IpAddr>().map_err(|_| corrupt("ip"))).transpose()?;
    Ok(Meta {
        user_id: field_str(document, "user_id").map(str::to_owned),
        created_at: ms("created_ms")?,
        last_active_at: ms("last_active_ms")?,
        expires_at: ms("expires_ms")?,
        absolute_expires_at: field_int(document, "absolute_ms").map(|_| ms("absolute_ms")).transpose()?,
        permanent: field_int(document, "permanent").ok_or_else(|| corrupt("permanent"))? != 0,
        device: Device { user_agent: field_str(document, "user_agent").map(str::to_owned), ip },
        siblings: match field_str(document, "siblings") {
            Some(text) => serde_json::from_str(text)?,
            None => Default::default(),
        },
    })
}

fn data(document: &Value) -> Result<Map<String, Value>> {
    let fields = field(document, "data")
        .and_then(|d| d.get("mapValue"))
        .ok_or_else(|| Error::corrupt("stored session data is not a map"))?;
    let mut data = Map::new();
    for (name, value) in fields.get("fields").and_then(Value::as_object).into_iter().flatten() {
        let text = value.get("stringValue").and_then(Value::as_str).ok_or_else(|| Error::corrupt("a stored value"))?;
        data.insert(decode_key(name)?, serde_json::from_str(text)?);
    }
    Ok(data)
}

fn map_of(data: impl IntoIterator<Item = (String, Value)>) -> Result<Value> {
    let mut fields = Map::new();
    for (name, value) in data {
        fields.insert(encode_key(&name), string(&serde_json::to_string(&value)?));
    }
    Ok(json!({ "mapValue": { "fields": fields } }))
}

/// The fields of a new session's document, as `create` writes them.
fn fields_of(record: &Record) -> Result<Value> {
    let meta = &record.meta;
    Ok(json!({
        "v": integer(1),
        "user_id": optional(meta.user_id.as_deref()),
        "data": map_of(record.data.clone())?,
        "created_ms": integer(to_millis(meta.created_at)),
        "last_active_ms": integer(to_millis(meta.last_active_at)),
        "expires_ms": integer(to_millis(meta.expires_at)),
        "absolute_ms": meta.absolute_expires_at.map_or(json!({ "nullValue": null }), |t| integer(to_millis(t))),
        "expires_at": timestamp(meta.expires_at),
        "permanent": integer(i64::from(meta.permanent)),
        "user_agent": optional(meta.device.user_agent.as_deref()),
        "ip": optional(meta.device.ip.map(|ip| ip.to_string()).as_deref()),
        "siblings": string(&serde_json::to_string(&meta.siblings)?),
    }))
}

fn key_of(document: &Value) -> Result<StoreKey> {
    let name = document.get("name").and_then(Value::as_str).unwrap_or_default();
    name.rsplit('/').next().unwrap_or_default().parse()
}

#[async_trait]
impl Store for FirestoreStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        let (status, document) = self.send(Method::GET, &self.document(key), &[], None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(refused("a read", status, &document));
        }
        let meta = meta(&document)?;
        if meta.is_expired(OffsetDateTime::now_utc()) {
            return Ok(None);
        }
        Ok(Some(Record { data: data(&document)?, meta }))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        let fields = fields_of(record)?;
        let url = format!("{}/{}", self.documents, self.collection);
        let query = [("documentId", key.to_string())];
        let (status, reply) = self.send(Method::POST, &url, &query, Some(json!({ "fields": fields }))).await?;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::CONFLICT => Err(Error::new(ErrorKind::Conflict, "a session with this key exists")),
            s => Err(refused("a create", s, &reply)),
        }
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let url = self.document(key);
        let mut fields = json!({
            "last_active_ms": integer(to_millis(change.last_active_at)),
            "expires_ms": integer(to_millis(change.expires_at)),
            "expires_at": timestamp(change.expires_at),
        });
        let mut mask: Vec<String> = ["last_active_ms", "expires_ms", "expires_at"].map(str::to_owned).into();
        if let Some(permanent) = change.permanent {
            fields["permanent"] = integer(i64::from(permanent));
            mask.push("permanent".to_owned());
        }
        if let Some(siblings) = &change.siblings {
            fields["siblings"] = string(&serde_json::to_string(siblings)?);
            mask.push("siblings".to_owned());
        }
        if change.clear {
            fields["data"] = map_of(change.set.clone())?;
            mask.push("data".to_owned());
        } else if !change.set.is_empty() || !change.remove.is_empty() {
            // Named in the mask but absent from the body: removed.
            fields["data"] = map_of(change.set.clone())?;
            mask.extend(change.set.keys().chain(&change.remove).map(|k| data_path(&encode_key(k))));
        }
        for _ in 0..ATTEMPTS {
            let (status, document) = self.send(Method::GET, &url, &[], None).await?;
            if status == StatusCode::NOT_FOUND {
                return Err(Error::gone());
            }
            if meta(&document)?.is_expired(OffsetDateTime::now_utc()) {
                return Err(Error::gone());
            }
            // The precondition goes in a commit's body: the emulator ignores
            // it as a query parameter of PATCH.
            let version = document.get("updateTime").cloned().unwrap_or(Value::Null);
            let name = document.get("name").cloned().unwrap_or(Value::Null);
            let write = json!({
                "update": { "name": name, "fields": fields },
                "updateMask": { "fieldPaths": mask },
                "currentDocument": { "updateTime": version },
            });
            let commit = format!("{}:commit", self.documents);
            let (status, reply) = self.send(Method::POST, &commit, &[], Some(json!({ "writes": [write] }))).await?;
            match status {
                s if s.is_success() => return Ok(()),
                // Deleted meanwhile.
                StatusCode::NOT_FOUND => return Err(Error::gone()),
                // Another writer came between the read and the write (or
                // the document went): read again.
                _ if reply.pointer("/error/status").and_then(Value::as_str) == Some("FAILED_PRECONDITION") => continue,
                s => return Err(refused("an update", s, &reply)),
            }
        }
        Err(Error::new(ErrorKind::Conflict, "the session kept changing under concurrent writers"))
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        // Read first: an expired document still held is deleted but was no
        // session.
        let (status, document) = self.send(Method::GET, &self.document(key), &[], None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !status.is_success() {
            return Err(refused("a read", status, &document));
        }
        let live = meta(&document).is_ok_and(|m| !m.is_expired(OffsetDateTime::now_utc()));
        let query = [("currentDocument.exists", "true".to_owned())];
        let (status, reply) = self.send(Method::DELETE, &self.document(key), &query, None).await?;
        match status {
            s if s.is_success() => Ok(live),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(refused("a delete", s, &reply)),
        }
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        let now = OffsetDateTime::now_utc();
        let mut sessions = Vec::new();
        for document in self.user_documents(user).await? {
            let meta = meta(&document)?;
            if !meta.is_expired(now) {
                sessions.extend(SessionInfo::from_meta(key_of(&document)?, &meta));
            }
        }
        Ok(sessions)
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        let now = OffsetDateTime::now_utc();
        let mut names = Vec::new();
        for document in self.user_documents(user).await? {
            let key = key_of(&document)?;
            let live = meta(&document).is_ok_and(|m| !m.is_expired(now));
            if Some(&key) != keep && live {
                names.extend(document.get("name").and_then(Value::as_str).map(str::to_owned));
            }
        }
        self.delete_names(&names).await
    }

    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        // Firestore's own paging of a collection in name order, at most
        // WALK_PAGE documents (whole, data included) per reply.
        let limit = super::page_limit(limit)?.min(WALK_PAGE);
        let mut query = vec![("pageSize", limit.to_string())];
        if let Some(cursor) = cursor {
            if cursor.as_str().len() > 4096 {
                return Err(Error::usage("this page cursor was not made by this store"));
            }
            query.push(("pageToken", cursor.as_str().to_owned()));
        }
        let url = format!("{}/{}", self.documents, self.collection);
        let (status, reply) = self.send(Method::GET, &url, &query, None).await?;
        if !status.is_success() {
            return Err(refused("a listing", status, &reply));
        }
        let now = OffsetDateTime::now_utc();
        let mut page = SessionsPage::default();
        let documents = reply.get("documents").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        self.requests.fetch_add(documents.len() as u64, Ordering::Relaxed);
        for document in documents {
            let record = meta(document).and_then(|meta| Ok(Record { data: data(document)?, meta }));
            match (key_of(document), record) {
                (Ok(key), Ok(record)) if !record.meta.is_expired(now) => page.sessions.push((key, record)),
                (Ok(_), Ok(_)) => {}
                _ => page.unreadable += 1,
            }
        }
        page.next = reply.get("nextPageToken").and_then(Value::as_str).filter(|t| !t.is_empty()).map(PageCursor::new);
        Ok(page)
    }

    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        let now = integer(to_millis(OffsetDateTime::now_utc()));
        let documents = self.query("expires_ms", "LESS_THAN_OR_EQUAL", now, BATCH, None).await?;
        let names: Vec<&str> = documents.iter().filter_map(|d| d.get("name").and_then(Value::as_str)).collect();
        if names.is_empty() {
            return Ok(ExpiredBatch::default());
        }
        // Each delete requires its document to exist, so that of two
        // cleanups at once only the one that removed a document reports it:
        // the other's commit fails whole, and its next call asks again.
        let writes: Vec<Value> =
            names.iter().map(|name| json!({ "delete": name, "currentDocument": { "exists": true } })).collect();
        let url = format!("{}:commit", self.documents);
        let (status, reply) = self.send(Method::POST, &url, &[], Some(json!({ "writes": writes }))).await?;
        let lost =
            matches!(reply.pointer("/error/status").and_then(Value::as_str), Some("NOT_FOUND" | "FAILED_PRECONDITION"));
        if lost {
            return Ok(ExpiredBatch { more: true, ..ExpiredBatch::default() });
        }
        if !status.is_success() {
            return Err(refused("a commit", status, &reply));
        }
        let logins = documents
            .iter()
            .filter_map(|document| SessionInfo::from_meta(key_of(document).ok()?, &meta(document).ok()?))
            .collect();
        Ok(ExpiredBatch { removed: names.len() as u64, logins, more: documents.len() >= BATCH })
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl crate::fuzzing::Decode {
    /// A reply of Firestore's REST API, as JSON bytes, read at the Unix
    /// millisecond `now_ms` as a session document (`load`), as a page of a
    /// listing (`documents`) and as a query's answer (an array of
    /// `{document}`), as [`FirestoreStore`] reads each. Whether the reply
    /// was a live session document; each record re-encodes (as `create`
    /// writes it) to the same record.
    ///
    /// # Panics
    ///
    /// On a finding: a refusal that is not `Corrupt`, or a record that does
    /// not survive its own encoding.
    pub fn firestore_reply(bytes: &[u8], now_ms: i64) -> bool {
        let now = from_millis(now_ms).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let Ok(reply) = serde_json::from_slice::<Value>(bytes) else { return false };
        let read = |document: &Value| meta(document).and_then(|meta| Ok(Record { data: data(document)?, meta }));
        let check = |record: &Record| {
            let again = fields_of(record).ok().and_then(|fields| read(&json!({ "fields": fields })).ok());
            assert!(again.as_ref() == Some(record), "a decoded Firestore document re-encodes to another record");
        };
        let listed = reply.get("documents").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let queried = reply.as_array().into_iter().flatten().filter_map(|r| r.get("document"));
        for document in listed.iter().chain(queried) {
            crate::fuzzing::refused_as_corrupt(key_of(document));
            if let Some(record) = crate::fuzzing::refused_as_corrupt(read(document)) {
                check(&record);
            }
        }
        let Some(record) = crate::fuzzing::refused_as_corrupt(read(&reply)) else { return false };
        check(&record);
        !record.meta.is_expired(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_keys_encode_to_valid_field_names_and_back() {
        for key in ["a.b", "$x", "", "%", "__name__", "_x", "a`b", "a\\b", "ключ", "plain"] {
            let field = encode_key(key);
            assert!(!field.is_empty() && !field.contains(['.', '`', '\\']) && !field.starts_with("__"), "{field:?}");
            assert_eq!(decode_key(&field).expect("decodes"), key);
        }
    }
}
