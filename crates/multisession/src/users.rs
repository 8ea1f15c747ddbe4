//! Users and their devices: the application-wide [`Sessions`] handle, the
//! listing entry [`DeviceSession`] and its public [`SessionHandle`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use crate::audit::{AuditEvent, AuditKind};
use crate::engine::Engine;
use crate::store::{Backend, SessionInfo, Store};
use crate::{Device, Error, ErrorKind, Result, Session, SessionConfig, SessionSpec, StoreKey};

/// The most batches one [`Sessions::delete_expired`] pass removes from a
/// store (about five million records).
const CLEANUP_BATCHES: usize = 10_000;

/// The application's sessions: a store and a configuration, checked once.
///
/// Framework adapters start each request's [`Session`] from it; admin code
/// uses it to list and end any user's sessions. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::{Sessions, SessionConfig, store::MemoryStore};
///
/// let sessions = Sessions::new(MemoryStore::new(), SessionConfig::default())?;
/// assert!(sessions.user_sessions("23").await?.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sessions {
    engine: Arc<Engine>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cookies: Vec<&str> = self.engine.parts.iter().map(|p| p.config.cookie_name()).collect();
        f.debug_struct("Sessions").field("cookies", &cookies).finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions kept in one backend (a server-side store or a
    /// [`CookieStore`](crate::store::CookieStore)), with cookie and
    /// lifetimes from `config`: one session part that keeps every key.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), naming the field, if
    /// the configuration is invalid: checked here, at start-up, never at the
    /// first request.
    ///
    /// ```
    /// use multisession::{Sessions, SessionConfig, store::MemoryStore};
    /// let err = Sessions::new(MemoryStore::new(), SessionConfig::default().with_path("app")).unwrap_err();
    /// assert!(err.to_string().contains("path"));
    /// ```
    pub fn new(backend: impl Into<Backend>, config: SessionConfig) -> Result<Self> {
        Self::from_specs([SessionSpec::new(backend, config)])
    }

    /// One session split across several cookies and backends, one
    /// [`SessionSpec`] per part; [`Fields`](crate::Fields) rules say which
    /// part keeps which key, and the part that keeps `user_id` keeps the
    /// login.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), naming the cookie and
    /// the key, for two parts with one cookie name, an excluded key no part
    /// keeps, `user_id` kept by two parts or named by a part that cannot
    /// index users, or an `Auto` part left with no keys.
    ///
    /// ```
    /// use multisession::{Fields, SessionConfig, SessionSpec, Sessions, store::MemoryStore};
    /// let err = Sessions::from_specs([
    ///     SessionSpec::new(MemoryStore::new(), SessionConfig::default()),
    ///     SessionSpec::new(MemoryStore::new(), SessionConfig::default()).with_fields(Fields::Auto),
    /// ]).unwrap_err();
    /// assert!(err.to_string().contains("`session`"));
    /// ```
    pub fn from_specs(specs: impl IntoIterator<Item = SessionSpec>) -> Result<Self> {
        Ok(Self { engine: Arc::new(Engine::new(specs.into_iter().collect())?) })
    }

    /// The session of one request, from its `Cookie` header values as sent
    /// (bytes: another application's cookie that is not ASCII never hides
    /// ours) and the client's device facts. Nothing is read until the
    /// session is used.
    ///
    /// When several cookies of one name carry well-formed ids (overlapping
    /// paths, or a planted one), the first that names a live session wins,
    /// in the order the browser sent them (longer paths first); at most
    /// three are tried.
    ///
    /// ```
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// let session = sessions.session([b"session=garbage; theme=dark".as_slice()], multisession::Device::default());
    /// # let _ = session;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn session<'a>(&self, cookie_headers: impl IntoIterator<Item = &'a [u8]>, device: Device) -> Session {
        Session::new(self.engine.clone(), self.engine.start(cookie_headers, &|_| Vec::new()), device)
    }

    /// The session of a request whose id may also travel in a header
    /// ([`IdHeader`](crate::IdHeader)): as [`Sessions::session`], with
    /// `header` giving the values of a request header by its lowercase
    /// name (one of [`Sessions::id_headers`]). The adapters call this.
    ///
    /// ```
    /// use multisession::{IdHeader, SessionConfig, Sessions};
    /// let config = SessionConfig::default().with_id_header(IdHeader::named("X-Auth-Token"));
    /// let sessions = Sessions::new(multisession::store::MemoryStore::new(), config)?;
    /// assert_eq!(sessions.id_headers().collect::<Vec<_>>(), ["x-auth-token"]);
    /// let token = b"not an id".as_slice();
    /// let session = sessions.session_with_headers(
    ///     [],
    ///     |name| if name == "x-auth-token" { vec![token] } else { vec![] },
    ///     multisession::Device::default(),
    /// );
    /// # let _ = session;
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn session_with_headers<'a>(
        &self,
        cookie_headers: impl IntoIterator<Item = &'a [u8]>,
        header: impl Fn(&str) -> Vec<&'a [u8]>,
        device: Device,
    ) -> Session {
        Session::new(self.engine.clone(), self.engine.start(cookie_headers, &header), device)
    }

    /// The request headers that may carry an id, lowercase: what an adapter
    /// passes to [`Sessions::session_with_headers`]. Empty unless a part
    /// has an [`IdHeader`](crate::IdHeader).
    ///
    /// ```
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// assert_eq!(sessions.id_headers().count(), 0);
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn id_headers(&self) -> impl Iterator<Item = &str> {
        self.engine.id_headers()
    }

    /// Every live session of `user`, most recently active first.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be reached; `Unsupported` for a store
    /// without a user index; `Usage` for a user id
    /// [`Session::login`] refuses (empty, longer than
    /// [`MAX_USER_ID_BYTES`](crate::MAX_USER_ID_BYTES), or holding control
    /// characters): no session can have it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// for device in sessions.user_sessions("23").await? {
    ///     println!("{} last active {}", device.handle, device.last_active_at);
    /// }
    /// let refused = sessions.user_sessions("23\0").await.unwrap_err();
    /// assert_eq!(refused.kind(), multisession::ErrorKind::Usage);
    /// # Ok(()) }
    /// ```
    pub async fn user_sessions(&self, user: &str) -> Result<Vec<DeviceSession>> {
        crate::session::check_user_id(user)?;
        Ok(listing(self.engine.user_store()?.user_sessions(user).await?, None))
    }

    /// Logs `user` out on every device; how many sessions ended (a cookie
    /// part with a revocation store ends them all but cannot count them: 0).
    /// Inside a request, [`Session::clear_user_sessions`] spares the caller's
    /// own.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be reached; `Usage` for a user id
    /// [`Session::login`] refuses; `Conflict` if the user's sessions kept
    /// changing while they were being ended (listed again four times).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// assert_eq!(sessions.clear_user_sessions("23").await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn clear_user_sessions(&self, user: &str) -> Result<u64> {
        crate::session::check_user_id(user)?;
        let ended = self.engine.end_user_sessions(user, None).await?.0;
        self.engine.audit.emit(&AuditEvent::new(AuditKind::Cleared, user, None, &Device::default(), ended));
        Ok(ended)
    }

    /// Logs `user` out on every device but the one `keep` names, with each
    /// device's other parts; how many sessions ended. For admin code acting
    /// for a user ("log out my other devices" from a support tool); inside
    /// a request, [`Session::logout_other_devices`] does this for the
    /// caller's own session.
    ///
    /// # Errors
    ///
    /// `Gone` if `keep` names no live session of `user` (nothing is
    /// ended); `Usage` for a user id [`Session::login`] refuses;
    /// `Unavailable` if the store cannot be reached; `Unsupported` where the
    /// login lives in a cookie part.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// let keep = "0123456789abcdef.MjM".parse()?;
    /// let err = sessions.clear_user_sessions_except("23", &keep).await.unwrap_err();
    /// assert_eq!(err.kind(), multisession::ErrorKind::Gone);
    /// # Ok(()) }
    /// ```
    pub async fn clear_user_sessions_except(&self, user: &str, keep: &SessionHandle) -> Result<u64> {
        crate::session::check_user_id(user)?;
        let store = self.engine.user_store()?;
        let kept = if keep.user() == user {
            store.user_sessions(user).await?.into_iter().find(|s| keep.matches(&s.key))
        } else {
            None
        };
        let kept =
            kept.ok_or_else(|| Error::new(ErrorKind::Gone, "the session to keep is not a live session of this user"))?;
        let ended = self.engine.end_user_sessions(user, Some(&kept.key)).await?.0;
        self.engine.audit.emit(&AuditEvent::new(AuditKind::Cleared, user, Some(keep.clone()), &kept.device, ended));
        Ok(ended)
    }

    /// Registers `hook` to be called with every lifecycle event (login,
    /// logout, logout of other or all devices, revocation, eviction by the
    /// session cap, admin clears), after it happened: a login or logout once
    /// its request committed. Hooks run in the order registered, on the
    /// task that caused the event, so keep them quick (send the event to a
    /// channel for slow work). The same events are logged under
    /// [`AUDIT_TARGET`](crate::AUDIT_TARGET). An expiry is an event where
    /// the cleanup ([`Sessions::delete_expired`]) can tell whose session it
    /// removed (see [`AuditKind::Expired`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// use std::sync::{Arc, Mutex};
    /// use multisession::{AuditKind, Sessions, store::MemoryStore};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let sessions = Sessions::new(MemoryStore::new(), Default::default())?
    ///     .on_audit(move |event| log.lock().unwrap().push((event.kind, event.user.clone())));
    /// let session = sessions.session([], Default::default());
    /// session.login("23").await?;
    /// session.commit().await?;
    /// assert_eq!(*seen.lock().unwrap(), [(AuditKind::Login, "23".to_owned())]);
    /// # Ok(()) }
    /// ```
    pub fn on_audit(self, hook: impl Fn(&AuditEvent) + Send + Sync + 'static) -> Self {
        self.engine.audit.add(Arc::new(hook));
        self
    }

    /// Logs out the one session `handle` names; whether it existed.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be reached.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// let handle = "0123456789abcdef.MjM".parse()?;
    /// assert!(!sessions.revoke(&handle).await?);
    /// # Ok(()) }
    /// ```
    pub async fn revoke(&self, handle: &SessionHandle) -> Result<bool> {
        revoke(&self.engine, &**self.engine.user_store()?, handle).await
    }

    /// The server-side store that keeps the logins (the part holding the
    /// user id), for admin tools that read it directly, such as the
    /// `multisession` command line's `stats`, `gc` and `inspect`.
    ///
    /// # Errors
    ///
    /// `Usage` if no part keeps the user id; `Unsupported` if it is kept in
    /// a cookie part.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// let store = sessions.login_store()?;
    /// assert_eq!(store.user_sessions("23").await?.len(), 0);
    /// # Ok(()) }
    /// ```
    pub fn login_store(&self) -> Result<Arc<dyn Store>> {
        self.engine.user_store().cloned()
    }

    /// Removes the expired sessions of every server-side part (and the
    /// records of a cookie part's revocation store), a batch at a time
    /// ([`Store::delete_expired_batch`]); how many. Each expired login the
    /// store can name is an [`AuditKind::Expired`] event, reported at most
    /// once. Expired sessions are never served anyway: this reclaims their
    /// space and reports them.
    ///
    /// # Errors
    ///
    /// `Unavailable` if a store cannot be reached; the other stores are
    /// still cleaned, and the batches removed are reported.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// assert_eq!(sessions.delete_expired().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn delete_expired(&self) -> Result<u64> {
        let engine = &self.engine;
        // The login part first, so that its expired logins are reported even
        // where another part shares its store.
        let order =
            engine.user_part.into_iter().chain((0..engine.parts.len()).filter(|&i| Some(i) != engine.user_part));
        let (mut removed, mut failed) = (0u64, None);
        for i in order {
            let store = match &engine.parts[i].backend {
                Backend::Server(store) => store,
                Backend::Cookie(cookie) => match cookie.revocation_store() {
                    Some(store) => store,
                    None => continue,
                },
            };
            let reports = Some(i) == engine.user_part && engine.parts[i].is_server();
            match self.sweep(&**store, reports).await {
                Ok(n) => removed = removed.saturating_add(n),
                // The first failure is returned; any later one is logged.
                Err(e) if failed.is_some() => tracing::warn!(error = %e, "expired-session cleanup of a part failed"),
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(removed), Err)
    }

    /// Removes `store`'s expired records batch by batch, emitting the
    /// logins among them if `reports`; how many.
    async fn sweep(&self, store: &dyn Store, reports: bool) -> Result<u64> {
        let mut removed = 0u64;
        // Bounded, so that a pass ends even if another process keeps
        // winning the same rows; the next pass goes on.
        for _ in 0..CLEANUP_BATCHES {
            let done = store.delete_expired_batch().await?;
            removed = removed.saturating_add(done.removed);
            for info in done.logins.iter().filter(|_| reports) {
                let handle = SessionHandle::of(&info.user_id, &info.key);
                let mut event = AuditEvent::new(AuditKind::Expired, &info.user_id, Some(handle), &info.device, 1);
                event.at = info.expires_at;
                self.engine.audit.emit(&event);
            }
            if !done.more {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(removed)
    }

    /// Runs [`Sessions::delete_expired`] every `period` (at least a second)
    /// on the current Tokio runtime, logging failures, until the returned
    /// handle is aborted or the runtime stops.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// use multisession::{Duration, Sessions, store::MemoryStore};
    ///
    /// let sessions = Sessions::new(MemoryStore::new(), Default::default())?;
    /// let cleanup = sessions.spawn_cleanup(Duration::minutes(1));
    /// cleanup.abort();
    /// # Ok(()) }
    /// ```
    pub fn spawn_cleanup(&self, period: time::Duration) -> tokio::task::JoinHandle<()> {
        let period = std::time::Duration::try_from(period).unwrap_or_default().max(std::time::Duration::from_secs(1));
        let sessions = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match sessions.delete_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "expired sessions removed"),
                    Err(e) => tracing::warn!(error = %e, "expired-session cleanup failed"),
                }
            }
        })
    }
}

