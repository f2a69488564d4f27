//! Tests of `benchmark::l7_report`: the derived figures (one node-proxy hop, added p50, vCPU per
//! 1000 requests/s) from given numbers, and the report tables.

use super::*;

fn pct(p50: f64, p99: f64) -> Percentiles {
    Percentiles {
        p50,
        p90: p50,
        p99,
        p999: p99,
        count: 100,
    }
}

/// A round in which the path answers at `p50` with 1 in flight, `rps` saturated, and the
/// waypoint used `wp_cpu` CPU seconds over 5 s at 1000 req/s.
fn sample(p50: f64, rps: f64, wp_cpu: Option<f64>) -> L7Sample {
    L7Sample {
        c1: pct(p50, p50 * 3.0),
        c8: pct(p50 * 2.0, p50 * 5.0),
        fixed: pct(p50 * 1.5, p50 * 4.0),
        fixed_rps: 1000.0,
        fixed_cpu: CpuSample {
            wall_s: 5.0,
            requests: 5000,
            waypoint_s: wp_cpu,
            node_proxies_s: Some(0.5),
            machine_s: Some(2.0),
        },
        saturated: pct(p50 * 4.0, p50 * 10.0),
        saturated_rps: rps,
        saturated_cpu: CpuSample {
            wall_s: 5.0,
            requests: (rps * 5.0) as u64,
            waypoint_s: wp_cpu.map(|c| c * rps / 1000.0 * 0.8),
            node_proxies_s: Some(1.0),
            machine_s: Some(10.0),
        },
        waypoint_rss_bytes: wp_cpu.map(|_| 12e6),
        idle_cpu: Some(CpuSample {
            wall_s: 2.0,
            requests: 0,
            waypoint_s: wp_cpu.map(|_| 0.02),
            node_proxies_s: Some(0.01),
            machine_s: Some(0.1),
        }),
    }
}

#[test]
fn vcpu_is_cpu_over_wall_time() {
    assert_eq!(vcpu(0.5, 2.0), Some(0.25));
    assert_eq!(vcpu(0.5, 0.0), None);
}

#[test]
fn vcpu_per_1000_rps_is_cpu_seconds_per_1000_requests() {
    // 0.4 CPU s over 5 s is 0.08 vCPU; at 1000 req/s that is 0.08 per 1000 req/s.
    let v = vcpu_per_1000_rps(0.4, 5.0, 5000).unwrap();
    assert!((v - 0.08).abs() < 1e-12, "{v}");
    // Twice the rate for the same CPU: half per 1000 req/s; the wall time cancels out.
    let v = vcpu_per_1000_rps(0.4, 5.0, 10_000).unwrap();
    assert!((v - 0.04).abs() < 1e-12, "{v}");
    let v = vcpu_per_1000_rps(0.4, 2.5, 10_000).unwrap();
    assert!((v - 0.04).abs() < 1e-12, "{v}");
    assert_eq!(vcpu_per_1000_rps(0.4, 0.0, 10), None);
    assert_eq!(vcpu_per_1000_rps(0.4, 5.0, 0), None);
    assert_eq!(vcpu_per_1000_rps(f64::NAN, 5.0, 10), None);
}

#[test]
fn targets_from_the_paths_p50() {
    // raw 40, l4 120: two hops of 40 each; the waypoint adds 200 − 120 = 80, 2 hops: met.
    let t = targets(
        Some(40.0),
        Some(120.0),
        Some(200.0),
        Some(0.05),
        Some(0.03),
        Some(15e6),
    );
    assert_eq!(t.hop_p50_us, Some(40.0));
    assert_eq!(t.added_p50_us, Some(80.0));
    assert_eq!(t.added_p50_in_hops, Some(2.0));
    assert_eq!(t.latency_target_met, Some(true));
    assert_eq!(t.cpu_target_met, Some(true));
    assert_eq!(t.waypoint_rss_mb, Some(15.0));
    // 90 added is 2.25 hops; 0.1 vCPU is over 0.08.
    let t = targets(Some(40.0), Some(120.0), Some(210.0), Some(0.1), None, None);
    assert_eq!(t.added_p50_in_hops, Some(2.25));
    assert_eq!(t.latency_target_met, Some(false));
    assert_eq!(t.cpu_target_met, Some(false));
    // A hop that costs nothing gives no ratio (not "infinitely over"); missing paths, nothing.
    let t = targets(Some(50.0), Some(50.0), Some(90.0), None, None, None);
    assert_eq!(t.hop_p50_us, Some(0.0));
    assert_eq!(t.added_p50_in_hops, None);
    assert_eq!(t.latency_target_met, None);
    assert_eq!(t.cpu_target_met, None);
    assert_eq!(
        targets(None, Some(1.0), Some(2.0), None, None, None).hop_p50_us,
        None
    );
}

