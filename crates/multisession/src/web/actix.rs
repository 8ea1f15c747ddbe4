//! The actix-web middleware that gives each request its [`Session`], and the
//! extractor that hands it to handlers: the same engine, rules and answers
//! as the axum layer.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use tracing::Instrument as _;

use crate::csrf::OriginCheck;
use crate::{Device, Error, Session, Sessions};

/// Gives every request a lazily loaded [`Session`] and commits it after the
/// handler, as [`SessionLayer`](crate::SessionLayer) does for axum: one
/// store read for a request that reads the session, none for one that does
/// not, and a write only when something changed.
///
/// The client address is the connection's peer address. Cross-origin
/// browser requests that could change state get `403 Forbidden`, by the
/// same rule as the axum layer: see [`SessionMiddleware::trust_origin`] and
/// [`SessionMiddleware::allow_cross_origin`].
///
/// An error that a middleware inside this one returns (an `Err`, rather
/// than an error response) passes through as it is, and the session is not
/// committed, since no cookie could go out with that error: the request's
/// changes to it (its data, a login, a logout of this device) are not
/// kept; what acts on the store at once (`logout_all_devices`, `revoke`)
/// has happened. Let such middleware answer with a response instead, or put
/// it outside `SessionMiddleware`: `App::wrap` it after (the last
/// middleware wrapped is the outermost).
///
/// ```
/// use actix_web::{App, web};
/// use multisession::{Session, SessionMiddleware, Sessions, store::MemoryStore};
///
/// async fn visits(session: Session) -> multisession::Result<String> {
///     let n = session.get::<u64>("visits").await?.unwrap_or(0) + 1;
///     session.insert("visits", n).await?;
///     Ok(format!("{n} visits"))
/// }
///
/// let sessions = Sessions::new(MemoryStore::new(), Default::default())?;
/// let app = App::new().wrap(SessionMiddleware::new(sessions)).route("/", web::get().to(visits));
/// # let _ = app;
/// # Ok::<(), multisession::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SessionMiddleware {
    sessions: Sessions,
    origins: OriginCheck,
}

super::adapter_options!(SessionMiddleware);

impl<S, B> Transform<S, ServiceRequest> for SessionMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = SessionService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionService {
            service: Rc::new(service),
            sessions: self.sessions.clone(),
            origins: self.origins.clone(),
        }))
    }
}

/// The service [`SessionMiddleware`] wraps around an application.
#[derive(Debug)]
pub struct SessionService<S> {
    service: Rc<S>,
    sessions: Sessions,
    origins: OriginCheck,
}

/// The Fetch metadata header browsers send with every request.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

impl<S, B> Service<ServiceRequest> for SessionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let headers = request.headers();
        if self.origins.applies(request.method().is_safe()) {
            let bytes = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
            // HTTP/2 carries the host in the URI's authority, not in `Host`.
            let host = bytes(&header::HOST).or_else(|| request.uri().authority().map(|a| a.as_str().as_bytes()));
            if self.origins.refuses(host, bytes(&header::ORIGIN), bytes(&SEC_FETCH_SITE)) {
                let refusal = crate::csrf::refusal().error_response();
                return Box::pin(ready(Ok(request.into_response(refusal).map_into_right_body())));
            }
        }
        let cookies = headers.get_all(header::COOKIE).map(HeaderValue::as_bytes);
        let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let ip = request.peer_addr().map(|address| address.ip());
        let id_header = |name: &str| headers.get_all(name).map(HeaderValue::as_bytes).collect();
        let session = self.sessions.session_with_headers(cookies, id_header, Device::new(user_agent, ip));
        request.extensions_mut().insert(session.clone());

        let service = Rc::clone(&self.service);
        // The handler and the commit log inside one `session` span, as on axum.
        let span = tracing::info_span!("session");
        Box::pin(
            async move {
                let mut response = service.call(request).await?;
                let commit = match session.commit().await {
                    Ok(commit) => commit,
                    Err(e) => return Ok(answer(response, &e)),
                };
                let headers = response.headers_mut();
                if commit.vary_cookie {
                    headers.append(header::VARY, HeaderValue::from_static("cookie"));
                }
                for cookie in commit.set_cookies {
                    match HeaderValue::try_from(cookie) {
                        Ok(value) => headers.append(header::SET_COOKIE, value),
                        Err(_) => {
                            return Ok(answer(response, &Error::config("cookie: options produce an invalid header")));
                        }
                    }
                }
                for (name, value) in commit.headers {
                    match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                        (Ok(name), Ok(value)) => headers.append(name, value),
                        _ => return Ok(answer(response, &Error::config("id_header: produces an invalid header"))),
                    }
                }
                Ok(response.map_into_left_body())
            }
            .instrument(span),
        )
    }
}

/// The handler's response replaced by the answer to `error`.
fn answer<B>(response: ServiceResponse<B>, error: &Error) -> ServiceResponse<EitherBody<B>> {
    let (request, _) = response.into_parts();
    ServiceResponse::new(request, error.error_response()).map_into_right_body()
}

/// The [`Session`] [`SessionMiddleware`] gave the request.
impl FromRequest for Session {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(request.extensions().get::<Session>().cloned().ok_or_else(|| {
            Error::usage("no session in this request: wrap the App in multisession::SessionMiddleware (App::wrap)")
        }))
    }
}

/// The same answer as the axum layer gives: `503`
/// when the store is down, `409` for a refused login, `403` for a failed
/// CSRF check, `500` otherwise; the body never holds the session id.
impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let (status, body) = self.http_answer();
        HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .content_type("text/plain; charset=utf-8")
            .body(body)
    }
}
