//! What admin code does through `Sessions`, outside any request.

use multisession::store::MemoryStore;
use multisession::{Device, ErrorKind, SessionConfig, Sessions};

/// Logs `user` in on a new device; the session is committed.
async fn log_in(sessions: &Sessions, user: &str, agent: &str) {
    let session = sessions.session([], Device::new(Some(agent.to_owned()), None));
    session.login(user).await.expect("logged in");
    session.commit().await.expect("committed");
}

#[tokio::test]
async fn clear_user_sessions_except_keeps_exactly_the_named_session() {
    let sessions = Sessions::new(MemoryStore::new(), SessionConfig::default()).expect("valid config");
    for agent in ["laptop", "phone", "tablet"] {
        log_in(&sessions, "ada", agent).await;
    }
    log_in(&sessions, "bob", "bob's phone").await;
    let listed = sessions.user_sessions("ada").await.expect("listed");
    let phone = listed.iter().find(|d| d.device.user_agent.as_deref() == Some("phone")).expect("the phone");
    let bobs = sessions.user_sessions("bob").await.expect("listed").remove(0).handle;

    let refused = sessions.clear_user_sessions_except("ada", &bobs).await.expect_err("another user's handle");
    assert_eq!(refused.kind(), ErrorKind::Gone);
    assert_eq!(sessions.user_sessions("ada").await.expect("listed").len(), 3, "a refused call ended sessions");

    assert_eq!(sessions.clear_user_sessions_except("ada", &phone.handle).await.expect("cleared"), 2);
    let left = sessions.user_sessions("ada").await.expect("listed");
    assert_eq!(left.iter().map(|d| &d.handle).collect::<Vec<_>>(), [&phone.handle]);
    assert_eq!(sessions.user_sessions("bob").await.expect("listed").len(), 1, "another user was logged out");
}
