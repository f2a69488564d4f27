//! The per-shard HBONE connection pool.
//!
//! Keyed (source identity, expected destination identities, next-hop address, source pod), as
//! ztunnel keys it. A connection carries up to `client_max_streams` streams; past that another
//! is opened. Dialing is serialized per key, so a burst of new streams makes one handshake,
//! not N. Unused connections are released after the idle timeout. Shard-local: no locks
//! shared with other shards.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::Request;

use super::h2conn::{ClientConn, DialError};
use crate::identity::Identity;

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
    dialing: RefCell<HashMap<PoolKey, Rc<tokio::sync::Mutex<()>>>>,
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
    /// new one with `dial`. Waits for the 200 response.
    pub async fn stream<F, Fut>(
        &self,
        key: &PoolKey,
        max_streams: usize,
        req: Request<()>,
        dial: F,
    ) -> Result<Stream, StreamError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<ClientConn, DialError>>,
    {
        let conn = match self.checkout(key, max_streams) {
            Some(c) => c,
            None => {
                let lock = self
                    .dialing
                    .borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .clone();
                let _g = lock.lock().await;
                // Someone else may have dialed while we waited.
                match self.checkout(key, max_streams) {
                    Some(c) => c,
                    None => {
                        let c = Rc::new(dial().await?);
                        c.streams.set(1);
                        self.conns
                            .borrow_mut()
                            .entry(key.clone())
                            .or_default()
                            .push(c.clone());
                        c
                    }
                }
            }
        };
        let slot = Slot(conn.clone());
        let addr = key.addr;
        let h2e = |source| StreamError::H2 { addr, source };
        let mut sender = conn.sender.clone().ready().await.map_err(|e| {
            conn.dead.set(true);
            h2e(e)
        })?;
        let (resp, send) = sender.send_request(req, false).map_err(h2e)?;
        let resp = resp.await.map_err(h2e)?;
        if resp.status() != http::StatusCode::OK {
            return Err(StreamError::Status {
                addr,
                status: resp.status(),
            });
        }
        Ok(Stream {
            send,
            recv: resp.into_body(),
            peer: conn.peer.clone(),
            _slot: slot,
        })
    }

    fn checkout(&self, key: &PoolKey, max_streams: usize) -> Option<Rc<ClientConn>> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.dead.get());
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
                !c.dead.get() && (c.streams.get() > 0 || now - c.last_used.get() < idle)
            });
            !list.is_empty()
        });
        self.dialing
            .borrow_mut()
            .retain(|k, l| conns.contains_key(k) || Rc::strong_count(l) > 1);
    }

    /// Pooled connections (all keys).
    pub fn len(&self) -> usize {
        self.conns.borrow().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
