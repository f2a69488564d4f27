//! `ringmesh bench`: the same workloads, in the same lab topology, in one run, against
//! several contenders, interleaved (raw, ringmesh, peers…, raw, ringmesh, …) so that machine
//! drift hits all alike. `raw` is the pods with their capture rules off; `ringmesh` is our
//! node proxy; `--peer NAME=COMMAND` is any ZDS-speaking node proxy started per node.
//!
//! A contender whose traffic did not go through HBONE (the servers' port-15008 counters must
//! carry the bulk bytes) or that never became ready is reported INVALID, never as fast.
//!
//! `ringmesh bench --l7` is the L7 path instead (`l7.rs`): HTTP through the waypoint against
//! the same path without it and raw.

pub mod l7;
pub mod l7_load;
pub mod l7_report;
pub mod load;
pub mod report;
pub mod stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::inpod::Netns;
use crate::lab::run::LabRun;
use crate::lab::topology::{BENCH, Topology};
use crate::lab::{apps, run as labrun};
use report::{BenchReport, ContenderResult, L4Sizes, Machine};
use stats::{Latency, Summary};

/// A contender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contender {
    Raw,
    /// A reference: `ringmesh lab relay` in every ambient pod (no HTTP/2; `tls`: mutual TLS on
    /// the middle leg, else plaintext).
    Relay {
        tls: bool,
    },
    /// `ringmesh node` with extra arguments (e.g. `--io-engine epoll` for `ringmesh-epoll`),
    /// configured over xDS by the lab's control plane or from its local config file.
    Ringmesh {
        name: String,
        args: Vec<String>,
        mode: labrun::NodeMode,
    },
    /// A command started in each node's netns with `ZDS_SOCKET`, `CONFIG` (ztunnel local
    /// config), `CA_CERT`, `CA_KEY`, `NODE` in its environment.
    Peer {
        name: String,
        command: String,
    },
}

impl Contender {
    pub fn name(&self) -> &str {
        match self {
            Contender::Raw => "raw",
            Contender::Relay { tls: false } => "relay",
            Contender::Relay { tls: true } => "relay-tls",
            Contender::Ringmesh { name, .. } => name,
            Contender::Peer { name, .. } => name,
        }
    }
}

