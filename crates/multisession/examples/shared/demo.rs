//! What the demo serves, whichever framework serves it: the session set-up,
//! start-up from the environment, the forms, each page's logic and its HTML.
//! `demo.rs` (axum) and `demo_actix.rs` (actix-web) include this file with
//! `#[path]` and add only their route table, the mapping of an [`Answer`]
//! onto their response type, and `main`.
//!
//! Each page is an `async fn` from the request's [`Session`] (and its
//! decoded form) to an [`Answer`]: the state-changing ones check the form's
//! CSRF token with [`Session::verify_csrf_token`] first.

use std::error::Error as StdError;
use std::net::SocketAddr;

use multisession::store::{CookieStore, Store};
use multisession::{
    CSRF_TOKEN_KEY, DeviceSession, ErrorKind, Fields, Key, KeyRing, Result, Session, SessionConfig, SessionHandle,
    SessionSpec, Sessions,
};
use serde::Deserialize;
use time::{OffsetDateTime, UtcOffset};

/// The longest user id the login form accepts, in characters.
const MAX_USER_ID: usize = 64;

/// The demo's sessions: the login and everything else in `store`, and the
/// CSRF token in an encrypted cookie of its own, under a key made now.
pub(crate) fn sessions(store: impl Into<multisession::store::Backend>, config: SessionConfig) -> Result<Sessions> {
    let csrf = CookieStore::new(KeyRing::new(vec![Key::generate()])?);
    Sessions::from_specs([
        SessionSpec::new(csrf, config.clone().with_cookie_name("csrf")).with_fields(Fields::include([CSRF_TOKEN_KEY])),
        SessionSpec::new(store, config).with_fields(Fields::Auto),
    ])
}

// ---------------------------------------------------------------------------
// Start-up

/// What `main` serves, read from the environment.
pub(crate) struct Setup {
    /// Where to listen: `MULTISESSION_DEMO_ADDR`, default `127.0.0.1:3000`.
    pub(crate) addr: String,
    pub(crate) sessions: Sessions,
    /// The store's URL with any password hidden, for the start-up line.
    pub(crate) shown: String,
}

/// Sets up logging (`RUST_LOG`, default `info`), opens the store that
/// `MULTISESSION_STORE` names (default `sqlite://multisession-demo.db`) and
/// starts reclaiming its expired sessions.
///
/// # Errors
///
/// An address that is not Unicode, or a store that does not open.
pub(crate) async fn setup() -> std::result::Result<Setup, Box<dyn StdError>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let addr = match std::env::var("MULTISESSION_DEMO_ADDR") {
        Ok(addr) => addr,
        Err(std::env::VarError::NotPresent) => "127.0.0.1:3000".to_owned(),
        Err(e) => return Err(fatal(format!("MULTISESSION_DEMO_ADDR: {e}"))),
    };
    let url = std::env::var("MULTISESSION_STORE").unwrap_or_else(|_| "sqlite://multisession-demo.db".to_owned());
    let shown = multisession::store::redacted(&url);
    let store: std::sync::Arc<dyn Store> = multisession::store::open(&url, None)
        .await
        .map_err(|e| fatal(format!("cannot open the session store {shown}: {e}")))?;
    // The demo serves plain http on localhost, where browsers would drop a
    // `Secure` cookie; keep the default (`Secure`) behind https.
    let config = SessionConfig::default().with_secure(false);
    let sessions = sessions(store, config).map_err(|e| fatal(e.to_string()))?;
    // Expired sessions are never served; this reclaims their rows and
    // reports the expired logins. The task runs until the process ends.
    drop(sessions.spawn_cleanup(multisession::Duration::minutes(1)));
    Ok(Setup { addr, sessions, shown })
}

/// Prints the start-up lines, once the demo listens at `local`
/// (scripts/demo-smoke reads the address from the first).
pub(crate) fn announce(local: SocketAddr, shown: &str) {
    println!("multisession demo listening on http://{local} (sessions in {shown})");
    println!("note: the cookies are sent without `Secure` because the demo serves plain http");
    println!("note: the CSRF cookie's key was generated at start: forms from before a restart must be reloaded");
}

