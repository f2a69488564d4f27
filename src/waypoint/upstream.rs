//! The waypoint's second hop: HTTP connections to endpoints, per shard.
//!
//! An endpoint with a node proxy (HBONE workload) is reached over a pooled HBONE connection
//! to its `IP:15008` with `:authority` = `IP:targetPort` and the waypoint's own certificate —
//! so the destination node proxy applies its L4 policy with the waypoint as the source. An
//! endpoint without one gets plain TCP to `IP:targetPort`. On that byte stream runs an
//! HTTP/1.1 connection (one request at a time; idle ones are kept per endpoint and reused)
//! or one HTTP/2 connection per endpoint (multiplexed), with hyper.
//!
//! Connect errors are kept apart from errors after the request went out: only the first can
//! always be retried (the request body has not been consumed).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;

use super::{LocalExec, WaypointShard};
use crate::hbone::{self, ConnectHeaders};
use crate::identity::Identity;
use crate::io::h2io::H2Io;
use crate::proxy::h2conn;
use crate::proxy::pool::PoolKey;

/// Body of a request sent upstream: the client's, a replayable empty one, or a mirror's copy.
pub type UpBody = http_body_util::Either<
    super::http::UpCounted,
    http_body_util::Either<http_body_util::Empty<Bytes>, super::mirror::MirrorBody>,
>;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1: usize = 64;

/// How an endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// HBONE to `next_hop` (the endpoint's 15008) asking for `authority`.
    Hbone {
        next_hop: SocketAddr,
        authority: SocketAddr,
        expected: Vec<Identity>,
    },
    /// Plain TCP (an endpoint outside the mesh).
    Plain { addr: SocketAddr },
}

impl Transport {
    /// The endpoint's own address (what the app listens on).
    pub fn endpoint(&self) -> SocketAddr {
        match self {
            Transport::Hbone { authority, .. } => *authority,
            Transport::Plain { addr } => *addr,
        }
    }
}

/// The HTTP version spoken to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpProto {
    Http1,
    Http2,
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (retriable: nothing was sent).
    #[error("upstream connect error: {0}")]
    Connect(String),
    /// The connection failed after the request went out.
    #[error("upstream reset: {0}")]
    Reset(String),
}

enum Sender {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

/// The shard's connections to endpoints.
#[derive(Default)]
pub struct Clients {
    h1: RefCell<HashMap<Transport, Vec<http1::SendRequest<UpBody>>>>,
    h2: RefCell<HashMap<Transport, http2::SendRequest<UpBody>>>,
}

impl Clients {
    /// Connections held (HTTP/1.1 idle + HTTP/2), for the dump.
    pub fn len(&self) -> usize {
        self.h1.borrow().values().map(Vec::len).sum::<usize>() + self.h2.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn checkout(&self, t: &Transport, proto: UpProto) -> Option<Sender> {
        match proto {
            UpProto::Http1 => {
                let mut h1 = self.h1.borrow_mut();
                let list = h1.get_mut(t)?;
                list.retain(|s| !s.is_closed());
                let i = list.iter().position(|s| s.is_ready())?;
                Some(Sender::H1(list.swap_remove(i)))
            }
            UpProto::Http2 => {
                let mut h2 = self.h2.borrow_mut();
                match h2.get(t) {
                    Some(s) if !s.is_closed() => Some(Sender::H2(s.clone())),
                    Some(_) => {
                        h2.remove(t);
                        None
                    }
                    None => None,
                }
            }
        }
    }

    fn checkin(&self, t: &Transport, s: Sender) {
        match s {
            Sender::H1(s) => {
                let mut h1 = self.h1.borrow_mut();
                let list = h1.entry(t.clone()).or_default();
                if list.len() < MAX_IDLE_H1 {
                    list.push(s);
                }
            }
            Sender::H2(s) => {
                self.h2.borrow_mut().insert(t.clone(), s);
            }
        }
    }
}

/// A connection ready for one request.
pub struct Ready {
    sender: Sender,
    transport: Transport,
}

/// A ready connection to `t`: a pooled one, or a new one (HBONE with the waypoint's
/// identity, or plain TCP).
pub async fn connect(
    ctx: &Rc<WaypointShard>,
    t: &Transport,
    proto: UpProto,
    client: SocketAddr,
    service_host: Option<&str>,
) -> Result<Ready, UpstreamError> {
    if let Some(sender) = ctx.clients.checkout(t, proto) {
        return Ok(Ready {
            sender,
            transport: t.clone(),
        });
    }
    let io = TokioIo::new(open(ctx, t, client, service_host).await?);
    let who = t.endpoint();
    let sender = match proto {
        UpProto::Http1 => {
            let (s, conn) = http1::handshake(io)
                .await
                .map_err(|e| UpstreamError::Connect(format!("HTTP/1.1 to {who}: {e}")))?;
            crate::runtime::engine::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("HTTP/1.1 connection to {who} ended: {e}");
                }
            });
            Sender::H1(s)
        }
        UpProto::Http2 => {
            let (s, conn) = http2::Builder::new(LocalExec)
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::Connect(format!("HTTP/2 to {who}: {e}")))?;
            crate::runtime::engine::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("HTTP/2 connection to {who} ended: {e}");
                }
            });
            Sender::H2(s)
        }
    };
    Ok(Ready {
        sender,
        transport: t.clone(),
    })
}

