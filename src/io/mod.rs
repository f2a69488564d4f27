//! Copy loops between pod sockets and HBONE streams.
//!
//! Owns: moving bytes in both directions with half-close preserved (EOF on one side becomes
//! FIN / END_STREAM on the other), adaptive read buffers (16 KiB, growing to 256 KiB once a
//! connection has carried 1 MiB, so idle connections stay small and bulk ones make few
//! syscalls), zero-copy hand-off of read buffers to h2 (`Bytes`), and byte counting.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::telemetry::metrics::TcpCounters;

const SMALL: usize = 16 * 1024;
const LARGE: usize = 256 * 1024;
const GROW_AFTER: u64 = 1024 * 1024;

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

/// Copies between a TCP (or any) stream and an HBONE stream until both directions end.
pub async fn copy_h2<S>(
    stream: S,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    counters: Rc<Counters>,
) -> Result<(), CopyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let up = async {
        let mut buf = BytesMut::with_capacity(SMALL);
        loop {
            let want = if counters.sent.get() >= GROW_AFTER {
                LARGE
            } else {
                SMALL
            };
            if buf.capacity() < want / 2 {
                buf.reserve(want);
            }
            let n = match rd.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) if is_benign(&e) => 0,
                Err(e) => return Err(CopyError::Io(e)),
            };
            if n == 0 {
                // EOF: half-close the stream (END_STREAM).
                let _ = send.send_data(Bytes::new(), true);
                return Ok(());
            }
            let mut chunk = buf.split().freeze();
            counters.add_sent(n as u64);
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
            match wr.write_all(&data).await {
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

/// Copies between two sockets (plaintext passthrough and inbound plaintext).
pub async fn copy_tcp<A, B>(a: A, b: B, counters: Rc<Counters>) -> Result<(), CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let c = counters.clone();
    let fwd = pump(&mut ar, &mut bw, move |n| c.add_sent(n));
    let c = counters.clone();
    let back = pump(&mut br, &mut aw, move |n| c.add_received(n));
    let (x, y) = tokio::join!(fwd, back);
    x.and(y)
}

async fn pump<R, W>(r: &mut R, w: &mut W, count: impl Fn(u64)) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; SMALL];
    let mut total = 0u64;
    loop {
        if total >= GROW_AFTER && buf.len() < LARGE {
            buf.resize(LARGE, 0);
        }
        let n = match r.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if is_benign(&e) => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        match w.write_all(&buf[..n]).await {
            Ok(()) => {}
            Err(e) if is_benign(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        total += n as u64;
        count(n as u64);
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
