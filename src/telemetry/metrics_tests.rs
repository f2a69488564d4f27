//! Tests of `telemetry::metrics`: TCP and HTTP label sets, shard sums, buckets, exposition.

use super::*;

#[test]
fn sums_shards_and_uses_istio_names() {
    let m = Metrics::default();
    let (a, b) = (m.shard(), m.shard());
    let l = TcpLabels::new(
        "source",
        &Peer::default(),
        &Peer::default(),
        None,
        true,
        "-",
    );
    let ca = a.open(l.clone());
    let cb = b.open(l.clone());
    TcpCounters::add(&ca.sent, 10);
    TcpCounters::add(&cb.sent, 5);
    TcpCounters::add(&cb.received, 7);
    let t = m.totals();
    assert_eq!(t[&l], [2, 0, 0, 15, 7]);
    let text = m.encode();
    assert!(
        text.contains("istio_tcp_sent_bytes_total{reporter=\"source\""),
        "{text}"
    );
    assert!(
        text.contains("connection_security_policy=\"mutual_tls\"} 15"),
        "{text}"
    );
    assert!(
        text.contains("istio_tcp_connections_opened_total{"),
        "{text}"
    );
    assert!(text.contains("source_workload=\"unknown\""), "{text}");
    assert!(
        text.contains("istio_build{component=\"ringmesh\""),
        "{text}"
    );
}

fn workload(v: serde_json::Value) -> crate::state::Workload {
    serde_json::from_value(v).unwrap()
}

fn svc() -> DstService<'static> {
    DstService {
        hostname: "reviews.bookinfo.svc.cluster.local",
        namespace: "bookinfo",
        name: "reviews",
    }
}

const HTTP_LABEL_ORDER: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

#[test]
fn http_labels_fall_back_to_unknown_and_latest() {
    let dst_w = workload(serde_json::json!({
        "workloadIps": ["10.0.0.7"],
        "uid": "u1",
        "name": "reviews-v2-abc",
        "namespace": "bookinfo",
        "workloadName": "reviews-v2",
        "canonicalName": "reviews",
        "clusterId": "Kubernetes",
    }));
    let src = Peer {
        workload: None,
        principal: Some("spiffe://cluster.local/ns/frontend/sa/web".into()),
    };
    let dst = Peer {
        workload: Some(&dst_w),
        principal: Some("spiffe://cluster.local/ns/bookinfo/sa/reviews".into()),
    };
    let l = HttpLabels::new("waypoint", &src, &dst, None, "http", 503, None, "UH", false);
    assert_eq!(l.reporter, "waypoint");
    assert_eq!(l.source_workload, "unknown");
    assert_eq!(l.source_canonical_service, "unknown");
    assert_eq!(l.source_canonical_revision, "latest");
    assert_eq!(l.source_workload_namespace, "frontend");
    assert_eq!(
        l.source_principal,
        "spiffe://cluster.local/ns/frontend/sa/web"
    );
    assert_eq!(l.source_app, "unknown");
    assert_eq!(l.source_version, "unknown");
    assert_eq!(l.source_cluster, "unknown");
    assert_eq!(l.destination_workload, "reviews-v2");
    assert_eq!(l.destination_workload_namespace, "bookinfo");
    assert_eq!(l.destination_canonical_service, "reviews");
    assert_eq!(l.destination_canonical_revision, "latest");
    assert_eq!(l.destination_version, "unknown");
    assert_eq!(l.destination_cluster, "Kubernetes");
    // Direct-pod traffic: no service.
    assert_eq!(l.destination_service, "unknown");
    assert_eq!(l.destination_service_name, "unknown");
    assert_eq!(l.destination_service_namespace, "unknown");
    assert_eq!(l.response_code, "503");
    assert_eq!(l.grpc_response_status, "");
    assert_eq!(l.response_flags, "UH");
    assert_eq!(l.connection_security_policy, "none");

    let none = Peer::default();
    let l = HttpLabels::new(
        "waypoint",
        &none,
        &none,
        Some(&svc()),
        "grpc",
        0,
        Some("14"),
        "-",
        true,
    );
    assert_eq!(l.source_workload_namespace, "unknown");
    assert_eq!(l.source_principal, "unknown");
    assert_eq!(l.destination_service, "reviews.bookinfo.svc.cluster.local");
    assert_eq!(l.destination_service_name, "reviews");
    assert_eq!(l.destination_service_namespace, "bookinfo");
    assert_eq!(l.request_protocol, "grpc");
    assert_eq!(l.response_code, "0");
    assert_eq!(l.grpc_response_status, "14");
    assert_eq!(l.connection_security_policy, "mutual_tls");
}

