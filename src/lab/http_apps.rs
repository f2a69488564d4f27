//! HTTP apps run inside pod namespaces for the waypoint's tests and the demo: a server that
//! answers every request with a JSON description of what it received (its name, method, path,
//! version, headers, peer, body length), over HTTP/1.1 and h2c (prior knowledge) on one port,
//! with a few special paths (`/delay/<ms>`, `/status/<code>`, `/bytes/<n>`, `/_seen`: the
//! descriptions of the last [`SEEN`] requests it answered, oldest first) and a unary gRPC
//! answer with real HTTP/2 trailers; and the matching blocking clients (one request, many on
//! one connection, a gRPC call, raw bytes for malformed-HTTP tests).
//!
//! Owns only these apps; the proxy never uses them. Each server runs a current-thread tokio
//! runtime on its own std thread and lives as long as the process; each client call makes its
//! own runtime. Every socket is created inside the given netns and stays there.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::inpod::Netns;

/// The gRPC method the server fails with `grpc-status: 13` (INTERNAL), `grpc-message: failed`.
pub const GRPC_FAIL_PATH: &str = "/echo.Echo/Fail";

/// The longest `/delay/<ms>` the server accepts (a larger one answers 400).
pub const MAX_DELAY_MS: u64 = 600_000;

/// The largest `/bytes/<n>` the server accepts (a larger one answers 400).
pub const MAX_BYTES: usize = 256 << 20;

/// How many request descriptions a server keeps for `GET /_seen`.
pub const SEEN: usize = 64;

/// The timeout of [`http_get`], [`http_requests`] and [`grpc_call`]: for the connect, and
/// for each request's complete answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer a client received, read to the end.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The trailers, when the answer had any (HTTP/2 trailers frame, HTTP/1.1 chunked).
    pub trailers: Option<HeaderMap>,
}

impl HttpReply {
    /// The body parsed as JSON (the server's description of the request it got).
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "answer {} is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    /// A header of the answer as text (None when absent or not text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Serves HTTP/1.1 and h2c on `[::]:port` inside `ns` as the app `name`.
pub fn serve_http(ns: &Netns, port: u16, name: &str) -> std::io::Result<()> {
    serve_http_on(ns, (Ipv6Addr::UNSPECIFIED, port).into(), name).map(|_| ())
}

/// Serves HTTP/1.1 and h2c on `addr` inside `ns` as the app `name`; returns the bound address
/// (port 0 picks a free one). The bind happens before this returns, so a client may connect
/// at once.
pub fn serve_http_on(ns: &Netns, addr: SocketAddr, name: &str) -> std::io::Result<SocketAddr> {
    let served_by = HeaderValue::from_str(name).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("app name {name:?} cannot be an x-served-by header value; pick a plain one"),
        )
    })?;
    let app = Arc::new(App {
        name: name.to_string(),
        served_by,
        seen: std::sync::Mutex::new(VecDeque::new()),
    });
    let l = ns
        .run(|| std::net::TcpListener::bind(addr))
        .map_err(std::io::Error::other)??;
    l.set_nonblocking(true)?;
    let bound = l.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let l = {
        let _in_rt = rt.enter();
        tokio::net::TcpListener::from_std(l)?
    };
    std::thread::Builder::new()
        .name(format!("http-{}", bound.port()))
        .spawn(move || rt.block_on(accept_loop(l, app)))?;
    Ok(bound)
}

/// Sends one request on a new connection made inside `ns` (HTTP/1.1, or h2c with prior
/// knowledge when `h2`) and reads the whole answer. The Host header (HTTP/1.1) or the
/// `:authority` (h2) comes from the URI's authority, else the request's Host header, else
/// `addr`. `timeout` applies to the connect and, separately, to the complete answer.
pub fn http_request(
    ns: &Netns,
    addr: SocketAddr,
    req: Request<Bytes>,
    h2: bool,
    timeout: Duration,
) -> Result<HttpReply, String> {
    let mut out = exchange(ns, addr, h2, timeout, vec![req])?;
    out.pop()
        .ok_or_else(|| format!("{addr}: no answer (the client sent no request)"))
}

