//! `ringmesh bench --l7`: HTTP/1.1 and HTTP/2 (h2c) requests for 1 KiB answers over three
//! paths in one lab (`BENCH_L7`), interleaved per round as the L4 bench does: `raw` (capture
//! rules off, client → server pod), `l4` (node proxies, a service without a waypoint) and
//! `waypoint` (node proxies and `ringmesh waypoint`, a service labelled
//! `istio.io/use-waypoint`). Per path: latency with 1 and 8 requests in flight, a fixed rate
//! (Istio's way of measuring a proxy's CPU) and a saturated closed loop (requests/s), with the
//! waypoint's and node proxies' CPU over the last two and the waypoint's RSS.
//!
//! Owns the run: the lab, the paths and their checks, the phases and the CPU and memory
//! readings. The load generator is `l7_load.rs`; the figures and their Markdown are
//! `l7_report.rs` (pure).
//!
//! A path is INVALID, never fast, when its traffic did not take the path it claims: the
//! server (and, for `waypoint`, the waypoint) count inbound bytes to port 15008, and the
//! server's description of one request must show the expected peer (the waypoint's address
//! through the waypoint, the client's otherwise) and HTTP version.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http::header::HOST;

use super::l7_load::{HttpTarget, InFlight, LoadResult, Pace, REQUEST_TIMEOUT, http_load};
use super::l7_report::{CpuSample, L7PathResult, L7Report, L7Sample, L7Sizes, Path, Protocol};
use super::load;
use super::report::BenchReport;
use super::stats::Latency;
use crate::inpod::Netns;
use crate::lab::http_apps;
use crate::lab::run::{self as labrun, LabRun, NodeMode};
use crate::lab::topology::Topology;

/// The L7 benchmark's topology.
pub const BENCH_L7: &str = include_str!("../lab/bench_l7.yaml");

/// The answer every measured request asks for.
pub const RESPONSE_BYTES: usize = 1024;

/// The client's and server's pods, the waypoint's, and the services of [`BENCH_L7`].
const CLIENT_POD: &str = "client-a";
const SERVER_POD: &str = "server-b";
const WAYPOINT: &str = "waypoint";
const WAYPOINT_SERVICE: &str = "web";
const L4_SERVICE: &str = "web-l4";

/// Per protocol: the service port (named `http` / `http2` in the resources) and the server's
/// port behind it.
fn ports(proto: Protocol) -> (u16, u16) {
    match proto {
        Protocol::Http1 => (80, 8080),
        Protocol::Http2 => (81, 8081),
    }
}

/// How much of each phase to run.
#[derive(Debug, Clone)]
pub struct Phases {
    pub rounds: usize,
    /// Closed-loop requests (4 in flight) before measuring: connections, pools, caches.
    pub warmup: u64,
    /// Requests with 1 and with 8 in flight.
    pub c1: u64,
    pub c8: u64,
    pub rate_per_s: u64,
    pub rate_dur: Duration,
    pub saturated_in_flight: usize,
    pub saturated_dur: Duration,
    /// How long the processes' CPU is sampled with no requests (meshed paths).
    pub idle_dur: Duration,
    pub ready_timeout: Duration,
}

