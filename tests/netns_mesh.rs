//! The node proxy in real network namespaces: two nodes, captured pods with istio-cni's
//! nftables rules, one `ringmesh node` process per node, real TLS and HTTP/2 on the wire.
//! Needs root (under CI=true its absence fails the test).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use ringmesh::identity::Identity;
use ringmesh::identity::ca::Ca;

const NS_CFG: &str = r#"
workloads:
- {uid: client-a, name: client-a, namespace: default, serviceAccount: client, trustDomain: cluster.local, workloadIps: ["198.18.1.2", "fd00:198:18:1::2"], protocol: HBONE, node: a, services: {}}
- {uid: server-a, name: server-a, namespace: default, serviceAccount: server, trustDomain: cluster.local, workloadIps: ["198.18.1.3"], protocol: HBONE, node: a, services: {"default/echo.default.svc.cluster.local": {80: 8080}}}
- {uid: server-b, name: server-b, namespace: default, serviceAccount: server, trustDomain: cluster.local, workloadIps: ["198.18.2.2", "fd00:198:18:2::2"], protocol: HBONE, node: b, services: {"default/echo.default.svc.cluster.local": {80: 8080}}}
- {uid: imposter-b, name: imposter-b, namespace: default, serviceAccount: IMPOSTER_SA, trustDomain: cluster.local, workloadIps: ["198.18.2.3"], protocol: HBONE, node: b, services: {}}
- {uid: secure-b, name: secure-b, namespace: secure, serviceAccount: secure, trustDomain: cluster.local, workloadIps: ["198.18.2.4"], protocol: HBONE, node: b, services: {}}
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["/198.19.10.1"], ports: {80: 8080}}
policies:
- name: deny-9999
  namespace: default
  scope: Namespace
  action: Deny
  dryRun: false
  rules: [[[{destinationPorts: [9999]}]]]
- name: require-identity
  namespace: secure
  scope: Namespace
  action: Allow
  dryRun: false
  rules: [[[{principals: [!Presence []]}]]]
