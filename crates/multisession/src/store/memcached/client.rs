//! The commands the Memcached store needs, over `async-memcached`'s meta
//! protocol (`mg`, `ms` with CAS and add modes, `md`), with a bounded
//! `deadpool` pool per server and a consistent-hash ring across servers.
//!
//! Bounds: at most [`POOL`] connections per server, a two-second limit on
//! waiting for one, connecting and each command. A command cut short by its
//! timeout closes its connection (`async-memcached` never reuses a
//! connection with a reply half read), so the pool drops it. Replies are
//! buffered as their bytes arrive, never allocated ahead from a length the
//! server claims; the timeout bounds how much a server can send.
//! `async-memcached` connects over IPv4 only.

use std::collections::HashMap;
use std::time::Duration;

use async_memcached::{Client as Conn, Error as McError, MetaProtocol as _, Status};
use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// How long waiting for a connection, connecting, or one command may take
/// before `Unavailable`.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Connections per server, at most.
pub(super) const POOL: usize = 16;
/// Points per server on the hash ring, as ketama clients use.
const POINTS: u32 = 160;
/// Keys read per `mg` pipeline.
const BATCH: usize = 100;

/// An item read with its CAS token.
pub(super) struct Item {
    pub(super) value: Vec<u8>,
    pub(super) cas: u64,
}

/// How a conditional store is made.
#[derive(Clone, Copy)]
pub(super) enum Mode {
    /// Only if the key does not exist.
    Add,
    /// Only if the item still has this CAS token.
    Cas(u64),
}

/// How a conditional store ended.
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

struct Server {
    addr: String,
    pool: Pool<Connector>,
}

pub(super) struct Client {
    servers: Vec<Server>,
    /// (point, server index), sorted by point.
    ring: Vec<(u32, usize)>,
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
        McError::Protocol(Status::Error(async_memcached::ErrorKind::Server(_))) => "server error".to_owned(),
        McError::Protocol(Status::Error(async_memcached::ErrorKind::Client(_))) => "refused a command".to_owned(),
        McError::Protocol(_) | McError::ParseError(_) => "unexpected reply".to_owned(),
    };
    Error::new(ErrorKind::Unavailable, format!("memcached at {addr}: {what}"))
}

fn timed_out(addr: &str) -> Error {
    Error::new(ErrorKind::Unavailable, format!("memcached at {addr}: no answer within {}s", TIMEOUT.as_secs()))
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
            let valid =
                addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(Error::config(format!("memcached: {addr:?} is not a server address host:port")));
            }
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
        Ok(Self { servers, ring })
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
    async fn call<T>(&self, i: usize, op: impl AsyncFnOnce(&mut Conn) -> std::result::Result<T, McError>) -> Result<T> {
        let server = &self.servers[i];
        let mut conn = server.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => failed(&server.addr, &e),
            _ => timed_out(&server.addr),
        })?;
        match tokio::time::timeout(TIMEOUT, op(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(failed(&server.addr, &e)),
            Err(_) => Err(timed_out(&server.addr)),
        }
    }

    /// The item under `key` with its CAS token.
    pub(super) async fn get(&self, key: &str) -> Result<Option<Item>> {
        let found = self
            .call(self.server_of(key), async |conn| conn.meta_get(key, false, None, Some(&["v", "c"])).await)
            .await?;
        // An empty value comes back as no data: it is an empty item, not none.
        Ok(found.map(|v| Item { value: v.data.unwrap_or_default(), cas: v.cas.unwrap_or(0) }))
    }

    /// The values of those of `keys` that exist, read a batch of keys per
    /// round trip, one connection at a time.
    pub(super) async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, Vec<u8>>> {
        let mut by_server: Vec<Vec<&String>> = vec![Vec::new(); self.servers.len()];
        for key in keys {
            by_server[self.server_of(key)].push(key);
        }
        let mut found = HashMap::with_capacity(keys.len());
        for (i, keys) in by_server.iter().enumerate() {
            for batch in keys.chunks(BATCH) {
                let values = self.call(i, async |conn| conn.meta_get_multi(batch, Some(&["v"])).await).await?;
                for value in values {
                    if let (Some(key), Some(data)) = (value.key, value.data) {
                        found.insert(String::from_utf8_lossy(&key).into_owned(), data);
                    }
                }
            }
        }
        Ok(found)
    }

    /// The size of the item under `key` and its client flags, after
    /// setting its expiry to `ttl`; `None` if there is no such item.
    pub(super) async fn probe(&self, key: &str, ttl: u64) -> Result<Option<(u64, u32)>> {
        let ttl = format!("T{ttl}");
        let flags = ["s", "f", ttl.as_str()];
        let found =
            self.call(self.server_of(key), async |conn| conn.meta_get(key, false, None, Some(&flags)).await).await?;
        Ok(found.map(|v| (v.size.unwrap_or(0), v.flags.unwrap_or(0))))
    }

    /// Appends `value` to the item under `key`; whether there was one.
    pub(super) async fn append(&self, key: &str, value: &[u8]) -> Result<bool> {
        self.call(self.server_of(key), async |conn| match conn.meta_set(key, value, false, None, Some(&["MA"])).await {
            Ok(_) => Ok(true),
            Err(McError::Protocol(Status::NotStored | Status::NotFound)) => Ok(false),
            Err(e) => Err(e),
        })
        .await
    }

    /// Stores `value` under `key` as `mode` says, with client flags
    /// `client_flags`, expiring after `ttl` (in Memcached's terms: seconds,
    /// or a Unix time past 30 days).
    pub(super) async fn store(
        &self,
        key: &str,
        value: &[u8],
        mode: Mode,
        ttl: u64,
        client_flags: u32,
    ) -> Result<Stored> {
        let ttl = format!("T{ttl}");
        let client_flags = format!("F{client_flags}");
        let condition = match mode {
            Mode::Add => "ME".to_owned(),
            Mode::Cas(cas) => format!("C{cas}"),
        };
        let flags = [ttl.as_str(), client_flags.as_str(), condition.as_str()];
        let done = self
            .call(self.server_of(key), async |conn| match conn.meta_set(key, value, false, None, Some(&flags)).await {
                Ok(_) => Ok(Stored::Done),
                Err(McError::Protocol(Status::Exists | Status::NotStored)) => Ok(Stored::Exists),
                Err(McError::Protocol(Status::NotFound)) => Ok(Stored::NotFound),
                Err(e) => Err(e),
            })
            .await?;
        Ok(done)
    }

    /// Deletes `key`; whether it was there.
    pub(super) async fn delete(&self, key: &str) -> Result<bool> {
        self.call(self.server_of(key), async |conn| match conn.meta_delete(key, false, None, None).await {
            Ok(_) => Ok(true),
            Err(McError::Protocol(Status::NotFound)) => Ok(false),
            Err(e) => Err(e),
        })
        .await
    }
}
