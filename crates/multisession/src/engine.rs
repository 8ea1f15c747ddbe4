//! Load and commit for one request. No framework types: adapters hand in
//! cookie header values and device facts and write out a [`Commit`].
//!
//! A request's session is made of parts (one per [`SessionSpec`]); the single
//! session of a simple application is one part that keeps every key. Each
//! part loads on first use and commits on its own, so a request that touches
//! only one part's keys costs only that part.

use std::collections::BTreeSet;
use std::sync::Arc;

use cookie::Cookie;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::config::IncomingId;
use crate::fields::Routing;
use crate::store::{Backend, CookieStore, SessionInfo, Store, Traced};
use crate::{
    Change, Device, Error, ErrorKind, Meta, OnLimit, Record, Result, SessionConfig, SessionId, SessionSpec, StoreKey,
    USER_ID_KEY,
};

/// One configured part: its cookie and lifetimes, and its backend.
pub(crate) struct Part {
    pub(crate) config: SessionConfig,
    pub(crate) backend: Backend,
}

/// The parts, their routing, and which part keeps the login.
pub(crate) struct Engine {
    pub(crate) parts: Vec<Part>,
    pub(crate) routing: Routing,
    pub(crate) user_part: Option<usize>,
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
        let owners = routing.owners(USER_ID_KEY);
        if owners.len() > 1 {
            let names: Vec<String> = owners.iter().map(|&i| format!("`{}`", name(i))).collect();
            return Err(Error::config(format!(
                "fields: the key `{USER_ID_KEY}` is kept by sessions {}; the login must live in exactly one part",
                names.join(" and ")
            )));
        }
        let user_part = owners.first().copied();
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
            if spec.config.session_limit.is_some() && (Some(i) != user_part || !spec.backend.keeps_user_index()) {
                return Err(Error::config(format!(
                    "session `{}`: max_sessions_per_user applies to the server-side part that keeps `{USER_ID_KEY}`",
                    name(i)
                )));
            }
        }
        let parts = specs
            .into_iter()
            .map(|spec| Part {
                config: spec.config,
                backend: match spec.backend {
                    Backend::Server(store) => Backend::Server(Arc::new(Traced(store))),
                    cookie => cookie,
                },
            })
            .collect();
        Ok(Self { parts, routing, user_part })
    }

    /// A request's state, from its `Cookie` header values. Reads nothing.
    pub(crate) fn start<'a>(&self, headers: impl IntoIterator<Item = &'a str>) -> State {
        let cookies: Vec<Cookie<'a>> = headers.into_iter().flat_map(Cookie::split_parse_encoded).flatten().collect();
        let parts = self
            .parts
            .iter()
            .map(|part| {
                let values = part.config.values(&cookies);
                let incoming = match part.backend {
                    Backend::Server(_) => part.config.read_id(&values),
                    Backend::Cookie(_) => None,
                };
                let raw = match part.backend {
                    Backend::Cookie(_) => values.iter().map(|v| (*v).to_owned()).collect(),
                    Backend::Server(_) => Vec::new(),
                };
                PartState::new(incoming, raw, !values.is_empty())
            })
            .collect();
        State { parts }
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

    /// Ends every session of `user` except `keep`: through the user index,
    /// or by moving a cookie part's revocation generation. How many ended
    /// (a cookie part cannot count them: 0), and the new generation if one
    /// was moved.
    pub(crate) async fn end_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<(u64, Option<u64>)> {
        let part = &self.parts[self.user_part()?];
        match &part.backend {
            Backend::Server(store) => Ok((store.delete_user_sessions(user, keep).await?, None)),
            Backend::Cookie(cookie) => {
                let keep_for = part.config.lifetime.max(part.config.permanent_lifetime);
                Ok((0, Some(cookie.bump(user, keep_for).await?)))
            }
        }
    }
}

/// What an adapter must do to the response after the handler ran.
///
/// ```
/// let commit = multisession::Commit::default();
/// assert!(commit.set_cookies.is_empty() && !commit.vary_cookie);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    /// `Set-Cookie` header values to add, one per part whose cookie changed.
    pub set_cookies: Vec<String>,
    /// Whether the response depended on the session: add `Vary: Cookie`.
    pub vary_cookie: bool,
}

/// One request's parts.
pub(crate) struct State {
    pub(crate) parts: Vec<PartState>,
}

impl State {
    /// Loads part `i` if this is its first use.
    pub(crate) async fn load(&mut self, engine: &Engine, i: usize) -> Result<&mut PartState> {
        let state = &mut self.parts[i];
        state.load(engine, i).await?;
        Ok(state)
    }

    /// Loads every part.
    pub(crate) async fn load_all(&mut self, engine: &Engine) -> Result<()> {
        for (i, state) in self.parts.iter_mut().enumerate() {
            state.load(engine, i).await?;
        }
        Ok(())
    }

