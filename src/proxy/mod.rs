//! The traffic flows of the node proxy, one file per flow, and the per-shard context they
//! share.
//!
//! - `outbound.rs`: 15001, app → (HBONE | plaintext passthrough)
//! - `inbound.rs`: 15008, HBONE → app, with authorization (h2 crate); `inbound_link.rs`: the
//!   same on the link task (the default), `links.rs`: links, their hand-over and adoption,
//!   `tunnel.rs`: what a link tunnel keeps while it lasts and does at its end (no task)
//! - `inbound_plain.rs`: 15006, plaintext → app, with authorization (no identity)
//! - `relays.rs`: the plaintext relays of both (passthrough, 15006), their hand-over and
//!   adoption
//! - `pool.rs`: the per-shard HBONE connection pool; `h2conn.rs`: HBONE connections
//! - `conns.rs`: live inbound connections, re-checked when policies change
//! - `names.rs`: the strings connections share (uids, identities, hostnames), one copy each
//!
//! Everything here runs on one shard's thread: state is `Rc`/`RefCell`, never locked. Config
//! comes from the published snapshots (`ArcSwap`), read without locks.

pub mod conns;
pub mod h2conn;
pub mod inbound;
pub mod inbound_link;
pub mod inbound_plain;
pub mod limit;
pub mod links;
pub mod names;
pub mod outbound;
pub mod pool;
pub mod relays;
#[cfg(test)]
mod test_shard;
pub mod tunnel;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::runtime::engine::Task;

use crate::certs::store::CertHandle;
use crate::config::flags::{self, OrigSrc};
use crate::hbone::H2Settings;
use crate::inpod::Netns;
use crate::inpod::zds::WorkloadInfo;
use crate::io::Counters;
use crate::runtime::net;
use crate::state::{Snapshot, StateHandle, Workload};
use crate::telemetry::metrics::{ShardMetrics, TcpCounters, TcpLabels};

/// Settings of the flows, fixed at start.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub mark: u32,
    pub orig_src: OrigSrc,
    pub h2: H2Settings,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// The port peers' HBONE listeners are on (15008).
    pub hbone_port: u16,
    /// Ports that are the proxy's own: never a valid destination.
    pub proxy_ports: Vec<u16>,
    /// Congestion control for the pod-local legs (None: the node's default).
    pub local_congestion: Option<String>,
    /// Who protects HBONE's TLS records after the handshake.
    pub tls_records: flags::TlsRecords,
    /// TCP keepalive on app-facing connections (None: off).
    pub keepalive: Option<crate::runtime::sockopt::Keepalive>,
    /// HBONE on the link task (`io::link`, hand-over capable) instead of the h2 crate.
    pub link: bool,
    /// Plaintext relays splice (`runtime::splice`) instead of copying (`--splice`).
    pub splice: bool,
    /// Fault injection (tests): refuse to adopt connections carrying this port.
    pub fault_refuse_adopt: Option<u16>,
    /// Connections one shard's pod listeners hold open before they stop accepting
    /// (`--max-connections` over the shards; `limit`).
    pub max_connections_per_shard: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            mark: flags::DEFAULT_MARK,
            orig_src: OrigSrc::Auto,
            h2: H2Settings::default(),
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(300),
            hbone_port: flags::HBONE_PORT,
            proxy_ports: vec![
                flags::OUTBOUND_PORT,
                flags::INBOUND_PLAINTEXT_PORT,
                flags::HBONE_PORT,
            ],
            local_congestion: Some(flags::DEFAULT_LOCAL_TCP_CONGESTION.to_string()),
            keepalive: Some(crate::runtime::sockopt::Keepalive::default()),
            tls_records: flags::TlsRecords::Direct,
            link: false,
            splice: true,
            fault_refuse_adopt: None,
            max_connections_per_shard: usize::MAX,
        }
    }
}

/// An enrolled pod: its uid, what ZDS said of it (name, namespace, service account), and its
/// network namespace.
#[derive(Debug)]
pub struct Pod {
    pub uid: String,
    pub info: Option<WorkloadInfo>,
    pub netns: Arc<Netns>,
}

