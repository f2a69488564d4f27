//! The per-shard HBONE connection pool.
//!
//! Keyed (source identity, expected destination identities, next-hop address, source pod), as
//! ztunnel keys it. A connection carries up to `client_max_streams` streams; past that another
//! is opened. One dial at a time per key: streams that find one under way wait for it, so a
//! burst of new streams makes one handshake, not N. Every stream is bounded by its own dial
//! deadline (`h2conn::DialDeadline`), waiting included; a dial that fails or times out fails
//! the streams that waited for it and leaves the key free, so the next stream dials afresh; a
//! dial whose caller went away hands over to a waiter. A pooled connection that refuses a new
//! stream before processing it (GOAWAY from a draining peer, closed) is dropped and the stream
//! tried once more. Unused connections are released after the idle timeout. Shard-local: no
//! locks shared with other shards.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::Request;

use super::h2conn::{Carrier, ClientConn, DialDeadline, DialError};
use crate::identity::Identity;
use crate::io::link::Link;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src: Identity,
    pub dst: Vec<Identity>,
    pub addr: SocketAddr,
    pub src_pod: String,
}

#[derive(Default)]
pub struct Pool {
    conns: RefCell<HashMap<PoolKey, Vec<Rc<ClientConn>>>>,
    dialing: RefCell<HashMap<PoolKey, Rc<Dialing>>>,
}

/// The dial under way for a key.
struct Dialing {
    /// The dial's deadline (for the phase it is in).
    deadline: DialDeadline,
    /// Woken when the dial ends, however it ends.
    done: tokio::sync::Notify,
    /// Why it failed, for the streams that waited for it.
    failed: RefCell<Option<String>>,
}

/// Held by the stream that dials: when the dial ends — done, failed, or dropped with its
/// caller — the key is free again and the waiters wake.
struct DialGuard<'a> {
    pool: &'a Pool,
    key: &'a PoolKey,
    dialing: Rc<Dialing>,
}

impl Drop for DialGuard<'_> {
    fn drop(&mut self) {
        let mut dialing = self.pool.dialing.borrow_mut();
        if dialing
            .get(self.key)
            .is_some_and(|d| Rc::ptr_eq(d, &self.dialing))
        {
            dialing.remove(self.key);
        }
        self.dialing.done.notify_waiters();
    }
}

/// Errors opening an HBONE stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("HBONE stream to {addr} failed: {source}")]
    H2 { addr: SocketAddr, source: h2::Error },
    #[error("HBONE CONNECT to {addr} answered {status}")]
    Status {
        addr: SocketAddr,
        status: http::StatusCode,
    },
    #[error("HBONE stream to {addr}: refused on two pooled connections in a row")]
    Retried { addr: SocketAddr },
    #[error("HBONE to {addr}: the pooled connection is of the other codec (a bug)")]
    Carrier { addr: SocketAddr },
}

/// A pooled link with room for one more tunnel, and that tunnel's share of it.
pub struct LinkSlot {
    pub link: Link,
    pub peer: crate::identity::Identity,
    _slot: Slot,
}

impl LinkSlot {
    /// The guard that holds this tunnel's share of the pooled connection until dropped.
    pub fn into_parts(self) -> (Link, crate::identity::Identity, Box<dyn std::any::Any>) {
        (self.link, self.peer, Box::new(self._slot))
    }
}

/// How opening a stream failed: `Refused` before the peer processed it (safe to retry).
enum Open {
    Refused(StreamError),
    Failed(StreamError),
}

/// An open HBONE stream; holds its connection's stream count until dropped.
pub struct Stream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub peer: Identity,
    _slot: Slot,
}

/// One stream's share of a pooled connection, returned on drop.
struct Slot(Rc<ClientConn>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.streams.set(self.0.streams.get().saturating_sub(1));
        self.0.last_used.set(Instant::now());
    }
}

impl Stream {
    /// The stream's halves, and a guard that holds its share of the pooled connection until
    /// dropped (for adapters that own the halves, e.g. `io::h2io::H2Io`).
    pub fn into_parts(self) -> (SendStream<Bytes>, RecvStream, Box<dyn std::any::Any>) {
        (self.send, self.recv, Box::new(self._slot))
    }
}

