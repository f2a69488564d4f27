//! Tests of `benchmark::report`: the table (ratios, INVALID, the rounds' spread beside every
//! figure, what a quick run marks as not meaningful), the JSON's shape, and the plots (well
//! formed; latency on a log axis that keeps p50 and p99 apart).

use super::*;

fn pct(p50: f64, p99: f64, p999: f64, count: u64) -> Percentiles {
    Percentiles {
        p50,
        p90: p50,
        p99,
        p999,
        count,
    }
}

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
        c.detail.rr_1k_us = Some(pct(p50, p50 * 2.0, p50 * 3.0, 10));
        r.contenders.insert(n.into(), c);
    }
    r
}

/// A run's report as `ringmesh bench` builds it: `sizes`, two contenders with `rounds`
/// rounds each; ringmesh's idle tunnels grew RSS by 147169 B each (the issue's figure).
fn run(quick: bool) -> BenchReport {
    let sizes = if quick {
        super::super::Sizes::quick()
    } else {
        super::super::Sizes::full()
    };
    let rounds = sizes.rounds;
    let requests = (sizes.rr_n * rounds) as u64;
    let mut r = BenchReport {
        order: vec!["raw".into(), "ringmesh".into()],
        quick,
        rounds,
        sizes: Some(sizes.info()),
        ..Default::default()
    };
    let over = |v: &[f64]| Summary::of(&v[..rounds.min(v.len())]);
    let mut raw = ContenderResult {
        valid: true,
        bulk_1_gbps: Some(31.4),
        rr_p50_us: Some(24.0),
        rr_p99_us: Some(39.0),
        ..Default::default()
    };
    raw.detail.bulk_1_cross_gbps = over(&[31.4, 24.1, 39.1]);
    raw.detail.rr_1k_us = Some(pct(24.0, 39.0, 77.0, requests));
    raw.detail.rr_1k_p50_us = over(&[23.0, 25.0, 24.0]);
    raw.detail.rr_1k_p99_us = over(&[36.0, 40.0, 39.0]);
    let mut rm = ContenderResult {
        valid: true,
        bulk_1_gbps: Some(4.55),
        rr_p50_us: Some(99.0),
        rr_p99_us: Some(225.0),
        bytes_per_tunnel: Some(147169.0),
        cpu_s_per_gb: Some(1.5),
        ..Default::default()
    };
    let d = &mut rm.detail;
    d.bulk_1_cross_gbps = over(&[4.55, 4.3, 4.8]);
    d.rr_1k_us = Some(pct(99.0, 225.0, 1677.0, requests));
    d.rr_1k_p50_us = over(&[96.0, 101.0, 99.0]);
    d.rr_1k_p99_us = over(&[210.0, 240.0, 225.0]);
    d.tunnels = Some(sizes.tunnels);
    d.bytes_per_tunnel = over(&[147169.0, 120000.0, 150000.0]);
    d.cpu_s_per_gb = over(&[1.5, 1.4, 1.6]);
    d.cpu_s_per_1000_req = over(&[0.08, 0.07, 0.09]);
    d.passthrough_cpu_s_per_gb = over(&[0.3, 0.28, 0.33]);
    r.contenders.insert("raw".into(), raw);
    r.contenders.insert("ringmesh".into(), rm);
    r.derive();
    r
}

/// The table's row `label`, split into cells.
fn row(md: &str, label: &str) -> Vec<String> {
    let line = md
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{md}"));
    line.trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().to_string())
        .collect()
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
        md.contains("| metric | raw | ringmesh | ztunnel | ringmesh / raw | ringmesh / ztunnel |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| bulk 1 stream cross node, Gb/s | 12.00 (n=1) | 6.00 (n=1) | 3.00 (n=1) | 0.50 | 2.00 |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| machine CPU s per GB | 2.000 (n=1) | 4.000 (n=1) | 8.000 (n=1) | 2.00 | 0.50 |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| machine busy during bulk 1 stream, % | 90 (n=1) | 90 (n=1) | 90 (n=1) | 1.00 | 1.00 |"
        ),
        "{md}"
    );
    let z = r.contenders.get_mut("ztunnel").unwrap();
    z.valid = false;
    z.invalid_reason = Some("its HBONE port carried 0 bytes".into());
    let md = r.markdown();
    assert!(md.contains("ztunnel (INVALID)"), "{md}");
    assert!(
        md.contains("| bulk 1 stream cross node, Gb/s | 12.00 (n=1) | 6.00 (n=1) | – | 0.50 | – |"),
        "{md}"
    );
    assert!(md.contains("ztunnel is INVALID: its HBONE port carried 0 bytes"));
}

