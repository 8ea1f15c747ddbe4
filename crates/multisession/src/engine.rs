//! Load and commit for one request. No framework types: adapters hand in
//! cookie header values and device facts and write out a [`Commit`].
//!
//! A request's session is made of parts (one per [`SessionSpec`]); the single
//! session of a simple application is one part that keeps every key. Each
//! part loads on first use and commits on its own, so a request that touches
//! only one part's keys costs only that part — unless it gives a server part
//! a new key or ends it, which the part keeping the login then records.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::audit::{Audit, AuditEvent, AuditKind};
use crate::config::{IdCarrier, IncomingId, Limit, MAX_CANDIDATES};
use crate::fields::Routing;
use crate::record::now;
use crate::store::{Backend, CookieStore, SessionInfo, Store, Traced};
use crate::{
    Change, Device, Error, ErrorKind, Meta, OnLimit, Record, Result, SessionConfig, SessionHandle, SessionId,
    SessionLimit, SessionSpec, StoreKey, USER_ID_KEY,
};

/// How many times ending a user's sessions lists them again before it gives
/// up on sessions that keep appearing (see [`Engine::end_user_sessions`]).
const END_ROUNDS: usize = 4;

/// How long a session replaced by a login or an id change leaves a mark
/// behind (see [`PartState::mint`]): longer than a request stays in flight.
const REPLACED_MARK_LIFETIME: time::Duration = time::Duration::seconds(60);

/// Where the mark of the replaced session `key` lives: a derived key no
/// session id hashes to, holding an anonymous record whose one field names
/// the session that replaced it ([`REPLACED_BY`]).
fn replaced_mark(key: &StoreKey) -> StoreKey {
    StoreKey::derive("multisession.replaced.v1", &key.to_string())
}

/// The field of a replaced mark that holds the replacing session's key.
const REPLACED_BY: &str = "replaced_by";

/// How many replacements a late login follows from the session its cookie
/// named (see [`PartState::replacers`]).
const REPLACED_HOPS: usize = 4;

/// One configured part: its cookie and lifetimes, and its backend.
pub(crate) struct Part {
    pub(crate) config: SessionConfig,
    pub(crate) backend: Backend,
    /// The cap on a user's sessions, on the server part that keeps the login.
    pub(crate) limit: Option<SessionLimit>,
}

impl Part {
    pub(crate) fn is_server(&self) -> bool {
        matches!(self.backend, Backend::Server(_))
    }
}

/// The parts, their routing, and which part keeps the login.
pub(crate) struct Engine {
    pub(crate) parts: Vec<Part>,
    pub(crate) routing: Routing,
    pub(crate) user_part: Option<usize>,
    /// The application's lifecycle hooks.
    pub(crate) audit: Audit,
}

