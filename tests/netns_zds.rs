//! ZDS against a real `ringmesh node`: this test plays istio-cni on the SEQPACKET socket.
//! Snapshot and readiness, fd passing, idempotent add, del, bad and oversized messages (NACK
//! with a reason, still serving), reconnection with drain of pods missing from the new
//! snapshot, and the metrics and config_dump that result. Needs root.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use ringmesh::inpod::Netns;
use ringmesh::inpod::seqpacket::{SeqPacket, SeqPacketListener};
use ringmesh::inpod::zds::*;
use ringmesh::lab::run::http_get;

const CFG: &str = r#"
workloads:
- {uid: "cluster1//v1/Pod/default/p1", name: p1, namespace: default, serviceAccount: sa1, workloadIps: ["198.18.1.2"], protocol: HBONE, services: {}}
- {uid: "cluster1//v1/Pod/default/p2", name: p2, namespace: default, serviceAccount: sa2, workloadIps: ["198.18.1.3"], protocol: HBONE, services: {}}
"#;

fn add(uid: &str, name: &str) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Payload::Add(AddWorkload {
            uid: uid.into(),
            workload_info: Some(WorkloadInfo {
                name: name.into(),
                namespace: "default".into(),
                service_account: format!("sa{}", &name[1..]),
            }),
        })),
    }
}

fn send(c: &SeqPacket, bytes: &[u8], fd: Option<&File>) -> Option<String> {
    let fds: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
    c.send(bytes, &fds).unwrap();
    let r = c.recv(MAX_MESSAGE).unwrap().expect("an ack");
    WorkloadResponse::decode(&r.data[..])
        .unwrap()
        .error()
        .map(str::to_string)
}

fn req(c: &SeqPacket, r: &WorkloadRequest, fd: Option<&File>) -> Option<String> {
    send(c, &encode(r), fd)
}

fn accept_hello(l: &SeqPacketListener) -> SeqPacket {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = l.accept() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let hello = c.recv(MAX_MESSAGE).unwrap().unwrap();
            assert_eq!(hello.data, [0x08, 0x01], "ZdsHello{{V1}}");
            return c;
        }
        assert!(Instant::now() < deadline, "node proxy never connected");
    }
}

