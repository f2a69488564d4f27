//! The waypoint's HTTP pipeline, one tunnel at a time: hyper serves HTTP/1.1 or HTTP/2 on
//! the tunnel's bytes; each request goes through
//! request id → route (`routes`) → filters (redirect, header modifiers, rewrite, mirror) →
//! backend (weights) → endpoint (`endpoints`, `lb`) → upstream (`upstream`, retries and
//! timeouts as Istio maps them) → response filters → metrics and an access line.
//!
//! Answers as Envoy's waypoint gives them: 404 when routes attach to the service and none
//! matches, 500 when a rule's backends weigh nothing or name no known service, 503
//! `no healthy upstream` when the backend has no endpoint, 503 `upstream connect error…` when
//! no connection could be made, 504 `upstream request timeout` when the route's timeout
//! passes; malformed HTTP gets hyper's 400 and only that tunnel is closed.
//!
//! Headers: `x-request-id` added when absent, `x-forwarded-client-cert` removed (Envoy's
//! SANITIZE), XFF untouched, hop-by-hop headers not forwarded, trace headers passed through.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;

use super::endpoints::{self, PickError, Picked};
use super::inbound::{Client, Target};
use super::lb::Outcome;
use super::resources::PortProtocol;
use super::routes::{self, Filter, Selection};
use super::upstream::{self, UpBody, UpProto, UpstreamError};
use super::{LocalExec, WaypointShard, mirror};
use crate::io::h2io::H2Io;
use crate::state::{Service, Snapshot, Workload};
use crate::telemetry::metrics::{DstService, HttpLabels, Peer};

/// Serves HTTP on one tunnel until the client closes it: HTTP/2 (`h2`, the client sent the
/// preface) or HTTP/1.x; `proto` is the port's declared protocol (it picks the upstream's).
pub async fn serve(
    ctx: Rc<WaypointShard>,
    io: H2Io,
    client: Rc<Client>,
    target: Target,
    proto: PortProtocol,
    h2: bool,
) {
    let target = Rc::new(target);
    let io = TokioIo::new(io);
    let svc = {
        let (ctx, client, target) = (ctx.clone(), client.clone(), target.clone());
        hyper::service::service_fn(move |req| {
            let (ctx, client, target) = (ctx.clone(), client.clone(), target.clone());
            async move { Ok::<_, Infallible>(handle(ctx, client, target, proto, req).await) }
        })
    };
    let r = match h2 {
        true => {
            hyper::server::conn::http2::Builder::new(LocalExec)
                .serve_connection(io, svc)
                .await
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc)
                .await
        }
    };
    if let Err(e) = r {
        // A parse error has been answered (400/431) before hyper gives up on the tunnel.
        tracing::debug!(src.addr = %client.addr, dst = %target.addr(), "HTTP in tunnel ended: {e}");
    }
}

/// The body the waypoint sends downstream: the endpoint's, or one it made.
pub type RespBody = Counted<http_body_util::Either<Incoming, Full<Bytes>>>;

/// What the request's outcome is recorded with when its response body ends.
struct Record {
    ctx: Rc<WaypointShard>,
    started: Instant,
    labels: Option<HttpLabels>,
    request_bytes: Rc<Cell<u64>>,
    log: AccessLine,
}

/// The access line's fields (Envoy's default format, as key=value).
#[derive(Debug, Default, Clone)]
struct AccessLine {
    method: String,
    path: String,
    protocol: &'static str,
    code: u16,
    flags: &'static str,
    details: String,
    request_id: String,
    authority: String,
    user_agent: String,
    upstream_host: String,
    upstream_cluster: String,
    downstream_local: String,
    downstream_remote: String,
    route: String,
    attempts: u32,
}