    /// Writes what the request changed, cookie parts first: a cookie that
    /// cannot be sent fails the request before any store is written.
    pub(crate) async fn commit(&mut self, engine: &Engine, device: &Device) -> Result<Commit> {
        let mut commit = Commit { set_cookies: Vec::new(), vary_cookie: self.parts.iter().any(|p| p.loaded) };
        let mut order: Vec<usize> = (0..self.parts.len()).collect();
        order.sort_by_key(|&i| matches!(engine.parts[i].backend, Backend::Server(_)));
        for i in order {
            let part = &engine.parts[i];
            let set_cookie = match &part.backend {
                Backend::Server(store) => self.parts[i].commit_server(&part.config, &**store, device).await?,
                Backend::Cookie(cookie) => self.parts[i].commit_cookie(&part.config, cookie)?,
            };
            commit.set_cookies.extend(set_cookie);
        }
        Ok(commit)
    }
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
    /// A server part's verified id from the cookie.
    incoming: Option<IncomingId>,
    /// A cookie part's cookie values, opened on load.
    raw: Vec<String>,
    cookie_present: bool,
    pub(crate) loaded: bool,
    pub(crate) current: Option<Current>,
    pub(crate) data: Map<String, Value>,
    pub(crate) user: Option<String>,
    pub(crate) permanent: bool,
    /// Keys set or removed since load (or since `clear`).
    dirty: BTreeSet<String>,
    cleared: bool,
    cycle: Option<Cycle>,
    /// The user's sessions a login evicts, deleted once the new one exists.
    evict: Vec<StoreKey>,
    /// Sessions to delete at commit (this device's, after `logout`).
    doomed: Vec<StoreKey>,
    /// This device's session was ended: expire its cookie unless a new one starts.
    ended: bool,
    /// A cookie part's revocation generation, as minted or to be minted.
    pub(crate) generation: u64,
    /// Re-issue the cookie even if nothing else changed.
    reissue: bool,
}

/// The current time, at the millisecond precision stores keep.
pub(crate) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now)
}

impl PartState {
    fn new(incoming: Option<IncomingId>, raw: Vec<String>, cookie_present: bool) -> Self {
        let reissue = incoming.as_ref().is_some_and(|i| i.stale_key);
        Self {
            incoming,
            raw,
            cookie_present,
            loaded: false,
            current: None,
            data: Map::new(),
            user: None,
            permanent: false,
            dirty: BTreeSet::new(),
            cleared: false,
            cycle: None,
            evict: Vec::new(),
            doomed: Vec::new(),
            ended: false,
            generation: 0,
            reissue,
        }
    }

