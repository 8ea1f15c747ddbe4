//! The outage test both server databases run.
#![allow(dead_code, unreachable_pub)]

use super::common::{Device, app};
use super::own_sql::Server;
use multisession::store::SqlStore;
use multisession::{SessionConfig, Sessions};

pub async fn killing_the_server_gives_503_and_recovery(server: &mut dyn Server) {
    let store = SqlStore::connect(&server.url()).await.expect("connects");
    let mut device =
        Device::new(app(Sessions::new(store, SessionConfig::default()).expect("valid")), "ua", "127.0.0.1:1");
    device.get("/login/23").await;
    assert_eq!(device.get("/write").await.body, "n=1");

    server.kill();
    for path in ["/read", "/write", "/login/24", "/devices"] {
        let started = std::time::Instant::now();
        let reply = device.get(path).await;
        assert_eq!(reply.status, 503, "{path} while the database is down");
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{path} hung for {:?}", started.elapsed());
    }
    assert_eq!(device.get("/none").await.status, 200);

    server.start();
    let mut body = String::new();
    for _ in 0..40 {
        let reply = device.get("/read").await;
        if reply.status == 200 {
            body = reply.body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(body, "user=23 n=1", "the store did not recover, or lost the session, after the restart");
}
