//! One user on several devices: listing, logging out others or all,
//! revoking one, and admin clears; on axum and on actix-web.

mod common;

use std::sync::Arc;

use common::{Device, Framework, session_cookie};
use multisession::store::{MemoryStore, SessionInfo, Store};
use multisession::testing::{CountingStore, wait_past};
use multisession::{Change, Record, SessionConfig, Sessions, StoreKey};

fn setup(fw: Framework) -> (Sessions, Device, Device) {
    setup_over(fw, MemoryStore::new())
}

/// A laptop and a phone on an app over `store`.
fn setup_over(fw: Framework, store: impl Store) -> (Sessions, Device, Device) {
    let sessions = Sessions::new(store, fw.config(SessionConfig::default())).expect("valid config");
    let app = fw.app(sessions.clone());
    let laptop = Device::new(app.clone(), "laptop", "192.0.2.1:1000");
    let phone = Device::new(app, "phone", "192.0.2.2:2000");
    (sessions, laptop, phone)
}

async fn both_logged_in(fw: Framework) -> (Sessions, Device, Device) {
    both_logged_in_over(fw, MemoryStore::new()).await
}

/// Both devices logged in as user 23, over `store`.
async fn both_logged_in_over(fw: Framework, store: impl Store) -> (Sessions, Device, Device) {
    let (sessions, mut laptop, mut phone) = setup_over(fw, store);
    laptop.get("/login/23").await;
    phone.get("/login/23").await;
    (sessions, laptop, phone)
}

// The tests that drive the engine with cookies directly run for cookie
// clients only; the rest also for clients that carry their id in a header.
common::every_client!(
    cookie_only: [
        logout_all_devices_survives_a_concurrent_request,
        a_touch_after_logout_all_does_not_resurrect_either,
        cycle_id_then_logout_other_devices_keeps_the_caller,
        logout_all_devices_ends_a_session_whose_id_changed_while_it_ran,
    ],
    all: [
        each_device_lists_both_and_marks_itself,
        logout_all_devices_from_one_makes_the_other_anonymous,
        logout_other_devices_ends_the_other_and_keeps_the_caller,
        revoking_a_device_by_handle_logs_only_that_device_out,
        a_user_cannot_revoke_another_users_session,
        clear_user_sessions_in_a_request_spares_the_callers_own,
        admin_revoke_and_listing_work_without_a_request,
    ],
);

async fn each_device_lists_both_and_marks_itself(fw: Framework) {
    let (_, mut laptop, mut phone) = both_logged_in(fw).await;
    for (device, me) in [(&mut laptop, "laptop"), (&mut phone, "phone")] {
        let listing = device.get("/devices").await.body;
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 2, "{listing}");
        let current: Vec<&&str> = lines.iter().filter(|l| l.contains("current=true")).collect();
        assert_eq!(current.len(), 1);
        assert!(current[0].ends_with(&format!("ua={me}")), "{listing}");
        assert!(listing.contains("ip=192.0.2.1") && listing.contains("ip=192.0.2.2"));
    }
}

async fn logout_all_devices_from_one_makes_the_other_anonymous(fw: Framework) {
    let (sessions, mut laptop, mut phone) = both_logged_in(fw).await;
    assert_eq!(laptop.get("/logout_all").await.body, "ended 2");
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
    assert_eq!(laptop.get("/read").await.body, "user=anonymous n=0");
    assert!(session_cookie(&laptop).is_none(), "the caller's cookie was not expired");
    assert!(sessions.user_sessions("23").await.expect("listed").is_empty());
}

async fn logout_other_devices_ends_the_other_and_keeps_the_caller(fw: Framework) {
    let (_, mut laptop, mut phone) = both_logged_in(fw).await;
    assert_eq!(laptop.get("/logout_others").await.body, "ended 1");
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
    assert_eq!(laptop.get("/read").await.body, "user=23 n=0");
    assert_eq!(laptop.get("/devices").await.body.lines().count(), 1);
}