EXTRA
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn netns_two_node_mesh() {
    let Some(mut lab) = lab_or_skip("netns_two_node_mesh") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) = ca_files(dir.path());
    let a = lab.add_node("a").unwrap();
    let b = lab.add_node("b").unwrap();
    let client_a = lab.add_pod(a, "client-a", true).unwrap();
    let server_a = lab.add_pod(a, "server-a", true).unwrap();
    let server_b = lab.add_pod(b, "server-b", true).unwrap();
    let imposter_b = lab.add_pod(b, "imposter-b", true).unwrap();
    let secure_b = lab.add_pod(b, "secure-b", true).unwrap();
    let outsider_b = lab.add_pod(b, "outsider-b", false).unwrap();
    assert_eq!(server_b.ip.to_string(), "198.18.2.2");
    assert_eq!(outsider_b.ip.to_string(), "198.18.2.5");

    // Node a believes the imposter is sa "expected"; node b (its real node) issues "actual".
    let cfg_a = dir.path().join("a.yaml");
    let cfg_b = dir.path().join("b.yaml");
    std::fs::write(
        &cfg_a,
        NS_CFG
            .replace("IMPOSTER_SA", "expected")
            .replace("EXTRA", ""),
    )
    .unwrap();
    std::fs::write(
        &cfg_b,
        NS_CFG.replace("IMPOSTER_SA", "actual").replace("EXTRA", ""),
    )
    .unwrap();

    let ca = (ca_cert.clone(), ca_key.clone());
    let extra = ["--shards", "2", "--config-poll", "200ms"];
    let node_args = |cfg: &std::path::Path, pods: &[&ringmesh::lab::LabPod]| {
        common::node_args(cfg, &ca, pods, &extra)
    };
    let node_a = NodeProc::start(
        &lab.nodes[a].netns,
        &node_args(&cfg_a, &[&client_a, &server_a]),
        dir.path().join("node-a.log"),
    );
    let mut node_b = NodeProc::start(
        &lab.nodes[b].netns,
        &node_args(&cfg_b, &[&server_b, &imposter_b, &secure_b]),
        dir.path().join("node-b.log"),
    );
    for p in [&client_a, &server_a, &server_b, &imposter_b, &secure_b] {
        wait_listening(&p.netns, 15008);
        wait_listening(&p.netns, 15001);
        wait_listening(&p.netns, 15006);
    }

    let (ca_ns, sa_ns, sb_ns) = (ns(&client_a), ns(&server_a), ns(&server_b));
    serve_echo(&sa_ns, 8080, "server-a");
    serve_echo(&sb_ns, 8080, "server-b");
    serve_echo(&sb_ns, 9999, "deny-me");
    serve_sha(&sb_ns, 9000);
    serve_echo(&ns(&imposter_b), 8080, "imposter-b");
    serve_echo(&ns(&secure_b), 8080, "secure-b");
    let out_ns = ns(&outsider_b);
    serve_echo(&out_ns, 8080, "outsider-b");

    // Same node, through the proxy, keeping the client's source IP.
    assert_eq!(
        echo_from(&ca_ns, addr("198.18.1.3:8080")).unwrap(),
        "server-a 198.18.1.2"
    );
    // Cross node.
    assert_eq!(
        echo_from(&ca_ns, addr("198.18.2.2:8080")).unwrap(),
        "server-b 198.18.1.2"
    );

    pod_local_legs_use_cubic(&client_a.netns, &server_b.netns, &ca_ns);
    serve_echo(&sb_ns, 8081, "server-b-8081");
    upstream_ports_shared_across_destinations(&server_b.netns, &ca_ns);

    // IPv6, cross node, source kept.
    assert_eq!(
        echo_from(&ca_ns, addr("[fd00:198:18:2::2]:8080")).unwrap(),
        "server-b fd00:198:18:1::2"
    );

    // 100 MB cross node arrives intact.
    let (ok, secs) = send_checked(&ca_ns, addr("198.18.2.2:9000"), 100 * 1024 * 1024);
    assert!(ok, "checksum mismatch after 100 MB");
    eprintln!("100 MiB cross-node through HBONE in {secs:.2}s");

    // Service VIP spreads over both endpoints.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let g = echo_from(&ca_ns, addr("198.19.10.1:80")).unwrap();
        seen.insert(g.split(' ').next().unwrap().to_string());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["server-a".to_string(), "server-b".to_string()]
    );

    // The access lines name the service, on both sides.
    node_a.wait_log(
        "dst.service=\"echo.default.svc.cluster.local\"",
        Duration::from_secs(5),
    );
    node_b.wait_log(
        "dst.service=\"echo.default.svc.cluster.local\"",
        Duration::from_secs(5),
    );

    // On the wire between nodes: TLS to 15008 only, no plaintext payload.
    wire_is_tls_only(&lab, &ca_ns);

    // DENY policy: the connection is closed, no greeting.
    assert!(echo_from(&ca_ns, addr("198.18.2.2:9999")).is_err());
    node_a.wait_log("answered 401 Unauthorized", Duration::from_secs(5));

    // Wrong server identity: refused by the client side.
    let e = echo_from(&ca_ns, addr("198.18.2.3:8080")).unwrap_err();
    assert!(e.contains("without a greeting"), "{e}");
    node_a.wait_log(
        "expected spiffe://cluster.local/ns/default/sa/expected",
        Duration::from_secs(5),
    );

    // Plaintext from an uncaptured pod: allowed where no policy needs identity…
    assert_eq!(
        echo_from(&out_ns, addr("198.18.2.2:8080")).unwrap(),
        "server-b 198.18.2.5"
    );
    // …and blocked where a policy requires one.
    assert!(echo_from(&out_ns, addr("198.18.2.4:8080")).is_err());
    // While mTLS traffic to the same pod is allowed.
    assert!(echo_from(&ca_ns, addr("198.18.2.4:8080")).is_ok());
    // Captured → out-of-mesh pod: plaintext passthrough.
    assert_eq!(
        echo_from(&ca_ns, addr("198.18.2.5:8080")).unwrap(),
        "outsider-b 198.18.1.2"
    );

    // HBONE spoken directly to node b's 15008, as an independent client.
    direct_hbone_checks(&ca_cert, &ca_key, &client_a);

    // After all that bad input, both nodes still serve.
    assert!(echo_from(&ca_ns, addr("198.18.1.3:8080")).is_ok());
    assert!(echo_from(&ca_ns, addr("198.18.2.2:8080")).is_ok());

    // A broken config file is rejected; the old one keeps serving.
    std::fs::write(&cfg_b, "workloads: [ {uid: broken").unwrap();
    node_b.wait_log("config rejected", Duration::from_secs(5));
    assert!(echo_from(&ca_ns, addr("198.18.2.2:8080")).is_ok());
    // SIGHUP re-reads it too (and rejects it again).
    node_b.signal(nix::sys::signal::Signal::SIGHUP);
    node_b.wait_log("why=\"SIGHUP\"", Duration::from_secs(5));
    assert!(node_b.alive());

    // A live connection that a new policy denies is closed.
    let mut live = connect_from(&ca_ns, addr("198.18.2.2:8080")).unwrap();
    let mut r = BufReader::new(live.try_clone().unwrap());
    let mut g = String::new();
    r.read_line(&mut g).unwrap();
    let deny_8080 = "- name: deny-8080\n  namespace: default\n  scope: Namespace\n  action: Deny\n  dryRun: false\n  rules: [[[{destinationPorts: [8080], principals: [!Suffix \"sa/client\"]}]]]";
    std::fs::write(
        &cfg_b,
        NS_CFG
            .replace("IMPOSTER_SA", "actual")
            .replace("EXTRA", deny_8080),
    )
    .unwrap();
    node_b.wait_log("config reloaded", Duration::from_secs(5));
    node_b.wait_log(
        "closed connections now denied by policy",
        Duration::from_secs(5),
    );
    let _ = live.write_all(b"x\n");
    let mut rest = Vec::new();
    // Closed means EOF or a reset; a read that times out means it is still open.
    match r.read_to_end(&mut rest) {
        Ok(n) => assert_eq!(n, 0, "the denied live connection got data: {rest:?}"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the denied live connection is still open (read timed out: {e})"
        ),
    }
    assert!(
        echo_from(&ca_ns, addr("198.18.2.2:8080")).is_err(),
        "new ones are denied"
    );
    // Other pods are unaffected.
    assert!(echo_from(&ca_ns, addr("198.18.1.3:8080")).is_ok());
    assert!(node_b.alive(), "node b still runs");

    drop(node_a);
    drop(node_b);
    let prefix = lab.prefix.clone();
    lab.cleanup().unwrap();
    assert!(
        !ringmesh::lab::list_netns()
            .iter()
            .any(|n| n.starts_with(&prefix)),
        "lab namespaces left behind"
    );
}