impl Record {
    fn finish(self, response_bytes: u64, grpc_status: Option<String>) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let req_bytes = self.request_bytes.get();
        if let Some(mut l) = self.labels {
            l.response_code = self.log.code.to_string();
            if let Some(g) = &grpc_status {
                l.grpc_response_status = g.clone();
            }
            l.response_flags = self.log.flags.to_string();
            self.ctx.metrics.request(l, ms, req_bytes, response_bytes);
        }
        let a = &self.log;
        tracing::info!(
            target: "access",
            direction = "waypoint",
            method = %a.method,
            path = %a.path,
            protocol = a.protocol,
            response_code = a.code,
            response_flags = a.flags,
            details = %a.details,
            grpc_status = grpc_status.as_deref(),
            bytes_received = req_bytes,
            bytes_sent = response_bytes,
            duration = format!("{}ms", ms.round() as u64),
            x_request_id = %a.request_id,
            authority = %a.authority,
            user_agent = %a.user_agent,
            upstream_host = %a.upstream_host,
            upstream_cluster = %a.upstream_cluster,
            downstream_local = %a.downstream_local,
            downstream_remote = %a.downstream_remote,
            route = %a.route,
            attempts = a.attempts,
            "request complete"
        );
    }
}

/// A body that counts its data bytes and, at its end (or when dropped), records the request.
pub struct Counted<B> {
    inner: B,
    bytes: Rc<Cell<u64>>,
    grpc_status: Option<String>,
    record: Option<Record>,
}

impl<B> Counted<B> {
    fn new(inner: B, bytes: Rc<Cell<u64>>, record: Option<Record>) -> Counted<B> {
        Counted {
            inner,
            bytes,
            grpc_status: None,
            record,
        }
    }

    fn done(&mut self) {
        if let Some(r) = self.record.take() {
            r.finish(self.bytes.get(), self.grpc_status.take());
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.done();
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes.set(self.bytes.get() + d.len() as u64);
                } else if let Some(t) = f.trailers_ref()
                    && let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok())
                {
                    self.grpc_status = Some(s.to_string());
                }
            }
            Poll::Ready(None) => self.done(),
            _ => {}
        }
        r.map(|o| o.map(|x| x.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body on its way upstream, counting what the client sent and copying it to
/// the request's mirrors.
pub struct UpCounted {
    inner: Incoming,
    bytes: Rc<Cell<u64>>,
    taps: Vec<mirror::Tap>,
}

impl Drop for UpCounted {
    fn drop(&mut self) {
        // Dropped at its end (hyper's known length) or before (the request was abandoned:
        // the taps' own drop resets the mirrors).
        if self.inner.is_end_stream() {
            self.taps.iter().for_each(mirror::Tap::end);
        }
    }
}

/// An empty request body.
pub fn empty_body() -> UpBody {
    http_body_util::Either::Right(http_body_util::Either::Left(Empty::new()))
}

impl Body for UpCounted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes.set(self.bytes.get() + d.len() as u64);
                    self.taps.iter().for_each(|t| t.data(d));
                } else if let Some(t) = f.trailers_ref() {
                    self.taps.iter().for_each(|m| m.trailers(t));
                }
                // hyper stops polling a body whose length it knows once that much arrived.
                if self.inner.is_end_stream() {
                    self.taps.iter().for_each(mirror::Tap::end);
                }
            }
            Poll::Ready(None) => self.taps.iter().for_each(mirror::Tap::end),
            Poll::Ready(Some(Err(_))) => self.taps.iter().for_each(mirror::Tap::abort),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Headers never forwarded (hop-by-hop; HTTP/2 forbids them).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(c) = h.get("connection").and_then(|v| v.to_str().ok()) {
        let named: Vec<String> = c
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        for n in named {
            h.remove(n.as_str());
        }
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
    if h.get("te")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.eq_ignore_ascii_case("trailers"))
    {
        h.remove("te");
    }
}

