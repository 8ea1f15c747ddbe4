//! Session keys as document field names: stores whose backends reserve
//! characters in field names (MongoDB, Firestore) %-encode just those.

use crate::{Error, Result};

/// `key` with every character of `always`, a first character found in
/// `leading`, and `%` itself written as `%XX`; the empty key is `%`.
/// Reversed by [`decode`].
pub(crate) fn encode(key: &str, always: &[char], leading: &[char]) -> String {
    if key.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(key.len());
    for (i, c) in key.chars().enumerate() {
        if c == '%' || always.contains(&c) || (i == 0 && leading.contains(&c)) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The key [`encode`] made `field` from.
pub(crate) fn decode(field: &str) -> Result<String> {
    if field == "%" {
        return Ok(String::new());
    }
    // The key is session data, perhaps the user's: the error (logged at
    // warn) does not quote it.
    let bad = || Error::corrupt("a stored session key is not encoded as this store encodes keys");
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code =
            rest.get(at + 1..at + 3).filter(|code| code.bytes().all(|b| b.is_ascii_hexdigit())).ok_or_else(bad)?;
        out.push(char::from(u8::from_str_radix(code, 16).map_err(|_| bad())?));
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn keys_round_trip() {
        for key in ["", "%", "a.b", "$set", "50%", "x\0y", "é.ü"] {
            assert_eq!(decode(&encode(key, &['.', '\0'], &['$'])).ok().as_deref(), Some(key), "{key:?}");
        }
    }

    #[test]
    fn a_badly_encoded_stored_key_is_corrupt_without_being_quoted() {
        for field in ["card-4111111111111111%", "card-4111111111111111%zz", "card-4111111111111111%+A", "%é1"] {
            let err = decode(field).expect_err("a badly encoded key decoded");
            assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
            assert!(!err.to_string().contains("4111") && !err.to_string().contains('é'), "{err}");
        }
    }
}
