//! The L7 load generator of `ringmesh bench --l7`: GETs over keep-alive HTTP/1.1 or h2c
//! (prior knowledge) connections made inside a pod's netns, closed loop (a count or a
//! duration) or at a fixed rate, every answer checked, latency per request into the bench's
//! HDR histogram.
//!
//! Owns only the client side: sockets are created inside the given netns (so the pod's
//! capture rules apply) before the clock starts; one current-thread runtime per load, one task
//! per stream. Must not know about paths, the lab or its proxies (`l7.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::l7_report::Protocol;
use super::stats::Latency;
use crate::inpod::Netns;

/// How long one request may take before the load fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests in flight: `connections` × `streams` per connection (1 for HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub connections: usize,
    pub streams: usize,
}

impl InFlight {
    /// `n` in flight the way each protocol is used: HTTP/1.1 one connection per request in
    /// flight; HTTP/2 up to 8 streams per connection.
    pub fn of(proto: Protocol, n: usize) -> InFlight {
        let n = n.max(1);
        match proto {
            Protocol::Http1 => InFlight {
                connections: n,
                streams: 1,
            },
            Protocol::Http2 => InFlight {
                connections: n.div_ceil(8),
                streams: n.min(8),
            },
        }
    }
}

/// How a load paces its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Closed loop, `n` requests shared by all streams.
    Count(u64),
    /// Closed loop for a while.
    For(Duration),
    /// `per_s` requests/s spread evenly over the streams, for `dur`. A request's latency
    /// counts from its scheduled time when its stream was still waiting for the previous
    /// answer then (so a stall counts against every request it delays), else from when it was
    /// sent (the client's timer is not the path's fault).
    Rate { per_s: u64, dur: Duration },
}

/// Where a load's requests go.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    /// The Host header (HTTP/1.1) or `:authority` (HTTP/2).
    pub authority: String,
    pub path: String,
    /// The body length every answer must have.
    pub body_len: usize,
}

/// What a load measured.
pub struct LoadResult {
    pub latency: Latency,
    pub requests: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.requests as f64 / s
        } else {
            0.0
        }
    }
}

/// GETs `t` from inside `ns` over `inflight` keep-alive connections (made before the clock
/// starts), paced by `pace`; every answer must be 200 with `t.body_len` bytes.
pub fn http_load(
    ns: &Netns,
    t: &HttpTarget,
    proto: Protocol,
    inflight: InFlight,
    pace: Pace,
) -> Result<LoadResult, String> {
    let socks = (0..inflight.connections.max(1))
        .map(|_| connect_in(ns, t.addr))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = Arc::new(ReqSpec::new(t, proto)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client's runtime: {e}"))?;
    let what = format!("{} to {}{}", proto.label(), t.addr, t.path);
    rt.block_on(drive(socks, spec, inflight.streams.max(1), pace))
        .map_err(|e| format!("{what}: {e}"))
}

/// A TCP connection made inside `ns` (so the pod's capture rules apply), Nagle off.
fn connect_in(ns: &Netns, addr: SocketAddr) -> Result<std::net::TcpStream, String> {
    let s = ns
        .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .map_err(|e| format!("connect to {addr}: {e}"))?
        .map_err(|e| format!("connect to {addr} from {}: {e}", ns.path.display()))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// The request every stream sends, built once.
struct ReqSpec {
    proto: Protocol,
    /// Origin form (HTTP/1.1) or absolute (HTTP/2).
    uri: Uri,
    host: HeaderValue,
    body_len: usize,
}

impl ReqSpec {
    fn new(t: &HttpTarget, proto: Protocol) -> Result<ReqSpec, String> {
        let uri = match proto {
            Protocol::Http1 => t.path.clone(),
            Protocol::Http2 => format!("http://{}{}", t.authority, t.path),
        };
        Ok(ReqSpec {
            proto,
            uri: uri.parse().map_err(|e| format!("URI {uri:?}: {e}"))?,
            host: HeaderValue::from_str(&t.authority)
                .map_err(|e| format!("authority {:?}: {e}", t.authority))?,
            body_len: t.body_len,
        })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut r = Request::new(Empty::new());
        *r.uri_mut() = self.uri.clone();
        match self.proto {
            Protocol::Http1 => {
                r.headers_mut().insert(HOST, self.host.clone());
            }
            Protocol::Http2 => *r.version_mut() = Version::HTTP_2,
        }
        r
    }
}

/// A stream's side of a connection.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// One GET, its answer read to the end and checked.
    async fn get(&mut self, spec: &ReqSpec) -> Result<(), String> {
        let req = spec.request();
        let resp = match self {
            Sender::H1(tx) => match tx.ready().await {
                Ok(()) => tx.send_request(req).await,
                Err(e) => Err(e),
            },
            Sender::H2(tx) => match tx.ready().await {
                Ok(()) => tx.send_request(req).await,
                Err(e) => Err(e),
            },
        }
        .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut len = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the answer: {}", error_chain(&e)))?;
            if let Some(d) = frame.data_ref() {
                len += d.len();
            }
        }
        if status != StatusCode::OK || len != spec.body_len {
            return Err(format!(
                "answer {status} with {len} bytes (expected 200 with {})",
                spec.body_len
            ));
        }
        Ok(())
    }
}

