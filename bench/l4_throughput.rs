//! Single-stream bulk throughput through the node proxy vs the same transfer without it,
//! measured in one run, interleaved (raw, mesh, relays, raw, mesh, …) so machine drift hits
//! all. Two ceilings run beside them over the same three TCP legs a meshed connection has
//! (`relay.rs`): a relay that only copies (`tcp relay`) and one that adds rustls on the
//! middle leg (`tls relay`) — what copies and crypto alone cost here. CPU per GB is the
//! node proxies' (or the relay threads') CPU time over the bytes sent.
//!
//! Run as root: `cargo bench --bench l4_throughput` (env: `BENCH_BYTES`, default 1 GiB;
//! `BENCH_ROUNDS`, default 3; `BENCH_SHARDS`, default one per core). Under `cargo test` it runs
//! as a smoke test (64 MiB, one round) so the suite checks the bench still works.

#[path = "../tests/common/mod.rs"]
mod common;
mod relay;

use std::net::SocketAddr;

use common::*;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Sends `len` bytes; returns Gb/s (the sink's count must match).
fn send(ns: &ringmesh::inpod::Netns, dst: SocketAddr, len: u64) -> f64 {
    let secs = ringmesh::lab::apps::send_bulk(ns, dst, len).expect("bulk transfer");
    len as f64 * 8.0 / secs / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const CFG: &str = r#"
workloads:
- {uid: client-a, name: client-a, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, services: {}}
- {uid: server-a, name: server-a, namespace: default, serviceAccount: server, workloadIps: ["198.18.1.3"], protocol: HBONE, services: {}}
- {uid: server-b, name: server-b, namespace: default, serviceAccount: server, workloadIps: ["198.18.2.2"], protocol: HBONE, services: {}}
"#;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(mut lab) = lab_or_skip("l4_throughput") else {
        return;
    };
    // Under `cargo test` (no --bench flag) this is a smoke run: small and one round.
    let full = std::env::args().any(|a| a == "--bench");
    let bytes = env_u64("BENCH_BYTES", if full { 1 << 30 } else { 64 << 20 });
    let rounds = env_u64("BENCH_ROUNDS", if full { 3 } else { 1 });
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) = ca_files(dir.path());
    let a = lab.add_node("a").unwrap();
    let b = lab.add_node("b").unwrap();
    let client_a = lab.add_pod(a, "client-a", true).unwrap();
    let server_a = lab.add_pod(a, "server-a", true).unwrap();
    let server_b = lab.add_pod(b, "server-b", true).unwrap();
    let raw_client = lab.add_pod(a, "raw-client-a", false).unwrap();
    let raw_server_a = lab.add_pod(a, "raw-server-a", false).unwrap();
    let raw_server_b = lab.add_pod(b, "raw-server-b", false).unwrap();
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(&cfg, CFG).unwrap();
    let ca = (ca_cert.clone(), ca_key.clone());
    let shards = std::env::var("BENCH_SHARDS").ok();
    let extra: Vec<&str> = match &shards {
        Some(n) => vec!["--shards", n.as_str()],
        None => vec![],
    };
    let args = |pods: &[&ringmesh::lab::LabPod]| common::node_args(&cfg, &ca, pods, &extra);
    let _na = NodeProc::start(
        &lab.nodes[a].netns,
        &args(&[&client_a, &server_a]),
        dir.path().join("a.log"),
    );
    let _nb = NodeProc::start(
        &lab.nodes[b].netns,
        &args(&[&server_b]),
        dir.path().join("b.log"),
    );
    for p in [&client_a, &server_a, &server_b] {
        wait_listening(&p.netns, 15008);
    }
    for p in [&server_a, &server_b, &raw_server_a, &raw_server_b] {
        ringmesh::lab::apps::serve_sink(&ns(p), 9000).expect("sink");
    }
    let (mesh_ns, raw_ns) = (ns(&client_a), ns(&raw_client));
    let dst = |p: &ringmesh::lab::LabPod| SocketAddr::new(p.ip.into(), 9000);
    // Warm-up: handshakes and pools.
    send(&mesh_ns, dst(&server_a), 16 << 20);
    send(&mesh_ns, dst(&server_b), 16 << 20);
    // Relays run in the uncaptured pods: front 127.0.0.1:<port> in raw-client-a.
    let relays = |server: &ringmesh::lab::LabPod, base: u16| {
        let mk = |port: u16, tls: bool| {
            relay::start(
                ns(&raw_client),
                ns(server),
                server.ip.into(),
                port,
                port + 100,
                9000,
                tls,
            )
        };
        (mk(base, false), mk(base + 1, true))
    };
    let local = |port: u16| SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port);
    let mesh_cpu = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|p| ringmesh::benchmark::load::cpu_seconds(*p))
            .sum()
    };
    let (pa, pb) = (_na.child.id(), _nb.child.id());
    let cases = [
        ("same node", &raw_server_a, &server_a, vec![pa], 7010),
        ("cross node", &raw_server_b, &server_b, vec![pa, pb], 7020),
    ];
    println!(
        "l4_throughput: 1 stream, {} MiB per transfer, {rounds} interleaved rounds, median Gb/s; CPU s per GB (the proxies' or relays' CPU over the bytes)",
        bytes >> 20
    );
    println!(
        "| path | raw (no mesh) Gb/s | ringmesh Gb/s | tcp relay Gb/s | tls relay Gb/s | ringmesh / raw | ringmesh / tls relay | CPU s/GB ringmesh | tcp relay | tls relay |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let gb = bytes as f64 / 1e9;
    for (name, raw_dst, mesh_dst, pids, base) in cases {
        let (tcp_relay, tls_relay) = relays(raw_dst, base);
        let (mut raw, mut mesh, mut tcp, mut tls) = (vec![], vec![], vec![], vec![]);
        let (mut mesh_c, mut tcp_c, mut tls_c) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            raw.push(send(&raw_ns, dst(raw_dst), bytes));
            let c0 = mesh_cpu(&pids);
            mesh.push(send(&mesh_ns, dst(mesh_dst), bytes));
            mesh_c.push((mesh_cpu(&pids) - c0) / gb);
            for (r, v, c, port) in [
                (&tcp_relay, &mut tcp, &mut tcp_c, base),
                (&tls_relay, &mut tls, &mut tls_c, base + 1),
            ] {
                let c0 = r.cpu_seconds();
                v.push(send(&raw_ns, local(port), bytes));
                r.wait_idle();
                c.push((r.cpu_seconds() - c0) / gb);
            }
        }
        let (r, m, t, s) = (
            median(raw.clone()),
            median(mesh.clone()),
            median(tcp.clone()),
            median(tls.clone()),
        );
        println!(
            "| {name} | {r:.2} (runs {}) | {m:.2} (runs {}) | {t:.2} (runs {}) | {s:.2} (runs {}) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            fmt(&raw),
            fmt(&mesh),
            fmt(&tcp),
            fmt(&tls),
            m / r,
            m / s,
            median(mesh_c),
            median(tcp_c),
            median(tls_c),
        );
    }
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}