/// The ringmesh contenders for `--engines` × `--modes`: no engine given → the node's default
/// engine; `uring` is `ringmesh`, `epoll` adds `-epoll`; mode `xds` (the default) adds
/// nothing, `file` adds `-file` (`--modes xds,file`: the same proxy both ways, to see what
/// xDS costs on the data path).
pub fn ringmesh_contenders(engines: &[String], modes: &[String]) -> Result<Vec<Contender>, String> {
    let engines: Vec<(&str, Vec<String>)> = if engines.is_empty() {
        vec![("", vec![])]
    } else {
        engines
            .iter()
            .map(|e| match e.as_str() {
                "uring" => Ok(("", vec!["--io-engine".into(), "uring".into()])),
                "epoll" => Ok(("-epoll", vec!["--io-engine".into(), "epoll".into()])),
                other => Err(format!(
                    "--engines: unknown engine {other:?} (uring, epoll)"
                )),
            })
            .collect::<Result<_, _>>()?
    };
    let modes: Vec<(&str, labrun::NodeMode)> = if modes.is_empty() {
        vec![("", labrun::NodeMode::Xds)]
    } else {
        modes
            .iter()
            .map(|m| match m.as_str() {
                "xds" => Ok(("", labrun::NodeMode::Xds)),
                "file" => Ok(("-file", labrun::NodeMode::File)),
                other => Err(format!("--modes: unknown mode {other:?} (xds, file)")),
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (es, args) in &engines {
        for (ms, mode) in &modes {
            out.push(Contender::Ringmesh {
                name: format!("ringmesh{es}{ms}"),
                args: args.clone(),
                mode: *mode,
            });
        }
    }
    Ok(out)
}

/// Parses `--peer NAME=COMMAND`.
pub fn parse_peer(s: &str) -> Result<Contender, String> {
    match s.split_once('=') {
        Some((n, c))
            if !n.is_empty()
                && !c.trim().is_empty()
                && n != "raw"
                && !n.starts_with("relay")
                && !n.starts_with("ringmesh") =>
        {
            Ok(Contender::Peer {
                name: n.to_string(),
                command: c.to_string(),
            })
        }
        _ => Err(format!(
            "{s:?}: expected NAME=COMMAND (NAME not raw, relay* or ringmesh*), e.g. ztunnel='env FAKE_CA=true … ztunnel'"
        )),
    }
}

/// How much of each workload to run. `--quick` runs less of each, the same way: its figures
/// mean what the full run's do, with fewer samples (the report marks those that then mean
/// nothing; bench/README.md, "Quick mode").
#[derive(Debug, Clone)]
pub struct Sizes {
    pub rounds: usize,
    pub bulk_1_bytes: u64,
    pub bulk_8_bytes_each: u64,
    pub rr_n: usize,
    pub fixed_rate: u64,
    pub fixed_dur: Duration,
    pub conn_dur: Duration,
    pub tunnels: usize,
    pub ready_timeout: Duration,
}

impl Sizes {
    pub fn quick() -> Sizes {
        Sizes {
            rounds: 2,
            bulk_1_bytes: 64 << 20,
            bulk_8_bytes_each: 16 << 20,
            rr_n: 500,
            // The full run's rate (a different rate is a different load, not a smaller
            // sample of the same one), for less time.
            fixed_rate: 2000,
            fixed_dur: Duration::from_secs(1),
            conn_dur: Duration::from_secs(1),
            tunnels: 300,
            ready_timeout: Duration::from_secs(10),
        }
    }

    pub fn full() -> Sizes {
        Sizes {
            rounds: 3,
            bulk_1_bytes: 1 << 30,
            bulk_8_bytes_each: 256 << 20,
            rr_n: 5000,
            fixed_rate: 2000,
            fixed_dur: Duration::from_secs(3),
            conn_dur: Duration::from_secs(3),
            tunnels: 8000,
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// What the report says about them.
    pub fn info(&self) -> L4Sizes {
        L4Sizes {
            bulk_1_bytes: self.bulk_1_bytes,
            bulk_8_bytes_each: self.bulk_8_bytes_each,
            rr_requests: self.rr_n,
            fixed_rate_per_s: self.fixed_rate,
            fixed_rate_s: self.fixed_dur.as_secs_f64(),
            conn_s: self.conn_dur.as_secs_f64(),
            tunnels: self.tunnels,
        }
    }
}

/// Options of `ringmesh bench`.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub contenders: Vec<Contender>,
    pub sizes: Sizes,
    pub quick: bool,
    pub json: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub ringmesh_args: Vec<String>,
    pub command: String,
    /// A sysctl profile (`key = value` lines) applied in every lab namespace.
    pub tuning: Option<PathBuf>,
}

/// `key = value` sysctl settings.
pub type Settings = Vec<(String, String)>;

/// Parses a tuning profile: `key = value` lines, `#` comments. Only `net.*` keys are
/// per-namespace; others are returned separately (they would change the whole machine).
pub fn parse_profile(text: &str) -> Result<(Settings, Vec<String>), String> {
    let mut ns = Vec::new();
    let mut global = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key = value, got {line:?}", i + 1))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty()
            || v.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(format!("line {}: bad setting {line:?}", i + 1));
        }
        if k.starts_with("net.") {
            ns.push((k.to_string(), v.to_string()));
        } else {
            global.push(k.to_string());
        }
    }
    Ok((ns, global))
}

/// One round's measurements of one contender.
#[derive(Default)]
struct Round {
    bulk_1_same: Option<f64>,
    bulk_1_cross: Option<f64>,
    bulk_8_same: Option<f64>,
    bulk_8_cross: Option<f64>,
    passthrough_1: Option<f64>,
    passthrough_cpu_per_gb: Option<f64>,
    rr_1b: Option<Latency>,
    rr_1k: Option<Latency>,
    rr_fixed: Option<Latency>,
    conn_per_s: Option<f64>,
    rss_idle: Option<f64>,
    rss_tunnels: Option<f64>,
    cpu_per_gb: Option<f64>,
    user_cpu_per_gb: Option<f64>,
    machine_cpu_per_gb: Option<f64>,
    machine_busy: Option<f64>,
    cpu_per_1000: Option<f64>,
    /// Times the node proxies' buffer rings ran dry during the 8-stream phases.
    ring_exhausted_8: Option<f64>,
}

fn say(s: &str) {
    eprintln!("bench: {s}");
}

fn netns(path: &Path) -> Result<Netns, String> {
    Netns::open(path).map_err(|e| e.to_string())
}

/// First echo port of the connection-rate test (one port per round and contender).
const CONN_PORT_BASE: u16 = 8100;

/// Runs the benchmark; returns the report (also written as JSON/Markdown/SVG if asked).
pub fn run(args: &BenchArgs) -> Result<BenchReport, String> {
    let topo = Topology::parse("embedded bench topology", BENCH).map_err(|e| e.to_string())?;
    let held = labrun::cleanup_on_signal().map_err(|e| e.to_string())?;
    let dir = args.state_dir.join(&topo.name);
    say(
        "building the lab (2 nodes, client-a + server-a on node-a, server-b + plain-b outside the mesh on node-b)",
    );
    let run = LabRun::up(topo, &dir).map_err(|e| e.to_string())?;
    let pod = |n: &str| run.lab.pod(n).cloned().ok_or(format!("no pod {n}"));
    let (client, server_a, server_b) = (pod("client-a")?, pod("server-a")?, pod("server-b")?);
    let plain_b = pod("plain-b")?;
    let client_ns = netns(&client.netns_path())?;
    apps::serve_sink(&netns(&plain_b.netns_path())?, 9000).map_err(|e| e.to_string())?;
    for s in [&server_a, &server_b] {
        let ns = netns(&s.netns_path())?;
        apps::serve_sink(&ns, 9000).map_err(|e| e.to_string())?;
        apps::serve_echo(&ns, 8080, &s.name).map_err(|e| e.to_string())?;
        load::serve_hold(&ns, 9100).map_err(|e| e.to_string())?;
        inbound_counters(&s.netns, true)?;
    }
    // The connection-rate test leaves thousands of TIME_WAIT sockets in the client pod for a
    // minute, and the next contender connecting to the same address would pay for them in
    // the kernel's port search: every (round, contender) gets its own echo port.
    let conn_ports = args.sizes.rounds * args.contenders.len();
    if conn_ports > 800 {
        return Err(format!(
            "{} rounds × {} contenders: at most 800 (each needs its own echo port from {CONN_PORT_BASE})",
            args.sizes.rounds,
            args.contenders.len()
        ));
    }
    let server_b_ns = netns(&server_b.netns_path())?;
    for i in 0..conn_ports {
        apps::serve_echo(&server_b_ns, CONN_PORT_BASE + i as u16, &server_b.name)
            .map_err(|e| e.to_string())?;
    }
    let at = |p: &crate::lab::LabPod, port: u16| SocketAddr::new(p.ip.into(), port);
    let targets = Targets {
        same_sink: at(&server_a, 9000),
        plain_sink: at(&plain_b, 9000),
        cross_sink: at(&server_b, 9000),
        cross_echo: at(&server_b, 8080),
        cross_hold: at(&server_b, 9100),
        conn_echo: (0..conn_ports)
            .map(|i| at(&server_b, CONN_PORT_BASE + i as u16))
            .collect(),
        server_b_netns: server_b.netns.clone(),
    };
    // Every contender opens thousands of connections into server-b's namespace (8000 idle
    // tunnels, the new-connection phase), and each leaves its 4-tuple in TIME_WAIT there for
    // 60 s: with the default 28 232 ephemeral ports the fifth contender of a run (or the
    // sixth, as proxies got faster at new connections) failed its tunnels with
    // EADDRNOTAVAIL. A range 1.75x as wide (above every port the lab and the proxies
    // listen on) in every lab namespace, for every contender.
    for ns in crate::lab::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}-", run.lab.prefix)))
    {
        crate::lab::run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_local_port_range=16000 65535",
            ],
        )
        .map_err(|e| format!("ephemeral port range in {ns}: {e}"))?;
    }
    if let Some(p) = &args.tuning {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let (settings, global) =
            parse_profile(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        for g in global {
            say(&format!(
                "tuning: {g} is not per-namespace; not applied inside the lab"
            ));
        }
        let all: Vec<String> = crate::lab::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", run.lab.prefix)))
            .collect();
        for ns in &all {
            for (k, v) in &settings {
                crate::lab::run(
                    "ip",
                    &["netns", "exec", ns, "sysctl", "-qw", &format!("{k}={v}")],
                )
                .map_err(|e| format!("tuning {k}={v} in {ns}: {e}"))?;
            }
        }
        say(&format!(
            "tuning: {} settings applied in {} namespaces",
            settings.len(),
            all.len()
        ));
    }
    *held.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
    let mut rounds: BTreeMap<String, Vec<Round>> = BTreeMap::new();
    let mut invalid: BTreeMap<String, String> = BTreeMap::new();
    for r in 0..args.sizes.rounds {
        for (ci, c) in args.contenders.iter().enumerate() {
            if invalid.contains_key(c.name()) {
                continue;
            }
            say(&format!(
                "round {}/{}: {}",
                r + 1,
                args.sizes.rounds,
                c.name()
            ));
            let mut guard = held.lock().unwrap_or_else(|e| e.into_inner());
            let run = guard.as_mut().ok_or("lab gone")?;
            let conn_dst = targets.conn_echo[r * args.contenders.len() + ci];
            let res = one_round(run, c, args, &client_ns, &targets, conn_dst)
                .map_err(|e| format!("{e}{}", proxy_log_tails(run)));
            run.stop_proxies();
            drop(guard);
            match res {
                Ok(round) => rounds.entry(c.name().to_string()).or_default().push(round),
                Err(e) => {
                    say(&format!("{} is INVALID: {e}", c.name()));
                    invalid.insert(c.name().to_string(), e);
                }
            }
        }
    }
    drop(held.lock().unwrap_or_else(|e| e.into_inner()).take());
    let mut report = BenchReport {
        machine: machine(),
        command: args.command.clone(),
        order: args
            .contenders
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        quick: args.quick,
        rounds: args.sizes.rounds,
        sizes: Some(args.sizes.info()),
        ..Default::default()
    };
    for c in &args.contenders {
        let name = c.name().to_string();
        let result = match invalid.get(&name) {
            Some(why) => ContenderResult {
                valid: false,
                invalid_reason: Some(why.clone()),
                ..Default::default()
            },
            None => summarize(
                rounds.get(&name).map(Vec::as_slice).unwrap_or(&[]),
                &args.sizes,
            ),
        };
        report.contenders.insert(name, result);
    }
    report.derive();
    write_outputs(&report, args)?;
    Ok(report)
}