impl Engine {
    /// Checks a configuration once, at start-up, and builds the engine.
    pub(crate) fn new(specs: Vec<SessionSpec>) -> Result<Self> {
        if specs.is_empty() {
            return Err(Error::config("session: configure at least one session part"));
        }
        let name = |i: usize| specs[i].config.cookie_name.clone();
        for (i, spec) in specs.iter().enumerate() {
            spec.config.validate().map_err(|e| e.context(format_args!("session `{}`", name(i))))?;
            if let Some(j) = (0..i).find(|&j| specs[j].config.cookie_name == spec.config.cookie_name) {
                return Err(Error::config(format!(
                    "cookie_name: sessions {} and {} both use the cookie `{}`; give each part its own",
                    j + 1,
                    i + 1,
                    name(i)
                )));
            }
            if matches!(spec.backend, Backend::Cookie(_)) && spec.config.signing_keys.is_some() {
                return Err(Error::config(format!(
                    "session `{}`: signed_id: a cookie-store part is encrypted and authenticated already; \
                     remove signed_id",
                    name(i)
                )));
            }
        }
        let routing = Routing::new(specs.iter().map(|s| s.fields.clone()).collect());
        if let Some((auto, by)) = routing.starved_auto() {
            return Err(Error::config(format!(
                "session `{}`: fields = auto has no keys left: session `{}` keeps all the others",
                name(auto),
                name(by)
            )));
        }
        if let Some((part, key)) = routing.homeless() {
            return Err(Error::config(format!(
                "session `{}`: the excluded key `{key}` is kept by no part: add it to a part's fields or add an \
                 auto part",
                name(part)
            )));
        }
        let owners: Vec<usize> = routing.owners(USER_ID_KEY).collect();
        if owners.len() > 1 {
            let names: Vec<String> = owners.iter().map(|&i| format!("`{}`", name(i))).collect();
            return Err(Error::config(format!(
                "fields: the key `{USER_ID_KEY}` is kept by sessions {}; the login must live in exactly one part",
                names.join(" and ")
            )));
        }
        let user_part = owners.first().copied();
        if let Some(u) = user_part.filter(|&u| matches!(specs[u].backend, Backend::Server(_))) {
            // A device's server parts are read together (each names the
            // login's session as its owner), so the browser must send their
            // cookies together.
            let login = &specs[u].config;
            for (i, spec) in
                specs.iter().enumerate().filter(|(i, s)| *i != u && matches!(s.backend, Backend::Server(_)))
            {
                let part = &spec.config;
                let differs = [
                    ("path", part.path != login.path),
                    ("domain", part.domain != login.domain),
                    ("same_site", part.same_site != login.same_site),
                    ("secure", part.secure != login.secure),
                ];
                if let Some((field, _)) = differs.iter().find(|(_, differs)| *differs) {
                    return Err(Error::config(format!(
                        "session `{}`: {field}: a server-side part is read together with the login's part `{}`, \
                         so the browser must send both cookies together: give it the same {field}",
                        name(i),
                        name(u)
                    )));
                }
            }
        }
        if let Some(u) = user_part.filter(|&u| matches!(specs[u].backend, Backend::Cookie(_)))
            && let Some(server) = specs.iter().position(|s| matches!(s.backend, Backend::Server(_)))
        {
            // Logging out everywhere must end every part of every device, and
            // only a server-side login part can record where they live.
            return Err(Error::config(format!(
                "session `{}`: fields: the login (`{USER_ID_KEY}`) is in the cookie part `{}`, so logging out \
                 everywhere could not end this server-side part on other devices; keep `{USER_ID_KEY}` in a \
                 server-side part",
                name(server),
                name(u)
            )));
        }
        for (i, spec) in specs.iter().enumerate() {
            let can_index = match &spec.backend {
                Backend::Server(_) => true,
                Backend::Cookie(cookie) => cookie.revocable(),
            };
            if spec.fields.names(USER_ID_KEY) && !can_index {
                return Err(Error::config(format!(
                    "session `{}`: fields: the key `{USER_ID_KEY}` needs a part that can index users: a server-side \
                     store, or a cookie store with a revocation store",
                    name(i)
                )));
            }
            let servers = specs.iter().filter(|s| matches!(s.backend, Backend::Server(_)));
            let mut with_header = servers.map(|s| s.config.id_header.is_some());
            if with_header.clone().any(|h| h) && !with_header.all(|h| h) {
                return Err(Error::config(format!(
                    "session `{}`: id_header: give every server-side part an id header, or none: a client that \
                     carries its ids in headers could not carry the others'",
                    name(i)
                )));
            }
            if spec.config.id_header.is_some() && !matches!(spec.backend, Backend::Server(_)) {
                return Err(Error::config(format!(
                    "session `{}`: id_header: only a server-side part's id can travel in a header; a cookie store's \
                     session is the cookie itself",
                    name(i)
                )));
            }
            let headers = specs.iter().filter_map(|s| s.config.id_header.as_ref());
            if spec.config.id_header.as_ref().is_some_and(|h| headers.filter(|o| o.name == h.name).count() > 1) {
                return Err(Error::config(format!(
                    "session `{}`: id_header: another part reads the same header; give each part its own",
                    name(i)
                )));
            }
            let caps_users = Some(i) == user_part && spec.backend.keeps_user_index();
            if matches!(spec.config.session_limit, Limit::Set(_)) && !caps_users {
                return Err(Error::config(format!(
                    "session `{}`: max_sessions_per_user applies to the server-side part that keeps `{USER_ID_KEY}`",
                    name(i)
                )));
            }
        }
        let parts = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let caps_users = Some(i) == user_part && spec.backend.keeps_user_index();
                let limit = match spec.config.session_limit {
                    Limit::Set(limit) => Some(limit),
                    Limit::Default if caps_users => Some(SessionLimit::DEFAULT),
                    Limit::Default | Limit::Unlimited => None,
                };
                Part {
                    config: spec.config,
                    backend: match spec.backend {
                        Backend::Server(store) => Backend::Server(Arc::new(Traced(store))),
                        cookie => cookie,
                    },
                    limit,
                }
            })
            .collect();
        Ok(Self { parts, routing, user_part, audit: Audit::default() })
    }

    /// The request headers that may carry a part's id, lowercase.
    pub(crate) fn id_headers(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| p.config.id_header.as_ref()).map(|h| h.name.as_str())
    }

    /// A request's state, from its `Cookie` header values, read as bytes:
    /// a cookie of another application that is not UTF-8 (or not even
    /// ASCII) is skipped on its own and never hides ours; and, for a part
    /// whose id may travel in a header ([`IdHeader`](crate::IdHeader)), from
    /// that header's values (`header` gives them by lowercase name). Reads
    /// nothing.
    pub(crate) fn start<'a>(
        &self,
        cookies: impl IntoIterator<Item = &'a [u8]>,
        header: &dyn Fn(&str) -> Vec<&'a [u8]>,
    ) -> State {
        let mut values: Vec<Vec<Cow<'a, str>>> = self.parts.iter().map(|_| Vec::new()).collect();
        for pair in cookies.into_iter().flat_map(|header| header.split(|&b| b == b';')) {
            if let Some((i, value)) = self.our_cookie(pair) {
                values[i].push(value);
            }
        }
        let parts = self
            .parts
            .iter()
            .zip(values)
            .map(|(part, values)| match (&part.backend, &part.config.id_header) {
                (Backend::Server(_), None) => {
                    let present = !values.is_empty();
                    PartState::new(part.config.read_ids(values.iter().map(|v| &**v)), Vec::new(), present)
                }
                (Backend::Server(_), Some(id_header)) => {
                    let sent: Vec<&str> = header(&id_header.name)
                        .into_iter()
                        .filter_map(|value| std::str::from_utf8(value).ok())
                        .filter_map(|value| id_header.id_text(value))
                        .collect();
                    let cookies: Vec<&str> =
                        if id_header.cookie { values.iter().map(|v| &**v).collect() } else { Vec::new() };
                    let mut by_header = part.config.read_ids(sent.iter().copied());
                    by_header.iter_mut().for_each(|id| id.by_header = true);
                    let by_cookie = part.config.read_ids(cookies.iter().copied());
                    let ordered = match id_header.winner {
                        IdCarrier::Header => by_header.into_iter().chain(by_cookie),
                        IdCarrier::Cookie => by_cookie.into_iter().chain(by_header),
                    };
                    let mut incoming: Vec<IncomingId> = Vec::new();
                    for id in ordered {
                        if incoming.len() < MAX_CANDIDATES && !incoming.iter().any(|known| known.id == id.id) {
                            incoming.push(id);
                        }
                    }
                    let mut state = PartState::new(incoming, Vec::new(), !cookies.is_empty());
                    state.header_sent = !sent.is_empty();
                    state.header_only = !id_header.cookie;
                    state
                }
                (Backend::Cookie(_), _) => {
                    let present = !values.is_empty();
                    PartState::new(Vec::new(), values.into_iter().map(Cow::into_owned).collect(), present)
                }
            })
            .collect();
        State { parts, late_over: None, pending: Vec::new() }
    }

    /// Which part a `name=value` pair of a `Cookie` header is for, and its
    /// value: split and trimmed as the `cookie` crate parses a pair, name
    /// and value percent-decoded, and only for pairs named like one of the
    /// parts (another application's cookies cost a comparison, and one that
    /// is not UTF-8 is passed over alone).
    fn our_cookie<'a>(&self, pair: &'a [u8]) -> Option<(usize, Cow<'a, str>)> {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let decoded = |bytes: &'a [u8]| -> Option<Cow<'a, str>> {
            let bytes = bytes.trim_ascii();
            if bytes.contains(&b'%') {
                percent_encoding::percent_decode(bytes).decode_utf8().ok()
            } else {
                std::str::from_utf8(bytes).ok().map(Cow::Borrowed)
            }
        };
        let name = decoded(&pair[..eq])?;
        let i = self.parts.iter().position(|part| part.config.cookie_name == name)?;
        Some((i, decoded(&pair[eq + 1..])?))
    }

    /// The part that keeps the login, or a usage error saying how to add one.
    pub(crate) fn user_part(&self) -> Result<usize> {
        self.user_part.ok_or_else(|| {
            Error::usage(format!("no session part keeps `{USER_ID_KEY}`: add it to one part's fields to log users in"))
        })
    }

    /// The user part's server store, or `Unsupported` for a cookie part.
    pub(crate) fn user_store(&self) -> Result<&Arc<dyn Store>> {
        match &self.parts[self.user_part()?].backend {
            Backend::Server(store) => Ok(store),
            Backend::Cookie(_) => Err(Error::unsupported(
                "the login lives in a cookie session part, which keeps no list of a user's sessions; keep \
                 user_id in a server-side part to list or revoke devices",
            )),
        }
    }

    /// Whether a device's session can span several server parts, whose keys
    /// the user part then records ([`Meta::siblings`]).
    pub(crate) fn has_siblings(&self) -> bool {
        self.parts.iter().filter(|p| p.is_server()).count() > 1
    }

    /// The server store of the part whose cookie is `name`.
    fn store_named(&self, name: &str) -> Option<&Arc<dyn Store>> {
        self.parts.iter().find(|p| p.config.cookie_name == name).and_then(|p| match &p.backend {
            Backend::Server(store) => Some(store),
            Backend::Cookie(_) => None,
        })
    }

    /// Deletes a device's other server parts, as its user part lists them.
    pub(crate) async fn delete_siblings(&self, siblings: &BTreeMap<String, StoreKey>) -> Result<()> {
        for (name, key) in siblings {
            if let Some(store) = self.store_named(name) {
                store.delete(key).await?;
            }
        }
        Ok(())
    }

    /// Replaces, by login part `u`'s new session `by`, the sessions a late
    /// login found had replaced its device's ([`State::late_over`]):
    /// those of the same user are marked and deleted with their other
    /// parts. Another user's are left alone, so an old id cannot end
    /// someone else's login. This only spares the user a stray session, so
    /// a failure is logged, not an error: the login has committed.
    async fn replace_late(&self, u: usize, over: &[StoreKey], by: &StoreKey, user: Option<&str>) {
        let Backend::Server(store) = &self.parts[u].backend else { return };
        for key in over.iter().filter(|&key| key != by) {
            let ended = async {
                let Some(record) = store.load(key).await? else { return Ok(()) };
                if record.meta.user_id.is_none() || record.meta.user_id.as_deref() != user {
                    return Ok(());
                }
                leave_replaced_mark(&**store, key, by, now()).await;
                store.delete(key).await?;
                self.delete_siblings(&record.meta.siblings).await
            };
            if let Err(e) = ended.await {
                tracing::warn!(error = %e, "a session replaced by a later login could not be ended");
            }
        }
    }

    /// Ends one device's session: the session that keeps the login first
    /// (a commit of that device still under way then finds it gone and
    /// drops what it made), then its other parts. Whether it was live.
    pub(crate) async fn end_device(&self, info: &SessionInfo) -> Result<bool> {
        let live = self.user_store()?.delete(&info.key).await?;
        self.delete_siblings(&info.siblings).await?;
        Ok(live)
    }

    /// Ends every session of `user` except `keep`, with their other parts:
    /// through the user index, or by moving a cookie part's revocation
    /// generation. How many ended (a cookie part cannot count them: 0), and
    /// the new generation if one was moved.
    pub(crate) async fn end_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<(u64, Option<u64>)> {
        let part = &self.parts[self.user_part()?];
        match &part.backend {
            Backend::Server(store) => {
                // A store that lists, then deletes, can miss a session that
                // an id change made in between (the change found its old
                // session still live, so it keeps the new one); a device's
                // other parts can move the same way. So the sessions are
                // listed again after each round, until none but `keep` is
                // left: a change that lands later finds its old session gone
                // and takes its new one back (`PartState::mint`).
                let others = |listed: Vec<SessionInfo>| -> Vec<SessionInfo> {
                    listed.into_iter().filter(|info| Some(&info.key) != keep).collect()
                };
                let mut listed =
                    if self.has_siblings() { others(store.user_sessions(user).await?) } else { Vec::new() };
                let mut ended = 0u64;
                for _ in 0..END_ROUNDS {
                    // Each device's login session first, then its other parts.
                    ended = ended.saturating_add(store.delete_user_sessions(user, keep).await?);
                    for info in &listed {
                        self.delete_siblings(&info.siblings).await?;
                    }
                    listed = others(store.user_sessions(user).await?);
                    if listed.is_empty() {
                        return Ok((ended, None));
                    }
                }
                Err(Error::new(
                    ErrorKind::Conflict,
                    "the user's sessions kept changing while they were being ended; try again",
                ))
            }
            Backend::Cookie(cookie) => {
                let keep_for = part.config.lifetime.max(part.config.permanent_lifetime);
                Ok((0, Some(cookie.bump(user, keep_for).await?)))
            }
        }
    }
}