/// A random version-4 UUID (Envoy's `x-request-id` form).
pub fn request_id(r: u128) -> String {
    let b = ((r & !(0xf << 76)) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{b:032x}");
    // cannot panic: a u128 printed as `{:032x}` is exactly 32 ASCII hex digits.
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What a request is sent to after routing.
struct Destination {
    svc: Option<Arc<Service>>,
    port: u16,
    /// Set for traffic addressed to a workload directly (no balancing).
    direct: Option<(Arc<Workload>, SocketAddr)>,
    route_name: String,
    response_filters: Vec<Filter>,
    retry: routes::RetryPolicy,
    timeout: Option<Duration>,
    per_try: Option<Duration>,
    mirrors: Vec<routes::Mirror>,
}

/// A response the waypoint makes itself.
fn local(
    status: StatusCode,
    body: &'static str,
) -> Response<http_body_util::Either<Incoming, Full<Bytes>>> {
    let mut r = Response::new(http_body_util::Either::Right(Full::new(
        Bytes::from_static(body.as_bytes()),
    )));
    *r.status_mut() = status;
    if !body.is_empty() {
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("text/plain"));
    }
    r
}

async fn handle(
    ctx: Rc<WaypointShard>,
    client: Rc<Client>,
    target: Rc<Target>,
    port_proto: PortProtocol,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    // Request id and XFCC (Envoy's defaults on the waypoint's inner listener).
    if ctx.cfg.request_id && !parts.headers.contains_key("x-request-id") {
        let id = request_id(rand::random());
        if let Ok(v) = HeaderValue::from_str(&id) {
            parts.headers.insert("x-request-id", v);
        }
    }
    parts.headers.remove("x-forwarded-client-cert");
    let grpc = is_grpc(&parts.headers);
    let snap = ctx.state.load_full();
    let authority = authority_of(&parts.uri, &parts.headers);
    let mut log = AccessLine {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        protocol: version_name(parts.version),
        request_id: header_str(&parts.headers, "x-request-id"),
        authority: authority.clone(),
        user_agent: header_str(&parts.headers, "user-agent"),
        downstream_local: target.addr().to_string(),
        downstream_remote: client.addr.to_string(),
        ..Default::default()
    };
    let request_bytes = Rc::new(Cell::new(0));
    let src_w = snap.workload_by_ip(client.addr.ip()).cloned();
    let principal = client.identity.as_ref().map(|i| i.to_string());
    let record = |log: AccessLine, dst_w: Option<&Workload>, svc: Option<&Service>| Record {
        ctx: ctx.clone(),
        started,
        labels: Some(HttpLabels::new(
            "waypoint",
            &Peer {
                workload: src_w.as_deref(),
                principal: principal.clone(),
            },
            &Peer {
                workload: dst_w,
                principal: dst_w.map(|w| w.identity().to_string()),
            },
            svc.map(|s| DstService {
                hostname: &s.hostname,
                namespace: &s.namespace,
                name: &s.name,
            })
            .as_ref(),
            if grpc { "grpc" } else { "http" },
            0,
            None,
            "-",
            principal.is_some(),
        )),
        request_bytes: request_bytes.clone(),
        log,
    };
    let reply_local = |mut log: AccessLine,
                       status: StatusCode,
                       flags: &'static str,
                       details: &str,
                       body: &'static str,
                       svc: Option<&Service>| {
        log.code = status.as_u16();
        log.flags = flags;
        log.details = details.to_string();
        let r = local(status, body);
        let (p, b) = r.into_parts();
        Response::from_parts(
            p,
            Counted::new(b, Rc::new(Cell::new(0)), Some(record(log, None, svc))),
        )
    };

    // Route.
    let dest = match route(&ctx, &snap, &target, &mut parts, &mut log) {
        Ok(d) => d,
        Err(Local {
            status,
            flags,
            details,
            body,
            location,
            svc,
        }) => {
            let mut r = reply_local(log, status, flags, &details, body, svc.as_deref());
            if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                r.headers_mut().insert("location", l);
            }
            return r;
        }
    };
    log.route = dest.route_name.clone();
    if let Some(s) = &dest.svc {
        log.upstream_cluster = format!("inbound-vip|{}|http|{}", dest.port, s.hostname);
    }
    let up_proto = upstream_proto(&ctx, &dest, port_proto, parts.version);
    // A request can be sent again while its body has not gone out (a connect failure), or
    // when it has none.
    let had_body = !body.is_end_stream();
    let hint = had_body.then(|| body.size_hint());
    let taps: Vec<mirror::Tap> = dest
        .mirrors
        .iter()
        .filter_map(|m| {
            let r = rand::random();
            mirror::start(&ctx, &snap, m, &parts, up_proto, hint, client.addr, r)
        })
        .collect();
    strip_hop_by_hop(&mut parts.headers);
    let mut body = if body.is_end_stream() {
        None
    } else {
        Some(UpCounted {
            inner: body,
            bytes: request_bytes.clone(),
            taps,
        })
    };
    let attempts_max = dest.retry.tries();
    let mut tried: Vec<SocketAddr> = Vec::new();
    // A timeout past what the clock holds is no deadline.
    let deadline = dest.timeout.and_then(|t| started.checked_add(t));
    let mut last: Option<(StatusCode, &'static str, String, Option<Picked>)> = None;
    for attempt in 0..attempts_max {
        log.attempts = attempt + 1;
        if attempt > 0 {
            crate::runtime::engine::sleep(dest.retry.backoff * attempt).await;
        }
        let picked = match &dest.direct {
            Some((w, addr)) => Picked {
                transport: endpoints::transport(w, *addr, ctx.cfg.proxy.hbone_port),
                workload: w.clone(),
            },
            None => {
                let Some(svc) = &dest.svc else { break };
                match endpoints::pick(&ctx, &snap, svc, dest.port, target.addr().ip(), &tried) {
                    Ok(p) => p,
                    Err(e) => {
                        let (st, fl, body) = match e {
                            PickError::NoHealthyUpstream(_) => {
                                (StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream")
                            }
                            PickError::NoTargetPort { .. } => {
                                (StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream")
                            }
                        };
                        return reply_local(log, st, fl, &e.to_string(), body, dest.svc.as_deref());
                    }
                }
            }
        };
        let key = picked.key();
        tried.push(key);
        log.upstream_host = key.to_string();
        ctx.lb.borrow_mut().start(&key);
        let svc_host = dest.svc.as_ref().map(|s| s.hostname.clone());
        let remaining = |now: Instant| deadline.map(|d| d.saturating_duration_since(now));
        let try_budget = match (remaining(Instant::now()), dest.per_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let attempt_fut = async {
            let ready = upstream::connect(
                &ctx,
                &picked.transport,
                up_proto,
                client.addr,
                svc_host.as_deref(),
            )
            .await?;
            let up_body: UpBody = match body.take() {
                Some(b) => http_body_util::Either::Left(b),
                None => empty_body(),
            };
            let req = upstream_request(&parts, up_proto, up_body, &authority);
            ready.send(&ctx, req).await
        };
        let result = match try_budget {
            Some(t) => crate::runtime::engine::timeout(t, attempt_fut).await.ok(),
            None => Some(attempt_fut.await),
        };
        let now = Instant::now();
        match result {
            None => {
                endpoints::finish(&ctx, &key, Outcome::Status5xx, now);
                let whole = deadline.is_some_and(|d| now >= d);
                last = Some((
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream request timeout".into(),
                    Some(picked),
                ));
                if whole {
                    break;
                }
                // A per-try timeout is a 504: retried only when the rule retries 504 and the
                // request can be sent again (Istio's default conditions do not cover it).
                if (body.is_none() && had_body) || !dest.retry.codes.contains(&504) {
                    break;
                }
            }
            Some(Err(UpstreamError::Connect(e))) => {
                endpoints::finish(&ctx, &key, Outcome::ConnectFailure, now);
                last = Some((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UF",
                    format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure: {e}"
                    ),
                    Some(picked),
                ));
                if !dest.retry.on_connect_failure {
                    break;
                }
            }
            Some(Err(UpstreamError::Reset(e))) => {
                endpoints::finish(&ctx, &key, Outcome::Status5xx, now);
                last = Some((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UC",
                    format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection termination: {e}"
                    ),
                    Some(picked),
                ));
                if !(dest.retry.on_refused_stream || dest.retry.on_unavailable)
                    || (body.is_none() && had_body)
                {
                    break;
                }
            }
            Some(Ok(resp)) => {
                let code = resp.status();
                let outcome = if code.is_server_error() {
                    Outcome::Status5xx
                } else {
                    Outcome::Success
                };
                endpoints::finish(&ctx, &key, outcome, now);
                let retriable = dest.retry.codes.contains(&code.as_u16())
                    && attempt + 1 < attempts_max
                    && !had_body;
                if retriable {
                    last = Some((code, "URX", format!("retried on {code}"), Some(picked)));
                    continue;
                }
                log.code = code.as_u16();
                log.flags = "-";
                log.details = "via_upstream".into();
                let (mut p, b) = resp.into_parts();
                strip_hop_by_hop(&mut p.headers);
                for f in &dest.response_filters {
                    if let Filter::ResponseHeaderModifier(m) = f {
                        routes::apply_headers(m, &mut p.headers);
                    }
                }
                let rec = record(log, Some(&picked.workload), dest.svc.as_deref());
                return Response::from_parts(
                    p,
                    Counted::new(
                        http_body_util::Either::Left(b),
                        Rc::new(Cell::new(0)),
                        Some(rec),
                    ),
                );
            }
        }
    }
    let (status, flags, details, picked) = last.unwrap_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "UH",
        "no healthy upstream".into(),
        None,
    ));
    let body: &'static str = match flags {
        "UT" => "upstream request timeout",
        "UH" => "no healthy upstream",
        _ => "upstream connect error or disconnect/reset before headers",
    };
    log.code = status.as_u16();
    log.flags = flags;
    log.details = details;
    let r = local(status, body);
    let (p, b) = r.into_parts();
    let rec = record(
        log,
        picked.as_ref().map(|p| p.workload.as_ref()),
        dest.svc.as_deref(),
    );
    Response::from_parts(p, Counted::new(b, Rc::new(Cell::new(0)), Some(rec)))
}

