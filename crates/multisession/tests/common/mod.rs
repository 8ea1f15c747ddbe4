//! A small HTTP client for driving an app in tests (a cookie jar, a
//! User-Agent and a client address per "device"), and the one route set
//! every request-level test serves, on axum or on actix-web: the same test
//! source runs against both adapters (see [`both_frameworks!`]).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;
use tracing::instrument::WithSubscriber as _;

/// The web framework a request-level test runs on, and how its client
/// carries the session id: in a cookie, or (for API and mobile clients) in
/// a header the session part is configured for ([`Framework::config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framework {
    Axum,
    Actix,
    /// axum, the id in `X-Auth-Token`; the part takes cookies too, so the
    /// client sends the header empty until it has an id.
    AxumHeader,
    /// actix-web, the id in `Authorization: Bearer`; the part takes no cookie.
    ActixBearer,
}

/// How a test client carries its session id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Cookie,
    Header,
    Bearer,
}

impl Framework {
    fn carrier(self) -> Carrier {
        match self {
            Framework::Axum | Framework::Actix => Carrier::Cookie,
            Framework::AxumHeader => Carrier::Header,
            Framework::ActixBearer => Carrier::Bearer,
        }
    }

    /// `config` as this framework's client needs it: with the id header
    /// its client carries, if any.
    pub fn config(self, config: multisession::SessionConfig) -> multisession::SessionConfig {
        match self.carrier() {
            Carrier::Cookie => config,
            Carrier::Header => config.with_id_header(multisession::IdHeader::named("X-Auth-Token")),
            Carrier::Bearer => config.with_id_header(multisession::IdHeader::bearer().without_cookie()),
        }
    }

    /// The test route set ([`axum_routes`], [`actix_routes`]) behind this
    /// framework's session adapter, with its default options.
    pub fn app(self, sessions: multisession::Sessions) -> App {
        let other = sessions.clone();
        self.app_with(
            move || axum_routes().layer(multisession::SessionLayer::new(sessions)),
            move || actix_web::App::new().wrap(multisession::SessionMiddleware::new(other)).configure(actix_routes),
        )
    }

    /// The app one of `axum` and `actix` builds, whichever is this
    /// framework's (the other is dropped unused). The actix app is built
    /// and served on a thread of its own: actix services are not `Send`.
    pub fn app_with<T, B>(
        self,
        axum: impl FnOnce() -> Router,
        actix: impl FnOnce() -> actix_web::App<T> + Send + 'static,
    ) -> App
    where
        T: actix_web::dev::ServiceFactory<
                actix_web::dev::ServiceRequest,
                Config = (),
                Response = actix_web::dev::ServiceResponse<B>,
                Error = actix_web::Error,
                InitError = (),
            > + 'static,
        B: actix_web::body::MessageBody + 'static,
    {
        let served = match self {
            Framework::Axum | Framework::AxumHeader => Served::Axum(axum()),
            Framework::Actix | Framework::ActixBearer => Served::Actix(ActixApp::start(actix)),
        };
        App(served, self.carrier())
    }
}

/// The axum app of the test route set with the default session adapter:
/// for the store suites, which test a backend rather than a framework.
pub fn app(sessions: multisession::Sessions) -> App {
    Framework::Axum.app(sessions)
}

/// An app under test, served by either framework. Clones send to the same
/// app (and, on actix, the same thread).
#[derive(Clone)]
pub struct App(Served, Carrier);

#[derive(Clone)]
enum Served {
    Axum(Router),
    Actix(ActixApp),
}

impl App {
    /// The reply to `request`, as from a client at `peer` (no address when
    /// `None`), as the framework's server would give it.
    pub async fn send(&self, request: Request<Vec<u8>>, peer: Option<SocketAddr>) -> Reply {
        match &self.0 {
            Served::Axum(router) => {
                let mut request = request.map(Body::from);
                if let Some(peer) = peer {
                    request.extensions_mut().insert(ConnectInfo(peer));
                }
                let response = router.clone().oneshot(request).await.expect("the router is infallible");
                let status = response.status();
                let headers = response.headers().clone();
                let bytes = response.into_body().collect().await.expect("a body").to_bytes();
                Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
            }
            Served::Actix(app) => app.send(request, peer).await,
        }
    }
}

/// An actix-web app on a thread of its own, under its own `actix_rt`
/// system, taking requests over a channel; each runs as a task of its own,
/// so requests sent together are served together.
#[derive(Clone)]
struct ActixApp {
    jobs: mpsc::UnboundedSender<Job>,
}

