//! The client-side store: the whole record lives in the cookie, encrypted
//! and authenticated.

use std::sync::Arc;

use cookie::{Cookie, CookieJar};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::Duration;

use super::Store;
use crate::{Change, Device, Error, ErrorKind, KeyRing, Meta, Record, Result, StoreKey};

/// The most a browser keeps of one cookie's name and value, in bytes.
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The version of the encrypted envelope, written as `"v"`.
const ENVELOPE_VERSION: u32 = 1;

/// Sessions kept entirely in the browser: the record is serialized into a
/// versioned envelope and encrypted with AES-256-GCM through the `cookie`
/// crate's private jar, with the cookie's name as associated data (a value
/// cannot be moved to another cookie).
///
/// Keys come as a [`KeyRing`]: the first encrypts, every one decrypts, and a
/// cookie read with an older key is re-issued under the first. A record
/// that would exceed [`MAX_COOKIE_BYTES`] fails the request with
/// [`ErrorKind::TooLarge`], naming the cookie and its size; no truncated
/// cookie is ever sent.
///
/// A cookie store keeps no user index: listing a user's devices answers
/// `Unsupported`. With [`CookieStore::with_revocation`], a per-user
/// generation counter in a server-side store makes "log out all devices"
/// work: a cookie minted under an older generation is no session. The cost
/// is one small store read per request that carries a logged-in cookie.
///
/// ```
/// use multisession::{Key, KeyRing, store::CookieStore};
/// let store = CookieStore::new(KeyRing::new(vec![Key::generate()])?);
/// # let _ = store;
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone)]
pub struct CookieStore {
    keys: KeyRing,
    revocation: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for CookieStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieStore").field("keys", &self.keys).field("revocation", &self.revocation.is_some()).finish()
    }
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    v: u32,
    /// The user's revocation generation when this cookie was minted.
    #[serde(skip_serializing_if = "is_zero")]
    g: u64,
    data: &'a Map<String, Value>,
    meta: &'a Meta,
}

#[derive(Deserialize)]
struct Envelope {
    v: u32,
    #[serde(default)]
    g: u64,
    data: Map<String, Value>,
    meta: Meta,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A cookie that decrypted: its record, its generation, and whether a key
/// other than the current one opened it.
pub(crate) struct Opened {
    pub(crate) record: Record,
    pub(crate) generation: u64,
    pub(crate) stale_key: bool,
}

impl CookieStore {
    /// A cookie store encrypting under the first key of `keys`.
    ///
    /// ```
    /// use multisession::{Key, KeyRing, store::CookieStore};
    /// let store = CookieStore::new(KeyRing::new(vec![Key::generate()])?);
    /// # let _ = store;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn new(keys: KeyRing) -> Self {
        Self { keys, revocation: None }
    }

    /// Keeps a per-user generation counter in `store`, so that logging a user
    /// out of all devices refuses every cookie minted before.
    ///
    /// ```
    /// use multisession::{Key, KeyRing, store::{CookieStore, MemoryStore}};
    /// let store = CookieStore::new(KeyRing::new(vec![Key::generate()])?).with_revocation(MemoryStore::new());
    /// # let _ = store;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn with_revocation(self, store: impl Store) -> Self {
        Self { revocation: Some(Arc::new(store)), ..self }
    }

    /// The store that keeps the users' revocation generations, if any.
    pub(crate) fn revocation_store(&self) -> Option<&Arc<dyn Store>> {
        self.revocation.as_ref()
    }

    /// Whether logout-all works on this store (a revocation store is set).
    pub(crate) fn revocable(&self) -> bool {
        self.revocation.is_some()
    }

    /// The encrypted cookie value for `record`.
    pub(crate) fn seal(&self, cookie_name: &str, record: &Record, generation: u64) -> Result<String> {
        let envelope = EnvelopeRef { v: ENVELOPE_VERSION, g: generation, data: &record.data, meta: &record.meta };
        let plaintext = serde_json::to_string(&envelope)
            .map_err(|e| Error::corrupt("a cookie session did not serialize").with_source(e))?;
        let mut jar = CookieJar::new();
        jar.private_mut(self.keys.first()).add(Cookie::new(cookie_name.to_owned(), plaintext));
        let value = jar.get(cookie_name).map(|c| c.value().to_owned()).unwrap_or_default();
        let size = cookie_name.len() + 1 + value.len();
        if size > MAX_COOKIE_BYTES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "the cookie `{cookie_name}` would be {size} bytes and browsers keep at most {MAX_COOKIE_BYTES}: \
                     keep large keys in a server-side session part"
                ),
            ));
        }
        Ok(value)
    }

    /// Decrypts and parses a cookie value; `None` for anything that does not
    /// open under a key of the ring or is not an envelope of a known version.
    pub(crate) fn open(&self, cookie_name: &str, value: &str) -> Option<Opened> {
        if cookie_name.len() + 1 + value.len() > MAX_COOKIE_BYTES {
            return None;
        }
        let cookie = Cookie::new(cookie_name.to_owned(), value.to_owned());
        let (index, plain) = self.keys.iter().enumerate().find_map(|(i, key)| {
            CookieJar::new().private(key).decrypt(cookie.clone()).map(|c| (i, c.value().to_owned()))
        })?;
        let envelope: Envelope = serde_json::from_str(&plain).ok()?;
        if envelope.v != ENVELOPE_VERSION {
            return None;
        }
        let record = Record { data: envelope.data, meta: envelope.meta };
        Some(Opened { record, generation: envelope.g, stale_key: index > 0 })
    }

    /// The user's current revocation generation (0 without a revocation store
    /// or before the first logout-all).
    pub(crate) async fn generation(&self, user: &str) -> Result<u64> {
        let Some(store) = &self.revocation else { return Ok(0) };
        Ok(store.load(&generation_key(user)).await?.map_or(0, |r| read_generation(&r)))
    }

    /// Moves the user's generation past every cookie minted so far; the new
    /// generation. The counter lives as long as the longest cookie session.
    pub(crate) async fn bump(&self, user: &str, keep_for: Duration) -> Result<u64> {
        let Some(store) = &self.revocation else {
            return Err(Error::unsupported(
                "a cookie session part keeps no user index: give its CookieStore a revocation store \
                 (with_revocation) to log users out of all devices",
            ));
        };
        let key = generation_key(user);
        let now = crate::record::now();
        let expires_at = crate::config::later(now, keep_for.saturating_add(Duration::DAY));
        for _ in 0..3 {
            match store.load(&key).await? {
                Some(record) => {
                    let next = read_generation(&record).checked_add(1).ok_or_else(|| {
                        Error::corrupt("the revocation counter is at its largest value; delete its record to reset it")
                    })?;
                    let mut change = Change::new(now, expires_at);
                    change.set.insert("generation".into(), json!(next));
                    match store.apply(&key, &change).await {
                        Err(e) if e.kind() == ErrorKind::Gone => continue,
                        other => return other.map(|()| next),
                    }
                }
                None => {
                    let meta = Meta {
                        user_id: None,
                        created_at: now,
                        last_active_at: now,
                        expires_at,
                        absolute_expires_at: None,
                        permanent: true,
                        device: Device::default(),
                        siblings: Default::default(),
                    };
                    let data = Map::from_iter([("generation".to_owned(), json!(1))]);
                    match store.create(&key, &Record { data, meta }).await {
                        Err(e) if e.kind() == ErrorKind::Conflict => continue,
                        other => return other.map(|()| 1),
                    }
                }
            }
        }
        Err(Error::new(ErrorKind::Conflict, "the revocation counter kept changing under concurrent logouts"))
    }
}

