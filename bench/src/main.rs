//! The same tiny app on each session library and store that `bench/run`
//! compares, one variant per process:
//!
//! - `GET /login?u=NAME` logs NAME in (`bench` without `u`) and answers `ok`;
//! - `GET /` reads the user back: `user=NAME`, or `user=-` without a login;
//! - `GET /write` adds one to a counter the session keeps: `n=COUNT`.
//!
//! Bare axum and bare actix-web serve the same routes with fixed answers: the
//! floor each session layer is measured against.
//!
//! ```text
//! bench-app VARIANT PORT        bench-app --list
//! ```

use std::error::Error;
use std::net::SocketAddr;

type Failure = Box<dyn Error>;

/// Every variant, with what it runs.
const VARIANTS: &[(&str, &str)] = &[
    ("axum", "bare axum 0.8, no sessions"),
    ("ms-memory", "multisession, MemoryStore"),
    ("ms-sqlite", "multisession, SQLite (the embedded default)"),
    ("ms-postgres", "multisession, PostgreSQL at $BENCH_POSTGRES_URL"),
    ("ms-redis", "multisession, Redis at $BENCH_REDIS_URL"),
    ("ms-redis-cache", "multisession, Redis at $BENCH_REDIS_URL with the client-side cache"),
    ("ts-memory", "tower-sessions 0.14, MemoryStore"),
    ("ts-redis", "tower-sessions 0.14, tower-sessions-redis-store 0.16 (fred)"),
    ("actix", "bare actix-web 4, no sessions"),
    ("as-redis", "actix-session 0.11, RedisSessionStore (redis-rs)"),
    ("as-cookie", "actix-session 0.11, CookieSessionStore"),
];

fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for (name, what) in VARIANTS {
            println!("{name:<12} {what}");
        }
        return Ok(());
    }
    let [variant, port] = &args[..] else { return Err("usage: bench-app VARIANT PORT (or --list)".into()) };
    if !VARIANTS.iter().any(|(name, _)| name == variant) {
        return Err(format!("unknown variant {variant:?}: see bench-app --list").into());
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?));
    match variant.as_str() {
        "actix" | "as-redis" | "as-cookie" => actix::serve(variant, addr),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(tower::serve(variant, addr)),
    }
}

/// `$name`, or an error saying to set it.
fn env(name: &str) -> Result<String, Failure> {
    std::env::var(name).map_err(|_| format!("{name} is not set (bench/run sets it)").into())
}

#[derive(serde::Deserialize)]
struct Login {
    u: Option<String>,
}

impl Login {
    fn user(&self) -> &str {
        self.u.as_deref().unwrap_or("bench")
    }
}

/// The axum variants: bare, multisession and tower-sessions.
mod tower {
    use axum::Router;
    use axum::extract::Query;
    use axum::http::StatusCode;
    use axum::routing::get;

    use super::{Failure, Login, env};

    pub(crate) async fn serve(variant: &str, addr: std::net::SocketAddr) -> Result<(), Failure> {
        // Held until the server stops: the SQLite file lives in it.
        let folder = tempfile::tempdir()?;
        let app = match variant {
            "axum" => Router::new()
                .route("/login", get(|| async { "ok" }))
                .route("/", get(|| async { "user=bench" }))
                .route("/write", get(|| async { "n=1" })),
            "ms-memory" => multisession_app(multisession::store::MemoryStore::new())?,
            "ms-sqlite" => {
                let file = std::env::var("BENCH_SQLITE_FILE").map_or_else(|_| folder.path().join("s.db"), Into::into);
                multisession_app(multisession::store::SqlStore::open(file).await?)?
            }
            "ms-postgres" => multisession_app(
                multisession::store::SqlStore::connect(&env("BENCH_POSTGRES_URL")?).await?.with_key_prefix("bench"),
            )?,
            "ms-redis" => multisession_app(
                multisession::store::RedisStore::connect(&env("BENCH_REDIS_URL")?).await?.with_key_prefix("ms"),
            )?,
            "ms-redis-cache" => multisession_app(
                multisession::store::RedisStore::connect(&format!("{}/?client_cache=20000", env("BENCH_REDIS_URL")?))
                    .await?
                    .with_key_prefix("msc"),
            )?,
            "ts-memory" => tower_sessions_app(tower_sessions::MemoryStore::default()),
            "ts-redis" => {
                use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
                let pool = Pool::new(Config::from_url(&env("BENCH_REDIS_URL")?)?, None, None, None, 6)?;
                pool.connect();
                pool.wait_for_connect().await?;
                tower_sessions_app(tower_sessions_redis_store::RedisStore::new(pool))
            }
            _ => return Err(format!("{variant} is not an axum variant").into()),
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, app).await?;
        drop(folder);
        Ok(())
    }

