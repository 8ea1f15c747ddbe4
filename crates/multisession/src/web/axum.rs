//! The tower layer that gives each request its [`Session`], and the axum
//! extractor that hands it to handlers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE, USER_AGENT, VARY};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;

use crate::csrf::OriginCheck;
use crate::{Device, Error, Session, Sessions};

/// Gives every request a lazily loaded [`Session`] and commits it after the
/// handler: one store read for a request that reads the session, none for one
/// that does not, and a write only when something changed.
///
/// The client address comes from axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info`); without it, devices have no address.
///
/// It also refuses cross-origin browser requests that could change state
/// (`POST`, `PUT`, `PATCH`, `DELETE`, ...) with `403 Forbidden`: those whose
/// `Sec-Fetch-Site` is not `same-origin` or `none`, or, from browsers that
/// send no `Sec-Fetch-Site`, whose `Origin` is not the request's own host.
/// Requests without either header (not from a browser) pass, as do safe
/// methods. Forms still need a CSRF token ([`Session::csrf_token`]) for
/// older browsers. [`SessionLayer::trust_origin`] lets one origin through
/// (an identity provider that posts back, as OpenID Connect's `form_post`
/// and SAML do); [`SessionLayer::allow_cross_origin`] turns the check off.
///
/// ```
/// use axum::{Router, routing::get};
/// use multisession::{Session, SessionLayer, Sessions, store::MemoryStore};
///
/// async fn visits(session: Session) -> multisession::Result<String> {
///     let n = session.get::<u64>("visits").await?.unwrap_or(0) + 1;
///     session.insert("visits", n).await?;
///     Ok(format!("{n} visits"))
/// }
///
/// let sessions = Sessions::new(MemoryStore::new(), Default::default())?;
/// let app: Router = Router::new().route("/", get(visits)).layer(SessionLayer::new(sessions));
/// # let _ = app;
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SessionLayer {
    sessions: Sessions,
    origins: OriginCheck,
}

super::adapter_options!(SessionLayer);

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService { inner, sessions: self.sessions.clone(), origins: self.origins.clone() }
    }
}

/// The service [`SessionLayer`] wraps around an application.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    sessions: Sessions,
    origins: OriginCheck,
}

impl<S, B> Service<Request<B>> for SessionService<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let headers = request.headers();
        if self.origins.applies(request.method().is_safe()) {
            let bytes = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
            // HTTP/2 carries the host in the URI's authority, not in `Host`.
            let host = bytes(&HOST).or_else(|| request.uri().authority().map(|a| a.as_str().as_bytes()));
            if self.origins.refuses(host, bytes(&ORIGIN), bytes(&SEC_FETCH_SITE)) {
                return Box::pin(std::future::ready(Ok(crate::csrf::refusal().into_response())));
            }
        }
        let cookies = headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes);
        let user_agent = headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let id_header = |name: &str| headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
        let session = self.sessions.session_with_headers(cookies, id_header, Device::new(user_agent, ip));
        request.extensions_mut().insert(session.clone());

        // The inner service was polled ready for this call: call it now, and
        // finish the request once its response is there.
        let response = self.inner.call(request);
        let span = tracing::info_span!("session");
        Box::pin(
            async move {
                let mut response = response.await?;
                match session.commit().await {
                    Ok(commit) => {
                        let headers = response.headers_mut();
                        if commit.vary_cookie {
                            headers.append(VARY, HeaderValue::from_static("cookie"));
                        }
                        for cookie in commit.set_cookies {
                            match HeaderValue::try_from(cookie) {
                                Ok(value) => {
                                    headers.append(SET_COOKIE, value);
                                }
                                Err(_) => {
                                    return Ok(
                                        Error::config("cookie: options produce an invalid header").into_response()
                                    );
                                }
                            }
                        }
                        for (name, value) in commit.headers {
                            match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                                (Ok(name), Ok(value)) => {
                                    headers.append(name, value);
                                }
                                _ => {
                                    return Ok(Error::config("id_header: produces an invalid header").into_response());
                                }
                            }
                        }
                        Ok(response)
                    }
                    Err(e) => Ok(e.into_response()),
                }
            }
            .instrument(span),
        )
    }
}

/// The Fetch metadata header browsers send with every request.
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or_else(|| {
            Error::usage("no session in this request: add multisession::SessionLayer to the router (Router::layer)")
        })
    }
}

/// The answer adapters give (see `Error::http_answer`): `503 Service Unavailable` when
/// the store is down, `409 Conflict` for a refused login, `403 Forbidden`
/// for a failed CSRF check, `500` otherwise; the body says which, never the
/// session id.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, body) = self.http_answer();
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body).into_response()
    }
}
