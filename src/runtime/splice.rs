//! Plain passthrough without copying through user space: `splice(2)` from one socket into a
//! pipe, and from the pipe into the other socket, on either engine. What `io::relay` uses
//! for plaintext TCP (outbound passthrough, inbound plaintext) when `--splice` is on.
//!
//! Owns: [`Pipe`] (a non-blocking pipe, sized up when the system allows, that knows how
//! much it holds) and the socket calls a splicing relay makes: [`Stream::quiesce`] (the
//! engine stops buffering the socket itself), [`Stream::splice_in`] / [`Stream::splice_out`],
//! and the plain non-blocking `send`/`recv`/`shutdown` around them. Each call waits for
//! readiness (epoll: tokio's registration; uring: a one-shot poll on the shard's ring) and
//! then makes its syscall non-blocking, so every call is cancel-safe: a dropped call has
//! moved nothing, and what it moved when it returns is in the pipe's count or the result.
//!
//! Why not io_uring's own SPLICE: the kernel always runs it in an io-wq worker thread, a
//! blocking splice per direction per connection (an idle connection would hold a kernel
//! thread). The poll on the ring plus a non-blocking syscall keeps the shard the only thread.
//!
//! Not here: the relay's state, export and counting (`io::relay`).

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{MsgFlags, Shutdown};
use tokio::io::Interest;

use super::net::Stream;

/// The pipe size asked for: 64 pages of a socket's receive in one `splice`, against the
/// default 16. The kernel's pipe-max-size (1 MiB by default) allows it; a user past its
/// pipe-user-pages-soft gets a smaller pipe, which still works.
pub const PIPE_SIZE: usize = 256 * 1024;

/// Bytes spliced out to sockets by this process (what the relays' tests check that splice,
/// not a copy, moved).
static SPLICED: AtomicU64 = AtomicU64::new(0);

/// Bytes spliced out to sockets so far, by every shard.
pub fn spliced_bytes() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

#[cfg(test)]
thread_local! {
    static REFUSE_PIPES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests: this thread's pipes are refused as at the fd limit (EMFILE).
#[cfg(test)]
pub fn refuse_pipes_here(on: bool) {
    REFUSE_PIPES.set(on);
}

/// A non-blocking pipe between the two `splice`s of one direction, with what it holds.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    len: usize,
    cap: usize,
}

impl Pipe {
    /// A new empty pipe (two fds).
    pub fn new() -> io::Result<Pipe> {
        #[cfg(test)]
        if REFUSE_PIPES.get() {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let cap = match fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32)) {
            Ok(n) => n as usize,
            Err(_) => fcntl(&w, FcntlArg::F_GETPIPE_SZ)? as usize,
        };
        Ok(Pipe { r, w, len: 0, cap })
    }

    /// Bytes spliced in and not yet spliced out.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads out everything the pipe holds (an export carries it on as bytes); the pipe is
    /// then empty.
    pub fn drain(&mut self) -> io::Result<Vec<u8>> {
        let mut out = vec![0; self.len];
        let mut got = 0;
        while got < out.len() {
            match nix::unistd::read(&self.r, &mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if got != out.len() {
            return Err(io::Error::other(format!(
                "the pipe held {got} bytes, {} were counted (a bug)",
                out.len()
            )));
        }
        self.len = 0;
        Ok(out)
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Stream {
    /// Stops the engine's own buffering of the socket, so that the calls below own its
    /// bytes: on uring the ring's receive and send are cancelled for good (the socket stays
    /// on the ring for readiness and a later `detach`) and the socket made non-blocking.
    /// Returns what the engine had received and not handed out, and what it had queued and
    /// not sent (both empty on epoll, which holds neither).
    pub async fn quiesce(&self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        match self {
            Stream::Epoll(_) => Ok((Vec::new(), Vec::new())),
            Stream::Uring(s) => {
                let held = s.quiesce().await?;
                socket2::SockRef::from(self).set_nonblocking(true)?;
                Ok(held)
            }
        }
    }

    /// Runs the non-blocking syscall `f` until it does not report EAGAIN, waiting for
    /// readiness (`out`: writable) in between. `f` must have no effect when it fails.
    async fn when_ready<R>(
        &self,
        out: bool,
        mut f: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            Stream::Epoll(s) => {
                let interest = if out {
                    Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                s.async_io(interest, f).await
            }
            Stream::Uring(s) => loop {
                match f() {
                    Err(e) if would_block(&e) => poll_fn(|cx| s.poll_ready(cx, out)).await?,
                    r => return r,
                }
            },
        }
    }

    /// Waits until the socket has something to read (data, EOF or an error).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Epoll(s) => s.readable().await,
            Stream::Uring(s) => poll_fn(|cx| s.poll_ready(cx, false)).await,
        }
    }

    /// Moves what the socket has received into `p`, up to the pipe's free room (which
    /// must not be 0); waits for data first. 0 is end of stream.
    pub async fn splice_in(&self, p: &mut Pipe) -> io::Result<usize> {
        let room = p.cap - p.len;
        if room == 0 {
            return Err(io::Error::other("splice into a full pipe (a bug)"));
        }
        let n = self
            .when_ready(false, || {
                Ok(splice(
                    self.as_fd(),
                    None,
                    &p.w,
                    None,
                    room,
                    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                )?)
            })
            .await?;
        p.len += n;
        Ok(n)
    }

    /// Moves what `p` holds into the socket, as much as it takes; waits for room first.
    pub async fn splice_out(&self, p: &mut Pipe) -> io::Result<usize> {
        let len = p.len;
        if len == 0 {
            return Ok(0);
        }
        let n = self
            .when_ready(true, || {
                Ok(splice(
                    &p.r,
                    None,
                    self.as_fd(),
                    None,
                    len,
                    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                )?)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        p.len -= n;
        SPLICED.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Sends from `b` as much as the socket takes (at least one byte); waits for room.
    pub async fn send_now(&self, b: &[u8]) -> io::Result<usize> {
        let fd = self.as_fd().as_raw_fd();
        self.when_ready(true, || {
            Ok(nix::sys::socket::send(
                fd,
                b,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )?)
        })
        .await
    }

    /// Receives up to `max` bytes into a buffer allocated now; waits for data. Empty is end
    /// of stream.
    pub async fn recv_now(&self, max: usize) -> io::Result<Bytes> {
        let fd = self.as_fd().as_raw_fd();
        let mut buf = BytesMut::zeroed(max);
        let n = self
            .when_ready(false, || {
                Ok(nix::sys::socket::recv(
                    fd,
                    &mut buf,
                    MsgFlags::MSG_DONTWAIT,
                )?)
            })
            .await?;
        buf.truncate(n);
        Ok(buf.freeze())
    }

    /// FIN now (nothing is queued in user space on a quiesced socket).
    pub fn shutdown_write(&self) -> io::Result<()> {
        Ok(nix::sys::socket::shutdown(
            self.as_fd().as_raw_fd(),
            Shutdown::Write,
        )?)
    }
}
