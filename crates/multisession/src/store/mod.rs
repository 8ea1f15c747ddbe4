//! The [`Store`] trait every backend implements, and the stores themselves.
//!
//! A store knows no cookie and no framework: it keeps [`Record`]s under
//! [`StoreKey`]s, applies [`Change`]s field by field, and indexes sessions by
//! user. [`crate::testing`] holds the suite every store must pass.

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::{Change, Device, Meta, Record, Result, SessionLimit, StoreKey};

mod cookie;
pub use cookie::{CookieStore, MAX_COOKIE_BYTES};
mod memory;
pub use memory::MemoryStore;
mod traced;
pub(crate) use traced::Traced;

#[cfg(feature = "dynamodb")]
mod dynamodb;
#[cfg(feature = "dynamodb")]
pub use self::dynamodb::DynamoDbStore;
/// The AWS SDK for DynamoDB, at the version [`DynamoDbStore::from_client`]
/// takes a client of.
#[cfg(feature = "dynamodb")]
pub use aws_sdk_dynamodb;
#[cfg(any(feature = "mongodb", feature = "firestore", feature = "dynamodb"))]
mod field_name;
#[cfg(feature = "firestore")]
mod firestore;
#[cfg(feature = "firestore")]
pub use self::firestore::{FirestoreStore, TokenSource};
#[cfg(feature = "gcp-auth")]
mod gcp_auth;
#[cfg(feature = "gcp-auth")]
pub use self::gcp_auth::GcpAuth;
#[cfg(feature = "mongodb")]
mod mongodb;
#[cfg(feature = "mongodb")]
pub use self::mongodb::MongoStore;
#[cfg(feature = "memcached")]
mod memcached;
#[cfg(feature = "memcached")]
pub use self::memcached::MemcachedStore;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{CacheStats, RedisStore};
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite_hot;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use sql::{Dialect, SqlOptions, SqlStore};

/// A session backend. Object safe: the engine holds an `Arc<dyn Store>`.
///
/// Every method returns [`crate::Error`]; a backend that cannot be reached
/// answers [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) within
/// its timeout, and works again once the backend is back, without being
/// rebuilt.
///
/// The rules, proven by the conformance suite in `multisession::testing`:
/// - `load` never returns an expired record, even while the backend still
///   holds it.
/// - `create` never overwrites: an existing key is `Conflict`.
/// - `apply` never creates: a deleted or expired session is `Gone`, and
///   nothing reappears.
/// - The per-user operations cost a number of backend operations that grows
///   with that user's sessions, never with the whole store.
/// - No error message holds a store key or session data.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live record under `key`, or `None`.
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>>;

    /// Stores a new record; `Conflict` if `key` already exists.
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()>;

    /// Stores the new session of a login or an id change, which replaces
    /// the live session `replaces` (if any) and, with `limit`, holds its user
    /// (`record.meta.user_id`) to a cap. Returns the sessions it deleted.
    ///
    /// - If `replaces` is no longer live (logged out, revoked or evicted
    ///   since the request read it), `Gone`, and nothing is created or
    ///   deleted: a new id never outlives the session it was for.
    /// - With `limit`, the user's other live sessions (leaving out
    ///   `replaces`) are counted, and the login is refused with
    ///   `TooManySessions` or the least recently active are deleted to make
    ///   room, as [`SessionLimit::evictions`] decides.
    ///
    /// It does not delete `replaces`; the caller does, once the new session
    /// exists. The default checks, counts, then creates, then deletes, in
    /// separate steps: of `n` logins of one user at the same moment, each
    /// can pass the count, so the user can hold up to `n - 1` sessions more
    /// than the cap. Evicting, the user's next login trims them back to the
    /// cap; refusing, the excess stays until those sessions end, and logins
    /// are refused meanwhile. Stores that can do it in one step (a
    /// transaction, a script, one lock) override it.
    async fn create_login(
        &self,
        key: &StoreKey,
        record: &Record,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        counted_login(self, key, record, replaces, limit).await
    }

    /// Applies `change` field by field; `Gone` if the session is not live. A
    /// change that alters nothing (a touch) only moves the activity time and
    /// expiry, without rewriting data.
    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()>;

    /// Deletes the session; whether a live one was deleted (a record past
    /// its expiry that the backend still held counts as none). Deleting twice
    /// is fine.
    async fn delete(&self, key: &StoreKey) -> Result<bool>;

    /// The live sessions of `user`.
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>>;

    /// Deletes every session of `user` except `keep`; how many it deleted.
    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64>;

    /// Removes one batch of expired records: how many, the logins among
    /// them where the backend can tell, and whether more may be left. A
    /// batch is at most about [`EXPIRED_BATCH`] records where the backend is
    /// read a batch at a time (SQL, Firestore), and everything expired
    /// where it is not (memory, MongoDB); nothing where expiry is native
    /// (Redis, Memcached, DynamoDB). Callers repeat it while
    /// [`ExpiredBatch::more`]; [`Sessions::delete_expired`](crate::Sessions::delete_expired)
    /// does, and reports the logins as audit events.
    async fn delete_expired_batch(&self) -> Result<ExpiredBatch>;

    /// One page of every live session in the store, with its key, for tools
    /// that copy or count them all (`multisession migrate`, `stats`): at
    /// most about `limit` sessions (1 to [`MAX_PAGE`]) from where `cursor`
    /// left off (`None`: the start), and the cursor of the next page (`None`
    /// after the last). A page costs in proportion to `limit`, never to the
    /// store. A session live throughout the walk appears at least once;
    /// one created or ended during it may or may not. Records that cannot
    /// be decoded are counted in [`SessionsPage::unreadable`], not returned.
    ///
    /// The default is `Unsupported`, for a backend that cannot walk its keys
    /// a page at a time (Memcached).
    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        let _ = (cursor, limit);
        Err(crate::Error::unsupported("this store cannot list all its sessions a page at a time"))
    }
}