/// Captures the fabric while a marked payload crosses nodes; the payload must not appear in
/// clear, and the only TCP between pods must be to port 15008.
fn wire_is_tls_only(lab: &ringmesh::lab::Lab, client: &ringmesh::inpod::Netns) {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("wire.pcap");
    let fabric = format!("{}-fabric", lab.prefix);
    let mut dump = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &fabric,
            "tcpdump",
            "--immediate-mode",
            "-Z",
            "root",
            "-i",
            "n1",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .arg("tcp")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump (tests/run.sh installs it)");
    let mut err = BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap(); // "listening on n1 …"
    assert!(line.contains("listening"), "tcpdump: {line}");
    let marker = b"RINGMESH-PLAINTEXT-MARKER-0123456789";
    let mut s = connect_from(client, addr("198.18.2.2:8080")).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut g = String::new();
    r.read_line(&mut g).unwrap();
    s.write_all(marker).unwrap();
    s.write_all(b"\n").unwrap();
    let mut back = String::new();
    r.read_line(&mut back).unwrap();
    assert_eq!(back.trim().as_bytes(), marker);
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = dump.wait();
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(bytes.len() > 200, "capture is empty");
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker),
        "plaintext payload seen on the wire"
    );
    let count = |filter: &str| {
        let out = std::process::Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&pcap)
            .arg(filter)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(count("tcp port 15008") > 0, "no HBONE packets captured");
    assert_eq!(
        count("tcp and not port 15008"),
        0,
        "non-HBONE TCP between nodes"
    );
}

/// Speaks HBONE to node b's 15008 from client-a's netns with client-a's identity, as an
/// independent peer built on the plain h2 crate.
fn direct_hbone_checks(
    ca_cert: &std::path::Path,
    ca_key: &std::path::Path,
    client: &ringmesh::lab::LabPod,
) {
    let ca = Ca::load(ca_cert, ca_key).unwrap();
    let id = Identity::new("cluster.local", "default", "client");
    let cert = ca
        .issue(&id, SystemTime::now(), Duration::from_secs(600))
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root().clone()).unwrap();
    let cfg = ringmesh::tls::client_config(&cert, Arc::new(roots));
    let netns = ns(client);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // A plain tokio socket made in the client pod's netns (the test is the HBONE peer).
        let sock = netns
            .connect_socket(addr("198.18.2.2:15008"), 0x539, None)
            .unwrap();
        let tcp = tokio::net::TcpSocket::from_std_stream(sock)
            .connect(addr("198.18.2.2:15008"))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ringmesh::tls::dummy_server_name(), tcp)
            .await
            .unwrap();
        let server_id = ringmesh::tls::peer_identity(tls.get_ref().1.peer_certificates()).unwrap();
        assert_eq!(
            server_id.to_string(),
            "spiffe://cluster.local/ns/default/sa/server"
        );
        let (h2, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let status = |req: http::Request<()>| {
            let mut h2 = h2.clone();
            async move {
                h2 = h2.ready().await.unwrap();
                let (resp, _send) = h2.send_request(req, false).unwrap();
                resp.await.unwrap()
            }
        };
        let connect = |a: &str| {
            http::Request::builder()
                .method("CONNECT")
                .uri(a)
                .body(())
                .unwrap()
        };
        assert_eq!(status(connect("198.18.2.2:9999")).await.status(), 401);
        assert_eq!(status(connect("198.18.2.3:8080")).await.status(), 400);
        assert_eq!(status(connect("198.18.2.2:1")).await.status(), 503);
        assert_eq!(status(connect("198.18.2.2:15006")).await.status(), 503);
        let get = http::Request::builder()
            .method("GET")
            .uri("http://198.18.2.2:8080/")
            .body(())
            .unwrap();
        assert_eq!(status(get).await.status(), 400);
        // And a good one carries data, with our source IP kept.
        let resp = status(connect("198.18.2.2:8080")).await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"server-b 198.18.1.2\n");
    });
}

