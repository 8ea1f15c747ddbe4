//! What each framework adapter does around the engine, on axum and on
//! actix-web: the origin check on requests that could change state, its two
//! options, and the answer when a handler asks for a session no adapter was
//! there to give; and, on actix-web alone (a tower service cannot fail), an
//! error from a middleware inside the adapter.

mod common;

use std::sync::Arc;

use common::{App, Device, Framework, Reply, send_raw};
use http::{Request, header};
use multisession::store::MemoryStore;
use multisession::testing::CountingStore;
use multisession::{SessionConfig, SessionLayer, SessionMiddleware, Sessions};

common::both_frameworks!(
    a_cross_site_post_is_refused_before_the_handler_and_a_same_origin_one_passes,
    a_post_whose_origin_is_another_host_is_refused_when_the_browser_sends_no_fetch_metadata,
    safe_methods_and_requests_from_no_browser_are_not_checked,
    a_trusted_origin_may_post_and_no_other,
    allow_cross_origin_turns_the_check_off,
    a_handler_without_the_adapter_gets_a_500,
);

fn sessions() -> Sessions {
    Sessions::new(MemoryStore::new(), SessionConfig::default().with_secure(false)).expect("valid config")
}

/// The test routes behind an adapter whose origin options `axum` and
/// `actix` set (the same options, one per framework).
fn app_with_options(
    fw: Framework,
    axum: impl FnOnce(SessionLayer) -> SessionLayer,
    actix: impl FnOnce(SessionMiddleware) -> SessionMiddleware + Send + 'static,
) -> App {
    let (for_axum, for_actix) = (sessions(), sessions());
    fw.app_with(
        move || common::axum_routes().layer(axum(SessionLayer::new(for_axum))),
        move || actix_web::App::new().wrap(actix(SessionMiddleware::new(for_actix))).configure(common::actix_routes),
    )
}

/// `POST /write` to `app.example`, from a page of `origin` (if any) that the
/// browser marks with `Sec-Fetch-Site: site` (if any).
async fn post(app: &App, origin: Option<&str>, site: Option<&str>) -> Reply {
    let mut request = Request::post("/write").header(header::HOST, "app.example");
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    if let Some(site) = site {
        request = request.header("sec-fetch-site", site);
    }
    send_raw(app, request.body(Vec::new()).expect("a request")).await
}

async fn a_cross_site_post_is_refused_before_the_handler_and_a_same_origin_one_passes(fw: Framework) {
    let app = fw.app(sessions());
    for site in ["cross-site", "same-site"] {
        let reply = post(&app, Some("https://evil.example"), Some(site)).await;
        assert_eq!(reply.status, 403, "{site}");
        assert!(reply.set_cookies().is_empty(), "a refused request was given a session");
        assert_eq!(reply.body, "This request was refused: reload the page and try again.");
    }
    for site in ["same-origin", "none"] {
        assert_eq!(post(&app, Some("https://app.example"), Some(site)).await.body, "n=1", "{site}");
    }
}

async fn a_post_whose_origin_is_another_host_is_refused_when_the_browser_sends_no_fetch_metadata(fw: Framework) {
    let app = fw.app(sessions());
    for origin in ["https://evil.example", "https://app.example:8443", "null"] {
        assert_eq!(post(&app, Some(origin), None).await.status, 403, "{origin}");
    }
    assert_eq!(post(&app, Some("https://app.example"), None).await.body, "n=1");
}

async fn safe_methods_and_requests_from_no_browser_are_not_checked(fw: Framework) {
    let app = fw.app(sessions());
    let get = Request::get("/write")
        .header(header::HOST, "app.example")
        .header(header::ORIGIN, "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body(Vec::new())
        .expect("a request");
    assert_eq!(send_raw(&app, get).await.body, "n=1", "a cross-site GET was refused");
    assert_eq!(post(&app, None, None).await.body, "n=1", "a POST without Origin or Fetch metadata was refused");
}

async fn a_trusted_origin_may_post_and_no_other(fw: Framework) {
    let idp = "https://idp.example";
    let app = app_with_options(fw, |layer| layer.trust_origin(idp), move |middleware| middleware.trust_origin(idp));
    assert_eq!(post(&app, Some(idp), Some("cross-site")).await.body, "n=1");
    assert_eq!(post(&app, Some("https://evil.example"), Some("cross-site")).await.status, 403);
}

async fn allow_cross_origin_turns_the_check_off(fw: Framework) {
    let app = app_with_options(fw, SessionLayer::allow_cross_origin, SessionMiddleware::allow_cross_origin);
    assert_eq!(post(&app, Some("https://evil.example"), Some("cross-site")).await.body, "n=1");
}

async fn a_handler_without_the_adapter_gets_a_500(fw: Framework) {
    let app = fw.app_with(common::axum_routes, || actix_web::App::new().configure(common::actix_routes));
    let reply = send_raw(&app, Request::get("/read").body(Vec::new()).expect("a request")).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (500, "Internal error in session handling."));
    let reply = send_raw(&app, Request::get("/none").body(Vec::new()).expect("a request")).await;
    assert_eq!(reply.body, "no session used", "a route without the session needs no adapter");
}

/// An `Err` from a middleware inside `SessionMiddleware`, after the handler
/// changed the session, reaches the client as actix-web answers it, and the
/// change is not kept: no cookie could go out with the error.
#[tokio::test]
async fn on_actix_an_error_from_an_inner_middleware_passes_through_and_keeps_no_change() {
    use actix_web::middleware::{Next, from_fn};

    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let sessions = Sessions::new(store.clone(), SessionConfig::default()).expect("valid config");
    let app = Framework::Actix.app_with(common::axum_routes, move || {
        actix_web::App::new()
            .wrap(from_fn(|request, next: Next<_>| async move {
                let response = next.call(request).await?;
                match response.request().path() {
                    "/write" => Err(actix_web::error::ErrorUnauthorized("refused after the handler")),
                    _ => Ok(response),
                }
            }))
            .wrap(SessionMiddleware::new(sessions))
            .configure(common::actix_routes)
    });
    let mut device = Device::new(app, "ua", "127.0.0.1:1");
    let reply = device.get("/write").await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (401, "refused after the handler"));
    assert!(reply.set_cookies().is_empty(), "a cookie went out with the error");
    assert_eq!(store.counts().total(), 0, "the handler's change was stored");
    assert_eq!(device.get("/read").await.body, "user=anonymous n=0");
}
