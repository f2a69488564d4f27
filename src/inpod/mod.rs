//! The only module that enters pod network namespaces.
//!
//! Owns: holding a pod's netns (an open fd, identified by inode), and creating sockets inside
//! it: the per-shard SO_REUSEPORT listeners (15001, 15006, 15008) and every outbound socket
//! made on the pod's behalf (to peers' 15008, to apps), all with SO_MARK. A socket stays in
//! the netns it was created in; the calling thread switches in with setns(2) and straight
//! back. ZDS enrolment (istio-cni's protocol) will live here too.

pub mod handover;
pub mod seqpacket;
pub mod zds;
pub mod zds_client;

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use socket2::{Domain, Protocol, Socket, Type};

/// A pod's network namespace, or "the namespace we are in" (for tests and dedicated use).
#[derive(Debug)]
pub struct Netns {
    file: Option<File>,
    pub path: PathBuf,
    /// (dev, inode) of the namespace: equal pairs are the same namespace.
    pub id: (u64, u64),
}

/// Errors entering a netns, aimed at the operator.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path} is not a network namespace")]
    NotNetns { path: String },
    #[error("cannot enter network namespace {path} (needs CAP_SYS_ADMIN): {source}")]
    Enter { path: String, source: nix::Error },
    #[error("cannot return to our own network namespace: {0}")]
    Return(nix::Error),
}

/// The cookie of the network namespace a socket belongs to (SO_NETNS_COOKIE, Linux 5.14):
/// equal cookies are the same namespace.
pub fn netns_cookie(fd: &impl AsFd) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

thread_local! {
    static HOME_NETNS: io::Result<File> = File::open("/proc/thread-self/ns/net");
}

impl Netns {
    /// Opens a netns by path (e.g. `/var/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let p = path.display().to_string();
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: p.clone(),
            source,
        })?;
        Self::from_file(file, path)
    }

    /// Takes an already open netns fd (e.g. received over ZDS).
    pub fn from_file(file: File, path: &Path) -> Result<Netns, NetnsError> {
        let p = path.display().to_string();
        let meta = file.metadata().map_err(|source| NetnsError::Open {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() || meta.len() > 0 || !is_netns(&file) {
            return Err(NetnsError::NotNetns { path: p });
        }
        Ok(Netns {
            id: (meta.dev(), meta.ino()),
            file: Some(file),
            path: path.to_path_buf(),
        })
    }

    /// The namespace the process is in: sockets are made without switching.
    pub fn current() -> Netns {
        Netns {
            file: None,
            path: PathBuf::from("<own netns>"),
            id: (0, 0),
        }
    }

    /// Runs `f` with the calling thread inside this namespace, then switches back — also
    /// when `f` panics: the panic goes on once the thread is home, so a shard that catches
    /// a task's panic does not serve on from inside a pod's namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let Some(file) = &self.file else {
            return Ok(f());
        };
        // The way home must be opened before leaving (the thread-local is lazy).
        HOME_NETNS.with(|_| ());
        nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetnsError::Enter {
                path: self.path.display().to_string(),
                source,
            }
        })?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let back = HOME_NETNS.with(|home| match home {
            Ok(h) => {
                nix::sched::setns(h.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Return)
            }
            Err(e) => Err(NetnsError::Return(nix::Error::from_raw(
                e.raw_os_error().unwrap_or(libc::EINVAL),
            ))),
        });
        let out = out.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        back?;
        Ok(out)
    }

    /// A listening socket in this namespace: SO_REUSEPORT (one per shard), SO_MARK, backlog
    /// 1024, non-blocking. Binds `[::]` (dual stack) when the namespace has IPv6, else
    /// `0.0.0.0`.
    /// The namespace's cookie (see [`netns_cookie`]), read from a socket made inside it.
    pub fn cookie(&self) -> Result<u64, SocketError> {
        self.run(|| Socket::new(Domain::IPV4, Type::DGRAM, None).and_then(|s| netns_cookie(&s)))?
            .map_err(|source| SocketError::Io {
                what: format!("read the netns cookie of {}", self.path.display()),
                source,
            })
    }

    pub fn listener(&self, port: u16, mark: u32) -> Result<std::net::TcpListener, SocketError> {
        self.run(|| {
            let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
            let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, port).into();
            listen_on(v6, mark).or_else(|_| listen_on(v4, mark))
        })?
        .map_err(|source| SocketError::Io {
            what: format!("listen on port {port} in {}", self.path.display()),
            source,
        })
    }

    /// An unconnected TCP socket in this namespace, marked, non-blocking, ready for
    /// `tokio::net::TcpSocket::from_std_stream`. With `transparent_src`, it is bound to that
    /// (foreign) source IP with IP_TRANSPARENT + IP_FREEBIND, keeping the client's address.
    pub fn connect_socket(
        &self,
        dst: SocketAddr,
        mark: u32,
        transparent_src: Option<IpAddr>,
    ) -> Result<std::net::TcpStream, SocketError> {
        self.run(|| -> io::Result<std::net::TcpStream> {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            s.set_nonblocking(true)?;
            s.set_cloexec(true)?;
            if mark != 0 {
                s.set_mark(mark)?;
            }
            s.set_tcp_nodelay(true)?;
            if let Some(src) = transparent_src {
                let src = crate::hbone::normalize(src);
                if dst.is_ipv4() {
                    s.set_ip_transparent_v4(true)?;
                    s.set_freebind_v4(true)?;
                } else {
                    s.set_ip_transparent_v6(true)?;
                    s.set_freebind_v6(true)?;
                }
                let bind_ip = match (src, dst) {
                    (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
                    (ip, _) => ip,
                };
                // The port is left to connect(), which picks it for the whole 4-tuple: a
                // bind to port 0 reserves a port for every destination and scans the range
                // linearly, so once the client's TIME_WAIT sockets fill half of it each
                // connect here stalled for tens of milliseconds (≈ 95 connections/s).
                nix::sys::socket::setsockopt(
                    &s,
                    nix::sys::socket::sockopt::IpBindAddressNoPort,
                    &true,
                )
                .map_err(io::Error::from)?;
                s.bind(&SocketAddr::new(bind_ip, 0).into())?;
            }
            Ok(s.into())
        })?
        .map_err(|source| SocketError::Io {
            what: format!("make a socket to {dst} in {}", self.path.display()),
            source,
        })
    }
}

/// Whether `f` is a network namespace (`ioctl(NS_GET_NSTYPE)` answers CLONE_NEWNET).
fn is_netns(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703; // _IO(0xb7, 0x3)
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which `f`
    // keeps open for the duration of the call.
    let t = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    t == libc::CLONE_NEWNET
}

/// Errors making a socket inside a pod.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: io::Error },
}

fn listen_on(addr: SocketAddr, mark: u32) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_cloexec(true)?;
    if mark != 0 {
        s.set_mark(mark)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_netns_listeners_share_a_port() {
        let ns = Netns::current();
        // Port 0 with reuseport gives distinct ports; pick a free one first.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let a = ns.listener(port, 0).unwrap();
        let b = ns.listener(port, 0).unwrap();
        assert_eq!(
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port()
        );
    }

    #[test]
    fn open_rejects_non_netns() {
        let e = Netns::open(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(
            Netns::open(&f).unwrap_err(),
            NetnsError::NotNetns { .. }
        ));
    }
}
