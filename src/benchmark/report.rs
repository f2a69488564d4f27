//! Benchmark results and their renderings: the JSON the issue tracker and CI read, a Markdown
//! table with ratios, and SVG plots (latency percentiles on a log axis, throughput bars). Pure.
//!
//! Every figure measured over rounds is printed with how far the rounds lay from it; a figure
//! the run measured too little of to mean anything (too few idle tunnels for RSS noise to
//! vanish, too few CPU ticks, too few samples beyond a percentile) keeps its value but is
//! marked, in the table and in the JSON (`not_meaningful`), and has no ratio.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::l7_report::L7Report;
use super::stats::{
    CPU_TICK_S, MIN_CPU_TICKS, MIN_SAMPLES_BEYOND, Percentiles, Summary, cpu_meaningful,
    percentile_meaningful, ratio,
};

/// Fewer idle tunnels than this and the node proxies' RSS growth is mostly noise that does not
/// scale with the tunnels: at 300 tunnels the stored runs were 1–10 MB off what the per-tunnel
/// cost explains (bench/README.md, "Quick mode"), ≤ 10 % of the growth only from ≈ 100 MB on,
/// which ≈ 20 KB a tunnel reaches at 5000.
pub const MIN_TUNNELS_FOR_MEMORY: usize = 5000;

/// Everything one `ringmesh bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BenchReport {
    pub contenders: BTreeMap<String, ContenderResult>,
    pub machine: Machine,
    pub command: String,
    /// Contenders in the order they ran each round.
    pub order: Vec<String>,
    pub quick: bool,
    pub rounds: usize,
    /// How much of each workload a round ran (the L4 bench).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sizes: Option<L4Sizes>,
    /// `ringmesh bench --l7`: HTTP through the waypoint, l4 and raw.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub l7: Option<L7Report>,
}

/// How much of each workload one round ran: what the figures' meaning depends on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct L4Sizes {
    pub bulk_1_bytes: u64,
    pub bulk_8_bytes_each: u64,
    /// Closed-loop round trips per request/response test.
    pub rr_requests: usize,
    pub fixed_rate_per_s: u64,
    pub fixed_rate_s: f64,
    pub conn_s: f64,
    pub tunnels: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub cpu_model: String,
}

/// One contender's headline figures (medians) and the details behind them.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ContenderResult {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// 1 stream, cross node, Gb/s.
    pub bulk_1_gbps: Option<f64>,
    /// 8 streams, cross node, Gb/s.
    pub bulk_8_gbps: Option<f64>,
    /// 1 KiB request/response, closed loop, cross node.
    pub rr_p50_us: Option<f64>,
    pub rr_p99_us: Option<f64>,
    /// New short connections per second (cross node, 1 byte each way).
    pub conn_per_s: Option<f64>,
    /// Node proxies' RSS growth per idle tunnel.
    pub bytes_per_tunnel: Option<f64>,
    /// Node proxies' CPU seconds per GB of 1-stream bulk.
    pub cpu_s_per_gb: Option<f64>,
    /// Figures this run measured too little of to mean anything, by their JSON path
    /// (`bytes_per_tunnel`, `detail.cpu_s_per_1000_req`, `detail.rr_1k_us.p999`, …) → why.
    /// Their values are still given.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_meaningful: BTreeMap<String, String>,
    pub detail: Detail,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Detail {
    pub bulk_1_same_gbps: Option<Summary>,
    pub bulk_1_cross_gbps: Option<Summary>,
    pub bulk_8_same_gbps: Option<Summary>,
    pub bulk_8_cross_gbps: Option<Summary>,
    /// One stream to a pod outside the mesh (plain passthrough, the client's node proxy
    /// only), and the proxies' CPU per GB during it.
    pub passthrough_1_gbps: Option<Summary>,
    pub passthrough_cpu_s_per_gb: Option<Summary>,
    /// Percentiles of every round's requests pooled.
    pub rr_1b_us: Option<Percentiles>,
    pub rr_1k_us: Option<Percentiles>,
    pub rr_fixed_rate_us: Option<Percentiles>,
    /// 1 KiB p50 and p99 of each round on its own: how far the rounds lay from the pooled
    /// figures.
    pub rr_1k_p50_us: Option<Summary>,
    pub rr_1k_p99_us: Option<Summary>,
    pub fixed_rate_per_s: Option<f64>,
    pub conn_per_s: Option<Summary>,
    pub rss_idle_bytes: Option<f64>,
    pub rss_with_tunnels_bytes: Option<f64>,
    pub tunnels: Option<usize>,
    /// Each round's (RSS with the tunnels − RSS before) / tunnels; its median is
    /// `bytes_per_tunnel`.
    pub bytes_per_tunnel: Option<Summary>,
    pub cpu_s_per_gb: Option<Summary>,
    /// The user-space part of `cpu_s_per_gb` (the rest is the proxies' kernel time).
    pub user_cpu_s_per_gb: Option<Summary>,
    /// Every CPU's busy time per GB during the same transfer: apps, proxies and the kernel's
    /// packet path (softirqs included). Throughput is bounded by CPUs / this when
    /// `machine_busy` is near 1.
    pub machine_cpu_s_per_gb: Option<Summary>,
    /// Fraction of the machine's CPUs busy during that transfer (0–1).
    pub machine_busy: Option<Summary>,
    pub cpu_s_per_1000_req: Option<Summary>,
    /// Times the node proxies' io_uring buffer rings ran dry (`ringmesh_uring_buffer_exhausted`)
    /// during the two 8-stream transfers; none for a proxy without that counter.
    pub ring_exhausted_8_streams: Option<Summary>,
    /// rr p50/p99 minus raw's, per proxy hop (two hops per path).
    pub added_p50_us_per_hop: Option<f64>,
    pub added_p99_us_per_hop: Option<f64>,
}

