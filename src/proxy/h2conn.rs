//! HBONE connections over TLS: the client side (dial, handshake, check the server's SPIFFE
//! identity, HTTP/2 with ztunnel's settings, PING keepalive) and the server side's TLS and
//! HTTP/2 setup. Uses rustls (aws-lc-rs) and the h2 crate.
//!
//! Both sides run under one deadline from the first byte to a usable HTTP/2 connection
//! (`connect_timeout`, 10 s by default): a dial's TCP connect, TLS and HTTP/2 handshakes
//! ([`DialDeadline`]), an accepted connection's TLS and HTTP/2 handshakes ([`accept`]). A
//! peer that accepts TCP and then stays silent costs a timer, never a stuck task or fd.

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
use crate::hbone::h2 as codec;
use crate::identity::Identity;
use crate::io::link::Link;
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
    #[error("HBONE to {addr}: {phase} timed out ({after:?} for the whole dial): {}", .phase.stalled())]
    Timeout {
        addr: std::net::SocketAddr,
        phase: Phase,
        after: Duration,
    },
    #[error(
        "HBONE to {addr}: gave up after {after:?} waiting for the dial already under way (it was at its {phase})"
    )]
    Waited {
        addr: std::net::SocketAddr,
        phase: Phase,
        after: Duration,
    },
    /// The dial this stream waited for failed; its error, as that caller got it.
    #[error("{0}")]
    Shared(String),
}

/// A step of establishing an HBONE connection, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Tls,
    H2,
}

impl Phase {
    /// What a peer stuck in this phase did, for the operator.
    fn stalled(self) -> &'static str {
        match self {
            Phase::Connect => "is the peer's HBONE port reachable?",
            Phase::Tls => {
                "the peer accepted TCP but did not complete TLS: is it an HBONE listener?"
            }
            Phase::H2 => "the peer completed TLS but not HTTP/2",
        }
    }

    /// What a client stuck in this phase of our accept did.
    fn idle_client(self) -> &'static str {
        match self {
            Phase::Connect | Phase::Tls => "did not complete TLS",
            Phase::H2 => "completed TLS but sent no HTTP/2 preface and SETTINGS",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "TCP connect",
            Phase::Tls => "TLS handshake",
            Phase::H2 => "HTTP/2 handshake",
        })
    }
}

/// The one deadline of an HBONE dial: its TCP connect, TLS and HTTP/2 handshakes (and the
/// wait of streams queued behind it, `pool.rs`) all end by it. Clones share the phase the
/// dial is in, so whoever times out can say where the peer stalled.
///
/// Its length is `connect_timeout` (10 s by default). ztunnel bounds only the TCP connect of
/// its HBONE dial, by `CONNECTION_TIMEOUT` = 10 s (`src/proxy.rs`, `freebind_connect`);
/// its TLS connect and HTTP/2 handshake (`src/proxy/pool.rs`, `new_pool_conn`) have no
/// bound of their own. We hold all three to the same 10 s.
#[derive(Debug, Clone)]
pub struct DialDeadline {
    addr: std::net::SocketAddr,
    at: Instant,
    budget: Duration,
    phase: Rc<Cell<Phase>>,
}

impl DialDeadline {
    /// A dial to `addr` that must be done `budget` after `now`; it starts at its TCP connect.
    pub fn new(addr: std::net::SocketAddr, budget: Duration, now: Instant) -> DialDeadline {
        DialDeadline {
            addr,
            at: crate::runtime::deadline_after(now, budget),
            budget,
            phase: Rc::new(Cell::new(Phase::Connect)),
        }
    }