fn listening(netns: &str, port: u16) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "ss", "-Htln"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} "))
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn netns_zds_enrolment() {
    let Some(mut lab) = lab_or_skip("netns_zds_enrolment") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) = ca_files(dir.path());
    let node = lab.add_node("n").unwrap();
    let p1 = lab.add_pod(node, "p1", true).unwrap();
    let p2 = lab.add_pod(node, "p2", true).unwrap();
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(&cfg, CFG).unwrap();
    let sock = dir.path().join("zds.sock");
    let l = SeqPacketListener::bind(&sock).unwrap();
    l.set_accept_timeout(Duration::from_millis(200)).unwrap();
    let args: Vec<String> = [
        "--config",
        cfg.to_str().unwrap(),
        "--zds-socket",
        sock.to_str().unwrap(),
        "--zds-max-backoff",
        "100ms",
        "--ca-cert",
        ca_cert.to_str().unwrap(),
        "--ca-key",
        ca_key.to_str().unwrap(),
        "--shards",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proc_ = NodeProc::start(&lab.nodes[node].netns, &args, dir.path().join("node.log"));
    let node_ns = Netns::open(Path::new(&format!(
        "/var/run/netns/{}",
        lab.nodes[node].netns
    )))
    .unwrap();
    let ready = || {
        http_get(
            &node_ns,
            "127.0.0.1:15021".parse().unwrap(),
            "/healthz/ready",
        )
    };

    let c = accept_hello(&l);
    // Not ready before the snapshot.
    wait_until("readiness endpoint up", || ready().is_ok());
    let (code, body) = ready().unwrap();
    assert_eq!(code, 500);
    assert!(body.contains("workload proxy manager"), "{body}");

    let f1 = File::open(p1.netns_path()).unwrap();
    let f2 = File::open(p2.netns_path()).unwrap();
    assert_eq!(req(&c, &add("uid-1", "p1"), Some(&f1)), None);
    assert_eq!(req(&c, &add("uid-2", "p2"), Some(&f2)), None);
    assert_eq!(
        req(
            &c,
            &WorkloadRequest {
                payload: Some(Payload::SnapshotSent(SnapshotSent {}))
            },
            None
        ),
        None
    );
    assert_eq!(ready().unwrap().0, 200);
    wait_until("p1 listeners", || {
        listening(&p1.netns, 15008) && listening(&p1.netns, 15001)
    });
    wait_until("p2 listeners", || listening(&p2.netns, 15008));

    // Traffic between the two ZDS-enrolled pods (workloads found by namespace/name).
    let (n1, n2) = (ns(&p1), ns(&p2));
    serve_echo(&n2, 8080, "p2");
    serve_sha(&n2, 9000);
    let dst: SocketAddr = "198.18.1.3:8080".parse().unwrap();
    assert_eq!(echo_from(&n1, dst).unwrap(), "p2 198.18.1.2");
    let sent = 3 * 1024 * 1024;
    let (ok, _) = send_checked(&n1, "198.18.1.3:9000".parse().unwrap(), sent);
    assert!(ok);

    // Bad input: NACK with the reason, nothing else changes.
    let e = send(&c, &[0xff, 0xff, 0xff], None).expect("NACK");
    assert!(e.contains("does not decode"), "{e}");
    let e = req(&c, &add("uid-3", "p1"), None).expect("NACK");
    assert!(e.contains("carries no network namespace fd"), "{e}");
    let keep = WorkloadRequest {
        payload: Some(Payload::Keep(KeepWorkload {
            uid: "uid-1".into(),
        })),
    };
    let e = req(&c, &keep, None).expect("NACK");
    assert!(e.contains("after snapshot_sent"), "{e}");
    let e = send(&c, &[0u8; 2000], None).expect("NACK");
    assert!(e.contains("truncated"), "{e}");
    let del2 = WorkloadRequest {
        payload: Some(Payload::Del(DelWorkload {
            uid: "uid-2".into(),
        })),
    };
    let e = req(&c, &del2, Some(&f1)).expect("NACK");
    assert!(e.contains("must not carry a file descriptor"), "{e}");
    let not_netns = File::open("/proc/self/status").unwrap();
    let e = req(&c, &add("uid-9", "p9"), Some(&not_netns)).expect("NACK");
    assert!(e.contains("not a network namespace"), "{e}");
    assert_eq!(ready().unwrap().0, 200);
    assert_eq!(echo_from(&n1, dst).unwrap(), "p2 198.18.1.2");

    // Add again with the same netns: a no-op.
    assert_eq!(req(&c, &add("uid-1", "p1"), Some(&f1)), None);
    // Del: p2's listeners close; adding it back opens them again.
    assert_eq!(req(&c, &del2, None), None);
    wait_until("p2 drained", || !listening(&p2.netns, 15008));
    assert_eq!(req(&c, &add("uid-2", "p2"), Some(&f2)), None);
    wait_until("p2 back", || listening(&p2.netns, 15008));

    // Reconnection: the new snapshot names only p1, so p2 is drained.
    drop(c);
    let c = accept_hello(&l);
    assert_eq!(req(&c, &add("uid-1", "p1"), Some(&f1)), None);
    assert_eq!(
        req(
            &c,
            &WorkloadRequest {
                payload: Some(Payload::SnapshotSent(SnapshotSent {}))
            },
            None
        ),
        None
    );
    wait_until("p2 drained after the new snapshot", || {
        !listening(&p2.netns, 15008)
    });
    assert!(listening(&p1.netns, 15008));
    wait_until("ready again", || matches!(ready(), Ok((200, _))));

    // Metrics counted the bytes this test sent to p2.
    let (code, m) = http_get(&node_ns, "127.0.0.1:15020".parse().unwrap(), "/metrics").unwrap();
    assert_eq!(code, 200);
    let got = ringmesh::lab::apps::metric_sum(
        &m,
        "istio_tcp_received_bytes_total",
        &[
            ("reporter", "destination"),
            ("destination_workload", "p2"),
            ("source_workload", "p1"),
        ],
    );
    assert!(
        got >= sent as f64,
        "destination received bytes {got} < {sent}\n{m}"
    );
    let out = ringmesh::lab::apps::metric_sum(
        &m,
        "istio_tcp_received_bytes_total",
        &[
            ("reporter", "source"),
            ("destination_workload", "p2"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert!(
        out >= sent as f64,
        "source-side request bytes {out} < {sent}"
    );
    assert!(m.contains("workload_manager_active_proxy_count 1"), "{m}");
    eprintln!("zds test: {got} request bytes counted at the destination");

    // config_dump: workloads, the ZDS pod with its info, its certificate.
    let (code, dump) =
        http_get(&node_ns, "127.0.0.1:15000".parse().unwrap(), "/config_dump").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["workloads"].as_array().unwrap().len(), 2);
    assert_eq!(v["workloadState"]["uid-1"]["info"]["name"], "p1");
    assert_eq!(v["workloadState"]["uid-1"]["state"], "Up");
    assert!(v["workloadState"].get("uid-2").is_none());
    let ids: Vec<&str> = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["identity"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["spiffe://cluster.local/ns/default/sa/sa1"]);
    drop(proc_);
}
