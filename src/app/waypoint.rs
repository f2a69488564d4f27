//! Start-up and shutdown of `ringmesh waypoint`: settings → identity → config (the local
//! file, or an empty snapshot xDS fills) and resources (routes) → its certificate (built-in
//! CA, or istiod's CA for its own identity only) → shards, each with a SO_REUSEPORT HBONE
//! listener → admin endpoints → the control loop (xDS snapshots, config/resources reload on
//! SIGHUP or change, certificate rotation, shutdown on SIGTERM/SIGINT/quitquitquit).
//!
//! Readiness waits for the first xDS sync (xDS mode) and for the waypoint's certificate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use super::{StartError, io_engine, shard_count, stamp, target};
use crate::admin::{self, AdminState, Endpoints};
use crate::certs::caclient::CaClient;
use crate::certs::store::{CertManager, Issuer};
use crate::config::env::{AuthSource, CaSource, ConfigSource, ControlPlane};
use crate::config::flags::{Cli, Command, LbFlag, WaypointArgs};
use crate::config::{self, flags::NodeArgs};
use crate::identity::Identity;
use crate::identity::ca::Ca;
use crate::runtime::{self, Shard};
use crate::state::{Snapshot, StateHandle};
use crate::telemetry::metrics::Metrics;
use crate::waypoint::{L7Config, L7Handle, WaypointConfig, WaypointShard, lb, resources, routes};
use crate::xds::XdsEvent;

/// The node settings the waypoint shares (HBONE, CA, control plane), from its own flags.
fn node_args(a: &WaypointArgs) -> Result<NodeArgs, StartError> {
    use clap::Parser;
    // The node's defaults, and the environment variables its flags read (operator input).
    let mut n = match Cli::try_parse_from(["ringmesh", "node", "--no-zds"]) {
        Ok(Cli {
            command: Command::Node(n),
        }) => n,
        Ok(_) => {
            return Err(StartError::Settings(
                "internal: `ringmesh node` did not parse as the node command".into(),
            ));
        }
        Err(e) => {
            return Err(StartError::Settings(format!(
                "the node proxy settings the waypoint shares (and the environment variables \
                 they read) do not parse: {e}"
            )));
        }
    };
    n.config = a.config.clone();
    n.control = a.control.clone();
    n.shards = a.shards;
    n.pin_cores = a.pin_cores;
    n.io_engine = a.io_engine;
    n.ca_cert = a.ca_cert.clone();
    n.ca_key = a.ca_key.clone();
    n.cert_ttl = a.cert_ttl;
    n.connect_timeout = a.connect_timeout;
    n.admin_addr = a.admin_addr;
    n.stats_addr = a.stats_addr;
    n.readiness_addr = a.readiness_addr;
    n.orig_src = crate::config::flags::OrigSrc::Off;
    n.mark = 0;
    Ok(*n)
}

/// Who the waypoint is, from its flags and pod environment.
fn waypoint_config(a: &WaypointArgs, n: &NodeArgs) -> Result<WaypointConfig, StartError> {
    let c = &a.control;
    let namespace = if c.pod_namespace.is_empty() {
        "default".to_string()
    } else {
        c.pod_namespace.clone()
    };
    let (name, sa) = match (a.name.clone(), c.service_account.clone()) {
        (Some(n), sa) if sa.is_empty() => (n.clone(), n),
        (Some(n), sa) => (n, sa),
        (None, sa) if !sa.is_empty() => (sa.clone(), sa),
        (None, _) => {
            return Err(StartError::Settings(
                "who is this waypoint? give --name (RINGMESH_WAYPOINT_NAME) and/or --service-account (SERVICE_ACCOUNT)".into(),
            ));
        }
    };
    let mut ips = Vec::new();
    for s in c
        .instance_ip
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        ips.push(s.parse().map_err(|_| {
            StartError::Settings(format!(
                "--instance-ip / INSTANCE_IP: {s:?} is not an IP address"
            ))
        })?);
    }
    Ok(WaypointConfig {
        identity: Identity::new(&a.trust_domain, &namespace, &sa),
        hostname: format!("{name}.{namespace}.svc.cluster.local"),
        name,
        namespace,
        ips,
        proxy: super::proxy_config(n),
        lb: match a.lb {
            LbFlag::LeastRequest => lb::LbPolicy::LeastRequest,
            LbFlag::RoundRobin => lb::LbPolicy::RoundRobin,
        },
        outlier: lb::OutlierConfig {
            consecutive_errors: a.outlier_consecutive_errors,
            base_ejection: a.outlier_base_ejection,
            max_ejection: a.outlier_base_ejection.saturating_mul(10),
            ..Default::default()
        },
        request_id: true,
    })
}

