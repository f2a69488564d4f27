//! The I/O engine seam: the socket types and operations the flows use. Each is an enum over
//! the two engines — tokio's epoll-driven types, or the shard ring's (`uring::net`) — picked
//! by the engine of the shard that makes it; the flows (`proxy`, `io`) do not change.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::engine::{self, Engine};
use super::uring;

/// A connected data-path socket.
#[derive(Debug)]
pub enum Stream {
    Epoll(tokio::net::TcpStream),
    Uring(uring::net::Stream),
}

/// A listening data-path socket.
#[derive(Debug)]
pub enum Listener {
    Epoll(tokio::net::TcpListener),
    Uring(uring::net::Listener),
}

/// The read side of a split `Stream`.
#[derive(Debug)]
pub enum ReadHalf {
    Epoll(tokio::net::tcp::OwnedReadHalf),
    Uring(uring::net::ReadHalf),
}

/// The write side of a split `Stream`.
#[derive(Debug)]
pub enum WriteHalf {
    Epoll(tokio::net::tcp::OwnedWriteHalf),
    Uring(uring::net::WriteHalf),
}

/// Registers a listener made elsewhere (e.g. inside a pod netns) with this shard's engine.
pub fn listener_from_std(l: std::net::TcpListener) -> io::Result<Listener> {
    match engine::current() {
        Engine::Epoll => Ok(Listener::Epoll(tokio::net::TcpListener::from_std(l)?)),
        Engine::Uring => Ok(Listener::Uring(uring::net::Listener::from_std(l))),
    }
}

/// Connects an unconnected socket made elsewhere (e.g. inside a pod netns), with a timeout.
pub async fn connect(
    sock: std::net::TcpStream,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<Stream, String> {
    let r = match engine::current() {
        Engine::Epoll => {
            let sock = tokio::net::TcpSocket::from_std_stream(sock);
            engine::timeout(timeout, async {
                sock.connect(dst).await.map(Stream::Epoll)
            })
            .await
        }
        Engine::Uring => {
            engine::timeout(timeout, async {
                uring::net::connect(sock, dst).await.map(Stream::Uring)
            })
            .await
        }
    };
    match r {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect to {dst} failed: {e}")),
        Err(_) => Err(format!("connect to {dst} timed out after {timeout:?}")),
    }
}

impl Listener {
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        match self {
            Listener::Epoll(l) => l.accept().await.map(|(s, a)| (Stream::Epoll(s), a)),
            Listener::Uring(l) => l.accept().await.map(|(s, a)| (Stream::Uring(s), a)),
        }
    }

    /// Stops accepting and returns the connections this process already took off the listen
    /// queue (io_uring's multishot accept takes them ahead of the caller; epoll takes none),
    /// so that handing the socket to another process loses nothing.
    pub async fn stop(&self) -> Vec<(Stream, SocketAddr)> {
        match self {
            Listener::Epoll(_) => Vec::new(),
            Listener::Uring(l) => l
                .stop()
                .await
                .into_iter()
                .map(|(s, a)| (Stream::Uring(s), a))
                .collect(),
        }
    }
}

