//! The L7 benchmark's figures (`ringmesh bench --l7`): per protocol and path, medians over
//! rounds of requests/s, latency percentiles, and the waypoint's CPU and memory; and the two
//! figures the issue sets targets for — the p50 the waypoint adds against one node-proxy hop,
//! and the waypoint's vCPU per 1000 requests/s. Pure: measurements in, figures and Markdown
//! out. Measuring is `l7.rs`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::stats::{
    CPU_TICK_S, MIN_CPU_TICKS, MIN_SAMPLES_BEYOND, Percentiles, Summary, cpu_meaningful,
    percentile_meaningful,
};

/// The waypoint's CPU budget: vCPU per 1000 requests/s of 1 KiB answers (the target).
pub const TARGET_VCPU_PER_1000_RPS: f64 = 0.08;
/// Istio's published figure for its Envoy waypoint (1.24: 1000 HTTP requests/s of 1 KB, 2
/// worker threads): vCPU, and memory in MB.
pub const ISTIO_WAYPOINT_VCPU_PER_1000_RPS: f64 = 0.25;
pub const ISTIO_WAYPOINT_MB: f64 = 60.0;
/// The added p50 through the waypoint may be at most this many node-proxy hops.
pub const TARGET_ADDED_P50_HOPS: f64 = 2.0;

/// The three paths, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// Capture rules off: the client straight to the server pod.
    Raw,
    /// Node proxies on, a service without a waypoint: two node-proxy hops.
    L4,
    /// Node proxies on, a service bound to the waypoint: node proxy → waypoint → node proxy.
    Waypoint,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Raw, Path::L4, Path::Waypoint];

    pub fn name(self) -> &'static str {
        match self {
            Path::Raw => "raw",
            Path::L4 => "l4",
            Path::Waypoint => "waypoint",
        }
    }
}

/// The client's protocol (and, through the Service port's name, the waypoint's upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Http1,
    /// h2c with prior knowledge.
    Http2,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// CPU used during one load phase: wall time, requests answered, and CPU seconds of the
/// waypoint, of the node proxies (all nodes summed) and of the whole machine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    pub wall_s: f64,
    pub requests: u64,
    pub waypoint_s: Option<f64>,
    pub node_proxies_s: Option<f64>,
    pub machine_s: Option<f64>,
}

/// One round's measurements of one path and protocol.
#[derive(Debug, Clone, Default)]
pub struct L7Sample {
    /// Closed loop, 1 request in flight.
    pub c1: Percentiles,
    /// Closed loop, 8 in flight (8 connections; HTTP/2: 8 streams on 1 connection).
    pub c8: Percentiles,
    /// Fixed rate, latency from each request's scheduled time.
    pub fixed: Percentiles,
    pub fixed_rps: f64,
    pub fixed_cpu: CpuSample,
    /// Closed loop, 16 in flight (16 connections; HTTP/2: 2 connections × 8 streams).
    pub saturated: Percentiles,
    pub saturated_rps: f64,
    pub saturated_cpu: CpuSample,
    /// The waypoint's resident memory after the phases (waypoint path only).
    pub waypoint_rss_bytes: Option<f64>,
    /// CPU with no requests at all, for a while after the latency phases (meshed paths).
    pub idle_cpu: Option<CpuSample>,
}

/// `cpu_s / wall_s`: the vCPU a process keeps busy.
pub fn vcpu(cpu_s: f64, wall_s: f64) -> Option<f64> {
    (wall_s > 0.0 && cpu_s.is_finite()).then(|| cpu_s / wall_s)
}

/// `(cpu_s / wall_s) / (requests/s / 1000)`: the vCPU a process keeps busy per 1000
/// requests/s. The wall time cancels out: it is also CPU seconds per 1000 requests.
pub fn vcpu_per_1000_rps(cpu_s: f64, wall_s: f64, requests: u64) -> Option<f64> {
    if wall_s.is_nan() || wall_s <= 0.0 || requests == 0 || !cpu_s.is_finite() {
        return None;
    }
    let rps = requests as f64 / wall_s;
    Some((cpu_s / wall_s) / (rps / 1000.0))
}

