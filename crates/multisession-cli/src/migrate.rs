//! `multisession migrate`: every live session of one store, copied into
//! another under the same store key.

use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use multisession::store::{PageCursor, Store};
use multisession::{ErrorKind, Record, StoreKey};
use serde_json::json;
use time::OffsetDateTime;
use tokio::task::JoinSet;

use crate::Failure;
use crate::output::{Output, pairs};

/// How many sessions are written to the target at once.
const IN_FLIGHT: usize = 32;

#[derive(Args)]
pub(crate) struct MigrateArgs {
    /// The store to copy from, as a URL
    #[arg(long, value_name = "URL")]
    from: String,

    /// The store to copy into, as a URL
    #[arg(long, value_name = "URL")]
    to: String,

    /// The key prefix the application gives the store it copies from
    #[arg(long, value_name = "PREFIX")]
    from_prefix: Option<String>,

    /// The key prefix the application will give the store it copies into
    #[arg(long, value_name = "PREFIX")]
    to_prefix: Option<String>,

    /// Sessions read per page
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=multisession::store::MAX_PAGE as i64))]
    batch: u32,
}

/// What a migration did.
#[derive(Default)]
struct Tally {
    copied: u64,
    present: u64,
    expired: u64,
    unreadable: u64,
}

pub(crate) async fn run(args: MigrateArgs, out: &Output) -> Result<(), Failure> {
    if args.from == args.to && args.from_prefix == args.to_prefix {
        return Err(Failure::usage("--from and --to name the same store: nothing to copy"));
    }
    let from = crate::open_store(&args.from, args.from_prefix.as_deref(), "--from", false).await?;
    let to = crate::open_store(&args.to, args.to_prefix.as_deref(), "--to", true).await?;
    // A spinner on a terminal; indicatif draws nothing when standard error
    // is not one (a script, a pipe).
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));

    let batch = usize::try_from(args.batch).unwrap_or(multisession::store::MAX_PAGE);
    let mut tally = Tally::default();
    let mut cursor: Option<PageCursor> = None;
    let result = loop {
        let page = match from.sessions_page(cursor.as_ref(), batch).await {
            Ok(page) => page,
            Err(e) => break Err(reading(e)),
        };
        tally.unreadable += page.unreadable;
        if let Err(failure) = copy(&to, page.sessions, &mut tally).await {
            break Err(failure);
        }
        bar.set_message(format!("{} copied, {} already there", tally.copied, tally.present));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break Ok(()),
        }
    };
    bar.finish_and_clear();
    result?;
    out.print(
        json!({
            "copied": tally.copied,
            "already_there": tally.present,
            "expired_meanwhile": tally.expired,
            "unreadable": tally.unreadable,
        }),
        || {
            pairs(&[
                ("copied", tally.copied.to_string()),
                ("already there", tally.present.to_string()),
                ("expired meanwhile", tally.expired.to_string()),
                ("unreadable (skipped)", tally.unreadable.to_string()),
            ])
        },
    );
    Ok(())
}

fn reading(e: multisession::Error) -> Failure {
    if e.kind() == ErrorKind::Unsupported {
        return Failure::new(format!("--from: {e}: sessions in this store cannot be migrated"));
    }
    Failure::new(format!("reading --from: {e}"))
}

/// Creates each session of a page in `to`, at most [`IN_FLIGHT`] at once.
/// A session already there (`Conflict`) is left alone, so a second run
/// copies only what the first did not.
async fn copy(to: &Arc<dyn Store>, sessions: Vec<(StoreKey, Record)>, tally: &mut Tally) -> Result<(), Failure> {
    let mut tasks = JoinSet::new();
    let mut pending = sessions.into_iter();
    loop {
        while tasks.len() < IN_FLIGHT {
            let Some((key, record)) = pending.next() else { break };
            if record.meta.expires_at <= OffsetDateTime::now_utc() {
                tally.expired += 1;
                continue;
            }
            let to = Arc::clone(to);
            tasks.spawn(async move { to.create(&key, &record).await });
        }
        let Some(done) = tasks.join_next().await else { return Ok(()) };
        match done.map_err(|e| Failure::new(format!("a copy task failed: {e}")))? {
            Ok(()) => tally.copied += 1,
            Err(e) if e.kind() == ErrorKind::Conflict => tally.present += 1,
            Err(e) => return Err(Failure::new(format!("writing --to: {e}"))),
        }
    }
}