/// What an adapter must do to the response after the handler ran. Its
/// `Debug` names the cookies but never shows their values.
///
/// ```
/// let commit = multisession::Commit {
///     set_cookies: vec!["session=s3cret; Path=/".into()],
///     headers: vec![("x-auth-token".into(), "s3cret".into())],
///     ..Default::default()
/// };
/// assert!(!format!("{commit:?}").contains("s3cret"));
/// assert!(!multisession::Commit::default().vary_cookie);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// `Set-Cookie` header values to add, one per part whose cookie changed.
    pub set_cookies: Vec<String>,
    /// Whether the response depended on the session: add `Vary: Cookie`.
    pub vary_cookie: bool,
    /// Other response headers to add (append), name and value: an id
    /// answered in a header ([`IdHeader`](crate::IdHeader)) with its `Vary`,
    /// and `Clear-Site-Data` after a logout
    /// ([`SessionConfig::with_clear_site_data`](crate::SessionConfig::with_clear_site_data)).
    pub headers: Vec<(String, String)>,
}

/// Names the cookies only: their values are session ids and sealed sessions.
impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> =
            self.set_cookies.iter().map(|c| c.split_once('=').map_or("", |(name, _)| name)).collect();
        let headers: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Commit")
            .field("set_cookies", &names)
            .field("vary_cookie", &self.vary_cookie)
            .field("headers", &headers)
            .finish()
    }
}

/// One request's parts.
pub(crate) struct State {
    pub(crate) parts: Vec<PartState>,
    /// For a login: the sessions that replaced this device's moments ago
    /// (see [`State::late_over`]), once looked up.
    late_over: Option<Vec<StoreKey>>,
    /// Audit events of this request, emitted once its commit succeeds.
    pub(crate) pending: Vec<AuditEvent>,
}

impl State {
    /// Loads part `i` if this is its first use.
    pub(crate) async fn load(&mut self, engine: &Engine, i: usize) -> Result<&mut PartState> {
        if !self.parts[i].loaded {
            let owner = self.owner_of(engine, i).await?;
            self.parts[i].load(engine, i, owner.as_ref()).await?;
        }
        Ok(&mut self.parts[i])
    }

    /// Loads every part.
    pub(crate) async fn load_all(&mut self, engine: &Engine) -> Result<()> {
        for i in 0..self.parts.len() {
            self.load(engine, i).await?;
        }
        Ok(())
    }

    /// The owner a session of server part `i` must name to be this
    /// device's, when another server part keeps the login: that part's
    /// session if the device is logged in, none if it is not (the login
    /// part is read first, once per request).
    ///
    /// A server part of a logged-in device records the session that keeps
    /// its login (in [`Meta::siblings`], under the login part's cookie name)
    /// and lives only as long as that session does. Once the login has
    /// ended (logged out everywhere, revoked, evicted, replaced by an id
    /// change) the part is no session, whether or not an ender reached it;
    /// and a cookie planted beside a login, naming a session of someone
    /// else's, is passed over.
    async fn owner_of(&mut self, engine: &Engine, i: usize) -> Result<Option<Owner>> {
        let Some(u) = engine.user_part.filter(|&u| u != i && engine.parts[u].is_server()) else { return Ok(None) };
        if !engine.parts[i].is_server() || self.parts[i].incoming.is_empty() {
            return Ok(None);
        }
        self.parts[u].load(engine, u, None).await?;
        let login = &self.parts[u];
        let key = login.stored_key().filter(|_| login.user.is_some());
        Ok(Some(Owner { name: engine.parts[u].config.cookie_name.clone(), key }))
    }