/// Loads `--resources` into an L7 config (or an empty one).
fn load_l7(path: Option<&Path>, namespace: &str, version: u64) -> Result<L7Config, String> {
    let res = match path {
        Some(p) => resources::load(p).map_err(|e| e.to_string())?,
        None => resources::Resources::default(),
    };
    let table = routes::RouteTable::build(&res.routes, namespace);
    Ok(L7Config {
        version,
        resources: res,
        table,
    })
}

/// A change stamp of a file or of a directory's files.
fn resources_stamp(p: &Path) -> Option<Vec<(PathBuf, SystemTime, u64)>> {
    let m = std::fs::metadata(p).ok()?;
    if !m.is_dir() {
        return Some(vec![(p.to_path_buf(), m.modified().ok()?, m.len())]);
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).ok()?.flatten() {
        if let Ok(m) = e.metadata() {
            v.push((e.path(), m.modified().ok()?, m.len()));
        }
    }
    v.sort();
    Some(v)
}

/// Runs the waypoint until SIGTERM/SIGINT or `POST /quitquitquit`.
pub fn run(a: WaypointArgs) -> Result<(), StartError> {
    super::unblock_signals();
    super::raise_fd_limit();
    let n = node_args(&a)?;
    let vars = config::env::vars();
    let plane = config::env::control_plane(&n, &vars, false, &|p| p.exists())
        .map_err(StartError::Settings)?;
    let wcfg = waypoint_config(&a, &n)?;
    let l7 = load_l7(a.resources.as_deref(), &wcfg.namespace, 1).map_err(StartError::Settings)?;
    for i in &l7.resources.ignored {
        tracing::info!("resources: not for the waypoint, ignored: {i}");
    }
    if a.dry_run {
        if let ConfigSource::File(p) = &plane.source {
            config::load(p, 1)?;
        }
        let v = serde_json::json!({
            "identity": wcfg.identity.to_string(),
            "name": wcfg.name,
            "namespace": wcfg.namespace,
            "hostname": wcfg.hostname,
            "listen": a.listen.to_string(),
            "shards": shard_count(&n),
            "routes": l7.resources.routes.len(),
            "status": l7.table.status(&l7.resources.routes, &|_, _| None),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Control)?;
    rt.block_on(serve(a, n, plane, wcfg, l7))
}

struct Waypoint {
    args: WaypointArgs,
    plane: ControlPlane,
    cfg: Arc<WaypointConfig>,
    state: StateHandle,
    l7: L7Handle,
    certs: CertManager,
    admin: Arc<AdminState>,
    shards: Vec<Shard<WaypointShard>>,
    config_stamp: Option<(SystemTime, u64)>,
    resources_stamp: Option<Vec<(PathBuf, SystemTime, u64)>>,
}

async fn serve(
    a: WaypointArgs,
    n: NodeArgs,
    plane: ControlPlane,
    wcfg: WaypointConfig,
    l7: L7Config,
) -> Result<(), StartError> {
    let (snap, config_stamp) = match &plane.source {
        ConfigSource::File(p) => (config::load(p, 1)?, stamp(p)),
        ConfigSource::Xds(_) => (Snapshot::build_lenient(1, vec![], vec![], vec![]).0, None),
    };
    let metrics = Arc::new(Metrics::default());
    let issuer = match &plane.ca {
        CaSource::BuiltIn(Some((c, k))) => Issuer::BuiltIn(Box::new(Ca::load(c, k)?)),
        CaSource::BuiltIn(None) => {
            tracing::info!("no --ca-cert/--ca-key: generated a root CA for this process");
            Issuer::BuiltIn(Box::new(Ca::generate(SystemTime::now())?))
        }
        CaSource::Istio(e) => {
            if matches!(plane.auth, AuthSource::None) {
                tracing::warn!("no token for the CA: istiod will refuse the certificate request");
            }
            Issuer::Istio(Arc::new(
                CaClient::new(target("CA", e, &plane)?, n.cert_ttl).own_identity(),
            ))
        }
    };
    let (certs, mut cert_rx) = CertManager::new(issuer, n.cert_ttl, Some(metrics.clone()));
    let state: StateHandle = Arc::new(ArcSwap::from_pointee(snap));
    let l7: L7Handle = Arc::new(ArcSwap::from_pointee(l7));
    let cfg = Arc::new(wcfg);
    let count = shard_count(&n);
    let (engine, uring) = io_engine(&n)?;
    *metrics.engine.lock().unwrap_or_else(|e| e.into_inner()) = engine.name().into();
    let shard_metrics: Vec<_> = (0..count).map(|_| metrics.shard()).collect();
    let (st, ce, l7h, c) = (state.clone(), certs.handle(), l7.clone(), cfg.clone());
    let shards = runtime::spawn_shards(count, n.pin_cores, engine, &uring, move |id| {
        WaypointShard::new(
            id,
            c.clone(),
            st.clone(),
            ce.clone(),
            l7h.clone(),
            shard_metrics[id].clone(),
        )
    })
    .map_err(StartError::Shards)?;
    let here = crate::inpod::Netns::current();
    for s in &shards {
        let l = listen(&here, a.listen)?;
        let _ = s.send(Box::new(move |ctx| ctx.listen(l)));
    }
    tracing::info!(
        identity = %cfg.identity,
        waypoint = %format!("{}/{}", cfg.namespace, cfg.name),
        shards = count,
        "waypoint listening for HBONE on {} (engine: {engine})",
        a.listen
    );
    let admin = Arc::new(AdminState {
        state: state.clone(),
        certs: certs.handle(),
        metrics: metrics.clone(),
        pods: Default::default(),
        pending: Default::default(),
        config: serde_json::json!({
            "mode": "waypoint",
            "identity": cfg.identity.to_string(),
            "name": cfg.name,
            "namespace": cfg.namespace,
            "hostname": cfg.hostname,
            "listen": a.listen.to_string(),
            "shards": count,
            "ioEngine": engine.name(),
            "resources": a.resources.as_ref().map(|p| p.display().to_string()),
            "lb": format!("{:?}", a.lb),
            "outlierConsecutiveErrors": a.outlier_consecutive_errors,
        }),
        xds: Default::default(),
        sections: Default::default(),
        quit: tokio::sync::Notify::new(),
    });
    for (addr, which, what) in [
        (n.readiness_addr, Endpoints::Readiness, "readiness"),
        (n.stats_addr, Endpoints::Stats, "metrics"),
        (n.admin_addr, Endpoints::Admin, "admin"),
    ] {
        let l = admin::bind(addr)
            .await
            .map_err(|source| StartError::Admin { addr, what, source })?;
        tokio::spawn(admin::serve(l, admin.clone(), which));
    }
    admin.set_pending("certificate", true);
    let resources_stamp = a.resources.as_deref().and_then(resources_stamp);
    let mut w = Waypoint {
        args: a,
        plane,
        cfg,
        state,
        l7,
        certs,
        admin,
        shards,
        config_stamp,
        resources_stamp,
    };
    w.update_routes_section();
    w.reconcile_certs();
    let (xds_tx, mut xds_rx) = tokio::sync::mpsc::unbounded_channel();
    if let ConfigSource::Xds(x) = w.plane.source.clone() {
        w.admin.set_pending("state manager", true);
        let xcfg = super::xds_config(&w.plane, &n, &x)?;
        tracing::info!("xDS from {}", xcfg.target.uri);
        crate::xds::client::spawn(
            xcfg,
            xds_tx.clone(),
            metrics.control.clone(),
            w.admin.xds.clone(),
        );
    }
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return Err(StartError::Control(std::io::Error::other(
            "cannot install signal handlers",
        )));
    };
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let admin = w.admin.clone();
    let mut died = None;
    loop {
        let rotate_in = match w.certs.next_refresh() {
            Some(t) => t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            None => Duration::from_secs(60),
        }
        .min(Duration::from_secs(60));
        tokio::select! {
            _ = hup.recv() => { w.reload_config("SIGHUP"); w.reload_resources("SIGHUP"); }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = admin.quit.notified() => { tracing::info!("quitquitquit: shutting down"); break; }
            _ = poll.tick() => {
                if let Some(id) = dead_shard(&w.shards) {
                    // Its listener and connections went with it: not ready, and out, so that
                    // Kubernetes starts a whole waypoint again (as the node proxy does).
                    tracing::error!(shard = id, "shard thread died: the waypoint stops (its connections on that shard are gone)");
                    w.admin.set_pending("shards", true);
                    died = Some(id);
                    break;
                }
                w.poll_files()
            }
            _ = tokio::time::sleep(rotate_in) => w.reconcile_certs(),
            Some(f) = cert_rx.recv() => {
                w.certs.fetched(f, SystemTime::now());
                w.cert_readiness();
            }
            Some(ev) = xds_rx.recv() => match ev {
                XdsEvent::Snapshot(mut snap) => {
                    snap.version = w.state.load().version + 1;
                    w.state.store(Arc::new(*snap));
                    w.update_routes_section();
                }
                XdsEvent::Synced => w.admin.set_pending("state manager", false),
            },
        }
    }
    drop(xds_tx);
    for s in w.shards {
        s.stop();
    }
    match died {
        Some(id) => Err(StartError::Settings(format!(
            "shard {id} died (see the panic above): the waypoint stopped so that it is \
             restarted whole"
        ))),
        None => Ok(()),
    }
}

/// The first shard whose thread has ended (a panic outside a connection's task).
fn dead_shard<C>(shards: &[Shard<C>]) -> Option<usize> {
    shards.iter().find(|s| !s.is_alive()).map(|s| s.id)
}

fn listen(
    ns: &crate::inpod::Netns,
    addr: std::net::SocketAddr,
) -> Result<std::net::TcpListener, StartError> {
    if addr.ip().is_unspecified() {
        return Ok(ns.listener(addr.port(), 0)?);
    }
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .and_then(|s| {
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s)
    })
    .map_err(|source| StartError::Admin {
        addr,
        what: "HBONE",
        source,
    })?;
    Ok(s.into())
}

