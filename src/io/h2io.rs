//! One HBONE stream (an HTTP/2 CONNECT stream's send and receive halves) as a byte stream
//! (`AsyncRead` + `AsyncWrite`), for protocol stacks that want one: the waypoint serves
//! HTTP/1.1 and HTTP/2 inside a tunnel with hyper, and speaks them to endpoints through its
//! second HBONE hop.
//!
//! Owns: flow control (received bytes are released as they are read, so the peer's window
//! refills), END_STREAM as EOF and on shutdown, bytes read before the stack took over
//! (`prefix`, what protocol sniffing looked at), and byte counts of both directions.
//! Written by hand because h2 offers no such adapter; it is ~100 lines over h2's own API.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes moved through an [`H2Io`].
#[derive(Debug, Default)]
pub struct IoCounts {
    pub read: Cell<u64>,
    pub written: Cell<u64>,
}

/// A CONNECT stream as a byte stream.
pub struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    eof: bool,
    shut: bool,
    counts: Rc<IoCounts>,
    /// Kept alive as long as the stream (e.g. its pooled connection's slot).
    _guard: Option<Box<dyn std::any::Any>>,
}

impl H2Io {
    /// `prefix`: bytes already taken off `recv` (and their capacity released) that come first.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, prefix: Bytes) -> H2Io {
        H2Io {
            send,
            recv,
            pending: prefix,
            eof: false,
            shut: false,
            counts: Rc::default(),
            _guard: None,
        }
    }

    /// Holds `guard` until this stream is dropped.
    pub fn with_guard(mut self, guard: Box<dyn std::any::Any>) -> H2Io {
        self._guard = Some(guard);
        self
    }

    /// The byte counts of this stream (shared; they keep counting after the stream moves).
    pub fn counts(&self) -> Rc<IoCounts> {
        self.counts.clone()
    }
}

/// Reads the first data of a stream (for protocol sniffing): at least `want` bytes unless
/// the stream ends first. Capacity is released; the bytes go back in with [`H2Io::new`].
pub async fn peek(recv: &mut RecvStream, want: usize) -> Result<Bytes, h2::Error> {
    let mut got = bytes::BytesMut::new();
    while got.len() < want {
        match recv.data().await {
            Some(Ok(d)) => {
                let _ = recv.flow_control().release_capacity(d.len());
                got.extend_from_slice(&d);
            }
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok(got.freeze())
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                let c = &self.counts.read;
                c.set(c.get() + n as u64);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(d)) => {
                    let _ = self.recv.flow_control().release_capacity(d.len());
                    self.pending = d;
                }
                Some(Err(e)) if e.is_reset() && e.reason() == Some(h2::Reason::NO_ERROR) => {
                    self.eof = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => self.eof = true,
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        let n = loop {
            match ready!(self.send.poll_capacity(cx)) {
                // Capacity assigned and taken back: ask again (registers the waker).
                Some(Ok(0)) => continue,
                Some(Ok(c)) => break c.min(buf.len()),
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        };
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        let c = &self.counts.written;
        c.set(c.get() + n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Io {
    fn drop(&mut self) {
        // A stream dropped without a shutdown ends cleanly rather than hanging the peer.
        if !self.shut {
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }
}
