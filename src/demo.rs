//! `ringmesh demo`: the main job on the embedded default. Brings up a local ambient mesh in
//! network namespaces (the lab playing istio-cni), runs `ringmesh node` on each node and
//! `ringmesh waypoint` in its pod, drives traffic along every path the ambient docs describe
//! (L4 through the node proxies; L7 through the waypoint: the seeds' HTTPRoute `echo` →
//! `echo-v1`, a weighted split, and an out-of-mesh source going straight past it), and prints a
//! report of what happened and whether it is what the docs say; then cleans up (`--keep`
//! leaves it running).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::inpod::Netns;
use crate::lab::LabInfo;
use crate::lab::apps;
use crate::lab::http_apps::{self, HttpReply};
use crate::lab::run::{LabRun, http_get};
use crate::lab::topology::{DEMO, Topology};

/// Options of `ringmesh demo`.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub keep: bool,
    pub bulk_bytes: u64,
    pub pings: usize,
    pub json: Option<PathBuf>,
    /// Node proxies from the local config file and the built-in CA instead of xDS.
    pub local_config: bool,
    pub state_dir: PathBuf,
}

/// One traffic path and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    pub name: &'static str,
    pub route: String,
    pub expected: &'static str,
    pub observed: String,
    pub ok: bool,
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub paths: Vec<PathResult>,
    pub bulk_bytes: u64,
    pub throughput_gbps: f64,
    pub latency_us: Latency,
    /// Request bytes the destination proxies counted (istio_tcp_received_bytes_total).
    pub bytes_carried: f64,
    /// The I/O engines the node proxies report (ringmesh_io_engine), e.g. ["uring"].
    pub io_engines: Vec<String>,
    /// Where the node proxies got their config: `xds` (the lab's control plane) or `file`.
    pub config_source: String,
    /// xDS mode: what the lab's control plane saw (ACKs, NACKs, certificates issued).
    pub control_plane: Option<ControlPlaneReport>,
    /// What the waypoint counted (its own Istio metrics).
    pub waypoint: WaypointReport,
    pub ok: bool,
}

/// The waypoint's own telemetry: `istio_requests_total{reporter="waypoint"}` from its
/// `/metrics` on 15020, summed.
#[derive(Debug, Clone, Serialize)]
pub struct WaypointReport {
    /// Every request it counted.
    pub requests: f64,
    /// By `destination_workload`.
    pub by_workload: std::collections::BTreeMap<String, f64>,
    /// By `response_code`.
    pub by_code: std::collections::BTreeMap<String, f64>,
    /// Requests the demo sent through it (the counts must reach this).
    pub sent: usize,
}

/// What the lab's control plane saw during the demo.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneReport {
    pub node_proxies: usize,
    /// Waypoints connected to it (their xDS node IDs name a pod outside istio-system).
    pub waypoints: usize,
    pub acks: usize,
    pub nacks: usize,
    pub certificates: usize,
    pub refused: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

fn step<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    if tty {
        print!("  … {what}");
        let _ = std::io::stdout().flush();
    }
    let t = Instant::now();
    let r = f();
    let cr = if tty { "\r\x1b[2K" } else { "" };
    match &r {
        Ok(_) => println!("{cr}  ✓ {what} ({:.1}s)", t.elapsed().as_secs_f64()),
        Err(e) => println!("{cr}  ✗ {what}: {e}"),
    }
    r
}

fn pod_ns(run: &LabInfo, name: &str) -> Result<Netns, String> {
    let p = run.pod(name).ok_or(format!("no pod {name}"))?;
    Netns::open(&p.netns_path()).map_err(|e| e.to_string())
}

fn pod_addr(run: &LabInfo, name: &str, port: u16) -> Result<SocketAddr, String> {
    let p = run.pod(name).ok_or(format!("no pod {name}"))?;
    Ok(SocketAddr::new(p.ip.into(), port))
}