/// One request for the actix thread, with the tracing subscriber of the
/// test that sent it (a test's `set_default` subscriber is thread-local).
struct Job {
    request: Request<Vec<u8>>,
    peer: Option<SocketAddr>,
    dispatch: tracing::Dispatch,
    reply: oneshot::Sender<Reply>,
}

impl ActixApp {
    fn start<T, B>(make: impl FnOnce() -> actix_web::App<T> + Send + 'static) -> Self
    where
        T: actix_web::dev::ServiceFactory<
                actix_web::dev::ServiceRequest,
                Config = (),
                Response = actix_web::dev::ServiceResponse<B>,
                Error = actix_web::Error,
                InitError = (),
            > + 'static,
        B: actix_web::body::MessageBody + 'static,
    {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("actix-app".to_owned())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let app = Rc::new(actix_web::test::init_service(make()).await);
                    // Until the last `App` handle is dropped.
                    while let Some(job) = queue.recv().await {
                        let app = Rc::clone(&app);
                        actix_web::rt::spawn(async move {
                            let reply = actix_call(&*app, job.request, job.peer).with_subscriber(job.dispatch).await;
                            // The test may have given up waiting: nobody to tell.
                            let _ = job.reply.send(reply);
                        });
                    }
                });
            })
            .expect("a thread for the actix app");
        Self { jobs }
    }

    async fn send(&self, request: Request<Vec<u8>>, peer: Option<SocketAddr>) -> Reply {
        let (reply, answer) = oneshot::channel();
        let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
        let job = Job { request, peer, dispatch, reply };
        if self.jobs.send(job).is_err() {
            panic!("the actix app stopped (a panic on its thread is printed above)");
        }
        answer.await.expect("the actix app answered (a panic on its thread is printed above)")
    }
}

/// `request` through actix's test service: the status, headers and body a
/// client would get, an error from the service answered as actix-web's
/// server answers it.
async fn actix_call<S, B>(app: &S, request: Request<Vec<u8>>, peer: Option<SocketAddr>) -> Reply
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: actix_web::body::MessageBody + 'static,
{
    use actix_web::http::header::{HeaderName as ActixName, HeaderValue as ActixValue};

    let (parts, body) = request.into_parts();
    let method = actix_web::http::Method::from_bytes(parts.method.as_str().as_bytes()).expect("a method");
    let mut test = actix_web::test::TestRequest::default().method(method).uri(&parts.uri.to_string());
    for (name, value) in &parts.headers {
        // The header's bytes as they are: actix accepts what `http` does.
        let name = ActixName::from_bytes(name.as_str().as_bytes()).expect("a header name");
        let value = ActixValue::from_bytes(value.as_bytes()).expect("a header value");
        test = test.append_header((name, value));
    }
    if let Some(peer) = peer {
        test = test.peer_addr(peer);
    }
    let response = match app.call(test.set_payload(body).to_request()).await {
        Ok(response) => response.into_parts().1.map_into_boxed_body(),
        Err(error) => actix_web::ResponseError::error_response(error.as_response_error()),
    };
    let status = StatusCode::from_u16(response.status().as_u16()).expect("a status");
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers() {
        let name = HeaderName::from_bytes(name.as_str().as_bytes()).expect("a header name");
        headers.append(name, HeaderValue::from_bytes(value.as_bytes()).expect("a header value"));
    }
    let bytes = actix_web::body::to_bytes(response.into_body()).await.expect("a body");
    Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// Writes each named `async fn(Framework)` test of the file out twice, as
/// `axum::NAME` and `actix::NAME`: one source, both adapters.
#[allow(unused_macros)]
macro_rules! both_frameworks {
    ($($test:ident),+ $(,)?) => {
        mod axum {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::common::Framework::Axum).await;
                }
            )+
        }
        mod actix {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::common::Framework::Actix).await;
                }
            )+
        }
    };
}

/// Writes each named `async fn(Framework)` test of the file out for cookie
/// clients on both frameworks ([`both_frameworks!`]), and those of `all`
/// also for API clients: as `header::NAME` (axum, the id in
/// `X-Auth-Token`) and `bearer::NAME` (actix-web, `Authorization: Bearer`,
/// no cookie). `cookie_only` lists the tests about cookies themselves.
#[allow(unused_macros)]
macro_rules! every_client {
    (cookie_only: [$($cookie:ident),* $(,)?], all: [$($test:ident),+ $(,)?] $(,)?) => {
        $crate::common::both_frameworks!($($cookie,)* $($test),+);
        mod header {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::common::Framework::AxumHeader).await;
                }
            )+
        }
        mod bearer {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::common::Framework::ActixBearer).await;
                }
            )+
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_frameworks;
#[allow(unused_imports)]
pub(crate) use every_client;

