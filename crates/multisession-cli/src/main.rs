//! `multisession`, the admin command line of the multisession library: see
//! and revoke users' sessions, inspect one, count and clean a store, and
//! move every session to another backend without logging anyone out.
//!
//! It works on the store an application uses, named by URL (`--store`) or
//! by the application's TOML configuration (`--config`). It prints tables
//! for people and JSON (`--json`) for scripts; a failure is one line on
//! standard error and a non-zero exit code.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::{Args, Parser, Subcommand};
use multisession::store::{PageCursor, SessionsPage, Store};
use multisession::{AuditKind, DeviceSession, ErrorKind, SessionConfig, SessionHandle, Sessions};
use serde_json::{Value, json};
use time::OffsetDateTime;

mod migrate;
mod output;

use output::{Output, shorten, when};

const EXAMPLES: &str = "\
Examples:
  multisession users 23 list --store sqlite://sessions.db
  multisession revoke 0123456789abcdef.MjM --store redis://127.0.0.1:6379
  multisession stats --config multisession.toml --json
  multisession migrate --from sqlite://sessions.db --to redis://10.0.0.5:6379

Store URLs: sqlite://PATH, postgres://…, mysql://… (or mariadb://), redis://HOST:PORT[/DB],
rediss://… (TLS), redis+cluster://HOST:PORT,HOST:PORT,…, memcached://HOST:PORT,…,
mongodb://…/DATABASE, firestore://HOST:PORT/PROJECT (the emulator),
dynamodb://HOST:PORT/TABLE (DynamoDB Local).";

/// See and manage the sessions of a multisession application.
#[derive(Parser)]
#[command(name = "multisession", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// Print JSON instead of a table, for scripts
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// Which store the command works on.
#[derive(Args)]
struct Target {
    /// The store, as a URL (`multisession --help` lists them)
    #[arg(long, value_name = "URL", global = true, conflicts_with = "config")]
    store: Option<String>,

    /// The application's TOML configuration; the store of its login part is used
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    /// The key prefix the application gives `--store` (SQL, Redis, Memcached)
    #[arg(long, value_name = "PREFIX", global = true, conflicts_with = "config")]
    key_prefix: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// List one user's sessions, or log the user out
    Users {
        #[command(flatten)]
        target: Target,
        /// The user id, as the application logged it in
        user: String,
        #[command(subcommand)]
        action: UserAction,
    },
    /// Log out the one session a handle names (`users <USER> list` shows handles)
    Revoke {
        #[command(flatten)]
        target: Target,
        /// The session's handle, like 0123456789abcdef.MjM
        handle: String,
    },
    /// Show one session's user, device and times; its data only with --show-data
    Inspect {
        #[command(flatten)]
        target: Target,
        /// The session's handle, like 0123456789abcdef.MjM
        handle: String,
        /// Also print the session's data (it may hold personal information)
        #[arg(long)]
        show_data: bool,
    },
    /// Count the live sessions, logged-in users and permanent sessions (reads every session)
    Stats {
        #[command(flatten)]
        target: Target,
    },
    /// Delete expired sessions now and say how many, naming each expired login on standard error (stores that expire them natively delete none)
    Gc {
        #[command(flatten)]
        target: Target,
    },
    /// Copy every live session to another store, keeping ids, users, devices, times and data
    #[command(long_about = "Copy every live session to another store, keeping ids, users, devices, times and \
        data, so that an application switched to the new store keeps its users logged in.\n\n\
        Sessions keep their ids and expiries; a session already in the target is left as it is. Run it \
        once, switch the application to the new store, then run it again with the --created-after time \
        the first run printed: that copies the sessions created in between and nothing older, so that \
        no session logged out on the new store comes back. Changes made in the old store to sessions \
        already copied are not carried over. A plain re-run before the switch finishes an interrupted \
        copy. The times are this host's clock and the application's: keep them in step. Memcached cannot \
        list its sessions, so it cannot be migrated from.")]
    Migrate(migrate::MigrateArgs),
}

