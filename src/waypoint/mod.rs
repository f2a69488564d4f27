//! `ringmesh waypoint`: ambient mode's L7 proxy, on the node proxy's parts (tls, hbone, the
//! per-shard HBONE pool, shards, snapshots, both I/O engines).
//!
//! ```text
//! node proxy ─HBONE─► 15008 inbound.rs: mTLS 1.3, h2, per CONNECT: is :authority a service
//!                     or workload bound to this waypoint? (else 400 + log line)
//!                       ├─ HTTP port (appProtocol/name, or sniffed): http.rs — hyper serves
//!                       │    HTTP/1.1 or HTTP/2 inside the tunnel; per request: route
//!                       │    (routes.rs: HTTPRoute/GRPCRoute) → filters → backend (weights)
//!                       │    → endpoint (lb.rs: least request / round robin, outlier
//!                       │    ejection) → upstream.rs
//!                       └─ TCP port: tcp.rs — one endpoint per connection, bytes copied
//! upstream.rs: HBONE to endpoint:15008 (:authority endpoint:targetPort, the waypoint's own
//!              identity) or plain TCP to endpoints without a node proxy; hyper client
//!              connections pooled per shard
//! ```
//!
//! Config: workloads/services (and their `waypoint` fields) from the same sources as the node
//! (ztunnel's local YAML or istiod's xDS), routes from Kubernetes YAML (`resources.rs`), each
//! published whole as an immutable snapshot the shards read without locks.
//!
//! Everything in a shard runs on its thread: `Rc`/`RefCell`, nothing locked.

pub mod endpoints;
pub mod http;
pub mod inbound;
pub mod lb;
pub mod mirror;
pub mod resources;
pub mod routes;
pub mod tcp;
pub mod upstream;

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::certs::store::CertHandle;
use crate::identity::Identity;
use crate::proxy::ProxyConfig;
use crate::runtime::engine::Task;
use crate::state::{GatewayAddress, GatewayDestination, StateHandle};
use crate::telemetry::metrics::ShardMetrics;

/// Who this waypoint is, and how it behaves; fixed at start.
#[derive(Debug, Clone)]
pub struct WaypointConfig {
    /// The waypoint's own SPIFFE identity (its certificate; what destinations see).
    pub identity: Identity,
    /// The waypoint (its Gateway's) name and namespace.
    pub name: String,
    pub namespace: String,
    /// Its Service's hostname (`<name>.<namespace>.svc.cluster.local`): what
    /// `Service.waypoint` / `Workload.waypoint` name when they bind to it.
    pub hostname: String,
    /// Its own addresses (a `waypoint` may also name an address).
    pub ips: Vec<IpAddr>,
    /// HBONE settings (both hops), connect timeout, packet mark.
    pub proxy: ProxyConfig,
    pub lb: lb::LbPolicy,
    pub outlier: lb::OutlierConfig,
    /// Add `x-request-id` when a request has none (Envoy's default).
    pub request_id: bool,
}

impl WaypointConfig {
    /// Whether a `waypoint` field names this waypoint.
    pub fn is_me(&self, gw: &GatewayAddress) -> bool {
        match &gw.destination {
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => *namespace == self.namespace && *hostname == self.hostname,
            GatewayDestination::Address(a) => self.ips.contains(&a.address),
        }
    }
}

/// The L7 config the shards read: routes and what the resources say of service ports.
#[derive(Debug, Default)]
pub struct L7Config {
    pub version: u64,
    pub resources: resources::Resources,
    pub table: routes::RouteTable,
}

/// Shared handle to the published L7 config.
pub type L7Handle = Arc<ArcSwap<L7Config>>;

/// One shard of the waypoint.
pub struct WaypointShard {
    pub id: usize,
    pub cfg: Arc<WaypointConfig>,
    pub state: StateHandle,
    pub certs: CertHandle,
    pub l7: L7Handle,
    pub pool: crate::proxy::pool::Pool,
    pub clients: upstream::Clients,
    pub lb: RefCell<lb::Balancer<std::net::SocketAddr>>,
    pub metrics: Arc<ShardMetrics>,
    listener: RefCell<Option<Task>>,
}

impl WaypointShard {
    pub fn new(
        id: usize,
        cfg: Arc<WaypointConfig>,
        state: StateHandle,
        certs: CertHandle,
        l7: L7Handle,
        metrics: Arc<ShardMetrics>,
    ) -> WaypointShard {
        let outlier = cfg.outlier;
        WaypointShard {
            id,
            cfg,
            state,
            certs,
            l7,
            pool: Default::default(),
            clients: Default::default(),
            lb: RefCell::new(lb::Balancer::new(outlier)),
            metrics,
            listener: RefCell::default(),
        }
    }

    /// Starts accepting HBONE on this shard's SO_REUSEPORT listener.
    pub fn listen(self: &Rc<Self>, l: std::net::TcpListener) {
        match crate::runtime::net::listener_from_std(l) {
            Ok(l) => {
                let t = crate::runtime::engine::spawn(inbound::serve(self.clone(), l));
                *self.listener.borrow_mut() = Some(t);
                let ctx = self.clone();
                crate::runtime::engine::spawn(async move {
                    let idle = ctx.cfg.proxy.pool_idle_timeout;
                    let every = (idle / 4).max(std::time::Duration::from_millis(100));
                    loop {
                        crate::runtime::engine::sleep(every).await;
                        ctx.pool.evict_idle(idle);
                    }
                });
            }
            Err(e) => tracing::error!(shard = self.id, "cannot register the HBONE listener: {e}"),
        }
    }
}

/// hyper's executor on a shard: connection and stream tasks are the shard's local tasks.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        crate::runtime::engine::spawn(async move {
            fut.await;
        });
    }
}
