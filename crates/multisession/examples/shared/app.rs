//! The app both multi-part examples serve, and the tour they run: one
//! session split into a `csrf` cookie, a server-side `session` and a `data`
//! cookie.

use axum::extract::Form;
use axum::routing::{get, post};
use axum::{Router, body::Body};
use http_body_util::BodyExt;
use multisession::{Result, Session, SessionLayer, Sessions};
use serde::Deserialize;
use tower::ServiceExt;

/// What every form posts: the session's CSRF token, and a value.
#[derive(Deserialize)]
pub(crate) struct Params {
    csrf_token: String,
    #[serde(default)]
    value: String,
}

/// `/` shows the session and `/csrf` its CSRF token; each POST changes one
/// part, after checking the token its form carries.
pub(crate) fn app(sessions: Sessions) -> Router {
    async fn show(session: Session) -> Result<String> {
        let user = session.user().await?.unwrap_or_else(|| "nobody".to_owned());
        let has_token = session.get::<String>("csrf_token").await?.is_some();
        let theme = session.get::<String>("theme").await?.unwrap_or_else(|| "default".to_owned());
        Ok(format!("user: {user}, csrf token: {}, theme: {theme}\n", if has_token { "set" } else { "none" }))
    }
    async fn csrf(session: Session) -> Result<String> {
        session.csrf_token().await
    }
    async fn login(session: Session, Form(p): Form<Params>) -> Result<&'static str> {
        session.verify_csrf_token(&p.csrf_token).await?;
        session.login(&p.value).await?;
        Ok("logged in\n")
    }
    async fn theme(session: Session, Form(p): Form<Params>) -> Result<&'static str> {
        session.verify_csrf_token(&p.csrf_token).await?;
        session.insert("theme", p.value).await?;
        Ok("theme set\n")
    }
    async fn logout(session: Session, Form(p): Form<Params>) -> Result<&'static str> {
        session.verify_csrf_token(&p.csrf_token).await?;
        session.logout().await?;
        Ok("logged out\n")
    }
    Router::new()
        .route("/", get(show))
        .route("/csrf", get(csrf))
        .route("/login", post(login))
        .route("/theme", post(theme))
        .route("/logout", post(logout))
        .layer(SessionLayer::new(sessions))
}

/// Walks one browser through the app in-process and prints which cookies
/// each request set: each change lands in its own part. Every POST carries
/// the token the last `GET /csrf` answered, as a page's form would.
pub(crate) async fn tour(sessions: Sessions) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let app = app(sessions);
    let mut jar: Vec<(String, String)> = Vec::new();
    let mut token = String::new();
    let steps = [
        ("GET", "/csrf", ""),
        ("POST", "/login", "23"),
        ("GET", "/csrf", ""),
        ("POST", "/theme", "dark"),
        ("GET", "/", ""),
        ("POST", "/logout", ""),
        ("GET", "/", ""),
    ];
    for (method, path, value) in steps {
        let cookies: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let form = format!("csrf_token={token}&value={value}");
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("cookie", cookies.join("; "))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(if method == "POST" { Body::from(form) } else { Body::empty() })?;
        let response = app.clone().oneshot(request).await?;
        let status = response.status();
        let mut set = Vec::new();
        for header in response.headers().get_all("set-cookie") {
            let cookie = cookie::Cookie::parse_encoded(header.to_str()?.to_owned())?;
            let (name, value) = (cookie.name().to_owned(), cookie.value().to_owned());
            jar.retain(|(k, _)| *k != name);
            if cookie.max_age() == Some(time::Duration::ZERO) {
                set.push(format!("{name} (expired)"));
            } else {
                set.push(format!("{name} ({} bytes)", value.len()));
                jar.push((name, value));
            }
        }
        let body = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
        let set = if set.is_empty() { "no cookie".to_owned() } else { set.join(", ") };
        let shown = if path == "/csrf" { "a CSRF token".to_owned() } else { body.trim_end().to_owned() };
        println!("{method:<4} {path:<8} {value:<5} {status}  sets {set:<40} {shown}");
        if !status.is_success() {
            return Err(format!("{method} {path} answered {status}").into());
        }
        if path == "/csrf" {
            token = body;
        }
    }
    Ok(())
}

/// Serves the app at `MULTISESSION_EXAMPLE_ADDR` (default 127.0.0.1:3001).
pub(crate) async fn serve(sessions: Sessions) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("MULTISESSION_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("cannot bind {addr}: {e}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let service = app(sessions).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service).await?;
    Ok(())
}
