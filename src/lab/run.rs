//! A lab that is up: namespaces, the node proxies' config and CA, one ZDS server per node,
//! and (optionally) node proxies running in the node namespaces. Everything is torn down on
//! drop. `ringmesh lab up` keeps one of these alive in a background process; `ringmesh demo`
//! and the benchmarks hold one in-process.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::istiod::{Caller, Istiod, IstiodConfig};
use super::topology::Topology;
use super::zds_server::ZdsServer;
use super::{CONTROL_PLANE_IP, CONTROL_PLANE_NAME, Lab, LabError};
use crate::inpod::Netns;

/// Where the lab's node proxies get their config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMode {
    /// From the lab's control plane over xDS, certificates from its CA (the default).
    Xds,
    /// From the lab's local config file, certificates from the built-in CA (--ca-cert/key).
    File,
}

/// The control plane's port (istiod's xDS + CA port).
pub const CONTROL_PLANE_PORT: u16 = 15012;

/// A node proxy process started by the lab (killed on drop).
pub struct ProxyProc {
    /// The node (or, for the bench's relay, the pod) it runs in.
    pub node: String,
    pub child: Child,
    pub log: PathBuf,
    /// Where its admin ports start: 15000 (15000/15020/15021), or 25000 for the second of
    /// two node proxies sharing a node's netns during a rolling update (`roll_node`).
    pub admin_base: u16,
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running lab.
pub struct LabRun {
    pub topo: Topology,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub proxies: Vec<ProxyProc>,
    pub zds: Vec<(String, ZdsServer)>,
    /// The control plane (xDS + CA) the node proxies use in xDS mode.
    pub istiod: Option<Istiod>,
    /// The control plane's netns and the node proxies' tokens (kept across restarts).
    cp_netns: String,
    tokens: std::collections::HashMap<String, Caller>,
    /// How `start_ringmesh` configures the node proxies.
    pub mode: NodeMode,
    pub lab: Lab,
}

impl LabRun {
    /// Builds the namespaces, writes config and CA into `dir`, and serves ZDS per node.
    /// On any failure, everything made so far is removed.
    pub fn up(topo: Topology, dir: &Path) -> Result<LabRun, LabError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        // Leftovers of a crashed run with the same name go first.
        remove_netns_with_prefix(&topo.name);
        let mut lab = Lab::new(&topo.name)?;
        for n in &topo.nodes {
            lab.add_node(&n.name)?;
        }
        for p in &topo.pods {
            let node = topo.node_index(&p.node).expect("validated");
            lab.add_pod(node, &p.name, p.ambient())?;
        }
        let config = dir.join("config.yaml");
        let local = topo.local_config(&lab);
        std::fs::write(&config, crate::config::to_yaml(&local)).map_err(|e| io_err(&config, e))?;
        let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        crate::identity::ca::Ca::generate(std::time::SystemTime::now())
            .and_then(|ca| ca.save(&ca_cert, &ca_key))
            .map_err(|e| LabError::Topology(e.to_string()))?;
        // The control plane: a token per node proxy (its account and node, as a bound
        // service-account token says), istiod's names, the topology's config.
        let cp_netns = lab.add_control_plane()?;
        let mut tokens = std::collections::HashMap::new();
        for n in &topo.nodes {
            let token = format!("{:032x}", rand::random::<u128>());
            let path = dir.join(format!("{}.token", n.name));
            std::fs::write(&path, &token).map_err(|e| io_err(&path, e))?;
            tokens.insert(
                token,
                Caller {
                    namespace: "istio-system".into(),
                    service_account: "ztunnel".into(),
                    node: Some(n.name.clone()),
                },
            );
        }
        // And one per waypoint: its own account, on its node (it asks only for itself).
        for w in &topo.waypoints {
            let token = format!("{:032x}", rand::random::<u128>());
            let path = dir.join(format!("{}.waypoint.token", w.name));
            std::fs::write(&path, &token).map_err(|e| io_err(&path, e))?;
            tokens.insert(
                token,
                Caller {
                    namespace: w.namespace.clone(),
                    service_account: w.service_account().to_string(),
                    node: Some(w.node.clone()),
                },
            );
        }
        let resources = dir.join("resources.yaml");
        std::fs::write(&resources, &topo.resources).map_err(|e| io_err(&resources, e))?;
        let mut zds = Vec::new();
        for n in &topo.nodes {
            let sock = dir.join(format!("{}.sock", n.name));
            let pods = topo.zds_pods(&n.name, &lab);
            let server = ZdsServer::start(sock.clone(), pods).map_err(|e| io_err(&sock, e))?;
            zds.push((n.name.clone(), server));
        }
        let mut run = LabRun {
            topo,
            dir: dir.to_path_buf(),
            config,
            ca_cert,
            ca_key,
            proxies: Vec::new(),
            zds,
            istiod: None,
            cp_netns,
            tokens,
            mode: NodeMode::Xds,
            lab,
        };
        run.start_control_plane(local)?;
        for n in &run.topo.nodes {
            let path = run.ztunnel_env_file(&n.name);
            let text: String = run
                .ztunnel_env(&n.name)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
        }
        Ok(run)
    }

