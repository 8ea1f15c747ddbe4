//! `rediss://`: the Redis store over TLS, against a Redis server of the
//! test's own with a certificate from a throwaway authority.

mod common;
#[path = "support/outage.rs"]
mod outage;

use std::path::Path;
use std::process::{Command, Stdio};

use multisession::store::{RedisStore, Store};
use multisession::{Device, SessionConfig, Sessions};
use outage::OwnServer;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl").args(args).current_dir(dir).stderr(Stdio::null()).status();
    assert!(status.is_ok_and(|s| s.success()), "openssl {args:?} failed");
}

struct TlsRedis {
    server: OwnServer,
    ca: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn tls_redis() -> TlsRedis {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=multisession test CA",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    let certs = d.to_owned();
    let server = OwnServer::with_probe(
        move |port, _| {
            let mut redis = Command::new("redis-server");
            redis.args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"]);
            redis.args(["--save", "", "--appendonly", "no"]);
            redis.args(["--tls-cert-file", "redis.pem", "--tls-key-file", "redis.key", "--tls-ca-cert-file", "ca.pem"]);
            redis.args(["--tls-auth-clients", "no"]).current_dir(&certs);
            redis
        },
        {
            // A PING over TLS, trusting only the CA made above: no server but
            // ours holds a certificate it signed.
            let ca = d.join("ca.pem");
            move |port| {
                Command::new("timeout")
                    .args(["5", "redis-cli", "--tls", "--cacert"])
                    .arg(&ca)
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
                    .output()
                    .is_ok_and(|out| out.stdout.starts_with(b"PONG"))
            }
        },
    );
    let ca = std::fs::read(d.join("ca.pem")).expect("the CA certificate");
    TlsRedis { server, ca, _dir: dir }
}

#[tokio::test]
async fn sessions_round_trip_over_rediss() {
    let server = tls_redis();
    let url = format!("rediss://127.0.0.1:{}", server.server.port);
    let store = RedisStore::connect_tls(&url, &server.ca).await.expect("a TLS connection with the private CA");
    let sessions = Sessions::new(store.clone(), SessionConfig::default()).expect("valid config");
    let session = sessions.session([], Device::default());
    session.login("23").await.expect("login");
    session.insert("over", "tls").await.expect("insert");
    session.commit().await.expect("commit");
    let listed = store.user_sessions("23").await.expect("listed");
    assert_eq!(listed.len(), 1);
    let record = store.load(&listed[0].key).await.expect("loads").expect("exists");
    assert_eq!(record.data["over"], "tls");
}

#[tokio::test]
async fn a_server_the_client_does_not_trust_is_unavailable_not_a_panic() {
    let server = tls_redis();
    let url = format!("rediss://127.0.0.1:{}", server.server.port);
    let err = RedisStore::connect(&url).await.expect_err("trusted a private CA from the system roots");
    assert!(err.is_unavailable(), "{err}");
}