impl Phases {
    pub fn quick() -> Phases {
        Phases {
            rounds: 2,
            warmup: 100,
            c1: 300,
            c8: 1000,
            rate_per_s: 1000,
            rate_dur: Duration::from_secs(1),
            saturated_in_flight: 16,
            saturated_dur: Duration::from_secs(1),
            idle_dur: Duration::from_millis(500),
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn full() -> Phases {
        Phases {
            rounds: 3,
            warmup: 500,
            c1: 3000,
            c8: 10000,
            rate_per_s: 1000,
            rate_dur: Duration::from_secs(5),
            saturated_in_flight: 16,
            saturated_dur: Duration::from_secs(5),
            idle_dur: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(30),
        }
    }

    fn info(&self) -> L7Sizes {
        L7Sizes {
            response_bytes: RESPONSE_BYTES,
            c1_requests: self.c1,
            c8_requests: self.c8,
            fixed_rate_per_s: self.rate_per_s,
            fixed_rate_s: self.rate_dur.as_secs_f64(),
            saturated_in_flight: self.saturated_in_flight,
            saturated_s: self.saturated_dur.as_secs_f64(),
        }
    }
}

/// Options of `ringmesh bench --l7`.
#[derive(Debug, Clone)]
pub struct L7Args {
    pub phases: Phases,
    pub quick: bool,
    pub json: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Extra arguments for `ringmesh node`.
    pub ringmesh_args: Vec<String>,
    /// Extra arguments for `ringmesh waypoint`.
    pub waypoint_args: Vec<String>,
    /// The waypoint's RUST_LOG (`info`, its default, writes an access line per request).
    pub waypoint_log: String,
    pub command: String,
}

/// Runs the L7 benchmark; returns the report (also written as JSON/Markdown if asked).
pub fn run(args: &L7Args) -> Result<BenchReport, String> {
    let topo =
        Topology::parse("embedded L7 bench topology", BENCH_L7).map_err(|e| e.to_string())?;
    let waypoint_node = topo
        .waypoints
        .iter()
        .find(|w| w.name == WAYPOINT)
        .map(|w| w.node.clone())
        .ok_or("the L7 bench topology has no waypoint named waypoint")?;
    let held = labrun::cleanup_on_signal().map_err(|e| e.to_string())?;
    let dir = args.state_dir.join(&topo.name);
    say(&format!(
        "building the lab (client-a on node-a, server-b on node-b, the waypoint on {waypoint_node})"
    ));
    let run = LabRun::up(topo, &dir).map_err(|e| e.to_string())?;
    let ctx = Ctx::new(&run)?;
    let server_ns = netns(&ctx.server_netns_path)?;
    for proto in Protocol::ALL {
        http_apps::serve_http(&server_ns, ports(proto).1, SERVER_POD)
            .map_err(|e| format!("HTTP server in {SERVER_POD}: {e}"))?;
    }
    super::inbound_counters(&ctx.server_netns, true)?;
    super::inbound_counters(&ctx.waypoint_netns, true)?;
    *held.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);

    let p = &args.phases;
    let mut samples: BTreeMap<(Protocol, Path), Vec<L7Sample>> = BTreeMap::new();
    let mut invalid: BTreeMap<(Protocol, Path), String> = BTreeMap::new();
    let mut measure_all = |run: &LabRun, path: Path, invalid: &mut BTreeMap<_, _>| {
        for proto in Protocol::ALL {
            if invalid.contains_key(&(proto, path)) {
                continue;
            }
            match measure(run, &ctx, path, proto, p) {
                Ok(s) => samples.entry((proto, path)).or_default().push(s),
                Err(e) => {
                    say(&format!(
                        "{} {} is INVALID: {e}",
                        proto.label(),
                        path.name()
                    ));
                    invalid.insert((proto, path), e);
                }
            }
        }
    };
    for r in 0..p.rounds {
        let round = format!("round {}/{}", r + 1, p.rounds);
        {
            say(&format!("{round}: raw"));
            let mut guard = held.lock().unwrap_or_else(|e| e.into_inner());
            let run = guard.as_mut().ok_or("lab gone")?;
            run.stop_proxies();
            run.set_capture(false).map_err(|e| e.to_string())?;
            measure_all(run, Path::Raw, &mut invalid);
        }
        let mut guard = held.lock().unwrap_or_else(|e| e.into_inner());
        let run = guard.as_mut().ok_or("lab gone")?;
        say(&format!(
            "{round}: starting the node proxies and the waypoint"
        ));
        match start_mesh(run, args) {
            Ok(()) => {
                // Alternate which meshed path goes first, so drift within a round hits both.
                let order = if r % 2 == 0 {
                    [Path::L4, Path::Waypoint]
                } else {
                    [Path::Waypoint, Path::L4]
                };
                for path in order {
                    say(&format!("{round}: {}", path.name()));
                    measure_all(run, path, &mut invalid);
                }
            }
            Err(e) => {
                say(&format!("the mesh never became ready: {e}"));
                for proto in Protocol::ALL {
                    for path in [Path::L4, Path::Waypoint] {
                        invalid
                            .entry((proto, path))
                            .or_insert_with(|| format!("never became ready: {e}"));
                    }
                }
            }
        }
        run.stop_proxies();
    }
    drop(held.lock().unwrap_or_else(|e| e.into_inner()).take());

    let mut l7 = L7Report {
        rounds: p.rounds,
        waypoint_node,
        sizes: p.info(),
        ..Default::default()
    };
    for proto in Protocol::ALL {
        for path in Path::ALL {
            let r = match invalid.get(&(proto, path)) {
                Some(why) => L7PathResult::invalid(why),
                None => L7PathResult::of(
                    samples
                        .get(&(proto, path))
                        .map(Vec::as_slice)
                        .unwrap_or(&[]),
                ),
            };
            l7.insert(proto, path, r);
        }
    }
    l7.derive();
    let report = BenchReport {
        machine: super::machine(),
        command: args.command.clone(),
        quick: args.quick,
        rounds: p.rounds,
        l7: Some(l7),
        ..Default::default()
    };
    write_outputs(&report, args)?;
    Ok(report)
}

/// Addresses and namespaces of the lab's pods and services.
struct Ctx {
    client: Netns,
    client_ip: IpAddr,
    server_ip: IpAddr,
    waypoint_ip: IpAddr,
    server_netns: String,
    server_netns_path: PathBuf,
    waypoint_netns: String,
    waypoint_vip: IpAddr,
    l4_vip: IpAddr,
    node_names: Vec<String>,
}

impl Ctx {
    fn new(run: &LabRun) -> Result<Ctx, String> {
        let pod = |n: &str| {
            run.lab
                .pod(n)
                .cloned()
                .ok_or(format!("the L7 bench topology has no pod {n}"))
        };
        let (client, server, waypoint) = (pod(CLIENT_POD)?, pod(SERVER_POD)?, pod(WAYPOINT)?);
        let vip = |name: &str| {
            let s = run
                .topo
                .services
                .iter()
                .find(|s| s.name == name)
                .ok_or(format!("the L7 bench topology has no service {name}"))?;
            for proto in Protocol::ALL {
                let (port, target) = ports(proto);
                if s.ports.get(&port) != Some(&target) {
                    return Err(format!(
                        "service {name} must map port {port} to {target} ({})",
                        proto.label()
                    ));
                }
            }
            Ok::<_, String>(IpAddr::V4(s.vip))
        };
        Ok(Ctx {
            client: netns(&client.netns_path())?,
            client_ip: client.ip.into(),
            server_ip: server.ip.into(),
            waypoint_ip: waypoint.ip.into(),
            server_netns_path: server.netns_path(),
            server_netns: server.netns,
            waypoint_netns: waypoint.netns,
            waypoint_vip: vip(WAYPOINT_SERVICE)?,
            l4_vip: vip(L4_SERVICE)?,
            node_names: run.topo.nodes.iter().map(|n| n.name.clone()).collect(),
        })
    }