impl Pod {
    /// A pod enrolled by `--pod`: its uid is the workload uid in the config.
    pub fn new(uid: &str, netns: Arc<Netns>) -> Pod {
        Pod {
            uid: uid.to_string(),
            info: None,
            netns,
        }
    }

    /// This pod's workload in `snap`: by uid, else by namespace/name (ZDS pods).
    pub fn workload<'a>(&self, snap: &'a Snapshot) -> Option<&'a Arc<Workload>> {
        snap.workload_by_uid(&self.uid).or_else(|| {
            self.info
                .as_ref()
                .and_then(|i| snap.workload_by_name(&i.namespace, &i.name))
        })
    }
}

/// How long a connection waits for state the control plane has not delivered yet (a newly
/// enrolled pod's workload, its first certificate from the CA): ztunnel holds such
/// connections too, rather than refusing them in the first seconds of a pod's life.
pub const LATE_STATE_WAIT: Duration = Duration::from_secs(5);

/// `f()` now, or — if it has nothing yet — polled every 20 ms for up to
/// [`LATE_STATE_WAIT`]. The common case (state present) costs one call.
pub async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    if let Some(v) = f() {
        return Some(v);
    }
    // Boxed: the timer is not part of the future of every connection that waited for
    // nothing.
    Box::pin(wait_more(f)).await
}

async fn wait_more<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + LATE_STATE_WAIT;
    while std::time::Instant::now() < deadline {
        crate::runtime::engine::sleep(Duration::from_millis(20)).await;
        if let Some(v) = f() {
            return Some(v);
        }
    }
    None
}

/// One shard's listeners for one pod, made inside the pod's netns by the control thread
/// (or taken over from the process before this one: then a shard may get more than one per
/// port, when that process ran more shards).
#[derive(Debug)]
pub struct PodListeners {
    pub pod: Arc<Pod>,
    pub outbound: Vec<std::net::TcpListener>,
    pub inbound_plain: Vec<std::net::TcpListener>,
    pub hbone: Vec<std::net::TcpListener>,
}

/// A pod's accept loops on one shard, and the signal that stops them without loss.
type PodTasks = (Vec<Task>, Rc<StopSignal>);

/// The context of one shard: read-only config handles plus shard-local state.
pub struct ShardCtx {
    pub id: usize,
    pub cfg: Arc<ProxyConfig>,
    pub state: StateHandle,
    pub certs: CertHandle,
    pub pool: pool::Pool,
    pub conns: conns::Registry,
    /// The strings tunnels' bookkeeping shares.
    pub names: names::Names,
    /// HBONE connections on the link task (both roles), for a hand-over.
    pub links: Rc<links::Links>,
    /// Plaintext TCP relays (passthrough, 15006), for a hand-over.
    pub relays: relays::Relays,
    pub metrics: Arc<ShardMetrics>,
    /// The bound on connections this shard's pod listeners hold open.
    pub limit: Rc<limit::ConnLimit>,
    pods: RefCell<HashMap<String, PodTasks>>,
    rr: RefCell<HashMap<String, usize>>,
    /// Set on SIGTERM.
    pub drain: Drain,
}

impl ShardCtx {
    pub fn new(
        id: usize,
        cfg: Arc<ProxyConfig>,
        state: StateHandle,
        certs: CertHandle,
        metrics: Arc<ShardMetrics>,
    ) -> Self {
        ShardCtx {
            id,
            limit: limit::ConnLimit::new(cfg.max_connections_per_shard),
            metrics,
            cfg,
            state,
            certs,
            pool: pool::Pool::default(),
            conns: conns::Registry::default(),
            names: names::Names::default(),
            links: Rc::default(),
            relays: relays::Relays::default(),
            pods: RefCell::default(),
            rr: RefCell::default(),
            drain: Drain::default(),
        }
    }

    /// Counts a proxied connection (or HBONE stream) as live until the guard drops
    /// (`ShardMetrics::live`, which the drain watches).
    pub fn live_guard(&self) -> LiveGuard {
        self.metrics.live.fetch_add(1, Ordering::Relaxed);
        LiveGuard(self.metrics.clone())
    }

