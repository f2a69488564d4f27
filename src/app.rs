//! Start-up and shutdown order of `ringmesh node`: settings (flags, then ztunnel's
//! environment) → config (the local file now, or an empty snapshot that xDS fills) → CA and
//! certificates → shards → admin endpoints → pods (`--pod`; ZDS at once in file mode, only
//! after the first xDS sync in xDS mode, as ztunnel) → the control loop (xDS snapshots,
//! reload on SIGHUP or file change, certificate rotation and CA answers, ZDS requests,
//! shutdown on SIGTERM/SIGINT/quitquitquit).
//!
//! The control thread is the only writer of the published snapshots; shards only read them.

mod handover;
mod live_record;
pub mod waypoint;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AdminState, Endpoints, PodInfo, PodStatus};
use crate::certs::caclient::CaClient;
use crate::certs::store::{CertManager, Fetched, Issuer};
use crate::config::env::{AuthSource, CaSource, ConfigSource, ControlPlane, Endpoint};
use crate::config::{
    self,
    flags::{IoEngine, NodeArgs, OrigSrc, UringTaskRun},
};
use crate::hbone::H2Settings;
use crate::identity::ca::Ca;
use crate::inpod::Netns;
use crate::inpod::zds::Action;
use crate::inpod::zds_client::{self, ZdsEvent};
use crate::proxy::{Pod, PodListeners, ProxyConfig, ShardCtx};
use crate::runtime::{self, Shard};
use crate::state::{Snapshot, StateHandle};
use crate::telemetry::metrics::Metrics;
use crate::xds::{XdsConfig, XdsEvent, grpc};