/// `GET path` over HTTP/1.1 with extra `headers`, [`CLIENT_TIMEOUT`].
pub fn http_get(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpReply, String> {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Bytes::new())
        .map_err(|e| format!("cannot build GET {path} with {headers:?}: {e}"))?;
    http_request(ns, addr, req, false, CLIENT_TIMEOUT)
}

/// `n` GETs of `path`, one after the other, on ONE connection (HTTP/1.1 keep-alive, or h2
/// streams when `h2`); [`CLIENT_TIMEOUT`] for the connect and for each answer.
pub fn http_requests(
    ns: &Netns,
    addr: SocketAddr,
    n: usize,
    path: &str,
    h2: bool,
) -> Result<Vec<HttpReply>, String> {
    let reqs = (0..n)
        .map(|_| Request::get(path).body(Bytes::new()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot build GET {path}: {e}"))?;
    exchange(ns, addr, h2, CLIENT_TIMEOUT, reqs)
}

/// A unary gRPC call over h2c: sends `payload` as one length-prefixed message to `path`
/// (`/package.Service/Method`); returns the HTTP status, the `grpc-status` (from the trailers,
/// else from the headers of a trailers-only answer) and the answer's message without its
/// 5-byte prefix (empty when the answer had no message).
pub fn grpc_call(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    payload: &[u8],
) -> Result<(u16, Option<String>, Bytes), String> {
    let req = Request::post(format!("http://{addr}{path}"))
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(grpc_frame(payload))
        .map_err(|e| format!("cannot build a gRPC call to {path}: {e}"))?;
    let r = http_request(ns, addr, req, true, CLIENT_TIMEOUT)?;
    let status = r
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| r.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let msg = grpc_message(&r.body).map_err(|e| format!("gRPC {path} at {addr}: {e}"))?;
    Ok((r.status, status, msg))
}

/// Writes `bytes` on a new connection made inside `ns`, then reads until the peer closes
/// (EOF) and returns what came back. Waiting longer than `timeout` in all is an error saying
/// the connection was still open (a timeout is not a close), as is a reset.
pub fn raw_exchange(
    ns: &Netns,
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut s = connect_in(ns, addr, timeout)?;
    s.write_all(bytes).map_err(|e| {
        format!(
            "raw exchange with {addr}: writing {} bytes: {e}",
            bytes.len()
        )
    })?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "raw exchange with {addr}: timed out after {timeout:?}, the connection still \
                 open (the peer did not close it); {} bytes received: {:?}",
                out.len(),
                String::from_utf8_lossy(&out)
            ));
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| format!("raw exchange with {addr}: {e}"))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                return Err(format!(
                    "raw exchange with {addr}: {e} (not a clean close) after {} bytes \
                     received: {:?}",
                    out.len(),
                    String::from_utf8_lossy(&out)
                ));
            }
        }
    }
}

