//! Socket options of the data path, in one place.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// The original destination of a redirected connection: SO_ORIGINAL_DST (then the IPv6
/// form), falling back to the local address (TPROXY, or no redirect at all).
pub fn original_dst(s: &impl AsFd) -> io::Result<SocketAddr> {
    let sock = SockRef::from(s);
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))?;
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6().or_else(|_| sock.original_dst_v4())
    };
    Ok(orig
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| match a {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => a,
            },
            v4 => v4,
        })
        .unwrap_or(local))
}

/// TCP keepalive settings (ztunnel's defaults: 180 s idle, 180 s interval, 9 probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub time: Duration,
    pub interval: Duration,
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            time: Duration::from_secs(180),
            interval: Duration::from_secs(180),
            retries: 9,
        }
    }
}

/// TCP_NODELAY and keepalive (when `ka` is set) on an app-facing connection; `local_cc` (a
/// congestion control name) only for a connection that stays inside the pod's netns.
pub fn tune_app_conn(s: &impl AsFd, local_cc: Option<&str>, ka: Option<Keepalive>) {
    let _ = SockRef::from(s).set_tcp_nodelay(true);
    if let Some(k) = ka {
        let ka = TcpKeepalive::new()
            .with_time(k.time)
            .with_interval(k.interval)
            .with_retries(k.retries);
        let _ = SockRef::from(s).set_tcp_keepalive(&ka);
    }
    if let Some(cc) = local_cc {
        // Checked at start (`congestion_available`); a failure here leaves the default.
        let _ = SockRef::from(s).set_tcp_congestion(cc.as_bytes());
    }
}

/// Whether this kernel lets a socket use congestion control `name` (it may not be built
/// or loaded, or be restricted by net.ipv4.tcp_allowed_congestion_control).
pub fn congestion_available(name: &str) -> io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_tcp_congestion(name.as_bytes())
}

/// Sets the receive and send buffer sizes (best effort; the kernel caps them).
pub fn set_buffers(s: &impl AsFd, bytes: usize) {
    let r = SockRef::from(s);
    let _ = r.set_recv_buffer_size(bytes);
    let _ = r.set_send_buffer_size(bytes);
}
