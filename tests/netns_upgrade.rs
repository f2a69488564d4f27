//! Rolling updates and crashes of `ringmesh node` in a real lab (root): a new process beside
//! the old one takes every pod's listeners over (none refused, none reset), new connections
//! go to it, and on SIGTERM the old one hands its live connections over (a 1 GiB transfer
//! and an idle-then-active connection go on byte-exact, and so do plaintext transfers on
//! TCP relays: passthrough to an out-of-mesh pod, and from one to 15006) and exits within
//! 5 s; a connection
//! the new process refuses drains in the old one; after `kill -9` and a restart the pods are
//! enrolled again and new connections work.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ringmesh::inpod::Netns;
use ringmesh::lab::apps::metric_sum;
use ringmesh::lab::run::LabRun;
use ringmesh::lab::topology::Topology;

const BIN: &str = env!("CARGO_BIN_EXE_ringmesh");

fn topology(name: &str) -> Topology {
    let text = format!(
        r#"
name: {name}
nodes: [{{name: node-a}}, {{name: node-b}}]
pods:
- {{name: client-a, node: node-a, serviceAccount: client, labels: {{istio.io/dataplane-mode: ambient}}}}
- {{name: server-b, node: node-b, serviceAccount: server, labels: {{istio.io/dataplane-mode: ambient}}}}
- {{name: outside-b, node: node-b}}
"#
    );
    Topology::parse("netns_upgrade topology", &text).unwrap()
}

fn pod_ns(run: &LabRun, pod: &str) -> Netns {
    ns(run.lab.pod(pod).unwrap())
}

fn addr(run: &LabRun, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::new(run.lab.pod(pod).unwrap().ip.into(), port)
}

fn node_metrics(run: &LabRun, node: &str) -> String {
    let ns = Netns::open(&std::path::PathBuf::from(format!(
        "/var/run/netns/{}",
        run.node_netns(node).unwrap()
    )))
    .unwrap();
    let at = SocketAddr::from(([127, 0, 0, 1], run.node_port(node, 15020)));
    ringmesh::lab::run::http_get(&ns, at, "/metrics").unwrap().1
}

