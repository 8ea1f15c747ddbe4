//! The soak driver (`bench/soak` runs it): drives one `bench-app` at a
//! steady rate for a long run, with short-lived sessions always being
//! created and expiring, and reports what the app's memory and the store
//! did. It fails (exit 1) when a request fails, a long-lived session is
//! logged out, the app's memory grows, or expired sessions stay in the
//! store past the cleanup interval.
//!
//! Configured by the environment `bench/soak` sets: `SOAK_URL` (the app),
//! `SOAK_PID` (its process, for its memory), `SOAK_STORE` (`sqlite:PATH`
//! or a `redis://` URL of a Redis only this app uses), `SOAK_SECONDS`,
//! `SOAK_RATE` (requests a second), `SOAK_LIFETIME` and `SOAK_CLEANUP`
//! (seconds, as the app was started with), `SOAK_NAME` (for the report).

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Failure = Box<dyn Error + Send + Sync>;
type Http = Client<HttpConnector, Empty<Bytes>>;

/// Workers sharing the rate; each runs one visitor at a time.
const WORKERS: u64 = 32;
/// Visitors who keep one session the whole run, one request a second.
const REGULARS: usize = 4;
/// Distinct users the visitors log in as (so user indexes hold several).
const USERS: u64 = 500;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failures: AtomicU64,
    logins: AtomicU64,
    regulars_logged_out: AtomicU64,
}

struct Config {
    name: String,
    url: String,
    pid: u32,
    store: String,
    seconds: u64,
    rate: u64,
    lifetime: u64,
    cleanup: u64,
}

fn env(name: &str) -> Result<String, Failure> {
    std::env::var(name).map_err(|_| format!("{name} is not set (bench/soak sets it)").into())
}

fn number(name: &str) -> Result<u64, Failure> {
    env(name)?.parse().map_err(|e| format!("{name}: {e}").into())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("soak: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Failure> {
    let config = Config {
        name: env("SOAK_NAME")?,
        url: env("SOAK_URL")?,
        pid: u32::try_from(number("SOAK_PID")?)?,
        store: env("SOAK_STORE")?,
        seconds: number("SOAK_SECONDS")?,
        rate: number("SOAK_RATE")?,
        lifetime: number("SOAK_LIFETIME")?,
        cleanup: number("SOAK_CLEANUP")?,
    };
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(config.seconds);

    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let (http, counters, url) = (http.clone(), counters.clone(), config.url.clone());
        let every = Duration::from_secs_f64(WORKERS as f64 / config.rate.max(1) as f64);
        tasks.push(tokio::spawn(visitors(http, counters, url, worker, every, deadline)));
    }
    for i in 0..REGULARS {
        let (http, counters, url) = (http.clone(), counters.clone(), config.url.clone());
        tasks.push(tokio::spawn(regular(http, counters, url, i, deadline)));
    }

    // Memory every 10 s, the store every 30 s.
    let mut rss = Vec::new();
    let mut held = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    while Instant::now() < deadline {
        tick.tick().await;
        let at = started.elapsed().as_secs();
        let kib = rss_kib(config.pid)?;
        rss.push((at, kib));
        if at % 30 < 10 {
            let (total, expired) = store_counts(&config.store).await?;
            held.push((at, total, expired));
            println!(
                "{:>5} s  {} requests  rss {} KiB  store {total} records ({expired} past expiry)",
                at,
                counters.requests.load(Ordering::Relaxed),
                kib
            );
        }
    }
    for task in tasks {
        task.await??;
    }
    let load_ended = started.elapsed();

    // No request now: every session expires within the lifetime, and the
    // store must drop them within the cleanup interval after that.
    let bound = Duration::from_secs(config.lifetime + 2 * config.cleanup + 30);
    let quiet = Instant::now();
    let emptied = loop {
        let (total, _) = store_counts(&config.store).await?;
        if total == 0 {
            break Some(quiet.elapsed());
        }
        if quiet.elapsed() > bound {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let requests = counters.requests.load(Ordering::Relaxed);
    let failures = counters.failures.load(Ordering::Relaxed);
    let logged_out = counters.regulars_logged_out.load(Ordering::Relaxed);
    // Flat: the last quarter's mean against the mean of the first quarter
    // after a minute of warm-up.
    let mean = |from: u64, to: u64| {
        let picked: Vec<u64> = rss.iter().filter(|(at, _)| (from..to).contains(at)).map(|(_, kib)| *kib).collect();
        picked.iter().sum::<u64>() / picked.len().max(1) as u64
    };
    let secs = config.seconds;
    // A run shorter than the warm-up compares the whole run with its end.
    let warm = if secs > 60 { 60 } else { 0 };
    let early = mean(warm, warm + (secs - warm) / 4);
    let late = mean(secs - secs / 4, secs + 1);
    let peak = rss.iter().map(|(_, kib)| *kib).max().unwrap_or(0);
    let growth = late as f64 / early.max(1) as f64 - 1.0;
    let max_held = held.iter().map(|(_, total, _)| *total).max().unwrap_or(0);
    let max_expired = held.iter().map(|(_, _, expired)| *expired).max().unwrap_or(0);

    println!();
    println!(
        "| run | duration | requests (rate) | failures | logins | regulars logged out | app RSS after 1 min → last quarter (peak) | store: most records held (most past expiry) | emptied after the load |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} s | {} ({:.0}/s) | {} | {} | {} | {} → {} KiB ({:+.1}%; peak {} KiB) | {} ({}) | {} |",
        config.name,
        load_ended.as_secs(),
        requests,
        requests as f64 / load_ended.as_secs_f64(),
        failures,
        counters.logins.load(Ordering::Relaxed),
        logged_out,
        early,
        late,
        growth * 100.0,
        peak,
        max_held,
        max_expired,
        emptied.map_or("not within the bound".to_owned(), |d| format!("{:.0} s", d.as_secs_f64())),
    );

    let mut problems = Vec::new();
    if failures > 0 {
        problems.push(format!("{failures} requests failed"));
    }
    if logged_out > 0 {
        problems.push(format!("long-lived sessions were logged out {logged_out} times"));
    }
    if growth > 0.2 {
        problems.push(format!("the app's memory grew {:.0}%", growth * 100.0));
    }
    if emptied.is_none() {
        problems.push(format!("the store still held records {} s after the load", bound.as_secs()));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ").into()) }
}

/// One GET with `cookie`; the status, the body and the session cookie the
/// reply set (an empty value: the session ended).
async fn get(http: &Http, url: &str, cookie: Option<&str>) -> Result<(u16, String, Option<String>), Failure> {
    let mut request = hyper::Request::get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("session={cookie}"));
    }
    let response = http.request(request.body(Empty::new())?).await?;
    let status = response.status().as_u16();
    let set = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.strip_prefix("session="))
        .map(str::to_owned)
        .next_back();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned(), set))
}