#[test]
fn path_results_are_medians_over_rounds() {
    let r = L7PathResult::of(&[
        sample(100.0, 5000.0, Some(0.3)),
        sample(300.0, 4000.0, Some(0.5)),
        sample(200.0, 9000.0, Some(0.4)),
    ]);
    assert!(r.valid);
    assert_eq!(r.p50_us.unwrap().median, 200.0);
    assert_eq!(r.p99_us.unwrap().median, 600.0);
    assert_eq!(r.p50_8_us.unwrap().median, 400.0);
    assert_eq!(r.rps.unwrap().median, 5000.0);
    assert_eq!(r.rps.unwrap().n, 3);
    // 0.4 CPU s for 5000 requests.
    let v = r.waypoint_vcpu_per_1000_rps.unwrap().median;
    assert!((v - 0.08).abs() < 1e-9, "{v}");
    let v = r.node_proxies_vcpu_per_1000_rps.unwrap().median;
    assert!((v - 0.1).abs() < 1e-9, "{v}");
    assert_eq!(r.waypoint_rss_bytes.unwrap().median, 12e6);
    assert_eq!(r.waypoint_idle_vcpu.unwrap().median, 0.01);
    assert_eq!(r.node_proxies_idle_vcpu.unwrap().median, 0.005);
    // Paths without a waypoint have no waypoint figures; no rounds is not valid.
    let raw = L7PathResult::of(&[sample(40.0, 20000.0, None)]);
    assert!(raw.waypoint_vcpu_per_1000_rps.is_none() && raw.waypoint_rss_bytes.is_none());
    assert!(raw.waypoint_idle_vcpu.is_none());
    assert!(!L7PathResult::of(&[]).valid);
}

fn report() -> L7Report {
    let mut r = L7Report {
        rounds: 3,
        waypoint_node: "node-c".into(),
        sizes: L7Sizes {
            response_bytes: 1024,
            fixed_rate_per_s: 1000,
            saturated_in_flight: 16,
            ..Default::default()
        },
        ..Default::default()
    };
    for proto in Protocol::ALL {
        r.insert(
            proto,
            Path::Raw,
            L7PathResult::of(&[sample(40.0, 20000.0, None)]),
        );
        r.insert(
            proto,
            Path::L4,
            L7PathResult::of(&[sample(120.0, 9000.0, None)]),
        );
    }
    r.insert(
        Protocol::Http1,
        Path::Waypoint,
        L7PathResult::of(&[sample(200.0, 5000.0, Some(0.3))]),
    );
    r.insert(
        Protocol::Http2,
        Path::Waypoint,
        L7PathResult::invalid("its traffic did not go through the waypoint"),
    );
    r.derive();
    r
}

#[test]
fn derive_uses_valid_paths_only() {
    let r = report();
    let t1 = &r.protocols["http1"].targets;
    assert_eq!(t1.added_p50_us, Some(80.0));
    assert_eq!(t1.latency_target_met, Some(true));
    let v = t1.waypoint_vcpu_per_1000_rps.unwrap();
    assert!((v - 0.06).abs() < 1e-9, "{v}");
    assert_eq!(t1.cpu_target_met, Some(true));
    let t2 = &r.protocols["http2"].targets;
    assert_eq!(t2.hop_p50_us, Some(40.0));
    assert_eq!(t2.added_p50_us, None);
    assert_eq!(t2.cpu_target_met, None);
}