/// The 5-byte gRPC length prefix (not compressed) and `payload`.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// The one message of a unary gRPC body, without its prefix (empty for an empty body).
pub fn grpc_message(body: &Bytes) -> Result<Bytes, String> {
    if body.is_empty() {
        return Ok(Bytes::new());
    }
    if body.len() < 5 {
        return Err(format!(
            "body of {} bytes is shorter than a message prefix",
            body.len()
        ));
    }
    if body[0] != 0 {
        return Err(format!(
            "message compressed (flag {}), not supported",
            body[0]
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    match (body.len() - 5).cmp(&len) {
        std::cmp::Ordering::Less => Err(format!(
            "message of {len} bytes truncated to {}",
            body.len() - 5
        )),
        std::cmp::Ordering::Greater => Err(format!(
            "{} bytes after the message of {len} bytes (a unary answer has one message)",
            body.len() - 5 - len
        )),
        std::cmp::Ordering::Equal => Ok(body.slice(5..)),
    }
}

/// What the server does for a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Answer 200 with the JSON description.
    Describe,
    /// Wait, then answer 200 with the JSON description.
    Delay(Duration),
    /// Answer this status with the JSON description.
    Status(StatusCode),
    /// Answer 200 with this many bytes of `x`.
    Bytes(usize),
    /// Answer 400: the special path's argument is wrong.
    Bad(String),
}

/// The server's decision for `path` (without the query).
fn plan(path: &str) -> Plan {
    if let Some(ms) = path.strip_prefix("/delay/") {
        return match ms.parse::<u64>() {
            Ok(ms) if ms <= MAX_DELAY_MS => Plan::Delay(Duration::from_millis(ms)),
            _ => Plan::Bad(format!("/delay/<ms> wants 0..={MAX_DELAY_MS}, got {ms:?}")),
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
            Some(c) => StatusCode::from_u16(c)
                .map(Plan::Status)
                .unwrap_or_else(|e| Plan::Bad(e.to_string())),
            None => Plan::Bad(format!("/status/<code> wants 200..=599, got {code:?}")),
        };
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<usize>() {
            Ok(n) if n <= MAX_BYTES => Plan::Bytes(n),
            _ => Plan::Bad(format!("/bytes/<n> wants 0..={MAX_BYTES}, got {n:?}")),
        };
    }
    Plan::Describe
}

/// A server's identity and what it saw.
struct App {
    name: String,
    served_by: HeaderValue,
    /// The last [`SEEN`] descriptions (`/_seen` itself not included).
    seen: std::sync::Mutex<VecDeque<serde_json::Value>>,
}

/// The first bytes of every h2c prior-knowledge connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection may stay silent before the server drops it.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(30);

async fn accept_loop(l: tokio::net::TcpListener, app: Arc<App>) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                tokio::spawn(serve_conn(s, peer, app.clone()));
            }
            // Out of fds and the like: try again shortly rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn serve_conn(s: tokio::net::TcpStream, peer: SocketAddr, app: Arc<App>) {
    let _ = s.set_nodelay(true);
    let Some(h2) = sniff_h2(&s).await else {
        return;
    };
    let peer = (crate::hbone::normalize(peer.ip()), peer.port());
    let svc = hyper::service::service_fn(move |req| answer(req, app.clone(), peer));
    let io = TokioIo::new(s);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, svc)
            .await;
    }
}