/// One browser: its own cookies, User-Agent and address. A client that
/// carries its id in a header keeps no cookies: its id is kept in
/// `cookies` under the part's cookie name, `session`.
pub struct Device {
    app: App,
    pub cookies: BTreeMap<String, String>,
    user_agent: String,
    addr: SocketAddr,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect()
    }

    pub fn location(&self) -> Option<&str> {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
    }

    /// Whether the reply tells the client to drop its `session` id: the
    /// cookie expired, or an id header answered empty.
    pub fn ends_the_id(&self) -> bool {
        let cookie = self.set_cookies().iter().any(|c| c.starts_with("session=;") && c.contains("Max-Age=0"));
        let header =
            ["x-auth-token", "authorization"].iter().any(|name| self.headers.get(*name).is_some_and(|v| v.is_empty()));
        cookie || header
    }
}

impl Device {
    pub fn new(app: App, user_agent: &str, addr: &str) -> Self {
        Self {
            app,
            cookies: BTreeMap::new(),
            user_agent: user_agent.to_owned(),
            addr: addr.parse().expect("a socket address"),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let request = Request::get(path).body(Vec::new()).expect("a request");
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, form: &str) -> Reply {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.as_bytes().to_vec())
            .expect("a request");
        self.send(request).await
    }

    /// Sends `request` from this device: its User-Agent, its cookies and its
    /// address; the jar keeps what the reply sets.
    pub async fn send(&mut self, mut request: Request<Vec<u8>>) -> Reply {
        let headers = request.headers_mut();
        headers.insert(header::USER_AGENT, self.user_agent.parse().expect("a header"));
        let id = self.cookies.get("session").cloned();
        match self.app.1 {
            Carrier::Cookie if !self.cookies.is_empty() => {
                headers.insert(header::COOKIE, self.cookie_header().parse().expect("a header"));
            }
            Carrier::Cookie => {}
            // Sent empty until there is an id: the part then answers in it.
            Carrier::Header => {
                headers.insert("x-auth-token", id.unwrap_or_default().parse().expect("a header"));
            }
            Carrier::Bearer => {
                if let Some(id) = id {
                    headers.insert(header::AUTHORIZATION, format!("Bearer {id}").parse().expect("a header"));
                }
            }
        }
        let reply = self.app.send(request, Some(self.addr)).await;
        if self.app.1 != Carrier::Cookie {
            let name = if self.app.1 == Carrier::Header { "x-auth-token" } else { "authorization" };
            let answered: Vec<&str> = reply.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            assert!(answered.len() <= 1, "two ids answered in {name}");
            match answered.first().map(|v| v.strip_prefix("Bearer ").unwrap_or(v)) {
                Some("") => {
                    self.cookies.remove("session");
                }
                Some(id) => {
                    self.cookies.insert("session".to_owned(), id.to_owned());
                }
                None => {}
            }
            assert!(reply.set_cookies().is_empty(), "a header client was sent cookies: {:?}", reply.set_cookies());
            return reply;
        }
        for set in reply.set_cookies() {
            let cookie = cookie::Cookie::parse_encoded(set).expect("Set-Cookie parses");
            if cookie.max_age() == Some(time::Duration::ZERO) {
                self.cookies.remove(cookie.name());
            } else {
                self.cookies.insert(cookie.name().to_owned(), cookie.value().to_owned());
            }
        }
        reply
    }
}

/// Sends `request` as is: no cookie jar, no client address.
pub async fn send_raw(app: &App, request: Request<Vec<u8>>) -> Reply {
    app.send(request, None).await
}

/// The test route set on axum, without the session layer: one route per
/// session operation, each answering in plain text.
pub fn axum_routes() -> Router {
    use axum::extract::Path;
    use axum::routing::get;
    use multisession::Session;

    Router::new()
        .route("/none", get(none))
        .route("/read", get(read))
        .route("/write", get(write).post(write))
        .route("/login/{user}", get(|s: Session, Path(user): Path<String>| login(s, user)))
        .route("/logout", get(logout))
        .route("/logout_all", get(logout_all))
        .route("/logout_others", get(logout_others))
        .route("/devices", get(devices))
        .route("/revoke/{handle}", get(|s: Session, Path(handle): Path<String>| revoke(s, handle)))
        .route("/clear_user/{user}", get(|s: Session, Path(user): Path<String>| clear_user(s, user)))
        .route("/permanent", get(permanent))
        .route("/cycle", get(cycle))
        .route("/set/{key}/{value}", get(|s: Session, Path((k, v)): Path<(String, String)>| set(s, k, v)))
        .route("/get/{key}", get(|s: Session, Path(key): Path<String>| get_key(s, key)))
}