impl Waypoint {
    fn reconcile_certs(&mut self) {
        let wanted: BTreeSet<Identity> = [self.cfg.identity.clone()].into();
        match self.certs.reconcile(&wanted, SystemTime::now()) {
            Ok(0) => {}
            Ok(_) => tracing::info!(identity = %self.cfg.identity, "waypoint certificate issued"),
            Err(e) => tracing::error!("certificate issuance failed: {e}"),
        }
        self.cert_readiness();
    }

    fn cert_readiness(&self) {
        let have = self.certs.handle().load().get(&self.cfg.identity).is_some();
        self.admin.set_pending("certificate", !have);
    }

    fn poll_files(&mut self) {
        if let ConfigSource::File(p) = &self.plane.source {
            let now = stamp(p);
            if now.is_some() && now != self.config_stamp {
                self.config_stamp = now;
                self.reload_config("file changed");
            }
        }
        if let Some(p) = self.args.resources.clone() {
            let now = resources_stamp(&p);
            if now.is_some() && now != self.resources_stamp {
                self.resources_stamp = now;
                self.reload_resources("file changed");
            }
        }
    }

    fn reload_config(&mut self, why: &str) {
        let ConfigSource::File(path) = self.plane.source.clone() else {
            return;
        };
        let version = self.state.load().version + 1;
        match config::load(&path, version) {
            Ok(snap) => {
                tracing::info!(version, why, "config reloaded");
                self.state.store(Arc::new(snap));
                self.update_routes_section();
            }
            Err(e) => tracing::error!(why, "config rejected, keeping version {}: {e}", version - 1),
        }
    }

