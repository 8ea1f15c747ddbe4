//! Lifecycle events (ASVS 16.3.1): each operation reports exactly the events
//! it should, to the application's hooks and under the `multisession::audit`
//! tracing target, naming the user, the public handle and the device, and
//! never a session id or store key; on axum and on actix-web.

mod common;

use std::sync::{Arc, Mutex};

use common::{Captured, Device, Framework, session_cookie};
use multisession::store::{MemoryStore, Store};
use multisession::{AUDIT_TARGET, AuditEvent, AuditKind, OnLimit, SessionConfig, Sessions};

common::both_frameworks!(each_operation_reports_exactly_its_events_and_no_id);

/// What the hooks saw so far, taken.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<AuditEvent>>>);

impl Seen {
    fn take(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }

    fn kinds(&self) -> Vec<(AuditKind, String, u64)> {
        self.take().into_iter().map(|e| (e.kind, e.user, e.ended)).collect()
    }
}

async fn each_operation_reports_exactly_its_events_and_no_id(fw: Framework) {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let seen = Seen::default();
    let hook = seen.clone();
    let config = SessionConfig::default().with_max_sessions_per_user(3, OnLimit::EvictLeastRecent);
    let store = Arc::new(MemoryStore::new());
    let sessions = Sessions::new(store.clone(), config)
        .expect("valid config")
        .on_audit(move |event| hook.0.lock().expect("not poisoned").push(event.clone()));
    let app = fw.app(sessions.clone());
    // Every store key the test's sessions had, to look for in the log.
    let mut keys = std::collections::BTreeSet::new();
    let note_keys = async |keys: &mut std::collections::BTreeSet<String>| {
        for user in ["23", "42"] {
            keys.extend(store.user_sessions(user).await.expect("listed").into_iter().map(|s| s.key.to_string()));
        }
    };
    let mut laptop = Device::new(app.clone(), "laptop", "192.0.2.1:1000");
    let mut phone = Device::new(app.clone(), "phone", "192.0.2.2:2000");
    let mut ids = Vec::new();

    // A login: one event, with the new session's handle and the device.
    laptop.get("/write").await;
    assert!(seen.take().is_empty(), "an anonymous write was reported");
    laptop.get("/login/23").await;
    let events = seen.take();
    assert_eq!(events.len(), 1, "{events:?}");
    let login = &events[0];
    assert_eq!((login.kind, login.user.as_str(), login.ended), (AuditKind::Login, "23", 0));
    assert_eq!(login.device.user_agent.as_deref(), Some("laptop"));
    assert_eq!(login.device.ip, "192.0.2.1".parse().ok());
    let listed = sessions.user_sessions("23").await.expect("listed");
    assert_eq!(login.handle.as_ref(), Some(&listed[0].handle), "the login names another session");
    note_keys(&mut keys).await;
    ids.extend(session_cookie(&laptop));

    // Reads, writes and an id change report nothing.
    laptop.get("/read").await;
    laptop.get("/cycle").await;
    note_keys(&mut keys).await;
    ids.extend(session_cookie(&laptop));
    assert!(seen.take().is_empty(), "a read or an id change was reported");

    // Logging out other devices: the phone's session.
    phone.get("/login/23").await;
    note_keys(&mut keys).await;
    ids.extend(session_cookie(&phone));
    assert_eq!(seen.kinds(), [(AuditKind::Login, "23".to_owned(), 0)]);
    laptop.get("/logout_others").await;
    let events = seen.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].ended), (AuditKind::LogoutOthers, 1));
    assert_eq!(events[0].device.user_agent.as_deref(), Some("laptop"), "not the asking device");

    // A revocation by handle: the revoked session's device.
    phone.get("/login/23").await;
    note_keys(&mut keys).await;
    ids.extend(session_cookie(&phone));
    seen.take();
    let phone_handle = sessions
        .user_sessions("23")
        .await
        .expect("listed")
        .into_iter()
        .find(|s| s.device.user_agent.as_deref() == Some("phone"))
        .expect("the phone")
        .handle;
    laptop.get(&format!("/revoke/{phone_handle}")).await;
    let events = seen.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, AuditKind::Revoke);
    assert_eq!(events[0].handle.as_ref(), Some(&phone_handle));
    assert_eq!(events[0].device.user_agent.as_deref(), Some("phone"), "not the revoked device");

    // Eviction by the cap (3): the fourth login evicts the least recent.
    for i in 0..3 {
        let mut other = Device::new(app.clone(), &format!("tablet-{i}"), "192.0.2.9:1");
        other.get("/login/23").await;
        note_keys(&mut keys).await;
        ids.extend(session_cookie(&other));
    }
    let kinds: Vec<AuditKind> = seen.take().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == AuditKind::Login).count(), 3, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == AuditKind::Evicted).count(), 1, "{kinds:?}");

    // A logout: the device's own session.
    let mut desk = Device::new(app.clone(), "desk", "192.0.2.3:1");
    desk.get("/login/42").await;
    note_keys(&mut keys).await;
    ids.extend(session_cookie(&desk));
    seen.take();
    let desk_handle = sessions.user_sessions("42").await.expect("listed")[0].handle.clone();
    desk.get("/logout").await;
    let events = seen.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].user.as_str()), (AuditKind::Logout, "42"));
    assert_eq!(events[0].handle.as_ref(), Some(&desk_handle));
    desk.get("/logout").await;
    assert!(seen.take().is_empty(), "logging out an anonymous device was reported");

    // Logging out everywhere (from the laptop, logged in again: the cap
    // evicted it), then an admin clear.
    laptop.get("/login/23").await;
    note_keys(&mut keys).await;
    ids.extend(session_cookie(&laptop));
    seen.take();
    let live = sessions.user_sessions("23").await.expect("listed").len() as u64;
    laptop.get("/logout_all").await;
    assert_eq!(seen.kinds(), [(AuditKind::LogoutAll, "23".to_owned(), live)]);
    desk.get("/login/42").await;
    seen.take();
    assert_eq!(sessions.clear_user_sessions("42").await.expect("cleared"), 1);
    assert_eq!(seen.kinds(), [(AuditKind::Cleared, "42".to_owned(), 1)]);

    // The same events were logged under the audit target, and no id or key
    // shows anywhere.
    let text = logs.text();
    for kind in ["login", "logout_others", "revoke", "evicted", "logout", "logout_all", "cleared"] {
        let line = format!("{AUDIT_TARGET}: session {kind}");
        assert!(text.contains(&line), "no `{line}` in the log:\n{text}");
    }
    assert!(text.contains("user=\"23\""), "the user is not in the log:\n{text}");
    assert!(ids.len() >= 7, "the test lost track of its devices' ids");
    assert!(keys.len() >= 7, "the test lost track of its sessions' keys");
    for id in &ids {
        assert!(!text.contains(id.as_str()), "a session id is in the log");
    }
    for key in &keys {
        assert!(!text.contains(key.as_str()), "a store key is in the log");
    }
}

