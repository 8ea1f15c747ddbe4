//! Cookie options, lifetimes and limits, with secure defaults, checked once at
//! start-up; and the same set-up from a TOML file.

#[cfg(feature = "toml")]
mod file;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, Key, SameSite};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

use crate::id::ENCODED_ID_LEN;
use crate::store::{Backend, SessionInfo};
use crate::{Error, ErrorKind, Fields, Result, SessionId};

/// The longest lifetime or `Max-Age` a configuration may set: browsers keep
/// a cookie at most 400 days (RFC 6265bis), so a longer session would
/// outlive its cookie.
pub(crate) const MAX_LIFETIME: Duration = Duration::days(400);

/// How many cookies of one name a request may offer before the rest are
/// ignored: each well-formed one costs a store read until one is live.
pub(crate) const MAX_CANDIDATES: usize = 3;

/// How one session cookie is set and how long its session lives.
///
/// Defaults are the secure ones a Flask-Session user knows: cookie `session`,
/// path `/`, `HttpOnly`, `Secure`, `SameSite=Lax`, no `Max-Age` (a browser
/// session cookie unless the session is permanent), 1 day idle lifetime,
/// 31 days for permanent sessions, no absolute lifetime, unsigned ids (the id
/// is already 256 random bits; signing adds key rotation and rejects forged
/// cookies before any store read), and at most 100 sessions per user (a
/// login beyond that logs out the least recently active one).
///
/// ```
/// use multisession::{SessionConfig, SameSite};
/// use time::Duration;
///
/// let config = SessionConfig::default()
///     .with_cookie_name("sid")
///     .with_secure(false)                       // plain http on localhost only
///     .with_same_site(SameSite::Strict)
///     .with_lifetime(Duration::hours(2))
///     .with_absolute_lifetime(Duration::days(7));
/// assert_eq!(config.cookie_name(), "sid");
/// ```
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub(crate) cookie_name: String,
    pub(crate) domain: Option<String>,
    pub(crate) path: String,
    pub(crate) http_only: bool,
    pub(crate) secure: bool,
    pub(crate) same_site: SameSite,
    pub(crate) max_age: Option<Duration>,
    pub(crate) lifetime: Duration,
    pub(crate) permanent_lifetime: Duration,
    pub(crate) absolute_lifetime: Option<Duration>,
    pub(crate) touch_interval: Duration,
    pub(crate) signing_keys: Option<KeyRing>,
    pub(crate) session_limit: Limit,
    pub(crate) id_header: Option<IdHeader>,
    pub(crate) clear_site_data: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie_name: "session".to_owned(),
            domain: None,
            path: "/".to_owned(),
            http_only: true,
            secure: true,
            same_site: SameSite::Lax,
            max_age: None,
            lifetime: Duration::DAY,
            permanent_lifetime: Duration::days(31),
            absolute_lifetime: None,
            touch_interval: Duration::MINUTE,
            signing_keys: None,
            session_limit: Limit::Default,
            id_header: None,
            clear_site_data: false,
        }
    }
}

/// What a login does when the user already has `max_sessions_per_user`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLimit {
    /// Log out the user's least recently active sessions to make room.
    EvictLeastRecent,
    /// Refuse the login with [`ErrorKind::TooManySessions`](crate::ErrorKind::TooManySessions).
    RefuseLogin,
}

/// A cap on one user's sessions: at most `max` at once, and what a login
/// beyond it does. Stores enforce it in [`Store::create_login`](crate::store::Store::create_login).
///
/// ```
/// use multisession::{OnLimit, SessionLimit};
/// assert_eq!(SessionLimit::DEFAULT, SessionLimit { max: 100, on_limit: OnLimit::EvictLeastRecent });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimit {
    /// The most sessions one user may hold.
    pub max: usize,
    /// What a login beyond `max` does.
    pub on_limit: OnLimit,
}

impl SessionLimit {
    /// The default cap: 100 sessions, the least recently active evicted.
    pub const DEFAULT: Self = Self { max: 100, on_limit: OnLimit::EvictLeastRecent };

    /// Which of `others` — the user's other live sessions — a new login must
    /// end to stay within the cap: none while there is room, else the least
    /// recently active ones, or `TooManySessions` with
    /// [`OnLimit::RefuseLogin`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::TooManySessions`](crate::ErrorKind::TooManySessions) when
    /// the login is refused.
    ///
    /// ```
    /// use multisession::{OnLimit, SessionLimit};
    /// let limit = SessionLimit { max: 2, on_limit: OnLimit::RefuseLogin };
    /// assert!(limit.evictions(Vec::new())?.is_empty());
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn evictions(&self, mut others: Vec<SessionInfo>) -> Result<Vec<SessionInfo>> {
        if others.len() < self.max {
            return Ok(Vec::new());
        }
        match self.on_limit {
            OnLimit::RefuseLogin => Err(self.refusal(others.len())),
            OnLimit::EvictLeastRecent => {
                others.sort_by_key(|s| s.last_active_at);
                let excess = others.len().saturating_add(1).saturating_sub(self.max);
                others.truncate(excess);
                Ok(others)
            }
        }
    }
}

