//! `multisession migrate`: every live session of one store, copied into
//! another under the same store key.

use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use multisession::store::Store;
use multisession::{ErrorKind, Record, StoreKey};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
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

    /// Copy only sessions created at or after this time (RFC 3339), as a
    /// first run prints it: for the run after the application has switched
    #[arg(long, value_name = "TIME")]
    created_after: Option<String>,

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
    refused: u64,
    /// Why the first refused session was refused.
    first_refusal: Option<String>,
}

pub(crate) async fn run(args: MigrateArgs, out: &Output) -> Result<(), Failure> {
    if args.from == args.to && args.from_prefix == args.to_prefix {
        return Err(Failure::usage("--from and --to name the same store: nothing to copy"));
    }
    let created_after =
        args.created_after.as_deref().map(|t| OffsetDateTime::parse(t, &Rfc3339)).transpose().map_err(|_| {
            Failure::usage("--created-after takes a time like 2026-12-02T15:04:05Z, as a first run prints it")
        })?;
    let from = crate::open_store(&args.from, args.from_prefix.as_deref(), "--from", false).await?;
    let to = crate::open_store(&args.to, args.to_prefix.as_deref(), "--to", true).await?;
    // What a second run passes as --created-after: when this walk began.
    // Not earlier: a session this run copies and the new store then logs
    // out must not be copied again.
    // Sessions record their times to the millisecond, so this is one too,
    // and a session made in the same millisecond counts as after it.
    let started = OffsetDateTime::now_utc();
    let started = started.replace_millisecond(started.millisecond()).unwrap_or(started);
    let next_after = crate::output::rfc3339(started);
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
    let walked = crate::walk(&*from, batch, reading, async |page| {
        tally.unreadable += page.unreadable;
        let wanted = page.sessions.into_iter().filter(|(_, record)| match created_after {
            Some(after) => record.meta.created_at >= after,
            None => true,
        });
        copy(&to, wanted.collect(), &mut tally).await;
        bar.set_message(format!("{} copied, {} already there", tally.copied, tally.present));
        Ok(())
    })
    .await;
    bar.finish_and_clear();
    walked?;
    out.print(
        json!({
            "copied": tally.copied,
            "already_there": tally.present,
            "expired_meanwhile": tally.expired,
            "unreadable": tally.unreadable,
            "refused": tally.refused,
            "next_created_after": next_after,
        }),
        || {
            pairs(&[
                ("copied", tally.copied.to_string()),
                ("already there", tally.present.to_string()),
                ("expired meanwhile", tally.expired.to_string()),
                ("unreadable (skipped)", tally.unreadable.to_string()),
                ("refused by --to", tally.refused.to_string()),
                ("next run", format!("--created-after {next_after}")),
            ])
        },
    );
    if tally.unreadable > 0 {
        eprintln!("multisession: warning: {} sessions in --from could not be read and were skipped", tally.unreadable);
    }
    if tally.copied + tally.present + tally.expired + tally.refused == 0 && created_after.is_none() {
        eprintln!("multisession: warning: --from holds no live sessions: check its URL and --from-prefix");
    }
    match tally.first_refusal {
        Some(first) => Err(Failure::new(format!(
            "--to refused {} sessions (the first: {first}); the others were copied",
            tally.refused
        ))),
        None => Ok(()),
    }
}

fn reading(e: multisession::Error) -> Failure {
    if e.kind() == ErrorKind::Unsupported {
        return Failure::new(format!("--from: {e}: sessions in this store cannot be migrated"));
    }
    Failure::new(format!("reading --from: {e}"))
}

/// Creates each session of a page in `to`, at most [`IN_FLIGHT`] at once.
/// A session already there (`Conflict`) is left alone, so a second run
/// copies only what the first did not; one the target refuses (too large
/// for it, say) is counted, and the others are still copied.
async fn copy(to: &Arc<dyn Store>, sessions: Vec<(StoreKey, Record)>, tally: &mut Tally) {
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
        let Some(done) = tasks.join_next().await else { return };
        match done {
            Ok(Ok(())) => tally.copied += 1,
            Ok(Err(e)) if e.kind() == ErrorKind::Conflict => tally.present += 1,
            Ok(Err(e)) => tally.refuse(e.to_string()),
            Err(e) => tally.refuse(format!("a copy task failed: {e}")),
        }
    }
}

impl Tally {
    fn refuse(&mut self, why: String) {
        self.refused += 1;
        self.first_refusal.get_or_insert(why);
    }
}