#[test]
fn every_figure_over_rounds_shows_how_far_the_rounds_lay() {
    let r = run(false);
    let md = r.markdown();
    assert!(md.starts_with("Medians of 3 rounds"), "{md}");
    assert!(
        md.contains(
            "A round: 1 stream of 1024 MiB, 8 of 256 MiB, 5000 round trips, 8000 idle tunnels."
        ),
        "{md}"
    );
    // 4.8 is 5 % above 4.55; raw's 39.1 is 25 % above 31.4 (24.1 only 23 % below).
    let bulk = row(&md, "bulk 1 stream cross node, Gb/s");
    assert_eq!(bulk[1..3], ["31.40 ±25 %", "4.55 ±5 %"], "{md}");
    // The pooled percentile, with the rounds' own: 96 and 101 around 99.
    assert_eq!(row(&md, "1 KiB rr p50, µs")[2], "99 ±3 %", "{md}");
    assert_eq!(row(&md, "1 KiB rr p99, µs")[1], "39 ±8 %", "{md}");
    assert_eq!(
        row(&md, "proxy CPU s per 1000 req")[2],
        "0.0800 ±12 %",
        "{md}"
    );
    // A figure without rounds behind it is shown bare, one without a value as –.
    assert_eq!(row(&md, "new connections / s")[1], "–", "{md}");
    // The old separate spread table is gone: the spread is beside each figure.
    assert!(!md.contains("spread over rounds"), "{md}");
    // Nothing in a full run's sizes is marked.
    assert!(r.contenders.values().all(|c| c.not_meaningful.is_empty()));
    assert!(!md.contains("not meaningful"), "{md}");
    assert_eq!(
        row(&md, "bytes per idle tunnel")[3],
        "–",
        "raw has none: {md}"
    );
}

#[test]
fn quick_marks_what_it_measured_too_little_of() {
    let r = run(true);
    let rm = &r.contenders["ringmesh"];
    let why = |k: &str| rm.not_meaningful.get(k).map(String::as_str);
    assert_eq!(
        why("bytes_per_tunnel"),
        Some("not meaningful at 300 tunnels, needs ≥ 5000; run without --quick")
    );
    // 1.5 CPU s per GB of 64 MiB is 0.1 s: 10 ticks. 0.08 per 1000 of 500 requests: 4.
    assert_eq!(
        why("cpu_s_per_gb"),
        Some("not meaningful: 10 CPU ticks a round, needs ≥ 20; run without --quick")
    );
    assert!(
        why("detail.cpu_s_per_1000_req")
            .unwrap()
            .contains("4 CPU ticks")
    );
    // 0.3 CPU s per GB of plain passthrough, 64 MiB: 2 ticks.
    assert!(
        why("detail.passthrough_cpu_s_per_gb")
            .unwrap()
            .contains("2 CPU ticks")
    );
    // 1000 requests pooled: p99 has 10 beyond it, p99.9 one.
    assert_eq!(why("rr_p99_us"), None);
    assert!(
        why("detail.rr_1k_us.p999")
            .unwrap()
            .contains("1 of 1000 samples")
    );
    // The JSON carries the flags; the value stays.
    let v = serde_json::to_value(&r).unwrap();
    let c = &v["contenders"]["ringmesh"];
    assert_eq!(c["bytes_per_tunnel"], 147169.0);
    assert!(c["not_meaningful"]["bytes_per_tunnel"].is_string(), "{c}");
    assert!(v["contenders"]["raw"]["not_meaningful"]["detail.rr_1k_us.p999"].is_string());
    assert_eq!(v["sizes"]["tunnels"], 300);
    // The table says so beside the value, and gives no ratio.
    let md = r.markdown();
    let tunnels = row(&md, "bytes per idle tunnel");
    assert_eq!(
        tunnels[2],
        "147169 ±18 % (not meaningful at 300 tunnels, needs ≥ 5000; run without --quick)",
        "{md}"
    );
    assert_eq!(tunnels[3], "–", "{md}");
    assert!(md.contains("`--quick`: small sizes"), "{md}");
    // What is meaningful keeps its ratio.
    assert_eq!(row(&md, "1 KiB rr p50, µs")[3], "4.12", "{md}");
}

