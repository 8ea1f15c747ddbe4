//! The commands the Memcached store needs, over `async-memcached`'s meta
//! protocol (`mg`, `ms` with CAS and add modes, `md` with CAS), with a
//! bounded `deadpool` pool per server and a consistent-hash ring across
//! servers.
//!
//! Bounds: at most [`POOL`] connections per server, a two-second limit on
//! waiting for one, connecting and each command. A command cut short by its
//! timeout closes its connection (`async-memcached` never reuses a
//! connection with a reply half read), so the pool drops it.
//!
//! Reply sizes. `async-memcached` 0.9 reads a reply into a buffer that grows
//! as bytes arrive (1 KiB reserved per read; the length a `VA` line
//! announces only makes its parser wait for more), so nothing is allocated
//! ahead from a length the server claims. But it has no limit of its own,
//! hands over a reply only once it holds all of it, and keeps its socket to
//! itself (no hook on the read path), so this client cannot cut a reply
//! short. What bounds memory:
//! - an item is never written over [`Client::max_item`] (refused as
//!   `TooLarge` before it is sent), and Memcached itself holds none over its
//!   `-I` (1 MiB by default, which `max_item` should match);
//! - a value over `max_item` that arrives anyway is refused at once (a
//!   single read is `Corrupt`, a listing skips it) and dropped, never kept;
//! - a listing reads at most [`READ_BUDGET`]` / max_item` keys (and at most
//!   [`BATCH`]) per round trip and keeps only what it needs of each batch,
//!   so it holds about `READ_BUDGET` of values at once;
//! - from a broken or hostile server, only the command timeout bounds a
//!   reply: whatever the network carries in two seconds, up to 4 GiB per
//!   value (the announced length is a `u32`).
//!
//! `async-memcached` opens IPv4 sockets only (`TcpSocket::new_v4` in its
//! `connection.rs`): IPv6 addresses are refused when the client is made.

use std::time::Duration;

use async_memcached::{Client as Conn, Error as McError, MetaProtocol as _, Status};
use deadpool::managed::{self, Metrics, Object, Pool, RecycleError, RecycleResult};
use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// How long waiting for a connection, connecting, or one command may take
/// before `Unavailable`.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Connections per server, at most.
pub(super) const POOL: usize = 16;
/// Points per server on the hash ring, as ketama clients use.
const POINTS: u32 = 160;
/// Keys read per `mg` pipeline, at most.
const BATCH: usize = 100;
/// The values a listing reads per round trip, at most, counted at the
/// largest item each may be.
const READ_BUDGET: usize = 16 << 20;
/// Memcached's item size limit by default (its `-I`), and what
/// [`Client::max_item`] starts at.
pub(super) const DEFAULT_MAX_ITEM: usize = 1 << 20;
/// Bytes of an item that are neither key nor value: Memcached's item
/// header, CAS and flags take 63 (1.6, measured), with room to spare.
const ITEM_OVERHEAD: usize = 128;

/// An item read with its CAS token.
pub(super) struct Item {
    pub(super) value: Vec<u8>,
    pub(super) cas: u64,
}

/// What `mg` tells of an item without its value.
pub(super) struct Probe {
    pub(super) size: u64,
    pub(super) client_flags: u32,
    /// Seconds left to live; -1 for never.
    pub(super) ttl: i64,
}

/// How a conditional store is made.
#[derive(Clone, Copy)]
pub(super) enum Mode {
    /// Only if the key does not exist.
    Add,
    /// Only if the item still has this CAS token.
    Cas(u64),
}

/// How a conditional store or delete ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stored {
    Done,
    /// `Add` found the key, or `Cas` found another writer's change.
    Exists,
    /// `Cas` found no item.
    NotFound,
}

/// Makes and checks one server's connections for its pool.
struct Connector {
    addr: String,
}

impl managed::Manager for Connector {
    type Type = Conn;
    type Error = McError;

    async fn create(&self) -> std::result::Result<Conn, McError> {
        Conn::new(format!("tcp://{}", self.addr)).await
    }

