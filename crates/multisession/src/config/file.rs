//! The same set-up from a TOML file: `[[session]]` tables, one per part,
//! mirroring flask-session-plus's `SESSION_CONFIG`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use cookie::{Key, SameSite};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use time::Duration;

use crate::store::{Backend, CookieStore, Store};
use crate::{Error, Fields, KeyRing, OnLimit, Result, SessionConfig, SessionSpec, Sessions};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    session: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    cookie_name: String,
    backend: Url,
    #[serde(default)]
    fields: FieldsRule,
    domain: Option<String>,
    path: Option<String>,
    http_only: Option<bool>,
    secure: Option<bool>,
    same_site: Option<SameSiteName>,
    max_age: Option<HumanDuration>,
    lifetime: Option<HumanDuration>,
    permanent_lifetime: Option<HumanDuration>,
    absolute_lifetime: Option<HumanDuration>,
    touch_interval: Option<HumanDuration>,
    key_prefix: Option<String>,
    #[serde(default)]
    signed_id: bool,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    revocation: Option<Url>,
    max_sessions_per_user: Option<MaxSessions>,
    on_limit: Option<OnLimitName>,
    /// A header that may carry the id: a header name, or `"bearer"` for
    /// `Authorization: Bearer`.
    id_header: Option<String>,
    id_header_mode: Option<IdHeaderMode>,
    #[serde(default)]
    clear_site_data: bool,
}

/// `id_header_mode`: which id wins when a request carries both, or
/// whether the part takes a cookie at all.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum IdHeaderMode {
    HeaderWins,
    CookieWins,
    HeaderOnly,
}

/// `max_sessions_per_user`: a number, or `"unlimited"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum MaxSessions {
    Count(usize),
    Word(UnlimitedWord),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum UnlimitedWord {
    Unlimited,
}