/// Where a user's generation counter lives: a key no session id can hash to.
fn generation_key(user: &str) -> StoreKey {
    StoreKey::derive("multisession.revocation.v1", user)
}

fn read_generation(record: &Record) -> u64 {
    record.data.get("generation").and_then(Value::as_u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;

    fn record(data: Map<String, Value>) -> Record {
        let now = crate::record::now();
        Record {
            data,
            meta: Meta {
                user_id: None,
                created_at: now,
                last_active_at: now,
                expires_at: now + Duration::HOUR,
                absolute_expires_at: None,
                permanent: false,
                device: Device::default(),
                siblings: Default::default(),
            },
        }
    }

    fn store(keys: Vec<Key>) -> CookieStore {
        CookieStore::new(KeyRing::new(keys).expect("keys"))
    }

    #[test]
    fn a_sealed_record_opens_under_its_name_only() {
        let s = store(vec![Key::generate()]);
        let r = record(Map::from_iter([("theme".to_owned(), json!("dark"))]));
        let value = s.seal("data", &r, 7).expect("sealed");
        assert!(!value.contains("dark"), "the value is not encrypted");
        let opened = s.open("data", &value).expect("opens");
        assert_eq!((opened.record, opened.generation, opened.stale_key), (r, 7, false));
        assert!(s.open("csrf", &value).is_none(), "a value moved to another cookie opened");
    }

    #[test]
    fn an_older_key_opens_and_asks_for_reissue_an_unknown_one_does_not() {
        let (old, new) = (Key::generate(), Key::generate());
        let value = store(vec![old.clone()]).seal("data", &record(Map::new()), 0).expect("sealed");
        assert!(store(vec![new.clone(), old]).open("data", &value).is_some_and(|o| o.stale_key));
        assert!(store(vec![new]).open("data", &value).is_none());
    }

    #[test]
    fn an_oversized_record_is_refused_with_the_cookie_name_and_size() {
        let s = store(vec![Key::generate()]);
        let r = record(Map::from_iter([("blob".to_owned(), json!("x".repeat(5000)))]));
        let err = s.seal("data", &r, 0).expect_err("a 5 kB cookie was sealed");
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert!(err.to_string().contains("`data`") && err.to_string().contains("4096"), "{err}");
    }

    #[tokio::test]
    async fn a_revocation_kept_longer_than_time_can_count_saturates() {
        let s = store(vec![Key::generate()]).with_revocation(crate::store::MemoryStore::new());
        assert_eq!(s.bump("23", Duration::MAX).await.expect("bumped"), 1);
        assert_eq!(s.bump("23", Duration::MAX).await.expect("bumped again"), 2);
    }

    #[test]
    fn garbage_does_not_open() {
        let s = store(vec![Key::generate()]);
        for value in ["", "x", "AAAA", &"A".repeat(5000), "é", "%%"] {
            assert!(s.open("data", value).is_none(), "{value:?} opened");
        }
    }
}