    /// Writes what the request changed. Cookie parts go first: a cookie
    /// that cannot be sent fails the request before any store is written.
    /// Server parts then pick their keys (a new id for a new session or an
    /// id change), so that the part keeping the login can record where the
    /// device's other parts live. Those other parts are written first, the
    /// sessions they replace kept until the login part has committed: if it
    /// fails (a refused login) what they made is deleted again and the old
    /// ones stay; if the device's login was ended meanwhile, all of it goes.
    pub(crate) async fn commit(&mut self, engine: &Engine, device: &Device) -> Result<Commit> {
        let mut commit =
            Commit { set_cookies: Vec::new(), vary_cookie: self.parts.iter().any(|p| p.loaded), headers: Vec::new() };
        for (part, state) in engine.parts.iter().zip(&self.parts) {
            if let Some(header) = part.config.id_header.as_ref().filter(|_| state.loaded) {
                commit.headers.push(("vary".to_owned(), header.name.clone()));
            }
        }
        for (part, state) in engine.parts.iter().zip(&mut self.parts) {
            if let Backend::Cookie(cookie) = &part.backend {
                commit.set_cookies.extend(state.commit_cookie(&part.config, cookie)?);
            }
        }
        let servers: Vec<usize> = (0..self.parts.len()).filter(|&i| engine.parts[i].is_server()).collect();
        for &i in &servers {
            self.parts[i].prepare()?;
        }
        if self.replaced_beside(engine, &servers).await {
            tracing::info!(
                "the device's session was replaced by a login beside this request; its changes were dropped"
            );
            return Ok(commit);
        }
        let siblings = self.siblings(engine).await?;
        let user = engine.user_part.filter(|u| servers.contains(u));
        let owner = user.filter(|_| engine.has_siblings()).and_then(|u| self.owner_after_commit(engine, u));
        let mut others = Vec::new();
        for &i in servers.iter().filter(|&&i| Some(i) != user) {
            let outcome = self.parts[i].commit_server(&engine.parts[i], device, owner.as_ref(), user.is_some()).await?;
            others.push((i, outcome));
        }
        let mut ended = false;
        let server_answers_from = (commit.set_cookies.len(), commit.headers.len());
        let mut minted = None;
        let mut won = false;
        if let Some(u) = user {
            // A login whose other parts lost their sessions to a request
            // beside it (a login there, or a logout everywhere) gives way, as
            // it would had its own part lost.
            let lost = others.iter().any(|(_, outcome)| outcome.ended_elsewhere) && self.parts[u].next.is_some();
            let next = self.parts[u].next.as_ref().map(SessionId::store_key);
            if let Some(next) = next.filter(|_| !lost && self.parts[u].cycle == Some(Cycle::Login)) {
                // Before the new session is made, so that the user's cap
                // does not count the sessions it replaces.
                let over = self.late_over(engine, u).await;
                engine.replace_late(u, &over, &next, self.parts[u].user.as_deref()).await;
            }
            let committed = if lost {
                Ok(ended_elsewhere())
            } else {
                self.parts[u].commit_server(&engine.parts[u], device, siblings.as_ref(), false).await
            };
            match committed {
                Ok(outcome) => {
                    for info in &outcome.evicted {
                        // The store evicted it: reported whatever follows.
                        let handle = SessionHandle::of(&info.user_id, &info.key);
                        let event = AuditEvent::new(AuditKind::Evicted, &info.user_id, Some(handle), &info.device, 1);
                        engine.audit.emit(&event);
                    }
                    for info in &outcome.evicted {
                        engine.delete_siblings(&info.siblings).await?;
                    }
                    ended = outcome.ended_elsewhere;
                    minted = outcome.minted.map(|key| (u, key));
                    won = outcome.won;
                    commit.add(outcome.answer);
                }
                Err(e) => {
                    for (i, outcome) in &others {
                        engine.parts[*i].delete_all(outcome.minted.iter()).await?;
                    }
                    return Err(e);
                }
            }
        }
        let mut replaced_beside = false;
        for (i, outcome) in &others {
            let part = &engine.parts[*i];
            if ended {
                // The device's login was ended by another request: so is the
                // rest of its session, what this request made included.
                let stored = self.parts[*i].stored_key();
                part.delete_all(outcome.minted.iter().chain(&outcome.replaced).chain(&stored)).await?;
            } else {
                if let Some(old) = &outcome.replaced {
                    // Already gone: a request beside this one replaced it
                    // too (both passed the check before either deleted it),
                    // unless this one won the login part's own replace.
                    replaced_beside |= !part.delete(old).await? && !won;
                }
                commit.add(outcome.answer.clone());
            }
        }
        if replaced_beside {
            // The other request keeps the device; what this one made goes.
            tracing::info!(
                "the device's session was replaced by a login beside this request; its changes were dropped"
            );
            for (i, outcome) in others.iter().map(|(i, o)| (*i, o.minted)).chain(minted.map(|(u, key)| (u, Some(key))))
            {
                engine.parts[i].delete_all(outcome.iter()).await?;
            }
            commit.set_cookies.truncate(server_answers_from.0);
            commit.headers.truncate(server_answers_from.1);
            return Ok(commit);
        }
        if let Some(u) = engine.user_part.filter(|&u| !ended && self.parts[u].cycle == Some(Cycle::Login))
            && let Some(user) = &self.parts[u].user
        {
            let handle = minted.map(|(_, key)| SessionHandle::of(user, &key));
            self.pending.push(AuditEvent::new(AuditKind::Login, user, handle, device, 0));
        }
        let logged_out = engine.parts.iter().zip(&self.parts).any(|(p, s)| p.config.clear_site_data && s.logged_out());
        if logged_out {
            commit.headers.push(("clear-site-data".to_owned(), "\"cookies\"".to_owned()));
        }
        Ok(commit)
    }

    /// Whether a request beside this one replaced the device's session (a
    /// login or an id change) after this one read it, so that this one
    /// found nothing to load and would start a session of its own or clear
    /// the cookie. Such a request gives way: otherwise a slower tab's fresh
    /// anonymous session, or its cleared cookie, can log the browser out.
    /// Costs one read per cookie id of each part that found no session
    /// where its cookie named one.
    ///
    /// A login never gives way: a double-submitted login form whose first
    /// answer the browser dropped must still log in (it replaces the first
    /// login's session in turn, see [`State::late_over`]).
    async fn replaced_beside(&self, engine: &Engine, servers: &[usize]) -> bool {
        if self.parts.iter().any(|p| p.cycle == Some(Cycle::Login)) {
            return false;
        }
        for &i in servers {
            if let Backend::Server(store) = &engine.parts[i].backend
                && self.parts[i].starts_afresh()
                && self.parts[i].named_a_replaced_session(&**store).await
            {
                return true;
            }
        }
        false
    }

    /// For a login that read the device's session only after a login beside
    /// it had replaced it (a double-submitted form, two tabs): the sessions
    /// that replaced it, which this login replaces in turn just before it
    /// makes its own ([`Engine::replace_late`]), so that the user is left
    /// with one, and which a cap check does not count
    /// ([`PartState::login`]). A login never gives way: the browser may
    /// have dropped the other one's answer. Looked up once per request.
    ///
    /// Any server part whose session was replaced leads there: the login
    /// part's marks name the login sessions directly, another part's name
    /// sessions that record their login ([`Meta::siblings`]).
    pub(crate) async fn late_over(&mut self, engine: &Engine, u: usize) -> Vec<StoreKey> {
        if let Some(over) = &self.late_over {
            return over.clone();
        }
        let mut over = Vec::new();
        let login_name = &engine.parts[u].config.cookie_name;
        for (i, (part, state)) in engine.parts.iter().zip(&self.parts).enumerate() {
            let Backend::Server(store) = &part.backend else { continue };
            if !state.starts_afresh() {
                continue;
            }
            for key in state.replacers(&**store).await {
                let login = if i == u {
                    Some(key)
                } else {
                    match store.load(&key).await {
                        Ok(record) => record.and_then(|r| r.meta.siblings.get(login_name).copied()),
                        Err(e) => {
                            tracing::warn!(error = %e, "a session that replaced this device's could not be read");
                            None
                        }
                    }
                };
                if let Some(login) = login.filter(|login| !over.contains(login)) {
                    over.push(login);
                }
            }
        }
        self.late_over = Some(over.clone());
        over
    }