async fn revoking_a_device_by_handle_logs_only_that_device_out(fw: Framework) {
    let (_, mut laptop, mut phone) = both_logged_in(fw).await;
    let listing = laptop.get("/devices").await.body;
    let handle = listing.lines().find(|l| l.contains("current=false")).and_then(|l| l.split(' ').next());
    let reply = laptop.get(&format!("/revoke/{}", handle.expect("the phone is listed"))).await;
    assert_eq!(reply.body, "revoked=true");
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
    assert_eq!(laptop.get("/read").await.body, "user=23 n=0");
}

async fn a_user_cannot_revoke_another_users_session(fw: Framework) {
    let (sessions, mut laptop, mut phone) = setup(fw);
    laptop.get("/login/23").await;
    phone.get("/login/42").await;
    let victim = sessions.user_sessions("42").await.expect("listed")[0].handle.to_string();
    assert_eq!(laptop.get(&format!("/revoke/{victim}")).await.body, "revoked=false");
    assert_eq!(phone.get("/read").await.body, "user=42 n=0");
}

async fn clear_user_sessions_in_a_request_spares_the_callers_own(fw: Framework) {
    let (sessions, mut laptop, mut phone) = both_logged_in(fw).await;
    assert_eq!(laptop.get("/clear_user/23").await.body, "ended 1");
    assert_eq!(laptop.get("/read").await.body, "user=23 n=0");
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
    assert_eq!(sessions.clear_user_sessions("23").await.expect("cleared"), 1, "the admin handle clears all");
    assert_eq!(laptop.get("/read").await.body, "user=anonymous n=0");
}

async fn admin_revoke_and_listing_work_without_a_request(fw: Framework) {
    let (sessions, _laptop, mut phone) = both_logged_in(fw).await;
    let listed = sessions.user_sessions("23").await.expect("listed");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|s| !s.current));
    let phone_handle = listed.iter().find(|s| s.device.user_agent.as_deref() == Some("phone")).expect("phone");
    assert!(sessions.revoke(&phone_handle.handle).await.expect("revoked"));
    assert!(!sessions.revoke(&phone_handle.handle).await.expect("revoked twice"));
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
}

/// A request that loaded its session before another device logged everyone
/// out must not bring the session back when it commits.
async fn logout_all_devices_survives_a_concurrent_request(fw: Framework) {
    let store = Arc::new(MemoryStore::new());
    let (sessions, mut laptop, mut phone) = both_logged_in_over(fw, store.clone()).await;

    // The phone's request is in flight: it has read its session...
    let phone_header = phone.cookie_header();
    let in_flight = sessions.session([phone_header.as_bytes()], Default::default());
    assert_eq!(in_flight.user().await.expect("loaded").as_deref(), Some("23"));
    // ...when the laptop logs out everywhere...
    assert_eq!(laptop.get("/logout_all").await.body, "ended 2");
    // ...and then it writes and commits.
    in_flight.insert("cart", vec![1, 2]).await.expect("insert");
    let commit = in_flight.commit().await.expect("commit");
    // No cookie at all: a dead one is cleared by the next request that
    // meets it, and a request beside this one may have set a newer one.
    assert!(commit.set_cookies.is_empty(), "a session ended elsewhere was given a cookie: {:?}", commit.set_cookies);
    assert!(store.user_sessions("23").await.expect("listed").is_empty(), "a logged-out session came back");
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
}

async fn a_touch_after_logout_all_does_not_resurrect_either(fw: Framework) {
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let config = SessionConfig::default().with_touch_interval(time::Duration::ZERO);
    let sessions = Sessions::new(store.clone(), config).expect("valid config");
    let mut phone = Device::new(fw.app(sessions.clone()), "phone", "192.0.2.2:1");
    phone.get("/login/23").await;
    let header = phone.cookie_header();
    let in_flight = sessions.session([header.as_bytes()], Default::default());
    in_flight.user().await.expect("loaded");
    let loaded = store.user_sessions("23").await.expect("listed")[0].last_active_at;
    sessions.clear_user_sessions("23").await.expect("cleared");
    // A touch moves the expiry by the milliseconds since the load.
    wait_past(loaded).await;
    let touches = store.counts().touches;
    in_flight.commit().await.expect("commit");
    assert_eq!(store.counts().touches, touches + 1, "the commit did not touch: nothing was tested");
    assert!(store.user_sessions("23").await.expect("listed").is_empty());
}