impl Pool {
    /// Opens a CONNECT stream for `key`, reusing a pooled connection with room or dialing a
    /// new one with `dial` (or waiting for the dial already under way for `key`), all within
    /// `dial_timeout`: `dial` gets the deadline to hold its phases to, and is cut at it
    /// anyway. Then waits for the 200 response.
    pub async fn stream<F, Fut>(
        &self,
        key: &PoolKey,
        max_streams: usize,
        dial_timeout: Duration,
        req: Request<()>,
        dial: F,
    ) -> Result<Stream, StreamError>
    where
        F: FnOnce(DialDeadline) -> Fut,
        Fut: std::future::Future<Output = Result<ClientConn, DialError>>,
    {
        let (parts, ()) = req.into_parts();
        let deadline = DialDeadline::new(key.addr, dial_timeout, Instant::now());
        let mut dial = Some(dial);
        // A pooled connection the peer has sent GOAWAY on (it is draining: a rolling update)
        // or closed refuses the stream before anything was sent: try once more, on another
        // pooled connection or a fresh one.
        for attempt in 0..2 {
            let (conn, reused) = self
                .connection(key, max_streams, deadline.clone(), &mut dial)
                .await?;
            let retry = reused && attempt == 0;
            match self.open(&conn, key.addr, parts.clone()).await {
                Ok(s) => return Ok(s),
                Err(Open::Refused(e)) if retry => {
                    tracing::debug!(addr = %key.addr, "pooled HBONE connection refused a new stream ({e}): retrying");
                }
                Err(Open::Refused(e) | Open::Failed(e)) => return Err(e),
            }
        }
        Err(StreamError::Retried { addr: key.addr })
    }

    /// A link for one more tunnel to `key`: a pooled one with room or a new one from `dial`
    /// (or the dial under way for `key`), within `dial_timeout`, as for [`Pool::stream`].
    /// The tunnel is opened on it by the caller (`Link::open`).
    pub async fn link<F, Fut>(
        &self,
        key: &PoolKey,
        max_streams: usize,
        dial_timeout: Duration,
        dial: F,
    ) -> Result<LinkSlot, StreamError>
    where
        F: FnOnce(DialDeadline) -> Fut,
        Fut: std::future::Future<Output = Result<ClientConn, DialError>>,
    {
        let deadline = DialDeadline::new(key.addr, dial_timeout, Instant::now());
        let mut dial = Some(dial);
        let (conn, _) = self
            .connection(key, max_streams, deadline, &mut dial)
            .await?;
        let Carrier::Link(link) = &conn.carrier else {
            return Err(StreamError::Carrier { addr: key.addr });
        };
        Ok(LinkSlot {
            link: link.clone(),
            peer: conn.peer.clone(),
            _slot: Slot(conn.clone()),
        })
    }

