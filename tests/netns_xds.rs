//! `ringmesh node` in xDS mode against the lab's control plane, in real network namespaces:
//! no traffic before the first sync, workloads and policies added and removed over xDS, a
//! DENY pushed while a connection is live, a malformed resource NACKed while the rest keeps
//! serving, a control-plane restart, certificate rotation and a CA outage under live
//! streams. Node proxies get their certificates only from the lab's CA (they hold no CA
//! key). Needs root (under CI=true its absence fails the tests).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ringmesh::config::LocalConfig;
use ringmesh::inpod::Netns;
use ringmesh::lab::istiod::Event;
use ringmesh::lab::run::{LabRun, http_get};
use ringmesh::lab::topology::Topology;

const BIN: &str = env!("CARGO_BIN_EXE_ringmesh");

fn topology(name: &str) -> Topology {
    let text = format!(
        r#"
name: {name}
nodes: [{{name: node-a}}, {{name: node-b}}]
pods:
- {{name: client-a, node: node-a, serviceAccount: client, labels: {{istio.io/dataplane-mode: ambient, app: client}}}}
- {{name: server-b, node: node-b, serviceAccount: server, labels: {{istio.io/dataplane-mode: ambient, app: echo}}}}
- {{name: late-b, node: node-b, serviceAccount: late, labels: {{istio.io/dataplane-mode: ambient, app: late}}}}
"#
    );
    Topology::parse("netns_xds topology", &text).unwrap()
}

/// A lab if we may build one (None: skipped outside CI without root).
fn lab(test: &str, tag: &str) -> Option<(LabRun, tempfile::TempDir)> {
    lab_or_skip(test)?;
    let name = format!("rx{tag}{}", std::process::id() % 10000);
    let dir = tempfile::tempdir().unwrap();
    let run = LabRun::up(topology(&name), &dir.path().join(&name)).unwrap();
    Some((run, dir))
}

fn node_ns(run: &LabRun, node: &str) -> Netns {
    let n = run.node_netns(node).unwrap();
    Netns::open(&PathBuf::from(format!("/var/run/netns/{n}"))).unwrap()
}

fn pod_ns(run: &LabRun, pod: &str) -> Netns {
    ns(run.lab.pod(pod).unwrap())
}

fn get(run: &LabRun, node: &str, port: u16, path: &str) -> (u16, String) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    http_get(&node_ns(run, node), addr, path).unwrap_or((0, String::new()))
}

fn dump(run: &LabRun, node: &str) -> serde_json::Value {
    serde_json::from_str(&get(run, node, 15000, "/config_dump").1).unwrap_or_default()
}

fn has_workload(run: &LabRun, node: &str, name: &str) -> bool {
    dump(run, node)["workloads"]
        .as_array()
        .is_some_and(|w| w.iter().any(|w| w["name"] == name))
}

fn policies(run: &LabRun, node: &str) -> usize {
    dump(run, node)["policies"]
        .as_array()
        .map_or(0, |p| p.len())
}

fn wait_until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn addr(run: &LabRun, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::from((run.lab.pod(pod).unwrap().ip, port))
}

fn config_without(run: &LabRun, pod: &str) -> LocalConfig {
    let mut c = run.topo.local_config(&run.lab);
    c.workloads.retain(|w| w.name != pod);
    c
}

fn with_policy(mut c: LocalConfig, yaml: &str) -> LocalConfig {
    c.policies.push(serde_yaml_ng::from_str(yaml).unwrap());
    c
}

const DENY_CLIENT: &str = r#"{name: deny-client, namespace: default, scope: Namespace, action: Deny, dryRun: false,
  rules: [[[{principals: [!Exact "cluster.local/ns/default/sa/client"]}]]]}"#;

/// A live echo connection: greeting read, one echo done.
fn live(
    run: &LabRun,
    from: &str,
    to: SocketAddr,
) -> (std::net::TcpStream, BufReader<std::net::TcpStream>) {
    let s = connect_from(&pod_ns(run, from), to).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut g = String::new();
    r.read_line(&mut g).unwrap();
    assert!(!g.is_empty(), "no greeting from {to}");
    (s, r)
}

fn echo_once(
    s: &mut std::net::TcpStream,
    r: &mut BufReader<std::net::TcpStream>,
) -> std::io::Result<()> {
    s.write_all(b"ping\n")?;
    let mut back = String::new();
    if r.read_line(&mut back)? == 0 {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed"));
    }
    assert_eq!(back, "ping\n");
    Ok(())
}

fn nacks(run: &LabRun) -> Vec<(String, String)> {
    run.istiod
        .as_ref()
        .map(|i| i.events())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| match e {
            Event::Nack {
                node_id, message, ..
            } => Some((node_id, message)),
            _ => None,
        })
        .collect()
}