    /// Starts serving a pod's listeners on this shard (replacing an earlier set).
    pub fn add_pod(self: &Rc<Self>, l: PodListeners) {
        let stop = Rc::new(StopSignal::default());
        let mut tasks = Vec::with_capacity(3);
        let mut regs = Vec::new();
        for x in l.outbound {
            regs.push((0, net::listener_from_std(x)));
        }
        for x in l.inbound_plain {
            regs.push((1, net::listener_from_std(x)));
        }
        for x in l.hbone {
            regs.push((2, net::listener_from_std(x)));
        }
        if let Some(e) = regs.iter().find_map(|(_, r)| r.as_ref().err()) {
            tracing::error!(shard = self.id, pod = %l.pod.uid, "cannot register listeners: {e}");
            return;
        }
        for (which, r) in regs {
            let Ok(x) = r else { continue };
            let (ctx, pod, stop) = (self.clone(), l.pod.clone(), stop.clone());
            tasks.push(match which {
                0 => crate::runtime::engine::spawn(outbound::serve(ctx, pod, x, stop)),
                1 => crate::runtime::engine::spawn(inbound_plain::serve(ctx, pod, x, stop)),
                _ => crate::runtime::engine::spawn(inbound::serve(ctx, pod, x, stop)),
            });
        }
        if let Some((old, _)) = self
            .pods
            .borrow_mut()
            .insert(l.pod.uid.clone(), (tasks, stop))
        {
            old.iter().for_each(|t| t.abort());
        }
        tracing::debug!(shard = self.id, pod = %l.pod.uid, "pod listeners up");
    }

    /// Stops accepting for a pod (its listeners close); live connections continue.
    pub fn remove_pod(&self, uid: &str) {
        if let Some((tasks, _)) = self.pods.borrow_mut().remove(uid) {
            tasks.iter().for_each(|t| t.abort());
        }
    }

    /// Stops accepting for a pod without closing what the listen queues hold: the sockets
    /// were handed to another process (which accepts from the same queues), or the process
    /// is draining. Connections already taken off the queue are served here.
    pub fn release_pod(&self, uid: &str) {
        if let Some((_, stop)) = self.pods.borrow_mut().remove(uid) {
            stop.stop();
        }
    }

    /// Stops accepting on every pod (drain); see `release_pod`.
    pub fn release_all(&self) {
        for (_, (_, stop)) in self.pods.borrow_mut().drain() {
            stop.stop();
        }
    }

    /// Number of pods this shard serves.
    pub fn pod_count(&self) -> usize {
        self.pods.borrow().len()
    }

    /// Re-checks live inbound connections whenever the config version changes.
    pub fn watch_config(self: &Rc<Self>, mut rx: tokio::sync::watch::Receiver<u64>) {
        let ctx = self.clone();
        crate::runtime::engine::spawn(async move {
            while rx.changed().await.is_ok() {
                let snap = ctx.state.load_full();
                let closed = ctx.conns.recheck(&snap);
                if closed > 0 {
                    tracing::info!(
                        shard = ctx.id,
                        closed,
                        version = snap.version,
                        "closed connections now denied by policy"
                    );
                }
            }
        });
        let ctx = self.clone();
        crate::runtime::engine::spawn(async move {
            let every = (ctx.cfg.pool_idle_timeout / 4).max(Duration::from_millis(100));
            loop {
                crate::runtime::engine::sleep(every).await;
                ctx.pool.evict_idle(ctx.cfg.pool_idle_timeout);
            }
        });
    }

    /// The next round-robin index for a service.
    pub fn next_rr(&self, key: &str) -> usize {
        let mut rr = self.rr.borrow_mut();
        let c = rr.entry(key.to_string()).or_insert(self.id);
        *c = c.wrapping_add(1);
        *c
    }
}

