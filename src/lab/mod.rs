//! The lab: a local "cluster" made of network namespaces, for tests, the demo and benchmarks.
//!
//! Owns: creating nodes (a netns each, with a bridge for its pods), pods (a netns each, a veth
//! to their node, addresses from 198.18.0.0/15 and fd00::/8), a fabric netns joining the
//! nodes, and in
//! captured pods the capture rules istio-cni installs (nftables REDIRECT to 15001/15006, skip
//! mark 0x539, connmark 0x111 + `ip rule` for replies to spoofed sources). Nothing is added
//! to the root namespace; everything is removed on `cleanup` or drop, also after a failure.
//! Shells out to `ip` (iproute2) and `nft` (nftables).

pub mod apps;
pub mod capture;
pub mod cli;
pub mod http_apps;
pub mod istiod;
pub mod relay;
pub mod roll;
pub mod run;
pub mod topology;
pub mod waypoints;
pub mod zds_server;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Errors of lab commands: the command and what it printed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run `{cmd}`: {source} (is it installed? the lab needs iproute2 and nftables)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("the lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces")]
    NotRoot,
    #[error("lab topology: {0}")]
    Topology(String),
}

/// A node: its netns and pod subnet.
#[derive(Debug, Clone)]
pub struct LabNode {
    pub name: String,
    pub netns: String,
    pub index: u8,
    pub fabric_ip: Ipv4Addr,
}

/// A pod: its netns, node and address.
#[derive(Debug, Clone)]
pub struct LabPod {
    pub name: String,
    pub netns: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub captured: bool,
}

impl LabPod {
    /// Path of the pod's netns, as `--pod` and ZDS want it.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.netns))
    }
}

/// The names and addresses of a lab, without ownership of its namespaces.
#[derive(Debug, Clone)]
pub struct LabInfo {
    pub prefix: String,
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
}

impl LabInfo {
    pub fn pod(&self, name: &str) -> Option<&LabPod> {
        self.pods.iter().find(|p| p.name == name)
    }
}

/// `ip route add NET via HOP` inside `netns` (the family follows the addresses).
fn route_via(netns: &str, net: &str, hop: &str) -> Result<(), LabError> {
    run("ip", &["-n", netns, "route", "add", net, "via", hop]).map(|_| ())
}

/// A veth from `ns` (`ifname`, with `ip`/24) to the fabric's bridge (`port`).
fn attach_to_fabric(
    fabric: &str,
    ns: &str,
    ifname: &str,
    port: &str,
    ip: Ipv4Addr,
) -> Result<(), LabError> {
    run(
        "ip",
        &[
            "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", fabric,
        ],
    )?;
    run("ip", &["-n", fabric, "link", "set", port, "master", "br0"])?;
    run("ip", &["-n", fabric, "link", "set", port, "up"])?;
    run(
        "ip",
        &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", ifname],
    )
    .map(|_| ())
}

/// A pod's or node bridge's IPv6 address: `fd00:198:18:<node>::<host>`.
pub fn node_ip6(node: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x198, 0x18, node as u16, 0, 0, 0, host)
}

fn node_net6(node: u8) -> String {
    format!("fd00:198:18:{node:x}::/64")
}

fn fabric_ip6(node: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x198, 0x19, 0xff, 0, 0, 0, node as u16)
}

/// Where the lab's control plane (xDS and CA, port 15012) listens: on the fabric between the
/// nodes, outside every pod subnet.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 250);

/// The name the control plane's certificate is for (istiod's service name), checked by
/// the node proxies through ALT_XDS_HOSTNAME / ALT_CA_HOSTNAME since they dial an IP.
pub const CONTROL_PLANE_NAME: &str = "istiod.istio-system.svc";

/// A set of namespaces that is removed whole when dropped.
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
    fabric: Option<String>,
    namespaces: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command; its stderr becomes the error.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, LabError> {
    run_input(cmd, args, None)
}