#[test]
fn a_full_runs_json_renders_with_its_spreads() {
    // A real full run, written before `sizes` and the per-round figures existed.
    let mut r: BenchReport =
        serde_json::from_str(include_str!("../../bench/results/results.json")).unwrap();
    assert!(!r.quick && r.rounds == 3 && r.sizes.is_none());
    r.derive();
    let md = r.markdown();
    let bulk = row(&md, "bulk 1 stream cross node, Gb/s");
    for c in &bulk[1..=r.order.len()] {
        assert!(c.contains(" ±") && c.ends_with(" %"), "{c:?} in\n{md}");
    }
    // 8000 tunnels: the memory figure is meaningful; the relay's 2 ticks of user-space CPU
    // would need `sizes` to be judged, which this run's JSON does not have.
    assert!(!md.contains("not meaningful at"), "{md}");
    let svg = r.svg_latency();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn svgs_are_well_formed_and_skip_invalid() {
    let mut r = sample();
    r.contenders.get_mut("ztunnel").unwrap().valid = false;
    for svg in [r.svg_latency(), r.svg_throughput()] {
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
        assert!(svg.contains("ringmesh"));
        assert!(!svg.contains("ztunnel"));
    }
}

#[test]
fn the_log_axis_is_monotonic_on_one_two_five() {
    let a = LogAxis::spanning(24.0, 1677.0, 40.0, 310.0);
    assert_eq!((a.lo, a.hi), (20.0, 2000.0));
    assert_eq!(a.ticks(), [20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]);
    assert_eq!((a.y(20.0), a.y(2000.0)), (310.0, 40.0));
    // Two decades in 270 px: one decade is 135 px, wherever it starts.
    assert!((a.y(200.0) - 175.0).abs() < 1e-9, "{}", a.y(200.0));
    assert!(((a.y(30.0) - a.y(300.0)) - 135.0).abs() < 1e-9);
    let mut last = f64::INFINITY;
    for v in (20..=2000).step_by(7) {
        let y = a.y(v as f64);
        assert!(y < last, "{v} at {y}, not above {last}");
        last = y;
    }
    // Outside the axis: clamped. One value: a step of axis. Nothing: still an axis.
    assert_eq!(a.y(1e6), 40.0);
    let one = LogAxis::spanning(100.0, 100.0, 0.0, 100.0);
    assert_eq!((one.lo, one.hi), (100.0, 200.0));
    let none = LogAxis::spanning(f64::INFINITY, 0.0, 0.0, 100.0);
    assert!(none.lo >= 1.0 && none.hi > none.lo);
}

/// The `cy` of every `<circle>` of the latency plot, in drawing order (4 per contender).
fn circle_heights(svg: &str) -> Vec<f64> {
    svg.split("<circle ")
        .skip(1)
        .map(|c| {
            let v = c.split("cy=\"").nth(1).unwrap().split('"').next().unwrap();
            v.parse().unwrap()
        })
        .collect()
}

#[test]
fn latency_plot_keeps_p50_and_p99_apart() {
    // Raw's p50 and p99 (24 and 39 µs) beside a contender whose p99.9 is 20 ms: on a linear
    // axis up to 20 ms they would be a fraction of a pixel apart.
    let mut r = run(false);
    r.contenders.get_mut("ringmesh").unwrap().detail.rr_1k_us =
        Some(pct(99.0, 225.0, 20000.0, 15000));
    let svg = r.svg_latency();
    let y = circle_heights(&svg);
    assert_eq!(y.len(), 8, "{svg}");
    let (raw_p50, raw_p99) = (y[0], y[2]);
    assert!(
        raw_p50 - raw_p99 >= 10.0,
        "raw p50 at {raw_p50}, p99 at {raw_p99}"
    );
    let (rm_p50, rm_p99) = (y[4], y[6]);
    assert!(
        rm_p50 - rm_p99 >= 10.0,
        "ringmesh p50 at {rm_p50}, p99 at {rm_p99}"
    );
    // Higher latency is higher up (smaller y), across contenders too.
    assert!(rm_p50 < raw_p50 && y[7] < rm_p99);
    assert!(
        svg.contains("log scale") && svg.contains(">1000</text>"),
        "{svg}"
    );
    // A full run has enough samples for every percentile: nothing hollow.
    assert!(!svg.contains(r#"fill="white" stroke"#), "{svg}");
    // A quick run's p99.9 (1 of 1000 samples beyond it) is drawn hollow, with the legend.
    let svg = run(true).svg_latency();
    assert_eq!(svg.matches(r#"fill="white" stroke"#).count(), 2, "{svg}");
    assert!(svg.contains("hollow: fewer than 10 samples"), "{svg}");
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
    assert!(v.get("sizes").is_none(), "{v}");
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
    // Nothing marked: no key at all.
    assert!(v["contenders"]["ringmesh"].get("not_meaningful").is_none());
}

/// The bench reads the rings' exhaustions from a node's metrics: a counter's `_total`
/// sample, summed over label sets; a longer name with the same start, a comment or a
/// missing counter is not it.
#[test]
fn a_counter_is_read_from_prometheus_text() {
    let text = "# HELP ringmesh_uring_buffer_exhausted Times ...\n\
                # TYPE ringmesh_uring_buffer_exhausted counter\n\
                ringmesh_uring_buffer_exhausted_total 12\n\
                ringmesh_uring_buffer_exhausted_more_total 99\n\
                other_total{a=\"b\"} 7\n\
                other_total{a=\"c\"} 3\n";
    assert_eq!(counter(text, "ringmesh_uring_buffer_exhausted"), Some(12));
    assert_eq!(counter(text, "other"), Some(10));
    assert_eq!(counter(text, "absent"), None);
    assert_eq!(counter("plain 5\n", "plain"), Some(5));
}