impl SessionLimit {
    /// The error of a login refused while the user holds `count` sessions.
    pub(crate) fn refusal(&self, count: usize) -> Error {
        Error::new(
            ErrorKind::TooManySessions,
            format!(
                "the user already has {count} sessions and the limit is {}; log out another device first",
                self.max
            ),
        )
    }
}

/// The cap a configuration asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    /// [`SessionLimit::DEFAULT`], where a user index can enforce it.
    Default,
    Unlimited,
    Set(SessionLimit),
}

/// A request header that may carry a server-side part's session id, for API
/// and mobile clients that keep no cookies (Spring Session's `X-Auth-Token`
/// resolver, axum_session's REST mode). The engine and its rules are the
/// cookie's: a login answers the new id in the same header, a logout
/// answers the header empty. A request that carried the header is answered
/// in it; one that did not is answered with the cookie, unless the part
/// takes no cookie ([`IdHeader::without_cookie`]). An id is never read
/// from the URL.
///
/// ```
/// use multisession::{IdHeader, SessionConfig};
///
/// let api = SessionConfig::default().with_id_header(IdHeader::named("X-Auth-Token"));
/// let mobile = SessionConfig::default().with_id_header(IdHeader::bearer().without_cookie());
/// # let _ = (api, mobile);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdHeader {
    /// The header's name, lowercase.
    pub(crate) name: String,
    /// `Authorization: Bearer <id>` rather than the bare id.
    pub(crate) bearer: bool,
    pub(crate) winner: IdCarrier,
    pub(crate) cookie: bool,
}

/// Which id wins when a request carries both a cookie and the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdCarrier {
    Header,
    Cookie,
}

impl IdHeader {
    /// The id alone, in the header `name` (for example `X-Auth-Token`).
    ///
    /// ```
    /// let header = multisession::IdHeader::named("X-Auth-Token");
    /// assert_eq!(header.name(), "x-auth-token");
    /// ```
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into().to_ascii_lowercase(), bearer: false, winner: IdCarrier::Header, cookie: true }
    }

    /// `Authorization: Bearer <id>` (RFC 6750); a login answers the same.
    ///
    /// ```
    /// assert_eq!(multisession::IdHeader::bearer().name(), "authorization");
    /// ```
    pub fn bearer() -> Self {
        Self { bearer: true, ..Self::named("authorization") }
    }

    /// When a request carries both, the cookie's id wins (by default the
    /// header's does: a client that sends it means it).
    ///
    /// ```
    /// let header = multisession::IdHeader::named("X-Auth-Token").cookie_wins();
    /// # let _ = header;
    /// ```
    pub fn cookie_wins(mut self) -> Self {
        self.winner = IdCarrier::Cookie;
        self
    }

    /// The part neither reads nor sets a cookie: every answer is in the
    /// header, the first login's included.
    ///
    /// ```
    /// let header = multisession::IdHeader::bearer().without_cookie();
    /// # let _ = header;
    /// ```
    pub fn without_cookie(mut self) -> Self {
        self.cookie = false;
        self
    }

    /// The header's name, lowercase.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The header value that carries `value` (an encoded, maybe signed id).
    pub(crate) fn carry(&self, value: &str) -> String {
        if self.bearer { format!("Bearer {value}") } else { value.to_owned() }
    }

    /// The id text a header value carries: for `Authorization`, only a
    /// `Bearer` credential (the scheme in any case, RFC 9110 11.1).
    pub(crate) fn id_text<'a>(&self, value: &'a str) -> Option<&'a str> {
        if !self.bearer {
            return Some(value.trim());
        }
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
    }

    fn validate(&self) -> Result<()> {
        let token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token(&self.name) {
            return Err(Error::config(format!("id_header: {:?} is not a valid header name", self.name)));
        }
        if self.name == "authorization" && !self.bearer {
            return Err(Error::config(
                "id_header: \"Authorization\" carries credentials of many schemes; use IdHeader::bearer() (TOML: \
                 id_header = \"bearer\") for `Authorization: Bearer <id>`",
            ));
        }
        const RESERVED: &[&str] = &[
            "cookie",
            "set-cookie",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "te",
            "upgrade",
            "vary",
            "cache-control",
            "clear-site-data",
        ];
        if RESERVED.contains(&self.name.as_str()) {
            return Err(Error::config(format!(
                "id_header: {:?} is a header HTTP itself uses; pick another",
                self.name
            )));
        }
        if !self.cookie && self.winner == IdCarrier::Cookie {
            return Err(Error::config("id_header: a part without a cookie cannot let the cookie win"));
        }
        Ok(())
    }
}