/// New connections opened back to back from client-a to server-b's echo (6 at a time)
/// until `stop`; (succeeded, failed, the first failures).
struct Churn {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

fn churn(run: &LabRun) -> Churn {
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let dst = addr(run, "server-b", 9000);
    // Several connectors at once, so that listen queues hold connections when the old
    // process lets go of them.
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let ns = pod_ns(run, "client-a");
            let (o, f, s) = (ok.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    match echo_from(&ns, dst) {
                        Ok(_) => o.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            if errors.len() < 5 {
                                errors.push(e);
                            }
                            f.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    let thread = std::thread::spawn(move || {
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    });
    Churn {
        ok,
        failed,
        stop,
        thread,
    }
}

impl Churn {
    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.join().unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// A connection to server-b's echo opened now; `then` exchanges on it later.
fn long_lived(run: &LabRun) -> (std::net::TcpStream, BufReader<std::net::TcpStream>) {
    let s = connect_from(&pod_ns(run, "client-a"), addr(run, "server-b", 9000)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("server-b"), "{greeting:?}");
    (s, r)
}

fn exchange(c: &mut (std::net::TcpStream, BufReader<std::net::TcpStream>), what: &str) {
    if let Err(e) = try_exchange(c, what) {
        panic!("{e}");
    }
}

fn try_exchange(
    c: &mut (std::net::TcpStream, BufReader<std::net::TcpStream>),
    what: &str,
) -> Result<(), String> {
    c.0.write_all(format!("{what}\n").as_bytes())
        .map_err(|e| format!("{what}: send: {e}"))?;
    let mut back = String::new();
    let n =
        c.1.read_line(&mut back)
            .map_err(|e| format!("{what}: echo answer (not a timeout): {e}"))?;
    if n == 0 {
        return Err(format!("{what}: the long-lived connection was closed"));
    }
    if back != format!("{what}\n") {
        return Err(format!("{what}: echoed {back:?}"));
    }
    Ok(())
}

/// Every proxy's log lines but successful access lines (for a failure's message).
fn logs(run: &LabRun, old_log: &str) -> String {
    let keep = |l: &&str| !l.contains("connection complete") || l.contains("ERROR");
    let mut out = String::new();
    for p in &run.proxies {
        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(keep).collect();
        out += &format!(
            "--- {} {}:\n{}\n",
            p.node,
            p.log.display(),
            lines.join("\n")
        );
    }
    let lines: Vec<&str> = old_log.lines().filter(keep).collect();
    out += &format!("--- the old process:\n{}\n", lines.join("\n"));
    out
}

/// A transfer of `len` bytes from `pod` to server-b's checksum sink (9001), paced to take at
/// least `at_least` (so that it runs across a roll); (byte-exact, seconds).
fn send_paced(
    run: &LabRun,
    pod: &str,
    len: u64,
    at_least: Duration,
) -> std::thread::JoinHandle<(bool, f64)> {
    send_paced_to(run, pod, addr(run, "server-b", 9001), len, at_least)
}

/// As [`send_paced`], to the checksum sink at `dst`.
fn send_paced_to(
    run: &LabRun,
    pod: &str,
    dst: SocketAddr,
    len: u64,
    at_least: Duration,
) -> std::thread::JoinHandle<(bool, f64)> {
    let ns = pod_ns(run, pod);
    std::thread::spawn(move || common::send_paced(&ns, dst, len, at_least))
}

/// The number after `key=` in the old process's hand-over log line.
fn handover_field(log: &str, key: &str) -> Option<u64> {
    let line = log
        .lines()
        .find(|l| l.contains("live connections handed over to the next node proxy"))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn netns_upgrade_hands_live_connections_to_the_new_process() {
    let Some(_) = lab_or_skip("netns_upgrade") else {
        return;
    };
    let name = format!("ru{}", std::process::id() % 10000);
    let dir = tempfile::tempdir().unwrap();
    let mut run = LabRun::up(topology(&name), &dir.path().join(&name)).unwrap();
    serve_echo(&pod_ns(&run, "server-b"), 9000, "server-b");
    serve_sha(&pod_ns(&run, "server-b"), 9001);
    // [relay hand-over] An out-of-mesh pod's checksum sink (client-a reaches it by
    // passthrough on node-a's 15001).
    serve_sha(&pod_ns(&run, "outside-b"), 9001);
    // A drain far longer than the 5 s the old process may take: only a hand-over (not a
    // drain) lets it exit in time with the connections below still open.
    let drain = [
        "--drain-deadline".to_string(),
        "60s".to_string(),
        "--hbone-codec".to_string(),
        "link".to_string(),
    ];
    run.start_ringmesh_exe(std::path::Path::new(BIN), &drain)
        .unwrap();
    run.wait_ready(Duration::from_secs(30)).unwrap();
    echo_from(&pod_ns(&run, "client-a"), addr(&run, "server-b", 9000)).unwrap();

    // Roll the client's node (its outbound HBONE connections move), then the server's
    // (its inbound ones).
    for node in ["node-a", "node-b"] {
        // Idle across the roll, used after it.
        let mut live = long_lived(&run);
        if let Err(e) = try_exchange(&mut live, "before") {
            panic!("{node}: {e}\n{}", logs(&run, ""));
        }
        let bulk = send_paced(&run, "client-a", 1 << 30, Duration::from_secs(8));
        // [relay hand-over] Plaintext across the roll, on TCP relays: client-a → outside-b
        // (passthrough, a relay of node-a's proxy) and outside-b → server-b (15006, a relay
        // of node-b's). Each roll moves the one its node carries.
        let passthrough = send_paced_to(
            &run,
            "client-a",
            addr(&run, "outside-b", 9001),
            256 << 20,
            Duration::from_secs(8),
        );
        let plain_in = send_paced_to(
            &run,
            "outside-b",
            addr(&run, "server-b", 9001),
            256 << 20,
            Duration::from_secs(8),
        );
        let churn = churn(&run);
        std::thread::sleep(Duration::from_millis(500));
        let roll = run
            .roll_node(
                node,
                std::path::Path::new(BIN),
                &drain,
                Duration::from_secs(90),
            )
            .unwrap();
        // The old process is gone: the idle connection goes on in the new one.
        if let Err(e) = try_exchange(&mut live, "after") {
            panic!("{node}: {e}\n{}", logs(&run, &roll.old_log));
        }
        let (ok, secs) = bulk.join().unwrap_or((false, 0.0));
        if !ok {
            eprintln!("{node}: the transfer failed\n{}", logs(&run, &roll.old_log));
        }
        // [relay hand-over] Both plaintext transfers, byte-exact and across the roll.
        for (what, t) in [("passthrough", passthrough), ("15006", plain_in)] {
            let (ok, secs) = t.join().unwrap_or((false, 0.0));
            assert!(
                ok,
                "{node}: the plaintext ({what}) transfer across the roll arrived byte-exact\n{}",
                logs(&run, &roll.old_log)
            );
            assert!(
                secs > roll.old_exit.as_secs_f64(),
                "{node}: the plaintext ({what}) transfer ran across the roll"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        let (n_ok, n_failed, errors) = churn.finish();
        let m = node_metrics(&run, node);
        let received = metric_sum(
            &m,
            "ringmesh_handover_connections_total",
            &[("outcome", "received")],
        );
        eprintln!(
            "{node}: old process exited {:?} after SIGTERM; handed over {:?} connections, cut {:?}; \
             new process received {received}; 1 GiB in {secs:.1}s byte-exact: {ok}; \
             {n_ok} new connections, {n_failed} failed",
            roll.old_exit,
            handover_field(&roll.old_log, "connections"),
            handover_field(&roll.old_log, "cut"),
        );
        assert!(
            ok,
            "{node}: the 1 GiB transfer across the roll arrived byte-exact"
        );
        assert!(
            secs > roll.old_exit.as_secs_f64(),
            "{node}: the transfer ran across the roll"
        );
        assert_eq!(
            n_failed,
            0,
            "{node}: new connections failed during the roll: {errors:?}\n{}",
            logs(&run, &roll.old_log)
        );
        assert!(n_ok > 20, "{node}: only {n_ok} connections during the roll");
        assert!(
            roll.old_exit < Duration::from_secs(5),
            "{node}: the old process took {:?} to exit:\n{}",
            roll.old_exit,
            roll.old_log
        );
        assert_eq!(
            handover_field(&roll.old_log, "cut"),
            Some(0),
            "{node}: old log:\n{}",
            roll.old_log
        );
        // [relay hand-over] Counted as handed over: the long-lived connection, the transfer
        // and the plaintext relay this node carries.
        assert!(
            handover_field(&roll.old_log, "connections").is_some_and(|n| n >= 3),
            "{node}: the long-lived connection, the transfer and the relay were handed over:\n{}",
            roll.old_log
        );
        assert!(
            handover_field(&roll.old_log, "tcp_relays").is_some_and(|n| n >= 1),
            "{node}: the plaintext relay was handed over:\n{}",
            roll.old_log
        );
        assert!(
            roll.old_log.contains("drained: no connection left"),
            "{node}: the old process cut connections:\n{}",
            roll.old_log
        );
        assert!(
            received >= 3.0,
            "{node}: the new process adopted them:\n{m}\n{}",
            logs(&run, &roll.old_log)
        );
        assert_eq!(
            metric_sum(
                &m,
                "ringmesh_handover_pods_total",
                &[("direction", "received")]
            ),
            1.0,
            "{node}: the pod's listeners were taken over:\n{m}\n{}",
            logs(&run, &roll.old_log)
        );
        if let Err(e) = try_exchange(&mut live, "again") {
            panic!("{node}: {e}\n{}", logs(&run, &roll.old_log));
        }
        drop(live);
        // The new process counts new connections.
        let before = metric_sum(&m, "istio_tcp_connections_opened_total", &[]);
        echo_from(&pod_ns(&run, "client-a"), addr(&run, "server-b", 9000)).unwrap();
        let m = node_metrics(&run, node);
        assert!(
            metric_sum(&m, "istio_tcp_connections_opened_total", &[]) > before,
            "{node}: a new connection is not counted by the new process:\n{m}"
        );
    }
}

#[test]
fn netns_upgrade_drains_a_connection_the_new_process_refuses() {
    let Some(_) = lab_or_skip("netns_upgrade") else {
        return;
    };
    let name = format!("rf{}", std::process::id() % 10000);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
name: {name}
nodes: [{{name: node-a}}, {{name: node-b}}]
pods:
- {{name: client-a, node: node-a, serviceAccount: client, labels: {{istio.io/dataplane-mode: ambient}}}}
- {{name: client-a2, node: node-a, serviceAccount: other, labels: {{istio.io/dataplane-mode: ambient}}}}
- {{name: server-b, node: node-b, serviceAccount: server, labels: {{istio.io/dataplane-mode: ambient}}}}
- {{name: outside-b, node: node-b}}
"#
    );
    let topo = Topology::parse("netns_upgrade topology", &text).unwrap();
    let mut run = LabRun::up(topo, &dir.path().join(&name)).unwrap();
    serve_echo(&pod_ns(&run, "server-b"), 9000, "server-b");
    serve_sha(&pod_ns(&run, "server-b"), 9001);
    // Out of the mesh: reached by passthrough (a relay of node-a's), and a client of
    // server-b's 15006 (a relay of node-b's).
    serve_echo(&pod_ns(&run, "outside-b"), 9000, "outside-b");
    let drain = [
        "--drain-deadline".to_string(),
        "60s".to_string(),
        "--hbone-codec".to_string(),
        "link".to_string(),
    ];
    run.start_ringmesh_exe(std::path::Path::new(BIN), &drain)
        .unwrap();
    run.wait_ready(Duration::from_secs(30)).unwrap();
    for node in ["node-a", "node-b"] {
        // client-a2's connection to 9000 is on an HBONE connection of its own (another
        // identity): the new process refuses that one, so it stays and drains.
        let s = connect_from(&pod_ns(&run, "client-a2"), addr(&run, "server-b", 9000)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut greeting = String::new();
        r.read_line(&mut greeting).unwrap();
        let mut kept = (s, r);
        exchange(&mut kept, "before");
        // The TCP relay to 9000 that this node carries: refused too, it drains here.
        let (from, to) = match node {
            "node-a" => ("client-a", "outside-b"),
            _ => ("outside-b", "server-b"),
        };
        let s = connect_from(&pod_ns(&run, from), addr(&run, to, 9000)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut greeting = String::new();
        r.read_line(&mut greeting).unwrap();
        let mut kept_relay = (s, r);
        exchange(&mut kept_relay, "before");
        let bulk = send_paced(&run, "client-a", 256 << 20, Duration::from_secs(6));
        std::thread::sleep(Duration::from_millis(500));
        // Used once the old process has kept it (after SIGTERM), then closed: the old
        // process exits.
        let old_log = run.node_proxy(node).unwrap().log.clone();
        let ender = std::thread::spawn(move || {
            let t0 = Instant::now();
            let both = |log: &str| {
                log.contains("did not take an HBONE connection")
                    && log.contains("did not take a TCP relay")
            };
            while !both(&std::fs::read_to_string(&old_log).unwrap_or_default())
                && t0.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(500));
            exchange(&mut kept, "after");
            exchange(&mut kept_relay, "after");
            drop(kept);
            drop(kept_relay);
        });
        let mut extra = drain.to_vec();
        extra.extend(["--fault-refuse-adopt".to_string(), "9000".to_string()]);
        let roll = run
            .roll_node(
                node,
                std::path::Path::new(BIN),
                &extra,
                Duration::from_secs(90),
            )
            .unwrap();
        ender.join().unwrap();
        let (ok, secs) = bulk.join().unwrap();
        eprintln!(
            "{node}: refused one: old process exited {:?} after SIGTERM; handed over {:?}, cut {:?}; transfer {secs:.1}s byte-exact: {ok}",
            roll.old_exit,
            handover_field(&roll.old_log, "connections"),
            handover_field(&roll.old_log, "cut"),
        );
        assert!(ok, "{node}: the transfer moved and arrived byte-exact");
        assert!(
            roll.old_log.contains("did not take an HBONE connection"),
            "{node}: old log:\n{}",
            roll.old_log
        );
        assert!(
            roll.old_log.contains("did not take a TCP relay"),
            "{node}: the relay to 9000 was refused:\n{}",
            roll.old_log
        );
        // The HBONE connection and the relay.
        assert!(
            handover_field(&roll.old_log, "kept").is_some_and(|n| n >= 2),
            "{node}: old log:\n{}",
            roll.old_log
        );
        assert!(
            handover_field(&roll.old_log, "connections").is_some_and(|n| n >= 1),
            "{node}: the transfer moved:\n{}",
            roll.old_log
        );
        assert!(
            roll.old_log.contains("drained: no connection left"),
            "{node}: the refused connection drained in the old process:\n{}",
            roll.old_log
        );
    }
}

#[test]
fn netns_upgrade_restarts_after_kill_9() {
    let Some(_) = lab_or_skip("netns_upgrade") else {
        return;
    };
    let name = format!("rk{}", std::process::id() % 10000);
    let dir = tempfile::tempdir().unwrap();
    let mut run = LabRun::up(topology(&name), &dir.path().join(&name)).unwrap();
    serve_echo(&pod_ns(&run, "server-b"), 9000, "server-b");
    run.start_ringmesh_exe(std::path::Path::new(BIN), &[])
        .unwrap();
    run.wait_ready(Duration::from_secs(30)).unwrap();
    let mut live = long_lived(&run);
    exchange(&mut live, "before");
    let mut more: Vec<_> = (0..2).map(|_| long_lived(&run)).collect();
    for c in &mut more {
        exchange(c, "before");
    }
    // The killed process records its live count every 250 ms: let it see all three.
    std::thread::sleep(Duration::from_millis(600));
    let t0 = Instant::now();
    run.crash_and_restart("node-a", std::path::Path::new(BIN), &[])
        .unwrap();
    let ready = t0.elapsed();
    let mut first_ok = None;
    while t0.elapsed() < Duration::from_secs(30) {
        if echo_from(&pod_ns(&run, "client-a"), addr(&run, "server-b", 9000)).is_ok() {
            first_ok = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_ok = first_ok.expect("new connections work after the restart");
    eprintln!(
        "kill -9: restarted process ready after {ready:?}, first new connection after {first_ok:?}"
    );
    // The connection the killed process carried is gone (reset, not hanging).
    live.0.write_all(b"after\n").ok();
    let mut back = String::new();
    let r = live.1.read_line(&mut back);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut),
        "the killed process's connection should be closed or reset, got {r:?} {back:?}"
    );
    let m = node_metrics(&run, "node-a");
    assert!(
        m.lines()
            .any(|l| l == "workload_manager_active_proxy_count 1"),
        "the pod is enrolled again:\n{m}"
    );
    assert!(
        m.lines()
            .any(|l| l == "ringmesh_crash_connections_cut_total 3"),
        "the restarted process counts the three connections the crash cut:\n{m}"
    );
    drop(more);
}