#[test]
fn tcp_labels_unchanged_by_the_shared_helpers() {
    let w = workload(serde_json::json!({
        "workloadIps": [],
        "name": "ratings-1",
        "namespace": "bookinfo",
        "canonicalRevision": "v1",
    }));
    let p = Peer {
        workload: Some(&w),
        principal: None,
    };
    let l = TcpLabels::new("source", &p, &Peer::default(), Some(&svc()), false, "-");
    assert_eq!(l.source_workload, "ratings-1");
    assert_eq!(l.source_canonical_service, "ratings-1");
    assert_eq!(l.source_canonical_revision, "v1");
    assert_eq!(l.source_version, "v1");
    assert_eq!(l.source_principal, "unknown");
    assert_eq!(l.destination_canonical_revision, "unknown");
    assert_eq!(l.destination_service_name, "reviews");
    assert_eq!(l.request_protocol, "tcp");
    assert_eq!(l.connection_security_policy, "unknown");
}

#[test]
fn histogram_buckets_are_envoys_and_inclusive() {
    let h = ShardHistogram::default();
    for v in [0.5, 1.0, 1.0001, 3_600_000.0, 3_600_001.0, f64::NAN, -3.0] {
        h.observe(v);
    }
    let t = h.totals();
    let mut want = [0u64; BUCKETS];
    want[0] = 3; // 0.5, NaN → 0, -3 → 0
    want[1] = 1; // 1.0 → le=1
    want[2] = 1; // 1.0001 → le=5
    want[BUCKETS - 2] = 1; // le=3600000
    want[BUCKETS - 1] = 1; // +Inf
    assert_eq!(t.buckets, want);
    assert_eq!(t.count, 7);
    assert_eq!(t.sum, 0.5 + 1.0 + 1.0001 + 3_600_000.0 + 3_600_001.0);
}

#[test]
fn http_requests_sum_over_shards() {
    let m = Metrics::default();
    let (a, b) = (m.shard(), m.shard());
    let none = Peer::default();
    let ok = HttpLabels::new(
        "waypoint",
        &none,
        &none,
        Some(&svc()),
        "http",
        200,
        None,
        "-",
        true,
    );
    let bad = HttpLabels::new(
        "waypoint",
        &none,
        &none,
        Some(&svc()),
        "http",
        503,
        None,
        "UF",
        true,
    );
    a.request(ok.clone(), 1.0, 100, 2000);
    b.request(ok.clone(), 30.0, 50, 0);
    b.http(bad.clone()).record(7.0, 10, 20);
    let t = m.http_totals();
    assert_eq!(t.len(), 2);
    let o = &t[&ok];
    assert_eq!(o.requests, 2);
    assert_eq!(o.duration_ms.count, 2);
    assert_eq!(o.duration_ms.sum, 31.0);
    assert_eq!(o.duration_ms.buckets[1], 1, "1 ms in le=1");
    assert_eq!(o.duration_ms.buckets[5], 1, "30 ms in le=50");
    assert_eq!(o.request_bytes.sum, 150.0);
    assert_eq!(o.response_bytes.buckets[0], 1, "0 bytes in le=0.5");
    assert_eq!(o.response_bytes.buckets[10], 1, "2000 bytes in le=2500");
    assert_eq!(t[&bad].requests, 1);
    assert_eq!(t[&bad].response_bytes.sum, 20.0);
}

