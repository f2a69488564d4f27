//! The waypoint's TCP pipeline: a tunnel to a TCP (or unrecognised) port of a bound service
//! is forwarded whole to one endpoint (chosen per connection), a tunnel to a bound workload
//! to that workload; bytes are copied both ways with half-close kept. Istio's TCP metrics
//! with `reporter="waypoint"` (bytes added when the connection ends), and one access line
//! per connection.

use std::rc::Rc;
use std::time::Instant;

use super::WaypointShard;
use super::endpoints;
use super::inbound::{Client, Target};
use super::lb::Outcome;
use super::upstream;
use crate::io::h2io::H2Io;
use crate::telemetry::metrics::{DstService, Peer, TcpCounters, TcpLabels};

/// Counts the connection closed when dropped.
struct Closed(std::sync::Arc<TcpCounters>);

impl Drop for Closed {
    fn drop(&mut self) {
        TcpCounters::add(&self.0.closed, 1);
    }
}

/// Forwards one tunnel's bytes to an endpoint of its target.
pub async fn serve(ctx: Rc<WaypointShard>, mut down: H2Io, client: Rc<Client>, target: Target) {
    let started = Instant::now();
    let snap = ctx.state.load_full();
    let (picked, svc) = match &target {
        Target::Service { svc, port, addr } => {
            match endpoints::pick(&ctx, &snap, svc, *port, addr.ip(), &[]) {
                Ok(p) => (p, Some(svc.clone())),
                Err(e) => {
                    log(
                        &ctx,
                        &client,
                        &target,
                        None,
                        0,
                        0,
                        started,
                        Some(&e.to_string()),
                    );
                    return;
                }
            }
        }
        Target::Workload { w, addr } => (
            endpoints::Picked {
                transport: endpoints::transport(w, *addr, ctx.cfg.proxy.hbone_port),
                workload: w.clone(),
            },
            None,
        ),
    };
    let labels = {
        let src_w = snap.workload_by_ip(client.addr.ip());
        let svc_labels = svc.as_ref().map(|s| DstService {
            hostname: &s.hostname,
            namespace: &s.namespace,
            name: &s.name,
        });
        TcpLabels::new(
            "waypoint",
            &Peer {
                workload: src_w.map(|w| w.as_ref()),
                principal: client.identity.as_ref().map(|i| i.to_string()),
            },
            &Peer {
                workload: Some(&picked.workload),
                principal: Some(picked.workload.identity().to_string()),
            },
            svc_labels.as_ref(),
            client.identity.is_some(),
            "-",
        )
    };
    drop(snap);
    let m = ctx.metrics.open(labels);
    let _closed = Closed(m.clone());
    let key = picked.key();
    ctx.lb.borrow_mut().start(&key);
    let host = svc.as_ref().map(|s| s.hostname.as_str());
    let mut up = match upstream::open(&ctx, &picked.transport, client.addr, host).await {
        Ok(u) => u,
        Err(e) => {
            endpoints::finish(&ctx, &key, Outcome::ConnectFailure, Instant::now());
            TcpCounters::add(&m.failed, 1);
            log(
                &ctx,
                &client,
                &target,
                Some(key),
                0,
                0,
                started,
                Some(&e.to_string()),
            );
            return;
        }
    };
    let counts = down.counts();
    let r = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    // Request bytes are Istio's `received`, response bytes its `sent`.
    TcpCounters::add(&m.received, counts.read.get());
    TcpCounters::add(&m.sent, counts.written.get());
    endpoints::finish(&ctx, &key, Outcome::Success, Instant::now());
    let err = r.err().map(|e| e.to_string());
    log(
        &ctx,
        &client,
        &target,
        Some(key),
        counts.read.get(),
        counts.written.get(),
        started,
        err.as_deref(),
    );
}

#[allow(clippy::too_many_arguments)]
fn log(
    _ctx: &WaypointShard,
    client: &Client,
    target: &Target,
    upstream: Option<std::net::SocketAddr>,
    sent: u64,
    received: u64,
    started: Instant,
    error: Option<&str>,
) {
    let duration = format!("{}ms", started.elapsed().as_millis());
    let up = upstream.map(|u| u.to_string());
    let id = client.identity.as_ref().map(|i| i.to_string());
    match error {
        None => tracing::info!(
            target: "access",
            direction = "waypoint",
            protocol = "tcp",
            src.addr = %client.addr,
            src.identity = id.as_deref(),
            dst.addr = %target.addr(),
            upstream = up.as_deref(),
            bytes_sent = sent,
            bytes_recv = received,
            duration,
            "connection complete"
        ),
        Some(e) => tracing::error!(
            target: "access",
            direction = "waypoint",
            protocol = "tcp",
            src.addr = %client.addr,
            src.identity = id.as_deref(),
            dst.addr = %target.addr(),
            upstream = up.as_deref(),
            bytes_sent = sent,
            bytes_recv = received,
            duration,
            error = e,
            "connection complete"
        ),
    }
}