struct Targets {
    same_sink: SocketAddr,
    /// plain-b's sink: outside the mesh, reached by plain passthrough.
    plain_sink: SocketAddr,
    cross_sink: SocketAddr,
    cross_echo: SocketAddr,
    cross_hold: SocketAddr,
    /// One echo address per (round, contender) for the connection-rate test.
    conn_echo: Vec<SocketAddr>,
    server_b_netns: String,
}

/// Adds (or reads) byte counters of inbound TCP in a pod: to port 15008 (HBONE) and to
/// 15006 (where the capture rules redirect plaintext inbound; the plaintext relay's path).
/// The counters only grow (nft 1.0.6 cannot reset anonymous rule counters): callers take
/// differences.
fn inbound_counters(netns: &str, install: bool) -> Result<Carried, String> {
    let nft = |args: &[&str], input: Option<&str>| {
        let mut v = vec!["netns", "exec", netns, "nft"];
        v.extend_from_slice(args);
        crate::lab::run_input("ip", &v, input).map_err(|e| e.to_string())
    };
    if install {
        nft(
            &["-f", "-"],
            Some(
                "table inet ringmesh-bench {\n chain input {\n  type filter hook input priority 0; policy accept;\n  tcp dport 15008 counter\n  tcp dport 15006 counter\n }\n}\n",
            ),
        )?;
        return Ok(Carried::default());
    }
    let out = nft(&["list", "table", "inet", "ringmesh-bench"], None)?;
    let bytes = |port: &str| {
        out.lines()
            .find(|l| l.contains(&format!("dport {port} ")))
            .and_then(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "bytes")
                    .nth(1)
                    .and_then(|b| b.parse().ok())
            })
            .unwrap_or(0)
    };
    Ok(Carried {
        hbone: bytes("15008"),
        plain: bytes("15006"),
    })
}