impl SessionConfig {
    /// The cookie's name (default `session`).
    ///
    /// Browsers drop a cookie named `__Secure-…` without `Secure`, and one
    /// named `__Host-…` also with a `Domain` or a `Path` other than `/`; such
    /// a configuration is refused at start-up.
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_cookie_name("__Host-sid");
    /// assert_eq!(c.cookie_name(), "__Host-sid");
    /// ```
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// The cookie's `Domain` (default: none, the exact host only).
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_domain("example.com");
    /// # let _ = c;
    /// ```
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The cookie's `Path` (default `/`).
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_path("/app");
    /// # let _ = c;
    /// ```
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// `HttpOnly` (default true).
    ///
    /// **Warning:** turning it off lets any script on the page, including an
    /// injected one, read the session cookie.
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_http_only(true);
    /// # let _ = c;
    /// ```
    pub fn with_http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// `Secure` (default true).
    ///
    /// **Warning:** turn it off only for plain-http development on localhost;
    /// otherwise the cookie travels in clear text.
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_secure(false);
    /// # let _ = c;
    /// ```
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// `SameSite` (default `Lax`). `None` requires `Secure`.
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_same_site(multisession::SameSite::Strict);
    /// # let _ = c;
    /// ```
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// A fixed `Max-Age` for the cookie, at least one second (`Max-Age`
    /// counts whole seconds, and 0 deletes the cookie). Without it, a
    /// permanent session's cookie lasts until the session expires and any
    /// other is a browser session cookie.
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_max_age(time::Duration::hours(1));
    /// # let _ = c;
    /// ```
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Idle lifetime of a session (default 1 day): it expires this long after
    /// its last use.
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_lifetime(time::Duration::hours(8));
    /// # let _ = c;
    /// ```
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Idle lifetime of a permanent session (default 31 days).
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_permanent_lifetime(time::Duration::days(90));
    /// # let _ = c;
    /// ```
    pub fn with_permanent_lifetime(mut self, lifetime: Duration) -> Self {
        self.permanent_lifetime = lifetime;
        self
    }