#[derive(Subcommand)]
enum UserAction {
    /// A table of the user's sessions: handle, device, IP, created, last active and expires
    List,
    /// Log the user out on every device, or on every device but one
    Revoke {
        /// The session to keep, by handle
        #[arg(long, value_name = "HANDLE")]
        keep: Option<String>,
    },
}

/// Why a command failed: one line for the user, and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// A failure of the command (exit code 1).
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }

    /// A mistake in the command line (exit code 2, as clap's own).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }
}

impl From<multisession::Error> for Failure {
    fn from(e: multisession::Error) -> Self {
        match e.kind() {
            ErrorKind::Usage | ErrorKind::Config => Self::usage(e.to_string()),
            _ => Self::new(e.to_string()),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("multisession: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let out = Output::new(cli.json);
    match cli.command {
        Command::Migrate(args) => migrate::run(args, &out).await,
        Command::Users { target, user, action: UserAction::List } => list(&open(&target).await?, &user, &out).await,
        Command::Users { target, user, action: UserAction::Revoke { keep } } => {
            revoke_user(&open(&target).await?, &user, keep.as_deref(), &out).await
        }
        Command::Revoke { target, handle } => {
            let sessions = open(&target).await?;
            let handle = parse_handle(&handle)?;
            if !sessions.revoke(&handle).await? {
                return Err(Failure::new(format!("no live session has the handle {handle}")));
            }
            out.print(json!({ "revoked": handle.to_string() }), || format!("revoked {handle}"));
            Ok(())
        }
        Command::Inspect { target, handle, show_data } => {
            let sessions = open(&target).await?;
            inspect(&sessions, &parse_handle(&handle)?, show_data, &out).await
        }
        Command::Stats { target } => stats(&*open(&target).await?.login_store()?, &out).await,
        Command::Gc { target } => gc(open(&target).await?, &out).await,
    }
}

/// Deletes expired sessions. Each expired login the store can name is one
/// line on standard error as it is found, an audit trail for cron's mail or
/// a log file; standard output says how many.
async fn gc(sessions: Sessions, out: &Output) -> Result<(), Failure> {
    let logins = Arc::new(AtomicU64::new(0));
    let counted = logins.clone();
    let sessions = sessions.on_audit(move |event| {
        if event.kind == AuditKind::Expired {
            counted.fetch_add(1, Ordering::Relaxed);
            let handle = event.handle.as_ref().map(ToString::to_string).unwrap_or_default();
            eprintln!(
                "expired: user {} session {handle} ({}) at {}",
                shorten(&event.user, 64),
                shorten(&event.device.describe(), 64),
                when(event.at)
            );
        }
    });
    let deleted = sessions.delete_expired().await?;
    let logins = logins.load(Ordering::Relaxed);
    out.print(json!({ "deleted": deleted, "expired_logins": logins }), || {
        format!("deleted {deleted} expired sessions ({logins} of them logged in)")
    });
    Ok(())
}

/// The store a URL names, with the message saying which URL failed (its
/// password hidden).
/// A SQLite store is created where it is missing, which is right for
/// `migrate --to` only: anywhere else a missing file is a mistyped path.
pub(crate) async fn open_store(
    url: &str,
    prefix: Option<&str>,
    flag: &str,
    create: bool,
) -> Result<Arc<dyn Store>, Failure> {
    if url.starts_with("memory://") {
        return Err(Failure::usage(format!(
            "{flag} memory://: a memory store lives inside its application's process, out of this command's reach"
        )));
    }
    if let Some(path) = url.strip_prefix("sqlite://")
        && !create
        && !std::path::Path::new(path.split('?').next().unwrap_or(path)).exists()
    {
        return Err(Failure::usage(format!("{flag} {url}: there is no SQLite file at {path}")));
    }
    multisession::store::open(url, prefix).await.map_err(|e| {
        let failure = Failure::from(e);
        let shown = multisession::store::redacted(url);
        Failure { code: failure.code, message: format!("{flag} {shown}: {}", failure.message) }
    })
}

/// The application's sessions, from `--store` or `--config`.
async fn open(target: &Target) -> Result<Sessions, Failure> {
    match (&target.store, &target.config) {
        (Some(url), _) => {
            let store = open_store(url, target.key_prefix.as_deref(), "--store", false).await?;
            Ok(Sessions::new(store, SessionConfig::default())?)
        }
        (None, Some(path)) => Ok(Sessions::from_config_file(path).await?),
        (None, None) => Err(Failure::usage("name the store: --store URL or --config FILE (see --help)")),
    }
}

fn parse_handle(text: &str) -> Result<SessionHandle, Failure> {
    text.parse().map_err(|_| {
        Failure::usage(format!(
            "`{}` is not a session handle: `users <USER> list` shows them, like 0123456789abcdef.MjM",
            output::shorten(text, 40)
        ))
    })
}

async fn list(sessions: &Sessions, user: &str, out: &Output) -> Result<(), Failure> {
    let devices = sessions.user_sessions(user).await?;
    let rows: Vec<Value> = devices.iter().map(device_json).collect();
    out.print(json!({ "user": user, "sessions": rows }), || {
        if devices.is_empty() {
            return format!("user {user} has no live sessions");
        }
        let header = ["HANDLE", "DEVICE", "IP", "CREATED", "LAST ACTIVE", "EXPIRES"];
        let body = devices.iter().map(|d| {
            vec![
                d.handle.to_string(),
                output::shorten(d.device.user_agent.as_deref().unwrap_or("-"), 60),
                d.device.ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                when(d.created_at),
                when(d.last_active_at),
                when(d.expires_at),
            ]
        });
        output::table(&header, body)
    });
    Ok(())
}

fn device_json(d: &DeviceSession) -> Value {
    json!({
        "handle": d.handle.to_string(),
        "user_agent": d.device.user_agent,
        "ip": d.device.ip.map(|ip| ip.to_string()),
        "created_at": output::rfc3339(d.created_at),
        "last_active_at": output::rfc3339(d.last_active_at),
        "expires_at": output::rfc3339(d.expires_at),
        "permanent": d.permanent,
    })
}

async fn revoke_user(sessions: &Sessions, user: &str, keep: Option<&str>, out: &Output) -> Result<(), Failure> {
    let ended = match keep {
        None => sessions.clear_user_sessions(user).await?,
        Some(keep) => {
            let keep = parse_handle(keep)?;
            match sessions.clear_user_sessions_except(user, &keep).await {
                Err(e) if e.kind() == ErrorKind::Gone => {
                    return Err(Failure::new(format!("user {user} has no live session with the handle {keep}")));
                }
                ended => ended?,
            }
        }
    };
    out.print(json!({ "user": user, "ended": ended }), || format!("logged out {ended} sessions of user {user}"));
    Ok(())
}

async fn inspect(sessions: &Sessions, handle: &SessionHandle, show_data: bool, out: &Output) -> Result<(), Failure> {
    let store = sessions.login_store()?;
    let missing = || Failure::new(format!("no live session has the handle {handle}"));
    let info = store.user_sessions(handle.user()).await?.into_iter().find(|s| handle.matches(&s.key));
    let info = info.ok_or_else(missing)?;
    let record = store.load(&info.key).await?.ok_or_else(missing)?;
    let meta = &record.meta;
    let parts: Vec<&str> = meta.siblings.keys().map(String::as_str).collect();
    let mut doc = json!({
        "handle": handle.to_string(),
        "user": handle.user(),
        "user_agent": meta.device.user_agent,
        "ip": meta.device.ip.map(|ip| ip.to_string()),
        "created_at": output::rfc3339(meta.created_at),
        "last_active_at": output::rfc3339(meta.last_active_at),
        "expires_at": output::rfc3339(meta.expires_at),
        "absolute_expires_at": meta.absolute_expires_at.map(output::rfc3339),
        "permanent": meta.permanent,
        "other_parts": parts,
        "data_keys": record.data.len(),
    });
    if show_data {
        doc["data"] = Value::Object(record.data.clone());
    }
    out.print(doc, || {
        let mut lines = vec![
            ("handle", handle.to_string()),
            ("user", handle.user().to_owned()),
            ("device", meta.device.user_agent.clone().unwrap_or_else(|| "-".to_owned())),
            ("ip", meta.device.ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string())),
            ("created", when(meta.created_at)),
            ("last active", when(meta.last_active_at)),
            ("expires", when(meta.expires_at)),
            ("absolute expiry", meta.absolute_expires_at.map_or_else(|| "none".to_owned(), when)),
            ("permanent", if meta.permanent { "yes" } else { "no" }.to_owned()),
            ("other parts", if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }),
        ];
        if show_data {
            // JSON escapes every control character inside its strings, so
            // only the layout's own newlines reach the terminal.
            let data = serde_json::to_string_pretty(&record.data).unwrap_or_default();
            format!("{}\ndata:\n{data}", output::pairs(&lines))
        } else {
            lines.push(("data", format!("{} keys (--show-data prints them)", record.data.len())));
            output::pairs(&lines)
        }
    });
    Ok(())
}

/// The most distinct users `stats` tells apart: past it, memory would grow
/// with the store, so the count becomes a lower bound.
const MAX_COUNTED_USERS: usize = 1_000_000;

/// What a walk of the whole store counts.
#[derive(Default)]
struct Counts {
    sessions: u64,
    logged_in: u64,
    permanent: u64,
    unreadable: u64,
    users: HashSet<String>,
    /// Whether users beyond [`MAX_COUNTED_USERS`] were met.
    more_users: bool,
}

async fn stats(store: &dyn Store, out: &Output) -> Result<(), Failure> {
    let now = OffsetDateTime::now_utc();
    let mut counts = Counts::default();
    walk(
        store,
        1_000,
        |e| Failure::new(format!("reading the store: {e}")),
        async |page| {
            counts.unreadable += page.unreadable;
            for (_, record) in &page.sessions {
                counts.sessions += 1;
                counts.permanent += u64::from(record.meta.permanent);
                if let Some(user) = &record.meta.user_id {
                    counts.logged_in += 1;
                    if counts.users.len() < MAX_COUNTED_USERS {
                        counts.users.insert(user.clone());
                    } else if !counts.users.contains(user) {
                        counts.more_users = true;
                    }
                }
            }
            Ok(())
        },
    )
    .await?;
    let anonymous = counts.sessions.saturating_sub(counts.logged_in);
    let users = counts.users.len();
    let shown_users = if counts.more_users { format!("at least {users}") } else { users.to_string() };
    out.print(
        json!({
            "sessions": counts.sessions,
            "logged_in": counts.logged_in,
            "anonymous": anonymous,
            "users": users,
            "users_is_lower_bound": counts.more_users,
            "permanent": counts.permanent,
            "unreadable": counts.unreadable,
            "counted_at": output::rfc3339(now),
        }),
        || {
            output::pairs(&[
                ("live sessions", counts.sessions.to_string()),
                ("logged in", counts.logged_in.to_string()),
                ("anonymous", anonymous.to_string()),
                ("users", shown_users.clone()),
                ("permanent", counts.permanent.to_string()),
                ("unreadable", counts.unreadable.to_string()),
            ])
        },
    );
    Ok(())
}

/// Walks every page of `store`, `limit` sessions at a time, handing each to
/// `each`; store errors become failures through `reading`. Refuses a store
/// whose cursor does not move, so that no walk can loop for ever.
pub(crate) async fn walk(
    store: &dyn Store,
    limit: usize,
    reading: impl Fn(multisession::Error) -> Failure,
    mut each: impl AsyncFnMut(SessionsPage) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut cursor: Option<PageCursor> = None;
    loop {
        let mut page = store.sessions_page(cursor.as_ref(), limit).await.map_err(&reading)?;
        let next = page.next.take();
        each(page).await?;
        match next {
            Some(next) if cursor.as_ref() == Some(&next) => {
                return Err(Failure::new("the store's walk does not move on from one page (a bug in the store)"));
            }
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}