/// Medians over rounds of one path and protocol.
#[derive(Debug, Clone, Default, Serialize)]
pub struct L7PathResult {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Requests/s, closed loop, 16 in flight.
    pub rps: Option<Summary>,
    /// Latency with 1 request in flight, µs.
    pub p50_us: Option<Summary>,
    pub p99_us: Option<Summary>,
    /// With 8 in flight.
    pub p50_8_us: Option<Summary>,
    pub p99_8_us: Option<Summary>,
    /// At the fixed rate (from each request's scheduled time).
    pub fixed_rate_rps: Option<Summary>,
    pub fixed_rate_p50_us: Option<Summary>,
    pub fixed_rate_p99_us: Option<Summary>,
    /// With 16 in flight (the requests/s phase).
    pub saturated_p50_us: Option<Summary>,
    pub saturated_p99_us: Option<Summary>,
    /// The waypoint's vCPU per 1000 requests/s at the fixed rate, and saturated.
    pub waypoint_vcpu_per_1000_rps: Option<Summary>,
    pub waypoint_vcpu_per_1000_rps_saturated: Option<Summary>,
    /// The node proxies' (all nodes summed), the same way.
    pub node_proxies_vcpu_per_1000_rps: Option<Summary>,
    pub node_proxies_vcpu_per_1000_rps_saturated: Option<Summary>,
    /// The whole machine's busy CPU per 1000 requests/s, saturated (apps, proxies, kernel).
    pub machine_vcpu_per_1000_rps_saturated: Option<Summary>,
    pub waypoint_rss_bytes: Option<Summary>,
    /// vCPU with no requests: the waypoint's (waypoint path) and the node proxies'.
    pub waypoint_idle_vcpu: Option<Summary>,
    pub node_proxies_idle_vcpu: Option<Summary>,
    /// Figures a round measured too little of to mean anything (field name → why); their
    /// values are still given.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_meaningful: BTreeMap<String, String>,
}

impl L7PathResult {
    /// The medians of `samples` (one per round); no samples → not valid.
    pub fn of(samples: &[L7Sample]) -> L7PathResult {
        let sum = |f: &dyn Fn(&L7Sample) -> Option<f64>| {
            Summary::of(&samples.iter().filter_map(f).collect::<Vec<_>>())
        };
        let pct = |f: fn(&L7Sample) -> &Percentiles, q: fn(&Percentiles) -> f64| {
            sum(&|s: &L7Sample| Some(f(s)).filter(|p| p.count > 0).map(q))
        };
        let cpu = |f: fn(&L7Sample) -> CpuSample, who: fn(&CpuSample) -> Option<f64>| {
            sum(&|s: &L7Sample| {
                let c = f(s);
                who(&c).and_then(|x| vcpu_per_1000_rps(x, c.wall_s, c.requests))
            })
        };
        let idle = |who: fn(&CpuSample) -> Option<f64>| {
            sum(&|s: &L7Sample| {
                let c = s.idle_cpu?;
                who(&c).and_then(|x| vcpu(x, c.wall_s))
            })
        };
        L7PathResult {
            valid: !samples.is_empty(),
            invalid_reason: None,
            rps: sum(&|s| Some(s.saturated_rps).filter(|r| *r > 0.0)),
            p50_us: pct(|s| &s.c1, |p| p.p50),
            p99_us: pct(|s| &s.c1, |p| p.p99),
            p50_8_us: pct(|s| &s.c8, |p| p.p50),
            p99_8_us: pct(|s| &s.c8, |p| p.p99),
            fixed_rate_rps: sum(&|s| Some(s.fixed_rps).filter(|r| *r > 0.0)),
            fixed_rate_p50_us: pct(|s| &s.fixed, |p| p.p50),
            fixed_rate_p99_us: pct(|s| &s.fixed, |p| p.p99),
            saturated_p50_us: pct(|s| &s.saturated, |p| p.p50),
            saturated_p99_us: pct(|s| &s.saturated, |p| p.p99),
            waypoint_vcpu_per_1000_rps: cpu(|s| s.fixed_cpu, |c| c.waypoint_s),
            waypoint_vcpu_per_1000_rps_saturated: cpu(|s| s.saturated_cpu, |c| c.waypoint_s),
            node_proxies_vcpu_per_1000_rps: cpu(|s| s.fixed_cpu, |c| c.node_proxies_s),
            node_proxies_vcpu_per_1000_rps_saturated: cpu(
                |s| s.saturated_cpu,
                |c| c.node_proxies_s,
            ),
            machine_vcpu_per_1000_rps_saturated: cpu(|s| s.saturated_cpu, |c| c.machine_s),
            waypoint_rss_bytes: sum(&|s| s.waypoint_rss_bytes),
            waypoint_idle_vcpu: idle(|c| c.waypoint_s),
            node_proxies_idle_vcpu: idle(|c| c.node_proxies_s),
            not_meaningful: BTreeMap::new(),
        }
    }