    /// A hard limit counted from creation (for a login, from the login) that
    /// no activity extends (default: none).
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_absolute_lifetime(time::Duration::days(30));
    /// # let _ = c;
    /// ```
    pub fn with_absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.absolute_lifetime = Some(lifetime);
        self
    }

    /// How far the idle expiry must move before a read-only request writes it
    /// back (default 1 minute), shorter than both lifetimes. Larger means
    /// fewer store writes and a less exact "last active".
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_touch_interval(time::Duration::minutes(5));
    /// # let _ = c;
    /// ```
    pub fn with_touch_interval(mut self, interval: Duration) -> Self {
        self.touch_interval = interval;
        self
    }

    /// Signs the id cookie with HMAC-SHA256 under the first key of `keys`;
    /// every key verifies, and a cookie verified by an older key is re-issued
    /// under the first. The cookie's name is part of what is signed.
    ///
    /// ```
    /// use multisession::{Key, KeyRing, SessionConfig};
    /// let keys = KeyRing::new(vec![Key::generate()])?;
    /// let c = SessionConfig::default().with_signed_id(keys);
    /// # let _ = c;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn with_signed_id(mut self, keys: KeyRing) -> Self {
        self.signing_keys = Some(keys);
        self
    }

    /// Caps how many sessions one user may have (default 100, the least
    /// recently active evicted); `on_limit` says what a login beyond the cap
    /// does. Memory, SQL and standalone Redis stores hold the cap under
    /// concurrent logins; others may let a burst of concurrent logins pass
    /// it briefly (see [`Store::create_login`](crate::store::Store::create_login)).
    ///
    /// ```
    /// use multisession::{OnLimit, SessionConfig};
    /// let c = SessionConfig::default().with_max_sessions_per_user(5, OnLimit::EvictLeastRecent);
    /// # let _ = c;
    /// ```
    pub fn with_max_sessions_per_user(mut self, max: usize, on_limit: OnLimit) -> Self {
        self.session_limit = Limit::Set(SessionLimit { max, on_limit });
        self
    }

    /// Lets a user hold any number of sessions (the default caps them at 100).
    ///
    /// ```
    /// let c = multisession::SessionConfig::default().with_unlimited_sessions_per_user();
    /// # let _ = c;
    /// ```
    pub fn with_unlimited_sessions_per_user(mut self) -> Self {
        self.session_limit = Limit::Unlimited;
        self
    }

    /// The cookie's name.
    ///
    /// ```
    /// assert_eq!(multisession::SessionConfig::default().cookie_name(), "session");
    /// ```
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// Lets the id also travel in a request header, for API and mobile
    /// clients (see [`IdHeader`]). Only a server-side part's id can.
    ///
    /// ```
    /// use multisession::{IdHeader, SessionConfig};
    /// let config = SessionConfig::default().with_id_header(IdHeader::named("X-Auth-Token"));
    /// # let _ = config;
    /// ```
    pub fn with_id_header(mut self, header: IdHeader) -> Self {
        self.id_header = Some(header);
        self
    }

    /// Answers a logout (and a logout of every device) from this device
    /// with `Clear-Site-Data: "cookies"`, so that the browser also drops
    /// the cookies the application set itself (ASVS 14.3.1). Off by
    /// default: it clears every cookie of the site, not only the session's.
    ///
    /// ```
    /// let config = multisession::SessionConfig::default().with_clear_site_data(true);
    /// # let _ = config;
    /// ```
    pub fn with_clear_site_data(mut self, clear: bool) -> Self {
        self.clear_site_data = clear;
        self
    }

    /// Checks the configuration once, at start-up.
    pub(crate) fn validate(&self) -> Result<()> {
        let is_token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !is_token(&self.cookie_name) {
            return Err(Error::config(format!(
                "cookie_name: {:?} is not a valid cookie name (use letters, digits, '-', '_' or '.')",
                self.cookie_name
            )));
        }
        let is_attr = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && b != b';');
        if let Some(domain) = &self.domain
            && (domain.is_empty() || !is_attr(domain))
        {
            return Err(Error::config(format!("domain: {domain:?} is not a valid cookie domain")));
        }
        if !self.path.starts_with('/') || !is_attr(&self.path) {
            return Err(Error::config(format!("path: {:?} must start with '/' and hold no ';' or spaces", self.path)));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(Error::config("same_site: SameSite=None requires secure = true (browsers drop it otherwise)"));
        }
        self.check_name_prefix()?;
        let lifetimes = [
            ("lifetime", Some(self.lifetime)),
            ("permanent_lifetime", Some(self.permanent_lifetime)),
            ("absolute_lifetime", self.absolute_lifetime),
        ];
        for (field, value) in lifetimes {
            if let Some(value) = value
                && !value.is_positive()
            {
                return Err(Error::config(format!("{field}: must be positive, got {value}")));
            }
        }
        // `Max-Age` counts whole seconds, and 0 tells the browser to drop
        // the cookie at once: no session would survive its first response.
        if let Some(max_age) = self.max_age
            && max_age < Duration::SECOND
        {
            return Err(Error::config(format!("max_age: must be at least one second, got {max_age}")));
        }
        for (field, value) in lifetimes.into_iter().chain([("max_age", self.max_age)]) {
            if let Some(value) = value
                && value > MAX_LIFETIME
            {
                return Err(Error::config(format!(
                    "{field}: at most 400 days (browsers keep a cookie no longer), got {value}"
                )));
            }
        }
        // A touch interval as long as a lifetime lets a session in use expire
        // before its expiry is ever written back.
        if self.touch_interval.is_negative()
            || self.touch_interval >= self.lifetime
            || self.touch_interval >= self.permanent_lifetime
        {
            return Err(Error::config(format!(
                "touch_interval: must be at least zero and shorter than lifetime ({}) and permanent_lifetime ({}), \
                 got {}",
                self.lifetime, self.permanent_lifetime, self.touch_interval
            )));
        }
        if matches!(self.session_limit, Limit::Set(l) if l.max == 0) {
            return Err(Error::config("max_sessions_per_user: must be at least 1"));
        }
        if let Some(header) = &self.id_header {
            header.validate()?;
        }
        Ok(())
    }

    /// The rules browsers hold a prefixed cookie name to (RFC 6265bis, the
    /// prefix in any case): they silently drop a `__Secure-` cookie without
    /// `Secure`, and a `__Host-` one also with a `Domain` or a `Path` other
    /// than `/`, so such a session would never come back.
    fn check_name_prefix(&self) -> Result<()> {
        let name = self.cookie_name.as_bytes();
        let has_prefix =
            |prefix: &str| name.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()));
        let (host, secure) = (has_prefix("__Host-"), has_prefix("__Secure-"));
        if (host || secure) && !self.secure {
            return Err(Error::config(format!(
                "secure: the cookie name {:?} has a {} prefix, which browsers accept only with secure = true",
                self.cookie_name,
                if host { "__Host-" } else { "__Secure-" }
            )));
        }
        if host && self.domain.is_some() {
            return Err(Error::config(format!(
                "domain: the cookie name {:?} has the __Host- prefix, which browsers accept only without a domain",
                self.cookie_name
            )));
        }
        if host && self.path != "/" {
            return Err(Error::config(format!(
                "path: the cookie name {:?} has the __Host- prefix, which browsers accept only with path \"/\", got {:?}",
                self.cookie_name, self.path
            )));
        }
        Ok(())
    }

    /// When a session used at `now` expires.
    /// Lifetimes are checked at start-up to be at most 400 days, but `now`
    /// and `absolute` may come from a stored record: past the last instant
    /// `time` can hold, the expiry is that instant.
    pub(crate) fn expiry(
        &self,
        now: OffsetDateTime,
        permanent: bool,
        absolute: Option<OffsetDateTime>,
    ) -> OffsetDateTime {
        let lifetime = if permanent { self.permanent_lifetime } else { self.lifetime };
        let idle = later(now, lifetime);
        absolute.map_or(idle, |a| a.min(idle))
    }

    /// The absolute expiry of a session created at `created_at`, if any.
    pub(crate) fn absolute_expiry(&self, created_at: OffsetDateTime) -> Option<OffsetDateTime> {
        self.absolute_lifetime.map(|d| later(created_at, d))
    }

    /// The `Set-Cookie` value carrying `id`.
    pub(crate) fn id_cookie(&self, id: &SessionId, permanent: bool, expires_at: OffsetDateTime) -> String {
        self.value_cookie(self.id_value(id), permanent, expires_at)
    }

    /// The text that carries `id`, in a cookie or a header: the encoded id,
    /// signed if the part signs its ids.
    pub(crate) fn id_value(&self, id: &SessionId) -> String {
        let mut value = id.encode();
        if let Some(keys) = &self.signing_keys {
            let signature = keys.sign(&self.cookie_name, &value, 0);
            value.push('.');
            value.push_str(&signature);
        }
        value
    }

    /// The `Set-Cookie` value carrying `value` for a session expiring at
    /// `expires_at`: a browser-session cookie unless permanent or `max_age`.
    pub(crate) fn value_cookie(&self, value: String, permanent: bool, expires_at: OffsetDateTime) -> String {
        let max_age = self.max_age.or_else(|| permanent.then(|| expires_at - OffsetDateTime::now_utc()));
        self.cookie(value, max_age.map(|d| d.max(Duration::ZERO)))
    }

    /// The `Set-Cookie` value that makes the browser drop the cookie.
    pub(crate) fn removal_cookie(&self) -> String {
        self.cookie(String::new(), Some(Duration::ZERO))
    }

    fn cookie(&self, value: String, max_age: Option<Duration>) -> String {
        let mut cookie = Cookie::build((self.cookie_name.clone(), value))
            .path(self.path.clone())
            .http_only(self.http_only)
            .secure(self.secure)
            .same_site(self.same_site);
        if let Some(domain) = &self.domain {
            cookie = cookie.domain(domain.clone());
        }
        if let Some(max_age) = max_age {
            cookie = cookie.max_age(max_age);
            if max_age.is_zero() {
                cookie = cookie.expires(OffsetDateTime::UNIX_EPOCH);
            }
        }
        cookie.build().encoded().to_string()
    }

    /// The ids among `values` that decode and verify, in the order sent and
    /// without repeats, at most [`MAX_CANDIDATES`]: a stray cookie of the
    /// same name (another path's, or a planted one) must not hide the live
    /// session sent beside it. The first that names a live session wins.
    pub(crate) fn read_ids<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> Vec<IncomingId> {
        let mut ids: Vec<IncomingId> = Vec::new();
        for incoming in values.into_iter().filter_map(|value| self.verify(value)) {
            if ids.len() == MAX_CANDIDATES {
                break;
            }
            if !ids.iter().any(|known| known.id == incoming.id) {
                ids.push(incoming);
            }
        }
        ids
    }

    fn verify(&self, value: &str) -> Option<IncomingId> {
        match &self.signing_keys {
            None => SessionId::decode(value).map(|id| IncomingId { id, stale_key: false, by_header: false }),
            Some(keys) => {
                let (id_text, signature) = value.split_at_checked(ENCODED_ID_LEN)?;
                let signature = signature.strip_prefix('.')?;
                let index = keys.verify(&self.cookie_name, id_text, signature)?;
                SessionId::decode(id_text).map(|id| IncomingId { id, stale_key: index > 0, by_header: false })
            }
        }
    }
}

