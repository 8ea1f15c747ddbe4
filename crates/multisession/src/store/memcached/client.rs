//! A small Memcached text-protocol client: the commands the store needs
//! (`gets`, `add`, `cas`, `append`, `delete`), a few pooled connections per
//! server, and a consistent-hash ring across servers.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::{Error, Result};

/// How long connecting or one command may take before `Unavailable`.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per server.
const POOL: usize = 16;
/// Points per server on the hash ring, as ketama clients use.
const POINTS: u32 = 160;

/// An item read with `gets`: its bytes and CAS token.
pub(super) struct Item {
    pub(super) value: Vec<u8>,
    pub(super) cas: u64,
}

/// How a conditional store ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stored {
    Done,
    /// `add` found the key; `cas` found another writer's change.
    Exists,
    /// `cas` or `append` found no item.
    NotFound,
}

struct Server {
    addr: String,
    idle: Mutex<Vec<BufStream<TcpStream>>>,
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

fn io(addr: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::unavailable(format!("memcached at {addr} failed"), e)
}

impl Client {
    pub(super) fn new(addrs: Vec<String>) -> Self {
        let mut ring = Vec::with_capacity(addrs.len() * POINTS as usize);
        for (i, addr) in addrs.iter().enumerate() {
            for n in 0..POINTS {
                ring.push((point(format!("{addr}-{n}").as_bytes()), i));
            }
        }
        ring.sort_unstable();
        let servers = addrs.into_iter().map(|addr| Server { addr, idle: Mutex::new(Vec::new()) }).collect();
        Self { servers, ring }
    }

    /// The server that holds `key`: the first ring point at or after the
    /// key's own, so adding a server moves only the keys it takes over.
    fn server(&self, key: &str) -> &Server {
        let p = point(key.as_bytes());
        let at = self.ring.partition_point(|(q, _)| *q < p) % self.ring.len();
        &self.servers[self.ring[at].1]
    }

    /// Sends `request` to the server of `key` and reads one reply with
    /// `read`; a connection that failed is dropped, not reused.
    async fn call<T>(
        &self,
        key: &str,
        request: &[u8],
        read: impl AsyncFnOnce(&mut BufStream<TcpStream>) -> std::io::Result<T>,
    ) -> Result<T> {
        let server = self.server(key);
        let pooled = server.idle.lock().await.pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(&server.addr))
                    .await
                    .map_err(|e| io(&server.addr, e))?
                    .map_err(|e| io(&server.addr, e))?;
                stream.set_nodelay(true).map_err(|e| io(&server.addr, e))?;
                BufStream::new(stream)
            }
        };
        let reply = tokio::time::timeout(TIMEOUT, async {
            conn.write_all(request).await?;
            conn.flush().await?;
            read(&mut conn).await
        })
        .await
        .map_err(|e| io(&server.addr, e))?
        .map_err(|e| io(&server.addr, e))?;
        let mut idle = server.idle.lock().await;
        if idle.len() < POOL {
            idle.push(conn);
        }
        Ok(reply)
    }

    pub(super) async fn gets(&self, key: &str) -> Result<Option<Item>> {
        self.call(key, format!("gets {key}\r\n").as_bytes(), async |conn| {
            let header = line(conn).await?;
            if header == "END" {
                return Ok(None);
            }
            // VALUE <key> <flags> <bytes> <cas>
            let fields: Vec<&str> = header.split(' ').collect();
            let (Some(bytes), Some(cas)) = (fields.get(3), fields.get(4)) else {
                return Err(protocol(&header));
            };
            let bytes: usize = bytes.parse().map_err(|_| protocol(&header))?;
            let cas: u64 = cas.parse().map_err(|_| protocol(&header))?;
            let mut value = vec![0; bytes + 2];
            conn.read_exact(&mut value).await?;
            value.truncate(bytes);
            let end = line(conn).await?;
            if end != "END" {
                return Err(protocol(&end));
            }
            Ok(Some(Item { value, cas }))
        })
        .await
    }

    /// `add`, `set` or `cas <token>` of `value`, expiring at `expires` (Unix
    /// seconds).
    pub(super) async fn store(&self, command: &str, key: &str, value: &[u8], expires: i64) -> Result<Stored> {
        let (verb, token) = command.split_once(' ').unwrap_or((command, ""));
        let mut request = format!("{verb} {key} 0 {expires} {}", value.len());
        if !token.is_empty() {
            request.push(' ');
            request.push_str(token);
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        let reply = self.call(key, &request, async |conn| line(conn).await).await?;
        match reply.as_str() {
            "STORED" => Ok(Stored::Done),
            "NOT_STORED" if verb == "add" => Ok(Stored::Exists),
            "NOT_STORED" => Ok(Stored::NotFound),
            "EXISTS" => Ok(Stored::Exists),
            "NOT_FOUND" => Ok(Stored::NotFound),
            _ => Err(Error::unavailable("memcached refused a store", protocol(&reply))),
        }
    }

    pub(super) async fn delete(&self, key: &str) -> Result<bool> {
        let reply = self.call(key, format!("delete {key}\r\n").as_bytes(), async |conn| line(conn).await).await?;
        match reply.as_str() {
            "DELETED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            _ => Err(Error::unavailable("memcached refused a delete", protocol(&reply))),
        }
    }
}

fn protocol(reply: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected memcached reply {reply:?}"))
}

async fn line(conn: &mut BufStream<TcpStream>) -> std::io::Result<String> {
    let mut text = String::new();
    if conn.read_line(&mut text).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}