    // A local check, no round trip: a connection an interrupted command
    // closed is not handed out again.
    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<McError> {
        if conn.is_closed() { Err(RecycleError::message("closed after an incomplete command")) } else { Ok(()) }
    }
}

#[derive(Clone)]
struct Server {
    addr: String,
    pool: Pool<Connector>,
}

/// The servers, their pools (shared by clones) and the item size limit.
#[derive(Clone)]
pub(super) struct Client {
    servers: Vec<Server>,
    /// (point, server index), sorted by point.
    ring: Vec<(u32, usize)>,
    /// The largest item written or read, in bytes: Memcached's `-I`.
    pub(super) max_item: usize,
}

fn point(text: &[u8]) -> u32 {
    let digest = Sha256::digest(text);
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The store's error for a client error. The crate's protocol errors can
/// quote a reply line, which names the key, so only what kind of failure it
/// was is kept.
fn failed(addr: &str, e: &McError) -> Error {
    let what = match e {
        McError::Connect(io) => format!("cannot connect ({})", io.kind()),
        McError::Io(io) => format!("connection failed ({})", io.kind()),
        McError::ConnectionClosed => "connection closed".to_owned(),
        // The server's `-I` is below `max_item`: a configuration error, not
        // an outage.
        McError::Protocol(Status::Error(async_memcached::ErrorKind::Server(line))) if line.contains("too large") => {
            return Error::new(
                ErrorKind::TooLarge,
                format!(
                    "memcached at {addr}: the server refused an item as too large: its item size limit (-I) is \
                     below MemcachedStore::with_max_item_size"
                ),
            );
        }
        McError::Protocol(Status::Error(async_memcached::ErrorKind::Server(_))) => "server error".to_owned(),
        McError::Protocol(Status::Error(async_memcached::ErrorKind::Client(_))) => "refused a command".to_owned(),
        McError::Protocol(_) | McError::ParseError(_) => "unexpected reply".to_owned(),
    };
    Error::new(ErrorKind::Unavailable, format!("memcached at {addr}: {what}"))
}

fn timed_out(addr: &str) -> Error {
    Error::new(ErrorKind::Unavailable, format!("memcached at {addr}: no answer within {}s", TIMEOUT.as_secs()))
}

/// Checks that `addr` is `host:port`, the host a name or an IPv4 address.
/// No message shows user information (`user:password@`), should `addr`
/// hold any.
fn check_address(addr: &str) -> Result<()> {
    // The address as redacted URLs are, userinfo and secret query values
    // hidden (`***@host` for a user without a password too).
    let shown = match crate::store::redacted(addr).rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => crate::store::redacted(addr),
    };
    if addr.contains('@') {
        return Err(Error::config(format!(
            "memcached: {shown:?}: a server address takes no user or password (Memcached's text protocol has no \
             authentication): give host:port"
        )));
    }
    if addr.starts_with('[') || addr.matches(':').count() > 1 {
        return Err(Error::config(format!(
            "memcached: {shown:?} is an IPv6 address, and async-memcached connects over IPv4 only: give an IPv4 \
             address or a host name that resolves to one"
        )));
    }
    let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if valid { Ok(()) } else { Err(Error::config(format!("memcached: {shown:?} is not a server address host:port"))) }
}

impl Client {
    /// A client of `addrs` (`host:port` each, checked here).
    pub(super) fn new(addrs: Vec<String>) -> Result<Self> {
        if addrs.is_empty() {
            return Err(Error::config("memcached: give at least one server as host:port"));
        }
        let mut ring = Vec::with_capacity(addrs.len().saturating_mul(POINTS as usize));
        let mut servers = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.into_iter().enumerate() {
            check_address(&addr)?;
            for n in 0..POINTS {
                ring.push((point(format!("{addr}-{n}").as_bytes()), i));
            }
            let pool = Pool::builder(Connector { addr: addr.clone() })
                .max_size(POOL)
                .wait_timeout(Some(TIMEOUT))
                .create_timeout(Some(TIMEOUT))
                .recycle_timeout(Some(TIMEOUT))
                .runtime(deadpool::Runtime::Tokio1)
                .build()
                .map_err(|e| Error::config(format!("memcached: {e}")))?;
            servers.push(Server { addr, pool });
        }
        ring.sort_unstable();
        Ok(Self { servers, ring, max_item: DEFAULT_MAX_ITEM })
    }