/// One access-log line per connection, with ztunnel's field names (target `access`).
#[allow(clippy::too_many_arguments)]
pub fn log_complete(
    ctx: &ShardCtx,
    direction: &'static str,
    src_addr: SocketAddr,
    src_id: Option<&str>,
    dst_addr: SocketAddr,
    hbone_addr: Option<SocketAddr>,
    dst_id: Option<&str>,
    dst_service: Option<&str>,
    counters: &Counters,
    started: std::time::Instant,
    error: Option<&str>,
) {
    let duration = format!("{}ms", started.elapsed().as_millis());
    let hbone = hbone_addr.map(|a| a.to_string());
    let snap = ctx.state.load();
    let norm = |a: SocketAddr| crate::hbone::normalize(a.ip());
    let (src_addr, dst_addr) = (
        SocketAddr::new(norm(src_addr), src_addr.port()),
        SocketAddr::new(norm(dst_addr), dst_addr.port()),
    );
    let src_w = snap.workload_by_ip(norm(src_addr));
    let dst_w = snap.workload_by_ip(norm(hbone_addr.unwrap_or(dst_addr)));
    let src_workload = src_w.map(|w| w.name.as_str());
    let src_namespace = src_w.map(|w| w.namespace.as_str());
    let dst_workload = dst_w.map(|w| w.name.as_str());
    let dst_namespace = dst_w.map(|w| w.namespace.as_str());
    match error {
        None => tracing::info!(
            target: "access",
            direction,
            src.addr = %src_addr,
            src.workload = src_workload,
            src.namespace = src_namespace,
            src.identity = src_id,
            dst.addr = %dst_addr,
            dst.workload = dst_workload,
            dst.namespace = dst_namespace,
            dst.hbone_addr = hbone.as_deref(),
            dst.service = dst_service,
            dst.identity = dst_id,
            bytes_sent = counters.sent.get(),
            bytes_recv = counters.received.get(),
            duration,
            "connection complete"
        ),
        Some(e) => tracing::error!(
            target: "access",
            direction,
            src.addr = %src_addr,
            src.workload = src_workload,
            src.namespace = src_namespace,
            src.identity = src_id,
            dst.addr = %dst_addr,
            dst.workload = dst_workload,
            dst.namespace = dst_namespace,
            dst.hbone_addr = hbone.as_deref(),
            dst.service = dst_service,
            dst.identity = dst_id,
            bytes_sent = counters.sent.get(),
            bytes_recv = counters.received.get(),
            duration,
            error = e,
            "connection complete"
        ),
    }
}

/// A connection's metrics: counted opened when made, closed when dropped.
pub struct ConnMetrics(pub Arc<TcpCounters>, Cell<bool>);

impl ConnMetrics {
    pub fn open(ctx: &ShardCtx, labels: TcpLabels) -> ConnMetrics {
        ConnMetrics(ctx.metrics.open(labels), Cell::new(true))
    }

    /// As [`open`](Self::open), with the registry's shared copy of the labels (one per
    /// label set, which an idle tunnel's bookkeeping points to instead of copying).
    pub fn open_shared(ctx: &ShardCtx, labels: TcpLabels) -> (ConnMetrics, Arc<TcpLabels>) {
        let (l, c) = ctx.metrics.open_shared(labels);
        (ConnMetrics(c, Cell::new(true)), l)
    }

    /// The metrics of a connection the previous process opened and handed to this one:
    /// counted closed here when it ends, not opened again.
    pub fn adopted(ctx: &ShardCtx, labels: TcpLabels) -> ConnMetrics {
        ConnMetrics(ctx.metrics.counters_for(labels), Cell::new(true))
    }

    /// The connection moved to the next process, which counts its close.
    pub fn moved(self) {
        self.1.set(false);
    }

    /// Byte counters of the connection that feed these metrics.
    pub fn counters(&self, local_is_client: bool) -> Rc<Counters> {
        Rc::new(Counters::with_metrics(self.0.clone(), local_is_client))
    }

    /// Marks the connection failed (it still counts as opened and closed).
    pub fn failed(&self) {
        TcpCounters::add(&self.0.failed, 1);
    }
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        if self.1.get() {
            TcpCounters::add(&self.0.closed, 1);
        }
    }
}