#[allow(dead_code)]
/// `--local-tcp-congestion` (default cubic) holds on both pod-local legs of a live
/// connection — the app's connection into 15001 and the proxy's connection to the app —
/// while the HBONE leg keeps the netns default.
fn pod_local_legs_use_cubic(
    client_netns: &str,
    server_netns: &str,
    client: &ringmesh::inpod::Netns,
) {
    // The pods' default is made reno, so that cubic on the pod-local legs can only come from
    // the proxy's per-socket setting (with the kernel's default cubic it would pass anyway).
    let read_default = |netns: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "cat"])
            .arg("/proc/sys/net/ipv4/tcp_congestion_control")
            .output()
            .expect("read the congestion control default");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let set_default = |netns: &str, cc: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "sysctl", "-qw"])
            .arg(format!("net.ipv4.tcp_congestion_control={cc}"))
            .output()
            .expect("sysctl");
        assert!(out.status.success(), "sysctl failed: {out:?}");
    };
    let before = read_default(client_netns);
    for netns in [client_netns, server_netns] {
        set_default(netns, "reno");
    }
    let mut live = connect_from(client, addr("198.18.2.2:8080")).unwrap();
    let mut b = [0u8; 64];
    assert!(live.read(&mut b).unwrap() > 0, "no greeting");
    let ss = |netns: &str, filter: &str| {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "ss",
                "-tinH",
                "state",
                "established",
                filter,
            ])
            .output()
            .expect("ss (iproute2)");
        assert!(out.status.success(), "ss failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let proxy_side = ss(client_netns, "( sport = :15001 )");
    assert!(
        proxy_side.contains("cubic"),
        "proxy's socket from the app: {proxy_side}"
    );
    let to_app = ss(server_netns, "( dport = :8080 )");
    assert!(
        to_app.contains("cubic"),
        "proxy's socket to the app: {to_app}"
    );
    // The HBONE leg keeps the netns default: reno, or the one before if the pooled
    // connection it rides on is older than the change.
    let hbone = ss(client_netns, "( dport = :15008 )");
    assert!(
        !hbone.is_empty()
            && (hbone.contains("reno") || hbone.contains(&before))
            && !hbone.contains("cubic")
            || before == "cubic",
        "HBONE leg should keep the netns default (reno, or {before}): {hbone}"
    );
    drop(live);
    for netns in [client_netns, server_netns] {
        set_default(netns, &before);
    }
}

/// The proxy's connection to the app keeps the client's IP, and its TIME_WAIT sockets hold
/// ports: the source port must be chosen per destination (IP_BIND_ADDRESS_NO_PORT), not
/// reserved by bind() for every destination. With 20 ephemeral ports in the server pod,
/// 30 short connections over two app ports fit only if the ports are shared.
fn upstream_ports_shared_across_destinations(server_netns: &str, client: &ringmesh::inpod::Netns) {
    let sysctl = |v: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", server_netns, "sysctl", "-qw"])
            .arg(format!("net.ipv4.ip_local_port_range={v}"))
            .output()
            .expect("sysctl");
        assert!(out.status.success(), "sysctl failed: {out:?}");
    };
    let before = std::process::Command::new("ip")
        .args(["netns", "exec", server_netns, "sysctl", "-n"])
        .arg("net.ipv4.ip_local_port_range")
        .output()
        .expect("sysctl");
    let before = String::from_utf8_lossy(&before.stdout).to_string();
    assert!(!before.trim().is_empty(), "no port range read");
    sysctl("40000 40019");
    let mut failed = None;
    for i in 0..30 {
        let port = if i % 2 == 0 { 8080 } else { 8081 };
        if let Err(e) = echo_from(client, SocketAddr::new(addr("198.18.2.2:0").ip(), port)) {
            failed = Some(format!("connection {i} to port {port}: {e}"));
            break;
        }
    }
    sysctl(&before.split_whitespace().collect::<Vec<_>>().join(" "));
    assert_eq!(
        failed, None,
        "source ports were not shared across destinations"
    );
}

fn _unused(_: &mut dyn Read) {}
