//! `ringmesh demo`: the main job on the embedded default. Brings up a local ambient mesh in
//! network namespaces (the lab playing istio-cni), runs `ringmesh node` on each node, drives
//! traffic along every path the ambient docs describe, and prints a report of what happened
//! and whether it is what the docs say; then cleans up (`--keep` leaves it running).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::inpod::Netns;
use crate::lab::LabInfo;
use crate::lab::apps;
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
    pub ok: bool,
}

/// What the lab's control plane saw during the demo.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneReport {
    pub node_proxies: usize,
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

/// Runs the demo; returns the report (also printed) or why it could not run.
pub fn run(args: &DemoArgs) -> Result<Report, String> {
    println!("ringmesh demo — a local ambient mesh in network namespaces\n");
    let topo = Topology::parse("embedded demo topology", DEMO).map_err(|e| e.to_string())?;
    let dir = args.state_dir.join(&topo.name);
    let guard = crate::lab::run::cleanup_on_signal().map_err(|e| e.to_string())?;
    let mut run = step(
        "lab: 2 nodes, 5 pods (4 in the mesh), service echo, policy deny-client-b, a control plane (xDS + CA)",
        || LabRun::up(topo.clone(), &dir).map_err(|e| e.to_string()),
    )?;
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
            "node proxies: `ringmesh node` on node-a and node-b, config over xDS and certificates from the lab's istiod, pods enrolled over ZDS"
        } else {
            "node proxies: `ringmesh node` on node-a and node-b, config from a local file and the built-in CA, pods enrolled over ZDS"
        },
        || {
            run.start_ringmesh(&[])
                .and_then(|_| run.wait_ready(Duration::from_secs(20)))
                .map_err(|e| e.to_string())
        },
    )?;
    step(
        "apps: echo on :8080 in server-a, server-b, legacy-b; sink on :9000 in server-b",
        || {
            for p in ["server-a", "server-b", "legacy-b"] {
                apps::serve_echo(&pod_ns(&info, p)?, 8080, p).map_err(|e| e.to_string())?;
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
            let count = |f: &dyn Fn(&Event) -> bool| ev.iter().filter(|e| f(e)).count();
            ControlPlaneReport {
                node_proxies: nodes.len(),
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
        && control_plane
            .as_ref()
            .is_none_or(|c| c.nacks == 0 && c.refused == 0 && c.node_proxies == 2);
    let report = Report {
        config_source: source.to_string(),
        control_plane,
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
        loop {
            std::thread::park();
        }
    }
    drop(guard.lock().unwrap_or_else(|e| e.into_inner()).take());
    println!("\n  ✓ cleaned up: namespaces, rules and processes removed");
    Ok(report)
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
        "\n  {:<17} {:<45} as the docs say?",
        "path", "what happened"
    );
    for p in &r.paths {
        println!(
            "  {:<17} {:<45} {}",
            p.name,
            p.route,
            if p.ok { "yes" } else { "NO" }
        );
        println!("  {:<17}   expected: {}", "", p.expected);
        println!("  {:<17}   observed: {}", "", p.observed);
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
    match &r.control_plane {
        Some(c) => println!(
            "  control    xDS from the lab's istiod: {} node proxies, {} ACKs, {} NACKs; {} workload certificates from its CA ({} refused); no CA key on the nodes",
            c.node_proxies, c.acks, c.nacks, c.certificates, c.refused
        ),
        None => println!("  control    local config file and the built-in CA on each node"),
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
