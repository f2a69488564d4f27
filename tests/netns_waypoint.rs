//! `ringmesh waypoint` in real network namespaces, across two nodes: client pod → its node
//! proxy → HBONE → waypoint → second HBONE hop (the waypoint's identity) → the destination's
//! node proxy → server. Gateway API routing (the seeds' `echo` → `echo-v1`, a 90/10 split, a
//! header match, a redirect, a request timeout), a dead endpoint ejected while requests keep
//! succeeding, gRPC and plain TCP through the waypoint, a CONNECT for a service that does not
//! use the waypoint refused, an out-of-mesh client straight to the pod, malformed HTTP in the
//! tunnel answered 400 while the waypoint keeps serving. xDS mode (the lab's control plane and
//! CA) for the nodes and the waypoint. Needs root (under CI=true its absence fails the test).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use ringmesh::identity::Identity;
use ringmesh::inpod::Netns;
use ringmesh::lab::apps::{echo_from, metric_sum};
use ringmesh::lab::http_apps::{self, HttpReply};
use ringmesh::lab::run::LabRun;
use ringmesh::lab::topology::Topology;

const BIN: &str = env!("CARGO_BIN_EXE_ringmesh");

fn topology(name: &str) -> Topology {
    let text = format!(
        r#"
name: {name}
nodes: [{{name: node-a}}, {{name: node-b}}]
pods:
- {{name: client-a, node: node-a, serviceAccount: client, labels: {{istio.io/dataplane-mode: ambient, app: client}}}}
- {{name: echo-v1-b, node: node-b, serviceAccount: echo, labels: {{istio.io/dataplane-mode: ambient, app: echo, version: v1}}}}
- {{name: echo-v2-a, node: node-a, serviceAccount: echo, labels: {{istio.io/dataplane-mode: ambient, app: echo, version: v2}}}}
- {{name: dead-b, node: node-b, serviceAccount: pool, labels: {{istio.io/dataplane-mode: ambient, app: pool}}}}
- {{name: live-a, node: node-a, serviceAccount: pool, labels: {{istio.io/dataplane-mode: ambient, app: pool}}}}
- {{name: outside, node: node-a, labels: {{app: outside}}}}
services:
- {{name: echo, vip: 198.19.1.1, ports: {{80: 8080}}, selector: {{app: echo}}, labels: {{istio.io/use-waypoint: waypoint}}}}
- {{name: echo-v1, vip: 198.19.1.2, ports: {{80: 8080}}, selector: {{app: echo, version: v1}}}}
- {{name: echo-v2, vip: 198.19.1.3, ports: {{80: 8080}}, selector: {{app: echo, version: v2}}}}
- {{name: tcp-echo, vip: 198.19.1.4, ports: {{9000: 9000}}, selector: {{app: echo}}, labels: {{istio.io/use-waypoint: waypoint}}}}
- {{name: grpc, vip: 198.19.1.5, ports: {{50051: 8080}}, selector: {{app: echo}}, labels: {{istio.io/use-waypoint: waypoint}}}}
- {{name: pool, vip: 198.19.1.6, ports: {{80: 8080}}, selector: {{app: pool}}, labels: {{istio.io/use-waypoint: waypoint}}}}
- {{name: direct, vip: 198.19.1.7, ports: {{80: 8080}}, selector: {{app: echo}}}}
- {{name: legacy, vip: 198.19.1.8, ports: {{80: 8080}}, selector: {{app: outside}}, labels: {{istio.io/use-waypoint: waypoint}}}}
waypoints:
- {{name: waypoint, node: node-a, vip: 198.19.0.100}}
resources: |
  apiVersion: v1
  kind: Service
  metadata: {{name: echo}}
  spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}
  ---
  apiVersion: v1
  kind: Service
  metadata: {{name: tcp-echo}}
  spec: {{ports: [{{name: tcp, port: 9000}}]}}
  ---
  apiVersion: v1
  kind: Service
  metadata: {{name: grpc}}
  spec: {{ports: [{{name: grpc, port: 50051, appProtocol: grpc, targetPort: 8080}}]}}
  ---
  apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: echo}}
  spec:
    parentRefs: [{{group: "", kind: Service, name: echo}}]
    rules:
    - matches: [{{headers: [{{name: x-version, value: v2}}]}}]
      backendRefs: [{{name: echo-v2, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
      backendRefs: [{{name: echo-v1, port: 80, weight: 90}}, {{name: echo-v2, port: 80, weight: 10}}]
    - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
      filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 301}}}}]
    - matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]
      filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: echo-v2, port: 80}}}}}}]
      backendRefs: [{{name: echo-v1, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /delay}}}}]
      timeouts: {{request: 500ms}}
      backendRefs: [{{name: echo-v1, port: 80}}]
    - backendRefs: [{{name: echo-v1, port: 80}}]
