//! `store::GcpAuth` (feature `gcp-auth`) against a local fake of Google's
//! OAuth token endpoint: a service-account key file whose `token_uri` points
//! at the fake, given directly and through Application Default Credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`). The fake also answers the Firestore
//! requests, to see the token arrive on them. What this cannot test here:
//! tokens from a real Google account, and ADC's metadata-server path, which
//! `gcp_auth` asks at the fixed address `metadata.google.internal`.

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use multisession::store::{FirestoreStore, GcpAuth, Store, TokenSource};
use multisession::{ErrorKind, SessionId};

const TOKEN: &str = "ya29.fake-access-token";

/// What the fake saw: token requests' form bodies, and the `Authorization`
/// header of every other request.
#[derive(Clone, Default)]
struct Seen {
    token_forms: Arc<Mutex<Vec<String>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
    refuse: Arc<Mutex<bool>>,
}

async fn token(State(seen): State<Seen>, body: Bytes) -> (StatusCode, String) {
    seen.token_forms.lock().expect("not poisoned").push(String::from_utf8_lossy(&body).into_owned());
    if *seen.refuse.lock().expect("not poisoned") {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#.to_owned());
    }
    (StatusCode::OK, format!(r#"{{"access_token":"{TOKEN}","expires_in":3600,"token_type":"Bearer"}}"#))
}

async fn firestore(State(seen): State<Seen>, headers: HeaderMap, _uri: Uri) -> (StatusCode, &'static str) {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    seen.authorizations.lock().expect("not poisoned").push(authorization);
    (StatusCode::NOT_FOUND, r#"{"error":{"code":404,"status":"NOT_FOUND"}}"#)
}

/// A service-account key file for a fresh RSA key, its `token_uri` at
/// `base`; Google's own files have the same fields.
fn key_file(dir: &std::path::Path, base: &str) -> std::path::PathBuf {
    let pem = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("openssl runs (Debian's openssl package)");
    assert!(pem.status.success(), "openssl failed: {}", String::from_utf8_lossy(&pem.stderr));
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "multisession-test",
        "private_key_id": "test-key-1",
        "private_key": String::from_utf8(pem.stdout).expect("PEM is text"),
        "client_email": "sessions@multisession-test.iam.gserviceaccount.com",
        "client_id": "1",
        "auth_uri": format!("{base}/auth"),
        "token_uri": format!("{base}/token"),
    });
    let path = dir.join("key.json");
    std::fs::write(&path, key.to_string()).expect("the key file is written");
    path
}

/// The claims of the JWT a token request carried.
fn claims(form: &str) -> serde_json::Value {
    let assertion = form.split('&').find_map(|pair| pair.strip_prefix("assertion=")).expect("a JWT bearer assertion");
    let assertion = percent_encoding::percent_decode_str(assertion).decode_utf8().expect("form-encoded UTF-8");
    let payload = assertion.split('.').nth(1).expect("a JWT has three parts").trim_end_matches('=');
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

#[tokio::test]
async fn tokens_from_application_default_credentials_reach_every_firestore_request() {
    let seen = Seen::default();
    let app = Router::new().route("/token", post(token)).fallback(firestore).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = key_file(dir.path(), &base);

    // The key file given directly: every request carries the token, fetched
    // once and cached.
    let store = FirestoreStore::connect(&base, "multisession-test", "sessions")
        .expect("a store")
        .with_token_source(GcpAuth::from_credentials_file(&path).expect("the key file reads"));
    let key = SessionId::generate().expect("rng").store_key();
    assert_eq!(store.load(&key).await.expect("a 404 is no session"), None);
    assert_eq!(store.load(&key).await.expect("a 404 is no session"), None);
    let authorizations = seen.authorizations.lock().expect("not poisoned").clone();
    assert_eq!(authorizations, [format!("Bearer {TOKEN}"), format!("Bearer {TOKEN}")]);
    let forms = seen.token_forms.lock().expect("not poisoned").clone();
    assert_eq!(forms.len(), 1, "the token was not cached");
    assert!(forms[0].contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"), "{}", forms[0]);
    let claims = claims(&forms[0]);
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/datastore", "{claims}");
    assert_eq!(claims["aud"], format!("{base}/token"));
    assert_eq!(claims["iss"], "sessions@multisession-test.iam.gserviceaccount.com");

    // Through Application Default Credentials, in a child process of this
    // test binary whose environment names the key file.
    // Awaited, not waited for: the fake serves on this test's runtime.
    let child = tokio::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--ignored", "--exact", "adc_child", "--nocapture"])
        .env("GOOGLE_APPLICATION_CREDENTIALS", &path)
        .output()
        .await
        .expect("the child runs");
    let output = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && output.contains("1 passed"),
        "the ADC child failed:\n{output}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(seen.token_forms.lock().expect("not poisoned").len(), 2, "ADC did not ask the key file's endpoint");

    // A refusing endpoint: `Unavailable`, and no token or key in the error.
    *seen.refuse.lock().expect("not poisoned") = true;
    let fresh = GcpAuth::from_credentials_file(&path).expect("the key file reads");
    let err = fresh.token().await.expect_err("a refused token request");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = format!("{err} {err:?}");
    assert!(!text.contains("PRIVATE KEY") && !text.contains(TOKEN), "{text}");

    // A missing or broken key file is a configuration error naming it.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{}").expect("written");
    for bad in [dir.path().join("missing.json"), broken] {
        let err = GcpAuth::from_credentials_file(&bad).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("gcp-auth"), "{err}");
    }
}

/// Run by the test above, in a child process with
/// `GOOGLE_APPLICATION_CREDENTIALS` set: ADC finds the key file and gets a
/// token from its endpoint. Fails when run alone.
#[tokio::test]
#[ignore = "run by tokens_from_application_default_credentials_reach_every_firestore_request"]
async fn adc_child() {
    assert!(
        std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some(),
        "run by tokens_from_application_default_credentials_reach_every_firestore_request"
    );
    let adc = GcpAuth::from_adc().await.expect("ADC finds the key file");
    assert_eq!(adc.token().await.expect("a token"), TOKEN);
}