/// About the most records one [`Store::delete_expired_batch`] call removes, so
/// that cleanup holds no lock for long and its answer stays small.
pub const EXPIRED_BATCH: usize = 500;

/// What one [`Store::delete_expired_batch`] call removed.
///
/// ```
/// use multisession::store::ExpiredBatch;
/// let none = ExpiredBatch::default();
/// assert!(none.removed == 0 && none.logins.is_empty() && !none.more);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ExpiredBatch {
    /// How many expired records it removed.
    pub removed: u64,
    /// The removed sessions that were logged in. Each is named by at most
    /// one call, the one that removed it (none if that call's answer was
    /// lost); none where the backend cannot tell which it removed (MongoDB,
    /// whose TTL monitor removes them too).
    pub logins: Vec<SessionInfo>,
    /// Whether expired records may be left: call again.
    pub more: bool,
}

/// The most sessions one [`Store::sessions_page`] call returns.
pub const MAX_PAGE: usize = 10_000;

/// One page of [`Store::sessions_page`].
#[derive(Clone, Debug, Default)]
pub struct SessionsPage {
    /// The live sessions of the page, each with its store key. A page may
    /// be empty before the last.
    pub sessions: Vec<(StoreKey, Record)>,
    /// How many stored records in the page could not be decoded.
    pub unreadable: u64,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<PageCursor>,
}

/// Where the next [`Store::sessions_page`] starts: opaque, meaningful only
/// to the store that made it. It holds no session id (a store key at most,
/// which is a hash).
///
/// ```
/// let cursor = multisession::store::PageCursor::new("42");
/// assert_eq!(cursor.as_str(), "42");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor(String);

impl PageCursor {
    /// A cursor holding `text`, for a store to hand back.
    ///
    /// ```
    /// let cursor = multisession::store::PageCursor::new("after:0a1b");
    /// # let _ = cursor;
    /// ```
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text the store put in.
    ///
    /// ```
    /// assert_eq!(multisession::store::PageCursor::new("x").as_str(), "x");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The store key a cursor of a key-ordered store holds.
pub(crate) fn cursor_key(cursor: Option<&PageCursor>) -> Result<Option<StoreKey>> {
    cursor
        .map(|c| c.as_str().parse::<StoreKey>())
        .transpose()
        .map_err(|_| crate::Error::usage("this page cursor was not made by this store"))
}

/// `limit` checked against [`MAX_PAGE`], for the stores' `sessions_page`.
pub(crate) fn page_limit(limit: usize) -> Result<usize> {
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(crate::Error::usage(format!("a page holds 1 to {MAX_PAGE} sessions, not {limit}")))
    }
}

