//! What a store keeps for one session ([`Record`], [`Meta`], [`Device`]) and
//! what one request changed ([`Change`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::{Error, Result, StoreKey};

/// The version of [`Record`]'s serialized form, written as `"v"`.
pub const RECORD_FORMAT_VERSION: u32 = 1;

/// Longest User-Agent kept per session; longer ones are cut at a char boundary.
const MAX_USER_AGENT: usize = 256;

/// The facts recorded about the device that logged in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The request's `User-Agent`, at most 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The client's address, as the server saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

impl Device {
    /// Device facts from a User-Agent and a client address. An overlong
    /// User-Agent is cut, so a client cannot make its record large.
    ///
    /// ```
    /// let device = multisession::Device::new(Some("curl/8".into()), "127.0.0.1".parse().ok());
    /// assert_eq!(device.user_agent.as_deref(), Some("curl/8"));
    /// ```
    pub fn new(user_agent: Option<String>, ip: Option<IpAddr>) -> Self {
        let user_agent = user_agent.map(|mut ua| {
            if ua.len() > MAX_USER_AGENT {
                let mut cut = MAX_USER_AGENT;
                while !ua.is_char_boundary(cut) {
                    cut -= 1;
                }
                ua.truncate(cut);
            }
            ua
        });
        Self { user_agent, ip }
    }

    fn is_unknown(&self) -> bool {
        self.user_agent.is_none() && self.ip.is_none()
    }
}

/// Everything about a session that is not its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The logged-in user, if any; stores index sessions by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// When the session was created (for a login: when the user logged in).
    #[serde(with = "millis")]
    pub created_at: OffsetDateTime,
    /// When a request last used the session (updated on writes and touches).
    #[serde(with = "millis")]
    pub last_active_at: OffsetDateTime,
    /// When the session expires unless used again. Stores never return a
    /// record at or past this instant.
    #[serde(with = "millis")]
    pub expires_at: OffsetDateTime,
    /// The hard limit no activity can move, if an absolute lifetime is set.
    #[serde(with = "millis::option", default, skip_serializing_if = "Option::is_none")]
    pub absolute_expires_at: Option<OffsetDateTime>,
    /// Whether the session uses the permanent lifetime and a persistent cookie.
    pub permanent: bool,
    /// The device that created the session.
    #[serde(default, skip_serializing_if = "Device::is_unknown")]
    pub device: Device,
    /// The device's other server-side session parts, by cookie name. In the
    /// part that keeps the login: where the others live, so that ending
    /// this session (logout everywhere, revoke, eviction) ends them too. In
    /// another part of a logged-in device: the login's session, its owner,
    /// without which the part is no session. Empty for a session of one
    /// part.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub siblings: BTreeMap<String, StoreKey>,
}

impl Meta {
    /// Whether the session is expired at `now`.
    ///
    /// ```
    /// # use multisession::{Meta, Device};
    /// let now = time::OffsetDateTime::now_utc();
    /// let meta = Meta { user_id: None, created_at: now, last_active_at: now, expires_at: now,
    ///     absolute_expires_at: None, permanent: false, device: Device::default(), siblings: Default::default() };
    /// assert!(meta.is_expired(now));
    /// ```
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }
}

/// The current time, at the millisecond precision every store keeps.
pub(crate) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now)
}

/// A stored session: its data and its [`Meta`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The session's key/value data.
    pub data: Map<String, Value>,
    /// Who, when and from where.
    pub meta: Meta,
}

/// The versioned envelope of a serialized [`Record`].
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    v: u32,
    #[serde(flatten)]
    record: &'a Record,
}

#[derive(Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    record: Record,
}

impl Record {
    /// Serializes the record as versioned JSON (`{"v":1,"data":…,"meta":…}`),
    /// for stores that keep a record as one value.
    ///
    /// # Errors
    ///
    /// Never in practice: data is already JSON. The `Result` keeps encoders
    /// honest.
    ///
    /// ```
    /// # use multisession::{Record, Meta, Device};
    /// # let now = time::OffsetDateTime::now_utc();
    /// # let meta = Meta { user_id: Some("23".into()), created_at: now, last_active_at: now,
    /// #     expires_at: now, absolute_expires_at: None, permanent: false, device: Device::default(), siblings: Default::default() };
    /// let record = Record { data: Default::default(), meta };
    /// let bytes = record.to_bytes()?;
    /// assert!(bytes.starts_with(br#"{"v":1"#));
    /// assert_eq!(Record::from_bytes(&bytes)?.meta.user_id.as_deref(), Some("23"));
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(&EnvelopeRef { v: RECORD_FORMAT_VERSION, record: self })
            .map_err(|e| Error::corrupt("a session record did not serialize").with_source(e))
    }

    /// Parses what [`Record::to_bytes`] wrote.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt) for anything that is
    /// not a record of a known version.
    ///
    /// ```
    /// assert!(multisession::Record::from_bytes(b"garbage").is_err());
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let envelope: Envelope = serde_json::from_slice(bytes)?;
        if envelope.v != RECORD_FORMAT_VERSION {
            return Err(Error::corrupt(format!("unknown session record version {}", envelope.v)));
        }
        Ok(envelope.record)
    }

    /// Applies a [`Change`] in memory, exactly as stores must apply it field
    /// by field: clear, then remove, then set, then the new metadata.
    ///
    /// ```
    /// # use multisession::{Record, Meta, Device, Change};
    /// # let now = time::OffsetDateTime::now_utc();
    /// # let meta = Meta { user_id: None, created_at: now, last_active_at: now,
    /// #     expires_at: now, absolute_expires_at: None, permanent: false, device: Device::default(), siblings: Default::default() };
    /// let mut record = Record { data: Default::default(), meta };
    /// let mut change = Change::new(now, now);
    /// change.set.insert("cart".into(), serde_json::json!([1, 2]));
    /// record.apply(&change);
    /// assert_eq!(record.data["cart"], serde_json::json!([1, 2]));
    /// ```
    pub fn apply(&mut self, change: &Change) {
        change.apply_to_data(&mut self.data);
        if let Some(permanent) = change.permanent {
            self.meta.permanent = permanent;
        }
        if let Some(siblings) = &change.siblings {
            self.meta.siblings = siblings.clone();
        }
        self.meta.last_active_at = change.last_active_at;
        self.meta.expires_at = change.expires_at;
    }
}

