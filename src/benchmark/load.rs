//! The load generator: bulk streams, request/response (closed loop and fixed rate), short
//! connections, and idle tunnels, all driven from inside pod namespaces with blocking
//! sockets; plus reading a proxy's CPU time and RSS from /proc.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::stats::Latency;
use crate::inpod::Netns;
use crate::lab::apps;

/// `streams` parallel transfers of `bytes` each; returns total Gb/s.
pub fn bulk(ns: &Netns, dst: SocketAddr, bytes: u64, streams: usize) -> Result<f64, String> {
    let start = Instant::now();
    let results: Vec<Result<f64, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..streams)
            .map(|_| s.spawn(|| apps::send_bulk(ns, dst, bytes)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("sender panicked".into())))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok((bytes * streams as u64) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

/// Closed-loop request/response of `size` bytes, `n` times, to an echo app.
pub fn rr_closed(ns: &Netns, dst: SocketAddr, size: usize, n: usize) -> Result<Latency, String> {
    let mut l = Latency::default();
    for d in apps::ping_pong(ns, dst, size, n)? {
        l.record_us(d.as_micros() as u64);
    }
    Ok(l)
}

/// Requests sent at a fixed rate for `dur`; latency measured from each request's scheduled
/// time (so a stall counts against every request it delays).
pub fn rr_fixed_rate(
    ns: &Netns,
    dst: SocketAddr,
    size: usize,
    per_s: u64,
    dur: Duration,
) -> Result<Latency, String> {
    use std::io::BufRead;
    let mut s = apps::connect_from(ns, dst).map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut greeting = String::new();
    r.read_line(&mut greeting).map_err(|e| e.to_string())?;
    let msg = vec![b'y'; size.max(1)];
    let mut back = vec![0u8; msg.len()];
    let interval = Duration::from_nanos(1_000_000_000 / per_s.max(1));
    let start = Instant::now();
    let mut l = Latency::default();
    let mut i = 0u32;
    loop {
        let due = start + interval * i;
        if due - start >= dur {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        s.write_all(&msg).map_err(|e| e.to_string())?;
        r.read_exact(&mut back).map_err(|e| e.to_string())?;
        l.record_us(due.elapsed().as_micros() as u64);
        i += 1;
    }
    Ok(l)
}

/// New connections per second for `dur`, each reading the echo app's greeting (a round trip)
/// and closing; `threads` connectors in parallel.
pub fn conn_rate(
    ns: &Netns,
    dst: SocketAddr,
    dur: Duration,
    threads: usize,
) -> Result<f64, String> {
    let start = Instant::now();
    let counts: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        let mut c = apps::connect_from(ns, dst).map_err(|e| e.to_string())?;
                        let mut b = [0u8; 64];
                        let got = c.read(&mut b).map_err(|e| e.to_string())?;
                        if got == 0 {
                            return Err("connection closed without a greeting".into());
                        }
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("connector panicked".into()))
            })
            .collect()
    });
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// An app that accepts connections, sends one byte, and keeps them open (no thread per
/// connection). Holds at most `max` connections.
pub fn serve_hold(ns: &Netns, port: u16) -> std::io::Result<()> {
    let l = ns
        .run(|| TcpListener::bind(("::", port)))
        .map_err(std::io::Error::other)??;
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for s in l.incoming().flatten() {
            let mut s = s;
            if s.write_all(b"!").is_ok() {
                held.push(s);
            }
            // Drop connections whose client went away, now and then.
            if held.len().is_multiple_of(1024) {
                held.retain(|c| {
                    let _ = c.set_nonblocking(true);
                    let mut b = [0u8; 1];
                    !matches!((&*c).read(&mut b), Ok(0))
                });
            }
        }
    });
    Ok(())
}

/// Opens `n` tunnels to a hold app, each confirmed by its first byte; returns them.
pub fn open_tunnels(ns: &Netns, dst: SocketAddr, n: usize) -> Result<Vec<TcpStream>, String> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = apps::connect_from(ns, dst).map_err(|e| format!("tunnel {i}: {e}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .map_err(|e| format!("tunnel {i}: {e}"))?;
        v.push(s);
    }
    Ok(v)
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_split(pid).map(|(u, s)| u + s)
}

/// CPU seconds a process has used in user space and in the kernel (for it: its system calls
/// and the network stack work done in its context), from /proc/<pid>/stat.
pub fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = f.get(11)?.parse().ok()?;
    let sys: f64 = f.get(12)?.parse().ok()?;
    Some((user / clock_ticks(), sys / clock_ticks()))
}

/// The whole machine's busy CPU seconds so far (user, nice, system, irq, softirq of every
/// CPU; not idle, iowait or steal), from /proc/stat. Per GB it says what a transfer costs
/// everything on the machine, the apps and the kernel's packet path included.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    machine_busy_of(&stat).map(|t| t / clock_ticks())
}

fn machine_busy_of(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal …
    let at = |i: usize| v.get(i).copied();
    Some(at(0)? + at(1)? + at(2)? + at(5)? + at(6)?)
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// Resident set size of a process, bytes.
pub fn rss_bytes(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::machine_busy_of;

    #[test]
    fn machine_busy_counts_work_not_idle_iowait_or_steal() {
        let stat = "cpu  100 2 30 5000 40 3 7 11 0 0\ncpu0 50 1 15 2500 20 1 3 5 0 0\nintr 1\n";
        assert_eq!(machine_busy_of(stat), Some(142.0));
        assert_eq!(machine_busy_of("cpu0 1 2 3\n"), None);
        assert_eq!(machine_busy_of("cpu  1 2 x 4 5 6 7\n"), None);
    }
}
