//! The actix-web middleware and extractor over the same engine as the axum
//! layer, driven through actix-web's test service: what a request costs,
//! bad cookies, login and logout everywhere, the origin check, and an
//! unavailable store.

#[path = "support/switchable.rs"]
mod switchable;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header;
use actix_web::{App, test, web};
use multisession::store::MemoryStore;
use multisession::testing::CountingStore;
use multisession::{Session, SessionConfig, SessionMiddleware, Sessions};
use switchable::Switchable;

async fn read(session: Session) -> multisession::Result<String> {
    let user = session.user().await?.unwrap_or_else(|| "anonymous".into());
    let n = session.get::<i64>("n").await?.unwrap_or(0);
    Ok(format!("user={user} n={n}"))
}

async fn write(session: Session) -> multisession::Result<String> {
    let n = session.get::<i64>("n").await?.unwrap_or(0) + 1;
    session.insert("n", n).await?;
    Ok(format!("n={n}"))
}

async fn login(session: Session, user: web::Path<String>) -> multisession::Result<&'static str> {
    session.login(&user).await?;
    Ok("logged in")
}

async fn logout_all(session: Session) -> multisession::Result<String> {
    Ok(format!("ended {}", session.logout_all_devices().await?))
}

async fn none() -> &'static str {
    "no session used"
}

/// The app every test serves, wrapped in `middleware`.
macro_rules! app {
    ($middleware:expr) => {
        test::init_service(
            App::new()
                .wrap($middleware)
                .route("/read", web::get().to(read))
                .route("/write", web::get().to(write))
                .route("/write", web::post().to(write))
                .route("/login/{user}", web::get().to(login))
                .route("/logout_all", web::get().to(logout_all))
                .route("/none", web::get().to(none)),
        )
        .await
    };
}

/// A browser's cookie jar: what `Set-Cookie` said last, sent back.
#[derive(Clone, Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn header(&self) -> String {
        self.0.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("; ")
    }

    fn keep<B>(&mut self, response: &ServiceResponse<B>) {
        for set in response.headers().get_all(header::SET_COOKIE) {
            let pair = set.to_str().expect("ASCII").split(';').next().expect("name=value");
            let (name, value) = pair.split_once('=').expect("name=value");
            if value.is_empty() {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), value.to_owned());
            }
        }
    }
}

