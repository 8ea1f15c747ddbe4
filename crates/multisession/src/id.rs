//! Session ids (the secret a cookie carries) and store keys (what a store indexes by).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Error, Result};

/// Length of a session id in bytes: 256 bits.
const ID_LEN: usize = 32;
/// Length of an encoded session id: 32 bytes in base64url without padding.
pub(crate) const ENCODED_ID_LEN: usize = 43;

/// A session id: 32 bytes from the operating system's CSPRNG.
///
/// It is a credential, so it is opaque: equality is constant-time, `Debug`
/// prints nothing, and there is no `Display`. Only the cookie carries its
/// encoded form; stores see its [`StoreKey`].
///
/// ```
/// use multisession::SessionId;
///
/// let a = SessionId::generate()?;
/// let b = SessionId::generate()?;
/// assert!(a != b);
/// assert_eq!(format!("{a:?}"), "SessionId(..)");
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone)]
pub struct SessionId([u8; ID_LEN]);

impl SessionId {
    /// Draws a fresh id from the operating system's random number generator.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if the
    /// operating system cannot provide randomness, which is never papered over
    /// with a weaker generator.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; ID_LEN];
        getrandom::getrandom(&mut bytes).map_err(|e| Error::unavailable("the OS random number generator failed", e))?;
        Ok(Self(bytes))
    }

    /// The key under which stores keep this session: SHA-256 of the id.
    ///
    /// ```
    /// let id = multisession::SessionId::generate()?;
    /// assert_eq!(id.store_key(), id.store_key());
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn store_key(&self) -> StoreKey {
        StoreKey(Sha256::digest(self.0).into())
    }

    /// The cookie form: base64url without padding.
    pub(crate) fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses the cookie form; anything but exactly 43 base64url characters
    /// decoding to 32 bytes is `None`.
    pub(crate) fn decode(s: &str) -> Option<Self> {
        if s.len() != ENCODED_ID_LEN {
            return None;
        }
        // base64's length estimate for 43 characters is 33 bytes.
        let mut bytes = [0u8; ID_LEN + 1];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut bytes) {
            Ok(ID_LEN) => bytes[..ID_LEN].try_into().ok().map(Self),
            _ => None,
        }
    }
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SessionId {}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// The SHA-256 of a [`SessionId`]: the only form of an id a store ever sees.
///
/// A store key is not a credential: it cannot be turned back into a cookie,
/// so a leaked store gives an attacker no session. Its text form is 64
/// lowercase hex digits.
///
/// ```
/// use multisession::StoreKey;
///
/// let key = multisession::SessionId::generate()?.store_key();
/// let hex = key.to_string();
/// assert_eq!(hex.len(), 64);
/// assert_eq!(hex.parse::<StoreKey>()?, key);
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// The raw 32 bytes, for stores that keep binary keys.
    ///
    /// ```
    /// let key = multisession::SessionId::generate()?.store_key();
    /// assert_eq!(key.as_bytes().len(), 32);
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key whose bytes are `bytes`, as a store read them back.
    #[cfg(feature = "memcached")]
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key for something that is not a session (a user's revocation
    /// counter): SHA-256 over a domain label and `input`, which no session
    /// id's hash can equal in practice.
    pub(crate) fn derive(domain: &str, input: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(domain.as_bytes());
        hasher.update([0]);
        hasher.update(input.as_bytes());
        Self(hasher.finalize().into())
    }

    /// The public handle prefix: the first 8 bytes in hex.
    pub(crate) fn short(&self) -> String {
        hex(&self.0[..8])
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", self.short())
    }
}

/// Serialized as its 64 hex digits.
impl serde::Serialize for StoreKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for StoreKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        text.parse().map_err(|_| serde::de::Error::custom("a store key is 64 hex digits"))
    }
}

impl std::str::FromStr for StoreKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::corrupt(format!("a store key is 64 hex digits, got {} characters", s.len()));
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| invalid())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| invalid())?;
        }
        Ok(Self(out))
    }
}

/// Lowercase hex, by table: every store key is formatted on every request,
/// and `write!("{:02x}")` per byte showed in profiles.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Both indexes are below 16.
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_cookie_form() {
        let id = SessionId::generate().expect("rng");
        let text = id.encode();
        assert_eq!(text.len(), ENCODED_ID_LEN);
        assert!(SessionId::decode(&text) == Some(id));
    }

    #[test]
    fn malformed_ids_do_not_decode() {
        for bad in ["", "abc", &"A".repeat(42), &"A".repeat(44), &"é".repeat(43), &"!".repeat(43)] {
            assert!(SessionId::decode(bad).is_none(), "{bad:?} decoded");
        }
    }

    #[test]
    fn store_key_rejects_non_hex() {
        assert!("zz".repeat(32).parse::<StoreKey>().is_err());
        assert!("é".repeat(32).parse::<StoreKey>().is_err());
    }
}