/// A start-up failure, which `main` reports as `Error: {message}`.
struct Fatal(String);

impl std::fmt::Debug for Fatal {
    // `main` prints its error with `Debug`: show the plain message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Fatal {}

/// A start-up failure saying `message`.
pub(crate) fn fatal(message: String) -> Box<dyn StdError> {
    Box::new(Fatal(message))
}

// ---------------------------------------------------------------------------
// Answers and forms

/// What a page answers, for each framework to turn into its response.
pub(crate) enum Answer {
    /// An HTML page.
    Page(Status, String),
    /// `303 See Other` to a path of the demo.
    SeeOther(&'static str),
}

/// The statuses the demo's pages answer with.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Status {
    Ok,
    BadRequest,
    Forbidden,
    NotFound,
}

/// What every state-changing form sends besides its own fields.
#[derive(Debug, Deserialize)]
pub(crate) struct Token {
    #[serde(default)]
    csrf_token: String,
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    user_id: String,
    /// Present (as `on`) when "Remember me" is checked.
    remember: Option<String>,
    #[serde(default)]
    csrf_token: String,
}

/// The revoke button's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct RevokeForm {
    #[serde(default)]
    handle: String,
    #[serde(default)]
    csrf_token: String,
}

// ---------------------------------------------------------------------------
// Pages

/// `GET /`: who is logged in, or a link to log in.
pub(crate) async fn index(session: Session) -> Result<Answer> {
    let Some(user) = session.user().await? else {
        let body = r#"<h1>Please log in</h1>
<p>You are not logged in on this device.</p>
<p><a class="button primary" href="/login">Log in</a></p>"#;
        return Ok(Answer::Page(Status::Ok, page("Welcome", None, body)));
    };
    let remembered = if session.is_permanent().await? {
        "This device is remembered: you stay logged in after closing the browser."
    } else {
        "You stay logged in until you close the browser."
    };
    let shown = escape(&user);
    let token = token_field(&session).await?;
    let body = format!(
        r#"<h1>Hello, you are logged in as {shown}</h1>
<p class="muted">{remembered}</p>
<div class="actions">
  <a class="button primary" href="/devices">Your devices</a>
  <form method="post" action="/logout">{token}<button type="submit">Log out</button></form>
  <form method="post" action="/logout_all_devices">{token}<button type="submit" class="danger">Log out from all devices</button></form>
</div>
<p class="hint">Sign in as {shown} from another browser or a private window too, then open <a href="/devices">Your devices</a>.</p>"#
    );
    Ok(Answer::Page(Status::Ok, page("Home", Some(&user), &body)))
}