    /// A file with [`LabRun::ztunnel_env`] as `KEY=VALUE` lines (`env $(cat FILE) ztunnel`).
    pub fn ztunnel_env_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.ztunnel.env"))
    }

    /// Starts the control plane (again) in its netns, serving `config`. A restart keeps the
    /// root and the tokens; the intermediate CA is new, as after an istiod restart with a
    /// self-signed root re-read from its secret.
    pub fn start_control_plane(
        &mut self,
        config: crate::config::LocalConfig,
    ) -> Result<(), LabError> {
        let root = crate::identity::ca::Ca::load(&self.ca_cert, &self.ca_key)
            .map_err(|e| LabError::Topology(e.to_string()))?;
        let ns = Netns::open(&PathBuf::from(format!("/var/run/netns/{}", self.cp_netns)))
            .map_err(|e| LabError::Topology(e.to_string()))?;
        let addr = SocketAddr::from((CONTROL_PLANE_IP, CONTROL_PLANE_PORT));
        let listener = ns
            .run(|| std::net::TcpListener::bind(addr))
            .map_err(|e| LabError::Topology(e.to_string()))?
            .map_err(|e| LabError::Topology(format!("control plane: bind {addr}: {e}")))?;
        let istiod = Istiod::start(
            listener,
            IstiodConfig {
                root,
                trust_domain: self.topo.trust_domain.clone(),
                tokens: self.tokens.clone(),
                trusted_node_accounts: vec![("istio-system".into(), "ztunnel".into())],
                server_names: vec![CONTROL_PLANE_NAME.into()],
                server_ips: vec![],
            },
            config,
        )
        .map_err(LabError::Topology)?;
        self.istiod = Some(istiod);
        Ok(())
    }

    /// Stops the control plane (its connections drop at once, as when istiod goes away).
    pub fn stop_control_plane(&mut self) {
        self.istiod = None;
    }

    /// The control plane's address, as node proxies dial it.
    pub fn xds_address(&self) -> String {
        format!("https://{CONTROL_PLANE_IP}:{CONTROL_PLANE_PORT}")
    }

    /// The token file of a node's proxy.
    pub fn token(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.token"))
    }

    /// Serves a new topology's config (same pods; services, policies, labels and accounts
    /// may change) to the node proxies, and rewrites the local config file.
    pub fn set_topology(&mut self, topo: Topology) -> Result<(), LabError> {
        let res = self.resources_file();
        if std::fs::read_to_string(&res).ok().as_deref() != Some(topo.resources.as_str()) {
            std::fs::write(&res, &topo.resources).map_err(|e| io_err(&res, e))?;
        }
        let local = topo.local_config(&self.lab);
        std::fs::write(&self.config, crate::config::to_yaml(&local))
            .map_err(|e| io_err(&self.config, e))?;
        if let Some(i) = &self.istiod {
            i.set_config(local);
        }
        self.topo = topo;
        Ok(())
    }

    /// The environment a ztunnel needs on `node` to use this lab's control plane and ZDS, by
    /// ztunnel's own variable names.
    pub fn ztunnel_env(&self, node: &str) -> Vec<(String, String)> {
        let ca = self.ca_cert.display().to_string();
        let fabric = self
            .lab
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.fabric_ip.to_string())
            .unwrap_or_default();
        [
            ("XDS_ADDRESS", self.xds_address()),
            ("CA_ADDRESS", self.xds_address()),
            ("XDS_ROOT_CA", ca.clone()),
            ("CA_ROOT_CA", ca),
            ("ALT_XDS_HOSTNAME", CONTROL_PLANE_NAME.to_string()),
            ("ALT_CA_HOSTNAME", CONTROL_PLANE_NAME.to_string()),
            ("AUTH_TOKEN", self.token(node).display().to_string()),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes".to_string()),
            ("POD_NAME", format!("ztunnel-{node}")),
            ("POD_NAMESPACE", "istio-system".to_string()),
            ("SERVICE_ACCOUNT", "ztunnel".to_string()),
            ("NODE_NAME", node.to_string()),
            ("INSTANCE_IP", fabric),
            ("INPOD_UDS", self.zds_socket(node).display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn zds_socket(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.sock"))
    }

    pub fn node_netns(&self, node: &str) -> Option<String> {
        self.lab
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.netns.clone())
    }

    /// The arguments of `ringmesh node` for a node of this lab, in the lab's mode.
    pub fn ringmesh_args(&self, node: &str) -> Vec<String> {
        self.ringmesh_args_for(node, self.mode)
    }

    /// The arguments of `ringmesh node` for a node of this lab: xDS mode (the control plane,
    /// its CA, the node's token; no CA key on the node) or file mode (the local config file
    /// and the built-in CA with the lab's root).
    pub fn ringmesh_args_for(&self, node: &str, mode: NodeMode) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "node".into(),
            "--zds-socket".into(),
            self.zds_socket(node).display().to_string(),
            "--zds-max-backoff".into(),
            "500ms".into(),
        ];
        match mode {
            NodeMode::File => v.extend([
                "--config".into(),
                self.config.display().to_string(),
                "--ca-cert".into(),
                self.ca_cert.display().to_string(),
                "--ca-key".into(),
                self.ca_key.display().to_string(),
            ]),
            NodeMode::Xds => {
                let flag = |k: &str| match k {
                    "XDS_ADDRESS" => Some("--xds-address"),
                    "XDS_ROOT_CA" => Some("--xds-root-ca"),
                    "CA_ROOT_CA" => Some("--ca-root-ca"),
                    "ALT_XDS_HOSTNAME" => Some("--alt-xds-hostname"),
                    "ALT_CA_HOSTNAME" => Some("--alt-ca-hostname"),
                    "AUTH_TOKEN" => Some("--auth-token"),
                    "ISTIO_META_CLUSTER_ID" => Some("--cluster-id"),
                    "POD_NAME" => Some("--pod-name"),
                    "POD_NAMESPACE" => Some("--pod-namespace"),
                    "SERVICE_ACCOUNT" => Some("--service-account"),
                    "NODE_NAME" => Some("--node-name"),
                    "INSTANCE_IP" => Some("--instance-ip"),
                    _ => None,
                };
                for (k, val) in self.ztunnel_env(node) {
                    if let Some(f) = flag(&k) {
                        v.push(f.into());
                        v.push(val);
                    }
                }
                v.extend(["--xds-max-backoff".into(), "1s".into()]);
            }
        }
        v
    }

    /// Starts `program args…` in a node's netns, logging to `<dir>/<node>.<tag>.log`.
    pub fn start_in_node(
        &mut self,
        node: &str,
        tag: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<(), LabError> {
        let netns = self
            .node_netns(node)
            .ok_or_else(|| LabError::Topology(format!("no node {node}")))?;
        self.start_in_netns(&netns, node, tag, program, args, env)
    }

    /// Starts `program args…` in a pod's netns, logging to `<dir>/<pod>.<tag>.log`.
    pub fn start_in_pod(
        &mut self,
        pod: &str,
        tag: &str,
        program: &Path,
        args: &[String],
    ) -> Result<(), LabError> {
        let netns = self
            .lab
            .pod(pod)
            .map(|p| p.netns.clone())
            .ok_or_else(|| LabError::Topology(format!("no pod {pod}")))?;
        self.start_in_netns(&netns, pod, tag, program, args, &[])
    }

    /// Starts `program args…` in `netns`; `who` (a node or pod) names the log and the process.
    pub(super) fn start_in_netns(
        &mut self,
        netns: &str,
        who: &str,
        tag: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<(), LabError> {
        let log = self.dir.join(format!("{who}.{tag}.log"));
        let f = std::fs::File::create(&log).map_err(|e| io_err(&log, e))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(f.try_clone().map_err(|e| io_err(&log, e))?)
            .stderr(f)
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: program.display().to_string(),
                source,
            })?;
        self.proxies.push(ProxyProc {
            node: who.to_string(),
            child,
            log,
            admin_base: 15000,
        });
        Ok(())
    }

    /// The Kubernetes resources (routes) file the waypoints read (`resources:` of the
    /// topology).
    pub fn resources_file(&self) -> PathBuf {
        self.dir.join("resources.yaml")
    }

    /// The arguments of `ringmesh waypoint` for one of the topology's waypoints, in the lab's
    /// mode: its identity (namespace, service account = name, pod IP), the routes file, and
    /// xDS + CA from the lab's control plane with its own token — or the config file and
    /// the built-in CA with the lab's root.
    pub fn waypoint_args(&self, name: &str) -> Result<Vec<String>, LabError> {
        let w = self
            .topo
            .waypoints
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(|| LabError::Topology(format!("no waypoint {name}")))?;
        let pod = self
            .lab
            .pod(w.pod_name())
            .ok_or_else(|| LabError::Topology(format!("no pod for waypoint {name}")))?;
        let mut v: Vec<String> = vec![
            "waypoint".into(),
            "--name".into(),
            w.name.clone(),
            "--pod-namespace".into(),
            w.namespace.clone(),
            "--service-account".into(),
            w.service_account().to_string(),
            "--pod-name".into(),
            w.pod_name().to_string(),
            "--instance-ip".into(),
            format!("{},{}", pod.ip, pod.ip6),
            "--node-name".into(),
            w.node.clone(),
            "--trust-domain".into(),
            self.topo.trust_domain.clone(),
            "--resources".into(),
            self.resources_file().display().to_string(),
        ];
        let ca = self.ca_cert.display().to_string();
        match self.mode {
            NodeMode::File => v.extend([
                "--config".into(),
                self.config.display().to_string(),
                "--ca-cert".into(),
                ca,
                "--ca-key".into(),
                self.ca_key.display().to_string(),
            ]),
            NodeMode::Xds => v.extend([
                "--xds-address".into(),
                self.xds_address(),
                "--xds-root-ca".into(),
                ca.clone(),
                "--ca-root-ca".into(),
                ca,
                "--alt-xds-hostname".into(),
                CONTROL_PLANE_NAME.into(),
                "--alt-ca-hostname".into(),
                CONTROL_PLANE_NAME.into(),
                "--auth-token".into(),
                self.dir
                    .join(format!("{}.waypoint.token", w.name))
                    .display()
                    .to_string(),
                "--cluster-id".into(),
                "Kubernetes".into(),
            ]),
        }
        Ok(v)
    }

    /// Starts `EXE waypoint …` in every waypoint's pod (logs `<dir>/<name>.waypoint.log`).
    pub fn start_waypoints_exe(&mut self, exe: &Path, extra: &[String]) -> Result<(), LabError> {
        let names: Vec<String> = self.topo.waypoints.iter().map(|w| w.name.clone()).collect();
        for name in names {
            let mut args = self.waypoint_args(&name)?;
            args.extend_from_slice(extra);
            let netns = self
                .lab
                .pod(&name)
                .map(|p| p.netns.clone())
                .ok_or_else(|| LabError::Topology(format!("no pod {name}")))?;
            self.start_in_netns(
                &netns,
                &name,
                "waypoint",
                exe,
                &args,
                &[("RUST_LOG".into(), "info".into())],
            )?;
        }
        Ok(())
    }

    /// Starts `ringmesh node` (this executable) on every node.
    pub fn start_ringmesh(&mut self, extra: &[String]) -> Result<(), LabError> {
        let exe = std::env::current_exe().map_err(|e| LabError::Topology(e.to_string()))?;
        self.start_ringmesh_exe(&exe, extra)
    }

    /// Starts `ringmesh node` (this executable) on every node, logging to
    /// `<node>.<tag>.log` (the bench names each contender's logs apart; `tag` should
    /// start with `ringmesh`, which is how a node proxy's log is recognised).
    pub fn start_ringmesh_as(&mut self, tag: &str, extra: &[String]) -> Result<(), LabError> {
        let exe = std::env::current_exe().map_err(|e| LabError::Topology(e.to_string()))?;
        self.start_ringmesh_exe_as(&exe, tag, extra)
    }

    /// Starts `EXE node …` on every node (tests pass the ringmesh binary).
    pub fn start_ringmesh_exe(&mut self, exe: &Path, extra: &[String]) -> Result<(), LabError> {
        self.start_ringmesh_exe_as(exe, "ringmesh", extra)
    }

    fn start_ringmesh_exe_as(
        &mut self,
        exe: &Path,
        tag: &str,
        extra: &[String],
    ) -> Result<(), LabError> {
        let nodes: Vec<String> = self.topo.nodes.iter().map(|n| n.name.clone()).collect();
        for n in nodes {
            let mut args = self.ringmesh_args(&n);
            args.extend_from_slice(extra);
            self.start_in_node(&n, tag, exe, &args, &[("RUST_LOG".into(), "info".into())])?;
        }
        self.start_waypoints_exe(exe, &[])
    }

    /// Snapshots delivered so far, per node (to wait for the next proxy's).
    pub fn snapshot_counts(&self) -> Vec<usize> {
        self.zds.iter().map(|(_, z)| z.snapshots()).collect()
    }

    /// Stops every node proxy the lab started.
    pub fn stop_proxies(&mut self) {
        self.proxies.clear();
    }

    /// Turns the ambient pods' capture rules on or off (off = no mesh at all).
    pub fn set_capture(&self, on: bool) -> Result<(), LabError> {
        for p in self.lab.pods.iter().filter(|p| p.captured) {
            super::capture::remove(&p.netns)?;
            if on {
                super::capture::install(&p.netns)?;
            }
        }
        Ok(())
    }

    /// Waits until every node's ZDS server has delivered its snapshot and every node's
    /// readiness endpoint (15021) says ready.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), LabError> {
        let after = vec![0; self.zds.len()];
        self.wait_ready_after(&after, timeout)
    }

    /// Like `wait_ready`, but each node must have delivered more snapshots than `after`
    /// (i.e. to a proxy started after `after` was taken).
    pub fn wait_ready_after(&mut self, after: &[usize], timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        for (i, (node, zds)) in self.zds.iter().enumerate() {
            let seen = after.get(i).copied().unwrap_or(0);
            let netns = self.node_netns(node).expect("node exists");
            let ns = Netns::open(&PathBuf::from(format!("/var/run/netns/{netns}")))
                .map_err(|e| LabError::Topology(e.to_string()))?;
            loop {
                let ready_at = SocketAddr::from(([127, 0, 0, 1], self.node_port(node, 15021)));
                let ready = zds.snapshots() > seen
                    && matches!(http_get(&ns, ready_at, "/healthz/ready"), Ok((200, _)));
                if ready {
                    break;
                }
                for p in &mut self.proxies {
                    if let Ok(Some(st)) = p.child.try_wait() {
                        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                        return Err(LabError::Topology(format!(
                            "node proxy on {} exited ({st}):\n{log}",
                            p.node
                        )));
                    }
                }
                if Instant::now() > deadline {
                    return Err(LabError::Topology(format!(
                        "node {node} not ready after {timeout:?}; ZDS: {:?}",
                        zds.events.lock().map(|e| e.clone()).unwrap_or_default()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.wait_waypoints_ready(deadline)
    }

    /// Waits until every running waypoint's readiness endpoint (15021 in its pod) says
    /// ready; a waypoint process that exited is an error with its log.
    fn wait_waypoints_ready(&mut self, deadline: Instant) -> Result<(), LabError> {
        let names: Vec<String> = self
            .proxies
            .iter()
            .filter(|p| p.log.to_string_lossy().ends_with(".waypoint.log"))
            .map(|p| p.node.clone())
            .collect();
        for name in names {
            let Some(pod) = self.lab.pod(&name) else {
                continue;
            };
            let ns =
                Netns::open(&pod.netns_path()).map_err(|e| LabError::Topology(e.to_string()))?;
            let mut last;
            loop {
                match http_get(
                    &ns,
                    "127.0.0.1:15021".parse().expect("addr"),
                    "/healthz/ready",
                ) {
                    Ok((200, _)) => break,
                    Ok((c, b)) => last = format!("{c} {b}"),
                    Err(e) => last = e.to_string(),
                }
                for p in &mut self.proxies {
                    if let Ok(Some(st)) = p.child.try_wait() {
                        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                        return Err(LabError::Topology(format!(
                            "{} exited ({st}):\n{log}",
                            p.node
                        )));
                    }
                }
                if Instant::now() > deadline {
                    let log = self.dir.join(format!("{name}.waypoint.log"));
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    return Err(LabError::Topology(format!(
                        "waypoint {name} not ready: {last}; its log ends:\n{}",
                        tail.join("\n")
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Drop for LabRun {
    fn drop(&mut self) {
        self.proxies.clear();
        self.zds.clear();
        self.istiod = None;
        let _ = self.lab.cleanup();
    }
}

fn io_err(p: &Path, e: std::io::Error) -> LabError {
    LabError::Topology(format!("{}: {e}", p.display()))
}

/// Deletes every netns named `<prefix>-…` (leftovers of an earlier run).
pub fn remove_netns_with_prefix(prefix: &str) -> usize {
    let mut n = 0;
    for ns in super::list_netns() {
        if ns.starts_with(&format!("{prefix}-")) && super::run("ip", &["netns", "del", &ns]).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// A minimal HTTP/1.0 GET from inside a netns: (status, body).
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = ns
        .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .map_err(std::io::Error::other)??;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A lab held for the signal handler.
pub type Held = std::sync::Arc<std::sync::Mutex<Option<LabRun>>>;

/// Blocks SIGINT/SIGTERM in this thread (and the threads it starts), and starts a thread that
/// on either signal tears down the held lab and exits. Call before starting other threads.
pub fn cleanup_on_signal() -> std::io::Result<Held> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(std::io::Error::other)?;
    let held: Held = Default::default();
    let h = held.clone();
    std::thread::Builder::new()
        .name("lab-signals".into())
        .spawn(move || {
            let sig = set.wait();
            let run = h.lock().unwrap_or_else(|e| e.into_inner()).take();
            let had = run.is_some();
            drop(run);
            if had {
                eprintln!("\n{sig:?}: lab torn down");
            }
            std::process::exit(0);
        })?;
    Ok(held)
}