/// Bytes counted by [`inbound_counters`].
#[derive(Debug, Default, Clone, Copy)]
struct Carried {
    hbone: u64,
    plain: u64,
}

fn start(run: &mut LabRun, c: &Contender, args: &BenchArgs) -> Result<(), String> {
    match c {
        Contender::Raw => run.set_capture(false).map_err(|e| e.to_string()),
        Contender::Relay { tls } => {
            run.set_capture(true).map_err(|e| e.to_string())?;
            let mut relay_args: Vec<String> = vec!["lab".into(), "relay".into()];
            if *tls {
                relay_args.extend([
                    "--tls".into(),
                    "--ca-cert".into(),
                    run.ca_cert.display().to_string(),
                    "--ca-key".into(),
                    run.ca_key.display().to_string(),
                ]);
            }
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let pods: Vec<String> = run
                .lab
                .pods
                .iter()
                .filter(|p| p.captured)
                .map(|p| p.name.clone())
                .collect();
            for p in &pods {
                run.start_in_pod(p, c.name(), &exe, &relay_args)
                    .map_err(|e| e.to_string())?;
            }
            wait_logged(run, crate::lab::relay::READY, args.sizes.ready_timeout)
                .map_err(|e| format!("never became ready: {e}"))
        }
        Contender::Ringmesh { .. } | Contender::Peer { .. } => {
            run.set_capture(true).map_err(|e| e.to_string())?;
            let before = run.snapshot_counts();
            match c {
                Contender::Ringmesh {
                    args: extra, mode, ..
                } => {
                    let mut all = args.ringmesh_args.clone();
                    all.extend_from_slice(extra);
                    run.mode = *mode;
                    // Each contender's own log names (`<node>.ringmesh-epoll.log`), so
                    // an INVALID round's logs are not overwritten by the next contender.
                    run.start_ringmesh_as(c.name(), &all)
                }
                Contender::Peer { name, command } => {
                    let nodes: Vec<String> =
                        run.topo.nodes.iter().map(|n| n.name.clone()).collect();
                    let mut r = Ok(());
                    for n in nodes {
                        // ZTUNNEL_ENV: a file of ztunnel's own variables for the lab's
                        // control plane (`env $(cat "$ZTUNNEL_ENV") ztunnel` uses xDS and
                        // its CA); not set directly, so a peer that is configured otherwise
                        // (e.g. a ringmesh node with --config) does not pick them up.
                        let env = vec![
                            (
                                "ZDS_SOCKET".into(),
                                run.zds_socket(&n).display().to_string(),
                            ),
                            ("CONFIG".into(), run.config.display().to_string()),
                            ("CA_CERT".into(), run.ca_cert.display().to_string()),
                            ("CA_KEY".into(), run.ca_key.display().to_string()),
                            ("NODE".into(), n.clone()),
                            (
                                "ZTUNNEL_ENV".into(),
                                run.ztunnel_env_file(&n).display().to_string(),
                            ),
                        ];
                        let args = vec!["-c".to_string(), format!("exec {command}")];
                        r = r.and_then(|_| {
                            run.start_in_node(&n, name, Path::new("/bin/sh"), &args, &env)
                        });
                    }
                    r
                }
                Contender::Raw | Contender::Relay { .. } => unreachable!(),
            }
            .map_err(|e| e.to_string())?;
            run.wait_ready_after(&before, args.sizes.ready_timeout)
                .map_err(|e| format!("never became ready: {e}"))
        }
    }
}