    /// The phase the dial is in.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Time left at `now` (zero once past).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// Runs `f` as the dial's `phase`, until the deadline.
    pub async fn bound<T>(
        &self,
        phase: Phase,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, DialError> {
        self.phase.set(phase);
        crate::runtime::engine::timeout(self.remaining(Instant::now()), f)
            .await
            .map_err(|_| self.expired())
    }

    /// The error of a dial that ran out of time in its current phase.
    pub fn expired(&self) -> DialError {
        DialError::Timeout {
            addr: self.addr,
            phase: self.phase(),
            after: self.budget,
        }
    }

    /// The error of a stream that ran out of time waiting for another dial, which was at
    /// `phase`.
    pub fn waited(&self, phase: Phase) -> DialError {
        DialError::Waited {
            addr: self.addr,
            phase,
            after: self.budget,
        }
    }
}

/// What carries a client HBONE connection's streams.
pub enum Carrier {
    /// The h2 crate: the request handle (a driver task runs the connection).
    H2(SendRequest<Bytes>),
    /// The link task (`io::link`), which can be handed to the next process.
    Link(Link),
}

/// A client HBONE connection: the request handle plus liveness and use tracking.
pub struct ClientConn {
    pub carrier: Carrier,
    pub peer: Identity,
    pub streams: Rc<Cell<usize>>,
    pub dead: Rc<Cell<bool>>,
    pub last_used: Cell<Instant>,
    driver: crate::runtime::engine::Task,
}

impl ClientConn {
    /// Whether the connection can take no more streams (failed, closed, or going away).
    pub fn is_dead(&self) -> bool {
        self.dead.get()
            || match &self.carrier {
                Carrier::H2(_) => false,
                Carrier::Link(l) => !l.is_usable(),
            }
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        match &self.carrier {
            // The h2 connection closes gracefully once no handles remain; make sure the
            // driver task also ends if it was stuck.
            Carrier::H2(_) => {
                if self.streams.get() == 0 {
                    self.driver.abort();
                }
            }
            // Out of the pool: GOAWAY, so the link ends once its tunnels have.
            Carrier::Link(l) => l.go_away(),
        }
    }
}

/// Runs the TLS client handshake on a connected socket, checks the server's identity, and
/// starts HTTP/2 with `settings`, each handshake bounded by `deadline`. The connection
/// driver and PING task run as local tasks. `records`: who protects the records after the
/// handshake (`io::tls` or tokio-rustls).
pub async fn dial(
    tcp: TcpStream,
    cfg: Arc<ClientConfig>,
    expected: &[Identity],
    settings: &H2Settings,
    records: TlsRecords,
    deadline: &DialDeadline,
) -> Result<ClientConn, DialError> {
    let addr = tcp
        .peer_addr()
        .map_err(|e| DialError::Connect(e.to_string()))?;
    match records {
        TlsRecords::Direct => {
            let connect = crate::io::tls::connect(tcp, cfg, tls::dummy_server_name());
            let tls = deadline
                .bound(Phase::Tls, connect)
                .await?
                .map_err(|source| DialError::Tls { addr, source })?;
            let peer = tls::verify_peer(tls.peer_certificates(), expected)
                .map_err(|source| DialError::Identity { addr, source })?;
            start_client(tls, peer, settings, addr, deadline).await
        }
        TlsRecords::Rustls => {
            let connect = tokio_rustls::TlsConnector::from(cfg)
                .connect(tls::dummy_server_name(), buffered(tcp));
            let tls = deadline
                .bound(Phase::Tls, connect)
                .await?
                .map_err(|source| DialError::Tls { addr, source })?;
            let peer = tls::verify_peer(tls.get_ref().1.peer_certificates(), expected)
                .map_err(|source| DialError::Identity { addr, source })?;
            start_client(tls, peer, settings, addr, deadline).await
        }
    }
}

/// HTTP/2 over an established TLS connection: the handshake, the driver task, keepalive.
async fn start_client<T>(
    tls: T,
    peer: Identity,
    settings: &H2Settings,
    addr: std::net::SocketAddr,
    deadline: &DialDeadline,
) -> Result<ClientConn, DialError>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let handshake = client_builder(settings).handshake::<_, Bytes>(tls);
    let (sender, mut conn) = deadline
        .bound(Phase::H2, handshake)
        .await?
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
        carrier: Carrier::H2(sender),
        peer,
        streams: Rc::new(Cell::new(0)),
        dead,
        last_used: Cell::new(Instant::now()),
        driver,
    })
}

/// Like [`dial`], for the link task: the TLS client handshake (direct records) within
/// `deadline`, the server's identity checked, then our codec's preface and SETTINGS; the
/// link's task, its keepalive and its entry in `links` (for a hand-over) run as local
/// tasks. Streams may be opened at once (HTTP/2 lets a client send before the server's
/// SETTINGS arrive).
pub async fn dial_link(
    tcp: TcpStream,
    cfg: Arc<ClientConfig>,
    expected: &[Identity],
    settings: &H2Settings,
    deadline: &DialDeadline,
    links: Rc<crate::proxy::links::Links>,
) -> Result<ClientConn, DialError> {
    let addr = tcp
        .peer_addr()
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let connect = crate::io::tls::connect(tcp, cfg, tls::dummy_server_name());
    let tls = deadline
        .bound(Phase::Tls, connect)
        .await?
        .map_err(|source| DialError::Tls { addr, source })?;
    let peer = tls::verify_peer(tls.peer_certificates(), expected)
        .map_err(|source| DialError::Identity { addr, source })?;
    let conn = codec::Conn::new(
        codec::Role::Client,
        codec::Config::hbone(codec::Role::Client, settings),
    );
    let link = Link::new(conn);
    let info = crate::proxy::links::LinkInfo::client(addr, &peer);
    let driver = links.run(link.clone(), tls, info, settings);
    Ok(ClientConn {
        carrier: Carrier::Link(link),
        peer,
        streams: Rc::new(Cell::new(0)),
        dead: Rc::new(Cell::new(false)),
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

/// A server-side HBONE TLS connection, whichever record layer protects it.
pub type ServerTls = tokio_util::either::Either<
    crate::io::tls::TlsStream,
    tokio_rustls::server::TlsStream<tokio::io::BufReader<TcpStream>>,
>;

/// Errors accepting an HBONE connection, for the log line (the caller adds the peer).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("HBONE TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HBONE HTTP/2 handshake failed: {0}")]
    H2(h2::Error),
    #[error("HBONE {phase} timed out after {after:?}: the client {}, closing", .phase.idle_client())]
    Timeout { phase: Phase, after: Duration },
}

/// The server side of an HBONE connection: the TLS handshake (client certificate required
/// by `cfg`), then HTTP/2 with ztunnel's settings, both within `timeout` of the call.
/// Returns the connection to accept streams from and the client's SPIFFE identity (None
/// when its certificate names none).
pub async fn accept(
    s: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    records: TlsRecords,
    settings: &H2Settings,
    timeout: Duration,
) -> Result<(h2::server::Connection<ServerTls, Bytes>, Option<Identity>), AcceptError> {
    use tokio_util::either::Either;
    let phase = Cell::new(Phase::Tls);
    // Boxed: the handshakes' state is large and short-lived, and the caller's future (the
    // connection's task) would keep room for it as long as the connection lives.
    let handshakes = Box::pin(async {
        let (tls, id) = match records {
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
        .map_err(AcceptError::Tls)?;
        phase.set(Phase::H2);
        let conn = server_builder(settings)
            .handshake(tls)
            .await
            .map_err(AcceptError::H2)?;
        Ok((conn, id))
    });
    match crate::runtime::engine::timeout(timeout, handshakes).await {
        Ok(r) => r,
        Err(_) => Err(AcceptError::Timeout {
            phase: phase.get(),
            after: timeout,
        }),
    }
}