/// `fields`: `"all"`, `"auto"`, a list of keys, `{ include = [...] }` or
/// `{ exclude = [...] }`.
#[derive(Default, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum FieldsRule {
    #[default]
    #[serde(skip)]
    Unset,
    Word(FieldsWord),
    List(Vec<String>),
    Include {
        include: Vec<String>,
    },
    Exclude {
        exclude: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum FieldsWord {
    All,
    Auto,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum SameSiteName {
    Lax,
    Strict,
    None,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnLimitName {
    Evict,
    Refuse,
}

/// A backend URL: `cookie://`, or a server store's URL of a scheme
/// [`crate::store::open`] knows (the one list of them), which opens it.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Url {
    Cookie,
    Server(String),
}

impl<'de> Deserialize<'de> for Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let schemes = crate::store::SCHEMES;
        match text.split_once("://") {
            Some(("cookie", "")) => Ok(Self::Cookie),
            Some((scheme, _)) if schemes.iter().any(|(known, _)| *known == scheme) => Ok(Self::Server(text)),
            _ => Err(de::Error::custom(format!(
                "unknown backend {:?}: use cookie:// or {}",
                crate::store::redacted(&text),
                schemes.iter().map(|(_, form)| *form).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// A duration written as `"90s"`, `"15m"`, `"12h"`, `"1d"`, `"2w"`, `"500ms"`
/// or a sum like `"1h30m"`; a bare integer is seconds.
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30m\", \"12h\" or \"1d\", or whole seconds")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<HumanDuration, E> {
                if n < 0 {
                    return Err(E::custom("a duration cannot be negative"));
                }
                Ok(HumanDuration(Duration::seconds(n)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> std::result::Result<HumanDuration, E> {
                parse_duration(text).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad =
        || format!("{text:?} is not a duration: write e.g. \"90s\", \"15m\", \"12h\", \"1d\", \"2w\" or \"1h30m\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let too_long = || format!("{text:?} is longer than any session lifetime can be (at most 400 days)");
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let (number, tail) = rest.split_at(digits);
        let n: i64 = number.parse().map_err(|_| too_long())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit.trim() {
            "ms" => Duration::milliseconds(n),
            unit => {
                let seconds = match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3_600,
                    "d" => 86_400,
                    "w" => 604_800,
                    _ => return Err(bad()),
                };
                Duration::seconds(n.checked_mul(seconds).ok_or_else(too_long)?)
            }
        };
        total = total.checked_add(part).ok_or_else(too_long)?;
        rest = tail.trim_start();
    }
    Ok(total)
}

impl Sessions {
    /// Builds sessions from a TOML file of `[[session]]` tables, one per part:
    ///
    /// ```toml
    /// [[session]]
    /// cookie_name = "csrf"
    /// backend = "cookie://"
    /// fields = ["csrf_token"]
    /// key_env = "MULTISESSION_KEYS"        # or key_file = "keys.txt"
    ///
    /// [[session]]
    /// cookie_name = "session"
    /// backend = "sqlite://sessions.db"     # relative to this file
    /// fields = ["user_id", "user_data"]
    /// lifetime = "1d"
    /// permanent_lifetime = "31d"
    /// ```
    ///
    /// Every option of [`SessionConfig`] has a key of the same name;
    /// durations are written like `"30m"`, `"12h"` or `"1d"`. Secrets never
    /// come from the file: `key_env` names an environment variable and
    /// `key_file` a file, each holding base64 keys of at least 64 bytes (the
    /// first encrypts or signs; more, separated by spaces, commas or lines,
    /// only decrypt or verify). Parts with the same backend URL share one
    /// store. A `key_prefix` (SQL, Redis and Memcached stores) is 1 to 64
    /// printable ASCII characters without spaces.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config): an unknown key or a
    /// bad value (with its line), a missing secret (naming the variable or
    /// file), or any configuration [`Sessions::from_specs`] refuses.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| multisession::Error::config("tempdir").with_source(e))?;
    /// let path = dir.path().join("multisession.toml");
    /// std::fs::write(&path, "[[session]]\ncookie_name = \"sid\"\nbackend = \"memory://\"\nlifetime = \"2h\"\n")
    ///     .map_err(|e| multisession::Error::config("write").with_source(e))?;
    /// let sessions = multisession::Sessions::from_config_file(&path).await?;
    /// # let _ = sessions;
    /// # Ok(()) }
    /// ```
    pub async fn from_config_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read the configuration file {}", path.display())).with_source(e)
        })?;
        let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_config_text(&text, path, Stores { folder, opened: HashMap::new(), offline: None }).await
    }

    /// [`Sessions::from_config_file`] once the file is read: its `text`
    /// parsed and checked, named `path` in messages, its keys and stores
    /// found through `stores`.
    async fn from_config_text(text: &str, path: &Path, mut stores: Stores) -> Result<Self> {
        // toml's own message quotes the offending line, which may hold a
        // password: give the place and the reason only.
        let file: File = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |span| span.start).min(text.len());
            let line = text.get(..at).map_or(1, |before| before.matches('\n').count() + 1);
            // The key of that line, never its value.
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(key, _)| key.trim())
                .filter(|key| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            let field = key.map(|key| format!(" {key}:")).unwrap_or_default();
            Error::config(format!("{}: line {line}:{field} {}", path.display(), e.message().trim_end()))
        })?;
        let mut specs = Vec::with_capacity(file.session.len());
        for part in file.session {
            specs.push(part.into_spec(&mut stores).await?);
        }
        Self::from_specs(specs)
    }
}

/// The stores opened so far, so that parts naming one URL (and prefix)
/// share one store.
struct Stores {
    folder: PathBuf,
    opened: HashMap<(String, Option<String>), Arc<dyn Store>>,
    /// For checking a text alone (the fuzz targets): every `key_env` and
    /// `key_file` holds this text, and every server store is a memory
    /// store. Nothing outside the text is read, opened or connected to.
    offline: Option<String>,
}

impl Stores {
    /// The server-side store at `url`, for `field` of the part `cookie`.
    async fn server(
        &mut self,
        url: &Url,
        key_prefix: Option<&str>,
        cookie: &str,
        field: &str,
    ) -> Result<Arc<dyn Store>> {
        let Url::Server(url) = url else {
            return Err(Error::config(format!(
                "session `{cookie}`: {field}: cookie:// keeps nothing on the server; name a server-side store"
            )));
        };
        // A relative SQLite path is relative to the configuration file.
        let url = match url.strip_prefix("sqlite://") {
            Some(path) => format!("sqlite://{}", self.folder.join(path).display()),
            None => url.clone(),
        };
        let id = (url, key_prefix.map(str::to_owned));
        if let Some(store) = self.opened.get(&id) {
            return Ok(store.clone());
        }
        let store: Arc<dyn Store> = match self.offline {
            Some(_) => Arc::new(crate::store::MemoryStore::new()),
            None => crate::store::open(&id.0, key_prefix)
                .await
                .map_err(|e| e.context(format_args!("session `{cookie}`: {field}")))?,
        };
        self.opened.insert(id, store.clone());
        Ok(store)
    }
}

impl Part {
    async fn into_spec(self, stores: &mut Stores) -> Result<SessionSpec> {
        let name = self.cookie_name.clone();
        let fail = |field: &str, why: String| Error::config(format!("session `{name}`: {field}: {why}"));
        let keys = self.keys(stores)?;
        let mut config = SessionConfig::default().with_cookie_name(&self.cookie_name);
        if let Some(domain) = self.domain {
            config = config.with_domain(domain);
        }
        if let Some(path) = self.path {
            config = config.with_path(path);
        }
        if let Some(http_only) = self.http_only {
            config = config.with_http_only(http_only);
        }
        if let Some(secure) = self.secure {
            config = config.with_secure(secure);
        }
        if let Some(same_site) = self.same_site {
            config = config.with_same_site(match same_site {
                SameSiteName::Lax => SameSite::Lax,
                SameSiteName::Strict => SameSite::Strict,
                SameSiteName::None => SameSite::None,
            });
        }
        if let Some(HumanDuration(d)) = self.max_age {
            config = config.with_max_age(d);
        }
        if let Some(HumanDuration(d)) = self.lifetime {
            config = config.with_lifetime(d);
        }
        if let Some(HumanDuration(d)) = self.permanent_lifetime {
            config = config.with_permanent_lifetime(d);
        }
        if let Some(HumanDuration(d)) = self.absolute_lifetime {
            config = config.with_absolute_lifetime(d);
        }
        if let Some(HumanDuration(d)) = self.touch_interval {
            config = config.with_touch_interval(d);
        }
        if self.clear_site_data {
            config = config.with_clear_site_data(true);
        }
        match (self.id_header.as_deref(), self.id_header_mode) {
            (Some(name), mode) => {
                let header = if name.eq_ignore_ascii_case("bearer") {
                    crate::IdHeader::bearer()
                } else {
                    crate::IdHeader::named(name)
                };
                config = config.with_id_header(match mode {
                    None | Some(IdHeaderMode::HeaderWins) => header,
                    Some(IdHeaderMode::CookieWins) => header.cookie_wins(),
                    Some(IdHeaderMode::HeaderOnly) => header.without_cookie(),
                });
            }
            (None, Some(_)) => return Err(fail("id_header_mode", "needs id_header".into())),
            (None, None) => {}
        }
        match (self.max_sessions_per_user, self.on_limit) {
            (Some(MaxSessions::Count(max)), on_limit) => {
                let on_limit = match on_limit {
                    Some(OnLimitName::Refuse) => OnLimit::RefuseLogin,
                    Some(OnLimitName::Evict) | None => OnLimit::EvictLeastRecent,
                };
                config = config.with_max_sessions_per_user(max, on_limit);
            }
            (Some(MaxSessions::Word(UnlimitedWord::Unlimited)), None) => {
                config = config.with_unlimited_sessions_per_user();
            }
            (Some(MaxSessions::Word(UnlimitedWord::Unlimited)), Some(_)) => {
                return Err(fail("on_limit", "has no effect with max_sessions_per_user = \"unlimited\"".into()));
            }
            (None, Some(_)) => return Err(fail("on_limit", "needs max_sessions_per_user".into())),
            (None, None) => {}
        }
        let backend = match &self.backend {
            Url::Cookie => {
                let keys =
                    keys.ok_or_else(|| fail("key_env", "a cookie:// part needs keys: set key_env or key_file".into()))?;
                if self.key_prefix.is_some() {
                    return Err(fail("key_prefix", "cookie:// keeps nothing on a server to prefix".into()));
                }
                let mut store = CookieStore::new(keys);
                if let Some(url) = &self.revocation {
                    store = store.with_revocation(stores.server(url, None, &name, "revocation").await?);
                }
                Backend::Cookie(store)
            }
            server => {
                if self.revocation.is_some() {
                    return Err(fail("revocation", "only a cookie:// part takes a revocation store".into()));
                }
                // One rule for every store, checked before any is opened.
                if let Some(prefix) = &self.key_prefix {
                    crate::config::check_key_prefix(prefix).map_err(|e| e.context(format_args!("session `{name}`")))?;
                }
                if self.signed_id {
                    let keys =
                        keys.ok_or_else(|| fail("signed_id", "signing needs keys: set key_env or key_file".into()))?;
                    config = config.with_signed_id(keys);
                }
                Backend::Server(stores.server(server, self.key_prefix.as_deref(), &name, "backend").await?)
            }
        };
        let fields = match self.fields {
            FieldsRule::Unset | FieldsRule::Word(FieldsWord::All) => Fields::All,
            FieldsRule::Word(FieldsWord::Auto) => Fields::Auto,
            FieldsRule::List(keys) | FieldsRule::Include { include: keys } => Fields::Include(keys),
            FieldsRule::Exclude { exclude } => Fields::Exclude(exclude),
        };
        Ok(SessionSpec::new(backend, config).with_fields(fields))
    }

    /// The key ring from `key_env` or `key_file`, if either is given.
    fn keys(&self, stores: &Stores) -> Result<Option<KeyRing>> {
        let name = &self.cookie_name;
        let (field, source, text) = match (&self.key_env, &self.key_file) {
            (Some(_), Some(_)) => {
                return Err(Error::config(format!("session `{name}`: key_env and key_file: give one, not both")));
            }
            (Some(var), None) if stores.offline.is_some() => {
                ("key_env", var.clone(), stores.offline.clone().unwrap_or_default())
            }
            (None, Some(file)) if stores.offline.is_some() => {
                ("key_file", file.display().to_string(), stores.offline.clone().unwrap_or_default())
            }
            (Some(var), None) => {
                let text = std::env::var(var).map_err(|_| {
                    Error::config(format!(
                        "session `{name}`: key_env: the environment variable {var} is not set (it holds base64 keys \
                         of at least 64 bytes; make one with `head -c 64 /dev/urandom | base64 -w0`)"
                    ))
                })?;
                ("key_env", var.clone(), text)
            }
            (None, Some(file)) => {
                let path = stores.folder.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::config(format!("session `{name}`: key_file: cannot read {}", path.display())).with_source(e)
                })?;
                ("key_file", path.display().to_string(), text)
            }
            (None, None) => return Ok(None),
        };
        let keys = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, encoded)| {
                let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                    .iter()
                    .find_map(|engine| engine.decode(encoded).ok())
                    .ok_or_else(|| {
                        Error::config(format!("session `{name}`: {field}: key {} in {source} is not base64", i + 1))
                    })?;
                Key::try_from(bytes.as_slice()).map_err(|_| {
                    Error::config(format!(
                        "session `{name}`: {field}: key {} in {source} is {} bytes; keys are at least 64 random bytes",
                        i + 1,
                        bytes.len()
                    ))
                })
            })
            .collect::<Result<Vec<Key>>>()?;
        if keys.is_empty() {
            return Err(Error::config(format!("session `{name}`: {field}: {source} holds no key")));
        }
        KeyRing::new(keys).map(Some)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl crate::fuzzing::Decode {
    /// A configuration file's `text`, parsed and checked as
    /// [`Sessions::from_config_file`] does, offline: every `key_env` and
    /// `key_file` holds `keys`, every server store is a memory store
    /// (`store::open`'s own checks of a URL are not reached). Whether it
    /// made sessions.
    ///
    /// # Panics
    ///
    /// On a finding: a refusal that is not `Config`.
    pub async fn config_toml(text: &str, keys: &str) -> bool {
        let stores = Stores { folder: PathBuf::new(), opened: HashMap::new(), offline: Some(keys.to_owned()) };
        match Sessions::from_config_text(text, Path::new("fuzz.toml"), stores).await {
            Ok(_) => true,
            Err(e) => {
                assert!(e.kind() == crate::ErrorKind::Config, "a configuration was refused as {:?}", e.kind());
                false
            }
        }
    }

    /// A duration as the configuration writes it: whether it parsed. A
    /// parsed duration is never negative.
    ///
    /// # Panics
    ///
    /// On a finding: a negative duration.
    pub fn config_duration(text: &str) -> bool {
        let parsed = parse_duration(text);
        assert!(parsed.as_ref().map_or(true, |d| !d.is_negative()), "a duration parsed as negative");
        parsed.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use time::Duration;

    #[test]
    fn human_durations_parse() {
        for (text, expected) in [
            ("90s", Duration::seconds(90)),
            ("15m", Duration::minutes(15)),
            ("12h", Duration::hours(12)),
            ("1d", Duration::DAY),
            ("2w", Duration::weeks(2)),
            ("500ms", Duration::milliseconds(500)),
            ("1h30m", Duration::minutes(90)),
            ("1h 30m", Duration::minutes(90)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "1", "d", "1y", "-1d", "1.5h", "h1", "99999999999999999w", "9223372036854775807d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_duration("99999999999999999w").is_err_and(|e| e.contains("400 days")));
    }
}