/// Sends `request` with the jar's cookies; the status and body, the jar
/// keeping what the response set.
async fn send<S, B>(app: &S, jar: &mut Jar, request: test::TestRequest) -> (u16, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let request = if jar.0.is_empty() { request } else { request.insert_header((header::COOKIE, jar.header())) };
    let response = test::call_service(app, request.to_request()).await;
    jar.keep(&response);
    let status = response.status().as_u16();
    let body = test::read_body(response).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get<S, B>(app: &S, jar: &mut Jar, path: &str) -> (u16, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    send(app, jar, test::TestRequest::get().uri(path)).await
}

fn sessions(store: impl Into<multisession::store::Backend>) -> Sessions {
    Sessions::new(store, SessionConfig::default().with_secure(false)).expect("valid config")
}

#[actix_web::test]
async fn a_request_reads_the_store_once_when_it_reads_the_session_and_never_when_it_does_not() {
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let app = app!(SessionMiddleware::new(sessions(store.clone())));
    let mut jar = Jar::default();
    assert_eq!(get(&app, &mut jar, "/write").await, (200, "n=1".to_owned()));
    assert_eq!(store.counts().creates, 1);
    let before = store.counts();
    assert_eq!(get(&app, &mut jar, "/read").await, (200, "user=anonymous n=1".to_owned()));
    assert_eq!((store.counts().loads - before.loads, store.counts().writes() - before.writes()), (1, 0));
    let before = store.counts();
    assert_eq!(get(&app, &mut jar, "/none").await, (200, "no session used".to_owned()));
    assert_eq!(store.counts(), before, "a request that does not use the session touched the store");
    assert_eq!(get(&app, &mut jar, "/write").await, (200, "n=2".to_owned()));
    assert_eq!(store.counts().applies - before.applies, 1);
}

#[actix_web::test]
async fn a_tampered_or_garbage_cookie_is_no_session_not_an_error() {
    let app = app!(SessionMiddleware::new(sessions(MemoryStore::new())));
    let mut jar = Jar::default();
    get(&app, &mut jar, "/write").await;
    let real = jar.0.get("session").expect("a session cookie").clone();
    for bad in [format!("{real}x"), real[..real.len() / 2].to_owned(), "%%%".to_owned(), "a".repeat(5000)] {
        let mut forged = Jar::default();
        forged.0.insert("session".to_owned(), bad);
        assert_eq!(get(&app, &mut forged, "/read").await, (200, "user=anonymous n=0".to_owned()));
    }
    assert_eq!(get(&app, &mut jar, "/read").await, (200, "user=anonymous n=1".to_owned()));
}

#[actix_web::test]
async fn login_gives_a_new_id_and_logout_everywhere_ends_the_other_device() {
    let app = app!(SessionMiddleware::new(sessions(MemoryStore::new())));
    let (mut laptop, mut phone) = (Jar::default(), Jar::default());
    get(&app, &mut laptop, "/write").await;
    let anonymous = laptop.clone();
    assert_eq!(get(&app, &mut laptop, "/login/ada").await, (200, "logged in".to_owned()));
    assert_ne!(laptop.0.get("session"), anonymous.0.get("session"), "login kept the id");
    assert_eq!(get(&app, &mut anonymous.clone(), "/read").await, (200, "user=anonymous n=0".to_owned()));
    get(&app, &mut phone, "/login/ada").await;
    assert_eq!(get(&app, &mut phone, "/read").await.1, "user=ada n=0");
    assert_eq!(get(&app, &mut laptop, "/logout_all").await, (200, "ended 2".to_owned()));
    assert_eq!(get(&app, &mut phone, "/read").await.1, "user=anonymous n=0");
    assert_eq!(get(&app, &mut laptop, "/read").await.1, "user=anonymous n=0");
}

#[actix_web::test]
async fn a_cross_origin_post_is_refused_and_a_same_origin_one_passes() {
    let app = app!(SessionMiddleware::new(sessions(MemoryStore::new())));
    let mut jar = Jar::default();
    let post = |site: &'static str| {
        test::TestRequest::post()
            .uri("/write")
            .insert_header((header::HOST, "app.example"))
            .insert_header(("sec-fetch-site", site))
    };
    assert_eq!(send(&app, &mut jar, post("cross-site")).await.0, 403);
    assert_eq!(send(&app, &mut jar, post("same-origin")).await, (200, "n=1".to_owned()));
    let trusting = app!(SessionMiddleware::new(sessions(MemoryStore::new())).allow_cross_origin());
    assert_eq!(send(&trusting, &mut Jar::default(), post("cross-site")).await, (200, "n=1".to_owned()));
}

#[actix_web::test]
async fn an_unavailable_store_gives_503_without_the_session_id_and_requests_recover() {
    let store = Arc::new(Switchable::default());
    let app = app!(SessionMiddleware::new(sessions(store.clone())));
    let mut jar = Jar::default();
    get(&app, &mut jar, "/write").await;
    let id = jar.0.get("session").expect("a session cookie").clone();
    store.down.store(true, Ordering::SeqCst);
    let (status, body) = get(&app, &mut jar, "/read").await;
    assert_eq!(status, 503);
    assert!(!body.contains(&id), "{body}");
    assert_eq!(get(&app, &mut jar, "/none").await.0, 200, "a request that does not use the session failed");
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(get(&app, &mut jar, "/read").await, (200, "user=anonymous n=1".to_owned()));
}

#[actix_web::test]
async fn a_handler_without_the_middleware_gets_a_500() {
    let app = test::init_service(App::new().route("/read", web::get().to(read))).await;
    assert_eq!(get(&app, &mut Jar::default(), "/read").await.0, 500);
}
