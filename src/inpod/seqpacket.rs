//! AF_UNIX SOCK_SEQPACKET sockets with fd passing (SCM_RIGHTS): the transport of ZDS, used by
//! the node proxy's ZDS client and the lab's ZDS server. Blocking I/O with timeouts; callers
//! run it on threads of their own.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};

/// The most fds one record carries (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// A connected SEQPACKET socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

/// One received record.
#[derive(Debug)]
pub struct Record {
    pub data: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// The record or its control data did not fit (MSG_TRUNC / MSG_CTRUNC).
    pub truncated: bool,
}

fn new_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

impl SeqPacket {
    /// Connects to a listening SEQPACKET socket at `path`.
    pub fn connect(path: &Path) -> io::Result<SeqPacket> {
        let fd = new_socket()?;
        let addr = UnixAddr::new(path)?;
        socket::connect(fd.as_raw_fd(), &addr)?;
        Ok(SeqPacket { fd })
    }

    /// Sends one record, with `fds` as SCM_RIGHTS if any.
    pub fn send(&self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let iov = [IoSlice::new(data)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        // A signal during a blocking call with a socket timeout is not restarted (signal(7)):
        // EINTR is retried, it is not the peer's answer.
        let n = loop {
            match socket::sendmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r?,
            }
        };
        if n != data.len() {
            return Err(io::Error::other(format!(
                "short send: {n} of {}",
                data.len()
            )));
        }
        Ok(())
    }

    /// Receives one record of at most `max` bytes, with every fd the peer attached (the
    /// caller checks how many it expects). `Ok(None)` at EOF.
    pub fn recv(&self, max: usize) -> io::Result<Option<Record>> {
        self.recv_many(max)
    }

    /// Receives one record of at most `max` bytes and up to [`MAX_FDS`] fds.
    pub fn recv_many(&self, max: usize) -> io::Result<Option<Record>> {
        self.recv_into(max, nix::cmsg_space!([RawFd; MAX_FDS]))
    }

    /// Room for [`MAX_FDS`] fds always: the kernel never attaches more to one record, so the
    /// control data is never cut (MSG_CTRUNC). A cut one would be a leak, not only an error:
    /// the kernel installs the fds that fit in our table, and nix reads no cmsg once it is
    /// cut, so nothing would own (and close) them.
    fn recv_into(&self, max: usize, mut cmsg: Vec<u8>) -> io::Result<Option<Record>> {
        let mut buf = vec![0u8; max];
        // EINTR (a signal: not restarted under SO_RCVTIMEO, signal(7)) is retried; nothing
        // was received then.
        let (n, flags, raw_fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match socket::recvmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => r?,
            };
            let mut raw = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    raw.extend(fds);
                }
            }
            break (msg.bytes, msg.flags, raw);
        };
        let fds = raw_fds
            .into_iter()
            // SAFETY: the kernel just installed these descriptors in our table for this
            // message (SCM_RIGHTS); nothing else owns them, so taking ownership is sound.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect::<Vec<_>>();
        if n == 0 && fds.is_empty() && !flags.contains(MsgFlags::MSG_TRUNC) {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(Record {
            data: buf,
            fds,
            truncated: flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
        }))
    }

    /// Sets the receive timeout (None = block forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let tv = nix::sys::time::TimeVal::new(
            t.map_or(0, secs),
            t.map_or(0, |d| i64::from(d.subsec_micros())),
        );
        socket::setsockopt(&self.fd, socket::sockopt::ReceiveTimeout, &tv)?;
        Ok(())
    }

    /// Shuts the socket down both ways (wakes a blocked `recv`).
    pub fn shutdown(&self) {
        let _ = socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Both);
    }

    pub fn try_clone(&self) -> io::Result<SeqPacket> {
        Ok(SeqPacket {
            fd: self.fd.try_clone()?,
        })
    }
}

/// A listening SEQPACKET socket (the CNI side of ZDS).
#[derive(Debug)]
pub struct SeqPacketListener {
    fd: OwnedFd,
}

impl SeqPacketListener {
    /// Binds `path` (replacing a stale socket file) and listens.
    pub fn bind(path: &Path) -> io::Result<SeqPacketListener> {
        let _ = std::fs::remove_file(path);
        let fd = new_socket()?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        socket::listen(&fd, Backlog::new(16)?)?;
        Ok(SeqPacketListener { fd })
    }

    /// Accepts one connection (blocking).
    pub fn accept(&self) -> io::Result<SeqPacket> {
        let raw = socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(SeqPacket { fd })
    }

    /// Sets a timeout on `accept` (via SO_RCVTIMEO), so a server thread can poll for stop.
    pub fn set_accept_timeout(&self, t: Duration) -> io::Result<()> {
        let tv = nix::sys::time::TimeVal::new(secs(t), i64::from(t.subsec_micros()));
        socket::setsockopt(&self.fd, socket::sockopt::ReceiveTimeout, &tv)?;
        Ok(())
    }
}

/// Whole seconds of a timeout, for a `timeval` (saturating: a timeout past 2^63 s is forever).
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_fds_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = SeqPacketListener::bind(&path).unwrap();
        let c = SeqPacket::connect(&path).unwrap();
        let s = l.accept().unwrap();
        let f = std::fs::File::open("/proc/self/ns/net").unwrap();
        c.send(b"hello", &[f.as_raw_fd()]).unwrap();
        let r = s.recv(1024).unwrap().unwrap();
        assert_eq!(r.data, b"hello");
        assert_eq!(r.fds.len(), 1);
        assert!(!r.truncated);
        // Records keep their boundaries; an oversized one is reported truncated.
        c.send(&[7u8; 2000], &[]).unwrap();
        let r = s.recv(1024).unwrap().unwrap();
        assert!(r.truncated);
        c.send(b"x", &[]).unwrap();
        assert_eq!(s.recv(1024).unwrap().unwrap().data, b"x");
        drop(c);
        assert!(s.recv(1024).unwrap().is_none());
    }

    #[test]
    fn a_record_with_more_fds_than_expected_is_received_whole() {
        // A peer (istio-cni, a hand-over client) that attaches 5 fds where one is expected:
        // the record must arrive with all of them, for the caller to refuse it and close
        // them — not fail the connection with ENOBUFS and leak the fds that fit.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = SeqPacketListener::bind(&path).unwrap();
        let c = SeqPacket::connect(&path).unwrap();
        let s = l.accept().unwrap();
        let files: Vec<_> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/ns/net").unwrap())
            .collect();
        let raw: Vec<_> = files.iter().map(|f| f.as_raw_fd()).collect();
        c.send(b"add", &raw).unwrap();
        let r = s.recv(1024).unwrap().unwrap();
        assert_eq!(r.data, b"add");
        assert_eq!(r.fds.len(), 5);
        assert!(!r.truncated);
        // The connection still works.
        c.send(b"next", &[]).unwrap();
        assert_eq!(s.recv(1024).unwrap().unwrap().data, b"next");
    }
}
