//! The demo of `demo.rs` on actix-web: the same pages, routes, forms and
//! start-up, served through [`SessionMiddleware`] and the `Session`
//! extractor instead of the axum layer.
//!
//! Run it with
//!
//! ```text
//! cargo run --features actix --example demo_actix
//! ```
//!
//! and open <http://127.0.0.1:3000>. The same environment variables as the
//! axum demo apply: `MULTISESSION_DEMO_ADDR` (default `127.0.0.1:3000`; port
//! 0 picks a free one), `MULTISESSION_STORE` (default
//! `sqlite://multisession-demo.db`) and `RUST_LOG` (default `info`).
//!
//! The pages, their HTML and the start-up are in `shared/demo.rs`, which
//! both demos include; this file is actix-web's route table and `main`.

#[path = "shared/demo.rs"]
mod shared;

use std::error::Error as StdError;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{ContentType, LOCATION};
use actix_web::web::{self, Form};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, Responder};
use multisession::{Session, SessionMiddleware, Sessions};
use shared::{Answer, LoginForm, RevokeForm, Status, Token, fatal};

/// The demo's app, every route behind [`SessionMiddleware`]: the routes of
/// `demo.rs`. Each path is one resource, so that another method than its
/// routes' is `405 Method Not Allowed`, as on axum (`App::route` would
/// answer 404: it puts the method guard on the resource); any other path
/// gets the demo's 404 page.
pub(crate) fn app(
    sessions: Sessions,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .wrap(SessionMiddleware::new(sessions))
        .service(web::resource("/").route(web::get().to(shared::index)))
        .service(
            web::resource("/login")
                .route(web::get().to(shared::login_form))
                .route(web::post().to(|s: Session, f: Form<LoginForm>| shared::login(s, f.into_inner()))),
        )
        .service(
            web::resource("/logout")
                .route(web::post().to(|s: Session, f: Form<Token>| shared::logout(s, f.into_inner()))),
        )
        .service(
            web::resource("/logout_all_devices")
                .route(web::post().to(|s: Session, f: Form<Token>| shared::logout_all_devices(s, f.into_inner()))),
        )
        .service(
            web::resource("/logout_other_devices")
                .route(web::post().to(|s: Session, f: Form<Token>| shared::logout_other_devices(s, f.into_inner()))),
        )
        .service(web::resource("/devices").route(web::get().to(shared::devices)))
        .service(
            web::resource("/devices/revoke")
                .route(web::post().to(|s: Session, f: Form<RevokeForm>| shared::revoke(s, f.into_inner()))),
        )
        .default_service(web::to(shared::not_found))
}

impl Responder for Answer {
    type Body = BoxBody;

    fn respond_to(self, _request: &HttpRequest) -> HttpResponse {
        match self {
            Answer::Page(status, html) => {
                let status = match status {
                    Status::Ok => StatusCode::OK,
                    Status::BadRequest => StatusCode::BAD_REQUEST,
                    Status::Forbidden => StatusCode::FORBIDDEN,
                    Status::NotFound => StatusCode::NOT_FOUND,
                };
                HttpResponse::build(status).content_type(ContentType::html()).body(html)
            }
            Answer::SeeOther(path) => HttpResponse::SeeOther().insert_header((LOCATION, path)).finish(),
        }
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn StdError>> {
    let setup = shared::setup().await?;
    let addr = setup.addr;
    let listener = std::net::TcpListener::bind(&addr).map_err(|e| fatal(format!("cannot bind {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| fatal(format!("cannot bind {addr}: {e}")))?;
    let sessions = setup.sessions;
    // Each worker thread builds its own `App`; all share one `Sessions`.
    // The server stops gracefully on Ctrl-C (SIGINT) and SIGTERM.
    let server = HttpServer::new(move || app(sessions.clone()))
        .listen(listener)
        .map_err(|e| fatal(format!("cannot serve on {local}: {e}")))?
        .run();
    shared::announce(local, &setup.shown);
    server.await.map_err(|e| fatal(format!("server error: {e}")))?;
    Ok(())
}
