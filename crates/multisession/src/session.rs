//! [`Session`]: the handle a request handler uses.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::audit::{AuditEvent, AuditKind};
use crate::engine::{Commit, Cycle, Engine, State};
use crate::store::Backend;
use crate::users::{DeviceSession, SessionHandle};
use crate::{Device, Error, ErrorKind, Result};

/// The key under which the logged-in user reads back through [`Session::get`].
/// It is set by [`Session::login`] only.
pub const USER_ID_KEY: &str = "user_id";

/// The key under which [`Session::csrf_token`] keeps the session's token.
/// Give it a part of its own (a [`CookieStore`](crate::store::CookieStore)
/// part costs no store write) or leave it to the main one.
pub const CSRF_TOKEN_KEY: &str = "csrf_token";

/// The longest user id [`Session::login`] takes, in bytes of UTF-8: every
/// store keeps and indexes it whole (MySQL's column holds 255 characters,
/// Firestore indexes 1500 bytes).
pub const MAX_USER_ID_BYTES: usize = 255;

/// One request's session. Cheap to clone; every clone is the same session.
///
/// Nothing is read from the store until a method first needs the session, and
/// nothing is written unless something changed. Every method is async because
/// the first one loads.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::{Device, SessionConfig, Sessions, store::MemoryStore};
///
/// let sessions = Sessions::new(MemoryStore::new(), SessionConfig::default())?;
/// let session = sessions.session([], Device::default());   // a request without a cookie
/// session.insert("theme", "dark").await?;
/// assert_eq!(session.get::<String>("theme").await?.as_deref(), Some("dark"));
/// let commit = session.commit().await?;
/// assert_eq!(commit.set_cookies.len(), 1);                  // a new session holds data
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Arc<Engine>,
    device: Device,
    state: Mutex<State>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(engine: Arc<Engine>, state: State, device: Device) -> Self {
        Self { shared: Arc::new(Shared { engine, device, state: Mutex::new(state) }) }
    }

    async fn state(&self) -> tokio::sync::MutexGuard<'_, State> {
        self.shared.state.lock().await
    }

    fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The parts that keep `key`, or a usage error naming it.
    fn owners<'a>(&'a self, key: &'a str) -> Result<impl Iterator<Item = usize> + Send + 'a> {
        let mut owners = self.engine().routing.owners(key).peekable();
        if owners.peek().is_none() {
            return Err(Error::usage(format!(
                "no session part keeps the key `{key}`: add it to a part's fields, or add an auto part"
            )));
        }
        Ok(owners)
    }

    /// The value under `key`, deserialized as `T`; `None` if absent.
    /// `user_id` reads the logged-in user.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read; `Usage` if the value is not
    /// a `T`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// session.insert("visits", 3).await?;
    /// assert_eq!(session.get::<u32>("visits").await?, Some(3));
    /// assert_eq!(session.get::<u32>("missing").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let value = if key == USER_ID_KEY {
            self.user().await?.map(Value::String)
        } else {
            let mut state = self.state().await;
            let mut found = None;
            for i in self.engine().routing.owners(key) {
                if let Some(value) = state.load(self.engine(), i).await?.data.get(key) {
                    found = Some(value.clone());
                    break;
                }
            }
            found
        };
        // serde's message would quote the value: say only what was expected.
        value
            .map(|v| {
                serde_json::from_value(v).map_err(|_| {
                    Error::usage(format!(
                        "the session value under {key:?} is not a {}; read it as the type it was stored as",
                        std::any::type_name::<T>()
                    ))
                })
            })
            .transpose()
    }

    /// Sets `key` to `value`, written at the end of the request.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read; `Usage` for `user_id` (use
    /// [`Session::login`]) or a value that does not serialize to JSON.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// session.insert("cart", vec![1, 2, 3]).await?;
    /// assert!(session.insert("user_id", "23").await.is_err());   // logins go through login()
    /// # Ok(()) }
    /// ```
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<()> {
        if key == USER_ID_KEY {
            return Err(Error::usage(
                "user_id is set by Session::login (which also changes the session id), not insert",
            ));
        }
        let value = serde_json::to_value(value)
            .map_err(|_| Error::usage(format!("the value for {key:?} does not serialize to JSON")))?;
        let mut state = self.state().await;
        for i in self.owners(key)? {
            state.load(self.engine(), i).await?.set(key, value.clone());
        }
        Ok(())
    }

    /// Removes `key`, returning its value.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read; `Usage` for `user_id` (use
    /// [`Session::logout`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// session.insert("flash", "saved").await?;
    /// assert_eq!(session.remove("flash").await?, Some(serde_json::json!("saved")));
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, key: &str) -> Result<Option<Value>> {
        if key == USER_ID_KEY {
            return Err(Error::usage("user_id is removed by Session::logout, not remove"));
        }
        let mut state = self.state().await;
        let mut removed = None;
        for i in self.engine().routing.owners(key) {
            removed = removed.or(state.load(self.engine(), i).await?.remove(key));
        }
        Ok(removed)
    }

    /// Removes every key; the login, if any, stays.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// session.insert("a", 1).await?;
    /// session.clear().await?;
    /// assert_eq!(session.get::<i32>("a").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<()> {
        let mut state = self.state().await;
        state.load_all(self.engine()).await?;
        state.parts.iter_mut().for_each(|part| part.clear());
        Ok(())
    }

    /// The logged-in user, if any.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// assert_eq!(session.user().await?, None);
    /// session.login("23").await?;
    /// assert_eq!(session.user().await?.as_deref(), Some("23"));
    /// # Ok(()) }
    /// ```
    pub async fn user(&self) -> Result<Option<String>> {
        let Some(u) = self.engine().user_part else { return Ok(None) };
        Ok(self.state().await.load(self.engine(), u).await?.user.clone())
    }

    /// When the user logged in on this device (`None` if no one is logged
    /// in; the time of this request for a login it holds), so that an
    /// application can ask for the password again before a sensitive action
    /// (ASVS 7.5.1). An id change ([`Session::cycle_id`]) keeps it; only a
    /// login moves it.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// assert_eq!(session.authenticated_at().await?, None);
    /// session.login("23").await?;
    /// assert!(session.authenticated_at().await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn authenticated_at(&self) -> Result<Option<OffsetDateTime>> {
        let Some(u) = self.engine().user_part else { return Ok(None) };
        Ok(self.state().await.load(self.engine(), u).await?.authenticated_at())
    }

    /// Logs `user` in on this device: at the end of the request the session
    /// gets a new id (the old one stops working) and records the user and the
    /// device (User-Agent, client address). An anonymous session's data is
    /// kept (a cart survives logging in); a session of another user starts
    /// empty, so nothing passes between users of a shared browser.
    ///
    /// Every server-side part of the session gets a new id, so a cookie
    /// captured before the login reads nothing written after it, and the
    /// CSRF token ([`Session::csrf_token`]) is replaced.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read; `TooManySessions` if a
    /// session limit with [`OnLimit::RefuseLogin`](crate::OnLimit::RefuseLogin)
    /// is reached; `Usage` for a user id that is empty, longer than
    /// [`MAX_USER_ID_BYTES`] or holds control characters (NUL among them).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// session.login("23").await?;
    /// assert_eq!(session.get::<String>("user_id").await?.as_deref(), Some("23"));
    /// # Ok(()) }
    /// ```
    pub async fn login(&self, user: &str) -> Result<()> {
        check_user_id(user)?;
        let engine = self.engine();
        let u = engine.user_part()?;
        let mut state = self.state().await;
        state.load_all(engine).await?;
        // Data follows a visitor into their login (a cart, a theme), but never
        // from one user to another on a shared browser.
        let another_user = state.parts[u].user.as_deref().is_some_and(|previous| previous != user);
        if let Some(previous) = state.parts[u].user.clone().filter(|_| another_user) {
            // The other user's session is replaced at commit: logged out.
            let handle = state.parts[u].stored_key().map(|key| SessionHandle::of(&previous, &key));
            state.pending.push(AuditEvent::new(AuditKind::Logout, &previous, handle, &self.shared.device, 1));
        }
        // A refused login (the user at the session cap) changes nothing.
        let replacing = state.late_over(engine, u).await;
        if let Err(e) = state.parts[u].login(&engine.parts[u], user, &replacing).await {
            if e.kind() == ErrorKind::TooManySessions {
                engine.audit.emit(&AuditEvent::new(AuditKind::LoginRefused, user, None, &self.shared.device, 0));
            }
            return Err(e);
        }
        if another_user {
            for part in &mut state.parts {
                part.clear();
                part.permanent = false;
            }
        }
        for i in engine.routing.owners(CSRF_TOKEN_KEY) {
            state.parts[i].remove(CSRF_TOKEN_KEY);
        }
        for (i, part) in engine.parts.iter().enumerate() {
            if i != u && matches!(part.backend, Backend::Server(_)) {
                state.parts[i].cycle(Cycle::Rotate);
            }
        }
        Ok(())
    }

    /// Logs this device out: deletes its session and expires its cookie.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// session.login("23").await?;
    /// session.logout().await?;
    /// assert_eq!(session.user().await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn logout(&self) -> Result<()> {
        self.end_device(AuditKind::Logout).await
    }

    /// [`Session::logout`], audited as `kind`: once the request commits,
    /// the logged-in user's session is reported ended.
    async fn end_device(&self, kind: AuditKind) -> Result<()> {
        let engine = self.engine();
        let mut state = self.state().await;
        let mut event = None;
        if let Some(u) = engine.user_part {
            let login = state.load(engine, u).await?;
            if let Some(user) = login.user.clone() {
                let handle = login.stored_key().map(|key| SessionHandle::of(&user, &key));
                event = Some(AuditEvent::new(kind, &user, handle, &self.shared.device, 1));
            }
        }
        // With several server parts, the session that keeps the login knows
        // where the device's other parts live, those whose cookies this
        // request lacks too.
        // The login first, as every way of ending a device goes: an id
        // change of this device in another tab then finds it gone.
        let mut login_deleted = None;
        if let Some(u) = engine.user_part.filter(|&u| engine.has_siblings() && engine.parts[u].is_server()) {
            let login = state.load(engine, u).await?;
            let siblings = login.current_siblings();
            if let Some(key) = login.stored_key() {
                engine.user_store()?.delete(&key).await?;
                login_deleted = Some(u);
            }
            engine.delete_siblings(&siblings).await?;
        }
        for (i, part) in state.parts.iter_mut().enumerate() {
            part.end(Some(i) == login_deleted);
        }
        match event {
            // Deleted already: it happened, whatever the commit does.
            Some(event) if login_deleted.is_some() => engine.audit.emit(&event),
            Some(event) => state.pending.push(event),
            None => {}
        }
        Ok(())
    }

    /// Logs the user out everywhere but here; how many sessions ended.
    /// Without a login, does nothing.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be reached; `Conflict` if the user's sessions kept
    /// changing while they were being ended (listed again four times); try
    /// again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// assert_eq!(session.logout_other_devices().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn logout_other_devices(&self) -> Result<u64> {
        let Some(user) = self.user().await? else { return Ok(0) };
        self.end_user_sessions_but_mine(&user, AuditKind::LogoutOthers).await
    }

    /// Ends `user`'s sessions but this request's own, which a cookie part
    /// re-issues under the user's new generation.
    async fn end_user_sessions_but_mine(&self, user: &str, kind: AuditKind) -> Result<u64> {
        let engine = self.engine();
        let u = engine.user_part()?;
        let mut state = self.state().await;
        // The session as stored now, even with an id change pending: the
        // change replaces it at commit, and needs it still there.
        let keep = state.parts[u].stored_key();
        let (ended, generation) = engine.end_user_sessions(user, keep.as_ref()).await?;
        let mine = keep.filter(|_| state.parts[u].user.as_deref() == Some(user));
        let handle = mine.map(|key| SessionHandle::of(user, &key));
        engine.audit.emit(&AuditEvent::new(kind, user, handle, &self.shared.device, ended));
        let mine = &mut state.parts[u];
        if let Some(generation) = generation.filter(|_| mine.user.as_deref() == Some(user)) {
            mine.regenerate(generation);
        }
        Ok(ended)
    }

    /// Logs the user out on every device, this one included; how many
    /// sessions ended. Without a login, does nothing.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be reached; `Conflict` if the user's sessions kept
    /// changing while they were being ended (listed again four times); try
    /// again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// assert_eq!(session.logout_all_devices().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn logout_all_devices(&self) -> Result<u64> {
        let Some(user) = self.user().await? else { return Ok(0) };
        let engine = self.engine();
        let u = engine.user_part()?;
        let (ended, _) = engine.end_user_sessions(&user, None).await?;
        engine.audit.emit(&AuditEvent::new(AuditKind::LogoutAll, &user, None, &self.shared.device, ended));
        let mut state = self.state().await;
        let stored_as_user = state.parts[u].current.as_ref().is_some_and(|c| c.meta.user_id.as_deref() == Some(&user));
        for (i, part) in state.parts.iter_mut().enumerate() {
            part.end(i == u && stored_as_user);
        }
        Ok(ended)
    }

    /// Logs out every session of `user` except this request's own, as
    /// Flask-Multi-Session's `session.clear_user_sessions(user_id=…)` does;
    /// how many ended. For code without a request, see
    /// [`Sessions::clear_user_sessions`](crate::Sessions::clear_user_sessions).
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be reached; `Usage` for a user id
    /// [`Session::login`] refuses (no store can hold one); `Conflict` as for
    /// [`Session::logout_all_devices`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// assert_eq!(session.clear_user_sessions("23").await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn clear_user_sessions(&self, user: &str) -> Result<u64> {
        check_user_id(user)?;
        self.user().await?;
        self.end_user_sessions_but_mine(user, AuditKind::Cleared).await
    }

    /// The logged-in user's sessions on every device, the current one marked;
    /// empty without a login.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be reached.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// assert!(session.devices().await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn devices(&self) -> Result<Vec<DeviceSession>> {
        let store = self.engine().user_store()?;
        let Some(user) = self.user().await? else { return Ok(Vec::new()) };
        let current = self.state().await.parts[self.engine().user_part()?].stored_key();
        Ok(crate::users::listing(store.user_sessions(&user).await?, current))
    }

    /// Logs out one of the logged-in user's own devices, named by the handle
    /// from [`Session::devices`]; revoking the current device is a logout.
    /// A handle of another user's session is refused (`false`).
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be reached.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// let handle: multisession::SessionHandle = "0123456789abcdef.MjM".parse()?;
    /// assert!(!session.revoke(&handle).await?);   // not logged in as "23"
    /// # Ok(()) }
    /// ```
    pub async fn revoke(&self, handle: &SessionHandle) -> Result<bool> {
        let store = self.engine().user_store()?;
        if self.user().await?.as_deref() != Some(handle.user()) {
            return Ok(false);
        }
        let mine = self.state().await.parts[self.engine().user_part()?].stored_key();
        if mine.is_some_and(|key| handle.matches(&key)) {
            self.end_device(AuditKind::Revoke).await?;
            return Ok(true);
        }
        crate::users::revoke(self.engine(), &**store, handle).await
    }

    /// Whether the session is permanent.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// assert!(!session.is_permanent().await?);
    /// # Ok(()) }
    /// ```
    pub async fn is_permanent(&self) -> Result<bool> {
        let part = self.engine().user_part.unwrap_or(0);
        Ok(self.state().await.load(self.engine(), part).await?.permanent)
    }

    /// Makes the session permanent ("remember me": the permanent lifetime and
    /// a cookie that outlives the browser) or not. The flag is stored and
    /// survives every later request.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// session.set_permanent(true).await?;
    /// assert!(session.is_permanent().await?);
    /// # Ok(()) }
    /// ```
    pub async fn set_permanent(&self, permanent: bool) -> Result<()> {
        let mut state = self.state().await;
        state.load_all(self.engine()).await?;
        state.parts.iter_mut().for_each(|part| part.permanent = permanent);
        Ok(())
    }

    /// Gives the session a new id at the end of the request, keeping its
    /// data, user and device (use after a privilege change other than login,
    /// which already does this).
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// session.cycle_id().await?;
    /// # Ok(()) }
    /// ```
    pub async fn cycle_id(&self) -> Result<()> {
        let engine = self.engine();
        let mut state = self.state().await;
        for (i, part) in engine.parts.iter().enumerate() {
            if matches!(part.backend, Backend::Server(_)) {
                state.load(engine, i).await?.cycle(Cycle::Rotate);
            }
        }
        Ok(())
    }

    /// The session's CSRF token, for a hidden field of every form that
    /// changes something: 256 random bits, made on first use and kept under
    /// [`CSRF_TOKEN_KEY`] until login or logout replaces it. Check what a
    /// form sends back with [`Session::verify_csrf_token`].
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be read; `Usage` if no part keeps
    /// [`CSRF_TOKEN_KEY`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// let token = session.csrf_token().await?;
    /// assert_eq!(token, session.csrf_token().await?);
    /// session.verify_csrf_token(&token).await?;
    /// assert!(session.verify_csrf_token("forged").await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn csrf_token(&self) -> Result<String> {
        if let Some(Value::String(token)) = self.get::<Value>(CSRF_TOKEN_KEY).await? {
            return Ok(token);
        }
        let token = crate::SessionId::generate()?.encode();
        self.insert(CSRF_TOKEN_KEY, &token).await?;
        Ok(token)
    }

    /// Checks a token a form sent back against the session's, in constant
    /// time (OWASP ASVS 3.5.1). Call it first in every handler that changes
    /// state; the axum layer already refuses cross-origin browser requests.
    ///
    /// # Errors
    ///
    /// `Forbidden` (403) if the session has no token or `submitted` is not
    /// it; `Unavailable` if the store cannot be read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// # let session = sessions.session([], Default::default());
    /// let err = session.verify_csrf_token("anything").await.unwrap_err();
    /// assert_eq!(err.kind(), multisession::ErrorKind::Forbidden);   // no token was ever issued
    /// # Ok(()) }
    /// ```
    pub async fn verify_csrf_token(&self, submitted: &str) -> Result<()> {
        use subtle::ConstantTimeEq as _;
        let expected = match self.get::<Value>(CSRF_TOKEN_KEY).await? {
            Some(Value::String(token)) => token,
            _ => String::new(),
        };
        if !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes())) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Forbidden,
            "the form's CSRF token is missing or not this session's: reload the page and send it again",
        ))
    }

    /// Writes what the request changed and says what the response needs.
    /// Framework adapters call it once, after the handler; a session the
    /// handler never touched costs nothing.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the store cannot be written (the adapter answers 503).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let sessions = multisession::Sessions::new(multisession::store::MemoryStore::new(), Default::default())?;
    /// let untouched = sessions.session([], Default::default());
    /// assert_eq!(untouched.commit().await?, multisession::Commit::default());
    /// # Ok(()) }
    /// ```
    pub async fn commit(&self) -> Result<Commit> {
        let mut state = self.shared.state.lock().await;
        let committed = state.commit(&self.shared.engine, &self.shared.device).await;
        // Reported only once they happened.
        let pending = std::mem::take(&mut state.pending);
        match &committed {
            Ok(_) => pending.iter().for_each(|event| self.shared.engine.audit.emit(event)),
            // A login the store refused at the cap, past the check in `login`.
            Err(e) if e.kind() == ErrorKind::TooManySessions => {
                if let Some(user) = self.shared.engine.user_part.and_then(|u| state.parts[u].user.as_deref()) {
                    let refused = AuditEvent::new(AuditKind::LoginRefused, user, None, &self.shared.device, 0);
                    self.shared.engine.audit.emit(&refused);
                }
            }
            Err(_) => {}
        }
        committed
    }
}

/// A user id every store can keep and index: see [`Session::login`]. The
/// calls that name a user check it too, so that an id no store can hold is
/// a `Usage` error, never a store failure (PostgreSQL refuses a NUL).
pub(crate) fn check_user_id(user: &str) -> Result<()> {
    if user.is_empty() {
        return Err(Error::usage("a user id cannot be empty"));
    }
    if user.len() > MAX_USER_ID_BYTES {
        return Err(Error::usage(format!(
            "a user id is at most {MAX_USER_ID_BYTES} bytes of UTF-8, got {}; use a shorter key for the user",
            user.len()
        )));
    }
    if user.chars().any(char::is_control) {
        return Err(Error::usage("a user id cannot hold control characters (NUL, newlines, ...)"));
    }
    Ok(())
}
