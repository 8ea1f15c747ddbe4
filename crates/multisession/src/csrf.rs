//! Cross-site request forgery: the origin check framework adapters apply.
//! The token half lives on [`Session`](crate::Session)
//! (`csrf_token`, `verify_csrf_token`).
#![cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]

use std::sync::Arc;

use crate::{Error, ErrorKind};

/// The origin rule as an adapter was configured: the origins it trusts, or
/// no check at all. Shared by the axum layer and the actix middleware.
#[derive(Clone, Debug, Default)]
pub(crate) struct OriginCheck {
    off: bool,
    trusted: Arc<Vec<String>>,
}

impl OriginCheck {
    /// Lets requests whose `Origin` is `origin` through.
    pub(crate) fn trust(&mut self, origin: String) {
        Arc::make_mut(&mut self.trusted).push(origin);
    }

    /// Lets every request through.
    pub(crate) fn turn_off(&mut self) {
        self.off = true;
    }

    /// Whether a request with this method is checked at all: safe methods
    /// cannot be a forgery, so their headers are not even read.
    pub(crate) fn applies(&self, safe_method: bool) -> bool {
        !self.off && !safe_method
    }

    /// Whether a checked request is refused (see [`is_cross_origin`]).
    pub(crate) fn refuses(&self, host: Option<&[u8]>, origin: Option<&[u8]>, sec_fetch_site: Option<&[u8]>) -> bool {
        is_cross_origin(false, host, origin, sec_fetch_site, &self.trusted)
    }
}

/// Whether a request that may change state comes from another origin, as a
/// browser says: `Sec-Fetch-Site` other than `same-origin` or `none`, or,
/// without it, an `Origin` whose host differs from the request's own
/// (`host`: the `Host` header, or HTTP/2's `:authority`). Safe methods,
/// requests without either header (not from a browser) and an `Origin` in
/// `trusted` are not. The rule of Go's `http.CrossOriginProtection`, which
/// the Fetch metadata headers of every current browser make reliable.
pub(crate) fn is_cross_origin(
    safe_method: bool,
    host: Option<&[u8]>,
    origin: Option<&[u8]>,
    sec_fetch_site: Option<&[u8]>,
    trusted: &[String],
) -> bool {
    if safe_method || origin.is_some_and(|o| trusted.iter().any(|t| t.as_bytes().eq_ignore_ascii_case(o))) {
        return false;
    }
    if let Some(site) = sec_fetch_site {
        return !(site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none"));
    }
    let Some(origin) = origin else { return false };
    // `Origin` is `scheme://host[:port]` (or `null`); `Host` is `host[:port]`.
    let origin_host = origin.iter().position(|&b| b == b':').and_then(|at| origin.get(at + 3..));
    match (origin_host, host) {
        (Some(origin_host), Some(host)) => !origin_host.eq_ignore_ascii_case(host),
        _ => true,
    }
}

/// The error a refused cross-origin request gets.
pub(crate) fn refusal() -> Error {
    Error::new(ErrorKind::Forbidden, "a cross-origin request that could change state was refused")
}

#[cfg(test)]
mod tests {
    use super::is_cross_origin;

    #[test]
    fn only_unsafe_requests_a_browser_marks_as_foreign_are_cross_origin() {
        let host = Some(b"app.example:8080".as_slice());
        type Case<'a> = (bool, Option<&'a [u8]>, Option<&'a [u8]>, bool);
        let cases: [Case<'_>; 10] = [
            (true, Some(b"https://evil.example"), Some(b"cross-site"), false),
            (false, None, None, false),
            (false, None, Some(b"same-origin"), false),
            (false, None, Some(b"none"), false),
            (false, None, Some(b"same-site"), true),
            (false, None, Some(b"cross-site"), true),
            (false, Some(b"http://app.example:8080"), None, false),
            (false, Some(b"http://app.example:9090"), None, true),
            (false, Some(b"http://evil.example"), None, true),
            (false, Some(b"null"), None, true),
        ];
        for (safe, origin, site, expected) in cases {
            assert_eq!(is_cross_origin(safe, host, origin, site, &[]), expected, "{origin:?} {site:?}");
        }
        let idp = ["https://idp.example".to_owned()];
        assert!(!is_cross_origin(false, host, Some(b"https://idp.example"), Some(b"cross-site"), &idp));
        assert!(is_cross_origin(false, host, Some(b"https://evil.example"), Some(b"cross-site"), &idp));
    }
}