/// Short visits, one after another: log in as one of [`USERS`], a few
/// reads and writes, then leave, abandoning the session to expire.
async fn visitors(
    http: Http,
    counters: Arc<Counters>,
    url: String,
    worker: u64,
    every: Duration,
    deadline: Instant,
) -> Result<(), Failure> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut visit, mut cookie, mut left) = (0u64, None::<String>, 0u32);
    while Instant::now() < deadline {
        tick.tick().await;
        let path = if left == 0 {
            visit += 1;
            cookie = None;
            left = 2 + (visit % 5) as u32;
            counters.logins.fetch_add(1, Ordering::Relaxed);
            format!("/login?u=user-{}", (worker * 7919 + visit) % USERS)
        } else {
            left -= 1;
            if left % 2 == 0 { "/write".to_owned() } else { "/".to_owned() }
        };
        let (status, _, set) = get(&http, &format!("{url}{path}"), cookie.as_deref()).await?;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if status != 200 {
            counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(set) = set {
            cookie = Some(set).filter(|c| !c.is_empty());
        }
    }
    Ok(())
}

/// A visitor who stays logged in the whole run, one request a second: its
/// session must never end while it is in use.
async fn regular(http: Http, counters: Arc<Counters>, url: String, i: usize, deadline: Instant) -> Result<(), Failure> {
    let user = format!("regular-{i}");
    let (_, _, set) = get(&http, &format!("{url}/login?u={user}"), None).await?;
    let mut cookie = set.ok_or("the login set no cookie")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < deadline {
        tick.tick().await;
        let (status, body, set) = get(&http, &format!("{url}/"), Some(&cookie)).await?;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if status != 200 {
            counters.failures.fetch_add(1, Ordering::Relaxed);
        } else if body != format!("user={user}") {
            counters.regulars_logged_out.fetch_add(1, Ordering::Relaxed);
            let (_, _, set) = get(&http, &format!("{url}/login?u={user}"), None).await?;
            cookie = set.ok_or("the login set no cookie")?;
            continue;
        }
        if let Some(set) = set.filter(|c| !c.is_empty()) {
            cookie = set;
        }
    }
    Ok(())
}

/// The app's resident memory, from /proc.
fn rss_kib(pid: u32) -> Result<u64, Failure> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS line")?;
    Ok(line.split_whitespace().nth(1).ok_or("no VmRSS value")?.parse()?)
}

/// Every record the store holds (sessions, and on Redis user indexes too),
/// and how many of the sessions are past their expiry.
async fn store_counts(store: &str) -> Result<(u64, u64), Failure> {
    if let Some(path) = store.strip_prefix("sqlite:") {
        let path = path.to_owned();
        return tokio::task::spawn_blocking(move || -> Result<(u64, u64), Failure> {
            let db = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            db.busy_timeout(Duration::from_secs(5))?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
            let (total, expired): (i64, i64) =
                db.query_row("SELECT count(*), coalesce(sum(expires_at <= ?1), 0) FROM sessions", [now], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            Ok((u64::try_from(total)?, u64::try_from(expired)?))
        })
        .await?;
    }
    // Redis expires sessions by itself: nothing it holds is past expiry.
    let mut conn = redis::Client::open(store)?.get_multiplexed_async_connection().await?;
    let total: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    Ok((total, 0))
}
