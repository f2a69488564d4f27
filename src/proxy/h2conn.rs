//! HBONE connections over TLS: the client side (dial, handshake, check the server's SPIFFE
//! identity, HTTP/2 with ztunnel's settings, PING keepalive) and the server side's HTTP/2
//! setup. Uses rustls (aws-lc-rs) and the h2 crate.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtime::net::Stream as TcpStream;
use bytes::Bytes;
use h2::client::SendRequest;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::flags::TlsRecords;
use crate::hbone::H2Settings;
use crate::identity::Identity;
use crate::tls;

/// Errors establishing an HBONE connection, aimed at the operator.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HBONE to {addr} refused: {source}")]
    Identity {
        addr: std::net::SocketAddr,
        source: tls::PeerError,
    },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    H2 {
        addr: std::net::SocketAddr,
        source: h2::Error,
    },
    #[error("{0}")]
    Connect(String),
}

/// A client HBONE connection: the request handle plus liveness and use tracking.
pub struct ClientConn {
    pub sender: SendRequest<Bytes>,
    pub peer: Identity,
    pub streams: Rc<Cell<usize>>,
    pub dead: Rc<Cell<bool>>,
    pub last_used: Cell<Instant>,
    driver: crate::runtime::engine::Task,
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        // The h2 connection closes gracefully once no handles remain; make sure the driver
        // task also ends if it was stuck.
        if self.streams.get() == 0 {
            self.driver.abort();
        }
    }
}

/// Runs the TLS client handshake on a connected socket, checks the server's identity, and
/// starts HTTP/2 with `settings`. The connection driver and PING task run as local tasks.
/// `records`: who protects the records after the handshake (`io::tls` or tokio-rustls).
pub async fn dial(
    tcp: TcpStream,
    cfg: Arc<ClientConfig>,
    expected: &[Identity],
    settings: &H2Settings,
    records: TlsRecords,
) -> Result<ClientConn, DialError> {
    let addr = tcp
        .peer_addr()
        .map_err(|e| DialError::Connect(e.to_string()))?;
    match records {
        TlsRecords::Direct => {
            let tls = crate::io::tls::connect(tcp, cfg, tls::dummy_server_name())
                .await
                .map_err(|source| DialError::Tls { addr, source })?;
            let peer = tls::verify_peer(tls.peer_certificates(), expected)
                .map_err(|source| DialError::Identity { addr, source })?;
            start_client(tls, peer, settings, addr).await
        }
        TlsRecords::Rustls => {
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(tls::dummy_server_name(), buffered(tcp))
                .await
                .map_err(|source| DialError::Tls { addr, source })?;
            let peer = tls::verify_peer(tls.get_ref().1.peer_certificates(), expected)
                .map_err(|source| DialError::Identity { addr, source })?;
            start_client(tls, peer, settings, addr).await
        }
    }
}

/// HTTP/2 over an established TLS connection: the handshake, the driver task, keepalive.
async fn start_client<T>(
    tls: T,
    peer: Identity,
    settings: &H2Settings,
    addr: std::net::SocketAddr,
) -> Result<ClientConn, DialError>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (sender, mut conn) = client_builder(settings)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|source| DialError::H2 { addr, source })?;
    let dead = Rc::new(Cell::new(false));
    let ping = conn.ping_pong();
    let d = dead.clone();
    let driver = crate::runtime::engine::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("HBONE connection to {addr} ended: {e}");
        }
        d.set(true);
    });
    if let Some(ping) = ping {
        let (d1, d2, abort) = (dead.clone(), dead.clone(), driver.clone());
        spawn_keepalive(
            ping,
            settings,
            move || !d1.get(),
            move || {
                d2.set(true);
                abort.abort();
            },
            addr,
        );
    }
    Ok(ClientConn {
        sender,
        peer,
        streams: Rc::new(Cell::new(0)),
        dead,
        last_used: Cell::new(Instant::now()),
        driver,
    })
}