/// When one stream sends its requests.
enum StreamPace {
    /// Until the shared count runs out.
    Shared(Arc<AtomicU64>),
    Until(Instant),
    Every {
        first: Instant,
        interval: Duration,
        end: Instant,
    },
}

/// What one stream measured: latency, requests, and when its last answer ended.
type StreamResult = (Latency, u64, Option<Instant>);

async fn drive(
    socks: Vec<std::net::TcpStream>,
    spec: Arc<ReqSpec>,
    streams: usize,
    pace: Pace,
) -> Result<LoadResult, String> {
    let mut senders = Vec::new();
    let mut drivers = Vec::new();
    for s in socks {
        let io = TokioIo::new(tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())?);
        match spec.proto {
            Protocol::Http1 => {
                let (tx, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("handshake: {}", error_chain(&e)))?;
                drivers.push(tokio::spawn(async move {
                    let _ = conn.await;
                }));
                senders.push(Sender::H1(tx));
            }
            Protocol::Http2 => {
                let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2 handshake: {}", error_chain(&e)))?;
                drivers.push(tokio::spawn(async move {
                    let _ = conn.await;
                }));
                for _ in 0..streams {
                    senders.push(Sender::H2(tx.clone()));
                }
            }
        }
    }
    let k = senders.len().max(1);
    let start = Instant::now();
    let shared = match pace {
        Pace::Count(n) => Arc::new(AtomicU64::new(n)),
        _ => Arc::new(AtomicU64::new(0)),
    };
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, tx)| {
            let plan = match pace {
                Pace::Count(_) => StreamPace::Shared(shared.clone()),
                Pace::For(d) => StreamPace::Until(start + d),
                Pace::Rate { per_s, dur } => {
                    let per_s = per_s.max(1) as f64;
                    StreamPace::Every {
                        first: start + Duration::from_secs_f64(i as f64 / per_s),
                        interval: Duration::from_secs_f64(k as f64 / per_s),
                        end: start + dur,
                    }
                }
            };
            tokio::spawn(stream_loop(tx, spec.clone(), plan))
        })
        .collect();
    let mut latency = Latency::default();
    let mut requests = 0;
    let mut last = start;
    let mut failed = None;
    for t in tasks {
        match t.await {
            Ok(Ok((l, n, done))) => {
                latency.merge(&l);
                requests += n;
                last = last.max(done.unwrap_or(start));
            }
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(format!("a client stream panicked: {e}"));
            }
        }
    }
    for d in drivers {
        d.abort();
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(LoadResult {
            latency,
            requests,
            elapsed: last - start,
        }),
    }
}

async fn stream_loop(
    mut tx: Sender,
    spec: Arc<ReqSpec>,
    plan: StreamPace,
) -> Result<StreamResult, String> {
    let mut l = Latency::default();
    let mut n = 0u64;
    let mut last = None;
    let mut j = 0u32;
    loop {
        let t0 = match &plan {
            StreamPace::Shared(left) => {
                if left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                Instant::now()
            }
            StreamPace::Until(end) => {
                let now = Instant::now();
                if now >= *end {
                    break;
                }
                now
            }
            StreamPace::Every {
                first,
                interval,
                end,
            } => {
                let due = *first + *interval * j;
                if due >= *end {
                    break;
                }
                j += 1;
                if Instant::now() >= due {
                    // Late because the previous answer came late: it counts.
                    due
                } else {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                }
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, tx.get(&spec))
            .await
            .map_err(|_| format!("request {}: no answer within {REQUEST_TIMEOUT:?}", n + 1))?
            .map_err(|e| format!("request {}: {e}", n + 1))?;
        let done = Instant::now();
        l.record_us((done - t0).as_micros() as u64);
        n += 1;
        last = Some(done);
    }
    Ok((l, n, last))
}

use crate::lab::http_apps::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_per_protocol() {
        assert_eq!(
            InFlight::of(Protocol::Http1, 16),
            InFlight {
                connections: 16,
                streams: 1
            }
        );
        assert_eq!(
            InFlight::of(Protocol::Http2, 16),
            InFlight {
                connections: 2,
                streams: 8
            }
        );
        assert_eq!(
            InFlight::of(Protocol::Http2, 1),
            InFlight {
                connections: 1,
                streams: 1
            }
        );
        assert_eq!(InFlight::of(Protocol::Http1, 0).connections, 1);
    }

    #[test]
    fn requests_have_the_protocols_shape() {
        let t = HttpTarget {
            addr: "198.19.2.1:81".parse().unwrap(),
            authority: "web.default.svc.cluster.local:81".into(),
            path: "/bytes/1024".into(),
            body_len: 1024,
        };
        let h2 = ReqSpec::new(&t, Protocol::Http2).unwrap().request();
        assert_eq!(
            h2.uri().to_string(),
            "http://web.default.svc.cluster.local:81/bytes/1024"
        );
        assert_eq!(h2.version(), Version::HTTP_2);
        assert!(h2.headers().get(HOST).is_none());
        let h1 = ReqSpec::new(&t, Protocol::Http1).unwrap().request();
        assert_eq!(h1.uri().to_string(), "/bytes/1024");
        assert_eq!(h1.headers()[HOST], "web.default.svc.cluster.local:81");
    }
}
