//! `ringmesh lab` and `ringmesh demo` as a user runs them: up/down are idempotent and leave
//! nothing behind (namespaces, root-namespace rules, routes, nft tables, processes), also
//! when a step fails half-way; the demo runs and its report says every path behaved (L4
//! through the node proxies, L7 through the waypoint) and what the waypoint counted. Root.

mod common;

use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringmesh");

/// What the root namespace looks like: namespaces of ours, rules, routes, nft tables.
fn root_state(prefix: &str) -> (Vec<String>, String, String, String) {
    let ns: Vec<String> = ringmesh::lab::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    let out = |args: &[&str]| {
        String::from_utf8_lossy(
            &Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    (
        ns,
        out(&["ip", "rule"]),
        out(&["ip", "route", "show", "table", "all"]),
        out(&["nft", "list", "tables"]),
    )
}

fn ringmesh(args: &[&str]) -> (bool, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn topology(name: &str) -> String {
    ringmesh::lab::topology::DEMO.replace("name: rmdemo", &format!("name: {name}"))
}

#[test]
fn netns_lab_up_down_is_idempotent_and_leak_free() {
    let Some(_) = lab_or_skip("netns_lab_up_down") else {
        return;
    };
    let name = format!("rmt{}", std::process::id() % 100000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topo.yaml");
    std::fs::write(&file, topology(&name)).unwrap();
    let state = dir.path().join("state");
    let (f, s) = (file.to_str().unwrap(), state.to_str().unwrap());
    let before = root_state(&name);
    assert!(before.0.is_empty());
    // If an assertion fails with the lab up, take it down anyway (its holder is a process of
    // its own and would outlive the test).
    struct Down(String, String);
    impl Drop for Down {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = ringmesh(&["lab", "down", &self.0, "--state-dir", &self.1]);
            }
        }
    }
    let _down = Down(name.clone(), s.to_string());

    let (ok, out) = ringmesh(&["lab", "up", f, "--state-dir", s]);
    assert!(ok, "{out}");
    assert!(
        out.contains("pod legacy-b: 198.18.2.4 fd00:198:18:2::4 (out of mesh)"),
        "{out}"
    );
    let (ok, out) = ringmesh(&["lab", "up", f, "--state-dir", s]);
    assert!(ok && out.contains("already up"), "{out}");
    let (ok, out) = ringmesh(&["lab", "status", "--state-dir", s]);
    assert!(ok && out.contains(&format!("lab {name}: up")), "{out}");
    // fabric, 2 nodes, 7 pods, the waypoint's pod and the control plane.
    assert!(out.contains("12 namespaces"), "{out}");
    // exec in a pod and in a node; traffic through the proxies.
    let (ok, out) = ringmesh(&[
        "lab",
        "exec",
        "client-a",
        "--state-dir",
        s,
        "--",
        "ip",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(ok && out.contains("198.18.1.2/24"), "{out}");
    let (ok, out) = ringmesh(&[
        "lab",
        "exec",
        "node-a",
        "--state-dir",
        s,
        "--",
        "curl",
        "-s",
        "localhost:15021/healthz/ready",
    ]);
    assert!(ok && out.contains("ready"), "{out}");
    // An edit of the topology file's policies is pushed to the node proxies over xDS.
    let policies = |node: &str| -> usize {
        let (_, out) = ringmesh(&[
            "lab",
            "exec",
            node,
            "--state-dir",
            s,
            "--",
            "curl",
            "-s",
            "localhost:15000/config_dump",
        ]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()["policies"]
            .as_array()
            .map_or(usize::MAX, |p| p.len())
    };
    assert_eq!(policies("node-b"), 1);
    let text = topology(&name);
    let without = &text[..text.find("policies:").unwrap()];
    std::fs::write(&file, format!("{without}policies: []\n")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while policies("node-b") != 0 || policies("node-a") != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the edited topology was not pushed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (ok, out) = ringmesh(&["lab", "exec", "nope", "--state-dir", s, "--", "true"]);
    assert!(
        !ok && out.contains("no lab has a pod or node named \"nope\""),
        "{out}"
    );

    let (ok, out) = ringmesh(&["lab", "down", f, "--state-dir", s]);
    assert!(ok, "{out}");
    let (ok, out) = ringmesh(&["lab", "down", &name, "--state-dir", s]);
    assert!(ok, "down twice: {out}");
    assert_eq!(
        root_state(&name),
        before,
        "the root namespace changed or namespaces leaked"
    );
    assert!(!state.join(&name).exists());
    let ps = Command::new("pgrep")
        .args(["-f", &format!("{}.*{}", BIN, s)])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn netns_lab_failing_step_leaves_nothing() {
    let Some(_) = lab_or_skip("netns_lab_failing_step") else {
        return;
    };
    let name = format!("rmf{}", std::process::id() % 100000);
    let dir = tempfile::tempdir().unwrap();
    let topo = ringmesh::lab::topology::Topology::parse("t", &topology(&name)).unwrap();
    let before = root_state(&name);
    // Make a step after the namespaces exist fail: config.yaml is a directory.
    let state = dir.path().join(&name);
    std::fs::create_dir_all(state.join("config.yaml")).unwrap();
    let err = ringmesh::lab::run::LabRun::up(topo, &state)
        .err()
        .expect("up must fail");
    assert!(err.to_string().contains("config.yaml"), "{err}");
    assert_eq!(
        root_state(&name),
        before,
        "a failed lab up left something behind"
    );
    // A bad topology file is refused before anything is made.
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "name: x\nnodes: [{name: a}]\npods: [{name: p, node: b}]\n",
    )
    .unwrap();
    let (ok, out) = ringmesh(&[
        "lab",
        "up",
        file.to_str().unwrap(),
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("pods[0].node: no node \"b\""), "{out}");
}

#[test]
fn netns_demo_report() {
    let Some(_) = lab_or_skip("netns_demo_report") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let before = root_state("rmdemo");
    let o = Command::new(BIN)
        .args([
            "demo",
            "--bulk-bytes",
            "33554432",
            "--pings",
            "300",
            "--json",
        ])
        .arg(&json)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "demo failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("every path behaved as the ambient docs say"),
        "{out}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["ok"], true);
    let paths = r["paths"].as_array().unwrap();
    let names: Vec<&str> = paths.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "same node",
            "cross node",
            "service VIP",
            "out of mesh",
            "denied by policy",
            "waypoint route",
            "weighted split",
            "pod via waypoint",
            "waypoint bypassed"
        ]
    );
    assert!(paths.iter().all(|p| p["ok"] == true), "{r}");
    assert!(r["throughput_gbps"].as_f64().unwrap() > 0.0);
    assert!(r["latency_us"]["p99"].as_f64().unwrap() > 0.0);
    assert!(r["bytes_carried"].as_f64().unwrap() >= 33554432.0);
    // The waypoint counted every request the demo sent through it (the seeds' HTTPRoute
    // echo → echo-v1 and the 80/20 split), all answered 200.
    let w = &r["waypoint"];
    let sent = w["sent"].as_f64().unwrap();
    assert!(sent >= 1000.0, "{r}");
    assert!(w["requests"].as_f64().unwrap() >= sent, "{r}");
    assert_eq!(w["by_code"]["200"].as_f64(), w["requests"].as_f64(), "{r}");
    let v2 = w["by_workload"]["echo-v2"].as_f64().unwrap_or(0.0);
    assert!(
        w["by_workload"]["echo-v1"].as_f64().unwrap() > 3.0 * v2 && v2 > 0.0,
        "{r}"
    );
    // Both node proxies run the engine the suite asked for (uring unless told otherwise).
    let want = std::env::var("RINGMESH_IO_ENGINE").unwrap_or_else(|_| "uring".into());
    assert_eq!(r["io_engines"], serde_json::json!([want]), "{r}");
    // The demo runs in xDS mode: both node proxies and the waypoint synced with the lab's
    // control plane and got every certificate from its CA, nothing rejected either way.
    assert_eq!(r["config_source"], "xds", "{r}");
    let cp = &r["control_plane"];
    assert_eq!(cp["node_proxies"], 2, "{r}");
    assert_eq!(cp["waypoints"], 1, "{r}");
    assert!(cp["acks"].as_u64().unwrap() >= 4, "{r}");
    assert_eq!(cp["nacks"], 0, "{r}");
    // Per node, one per service account with a pod there (node-a: default/client,
    // default/echo, l7/echo; node-b: default/client-b, default/echo, l7/echo), and the
    // waypoint's own.
    assert_eq!(cp["certificates"], 7, "{r}");
    assert_eq!(cp["refused"], 0, "{r}");
    assert_eq!(
        root_state("rmdemo"),
        before,
        "the demo left something behind"
    );
}