/// A response the router answers itself (no upstream).
struct Local {
    status: StatusCode,
    flags: &'static str,
    details: String,
    body: &'static str,
    location: Option<String>,
    svc: Option<Arc<Service>>,
}

impl Local {
    fn new(status: StatusCode, flags: &'static str, details: String, body: &'static str) -> Local {
        Local {
            status,
            flags,
            details,
            body,
            location: None,
            svc: None,
        }
    }
}

/// Routing: which service (or workload) the request goes to, with which filters applied to
/// `parts`, or the local answer.
fn route(
    ctx: &WaypointShard,
    snap: &Snapshot,
    target: &Target,
    parts: &mut http::request::Parts,
    log: &mut AccessLine,
) -> Result<Destination, Local> {
    let (svc, port) = match target {
        Target::Workload { w, addr } => {
            return Ok(Destination {
                svc: None,
                port: addr.port(),
                direct: Some((w.clone(), *addr)),
                route_name: "direct".into(),
                response_filters: vec![],
                retry: routes::retry_policy(None),
                timeout: None,
                per_try: None,
                mirrors: vec![],
            });
        }
        Target::Service { svc, port, .. } => (svc.clone(), *port),
    };
    let l7 = ctx.l7.load();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let info = routes::RequestInfo {
        method: &parts.method,
        path: &path,
        query: query.as_deref(),
        headers: &parts.headers,
    };
    let (rule, route_name, matched_prefix) =
        match l7.table.select(&svc.namespace, &svc.name, port, &info) {
            Selection::NoRoutes => {
                let (timeout, per_try) = routes::timeouts(None);
                return Ok(Destination {
                    svc: Some(svc.clone()),
                    port,
                    direct: None,
                    route_name: "default".into(),
                    response_filters: vec![],
                    retry: routes::retry_policy(None),
                    timeout,
                    per_try,
                    mirrors: vec![],
                });
            }
            Selection::NotFound => {
                let mut l = Local::new(StatusCode::NOT_FOUND, "NR", "route_not_found".into(), "");
                l.svc = Some(svc.clone());
                return Err(l);
            }
            Selection::Matched {
                route,
                rule,
                matched_prefix,
                ..
            } => (
                rule.clone(),
                format!("{}/{}", route.namespace, route.name),
                matched_prefix.map(str::to_string),
            ),
        };
    log.route = route_name.clone();
    let mut mirrors = Vec::new();
    let mut response_filters = Vec::new();
    for f in &rule.filters {
        match f {
            Filter::RequestRedirect(r) => {
                let host = authority_of(&parts.uri, &parts.headers);
                let (h, p) = split_host_port(&host);
                let req = routes::RedirectRequest {
                    scheme: parts.uri.scheme_str().unwrap_or("http"),
                    host: h,
                    port: p,
                    path: &path,
                    query: query.as_deref(),
                };
                let (status, location) =
                    routes::redirect_location(r, &req, matched_prefix.as_deref());
                let mut l = Local::new(status, "-", "direct_response".into(), "");
                l.location = Some(location);
                l.svc = Some(svc.clone());
                return Err(l);
            }
            Filter::RequestHeaderModifier(m) => {
                if let Some(host) = routes::apply_headers(m, &mut parts.headers) {
                    set_host(parts, host);
                }
            }
            Filter::ResponseHeaderModifier(_) => response_filters.push(f.clone()),
            Filter::UrlRewrite(u) => {
                let (host, new_path) = routes::rewrite(u, &path, matched_prefix.as_deref());
                if let Some(h) = host {
                    set_host(parts, &h);
                }
                set_path(parts, &new_path);
            }
            Filter::RequestMirror(m) => mirrors.push(m.clone()),
            // CORS is kept for the dump only; invalid filters never reach a table.
            Filter::Cors(_) | Filter::Invalid { .. } => {}
        }
    }
    let Some(backend) = routes::pick_backend(&rule.backends, rand::random()) else {
        let mut l = Local::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "-",
            "no backend weight".into(),
            "",
        );
        l.svc = Some(svc.clone());
        return Err(l);
    };
    let found = backend
        .is_service()
        .then(|| service_named(snap, &backend.namespace, &backend.name))
        .flatten();
    let Some(bsvc) = found else {
        let mut l = Local::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "NC",
            format!(
                "backend service {}/{} not found",
                backend.namespace, backend.name
            ),
            "",
        );
        l.svc = Some(svc.clone());
        return Err(l);
    };
    for f in &backend.filters {
        match f {
            Filter::RequestHeaderModifier(m) => {
                if let Some(host) = routes::apply_headers(m, &mut parts.headers) {
                    set_host(parts, host);
                }
            }
            Filter::ResponseHeaderModifier(_) => response_filters.push(f.clone()),
            _ => {}
        }
    }
    let (timeout, per_try) = routes::timeouts(Some(&rule));
    Ok(Destination {
        port: backend.port.unwrap_or(port),
        svc: Some(bsvc),
        direct: None,
        route_name,
        response_filters,
        retry: routes::retry_policy(Some(&rule)),
        timeout,
        per_try,
        mirrors,
    })
}

