//! Start-up and shutdown order of `ringmesh node`: config → CA and certificates → shards →
//! pod listeners → the control loop (reload on SIGHUP or file change, certificate rotation,
//! shutdown on SIGTERM/SIGINT).
//!
//! The control thread is the only writer of the published snapshots; shards only read them.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, flags::NodeArgs, flags::OrigSrc};
use crate::hbone::H2Settings;
use crate::identity::ca::Ca;
use crate::identity::store::CertManager;
use crate::inpod::Netns;
use crate::proxy::{Pod, PodListeners, ProxyConfig, ShardCtx};
use crate::runtime::{self, Shard};
use crate::state::{Snapshot, StateHandle};

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
    #[error("cannot start the control loop: {0}")]
    Control(std::io::Error),
}

/// The running node proxy, as the control thread sees it.
pub struct Node {
    args: NodeArgs,
    state: StateHandle,
    certs: CertManager,
    shards: Vec<Shard<ShardCtx>>,
    pods: HashMap<String, Arc<Pod>>,
    version_tx: tokio::sync::watch::Sender<u64>,
    config_stamp: Option<(SystemTime, u64)>,
}

/// Runs the node proxy until SIGTERM/SIGINT.
pub fn run(args: NodeArgs) -> Result<(), StartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Control)?;
    rt.block_on(async move {
        let mut node = Node::start(args)?;
        node.control_loop().await;
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
        let mut pods = HashMap::new();
        for p in &args.pods {
            let netns = Netns::open(&p.netns)?;
            pods.insert(
                p.uid.clone(),
                Arc::new(Pod {
                    uid: p.uid.clone(),
                    netns: Arc::new(netns),
                }),
            );
        }
        let n = args
            .shards
            .unwrap_or_else(|| runtime::allowed_cpus().len())
            .max(1);
        let cfg = Arc::new(proxy_config(&args));
        tracing::info!(
            shards = n,
            orig_src = ?cfg.orig_src,
            "starting shards (engine: epoll)"
        );
        let (version_tx, version_rx) = tokio::sync::watch::channel(1u64);
        let (st, ce) = (state.clone(), certs.handle());
        let shards = runtime::spawn_shards(n, args.pin_cores, move |id| {
            ShardCtx::new(id, cfg.clone(), st.clone(), ce.clone())
        })
        .map_err(StartError::Shards)?;
        for s in &shards {
            let rx = version_rx.clone();
            let _ = s.send(Box::new(move |ctx| ctx.watch_config(rx)));
        }
        let mut node = Node {
            args,
            state,
            certs,
            shards,
            pods,
            version_tx,
            config_stamp,
        };
        node.reconcile_certs();
        let pods: Vec<_> = node.pods.values().cloned().collect();
        for pod in pods {
            node.open_listeners(&pod)?;
        }
        Ok(node)
    }

    /// Opens the pod's three listeners once per shard, inside the pod's netns, and hands each
    /// shard its set.
    fn open_listeners(&self, pod: &Arc<Pod>) -> Result<(), StartError> {
        let mark = self.args.mark;
        for shard in &self.shards {
            let l = PodListeners {
                pod: pod.clone(),
                outbound: pod.netns.listener(config::flags::OUTBOUND_PORT, mark)?,
                inbound_plain: pod
                    .netns
                    .listener(config::flags::INBOUND_PLAINTEXT_PORT, mark)?,
                hbone: pod.netns.listener(config::flags::HBONE_PORT, mark)?,
            };
            let _ = shard.send(Box::new(move |ctx| ctx.add_pod(l)));
        }
        tracing::info!(pod = %pod.uid, netns = %pod.netns.path.display(), shards = self.shards.len(), "pod enrolled: listeners 15001/15006/15008 open");
        if self.state.load().workload_by_uid(&pod.uid).is_none() {
            tracing::warn!(pod = %pod.uid, "enrolled pod is not in the config yet: its traffic is refused until it is");
        }
        Ok(())
    }

    /// Makes sure every enrolled pod's identity has a current certificate.
    fn reconcile_certs(&mut self) {
        let snap = self.state.load();
        let wanted: BTreeSet<_> = self
            .pods
            .keys()
            .filter_map(|uid| snap.identity_of(uid))
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

    async fn control_loop(&mut self) {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut poll = tokio::time::interval(self.args.config_poll);
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
                _ = poll.tick() => {
                    let now = stamp(&self.args.config);
                    if now.is_some() && now != self.config_stamp {
                        self.config_stamp = now;
                        self.reload("file changed");
                    }
                }
                _ = tokio::time::sleep(rotate_in) => self.reconcile_certs(),
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
        ..ProxyConfig::default()
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