/// Opens the server-side store a URL names: `memory://`, `sqlite://PATH`
/// (created if missing), `postgres://…`, `mysql://…` (or `mariadb://`),
/// `redis://HOST:PORT[/DB]` (`?client_cache=N` adds `RedisStore`'s
/// client-side cache), `rediss://…` (TLS),
/// `redis+cluster://HOST:PORT,HOST:PORT,…`, `memcached://HOST:PORT,…`,
/// `mongodb://…/DATABASE` (collection `sessions`), or
/// `firestore://HOST:PORT/PROJECT` (the Firestore emulator, collection
/// `sessions`), or `dynamodb://HOST:PORT/TABLE` (DynamoDB Local, over plain
/// HTTP with placeholder credentials; the table is created if missing), each
/// available with its cargo feature. `key_prefix` separates applications
/// sharing one backend (`memory://`, `mongodb://`, `firestore://` and
/// `dynamodb://` take none).
///
/// # Errors
///
/// `Config` for an unknown scheme (the message lists the ones compiled in), a
/// misplaced prefix or one that is not 1 to 64 printable ASCII characters; `Unavailable` if the backend does not answer. No
/// message shows the URL's password.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// let store = multisession::store::open("memory://", None).await?;
/// let err = multisession::store::open("carrier-pigeon://bird:s3cret@loft", None).await.unwrap_err();
/// assert!(err.to_string().contains("memory://") && !err.to_string().contains("s3cret"));
/// # let _ = store;
/// # Ok(()) }
/// ```
pub async fn open(url: &str, key_prefix: Option<&str>) -> Result<Arc<dyn Store>> {
    if let Some(prefix) = key_prefix {
        crate::config::check_key_prefix(prefix)?;
    }
    let unknown = || {
        crate::Error::config(format!(
            "backend: {:?} is not a store URL this build knows: use {}",
            redacted(url),
            SCHEMES.iter().map(|(_, form)| *form).collect::<Vec<_>>().join(", ")
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(unknown)?;
    if !SCHEMES.iter().any(|(known, _)| *known == scheme) {
        return Err(unknown());
    }
    #[allow(unused_variables)] // without a server store feature, only memory:// is left
    let prefix = key_prefix.unwrap_or("session");
    let no_prefix = |why: &str| match key_prefix {
        Some(_) => Err(crate::Error::config(format!("key_prefix: {scheme}:// {why} and takes no prefix"))),
        None => Ok(()),
    };
    match scheme {
        "memory" if rest.is_empty() => {
            no_prefix("holds one process's sessions")?;
            Ok(Arc::new(MemoryStore::new()))
        }
        // Every server store's prefix defaults to `session`.
        #[cfg(feature = "sqlite")]
        "sqlite" if !rest.is_empty() => Ok(Arc::new(SqlStore::open(rest).await?.with_key_prefix(prefix))),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(SqlStore::connect(url).await?.with_key_prefix(prefix))),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => Ok(Arc::new(SqlStore::connect(url).await?.with_key_prefix(prefix))),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(RedisStore::connect(url).await?.with_key_prefix(prefix))),
        #[cfg(feature = "redis")]
        "redis+cluster" => {
            let nodes = rest.split(',').map(|node| format!("redis://{node}"));
            Ok(Arc::new(RedisStore::connect_cluster(nodes).await?.with_key_prefix(prefix)))
        }
        #[cfg(feature = "memcached")]
        "memcached" => Ok(Arc::new(MemcachedStore::connect(rest.split(','))?.with_key_prefix(prefix))),
        // MongoDB has no key prefix: the collection (`sessions`) separates.
        #[cfg(feature = "mongodb")]
        "mongodb" => {
            no_prefix("keeps sessions in their own collection")?;
            Ok(Arc::new(MongoStore::connect(url, "sessions").await?))
        }
        // The emulator, which needs no credentials; Firestore in Google Cloud
        // is built in code, with a TokenSource.
        #[cfg(feature = "firestore")]
        "firestore" => {
            no_prefix("keeps sessions in their own collection")?;
            match rest.split_once('/') {
                Some((host, project)) if !host.is_empty() && !project.is_empty() => {
                    Ok(Arc::new(FirestoreStore::connect(&format!("http://{host}"), project, "sessions")?))
                }
                _ => Err(unknown()),
            }
        }
        // DynamoDB Local (or another endpoint that checks no credentials);
        // DynamoDB in AWS is built in code, from a client of the
        // application's AWS configuration.
        #[cfg(feature = "dynamodb")]
        "dynamodb" => {
            no_prefix("keeps sessions in a table of their own")?;
            match rest.split_once('/') {
                Some((host, table)) if !host.is_empty() && !table.is_empty() && !host.contains('@') => {
                    Ok(Arc::new(DynamoDbStore::connect(&format!("http://{host}"), table).await?))
                }
                _ => Err(unknown()),
            }
        }
        _ => Err(unknown()),
    }
}

/// `text` (a driver's error message about `url`) with every secret of
/// `url` that [`redacted`] masks replaced by `***`, should the driver have
/// quoted it: as written, percent-decoded, or the pieces of it that a
/// parser cuts at `/`, `?`, `#`, `@` or `:` (as a port, a path), those of
/// four bytes or more.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql", feature = "redis", feature = "mongodb")),
    allow(dead_code)
)]
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut hidden = Vec::new();
    for secret in secrets(url).into_iter().map(|span| &url[span]) {
        let pieces = secret.split(['/', '?', '#', '@', ':']).filter(|piece| piece.len() >= 4);
        hidden.extend([secret.to_owned(), percent_decoded(secret)].into_iter().chain(pieces.map(str::to_owned)));
    }
    hidden.retain(|secret| !secret.is_empty());
    // Longest first, so that a piece never splits a whole secret.
    hidden.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    hidden.into_iter().fold(text.to_owned(), |text, secret| text.replace(&secret, "***"))
}

