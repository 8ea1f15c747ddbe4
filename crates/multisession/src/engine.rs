//! Load and commit for one request. No framework types: adapters hand in
//! cookie header values and device facts and write out a [`Commit`].

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::config::IncomingId;
use crate::store::{SessionInfo, Store};
use crate::{Change, Device, Error, ErrorKind, Meta, OnLimit, Record, Result, SessionConfig, SessionId, StoreKey};

/// The store and configuration shared by every request.
pub(crate) struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: SessionConfig,
}

/// What an adapter must do to the response after the handler ran.
///
/// ```
/// let commit = multisession::Commit::default();
/// assert!(commit.set_cookie.is_none() && !commit.vary_cookie);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    /// A `Set-Cookie` header value to add, if the cookie changed.
    pub set_cookie: Option<String>,
    /// Whether the response depended on the session: add `Vary: Cookie`.
    pub vary_cookie: bool,
}

/// The session as stored when this request loaded it.
pub(crate) struct Current {
    pub(crate) id: SessionId,
    pub(crate) key: StoreKey,
    pub(crate) meta: Meta,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cycle {
    Login,
    Rotate,
}

/// One request's view of its session, and what it changed.
pub(crate) struct State {
    incoming: Option<IncomingId>,
    cookie_present: bool,
    loaded: bool,
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
}

/// The current time, at the millisecond precision stores keep.
pub(crate) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now)
}

impl State {
    pub(crate) fn new(incoming: Option<IncomingId>, cookie_present: bool) -> Self {
        Self {
            incoming,
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
        }
    }

    /// Loads the session on first use: one store read, or none without a
    /// valid cookie. Unknown, expired and corrupt sessions are no session.
    pub(crate) async fn load(&mut self, engine: &Engine) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        if let Some(incoming) = &self.incoming {
            let key = incoming.id.store_key();
            let loaded = engine.store.load(&key).await;
            match loaded {
                Ok(Some(record)) if !record.meta.is_expired(now()) => {
                    self.data = record.data;
                    self.user = record.meta.user_id.clone();
                    self.permanent = record.meta.permanent;
                    self.current = Some(Current { id: incoming.id.clone(), key, meta: record.meta });
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    tracing::warn!(error = %e, "stored session could not be decoded; treating it as no session");
                }
                Err(e) => return Err(e),
            }
        }
        self.loaded = true;
        Ok(())
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

    /// Marks `user` as logging in; with a session limit, decides whom to evict
    /// or refuses.
    pub(crate) async fn login(&mut self, engine: &Engine, user: &str) -> Result<()> {
        self.evict.clear();
        if let Some(limit) = engine.config.session_limit {
            let mine = self.current.as_ref().map(|c| c.key);
            let mut others: Vec<SessionInfo> =
                engine.store.user_sessions(user).await?.into_iter().filter(|s| Some(s.key) != mine).collect();
            if others.len() >= limit.max {
                match limit.on_limit {
                    OnLimit::RefuseLogin => {
                        return Err(Error::new(
                            ErrorKind::TooManySessions,
                            format!(
                                "the user already has {} sessions and the limit is {}; log out another device first",
                                others.len(),
                                limit.max
                            ),
                        ));
                    }
                    OnLimit::EvictLeastRecent => {
                        others.sort_by_key(|s| s.last_active_at);
                        let excess = others.len() + 1 - limit.max;
                        self.evict = others.into_iter().take(excess).map(|s| s.key).collect();
                    }
                }
            }
        }
        // Data follows a visitor into their login (a cart, a theme), but never
        // from one user to another on a shared browser.
        if self.user.as_deref().is_some_and(|previous| previous != user) {
            self.clear();
            self.permanent = false;
        }
        self.user = Some(user.to_owned());
        self.cycle(Cycle::Login);
        Ok(())
    }

    /// Ends this device's session: forget it now, delete it at commit unless
    /// `already_deleted`.
    pub(crate) fn end(&mut self, already_deleted: bool) {
        if let Some(current) = self.current.take()
            && !already_deleted
        {
            self.doomed.push(current.key);
        }
        self.data.clear();
        self.user = None;
        self.permanent = false;
        self.dirty.clear();
        self.cleared = false;
        self.cycle = None;
        self.evict.clear();
        self.ended = true;
    }