/// A figure as the table shows it: its value and, when it was measured over rounds, the
/// rounds' own values.
type Fig = (Option<f64>, Option<Summary>);

/// The L4 table's rows: label, JSON path (the key of `not_meaningful`), the figure, digits.
type Row = (
    &'static str,
    &'static str,
    fn(&ContenderResult) -> Fig,
    usize,
);

fn median(s: Option<Summary>) -> Fig {
    (s.map(|s| s.median), s)
}

fn scaled(s: Option<Summary>, k: f64) -> Option<Summary> {
    s.map(|s| Summary {
        median: s.median * k,
        min: s.min * k,
        max: s.max * k,
        n: s.n,
    })
}

const ROWS: [Row; 16] = [
    (
        "bulk 1 stream cross node, Gb/s",
        "bulk_1_gbps",
        |c| (c.bulk_1_gbps, c.detail.bulk_1_cross_gbps),
        2,
    ),
    (
        "bulk 1 stream same node, Gb/s",
        "detail.bulk_1_same_gbps",
        |c| median(c.detail.bulk_1_same_gbps),
        2,
    ),
    (
        "bulk 8 streams cross node, Gb/s",
        "bulk_8_gbps",
        |c| (c.bulk_8_gbps, c.detail.bulk_8_cross_gbps),
        2,
    ),
    (
        "bulk 8 streams same node, Gb/s",
        "detail.bulk_8_same_gbps",
        |c| median(c.detail.bulk_8_same_gbps),
        2,
    ),
    (
        "plain passthrough 1 stream, Gb/s",
        "detail.passthrough_1_gbps",
        |c| median(c.detail.passthrough_1_gbps),
        2,
    ),
    (
        "1 KiB rr p50, µs",
        "rr_p50_us",
        |c| (c.rr_p50_us, c.detail.rr_1k_p50_us),
        0,
    ),
    (
        "1 KiB rr p99, µs",
        "rr_p99_us",
        |c| (c.rr_p99_us, c.detail.rr_1k_p99_us),
        0,
    ),
    (
        "new connections / s",
        "conn_per_s",
        |c| (c.conn_per_s, c.detail.conn_per_s),
        0,
    ),
    (
        "bytes per idle tunnel",
        "bytes_per_tunnel",
        |c| (c.bytes_per_tunnel, c.detail.bytes_per_tunnel),
        0,
    ),
    (
        "proxy CPU s per GB",
        "cpu_s_per_gb",
        |c| (c.cpu_s_per_gb, c.detail.cpu_s_per_gb),
        3,
    ),
    (
        "proxy user-space CPU s per GB",
        "detail.user_cpu_s_per_gb",
        |c| median(c.detail.user_cpu_s_per_gb),
        3,
    ),
    (
        "machine CPU s per GB",
        "detail.machine_cpu_s_per_gb",
        |c| median(c.detail.machine_cpu_s_per_gb),
        3,
    ),
    (
        "machine busy during bulk 1 stream, %",
        "detail.machine_busy",
        |c| median(scaled(c.detail.machine_busy, 100.0)),
        0,
    ),
    (
        "proxy CPU s per GB, plain passthrough",
        "detail.passthrough_cpu_s_per_gb",
        |c| median(c.detail.passthrough_cpu_s_per_gb),
        3,
    ),
    (
        "proxy CPU s per 1000 req",
        "detail.cpu_s_per_1000_req",
        |c| median(c.detail.cpu_s_per_1000_req),
        4,
    ),
    (
        "buffer ring ran dry during 8 streams, times",
        "detail.ring_exhausted_8_streams",
        |c| median(c.detail.ring_exhausted_8_streams),
        0,
    ),
];

