//! The example app from Flask-Multi-Session's README, on axum and the
//! embedded SQLite store: log in as any user id on several browsers, see
//! every device the user is signed in on, and log out here, everywhere,
//! everywhere else, or one device at a time. `demo_actix` serves the same
//! app on actix-web.
//!
//! Run it with
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! and open <http://127.0.0.1:3000>. Log in as the same user in a second
//! browser (or a private window) and both show up under "Your devices".
//! `MULTISESSION_DEMO_ADDR` changes the address (default `127.0.0.1:3000`;
//! port 0 picks a free one), `MULTISESSION_STORE` the store, as a URL
//! (default `sqlite://multisession-demo.db`, in the current directory; also
//! `memory://`, `redis://127.0.0.1:6379`, `redis+cluster://HOST:PORT,…`),
//! `RUST_LOG` the log filter (default `info`).
//!
//! Every form that changes something is a POST carrying a CSRF token, kept
//! in a session part of its own: an encrypted cookie (`csrf`), so handing
//! out a token writes nothing to the store. [`SessionLayer`] refuses POSTs
//! a browser marks as coming from another origin, and each page checks
//! the token with [`Session::verify_csrf_token`]. The cookie's key is made
//! anew at each start, so forms rendered before a restart must be reloaded.
//!
//! There are no passwords: the demo trusts whatever user id is typed in, and
//! it serves plain http, so its cookies are not `Secure`.
//!
//! The pages, their HTML and the start-up are in `shared/demo.rs`, which
//! both demos include; this file is axum's route table and `main`.

#[path = "shared/demo.rs"]
mod shared;

use std::error::Error as StdError;
use std::net::SocketAddr;

use axum::Form;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use multisession::{Session, SessionLayer, Sessions};
use shared::{Answer, LoginForm, RevokeForm, Status, Token, fatal};

/// The demo's router, every route behind [`SessionLayer`]. Everything that
/// changes state is a POST with a CSRF token; a GET of those routes is
/// `405 Method Not Allowed`.
///
/// | Route                         | What it does                                   |
/// |-------------------------------|------------------------------------------------|
/// | `GET /`                       | who is logged in, or a link to log in          |
/// | `GET /login`, `POST /login`   | the login form; logs in, optionally remembered |
/// | `POST /logout`                | logs this device out                           |
/// | `POST /logout_all_devices`    | logs the user out everywhere                   |
/// | `POST /logout_other_devices`  | logs the user out everywhere but here          |
/// | `GET /devices`                | the user's sessions, one row per device        |
/// | `POST /devices/revoke`        | logs out the device a `handle` names           |
pub(crate) fn app(sessions: Sessions) -> Router {
    Router::new()
        .route("/", get(shared::index))
        .route("/login", get(shared::login_form).post(|s: Session, Form(f): Form<LoginForm>| shared::login(s, f)))
        .route("/logout", post(|s: Session, Form(f): Form<Token>| shared::logout(s, f)))
        .route("/logout_all_devices", post(|s: Session, Form(f): Form<Token>| shared::logout_all_devices(s, f)))
        .route("/logout_other_devices", post(|s: Session, Form(f): Form<Token>| shared::logout_other_devices(s, f)))
        .route("/devices", get(shared::devices))
        .route("/devices/revoke", post(|s: Session, Form(f): Form<RevokeForm>| shared::revoke(s, f)))
        .fallback(shared::not_found)
        .layer(SessionLayer::new(sessions))
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Answer::Page(status, html) => {
                let status = match status {
                    Status::Ok => StatusCode::OK,
                    Status::BadRequest => StatusCode::BAD_REQUEST,
                    Status::Forbidden => StatusCode::FORBIDDEN,
                    Status::NotFound => StatusCode::NOT_FOUND,
                };
                (status, Html(html)).into_response()
            }
            Answer::SeeOther(path) => Redirect::to(path).into_response(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let setup = shared::setup().await?;
    let addr = setup.addr;
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| fatal(format!("cannot bind {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| fatal(format!("cannot bind {addr}: {e}")))?;
    shared::announce(local, &setup.shown);

    let service = app(setup.sessions).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async {
            // If Ctrl-C cannot be watched, run until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await
        .map_err(|e| fatal(format!("server error: {e}")))?;
    Ok(())
}
