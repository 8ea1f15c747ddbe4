//! A small HTTP client for driving a router in tests: a cookie jar, a
//! User-Agent and a client address per "device".
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// One browser: its own cookies, User-Agent and address.
pub struct Device {
    app: Router,
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
}

impl Device {
    pub fn new(app: Router, user_agent: &str, addr: &str) -> Self {
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
        let request = Request::get(path).body(Body::empty()).expect("a request");
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, form: &str) -> Reply {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
            .expect("a request");
        self.send(request).await
    }

    pub async fn send(&mut self, mut request: Request<Body>) -> Reply {
        let headers = request.headers_mut();
        headers.insert(header::USER_AGENT, self.user_agent.parse().expect("a header"));
        if !self.cookies.is_empty() {
            headers.insert(header::COOKIE, self.cookie_header().parse().expect("a header"));
        }
        request.extensions_mut().insert(ConnectInfo(self.addr));
        let reply = send_raw(&self.app, request).await;
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

/// Sends `request` as is, with no cookie jar.
pub async fn send_raw(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.expect("a body").to_bytes();
    Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// A router exercising the whole session API, one route per operation; each
/// answers in plain text.
pub fn app(sessions: multisession::Sessions) -> Router {
    use axum::extract::Path;
    use axum::routing::get;
    use multisession::{Result, Session};

    async fn read(session: Session) -> Result<String> {
        let user = session.user().await?.unwrap_or_else(|| "anonymous".into());
        let n = session.get::<i64>("n").await?.unwrap_or(0);
        Ok(format!("user={user} n={n}"))
    }
    async fn write(session: Session) -> Result<String> {
        let n = session.get::<i64>("n").await?.unwrap_or(0) + 1;
        session.insert("n", n).await?;
        Ok(format!("n={n}"))
    }
    async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str> {
        session.login(&user).await?;
        Ok("logged in")
    }
    async fn logout(session: Session) -> Result<&'static str> {
        session.logout().await?;
        Ok("logged out")
    }
    async fn logout_all(session: Session) -> Result<String> {
        Ok(format!("ended {}", session.logout_all_devices().await?))
    }
    async fn logout_others(session: Session) -> Result<String> {
        Ok(format!("ended {}", session.logout_other_devices().await?))
    }
    async fn devices(session: Session) -> Result<String> {
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
    async fn revoke(session: Session, Path(handle): Path<String>) -> Result<String> {
        let handle = handle.parse()?;
        Ok(format!("revoked={}", session.revoke(&handle).await?))
    }
    async fn clear_user(session: Session, Path(user): Path<String>) -> Result<String> {
        Ok(format!("ended {}", session.clear_user_sessions(&user).await?))
    }
    async fn permanent(session: Session) -> Result<&'static str> {
        session.set_permanent(true).await?;
        Ok("permanent")
    }
    async fn cycle(session: Session) -> Result<&'static str> {
        session.cycle_id().await?;
        Ok("cycled")
    }
    async fn set(session: Session, Path((key, value)): Path<(String, String)>) -> Result<&'static str> {
        session.insert(&key, value).await?;
        Ok("set")
    }
    async fn get_key(session: Session, Path(key): Path<String>) -> Result<String> {
        Ok(session.get::<serde_json::Value>(&key).await?.map(|v| v.to_string()).unwrap_or_else(|| "none".into()))
    }
    async fn none() -> &'static str {
        "no session used"
    }

    Router::new()
        .route("/none", get(none))
        .route("/read", get(read))
        .route("/write", get(write))
        .route("/login/{user}", get(login))
        .route("/logout", get(logout))
        .route("/logout_all", get(logout_all))
        .route("/logout_others", get(logout_others))
        .route("/devices", get(devices))
        .route("/revoke/{handle}", get(revoke))
        .route("/clear_user/{user}", get(clear_user))
        .route("/permanent", get(permanent))
        .route("/cycle", get(cycle))
        .route("/set/{key}/{value}", get(set))
        .route("/get/{key}", get(get_key))
        .layer(multisession::SessionLayer::new(sessions))
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