    /// Loads the part on first use: one store read for a server part with a
    /// valid cookie, a decryption (and, for a revocable login, one counter
    /// read) for a cookie part. Unknown, expired, revoked and corrupt
    /// sessions are no session. Keys this part does not keep are dropped,
    /// and only the part that keeps `user_id` can carry a login.
    async fn load(&mut self, engine: &Engine, index: usize) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        let part = &engine.parts[index];
        let found = match &part.backend {
            Backend::Server(store) => self.load_server(&**store).await?,
            Backend::Cookie(cookie) => self.load_cookie(&part.config, cookie).await?,
        };
        if let Some((mut record, stored)) = found.filter(|(r, _)| !r.meta.is_expired(now())) {
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

    async fn load_server(&self, store: &dyn Store) -> Result<Option<(Record, Option<(SessionId, StoreKey)>)>> {
        let Some(incoming) = &self.incoming else { return Ok(None) };
        let key = incoming.id.store_key();
        match store.load(&key).await {
            Ok(record) => Ok(record.map(|r| (r, Some((incoming.id.clone(), key))))),
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                tracing::warn!(error = %e, "stored session could not be decoded; treating it as no session");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn load_cookie(
        &mut self,
        config: &SessionConfig,
        cookie: &CookieStore,
    ) -> Result<Option<(Record, Option<(SessionId, StoreKey)>)>> {
        let Some(opened) = self.raw.iter().find_map(|raw| cookie.open(&config.cookie_name, raw)) else {
            return Ok(None);
        };
        if let Some(user) = &opened.record.meta.user_id
            && opened.generation < cookie.generation(user).await?
        {
            tracing::debug!("cookie session minted before its user logged out everywhere; ignoring it");
            return Ok(None);
        }
        self.generation = opened.generation;
        self.reissue |= opened.stale_key;
        Ok(Some((opened.record, None)))
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

    /// Marks `user` as logging in on this part; with a session limit, decides
    /// whom to evict or refuses.
    pub(crate) async fn login(&mut self, part: &Part, user: &str) -> Result<()> {
        self.evict.clear();
        match &part.backend {
            Backend::Cookie(cookie) => self.generation = cookie.generation(user).await?,
            Backend::Server(store) => {
                if let Some(limit) = part.config.session_limit {
                    self.evict = self.evictions(&**store, user, limit.max, limit.on_limit).await?;
                }
            }
        }
        self.user = Some(user.to_owned());
        self.cycle(Cycle::Login);
        Ok(())
    }

    async fn evictions(&self, store: &dyn Store, user: &str, max: usize, on_limit: OnLimit) -> Result<Vec<StoreKey>> {
        let mine = self.stored_key();
        let mut others: Vec<SessionInfo> =
            store.user_sessions(user).await?.into_iter().filter(|s| Some(s.key) != mine).collect();
        if others.len() < max {
            return Ok(Vec::new());
        }
        match on_limit {
            OnLimit::RefuseLogin => Err(Error::new(
                ErrorKind::TooManySessions,
                format!(
                    "the user already has {} sessions and the limit is {max}; log out another device first",
                    others.len()
                ),
            )),
            OnLimit::EvictLeastRecent => {
                others.sort_by_key(|s| s.last_active_at);
                let excess = others.len() + 1 - max;
                Ok(others.into_iter().take(excess).map(|s| s.key).collect())
            }
        }
    }

    fn stored_key(&self) -> Option<StoreKey> {
        self.current.as_ref().and_then(|c| c.stored.as_ref()).map(|(_, key)| *key)
    }

    /// The store key this part's session keeps after commit, if any: a
    /// pending login or id change replaces it.
    pub(crate) fn surviving_key(&self) -> Option<StoreKey> {
        if self.cycle.is_some() { None } else { self.stored_key() }
    }

    /// Ends this device's session on this part: forget it now, delete it at
    /// commit unless `already_deleted`. Needs no load: an unread session is
    /// deleted by its cookie's id.
    pub(crate) fn end(&mut self, already_deleted: bool) {
        let key = if self.loaded { self.stored_key() } else { self.incoming.as_ref().map(|i| i.id.store_key()) };
        if let Some(key) = key.filter(|_| !already_deleted) {
            self.doomed.push(key);
        }
        self.loaded = true;
        self.current = None;
        self.data.clear();
        self.user = None;
        self.permanent = false;
        self.dirty.clear();
        self.cleared = false;
        self.cycle = None;
        self.evict.clear();
        self.reissue = false;
        self.ended = true;
    }

    fn has_content(&self) -> bool {
        !self.data.is_empty() || self.user.is_some()
    }

    /// A server part's commit: nothing, one `apply` (or a touch), or a
    /// `create` (plus deletes for a login that replaced a session). The
    /// cookie to set, if it changed.
    async fn commit_server(
        &mut self,
        config: &SessionConfig,
        store: &dyn Store,
        device: &Device,
    ) -> Result<Option<String>> {
        if !self.loaded {
            return Ok(None);
        }
        let now = now();
        for key in std::mem::take(&mut self.doomed) {
            store.delete(&key).await?;
        }
        if self.has_content() && (self.cycle.is_some() || self.current.is_none()) {
            return self.mint(config, store, device, now).await.map(Some);
        }
        let Some(current) = &self.current else {
            return Ok((self.cookie_present || self.ended).then(|| config.removal_cookie()));
        };
        let Some((id, key)) = &current.stored else { return Ok(None) };
        match self.update(config, store, key, &current.meta, now).await {
            Ok(wrote) => {
                let permanent_changed = self.permanent != current.meta.permanent;
                if (self.permanent && wrote) || permanent_changed || self.reissue {
                    let expires_at = config.expiry(now, self.permanent, current.meta.absolute_expires_at);
                    return Ok(Some(config.id_cookie(id, self.permanent, expires_at)));
                }
                Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::Gone => {
                tracing::info!("session ended elsewhere during the request; its changes were dropped");
                Ok(Some(config.removal_cookie()))
            }
            Err(e) => Err(e),
        }
    }

    /// The record this request leaves: its data and metadata as of `now`.
    fn record(&self, config: &SessionConfig, device: &Device, now: OffsetDateTime) -> Record {
        let kept = self.current.as_ref().filter(|_| self.cycle != Some(Cycle::Login));
        let created_at = kept.map_or(now, |c| c.meta.created_at);
        let absolute_expires_at = match kept {
            Some(c) => c.meta.absolute_expires_at,
            None => config.absolute_lifetime.map(|d| created_at + d),
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
            },
        }
    }

    /// Creates a new session under a fresh id, then deletes the one it
    /// replaces and any the login evicted. Returns the cookie to set.
    async fn mint(
        &mut self,
        config: &SessionConfig,
        store: &dyn Store,
        device: &Device,
        now: OffsetDateTime,
    ) -> Result<String> {
        let id = SessionId::generate()?;
        let key = id.store_key();
        let record = self.record(config, device, now);
        store.create(&key, &record).await?;
        if let Some(old) = self.stored_key() {
            store.delete(&old).await?;
        }
        for evicted in std::mem::take(&mut self.evict) {
            store.delete(&evicted).await?;
        }
        Ok(config.id_cookie(&id, self.permanent, record.meta.expires_at))
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
    ) -> Result<bool> {
        let expires_at = config.expiry(now, self.permanent, stored.absolute_expires_at);
        let mut change = Change::new(now, expires_at);
        change.user_id = stored.user_id.clone();
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
        if self.permanent != stored.permanent {
            change.permanent = Some(self.permanent);
        }
        if change.alters() || expires_at - stored.expires_at > config.touch_interval {
            store.apply(key, &change).await?;
            Ok(true)
        } else {
            Ok(false)
        }
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
        let record = self.record(config, &Device::default(), now);
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
