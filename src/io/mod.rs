//! Copy loops between pod sockets and HBONE streams; socket to socket (plaintext
//! passthrough and 15006) is `relay`, which a hand-over can move.
//!
//! Owns: moving bytes in both directions with half-close preserved (EOF on one side becomes
//! FIN / END_STREAM on the other), read buffers allocated only when data is there (an idle
//! tunnel holds none) and sized adaptively (16 KiB doubling to 256 KiB while reads fill them,
//! so bulk transfers make few syscalls), zero-copy hand-off of read buffers to h2 (`Bytes`),
//! and byte counting.

/// Tests: each `fn name(engine: Engine)` listed runs once per I/O engine, as the tests
/// `name::uring` and `name::epoll` (`Engine` must be in scope where it is used).
#[cfg(test)]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn uring() {
                    super::$name(super::Engine::Uring)
                }
                #[test]
                fn epoll() {
                    super::$name(super::Engine::Epoll)
                }
            }
        )*
    };
}

pub mod h2io;
pub mod link;
pub mod link_state;
pub mod relay;
pub mod tls;

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use crate::runtime::net::{ReadHalf, Stream};
use bytes::Bytes;
use h2::{RecvStream, SendStream};

use crate::telemetry::metrics::TcpCounters;

const SMALL: usize = 16 * 1024;
const LARGE: usize = 256 * 1024;

/// Live byte counters of one connection, also fed to its metrics as bytes move.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes from the local socket towards the remote side.
    pub sent: Cell<u64>,
    /// Bytes from the remote side towards the local socket.
    pub received: Cell<u64>,
    metrics: Option<(Arc<TcpCounters>, bool)>,
}

impl Counters {
    /// Counters that also feed Istio's byte metrics. `local_is_client`: the local socket is
    /// the connection's client (outbound), so its bytes are request bytes (Istio `received`).
    pub fn with_metrics(m: Arc<TcpCounters>, local_is_client: bool) -> Counters {
        Counters {
            metrics: Some((m, local_is_client)),
            ..Default::default()
        }
    }

    pub fn add_sent(&self, n: u64) {
        self.sent.set(self.sent.get() + n);
        if let Some((m, client)) = &self.metrics {
            TcpCounters::add(if *client { &m.received } else { &m.sent }, n);
        }
    }

    pub fn add_received(&self, n: u64) {
        self.received.set(self.received.get() + n);
        if let Some((m, client)) = &self.metrics {
            TcpCounters::add(if *client { &m.sent } else { &m.received }, n);
        }
    }
}

/// Errors while copying; resets and broken pipes at the end of a connection are not errors.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("HTTP/2 stream: {0}")]
    H2(#[from] h2::Error),
}

/// Copies between a socket and an HBONE stream until both directions end.
pub async fn copy_h2(
    stream: Stream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    counters: Rc<Counters>,
) -> Result<(), CopyError> {
    let (mut rd, mut wr) = stream.into_split();
    let up = async {
        let mut size = ReadSize::default();
        loop {
            let buf = match read_fresh(&mut rd, &mut size).await {
                Ok(b) => b,
                Err(e) if is_benign(&e) => Bytes::new(),
                Err(e) => return Err(CopyError::Io(e)),
            };
            if buf.is_empty() {
                // EOF: half-close the stream (END_STREAM).
                let _ = send.send_data(Bytes::new(), true);
                return Ok(());
            }
            counters.add_sent(buf.len() as u64);
            let mut chunk = buf;
            while !chunk.is_empty() {
                send.reserve_capacity(chunk.len());
                let cap = match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(CopyError::H2(e)),
                    None => return Err(CopyError::Io(io::ErrorKind::BrokenPipe.into())),
                };
                let part = chunk.split_to(cap.min(chunk.len()));
                send.send_data(part, false)?;
            }
        }
    };
    let down = async {
        while let Some(data) = recv.data().await {
            let data = match data {
                Ok(d) => d,
                Err(e) if is_benign_h2(&e) => break,
                Err(e) => return Err(CopyError::H2(e)),
            };
            let n = data.len();
            match wr.write_bytes(data).await {
                Ok(()) => {}
                Err(e) if is_benign(&e) => return Ok(()),
                Err(e) => return Err(CopyError::Io(e)),
            }
            counters.add_received(n as u64);
            let _ = recv.flow_control().release_capacity(n);
        }
        let _ = wr.shutdown().await;
        Ok(())
    };
    let (a, b) = tokio::join!(up, down);
    a.and(b)
}

/// Adaptive read size: starts at 16 KiB, doubles each time a read fills its buffer, up to
/// 256 KiB; halves back after reads that use less than a quarter of it.
#[derive(Debug)]
struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize(SMALL)
    }
}

/// Reads into a buffer allocated only when data is there: an idle connection holds no read
/// buffer at all. An empty buffer means EOF.
async fn read_fresh(r: &mut ReadHalf, size: &mut ReadSize) -> io::Result<Bytes> {
    let buf = r.read_fresh(size.0).await?;
    size.adapt(buf.len());
    Ok(buf)
}

impl ReadSize {
    /// The next read's size after one that got `n` bytes: doubled when it filled the
    /// buffer, halved when it got under a quarter.
    fn adapt(&mut self, n: usize) {
        if n == self.0 && self.0 < LARGE {
            self.0 *= 2;
        } else if n < self.0 / 4 && self.0 > SMALL {
            self.0 /= 2;
        }
    }
}

fn is_benign(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

fn is_benign_h2(e: &h2::Error) -> bool {
    matches!(
        e.reason(),
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL)
    )
}