/// A password change: the id changes and every other device is logged out,
/// in one request; the caller stays logged in.
async fn cycle_id_then_logout_other_devices_keeps_the_caller(fw: Framework) {
    let (sessions, mut laptop, mut phone) = both_logged_in(fw).await;
    let header = laptop.cookie_header();
    let session = sessions.session([header.as_bytes()], Default::default());
    session.cycle_id().await.expect("cycle_id");
    assert_eq!(session.logout_other_devices().await.expect("logout_other_devices"), 1);
    assert!(session.devices().await.expect("listed").iter().all(|d| d.current), "the caller is not marked current");
    let commit = session.commit().await.expect("commit");
    let cookie = commit.set_cookies.first().and_then(|c| c.split(';').next()).expect("a new id");
    laptop.cookies.insert("session".into(), cookie.trim_start_matches("session=").to_owned());
    assert_eq!(laptop.get("/read").await.body, "user=23 n=0", "the caller was logged out");
    assert_eq!(phone.get("/read").await.body, "user=anonymous n=0");
}

/// A store that lists a user's sessions, then deletes them one by one, as
/// stores without a single "delete this user's sessions" step do; between
/// the two, the request waiting in `beside` commits.
struct ListsThenDeletes {
    inner: MemoryStore,
    beside: tokio::sync::Mutex<Option<multisession::Session>>,
}

#[async_trait::async_trait]
impl Store for ListsThenDeletes {
    async fn load(&self, key: &StoreKey) -> multisession::Result<Option<Record>> {
        self.inner.load(key).await
    }
    async fn create(&self, key: &StoreKey, record: &Record) -> multisession::Result<()> {
        self.inner.create(key, record).await
    }
    async fn apply(&self, key: &StoreKey, change: &Change) -> multisession::Result<()> {
        self.inner.apply(key, change).await
    }
    async fn delete(&self, key: &StoreKey) -> multisession::Result<bool> {
        self.inner.delete(key).await
    }
    async fn user_sessions(&self, user: &str) -> multisession::Result<Vec<SessionInfo>> {
        self.inner.user_sessions(user).await
    }
    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> multisession::Result<u64> {
        let listed = self.inner.user_sessions(user).await?;
        if let Some(request) = self.beside.lock().await.take() {
            request.commit().await?;
        }
        let mut deleted = 0;
        for info in listed.iter().filter(|info| Some(&info.key) != keep) {
            deleted += u64::from(self.inner.delete(&info.key).await?);
        }
        Ok(deleted)
    }
    async fn delete_expired_batch(&self) -> multisession::Result<multisession::store::ExpiredBatch> {
        self.inner.delete_expired_batch().await
    }
}

/// An id change that lands between a logout-all's listing and its deletes
/// replaces a session the logout then no longer finds; the logout lists
/// again and ends the new one too.
async fn logout_all_devices_ends_a_session_whose_id_changed_while_it_ran(fw: Framework) {
    let store = Arc::new(ListsThenDeletes { inner: MemoryStore::new(), beside: Default::default() });
    let (sessions, mut laptop, phone) = both_logged_in_over(fw, store.clone()).await;
    let header = phone.cookie_header();
    let rotating = sessions.session([header.as_bytes()], Default::default());
    rotating.cycle_id().await.expect("cycle_id");
    *store.beside.lock().await = Some(rotating);
    laptop.get("/logout_all").await;
    assert!(store.beside.lock().await.is_none(), "the id change did not run beside the logout");
    assert_eq!(store.user_sessions("23").await.expect("listed"), Vec::new(), "a session outlived logout-all");
}