    /// What a server part other than the login's records as its owner after
    /// the commit (see [`State::owner_of`]): the login session's key if
    /// the device will be logged in, nothing if it will be anonymous; `None`
    /// when this request did not load the login part (the recorded owner
    /// stays).
    fn owner_after_commit(&self, engine: &Engine, u: usize) -> Option<BTreeMap<String, StoreKey>> {
        let login = &self.parts[u];
        let key = login.key_after_commit()?.filter(|_| login.user.is_some());
        Some(key.map(|key| BTreeMap::from([(engine.parts[u].config.cookie_name.clone(), key)])).unwrap_or_default())
    }

    /// Where this device's other server parts will live after the commit,
    /// for the user part to record; `None` when it has nothing to record.
    /// A part this request did not load keeps its recorded key.
    async fn siblings(&mut self, engine: &Engine) -> Result<Option<BTreeMap<String, StoreKey>>> {
        let Some(u) = engine.user_part.filter(|_| engine.has_siblings()) else { return Ok(None) };
        if !matches!(engine.parts[u].backend, Backend::Server(_)) {
            return Ok(None);
        }
        let moved = (0..self.parts.len()).any(|i| i != u && self.parts[i].key_moves());
        if !moved && !self.parts[u].loaded {
            return Ok(None);
        }
        let recorded = self.load(engine, u).await?.current.as_ref().map(|c| c.meta.siblings.clone());
        let mut siblings = recorded.unwrap_or_default();
        for (i, (part, state)) in engine.parts.iter().zip(&self.parts).enumerate() {
            if i == u || !matches!(part.backend, Backend::Server(_)) {
                continue;
            }
            match state.key_after_commit() {
                None => {}
                Some(Some(key)) => {
                    siblings.insert(part.config.cookie_name.clone(), key);
                }
                Some(None) => {
                    siblings.remove(&part.config.cookie_name);
                }
            }
        }
        Ok(Some(siblings))
    }
}

/// The login session a server part's session must name ([`State::owner_of`]).
pub(crate) struct Owner {
    /// The login part's cookie name, under which parts record it.
    name: String,
    /// The login's session, or `None` for a device that is not logged in.
    key: Option<StoreKey>,
}

impl Owner {
    fn owns(&self, meta: &Meta) -> bool {
        meta.siblings.get(&self.name) == self.key.as_ref()
    }
}

/// Marks `old` as replaced by `by` (a login or an id change) for
/// [`REPLACED_MARK_LIFETIME`], before it is deleted, so that a request still
/// carrying its id gives way ([`State::replaced_beside`]). The mark
/// only spares the browser a stray session, so failing to leave it is logged,
/// not an error; a mark already there (two requests replaced `old` at once,
/// and one will give way) is fine.
async fn leave_replaced_mark(store: &dyn Store, old: &StoreKey, by: &StoreKey, now: OffsetDateTime) -> bool {
    let mark = Record {
        data: Map::from_iter([(REPLACED_BY.to_owned(), Value::String(by.to_string()))]),
        meta: Meta {
            user_id: None,
            created_at: now,
            last_active_at: now,
            expires_at: crate::config::later(now, REPLACED_MARK_LIFETIME),
            absolute_expires_at: None,
            permanent: false,
            device: Device::default(),
            siblings: BTreeMap::new(),
        },
    };
    match store.create(&replaced_mark(old), &mark).await {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::Conflict => false,
        Err(e) => {
            tracing::warn!(error = %e, "the mark of a replaced session could not be stored");
            true
        }
    }
}

/// How a part answers the client its id: a `Set-Cookie` value, or a header
/// (name, value) for a client that carries its id in one.
#[derive(Clone)]
enum Answer {
    Cookie(String),
    Header(String, String),
    /// Drop the id from every carrier the request used: the cookie
    /// expired, the header answered empty.
    Removal(Option<String>, Option<String>),
}

impl Commit {
    fn add(&mut self, answer: Option<Answer>) {
        match answer {
            Some(Answer::Cookie(cookie)) => self.set_cookies.push(cookie),
            Some(Answer::Header(name, value)) => {
                // A response holding an id in a header is no one else's:
                // caches treat `Set-Cookie` so, not a header of ours.
                if !self.headers.iter().any(|(n, _)| n == "cache-control") {
                    self.headers.push(("cache-control".to_owned(), "no-store".to_owned()));
                }
                self.headers.push((name, value));
            }
            Some(Answer::Removal(cookie, header)) => {
                self.set_cookies.extend(cookie);
                self.headers.extend(header.map(|name| (name, String::new())));
            }
            None => {}
        }
    }
}

/// What committing one server part did.
#[derive(Default)]
struct Outcome {
    /// The id to answer (a cookie or a header), if it changed.
    answer: Option<Answer>,
    /// The sessions a login evicted to stay within the user's cap.
    evicted: Vec<SessionInfo>,
    /// The session this request loaded was ended by another request.
    ended_elsewhere: bool,
    /// The key of the session this commit created, if it created one.
    minted: Option<StoreKey>,
    /// The session the new one replaces, left for the caller to delete.
    replaced: Option<StoreKey>,
    /// This commit replaced a session and deleted it itself: no request
    /// beside it got there first.
    won: bool,
}

impl Part {
    /// Deletes `key` of this part's store; whether a live session was there.
    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        match &self.backend {
            Backend::Server(store) => store.delete(key).await,
            Backend::Cookie(_) => Ok(false),
        }
    }

    /// Deletes these keys of this part's store.
    async fn delete_all(&self, keys: impl Iterator<Item = &StoreKey>) -> Result<()> {
        if let Backend::Server(store) = &self.backend {
            for key in keys {
                store.delete(key).await?;
            }
        }
        Ok(())
    }
}

/// The outcome of a commit whose session was ended by another request: its
/// changes are dropped and no cookie is sent (the browser may already hold
/// a newer one, from a request that ran beside this one; a dead cookie is
/// cleared by the next request that meets it).
fn ended_elsewhere() -> Outcome {
    tracing::info!("session ended elsewhere during the request; its changes were dropped");
    Outcome { ended_elsewhere: true, ..Outcome::default() }
}

