//! The hand-over socket between two node proxies on one node, for a rolling update that
//! refuses no connection (a DaemonSet with `maxSurge: 1` starts the new proxy beside the
//! old one; istio-cni then hands the pods to the newest).
//!
//! Owns: the protocol (SEQPACKET records of JSON, fds as SCM_RIGHTS), the old process's
//! server thread, the new process's client, and the checks on a received listener, live
//! connection or TCP relay.
//!
//! When the new process is given a pod (ZDS `Add`), it asks the old one for that pod's
//! listening sockets (`take`) instead of opening its own: the old sends a duplicate of
//! every one (15001, 15006, 15008, one per shard), the new starts accepting on them and
//! says so (`took`), and only then does the old stop accepting — without closing the
//! sockets' listen queues, which now belong to the new process too. A connection that
//! completed its handshake a moment before is accepted by one of the two; none is refused
//! or reset. A pod the old process does not have (`absent`), a protocol error or no old
//! process at all: the new one opens fresh listeners, as at a first start.
//!
//! On SIGTERM the roles swap: the old process connects to the new one's socket and hands
//! it every live HBONE connection (`adopt`) and plaintext TCP relay (`adopt_relay`), each
//! with a memfd of its state and its sockets; one refused is continued by the old process.
//!
//! Versions: each side says its version in `Hello`; the server answers the lower of the
//! two, which both then speak. Version 1 has listeners and HBONE connections; version 2
//! adds TCP relays (a relay is not offered to a version-1 peer: it drains in the old
//! process, as it did before).
//!
//! The server side runs on a thread of its own (blocking I/O); the control thread does the
//! work (`HandoverEvent`) and answers through a channel, as for ZDS.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seqpacket::{MAX_FDS, SeqPacket, SeqPacketListener};
use crate::io::relay::RelayState;

/// The newest protocol version spoken here.
pub const VERSION: u32 = 2;

/// The oldest version spoken here (a peer of a build before TCP relays moved).
pub const MIN_VERSION: u32 = 1;

/// The first version that carries TCP relays (`AdoptRelay`).
pub const RELAY_VERSION: u32 = 2;

/// The largest record (JSON) either side sends.
const MAX_RECORD: usize = 64 * 1024;

/// How long either side waits for the other's answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What the new process asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello {
        version: u32,
        pid: u32,
    },
    /// Send this pod's listeners.
    Take {
        uid: String,
    },
    /// The new process accepts on them now: stop accepting (queues stay open).
    Took {
        uid: String,
    },
    /// Sent by the old process to the new one (on the new one's socket): continue this
    /// live HBONE connection. `info` is the proxy's description of it (opaque here); the
    /// record's fds are a memfd with its state, then its sockets.
    Adopt {
        info: String,
    },
    /// As `Adopt`, for a plaintext TCP relay (version 2): `info` is the proxy's bookkeeping
    /// of it (opaque here); the record's fds are a memfd with its state
    /// (`io::relay::RelayState::encode`), then its two sockets (a, then b).
    AdoptRelay {
        info: String,
    },
}

/// What the old process answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        version: u32,
        pid: u32,
    },
    /// The pod's listeners, one fd per entry of `ports` in the record's SCM_RIGHTS.
    Listeners {
        uid: String,
        ports: Vec<u16>,
    },
    /// This process has no listeners for the pod.
    Absent {
        uid: String,
        why: String,
    },
    Done,
    Error {
        why: String,
    },
    /// The connection continues here, with this many tunnels (a TCP relay: 1).
    Adopted {
        tunnels: usize,
    },
    /// Not taken (the old process keeps it and drains it), and why.
    Refused {
        why: String,
    },
}

/// A request for the control thread of the old process.
#[derive(Debug)]
pub enum HandoverEvent {
    /// Duplicates of the pod's listeners, with their ports; `Err` = absent, and why.
    Take {
        uid: String,
        reply: std_mpsc::Sender<Result<Vec<(u16, OwnedFd)>, String>>,
    },
    /// The new process accepts for the pod now.
    Took {
        uid: String,
        reply: std_mpsc::Sender<()>,
    },
    /// The previous process hands over a live connection: `state` (its bytes, read from
    /// the memfd) and its sockets; answered with the tunnels adopted, or why not.
    Adopt {
        info: String,
        state: Vec<u8>,
        fds: Vec<OwnedFd>,
        reply: std_mpsc::Sender<Result<usize, String>>,
    },
    /// The previous process hands over a TCP relay: its state (decoded and checked) and its
    /// two sockets (checked: connections, not listeners); answered with whether it
    /// continues here, or why not.
    AdoptRelay {
        info: String,
        state: RelayState,
        fds: Vec<OwnedFd>,
        reply: std_mpsc::Sender<Result<(), String>>,
    },
}