impl Stream {
    /// Whether the socket runs on io_uring (it then buffers reads itself).
    pub fn is_uring(&self) -> bool {
        matches!(self, Stream::Uring(_))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Epoll(s) => s.local_addr(),
            Stream::Uring(s) => s.local_addr(),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Epoll(s) => s.peer_addr(),
            Stream::Uring(s) => s.peer_addr(),
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Epoll(s) => s.set_nodelay(on),
            Stream::Uring(s) => s.set_nodelay(on),
        }
    }

    /// Received bytes offered in place and writable to `f` (returns how many it consumed):
    /// on uring they are the ring buffers the kernel received into; `None` on epoll, whose
    /// reads go straight into the caller's buffer anyway.
    pub fn poll_read_in_place(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnMut(&mut [u8]) -> usize,
    ) -> Option<Poll<io::Result<usize>>> {
        match self {
            Stream::Uring(s) => Some(s.poll_read_in_place(cx, f)),
            Stream::Epoll(_) => None,
        }
    }

    /// Writes `data` without copying it in user space: uring hands the buffer to the ring,
    /// epoll writes from it. Ready (and `data` is `None`) once all of it is accepted.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Option<Bytes>,
    ) -> Poll<io::Result<()>> {
        match self {
            Stream::Uring(s) => s.poll_write_bytes(cx, data),
            Stream::Epoll(s) => {
                while let Some(b) = data {
                    if b.is_empty() {
                        *data = None;
                        break;
                    }
                    match Pin::new(&mut *s).poll_write(cx, b) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => b.advance(n),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Readies the socket for another owner (hand-over to the next process): nothing in
    /// flight. Returns the socket's fd (a duplicate on uring), the bytes received that nobody
    /// read yet and the bytes queued and not sent (uring receives ahead and queues sends;
    /// epoll does neither: both empty).
    pub async fn detach(self) -> io::Result<(std::os::fd::OwnedFd, Vec<u8>, Vec<u8>)> {
        match self {
            Stream::Epoll(s) => {
                let std = s.into_std()?;
                Ok((std.into(), Vec::new(), Vec::new()))
            }
            Stream::Uring(s) => s.detach().await,
        }
    }

    /// A connected socket received from elsewhere (the previous process), on this shard's
    /// engine.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Stream> {
        let s = std::net::TcpStream::from(fd);
        match engine::current() {
            Engine::Epoll => {
                s.set_nonblocking(true)?;
                Ok(Stream::Epoll(tokio::net::TcpStream::from_std(s)?))
            }
            Engine::Uring => Ok(Stream::Uring(uring::net::Stream::from_std(s))),
        }
    }

    /// The halves of one `into_split` as one socket again (None: of different sockets or
    /// engines).
    pub fn reunite(r: ReadHalf, w: WriteHalf) -> Option<Stream> {
        match (r, w) {
            (ReadHalf::Epoll(r), WriteHalf::Epoll(w)) => r.reunite(w).ok().map(Stream::Epoll),
            (ReadHalf::Uring(r), WriteHalf::Uring(w)) => {
                uring::net::Stream::reunite(r, w).map(Stream::Uring)
            }
            _ => None,
        }
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Epoll(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Epoll(r), WriteHalf::Epoll(w))
            }
            Stream::Uring(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Uring(r), WriteHalf::Uring(w))
            }
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Epoll(s) => s.as_fd(),
            Stream::Uring(s) => borrow(s.as_raw_fd(), self),
        }
    }
}

fn borrow<'a, T>(fd: std::os::fd::RawFd, _owner: &'a T) -> BorrowedFd<'a> {
    #[allow(unsafe_code)]
    // SAFETY: `_owner` owns `fd` and outlives the borrow.
    unsafe {
        BorrowedFd::borrow_raw(fd)
    }
}

impl ReadHalf {
    /// Waits for data and reads it into a buffer allocated only now (an idle connection
    /// holds none; laid out as the ring's, `uring::rxbuf`), at most `max` bytes. An empty
    /// buffer is EOF.
    pub async fn read_fresh(&mut self, max: usize) -> io::Result<Bytes> {
        match self {
            ReadHalf::Epoll(r) => loop {
                r.readable().await?;
                let mut buf = uring::rxbuf::fresh_buf(max);
                match r.try_read_buf(&mut buf) {
                    Ok(_) => return Ok(buf.freeze()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            ReadHalf::Uring(r) => r.read_fresh(max).await,
        }
    }
}

impl WriteHalf {
    /// Writes all of `data` (on uring: hands the buffer to the ring without copying).
    pub async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            WriteHalf::Epoll(w) => w.write_all(&data).await,
            WriteHalf::Uring(w) => w.write_bytes(data).await,
        }
    }

    /// Sends what is queued, then FIN.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Epoll(w) => w.shutdown().await,
            WriteHalf::Uring(w) => w.shutdown().await,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Epoll(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Uring(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Epoll(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Uring(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Epoll(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Uring(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Epoll(s) => s.is_write_vectored(),
            Stream::Uring(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Epoll(s) => Pin::new(s).poll_flush(cx),
            Stream::Uring(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Epoll(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Uring(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