    /// Opens one CONNECT stream on `conn` and waits for the 200.
    async fn open(
        &self,
        conn: &Rc<ClientConn>,
        addr: SocketAddr,
        parts: http::request::Parts,
    ) -> Result<Stream, Open> {
        let slot = Slot(conn.clone());
        let h2e = |source| StreamError::H2 { addr, source };
        let Carrier::H2(sender) = &conn.carrier else {
            return Err(Open::Failed(StreamError::Carrier { addr }));
        };
        let mut sender = match sender.clone().ready().await {
            Ok(s) => s,
            Err(e) => {
                conn.dead.set(true);
                return Err(Open::Refused(h2e(e)));
            }
        };
        let (resp, send) = match sender.send_request(Request::from_parts(parts, ()), false) {
            Ok(x) => x,
            Err(e) => {
                conn.dead.set(true);
                return Err(Open::Refused(h2e(e)));
            }
        };
        let resp = match resp.await {
            Ok(r) => r,
            // GOAWAY with a last stream id below ours, or REFUSED_STREAM: never processed.
            Err(e) if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                conn.dead.set(true);
                return Err(Open::Refused(h2e(e)));
            }
            Err(e) => return Err(Open::Failed(h2e(e))),
        };
        if resp.status() != http::StatusCode::OK {
            return Err(Open::Failed(StreamError::Status {
                addr,
                status: resp.status(),
            }));
        }
        Ok(Stream {
            send,
            recv: resp.into_body(),
            peer: conn.peer.clone(),
            _slot: slot,
        })
    }

    /// A connection for one more stream: a pooled one with room, the one the dial under way
    /// makes, or a new one (`dial`, taken: it dials once); true when it was already pooled.
    async fn connection<F, Fut>(
        &self,
        key: &PoolKey,
        max_streams: usize,
        deadline: DialDeadline,
        dial: &mut Option<F>,
    ) -> Result<(Rc<ClientConn>, bool), DialError>
    where
        F: FnOnce(DialDeadline) -> Fut,
        Fut: std::future::Future<Output = Result<ClientConn, DialError>>,
    {
        loop {
            if let Some(c) = self.checkout(key, max_streams) {
                return Ok((c, true));
            }
            let under_way = self.dialing.borrow().get(key).cloned();
            let Some(other) = under_way else {
                let Some(d) = dial.take() else {
                    return Err(DialError::Shared(
                        "a fresh connection refused the stream too".into(),
                    ));
                };
                return self.dial(key, deadline, d).await.map(|c| (c, false));
            };
            let left = deadline.remaining(Instant::now());
            if crate::runtime::engine::timeout(left, other.done.notified())
                .await
                .is_err()
            {
                return Err(deadline.waited(other.deadline.phase()));
            }
            if let Some(why) = other.failed.borrow().clone() {
                return Err(DialError::Shared(why));
            }
            // It made a connection (take a stream on it, or dial another if it filled up
            // meanwhile) or its caller went away (dial ourselves): look again.
        }
    }

    /// Dials a connection for `key` as the key's one dial under way, within `deadline`.
    async fn dial<F, Fut>(
        &self,
        key: &PoolKey,
        deadline: DialDeadline,
        dial: F,
    ) -> Result<Rc<ClientConn>, DialError>
    where
        F: FnOnce(DialDeadline) -> Fut,
        Fut: std::future::Future<Output = Result<ClientConn, DialError>>,
    {
        let dialing = Rc::new(Dialing {
            deadline: deadline.clone(),
            done: tokio::sync::Notify::new(),
            failed: RefCell::new(None),
        });
        self.dialing
            .borrow_mut()
            .insert(key.clone(), dialing.clone());
        let _guard = DialGuard {
            pool: self,
            key,
            dialing: dialing.clone(),
        };
        // Boxed: a dial's state (TLS, HTTP/2 handshakes) is large and short-lived, and the
        // caller's future (a connection's task) would keep room for it as long as it lives.
        let dialing_now = Box::pin(dial(deadline.clone()));
        let left = deadline.remaining(Instant::now());
        let dialed = crate::runtime::engine::timeout(left, dialing_now)
            .await
            .unwrap_or_else(|_| Err(deadline.expired()));
        match dialed {
            Ok(c) => {
                let c = Rc::new(c);
                c.streams.set(1);
                self.conns
                    .borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .push(c.clone());
                Ok(c)
            }
            Err(e) => {
                *dialing.failed.borrow_mut() = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn checkout(&self, key: &PoolKey, max_streams: usize) -> Option<Rc<ClientConn>> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.is_dead());
        let c = list.iter().find(|c| c.streams.get() < max_streams)?.clone();
        c.streams.set(c.streams.get() + 1);
        c.last_used.set(Instant::now());
        Some(c)
    }

    /// Drops connections with no streams that were unused for `idle`.
    pub fn evict_idle(&self, idle: Duration) {
        let now = Instant::now();
        let mut conns = self.conns.borrow_mut();
        conns.retain(|_, list| {
            list.retain(|c| {
                !c.is_dead()
                    && (c.streams.get() > 0
                        || now.saturating_duration_since(c.last_used.get()) < idle)
            });
            !list.is_empty()
        });
    }

    /// Pooled connections (all keys).
    pub fn len(&self) -> usize {
        self.conns.borrow().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