/// One session part: where its records live, how its cookie is set, and
/// which keys it keeps. A lone part keeps every key; several parts split a
/// session across cookies and backends.
///
/// ```
/// use multisession::{Fields, Key, KeyRing, SessionConfig, SessionSpec, Sessions};
/// use multisession::store::{CookieStore, MemoryStore};
///
/// let keys = KeyRing::new(vec![Key::generate()])?;
/// let sessions = Sessions::from_specs([
///     SessionSpec::new(CookieStore::new(keys.clone()), SessionConfig::default().with_cookie_name("csrf"))
///         .with_fields(Fields::include(["csrf_token"])),
///     SessionSpec::new(MemoryStore::new(), SessionConfig::default().with_cookie_name("session"))
///         .with_fields(Fields::include(["user_id", "user_data"])),
///     SessionSpec::new(CookieStore::new(keys), SessionConfig::default().with_cookie_name("data"))
///         .with_fields(Fields::Auto),
/// ])?;
/// # let _ = sessions;
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SessionSpec {
    pub(crate) backend: Backend,
    pub(crate) config: SessionConfig,
    pub(crate) fields: Fields,
}

impl SessionSpec {
    /// A part kept in `backend`, with cookie and lifetimes from `config`,
    /// keeping every key.
    ///
    /// ```
    /// use multisession::{SessionConfig, SessionSpec, store::MemoryStore};
    /// let spec = SessionSpec::new(MemoryStore::new(), SessionConfig::default());
    /// # let _ = spec;
    /// ```
    pub fn new(backend: impl Into<Backend>, config: SessionConfig) -> Self {
        Self { backend: backend.into(), config, fields: Fields::All }
    }

