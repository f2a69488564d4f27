//! `ringmesh lab up | down | exec | status`: labs that outlive the command. `up` starts a
//! background `ringmesh lab serve` that holds the lab (namespaces, ZDS servers, node proxies)
//! until `down` sends it SIGTERM; its state lives in `<state-dir>/<name>/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::run::{LabRun, NodeMode, cleanup_on_signal, remove_netns_with_prefix};
use super::topology::Topology;
use super::{LabError, check_privileges, list_netns};

fn read_topology(file: &Path) -> Result<Topology, LabError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| LabError::Topology(format!("cannot read {}: {e}", file.display())))?;
    Topology::parse(&file.display().to_string(), &text)
}

/// A lab named either by its topology file or by its name.
fn lab_name(lab: &str) -> Result<String, LabError> {
    let p = Path::new(lab);
    if p.is_file() {
        Ok(read_topology(p)?.name)
    } else {
        Ok(lab.to_string())
    }
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `lab up`: starts the holder process and waits until the lab is ready.
pub fn up(file: &Path, no_proxies: bool, local_config: bool, state: &Path) -> Result<(), LabError> {
    check_privileges()?;
    let topo = read_topology(file)?;
    let dir = state.join(&topo.name);
    if let Some(pid) = read_pid(&dir)
        && pid_alive(pid)
    {
        println!("lab {} is already up (pid {pid})", topo.name);
        return Ok(());
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::Topology(format!("{}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(dir.join("ready"));
    let log = dir.join("lab.log");
    let f = std::fs::File::create(&log)
        .map_err(|e| LabError::Topology(format!("{}: {e}", log.display())))?;
    let exe = std::env::current_exe().map_err(|e| LabError::Topology(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "serve"])
        .arg(file)
        .arg("--state-dir")
        .arg(state);
    if no_proxies {
        cmd.arg("--no-proxies");
    }
    if local_config {
        cmd.arg("--local-config");
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(
            f.try_clone()
                .map_err(|e| LabError::Topology(e.to_string()))?,
        )
        .stderr(f)
        .spawn()
        .map_err(|source| LabError::Spawn {
            cmd: "ringmesh lab serve".into(),
            source,
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if dir.join("ready").exists() {
            println!("lab {} is up: {}", topo.name, dir.display());
            print!(
                "{}",
                std::fs::read_to_string(dir.join("ready")).unwrap_or_default()
            );
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(LabError::Topology(format!(
                "lab serve exited ({st}):\n{out}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err(LabError::Topology(format!(
        "lab {} not ready after 60s; see {}",
        topo.name,
        log.display()
    )))
}

/// `lab serve`: holds the lab until SIGTERM/SIGINT, then tears it down. While it is up, a
/// change to the topology file's services, policies, labels or accounts is pushed to the node
/// proxies over xDS (and written to the local config file); pods and nodes are fixed.
pub fn serve(
    file: &Path,
    no_proxies: bool,
    local_config: bool,
    state: &Path,
) -> Result<(), LabError> {
    let held = cleanup_on_signal().map_err(|e| LabError::Topology(e.to_string()))?;
    let topo = read_topology(file)?;
    let dir = state.join(&topo.name);
    let mut run = LabRun::up(topo, &dir)?;
    if local_config {
        run.mode = NodeMode::File;
    }
    std::fs::write(dir.join("pid"), std::process::id().to_string())
        .map_err(|e| LabError::Topology(e.to_string()))?;
    let mut summary = String::new();
    summary.push_str(&match run.mode {
        NodeMode::Xds => format!(
            "control plane: xDS and CA at {} (netns {}-istiod), certificate for {}, root {}\n",
            run.xds_address(),
            run.topo.name,
            super::CONTROL_PLANE_NAME,
            run.ca_cert.display()
        ),
        NodeMode::File => format!(
            "node config: local file {} with the built-in CA ({})\n",
            run.config.display(),
            run.ca_cert.display()
        ),
    });
    if !no_proxies {
        run.start_ringmesh(&[])?;
        run.wait_ready(Duration::from_secs(30))?;
        summary.push_str("node proxies: ringmesh node on every node (logs: <node>.ringmesh.log)\n");
    } else if !run.topo.waypoints.is_empty() {
        // The nodes stay empty for another node proxy; the waypoints are ringmesh's.
        let exe = std::env::current_exe().map_err(|e| LabError::Topology(e.to_string()))?;
        run.start_waypoints_exe(&exe, &[])?;
    }
    for w in &run.topo.waypoints {
        summary.push_str(&format!(
            "waypoint {}/{}: ringmesh waypoint in pod {} on {} (for {}, log {}.waypoint.log)\n",
            w.namespace,
            w.name,
            w.pod_name(),
            w.node,
            w.traffic_type.as_str(),
            w.name
        ));
    }
    for b in run.topo.waypoint_bindings() {
        summary.push_str(&format!("  {b}\n"));
    }
    for n in &run.topo.nodes {
        summary.push_str(&format!(
            "node {}: netns {}, ZDS socket {}\n",
            n.name,
            run.node_netns(&n.name).unwrap_or_default(),
            run.zds_socket(&n.name).display()
        ));
        if no_proxies && run.mode == NodeMode::Xds {
            let env: Vec<String> = run
                .ztunnel_env(&n.name)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            summary.push_str(&format!("  ztunnel env: {}\n", env.join(" ")));
        }
    }
    for p in &run.lab.pods {
        summary.push_str(&format!(
            "pod {}: {} {} {}\n",
            p.name,
            p.ip,
            p.ip6,
            if p.captured {
                "(ambient)"
            } else {
                "(out of mesh)"
            }
        ));
    }
    summary.push_str(&format!("config: {}\n", run.config.display()));
    std::fs::write(dir.join("ready"), &summary).map_err(|e| LabError::Topology(e.to_string()))?;
    *held.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = stamp(file);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = stamp(file);
        if now == seen {
            continue;
        }
        seen = now;
        let mut guard = held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(run) = guard.as_mut() else { continue };
        match read_topology(file) {
            Ok(t) if same_shape(&t, &run.topo) => match run.set_topology(t) {
                Ok(()) => eprintln!(
                    "lab: {} changed: config pushed to the node proxies",
                    file.display()
                ),
                Err(e) => eprintln!(
                    "lab: {} changed but could not be applied: {e}",
                    file.display()
                ),
            },
            Ok(_) => eprintln!(
                "lab: {} changed its nodes or pods: restart the lab for those (services, policies, labels and accounts are pushed live)",
                file.display()
            ),
            Err(e) => eprintln!(
                "lab: {} changed but is not a valid topology, keeping the old one: {e}",
                file.display()
            ),
        }
    }
}

/// Whether two topologies have the same nodes and pods (names and nodes).
fn same_shape(a: &Topology, b: &Topology) -> bool {
    let pods = |t: &Topology| -> Vec<(String, String)> {
        t.pods
            .iter()
            .map(|p| (p.name.clone(), p.node.clone()))
            .collect()
    };
    let nodes = |t: &Topology| -> Vec<String> { t.nodes.iter().map(|n| n.name.clone()).collect() };
    a.name == b.name && nodes(a) == nodes(b) && pods(a) == pods(b)
}

/// `lab down`: stops the holder, then removes whatever is left. Idempotent.
pub fn down(lab: &str, state: &Path) -> Result<(), LabError> {
    check_privileges()?;
    let name = lab_name(lab)?;
    let dir = state.join(&name);
    if let Some(pid) = read_pid(&dir)
        && pid_alive(pid)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let left = remove_netns_with_prefix(&name);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "lab {name} is down{}",
        if left > 0 {
            format!(" ({left} leftover namespaces removed)")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn labs(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `lab status`.
pub fn status(state: &Path) -> Result<(), LabError> {
    let all = labs(state);
    if all.is_empty() {
        println!("no labs are up (state dir {})", state.display());
    }
    let ns = list_netns();
    for name in all {
        let dir = state.join(&name);
        let pid = read_pid(&dir);
        let alive = pid.is_some_and(pid_alive);
        let count = ns
            .iter()
            .filter(|n| n.starts_with(&format!("{name}-")))
            .count();
        println!(
            "lab {name}: {} (pid {}), {count} namespaces, state {}",
            if alive { "up" } else { "holder not running" },
            pid.map_or("-".into(), |p| p.to_string()),
            dir.display()
        );
        if let Ok(s) = std::fs::read_to_string(dir.join("ready")) {
            for line in s.lines() {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

/// `lab exec TARGET -- CMD…`: returns the command's exit code.
pub fn exec(
    target: &str,
    lab: Option<&str>,
    state: &Path,
    cmd: &[String],
) -> Result<i32, LabError> {
    let name = match lab {
        Some(l) => lab_name(l)?,
        None => {
            let ns = list_netns();
            let hits: Vec<String> = labs(state)
                .into_iter()
                .filter(|l| ns.contains(&format!("{l}-{target}")))
                .collect();
            match hits.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(LabError::Topology(format!(
                        "no lab has a pod or node named {target:?} (see `ringmesh lab status`)"
                    )));
                }
                _ => {
                    return Err(LabError::Topology(format!(
                        "several labs have {target:?}: pick one with --lab ({})",
                        hits.join(", ")
                    )));
                }
            }
        }
    };
    let netns = format!("{name}-{target}");
    let st = Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(cmd)
        .status()
        .map_err(|source| LabError::Spawn {
            cmd: format!("ip netns exec {netns}"),
            source,
        })?;
    Ok(st.code().unwrap_or(1))
}

/// The default state dir, for callers that want it as a path.
pub fn default_state() -> PathBuf {
    PathBuf::from(crate::config::flags::LAB_STATE_DIR)
}
