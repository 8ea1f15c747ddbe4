//! Lifecycle events for an audit trail (ASVS 16.3.1): who logged in or out
//! where, whose sessions were ended and how many. Each is handed to the
//! hooks an application registers ([`Sessions::on_audit`](crate::Sessions::on_audit))
//! and logged as a `tracing` event under the target [`AUDIT_TARGET`], with
//! the same fields. An event names a session by its public
//! [`SessionHandle`], never by its id or store key.

use std::sync::{Arc, PoisonError, RwLock};

use time::OffsetDateTime;

use crate::{Device, SessionHandle};

/// The `tracing` target of audit events, so that a subscriber can route
/// them to an audit log of their own (`multisession::audit=info`).
pub const AUDIT_TARGET: &str = "multisession::audit";

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditKind {
    /// A user logged in on a device ([`Session::login`](crate::Session::login), once committed).
    Login,
    /// A login was refused: the user is at the session cap and the cap
    /// refuses logins ([`OnLimit::RefuseLogin`](crate::OnLimit::RefuseLogin)).
    LoginRefused,
    /// A device logged out ([`Session::logout`](crate::Session::logout), once committed).
    Logout,
    /// A device logged its user out everywhere else.
    LogoutOthers,
    /// A device logged its user out everywhere, itself included.
    LogoutAll,
    /// One session was ended by its handle ([`Session::revoke`](crate::Session::revoke),
    /// [`Sessions::revoke`](crate::Sessions::revoke)).
    Revoke,
    /// A login ended this session to keep its user within the session cap.
    Evicted,
    /// A user's sessions were ended without a request of theirs
    /// ([`Session::clear_user_sessions`](crate::Session::clear_user_sessions),
    /// [`Sessions::clear_user_sessions`](crate::Sessions::clear_user_sessions) and `…_except`).
    Cleared,
    /// A logged-in session expired, reported by the cleanup that removed it
    /// ([`Sessions::delete_expired`](crate::Sessions::delete_expired)), where
    /// the store can tell which it removed: SQL stores, Firestore and
    /// [`MemoryStore`](crate::store::MemoryStore). Redis, Memcached, MongoDB
    /// and DynamoDB let sessions lapse by themselves, unreported.
    Expired,
}

impl AuditKind {
    /// The kind's name in log lines: `login`, `login_refused`, `logout`, `logout_others`,
    /// `logout_all`, `revoke`, `evicted`, `cleared`, `expired`.
    ///
    /// ```
    /// assert_eq!(multisession::AuditKind::LogoutAll.as_str(), "logout_all");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Login => "login",
            AuditKind::LoginRefused => "login_refused",
            AuditKind::Logout => "logout",
            AuditKind::LogoutOthers => "logout_others",
            AuditKind::LogoutAll => "logout_all",
            AuditKind::Revoke => "revoke",
            AuditKind::Evicted => "evicted",
            AuditKind::Cleared => "cleared",
            AuditKind::Expired => "expired",
        }
    }
}

/// One lifecycle event. It holds no session id or store key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// The user whose session(s) it concerns.
    pub user: String,
    /// The session concerned: the new one for a login, the ended one for a
    /// logout, a revocation, an eviction or an expiry, the caller's for a logout of
    /// other devices; `None` where there is none to name (a logout of every
    /// device, an admin clear) or the login lives in a cookie.
    pub handle: Option<SessionHandle>,
    /// That session's device (for an eviction, a revocation or an expiry,
    /// the ended session's; otherwise the device of the request).
    pub device: Device,
    /// How many sessions it ended (0 for a login; a cookie login part with
    /// a revocation store ends them all but cannot count them: 0).
    pub ended: u64,
    /// When it happened: for an expiry, when the session expired, which
    /// is before the cleanup that noticed.
    pub at: OffsetDateTime,
}

impl AuditEvent {
    pub(crate) fn new(kind: AuditKind, user: &str, handle: Option<SessionHandle>, device: &Device, ended: u64) -> Self {
        Self { kind, user: user.to_owned(), handle, device: device.clone(), ended, at: crate::record::now() }
    }
}

pub(crate) type Hook = Arc<dyn Fn(&AuditEvent) + Send + Sync>;

/// The registered hooks.
#[derive(Default)]
pub(crate) struct Audit {
    hooks: RwLock<Vec<Hook>>,
}

impl Audit {
    pub(crate) fn add(&self, hook: Hook) {
        self.hooks.write().unwrap_or_else(PoisonError::into_inner).push(hook);
    }

    /// Logs `event` and hands it to every hook, in the order registered.
    pub(crate) fn emit(&self, event: &AuditEvent) {
        let handle = event.handle.as_ref().map(ToString::to_string);
        tracing::info!(
            target: AUDIT_TARGET,
            kind = event.kind.as_str(),
            user = ?event.user,
            handle = handle.as_deref().unwrap_or(""),
            ip = event.device.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            user_agent = ?event.device.user_agent.as_deref().unwrap_or(""),
            ended = event.ended,
            at = %event.at,
            "session {}",
            event.kind.as_str()
        );
        let hooks = self.hooks.read().unwrap_or_else(PoisonError::into_inner).clone();
        for hook in hooks {
            // A hook that panics must not unwind through a commit whose
            // store writes are done (the client would never get its id),
            // nor keep the hooks after it from running.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(event))).is_err() {
                tracing::error!(target: AUDIT_TARGET, kind = event.kind.as_str(), "an audit hook panicked");
            }
        }
    }
}