/// A service by namespace and name (Gateway API backendRefs name services so).
pub fn service_named(snap: &Snapshot, namespace: &str, name: &str) -> Option<Arc<Service>> {
    let key = format!("{namespace}/{name}.{namespace}.svc.cluster.local");
    snap.service_by_key(&key)
        .or_else(|| {
            snap.services
                .iter()
                .find(|s| s.namespace == namespace && s.name == name)
        })
        .cloned()
}

/// The HTTP version to speak to the endpoint: HTTP/2 for http2/grpc ports, the client's for
/// unnamed ports, HTTP/1.1 for http ports (Istio's defaults, no `h2UpgradePolicy`).
fn upstream_proto(
    ctx: &WaypointShard,
    dest: &Destination,
    port_proto: PortProtocol,
    downstream: Version,
) -> UpProto {
    let backend_proto = dest
        .svc
        .as_ref()
        .and_then(|s| {
            ctx.l7
                .load()
                .resources
                .port_protocol(&s.namespace, &s.name, dest.port)
        })
        .unwrap_or(port_proto);
    match backend_proto {
        PortProtocol::Http2 | PortProtocol::Grpc => UpProto::Http2,
        PortProtocol::Http1 => UpProto::Http1,
        _ if downstream == Version::HTTP_2 => UpProto::Http2,
        _ => UpProto::Http1,
    }
}

