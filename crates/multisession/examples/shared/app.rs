//! The app both multi-part examples serve, and the tour they run: one
//! session split into a `csrf` cookie, a server-side `session` and a `data`
//! cookie.

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::routing::get;
use http_body_util::BodyExt;
use multisession::{Result, Session, SessionLayer, Sessions};
use serde::Deserialize;
use tower::ServiceExt;

#[derive(Deserialize)]
pub(crate) struct Params {
    value: String,
}

/// `/` shows the session; the others each change one part.
pub(crate) fn app(sessions: Sessions) -> Router {
    async fn show(session: Session) -> Result<String> {
        let user = session.user().await?.unwrap_or_else(|| "nobody".to_owned());
        let csrf = session.get::<String>("csrf_token").await?.unwrap_or_default();
        let theme = session.get::<String>("theme").await?.unwrap_or_else(|| "default".to_owned());
        Ok(format!("user: {user}, csrf_token: {csrf:?}, theme: {theme}\n"))
    }
    async fn csrf(session: Session, Query(p): Query<Params>) -> Result<&'static str> {
        session.insert("csrf_token", p.value).await?;
        Ok("csrf token set\n")
    }
    async fn login(session: Session, Query(p): Query<Params>) -> Result<&'static str> {
        session.login(&p.value).await?;
        Ok("logged in\n")
    }
    async fn theme(session: Session, Query(p): Query<Params>) -> Result<&'static str> {
        session.insert("theme", p.value).await?;
        Ok("theme set\n")
    }
    async fn logout(session: Session) -> Result<&'static str> {
        session.logout().await?;
        Ok("logged out\n")
    }
    Router::new()
        .route("/", get(show))
        .route("/csrf", get(csrf))
        .route("/login", get(login))
        .route("/theme", get(theme))
        .route("/logout", get(logout))
        .layer(SessionLayer::new(sessions))
}

/// Walks one browser through the app in-process and prints which cookies
/// each request set: each change lands in its own part.
pub(crate) async fn tour(sessions: Sessions) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let app = app(sessions);
    let mut jar: Vec<(String, String)> = Vec::new();
    for path in ["/csrf?value=t0k3n", "/login?value=23", "/theme?value=dark", "/", "/logout", "/"] {
        let cookies: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let request = http::Request::get(path).header("cookie", cookies.join("; ")).body(Body::empty())?;
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
        println!("GET {path:<20} {status}  sets {set:<40} {}", body.trim_end());
        if !status.is_success() {
            return Err(format!("{path} answered {status}").into());
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