/// A hook that panics neither fails the request nor keeps the next hook
/// from its event; logging in as another user on the same browser reports
/// the first user's logout.
#[tokio::test]
async fn a_panicking_hook_changes_nothing_and_a_user_switch_reports_the_logout() {
    let seen = Seen::default();
    let hook = seen.clone();
    let sessions = Sessions::new(MemoryStore::new(), SessionConfig::default())
        .expect("valid config")
        .on_audit(|_| panic!("a broken audit hook"))
        .on_audit(move |event| hook.0.lock().expect("not poisoned").push(event.clone()));
    let session = sessions.session([], Default::default());
    session.login("alice").await.expect("login");
    let commit = session.commit().await.expect("the commit succeeds despite the hook");
    assert_eq!(commit.set_cookies.len(), 1, "the login's cookie was lost");
    assert_eq!(seen.kinds(), [(AuditKind::Login, "alice".to_owned(), 0)]);
    let cookie = commit.set_cookies[0].split(';').next().expect("a pair").to_owned();
    let switch = sessions.session([cookie.as_bytes()], Default::default());
    switch.login("bob").await.expect("login");
    switch.commit().await.expect("commit");
    assert_eq!(seen.kinds(), [(AuditKind::Logout, "alice".to_owned(), 1), (AuditKind::Login, "bob".to_owned(), 0)]);
}