/// Runs a command with `input` on stdin.
pub fn run_input(cmd: &str, args: &[&str], input: Option<&str>) -> Result<String, LabError> {
    use std::io::Write;
    let line = format!("{cmd} {}", args.join(" "));
    let mut c = Command::new(cmd);
    c.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    let mut child = c.spawn().map_err(|source| LabError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| LabError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether this process may build a lab; installs nftables (Debian/Ubuntu, once) if it is
/// missing, as the lab cannot capture traffic without it.
pub fn check_privileges() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    ensure_nft()
}

fn ensure_nft() -> Result<(), LabError> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let have = || Command::new("nft").arg("--version").output().is_ok();
    if have() {
        return Ok(());
    }
    INSTALLED.call_once(|| {
        if Command::new("apt-get").arg("--version").output().is_ok() {
            eprintln!("lab: nftables is missing; installing it with apt-get");
            let _ = run("apt-get", &["update", "-qq"]);
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-qq", "nftables"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(std::process::Stdio::null())
                .status();
        }
    });
    if have() {
        Ok(())
    } else {
        Err(LabError::Spawn {
            cmd: "nft".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "nftables is not installed"),
        })
    }
}

impl Lab {
    /// An empty lab whose namespaces are named `<prefix>-…` (a unique prefix is made when
    /// `prefix` is empty).
    pub fn new(prefix: &str) -> Result<Lab, LabError> {
        check_privileges()?;
        let prefix = if prefix.is_empty() {
            format!(
                "rm{:x}x{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )
        } else {
            prefix.to_string()
        };
        Ok(Lab {
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            fabric: None,
            namespaces: Vec::new(),
        })
    }

    fn add_netns(&mut self, suffix: &str) -> Result<String, LabError> {
        let name = format!("{}-{suffix}", self.prefix);
        // A leftover of an earlier crashed run with the same name goes first.
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        // No duplicate-address detection: addresses (link-local ones too) are usable at once,
        // so IPv6 works from the first packet instead of after ~2 s.
        for k in ["all", "default"] {
            self.sysctl(&name, &format!("net.ipv6.conf.{k}.accept_dad=0"))?;
        }
        run("ip", &["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn sysctl(&self, netns: &str, kv: &str) -> Result<(), LabError> {
        run("ip", &["netns", "exec", netns, "sysctl", "-qw", kv]).map(|_| ())
    }

    /// Bridged frames skip netfilter in the lab's own bridges (no kube-proxy here), so each
    /// packet is not run through the rules twice.
    fn quiet_bridge(&self, netns: &str) -> Result<(), LabError> {
        for k in ["iptables", "ip6tables", "arptables"] {
            // Absent when br_netfilter is not built in: nothing to turn off then.
            let _ = self.sysctl(netns, &format!("net.bridge.bridge-nf-call-{k}=0"));
        }
        Ok(())
    }

    /// Adds a node: a netns with bridge `br0` at 198.18.<n>.1/24 and forwarding on, joined to
    /// the other nodes through the fabric netns (198.19.255.<n>).
    pub fn add_node(&mut self, name: &str) -> Result<usize, LabError> {
        let index = self.nodes.len() as u8 + 1;
        if index > 200 {
            return Err(LabError::Topology("at most 200 nodes".into()));
        }
        let fabric = match &self.fabric {
            Some(f) => f.clone(),
            None => {
                let f = self.add_netns("fabric")?;
                self.quiet_bridge(&f)?;
                run("ip", &["-n", &f, "link", "add", "br0", "type", "bridge"])?;
                run("ip", &["-n", &f, "link", "set", "br0", "up"])?;
                self.fabric = Some(f.clone());
                f
            }
        };
        let ns = self.add_netns(name)?;
        self.sysctl(&ns, "net.ipv4.ip_forward=1")?;
        self.sysctl(&ns, "net.ipv6.conf.all.forwarding=1")?;
        self.quiet_bridge(&ns)?;
        run("ip", &["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        let gw = format!("198.18.{index}.1/24");
        run("ip", &["-n", &ns, "addr", "add", &gw, "dev", "br0"])?;
        let gw6 = format!("{}/64", node_ip6(index, 1));
        run(
            "ip",
            &["-n", &ns, "addr", "add", &gw6, "dev", "br0", "nodad"],
        )?;
        run("ip", &["-n", &ns, "link", "set", "br0", "up"])?;
        // Uplink to the fabric.
        let fabric_ip = Ipv4Addr::new(198, 19, 255, index);
        attach_to_fabric(&fabric, &ns, "up0", &format!("n{index}"), fabric_ip)?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/64", fabric_ip6(index)),
                "dev",
                "up0",
                "nodad",
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", "up0", "up"])?;
        // Routes between this node and every other node's pod subnets (v4 and v6).
        for other in &self.nodes {
            let (o, me) = (other.index, index);
            route_via(
                &ns,
                &format!("198.18.{o}.0/24"),
                &other.fabric_ip.to_string(),
            )?;
            route_via(
                &other.netns,
                &format!("198.18.{me}.0/24"),
                &fabric_ip.to_string(),
            )?;
            route_via(&ns, &node_net6(o), &fabric_ip6(o).to_string())?;
            route_via(&other.netns, &node_net6(me), &fabric_ip6(me).to_string())?;
        }
        self.nodes.push(LabNode {
            name: name.to_string(),
            netns: ns,
            index,
            fabric_ip,
        });
        Ok(self.nodes.len() - 1)
    }

    /// Adds a pod on `node`: a netns with `eth0` at 198.18.<node>.<k>/24, default route via
    /// the node, and (if `captured`) istio-cni's capture rules.
    pub fn add_pod(&mut self, node: usize, name: &str, captured: bool) -> Result<LabPod, LabError> {
        let n = self
            .nodes
            .get(node)
            .ok_or_else(|| LabError::Topology(format!("no node {node}")))?
            .clone();
        let k = self.pods.iter().filter(|p| p.node == node).count() as u8 + 2;
        if k > 250 {
            return Err(LabError::Topology("at most 248 pods per node".into()));
        }
        let ns = self.add_netns(name)?;
        let ip = Ipv4Addr::new(198, 18, n.index, k);
        let host_end = format!("p{k}");
        run(
            "ip",
            &[
                "-n", &n.netns, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
        )?;
        run(
            "ip",
            &["-n", &n.netns, "link", "set", &host_end, "master", "br0"],
        )?;
        run("ip", &["-n", &n.netns, "link", "set", &host_end, "up"])?;
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        let ip6 = node_ip6(n.index, k as u16);
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &node_ip6(n.index, 1).to_string(),
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{}.1", n.index),
            ],
        )?;
        if captured {
            capture::install(&ns)?;
        }
        let pod = LabPod {
            name: name.to_string(),
            netns: ns,
            node,
            ip,
            ip6,
            captured,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    pub fn pod(&self, name: &str) -> Option<&LabPod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Adds the control plane's netns (`<prefix>-istiod`), on the fabric at
    /// [`CONTROL_PLANE_IP`] so every node reaches it directly, as nodes reach istiod's service,
    /// and every pod of the nodes added so far through its node.
    /// Returns its netns name. Needs at least one node (the fabric).
    pub fn add_control_plane(&mut self) -> Result<String, LabError> {
        let fabric = self
            .fabric
            .clone()
            .ok_or_else(|| LabError::Topology("add a node before the control plane".into()))?;
        let ns = self.add_netns("istiod")?;
        attach_to_fabric(&fabric, &ns, "eth0", "cp", CONTROL_PLANE_IP)?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        // Pods reach it too (a waypoint's own xDS and CA, as waypoint pods reach istiod): the
        // way back to each node's pod subnet is through that node.
        for n in &self.nodes {
            route_via(
                &ns,
                &format!("198.18.{}.0/24", n.index),
                &n.fabric_ip.to_string(),
            )?;
        }
        Ok(ns)
    }

    /// A copy of the lab's names and addresses.
    pub fn clone_info(&self) -> LabInfo {
        LabInfo {
            prefix: self.prefix.clone(),
            nodes: self.nodes.clone(),
            pods: self.pods.clone(),
        }
    }

    /// Removes every namespace of this lab (their interfaces, rules and sockets go with them).
    pub fn cleanup(&mut self) -> Result<(), LabError> {
        let mut first_err = None;
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

/// Names of all network namespaces (for leak checks).
pub fn list_netns() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}