/// The largest connection state accepted through a memfd (windows bound what a connection
/// holds: 200 streams of 4 MiB each way is 1.6 GiB at the very worst).
const MAX_STATE: u64 = 2 << 30;

/// Puts `state` in a memfd (sealed from growing), for a record's SCM_RIGHTS.
fn state_memfd(state: &[u8]) -> io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    let fd = nix::sys::memfd::memfd_create(
        c"ringmesh-handover",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(state)?;
    f.rewind()?;
    Ok(OwnedFd::from(f))
}

/// Reads a memfd's state (checked: a regular file within [`MAX_STATE`]).
fn read_state(fd: OwnedFd) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::from(fd);
    let meta = f.metadata().map_err(|e| format!("state fd: {e}"))?;
    if !meta.is_file() {
        return Err("the state fd is not a memfd".into());
    }
    if meta.len() > MAX_STATE {
        return Err(format!("state of {} bytes is too large", meta.len()));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.rewind().map_err(|e| format!("state fd: {e}"))?;
    f.read_to_end(&mut out)
        .map_err(|e| format!("state fd: {e}"))?;
    Ok(out)
}

/// How handing one connection over ended, as the old process sees it.
#[derive(Debug)]
pub enum AdoptOutcome {
    /// It continues in the new process, with this many tunnels.
    Adopted(usize),
    /// The new process refused it, or is gone: it is still ours (drain it).
    Kept(String),
    /// No answer in time: whether the new process took it is unknown, so nobody may
    /// continue it here (it is cut).
    Unknown(String),
}

/// Why a hand-over step failed (the caller then opens its own listeners).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("hand-over socket {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("hand-over peer broke the protocol: {0}")]
    Protocol(String),
    #[error("hand-over peer closed the connection")]
    Closed,
}

/// The hand-over socket that belongs with a ZDS socket: beside it, `<zds socket>.handover`.
pub fn path_for(zds_socket: &Path) -> PathBuf {
    let mut p = zds_socket.as_os_str().to_owned();
    p.push(".handover");
    PathBuf::from(p)
}

/// The new process's side.
#[derive(Debug)]
pub struct Client {
    sock: SeqPacket,
    path: String,
    /// The old process's pid (from its hello).
    pub peer_pid: u32,
    /// The version both speak (the lower of the two).
    pub version: u32,
}

impl Client {
    /// Connects to an old process's hand-over socket and says hello. `Ok(None)` when there
    /// is none (no socket file, or nobody listening: a first start).
    pub fn connect(path: &Path) -> Result<Option<Client>, HandoverError> {
        let p = path.display().to_string();
        let sock = match SeqPacket::connect(path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(source) => return Err(HandoverError::Io { path: p, source }),
        };
        sock.set_read_timeout(Some(TIMEOUT))
            .map_err(|source| HandoverError::Io {
                path: p.clone(),
                source,
            })?;
        let mut c = Client {
            sock,
            path: p,
            peer_pid: 0,
            version: 0,
        };
        match c.call(&Request::Hello {
            version: VERSION,
            pid: std::process::id(),
        })? {
            (Reply::Hello { version, pid }, _) if (MIN_VERSION..=VERSION).contains(&version) => {
                c.peer_pid = pid;
                c.version = version;
            }
            (Reply::Hello { version, .. }, _) => {
                return Err(HandoverError::Protocol(format!(
                    "peer speaks version {version}, we speak {MIN_VERSION} to {VERSION}"
                )));
            }
            (other, _) => return Err(HandoverError::Protocol(format!("hello answered {other:?}"))),
        }
        Ok(Some(c))
    }

    /// The pod's listeners from the old process (`Ok(None)`: it has none).
    pub fn take(&self, uid: &str) -> Result<Option<Vec<(u16, OwnedFd)>>, HandoverError> {
        match self.call(&Request::Take { uid: uid.into() })? {
            (Reply::Listeners { uid: u, ports }, fds) if u == uid => {
                if ports.len() != fds.len() {
                    return Err(HandoverError::Protocol(format!(
                        "{} ports but {} fds for pod {uid}",
                        ports.len(),
                        fds.len()
                    )));
                }
                Ok(Some(ports.into_iter().zip(fds).collect()))
            }
            (Reply::Absent { uid: u, .. }, _) if u == uid => Ok(None),
            (Reply::Error { why }, _) => Err(HandoverError::Protocol(why)),
            (other, _) => Err(HandoverError::Protocol(format!(
                "take {uid} answered {other:?}"
            ))),
        }
    }

