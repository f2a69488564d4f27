//! `ringmesh lab relay`: the bench's floor — a plaintext TCP relay run inside an ambient pod's
//! netns, where the capture rules send the pod's outbound connections (15001) and inbound
//! connections (15006). Each accepted connection goes on to its original destination
//! (`SO_ORIGINAL_DST`) from a socket marked 0x539, which the capture rules let through, so a
//! meshed path keeps its three TCP legs (app → relay in the client pod → relay in the
//! server pod → app) but carries no TLS, no HTTP/2 and no policy.
//!
//! What it measures: what moving the bytes through two user-space hops costs on this
//! machine — the kernel's part of a node proxy, which no proxy design avoids without kTLS or
//! splice. `ringmesh bench --relay` runs it as a contender so a run shows how close a node
//! proxy gets to that floor. It is built like ringmesh's shards (one thread and one
//! single-threaded runtime per CPU, a SO_REUSEPORT listener each), copies with tokio's
//! `copy_bidirectional_with_sizes` and 256 KiB buffers (ringmesh's receive size), and is not
//! a product: IPv4 only, no limits, no metrics.

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The capture rules' outbound and inbound redirect ports.
pub const PORTS: [u16; 2] = [15001, 15006];
/// The mark the capture rules let through (ztunnel's).
const MARK: u32 = 0x539;
/// Copy buffer per direction.
const BUF: usize = 256 * 1024;
/// The line the relay prints once its listeners are bound.
pub const READY: &str = "relay: ready";

/// Binds one SO_REUSEPORT listener per port and thread, then relays until killed.
pub fn serve(threads: usize) -> Result<(), String> {
    let threads = threads.max(1);
    let mut per_thread = Vec::new();
    for _ in 0..threads {
        let mut ls = Vec::new();
        for port in PORTS {
            ls.push(listener(port).map_err(|e| format!("listen on :{port}: {e}"))?);
        }
        per_thread.push(ls);
    }
    println!("{READY} (ports {PORTS:?}, {threads} threads)");
    let handles: Vec<_> = per_thread
        .into_iter()
        .map(|ls| std::thread::spawn(move || run_thread(ls)))
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| "relay thread panicked".to_string())??;
    }
    Ok(())
}

fn listener(port: u16) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    s.listen(1024)?;
    Ok(s.into())
}

fn run_thread(ls: Vec<std::net::TcpListener>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for l in ls {
            let l = TcpListener::from_std(l).map_err(|e| format!("listener: {e}"))?;
            tasks.push(tokio::spawn(accept_loop(l)));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn accept_loop(l: TcpListener) {
    loop {
        match l.accept().await {
            Ok((c, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = relay(c).await {
                        eprintln!("relay: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("relay: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn relay(mut down: TcpStream) -> Result<(), String> {
    let dst = nix::sys::socket::getsockopt(&down, nix::sys::socket::sockopt::OriginalDst)
        .map_err(|e| format!("SO_ORIGINAL_DST: {e} (not a redirected IPv4 connection)"))?;
    let dst = SocketAddr::from((
        std::net::Ipv4Addr::from(u32::from_be(dst.sin_addr.s_addr)),
        u16::from_be(dst.sin_port),
    ));
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.set_mark(MARK).map_err(|e| format!("SO_MARK: {e}"))?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(s));
    let mut up = sock
        .connect(dst)
        .await
        .map_err(|e| format!("connect {dst}: {e}"))?;
    for t in [&down, &up] {
        t.set_nodelay(true).map_err(|e| e.to_string())?;
    }
    tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF)
        .await
        .map(|_| ())
        .map_err(|e| format!("{dst}: {e}"))
}