"#
    );
    Topology::parse("netns_waypoint topology", &text).unwrap()
}

fn pod_ns(run: &LabRun, pod: &str) -> Netns {
    ns(run.lab.pod(pod).unwrap())
}

fn pod_ip(run: &LabRun, pod: &str) -> std::net::IpAddr {
    run.lab.pod(pod).unwrap().ip.into()
}

fn vip(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([198, 19, 1, last], port))
}

fn get(run: &LabRun, from: &str, to: SocketAddr, path: &str, h: &[(&str, &str)]) -> HttpReply {
    http_apps::http_get(&pod_ns(run, from), to, path, h)
        .unwrap_or_else(|e| panic!("GET {to}{path} from {from}: {e}"))
}

fn served_by(r: &HttpReply) -> String {
    r.json().unwrap_or_default()["pod"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn local_get(run: &LabRun, pod: &str, port: u16, path: &str) -> String {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    http_apps::http_get(&pod_ns(run, pod), addr, path, &[])
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .unwrap_or_default()
}

/// Waits (5 s at most) for echo-v2's server to have answered a request for `path`; its
/// description.
fn wait_seen(run: &LabRun, path: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(run, "client-a", vip(3, 80), "/_seen", &[]);
        let seen = r.json().unwrap();
        let hit = seen
            .as_array()
            .and_then(|a| a.iter().find(|d| d["path"] == path).cloned());
        if let Some(d) = hit {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "no mirrored {path} at echo-v2: {seen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn node_metrics(run: &LabRun, node: &str) -> String {
    let n = run.node_netns(node).unwrap();
    let ns = Netns::open(&PathBuf::from(format!("/var/run/netns/{n}"))).unwrap();
    ringmesh::lab::run::http_get(&ns, "127.0.0.1:15020".parse().unwrap(), "/metrics")
        .map(|r| r.1)
        .unwrap_or_default()
}

fn waypoint_log(run: &LabRun) -> String {
    std::fs::read_to_string(run.dir.join("waypoint.waypoint.log")).unwrap_or_default()
}

/// An HBONE CONNECT from the out-of-mesh pod straight to the waypoint, with a mesh
/// certificate for `sa`: the status the waypoint answers.
fn connect_status(run: &LabRun, authority: SocketAddr, sa: &str) -> u16 {
    let ca = ringmesh::identity::ca::Ca::load(&run.ca_cert, &run.ca_key).unwrap();
    let id = Identity::new("cluster.local", "default", sa);
    let cert = ca
        .issue(&id, SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root().clone()).unwrap();
    let cfg = ringmesh::tls::client_config(&cert, Arc::new(roots));
    let wp = SocketAddr::new(pod_ip(run, "waypoint"), 15008);
    let ns = pod_ns(run, "outside");
    let std = ns
        .run(|| std::net::TcpStream::connect_timeout(&wp, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    std.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(std).unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ringmesh::tls::dummy_server_name(), tcp)
            .await
            .unwrap();
        let (h2, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut h2 = h2.ready().await.unwrap();
        let req = http::Request::builder()
            .method("CONNECT")
            .uri(authority.to_string())
            .body(())
            .unwrap();
        let (resp, _s) = h2.send_request(req, false).unwrap();
        tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("the waypoint answers the CONNECT")
            .unwrap()
            .status()
            .as_u16()
    })
}

#[test]
fn netns_waypoint_routes_balances_and_forwards_over_a_second_hbone_hop() {
    let Some(_) = lab_or_skip("netns_waypoint") else {
        return;
    };
    let name = format!("rw{}", std::process::id() % 10000);
    let dir = tempfile::tempdir().unwrap();
    let mut run = LabRun::up(topology(&name), &dir.path().join(&name)).unwrap();
    for (pod, app) in [
        ("echo-v1-b", "echo-v1-b"),
        ("echo-v2-a", "echo-v2-a"),
        ("live-a", "live-a"),
        ("outside", "outside"),
    ] {
        http_apps::serve_http(&pod_ns(&run, pod), 8080, app).unwrap();
    }
    serve_echo(&pod_ns(&run, "echo-v1-b"), 9000, "echo-v1-b");
    serve_echo(&pod_ns(&run, "echo-v2-a"), 9000, "echo-v2-a");
    // dead-b serves nothing: its node proxy cannot connect to the app.
    run.start_ringmesh_exe(std::path::Path::new(BIN), &[])
        .unwrap();
    run.wait_ready(Duration::from_secs(30)).unwrap();
    let wp_ip = pod_ip(&run, "waypoint");
    let client_ip = pod_ip(&run, "client-a");

    // 1. The seeds' HTTPRoute: requests to echo are answered by echo-v1 only, through the
    // waypoint (the app sees the waypoint's address, not the client's).
    for _ in 0..20 {
        let r = get(&run, "client-a", vip(1, 80), "/", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(served_by(&r), "echo-v1-b");
        let j = r.json().unwrap();
        assert_eq!(
            j["peer"],
            wp_ip.to_string(),
            "the app sees the waypoint: {j}"
        );
        assert!(
            j["headers"]["x-request-id"]
                .as_str()
                .is_some_and(|s| s.len() == 36),
            "{j}"
        );
    }
    // The destination node proxy saw the waypoint's identity (second hop) and the waypoint
    // the client's (first hop).
    let m = node_metrics(&run, "node-b");
    assert!(
        metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/waypoint"
                ),
                ("destination_workload", "echo-v1-b"),
            ]
        ) >= 1.0,
        "node-b's inbound from the waypoint:\n{m}"
    );
    let wm = local_get(&run, "waypoint", 15020, "/metrics");
    assert!(
        metric_sum(
            &wm,
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("response_code", "200"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/client"
                ),
                ("destination_workload", "echo-v1-b"),
                ("destination_service", "echo-v1.default.svc.cluster.local"),
            ]
        ) >= 20.0,
        "waypoint metrics:\n{wm}"
    );
    assert!(
        wm.contains("istio_request_duration_milliseconds_bucket"),
        "{wm}"
    );
    assert!(waypoint_log(&run).contains("request complete"));

    // 2. Header match.
    let r = get(&run, "client-a", vip(1, 80), "/", &[("x-version", "v2")]);
    assert_eq!(served_by(&r), "echo-v2-a", "{r:?}");

    // 3. A 90/10 split over 1000 requests (one keep-alive connection, balanced per request).
    let rs = http_apps::http_requests(&pod_ns(&run, "client-a"), vip(1, 80), 1000, "/split", false)
        .unwrap();
    let v1 = rs.iter().filter(|r| served_by(r) == "echo-v1-b").count();
    let v2 = rs.iter().filter(|r| served_by(r) == "echo-v2-a").count();
    assert_eq!(v1 + v2, 1000);
    assert!((850..=950).contains(&v1), "90/10 split gave {v1}/{v2}");

    // 4. Redirect.
    let r = get(&run, "client-a", vip(1, 80), "/old/page?x=1", &[]);
    assert_eq!(r.status, 301, "{r:?}");
    let loc = r.header("location").unwrap_or_default().to_string();
    assert!(loc.ends_with("/new/page?x=1"), "{loc}");

    // 4b. RequestMirror: echo-v1 answers; echo-v2 gets a copy, body included, byte-exact.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let req = http::Request::post("/mirror/post")
        .header("host", "echo")
        .body(bytes::Bytes::from(body.clone()))
        .unwrap();
    let r = http_apps::http_request(
        &pod_ns(&run, "client-a"),
        vip(1, 80),
        req,
        false,
        http_apps::CLIENT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        (r.status, served_by(&r).as_str()),
        (200, "echo-v1-b"),
        "{r:?}"
    );
    assert_eq!(r.json().unwrap()["bodyLength"], 300_000);
    let want = format!("{:016x}", http_apps::fnv1a(&body));
    let mirrored = wait_seen(&run, "/mirror/post");
    assert_eq!(mirrored["method"], "POST", "{mirrored}");
    assert_eq!(mirrored["bodyLength"], 300_000, "{mirrored}");
    assert_eq!(mirrored["bodyFnv1a"], want.as_str(), "{mirrored}");
    assert_eq!(mirrored["peer"], wp_ip.to_string(), "{mirrored}");
    let r = get(&run, "client-a", vip(1, 80), "/mirror/get", &[]);
    assert_eq!(served_by(&r), "echo-v1-b", "{r:?}");
    assert_eq!(wait_seen(&run, "/mirror/get")["bodyLength"], 0);

    // 5. A request timeout gives 504, in about the route's 500 ms.
    let t = Instant::now();
    let r = get(&run, "client-a", vip(1, 80), "/delay/3000", &[]);
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );

    // 6. A dead endpoint (its node proxy cannot reach the app) is ejected; requests keep
    // succeeding (retried on another endpoint).
    for i in 0..40 {
        let r = get(&run, "client-a", vip(6, 80), "/", &[]);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(served_by(&r), "live-a");
    }
    let log = waypoint_log(&run);
    assert!(log.contains("ejected"), "no ejection logged:\n{log}");

    // 7. gRPC through the waypoint (HTTP/2 both hops, trailers kept).
    let (st, grpc, msg) = http_apps::grpc_call(
        &pod_ns(&run, "client-a"),
        vip(5, 50051),
        "/echo.Echo/Say",
        b"hi",
    )
    .unwrap();
    assert_eq!((st, grpc.as_deref()), (200, Some("0")));
    assert!(
        String::from_utf8_lossy(&msg).ends_with(" /echo.Echo/Say"),
        "{msg:?}"
    );
    let (_, grpc, _) = http_apps::grpc_call(
        &pod_ns(&run, "client-a"),
        vip(5, 50051),
        http_apps::GRPC_FAIL_PATH,
        b"",
    )
    .unwrap();
    assert_eq!(grpc.as_deref(), Some("13"));
    let wm = local_get(&run, "waypoint", 15020, "/metrics");
    assert!(
        metric_sum(
            &wm,
            "istio_requests_total",
            &[("request_protocol", "grpc"), ("grpc_response_status", "13")]
        ) >= 1.0,
        "{wm}"
    );

    // 8. A TCP service through the waypoint.
    let got = echo_from(&pod_ns(&run, "client-a"), vip(4, 9000)).unwrap();
    assert!(got.starts_with("echo-v"), "{got}");
    assert!(
        got.contains(&wp_ip.to_string()),
        "the TCP server sees the waypoint: {got}"
    );

    // 9. A CONNECT for a service that does not use the waypoint is refused; one that does is
    // accepted.
    assert_eq!(connect_status(&run, vip(7, 80), "client"), 400);
    assert_eq!(connect_status(&run, vip(1, 80), "client"), 200);
    assert!(waypoint_log(&run).contains("does not use this waypoint"));

    // 10. An out-of-mesh client reaches a waypoint-enabled pod directly.
    let v1_ip = pod_ip(&run, "echo-v1-b");
    let r = get(&run, "outside", SocketAddr::new(v1_ip, 8080), "/", &[]);
    assert_eq!(served_by(&r), "echo-v1-b");
    assert_eq!(
        r.json().unwrap()["peer"],
        pod_ip(&run, "outside").to_string()
    );

    // 11. Malformed HTTP inside the tunnel: 400 for that tunnel, the waypoint serves on.
    let raw = http_apps::raw_exchange(
        &pod_ns(&run, "client-a"),
        vip(1, 80),
        b"NOT HTTP AT ALL\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| e.into_bytes());
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let r = get(&run, "client-a", vip(1, 80), "/", &[]);
    assert_eq!(served_by(&r), "echo-v1-b");
    let _ = client_ip;

    // 11b. An endpoint without a node proxy gets plain HTTP from the waypoint.
    let r = get(&run, "client-a", vip(8, 80), "/", &[]);
    assert_eq!(served_by(&r), "outside", "{r:?}");
    assert_eq!(r.json().unwrap()["peer"], wp_ip.to_string());

    // 12. HTTP/2 (h2c) from the client on an `http` port: served (Envoy's AUTO codec), and
    // sent on as HTTP/1.1 (the port's protocol).
    let rs = http_apps::http_requests(&pod_ns(&run, "client-a"), vip(1, 80), 5, "/", true).unwrap();
    for r in &rs {
        assert_eq!(served_by(r), "echo-v1-b", "{r:?}");
        assert_eq!(r.json().unwrap()["version"], "HTTP/1.1");
    }

    // 13. The dump shows the routes and their status.
    let dump: serde_json::Value =
        serde_json::from_str(&local_get(&run, "waypoint", 15000, "/config_dump")).unwrap();
    let status = dump["routes"]["status"].to_string();
    assert!(
        status.contains("Accepted") && status.contains("ResolvedRefs"),
        "{}",
        dump["routes"]
    );

    // 14. A broken resources file is refused (named in the log) and the old routes serve on;
    // a good edit applies.
    let res = run.resources_file();
    let good = std::fs::read_to_string(&res).unwrap();
    assert!(
        good.contains("- backendRefs: [{name: echo-v1, port: 80}]"),
        "{good}"
    );
    std::fs::write(&res, "kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: bad}\nspec: {rules: [{matches: [{path: {type: Nope, value: /}}]}]}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waypoint_log(&run).contains("resources rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            waypoint_log(&run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(waypoint_log(&run).contains("spec.rules[0].matches[0].path.type"));
    assert_eq!(
        served_by(&get(&run, "client-a", vip(1, 80), "/", &[])),
        "echo-v1-b"
    );
    std::fs::write(
        &res,
        good.replace(
            "- backendRefs: [{name: echo-v1, port: 80}]",
            "- backendRefs: [{name: echo-v2, port: 80}]",
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_by(&get(&run, "client-a", vip(1, 80), "/", &[])) != "echo-v2-a" {
        assert!(Instant::now() < deadline, "the edited route never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
}