/// A user's sessions as devices, most recently active first, `current` marked.
pub(crate) fn listing(sessions: Vec<SessionInfo>, current: Option<StoreKey>) -> Vec<DeviceSession> {
    let mut list: Vec<DeviceSession> = sessions
        .into_iter()
        .map(|info| {
            let is_current = Some(info.key) == current;
            DeviceSession::new(info, is_current)
        })
        .collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.last_active_at));
    list
}

/// Ends the device session `handle` names, found through its user's index,
/// with the device's other parts.
pub(crate) async fn revoke(engine: &Engine, store: &dyn Store, handle: &SessionHandle) -> Result<bool> {
    let found = store.user_sessions(handle.user()).await?.into_iter().find(|s| handle.matches(&s.key));
    let Some(info) = found else { return Ok(false) };
    let ended = engine.end_device(&info).await?;
    if ended {
        engine.audit.emit(&AuditEvent::new(AuditKind::Revoke, &info.user_id, Some(handle.clone()), &info.device, 1));
    }
    Ok(ended)
}

/// A public name for one of a user's sessions, safe to put in a page or a
/// form: the user and the first 64 bits of the store key, so it can be
/// neither turned into a cookie nor used for another user's session.
///
/// Its text form is `{16 hex digits}.{base64url of the user id}`.
///
/// ```
/// let handle: multisession::SessionHandle = "0123456789abcdef.MjM".parse()?;
/// assert_eq!(handle.user(), "23");
/// assert_eq!(handle.to_string(), "0123456789abcdef.MjM");
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionHandle {
    prefix: String,
    user: String,
}