/// The byte stream to an endpoint (what HTTP runs on, or TCP traffic is copied to).
pub type UpStream = tokio_util::either::Either<crate::runtime::net::Stream, H2Io>;

/// Opens a byte stream to `t`: HBONE (a stream on a pooled connection, the waypoint's
/// identity) or plain TCP.
pub async fn open(
    ctx: &Rc<WaypointShard>,
    t: &Transport,
    client: SocketAddr,
    service_host: Option<&str>,
) -> Result<UpStream, UpstreamError> {
    let cfg = &ctx.cfg;
    Ok(match t {
        Transport::Plain { addr } => {
            let sock = crate::inpod::Netns::current()
                .connect_socket(*addr, cfg.proxy.mark, None)
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let s = crate::runtime::net::connect(sock, *addr, cfg.proxy.connect_timeout)
                .await
                .map_err(UpstreamError::Connect)?;
            let _ = s.set_nodelay(true);
            tokio_util::either::Either::Left(s)
        }
        Transport::Hbone {
            next_hop,
            authority,
            expected,
        } => {
            let cert = ctx
                .certs
                .load()
                .get(&cfg.identity)
                .cloned()
                .ok_or_else(|| {
                    UpstreamError::Connect(format!(
                        "no certificate for {} (the CA has not issued one)",
                        cfg.identity
                    ))
                })?;
            let key = PoolKey {
                src: cfg.identity.clone(),
                dst: expected.clone(),
                addr: *next_hop,
                src_pod: String::new(),
            };
            let headers = connect_headers(client, service_host, rand::random());
            let req = hbone::connect_request(*authority, &headers);
            let p = &cfg.proxy;
            let max = p.h2.client_max_streams;
            let stream = ctx
                .pool
                .stream(&key, max, p.connect_timeout, req, |deadline| async move {
                    let sock = crate::inpod::Netns::current()
                        .connect_socket(*next_hop, p.mark, None)
                        .map_err(|e| h2conn::DialError::Connect(e.to_string()))?;
                    let tcp = crate::runtime::net::connect(sock, *next_hop, p.connect_timeout)
                        .await
                        .map_err(|e| {
                            h2conn::DialError::Connect(format!(
                                "{e} (is HBONE port {} reachable?)",
                                next_hop.port()
                            ))
                        })?;
                    let _ = tcp.set_nodelay(true);
                    let (h2s, records) = (&p.h2, p.tls_records);
                    h2conn::dial(tcp, cert.client.clone(), expected, h2s, records, &deadline).await
                })
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let (send, recv, guard) = stream.into_parts();
            tokio_util::either::Either::Right(H2Io::new(send, recv, Bytes::new()).with_guard(guard))
        }
    })
}

/// The headers of the CONNECT to an endpoint for `client`'s request to a service
/// (`service_host`), `trace` the random trace and span ids. A hostname that cannot go into a
/// header (a control character: control-plane input) is left out, with a debug line:
/// `forwarded` then names the client alone, as for a workload addressed directly — building
/// the request with it would panic.
pub(super) fn connect_headers(
    client: SocketAddr,
    service_host: Option<&str>,
    trace: (u128, u64),
) -> ConnectHeaders {
    let service_host = service_host.and_then(|h| {
        if http::HeaderValue::from_str(h).is_ok() {
            Some(h.to_string())
        } else {
            tracing::debug!(
                "service hostname {h:?} cannot go into a forwarded header: left out of the CONNECT"
            );
            None
        }
    });
    ConnectHeaders {
        client,
        service_host,
        baggage: String::new(),
        traceparent: hbone::traceparent(trace.0, trace.1),
    }
}

impl Ready {
    /// Sends the request; the connection goes back to the shard's pool for the next one.
    pub async fn send(
        self,
        ctx: &WaypointShard,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let Ready {
            mut sender,
            transport,
        } = self;
        let r = match &mut sender {
            Sender::H1(s) => {
                if s.ready().await.is_err() {
                    return Err(UpstreamError::Connect("HTTP/1.1 connection closed".into()));
                }
                let f = s.send_request(req);
                ctx.clients.checkin(&transport, sender);
                f.await
            }
            Sender::H2(s) => {
                let f = s.send_request(req);
                ctx.clients.checkin(&transport, sender);
                f.await
            }
        };
        r.map_err(|e| UpstreamError::Reset(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_hostname_that_cannot_be_a_header_is_left_out_of_the_connect() {
        let client: SocketAddr = "198.18.0.1:5000".parse().unwrap();
        let to: SocketAddr = "198.18.0.2:8080".parse().unwrap();
        let h = connect_headers(client, Some("bad\nhost"), (1, 2));
        assert_eq!(h.service_host, None);
        let req = hbone::connect_request(to, &h);
        assert_eq!(req.headers()["forwarded"], "for=\"198.18.0.1:5000\"");
        let h = connect_headers(client, Some("reviews.ns.svc.cluster.local"), (1, 2));
        let req = hbone::connect_request(to, &h);
        assert_eq!(
            req.headers()["forwarded"],
            "for=\"198.18.0.1:5000\";host=reviews.ns.svc.cluster.local"
        );
        assert_eq!(
            req.headers()["traceparent"],
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
    }
}