/// The URL schemes [`open`] knows in this build, with the form each takes.
pub(crate) const SCHEMES: &[(&str, &str)] = &[
    ("memory", "memory://"),
    #[cfg(feature = "sqlite")]
    ("sqlite", "sqlite://PATH"),
    #[cfg(feature = "postgres")]
    ("postgres", "postgres://…"),
    #[cfg(feature = "postgres")]
    ("postgresql", "postgresql://…"),
    #[cfg(feature = "mysql")]
    ("mysql", "mysql://…"),
    #[cfg(feature = "mysql")]
    ("mariadb", "mariadb://…"),
    #[cfg(feature = "redis")]
    ("redis", "redis://HOST:PORT"),
    #[cfg(feature = "redis")]
    ("rediss", "rediss://HOST:PORT"),
    #[cfg(feature = "redis")]
    ("redis+cluster", "redis+cluster://HOST:PORT,…"),
    #[cfg(feature = "memcached")]
    ("memcached", "memcached://HOST:PORT,…"),
    #[cfg(feature = "mongodb")]
    ("mongodb", "mongodb://…/DATABASE"),
    #[cfg(feature = "firestore")]
    ("firestore", "firestore://EMULATOR_HOST:PORT/PROJECT"),
    #[cfg(feature = "dynamodb")]
    ("dynamodb", "dynamodb://HOST:PORT/TABLE"),
];