/// What an INVALID round's processes logged last at WARN or above (at most 5 lines each),
/// with where their whole logs are: the round's cause is often there, not in the load's error.
fn proxy_log_tails(run: &LabRun) -> String {
    let mut out = String::new();
    for p in &run.proxies {
        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        out.push_str(&format!("\n  {} (log {}):", p.node, p.log.display()));
        if bad.is_empty() {
            out.push_str(" no warnings");
        }
        for l in &bad[bad.len().saturating_sub(5)..] {
            out.push_str(&format!("\n    {l}"));
        }
    }
    out
}

/// Waits until every process the lab started has logged `line` (or one exits).
fn wait_logged(run: &mut LabRun, line: &str, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut all = true;
        for p in run.proxies.iter_mut() {
            if let Ok(Some(st)) = p.child.try_wait() {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                return Err(format!("{} exited ({st}): {}", p.node, log.trim()));
            }
            all &= std::fs::read_to_string(&p.log).is_ok_and(|l| l.contains(line));
        }
        if all {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("no {line:?} in {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proxies_cpu(run: &LabRun) -> f64 {
    run.proxies
        .iter()
        .filter_map(|p| load::cpu_seconds(p.child.id()))
        .sum()
}

/// The node proxies' user-space CPU seconds (their kernel time is the rest).
fn proxies_user_cpu(run: &LabRun) -> f64 {
    run.proxies
        .iter()
        .filter_map(|p| load::cpu_split(p.child.id()))
        .map(|(u, _)| u)
        .sum()
}

/// The node proxies' `ringmesh_uring_buffer_exhausted` counters, summed over the nodes;
/// None when no node runs ringmesh on io_uring (epoll, another proxy, or no node proxy).
fn ring_exhaustions(run: &LabRun) -> Option<u64> {
    let mut total = None;
    for n in &run.topo.nodes {
        let Some(name) = run.node_netns(&n.name) else {
            continue;
        };
        let Ok(ns) = Netns::open(&PathBuf::from(format!("/var/run/netns/{name}"))) else {
            continue;
        };
        let at = SocketAddr::from(([127, 0, 0, 1], run.node_port(&n.name, 15020)));
        // The epoll engine has the counter too, always 0: it has no ring.
        if let Ok((200, body)) = labrun::http_get(&ns, at, "/stats/prometheus")
            && body.contains("ringmesh_io_engine{engine=\"uring\"} 1")
            && let Some(v) = report::counter(&body, "ringmesh_uring_buffer_exhausted")
        {
            total = Some(total.unwrap_or(0) + v);
        }
    }
    total
}

fn proxies_rss(run: &LabRun) -> f64 {
    run.proxies
        .iter()
        .filter_map(|p| load::rss_bytes(p.child.id()))
        .sum()
}

fn one_round(
    run: &mut LabRun,
    c: &Contender,
    args: &BenchArgs,
    client: &Netns,
    t: &Targets,
    conn_dst: SocketAddr,
) -> Result<Round, String> {
    start(run, c, args)?;
    // Node proxies (HBONE) and the relays all put processes on the path.
    let hbone = matches!(c, Contender::Ringmesh { .. } | Contender::Peer { .. });
    let proxied = *c != Contender::Raw;
    let s = &args.sizes;
    let mut r = Round::default();
    // Warm-up (handshakes, pools), then check the path really is what it claims.
    load::bulk(client, t.cross_sink, 4 << 20, 1)?;
    let before = inbound_counters(&t.server_b_netns, false)?;
    let (cpu0, user0) = (proxies_cpu(run), proxies_user_cpu(run));
    let (machine0, t0) = (load::machine_busy_seconds(), std::time::Instant::now());
    r.bulk_1_cross = Some(load::bulk(client, t.cross_sink, s.bulk_1_bytes, 1)?);
    let (machine1, secs) = (load::machine_busy_seconds(), t0.elapsed().as_secs_f64());
    let (cpu1, user1) = (proxies_cpu(run), proxies_user_cpu(run));
    let gb = s.bulk_1_bytes as f64 / 1e9;
    if let (Some(m0), Some(m1)) = (machine0, machine1) {
        r.machine_cpu_per_gb = Some((m1 - m0) / gb);
        let cpus = crate::runtime::allowed_cpus().len().max(1) as f64;
        r.machine_busy = Some((m1 - m0) / (secs * cpus));
    }
    let after = inbound_counters(&t.server_b_netns, false)?;
    // HBONE and the TLS relay arrive on 15008, the plaintext relay on 15006.
    let need = 0.9 * s.bulk_1_bytes as f64;
    let (carried, port) = match c {
        Contender::Relay { tls: false } => (after.plain.saturating_sub(before.plain), 15006),
        _ => (after.hbone.saturating_sub(before.hbone), 15008),
    };
    if proxied && (carried as f64) < need {
        let what = if hbone { "HBONE" } else { "the relay" };
        return Err(format!(
            "its traffic did not go through {what}: server-b's port {port} carried {carried} bytes of a {}-byte transfer",
            s.bulk_1_bytes
        ));
    }
    if proxied {
        r.cpu_per_gb = Some((cpu1 - cpu0) / gb);
        r.user_cpu_per_gb = Some((user1 - user0) / gb);
    }
    // Idle tunnels are a node proxy's memory; a relay keeps two copy buffers per connection.
    // Measured once the path is known to be HBONE, before the other phases: what they leave
    // allocated (or give back) is not counted per tunnel.
    if hbone {
        r.rss_idle = Some(proxies_rss(run));
        let tunnels = load::open_tunnels(client, t.cross_hold, s.tunnels)?;
        std::thread::sleep(Duration::from_millis(300));
        r.rss_tunnels = Some(proxies_rss(run));
        drop(tunnels);
        // Their closes are done before the next phase starts.
        std::thread::sleep(Duration::from_millis(300));
    }
    r.bulk_1_same = Some(load::bulk(client, t.same_sink, s.bulk_1_bytes, 1)?);
    // Plain passthrough: a destination outside the mesh, plaintext TCP through the client's
    // node proxy only (ringmesh splices it unless --splice false); the plaintext relay copies
    // it in the client pod. The TLS relay has no passthrough (it sends everything to 15008).
    if *c != (Contender::Relay { tls: true }) {
        let cpu_p = proxies_cpu(run);
        r.passthrough_1 = Some(load::bulk(client, t.plain_sink, s.bulk_1_bytes, 1)?);
        if proxied {
            r.passthrough_cpu_per_gb = Some((proxies_cpu(run) - cpu_p) / gb);
        }
    }
    let exhausted0 = ring_exhaustions(run);
    r.bulk_8_cross = Some(load::bulk(client, t.cross_sink, s.bulk_8_bytes_each, 8)?);
    r.bulk_8_same = Some(load::bulk(client, t.same_sink, s.bulk_8_bytes_each, 8)?);
    r.ring_exhausted_8 = exhausted0
        .zip(ring_exhaustions(run))
        .map(|(a, b)| b.saturating_sub(a) as f64);
    r.rr_1b = Some(load::rr_closed(client, t.cross_echo, 1, s.rr_n)?);
    let cpu2 = proxies_cpu(run);
    r.rr_1k = Some(load::rr_closed(client, t.cross_echo, 1024, s.rr_n)?);
    if proxied {
        r.cpu_per_1000 = Some((proxies_cpu(run) - cpu2) / (s.rr_n as f64 / 1000.0));
    }
    r.rr_fixed = Some(load::rr_fixed_rate(
        client,
        t.cross_echo,
        1024,
        s.fixed_rate,
        s.fixed_dur,
    )?);
    r.conn_per_s = Some(load::conn_rate(client, conn_dst, s.conn_dur, 4)?);
    Ok(r)
}

fn summarize(rounds: &[Round], sizes: &Sizes) -> ContenderResult {
    let tunnels = sizes.tunnels;
    let sum = |f: &dyn Fn(&Round) -> Option<f64>| {
        Summary::of(&rounds.iter().filter_map(f).collect::<Vec<_>>())
    };
    let each_round = |f: fn(&Round) -> Option<&Latency>, q: fn(&stats::Percentiles) -> f64| {
        sum(&|r: &Round| f(r).map(|l| q(&l.percentiles())))
    };
    let merged = |f: fn(&Round) -> Option<&Latency>| {
        let mut l = Latency::default();
        let mut any = false;
        for r in rounds {
            if let Some(x) = f(r) {
                l.merge(x);
                any = true;
            }
        }
        any.then(|| l.percentiles())
    };
    let mut c = ContenderResult {
        valid: !rounds.is_empty(),
        ..Default::default()
    };
    let d = &mut c.detail;
    d.bulk_1_same_gbps = sum(&|r| r.bulk_1_same);
    d.bulk_1_cross_gbps = sum(&|r| r.bulk_1_cross);
    d.bulk_8_same_gbps = sum(&|r| r.bulk_8_same);
    d.bulk_8_cross_gbps = sum(&|r| r.bulk_8_cross);
    d.passthrough_1_gbps = sum(&|r| r.passthrough_1);
    d.passthrough_cpu_s_per_gb = sum(&|r| r.passthrough_cpu_per_gb);
    d.rr_1b_us = merged(|r| r.rr_1b.as_ref());
    d.rr_1k_us = merged(|r| r.rr_1k.as_ref());
    d.rr_fixed_rate_us = merged(|r| r.rr_fixed.as_ref());
    d.rr_1k_p50_us = each_round(|r| r.rr_1k.as_ref(), |p| p.p50);
    d.rr_1k_p99_us = each_round(|r| r.rr_1k.as_ref(), |p| p.p99);
    d.fixed_rate_per_s = d.rr_fixed_rate_us.map(|_| sizes.fixed_rate as f64);
    d.conn_per_s = sum(&|r| r.conn_per_s);
    d.cpu_s_per_gb = sum(&|r| r.cpu_per_gb);
    d.user_cpu_s_per_gb = sum(&|r| r.user_cpu_per_gb);
    d.machine_cpu_s_per_gb = sum(&|r| r.machine_cpu_per_gb);
    d.machine_busy = sum(&|r| r.machine_busy);
    d.cpu_s_per_1000_req = sum(&|r| r.cpu_per_1000);
    d.ring_exhausted_8_streams = sum(&|r| r.ring_exhausted_8);
    d.rss_idle_bytes = sum(&|r| r.rss_idle).map(|s| s.median);
    d.rss_with_tunnels_bytes = sum(&|r| r.rss_tunnels).map(|s| s.median);
    d.tunnels = d.rss_with_tunnels_bytes.map(|_| tunnels);
    // Per round (idle and with tunnels are one process's two readings), then the median.
    d.bytes_per_tunnel = sum(&|r| {
        r.rss_tunnels
            .zip(r.rss_idle)
            .map(|(w, i)| ((w - i) / tunnels.max(1) as f64).max(0.0))
    });
    c.bulk_1_gbps = d.bulk_1_cross_gbps.map(|s| s.median);
    c.bulk_8_gbps = d.bulk_8_cross_gbps.map(|s| s.median);
    c.rr_p50_us = d.rr_1k_us.map(|p| p.p50);
    c.rr_p99_us = d.rr_1k_us.map(|p| p.p99);
    c.conn_per_s = d.conn_per_s.map(|s| s.median);
    c.cpu_s_per_gb = d.cpu_s_per_gb.map(|s| s.median);
    c.bytes_per_tunnel = d.bytes_per_tunnel.map(|s| s.median);
    c
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    Machine {
        cpus: crate::runtime::allowed_cpus().len(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().to_string())
            .unwrap_or_default(),
        memory_gib: (memory_gib * 10.0).round() / 10.0,
        cpu_model,
    }
}

fn write_outputs(r: &BenchReport, args: &BenchArgs) -> Result<(), String> {
    let md = r.markdown();
    println!("\n{md}");
    if let Some(j) = &args.json {
        std::fs::write(j, serde_json::to_vec_pretty(r).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", j.display()))?;
    }
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (f, body) in [
            ("results.md", md.clone()),
            ("latency.svg", r.svg_latency()),
            ("throughput.svg", r.svg_throughput()),
        ] {
            std::fs::write(dir.join(f), body).map_err(|e| format!("{f}: {e}"))?;
        }
        say(&format!(
            "wrote results.md, latency.svg, throughput.svg to {}",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
