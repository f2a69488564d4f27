//! The io_uring engine's fallback: a node proxy started with `--io-engine uring` where
//! io_uring is blocked (a seccomp filter answering `io_uring_setup` with EPERM, as container
//! runtimes' default profiles do) says so in one log line, reports `epoll` in its metrics and
//! config dump, and carries traffic; without the filter the same command runs `uring`.
//! Needs root (under CI=true its absence fails the test).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use ringmesh::inpod::Netns;
use ringmesh::lab::apps::echo_from;
use ringmesh::lab::run::http_get;

const CFG: &str = r#"
workloads:
- {uid: client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: a, services: {}}
- {uid: server, name: server, namespace: default, serviceAccount: server, workloadIps: ["198.18.1.3"], protocol: HBONE, node: a, services: {}}
"#;

#[test]
fn blocked_io_uring_falls_back_to_epoll() {
    let Some(mut lab) = lab_or_skip("blocked_io_uring_falls_back_to_epoll") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_files(dir.path());
    let a = lab.add_node("a").unwrap();
    let client = lab.add_pod(a, "client", true).unwrap();
    let server = lab.add_pod(a, "server", true).unwrap();
    let cfg = dir.path().join("a.yaml");
    std::fs::write(&cfg, CFG).unwrap();
    let node_ns =
        Netns::open(Path::new(&format!("/var/run/netns/{}", lab.nodes[a].netns))).unwrap();
    let (c_ns, s_ns) = (ns(&client), ns(&server));
    serve_echo(&s_ns, 8080, "server");
    let dst: SocketAddr = "198.18.1.3:8080".parse().unwrap();

    for (deny, want) in [(true, "epoll"), (false, "uring")] {
        let args = node_args(
            &cfg,
            &ca,
            &[&client, &server],
            &["--io-engine", "uring", "--shards", "1", "--no-zds"],
        );
        let node = NodeProc::start_with(
            &lab.nodes[a].netns,
            &args,
            dir.path().join(format!("node-{want}.log")),
            deny,
        );
        wait_listening(&client.netns, 15001);
        wait_listening(&server.netns, 15008);
        node.wait_log(&format!("engine: {want}"), Duration::from_secs(10));
        let ready = "127.0.0.1:15021".parse().unwrap();
        let t0 = std::time::Instant::now();
        while http_get(&node_ns, ready, "/healthz/ready")
            .map(|r| r.0)
            .ok()
            != Some(200)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{:?}\n{}",
                http_get(&node_ns, ready, "/healthz/ready"),
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let fell_back = node.log_text().contains("io_uring is not available");
        assert_eq!(fell_back, deny, "fallback line:\n{}", node.log_text());
        if deny {
            assert!(
                node.log_text().contains("Operation not permitted"),
                "{}",
                node.log_text()
            );
        }
        let (code, m) = http_get(&node_ns, "127.0.0.1:15020".parse().unwrap(), "/metrics").unwrap();
        assert_eq!(code, 200);
        assert!(
            m.contains(&format!("ringmesh_io_engine{{engine=\"{want}\"}} 1")),
            "metrics:\n{m}"
        );
        let (_, dump) =
            http_get(&node_ns, "127.0.0.1:15000".parse().unwrap(), "/config_dump").unwrap();
        assert!(
            dump.contains(&format!("\"ioEngine\": \"{want}\""))
                || dump.contains(&format!("\"ioEngine\":\"{want}\"")),
            "{dump}"
        );
        // The effective congestion control of the pod-local legs (this kernel has cubic).
        let compact: String = dump.split_whitespace().collect();
        assert!(
            compact.contains("\"localTcpCongestion\":\"cubic\""),
            "{dump}"
        );
        // Traffic flows on whichever engine runs: same node, through HBONE.
        assert_eq!(echo_from(&c_ns, dst).unwrap(), "server 198.18.1.2");
        // The ring's operation counters move only when the ring carries the traffic.
        let (_, m) = http_get(&node_ns, "127.0.0.1:15020".parse().unwrap(), "/metrics").unwrap();
        let value = |name: &str| -> f64 {
            m.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{m}"))
        };
        for name in [
            "ringmesh_uring_receives_total",
            "ringmesh_uring_received_bytes_total",
            "ringmesh_uring_sends_total",
            "ringmesh_uring_sent_bytes_total",
        ] {
            assert_eq!(value(name) > 0.0, !deny, "{name} on {want}:\n{m}");
        }
        assert!(
            value("ringmesh_uring_received_bytes_total") >= value("ringmesh_uring_receives_total"),
            "{m}"
        );
        drop(node);
    }
}