/// Scrapes every node's metrics (concatenated).
fn scrape(run: &LabInfo) -> String {
    let mut out = String::new();
    for n in &run.nodes {
        if let Ok(ns) = Netns::open(&PathBuf::from(format!("/var/run/netns/{}", n.netns)))
            && let Ok((200, body)) =
                http_get(&ns, "127.0.0.1:15020".parse().expect("addr"), "/metrics")
        {
            out.push_str(&body);
        }
    }
    out
}

const OPENED: &str = "istio_tcp_connections_opened_total";

/// The waypoint demo's namespace, waypoint and addresses (src/lab/demo.yaml).
const L7_NS: &str = "l7";
const WAYPOINT: &str = "waypoint";
const ECHO_VIP: &str = "198.19.20.1:80";
const SPLIT_VIP: &str = "198.19.20.4:80";
/// Requests along the HTTPRoute `echo` → `echo-v1`.
const ROUTE_REQUESTS: usize = 50;
/// Requests over the 80/20 split, and how far from 80 % `echo-v1`'s share may be (in points;
/// 5 points is 4 standard deviations of a fair 80/20 draw over 1000).
const SPLIT_REQUESTS: usize = 1000;
const SPLIT_V1_PERCENT: f64 = 80.0;
const SPLIT_TOLERANCE: f64 = 5.0;

