//! The node proxy's own HTTP endpoints, served on the control thread (never on a shard):
//! readiness (`/healthz/ready` on 15021), Prometheus metrics (`/metrics` and
//! `/stats/prometheus` on 15020), and the admin API on localhost:15000 (`/config_dump` shaped
//! like ztunnel's so `istioctl ztunnel-config` can read it, `/quitquitquit`).
//! Reads snapshots and counters; mutates nothing but the shutdown request.

mod dump;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::certs::store::CertHandle;
use crate::state::StateHandle;
use crate::telemetry::metrics::Metrics;

pub use dump::config_dump;

/// What ZDS or `--pod` told us of a pod, for `workloadState`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub state: &'static str,
    pub info: PodInfo,
    pub netns: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

/// Everything the endpoints read.
pub struct AdminState {
    pub state: StateHandle,
    pub certs: CertHandle,
    pub metrics: Arc<Metrics>,
    pub pods: Mutex<BTreeMap<String, PodStatus>>,
    /// Names of what readiness still waits for (empty = ready).
    pub pending: Mutex<Vec<&'static str>>,
    /// Effective settings, shown under `config` in the dump.
    pub config: serde_json::Value,
    /// The xDS stream's state (xDS mode), shown under `xds` in the dump.
    pub xds: Arc<Mutex<crate::xds::XdsStatus>>,
    /// More top-level sections of the dump (the waypoint's `routes`).
    pub sections: Mutex<BTreeMap<&'static str, serde_json::Value>>,
    pub quit: tokio::sync::Notify,
}

impl AdminState {
    pub fn set_pending(&self, what: &'static str, pending: bool) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|w| *w != what);
        if pending {
            p.push(what);
        }
    }

    pub fn readiness(&self) -> Result<(), String> {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join(", "))
        }
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    Readiness,
    Stats,
    Admin,
}

/// Binds `addr` (falling back from `[::]` to `0.0.0.0` without IPv6) and serves.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            tokio::net::TcpListener::bind(v4).await.map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// Pause after a failed accept (out of fds, say): retrying at once would spin the control
/// thread, which also runs xDS and certificate rotation.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Serves HTTP/1 on `l` until the task is dropped.
pub async fn serve(l: tokio::net::TcpListener, st: Arc<AdminState>, which: Endpoints) {
    loop {
        let s = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Counted and rate-limited with the data plane's failed accepts.
                if crate::telemetry::metrics::accept_failed().1 {
                    tracing::warn!(endpoints = ?which, "admin accept failed: {e} (logged at most every 10 s; ringmesh_accept_failures_total counts them)");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let st = st.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(route(&st, which, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// Routes one request (pure apart from reading the state).
pub fn route<B>(st: &AdminState, which: Endpoints, req: Request<B>) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    match (which, req.method(), req.uri().path()) {
        (Endpoints::Readiness, &Method::GET, "/healthz/ready") => match st.readiness() {
            Ok(()) => reply(StatusCode::OK, text, "ready\n"),
            Err(p) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                text,
                format!("not ready, pending: {p}\n"),
            ),
        },
        (Endpoints::Stats, &Method::GET, "/metrics" | "/stats/prometheus") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            st.metrics.encode(),
        ),
        (Endpoints::Admin, &Method::GET, "/config_dump") => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec_pretty(&config_dump(st)).unwrap_or_default(),
        ),
        (Endpoints::Admin, &Method::POST, "/quitquitquit") => {
            st.quit.notify_one();
            reply(StatusCode::OK, text, "shutting down\n")
        }
        (Endpoints::Admin, _, "/quitquitquit") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, text, "use POST\n")
        }
        (Endpoints::Admin, &Method::GET, "/") => reply(
            StatusCode::OK,
            text,
            "ringmesh admin\n  GET  /config_dump\n  POST /quitquitquit\nmetrics: :15020/metrics\nreadiness: :15021/healthz/ready\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, text, "not found\n"),
    }
}
