//! `ringmesh lab relay`: the bench's reference contenders. A plaintext TCP relay run inside
//! an ambient pod's netns, where the capture rules send the pod's outbound connections
//! (15001) and inbound connections (15006). Each accepted connection goes on to its original
//! destination (`SO_ORIGINAL_DST`) from a socket marked 0x539, which the capture rules let
//! through, so a meshed path keeps its three TCP legs (app → relay in the client pod → relay
//! in the server pod → app) but carries no TLS, no HTTP/2 and no policy.
//!
//! With `--tls` the middle leg is mutual TLS 1.3 instead, with a certificate from the lab's CA
//! and ringmesh's own TLS configs (same suites, same chain verification; no SPIFFE identity
//! check after the handshake; rustls through tokio-rustls): the outbound side connects to the
//! destination's port 15008 (which the capture rules leave alone, as for HBONE), says the
//! original port in two bytes inside the TLS stream, and the inbound side on 15008 connects on
//! to that port of its own pod.
//!
//! What they measure: the plaintext relay, what moving the bytes through two user-space hops
//! costs on this machine — the floor, the part of a node proxy that no proxy design avoids
//! without kTLS or splice; the TLS relay, what TLS costs done the textbook way (rustls'
//! buffered API through tokio-rustls; ringmesh's own record layer does better). `ringmesh
//! bench --relay` runs both as contenders so a run shows where each node proxy stands. Built
//! like ringmesh's shards (one thread and one single-threaded runtime per CPU, a SO_REUSEPORT
//! listener each), copying with tokio's `copy_bidirectional_with_sizes` and 256 KiB buffers
//! (ringmesh's receive size); not a product: IPv4 only, no limits, no metrics, no HTTP/2.
//!
//! `bench/relay.rs` is the other relay in the tree: in-process threads for the
//! `l4_throughput` cargo bench, on explicit ports (no capture), CPU from thread clocks. This
//! one is a process so `ringmesh bench` can treat it like any node proxy (its CPU from /proc,
//! started per pod, behind the real capture rules). Folding `l4_throughput` onto this one
//! would leave one relay; not done yet.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The capture rules' outbound and inbound redirect ports, and the HBONE port the TLS relay's
/// middle leg uses.
const OUTBOUND: u16 = 15001;
const INBOUND: u16 = 15006;
const TLS_INBOUND: u16 = 15008;
/// The mark the capture rules let through (ztunnel's).
const MARK: u32 = 0x539;
/// Copy buffer per direction.
const BUF: usize = 256 * 1024;
/// The line the relay prints once its listeners are bound.
pub const READY: &str = "relay: ready";

/// The TLS relay's certificates: one identity issued by the lab's CA.
#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl Tls {
    fn new(ca_cert: &Path, ca_key: &Path) -> Result<Tls, String> {
        let ca = crate::identity::ca::Ca::load(ca_cert, ca_key).map_err(|e| e.to_string())?;
        let id = crate::identity::Identity::new("cluster.local", "bench", "relay");
        let cert = ca
            .issue(
                &id,
                std::time::SystemTime::now(),
                std::time::Duration::from_secs(86400),
            )
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.root().clone())
            .map_err(|e| format!("CA root: {e}"))?;
        let roots = Arc::new(roots);
        Ok(Tls {
            connector: TlsConnector::from(crate::tls::client_config(&cert, roots.clone())),
            acceptor: TlsAcceptor::from(crate::tls::server_config(&cert, roots)),
        })
    }
}

/// The listeners of one thread, by role.
struct Listeners {
    outbound: std::net::TcpListener,
    inbound: std::net::TcpListener,
}