#[test]
fn netns_xds_lifecycle() {
    let Some((mut run, _dir)) = lab("netns_xds_lifecycle", "l") else {
        return;
    };
    for p in ["server-b", "late-b"] {
        serve_echo(&pod_ns(&run, p), 8080, p);
    }
    let server = addr(&run, "server-b", 8080);
    let late = addr(&run, "late-b", 8080);
    let client = pod_ns(&run, "client-a");

    // 1. No control plane yet: the node proxies start, are not ready ("state manager"), and do
    //    not even connect to ZDS, so the pods have no listeners and no traffic flows.
    run.stop_control_plane();
    run.start_ringmesh_exe(BIN.as_ref(), &["--shards".into(), "1".into()])
        .unwrap();
    wait_until("readiness answers", 10, || {
        get(&run, "node-a", 15021, "/healthz/ready").0 != 0
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = get(&run, "node-a", 15021, "/healthz/ready");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("state manager"), "{body}");
    assert_eq!(
        run.snapshot_counts(),
        vec![0, 0],
        "ZDS must wait for the xDS sync"
    );
    assert!(
        echo_from(&client, server).is_err(),
        "traffic before the first xDS response"
    );

    // 2. The control plane comes up (without late-b): sync, ZDS, traffic.
    run.start_control_plane(config_without(&run, "late-b"))
        .unwrap();
    run.wait_ready(Duration::from_secs(20)).unwrap();
    assert_eq!(echo_from(&client, server).unwrap(), "server-b 198.18.1.2");
    let d = dump(&run, "node-a");
    assert_eq!(d["config"]["configSource"], "xds");
    assert_eq!(d["config"]["caSource"], "istio");
    assert_eq!(d["xds"]["synced"], true);
    let certs = d["certificates"].as_array().unwrap();
    assert!(
        certs.iter().any(
            |c| c["identity"] == "spiffe://cluster.local/ns/default/sa/client"
                && c["state"] == "Available"
                && c["certChain"].as_array().unwrap().len() == 2
                && c["rootCerts"].as_array().unwrap().len() == 1
        ),
        "{certs:#?}"
    );

    // 3. late-b is not in xDS: its traffic is refused. Pushed over xDS: it gets HBONE traffic.
    assert!(
        echo_from(&client, late).is_err(),
        "late-b is not in the mesh yet"
    );
    run.istiod
        .as_ref()
        .unwrap()
        .set_config(run.topo.local_config(&run.lab));
    wait_until("node-a learns late-b", 10, || {
        has_workload(&run, "node-a", "late-b")
    });
    wait_until("node-b learns late-b", 10, || {
        has_workload(&run, "node-b", "late-b")
    });
    assert_eq!(echo_from(&client, late).unwrap(), "late-b 198.18.1.2");
    let m = get(&run, "node-b", 15020, "/metrics").1;
    let late_mtls = ringmesh::lab::apps::metric_sum(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("destination_workload", "late-b"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert!(late_mtls >= 1.0, "{m}");

    // 4. Removed over xDS: new connections to it stop.
    run.istiod
        .as_ref()
        .unwrap()
        .set_config(config_without(&run, "late-b"));
    wait_until("node-a forgets late-b", 10, || {
        !has_workload(&run, "node-a", "late-b")
    });
    wait_until("node-b forgets late-b", 10, || {
        !has_workload(&run, "node-b", "late-b")
    });
    assert!(echo_from(&client, late).is_err(), "late-b was removed");

    // 5. A DENY pushed over xDS closes a live connection and refuses new ones.
    let (mut s, mut r) = live(&run, "client-a", server);
    echo_once(&mut s, &mut r).unwrap();
    run.istiod
        .as_ref()
        .unwrap()
        .set_config(with_policy(config_without(&run, "late-b"), DENY_CLIENT));
    wait_until("node-b has the policy", 10, || {
        policies(&run, "node-b") == 1
    });
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let closed = loop {
        match echo_once(&mut s, &mut r) {
            Ok(()) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Err(format!(
                    "read timed out: the live connection was not closed ({e})"
                ));
            }
            Err(e) => break Ok(e),
        }
    };
    let closed = closed.unwrap();
    assert!(
        matches!(
            closed.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        "{closed}"
    );
    assert!(
        echo_from(&client, server).is_err(),
        "denied by the pushed policy"
    );
    run.istiod
        .as_ref()
        .unwrap()
        .set_config(config_without(&run, "late-b"));
    wait_until("node-b drops the policy", 10, || {
        policies(&run, "node-b") == 0
    });
    assert_eq!(echo_from(&client, server).unwrap(), "server-b 198.18.1.2");

    // 6. A malformed resource: each node proxy NACKs it naming it, and keeps serving.
    run.istiod.as_ref().unwrap().inject(
        ringmesh::proto::ADDRESS_TYPE,
        "c1//Pod/default/broken",
        vec![0x0a, 0x05, 0xff],
    );
    wait_until("both node proxies NACK", 10, || nacks(&run).len() >= 2);
    for (node, msg) in nacks(&run) {
        assert!(
            msg.starts_with("c1//Pod/default/broken: decode: "),
            "{node}: {msg}"
        );
    }
    let d = dump(&run, "node-a");
    let rejected = d["xds"]["types"][ringmesh::proto::ADDRESS_TYPE]["rejected"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(rejected.starts_with("c1//Pod/default/broken:"), "{d:#}");
    assert_eq!(echo_from(&client, server).unwrap(), "server-b 198.18.1.2");

    // 7. The control plane restarts: meanwhile the nodes serve their last state and stay
    //    ready; afterwards they resync (a policy added while they were away applies).
    let (mut s, mut r) = live(&run, "client-a", server);
    run.stop_control_plane();
    wait_until("node-a sees the stream gone", 10, || {
        dump(&run, "node-a")["xds"]["connected"] == false
    });
    assert_eq!(echo_from(&client, server).unwrap(), "server-b 198.18.1.2");
    assert_eq!(get(&run, "node-a", 15021, "/healthz/ready").0, 200);
    echo_once(&mut s, &mut r).unwrap();
    run.start_control_plane(with_policy(config_without(&run, "late-b"), DENY_CLIENT))
        .unwrap();
    wait_until("node-b resyncs the policy", 15, || {
        policies(&run, "node-b") == 1
    });
    assert!(
        echo_from(&client, server).is_err(),
        "the resynced policy applies"
    );
    let m = get(&run, "node-a", 15020, "/metrics").1;
    assert!(
        m.contains("istio_xds_connection_terminations_total{reason="),
        "{m}"
    );
    assert!(
        dump(&run, "node-a")["xds"]["connects"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    );
}

#[test]
fn netns_xds_rotation_and_ca_outage_keep_live_streams() {
    let Some((mut run, _dir)) = lab("netns_xds_rotation", "r") else {
        return;
    };
    serve_echo(&pod_ns(&run, "server-b"), 8080, "server-b");
    let server = addr(&run, "server-b", 8080);
    // 8 s certificates: rotated every ~4 s.
    let args = ["--shards", "1", "--cert-ttl", "8s"].map(String::from);
    run.start_ringmesh_exe(BIN.as_ref(), &args).unwrap();
    run.wait_ready(Duration::from_secs(20)).unwrap();
    let serial = |run: &LabRun| -> String {
        dump(run, "node-a")["certificates"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["identity"] == "spiffe://cluster.local/ns/default/sa/client")
                    .map(|c| c["certChain"][0]["serialNumber"].to_string())
            })
            .unwrap_or_default()
    };

    // A live stream echoing every 100 ms for the whole test.
    let (mut s, mut r) = live(&run, "client-a", server);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let pinger = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match echo_once(&mut s, &mut r) {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // Rotation.
    let first = serial(&run);
    assert!(!first.is_empty());
    wait_until("a rotation", 15, || {
        let now = serial(&run);
        !now.is_empty() && now != first
    });

    // A CA outage: rotations fail and are retried; the live stream does not notice, and new
    // connections keep working while the certificate is valid.
    run.stop_control_plane();
    let failures = || {
        ringmesh::lab::apps::metric_sum(
            &get(&run, "node-a", 15020, "/metrics").1,
            "ringmesh_ca_requests_total",
            &[("result", "failure")],
        )
    };
    wait_until("a failed CA request", 20, || failures() >= 1.0);
    assert_eq!(
        echo_from(&pod_ns(&run, "client-a"), server).unwrap(),
        "server-b 198.18.1.2"
    );
    let during = serial(&run);

    // The CA is back: the certificate is renewed, the stream is still the same one.
    run.start_control_plane(run.topo.local_config(&run.lab))
        .unwrap();
    wait_until("renewed after the outage", 20, || {
        let now = serial(&run);
        !now.is_empty() && now != during
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    pinger.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "the live stream broke");
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert_eq!(
        echo_from(&pod_ns(&run, "client-a"), server).unwrap(),
        "server-b 198.18.1.2"
    );
    // The lab's CA, asked from node-a's netns with node-a's token (as its node proxy asks):
    // client-a's identity (a pod on node-a) is signed, server-b's (a pod on node-b) refused.
    let target = ringmesh::xds::grpc::Target {
        what: "CA",
        uri: ringmesh::xds::grpc::parse_address("CA", &run.xds_address()).unwrap(),
        root: ringmesh::config::env::RootSource::File(run.ca_cert.clone()),
        alt_hostname: Some(ringmesh::lab::CONTROL_PLANE_NAME.into()),
        auth: ringmesh::config::env::AuthSource::File(run.token("node-a")),
        cluster_id: "Kubernetes".into(),
        headers: vec![],
    };
    let ca = ringmesh::certs::caclient::CaClient::new(target, Duration::from_secs(3600));
    // One runtime for both calls: the client keeps its channel, whose tasks live there.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetch = |who: &str| {
        let id = ringmesh::identity::Identity::new("cluster.local", "default", who);
        node_ns(&run, "node-a")
            .run(|| rt.block_on(ca.fetch(&id)))
            .unwrap()
    };
    assert!(fetch("client").is_ok());
    let e = fetch("server").unwrap_err().to_string();
    assert!(
        e.contains("Unauthenticated") && e.contains("found on node \"node-a\""),
        "{e}"
    );
    // No node holds a CA key: the lab's key file is not among any node proxy's arguments.
    for p in &run.proxies {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.child.id())).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).to_string();
        assert!(!cmdline.contains("--ca-key"), "{cmdline}");
    }
}