/// Whether the client opens with the h2 preface; None when it closes or stays silent first.
async fn sniff_h2(s: &tokio::net::TcpStream) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, s.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // Only part of the preface so far (peek returns at once while data waits): pause.
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn answer(
    req: Request<Incoming>,
    app: Arc<App>,
    peer: (IpAddr, u16),
) -> Result<Response<Frames>, Infallible> {
    let (parts, body) = req.into_parts();
    let (body_len, body_fnv) = match body.collect().await {
        Ok(c) => {
            let b = c.to_bytes();
            (b.len(), fnv1a(&b))
        }
        Err(e) => {
            let desc = serde_json::json!({"pod": app.name, "error": format!("reading the request body: {e}")});
            return Ok(respond(&app, StatusCode::BAD_REQUEST, json_body(&desc)));
        }
    };
    let is_grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc && parts.version == Version::HTTP_2 {
        return Ok(grpc_answer(&app, parts.uri.path()));
    }
    if parts.uri.path() == "/_seen" {
        let seen: Vec<_> = match app.seen.lock() {
            Ok(s) => s.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        };
        return Ok(respond(&app, StatusCode::OK, json_body(&seen.into())));
    }
    let mut desc = describe(&app.name, &parts, peer, body_len);
    desc["bodyFnv1a"] = format!("{body_fnv:016x}").into();
    {
        let mut seen = app.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() == SEEN {
            seen.pop_front();
        }
        seen.push_back(desc.clone());
    }
    let status = match plan(parts.uri.path()) {
        Plan::Describe => StatusCode::OK,
        Plan::Delay(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK
        }
        Plan::Status(s) => s,
        Plan::Bytes(n) => {
            let mut r = respond(&app, StatusCode::OK, Frames::data(vec![b'x'; n].into()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return Ok(r);
        }
        Plan::Bad(why) => {
            desc["error"] = why.into();
            StatusCode::BAD_REQUEST
        }
    };
    Ok(respond(&app, status, json_body(&desc)))
}

/// FNV-1a (64 bit) of a body: `bodyFnv1a` in the description, to compare bodies.
pub fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The JSON description of a request: what the app saw.
fn describe(
    name: &str,
    parts: &http::request::Parts,
    peer: (IpAddr, u16),
    body_len: usize,
) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_string(), v.into_owned().into());
            }
        }
    }
    let version = match parts.version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    };
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        let h = parts.headers.get(HOST)?;
        Some(String::from_utf8_lossy(h.as_bytes()).into_owned())
    });
    serde_json::json!({
        "pod": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str()),
        "version": version,
        "authority": authority,
        "headers": headers,
        "peer": peer.0.to_string(),
        "peerPort": peer.1,
        "bodyLength": body_len,
    })
}

fn json_body(v: &serde_json::Value) -> Frames {
    Frames::data(v.to_string().into())
}

/// A response with the app's headers; content-type JSON unless the caller changes it.
fn respond(app: &App, status: StatusCode, body: Frames) -> Response<Frames> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("x-served-by", app.served_by.clone());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A unary gRPC answer: one message `<name> <path>`, then the grpc-status trailers.
fn grpc_answer(app: &App, path: &str) -> Response<Frames> {
    let mut trailers = HeaderMap::new();
    if path == GRPC_FAIL_PATH {
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
        trailers.insert("grpc-message", HeaderValue::from_static("failed"));
    } else {
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
    }
    let msg = grpc_frame(format!("{} {path}", app.name).as_bytes());
    let body = Frames {
        frames: VecDeque::from([Frame::data(msg), Frame::trailers(trailers)]),
    };
    let mut r = respond(app, StatusCode::OK, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r
}

/// A response body of ready frames: data, then maybe trailers (a real HTTP/2 trailers frame).
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
}

impl Frames {
    fn data(b: Bytes) -> Frames {
        Frames {
            frames: VecDeque::from([Frame::data(b)]),
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Exact (so a content-length goes out) unless trailers follow.
        let mut len = 0u64;
        for f in &self.frames {
            match f.data_ref() {
                Some(d) => len += d.len() as u64,
                None => return SizeHint::default(),
            }
        }
        SizeHint::with_exact(len)
    }
}

/// A client connection of either protocol.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let r = match self {
            Sender::H1(tx) => match tx.ready().await {
                Ok(()) => tx.send_request(req).await,
                Err(e) => Err(e),
            },
            Sender::H2(tx) => match tx.ready().await {
                Ok(()) => tx.send_request(req).await,
                Err(e) => Err(e),
            },
        };
        r.map_err(|e| error_chain(&e))
    }
}

/// Sends `reqs` one after the other on one new connection from `ns`; `timeout` for the
/// connect and for each complete answer.
fn exchange(
    ns: &Netns,
    addr: SocketAddr,
    h2: bool,
    timeout: Duration,
    reqs: Vec<Request<Bytes>>,
) -> Result<Vec<HttpReply>, String> {
    let proto = if h2 { "h2c" } else { "HTTP/1.1" };
    let s = connect_in(ns, addr, timeout)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a client runtime: {e}"))?;
    rt.block_on(send_all(s, addr, h2, timeout, reqs))
        .map_err(|e| format!("{proto} to {addr}: {e}"))
}