    /// The multisession app. For `bench/soak`, `BENCH_LIFETIME_SECONDS`
    /// sets the sessions' idle lifetime (touched every quarter of it) and
    /// `BENCH_CLEANUP_SECONDS` runs the store's cleanup that often.
    fn multisession_app(store: impl multisession::store::Store) -> Result<Router, Failure> {
        use multisession::{Result, Session, SessionConfig, SessionLayer, Sessions};
        let seconds = |name: &str| -> std::result::Result<Option<i64>, Failure> {
            std::env::var(name).ok().map(|v| v.parse().map_err(|e| format!("{name}: {e}").into())).transpose()
        };
        async fn login(session: Session, Query(login): Query<Login>) -> Result<&'static str> {
            session.login(login.user()).await?;
            Ok("ok")
        }
        async fn read(session: Session) -> Result<String> {
            Ok(format!("user={}", session.user().await?.as_deref().unwrap_or("-")))
        }
        async fn write(session: Session) -> Result<String> {
            let n = session.get::<u64>("n").await?.unwrap_or(0) + 1;
            session.insert("n", n).await?;
            Ok(format!("n={n}"))
        }
        // Plain http on loopback: no Secure flag, or the client drops the cookie.
        let mut config = SessionConfig::default().with_secure(false);
        if let Some(lifetime) = seconds("BENCH_LIFETIME_SECONDS")? {
            let lifetime = multisession::Duration::seconds(lifetime);
            config = config.with_lifetime(lifetime).with_touch_interval(lifetime / 4);
        }
        let store: std::sync::Arc<dyn multisession::store::Store> = std::sync::Arc::new(store);
        let sessions = Sessions::new(store, config)?;
        if let Some(every) = seconds("BENCH_CLEANUP_SECONDS")? {
            sessions.spawn_cleanup(multisession::Duration::seconds(every));
        }
        Ok(Router::new()
            .route("/login", get(login))
            .route("/", get(read))
            .route("/write", get(write))
            .layer(SessionLayer::new(sessions)))
    }

    fn tower_sessions_app(store: impl tower_sessions::SessionStore + Clone) -> Router {
        use tower_sessions::{Session, SessionManagerLayer};
        fn failed(_: tower_sessions::session::Error) -> StatusCode {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        async fn login(session: Session, Query(login): Query<Login>) -> Result<&'static str, StatusCode> {
            // A new id at login, as tower-sessions' docs advise against fixation.
            session.cycle_id().await.map_err(failed)?;
            session.insert("user", login.user()).await.map_err(failed)?;
            Ok("ok")
        }
        async fn read(session: Session) -> Result<String, StatusCode> {
            let user = session.get::<String>("user").await.map_err(failed)?;
            Ok(format!("user={}", user.as_deref().unwrap_or("-")))
        }
        async fn write(session: Session) -> Result<String, StatusCode> {
            let n = session.get::<u64>("n").await.map_err(failed)?.unwrap_or(0) + 1;
            session.insert("n", n).await.map_err(failed)?;
            Ok(format!("n={n}"))
        }
        Router::new()
            .route("/login", get(login))
            .route("/", get(read))
            .route("/write", get(write))
            .layer(SessionManagerLayer::new(store).with_secure(false))
    }
}

/// The actix-web variants: bare and actix-session.
mod actix {
    use actix_session::storage::{CookieSessionStore, RedisSessionStore, SessionStore};
    use actix_session::{Session, SessionMiddleware};
    use actix_web::cookie::Key;
    use actix_web::{App, HttpServer, web};

    use super::{Failure, Login, env};

    pub(crate) fn serve(variant: &str, addr: std::net::SocketAddr) -> Result<(), Failure> {
        let variant = variant.to_owned();
        actix_web::rt::System::new().block_on(async move {
            match variant.as_str() {
                "actix" => {
                    HttpServer::new(|| {
                        App::new()
                            .route("/login", web::get().to(|| async { "ok" }))
                            .route("/", web::get().to(|| async { "user=bench" }))
                            .route("/write", web::get().to(|| async { "n=1" }))
                    })
                    .bind(addr)?
                    .run()
                    .await?
                }
                "as-redis" => {
                    let store = RedisSessionStore::new(env("BENCH_REDIS_URL")?).await?;
                    with_sessions(move || store.clone(), addr).await?
                }
                "as-cookie" => with_sessions(CookieSessionStore::default, addr).await?,
                _ => return Err(format!("{variant} is not an actix variant").into()),
            }
            Ok(())
        })
    }

    /// Serves the app with actix-session over the store `store` makes (one
    /// per worker thread, as actix-web builds the app once per worker).
    async fn with_sessions<S: SessionStore + 'static>(
        store: impl Fn() -> S + Clone + Send + 'static,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<()> {
        async fn login(session: Session, login: web::Query<Login>) -> actix_web::Result<&'static str> {
            session.renew();
            session.insert("user", login.user())?;
            Ok("ok")
        }
        async fn read(session: Session) -> actix_web::Result<String> {
            let user = session.get::<String>("user")?;
            Ok(format!("user={}", user.as_deref().unwrap_or("-")))
        }
        async fn write(session: Session) -> actix_web::Result<String> {
            let n = session.get::<u64>("n")?.unwrap_or(0) + 1;
            session.insert("n", n)?;
            Ok(format!("n={n}"))
        }
        let key = Key::generate();
        HttpServer::new(move || {
            App::new()
                .wrap(SessionMiddleware::builder(store(), key.clone()).cookie_secure(false).build())
                .route("/login", web::get().to(login))
                .route("/", web::get().to(read))
                .route("/write", web::get().to(write))
        })
        .bind(addr)?
        .run()
        .await
    }
}