    /// Which keys this part keeps (default [`Fields::All`]).
    ///
    /// ```
    /// use multisession::{Fields, SessionConfig, SessionSpec, store::MemoryStore};
    /// let spec = SessionSpec::new(MemoryStore::new(), SessionConfig::default()).with_fields(Fields::Auto);
    /// # let _ = spec;
    /// ```
    pub fn with_fields(mut self, fields: Fields) -> Self {
        self.fields = fields;
        self
    }
}

/// The longest `key_prefix` a store keeps as given, in bytes.
pub(crate) const MAX_KEY_PREFIX_BYTES: usize = 64;

/// Checks a store's `key_prefix`: 1 to [`MAX_KEY_PREFIX_BYTES`] printable
/// ASCII characters, no spaces. One rule for every store that takes a
/// prefix, the narrowest of what they can hold: MySQL keeps it in a
/// `VARCHAR(191)`, PostgreSQL text holds no NUL, Memcached keys are printable
/// ASCII without spaces. An empty prefix is refused too: it is most likely
/// an unset variable, and leaving the prefix out gives the default.
pub(crate) fn check_key_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > MAX_KEY_PREFIX_BYTES || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::config(format!(
            "key_prefix: must be 1 to {MAX_KEY_PREFIX_BYTES} printable ASCII characters without spaces, got {} bytes{}",
            prefix.len(),
            if prefix.chars().any(char::is_control) { " with control characters" } else { "" }
        )));
    }
    Ok(())
}

/// `at + d`, or the last instant `time` can hold.
pub(crate) fn later(at: OffsetDateTime, d: Duration) -> OffsetDateTime {
    at.checked_add(d).unwrap_or(if d.is_negative() { OffsetDateTime::UNIX_EPOCH } else { MAX_INSTANT })
}

/// The last millisecond `time` can hold (without its `large-dates` feature).
const MAX_INSTANT: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59.999 UTC);

/// A session id read from a request's cookie.
pub(crate) struct IncomingId {
    pub(crate) id: SessionId,
    /// Verified by a key other than the current one: re-issue the cookie.
    pub(crate) stale_key: bool,
    /// It came in the part's id header, not its cookie.
    pub(crate) by_header: bool,
}

/// Keys for signing: the first signs, every one verifies, so a key can be
/// rotated in without logging anyone out. Re-exported [`Key`] is the
/// `cookie` crate's 64-byte key.
///
/// ```
/// use multisession::{Key, KeyRing};
/// let ring = KeyRing::new(vec![Key::generate(), Key::generate()])?;
/// assert_eq!(ring.len(), 2);
/// assert!(KeyRing::new(vec![]).is_err());
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone)]
pub struct KeyRing(Vec<Key>);