impl SessionHandle {
    /// The user whose session this is.
    ///
    /// ```
    /// let handle: multisession::SessionHandle = "0123456789abcdef.MjM".parse()?;
    /// assert_eq!(handle.user(), "23");
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The handle of `user`'s session stored under `key`.
    pub(crate) fn of(user: &str, key: &StoreKey) -> Self {
        Self { prefix: key.short(), user: user.to_owned() }
    }

    /// Whether this handle names the session stored under `key`, as found
    /// in [`Store::user_sessions`](crate::store::Store::user_sessions).
    ///
    /// ```
    /// let handle: multisession::SessionHandle = "0123456789abcdef.MjM".parse()?;
    /// assert!(!handle.matches(&multisession::SessionId::generate()?.store_key()));
    /// # Ok::<(), multisession::Error>(())
    /// ```
    pub fn matches(&self, key: &StoreKey) -> bool {
        key.short() == self.prefix
    }
}

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.prefix, URL_SAFE_NO_PAD.encode(&self.user))
    }
}

impl FromStr for SessionHandle {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::usage("a session handle is 16 hex digits, a dot and a base64url user id");
        // The longest a handle of a valid user id can be: 16 + 1 + 340.
        if s.len() > 400 {
            return Err(invalid());
        }
        let (prefix, user) = s.split_once('.').ok_or_else(invalid)?;
        if prefix.len() != 16 || !prefix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(invalid());
        }
        let user = URL_SAFE_NO_PAD.decode(user).map_err(|_| invalid())?;
        let user = String::from_utf8(user).map_err(|_| invalid())?;
        if user.is_empty() || user.len() > crate::MAX_USER_ID_BYTES || user.chars().any(char::is_control) {
            return Err(invalid());
        }
        Ok(Self { prefix: prefix.to_owned(), user })
    }
}

/// One of a user's sessions, as a "your devices" page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSession {
    /// Names this session for [`Session::revoke`] and [`Sessions::revoke`].
    pub handle: SessionHandle,
    /// The device that logged in.
    pub device: Device,
    /// When the user logged in on this device.
    pub created_at: OffsetDateTime,
    /// When the device last used the session (to within the touch interval).
    pub last_active_at: OffsetDateTime,
    /// When the session expires unless used.
    pub expires_at: OffsetDateTime,
    /// Whether the session is permanent.
    pub permanent: bool,
    /// Whether this is the session of the request that listed it.
    pub current: bool,
}

impl DeviceSession {
    pub(crate) fn new(info: SessionInfo, current: bool) -> Self {
        Self {
            handle: SessionHandle { prefix: info.key.short(), user: info.user_id },
            device: info.device,
            created_at: info.created_at,
            last_active_at: info.last_active_at,
            expires_at: info.expires_at,
            permanent: info.permanent,
            current,
        }
    }
}
