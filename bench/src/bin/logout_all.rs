//! How long "log out all my devices" takes on Redis for a user with 50
//! sessions, in a store of 10 000 and of 1 000 000 other sessions.
//!
//! ```text
//! bench-logout-all REDIS_URL [REPETITIONS]
//! ```
//!
//! The Redis at REDIS_URL is emptied first (`bench/run` gives it one of its
//! own). The other sessions are written straight into Redis, in the store's
//! layout: only their number matters, since logout-all reads the user's
//! index and never scans. Each repetition logs the user in 50 times through
//! multisession, then times one device's `logout_all_devices()` and the
//! commit that ends its own session: what the request does. Prints a
//! Markdown table of the median and the 90th percentile.

use std::error::Error;
use std::time::{Duration, Instant};

use multisession::store::RedisStore;
use multisession::{SessionConfig, Sessions};

type Failure = Box<dyn Error>;

const SESSIONS_OF_THE_USER: u64 = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first() else { return Err("usage: bench-logout-all REDIS_URL [REPETITIONS]".into()) };
    let repetitions: usize = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(200);
    let client = redis::Client::open(url.as_str())?;
    let mut raw = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHDB").arg("ASYNC").query_async::<()>(&mut raw).await?;

    println!("| other sessions in the store | logout-all of {SESSIONS_OF_THE_USER} sessions, median | p90 |");
    println!("|---:|---:|---:|");
    let mut stored = 0;
    for others in [10_000, 1_000_000] {
        fill(&mut raw, stored, others).await?;
        stored = others;
        let times = time_logout_all(url, repetitions).await?;
        println!("| {others} | {} | {} |", show(percentile(&times, 50)), show(percentile(&times, 90)));
    }
    redis::cmd("FLUSHDB").arg("ASYNC").query_async::<()>(&mut raw).await?;
    Ok(())
}

/// Writes sessions `from..to` of other users, each a hash like the store's
/// with a one-hour expiry, 10 000 to a pipeline.
async fn fill(raw: &mut redis::aio::MultiplexedConnection, from: usize, to: usize) -> Result<(), Failure> {
    for start in (from..to).step_by(10_000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 10_000).min(to) {
            let key = format!("session:s:{i:064x}");
            pipe.cmd("HSET").arg(&key).arg("_v").arg("1").arg("_user").arg(format!("other-{i}")).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(3_600_000).ignore();
        }
        pipe.query_async::<()>(raw).await?;
    }
    Ok(())
}

async fn time_logout_all(url: &str, repetitions: usize) -> Result<Vec<Duration>, Failure> {
    let sessions = Sessions::new(RedisStore::connect(url).await?, SessionConfig::default())?;
    let mut times = Vec::with_capacity(repetitions);
    for _ in 0..repetitions {
        let mut cookie = String::new();
        for _ in 0..SESSIONS_OF_THE_USER {
            let session = sessions.session([], Default::default());
            session.login("bench").await?;
            let mut commit = session.commit().await?;
            let set = commit.set_cookies.pop().ok_or("a login sets a cookie")?;
            cookie = set.split(';').next().unwrap_or_default().to_owned();
        }
        let device = sessions.session([cookie.as_bytes()], Default::default());
        let start = Instant::now();
        let ended = device.logout_all_devices().await?;
        device.commit().await?;
        times.push(start.elapsed());
        if ended != SESSIONS_OF_THE_USER {
            return Err(format!("logout_all_devices ended {ended} sessions, not {SESSIONS_OF_THE_USER}").into());
        }
    }
    Ok(times)
}

fn percentile(times: &[Duration], p: usize) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get((sorted.len().saturating_sub(1)) * p / 100).copied().unwrap_or_default()
}

fn show(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