/// Binds one SO_REUSEPORT listener per port and thread, then relays until killed. With
/// `tls = Some((ca_cert, ca_key))` the middle leg is mutual TLS (see the module docs).
pub fn serve(threads: usize, tls: Option<(&Path, &Path)>) -> Result<(), String> {
    crate::app::unblock_signals();
    let threads = threads.max(1);
    let tls = tls.map(|(c, k)| Tls::new(c, k)).transpose()?;
    let inbound_port = if tls.is_some() { TLS_INBOUND } else { INBOUND };
    let mut per_thread = Vec::new();
    for _ in 0..threads {
        let bind = |port| listener(port).map_err(|e| format!("listen on :{port}: {e}"));
        per_thread.push(Listeners {
            outbound: bind(OUTBOUND)?,
            inbound: bind(inbound_port)?,
        });
    }
    let mode = if tls.is_some() { "TLS" } else { "plaintext" };
    println!("{READY} ({mode}, ports {OUTBOUND} and {inbound_port}, {threads} threads)");
    let handles: Vec<_> = per_thread
        .into_iter()
        .map(|ls| {
            let tls = tls.clone();
            std::thread::spawn(move || run_thread(ls, tls))
        })
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

fn run_thread(ls: Listeners, tls: Option<Tls>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let from = |l| TcpListener::from_std(l).map_err(|e| format!("listener: {e}"));
        let (out, inb) = (from(ls.outbound)?, from(ls.inbound)?);
        let tls2 = tls.clone();
        let a = tokio::spawn(accept_loop(out, move |c| outbound(c, tls2.clone())));
        let b = tokio::spawn(accept_loop(inb, move |c| inbound(c, tls.clone())));
        let _ = tokio::join!(a, b);
        Ok(())
    })
}

async fn accept_loop<F, Fut>(l: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + 'static + Send,
{
    loop {
        match l.accept().await {
            Ok((c, _)) => {
                let _ = c.set_nodelay(true);
                let f = handle(c);
                tokio::spawn(async move {
                    if let Err(e) = f.await {
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

/// The original destination of a connection the capture rules redirected.
fn original_dst(c: &TcpStream) -> Result<SocketAddr, String> {
    let d = nix::sys::socket::getsockopt(c, nix::sys::socket::sockopt::OriginalDst)
        .map_err(|e| format!("SO_ORIGINAL_DST: {e} (not a redirected IPv4 connection)"))?;
    Ok(SocketAddr::from((
        std::net::Ipv4Addr::from(u32::from_be(d.sin_addr.s_addr)),
        u16::from_be(d.sin_port),
    )))
}

/// Connects to `dst` from a socket the capture rules let through.
async fn connect_marked(dst: SocketAddr) -> Result<TcpStream, String> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.set_mark(MARK).map_err(|e| format!("SO_MARK: {e}"))?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let up = TcpSocket::from_std_stream(std::net::TcpStream::from(s))
        .connect(dst)
        .await
        .map_err(|e| format!("connect {dst}: {e}"))?;
    up.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(up)
}

/// A pod's outbound connection: on to its destination, in plaintext or over TLS to 15008.
async fn outbound(mut down: TcpStream, tls: Option<Tls>) -> Result<(), String> {
    let dst = original_dst(&down)?;
    let Some(tls) = tls else {
        let mut up = connect_marked(dst).await?;
        return copy(&mut down, &mut up, dst).await;
    };
    let tcp = connect_marked(SocketAddr::new(dst.ip(), TLS_INBOUND)).await?;
    let mut up = tls
        .connector
        .connect(crate::tls::dummy_server_name(), tcp)
        .await
        .map_err(|e| format!("TLS to {dst}: {e}"))?;
    up.write_all(&dst.port().to_be_bytes())
        .await
        .map_err(|e| format!("{dst}: {e}"))?;
    copy(&mut down, &mut up, dst).await
}

/// A connection into the pod: plaintext (redirected to 15006) goes on to its original
/// destination; TLS (15008) names the port to go on to in its first two bytes.
async fn inbound(c: TcpStream, tls: Option<Tls>) -> Result<(), String> {
    let Some(tls) = tls else {
        let mut c = c;
        let dst = original_dst(&c)?;
        let mut up = connect_marked(dst).await?;
        return copy(&mut c, &mut up, dst).await;
    };
    let local = c.local_addr().map_err(|e| e.to_string())?;
    let mut down = tls
        .acceptor
        .accept(c)
        .await
        .map_err(|e| format!("TLS from a peer: {e}"))?;
    let mut port = [0u8; 2];
    down.read_exact(&mut port)
        .await
        .map_err(|e| format!("TLS peer sent no port: {e}"))?;
    let dst = SocketAddr::new(local.ip(), u16::from_be_bytes(port));
    let mut up = connect_marked(dst).await?;
    copy(&mut down, &mut up, dst).await
}

async fn copy<A, B>(a: &mut A, b: &mut B, dst: SocketAddr) -> Result<(), String>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, BUF, BUF)
        .await
        .map(|_| ())
        .map_err(|e| format!("{dst}: {e}"))
}