    /// The store key this request's session will keep after commit, if any:
    /// a pending login or id change replaces it.
    pub(crate) fn surviving_key(&self) -> Option<StoreKey> {
        if self.cycle.is_some() { None } else { self.current.as_ref().map(|c| c.key) }
    }

    /// Writes what the request changed: nothing, one `apply`, one `touch`, or
    /// a `create` (plus deletes for a login that replaced a session).
    pub(crate) async fn commit(&mut self, engine: &Engine, device: &Device) -> Result<Commit> {
        if !self.loaded {
            return Ok(Commit::default());
        }
        let mut commit = Commit { set_cookie: None, vary_cookie: true };
        let now = now();
        for key in std::mem::take(&mut self.doomed) {
            engine.store.delete(&key).await?;
        }
        let has_content = !self.data.is_empty() || self.user.is_some();
        if has_content && (self.cycle.is_some() || self.current.is_none()) {
            commit.set_cookie = Some(self.mint(engine, device, now).await?);
        } else if let Some(current) = &self.current {
            match self.update(engine, current, now).await {
                Ok(wrote) => {
                    let permanent_changed = self.permanent != current.meta.permanent;
                    let stale_key = self.incoming.as_ref().is_some_and(|i| i.stale_key);
                    if (self.permanent && wrote) || permanent_changed || stale_key {
                        let expires_at = engine.config.expiry(now, self.permanent, current.meta.absolute_expires_at);
                        commit.set_cookie = Some(engine.config.id_cookie(&current.id, self.permanent, expires_at));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Gone => {
                    tracing::info!("session ended elsewhere during the request; its changes were dropped");
                    commit.set_cookie = Some(engine.config.removal_cookie());
                }
                Err(e) => return Err(e),
            }
        } else if self.cookie_present || self.ended {
            commit.set_cookie = Some(engine.config.removal_cookie());
        }
        Ok(commit)
    }

    /// Creates a new session under a fresh id, then deletes the one it
    /// replaces and any the login evicted. Returns the cookie to set.
    async fn mint(&mut self, engine: &Engine, device: &Device, now: OffsetDateTime) -> Result<String> {
        let id = SessionId::generate()?;
        let key = id.store_key();
        let kept = self.current.as_ref().filter(|_| self.cycle != Some(Cycle::Login));
        let created_at = kept.map_or(now, |c| c.meta.created_at);
        let absolute_expires_at = match kept {
            Some(c) => c.meta.absolute_expires_at,
            None => engine.config.absolute_lifetime.map(|d| created_at + d),
        };
        let expires_at = engine.config.expiry(now, self.permanent, absolute_expires_at);
        let record = Record {
            data: self.data.clone(),
            meta: Meta {
                user_id: self.user.clone(),
                created_at,
                last_active_at: now,
                expires_at,
                absolute_expires_at,
                permanent: self.permanent,
                device: kept.map_or_else(|| device.clone(), |c| c.meta.device.clone()),
            },
        };
        engine.store.create(&key, &record).await?;
        if let Some(old) = &self.current {
            engine.store.delete(&old.key).await?;
        }
        for evicted in std::mem::take(&mut self.evict) {
            engine.store.delete(&evicted).await?;
        }
        Ok(engine.config.id_cookie(&id, self.permanent, expires_at))
    }

    /// Applies the request's changes to its existing session, or touches it
    /// when the expiry has moved far enough. Whether it wrote.
    async fn update(&self, engine: &Engine, current: &Current, now: OffsetDateTime) -> Result<bool> {
        let expires_at = engine.config.expiry(now, self.permanent, current.meta.absolute_expires_at);
        let mut change = Change::new(now, expires_at);
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
        if self.permanent != current.meta.permanent {
            change.permanent = Some(self.permanent);
        }
        if change.alters() {
            engine.store.apply(&current.key, &change).await?;
            Ok(true)
        } else if expires_at - current.meta.expires_at > engine.config.touch_interval {
            engine.store.touch(&current.key, now, expires_at).await?;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}