    fn reload_resources(&mut self, why: &str) {
        let Some(p) = self.args.resources.clone() else {
            return;
        };
        let version = self.l7.load().version + 1;
        match load_l7(Some(&p), &self.cfg.namespace, version) {
            Ok(l7) => {
                tracing::info!(
                    version,
                    why,
                    routes = l7.resources.routes.len(),
                    "resources reloaded"
                );
                self.l7.store(Arc::new(l7));
                self.update_routes_section();
            }
            Err(e) => tracing::error!(
                why,
                "resources rejected, keeping version {}: {e}",
                version - 1
            ),
        }
    }

    /// The dump's `routes`: every route and its status against the current services.
    fn update_routes_section(&self) {
        let l7 = self.l7.load();
        let snap = self.state.load();
        let lookup = |ns: &str, name: &str| {
            crate::waypoint::http::service_named(&snap, ns, name)
                .map(|s| s.ports.keys().copied().collect::<Vec<u16>>())
        };
        let v = serde_json::json!({
            "version": l7.version,
            "routes": l7.resources.routes.iter().map(|r| serde_json::json!({
                "kind": format!("{:?}", r.kind),
                "namespace": r.namespace,
                "name": r.name,
                "origin": r.origin,
            })).collect::<Vec<_>>(),
            "status": l7.table.status(&l7.resources.routes, &lookup),
            "ignored": l7.resources.ignored,
        });
        self.admin
            .sections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert("routes", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ringmesh waypoint --name wp <extra>` as parsed from the command line.
    fn args(extra: &[&str]) -> WaypointArgs {
        use clap::Parser;
        let argv = ["ringmesh", "waypoint", "--name", "wp"]
            .into_iter()
            .chain(extra.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Waypoint(a),
            }) => *a,
            Ok(_) => panic!("not the waypoint command"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_huge_outlier_ejection_is_capped_not_a_panic() {
        // Operator input: the 10x cap on a base ejection near Duration::MAX overflowed.
        let a = args(&["--outlier-base-ejection", "18446744073709551615s"]);
        let n = node_args(&a).unwrap();
        let w = waypoint_config(&a, &n).unwrap();
        assert_eq!(w.outlier.base_ejection, Duration::from_secs(u64::MAX));
        assert_eq!(w.outlier.max_ejection, Duration::MAX);
        let a = args(&["--outlier-base-ejection", "3s"]);
        let w = waypoint_config(&a, &node_args(&a).unwrap()).unwrap();
        assert_eq!(w.outlier.max_ejection, Duration::from_secs(30));
    }

    #[test]
    fn a_panicking_command_leaves_its_shard_alive() {
        // A panic in a mailbox command is caught on the shard (runtime::spawn_shards): the
        // shard serves on and the control loop sees no dead shard.
        let opts = runtime::UringOpts::default();
        let shards = runtime::spawn_shards(2, false, runtime::Engine::Epoll, &opts, |id| id)
            .expect("shards start");
        assert_eq!(dead_shard(&shards), None);
        let _ = shards[1].send(Box::new(|_| panic!("a command fails")));
        let (tx, rx) = std::sync::mpsc::channel();
        shards[1]
            .send(Box::new(move |id| tx.send(**id).unwrap()))
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(1));
        assert_eq!(dead_shard(&shards), None);
        for s in shards {
            s.stop();
        }
    }
}
