//! From a service (or a directly addressed workload) to one endpoint and how to reach it:
//! the service's healthy endpoints, the target port each maps the service port to, then the
//! shard's balancer (least request or round robin, ejected endpoints skipped).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::WaypointShard;
use super::upstream::Transport;
use crate::state::{Protocol, Service, Snapshot, Workload};

/// The endpoint chosen for a request or connection.
#[derive(Debug, Clone)]
pub struct Picked {
    pub transport: Transport,
    pub workload: Arc<Workload>,
}

impl Picked {
    /// The balancer's key for this endpoint.
    pub fn key(&self) -> SocketAddr {
        self.transport.endpoint()
    }
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    #[error("service {svc} has no target port for port {port}")]
    NoTargetPort { svc: String, port: u16 },
}

/// How `w` at `addr` is reached: HBONE to its node proxy when it has one, else plain TCP.
pub fn transport(w: &Workload, addr: SocketAddr, hbone_port: u16) -> Transport {
    match w.protocol {
        Protocol::HBONE => {
            let mut expected = vec![w.identity()];
            expected.dedup();
            Transport::Hbone {
                next_hop: SocketAddr::new(addr.ip(), hbone_port),
                authority: addr,
                expected,
            }
        }
        Protocol::TCP => Transport::Plain { addr },
    }
}

/// One endpoint of `svc` for `port` (`like`: the address family to prefer), skipping
/// `exclude` (endpoints a retry already tried) unless nothing else is left.
pub fn pick(
    ctx: &WaypointShard,
    snap: &Snapshot,
    svc: &Service,
    port: u16,
    like: IpAddr,
    exclude: &[SocketAddr],
) -> Result<Picked, PickError> {
    let mut cands: Vec<(SocketAddr, &Arc<Workload>)> = Vec::new();
    for ep in snap.endpoints(svc) {
        let Some(tp) = svc.target_port(&ep.ports, port) else {
            continue;
        };
        let ips = &ep.workload.workload_ips;
        let Some(ip) = ips
            .iter()
            .find(|i| i.is_ipv4() == like.is_ipv4())
            .or(ips.first())
        else {
            continue;
        };
        cands.push((SocketAddr::new(*ip, tp), &ep.workload));
    }
    if cands.is_empty() {
        return Err(if snap.endpoints(svc).is_empty() {
            PickError::NoHealthyUpstream(svc.hostname.clone())
        } else {
            PickError::NoTargetPort {
                svc: svc.key(),
                port,
            }
        });
    }
    let fresh: Vec<SocketAddr> = cands
        .iter()
        .map(|c| c.0)
        .filter(|a| !exclude.contains(a))
        .collect();
    let keys = if fresh.is_empty() {
        cands.iter().map(|c| c.0).collect()
    } else {
        fresh
    };
    let key = ctx
        .lb
        .borrow_mut()
        .pick(
            &svc.key(),
            &keys,
            ctx.cfg.lb,
            Instant::now(),
            rand::random(),
        )
        .ok_or_else(|| PickError::NoHealthyUpstream(svc.hostname.clone()))?;
    let w = cands
        .iter()
        .find(|c| c.0 == key)
        .map(|c| c.1.clone())
        .ok_or_else(|| PickError::NoHealthyUpstream(svc.hostname.clone()))?;
    Ok(Picked {
        transport: transport(&w, key, ctx.cfg.proxy.hbone_port),
        workload: w,
    })
}

/// Records a request's outcome with the shard's balancer; logs when it ejects the endpoint.
pub fn finish(ctx: &WaypointShard, key: &SocketAddr, outcome: super::lb::Outcome, now: Instant) {
    let mut lb = ctx.lb.borrow_mut();
    let before = lb.times_ejected(key, now);
    lb.finish(key, outcome, now);
    let after = lb.times_ejected(key, now);
    if after > before {
        tracing::warn!(
            shard = ctx.id,
            endpoint = %key,
            times = after,
            "endpoint ejected after {} consecutive errors (outlier detection)",
            lb.config().consecutive_errors
        );
    }
}
