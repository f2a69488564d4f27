//! Benchmark results and their renderings: the JSON the issue tracker and CI read, a Markdown
//! table with ratios, and SVG plots (latency percentile curves, throughput bars). Pure.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::l7_report::L7Report;
use super::stats::{Percentiles, Summary, ratio};

/// Everything one `ringmesh bench` run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BenchReport {
    pub contenders: BTreeMap<String, ContenderResult>,
    pub machine: Machine,
    pub command: String,
    /// Contenders in the order they ran each round.
    pub order: Vec<String>,
    pub quick: bool,
    pub rounds: usize,
    /// `ringmesh bench --l7`: HTTP through the waypoint, l4 and raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Report>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub cpu_model: String,
}

/// One contender's headline figures (medians) and the details behind them.
#[derive(Debug, Clone, Serialize, Default)]
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
    pub detail: Detail,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Detail {
    pub bulk_1_same_gbps: Option<Summary>,
    pub bulk_1_cross_gbps: Option<Summary>,
    pub bulk_8_same_gbps: Option<Summary>,
    pub bulk_8_cross_gbps: Option<Summary>,
    pub rr_1b_us: Option<Percentiles>,
    pub rr_1k_us: Option<Percentiles>,
    pub rr_fixed_rate_us: Option<Percentiles>,
    pub fixed_rate_per_s: Option<f64>,
    pub conn_per_s: Option<Summary>,
    pub rss_idle_bytes: Option<f64>,
    pub rss_with_tunnels_bytes: Option<f64>,
    pub tunnels: Option<usize>,
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
    /// rr p50/p99 minus raw's, per proxy hop (two hops per path).
    pub added_p50_us_per_hop: Option<f64>,
    pub added_p99_us_per_hop: Option<f64>,
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

impl BenchReport {
    /// Fills the per-hop added latency of every contender against `raw`.
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
        let _ = write!(out, "| metric |");
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
        type Get = fn(&ContenderResult) -> Option<f64>;
        let rows: [(&str, Get, usize); 13] = [
            ("bulk 1 stream cross node, Gb/s", |c| c.bulk_1_gbps, 2),
            (
                "bulk 1 stream same node, Gb/s",
                |c| c.detail.bulk_1_same_gbps.map(|s| s.median),
                2,
            ),
            ("bulk 8 streams cross node, Gb/s", |c| c.bulk_8_gbps, 2),
            (
                "bulk 8 streams same node, Gb/s",
                |c| c.detail.bulk_8_same_gbps.map(|s| s.median),
                2,
            ),
            ("1 KiB rr p50, µs", |c| c.rr_p50_us, 0),
            ("1 KiB rr p99, µs", |c| c.rr_p99_us, 0),
            ("new connections / s", |c| c.conn_per_s, 0),
            ("bytes per idle tunnel", |c| c.bytes_per_tunnel, 0),
            ("proxy CPU s per GB", |c| c.cpu_s_per_gb, 3),
            (
                "proxy user-space CPU s per GB",
                |c| c.detail.user_cpu_s_per_gb.map(|s| s.median),
                3,
            ),
            (
                "machine CPU s per GB",
                |c| c.detail.machine_cpu_s_per_gb.map(|s| s.median),
                3,
            ),
            (
                "machine busy during bulk 1 stream, %",
                |c| c.detail.machine_busy.map(|s| s.median * 100.0),
                0,
            ),
            (
                "proxy CPU s per 1000 req",
                |c| c.detail.cpu_s_per_1000_req.map(|s| s.median),
                4,
            ),
        ];
        for (label, get, digits) in rows {
            let _ = write!(out, "| {label} |");
            for n in &names {
                let c = &self.contenders[*n];
                let v = if c.valid { get(c) } else { None };
                let _ = write!(out, " {} |", f(v, digits));
            }
            let ours = self
                .contenders
                .get("ringmesh")
                .filter(|c| c.valid)
                .and_then(get);
            for o in &others {
                let theirs = self.contenders.get(*o).filter(|c| c.valid).and_then(get);
                let _ = write!(out, " {} |", f(ratio(ours, theirs), 2));
            }
            out.push('\n');
        }
        let _ = write!(out, "\n| spread over rounds, (max − min) / median |");
        for n in &names {
            let _ = write!(out, " {n} |");
        }
        out.push('\n');
        out.push_str(&"|---".repeat(1 + names.len()));
        out.push_str("|\n");
        type Spread = fn(&Detail) -> Option<Summary>;
        let spreads: [(&str, Spread); 3] = [
            ("bulk 1 stream cross node", |d| d.bulk_1_cross_gbps),
            ("bulk 8 streams cross node", |d| d.bulk_8_cross_gbps),
            ("new connections / s", |d| d.conn_per_s),
        ];
        for (label, get) in spreads {
            let _ = write!(out, "| {label} |");
            for n in &names {
                let c = &self.contenders[*n];
                let v = get(&c.detail)
                    .filter(|_| c.valid)
                    .map(|s| format!("{:.0} % (n={})", s.spread() * 100.0, s.n));
                let _ = write!(out, " {} |", v.unwrap_or_else(|| "–".into()));
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

    /// Latency percentile curves (1 KiB closed loop), one line per valid contender.
    pub fn svg_latency(&self) -> String {
        let pts = ["p50", "p90", "p99", "p99.9"];
        let series: Vec<(&String, [f64; 4])> = self
            .order
            .iter()
            .filter_map(|n| {
                let c = self.contenders.get(n).filter(|c| c.valid)?;
                let p = c.detail.rr_1k_us?;
                Some((n, [p.p50, p.p90, p.p99, p.p999]))
            })
            .collect();
        let max = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1.0_f64, f64::max);
        let (w, h, l, t, r, b) = (640.0, 360.0, 70.0, 40.0, 150.0, 50.0);
        let x = |i: usize| l + (w - l - r) * i as f64 / 3.0;
        let y = |v: f64| t + (h - t - b) * (1.0 - v / (max * 1.1));
        let mut s = svg_head(
            w,
            h,
            "1 KiB request/response latency (closed loop, cross node), µs",
        );
        for (i, p) in pts.iter().enumerate() {
            let _ = write!(
                s,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="middle" font-size="12">{p}</text>"#,
                x(i),
                h - b + 20.0
            );
        }
        for k in 0..=4 {
            let v = max * 1.1 * k as f64 / 4.0;
            let _ = write!(
                s,
                r##"<line x1="{l}" x2="{:.0}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end" font-size="11">{v:.0}</text>"##,
                w - r,
                y(v),
                y(v),
                l - 6.0,
                y(v) + 4.0
            );
        }
        for (j, (name, v)) in series.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let path: Vec<String> = v
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{}"/>"#,
                path.join(" ")
            );
            for (i, v) in v.iter().enumerate() {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                    x(i),
                    y(*v)
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

fn svg_head(w: f64, h: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{:.0}" y="22" text-anchor="middle" font-size="15">{title}</text>"#,
        w / 2.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BenchReport {
        let mut r = BenchReport {
            order: vec!["raw".into(), "ringmesh".into(), "ztunnel".into()],
            ..Default::default()
        };
        let s = |v: f64| Summary::of(&[v]);
        for (n, gbps, p50) in [
            ("raw", 12.0, 20.0),
            ("ringmesh", 6.0, 60.0),
            ("ztunnel", 3.0, 100.0),
        ] {
            let mut c = ContenderResult {
                valid: true,
                bulk_1_gbps: Some(gbps),
                rr_p50_us: Some(p50),
                rr_p99_us: Some(p50 * 2.0),
                ..Default::default()
            };
            c.detail.bulk_1_cross_gbps = s(gbps);
            c.detail.machine_cpu_s_per_gb = s(24.0 / gbps);
            c.detail.machine_busy = s(0.9);
            c.detail.rr_1k_us = Some(Percentiles {
                p50,
                p90: p50,
                p99: p50 * 2.0,
                p999: p50 * 3.0,
                count: 10,
            });
            r.contenders.insert(n.into(), c);
        }
        r
    }

    #[test]
    fn markdown_has_ratios_and_flags_invalid() {
        let mut r = sample();
        r.derive();
        assert_eq!(
            r.contenders["ringmesh"].detail.added_p50_us_per_hop,
            Some(20.0)
        );
        let md = r.markdown();
        assert!(
            md.contains(
                "| metric | raw | ringmesh | ztunnel | ringmesh / raw | ringmesh / ztunnel |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| bulk 1 stream cross node, Gb/s | 12.00 | 6.00 | 3.00 | 0.50 | 2.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| machine CPU s per GB | 2.000 | 4.000 | 8.000 | 2.00 | 0.50 |"),
            "{md}"
        );
        assert!(
            md.contains("| machine busy during bulk 1 stream, % | 90 | 90 | 90 | 1.00 | 1.00 |"),
            "{md}"
        );
        let z = r.contenders.get_mut("ztunnel").unwrap();
        z.valid = false;
        z.invalid_reason = Some("its HBONE port carried 0 bytes".into());
        let md = r.markdown();
        assert!(md.contains("ztunnel (INVALID)"), "{md}");
        assert!(
            md.contains("| bulk 1 stream cross node, Gb/s | 12.00 | 6.00 | – | 0.50 | – |"),
            "{md}"
        );
        assert!(md.contains("ztunnel is INVALID: its HBONE port carried 0 bytes"));
    }

    #[test]
    fn svgs_are_well_formed_and_skip_invalid() {
        let mut r = sample();
        r.contenders.get_mut("ztunnel").unwrap().valid = false;
        for svg in [r.svg_latency(), r.svg_throughput()] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("ringmesh"));
            assert!(!svg.contains("ztunnel"));
        }
    }

    #[test]
    fn an_l7_only_report_is_the_l7_section_alone() {
        let r = BenchReport {
            l7: Some(L7Report {
                rounds: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let md = r.markdown();
        assert!(md.starts_with("### L7: HTTP through the waypoint"), "{md}");
        assert!(!md.contains("bulk 1 stream"), "{md}");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["l7"]["rounds"], 2);
        // The L4 bench's JSON has no l7 key, and its Markdown no L7 section.
        let v = serde_json::to_value(sample()).unwrap();
        assert!(v.get("l7").is_none());
        assert!(!sample().markdown().contains("L7"));
    }

    #[test]
    fn json_has_the_issue_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        for k in [
            "bulk_1_gbps",
            "bulk_8_gbps",
            "rr_p50_us",
            "rr_p99_us",
            "conn_per_s",
            "bytes_per_tunnel",
            "cpu_s_per_gb",
        ] {
            assert!(v["contenders"]["ringmesh"].get(k).is_some(), "{k}");
        }
        assert!(v.get("machine").is_some() && v.get("command").is_some());
    }
}