/// The same routes as [`axum_routes`] on actix-web, for `App::configure`.
pub fn actix_routes(config: &mut actix_web::web::ServiceConfig) {
    use actix_web::web::{Path, get, post, resource};
    use multisession::Session;

    // One resource per path, so that another method is 405 as on axum
    // (`ServiceConfig::route` would answer 404).
    config
        .service(resource("/none").route(get().to(none)))
        .service(resource("/read").route(get().to(read)))
        .service(resource("/write").route(get().to(write)).route(post().to(write)))
        .service(resource("/login/{user}").route(get().to(|s: Session, u: Path<String>| login(s, u.into_inner()))))
        .service(resource("/logout").route(get().to(logout)))
        .service(resource("/logout_all").route(get().to(logout_all)))
        .service(resource("/logout_others").route(get().to(logout_others)))
        .service(resource("/devices").route(get().to(devices)))
        .service(resource("/revoke/{handle}").route(get().to(|s: Session, h: Path<String>| revoke(s, h.into_inner()))))
        .service(
            resource("/clear_user/{user}").route(get().to(|s: Session, u: Path<String>| clear_user(s, u.into_inner()))),
        )
        .service(resource("/permanent").route(get().to(permanent)))
        .service(resource("/cycle").route(get().to(cycle)))
        .service(resource("/set/{key}/{value}").route(get().to(|s: Session, kv: Path<(String, String)>| {
            let (key, value) = kv.into_inner();
            set(s, key, value)
        })))
        .service(resource("/get/{key}").route(get().to(|s: Session, k: Path<String>| get_key(s, k.into_inner()))));
}

// The handlers both route sets share: a session and the path's parameters
// in, plain text out.

use multisession::{Result as SessionResult, Session};

async fn none() -> &'static str {
    "no session used"
}
async fn read(session: Session) -> SessionResult<String> {
    let user = session.user().await?.unwrap_or_else(|| "anonymous".into());
    let n = session.get::<i64>("n").await?.unwrap_or(0);
    Ok(format!("user={user} n={n}"))
}
async fn write(session: Session) -> SessionResult<String> {
    let n = session.get::<i64>("n").await?.unwrap_or(0) + 1;
    session.insert("n", n).await?;
    Ok(format!("n={n}"))
}
async fn login(session: Session, user: String) -> SessionResult<&'static str> {
    session.login(&user).await?;
    Ok("logged in")
}
async fn logout(session: Session) -> SessionResult<&'static str> {
    session.logout().await?;
    Ok("logged out")
}
async fn logout_all(session: Session) -> SessionResult<String> {
    Ok(format!("ended {}", session.logout_all_devices().await?))
}
async fn logout_others(session: Session) -> SessionResult<String> {
    Ok(format!("ended {}", session.logout_other_devices().await?))
}
async fn devices(session: Session) -> SessionResult<String> {
    let lines: Vec<String> = session
        .devices()
        .await?
        .into_iter()
        .map(|d| {
            let ip = d.device.ip.map(|ip| ip.to_string()).unwrap_or_default();
            let ua = d.device.user_agent.unwrap_or_default();
            format!("{} current={} ip={ip} ua={ua}", d.handle, d.current)
        })
        .collect();
    Ok(lines.join("\n"))
}
async fn revoke(session: Session, handle: String) -> SessionResult<String> {
    let handle = handle.parse()?;
    Ok(format!("revoked={}", session.revoke(&handle).await?))
}
async fn clear_user(session: Session, user: String) -> SessionResult<String> {
    Ok(format!("ended {}", session.clear_user_sessions(&user).await?))
}
async fn permanent(session: Session) -> SessionResult<&'static str> {
    session.set_permanent(true).await?;
    Ok("permanent")
}
async fn cycle(session: Session) -> SessionResult<&'static str> {
    session.cycle_id().await?;
    Ok("cycled")
}
async fn set(session: Session, key: String, value: String) -> SessionResult<&'static str> {
    session.insert(&key, value).await?;
    Ok("set")
}
async fn get_key(session: Session, key: String) -> SessionResult<String> {
    Ok(session.get::<serde_json::Value>(&key).await?.map(|v| v.to_string()).unwrap_or_else(|| "none".into()))
}

/// The session id cookie a device holds, if any.
pub fn session_cookie(device: &Device) -> Option<String> {
    device.cookies.get("session").cloned()
}

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }

    /// A subscriber that writes every event, at every level, here.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }
}

/// The log of this test process: every event of every test, from the first
/// call on (a process-wide subscriber, so events of tasks on any worker
/// thread are kept).
pub fn process_log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let _ = tracing::subscriber::set_global_default(log.subscriber());
        log
    })
}
