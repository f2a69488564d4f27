//! Rolling updates and crashes of a lab node's proxy, as Kubernetes does them to a DaemonSet
//! with `maxSurge: 1`: the new process starts beside the old one (same ZDS socket, same
//! pods), and once it is ready the old one gets SIGTERM; or the proxy is killed with
//! SIGKILL and started again.
//!
//! In the lab both processes share the node's netns (a real ztunnel pod has one of its own),
//! so the second one's admin ports move: 25000/25020/25021 instead of 15000/15020/15021
//! (`ProxyProc::admin_base`, `LabRun::node_port`). The pods' listeners are unaffected: they
//! live in the pods' namespaces.

use std::path::Path;
use std::time::{Duration, Instant};

use super::LabError;
use super::run::{LabRun, ProxyProc};

/// What a rolling update measured.
#[derive(Debug, Clone)]
pub struct Roll {
    /// From the old process's SIGTERM to its exit.
    pub old_exit: Duration,
    /// The old process's log (its drain lines).
    pub old_log: String,
}

impl LabRun {
    /// The port a node's current proxy serves `port` (15000, 15020 or 15021) on.
    pub fn node_port(&self, node: &str, port: u16) -> u16 {
        let base = self.node_proxy(node).map_or(15000, |p| p.admin_base);
        port - 15000 + base
    }

    /// The newest node proxy process of `node` (not a waypoint or relay).
    pub fn node_proxy(&self, node: &str) -> Option<&ProxyProc> {
        self.proxies
            .iter()
            .rev()
            .find(|p| p.node == node && is_node_proxy(p))
    }

    /// Rolls `node`'s proxy: starts `exe node …` (this lab's arguments plus `extra`) beside
    /// the running one, waits until it has taken the ZDS snapshot and is ready, then sends
    /// the old one SIGTERM and waits up to `exit_timeout` for it to exit.
    pub fn roll_node(
        &mut self,
        node: &str,
        exe: &Path,
        extra: &[String],
        exit_timeout: Duration,
    ) -> Result<Roll, LabError> {
        let old = self
            .proxies
            .iter()
            .rposition(|p| p.node == node && is_node_proxy(p))
            .ok_or_else(|| LabError::Topology(format!("no node proxy runs on {node}")))?;
        let base = if self.proxies[old].admin_base == 15000 {
            25000
        } else {
            15000
        };
        let mut args = self.ringmesh_args(node);
        args.extend([
            "--admin-addr".into(),
            format!("127.0.0.1:{base}"),
            "--stats-addr".into(),
            format!("[::]:{}", base + 20),
            "--readiness-addr".into(),
            format!("[::]:{}", base + 21),
        ]);
        args.extend_from_slice(extra);
        let seen = self.snapshot_counts();
        let netns = self
            .node_netns(node)
            .ok_or_else(|| LabError::Topology(format!("no node {node}")))?;
        let tag = format!("ringmesh-{base}");
        self.start_in_netns(
            &netns,
            node,
            &tag,
            exe,
            &args,
            &[("RUST_LOG".into(), "info".into())],
        )?;
        if let Some(p) = self.proxies.last_mut() {
            p.admin_base = base;
        }
        let i = self.zds.iter().position(|(n, _)| n == node);
        let mut after = seen.clone();
        for (k, a) in after.iter_mut().enumerate() {
            if Some(k) != i {
                *a = 0;
            }
        }
        self.wait_ready_after(&after, Duration::from_secs(30))?;
        let mut p = self.proxies.remove(old);
        let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
        let t0 = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| LabError::Topology(format!("cannot SIGTERM the old proxy: {e}")))?;
        loop {
            if let Ok(Some(_)) = p.child.try_wait() {
                break;
            }
            if t0.elapsed() > exit_timeout {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                // Put it back: dropping it kills it.
                self.proxies.push(p);
                return Err(LabError::Topology(format!(
                    "the old node proxy on {node} did not exit within {exit_timeout:?} of SIGTERM:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let old_exit = t0.elapsed();
        let old_log = std::fs::read_to_string(&p.log).unwrap_or_default();
        Ok(Roll { old_exit, old_log })
    }

    /// Kills `node`'s proxy with SIGKILL (no drain, no hand-over) and starts it again with
    /// the same arguments plus `extra`; returns once the new one is ready.
    pub fn crash_and_restart(
        &mut self,
        node: &str,
        exe: &Path,
        extra: &[String],
    ) -> Result<(), LabError> {
        let old = self
            .proxies
            .iter()
            .rposition(|p| p.node == node && is_node_proxy(p))
            .ok_or_else(|| LabError::Topology(format!("no node proxy runs on {node}")))?;
        let mut p = self.proxies.remove(old);
        let _ = p.child.kill();
        let _ = p.child.wait();
        let seen = self.snapshot_counts();
        let mut args = self.ringmesh_args(node);
        args.extend_from_slice(extra);
        let netns = self
            .node_netns(node)
            .ok_or_else(|| LabError::Topology(format!("no node {node}")))?;
        self.start_in_netns(
            &netns,
            node,
            "ringmesh-restarted",
            exe,
            &args,
            &[("RUST_LOG".into(), "info".into())],
        )?;
        let i = self.zds.iter().position(|(n, _)| n == node);
        let after: Vec<usize> = seen
            .iter()
            .enumerate()
            .map(|(k, s)| if Some(k) == i { *s } else { 0 })
            .collect();
        self.wait_ready_after(&after, Duration::from_secs(30))
    }
}

fn is_node_proxy(p: &ProxyProc) -> bool {
    let l = p.log.to_string_lossy();
    l.contains(".ringmesh") && l.ends_with(".log")
}