/// What one request did to an existing session, applied by a store field by
/// field so that concurrent requests touching different keys both survive.
/// A change that [alters](Change::alters) nothing is a *touch*: it only moves
/// the activity time and expiry, and stores must not rewrite data for it.
///
/// The user of a session never changes through a `Change`: logging in mints a
/// new session (a new id). `user_id` says whose session it is, so that a store
/// with a per-user index can keep the index's expiry in step.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Remove every key before applying `remove` and `set`.
    pub clear: bool,
    /// Keys to remove.
    pub remove: BTreeSet<String>,
    /// Keys to set, with their new values.
    pub set: BTreeMap<String, Value>,
    /// A new permanent flag, if it changed.
    pub permanent: Option<bool>,
    /// The request's time, the new `last_active_at`.
    pub last_active_at: OffsetDateTime,
    /// The new expiry.
    pub expires_at: OffsetDateTime,
    /// This device's other server-side parts, if they moved (see
    /// [`Meta::siblings`]).
    pub siblings: Option<BTreeMap<String, StoreKey>>,
    /// Whose session this is, as loaded (context; never a change of user).
    pub user_id: Option<String>,
}

impl Change {
    /// An empty change that only moves the activity time and expiry.
    ///
    /// ```
    /// let now = time::OffsetDateTime::now_utc();
    /// let change = multisession::Change::new(now, now + time::Duration::DAY);
    /// assert!(change.set.is_empty() && !change.clear);
    /// ```
    pub fn new(last_active_at: OffsetDateTime, expires_at: OffsetDateTime) -> Self {
        Self {
            clear: false,
            remove: BTreeSet::new(),
            set: BTreeMap::new(),
            permanent: None,
            last_active_at,
            expires_at,
            siblings: None,
            user_id: None,
        }
    }

    /// Applies the data part of the change: clear, then remove, then set.
    /// For stores that rewrite a session's data as one value under a lock.
    ///
    /// ```
    /// let now = time::OffsetDateTime::now_utc();
    /// let mut change = multisession::Change::new(now, now);
    /// change.remove.insert("old".into());
    /// let mut data = serde_json::Map::new();
    /// data.insert("old".into(), 1.into());
    /// change.apply_to_data(&mut data);
    /// assert!(data.is_empty());
    /// ```
    pub fn apply_to_data(&self, data: &mut Map<String, Value>) {
        if self.clear {
            data.clear();
        }
        for key in &self.remove {
            data.remove(key);
        }
        for (key, value) in &self.set {
            data.insert(key.clone(), value.clone());
        }
    }

    /// Whether the change alters data or flags; a change that does not is a
    /// touch.
    ///
    /// ```
    /// let now = time::OffsetDateTime::now_utc();
    /// assert!(!multisession::Change::new(now, now).alters());
    /// ```
    pub fn alters(&self) -> bool {
        self.clear
            || !self.remove.is_empty()
            || !self.set.is_empty()
            || self.permanent.is_some()
            || self.siblings.is_some()
    }
}

/// Timestamps as Unix milliseconds in an `i64`, the precision every store
/// keeps. (`time`'s own millisecond format goes through `i128`, which
/// `serde(flatten)` cannot buffer.)
pub(crate) mod millis {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use time::OffsetDateTime;

    pub(crate) fn to_millis(t: OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    pub(crate) fn from_millis(ms: i64) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    }

    pub(crate) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(to_millis(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let ms = i64::deserialize(d)?;
        from_millis(ms).ok_or_else(|| D::Error::custom("timestamp out of range"))
    }

    pub(super) mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&to_millis(*t)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
            Option::<i64>::deserialize(d)?
                .map(|ms| from_millis(ms).ok_or_else(|| D::Error::custom("timestamp out of range")))
                .transpose()
        }
    }
}

#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "mongodb",
    feature = "firestore",
    feature = "dynamodb"
))]
pub(crate) use millis::from_millis;
#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "memcached",
    feature = "mongodb",
    feature = "firestore",
    feature = "dynamodb"
))]
pub(crate) use millis::to_millis;
