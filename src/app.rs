//! Start-up and shutdown order of `ringmesh node`: config → CA and certificates → shards →
//! admin endpoints → pods (`--pod`, then ZDS) → the control loop (reload on SIGHUP or file
//! change, certificate rotation, ZDS requests, shutdown on SIGTERM/SIGINT/quitquitquit).
//!
//! The control thread is the only writer of the published snapshots; shards only read them.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AdminState, Endpoints, PodInfo, PodStatus};
use crate::config::{
    self,
    flags::{IoEngine, NodeArgs, OrigSrc, UringTaskRun},
};
use crate::hbone::H2Settings;
use crate::identity::ca::Ca;
use crate::identity::store::CertManager;
use crate::inpod::Netns;
use crate::inpod::zds::Action;
use crate::inpod::zds_client::{self, ZdsEvent};
use crate::proxy::{Pod, PodListeners, ProxyConfig, ShardCtx};
use crate::runtime::{self, Shard};
use crate::state::{Snapshot, StateHandle};
use crate::telemetry::metrics::Metrics;

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
    state: StateHandle,
    certs: CertManager,
    shards: Vec<Shard<ShardCtx>>,
    pods: HashMap<String, (Arc<Pod>, Source)>,
    version_tx: tokio::sync::watch::Sender<u64>,
    config_stamp: Option<(SystemTime, u64)>,
    admin: Arc<AdminState>,
    metrics: Arc<Metrics>,
}

/// Runs the node proxy until SIGTERM/SIGINT or `POST /quitquitquit`.
pub fn run(args: NodeArgs) -> Result<(), StartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Control)?;
    rt.block_on(async move {
        let mut node = Node::start(args)?;
        node.serve_admin().await?;
        let zds = node.zds_socket();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(path) = &zds {
            node.admin.set_pending("workload proxy manager", true);
            zds_client::spawn(path.clone(), tx.clone(), node.args.zds_max_backoff)
                .map_err(StartError::Control)?;
        }
        node.control_loop(rx).await;
        drop(tx);
        node.shutdown();
        Ok(())
    })
}

impl Node {
    /// Loads config, issues certificates, starts shards and enrols the `--pod` pods.
    pub fn start(args: NodeArgs) -> Result<Node, StartError> {
        let snap = config::load(&args.config, 1)?;
        let config_stamp = stamp(&args.config);
        tracing::info!(
            config = %args.config.display(),
            workloads = snap.workloads.len(),
            services = snap.services.len(),
            policies = snap.policies.len(),
            "config loaded"
        );
        let now = SystemTime::now();
        let ca = match (&args.ca_cert, &args.ca_key) {
            (Some(c), Some(k)) => Ca::load(c, k)?,
            _ => {
                tracing::info!("no --ca-cert/--ca-key: generated a root CA for this process");
                Ca::generate(now)?
            }
        };
        let certs = CertManager::new(ca, args.cert_ttl)?;
        let state: StateHandle = Arc::new(ArcSwap::from_pointee(snap));
        let n = args
            .shards
            .unwrap_or_else(|| runtime::allowed_cpus().len())
            .max(1);
        let cfg = Arc::new(proxy_config(&args));
        let local_cc = cfg.local_congestion.clone();
        let (engine, uring) = io_engine(&args)?;
        tracing::info!(shards = n, orig_src = ?cfg.orig_src, "starting shards (engine: {engine})");
        let metrics = Arc::new(Metrics::default());
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
            config: effective_config(&args, n, engine, local_cc.as_deref()),
            quit: tokio::sync::Notify::new(),
        });
        let mut node = Node {
            args,
            state,
            certs,
            shards,
            pods: HashMap::new(),
            version_tx,
            config_stamp,
            admin,
            metrics,
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
        let mut sets = Vec::with_capacity(self.shards.len());
        for _ in &self.shards {
            sets.push(PodListeners {
                pod: pod.clone(),
                outbound: pod.netns.listener(config::flags::OUTBOUND_PORT, mark)?,
                inbound_plain: pod
                    .netns
                    .listener(config::flags::INBOUND_PLAINTEXT_PORT, mark)?,
                hbone: pod.netns.listener(config::flags::HBONE_PORT, mark)?,
            });
        }
        for (shard, l) in self.shards.iter().zip(sets) {
            let _ = shard.send(Box::new(move |ctx| ctx.add_pod(l)));
        }
        tracing::info!(pod = %pod.uid, netns = %pod.netns.path.display(), shards = self.shards.len(), "pod enrolled: listeners 15001/15006/15008 open");
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
        if self.pods.remove(uid).is_none() {
            return;
        }
        for shard in &self.shards {
            let uid = uid.to_string();
            let _ = shard.send(Box::new(move |ctx| ctx.remove_pod(&uid)));
        }
        self.admin
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        self.metrics
            .active_pods
            .store(self.pods.len() as u64, Ordering::Relaxed);
        tracing::info!(pod = %uid, "pod removed: its listeners are closed");
        self.reconcile_certs();
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

    /// Re-reads the config; a bad file is rejected and the old snapshot keeps serving.
    pub fn reload(&mut self, why: &str) {
        let version = self.state.load().version + 1;
        match config::load(&self.args.config, version) {
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

    async fn control_loop(&mut self, mut zds: tokio::sync::mpsc::UnboundedReceiver<ZdsEvent>) {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut poll = tokio::time::interval(self.args.config_poll);
        let admin = self.admin.clone();
        loop {
            let rotate_in = self
                .certs
                .next_refresh()
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = hup.recv() => self.reload("SIGHUP"),
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return; }
                _ = admin.quit.notified() => { tracing::info!("quitquitquit: shutting down"); return; }
                _ = poll.tick() => {
                    let now = stamp(&self.args.config);
                    if now.is_some() && now != self.config_stamp {
                        self.config_stamp = now;
                        self.reload("file changed");
                    }
                }
                _ = tokio::time::sleep(rotate_in) => self.reconcile_certs(),
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
    shards: usize,
    engine: runtime::Engine,
    local_cc: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "configFile": args.config.display().to_string(),
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
    })
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
            client_max_streams: args.pool_max_streams,
            ping_interval: args.ping_interval,
            ping_timeout: args.ping_timeout,
            ..H2Settings::default()
        },
        connect_timeout: args.connect_timeout,
        pool_idle_timeout: args.pool_idle_timeout,
        local_congestion: local_congestion(&args.local_tcp_congestion),
        tls_records: args.tls_records,
        ..ProxyConfig::default()
    }
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