    /// Tells the old process that this one accepts for the pod now.
    pub fn took(&self, uid: &str) -> Result<(), HandoverError> {
        match self.call(&Request::Took { uid: uid.into() })? {
            (Reply::Done, _) => Ok(()),
            (other, _) => Err(HandoverError::Protocol(format!(
                "took {uid} answered {other:?}"
            ))),
        }
    }

    /// Hands one live connection to the new process (we are the old one, connected to the
    /// new one's socket): its `info`, `state` bytes and sockets (duplicated by the kernel;
    /// ours stay open for a fallback).
    pub fn adopt(&self, info: &str, state: &[u8], fds: &[OwnedFd]) -> AdoptOutcome {
        self.hand(&Request::Adopt { info: info.into() }, state, fds)
    }

    /// Hands one TCP relay to the new process: its `info`, state and two sockets (as
    /// [`Client::adopt`]). A peer too old for relays is not asked: `Kept`.
    pub fn adopt_relay(&self, info: &str, state: &RelayState, fds: &[OwnedFd]) -> AdoptOutcome {
        if self.version < RELAY_VERSION {
            return AdoptOutcome::Kept(format!(
                "the next node proxy speaks hand-over version {}, which cannot take TCP \
                 relays (version {RELAY_VERSION} can)",
                self.version
            ));
        }
        if fds.len() != 2 {
            return AdoptOutcome::Kept(format!(
                "{} sockets for a TCP relay (it has 2): a bug in the export",
                fds.len()
            ));
        }
        let req = Request::AdoptRelay { info: info.into() };
        self.hand(&req, &state.encode(), fds)
    }

    /// Sends `req` with a memfd of `state` and `fds`; reads the answer as an outcome.
    fn hand(&self, req: &Request, state: &[u8], fds: &[OwnedFd]) -> AdoptOutcome {
        if fds.len() + 1 > MAX_FDS {
            return AdoptOutcome::Kept(format!(
                "{} sockets, more than one record carries",
                fds.len()
            ));
        }
        let memfd = match state_memfd(state) {
            Ok(f) => f,
            Err(e) => return AdoptOutcome::Kept(format!("memfd: {e}")),
        };
        let mut raw = vec![memfd.as_raw_fd()];
        raw.extend(fds.iter().map(|f| f.as_raw_fd()));
        match self.call_with(req, &raw) {
            Ok((Reply::Adopted { tunnels }, _)) => AdoptOutcome::Adopted(tunnels),
            Ok((Reply::Refused { why }, _)) => AdoptOutcome::Kept(why),
            Ok((Reply::Error { why }, _)) => AdoptOutcome::Unknown(why),
            Ok((other, _)) => AdoptOutcome::Kept(format!("adopt answered {other:?}")),
            Err(HandoverError::Closed) => {
                AdoptOutcome::Kept("the new process closed the hand-over socket".into())
            }
            Err(e @ HandoverError::Io { .. }) => AdoptOutcome::Unknown(e.to_string()),
            Err(e) => AdoptOutcome::Kept(e.to_string()),
        }
    }

    fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), HandoverError> {
        self.call_with(req, &[])
    }

    fn call_with(
        &self,
        req: &Request,
        fds: &[std::os::fd::RawFd],
    ) -> Result<(Reply, Vec<OwnedFd>), HandoverError> {
        let io = |source| HandoverError::Io {
            path: self.path.clone(),
            source,
        };
        let data = serde_json::to_vec(req).map_err(|e| HandoverError::Protocol(e.to_string()))?;
        self.sock.send(&data, fds).map_err(io)?;
        let rec = self
            .sock
            .recv_many(MAX_RECORD)
            .map_err(io)?
            .ok_or(HandoverError::Closed)?;
        if rec.truncated {
            return Err(HandoverError::Protocol("answer truncated".into()));
        }
        let reply: Reply = serde_json::from_slice(&rec.data)
            .map_err(|e| HandoverError::Protocol(format!("unreadable answer: {e}")))?;
        Ok((reply, rec.fds))
    }
}