/// The hidden field that carries the session's CSRF token in a form.
async fn token_field(session: &Session) -> Result<String> {
    let token = session.csrf_token().await?;
    Ok(format!(r#"<input type="hidden" name="csrf_token" value="{}">"#, escape(&token)))
}

/// Checks a form's CSRF token: `None` if it is this session's, else the
/// page that says the form was refused.
async fn refused(session: &Session, token: &str) -> Result<Option<Answer>> {
    match session.verify_csrf_token(token).await {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == ErrorKind::Forbidden => {
            let user = session.user().await?;
            let body = r#"<h1>That form has expired</h1>
<p>It was sent from an old page or from another site, so nothing was changed.</p>
<p><a class="button" href="/">Back to the start</a></p>"#;
            Ok(Some(Answer::Page(Status::Forbidden, page("Refused", user.as_deref(), body))))
        }
        Err(e) => Err(e),
    }
}

/// `GET /login`: the login form.
pub(crate) async fn login_form(session: Session) -> Result<Answer> {
    let user = session.user().await?;
    let page = login_page(&session, user.as_deref(), None, "", false).await?;
    Ok(Answer::Page(Status::Ok, page))
}

/// `POST /login`: logs in as the form's user id, remembered if asked; a bad
/// id shows the form again with a `400`.
pub(crate) async fn login(session: Session, form: LoginForm) -> Result<Answer> {
    if let Some(refusal) = refused(&session, &form.csrf_token).await? {
        return Ok(refusal);
    }
    let user_id = form.user_id.trim();
    let remember = form.remember.is_some();
    let problem = if user_id.is_empty() {
        Some("Enter a user id.".to_owned())
    } else if user_id.chars().count() > MAX_USER_ID {
        Some(format!("A user id is at most {MAX_USER_ID} characters."))
    } else if user_id.chars().any(char::is_control) {
        Some("A user id cannot contain control characters.".to_owned())
    } else {
        None
    };
    if let Some(problem) = problem {
        let current = session.user().await?;
        let page = login_page(&session, current.as_deref(), Some(&problem), user_id, remember).await?;
        return Ok(Answer::Page(Status::BadRequest, page));
    }
    session.login(user_id).await?;
    session.set_permanent(remember).await?;
    Ok(Answer::SeeOther("/"))
}

/// `POST /logout`: logs this device out.
pub(crate) async fn logout(session: Session, form: Token) -> Result<Answer> {
    if let Some(refusal) = refused(&session, &form.csrf_token).await? {
        return Ok(refusal);
    }
    session.logout().await?;
    Ok(Answer::SeeOther("/"))
}

/// `POST /logout_all_devices`: logs the user out everywhere.
pub(crate) async fn logout_all_devices(session: Session, form: Token) -> Result<Answer> {
    if let Some(refusal) = refused(&session, &form.csrf_token).await? {
        return Ok(refusal);
    }
    session.logout_all_devices().await?;
    Ok(Answer::SeeOther("/"))
}

/// `POST /logout_other_devices`: logs the user out everywhere but here.
pub(crate) async fn logout_other_devices(session: Session, form: Token) -> Result<Answer> {
    if let Some(refusal) = refused(&session, &form.csrf_token).await? {
        return Ok(refusal);
    }
    let ended = session.logout_other_devices().await?;
    if session.user().await?.is_some() {
        let message = match ended {
            0 => "There were no other devices to log out.".to_owned(),
            1 => "Logged out 1 other device.".to_owned(),
            n => format!("Logged out {n} other devices."),
        };
        session.insert(FLASH, message).await?;
    }
    Ok(Answer::SeeOther("/devices"))
}

/// The session key of a one-time message for the devices page.
const FLASH: &str = "flash";

/// `GET /devices`: the user's sessions, one row per device.
pub(crate) async fn devices(session: Session) -> Result<Answer> {
    let Some(user) = session.user().await? else {
        return Ok(Answer::SeeOther("/login"));
    };
    // Most recently active first, as listed, but this device on top.
    let mut devices = session.devices().await?;
    devices.sort_by_key(|d| !d.current);
    let flash = session.remove(FLASH).await?;
    let now = OffsetDateTime::now_utc();
    let token = token_field(&session).await?;

    let shown = escape(&user);
    let count = match devices.len() {
        1 => "1 device".to_owned(),
        n => format!("{n} devices"),
    };
    let mut body = format!("<h1>Your devices</h1>\n<p class=\"muted\">{shown} is logged in on {count}.</p>\n");
    if let Some(message) = flash.as_ref().and_then(|v| v.as_str()) {
        body.push_str(&format!("<p class=\"notice\" role=\"status\">{}</p>\n", escape(message)));
    }
    body.push_str(
        "<div class=\"table-wrap\"><table>\n<thead><tr><th>Device</th><th>IP address</th>\
         <th class=\"when\">Signed in</th><th class=\"when\">Last active</th><th><span class=\"sr-only\">Action</span></th></tr></thead>\n<tbody>\n",
    );
    for device in &devices {
        body.push_str(&device_row(device, now, &token));
    }
    body.push_str("</tbody>\n</table></div>\n");
    let others = devices.iter().any(|d| !d.current);
    let disabled = if others { "" } else { " disabled" };
    body.push_str(&format!(
        r#"<div class="actions">
  <form method="post" action="/logout_other_devices">{token}<button type="submit" class="danger"{disabled}>Log out other devices</button></form>
  <a class="button" href="/">Back</a>
</div>"#
    ));
    Ok(Answer::Page(Status::Ok, page("Your devices", Some(&user), &body)))
}

/// One row of the devices table; `token` is the forms' CSRF field.
fn device_row(device: &DeviceSession, now: OffsetDateTime, token: &str) -> String {
    let agent = device.device.user_agent.as_deref();
    let name = escape(&device.device.describe());
    let full = escape(agent.unwrap_or("no User-Agent sent"));
    let ip = device.device.ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let mut tags = String::new();
    if device.current {
        tags.push_str(r#"<span class="badge">this device</span>"#);
    }
    if device.permanent {
        tags.push_str(r#"<span class="badge subtle">remembered</span>"#);
    }
    if !tags.is_empty() {
        tags = format!(r#"<div class="tags">{tags}</div>"#);
    }
    let action = if device.current {
        String::new()
    } else {
        format!(
            r#"<form method="post" action="/devices/revoke">{token}<input type="hidden" name="handle" value="{}"><button type="submit" class="small">Revoke</button></form>"#,
            escape(&device.handle.to_string())
        )
    };
    let row_class = if device.current { r#" class="current""# } else { "" };
    format!(
        "<tr{row_class}><td><span class=\"device\" title=\"{full}\">{name}</span>{tags}</td><td class=\"mono\">{ip}</td>\
         <td class=\"when\">{}</td><td class=\"when\">{}<div class=\"muted small\">{}</div></td><td class=\"action\">{action}</td></tr>\n",
        format_time(device.created_at),
        format_time(device.last_active_at),
        time_ago(device.last_active_at, now),
    )
}

/// `POST /devices/revoke`: logs out the device the form's `handle` names,
/// if it is one of this user's.
pub(crate) async fn revoke(session: Session, form: RevokeForm) -> Result<Answer> {
    if let Some(refusal) = refused(&session, &form.csrf_token).await? {
        return Ok(refusal);
    }
    let Ok(handle) = form.handle.parse::<SessionHandle>() else {
        let user = session.user().await?;
        let body = r#"<h1>Bad request</h1>
<p>That is not a device of this account.</p>
<p><a class="button" href="/devices">Back to your devices</a></p>"#;
        return Ok(Answer::Page(Status::BadRequest, page("Bad request", user.as_deref(), body)));
    };
    if session.revoke(&handle).await? && session.user().await?.is_some() {
        session.insert(FLASH, "The device was logged out.").await?;
    }
    Ok(Answer::SeeOther("/devices"))
}

/// Any other path.
pub(crate) async fn not_found() -> Answer {
    let body = r#"<h1>Not found</h1>
<p>There is no such page.</p>
<p><a class="button" href="/">Home</a></p>"#;
    Answer::Page(Status::NotFound, page("Not found", None, body))
}

// ---------------------------------------------------------------------------
// HTML

/// The login page, with an error `message` and the values to re-show.
async fn login_page(
    session: &Session,
    current: Option<&str>,
    message: Option<&str>,
    user_id: &str,
    remember: bool,
) -> Result<String> {
    let token = token_field(session).await?;
    let mut body = String::from("<h1>Log in</h1>\n");
    if let Some(current) = current {
        body.push_str(&format!(
            "<p class=\"muted\">You are logged in as {}. Logging in again switches user on this device.</p>\n",
            escape(current)
        ));
    }
    if let Some(message) = message {
        body.push_str(&format!("<p class=\"error\" role=\"alert\">{}</p>\n", escape(message)));
    }
    let checked = if remember { " checked" } else { "" };
    body.push_str(&format!(
        r#"<form method="post" action="/login" class="stack">
  {token}
  <label for="user_id">User id</label>
  <input id="user_id" name="user_id" type="text" value="{}" maxlength="{MAX_USER_ID}" required autofocus autocomplete="username">
  <label class="check"><input type="checkbox" name="remember"{checked}> Remember me</label>
  <div><button type="submit" class="primary">Log in</button></div>
</form>
<p class="hint">There is no password: any id will do, such as <code>23</code>.</p>"#,
        escape(user_id)
    ));
    Ok(page("Log in", current, &body))
}

/// The shared layout around `body` (HTML); `title` and the logged-in `user`
/// are text, escaped here.
fn page(title: &str, user: Option<&str>, body: &str) -> String {
    let who = user.map_or_else(String::new, |u| format!("<span>logged in as {}</span>", escape(u)));
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · multisession demo</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<header><a href="/">multisession demo</a>{who}</header>
{body}
</main>
</body>
</html>
"#,
        title = escape(title),
    )
}

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg: #1f2328; --muted: #656d76; --line: #d8dee4; --bg: #fff;
  --soft: #f6f8fa; --accent: #0969da; --danger: #cf222e; --ok: #1a7f37; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --muted: #9198a1; --line: #30363d;
  --bg: #0d1117; --soft: #161b22; --accent: #4493f8; --danger: #f85149; --ok: #3fb950; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.55;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 42rem; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; }
header { display: flex; justify-content: space-between; gap: 1rem; padding-bottom: .75rem;
  margin-bottom: 2rem; border-bottom: 1px solid var(--line); color: var(--muted); font-size: .9rem; }
header a { color: inherit; text-decoration: none; font-weight: 600; letter-spacing: .01em; }
h1 { font-size: 1.6rem; line-height: 1.25; margin: 0 0 .5rem; overflow-wrap: anywhere; }
p { margin: 0 0 1rem; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.small { font-size: .85rem; }
.hint { color: var(--muted); font-size: .9rem; margin-top: 2rem; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
  padding: .1rem .3rem; border-radius: 4px; }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: 1.5rem 0; }
form { margin: 0; }
button, .button { display: inline-block; font: inherit; font-size: .95rem; line-height: 1.2;
  padding: .55rem 1rem; border-radius: 6px; border: 1px solid var(--line); background: var(--soft);
  color: var(--fg); text-decoration: none; cursor: pointer; }
button:hover, .button:hover { border-color: var(--muted); }
button:focus-visible, .button:focus-visible, input:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
.primary:hover { border-color: var(--accent); filter: brightness(1.08); }
.danger { color: var(--danger); }
button.small { font-size: .85rem; padding: .3rem .7rem; }
button:disabled { opacity: .5; cursor: default; border-color: var(--line); }
.stack { display: flex; flex-direction: column; gap: .5rem; max-width: 22rem; margin: 1.5rem 0; }
.stack > div { margin-top: .5rem; }
label { font-weight: 600; font-size: .95rem; }
label.check { font-weight: normal; display: flex; gap: .5rem; align-items: center; }
input[type=text] { font: inherit; padding: .5rem .65rem; border: 1px solid var(--line); border-radius: 6px;
  background: var(--bg); color: var(--fg); }
.error, .notice { padding: .6rem .85rem; border-radius: 6px; border: 1px solid; }
.error { color: var(--danger); border-color: var(--danger); }
.notice { color: var(--ok); border-color: var(--ok); }
.table-wrap { overflow-x: auto; margin: 1.5rem 0; }
table { width: 100%; min-width: 36rem; border-collapse: collapse; font-size: .9rem; }
th { text-align: left; font-weight: 600; color: var(--muted); font-size: .75rem; text-transform: uppercase;
  letter-spacing: .04em; padding: .5rem .6rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
td { padding: .7rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
tr.current td { background: var(--soft); }
td.action { text-align: right; padding-top: .5rem; }
th.when { width: 7.25rem; }
td.mono { overflow-wrap: anywhere; }
.device { font-weight: 500; }
.tags { display: flex; flex-wrap: wrap; gap: .3rem; margin-top: .3rem; }
.badge { display: inline-block; font-size: .72rem; font-weight: 600; padding: .05rem .5rem;
  border-radius: 999px; background: var(--accent); color: #fff; white-space: nowrap; }
.badge.subtle { background: transparent; color: var(--muted); border: 1px solid var(--line); }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
"#;

/// Escapes `text` for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A timestamp as `2026-11-25 14:03 UTC`.
pub(crate) fn format_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", at.year(), u8::from(at.month()), at.day(), at.hour(), at.minute())
}

/// How long before `now` `at` was, roughly: `just now`, `5 minutes ago`.
fn time_ago(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (now - at).whole_seconds().max(0);
    let (n, unit) = match seconds {
        0..60 => return "just now".to_owned(),
        60..3_600 => (seconds / 60, "minute"),
        3_600..86_400 => (seconds / 3_600, "hour"),
        _ => (seconds / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    format!("{n} {unit}{plural} ago")
}
