//! Helpers for netns tests: privilege checks, node proxy processes, and small apps (echo,
//! checksum sink) run inside pod namespaces.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringmesh::inpod::Netns;
use ringmesh::lab::Lab;
use sha2::{Digest, Sha256};

/// A lab if we may build one. Without root: a failure under CI=true, else a skip (None).
pub fn lab_or_skip(test: &str) -> Option<Lab> {
    match Lab::new("") {
        Ok(l) => {
            for tool in ["nft", "ip"] {
                if Command::new(tool).arg("--version").output().is_err() {
                    if std::env::var("CI").as_deref() == Ok("true") {
                        panic!("{test}: `{tool}` is missing (run tests/run.sh, which installs it)");
                    }
                    eprintln!("SKIP {test}: `{tool}` is missing");
                    return None;
                }
            }
            Some(l)
        }
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {e}");
            }
            eprintln!("SKIP {test}: {e}");
            None
        }
    }
}

pub fn ns(pod: &ringmesh::lab::LabPod) -> Netns {
    Netns::open(&pod.netns_path()).expect("pod netns")
}

/// A `ringmesh node` process running in a node's netns; killed on drop.
pub struct NodeProc {
    pub child: Child,
    pub log: PathBuf,
}

impl NodeProc {
    pub fn start(node_netns: &str, args: &[String], log: PathBuf) -> NodeProc {
        Self::start_with(node_netns, args, log, false)
    }

    /// Like `start`; with `deny_io_uring` the process runs under a seccomp filter that
    /// answers `io_uring_setup` with EPERM, as container runtimes' default profiles do.
    pub fn start_with(
        node_netns: &str,
        args: &[String],
        log: PathBuf,
        deny_io_uring: bool,
    ) -> NodeProc {
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("ip");
        if deny_io_uring {
            use std::os::unix::process::CommandExt;
            // SAFETY: pre_exec runs in the forked child before exec; it only calls prctl.
            unsafe {
                cmd.pre_exec(deny_io_uring_setup);
            }
        }
        let child = cmd
            .args([
                "netns",
                "exec",
                node_netns,
                env!("CARGO_BIN_EXE_ringmesh"),
                "node",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start ringmesh node");
        NodeProc { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal to the proxy (the child is `ip netns exec`, which execs it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits until the log contains `needle` (or panics with the log).
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {needle:?} in log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Installs a seccomp filter: `io_uring_setup` (425 on every architecture since 5.1) fails
/// with EPERM, everything else is allowed. Inherited across exec.
fn deny_io_uring_setup() -> std::io::Result<()> {
    const IO_URING_SETUP: u32 = 425;
    let bpf = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let filter = [
        // A = seccomp_data.nr
        bpf((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0, 0, 0),
        bpf(
            (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            0,
            1,
            IO_URING_SETUP,
        ),
        bpf(
            (libc::BPF_RET | libc::BPF_K) as u16,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        bpf(
            (libc::BPF_RET | libc::BPF_K) as u16,
            0,
            0,
            libc::SECCOMP_RET_ALLOW,
        ),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl calls with a filter that lives for the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until a TCP port listens inside a netns.
pub fn wait_listening(netns: &str, port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "ss", "-Htln"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port} in {netns}");
}

fn listen_in(ns: &Netns, port: u16) -> TcpListener {
    ns.run(|| TcpListener::bind(("::", port))).unwrap().unwrap()
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use ringmesh::lab::apps::{connect_from, echo_from};

/// An app that greets with "<name> <peer-ip>\n", then echoes.
pub fn serve_echo(ns: &Netns, port: u16, name: &str) {
    ringmesh::lab::apps::serve_echo(ns, port, name).expect("echo app");
}

/// An app that reads to EOF and answers the SHA-256 (hex) and byte count of what it read.
pub fn serve_sha(ns: &Netns, port: u16) {
    let l = listen_in(ns, port);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            h.update(&buf[..n]);
                            total += n as u64;
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(format!("{} {total}\n", hex(&h.finalize())).as_bytes());
            });
        }
    });
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sends `len` bytes of a deterministic pattern to a checksum sink; returns (ok, seconds).
pub fn send_checked(ns: &Netns, dst: SocketAddr, len: u64) -> (bool, f64) {
    send_paced(ns, dst, len, Duration::ZERO)
}

/// As [`send_checked`], paced to take at least `at_least` (to run across an event, e.g. a
/// rolling update).
pub fn send_paced(ns: &Netns, dst: SocketAddr, len: u64, at_least: Duration) -> (bool, f64) {
    let mut s = connect_from(ns, dst).expect("connect to sink");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut block = vec![0u8; 1024 * 1024];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut h = Sha256::new();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < len {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = ((len - sent) as usize).min(block.len());
        s.write_all(&block[..n]).expect("send");
        h.update(&block[..n]);
        sent += n as u64;
        let due = at_least.mul_f64(sent as f64 / len as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .expect("sink answer");
    let secs = start.elapsed().as_secs_f64();
    let want = format!("{} {len}", hex(&h.finalize()));
    if answer.trim() != want {
        eprintln!("checksum sink answered {answer:?}, expected {want:?}");
    }
    (answer.trim() == want, secs)
}

/// `ringmesh node` arguments: config, CA, the `--pod` of each pod (uid = pod name), extras.
pub fn node_args(
    cfg: &Path,
    ca: &(PathBuf, PathBuf),
    pods: &[&ringmesh::lab::LabPod],
    extra: &[&str],
) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--config".into(),
        cfg.display().to_string(),
        "--ca-cert".into(),
        ca.0.display().to_string(),
        "--ca-key".into(),
        ca.1.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    for p in pods {
        v.push("--pod".into());
        v.push(format!("{}={}", p.name, p.netns_path().display()));
    }
    v
}

/// Writes the CA root files with `ringmesh ca init`.
pub fn ca_files(dir: &Path) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("ca.pem"), dir.join("ca.key"));
    let st = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args(["ca", "init", "--cert"])
        .arg(&c)
        .arg("--key")
        .arg(&k)
        .status()
        .unwrap();
    assert!(st.success());
    (c, k)
}