/// Listens on `path` for a new process (replacing the file atomically: a newer process's
/// socket takes the name, an older one keeps serving the client it has) and serves each
/// client in turn on a thread of its own. Ends when `events` closes.
pub fn serve(
    path: &Path,
    events: tokio::sync::mpsc::UnboundedSender<HandoverEvent>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let tmp = {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{}", std::process::id()));
        PathBuf::from(p)
    };
    let l = SeqPacketListener::bind(&tmp)?;
    std::fs::rename(&tmp, path)?;
    l.set_accept_timeout(Duration::from_millis(500))?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || {
            loop {
                if events.is_closed() {
                    return;
                }
                let c = match l.accept() {
                    Ok(c) => c,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => {
                        // Counted and rate-limited with every other failed accept.
                        if crate::telemetry::metrics::accept_failed().1 {
                            tracing::warn!(socket = %shown, "hand-over accept failed: {e} (logged at most every 10 s; ringmesh_accept_failures_total counts them)");
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let why = serve_client(&c, &events);
                tracing::info!(socket = %shown, "hand-over client gone: {why}");
            }
        })
}

/// Answers one new process until it hangs up; returns why it ended.
fn serve_client(
    c: &SeqPacket,
    events: &tokio::sync::mpsc::UnboundedSender<HandoverEvent>,
) -> String {
    loop {
        let rec = match c.recv(MAX_RECORD) {
            Ok(Some(r)) => r,
            Ok(None) => return "closed".into(),
            Err(e) => return format!("receive failed: {e}"),
        };
        let req: Result<Request, _> = serde_json::from_slice(&rec.data);
        let (reply, fds) = match req {
            Err(e) => (
                Reply::Error {
                    why: format!("unreadable request: {e}"),
                },
                Vec::new(),
            ),
            Ok(Request::Hello { version, pid }) => {
                tracing::info!(
                    peer_pid = pid,
                    version,
                    "a node proxy connected for hand-over"
                );
                (
                    Reply::Hello {
                        version: version.min(VERSION),
                        pid: std::process::id(),
                    },
                    Vec::new(),
                )
            }
            Ok(Request::Take { uid }) => {
                let (tx, rx) = std_mpsc::channel();
                if events
                    .send(HandoverEvent::Take {
                        uid: uid.clone(),
                        reply: tx,
                    })
                    .is_err()
                {
                    return "node proxy stopping".into();
                }
                match rx.recv_timeout(TIMEOUT) {
                    Ok(Ok(l)) if l.len() <= MAX_FDS => {
                        let (ports, fds): (Vec<u16>, Vec<OwnedFd>) = l.into_iter().unzip();
                        (Reply::Listeners { uid, ports }, fds)
                    }
                    Ok(Ok(l)) => (
                        Reply::Absent {
                            uid,
                            why: format!("{} listeners, more than one record carries", l.len()),
                        },
                        Vec::new(),
                    ),
                    Ok(Err(why)) => (Reply::Absent { uid, why }, Vec::new()),
                    Err(_) => (
                        Reply::Error {
                            why: "the control thread did not answer".into(),
                        },
                        Vec::new(),
                    ),
                }
            }
            Ok(Request::Took { uid }) => {
                let (tx, rx) = std_mpsc::channel();
                if events.send(HandoverEvent::Took { uid, reply: tx }).is_err() {
                    return "node proxy stopping".into();
                }
                let _ = rx.recv_timeout(TIMEOUT);
                (Reply::Done, Vec::new())
            }
            Ok(Request::Adopt { info }) => (adopt(info, rec.fds, events), Vec::new()),
            Ok(Request::AdoptRelay { info }) => (adopt_relay(info, rec.fds, events), Vec::new()),
        };
        let data = match serde_json::to_vec(&reply) {
            Ok(d) => d,
            Err(e) => return format!("cannot encode an answer: {e}"),
        };
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = c.send(&data, &raw) {
            return format!("send failed: {e}");
        }
    }
}

/// The new process's side of an `adopt`: reads the state, has the control thread continue
/// the connection, answers.
fn adopt(
    info: String,
    fds: Vec<OwnedFd>,
    events: &tokio::sync::mpsc::UnboundedSender<HandoverEvent>,
) -> Reply {
    if fds.len() < 2 {
        return Reply::Refused {
            why: format!(
                "{} fds: expected the state and at least the TLS socket",
                fds.len()
            ),
        };
    }
    let (state, sockets) = match received(fds) {
        Ok(x) => x,
        Err(why) => return Reply::Refused { why },
    };
    let (tx, rx) = std_mpsc::channel();
    let ev = HandoverEvent::Adopt {
        info,
        state,
        fds: sockets,
        reply: tx,
    };
    ask(events, ev, rx, |tunnels| Reply::Adopted { tunnels })
}

/// The new process's side of an `adopt_relay`: the state fd, the state itself and both
/// sockets are checked before the control thread sees them.
fn adopt_relay(
    info: String,
    fds: Vec<OwnedFd>,
    events: &tokio::sync::mpsc::UnboundedSender<HandoverEvent>,
) -> Reply {
    if fds.len() != 3 {
        return Reply::Refused {
            why: format!(
                "{} fds for a TCP relay: expected the state and its two sockets; the previous \
                 node proxy is broken",
                fds.len()
            ),
        };
    }
    let (state, sockets) = match received(fds) {
        Ok(x) => x,
        Err(why) => return Reply::Refused { why },
    };
    let state = match RelayState::decode(&state) {
        Ok(s) => s,
        Err(e) => {
            return Reply::Refused {
                why: format!("TCP relay state: {e}"),
            };
        }
    };
    let (tx, rx) = std_mpsc::channel();
    let ev = HandoverEvent::AdoptRelay {
        info,
        state,
        fds: sockets,
        reply: tx,
    };
    ask(events, ev, rx, |()| Reply::Adopted { tunnels: 1 })
}

/// Splits a hand-over record's fds into the state (read from the memfd, checked) and the
/// sockets (each checked to be a connection).
fn received(mut fds: Vec<OwnedFd>) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    if fds.is_empty() {
        return Err("no state fd".into());
    }
    let sockets = fds.split_off(1);
    let memfd = fds.pop().ok_or("no state fd")?;
    let state = read_state(memfd)?;
    for (k, fd) in sockets.iter().enumerate() {
        check_stream(fd).map_err(|why| format!("socket {k}: {why}"))?;
    }
    Ok((state, sockets))
}

/// Has the control thread carry out `ev`; its answer (on `rx`) becomes the reply.
fn ask<T>(
    events: &tokio::sync::mpsc::UnboundedSender<HandoverEvent>,
    ev: HandoverEvent,
    rx: std_mpsc::Receiver<Result<T, String>>,
    adopted: impl FnOnce(T) -> Reply,
) -> Reply {
    if events.send(ev).is_err() {
        return Reply::Refused {
            why: "node proxy stopping".into(),
        };
    }
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(x)) => adopted(x),
        Ok(Err(why)) => Reply::Refused { why },
        // The connection may be running here after all: say so (the old process must not
        // continue it too).
        Err(_) => Reply::Error {
            why: "the control thread did not answer in time".into(),
        },
    }
}