    /// The figures of this path that one round of `sizes` measured too little of.
    pub fn not_meaningful(&self, sizes: &L7Sizes) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let fixed = sizes.fixed_rate_per_s as f64 * sizes.fixed_rate_s;
        let saturated = self.rps.map_or(0.0, |r| r.median * sizes.saturated_s);
        // Requests a round had behind each percentile (the rounds are not pooled here).
        let tails: [(&str, f64, f64); 8] = [
            ("p50_us", sizes.c1_requests as f64, 0.5),
            ("p99_us", sizes.c1_requests as f64, 0.99),
            ("p50_8_us", sizes.c8_requests as f64, 0.5),
            ("p99_8_us", sizes.c8_requests as f64, 0.99),
            ("fixed_rate_p50_us", fixed, 0.5),
            ("fixed_rate_p99_us", fixed, 0.99),
            ("saturated_p50_us", saturated, 0.5),
            ("saturated_p99_us", saturated, 0.99),
        ];
        for (key, count, q) in tails {
            if count > 0.0 && !percentile_meaningful(count as u64, q) {
                out.insert(
                    key.to_string(),
                    format!(
                        "not meaningful: {:.0} of {count:.0} requests a round beyond it, needs ≥ {MIN_SAMPLES_BEYOND:.0}",
                        count * (1.0 - q)
                    ),
                );
            }
        }
        // CPU per 1000 requests: what a round divided, in /proc's 10 ms ticks.
        let cpu: [(&str, Option<Summary>, f64); 5] = [
            (
                "waypoint_vcpu_per_1000_rps",
                self.waypoint_vcpu_per_1000_rps,
                fixed,
            ),
            (
                "waypoint_vcpu_per_1000_rps_saturated",
                self.waypoint_vcpu_per_1000_rps_saturated,
                saturated,
            ),
            (
                "node_proxies_vcpu_per_1000_rps",
                self.node_proxies_vcpu_per_1000_rps,
                fixed,
            ),
            (
                "node_proxies_vcpu_per_1000_rps_saturated",
                self.node_proxies_vcpu_per_1000_rps_saturated,
                saturated,
            ),
            (
                "machine_vcpu_per_1000_rps_saturated",
                self.machine_vcpu_per_1000_rps_saturated,
                saturated,
            ),
        ];
        for (key, per, requests) in cpu {
            let Some(per) = per else { continue };
            let cpu_s = per.median * requests / 1000.0;
            if requests > 0.0 && !cpu_meaningful(cpu_s) {
                out.insert(
                    key.to_string(),
                    format!(
                        "not meaningful: {:.0} CPU ticks a round, needs ≥ {MIN_CPU_TICKS:.0}",
                        cpu_s / CPU_TICK_S
                    ),
                );
            }
        }
        out
    }

    /// A path that could not be measured.
    pub fn invalid(why: &str) -> L7PathResult {
        L7PathResult {
            valid: false,
            invalid_reason: Some(why.to_string()),
            ..Default::default()
        }
    }
}

/// The figures the issue sets targets for, for one protocol.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct L7Targets {
    /// One node-proxy hop's p50: (p50(l4) − p50(raw)) / 2, 1 request in flight (the l4 path
    /// crosses two node proxies: the source's and the destination's).
    pub hop_p50_us: Option<f64>,
    /// What the waypoint adds: p50(waypoint) − p50(l4), 1 request in flight.
    pub added_p50_us: Option<f64>,
    /// added / hop; the target is ≤ [`TARGET_ADDED_P50_HOPS`].
    pub added_p50_in_hops: Option<f64>,
    pub latency_target_met: Option<bool>,
    /// The waypoint's vCPU per 1000 requests/s at the fixed rate (Istio's way of measuring);
    /// the target is ≤ [`TARGET_VCPU_PER_1000_RPS`].
    pub waypoint_vcpu_per_1000_rps: Option<f64>,
    /// The same with 16 requests in flight (the machine saturated).
    pub waypoint_vcpu_per_1000_rps_saturated: Option<f64>,
    pub cpu_target_met: Option<bool>,
    pub waypoint_rss_mb: Option<f64>,
}

