//! Micro-benchmarks of the request path with no I/O: what one request costs
//! the CPU before and after the store. `cargo bench` in bench/ runs them;
//! docs/BENCHMARKS.md says what each measures.

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use multisession::store::{CookieStore, MemoryStore};
use multisession::{
    Change, Device, Fields, Key, KeyRing, Meta, Record, Session, SessionConfig, SessionId, SessionLayer, SessionSpec,
    Sessions,
};
use serde_json::json;
use tower::ServiceExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// A logged-in session on `sessions`: its `Cookie` header.
fn logged_in(rt: &tokio::runtime::Runtime, sessions: &Sessions) -> String {
    rt.block_on(async {
        let session = sessions.session([], Device::default());
        session.login("bench").await.expect("login");
        session.insert("cart", json!([1, 2, 3])).await.expect("insert");
        let commit = session.commit().await.expect("commit");
        commit.set_cookies.iter().filter_map(|c| c.split(';').next()).collect::<Vec<_>>().join("; ")
    })
}

fn record() -> Record {
    let now = time::OffsetDateTime::now_utc();
    Record {
        data: [("cart".to_owned(), json!([1, 2, 3])), ("theme".to_owned(), json!("dark"))].into_iter().collect(),
        meta: Meta {
            user_id: Some("bench".into()),
            created_at: now,
            last_active_at: now,
            expires_at: now + time::Duration::DAY,
            absolute_expires_at: None,
            permanent: false,
            device: Device::new(Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0".into()), "192.0.2.1".parse().ok()),
            siblings: Default::default(),
        },
    }
}

fn cookies(c: &mut Criterion) {
    let rt = runtime();
    let plain = Sessions::new(MemoryStore::new(), SessionConfig::default()).expect("valid");
    let header = format!("theme=dark; _ga=GA1.2.3; {}; lang=en", logged_in(&rt, &plain));
    c.bench_function("cookie header parsed, id decoded", |b| {
        b.iter(|| plain.session([black_box(header.as_bytes())], Device::default()))
    });
    let keys = KeyRing::new(vec![Key::generate()]).expect("a key");
    let signed = Sessions::new(MemoryStore::new(), SessionConfig::default().with_signed_id(keys)).expect("valid");
    let header = logged_in(&rt, &signed);
    c.bench_function("cookie header parsed, signed id verified", |b| {
        b.iter(|| signed.session([black_box(header.as_bytes())], Device::default()))
    });
}

fn ids_and_records(c: &mut Criterion) {
    let id = SessionId::generate().expect("rng");
    c.bench_function("id hashed to its store key (SHA-256)", |b| b.iter(|| black_box(&id).store_key()));
    c.bench_function("id generated (OS CSPRNG)", |b| b.iter(SessionId::generate));
    let record = record();
    let bytes = record.to_bytes().expect("encodes");
    c.bench_function("record encoded", |b| b.iter(|| black_box(&record).to_bytes()));
    c.bench_function("record decoded", |b| b.iter(|| Record::from_bytes(black_box(&bytes))));
    let now = time::OffsetDateTime::now_utc();
    let mut change = Change::new(now, now + time::Duration::DAY);
    change.set.insert("n".into(), json!(42));
    c.bench_function("change applied to a record's data", |b| {
        b.iter_batched(
            || record.data.clone(),
            |mut data| change.apply_to_data(&mut data),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn tracking_and_cookie_store(c: &mut Criterion) {
    let rt = runtime();
    let sessions = Sessions::new(MemoryStore::new(), SessionConfig::default()).expect("valid");
    let header = logged_in(&rt, &sessions);
    c.bench_function("request: load, one insert, commit (memory store)", |b| {
        b.to_async(&rt).iter(|| async {
            let session = sessions.session([header.as_bytes()], Device::default());
            session.insert("n", 1).await.expect("insert");
            session.commit().await.expect("commit")
        })
    });
    let keys = KeyRing::new(vec![Key::generate()]).expect("a key");
    let cookie_only = Sessions::from_specs([
        SessionSpec::new(CookieStore::new(keys), SessionConfig::default()).with_fields(Fields::All)
    ])
    .expect("valid");
    let sealed = rt.block_on(async {
        let session = cookie_only.session([], Device::default());
        session.insert("cart", json!([1, 2, 3])).await.expect("insert");
        let commit = session.commit().await.expect("commit");
        commit.set_cookies[0].split(';').next().expect("a cookie").to_owned()
    });
    c.bench_function("cookie store: open (decrypt) on read", |b| {
        b.to_async(&rt).iter(|| async {
            let session = cookie_only.session([sealed.as_bytes()], Device::default());
            session.get::<serde_json::Value>("cart").await.expect("read")
        })
    });
    c.bench_function("cookie store: open, change, seal", |b| {
        b.to_async(&rt).iter(|| async {
            let session = cookie_only.session([sealed.as_bytes()], Device::default());
            session.insert("n", 1).await.expect("insert");
            session.commit().await.expect("commit")
        })
    });
}

fn whole_request(c: &mut Criterion) {
    let rt = runtime();
    let sessions = Sessions::new(MemoryStore::new(), SessionConfig::default()).expect("valid");
    let header = logged_in(&rt, &sessions);
    async fn read(session: Session) -> multisession::Result<String> {
        Ok(format!("user={}", session.user().await?.unwrap_or_default()))
    }
    async fn write(session: Session) -> multisession::Result<String> {
        let n = session.get::<u64>("n").await?.unwrap_or(0) + 1;
        session.insert("n", n).await?;
        Ok(format!("n={n}"))
    }
    // Routers as `axum::serve` runs them: handlers made into routes once.
    let app = Router::new()
        .route("/", get(read))
        .route("/write", get(write))
        .layer(SessionLayer::new(sessions))
        .with_state(());
    let bare = Router::new().route("/", get(|| async { "user=bench" })).with_state(());
    for (name, app, path) in [
        ("whole request through axum, no session layer", &bare, "/"),
        ("whole request through the layer: read (memory store)", &app, "/"),
        ("whole request through the layer: write (memory store)", &app, "/write"),
    ] {
        c.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let request = Request::get(path).header("cookie", &header).body(Body::empty()).expect("a request");
                app.clone().oneshot(request).await.expect("a response")
            })
        });
    }
}

criterion_group!(benches, cookies, ids_and_records, tracking_and_cookie_store, whole_request);
criterion_main!(benches);