async fn send_all(
    s: std::net::TcpStream,
    addr: SocketAddr,
    h2: bool,
    timeout: Duration,
    reqs: Vec<Request<Bytes>>,
) -> Result<Vec<HttpReply>, String> {
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let io = TokioIo::new(tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())?);
    let within = |what: String| format!("{what}: no answer within {timeout:?}");
    let (mut tx, driver) = if h2 {
        let hs = hyper::client::conn::http2::handshake(TokioExecutor::new(), io);
        let (tx, conn) = tokio::time::timeout(timeout, hs)
            .await
            .map_err(|_| within("h2 handshake".into()))?
            .map_err(|e| format!("h2 handshake: {}", error_chain(&e)))?;
        (Sender::H2(tx), tokio::spawn(async { conn.await.err() }))
    } else {
        let (tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {}", error_chain(&e)))?;
        (Sender::H1(tx), tokio::spawn(async { conn.await.err() }))
    };
    let mut out = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.into_iter().enumerate() {
        let what = format!("request {} ({} {})", i + 1, req.method(), req.uri());
        let req = prepare(req, addr, h2).map_err(|e| format!("{what}: {e}"))?;
        let one = async {
            let resp = tx.send(req).await?;
            read_reply(resp).await
        };
        let reply = tokio::time::timeout(timeout, one)
            .await
            .map_err(|_| within(what.clone()))?
            .map_err(|e| format!("{what}: {e}"))?;
        out.push(reply);
    }
    drop(tx);
    driver.abort();
    Ok(out)
}

/// Puts the request in the shape the protocol wants: origin-form URI and a Host header for
/// HTTP/1.1, an absolute URI (`:scheme`, `:authority`) for h2.
fn prepare(
    req: Request<Bytes>,
    addr: SocketAddr,
    h2: bool,
) -> Result<Request<Full<Bytes>>, String> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    if h2 {
        let authority = match (parts.uri.authority(), host) {
            (Some(a), _) => a.to_string(),
            (None, Some(h)) => {
                parts.headers.remove(HOST);
                h
            }
            (None, None) => addr.to_string(),
        };
        let scheme = parts.uri.scheme_str().unwrap_or("http").to_string();
        parts.uri = Uri::builder()
            .scheme(scheme.as_str())
            .authority(authority.as_str())
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| format!("URI {scheme}://{authority}{path}: {e}"))?;
        parts.version = Version::HTTP_2;
    } else {
        if host.is_none() {
            let authority = parts
                .uri
                .authority()
                .map_or_else(|| addr.to_string(), |a| a.to_string());
            let v = HeaderValue::from_str(&authority)
                .map_err(|e| format!("Host {authority:?}: {e}"))?;
            parts.headers.insert(HOST, v);
        }
        parts.uri = path.parse().map_err(|e| format!("path {path:?}: {e}"))?;
        parts.version = Version::HTTP_11;
    }
    Ok(Request::from_parts(parts, Full::new(body)))
}

async fn read_reply(resp: Response<Incoming>) -> Result<HttpReply, String> {
    let (parts, body) = resp.into_parts();
    let c = body
        .collect()
        .await
        .map_err(|e| format!("reading the answer's body: {}", error_chain(&e)))?;
    let trailers = c.trailers().cloned();
    Ok(HttpReply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: c.to_bytes(),
        trailers,
    })
}

/// A TCP connection made inside `ns` (so the pod's capture rules apply).
fn connect_in(
    ns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<std::net::TcpStream, String> {
    let s = ns
        .run(|| std::net::TcpStream::connect_timeout(&addr, timeout))
        .map_err(|e| format!("connect to {addr}: {e}"))?
        .map_err(|e| format!("connect to {addr} from {}: {e}", ns.path.display()))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// An error and its causes ("a: b: c"): hyper's own message alone often hides the cause.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
#[path = "http_apps_tests.rs"]
mod tests;