#[test]
fn markdown_has_every_path_the_targets_and_the_invalid() {
    let md = report().markdown();
    assert!(
        md.contains(
            "| metric | HTTP/1.1 raw | HTTP/1.1 l4 | HTTP/1.1 waypoint | HTTP/2 raw | HTTP/2 l4 | HTTP/2 waypoint (INVALID) |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| requests/s, 16 in flight | 20000 (n=1) | 9000 (n=1) | 5000 (n=1) | 20000 (n=1) | 9000 (n=1) | – |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| p50 µs, 1 in flight | 40 (n=1) | 120 (n=1) | 200 (n=1) | 40 (n=1) | 120 (n=1) | – |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| waypoint RSS after, MB | – | – | 12.0 (n=1) | – | – | – |"),
        "{md}"
    );
    assert!(
        md.contains("| added / one hop | 2.00 (met) | – (–) | ≤ 2 |"),
        "{md}"
    );
    assert!(
        md.contains("| waypoint vCPU per 1000 req/s, at 1000 req/s | 0.060 (met) | – (–) | ≤ 0.08"),
        "{md}"
    );
    assert!(
        md.contains("HTTP/2 waypoint is INVALID: its traffic did not go through the waypoint"),
        "{md}"
    );
}

#[test]
fn every_figure_shows_how_far_the_rounds_lay() {
    let mut r = report();
    r.insert(
        Protocol::Http1,
        Path::L4,
        L7PathResult::of(&[
            sample(110.0, 9000.0, None),
            sample(120.0, 8000.0, None),
            sample(150.0, 9500.0, None),
        ]),
    );
    r.derive();
    let md = r.markdown();
    // 150 is 25 % above 120; 8000 is 11 % below 9000.
    assert!(
        md.contains("| p50 µs, 1 in flight | 40 (n=1) | 120 ±25 % | 200 (n=1) |"),
        "{md}"
    );
    assert!(
        md.contains("| requests/s, 16 in flight | 20000 (n=1) | 9000 ±11 % |"),
        "{md}"
    );
    assert!(!md.contains("spread of requests/s"), "{md}");
    // The test's sizes leave the request counts 0 (unknown): nothing is judged.
    assert!(!md.contains("not meaningful"), "{md}");
}

#[test]
fn quick_sizes_mark_thin_tails_and_few_cpu_ticks() {
    let mut r = report();
    r.sizes = L7Sizes {
        c1_requests: 300,
        c8_requests: 1000,
        fixed_rate_s: 1.0,
        saturated_s: 1.0,
        ..r.sizes
    };
    r.derive();
    let wp = &r.protocols["http1"].paths["waypoint"];
    // 300 requests a round: 3 beyond p99. 1000 at 8 in flight: 10, enough.
    assert_eq!(
        wp.not_meaningful.get("p99_us").map(String::as_str),
        Some("not meaningful: 3 of 300 requests a round beyond it, needs ≥ 10")
    );
    assert!(!wp.not_meaningful.contains_key("p99_8_us"));
    assert!(!wp.not_meaningful.contains_key("p50_us"));
    // 0.06 CPU s per 1000 requests of 1000: 6 ticks.
    assert!(
        wp.not_meaningful["waypoint_vcpu_per_1000_rps"].contains("6 CPU ticks"),
        "{:?}",
        wp.not_meaningful
    );
    let md = r.markdown();
    assert!(
        md.contains(
            "| 600 (n=1) (not meaningful: 3 of 300 requests a round beyond it, needs ≥ 10) |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| 0.060 (met, not meaningful: too few CPU ticks) | – (–) |"),
        "{md}"
    );
    let v = serde_json::to_value(&r).unwrap();
    let nm = &v["protocols"]["http1"]["paths"]["waypoint"]["not_meaningful"];
    assert!(nm["p99_us"].is_string(), "{v}");
    // The full sizes: 3000 requests a round, 5 s at the fixed rate.
    r.sizes.c1_requests = 3000;
    r.sizes.fixed_rate_s = 5.0;
    r.derive();
    let wp = &r.protocols["http1"].paths["waypoint"];
    // 0.06 CPU s per 1000 of 5000 requests: 30 ticks, enough.
    assert!(wp.not_meaningful.is_empty(), "{:?}", wp.not_meaningful);
}

#[test]
fn json_has_protocols_paths_and_targets() {
    let v = serde_json::to_value(report()).unwrap();
    let h1 = &v["protocols"]["http1"];
    assert_eq!(h1["paths"]["l4"]["p50_us"]["median"], 120.0);
    assert_eq!(h1["targets"]["latency_target_met"], true);
    assert_eq!(v["protocols"]["http2"]["paths"]["waypoint"]["valid"], false);
    assert_eq!(v["waypoint_node"], "node-c");
}