/// The session as stored when this request loaded it.
pub(crate) struct Current {
    /// Its id and store key; `None` for a cookie part, whose cookie is the record.
    pub(crate) stored: Option<(SessionId, StoreKey)>,
    pub(crate) meta: Meta,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cycle {
    Login,
    Rotate,
}

/// One part of one request: what was loaded and what the request changed.
pub(crate) struct PartState {
    /// A server part's verified ids from its cookies, in the order sent.
    incoming: Vec<IncomingId>,
    /// A cookie part's cookie values, opened on load.
    raw: Vec<String>,
    cookie_present: bool,
    /// The request carried the part's id header (with any value).
    header_sent: bool,
    /// The part takes no cookie: it answers in its id header only.
    header_only: bool,
    pub(crate) loaded: bool,
    pub(crate) current: Option<Current>,
    pub(crate) data: Map<String, Value>,
    pub(crate) user: Option<String>,
    pub(crate) permanent: bool,
    /// Keys set or removed since load (or since `clear`).
    dirty: BTreeSet<String>,
    cleared: bool,
    cycle: Option<Cycle>,
    /// The id of the session this commit creates, picked before any write.
    next: Option<SessionId>,
    /// Sessions to delete at commit (this device's, after `logout`).
    doomed: Vec<StoreKey>,
    /// This device's session was ended: expire its cookie unless a new one starts.
    ended: bool,
    /// A cookie part's revocation generation, as minted or to be minted.
    pub(crate) generation: u64,
    /// Re-issue the cookie even if nothing else changed.
    reissue: bool,
}

impl PartState {
    fn new(incoming: Vec<IncomingId>, raw: Vec<String>, cookie_present: bool) -> Self {
        Self {
            incoming,
            raw,
            cookie_present,
            header_sent: false,
            header_only: false,
            loaded: false,
            current: None,
            data: Map::new(),
            user: None,
            permanent: false,
            dirty: BTreeSet::new(),
            cleared: false,
            cycle: None,
            next: None,
            doomed: Vec::new(),
            ended: false,
            generation: 0,
            reissue: false,
        }
    }

    /// Loads the part on first use: for a server part, one store read per
    /// cookie id until one names a live session (one read for a normal
    /// request); for a cookie part, a decryption (and, for a revocable
    /// login, one counter read). Unknown, expired, revoked and corrupt
    /// sessions are no session. Keys this part does not keep are dropped,
    /// and only the part that keeps `user_id` can carry a login.
    async fn load(&mut self, engine: &Engine, index: usize, owner: Option<&Owner>) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        let part = &engine.parts[index];
        let found = match &part.backend {
            Backend::Server(store) => self.load_server(&**store, owner).await?,
            Backend::Cookie(cookie) => self.load_cookie(&part.config, cookie).await?,
        };
        if let Some((mut record, stored)) = found {
            record.data.retain(|key, _| engine.routing.owns(index, key));
            if engine.user_part != Some(index) {
                record.meta.user_id = None;
            }
            self.data = record.data;
            self.user = record.meta.user_id.clone();
            self.permanent = record.meta.permanent;
            self.current = Some(Current { stored, meta: record.meta });
        }
        self.loaded = true;
        Ok(())
    }

