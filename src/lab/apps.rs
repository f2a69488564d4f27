//! Small apps run inside pod namespaces for the demo, tests and benchmarks: an echo server
//! that greets with its name and the peer's IP, a sink that counts what it receives, and the
//! matching clients (echo check, bulk send, ping-pong latency). Blocking sockets, one thread
//! per connection; a socket made inside a pod stays in that pod's netns.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::inpod::Netns;

fn ringmesh_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    crate::hbone::normalize(ip)
}

fn listen_in(ns: &Netns, port: u16) -> std::io::Result<TcpListener> {
    ns.run(|| TcpListener::bind(("::", port)))
        .map_err(std::io::Error::other)?
}

/// An app that greets with "<name> <peer-ip>\n", then echoes.
pub fn serve_echo(ns: &Netns, port: u16, name: &str) -> std::io::Result<()> {
    let l = listen_in(ns, port)?;
    let name = name.to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let name = name.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_nodelay(true);
                let peer = s
                    .peer_addr()
                    .map(|a| ringmesh_ip(a.ip()).to_string())
                    .unwrap_or_default();
                if s.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 16384];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(())
}

/// An app that reads to EOF and answers the byte count it received.
pub fn serve_sink(ns: &Netns, port: u16) -> std::io::Result<()> {
    let l = listen_in(ns, port)?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(format!("{total}\n").as_bytes());
            });
        }
    });
    Ok(())
}

/// Connects from inside a pod (so the pod's capture rules apply).
pub fn connect_from(ns: &Netns, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = ns
        .run(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))
        .map_err(std::io::Error::other)??;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects, reads the greeting, checks an echo; returns the greeting.
pub fn echo_from(ns: &Netns, dst: SocketAddr) -> Result<String, String> {
    let mut s = connect_from(ns, dst).map_err(|e| format!("connect {dst}: {e}"))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .map_err(|e| format!("read greeting from {dst}: {e}"))?;
    if greeting.is_empty() {
        return Err(format!("{dst}: connection closed without a greeting"));
    }
    s.write_all(b"ping\n").map_err(|e| e.to_string())?;
    let mut back = String::new();
    r.read_line(&mut back).map_err(|e| e.to_string())?;
    if back != "ping\n" {
        return Err(format!("{dst}: echo returned {back:?}"));
    }
    Ok(greeting.trim().to_string())
}

/// Sends `len` bytes to a sink; returns the seconds it took (the sink's count must match).
pub fn send_bulk(ns: &Netns, dst: SocketAddr, len: u64) -> Result<f64, String> {
    let mut s = connect_from(ns, dst).map_err(|e| format!("connect {dst}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < len {
        let n = ((len - sent) as usize).min(buf.len());
        s.write_all(&buf[..n]).map_err(|e| format!("send: {e}"))?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut ans = String::new();
    s.read_to_string(&mut ans).map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if ans.trim() != len.to_string() {
        return Err(format!("sink received {:?} bytes, sent {len}", ans.trim()));
    }
    Ok(secs)
}

/// `n` request/response round trips of `size` bytes on one connection to an echo app;
/// returns each round trip's duration.
pub fn ping_pong(
    ns: &Netns,
    dst: SocketAddr,
    size: usize,
    n: usize,
) -> Result<Vec<Duration>, String> {
    let mut s = connect_from(ns, dst).map_err(|e| format!("connect {dst}: {e}"))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut greeting = String::new();
    r.read_line(&mut greeting).map_err(|e| e.to_string())?;
    let msg = vec![b'x'; size.max(1)];
    let mut back = vec![0u8; msg.len()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).map_err(|e| e.to_string())?;
        r.read_exact(&mut back).map_err(|e| e.to_string())?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// The p-th percentile (0–100) of durations, in microseconds.
pub fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Sums the samples of `metric` whose labels include every `labels` pair, in Prometheus text.
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