/// Checks that a received fd is a TCP connection's socket (not a listener). It need not be
/// connected still: an app may have closed or reset its end a moment ago, which the
/// connection's new owner sees as it would have.
fn check_stream(fd: &OwnedFd) -> Result<(), String> {
    let s = socket2::SockRef::from(fd);
    match s.r#type() {
        Ok(socket2::Type::STREAM) => {}
        Ok(t) => return Err(format!("not a stream socket ({t:?})")),
        Err(e) => return Err(format!("not a socket: {e}")),
    }
    if nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| format!("SO_ACCEPTCONN: {e}"))?
    {
        return Err("a listening socket, not a connection".into());
    }
    Ok(())
}

/// Checks that a received fd is a listening TCP socket on `port` in the network namespace
/// whose cookie is `netns_cookie` (the pod's): a confused or hostile peer cannot make this
/// process accept on someone else's socket.
pub fn check_listener(fd: &OwnedFd, port: u16, netns_cookie: u64) -> Result<(), String> {
    let s = socket2::SockRef::from(fd);
    match s.r#type() {
        Ok(socket2::Type::STREAM) => {}
        Ok(t) => return Err(format!("not a stream socket ({t:?})")),
        Err(e) => return Err(format!("not a socket: {e}")),
    }
    if !nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| format!("SO_ACCEPTCONN: {e}"))?
    {
        return Err("not listening".into());
    }
    let local = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("no local address")?;
    if local.port() != port {
        return Err(format!("listens on port {}, not {port}", local.port()));
    }
    let c = super::netns_cookie(fd).map_err(|e| format!("SO_NETNS_COOKIE: {e}"))?;
    if c != netns_cookie {
        return Err("belongs to another network namespace".into());
    }
    Ok(())
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