    /// The first of the cookie's ids that names a live session (of `owner`'s
    /// device, if given).
    async fn load_server(
        &mut self,
        store: &dyn Store,
        owner: Option<&Owner>,
    ) -> Result<Option<(Record, Option<(SessionId, StoreKey)>)>> {
        for incoming in &self.incoming {
            let key = incoming.id.store_key();
            match store.load(&key).await {
                Ok(Some(record)) if owner.is_some_and(|owner| !owner.owns(&record.meta)) => {
                    tracing::debug!("a session part of a device whose login has ended, or of another; passed over");
                }
                Ok(Some(record)) if !record.meta.is_expired(now()) => {
                    self.reissue |= incoming.stale_key;
                    return Ok(Some((record, Some((incoming.id.clone(), key)))));
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    tracing::warn!(error = %e, "stored session could not be decoded; treating it as no session");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    async fn load_cookie(
        &mut self,
        config: &SessionConfig,
        cookie: &CookieStore,
    ) -> Result<Option<(Record, Option<(SessionId, StoreKey)>)>> {
        let now = now();
        // Every value is opened (a failed decryption costs no store read),
        // and of those that open, at most MAX_CANDIDATES are considered, as
        // for a server part's ids.
        let opened = self.raw.iter().filter_map(|raw| cookie.open(&config.cookie_name, raw)).take(MAX_CANDIDATES);
        for opened in opened.filter(|o| !o.record.meta.is_expired(now)) {
            if let Some(user) = &opened.record.meta.user_id
                && opened.generation < cookie.generation(user).await?
            {
                tracing::debug!("cookie session minted before its user logged out everywhere; ignoring it");
                continue;
            }
            self.generation = opened.generation;
            self.reissue |= opened.stale_key;
            return Ok(Some((opened.record, None)));
        }
        Ok(None)
    }

    pub(crate) fn set(&mut self, key: &str, value: Value) {
        if self.data.get(key) != Some(&value) {
            self.data.insert(key.to_owned(), value);
            self.dirty.insert(key.to_owned());
        }
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<Value> {
        let old = self.data.remove(key);
        if old.is_some() {
            self.dirty.insert(key.to_owned());
        }
        old
    }

    pub(crate) fn clear(&mut self) {
        if !self.data.is_empty() {
            self.data.clear();
            self.dirty.clear();
            self.cleared = true;
        }
    }

    pub(crate) fn cycle(&mut self, cycle: Cycle) {
        if self.cycle != Some(Cycle::Login) {
            self.cycle = Some(cycle);
        }
    }

    /// Re-issue this part's cookie under `generation` (after its user's
    /// generation moved and this device stays logged in).
    pub(crate) fn regenerate(&mut self, generation: u64) {
        self.generation = generation;
        self.reissue = true;
    }

    /// Marks `user` as logging in on this part. With
    /// [`OnLimit::RefuseLogin`], a user already at the cap is refused here,
    /// so the handler sees it; the store holds the cap again at commit.
    /// Sessions in `replacing` (a late login's, [`State::late_over`]) are
    /// about to be replaced and do not count.
    pub(crate) async fn login(&mut self, part: &Part, user: &str, replacing: &[StoreKey]) -> Result<()> {
        match &part.backend {
            Backend::Cookie(cookie) => self.generation = cookie.generation(user).await?,
            Backend::Server(store) => {
                if let Some(limit) = part.limit.filter(|l| l.on_limit == OnLimit::RefuseLogin) {
                    let mine = self.stored_key();
                    let others = store.user_sessions(user).await?.into_iter();
                    let others = others.filter(|s| Some(s.key) != mine && !replacing.contains(&s.key));
                    limit.evictions(others.collect())?;
                }
            }
        }
        self.user = Some(user.to_owned());
        self.cycle(Cycle::Login);
        Ok(())
    }

    /// When the user of this (login) part logged in: the stored session's
    /// creation, since a login always starts a new one; now, for a login
    /// this request holds.
    pub(crate) fn authenticated_at(&self) -> Option<OffsetDateTime> {
        self.user.as_ref()?;
        match (&self.current, self.cycle) {
            (_, Some(Cycle::Login)) | (None, _) => Some(now()),
            (Some(current), _) => Some(current.meta.created_at),
        }
    }

    pub(crate) fn stored_key(&self) -> Option<StoreKey> {
        self.current.as_ref().and_then(|c| c.stored.as_ref()).map(|(_, key)| *key)
    }

    /// Where the device's other server parts live, as this part's stored
    /// session records it.
    pub(crate) fn current_siblings(&self) -> BTreeMap<String, StoreKey> {
        self.current.as_ref().map(|c| c.meta.siblings.clone()).unwrap_or_default()
    }

    /// The store key this part's session keeps after commit, if any: a
    /// pending login or id change replaces it.
    pub(crate) fn surviving_key(&self) -> Option<StoreKey> {
        if self.cycle.is_some() { None } else { self.stored_key() }
    }

    /// Ends this device's session on this part: forget it now, delete it at
    /// commit (unless `already_deleted`) with every other id its cookies
    /// carried. Needs no load.
    pub(crate) fn end(&mut self, already_deleted: bool) {
        if !already_deleted {
            self.doomed.extend(self.stored_key());
        }
        // Every id the cookies carried: a stray or planted one must not keep
        // a session alive that this logout meant to end.
        for key in self.incoming.iter().map(|i| i.id.store_key()) {
            if Some(key) != self.stored_key() && !self.doomed.contains(&key) {
                self.doomed.push(key);
            }
        }
        self.loaded = true;
        self.current = None;
        self.data.clear();
        self.user = None;
        self.permanent = false;
        self.dirty.clear();
        self.cleared = false;
        self.cycle = None;
        self.next = None;
        self.reissue = false;
        self.ended = true;
    }

    fn has_content(&self) -> bool {
        !self.data.is_empty() || self.user.is_some()
    }

    /// Picks the id of the session this commit will create, if it creates
    /// one: new data without a session, or a login or id change with
    /// something to keep.
    fn prepare(&mut self) -> Result<()> {
        if self.loaded && self.has_content() && (self.cycle.is_some() || self.current.is_none()) {
            self.next = Some(SessionId::generate()?);
        }
        Ok(())
    }

    /// The store key this part's session will have after the commit:
    /// `None` if this request did not load the part (it keeps whatever key
    /// it had), `Some(None)` if it will have no session.
    fn key_after_commit(&self) -> Option<Option<StoreKey>> {
        if !self.loaded {
            return None;
        }
        if let Some(next) = &self.next {
            return Some(Some(next.store_key()));
        }
        Some(self.surviving_key())
    }

    /// Whether this commit gives the part a session under another key, or
    /// ends the one it had.
    fn key_moves(&self) -> bool {
        self.next.is_some()
            || (self.loaded && self.stored_key().is_some() && self.surviving_key().is_none())
            || !self.doomed.is_empty()
    }

    /// A server part's commit: nothing, one `apply` (or a touch), or a
    /// `create` (and the delete of the session it replaces, unless
    /// `defer_old`: then the caller deletes it, from the outcome).
    /// `siblings` is what its record's [`Meta::siblings`] becomes (`None`:
    /// unchanged): for the part that keeps the login, where the device's
    /// other parts live; for another part, its owner.
    async fn commit_server(
        &mut self,
        part: &Part,
        device: &Device,
        siblings: Option<&BTreeMap<String, StoreKey>>,
        defer_old: bool,
    ) -> Result<Outcome> {
        let Backend::Server(store) = &part.backend else { return Ok(Outcome::default()) };
        let store = &**store;
        let cookie = |answer: Option<Answer>| Outcome { answer, ..Outcome::default() };
        let carried = self.cookie_present || self.header_sent || self.ended;
        if !self.loaded {
            return Ok(cookie(None));
        }
        let config = &part.config;
        let now = now();
        for key in std::mem::take(&mut self.doomed) {
            store.delete(&key).await?;
        }
        if let Some(id) = self.next.take() {
            return self.mint(part, store, device, now, id, siblings, defer_old).await;
        }
        if self.cycle.is_some() {
            // An id change of a session holding nothing: the old one goes,
            // and a new one starts once there is something to keep.
            if let Some(old) = self.stored_key() {
                store.delete(&old).await?;
            }
            return Ok(cookie(carried.then(|| self.removal_answer(config))));
        }
        let Some(current) = &self.current else {
            return Ok(cookie(carried.then(|| self.removal_answer(config))));
        };
        let Some((id, key)) = &current.stored else { return Ok(cookie(None)) };
        match self.update(config, store, key, &current.meta, now, siblings).await {
            Ok(wrote) => {
                let permanent_changed = self.permanent != current.meta.permanent;
                if (self.permanent && wrote) || permanent_changed || self.reissue {
                    let expires_at = config.expiry(now, self.permanent, current.meta.absolute_expires_at);
                    return Ok(cookie(Some(self.id_answer(config, id, expires_at))));
                }
                Ok(cookie(None))
            }
            Err(e) if e.kind() == ErrorKind::Gone => Ok(ended_elsewhere()),
            Err(e) => Err(e),
        }
    }

    /// The record this request leaves: its data and metadata as of `now`.
    fn record(
        &self,
        config: &SessionConfig,
        device: &Device,
        now: OffsetDateTime,
        siblings: Option<&BTreeMap<String, StoreKey>>,
    ) -> Record {
        let kept = self.current.as_ref().filter(|_| self.cycle != Some(Cycle::Login));
        let created_at = kept.map_or(now, |c| c.meta.created_at);
        let absolute_expires_at = match kept {
            Some(c) => c.meta.absolute_expires_at,
            None => config.absolute_expiry(created_at),
        };
        Record {
            data: self.data.clone(),
            meta: Meta {
                user_id: self.user.clone(),
                created_at,
                last_active_at: now,
                expires_at: config.expiry(now, self.permanent, absolute_expires_at),
                absolute_expires_at,
                permanent: self.permanent,
                device: kept.map_or_else(|| device.clone(), |c| c.meta.device.clone()),
                siblings: siblings.cloned().unwrap_or_default(),
            },
        }
    }

    /// Creates the session under the id [`PartState::prepare`] picked —
    /// holding a login to the user's session cap — then deletes the session
    /// it replaces (or leaves that to the caller, `defer_old`). A session
    /// ended meanwhile (logged out everywhere, revoked, evicted, or replaced
    /// by a login in another tab) is not replaced: nothing is created, or
    /// what was is deleted again, so no path brings back a session ended
    /// after this request loaded it, on any part.
    #[allow(clippy::too_many_arguments)]
    async fn mint(
        &mut self,
        part: &Part,
        store: &dyn Store,
        device: &Device,
        now: OffsetDateTime,
        id: SessionId,
        siblings: Option<&BTreeMap<String, StoreKey>>,
        defer_old: bool,
    ) -> Result<Outcome> {
        let key = id.store_key();
        let record = self.record(&part.config, device, now, siblings);
        let replaces = self.stored_key();
        let limit = part.limit.filter(|_| record.meta.user_id.is_some() && self.cycle == Some(Cycle::Login));
        let evicted = if replaces.is_some() || limit.is_some() {
            match store.create_login(&key, &record, replaces.as_ref(), limit).await {
                Err(e) if e.kind() == ErrorKind::Gone => return Ok(ended_elsewhere()),
                other => other?,
            }
        } else {
            store.create(&key, &record).await?;
            Vec::new()
        };
        let answer = Some(self.id_answer(&part.config, &id, record.meta.expires_at));
        let outcome = Outcome { answer, evicted, minted: Some(key), ..Outcome::default() };
        let Some(old) = replaces else { return Ok(outcome) };
        let marked = leave_replaced_mark(store, &old, &key, now).await;
        if defer_old {
            return Ok(Outcome { replaced: Some(old), ..outcome });
        }
        match store.delete(&old).await {
            Ok(true) => {
                if !marked {
                    // Another request replacing `old` marked it first, but
                    // this one won: the mark must name the session that
                    // lives on, for a late login to find.
                    if let Err(e) = store.delete(&replaced_mark(&old)).await {
                        tracing::warn!(error = %e, "the mark of a replaced session could not be rewritten");
                    }
                    leave_replaced_mark(store, &old, &key, now).await;
                }
                Ok(Outcome { won: true, ..outcome })
            }
            // Ended between the store's check and now: the new one goes too.
            Ok(false) => {
                store.delete(&key).await?;
                Ok(Outcome { evicted: outcome.evicted, ..ended_elsewhere() })
            }
            // Unknown whether the old one still lives: the new one must not
            // outlive it, and the request fails.
            Err(e) => {
                if let Err(cleanup) = store.delete(&key).await {
                    tracing::warn!(error = %cleanup, "a session made for an id change could not be deleted again");
                }
                Err(e)
            }
        }
    }

    /// Whether this part answers in its id header: a part without a cookie
    /// always; otherwise only if the session it loaded came by the header,
    /// or, having loaded none, the request sent the header. A session that
    /// came by cookie is answered by cookie whatever else the request
    /// carried, so that a script that adds the header to a browser's request
    /// cannot read the HttpOnly cookie's id from the answer.
    fn answers_in_header(&self) -> bool {
        if self.header_only {
            return true;
        }
        match self.current.as_ref().and_then(|c| c.stored.as_ref()) {
            Some((id, _)) => self.incoming.iter().any(|incoming| incoming.by_header && &incoming.id == id),
            None => self.header_sent,
        }
    }

    /// The answer carrying `id`: its header, for a client that carried its
    /// id there ([`PartState::answers_in_header`]), else its cookie.
    fn id_answer(&self, config: &SessionConfig, id: &SessionId, expires_at: OffsetDateTime) -> Answer {
        match config.id_header.as_ref().filter(|_| self.answers_in_header()) {
            Some(header) => Answer::Header(header.name.clone(), header.carry(&config.id_value(id))),
            None => Answer::Cookie(config.id_cookie(id, self.permanent, expires_at)),
        }
    }

    /// The answer that tells the client to drop its id, in every carrier
    /// the request used: the header empty, the cookie expired (the cookie
    /// also when the request carried neither, as for a part without a
    /// header).
    fn removal_answer(&self, config: &SessionConfig) -> Answer {
        let Some(header) = &config.id_header else { return Answer::Cookie(config.removal_cookie()) };
        let cookie = !self.header_only && (self.cookie_present || !self.header_sent);
        let header = (self.header_only || self.header_sent).then(|| header.name.clone());
        Answer::Removal(cookie.then(|| config.removal_cookie()), header)
    }

    /// Whether this request ended the device's session on this part and
    /// starts no new one (a logout, or a logout of every device).
    fn logged_out(&self) -> bool {
        self.ended && !self.has_content()
    }

    /// Whether this part's cookie named a session it did not find, so that
    /// its commit would start a new one or clear the cookie.
    fn starts_afresh(&self) -> bool {
        self.loaded && !self.ended && self.current.is_none() && !self.incoming.is_empty()
    }

    /// Whether a session this part's cookie named was replaced moments ago
    /// (its mark is in `store`, see [`leave_replaced_mark`]).
    /// The mark only spares a stray session, so a mark that cannot be read
    /// counts as none (logged), never as a failed request.
    async fn named_a_replaced_session(&self, store: &dyn Store) -> bool {
        for incoming in &self.incoming {
            match store.load(&replaced_mark(&incoming.id.store_key())).await {
                Ok(Some(mark)) if !mark.meta.is_expired(now()) => return true,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the mark of a replaced session could not be read"),
            }
        }
        false
    }

    /// The sessions that replaced the one this part's cookie named, moments
    /// ago, as their marks record, following later replacements a few
    /// hops (a login then an id change, say). A mark that cannot be read
    /// or holds no key ends the walk.
    async fn replacers(&self, store: &dyn Store) -> Vec<StoreKey> {
        let mut found = Vec::new();
        for incoming in &self.incoming {
            let mut key = incoming.id.store_key();
            for _ in 0..REPLACED_HOPS {
                let by = match store.load(&replaced_mark(&key)).await {
                    Ok(Some(mark)) if !mark.meta.is_expired(now()) => {
                        mark.data.get(REPLACED_BY).and_then(|by| by.as_str().and_then(|by| by.parse::<StoreKey>().ok()))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "the mark of a replaced session could not be read");
                        None
                    }
                };
                let Some(by) = by.filter(|by| !found.contains(by)) else { break };
                found.push(by);
                key = by;
            }
        }
        found
    }

    /// Applies the request's changes to its existing session, or touches it
    /// when the expiry has moved far enough. Whether it wrote.
    async fn update(
        &self,
        config: &SessionConfig,
        store: &dyn Store,
        key: &StoreKey,
        stored: &Meta,
        now: OffsetDateTime,
        siblings: Option<&BTreeMap<String, StoreKey>>,
    ) -> Result<bool> {
        let expires_at = config.expiry(now, self.permanent, stored.absolute_expires_at);
        let permanent = (self.permanent != stored.permanent).then_some(self.permanent);
        let siblings = siblings.filter(|s| **s != stored.siblings);
        let alters = self.cleared || !self.dirty.is_empty() || permanent.is_some() || siblings.is_some();
        if !alters && expires_at - stored.expires_at <= config.touch_interval {
            return Ok(false);
        }
        let mut change = Change::new(now, expires_at);
        change.user_id = stored.user_id.clone();
        change.permanent = permanent;
        change.siblings = siblings.cloned();
        if self.cleared {
            change.clear = true;
            change.set = self.data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        } else {
            for key in &self.dirty {
                if let Some(value) = self.data.get(key) {
                    change.set.insert(key.clone(), value.clone());
                } else {
                    change.remove.insert(key.clone());
                }
            }
        }
        store.apply(key, &change).await?;
        Ok(true)
    }

    /// A cookie part's commit: a new encrypted cookie when anything changed
    /// (or the expiry moved past the touch interval), an expiring one when
    /// the session ended or emptied.
    fn commit_cookie(&mut self, config: &SessionConfig, cookie: &CookieStore) -> Result<Option<String>> {
        if !self.loaded {
            return Ok(None);
        }
        if !self.has_content() {
            let had = self.current.is_some() || self.cookie_present || self.ended;
            return Ok(had.then(|| config.removal_cookie()));
        }
        let now = now();
        let record = self.record(config, &Device::default(), now, None);
        let changed = match &self.current {
            None => true,
            Some(current) => {
                !self.dirty.is_empty()
                    || self.cleared
                    || self.cycle.is_some()
                    || self.reissue
                    || self.permanent != current.meta.permanent
                    || self.user != current.meta.user_id
                    || record.meta.expires_at - current.meta.expires_at > config.touch_interval
            }
        };
        if !changed {
            return Ok(None);
        }
        let value = cookie.seal(&config.cookie_name, &record, self.generation).inspect_err(|e| {
            tracing::error!(error = %e, "session cookie not sent");
        })?;
        Ok(Some(config.value_cookie(value, self.permanent, record.meta.expires_at)))
    }
}