/// `url` with its secrets replaced by `***`, for messages and logs: the
/// password, and the value of every query parameter whose name or value
/// holds `password`, `secret` or `token` (any case), or whose name is
/// `pass` or `pwd`.
///
/// The rule assumes nothing is well formed, as a URL with a typo or an
/// unencoded character must not show its password: the user part runs to
/// the *last* `@` (so a password may hold `@`, `/`, `?` or `#`) and its
/// password from its first `:`, with or without a `://`. A URL without
/// one (`postgres:/app:s3cret@db`) hides everything from its first `:` to
/// the last `@`. When in doubt, more is hidden, never less.
///
/// ```
/// use multisession::store::redacted;
/// assert_eq!(redacted("postgres://app:s3cret@db:5432/app"), "postgres://app:***@db:5432/app");
/// assert_eq!(redacted("redis://:s3cret@cache:6379/0"), "redis://:***@cache:6379/0");
/// assert_eq!(redacted("mysql://db/app?user=app&password=s3cret"), "mysql://db/app?user=app&password=***");
/// assert_eq!(redacted("sqlite://sessions.db"), "sqlite://sessions.db");
/// assert_eq!(redacted("postgres://app:s3/cr?et#@db/app"), "postgres://app:***@db/app");
/// assert_eq!(redacted("postgres:/app:s3cret@db"), "postgres:***@db");
/// assert_eq!(redacted("mongodb://db/app?tlsCertificateKeyFilePassword=s3cret"), "mongodb://db/app?tlsCertificateKeyFilePassword=***");
/// assert_eq!(redacted("postgres://db/app?user=admin@srv&password=s3cret"), "postgres://db/app?user=admin@srv&password=***");
/// assert_eq!(redacted("postgres://db:5432/app?user=a@b&password=s3cret"), "postgres://db:***@b&password=***");
/// assert_eq!(redacted("mysql://db/app?password=p@ss"), "mysql://db/app?password=***");
/// ```
pub fn redacted(url: &str) -> String {
    redact(url)
}

fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for span in secrets(url) {
        out.push_str(&url[at..span.start]);
        out.push_str("***");
        at = span.end;
    }
    out.push_str(&url[at..]);
    out
}

/// Where `url`'s secrets are, in order and apart: see [`redacted`].
fn secrets(url: &str) -> Vec<std::ops::Range<usize>> {
    // After `SCHEME://` when the scheme is one (letters, digits, `+-.`);
    // otherwise the user part may start anywhere, so from the start.
    let start = url
        .split_once("://")
        .filter(|(scheme, _)| {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
        .map_or(0, |(scheme, _)| scheme.len() + 3);
    let mut spans = Vec::new();
    if let Some(at) = url[start..].rfind('@').map(|i| start + i)
        && let Some(colon) = url[start..at].find(':')
    {
        spans.push(start + colon + 1..at);
    }
    // The query from the first `?`, wherever the user part ends: an `@` in
    // a query value (`user=admin@server`) must not hide what follows.
    if let Some(query) = url[start..].find('?').map(|i| start + i + 1) {
        let mut secret_value = false;
        let mut pos = query;
        for pair in url[query..].split('&') {
            let end = pos + pair.len();
            match pair.split_once('=') {
                Some((name, value)) => {
                    let (name, value) = (name.to_ascii_lowercase(), value.to_ascii_lowercase());
                    let secret = |text: &str| ["password", "secret", "token"].iter().any(|word| text.contains(word));
                    secret_value = secret(&name) || secret(&value) || ["pass", "pwd"].contains(&name.as_str());
                    if secret_value {
                        spans.push(pos + name.len() + 1..end);
                    }
                }
                // A bare `&…` after a secret is taken for an `&` inside it.
                None => {
                    if let Some(last) = spans.last_mut().filter(|_| secret_value) {
                        last.end = end;
                    }
                }
            }
            pos = end + 1;
        }
    }
    // In order and apart: where the user part and the query overlap (an
    // `@` in the query), one span covers both.
    spans.sort_by_key(|span| span.start);
    let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

/// `text` with its `%XX` escapes decoded (as far as they form UTF-8).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| bytes[i] == b'%' && h.iter().all(u8::is_ascii_hexdigit));
        match hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// [`Store::create_login`] by counting, then creating, then deleting: for
/// stores that cannot do it in one step.
pub(crate) async fn counted_login<S: Store + ?Sized>(
    store: &S,
    key: &StoreKey,
    record: &Record,
    replaces: Option<&StoreKey>,
    limit: Option<SessionLimit>,
) -> Result<Vec<SessionInfo>> {
    if let Some(old) = replaces
        && store.load(old).await?.is_none()
    {
        return Err(crate::Error::gone());
    }
    let (Some(user), Some(limit)) = (record.meta.user_id.as_deref(), limit) else {
        store.create(key, record).await?;
        return Ok(Vec::new());
    };
    let others = store.user_sessions(user).await?.into_iter().filter(|s| s.key != *key && Some(&s.key) != replaces);
    let evict = limit.evictions(others.collect())?;
    store.create(key, record).await?;
    for info in &evict {
        store.delete(&info.key).await?;
    }
    Ok(evict)
}

/// A store shared behind an `Arc` is a store too, so `Arc<dyn Store>` goes
/// wherever a store does.
#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        (**self).load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        (**self).create(key, record).await
    }
    async fn create_login(
        &self,
        key: &StoreKey,
        record: &Record,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        (**self).create_login(key, record, replaces, limit).await
    }
    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        (**self).apply(key, change).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        (**self).delete(key).await
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        (**self).user_sessions(user).await
    }
    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        (**self).delete_user_sessions(user, keep).await
    }
    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        (**self).delete_expired_batch().await
    }
    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        (**self).sessions_page(cursor, limit).await
    }
}