/// Errors that stop `ringmesh node` from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Ca(#[from] crate::identity::ca::CaError),
    #[error(transparent)]
    Netns(#[from] crate::inpod::NetnsError),
    #[error(transparent)]
    Socket(#[from] crate::inpod::SocketError),
    #[error("cannot start shards: {0}")]
    Shards(std::io::Error),
    #[error("bad io_uring setting: {0}")]
    Engine(String),
    #[error("cannot start the control loop: {0}")]
    Control(std::io::Error),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    ControlPlane(#[from] grpc::GrpcError),
    #[error("shard {0} died: the node proxy stops (with an error, so that Kubernetes restarts it)")]
    ShardDied(usize),
}

/// Where a pod came from: `--pod` pods stay for the process's life; ZDS pods follow ZDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Flag,
    Zds,
}

/// The running node proxy, as the control thread sees it.
pub struct Node {
    args: NodeArgs,
    plane: ControlPlane,
    state: StateHandle,
    certs: CertManager,
    cert_rx: Option<tokio::sync::mpsc::UnboundedReceiver<Fetched>>,
    shards: Vec<Shard<ShardCtx>>,
    pods: HashMap<String, (Arc<Pod>, Source)>,
    version_tx: tokio::sync::watch::Sender<u64>,
    config_stamp: Option<(SystemTime, u64)>,
    admin: Arc<AdminState>,
    metrics: Arc<Metrics>,
    /// The ZDS socket, until ZDS is started (xDS mode waits for the first sync).
    zds_waiting: Option<PathBuf>,
    /// The previous node proxy on this node, while it hands its listeners over.
    handover: Option<crate::inpod::handover::Client>,
    /// Our own copy of every pod's listeners (port, fd), for the next process to take.
    listener_fds: HashMap<String, Vec<(u16, std::os::fd::OwnedFd)>>,
    /// A shard whose thread died (the process then exits with an error).
    dead_shard: Option<usize>,
    /// Our live-connection count on disk, for the next process to count what a crash cut.
    live_record: Option<live_record::LiveRecord>,
    /// Pods whose listeners went to the next process: a connection it refuses to adopt is
    /// continued here and still serves the pod's new streams until it drains.
    handed_pods: HashMap<String, Arc<Pod>>,
}

/// Runs the node proxy until SIGTERM/SIGINT or `POST /quitquitquit`. `ztunnel_defaults`:
/// started as `ringmesh proxy ztunnel` (ztunnel's defaults where nothing is set).
pub fn run(args: NodeArgs, ztunnel_defaults: bool) -> Result<(), StartError> {
    // A parent may have started us with these blocked (the signal mask is inherited across
    // exec; the lab's holder blocks them): the shutdown and reload signals must arrive.
    unblock_signals();
    if args.config_poll.is_zero() {
        return Err(StartError::Settings(
            "--config-poll 0s: the poll interval must be above zero (default 1s)".into(),
        ));
    }
    raise_fd_limit();
    let vars = config::env::vars();
    let plane = config::env::control_plane(&args, &vars, ztunnel_defaults, &|p| p.exists())
        .map_err(StartError::Settings)?;
    let unsupported = config::env::unsupported(&vars);
    if !unsupported.is_empty() {
        tracing::warn!(
            "ztunnel settings ringmesh does not support (ignored): {}",
            unsupported.join("; ")
        );
    }
    if args.dry_run {
        return dry_run(&args, &plane);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Control)?;
    rt.block_on(async move {
        let mut node = Node::start(args, plane)?;
        node.serve_admin().await?;
        let (zds_tx, zds_rx) = tokio::sync::mpsc::unbounded_channel();
        let (xds_tx, xds_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ho_tx, ho_rx) = tokio::sync::mpsc::unbounded_channel();
        node.start_handover(ho_tx);
        node.open_live_record();
        node.zds_waiting = node.zds_socket();
        if node.zds_waiting.is_some() {
            node.admin.set_pending("workload proxy manager", true);
        }
        if let ConfigSource::Xds(x) = node.plane.source.clone() {
            node.admin.set_pending("state manager", true);
            let cfg = node.xds_config(&x)?;
            tracing::info!(
                "xDS from {} (node id {}, cluster {}); pods are enrolled after the first sync",
                cfg.target.uri,
                node.plane.node_id,
                node.plane.cluster_id
            );
            crate::xds::client::spawn(
                cfg,
                xds_tx.clone(),
                node.metrics.control.clone(),
                node.admin.xds.clone(),
            );
        } else {
            node.start_zds(&zds_tx)?;
        }
        node.control_loop(zds_rx, zds_tx.clone(), xds_rx, ho_rx)
            .await;
        let dead = node.dead_shard;
        node.drain().await;
        if let Some(r) = node.live_record.take() {
            r.finish();
        }
        drop(zds_tx);
        drop(xds_tx);
        node.shutdown();
        match dead {
            Some(id) => Err(StartError::ShardDied(id)),
            None => Ok(()),
        }
    })
}

/// `--dry-run`: checks what can be checked without starting (the config file parses and
/// validates; the control-plane addresses parse) and prints the effective settings.
fn dry_run(args: &NodeArgs, plane: &ControlPlane) -> Result<(), StartError> {
    if let ConfigSource::File(p) = &plane.source {
        config::load(p, 1)?;
    }
    if let ConfigSource::Xds(e) = &plane.source {
        target("xDS", e, plane)?;
    }
    if let CaSource::Istio(e) = &plane.ca {
        target("CA", e, plane)?;
    }
    let shards = shard_count(args);
    let engine = match args.io_engine {
        IoEngine::Uring => runtime::Engine::Uring,
        IoEngine::Epoll => runtime::Engine::Epoll,
    };
    let cc = local_congestion(&args.local_tcp_congestion);
    let v = effective_config(args, plane, shards, engine, cc.as_deref());
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

/// Shards: `--shards` (N, N% or 0 of the allowed CPUs), else one per allowed CPU, at most
/// `--cpu-limit`.
fn shard_count(args: &NodeArgs) -> usize {
    let cpus = runtime::allowed_cpus().len().max(1);
    match args.shards {
        Some(t) => t.resolve(cpus),
        None => args
            .cpu_limit
            .filter(|&c| c > 0)
            .map_or(cpus, |c| c.min(cpus)),
    }
    .max(1)
}

/// The xDS client's settings: the target, ztunnel's node id and metadata, the backoff.
fn xds_config(p: &ControlPlane, args: &NodeArgs, x: &Endpoint) -> Result<XdsConfig, StartError> {
    let c = &args.control;
    Ok(XdsConfig {
        target: target("xDS", x, p)?,
        node: crate::proto::discovery::Node {
            id: p.node_id.clone(),
            metadata: Some(crate::xds::client::node_metadata(
                &c.pod_name,
                &c.pod_namespace,
                &c.instance_ip,
                &c.node_name,
                &p.metadata,
                &p.metadata_json,
            )),
            ..Default::default()
        },
        initial_backoff: Duration::from_millis(10),
        max_backoff: args.xds_max_backoff,
    })
}

/// A gRPC target from an endpoint's settings and the shared credentials.
fn target(
    what: &'static str,
    e: &Endpoint,
    plane: &ControlPlane,
) -> Result<grpc::Target, StartError> {
    Ok(grpc::Target {
        what,
        uri: grpc::parse_address(what, &e.address)?,
        root: e.root.clone(),
        alt_hostname: e.alt_hostname.clone(),
        auth: plane.auth.clone(),
        cluster_id: plane.cluster_id.clone(),
        headers: e.headers.clone(),
    })
}

impl Node {
    /// Loads config, sets up the CA, starts shards and enrols the `--pod` pods.
    pub fn start(args: NodeArgs, plane: ControlPlane) -> Result<Node, StartError> {
        let (snap, config_stamp) = match &plane.source {
            ConfigSource::File(path) => {
                let snap = config::load(path, 1)?;
                tracing::info!(
                    config = %path.display(),
                    workloads = snap.workloads.len(),
                    services = snap.services.len(),
                    policies = snap.policies.len(),
                    "config loaded"
                );
                (snap, stamp(path))
            }
            ConfigSource::Xds(_) => (Snapshot::build_lenient(1, vec![], vec![], vec![]).0, None),
        };
        let now = SystemTime::now();
        let metrics = Arc::new(Metrics::default());
        let issuer = match &plane.ca {
            CaSource::BuiltIn(Some((c, k))) => Issuer::BuiltIn(Box::new(Ca::load(c, k)?)),
            CaSource::BuiltIn(None) => {
                tracing::info!("no --ca-cert/--ca-key: generated a root CA for this process");
                Issuer::BuiltIn(Box::new(Ca::generate(now)?))
            }
            CaSource::Istio(e) => {
                let t = target("CA", e, &plane)?;
                if matches!(plane.auth, AuthSource::None) {
                    tracing::warn!(
                        "no token for the CA ({} does not exist and --auth-token / AUTH_TOKEN is unset): istiod will refuse the certificate requests",
                        config::flags::DEFAULT_TOKEN
                    );
                }
                tracing::info!(
                    "workload certificates from the Istio CA at {} (this node holds no CA key)",
                    t.uri
                );
                Issuer::Istio(Arc::new(CaClient::new(t, args.cert_ttl)))
            }
        };
        let (certs, cert_rx) = CertManager::new(issuer, args.cert_ttl, Some(metrics.clone()));
        let state: StateHandle = Arc::new(ArcSwap::from_pointee(snap));
        let n = shard_count(&args);
        let cfg = Arc::new(proxy_config(&args));
        let local_cc = cfg.local_congestion.clone();
        let (engine, uring) = io_engine(&args)?;
        tracing::info!(shards = n, orig_src = ?cfg.orig_src, "starting shards (engine: {engine})");
        *metrics.engine.lock().unwrap_or_else(|e| e.into_inner()) = engine.name().into();
        let (version_tx, version_rx) = tokio::sync::watch::channel(1u64);
        let shard_metrics: Vec<_> = (0..n).map(|_| metrics.shard()).collect();
        let (st, ce) = (state.clone(), certs.handle());
        let shards = runtime::spawn_shards(n, args.pin_cores, engine, &uring, move |id| {
            ShardCtx::new(
                id,
                cfg.clone(),
                st.clone(),
                ce.clone(),
                shard_metrics[id].clone(),
            )
        })
        .map_err(StartError::Shards)?;
        for s in &shards {
            let rx = version_rx.clone();
            let _ = s.send(Box::new(move |ctx| ctx.watch_config(rx)));
        }
        let admin = Arc::new(AdminState {
            state: state.clone(),
            certs: certs.handle(),
            metrics: metrics.clone(),
            pods: Default::default(),
            pending: Default::default(),
            config: effective_config(&args, &plane, n, engine, local_cc.as_deref()),
            xds: Default::default(),
            sections: Default::default(),
            quit: tokio::sync::Notify::new(),
        });
        let mut node = Node {
            args,
            plane,
            state,
            certs,
            cert_rx: Some(cert_rx),
            shards,
            pods: HashMap::new(),
            version_tx,
            config_stamp,
            admin,
            metrics,
            zds_waiting: None,
            handover: None,
            listener_fds: HashMap::new(),
            dead_shard: None,
            live_record: None,
            handed_pods: HashMap::new(),
        };
        for p in node.args.pods.clone() {
            let netns = Netns::open(&p.netns)?;
            let pod = Arc::new(Pod::new(&p.uid, Arc::new(netns)));
            node.add_pod(pod, Source::Flag)?;
        }
        Ok(node)
    }

    async fn serve_admin(&self) -> Result<(), StartError> {
        for (addr, which, what) in [
            (self.args.readiness_addr, Endpoints::Readiness, "readiness"),
            (self.args.stats_addr, Endpoints::Stats, "metrics"),
            (self.args.admin_addr, Endpoints::Admin, "admin"),
        ] {
            let l = admin::bind(addr)
                .await
                .map_err(|source| StartError::Admin { addr, what, source })?;
            tokio::spawn(admin::serve(l, self.admin.clone(), which));
        }
        Ok(())
    }

    fn xds_config(&self, x: &Endpoint) -> Result<XdsConfig, StartError> {
        xds_config(&self.plane, &self.args, x)
    }

    /// Connects to istio-cni's ZDS socket (once).
    fn start_zds(
        &mut self,
        tx: &tokio::sync::mpsc::UnboundedSender<ZdsEvent>,
    ) -> Result<(), StartError> {
        if let Some(path) = self.zds_waiting.take() {
            zds_client::spawn(path, tx.clone(), self.args.zds_max_backoff)
                .map_err(StartError::Control)?;
        }
        Ok(())
    }

    /// Starts our live-connection record beside the ZDS socket and counts what the records
    /// of earlier processes that died say they had open (cut by that crash).
    fn open_live_record(&mut self) {
        let Some(zds) = self.zds_socket() else {
            return;
        };
        match live_record::LiveRecord::open(&zds) {
            Ok((rec, crashed)) => {
                for c in crashed {
                    self.metrics
                        .lifecycle
                        .crash_cut
                        .fetch_add(c.live, Ordering::Relaxed);
                    if c.live > 0 {
                        tracing::warn!(
                            cut = c.live,
                            record = %c.file.display(),
                            "an earlier node proxy on this node died without draining: its live connections were cut"
                        );
                    }
                }
                self.live_record = Some(rec);
            }
            Err(e) => tracing::warn!(
                "cannot keep a live-connection record beside {} ({e}): a crash of this process will not be counted by the next one",
                zds.display()
            ),
        }
    }

    fn write_live_record(&mut self) {
        let live = self.metrics.live();
        if let Some(r) = &mut self.live_record
            && let Err(e) = r.update(live)
        {
            tracing::warn!(
                "cannot update the live-connection record {}: {e}",
                r.path().display()
            );
            self.live_record = None;
        }
    }

    fn zds_socket(&self) -> Option<PathBuf> {
        if self.args.no_zds {
            return None;
        }
        match (&self.args.zds_socket, self.args.pods.is_empty()) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => Some(PathBuf::from(config::flags::DEFAULT_ZDS_SOCKET)),
            (None, false) => None,
        }
    }

    /// Opens the pod's three listeners once per shard, inside the pod's netns, hands each
    /// shard its set, and makes sure its identity has a certificate.
    fn add_pod(&mut self, pod: Arc<Pod>, source: Source) -> Result<(), StartError> {
        let mark = self.args.mark;
        let n = self.shards.len();
        let ports = [
            config::flags::OUTBOUND_PORT,
            config::flags::INBOUND_PLAINTEXT_PORT,
            config::flags::HBONE_PORT,
        ];
        // The previous process's sockets first (their queues may hold connections), one
        // per shard and port; fresh ones where it had fewer shards, extras spread around.
        let taken = self.take_listeners(&pod);
        let took = !taken.is_empty();
        let mut by_port: [Vec<std::net::TcpListener>; 3] = Default::default();
        for (port, l) in taken {
            if let Some(i) = ports.iter().position(|p| *p == port) {
                by_port[i].push(l);
            }
        }
        let mut sets: Vec<[Vec<std::net::TcpListener>; 3]> =
            (0..n).map(|_| Default::default()).collect();
        for (i, port) in ports.iter().enumerate() {
            let mut have = std::mem::take(&mut by_port[i]).into_iter();
            for set in sets.iter_mut() {
                match have.next() {
                    Some(l) => set[i].push(l),
                    None => set[i].push(pod.netns.listener(*port, mark)?),
                }
            }
            for (k, l) in have.enumerate() {
                sets[k % n][i].push(l);
            }
        }
        let mut fds = Vec::with_capacity(3 * n);
        for set in &sets {
            for (i, ls) in set.iter().enumerate() {
                for l in ls {
                    match l.try_clone() {
                        Ok(c) => fds.push((ports[i], std::os::fd::OwnedFd::from(c))),
                        Err(e) => {
                            tracing::warn!(pod = %pod.uid, "cannot keep a copy of a listener for a later hand-over: {e}")
                        }
                    }
                }
            }
        }
        self.listener_fds.insert(pod.uid.clone(), fds);
        for (shard, [o, p, h]) in self.shards.iter().zip(sets) {
            let l = PodListeners {
                pod: pod.clone(),
                outbound: o,
                inbound_plain: p,
                hbone: h,
            };
            let _ = shard.send(Box::new(move |ctx| ctx.add_pod(l)));
        }
        if took {
            self.confirm_taken(&pod.uid);
        }
        tracing::info!(pod = %pod.uid, netns = %pod.netns.path.display(), shards = n, taken_over = took, "pod enrolled: listeners 15001/15006/15008 open");
        if pod.workload(&self.state.load()).is_none() {
            tracing::warn!(pod = %pod.uid, "enrolled pod is not in the config yet: its traffic is refused until it is");
        }
        let info = pod.info.clone().unwrap_or_default();
        self.admin
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                pod.uid.clone(),
                PodStatus {
                    state: "Up",
                    info: PodInfo {
                        name: info.name,
                        namespace: info.namespace,
                        service_account: info.service_account,
                    },
                    netns: pod.netns.path.display().to_string(),
                },
            );
        self.pods.insert(pod.uid.clone(), (pod, source));
        self.metrics
            .active_pods
            .store(self.pods.len() as u64, Ordering::Relaxed);
        self.reconcile_certs();
        Ok(())
    }

    /// Closes a pod's listeners on every shard (live connections finish on their own).
    fn remove_pod(&mut self, uid: &str) {
        if !self.forget_pod(uid, false) {
            return;
        }
        tracing::info!(pod = %uid, "pod removed: its listeners are closed");
        self.reconcile_certs();
    }

    /// Drops a pod from the books and its listeners from the shards: closed, or (`keep_queues`,
    /// handed to another process) released without closing their queues. False if unknown.
    fn forget_pod(&mut self, uid: &str, keep_queues: bool) -> bool {
        let Some((pod, _)) = self.pods.remove(uid) else {
            return false;
        };
        if keep_queues {
            self.handed_pods.insert(uid.to_string(), pod);
        }
        self.listener_fds.remove(uid);
        for shard in &self.shards {
            let uid = uid.to_string();
            let _ = shard.send(Box::new(move |ctx| {
                if keep_queues {
                    ctx.release_pod(&uid)
                } else {
                    ctx.remove_pod(&uid)
                }
            }));
        }
        self.admin
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        self.metrics
            .active_pods
            .store(self.pods.len() as u64, Ordering::Relaxed);
        true
    }

    /// Carries out one ZDS request; `Err` becomes the NACK reason.
    fn zds_request(&mut self, action: Action, netns: Option<File>) -> Result<(), String> {
        match action {
            Action::Add { uid, info } => {
                let file = netns.ok_or("add without a netns fd")?;
                let ns = Netns::from_file(
                    file,
                    Path::new(&format!("zds:{}/{}", info.namespace, info.name)),
                )
                .map_err(|e| e.to_string())?;
                if let Some((old, _)) = self.pods.get(&uid) {
                    if old.netns.id == ns.id {
                        return Ok(());
                    }
                    self.remove_pod(&uid);
                }
                let pod = Arc::new(Pod {
                    uid: uid.clone(),
                    info: Some(info),
                    netns: Arc::new(ns),
                });
                self.add_pod(pod, Source::Zds).map_err(|e| e.to_string())
            }
            Action::Keep { .. } => Ok(()),
            Action::Del { uid } => {
                self.remove_pod(&uid);
                Ok(())
            }
            Action::Reconcile { keep } => {
                let stale: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|(uid, (_, src))| *src == Source::Zds && !keep.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in stale {
                    tracing::info!(pod = %uid, "not in the ZDS snapshot: draining");
                    self.remove_pod(&uid);
                }
                self.admin.set_pending("workload proxy manager", false);
                tracing::info!(pods = self.pods.len(), "ZDS snapshot complete");
                Ok(())
            }
        }
    }

    /// Makes sure every enrolled pod's identity has a current certificate.
    fn reconcile_certs(&mut self) {
        let snap = self.state.load();
        let wanted: BTreeSet<_> = self
            .pods
            .values()
            .filter_map(|(p, _)| p.workload(&snap).map(|w| w.identity()))
            .collect();
        match self.certs.reconcile(&wanted, SystemTime::now()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(issued = n, "workload certificates issued"),
            Err(e) => tracing::error!("certificate issuance failed: {e}"),
        }
    }

    /// Re-reads the config file; a bad file is rejected and the old snapshot keeps serving.
    /// (Nothing to do in xDS mode.)
    pub fn reload(&mut self, why: &str) {
        let ConfigSource::File(path) = self.plane.source.clone() else {
            return;
        };
        let version = self.state.load().version + 1;
        match config::load(&path, version) {
            Ok(snap) => {
                tracing::info!(
                    version,
                    why,
                    workloads = snap.workloads.len(),
                    policies = snap.policies.len(),
                    "config reloaded"
                );
                self.publish(snap);
            }
            Err(e) => {
                tracing::error!(why, "config rejected, keeping version {}: {e}", version - 1);
            }
        }
    }

    fn publish(&mut self, snap: Snapshot) {
        let v = snap.version;
        self.state.store(Arc::new(snap));
        self.reconcile_certs();
        let _ = self.version_tx.send(v);
    }

    /// Publishes a snapshot that xDS built (its version follows the published one).
    fn publish_xds(&mut self, mut snap: Snapshot) {
        snap.version = self.state.load().version + 1;
        tracing::debug!(
            version = snap.version,
            workloads = snap.workloads.len(),
            "xDS snapshot published"
        );
        self.publish(snap);
    }

    async fn control_loop(
        &mut self,
        mut zds: tokio::sync::mpsc::UnboundedReceiver<ZdsEvent>,
        zds_tx: tokio::sync::mpsc::UnboundedSender<ZdsEvent>,
        mut xds: tokio::sync::mpsc::UnboundedReceiver<XdsEvent>,
        mut handover: tokio::sync::mpsc::UnboundedReceiver<crate::inpod::handover::HandoverEvent>,
    ) {
        let Some(mut cert_rx) = self.cert_rx.take() else {
            return;
        };
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut poll = tokio::time::interval(self.args.config_poll);
        let mut record_tick = tokio::time::interval(live_record::WRITE_EVERY);
        let admin = self.admin.clone();
        loop {
            // An overdue refresh is due now (not in 60 s: the poll tick would recreate that
            // sleep forever).
            let rotate_in = match self.certs.next_refresh() {
                Some(t) => t
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
                None => Duration::from_secs(60),
            }
            .min(Duration::from_secs(60));
            tokio::select! {
                _ = hup.recv() => self.reload("SIGHUP"),
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return; }
                _ = admin.quit.notified() => { tracing::info!("quitquitquit: shutting down"); return; }
                _ = poll.tick() => {
                    if let Some(s) = self.shards.iter().find(|s| !s.is_alive()) {
                        // A shard that died took its pods' listeners and connections with it:
                        // not ready, and out, so that Kubernetes starts a whole proxy again.
                        tracing::error!(shard = s.id, "shard thread died: the node proxy stops (its pods' traffic on that shard is gone)");
                        self.admin.set_pending("shards", true);
                        self.dead_shard = Some(s.id);
                        return;
                    }
                    if let ConfigSource::File(path) = &self.plane.source {
                        let now = stamp(path);
                        if now.is_some() && now != self.config_stamp {
                            self.config_stamp = now;
                            self.reload("file changed");
                        }
                    }
                }
                _ = record_tick.tick() => self.write_live_record(),
                _ = tokio::time::sleep(rotate_in) => self.reconcile_certs(),
                Some(f) = cert_rx.recv() => self.certs.fetched(f, SystemTime::now()),
                Some(ev) = handover.recv() => self.handover_event(ev),
                Some(ev) = xds.recv() => match ev {
                    XdsEvent::Snapshot(snap) => self.publish_xds(*snap),
                    XdsEvent::Synced => {
                        self.admin.set_pending("state manager", false);
                        if let Err(e) = self.start_zds(&zds_tx) {
                            tracing::error!("cannot start ZDS: {e}");
                        }
                    }
                },
                Some(ev) = zds.recv() => match ev {
                    ZdsEvent::Connected => self.admin.set_pending("workload proxy manager", true),
                    ZdsEvent::Disconnected(_) => self.admin.set_pending("workload proxy manager", true),
                    ZdsEvent::Request { action, netns, reply } => {
                        let r = self.zds_request(action, netns);
                        let _ = reply.send(r);
                    }
                },
            }
        }
    }

    /// Stops shards (their listeners and connections close).
    pub fn shutdown(self) {
        for s in self.shards {
            s.stop();
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every pod costs 3 listeners per shard
/// and every proxied connection two or more fds.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!("open files limit raised from {soft} to {hard}"),
            Err(e) => {
                tracing::warn!("cannot raise the open files limit from {soft} to {hard}: {e}")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open files limit: {e}"),
    }
}

/// Unblocks SIGTERM, SIGINT and SIGHUP for this thread (and the threads it starts).
pub fn unblock_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    if let Err(e) = set.thread_unblock() {
        tracing::warn!("cannot unblock SIGTERM/SIGINT/SIGHUP: {e}");
    }
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The engine the shards will run: `--io-engine`, or epoll when io_uring cannot be set up.
fn io_engine(args: &NodeArgs) -> Result<(runtime::Engine, runtime::UringOpts), StartError> {
    let u = &args.uring;
    let opts = runtime::UringOpts {
        entries: u.uring_entries,
        sqpoll_idle_ms: u.uring_sqpoll,
        buf_count: u.uring_buffers,
        buf_size: u.uring_buffer_size,
        send_zc_threshold: u.uring_send_zc_threshold,
        send_queue: u.uring_send_queue.max(4096),
        recv_limit: u.uring_recv_limit,
        taskrun: match u.uring_taskrun {
            UringTaskRun::Coop => runtime::uring::TaskRun::Coop,
            UringTaskRun::Defer => runtime::uring::TaskRun::Defer,
            UringTaskRun::Interrupt => runtime::uring::TaskRun::Default,
        },
    };
    if args.io_engine == IoEngine::Epoll {
        return Ok((runtime::Engine::Epoll, opts));
    }
    opts.validate().map_err(StartError::Engine)?;
    match runtime::uring::probe(&opts) {
        Ok(()) => Ok((runtime::Engine::Uring, opts)),
        Err(e) => {
            tracing::warn!(
                "io_uring is not available ({e}): running the epoll engine instead \
                 (a container runtime's seccomp profile blocks io_uring unless it is allowed)"
            );
            Ok((runtime::Engine::Epoll, opts))
        }
    }
}

fn effective_config(
    args: &NodeArgs,
    plane: &ControlPlane,
    shards: usize,
    engine: runtime::Engine,
    local_cc: Option<&str>,
) -> serde_json::Value {
    let (source, config_file, xds_address) = match &plane.source {
        ConfigSource::File(p) => ("file", Some(p.display().to_string()), None),
        ConfigSource::Xds(e) => ("xds", None, Some(e.address.clone())),
    };
    let (ca, ca_address) = match &plane.ca {
        CaSource::BuiltIn(_) => ("builtIn", None),
        CaSource::Istio(e) => ("istio", Some(e.address.clone())),
    };
    let auth = match &plane.auth {
        AuthSource::None => "none".to_string(),
        AuthSource::File(p) => format!("file {}", p.display()),
        AuthSource::Static(_) => "static (hidden)".to_string(),
    };
    let mut v = serde_json::json!({
        "configSource": source,
        "configFile": config_file,
        "xdsAddress": xds_address,
        "caSource": ca,
        "caAddress": ca_address,
        "authToken": auth,
        "clusterId": plane.cluster_id,
        "nodeId": plane.node_id,
        "network": args.control.network,
        "nodeName": args.control.node_name,
        "podName": args.control.pod_name,
        "podNamespace": args.control.pod_namespace,
        "instanceIp": args.control.instance_ip,
        "serviceAccount": args.control.service_account,
        "xdsRootCa": args.control.xds_root_ca,
        "caRootCa": args.control.ca_root_ca,
        "altXdsHostname": args.control.alt_xds_hostname,
        "altCaHostname": args.control.alt_ca_hostname,
        "xdsOnDemand": args.control.xds_on_demand,
        "nodeMetadata": plane.metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .chain(plane.metadata_json.iter().cloned())
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "cpuLimit": args.cpu_limit,
        "zdsSocket": args.zds_socket.as_ref().map(|p| p.display().to_string()),
        "handoverSocket": if args.no_handover { None } else {
            args.handover_socket.clone().or_else(|| args.zds_socket.as_ref().map(|z| crate::inpod::handover::path_for(z))).map(|p| p.display().to_string())
        },
        "drainDeadline": format!("{}s", config::env::drain_deadline(args.drain_deadline, &config::env::vars()).as_secs()),
        "keepalive": if args.keepalive_enabled {
            serde_json::json!({"time": args.keepalive_time.as_secs(), "interval": args.keepalive_interval.as_secs(), "retries": args.keepalive_retries})
        } else { serde_json::Value::Null },
        "shards": shards,
        "pinCores": args.pin_cores,
        "ioEngine": engine.name(),
        "packetMark": args.mark,
        "origSrc": format!("{:?}", args.orig_src),
        "localTcpCongestion": local_cc.unwrap_or("default"),
        "tlsRecords": format!("{:?}", args.tls_records).to_lowercase(),
        "certTtlSeconds": args.cert_ttl.as_secs(),
        "http2StreamWindowSize": args.h2_stream_window,
        "http2ConnectionWindowSize": args.h2_connection_window,
        "http2FrameSize": args.h2_frame_size,
        "poolMaxStreamsPerConnection": args.pool_max_streams,
        "poolUnusedReleaseTimeoutSeconds": args.pool_idle_timeout.as_secs(),
        "adminAddr": args.admin_addr.to_string(),
        "statsAddr": args.stats_addr.to_string(),
        "readinessAddr": args.readiness_addr.to_string(),
    });
    v["hboneCodec"] = (if proxy_link(args) { "link" } else { "h2" }).into();
    v["maxConnections"] = max_connections(args).into();
    v
}

/// The flow settings from the flags; `--orig-src auto` becomes on or off by whether this
/// process may set IP_TRANSPARENT.
pub fn proxy_config(args: &NodeArgs) -> ProxyConfig {
    let orig_src = match args.orig_src {
        OrigSrc::Auto if transparent_allowed() => OrigSrc::On,
        OrigSrc::Auto => OrigSrc::Off,
        o => o,
    };
    ProxyConfig {
        mark: args.mark,
        orig_src,
        h2: H2Settings {
            stream_window: args.h2_stream_window,
            connection_window: args.h2_connection_window,
            frame_size: args.h2_frame_size,
            client_max_streams: args.pool_max_streams as usize,
            ping_interval: args.ping_interval,
            ping_timeout: args.ping_timeout,
            ..H2Settings::default()
        },
        connect_timeout: args.connect_timeout,
        pool_idle_timeout: args.pool_idle_timeout,
        local_congestion: local_congestion(&args.local_tcp_congestion),
        keepalive: args
            .keepalive_enabled
            .then_some(crate::runtime::sockopt::Keepalive {
                time: args.keepalive_time,
                interval: args.keepalive_interval,
                retries: args.keepalive_retries,
            }),
        tls_records: args.tls_records,
        link: proxy_link(args),
        splice: args.splice,
        fault_refuse_adopt: args.fault_refuse_adopt,
        max_connections_per_shard: crate::proxy::limit::per_shard(
            max_connections(args),
            shard_count(args),
        ),
        ..ProxyConfig::default()
    }
}

/// `--max-connections`, else the default from the open-files limit now.
fn max_connections(args: &NodeArgs) -> usize {
    if let Some(n) = args.max_connections {
        return usize::try_from(n).unwrap_or(usize::MAX);
    }
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    crate::proxy::limit::default_max(nofile)
}

/// Whether HBONE runs on the link task (`--hbone-codec link`, which needs direct records).
fn proxy_link(args: &NodeArgs) -> bool {
    args.hbone_codec == crate::config::flags::HboneCodec::Link
        && args.tls_records == crate::config::flags::TlsRecords::Direct
}

/// `--local-tcp-congestion`: None for `default`, or when this kernel does not offer it (one
/// warning; the local legs then keep the node's default).
fn local_congestion(name: &str) -> Option<String> {
    if name.is_empty() || name == "default" {
        return None;
    }
    match crate::runtime::sockopt::congestion_available(name) {
        Ok(()) => Some(name.to_string()),
        Err(e) => {
            tracing::warn!(
                "--local-tcp-congestion {name} is not available ({e}): pod-local legs keep \
                 the node's default congestion control"
            );
            None
        }
    }
}

fn transparent_allowed() -> bool {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .and_then(|s| s.set_ip_transparent_v4(true))
        .is_ok()
}

/// `ringmesh ca init`: writes a new root for `--ca-cert/--ca-key`.
pub fn ca_init(cert: &Path, key: &Path) -> Result<(), crate::identity::ca::CaError> {
    let ca = Ca::generate(SystemTime::now())?;
    ca.save(cert, key)
}

#[cfg(test)]
mod local_cc_tests {
    use super::local_congestion;

    #[test]
    fn local_congestion_default_unknown_and_known() {
        assert_eq!(local_congestion("default"), None);
        assert_eq!(local_congestion(""), None);
        // A name the kernel does not have: a warning, and the node's default.
        assert_eq!(local_congestion("no-such-algorithm"), None);
        // reno is built into every Linux kernel.
        assert_eq!(local_congestion("reno").as_deref(), Some("reno"));
    }
}