/// Size of the read buffer under TLS. rustls reads at most a record (≤ 16 KiB, in 4 KiB
/// steps) per call; a buffer below it turns that into one `recv` per several records. It is
/// allocated per HBONE connection (up to 100 streams each): 64 KiB instead of 256 KiB took
/// 8000 idle tunnels from 17.9 KB to 13.3 KB each, bulk and CPU per GB within noise
/// (bench/README.md).
pub const TLS_READ_BUFFER: usize = 64 * 1024;

/// Wraps a socket in the read buffer TLS sits on. A uring socket already reads into the
/// shard's buffer ring, so it gets none (a one-byte `BufReader` passes every read through).
pub fn buffered(io: TcpStream) -> tokio::io::BufReader<TcpStream> {
    let cap = if io.is_uring() { 1 } else { TLS_READ_BUFFER };
    tokio::io::BufReader::with_capacity(cap, io)
}

/// HTTP/2 client settings as ztunnel sets them.
pub fn client_builder(s: &H2Settings) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(s.stream_window)
        .initial_connection_window_size(s.connection_window)
        .max_frame_size(s.frame_size)
        .max_header_list_size(s.max_header_list_size)
        .max_send_buffer_size(s.stream_window as usize)
        .initial_max_send_streams(s.client_max_streams)
        .enable_push(false);
    b
}

/// HTTP/2 server settings as ztunnel sets them.
pub fn server_builder(s: &H2Settings) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(s.stream_window)
        .initial_connection_window_size(s.connection_window)
        .max_frame_size(s.frame_size)
        .max_header_list_size(s.max_header_list_size)
        .max_send_buffer_size(s.stream_window as usize)
        .max_concurrent_streams(s.server_max_streams);
    b
}

/// Sends a PING every `ping_interval` while `alive()` holds; if a PONG takes longer than
/// `ping_timeout`, calls `on_dead` (the caller drops the connection). Used by both sides.
pub fn spawn_keepalive(
    mut ping: h2::PingPong,
    s: &H2Settings,
    alive: impl Fn() -> bool + 'static,
    on_dead: impl FnOnce() + 'static,
    peer: std::net::SocketAddr,
) {
    let (interval, timeout) = (s.ping_interval, s.ping_timeout);
    crate::runtime::engine::spawn(async move {
        loop {
            crate::runtime::engine::sleep(interval).await;
            if !alive() {
                return;
            }
            match crate::runtime::engine::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        "HBONE connection with {peer}: no PING reply in {timeout:?}, dropping it"
                    );
                    on_dead();
                    return;
                }
            }
        }
    });
}

/// Server-side HTTP/2 handshake with ztunnel's settings; returns the connection to accept
/// streams from.
pub async fn serve_handshake<T>(
    io: T,
    s: &H2Settings,
) -> Result<h2::server::Connection<T, Bytes>, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    server_builder(s).handshake(io).await
}

/// How long the TLS handshake may take on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server-side HBONE TLS connection, whichever record layer protects it.
pub type ServerTls = tokio_util::either::Either<
    crate::io::tls::TlsStream,
    tokio_rustls::server::TlsStream<tokio::io::BufReader<TcpStream>>,
>;

/// The server side's TLS handshake (client certificate required by `cfg`), bounded by
/// [`HANDSHAKE_TIMEOUT`]; returns the connection and the client's SPIFFE identity (None when
/// its certificate names none). The error says what went wrong, for the log line.
pub async fn accept_tls(
    s: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    records: TlsRecords,
) -> Result<(ServerTls, Option<Identity>), String> {
    use tokio_util::either::Either;
    let handshake = async {
        match records {
            TlsRecords::Direct => crate::io::tls::accept(s, cfg).await.map(|t| {
                let id = tls::peer_identity(t.peer_certificates()).ok();
                (Either::Left(t), id)
            }),
            TlsRecords::Rustls => tokio_rustls::TlsAcceptor::from(cfg)
                .accept(buffered(s))
                .await
                .map(|t| {
                    let id = tls::peer_identity(t.get_ref().1.peer_certificates()).ok();
                    (Either::Right(t), id)
                }),
        }
    };
    match crate::runtime::engine::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("HBONE TLS handshake failed: {e}")),
        Err(_) => Err("HBONE TLS handshake timed out".into()),
    }
}