#[test]
fn http_exposition_has_istio_names_labels_and_buckets() {
    let m = Metrics::default();
    assert!(
        !m.encode().contains("istio_requests_total"),
        "no requests, no family"
    );
    let (a, b) = (m.shard(), m.shard());
    let none = Peer::default();
    let l = HttpLabels::new(
        "waypoint",
        &none,
        &none,
        Some(&svc()),
        "http",
        200,
        None,
        "-",
        true,
    );
    a.request(l.clone(), 1.0, 100, 2000);
    b.request(l, 30.0, 50, 0);
    let text = m.encode();
    let line = |prefix: &str| -> String {
        text.lines()
            .find(|x| x.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_string()
    };
    let req = line("istio_requests_total{");
    assert!(
        req.starts_with("istio_requests_total{reporter=\"waypoint\",source_workload=\"unknown\","),
        "{req}"
    );
    assert!(
        req.contains(",response_code=\"200\",grpc_response_status=\"\","),
        "{req}"
    );
    assert!(req.contains("destination_service=\"reviews.bookinfo.svc.cluster.local\""));
    assert!(
        req.ends_with("connection_security_policy=\"mutual_tls\"} 2"),
        "{req}"
    );
    let keys: Vec<&str> = req
        .trim_start_matches("istio_requests_total{")
        .split("\",")
        .map(|kv| kv.split('=').next().unwrap_or(""))
        .collect();
    assert_eq!(keys, HTTP_LABEL_ORDER);
    for name in [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ] {
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
        assert!(line(&format!("{name}_count{{")).ends_with("} 2"), "{text}");
        let inf = line(&format!("{name}_bucket{{"));
        assert!(inf.contains("reporter=\"waypoint\""), "{inf}");
    }
    let dur = |le: &str| {
        let l = text
            .lines()
            .find(|x| {
                x.starts_with("istio_request_duration_milliseconds_bucket{")
                    && x.contains(&format!("le=\"{le}\""))
            })
            .unwrap_or_else(|| panic!("no le={le} in\n{text}"))
            .to_string();
        l.rsplit(' ').next().unwrap_or("").to_string()
    };
    // Cumulative: 1 ms lands in le=1, 30 ms in le=50.
    assert_eq!(dur("0.5"), "0");
    assert_eq!(dur("1.0"), "1");
    assert_eq!(dur("25.0"), "1");
    assert_eq!(dur("50.0"), "2");
    assert_eq!(dur("+Inf"), "2");
    assert!(line("istio_request_duration_milliseconds_sum{").ends_with("} 31.0"));
    assert!(line("istio_request_bytes_sum{").ends_with("} 150.0"));
    assert!(
        !text.contains("istio_tcp_"),
        "no connections, no TCP families"
    );
    // TCP and HTTP families side by side.
    a.open(TcpLabels::new("waypoint", &none, &none, None, true, "-"));
    let text = m.encode();
    assert!(
        text.contains("# TYPE istio_tcp_connections_opened counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE istio_requests counter"), "{text}");
}

/// A shard's thread counts through its own cache; the scrape, on another thread, sums the
/// very counters the cache handed out.
#[test]
fn cached_counters_are_the_ones_the_scrape_sums() {
    let m = Metrics::default();
    let shard = m.shard();
    let none = Peer::default();
    let tcp = TcpLabels::new("source", &none, &none, None, true, "-");
    let http = HttpLabels::new(
        "waypoint",
        &none,
        &none,
        Some(&svc()),
        "http",
        200,
        None,
        "-",
        true,
    );
    let (t, h) = (tcp.clone(), http.clone());
    let (first, again) = std::thread::spawn(move || {
        let first = shard.open(t.clone());
        // Seen before on this thread: from the cache.
        let again = shard.open(t);
        TcpCounters::add(&again.sent, 40);
        shard.request(h.clone(), 1.0, 10, 20);
        shard.request(h.clone(), 30.0, 10, 20);
        shard.http(h).record(7.0, 1, 2);
        (first, again)
    })
    .join()
    .unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(m.totals()[&tcp], [2, 0, 0, 40, 0]);
    let t = m.http_totals();
    assert_eq!(t[&http].requests, 3);
    assert_eq!(t[&http].request_bytes.sum, 21.0);
    let text = m.encode();
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{") && l.ends_with("} 2")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.ends_with("} 3")),
        "{text}"
    );
}

/// Tests (and a process running two node proxies' worth of shards on one thread) make
/// several `ShardMetrics` on one thread: each counts only its own.
#[test]
fn two_shard_metrics_on_one_thread_do_not_share_cached_entries() {
    let (m1, m2) = (Metrics::default(), Metrics::default());
    let (a, b) = (m1.shard(), m2.shard());
    let none = Peer::default();
    let tcp = TcpLabels::new("source", &none, &none, None, true, "-");
    let http = HttpLabels::new("waypoint", &none, &none, None, "http", 200, None, "-", true);
    let ca = a.open(tcp.clone());
    let cb = b.open(tcp.clone());
    b.open(tcp.clone());
    assert!(!Arc::ptr_eq(&ca, &cb));
    a.request(http.clone(), 1.0, 1, 1);
    b.request(http.clone(), 1.0, 1, 1);
    b.request(http.clone(), 1.0, 1, 1);
    assert_eq!(m1.totals()[&tcp][0], 1);
    assert_eq!(m2.totals()[&tcp][0], 2);
    assert_eq!(m1.http_totals()[&http].requests, 1);
    assert_eq!(m2.http_totals()[&http].requests, 2);
}