/// The value of a counter in a Prometheus text exposition (`name` or `name_total`, summed
/// over its label sets); None when it is not there.
pub fn counter(text: &str, name: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = rest.strip_prefix("_total").unwrap_or(rest);
        let value = match rest.chars().next() {
            Some(' ') => rest,
            Some('{') => rest.split_once('}').map_or("", |(_, v)| v),
            _ => continue,
        };
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            total = Some(total.unwrap_or(0) + v as u64);
        }
    }
    total
}

/// A table cell: the value, how far the rounds lay from it, and why it is not meaningful.
fn cell(fig: Fig, digits: usize, not_meaningful: Option<&String>) -> String {
    let Some(v) = fig.0 else {
        return "–".into();
    };
    let mut s = match fig.1 {
        Some(rounds) => rounds.show(v, digits),
        None => format!("{v:.digits$}"),
    };
    if let Some(why) = not_meaningful {
        let _ = write!(s, " ({why})");
    }
    s
}

/// The figures of one contender that this run measured too little of (JSON path → why).
pub fn not_meaningful(
    c: &ContenderResult,
    sizes: Option<&L4Sizes>,
    quick: bool,
) -> BTreeMap<String, String> {
    let hint = if quick { "; run without --quick" } else { "" };
    let d = &c.detail;
    let mut out = BTreeMap::new();
    if let (Some(_), Some(n)) = (c.bytes_per_tunnel, d.tunnels)
        && n < MIN_TUNNELS_FOR_MEMORY
    {
        out.insert(
            "bytes_per_tunnel".into(),
            format!("not meaningful at {n} tunnels, needs ≥ {MIN_TUNNELS_FOR_MEMORY}{hint}"),
        );
    }
    // CPU figures: what one round divided, in /proc's 10 ms ticks.
    let gb = sizes.map_or(0.0, |s| s.bulk_1_bytes as f64 / 1e9);
    let thousands = sizes.map_or(0.0, |s| s.rr_requests as f64 / 1000.0);
    let machine = d.machine_cpu_s_per_gb.map(|s| s.median);
    let cpu: [(&str, Option<f64>, f64); 6] = [
        ("cpu_s_per_gb", c.cpu_s_per_gb, gb),
        (
            "detail.user_cpu_s_per_gb",
            d.user_cpu_s_per_gb.map(|s| s.median),
            gb,
        ),
        ("detail.machine_cpu_s_per_gb", machine, gb),
        // The busy fraction is those same machine ticks over the transfer's wall time.
        (
            "detail.machine_busy",
            machine.filter(|_| d.machine_busy.is_some()),
            gb,
        ),
        (
            "detail.passthrough_cpu_s_per_gb",
            d.passthrough_cpu_s_per_gb.map(|s| s.median),
            gb,
        ),
        (
            "detail.cpu_s_per_1000_req",
            d.cpu_s_per_1000_req.map(|s| s.median),
            thousands,
        ),
    ];
    for (key, per, amount) in cpu {
        if let Some(per) = per
            && amount > 0.0
            && !cpu_meaningful(per * amount)
        {
            out.insert(
                key.into(),
                format!(
                    "not meaningful: {:.0} CPU ticks a round, needs ≥ {MIN_CPU_TICKS:.0}{hint}",
                    per * amount / CPU_TICK_S
                ),
            );
        }
    }
    // Tails: at least MIN_SAMPLES_BEYOND samples beyond the percentile, all rounds pooled.
    let pcts = [
        ("rr_1b_us", d.rr_1b_us),
        ("rr_1k_us", d.rr_1k_us),
        ("rr_fixed_rate_us", d.rr_fixed_rate_us),
    ];
    for (name, p) in pcts {
        let Some(p) = p else { continue };
        for (q_name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            if !percentile_meaningful(p.count, q) {
                let why = format!(
                    "not meaningful: {:.0} of {} samples beyond it, needs ≥ {MIN_SAMPLES_BEYOND:.0}{hint}",
                    p.count as f64 * (1.0 - q),
                    p.count
                );
                if name == "rr_1k_us" && q_name == "p50" {
                    out.insert("rr_p50_us".into(), why.clone());
                }
                if name == "rr_1k_us" && q_name == "p99" {
                    out.insert("rr_p99_us".into(), why.clone());
                }
                out.insert(format!("detail.{name}.{q_name}"), why);
            }
        }
    }
    out
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

impl BenchReport {
    /// Fills the per-hop added latency of every contender against `raw`, and marks the
    /// figures this run measured too little of.
    pub fn derive(&mut self) {
        let raw = self
            .contenders
            .get("raw")
            .map(|r| (r.rr_p50_us, r.rr_p99_us));
        if let Some((p50, p99)) = raw {
            for (name, c) in self.contenders.iter_mut() {
                if name != "raw" {
                    c.detail.added_p50_us_per_hop =
                        c.rr_p50_us.zip(p50).map(|(a, b)| (a - b) / 2.0);
                    c.detail.added_p99_us_per_hop =
                        c.rr_p99_us.zip(p99).map(|(a, b)| (a - b) / 2.0);
                }
            }
        }
        for c in self.contenders.values_mut() {
            c.not_meaningful = not_meaningful(c, self.sizes.as_ref(), self.quick);
        }
    }

    /// The Markdown: the L4 table (when contenders ran), then the L7 section (when it ran).
    pub fn markdown(&self) -> String {
        let mut out = if self.order.is_empty() {
            String::new()
        } else {
            self.markdown_l4()
        };
        if let Some(l7) = &self.l7 {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&l7.markdown());
        }
        out
    }

    /// The L4 table: one column per contender, then ringmesh / each other.
    fn markdown_l4(&self) -> String {
        let names: Vec<&String> = self.order.iter().collect();
        let others: Vec<&String> = names
            .iter()
            .copied()
            .filter(|n| n.as_str() != "ringmesh")
            .collect();
        let mut out = String::new();
        let _ = write!(
            out,
            "Medians of {} round{} (1 KiB rr: percentiles of all rounds' requests pooled); \
             ±: the farthest a round lay from the figure; (n=1): measured once.",
            self.rounds,
            if self.rounds == 1 { "" } else { "s" }
        );
        if let Some(z) = &self.sizes {
            let _ = write!(
                out,
                " A round: 1 stream of {} MiB, 8 of {} MiB, {} round trips, {} idle tunnels.",
                z.bulk_1_bytes >> 20,
                z.bulk_8_bytes_each >> 20,
                z.rr_requests,
                z.tunnels
            );
        }
        if self.quick {
            out.push_str(" `--quick`: small sizes, see bench/README.md (Quick mode).");
        }
        out.push_str("\n\n| metric |");
        for n in &names {
            let c = &self.contenders[*n];
            let _ = write!(out, " {n}{} |", if c.valid { "" } else { " (INVALID)" });
        }
        for o in &others {
            let _ = write!(out, " ringmesh / {o} |");
        }
        out.push('\n');
        out.push_str(&"|---".repeat(1 + names.len() + others.len()));
        out.push_str("|\n");
        // A valid contender's figure, unless it is not meaningful (then no ratio).
        let usable = |n: &str, key: &str, get: fn(&ContenderResult) -> Fig| {
            self.contenders
                .get(n)
                .filter(|c| c.valid && !c.not_meaningful.contains_key(key))
                .and_then(|c| get(c).0)
        };
        for (label, key, get, digits) in ROWS {
            let _ = write!(out, "| {label} |");
            for n in &names {
                let c = &self.contenders[*n];
                let v = if c.valid {
                    cell(get(c), digits, c.not_meaningful.get(key))
                } else {
                    "–".into()
                };
                let _ = write!(out, " {v} |");
            }
            let ours = usable("ringmesh", key, get);
            for o in &others {
                let _ = write!(out, " {} |", f(ratio(ours, usable(o, key, get)), 2));
            }
            out.push('\n');
        }
        for n in &names {
            if let Some(r) = &self.contenders[*n].invalid_reason {
                let _ = writeln!(out, "\n{n} is INVALID: {r}");
            }
        }
        out
    }

    /// Latency percentiles (1 KiB closed loop), one line per valid contender, on a log axis:
    /// a p99.9 of milliseconds beside p50s of tens of µs would flatten them all on a linear
    /// one. A percentile with too few samples beyond it is drawn hollow.
    pub fn svg_latency(&self) -> String {
        let pts = ["p50", "p90", "p99", "p99.9"];
        let keys = ["p50", "p90", "p99", "p999"];
        let series: Vec<(&String, [f64; 4], [bool; 4])> = self
            .order
            .iter()
            .filter_map(|n| {
                let c = self.contenders.get(n).filter(|c| c.valid)?;
                let p = c.detail.rr_1k_us?;
                let hollow = keys.map(|k| {
                    c.not_meaningful
                        .contains_key(&format!("detail.rr_1k_us.{k}"))
                });
                Some((n, [p.p50, p.p90, p.p99, p.p999], hollow))
            })
            .collect();
        let all = || series.iter().flat_map(|(_, v, _)| v.iter().copied());
        let (w, h, l, t, r, b) = (640.0, 360.0, 70.0, 40.0, 150.0, 50.0);
        let axis = LogAxis::spanning(
            all().fold(f64::INFINITY, f64::min),
            all().fold(0.0, f64::max),
            t,
            h - b,
        );
        let x = |i: usize| l + (w - l - r) * i as f64 / 3.0;
        let mut s = svg_head(
            w,
            h,
            "1 KiB request/response latency (closed loop, cross node), µs, log scale",
        );
        for (i, p) in pts.iter().enumerate() {
            let _ = write!(
                s,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="middle" font-size="12">{p}</text>"#,
                x(i),
                h - b + 20.0
            );
        }
        for v in axis.ticks() {
            let y = axis.y(v);
            let _ = write!(
                s,
                r##"<line x1="{l}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end" font-size="11">{v:.0}</text>"##,
                w - r,
                l - 6.0,
                y + 4.0
            );
        }
        for (j, (name, v, hollow)) in series.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let path: Vec<String> = v
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), axis.y(*v)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{}"/>"#,
                path.join(" ")
            );
            for (i, v) in v.iter().enumerate() {
                let fill = if hollow[i] { "white" } else { color };
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{color}"/>"#,
                    x(i),
                    axis.y(*v)
                );
            }
            let _ = write!(
                s,
                r#"<rect x="{:.0}" y="{:.0}" width="14" height="4" fill="{color}"/><text x="{:.0}" y="{:.0}" font-size="13">{name}</text>"#,
                w - r + 15.0,
                t + 20.0 * j as f64 + 6.0,
                w - r + 35.0,
                t + 20.0 * j as f64 + 12.0
            );
        }
        if series.iter().any(|(_, _, hollow)| hollow.contains(&true)) {
            let _ = write!(
                s,
                r#"<text x="{l}" y="{:.0}" font-size="11">hollow: fewer than {MIN_SAMPLES_BEYOND:.0} samples beyond that percentile, not meaningful</text>"#,
                h - 8.0
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Throughput bars: 1 and 8 streams, same and cross node, per valid contender.
    pub fn svg_throughput(&self) -> String {
        let groups = [
            "1 stream same",
            "1 stream cross",
            "8 streams same",
            "8 streams cross",
        ];
        let series: Vec<(&String, [f64; 4])> = self
            .order
            .iter()
            .filter_map(|n| {
                let c = self.contenders.get(n).filter(|c| c.valid)?;
                let d = &c.detail;
                let m = |s: Option<Summary>| s.map_or(0.0, |s| s.median);
                Some((
                    n,
                    [
                        m(d.bulk_1_same_gbps),
                        m(d.bulk_1_cross_gbps),
                        m(d.bulk_8_same_gbps),
                        m(d.bulk_8_cross_gbps),
                    ],
                ))
            })
            .collect();
        let max = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1.0_f64, f64::max);
        let (w, h, l, t, r, b) = (640.0, 360.0, 60.0, 40.0, 150.0, 50.0);
        let gw = (w - l - r) / groups.len() as f64;
        let bw = (gw * 0.8) / series.len().max(1) as f64;
        let y = |v: f64| t + (h - t - b) * (1.0 - v / (max * 1.1));
        let mut s = svg_head(w, h, "Bulk throughput, Gb/s (median)");
        for (g, name) in groups.iter().enumerate() {
            let _ = write!(
                s,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="middle" font-size="12">{name}</text>"#,
                l + gw * (g as f64 + 0.5),
                h - b + 20.0
            );
            for (j, (_, v)) in series.iter().enumerate() {
                let x0 = l + gw * g as f64 + gw * 0.1 + bw * j as f64;
                let _ = write!(
                    s,
                    r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.1}</text>"#,
                    y(v[g]),
                    bw * 0.9,
                    (h - b) - y(v[g]),
                    COLORS[j % COLORS.len()],
                    x0 + bw * 0.45,
                    y(v[g]) - 3.0,
                    v[g]
                );
            }
        }
        for (j, (name, _)) in series.iter().enumerate() {
            let _ = write!(
                s,
                r#"<rect x="{:.0}" y="{:.0}" width="14" height="10" fill="{}"/><text x="{:.0}" y="{:.0}" font-size="13">{name}</text>"#,
                w - r + 15.0,
                t + 20.0 * j as f64,
                COLORS[j % COLORS.len()],
                w - r + 35.0,
                t + 20.0 * j as f64 + 10.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

const COLORS: [&str; 6] = [
    "#888888", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e",
];

/// A base-10 log axis from `lo` to `hi` (both on the 1-2-5 sequence) onto pixels `top` (at
/// `hi`) to `bottom` (at `lo`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogAxis {
    pub lo: f64,
    pub hi: f64,
    top: f64,
    bottom: f64,
}

impl LogAxis {
    /// The axis from the 1-2-5 value at or below `min` to the one at or above `max` (at
    /// least one step apart; values below 1 count as 1).
    pub fn spanning(min: f64, max: f64, top: f64, bottom: f64) -> LogAxis {
        let min = if min.is_finite() { min.max(1.0) } else { 1.0 };
        let max = max.max(min);
        let lo = one_two_five(min, false);
        let mut hi = one_two_five(max, true);
        if hi <= lo {
            hi = one_two_five(lo * 1.01, true);
        }
        LogAxis {
            lo,
            hi,
            top,
            bottom,
        }
    }

    /// The pixel height of `v` (clamped to the axis).
    pub fn y(&self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        let f = (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10());
        self.bottom - (self.bottom - self.top) * f
    }

    /// The 1-2-5 values from `lo` to `hi`: 10, 20, 50, 100, 200, …
    pub fn ticks(&self) -> Vec<f64> {
        let mut v = Vec::new();
        let mut x = self.lo;
        while x <= self.hi * (1.0 + 1e-9) {
            v.push(x);
            x = one_two_five(x * 1.01, true);
        }
        v
    }
}

/// The nearest value of 1, 2, 5, 10, 20, 50, … at or above (`up`) or at or below `v` (≥ 1).
fn one_two_five(v: f64, up: bool) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    let steps = [1.0, 2.0, 5.0, 10.0];
    let eps = 1e-9;
    if up {
        steps
            .iter()
            .map(|s| s * decade)
            .find(|s| *s >= v * (1.0 - eps))
            .unwrap_or(10.0 * decade)
    } else {
        steps
            .iter()
            .rev()
            .map(|s| s * decade)
            .find(|s| *s <= v * (1.0 + eps))
            .unwrap_or(decade)
    }
}

fn svg_head(w: f64, h: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{:.0}" y="22" text-anchor="middle" font-size="15">{title}</text>"#,
        w / 2.0
    )
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