/// The targets' figures from the paths' medians (µs, vCPU, bytes).
pub fn targets(
    raw_p50: Option<f64>,
    l4_p50: Option<f64>,
    waypoint_p50: Option<f64>,
    vcpu: Option<f64>,
    vcpu_saturated: Option<f64>,
    rss_bytes: Option<f64>,
) -> L7Targets {
    let hop = l4_p50.zip(raw_p50).map(|(l4, raw)| (l4 - raw) / 2.0);
    let added = waypoint_p50.zip(l4_p50).map(|(w, l4)| w - l4);
    // A hop that costs nothing (or less than nothing, noise) gives no meaningful ratio.
    let in_hops = added.zip(hop.filter(|h| *h > 0.0)).map(|(a, h)| a / h);
    L7Targets {
        hop_p50_us: hop,
        added_p50_us: added,
        added_p50_in_hops: in_hops,
        latency_target_met: in_hops.map(|r| r <= TARGET_ADDED_P50_HOPS),
        waypoint_vcpu_per_1000_rps: vcpu,
        waypoint_vcpu_per_1000_rps_saturated: vcpu_saturated,
        cpu_target_met: vcpu.map(|v| v <= TARGET_VCPU_PER_1000_RPS),
        waypoint_rss_mb: rss_bytes.map(|b| b / 1e6),
    }
}

/// One protocol's paths and targets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct L7Protocol {
    /// By path name (`raw`, `l4`, `waypoint`).
    pub paths: BTreeMap<String, L7PathResult>,
    pub targets: L7Targets,
}

/// How much load each phase put on a path.
#[derive(Debug, Clone, Default, Serialize)]
pub struct L7Sizes {
    pub response_bytes: usize,
    pub c1_requests: u64,
    pub c8_requests: u64,
    pub fixed_rate_per_s: u64,
    pub fixed_rate_s: f64,
    pub saturated_in_flight: usize,
    pub saturated_s: f64,
}

/// Everything `ringmesh bench --l7` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct L7Report {
    pub rounds: usize,
    /// Where the waypoint ran (the client is on node-a, the server on node-b).
    pub waypoint_node: String,
    pub sizes: L7Sizes,
    /// By protocol key (`http1`, `http2`).
    pub protocols: BTreeMap<String, L7Protocol>,
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn median(s: Option<Summary>) -> Option<f64> {
    s.map(|s| s.median)
}

/// A table cell: the median × `scale`, how far the rounds lay from it, why it is not
/// meaningful.
fn cell(s: Option<Summary>, scale: f64, digits: usize, not_meaningful: Option<&String>) -> String {
    let Some(s) = s else {
        return "–".into();
    };
    let scaled = Summary {
        median: s.median * scale,
        min: s.min * scale,
        max: s.max * scale,
        n: s.n,
    };
    let mut out = scaled.show(scaled.median, digits);
    if let Some(why) = not_meaningful {
        let _ = write!(out, " ({why})");
    }
    out
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "–",
    }
}

impl L7Report {
    /// Puts one protocol's path result in.
    pub fn insert(&mut self, proto: Protocol, path: Path, r: L7PathResult) {
        self.protocols
            .entry(proto.key().to_string())
            .or_default()
            .paths
            .insert(path.name().to_string(), r);
    }

    /// Marks what each path measured too little of, and fills every protocol's targets
    /// from its valid paths.
    pub fn derive(&mut self) {
        for p in self.protocols.values_mut() {
            for r in p.paths.values_mut() {
                r.not_meaningful = r.not_meaningful(&self.sizes);
            }
            let get = |path: Path| p.paths.get(path.name()).filter(|r| r.valid);
            let p50 = |path: Path| get(path).and_then(|r| median(r.p50_us));
            let wp = get(Path::Waypoint);
            p.targets = targets(
                p50(Path::Raw),
                p50(Path::L4),
                p50(Path::Waypoint),
                wp.and_then(|r| median(r.waypoint_vcpu_per_1000_rps)),
                wp.and_then(|r| median(r.waypoint_vcpu_per_1000_rps_saturated)),
                wp.and_then(|r| median(r.waypoint_rss_bytes)),
            );
        }
    }