/// Where one session part keeps its records: a server-side [`Store`] (its
/// cookie carries only the id) or a [`CookieStore`] (its cookie carries the
/// record). Every store converts into it.
///
/// ```
/// use multisession::{Key, KeyRing, store::{Backend, CookieStore, MemoryStore}};
/// let server: Backend = MemoryStore::new().into();
/// let client: Backend = CookieStore::new(KeyRing::new(vec![Key::generate()])?).into();
/// assert!(server.keeps_user_index() && !client.keeps_user_index());
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone, Debug)]
pub enum Backend {
    /// A server-side store.
    Server(Arc<dyn Store>),
    /// The browser, through an encrypted cookie.
    Cookie(CookieStore),
}

impl Backend {
    /// Whether the backend can list a user's sessions (only server stores).
    ///
    /// ```
    /// let backend: multisession::store::Backend = multisession::store::MemoryStore::new().into();
    /// assert!(backend.keeps_user_index());
    /// ```
    pub fn keeps_user_index(&self) -> bool {
        matches!(self, Self::Server(_))
    }
}

impl<S: Store> From<S> for Backend {
    fn from(store: S) -> Self {
        Self::Server(Arc::new(store))
    }
}

impl From<CookieStore> for Backend {
    fn from(store: CookieStore) -> Self {
        Self::Cookie(store)
    }
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Store")
    }
}

/// One session of a user, as a store lists it: no id and nothing that could be
/// turned into a cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The store key (a hash; not a credential).
    pub key: StoreKey,
    /// The user the session belongs to.
    pub user_id: String,
    /// The device that logged in.
    pub device: Device,
    /// When the user logged in on this device.
    pub created_at: OffsetDateTime,
    /// When the device last used the session.
    pub last_active_at: OffsetDateTime,
    /// When the session expires unless used.
    pub expires_at: OffsetDateTime,
    /// Whether the session is permanent.
    pub permanent: bool,
    /// The device's other server-side session parts (see [`Meta::siblings`]).
    pub siblings: std::collections::BTreeMap<String, StoreKey>,
}