/// The request as sent to the endpoint: origin-form URI and `Host` for HTTP/1.1, an
/// absolute URI (`:scheme`, `:authority`) for HTTP/2.
pub(super) fn upstream_request(
    parts: &http::request::Parts,
    proto: UpProto,
    body: UpBody,
    authority: &str,
) -> Request<UpBody> {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let host = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| authority.to_string());
    let mut b = Request::builder().method(parts.method.clone());
    let mut headers = parts.headers.clone();
    match proto {
        UpProto::Http1 => {
            b = b.uri(pq).version(Version::HTTP_11);
            if let Ok(v) = HeaderValue::from_str(&host) {
                headers.insert("host", v);
            }
        }
        UpProto::Http2 => {
            let uri = format!("http://{host}{pq}");
            b = b
                .uri(uri.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/")))
                .version(Version::HTTP_2);
            headers.remove("host");
        }
    }
    let mut req = b.body(body).unwrap_or_else(|_| Request::new(empty_body()));
    *req.headers_mut() = headers;
    req
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

fn header_str(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP",
    }
}

/// The request's authority: the URI's (HTTP/2 `:authority`), else `Host`.
pub(super) fn authority_of(uri: &Uri, h: &HeaderMap) -> String {
    uri.authority()
        .map(|a| a.to_string())
        .or_else(|| {
            h.get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn split_host_port(a: &str) -> (&str, Option<u16>) {
    match a.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || a.starts_with('[') => match p.parse() {
            Ok(p) if !h.is_empty() => (h, Some(p)),
            _ => (a, None),
        },
        _ => (a, None),
    }
}

fn set_host(parts: &mut http::request::Parts, host: &str) {
    if let Ok(v) = HeaderValue::from_str(host) {
        parts.headers.insert(HeaderName::from_static("host"), v);
    }
    if parts.uri.authority().is_some() {
        let mut p = parts.uri.clone().into_parts();
        if let Ok(a) = host.parse() {
            p.authority = Some(a);
            if let Ok(u) = Uri::from_parts(p) {
                parts.uri = u;
            }
        }
    }
}

fn set_path(parts: &mut http::request::Parts, path: &str) {
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut p = parts.uri.clone().into_parts();
    if let Ok(v) = pq.parse() {
        p.path_and_query = Some(v);
        if let Ok(u) = Uri::from_parts(p) {
            parts.uri = u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id(u128::MAX);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(request_id(1), request_id(2));
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("connection").is_none() && h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(split_host_port("echo:80"), ("echo", Some(80)));
        assert_eq!(split_host_port("echo"), ("echo", None));
        assert_eq!(split_host_port("[fd00::1]:8080"), ("[fd00::1]", Some(8080)));
    }
}