/// Accepts on one of a pod's listeners until the task is aborted, running `handle` as a local
/// task per connection. Accept errors (e.g. out of fds) are logged and retried after a pause.
/// While the shard holds `limit` connections open, it accepts none (they wait in the
/// kernel's queue) until one closes.
pub async fn accept_loop<F, Fut>(
    pod: Arc<Pod>,
    l: net::Listener,
    what: &'static str,
    stop: Rc<StopSignal>,
    limit: Rc<limit::ConnLimit>,
    handle: F,
) where
    F: Fn(net::Stream, SocketAddr, limit::Slot) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let mut backoff = Duration::from_millis(20);
    // The handler holds the connection's share of the bound (`slot`) as long as the
    // connection lasts, which may be past its task.
    let run = |s, peer| {
        crate::runtime::engine::spawn(handle(s, peer, limit.take()));
    };
    let mut paused = false;
    loop {
        let next = {
            let mut a = std::pin::pin!(l.accept());
            std::future::poll_fn(|cx| {
                if stop.poll_stopped(cx) {
                    return std::task::Poll::Ready(None);
                }
                if limit.poll_room(cx).is_pending() {
                    if !paused {
                        paused = true;
                        limit_reached(&pod, what, &limit);
                    }
                    return std::task::Poll::Pending;
                }
                paused = false;
                a.as_mut().poll(cx).map(Some)
            })
            .await
        };
        match next {
            Some(Ok((s, peer))) => {
                backoff = Duration::from_millis(20);
                run(s, peer);
            }
            Some(Err(e)) => {
                // Out of fds (or memory): the connection stays queued in the kernel; back
                // off (20 ms doubling to 200 ms, so a freed fd is used soon) and log at
                // most once per 10 s per process, with the count.
                accept_failed(&pod, what, &e);
                crate::runtime::engine::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
                continue;
            }
            None => {
                // Handed over (or draining): serve what the engine already accepted, leave
                // the listen queue to the socket's other holder.
                let taken = l.stop().await;
                let n = taken.len();
                for (s, peer) in taken {
                    run(s, peer);
                }
                tracing::debug!(pod = %pod.uid, accepted_late = n, "{what} listener released");
                return;
            }
        }
    }
}

/// Counts a pause at the connection bound; logs it unless another was logged in the last
/// 10 s.
fn limit_reached(pod: &Pod, what: &str, limit: &limit::ConnLimit) {
    let (n, log) = crate::telemetry::metrics::conn_limit_paused();
    if log {
        tracing::warn!(
            pod = %pod.uid,
            open = limit.open(),
            total = n,
            "{what}: this shard holds {} connections open, its share of --max-connections: new ones wait in the kernel's queue until one closes (logged at most every 10 s, see ringmesh_connection_limit_pauses_total)",
            limit.max()
        );
    }
}

/// Counts an accept failure; logs it unless another was logged in the last 10 s.
fn accept_failed(pod: &Pod, what: &str, e: &std::io::Error) {
    let (n, log) = crate::telemetry::metrics::accept_failed();
    if log {
        tracing::warn!(
            pod = %pod.uid,
            total = n,
            "{what} accept failed: {e} (connections wait in the kernel's queue; logged at most every 10 s, see ringmesh_accept_failures_total)"
        );
    }
}

/// "Stop accepting": set once, seen by every accept loop of one pod on one shard.
#[derive(Default)]
pub struct StopSignal {
    stopped: Cell<bool>,
    wakers: RefCell<Vec<std::task::Waker>>,
}

impl StopSignal {
    pub fn stop(&self) {
        self.stopped.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    fn poll_stopped(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.stopped.get() {
            return true;
        }
        let mut w = self.wakers.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        false
    }
}

/// Counts one live proxied connection of a shard while it exists.
pub struct LiveGuard(Arc<ShardMetrics>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A shard's "draining" flag: set once on SIGTERM; HBONE connections send GOAWAY.
#[derive(Default)]
pub struct Drain {
    on: Cell<bool>,
    notify: tokio::sync::Notify,
}

impl Drain {
    pub fn start(&self) {
        self.on.set(true);
        self.notify.notify_waiters();
    }

    pub fn is_on(&self) -> bool {
        self.on.get()
    }

    /// Resolves once draining (at once if it already is).
    pub async fn wait(&self) {
        if self.on.get() {
            return;
        }
        let n = self.notify.notified();
        if self.on.get() {
            return;
        }
        n.await
    }
}

/// Connects a socket made in a pod's netns, with a timeout.
pub async fn connect_in(
    netns: &Netns,
    dst: SocketAddr,
    mark: u32,
    transparent_src: Option<std::net::IpAddr>,
    timeout: Duration,
) -> Result<net::Stream, String> {
    let sock = netns
        .connect_socket(dst, mark, transparent_src)
        .map_err(|e| e.to_string())?;
    net::connect(sock, dst, timeout).await
}