impl SessionInfo {
    /// The listing entry of a record, or `None` when it has no user.
    ///
    /// ```
    /// # use multisession::{Meta, Device, store::SessionInfo};
    /// # let now = time::OffsetDateTime::now_utc();
    /// let key = multisession::SessionId::generate()?.store_key();
    /// let meta = Meta { user_id: Some("23".into()), created_at: now, last_active_at: now,
    ///     expires_at: now, absolute_expires_at: None, permanent: false, device: Device::default(),
    ///     siblings: Default::default() };
    /// assert_eq!(SessionInfo::from_meta(key, &meta).map(|i| i.user_id), Some("23".into()));
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn from_meta(key: StoreKey, meta: &Meta) -> Option<Self> {
        Some(Self {
            key,
            user_id: meta.user_id.clone()?,
            device: meta.device.clone(),
            created_at: meta.created_at,
            last_active_at: meta.last_active_at,
            expires_at: meta.expires_at,
            permanent: meta.permanent,
            siblings: meta.siblings.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{redacted, scrub};

    /// URLs whose password the old rule showed: no `://` (a typo), or a
    /// password holding an unencoded `/`, `?`, `#` or `@`; and query
    /// parameters named for secrets. Each hides `s3cr3t`.
    const LEAKY: &[&str] = &[
        "postgres:/app:s3cr3t@db/app",
        "postgres:app:s3cr3t@db",
        "postgres//app:s3cr3t@db",
        "app:s3cr3t@db",
        "postgres:/app:pa://s3cr3t@db",
        "postgres://app:s3cr3t/x@db/app",
        "postgres://app:s3cr3t?x@db/app",
        "postgres://app:s3cr3t#x@db/app",
        "postgres://app:s3c@r3t@db/app",
        "mysql://app:/s3cr3t@db/app",
        "postgres://db/app?sslmode=require&sslpassword=s3cr3t",
        "mongodb://db/app?tlsCertificateKeyFilePassword=s3cr3t&authSource=admin",
        "redis://db?Client_Secret=s3cr3t",
        "firestore://db/p?access_token=s3cr3t",
        "mysql://db/app?user=app&password=s3&cr3t",
        "mysql://db/app?PWD=s3cr3t",
        "postgres://db.example.com/app?user=admin@srv&password=s3cr3t",
        "mysql://db/app?password=s3cr3t&user=me@corp.com",
        "postgres://db:5432/app?user=a@b&password=s3cr3t",
        "mysql://db/app?password=p@s3cr3t",
        "mongodb://db/app?authMechanismProperties=AWS_SESSION_TOKEN:s3cr3t",
    ];

    #[test]
    fn redacted_hides_passwords_with_delimiters_typos_and_secret_query_values() {
        for url in LEAKY {
            let shown = redacted(url);
            assert!(!shown.contains("s3cr3t") && !shown.contains("cr3t"), "{url} is shown as {shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert_eq!(
            redacted("postgres://app:s3cr3t/x@db/app?sslmode=require"),
            "postgres://app:***@db/app?sslmode=require"
        );
        assert_eq!(redacted("postgres:/app:s3cr3t@db/app"), "postgres:***@db/app");
        assert_eq!(
            redacted("mysql://db/app?user=app&password=s3&cr3t&ssl=1"),
            "mysql://db/app?user=app&password=***&ssl=1"
        );
        // Nothing secret, nothing hidden.
        for url in
            ["memory://", "redis+cluster://a:1,b:2", "mongodb://h1:1,h2:2/db?authSource=admin", "sqlite://C:/x.db"]
        {
            assert_eq!(redacted(url), url);
        }
    }

    #[test]
    fn scrub_hides_what_redacted_hides() {
        for url in LEAKY {
            // A driver may quote the URL, or the piece it took for a port.
            let piece = if url.contains("s3cr3t") { "s3cr3t" } else { "" };
            let scrubbed = scrub(&format!("driver: cannot parse {url}: invalid port {piece}"), url);
            assert!(!scrubbed.contains("cr3t"), "{scrubbed}");
        }
        let url = "postgres://app:s3%2Fcr3t@db/app";
        assert_eq!(scrub("auth failed for s3/cr3t and s3%2Fcr3t", url), "auth failed for *** and ***");
    }

    /// `store::open` refuses a URL it cannot read without showing its
    /// password, however malformed.
    #[tokio::test]
    async fn store_open_hides_the_password_of_a_url_it_refuses() {
        for url in ["postgres:/app:s3cr3t@db/app", "carrier-pigeon://app:s3/cr3t@loft", "memory:/x:s3cr3t@y"] {
            let err = super::open(url, None).await.expect_err("not a store URL");
            assert!(!err.to_string().contains("cr3t"), "{err}");
        }
    }
}