impl KeyRing {
    /// A ring of `keys`, the first being the current one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) if `keys` is empty.
    ///
    /// ```
    /// let ring = multisession::KeyRing::new(vec![multisession::Key::generate()])?;
    /// # let _ = ring;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn new(keys: Vec<Key>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::config("keys: a key ring needs at least one key"));
        }
        Ok(Self(keys))
    }

    /// How many keys the ring holds.
    ///
    /// ```
    /// let ring = multisession::KeyRing::new(vec![multisession::Key::generate()])?;
    /// assert_eq!(ring.len(), 1);
    /// # Ok::<(), multisession::Error>(())
    /// ```
    #[allow(clippy::len_without_is_empty)] // a ring is never empty
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The current key: it signs and encrypts.
    pub(crate) fn first(&self) -> &Key {
        &self.0[0]
    }

    /// Every key, the current one first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Key> {
        self.0.iter()
    }

    fn mac(&self, index: usize, cookie_name: &str, value: &str) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.get(index)?.signing()).ok()?;
        // The cookie's name is signed with the value, so a signature for one
        // cookie never verifies another.
        mac.update(b"multisession.id.v1\0");
        mac.update(cookie_name.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        Some(mac)
    }

    fn sign(&self, cookie_name: &str, value: &str, index: usize) -> String {
        self.mac(index, cookie_name, value)
            .map(|mac| URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// The index of the key whose signature matches, compared in constant time.
    fn verify(&self, cookie_name: &str, value: &str, signature: &str) -> Option<usize> {
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        (0..self.0.len())
            .find(|&i| self.mac(i, cookie_name, value).is_some_and(|mac| mac.verify_slice(&signature).is_ok()))
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(keys: Vec<Key>) -> SessionConfig {
        SessionConfig::default().with_signed_id(KeyRing::new(keys).expect("keys"))
    }

    fn value_of(set_cookie: &str) -> String {
        Cookie::parse_encoded(set_cookie.to_owned()).expect("cookie").value().to_owned()
    }

    #[test]
    fn a_signed_cookie_verifies_and_a_tampered_one_does_not() {
        let config = signed(vec![Key::generate()]);
        let id = SessionId::generate().expect("rng");
        let value = value_of(&config.id_cookie(&id, false, OffsetDateTime::now_utc()));
        assert!(config.read_ids([value.as_str()]).into_iter().next().is_some_and(|i| i.id == id && !i.stale_key));
        let mut tampered = value.into_bytes();
        tampered[3] ^= 1;
        assert!(config.read_ids([String::from_utf8_lossy(&tampered).as_ref()]).into_iter().next().is_none());
    }

    #[test]
    fn an_older_key_verifies_and_asks_for_reissue() {
        let (old, new) = (Key::generate(), Key::generate());
        let id = SessionId::generate().expect("rng");
        let value = value_of(&signed(vec![old.clone()]).id_cookie(&id, false, OffsetDateTime::now_utc()));
        let rotated = signed(vec![new, old]);
        assert!(rotated.read_ids([value.as_str()]).into_iter().next().is_some_and(|i| i.stale_key));
        let unknown = signed(vec![Key::generate()]);
        assert!(unknown.read_ids([value.as_str()]).into_iter().next().is_none());
    }

    #[test]
    fn a_signature_for_one_cookie_name_does_not_verify_another() {
        let key = Key::generate();
        let id = SessionId::generate().expect("rng");
        let a = signed(vec![key.clone()]).with_cookie_name("a");
        let value = value_of(&a.id_cookie(&id, false, OffsetDateTime::now_utc()));
        let b = signed(vec![key]).with_cookie_name("b");
        assert!(b.read_ids([value.as_str()]).into_iter().next().is_none());
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (SessionConfig::default().with_cookie_name(""), "cookie_name"),
            (SessionConfig::default().with_cookie_name("a b"), "cookie_name"),
            (SessionConfig::default().with_path("app"), "path"),
            (SessionConfig::default().with_domain("a;b"), "domain"),
            (SessionConfig::default().with_lifetime(Duration::ZERO), "lifetime"),
            (SessionConfig::default().with_secure(false).with_same_site(SameSite::None), "same_site"),
            (SessionConfig::default().with_touch_interval(Duration::DAY), "touch_interval"),
            (SessionConfig::default().with_max_sessions_per_user(0, OnLimit::RefuseLogin), "max_sessions_per_user"),
            (SessionConfig::default().with_lifetime(Duration::MAX), "lifetime"),
            (SessionConfig::default().with_permanent_lifetime(Duration::days(401)), "permanent_lifetime"),
            (SessionConfig::default().with_absolute_lifetime(Duration::weeks(100_000)), "absolute_lifetime"),
            (SessionConfig::default().with_max_age(Duration::MAX), "max_age"),
            (SessionConfig::default().with_absolute_lifetime(Duration::MIN), "absolute_lifetime"),
        ];
        for (config, field) in cases {
            let err = config.validate().expect_err(field);
            assert!(err.to_string().contains(field), "{err} does not name {field}");
        }
    }

    fn refused_naming(config: SessionConfig, field: &str) {
        let err = config.validate().expect_err(field);
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains(&format!("{field}:")), "{err} does not name {field}");
    }

    #[test]
    fn a_max_age_under_one_second_is_refused() {
        for max_age in [Duration::ZERO, Duration::milliseconds(999), Duration::seconds(-1)] {
            refused_naming(SessionConfig::default().with_max_age(max_age), "max_age");
        }
        SessionConfig::default().with_max_age(Duration::SECOND).validate().expect("one second is a Max-Age");
    }

    #[test]
    fn a_touch_interval_not_shorter_than_the_permanent_lifetime_is_refused() {
        let short = SessionConfig::default().with_lifetime(Duration::hours(2)).with_permanent_lifetime(Duration::HOUR);
        refused_naming(short.clone().with_touch_interval(Duration::HOUR), "touch_interval");
        refused_naming(short.clone().with_touch_interval(Duration::minutes(90)), "touch_interval");
        short.with_touch_interval(Duration::minutes(59)).validate().expect("shorter than both lifetimes");
    }

    #[test]
    fn prefixed_cookie_names_without_the_attributes_browsers_require_are_refused() {
        let named = |name: &str| SessionConfig::default().with_cookie_name(name);
        refused_naming(named("__Host-sid").with_secure(false), "secure");
        refused_naming(named("__host-sid").with_secure(false), "secure");
        refused_naming(named("__Host-sid").with_domain("example.com"), "domain");
        refused_naming(named("__HOST-sid").with_path("/app"), "path");
        refused_naming(named("__Secure-sid").with_secure(false), "secure");
        refused_naming(named("__SECURE-sid").with_secure(false), "secure");
        named("__Host-csrf").validate().expect("the defaults are what __Host- needs");
        named("__Secure-sid")
            .with_domain("example.com")
            .with_path("/app")
            .validate()
            .expect("__Secure- needs Secure only");
        named("__Hostess").with_secure(false).validate().expect("no prefix without the dash");
        named("csrf").with_secure(false).validate().expect("an unprefixed name may go without Secure");
    }

    #[test]
    fn key_prefixes_no_store_can_keep_are_refused_naming_key_prefix() {
        let longest = "p".repeat(MAX_KEY_PREFIX_BYTES);
        for bad in ["", "nul\0", "new\nline", "with space", "caf\u{e9}", &format!("{longest}p")] {
            let err = check_key_prefix(bad).expect_err("an impossible prefix was accepted");
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains("key_prefix:"), "{err}");
        }
        for good in ["session", "shop.v2", "a-b_c:d", longest.as_str()] {
            check_key_prefix(good).expect("a printable prefix of at most 64 bytes");
        }
    }

    #[test]
    fn the_longest_lifetimes_allowed_work_from_any_instant() {
        let config = SessionConfig::default()
            .with_lifetime(MAX_LIFETIME)
            .with_permanent_lifetime(MAX_LIFETIME)
            .with_absolute_lifetime(MAX_LIFETIME)
            .with_max_age(MAX_LIFETIME);
        config.validate().expect("400 days are allowed");
        for at in [OffsetDateTime::now_utc(), MAX_INSTANT, OffsetDateTime::UNIX_EPOCH] {
            let expiry = config.expiry(at, true, config.absolute_expiry(at));
            assert!(expiry >= at, "{expiry} is before {at}");
            let id = SessionId::generate().expect("rng");
            assert!(config.id_cookie(&id, true, expiry).contains("Max-Age="));
        }
    }

    #[test]
    fn defaults_are_secure() {
        let config = SessionConfig::default();
        config.validate().expect("defaults are valid");
        let id = SessionId::generate().expect("rng");
        let set_cookie = config.id_cookie(&id, false, OffsetDateTime::now_utc());
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(set_cookie.contains(attribute), "{set_cookie} lacks {attribute}");
        }
        assert!(!set_cookie.contains("Max-Age"), "a non-permanent session gets a browser-session cookie");
    }
}