/// A login the cap refuses, whether `login` sees it or the store does at
/// commit, is reported as refused, not as a login.
#[tokio::test]
async fn a_login_refused_at_the_cap_is_reported_as_refused() {
    let seen = Seen::default();
    let hook = seen.clone();
    let config = SessionConfig::default().with_max_sessions_per_user(1, OnLimit::RefuseLogin);
    let sessions = Sessions::new(MemoryStore::new(), config)
        .expect("valid config")
        .on_audit(move |event| hook.0.lock().expect("not poisoned").push(event.clone()));
    let first = sessions.session([], Default::default());
    first.login("23").await.expect("login");
    let second = sessions.session([], Default::default());
    second.login("23").await.expect("login: the cap is not reached yet");
    first.commit().await.expect("the first commit");
    assert!(second.commit().await.is_err(), "a login past the cap committed");
    let refused = (AuditKind::LoginRefused, "23".to_owned(), 0);
    assert_eq!(seen.kinds(), [(AuditKind::Login, "23".to_owned(), 0), refused.clone()], "at commit");
    let third = sessions.session([], Default::default());
    assert!(third.login("23").await.is_err(), "a login at the cap was not refused");
    assert_eq!(seen.kinds(), [refused], "at login");
}

/// A login that expires is reported by the cleanup that removes it, once,
/// with its handle, device and expiry time; an anonymous session that
/// expires is not; the log holds neither id nor key. On SQLite, whose
/// store names the rows it deletes.
#[tokio::test]
async fn an_expired_login_is_reported_once_by_the_cleanup_that_removes_it() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = multisession::store::SqlStore::open(dir.path().join("sessions.db")).await.expect("SQLite opens");
    let seen = Seen::default();
    let hook = seen.clone();
    // Long enough that the login and the listing below never outlast it.
    let lifetime = multisession::Duration::seconds(3);
    let config = SessionConfig::default().with_lifetime(lifetime).with_touch_interval(lifetime / 4);
    let sessions = Sessions::new(store.clone(), config)
        .expect("valid config")
        .on_audit(move |event| hook.0.lock().expect("not poisoned").push(event.clone()));
    let app = Framework::Axum.app(sessions.clone());
    let mut laptop = Device::new(app.clone(), "laptop", "192.0.2.1:1000");
    let mut visitor = Device::new(app.clone(), "visitor", "192.0.2.2:1000");
    // The anonymous session first, so that it expires no later than the login.
    visitor.get("/write").await;
    laptop.get("/login/23").await;
    let listed = sessions.user_sessions("23").await.expect("listed");
    let (handle, expires_at) = (listed[0].handle.clone(), listed[0].expires_at);
    let key = store.user_sessions("23").await.expect("listed")[0].key.to_string();
    let ids: Vec<String> = [&laptop, &visitor].into_iter().filter_map(session_cookie).collect();
    assert_eq!(ids.len(), 2, "both devices hold a session");
    seen.take();

    multisession::testing::wait_past(expires_at).await;
    assert_eq!(sessions.delete_expired().await.expect("cleaned"), 2, "the login and the anonymous session");
    let events = seen.take();
    assert_eq!(events.len(), 1, "{events:?}");
    let expired = &events[0];
    assert_eq!((expired.kind, expired.user.as_str(), expired.ended), (AuditKind::Expired, "23", 1));
    assert_eq!(expired.handle.as_ref(), Some(&handle));
    assert_eq!(expired.device.user_agent.as_deref(), Some("laptop"));
    assert_eq!(expired.at, expires_at);
    assert_eq!(sessions.delete_expired().await.expect("cleaned"), 0);
    assert!(seen.take().is_empty(), "a second cleanup reported the expiry again");

    let text = logs.text();
    let line = format!("{AUDIT_TARGET}: session expired");
    assert!(text.contains(&line), "no `{line}` in the log:\n{text}");
    assert!(!text.contains(&key), "a store key is in the log");
    for id in &ids {
        assert!(!text.contains(id.as_str()), "a session id is in the log");
    }
}