    /// Where `path` sends `proto`'s requests.
    fn target(&self, path: Path, proto: Protocol, http_path: &str) -> HttpTarget {
        let (port, target_port) = ports(proto);
        let (addr, authority) = match path {
            Path::Raw => {
                let a = SocketAddr::new(self.server_ip, target_port);
                (a, a.to_string())
            }
            Path::L4 => (
                SocketAddr::new(self.l4_vip, port),
                service_authority(L4_SERVICE, port),
            ),
            Path::Waypoint => (
                SocketAddr::new(self.waypoint_vip, port),
                service_authority(WAYPOINT_SERVICE, port),
            ),
        };
        HttpTarget {
            addr,
            authority,
            path: http_path.to_string(),
            body_len: RESPONSE_BYTES,
        }
    }
}

/// `NAME.default.svc.cluster.local[:PORT]`, as a client in the mesh would name the service.
fn service_authority(name: &str, port: u16) -> String {
    let host = format!("{name}.default.svc.cluster.local");
    if port == 80 {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Starts `ringmesh node` on every node (xDS mode) and `ringmesh waypoint` in the waypoint's
/// pod, and waits until all are ready.
fn start_mesh(run: &mut LabRun, args: &L7Args) -> Result<(), String> {
    run.set_capture(true).map_err(|e| e.to_string())?;
    run.mode = NodeMode::Xds;
    let before = run.snapshot_counts();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let nodes: Vec<String> = run.topo.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &nodes {
        let mut a = run.ringmesh_args(n);
        a.extend_from_slice(&args.ringmesh_args);
        run.start_in_node(
            n,
            "ringmesh",
            &exe,
            &a,
            &[("RUST_LOG".into(), "info".into())],
        )
        .map_err(|e| e.to_string())?;
    }
    // Through env(1), which execs: the process the lab holds is the waypoint itself, with
    // its own RUST_LOG.
    let mut a = vec![
        format!("RUST_LOG={}", args.waypoint_log),
        exe.display().to_string(),
    ];
    a.extend(run.waypoint_args(WAYPOINT).map_err(|e| e.to_string())?);
    a.extend_from_slice(&args.waypoint_args);
    run.start_in_pod(WAYPOINT, "waypoint", FsPath::new("env"), &a)
        .map_err(|e| e.to_string())?;
    run.wait_ready_after(&before, args.phases.ready_timeout)
        .map_err(|e| e.to_string())
}

/// One path and protocol, one round: the path check, then every phase.
fn measure(
    run: &LabRun,
    ctx: &Ctx,
    path: Path,
    proto: Protocol,
    p: &Phases,
) -> Result<L7Sample, String> {
    check_path(ctx, path, proto)?;
    let t = ctx.target(path, proto, &format!("/bytes/{RESPONSE_BYTES}"));
    let before = (
        super::inbound_counters(&ctx.server_netns, false)?,
        super::inbound_counters(&ctx.waypoint_netns, false)?,
    );
    let mut requests = 1;
    let mut go = |inflight: usize, pace: Pace| {
        let r = http_load(&ctx.client, &t, proto, InFlight::of(proto, inflight), pace)?;
        requests += r.requests;
        Ok::<_, String>(r)
    };
    go(4, Pace::Count(p.warmup))?;
    let mut s = L7Sample {
        c1: go(1, Pace::Count(p.c1))?.latency.percentiles(),
        c8: go(8, Pace::Count(p.c8))?.latency.percentiles(),
        ..Default::default()
    };
    if path != Path::Raw {
        let cpu0 = cpu_now(run, ctx, path);
        std::thread::sleep(p.idle_dur);
        let none = LoadResult {
            latency: Latency::default(),
            requests: 0,
            elapsed: Duration::ZERO,
        };
        s.idle_cpu = Some(cpu_now(run, ctx, path).since(&cpu0, &none));
    }
    let cpu0 = cpu_now(run, ctx, path);
    let fixed = go(
        p.saturated_in_flight,
        Pace::Rate {
            per_s: p.rate_per_s,
            dur: p.rate_dur,
        },
    )?;
    s.fixed_cpu = cpu_now(run, ctx, path).since(&cpu0, &fixed);
    s.fixed = fixed.latency.percentiles();
    s.fixed_rps = fixed.rps();
    let cpu0 = cpu_now(run, ctx, path);
    let sat = go(p.saturated_in_flight, Pace::For(p.saturated_dur))?;
    s.saturated_cpu = cpu_now(run, ctx, path).since(&cpu0, &sat);
    s.saturated = sat.latency.percentiles();
    s.saturated_rps = sat.rps();
    let after = (
        super::inbound_counters(&ctx.server_netns, false)?,
        super::inbound_counters(&ctx.waypoint_netns, false)?,
    );
    let server_hbone = after.0.hbone.saturating_sub(before.0.hbone);
    let waypoint_hbone = after.1.hbone.saturating_sub(before.1.hbone);
    check_carried(path, requests, server_hbone, waypoint_hbone)?;
    if path == Path::Waypoint {
        s.waypoint_rss_bytes = waypoint_pid(run).and_then(load::rss_bytes);
    }
    Ok(s)
}

/// Every request carries at least this many bytes into port 15008 of each proxy it crosses
/// (an HTTP/2 request with its headers indexed is ~14 bytes before HBONE framing and TLS).
const MIN_HBONE_BYTES_PER_REQUEST: u64 = 8;

/// Whether the inbound bytes to port 15008 of the server and of the waypoint fit `path`.
fn check_carried(
    path: Path,
    requests: u64,
    server_hbone: u64,
    waypoint_hbone: u64,
) -> Result<(), String> {
    let need = requests * MIN_HBONE_BYTES_PER_REQUEST;
    let stray = 4096;
    match path {
        Path::Raw if server_hbone > stray => Err(format!(
            "server-b's port 15008 got {server_hbone} bytes with the mesh off"
        )),
        Path::L4 | Path::Waypoint if server_hbone < need => Err(format!(
            "its traffic did not go through HBONE: server-b's port 15008 got {server_hbone} \
             bytes for {requests} requests"
        )),
        Path::L4 if waypoint_hbone > stray => Err(format!(
            "the waypoint's port 15008 got {waypoint_hbone} bytes: the l4 path went through it"
        )),
        Path::Waypoint if waypoint_hbone < need => Err(format!(
            "its traffic did not go through the waypoint: its port 15008 got {waypoint_hbone} \
             bytes for {requests} requests"
        )),
        _ => Ok(()),
    }
}

/// One request for the server's description of it: the peer the server saw must be the
/// waypoint on the waypoint path and the client otherwise, and the version the protocol's
/// (on the waypoint path, the waypoint's upstream protocol).
fn check_path(ctx: &Ctx, path: Path, proto: Protocol) -> Result<(), String> {
    let t = ctx.target(path, proto, "/");
    let req = Request::get("/")
        .header(HOST, &t.authority)
        .body(Bytes::new())
        .map_err(|e| e.to_string())?;
    let reply = http_apps::http_request(
        &ctx.client,
        t.addr,
        req,
        proto == Protocol::Http2,
        REQUEST_TIMEOUT,
    )?;
    if reply.status != 200 {
        return Err(format!(
            "GET / through {} answered {}: {}",
            t.addr,
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    let j = reply.json()?;
    let peer = j["peer"].as_str().unwrap_or_default();
    let want_peer = match path {
        Path::Waypoint => ctx.waypoint_ip,
        Path::Raw | Path::L4 => ctx.client_ip,
    };
    let want_version = match proto {
        Protocol::Http1 => "HTTP/1.1",
        Protocol::Http2 => "HTTP/2",
    };
    if peer != want_peer.to_string() || j["version"] != want_version {
        return Err(format!(
            "the server saw peer {peer} over {} (expected {want_peer} over {want_version}): {j}",
            j["version"]
        ));
    }
    Ok(())
}

/// CPU seconds so far of the processes that matter on `path`, and of the machine.
#[derive(Debug, Clone, Copy)]
struct CpuNow {
    waypoint: Option<f64>,
    node_proxies: Option<f64>,
    machine: Option<f64>,
    at: Instant,
}

impl CpuNow {
    /// The CPU used from `before` to now by a load that answered `load.requests`.
    fn since(&self, before: &CpuNow, load: &LoadResult) -> CpuSample {
        let d = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (a - b).max(0.0));
        CpuSample {
            wall_s: (self.at - before.at).as_secs_f64(),
            requests: load.requests,
            waypoint_s: d(self.waypoint, before.waypoint),
            node_proxies_s: d(self.node_proxies, before.node_proxies),
            machine_s: d(self.machine, before.machine),
        }
    }
}

fn cpu_now(run: &LabRun, ctx: &Ctx, path: Path) -> CpuNow {
    let nodes: Vec<f64> = run
        .proxies
        .iter()
        .filter(|p| ctx.node_names.contains(&p.node))
        .filter_map(|p| load::cpu_seconds(p.child.id()))
        .collect();
    CpuNow {
        // Only the waypoint path puts work on it (on l4 it idles).
        waypoint: (path == Path::Waypoint)
            .then(|| waypoint_pid(run).and_then(load::cpu_seconds))
            .flatten(),
        node_proxies: (path != Path::Raw && !nodes.is_empty()).then(|| nodes.iter().sum()),
        machine: load::machine_busy_seconds(),
        at: Instant::now(),
    }
}

fn waypoint_pid(run: &LabRun) -> Option<u32> {
    run.proxies
        .iter()
        .find(|p| p.node == WAYPOINT)
        .map(|p| p.child.id())
}

fn write_outputs(r: &BenchReport, args: &L7Args) -> Result<(), String> {
    let md = r.markdown();
    println!("\n{md}");
    if let Some(j) = &args.json {
        std::fs::write(j, serde_json::to_vec_pretty(r).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", j.display()))?;
    }
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let f = dir.join("l7.md");
        std::fs::write(&f, &md).map_err(|e| format!("{}: {e}", f.display()))?;
        say(&format!("wrote {}", f.display()));
    }
    Ok(())
}

fn say(s: &str) {
    eprintln!("bench --l7: {s}");
}

fn netns(path: &FsPath) -> Result<Netns, String> {
    Netns::open(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_bytes_must_fit_the_path() {
        assert!(check_carried(Path::Raw, 1000, 0, 0).is_ok());
        assert!(check_carried(Path::Raw, 1000, 100_000, 0).is_err());
        assert!(check_carried(Path::L4, 1000, 50_000, 0).is_ok());
        assert!(check_carried(Path::L4, 1000, 10, 0).is_err());
        let e = check_carried(Path::L4, 1000, 50_000, 50_000).unwrap_err();
        assert!(e.contains("went through it"), "{e}");
        assert!(check_carried(Path::Waypoint, 1000, 50_000, 50_000).is_ok());
        let e = check_carried(Path::Waypoint, 1000, 50_000, 100).unwrap_err();
        assert!(e.contains("did not go through the waypoint"), "{e}");
    }

    #[test]
    fn the_topology_has_what_the_bench_needs() {
        let t = Topology::parse("bench_l7.yaml", BENCH_L7).unwrap();
        let svc = |n: &str| t.services.iter().find(|s| s.name == n).unwrap();
        assert!(
            t.service_waypoint(svc(WAYPOINT_SERVICE))
                .address()
                .is_some()
        );
        assert!(t.service_waypoint(svc(L4_SERVICE)).address().is_none());
        let wp = t.waypoints.iter().find(|w| w.name == WAYPOINT).unwrap();
        assert!(wp.node != "node-a" && wp.node != "node-b", "{}", wp.node);
        for p in [CLIENT_POD, SERVER_POD, WAYPOINT] {
            assert!(t.pods.iter().any(|x| x.name == p), "{p}");
        }
        assert!(t.resources.contains("name: http2, port: 81"));
    }

    #[test]
    fn services_are_named_as_in_the_mesh() {
        assert_eq!(
            service_authority("web", 80),
            "web.default.svc.cluster.local"
        );
        assert_eq!(
            service_authority("web", 81),
            "web.default.svc.cluster.local:81"
        );
    }
}