/// Scrapes the waypoint's metrics (in its pod's netns).
fn scrape_waypoint(run: &LabInfo) -> String {
    pod_ns(run, WAYPOINT)
        .ok()
        .and_then(|ns| http_get(&ns, "127.0.0.1:15020".parse().expect("addr"), "/metrics").ok())
        .filter(|(code, _)| *code == 200)
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The JSON field `key` of the HTTP app's answer ("pod": who answered, "peer": whom it saw).
fn field(r: &HttpReply, key: &str) -> String {
    r.json().unwrap_or_default()[key]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Sums a metric per value of `label` over the series matching `labels`.
fn metric_by(
    text: &str,
    metric: &str,
    labels: &[(&str, &str)],
    label: &str,
) -> std::collections::BTreeMap<String, f64> {
    let key = format!("{label}=\"");
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines() {
        let n = apps::metric_sum(l, metric, labels);
        if let Some(v) = l
            .split_once(&key)
            .and_then(|(_, rest)| rest.split('"').next())
            && n > 0.0
        {
            *out.entry(v.to_string()).or_insert(0.0) += n;
        }
    }
    out
}

/// Runs the demo; returns the report (also printed) or why it could not run.
pub fn run(args: &DemoArgs) -> Result<Report, String> {
    println!("ringmesh demo — a local ambient mesh in network namespaces\n");
    let topo = Topology::parse("embedded demo topology", DEMO).map_err(|e| e.to_string())?;
    let dir = args.state_dir.join(&topo.name);
    let guard = crate::lab::run::cleanup_on_signal().map_err(|e| e.to_string())?;
    let apps_pods: Vec<_> = topo.pods.iter().filter(|p| !p.is_waypoint()).collect();
    let lab_step = format!(
        "lab: {} nodes, {} pods ({} in the mesh), services echo (default) and echo, echo-v1, echo-v2, echo-split ({L7_NS}), \
         policy deny-client-b, waypoint {WAYPOINT} ({L7_NS}, HTTPRoutes echo → echo-v1 and echo-split 80/20), a control plane (xDS + CA)",
        topo.nodes.len(),
        apps_pods.len(),
        apps_pods.iter().filter(|p| p.ambient()).count(),
    );
    let mut run = step(&lab_step, || {
        LabRun::up(topo.clone(), &dir).map_err(|e| e.to_string())
    })?;
    if args.local_config {
        run.mode = crate::lab::run::NodeMode::File;
    }
    let source = match run.mode {
        crate::lab::run::NodeMode::Xds => "xds",
        crate::lab::run::NodeMode::File => "file",
    };
    let info = run.lab.clone_info();
    step(
        if source == "xds" {
            "node proxies and waypoint: `ringmesh node` on node-a and node-b, `ringmesh waypoint` in its pod, config over xDS and certificates from the lab's istiod, pods enrolled over ZDS"
        } else {
            "node proxies and waypoint: `ringmesh node` on node-a and node-b, `ringmesh waypoint` in its pod, config from a local file and the built-in CA, pods enrolled over ZDS"
        },
        || {
            run.start_ringmesh(&[])
                .and_then(|_| run.wait_ready(Duration::from_secs(20)))
                .map_err(|e| e.to_string())
        },
    )?;
    step(
        "apps: echo on :8080 in server-a, server-b, legacy-b; sink on :9000 in server-b; HTTP on :8080 in echo-v1, echo-v2",
        || {
            for p in ["server-a", "server-b", "legacy-b"] {
                apps::serve_echo(&pod_ns(&info, p)?, 8080, p).map_err(|e| e.to_string())?;
            }
            for p in ["echo-v1", "echo-v2"] {
                http_apps::serve_http(&pod_ns(&info, p)?, 8080, p).map_err(|e| e.to_string())?;
            }
            apps::serve_sink(&pod_ns(&info, "server-b")?, 9000).map_err(|e| e.to_string())
        },
    )?;
    let names = run.topo.name.clone();
    let dir = run.dir.clone();
    *guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
    let run = &info;
    let client_a = pod_ns(run, "client-a")?;
    let client_b = pod_ns(run, "client-b")?;
    let client_ip = run
        .pod("client-a")
        .map(|p| p.ip.to_string())
        .unwrap_or_default();

    // Traffic along each path.
    let same = apps::echo_from(&client_a, pod_addr(run, "server-a", 8080)?);
    let cross = apps::echo_from(&client_a, pod_addr(run, "server-b", 8080)?);
    let vip: SocketAddr = "198.19.10.1:80".parse().expect("addr");
    let mut by_endpoint = std::collections::BTreeMap::new();
    for _ in 0..10 {
        if let Ok(g) = apps::echo_from(&client_a, vip) {
            *by_endpoint
                .entry(g.split(' ').next().unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
    }
    let legacy = apps::echo_from(&client_a, pod_addr(run, "legacy-b", 8080)?);
    let denied = apps::echo_from(&client_b, pod_addr(run, "server-a", 8080)?);
    let l7 = step(
        &format!(
            "waypoint: {ROUTE_REQUESTS} requests to echo, {SPLIT_REQUESTS} to echo-split, echo-v1's pod from client-a and from legacy-b"
        ),
        || waypoint_traffic(run, &client_a),
    )?;
    let bulk = step(
        &format!("bulk: {} MiB client-a → server-b", args.bulk_bytes >> 20),
        || apps::send_bulk(&client_a, pod_addr(run, "server-b", 9000)?, args.bulk_bytes),
    )?;
    let mut rtts = step(
        &format!(
            "latency: {} × 1 KiB ping-pong client-a → server-b",
            args.pings
        ),
        || {
            apps::ping_pong(
                &client_a,
                pod_addr(run, "server-b", 8080)?,
                1024,
                args.pings,
            )
        },
    )?;
    rtts.sort();
    std::thread::sleep(Duration::from_millis(200));
    let m = scrape(run);
    let mtls = |src: &str, dst: &str| {
        apps::metric_sum(
            &m,
            OPENED,
            &[
                ("reporter", "destination"),
                ("source_workload", src),
                ("destination_workload", dst),
                ("connection_security_policy", "mutual_tls"),
            ],
        ) >= 1.0
    };
    let mut paths = Vec::new();
    let kept_ip = |g: &Result<String, String>| g.as_ref().is_ok_and(|g| g.ends_with(&client_ip));
    paths.push(PathResult {
        name: "same node",
        route: "client-a → server-a:8080 (both on node-a)".into(),
        expected: "HBONE through node-a's proxy (mTLS), source IP kept",
        observed: describe(&same, mtls("client-a", "server-a")),
        ok: same.is_ok() && kept_ip(&same) && mtls("client-a", "server-a"),
    });
    paths.push(PathResult {
        name: "cross node",
        route: "client-a → server-b:8080 (node-a → node-b)".into(),
        expected: "HBONE between the nodes' proxies (mTLS), source IP kept",
        observed: describe(&cross, mtls("client-a", "server-b")),
        ok: cross.is_ok() && kept_ip(&cross) && mtls("client-a", "server-b"),
    });
    let spread = by_endpoint
        .iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let svc_hits = apps::metric_sum(
        &m,
        OPENED,
        &[
            ("reporter", "source"),
            ("destination_service", "echo.default.svc.cluster.local"),
        ],
    );
    paths.push(PathResult {
        name: "service VIP",
        route: "client-a → echo 198.19.10.1:80 ×10".into(),
        expected: "load-balanced over the service's endpoints, port 80 → 8080",
        observed: format!("answered by {spread}; {svc_hits} connections counted for the service"),
        ok: by_endpoint.len() == 2 && by_endpoint.values().sum::<i32>() == 10 && svc_hits >= 10.0,
    });
    let plain = apps::metric_sum(
        &m,
        OPENED,
        &[
            ("reporter", "source"),
            ("destination_workload", "legacy-b"),
            ("connection_security_policy", "unknown"),
        ],
    ) >= 1.0;
    paths.push(PathResult {
        name: "out of mesh",
        route: "client-a → legacy-b:8080 (legacy-b not in the mesh)".into(),
        expected: "plaintext passthrough (no HBONE: the destination has no proxy)",
        observed: match &legacy {
            Ok(g) => format!("echo from {g}; counted as plaintext: {plain}"),
            Err(e) => e.clone(),
        },
        ok: legacy.is_ok() && plain,
    });
    let deny_seen = apps::metric_sum(
        &m,
        OPENED,
        &[
            ("reporter", "destination"),
            ("destination_workload", "server-a"),
            ("response_flags", "DENY"),
        ],
    ) >= 1.0;
    paths.push(PathResult {
        name: "denied by policy",
        route: "client-b → server-a:8080".into(),
        expected: "rejected at the destination by AuthorizationPolicy deny-client-b (HBONE 401)",
        observed: match &denied {
            Ok(g) => format!("NOT denied: {g}"),
            Err(e) => format!("{e}; DENY counted at destination: {deny_seen}"),
        },
        ok: denied.is_err() && deny_seen,
    });
    let wm = scrape_waypoint(run);
    paths.extend(waypoint_paths(run, &l7, &m));
    let reporter = [("reporter", "waypoint")];
    let waypoint = WaypointReport {
        requests: apps::metric_sum(&wm, "istio_requests_total", &reporter),
        by_workload: metric_by(
            &wm,
            "istio_requests_total",
            &reporter,
            "destination_workload",
        ),
        by_code: metric_by(&wm, "istio_requests_total", &reporter, "response_code"),
        sent: l7.sent,
    };
    let bytes_carried = apps::metric_sum(
        &m,
        "istio_tcp_received_bytes_total",
        &[("reporter", "destination")],
    );
    let mut io_engines: Vec<String> = m
        .lines()
        .filter_map(|l| l.strip_prefix("ringmesh_io_engine{engine=\""))
        .filter_map(|l| l.split('"').next())
        .map(str::to_string)
        .collect();
    io_engines.sort();
    io_engines.dedup();
    let lat = Latency {
        samples: rtts.len(),
        p50: apps::percentile_us(&rtts, 50.0),
        p90: apps::percentile_us(&rtts, 90.0),
        p99: apps::percentile_us(&rtts, 99.0),
        p999: apps::percentile_us(&rtts, 99.9),
    };
    let control_plane = guard
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .filter(|_| source == "xds")
        .and_then(|r| r.istiod.as_ref())
        .map(|i| {
            use crate::lab::istiod::Event;
            let ev = i.events();
            let mut nodes: Vec<&String> = ev
                .iter()
                .filter_map(|e| match e {
                    Event::Connected { node_id } => Some(node_id),
                    _ => None,
                })
                .collect();
            nodes.sort();
            nodes.dedup();
            // A node proxy's xDS node ID names its pod in istio-system; a waypoint's, its own.
            let (proxies, waypoints): (Vec<&String>, Vec<&String>) =
                nodes.iter().partition(|n| n.contains(".istio-system~"));
            let count = |f: &dyn Fn(&Event) -> bool| ev.iter().filter(|e| f(e)).count();
            ControlPlaneReport {
                node_proxies: proxies.len(),
                waypoints: waypoints.len(),
                acks: count(&|e| matches!(e, Event::Ack { .. })),
                nacks: count(&|e| matches!(e, Event::Nack { .. })),
                certificates: count(&|e| matches!(e, Event::Certificate { refused: None, .. })),
                refused: count(&|e| {
                    matches!(
                        e,
                        Event::Certificate {
                            refused: Some(_),
                            ..
                        }
                    )
                }),
            }
        });
    let ok = paths.iter().all(|p| p.ok)
        && waypoint.requests >= waypoint.sent as f64
        && control_plane.as_ref().is_none_or(|c| {
            c.nacks == 0 && c.refused == 0 && c.node_proxies == 2 && c.waypoints == 1
        });
    let report = Report {
        config_source: source.to_string(),
        control_plane,
        waypoint,
        throughput_gbps: args.bulk_bytes as f64 * 8.0 / bulk / 1e9,
        bulk_bytes: args.bulk_bytes,
        latency_us: lat,
        bytes_carried,
        io_engines,
        paths,
        ok,
    };
    print_report(&report, bulk);
    if let Some(j) = &args.json {
        std::fs::write(j, serde_json::to_vec_pretty(&report).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", j.display()))?;
    }
    if args.keep {
        std::fs::write(dir.join("pid"), std::process::id().to_string())
            .map_err(|e| e.to_string())?;
        println!(
            "\n  --keep: the lab stays up until Ctrl-C (or `ringmesh lab down {names}`). Try:"
        );
        println!("    ringmesh lab status");
        println!("    ringmesh lab exec client-a -- ss -tn");
        println!("    ringmesh lab exec node-a -- curl -s localhost:15020/metrics");
        println!("    ringmesh lab exec node-a -- curl -s localhost:15000/config_dump");
        println!("    ringmesh lab exec waypoint -- curl -s localhost:15020/metrics");
        println!("    ringmesh lab exec client-a -- curl -s 198.19.20.1/");
        loop {
            std::thread::park();
        }
    }
    drop(guard.lock().unwrap_or_else(|e| e.into_inner()).take());
    println!("\n  ✓ cleaned up: namespaces, rules and processes removed");
    Ok(report)
}

/// What the waypoint paths drove, for [`waypoint_paths`].
struct L7Traffic {
    /// Client-a → echo ×[`ROUTE_REQUESTS`] (one keep-alive connection).
    route: Result<Vec<HttpReply>, String>,
    /// The waypoint's metrics right after `route`.
    route_metrics: String,
    /// Client-a → echo-split ×[`SPLIT_REQUESTS`].
    split: Result<Vec<HttpReply>, String>,
    /// Client-a → echo-v1's pod IP (the pod uses the waypoint).
    mesh_pod: Result<HttpReply, String>,
    /// Legacy-b (out of the mesh) → echo-v1's pod IP.
    outside_pod: Result<HttpReply, String>,
    /// Requests that went through the waypoint.
    sent: usize,
}

fn waypoint_traffic(run: &LabInfo, client_a: &Netns) -> Result<L7Traffic, String> {
    let echo: SocketAddr = ECHO_VIP.parse().expect("addr");
    let split: SocketAddr = SPLIT_VIP.parse().expect("addr");
    let v1_pod = pod_addr(run, "echo-v1", 8080)?;
    let route = http_apps::http_requests(client_a, echo, ROUTE_REQUESTS, "/", false);
    std::thread::sleep(Duration::from_millis(200));
    let route_metrics = scrape_waypoint(run);
    let split = http_apps::http_requests(client_a, split, SPLIT_REQUESTS, "/", false);
    let mesh_pod = http_apps::http_get(client_a, v1_pod, "/", &[]);
    let outside_pod = http_apps::http_get(&pod_ns(run, "legacy-b")?, v1_pod, "/", &[]);
    std::thread::sleep(Duration::from_millis(200));
    Ok(L7Traffic {
        route,
        route_metrics,
        split,
        mesh_pod,
        outside_pod,
        sent: ROUTE_REQUESTS + SPLIT_REQUESTS + 1,
    })
}

/// The verdicts of the waypoint paths; `m` is the node proxies' metrics.
fn waypoint_paths(run: &LabInfo, t: &L7Traffic, m: &str) -> Vec<PathResult> {
    let ip = |pod: &str| run.pod(pod).map(|p| p.ip.to_string()).unwrap_or_default();
    let (wp_ip, client_ip, legacy_ip, v1_ip) =
        (ip(WAYPOINT), ip("client-a"), ip("legacy-b"), ip("echo-v1"));
    let wp_principal = format!("spiffe://cluster.local/ns/{L7_NS}/sa/{WAYPOINT}");
    let mut paths = Vec::new();

    // 1. The seeds' HTTPRoute: echo → echo-v1 only, through the waypoint.
    let (ok_route, observed) = match &t.route {
        Ok(rs) => {
            let by = tally(rs.iter().map(|r| field(r, "pod")));
            let peers = tally(rs.iter().map(|r| field(r, "peer")));
            let counted = apps::metric_sum(
                &t.route_metrics,
                "istio_requests_total",
                &[
                    ("reporter", "waypoint"),
                    ("response_code", "200"),
                    (
                        "source_principal",
                        "spiffe://cluster.local/ns/default/sa/client",
                    ),
                    ("destination_workload", "echo-v1"),
                ],
            );
            let second_hop = apps::metric_sum(
                m,
                OPENED,
                &[
                    ("reporter", "destination"),
                    ("source_principal", &wp_principal),
                    ("destination_workload", "echo-v1"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            );
            let ok = rs.len() == ROUTE_REQUESTS
                && rs.iter().all(|r| r.status == 200)
                && by.len() == 1
                && by.contains_key("echo-v1")
                && peers.len() == 1
                && peers.contains_key(&wp_ip)
                && counted >= ROUTE_REQUESTS as f64
                && second_hop >= 1.0;
            (
                ok,
                format!(
                    "answered by {}; the app saw {} (the waypoint is {wp_ip}); the waypoint counted {counted} requests client → echo-v1; node-b's proxy counted {second_hop} mTLS connection(s) from {wp_principal}",
                    spread(&by),
                    spread(&peers)
                ),
            )
        }
        Err(e) => (false, e.clone()),
    };
    paths.push(PathResult {
        name: "waypoint route",
        route: format!("client-a → echo.{L7_NS} {ECHO_VIP} ×{ROUTE_REQUESTS}"),
        expected: "HTTPRoute echo → echo-v1 (the seeds' example): client's proxy → HBONE → waypoint → 2nd HBONE hop with the waypoint's identity → echo-v1 only",
        observed,
        ok: ok_route,
    });

    // 2. A weighted split, 80/20.
    let (ok_split, observed) = match &t.split {
        Ok(rs) => {
            let by = tally(rs.iter().map(|r| field(r, "pod")));
            let v1 = by.get("echo-v1").copied().unwrap_or(0);
            let v2 = by.get("echo-v2").copied().unwrap_or(0);
            let share = 100.0 * v1 as f64 / SPLIT_REQUESTS as f64;
            let ok =
                v1 + v2 == SPLIT_REQUESTS && (share - SPLIT_V1_PERCENT).abs() <= SPLIT_TOLERANCE;
            (
                ok,
                format!(
                    "echo-v1 ×{v1}, echo-v2 ×{v2} ({share:.1} % / {:.1} %)",
                    100.0 - share
                ),
            )
        }
        Err(e) => (false, e.clone()),
    };
    paths.push(PathResult {
        name: "weighted split",
        route: format!("client-a → echo-split.{L7_NS} {SPLIT_VIP} ×{SPLIT_REQUESTS}"),
        expected: "HTTPRoute echo-split, weights 80/20, through the waypoint: per request echo-v1 80 %, echo-v2 20 % (±5 points)",
        observed,
        ok: ok_split,
    });

    // 3. and 4. echo-v1's pod uses the waypoint: from the mesh through it, from outside not.
    let pod_path = |r: &Result<HttpReply, String>, want_peer: &str| match r {
        Ok(r) => (
            r.status == 200 && field(r, "pod") == "echo-v1" && field(r, "peer") == want_peer,
            format!(
                "{} from {}, app saw source {}",
                r.status,
                field(r, "pod"),
                field(r, "peer")
            ),
        ),
        Err(e) => (false, e.clone()),
    };
    let (ok, observed) = pod_path(&t.mesh_pod, &wp_ip);
    paths.push(PathResult {
        name: "pod via waypoint",
        route: format!("client-a → echo-v1 {v1_ip}:8080"),
        expected: "echo-v1's pod uses the waypoint (its label, waypoint for: all): the source's proxy sends it there; the app sees the waypoint's IP",
        observed: format!("{observed} (waypoint {wp_ip}, client-a {client_ip})"),
        ok,
    });
    let (ok, observed) = pod_path(&t.outside_pod, &legacy_ip);
    paths.push(PathResult {
        name: "waypoint bypassed",
        route: format!("legacy-b → echo-v1 {v1_ip}:8080"),
        expected: "legacy-b is out of the mesh and knows no waypoint: straight to the waypoint-enabled pod; the app sees legacy-b's IP",
        observed: format!("{observed} (legacy-b {legacy_ip}, waypoint {wp_ip})"),
        ok,
    });
    paths
}

fn tally(items: impl Iterator<Item = String>) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

fn spread<V: std::fmt::Display>(m: &std::collections::BTreeMap<String, V>) -> String {
    m.iter()
        .map(|(k, v)| format!("{} ×{v}", if k.is_empty() { "?" } else { k }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(r: &Result<String, String>, mtls: bool) -> String {
    match r {
        Ok(g) => format!(
            "echo from {}, app saw source {}; mTLS at destination: {mtls}",
            g.split(' ').next().unwrap_or(""),
            g.split(' ').nth(1).unwrap_or("?")
        ),
        Err(e) => e.clone(),
    }
}

fn print_report(r: &Report, secs: f64) {
    println!(
        "\n  {:<18} {:<45} as the docs say?",
        "path", "what happened"
    );
    for p in &r.paths {
        println!(
            "  {:<18} {:<45} {}",
            p.name,
            p.route,
            if p.ok { "yes" } else { "NO" }
        );
        println!("  {:<18}   expected: {}", "", p.expected);
        println!("  {:<18}   observed: {}", "", p.observed);
    }
    println!(
        "\n  bulk       {} MiB client-a → server-b in {secs:.2}s = {:.2} Gb/s (1 stream, HBONE)",
        r.bulk_bytes >> 20,
        r.throughput_gbps
    );
    let l = &r.latency_us;
    println!(
        "  latency    1 KiB request/response, {} samples: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
        l.samples, l.p50, l.p90, l.p99, l.p999
    );
    println!(
        "  carried    {:.1} MB of request bytes counted by the destination proxies (istio_tcp_received_bytes_total)",
        r.bytes_carried / 1e6
    );
    println!(
        "  engine     {} (ringmesh_io_engine of the node proxies)",
        r.io_engines.join(", ")
    );
    let w = &r.waypoint;
    println!(
        "  waypoint   {} requests counted by the waypoint (istio_requests_total, reporter=\"waypoint\"; {} sent through it): {}; response codes {}",
        w.requests,
        w.sent,
        spread(&w.by_workload),
        spread(&w.by_code)
    );
    match &r.control_plane {
        Some(c) => println!(
            "  control    xDS from the lab's istiod: {} node proxies and {} waypoint, {} ACKs, {} NACKs; {} workload certificates from its CA ({} refused); no CA key on the nodes",
            c.node_proxies, c.waypoints, c.acks, c.nacks, c.certificates, c.refused
        ),
        None => println!(
            "  control    local config file and the built-in CA on each node and the waypoint"
        ),
    }
    println!(
        "\n  result     {}",
        if r.ok {
            "every path behaved as the ambient docs say"
        } else {
            "SOME PATHS MISBEHAVED (see above)"
        }
    );
}