    /// The Markdown section: a table per path and protocol, then the targets.
    pub fn markdown(&self) -> String {
        let s = &self.sizes;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### L7: HTTP through the waypoint ({} B answers, medians of {} rounds; ±: the farthest a round lay from the median; (n=1): measured once)\n",
            s.response_bytes, self.rounds
        );
        let _ = writeln!(
            out,
            "raw: client-a → server-b, no mesh. l4: client-a → node-a proxy → HBONE → node-b \
             proxy → server-b (a service without a waypoint). waypoint: client-a → node-a proxy \
             → HBONE → waypoint (on {}) → HBONE → node-b proxy → server-b.\n",
            self.waypoint_node
        );
        let cols: Vec<(Protocol, Path)> = Protocol::ALL
            .iter()
            .flat_map(|pr| Path::ALL.iter().map(move |pa| (*pr, *pa)))
            .collect();
        let _ = write!(out, "| metric |");
        for (pr, pa) in &cols {
            let r = self.result(*pr, *pa);
            let bad = if r.is_some_and(|r| !r.valid) {
                " (INVALID)"
            } else {
                ""
            };
            let _ = write!(out, " {} {}{bad} |", pr.label(), pa.name());
        }
        out.push('\n');
        out.push_str(&"|---".repeat(1 + cols.len()));
        out.push_str("|\n");
        type Get = fn(&L7PathResult) -> Option<Summary>;
        // Label, field name (the key of `not_meaningful`), figure, scale, digits.
        let rows: Vec<(String, &str, Get, f64, usize)> = vec![
            (
                format!("requests/s, {} in flight", s.saturated_in_flight),
                "rps",
                |r| r.rps,
                1.0,
                0,
            ),
            ("p50 µs, 1 in flight".into(), "p50_us", |r| r.p50_us, 1.0, 0),
            ("p99 µs, 1 in flight".into(), "p99_us", |r| r.p99_us, 1.0, 0),
            (
                "p50 µs, 8 in flight".into(),
                "p50_8_us",
                |r| r.p50_8_us,
                1.0,
                0,
            ),
            (
                "p99 µs, 8 in flight".into(),
                "p99_8_us",
                |r| r.p99_8_us,
                1.0,
                0,
            ),
            (
                format!("p50 µs at {} req/s", s.fixed_rate_per_s),
                "fixed_rate_p50_us",
                |r| r.fixed_rate_p50_us,
                1.0,
                0,
            ),
            (
                format!("p99 µs at {} req/s", s.fixed_rate_per_s),
                "fixed_rate_p99_us",
                |r| r.fixed_rate_p99_us,
                1.0,
                0,
            ),
            (
                format!("p50 µs, {} in flight", s.saturated_in_flight),
                "saturated_p50_us",
                |r| r.saturated_p50_us,
                1.0,
                0,
            ),
            (
                format!("p99 µs, {} in flight", s.saturated_in_flight),
                "saturated_p99_us",
                |r| r.saturated_p99_us,
                1.0,
                0,
            ),
            (
                format!(
                    "waypoint vCPU per 1000 req/s, at {} req/s",
                    s.fixed_rate_per_s
                ),
                "waypoint_vcpu_per_1000_rps",
                |r| r.waypoint_vcpu_per_1000_rps,
                1.0,
                3,
            ),
            (
                "waypoint vCPU per 1000 req/s, saturated".into(),
                "waypoint_vcpu_per_1000_rps_saturated",
                |r| r.waypoint_vcpu_per_1000_rps_saturated,
                1.0,
                3,
            ),
            (
                format!(
                    "node proxies vCPU per 1000 req/s, at {} req/s",
                    s.fixed_rate_per_s
                ),
                "node_proxies_vcpu_per_1000_rps",
                |r| r.node_proxies_vcpu_per_1000_rps,
                1.0,
                3,
            ),
            (
                "node proxies vCPU per 1000 req/s, saturated".into(),
                "node_proxies_vcpu_per_1000_rps_saturated",
                |r| r.node_proxies_vcpu_per_1000_rps_saturated,
                1.0,
                3,
            ),
            (
                "waypoint vCPU idle".into(),
                "waypoint_idle_vcpu",
                |r| r.waypoint_idle_vcpu,
                1.0,
                3,
            ),
            (
                "node proxies vCPU idle".into(),
                "node_proxies_idle_vcpu",
                |r| r.node_proxies_idle_vcpu,
                1.0,
                3,
            ),
            (
                "machine vCPU per 1000 req/s, saturated".into(),
                "machine_vcpu_per_1000_rps_saturated",
                |r| r.machine_vcpu_per_1000_rps_saturated,
                1.0,
                3,
            ),
            (
                "waypoint RSS after, MB".into(),
                "waypoint_rss_bytes",
                |r| r.waypoint_rss_bytes,
                1e-6,
                1,
            ),
        ];
        for (label, key, get, scale, digits) in &rows {
            let _ = write!(out, "| {label} |");
            for (pr, pa) in &cols {
                let v = match self.result(*pr, *pa).filter(|r| r.valid) {
                    Some(r) => cell(get(r), *scale, *digits, r.not_meaningful.get(*key)),
                    None => "–".into(),
                };
                let _ = write!(out, " {v} |");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\n| against the targets | {} | {} | target |",
            Protocol::Http1.label(),
            Protocol::Http2.label()
        );
        out.push_str("|---|---|---|---|\n");
        let t = |pr: Protocol| {
            self.protocols
                .get(pr.key())
                .map(|p| p.targets.clone())
                .unwrap_or_default()
        };
        let (t1, t2) = (t(Protocol::Http1), t(Protocol::Http2));
        let _ = writeln!(
            out,
            "| one node-proxy hop, p50 µs: (l4 − raw) / 2 | {} | {} | |",
            f(t1.hop_p50_us, 1),
            f(t2.hop_p50_us, 1)
        );
        let _ = writeln!(
            out,
            "| added through the waypoint, p50 µs: waypoint − l4 | {} | {} | |",
            f(t1.added_p50_us, 1),
            f(t2.added_p50_us, 1)
        );
        let _ = writeln!(
            out,
            "| added / one hop | {} ({}) | {} ({}) | ≤ {TARGET_ADDED_P50_HOPS:.0} |",
            f(t1.added_p50_in_hops, 2),
            verdict(t1.latency_target_met),
            f(t2.added_p50_in_hops, 2),
            verdict(t2.latency_target_met)
        );
        // A verdict on a figure too few CPU ticks made says so.
        let cpu_verdict = |pr: Protocol, met: Option<bool>| {
            let thin = self
                .result(pr, Path::Waypoint)
                .is_some_and(|r| r.not_meaningful.contains_key("waypoint_vcpu_per_1000_rps"));
            let v = verdict(met);
            if thin && met.is_some() {
                format!("{v}, not meaningful: too few CPU ticks")
            } else {
                v.to_string()
            }
        };
        let _ = writeln!(
            out,
            "| waypoint vCPU per 1000 req/s, at {} req/s | {} ({}) | {} ({}) | ≤ {TARGET_VCPU_PER_1000_RPS} (Istio's Envoy waypoint ≈ {ISTIO_WAYPOINT_VCPU_PER_1000_RPS}) |",
            s.fixed_rate_per_s,
            f(t1.waypoint_vcpu_per_1000_rps, 3),
            cpu_verdict(Protocol::Http1, t1.cpu_target_met),
            f(t2.waypoint_vcpu_per_1000_rps, 3),
            cpu_verdict(Protocol::Http2, t2.cpu_target_met)
        );
        let _ = writeln!(
            out,
            "| waypoint vCPU per 1000 req/s, saturated | {} | {} | |",
            f(t1.waypoint_vcpu_per_1000_rps_saturated, 3),
            f(t2.waypoint_vcpu_per_1000_rps_saturated, 3)
        );
        let _ = writeln!(
            out,
            "| waypoint RSS, MB | {} | {} | (Istio's ≈ {ISTIO_WAYPOINT_MB:.0}) |",
            f(t1.waypoint_rss_mb, 1),
            f(t2.waypoint_rss_mb, 1)
        );
        for (pr, pa) in &cols {
            if let Some(why) = self
                .result(*pr, *pa)
                .and_then(|r| r.invalid_reason.as_ref())
            {
                let _ = writeln!(out, "\n{} {} is INVALID: {why}", pr.label(), pa.name());
            }
        }
        out
    }

    fn result(&self, proto: Protocol, path: Path) -> Option<&L7PathResult> {
        self.protocols.get(proto.key())?.paths.get(path.name())
    }
}

#[cfg(test)]
#[path = "l7_report_tests.rs"]
mod tests;