    /// The index of the server that holds `key`: the first ring point at or
    /// after the key's own, so adding a server moves only the keys it takes
    /// over.
    fn server_of(&self, key: &str) -> usize {
        let p = point(key.as_bytes());
        let at = self.ring.partition_point(|(q, _)| *q < p);
        self.ring.get(at).or(self.ring.first()).map_or(0, |(_, i)| *i)
    }

    /// Runs `op` on a pooled connection of server `i`, within the timeout.
    ///
    /// An `idempotent` op that fails with an I/O error on a connection used
    /// before runs once more: after a server restart every pooled connection
    /// is dead but still looks open (the check on return to the pool is
    /// local). Before that retry the server's idle connections are dropped,
    /// as old as this one and as likely dead, so the retry, and the calls
    /// after it, connect anew.
    async fn call<T>(
        &self,
        i: usize,
        idempotent: bool,
        op: impl AsyncFnOnce(&mut Conn) -> std::result::Result<T, McError> + Clone,
    ) -> Result<T> {
        let server = &self.servers[i];
        let mut may_retry = idempotent;
        loop {
            let mut conn = server.pool.get().await.map_err(|e| match e {
                managed::PoolError::Backend(e) => failed(&server.addr, &e),
                _ => timed_out(&server.addr),
            })?;
            let reused = Object::metrics(&conn).recycle_count > 0;
            match tokio::time::timeout(TIMEOUT, op.clone()(&mut conn)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(McError::Io(_))) if may_retry && reused => {
                    may_retry = false;
                    drop(conn);
                    server.pool.retain(|_, _| false);
                }
                Ok(Err(e)) => return Err(failed(&server.addr, &e)),
                Err(_) => return Err(timed_out(&server.addr)),
            }
        }
    }

    /// `TooLarge` unless an item of `key` and `value` fits in `max_item`.
    pub(super) fn check_fits(&self, key: &str, value: &[u8]) -> Result<()> {
        if key.len().saturating_add(value.len()).saturating_add(ITEM_OVERHEAD) <= self.max_item {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "memcached: {} bytes do not fit in an item of at most {} bytes (MemcachedStore::with_max_item_size, \
                 memcached's -I)",
                value.len(),
                self.max_item
            ),
        ))
    }

    /// The item under `key` with its CAS token.
    pub(super) async fn get(&self, key: &str) -> Result<Option<Item>> {
        let found = self
            .call(self.server_of(key), true, async |conn| conn.meta_get(key, false, None, Some(&["v", "c"])).await)
            .await?;
        let Some(found) = found else { return Ok(None) };
        // An empty value comes back as no data: it is an empty item, not none.
        let value = found.data.unwrap_or_default();
        if value.len() > self.max_item {
            return Err(Error::corrupt(format!("memcached: an item is larger than {} bytes", self.max_item)));
        }
        Ok(Some(Item { value, cas: found.cas.unwrap_or(0) }))
    }

    /// Calls `each` with the position in `keys` and the value of every one
    /// of `keys` that exists, batch by batch (a round trip each), one
    /// connection at a time; values over `max_item` are skipped.
    pub(super) async fn scan(&self, keys: &[String], mut each: impl FnMut(usize, &[u8])) -> Result<()> {
        let mut by_server: Vec<Vec<usize>> = vec![Vec::new(); self.servers.len()];
        for (n, key) in keys.iter().enumerate() {
            by_server[self.server_of(key)].push(n);
        }
        let per_trip = (READ_BUDGET / self.max_item.max(1)).clamp(1, BATCH);
        for (i, positions) in by_server.iter().enumerate() {
            for batch in positions.chunks(per_trip) {
                let names: Vec<&str> = batch.iter().map(|&n| keys[n].as_str()).collect();
                let values = self.call(i, true, async |conn| conn.meta_get_multi(&names, Some(&["v"])).await).await?;
                for value in values {
                    let (Some(key), Some(data)) = (value.key, value.data) else { continue };
                    let position = batch.iter().find(|&&n| keys[n].as_bytes() == key.as_slice());
                    if let Some(&n) = position
                        && data.len() <= self.max_item
                    {
                        each(n, &data);
                    }
                }
            }
        }
        Ok(())
    }

    /// The size, client flags and time left of the item under `key`, not
    /// its value; `None` if there is no such item.
    pub(super) async fn probe(&self, key: &str) -> Result<Option<Probe>> {
        let flags = ["s", "f", "t"];
        let found = self
            .call(self.server_of(key), true, async |conn| conn.meta_get(key, false, None, Some(&flags)).await)
            .await?;
        Ok(found.map(|v| Probe {
            size: v.size.unwrap_or(0),
            client_flags: v.flags.unwrap_or(0),
            ttl: v.ttl_remaining.unwrap_or(-1),
        }))
    }

    /// Appends `value` to the item under `key`, keeping the item's expiry
    /// (Memcached's rule for appends); whether there was an item. Never
    /// creates one.
    pub(super) async fn append(&self, key: &str, value: &[u8]) -> Result<bool> {
        self.call(self.server_of(key), false, async |conn| {
            match conn.meta_set(key, value, false, None, Some(&["MA"])).await {
                Ok(_) => Ok(true),
                Err(McError::Protocol(Status::NotStored | Status::NotFound)) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Stores `value` under `key` as `mode` says, with client flags
    /// `client_flags`, expiring after `ttl` (in Memcached's terms: seconds,
    /// or a Unix time past 30 days). `TooLarge`, before anything is sent, if
    /// the item would not fit in `max_item`.
    pub(super) async fn store(
        &self,
        key: &str,
        value: &[u8],
        mode: Mode,
        ttl: u64,
        client_flags: u32,
    ) -> Result<Stored> {
        self.check_fits(key, value)?;
        let ttl = format!("T{ttl}");
        let client_flags = format!("F{client_flags}");
        let condition = match mode {
            Mode::Add => "ME".to_owned(),
            Mode::Cas(cas) => format!("C{cas}"),
        };
        let flags = [ttl.as_str(), client_flags.as_str(), condition.as_str()];
        self.call(self.server_of(key), false, async |conn| {
            match conn.meta_set(key, value, false, None, Some(&flags)).await {
                Ok(_) => Ok(Stored::Done),
                Err(McError::Protocol(Status::Exists | Status::NotStored)) => Ok(Stored::Exists),
                Err(McError::Protocol(Status::NotFound)) => Ok(Stored::NotFound),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Deletes `key`, only while it still has CAS token `cas` if one is
    /// given. `NotFound` if there was no item, `Exists` if another writer
    /// changed it.
    pub(super) async fn delete(&self, key: &str, cas: Option<u64>) -> Result<Stored> {
        let condition = cas.map(|cas| format!("C{cas}"));
        let flags: Vec<&str> = condition.iter().map(String::as_str).collect();
        self.call(self.server_of(key), true, async |conn| {
            match conn.meta_delete(key, false, None, Some(&flags)).await {
                Ok(_) => Ok(Stored::Done),
                Err(McError::Protocol(Status::NotFound)) => Ok(Stored::NotFound),
                Err(McError::Protocol(Status::Exists)) => Ok(Stored::Exists),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ipv4_or_names_with_a_port_and_no_user() {
        for good in ["127.0.0.1:11211", "cache-1.internal:11211", "localhost:1"] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        for bad in ["[::1]:11211", "::1:11211", "host", "host:", ":11211", "host:0", "host:+1", "ho st:1", "h:1/x"] {
            assert_eq!(check_address(bad).map_err(|e| e.kind()), Err(ErrorKind::Config), "{bad}");
        }
        for secret in ["user:s3cret@127.0.0.1:11211", "user:s3cret@host"] {
            let e = check_address(secret).expect_err("user information is refused");
            assert!(!e.to_string().contains("s3cret") && !e.to_string().contains("user:"), "{e}");
        }
    }
}
