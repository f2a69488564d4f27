//! One HBONE connection as one task on our sans-io HTTP/2 codec (`hbone::h2`): the TLS
//! stream, the codec and every tunnel's app socket belong to that task, so that everything
//! the connection is — bytes in flight included — sits in explicit state, not in the locals
//! of many futures. That is what lets a connection be handed to another process whole
//! (hitless upgrades), which the `h2` crate cannot do.
//!
//! Owns: the link task (`run`): reading records into the codec, dispatching its events to
//! the tunnels, moving bytes between each tunnel's app socket and its stream within the
//! flow-control windows (a window's worth at most is buffered per direction: back-pressure
//! reaches the app socket), END_STREAM ↔ FIN both ways, RST_STREAM ↔ reset, and writing the
//! codec's output to TLS. The handle (`Link`) opens tunnels (client role) or accepts and
//! answers them (server role). Not here: dialing, TLS handshakes, policy, metrics (callers').

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::Counters;
pub use super::link_state::{LinkState, StateError, TunnelState};
use super::tls::TlsStream;
use crate::hbone::h2::{self, Conn, Event, HeaderField, Reason, StreamId};
use crate::runtime::net::Stream;

/// How much one read from an app socket takes while data streams.
const APP_READ: usize = 64 * 1024;
/// Room reserved in the codec's receive buffer for one read from TLS while data streams.
const TLS_READ: usize = 64 * 1024;
/// The room of either read while the link is quiet (see [`streaming`]): a round of small
/// requests allocates this, not a streaming buffer, and a quiet link lets go of both
/// buffers when its round ends (ztunnel starts its copy buffers small too and grows them
/// with traffic).
const QUIET_READ: usize = 4 * 1024;

/// Whether a read of `n` bytes into `room` says data streams: it filled half its room, or
/// took at least a quiet read's worth. (Not "half the room" alone: on the uring engine a
/// read from TLS returns one record's plaintext, 16 KiB, a quarter of a streaming room, so
/// a bulk transfer kept falling back to 4 KiB reads.)
fn streaming(n: usize, room: usize) -> bool {
    n * 2 >= room || n >= QUIET_READ
}

/// Codec output past this stops tunnels reading their apps until it is written to TLS:
/// without it one turn read a whole flow-control window (4 MiB a stream, 16 MiB the
/// connection) from the apps before the first byte went out, and the output buffer kept
/// that size for the connection's life.
const OUT_HIGH: usize = 256 * 1024;
/// Bytes taken from TLS in one round before the apps get what they carry (the same
/// batching, on the receive side).
const RECV_ROUND: usize = 256 * 1024;
/// Rounds in one poll before the task yields to the shard's other tasks.
const ROUNDS: usize = 16;

/// The caller's bookkeeping for one tunnel (identities, labels: opaque here), kept for the
/// tunnel's life and encoded only when it is handed to the next process. Held as the
/// caller's own value, not as its encoding: every idle tunnel keeps one, and the encoding
/// (JSON) was ≈ 2 KB a tunnel on each node.
pub trait TunnelBook {
    fn encode(&self) -> Vec<u8>;
}

/// Bookkeeping that is already bytes (a tunnel imported from the process before, tests).
impl TunnelBook for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both directions ended (FIN and END_STREAM).
    Done,
    /// The peer refused the CONNECT with this status.
    Refused(u16),
    /// Reset (by the peer: `remote`) with this code.
    Reset { code: Reason, remote: bool },
    /// The app socket failed.
    App(String),
    /// The HBONE connection failed or went away.
    Link(String),
    /// Handed to the next process with its connection (it goes on there).
    Moved,
    /// Client: the peer refused the stream before processing it (REFUSED_STREAM, or above
    /// its GOAWAY's last stream): nothing was sent or received, and the app socket waits in
    /// [`Link::take_unprocessed`] to be tried on another connection.
    Unprocessed,
}

/// A tunnel's owner, told once how it ended: what an idle tunnel keeps instead of a task
/// that waits for its end (a task was ≈ 1 KB a tunnel on each node). The link calls it
/// outside its own borrow, with the app socket of a stream the peer refused unprocessed
/// ([`TunnelEnd::Unprocessed`]: to be tried on another connection). Dropped uncalled (the
/// link went away without ending its tunnels), it is called with `TunnelEnd::Link`.
pub struct OnEnd(Option<EndFn>);

/// The call an [`OnEnd`] makes.
type EndFn = Box<dyn FnOnce(TunnelEnd, Option<Stream>)>;

impl OnEnd {
    pub fn new(f: impl FnOnce(TunnelEnd, Option<Stream>) + 'static) -> OnEnd {
        OnEnd(Some(Box::new(f)))
    }

    fn call(mut self, end: TunnelEnd, app: Option<Stream>) {
        if let Some(f) = self.0.take() {
            f(end, app);
        }
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(
                TunnelEnd::Link("the HBONE connection went away".into()),
                None,
            );
        }
    }
}

impl std::fmt::Debug for OnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEnd")
    }
}

/// Where a tunnel's end goes.
enum EndTo {
    /// A channel (`open`, `establish`, `end_channel`): someone awaits it.
    Chan(tokio::sync::oneshot::Sender<TunnelEnd>),
    /// A call ([`Link::on_end`]).
    Call(OnEnd),
}

/// What an export gives: the state and the sockets (TLS first, then each tunnel's app
/// socket in the order of `state.tunnels`).
#[derive(Debug)]
pub struct Exported {
    pub state: LinkState,
    pub fds: Vec<std::os::fd::OwnedFd>,
}

/// A tunnel continued from another process (its end: [`Link::on_end`] or
/// [`Link::end_channel`]).
#[derive(Debug)]
pub struct ImportedTunnel {
    pub id: StreamId,
    /// The bookkeeping given to `open`/`establish` in the process before.
    pub meta: Vec<u8>,
    pub sent_before: u64,
    pub received_before: u64,
}

/// A stream the peer opened (server role), waiting to be answered.
#[derive(Debug)]
pub struct Incoming {
    pub id: StreamId,
    pub headers: Vec<HeaderField>,
}

// What every tunnel keeps on its link (besides its app socket's own state): a regression
// fails the build.
const _: () = assert!(std::mem::size_of::<Tun>() <= 176);

struct Tun {
    app: Option<Stream>,
    /// Received DATA not yet written to the app (at most the stream's window).
    to_app: VecDeque<Bytes>,
    /// Read from the app, not yet taken by the codec (its window was full).
    from_app: Bytes,
    /// Leading bytes of `to_app` already counted and released to the codec (the previous
    /// process's socket had taken them but not sent them).
    prereleased: usize,
    /// The app's read side ended; END_STREAM is sent once `from_app` is.
    app_eof: bool,
    end_sent: bool,
    /// END_STREAM received: the app's write side is shut once `to_app` is written.
    peer_end: bool,
    app_shut: bool,
    /// Client: the response arrived (2xx): data may flow.
    established: bool,
    /// The peer reset the stream after sending data still in `to_app`: the tunnel ends so
    /// once that is written (as the h2 crate delivers data received before a reset).
    reset: Option<Box<TunnelEnd>>,
    counters: Rc<Counters>,
    done: Option<EndTo>,
    /// The caller's own bookkeeping for the tunnel ([`TunnelBook`]); it travels with the
    /// tunnel on a hand-over.
    meta: Option<Rc<dyn TunnelBook>>,
}

struct Inner {
    conn: Conn,
    /// Boxed: stream ids grow, and a B-tree filled in order leaves its nodes half empty
    /// (each node has room for 11 tunnels inline: ≈ 300 bytes a tunnel, not 176).
    tuns: BTreeMap<u32, Box<Tun>>,
    incoming: VecDeque<Incoming>,
    accept_waker: Option<Waker>,
    task_waker: Option<Waker>,
    closed: Option<String>,
    /// [`Link::close`] asked the task to end, for this reason.
    closing: Option<String>,
    /// The peer closed the connection (TLS EOF): nothing more is read; tunnels that had
    /// their END_STREAM still write what they hold to their apps, the others end.
    peer_closed: Option<String>,
    /// A hand-over is coming: read no more frames (no new streams), finish answering the
    /// ones being answered.
    paused: bool,
    /// App sockets of streams the peer refused unprocessed (see `TunnelEnd::Unprocessed`).
    unprocessed: BTreeMap<u32, Stream>,
    /// Where app reads land (one buffer per link, reused: a tunnel holds only what it read
    /// and has not yet handed to the codec, not a read-sized buffer of its own).
    scratch: BytesMut,
    /// Room for the next read from TLS: `QUIET_READ`, or `TLS_READ` while data streams
    /// (the last read was [`streaming`]).
    rx_room: usize,
    /// The same for app reads (`QUIET_READ` or `APP_READ`).
    app_room: usize,
    /// A tunnel stopped reading its app because the codec's output was past `OUT_HIGH`.
    out_full: bool,
    /// Where the next round starts pumping tunnels (turns round, so that no tunnel always
    /// comes first to the output's room).
    next_pump: usize,
    /// A hand-over asked for the connection: the task stops and exports it here.
    export_to: Option<tokio::sync::oneshot::Sender<Result<Exported, String>>>,
    /// Ends to be called once the borrow is over ([`Link::settle`]).
    ended: Vec<(OnEnd, TunnelEnd, Option<Stream>)>,
}

impl Inner {
    fn check_open(&self) -> Result<(), LinkError> {
        match &self.closed {
            Some(e) => Err(LinkError::Closed(e.clone())),
            None => Ok(()),
        }
    }

    fn wake_task(&mut self) {
        if let Some(w) = self.task_waker.take() {
            w.wake();
        }
    }

    fn finish(&mut self, id: u32, end: TunnelEnd) {
        if let Some(mut t) = self.tuns.remove(&id)
            && let Some(to) = t.done.take()
        {
            match to {
                EndTo::Chan(tx) => {
                    let _ = tx.send(end);
                }
                EndTo::Call(f) => {
                    let app = match end {
                        TunnelEnd::Unprocessed => self.unprocessed.remove(&id),
                        _ => None,
                    };
                    self.ended.push((f, end, app));
                }
            }
        }
    }
}

/// The handle of a link (cheap to clone; the task holds the connection).
#[derive(Clone)]
pub struct Link(Rc<RefCell<Inner>>);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.0.borrow();
        f.debug_struct("Link")
            .field("tunnels", &i.tuns.len())
            .field("closed", &i.closed)
            .finish()
    }
}

/// Errors opening or answering a tunnel on a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("HBONE connection: {0}")]
    Send(#[from] h2::SendError),
    #[error("HBONE connection closed: {0}")]
    Closed(String),
}

impl Link {
    /// A link on `conn` (a fresh codec, or one imported from another process); run its
    /// task with [`run`] over the connection's TLS stream.
    pub fn new(conn: Conn) -> Link {
        Link(Rc::new(RefCell::new(Inner {
            conn,
            tuns: BTreeMap::new(),
            incoming: VecDeque::new(),
            accept_waker: None,
            task_waker: None,
            closed: None,
            closing: None,
            peer_closed: None,
            scratch: BytesMut::new(),
            rx_room: QUIET_READ,
            app_room: QUIET_READ,
            out_full: false,
            next_pump: 0,
            unprocessed: BTreeMap::new(),
            paused: false,
            export_to: None,
            ended: Vec::new(),
        })))
    }

    /// Calls the ends that tunnels reached while the link was borrowed (an owner's call
    /// may use anything but this link's borrow).
    fn settle(&self) {
        loop {
            let ended = std::mem::take(&mut self.0.borrow_mut().ended);
            if ended.is_empty() {
                return;
            }
            for (f, end, app) in ended {
                f.call(end, app);
            }
        }
    }

    /// Hand-over: asks the task to stop moving bytes and export the whole connection (its
    /// sockets and [`LinkState`]); the task ends once it has, and every tunnel's end says
    /// `Moved`. A stream the peer opened that has no app socket yet (server role, still
    /// being authorized or connected) cannot move: it is refused with 503 first.
    pub fn export(&self) -> tokio::sync::oneshot::Receiver<Result<Exported, String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut i = self.0.borrow_mut();
        match &i.closed {
            Some(e) => {
                let _ = tx.send(Err(format!("the connection is closed: {e}")));
            }
            None => i.export_to = Some(tx),
        }
        i.wake_task();
        rx
    }

    /// Continues a connection another process exported: `fds` are its sockets in the order
    /// of [`Exported::fds`] (TLS first, then each tunnel's app socket). Returns the link
    /// (run its task with [`run`] over the returned TLS stream) and each tunnel with what it
    /// had carried before; give each its end ([`Link::on_end`]) before the task runs. `counters` gives each tunnel's counters here.
    pub fn import(
        state: &LinkState,
        mut fds: Vec<std::os::fd::OwnedFd>,
        counters: impl Fn(StreamId) -> Rc<Counters>,
    ) -> Result<(Link, TlsStream, Vec<ImportedTunnel>), String> {
        if fds.len() != 1 + state.tunnels.len() {
            return Err(format!(
                "hand-over: {} sockets for a connection with {} tunnels",
                fds.len(),
                state.tunnels.len()
            ));
        }
        let conn = Conn::import(state.conn.clone()).map_err(|e| e.to_string())?;
        let apps = fds.split_off(1);
        let tls_fd = fds.pop().ok_or("hand-over: no TLS socket")?;
        let tls = TlsStream::import(
            Stream::from_fd(tls_fd).map_err(|e| e.to_string())?,
            state.tls.clone(),
        )
        .map_err(|e| e.to_string())?;
        let link = Link::new(conn);
        let mut out = Vec::new();
        {
            let mut i = link.0.borrow_mut();
            for (t, fd) in state.tunnels.iter().zip(apps) {
                let app = Stream::from_fd(fd).map_err(|e| e.to_string())?;
                let id = StreamId(t.id);
                let mut tun = tun(Some(app), counters(id), None, t.established);
                tun.meta = Some(Rc::new(t.meta.clone()));
                tun.to_app = (!t.to_app.is_empty())
                    .then(|| Bytes::from(t.to_app.clone()))
                    .into_iter()
                    .collect();
                tun.from_app = Bytes::from(t.from_app.clone());
                tun.prereleased = usize::try_from(t.to_app_released)
                    .unwrap_or(usize::MAX)
                    .min(t.to_app.len());
                tun.app_eof = t.app_eof;
                tun.end_sent = t.end_sent;
                tun.peer_end = t.peer_end;
                tun.app_shut = t.app_shut;
                i.tuns.insert(t.id, Box::new(tun));
                out.push(ImportedTunnel {
                    id,
                    meta: t.meta.clone(),
                    sent_before: t.sent,
                    received_before: t.received,
                });
            }
        }
        Ok((link, tls, out))
    }

    /// Client: opens a tunnel for `app` with the CONNECT `headers`; the receiver says how
    /// it ended. Data flows once the peer's 2xx arrives. `meta` is the caller's bookkeeping,
    /// carried along on a hand-over.
    pub fn open(
        &self,
        headers: &[HeaderField],
        app: Stream,
        counters: Rc<Counters>,
        meta: impl TunnelBook + 'static,
    ) -> Result<(StreamId, tokio::sync::oneshot::Receiver<TunnelEnd>), LinkError> {
        self.try_open(headers, app, counters, Rc::new(meta))
            .map_err(|(e, _)| e)
    }

    /// As [`Link::open`], giving the app socket back when the stream cannot be opened here
    /// (to be tried on another connection).
    #[allow(clippy::result_large_err)]
    pub fn try_open(
        &self,
        headers: &[HeaderField],
        app: Stream,
        counters: Rc<Counters>,
        meta: Rc<dyn TunnelBook>,
    ) -> Result<(StreamId, tokio::sync::oneshot::Receiver<TunnelEnd>), (LinkError, Stream)> {
        let id = self.open_tunnel(headers, app, counters, meta)?;
        Ok((id, self.end_channel(id)))
    }

    /// As [`Link::try_open`], with no end yet: give it one ([`Link::on_end`]) before the
    /// link's task runs again.
    #[allow(clippy::result_large_err)]
    pub fn open_tunnel(
        &self,
        headers: &[HeaderField],
        app: Stream,
        counters: Rc<Counters>,
        meta: Rc<dyn TunnelBook>,
    ) -> Result<StreamId, (LinkError, Stream)> {
        let mut i = self.0.borrow_mut();
        if let Err(e) = i.check_open() {
            return Err((e, app));
        }
        let id = match i.conn.open_stream(headers, false) {
            Ok(id) => id,
            Err(e) => return Err((e.into(), app)),
        };
        let mut t = tun(Some(app), counters, None, false);
        t.meta = Some(meta);
        i.tuns.insert(id.0, Box::new(t));
        i.wake_task();
        Ok(id)
    }

    /// Tunnel `id`'s end goes to `f` (see [`OnEnd`]); a tunnel that is gone already is
    /// told at once that it ended with the link.
    pub fn on_end(&self, id: StreamId, f: OnEnd) {
        let gone = {
            let mut i = self.0.borrow_mut();
            match i.tuns.get_mut(&id.0) {
                Some(t) => {
                    t.done = Some(EndTo::Call(f));
                    None
                }
                None => Some(f),
            }
        };
        if let Some(f) = gone {
            f.call(TunnelEnd::Link(format!("{id} is gone")), None);
        }
    }

    /// Tunnel `id`'s end, on a channel (a tunnel that is gone: the channel is closed).
    pub fn end_channel(&self, id: StreamId) -> tokio::sync::oneshot::Receiver<TunnelEnd> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(t) = self.0.borrow_mut().tuns.get_mut(&id.0) {
            t.done = Some(EndTo::Chan(tx));
        }
        rx
    }

    /// Server: the next stream the peer opens (None once the link is closed).
    pub async fn accept(&self) -> Option<Incoming> {
        poll_fn(|cx| {
            let mut i = self.0.borrow_mut();
            if let Some(inc) = i.incoming.pop_front() {
                return Poll::Ready(Some(inc));
            }
            if i.closed.is_some() {
                return Poll::Ready(None);
            }
            i.accept_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Server: answers stream `id` with 200 and tunnels it to `app` (`meta` as for `open`).
    pub fn establish(
        &self,
        id: StreamId,
        app: Stream,
        counters: Rc<Counters>,
        meta: impl TunnelBook + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<TunnelEnd>, LinkError> {
        self.answer(id, app, counters, Rc::new(meta))?;
        Ok(self.end_channel(id))
    }

    /// As [`Link::establish`], with no end yet (give it one with [`Link::on_end`]).
    pub fn answer(
        &self,
        id: StreamId,
        app: Stream,
        counters: Rc<Counters>,
        meta: Rc<dyn TunnelBook>,
    ) -> Result<(), LinkError> {
        let mut i = self.0.borrow_mut();
        i.check_open()?;
        match i.tuns.get(&id.0) {
            Some(t) if t.app.is_none() => {}
            _ => {
                return Err(LinkError::Closed(format!(
                    "{id} is gone (reset by the peer) or already answered"
                )));
            }
        }
        i.conn.send_headers(
            id,
            &h2::response_fields(200, &http::HeaderMap::new()),
            false,
        )?;
        if let Some(t) = i.tuns.get_mut(&id.0) {
            t.app = Some(app);
            t.counters = counters;
            t.established = true;
            t.meta = Some(meta);
        }
        i.wake_task();
        Ok(())
    }

    /// Server: refuses stream `id` with `status` (and END_STREAM).
    pub fn refuse(&self, id: StreamId, status: u16) {
        let mut i = self.0.borrow_mut();
        if let Some(t) = i.tuns.remove(&id.0) {
            let held: usize = t.to_app.iter().map(|b| b.len()).sum();
            i.conn.release(id, held);
        }
        let _ = i.conn.send_headers(
            id,
            &h2::response_fields(status, &http::HeaderMap::new()),
            true,
        );
        i.wake_task();
    }

    /// Resets tunnel `id` (CANCEL) and ends it: `TunnelEnd::Reset` with `remote: false`
    /// (e.g. a policy change now denies it).
    pub fn reset(&self, id: StreamId) {
        self.reset_with(
            id,
            TunnelEnd::Reset {
                code: Reason::CANCEL,
                remote: false,
            },
        );
    }

    /// As [`Link::reset`], ending the tunnel with `end` (the caller's reason).
    pub fn reset_with(&self, id: StreamId, end: TunnelEnd) {
        {
            let mut i = self.0.borrow_mut();
            if i.tuns.contains_key(&id.0) {
                i.conn.reset(id, Reason::CANCEL);
                i.finish(id.0, end);
            }
            i.wake_task();
        }
        self.settle();
    }

    /// Ends the link: its task stops and every tunnel ends with `TunnelEnd::Link(why)`.
    pub fn close(&self, why: impl Into<String>) {
        let mut i = self.0.borrow_mut();
        if i.closed.is_none() && i.closing.is_none() {
            i.closing = Some(why.into());
        }
        i.wake_task();
    }

    /// Sends a PING (keepalive); false when one is still unanswered or the link is closed.
    pub fn ping(&self) -> bool {
        let mut i = self.0.borrow_mut();
        if i.closed.is_some() || i.conn.ping_in_flight() {
            return false;
        }
        let ok = i.conn.send_ping(rand::random()).is_ok();
        i.wake_task();
        ok
    }

    /// Whether our last PING is still unanswered.
    pub fn ping_in_flight(&self) -> bool {
        self.0.borrow().conn.ping_in_flight()
    }

    /// Whether the peer's connection preface (and first SETTINGS) arrived.
    pub fn peer_ready(&self) -> bool {
        self.0.borrow().conn.preface_received()
    }

    /// Whether the task has ended.
    pub fn is_closed(&self) -> bool {
        self.0.borrow().closed.is_some()
    }

    /// Before an export: stop reading from the peer (frames wait in the socket, for the next
    /// owner), so that no new stream arrives while those being answered are.
    pub fn pause(&self) {
        let mut i = self.0.borrow_mut();
        i.paused = true;
        i.wake_task();
    }

    /// Streams the peer opened that are not answered yet (server role).
    pub fn unanswered(&self) -> usize {
        self.0
            .borrow()
            .tuns
            .values()
            .filter(|t| t.app.is_none())
            .count()
    }

    /// The app socket of a stream that ended `TunnelEnd::Unprocessed`.
    pub fn take_unprocessed(&self, id: StreamId) -> Option<Stream> {
        self.0.borrow_mut().unprocessed.remove(&id.0)
    }

    /// Tunnels on this link now.
    pub fn tunnels(&self) -> usize {
        self.0.borrow().tuns.len()
    }

    /// Bytes the link's own buffers hold allocated (the codec's receive and output buffers,
    /// the app read buffer): none once a quiet link's round is over.
    pub fn buffer_bytes(&self) -> usize {
        let i = self.0.borrow();
        i.conn.buffer_capacity() + i.scratch.capacity()
    }

    /// Whether the link can take another tunnel (client role).
    pub fn is_usable(&self) -> bool {
        let i = self.0.borrow();
        i.closed.is_none() && !i.conn.is_going_away() && i.conn.failure().is_none()
    }

    /// Sends GOAWAY: streams already open finish, the peer opens no more.
    pub fn go_away(&self) {
        let mut i = self.0.borrow_mut();
        i.conn.send_goaway(Reason::NO_ERROR, b"");
        i.wake_task();
    }
}

fn tun(app: Option<Stream>, counters: Rc<Counters>, done: Option<EndTo>, established: bool) -> Tun {
    Tun {
        app,
        counters,
        done,
        established,
        ..tun_base()
    }
}

fn tun_base() -> Tun {
    Tun {
        app: None,
        to_app: VecDeque::new(),
        from_app: Bytes::new(),
        prereleased: 0,
        app_eof: false,
        end_sent: false,
        peer_end: false,
        app_shut: false,
        established: false,
        reset: None,
        counters: Rc::new(Counters::default()),
        done: None,
        meta: None,
    }
}

/// The link task: runs until the connection ends (peer closed, failed, or GOAWAY and no
/// tunnel left). Every tunnel still open then ends with `TunnelEnd::Link`.
pub async fn run(link: Link, mut tls: TlsStream) {
    let mut events = Vec::new();
    let why = poll_fn(|cx| {
        let p = poll_link(&link, &mut tls, &mut events, cx);
        link.settle();
        p
    })
    .await;
    let export_to = link.0.borrow_mut().export_to.take();
    if let Some(to) = export_to {
        let r = export(&link, tls).await;
        let failed = r.as_ref().err().cloned();
        let _ = to.send(r);
        let mut i = link.0.borrow_mut();
        let end = match &failed {
            None => TunnelEnd::Moved,
            Some(e) => TunnelEnd::Link(format!("hand-over failed: {e}")),
        };
        i.closed = Some(failed.unwrap_or_else(|| "handed to the next process".into()));
        let ids: Vec<u32> = i.tuns.keys().copied().collect();
        for id in ids {
            i.finish(id, end.clone());
        }
        if let Some(w) = i.accept_waker.take() {
            w.wake();
        }
        drop(i);
        link.settle();
        return;
    }
    {
        let mut i = link.0.borrow_mut();
        i.closed = Some(why.clone());
        let ids: Vec<u32> = i.tuns.keys().copied().collect();
        for id in ids {
            i.finish(id, TunnelEnd::Link(why.clone()));
        }
        i.incoming.clear();
        if let Some(w) = i.accept_waker.take() {
            w.wake();
        }
    }
    link.settle();
    let _ = poll_fn(|cx| Pin::new(&mut tls).poll_shutdown(cx)).await;
}

/// One turn of the link: Ready(why) once it is over.
fn poll_link(
    link: &Link,
    tls: &mut TlsStream,
    events: &mut Vec<Event>,
    cx: &mut Context<'_>,
) -> Poll<String> {
    let mut guard = link.0.borrow_mut();
    let i = &mut *guard;
    i.task_waker = Some(cx.waker().clone());
    if i.export_to.is_some() {
        return Poll::Ready("exporting".into());
    }
    if let Some(why) = i.closing.take() {
        let _ = flush_output(i, tls, cx);
        return Poll::Ready(why);
    }
    for _ in 0..ROUNDS {
        match round(i, tls, events, cx) {
            Round::Over(why) => return Poll::Ready(why),
            Round::Wait => return Poll::Pending,
            Round::Again => {}
        }
    }
    // More to do, but the shard's other tasks get their turn first.
    cx.waker().wake_by_ref();
    Poll::Pending
}

enum Round {
    /// The link is over.
    Over(String),
    /// Everything waits on a socket (each has the task's waker).
    Wait,
    /// Work is left that no socket will wake the task for: run another round.
    Again,
}

/// One round: take up to `RECV_ROUND` from TLS, move every tunnel's bytes, write the
/// codec's output.
fn round(
    i: &mut Inner,
    tls: &mut TlsStream,
    events: &mut Vec<Event>,
    cx: &mut Context<'_>,
) -> Round {
    // Receive: records → codec → events.
    let mut taken = 0;
    let mut more_in = false;
    while i.peer_closed.is_none() && !i.paused {
        if taken >= RECV_ROUND {
            more_in = true;
            break;
        }
        let want = i.rx_room;
        let buf = i.conn.read_buf();
        if buf.capacity() - buf.len() < want / 4 {
            buf.reserve(want);
        }
        let room = buf.capacity() - buf.len();
        match tokio_util::io::poll_read_buf(Pin::new(&mut *tls), cx, buf) {
            Poll::Pending => break,
            Poll::Ready(Err(e)) => return Round::Over(format!("TLS: {e}")),
            // What arrived before the end still goes to the apps (below).
            Poll::Ready(Ok(0)) => i.peer_closed = Some("the peer closed the connection".into()),
            Poll::Ready(Ok(n)) => {
                i.rx_room = if streaming(n, room) {
                    TLS_READ
                } else {
                    QUIET_READ
                };
                taken += n;
                events.clear();
                if let Err(e) = i.conn.process(events) {
                    let _ = flush_output(i, tls, cx);
                    return Round::Over(e.to_string());
                }
                for ev in events.drain(..) {
                    on_event(i, ev);
                }
            }
        }
    }
    // Tunnels: app ↔ stream, starting where the last round left off.
    i.out_full = false;
    let mut ids: Vec<u32> = i.tuns.keys().copied().collect();
    if !ids.is_empty() {
        let start = i.next_pump % ids.len();
        ids.rotate_left(start);
        i.next_pump = start + 1;
    }
    for id in ids {
        if let Some(end) = pump(i, id, cx) {
            i.finish(id, end);
        }
    }
    if let Some(why) = i.peer_closed.clone() {
        // Only tunnels the peer ended, with bytes still to write to their app, go on.
        let ids: Vec<u32> = i.tuns.keys().copied().collect();
        for id in ids {
            let draining = i.tuns.get(&id).is_some_and(|t| {
                t.app.is_some()
                    && (t.peer_end || t.reset.is_some())
                    && (!t.to_app.is_empty() || !t.app_shut)
            });
            if !draining {
                i.finish(id, TunnelEnd::Link(why.clone()));
            }
        }
        if i.tuns.is_empty() {
            return Round::Over(why);
        }
        return Round::Wait;
    }
    // Send what the codec has.
    let flushed = match flush_output(i, tls, cx) {
        Poll::Ready(Err(e)) => return Round::Over(format!("TLS: {e}")),
        Poll::Ready(Ok(())) => true,
        Poll::Pending => false,
    };
    if let Some(code) = i.conn.failure() {
        return Round::Over(format!("HTTP/2 connection failed ({code})"));
    }
    // Done only once the last stream's frames (its final DATA and END_STREAM) are out.
    if flushed && i.conn.is_going_away() && i.tuns.is_empty() && i.conn.active_streams() == 0 {
        return Round::Over("GOAWAY and no stream left".into());
    }
    // A tunnel held back for the output's room has it again once the output is written.
    if more_in || (i.out_full && i.conn.pending_output().len() < OUT_HIGH) {
        Round::Again
    } else {
        trim_if_quiet(i);
        Round::Wait
    }
}

/// At the end of a round on a quiet link (its last reads, from TLS and from apps, were
/// small): the codec's buffers and the app read buffer are let go of while they hold
/// nothing, so an idle link keeps none (they were 64 KiB each for the link's life). A
/// streaming link keeps them from round to round.
fn trim_if_quiet(i: &mut Inner) {
    if i.rx_room == QUIET_READ && i.app_room == QUIET_READ {
        i.conn.trim_buffers();
        i.scratch = BytesMut::new();
    }
}

fn on_event(i: &mut Inner, ev: Event) {
    match ev {
        Event::StreamOpened { id, headers } => {
            // Data that comes before the stream is answered waits here (unreleased: the
            // stream's window bounds it).
            let t = Tun {
                app: None,
                counters: Rc::new(Counters::default()),
                done: None,
                ..tun_base()
            };
            i.tuns.insert(id.0, Box::new(t));
            i.incoming.push_back(Incoming { id, headers });
            if let Some(w) = i.accept_waker.take() {
                w.wake();
            }
        }
        Event::Response { id, status, .. } => {
            if (200..300).contains(&status) {
                if let Some(t) = i.tuns.get_mut(&id.0) {
                    t.established = true;
                }
            } else {
                i.conn.reset(id, Reason::CANCEL);
                i.finish(id.0, TunnelEnd::Refused(status));
            }
        }
        Event::Data { id, data } => match i.tuns.get_mut(&id.0) {
            Some(t) => {
                if !data.is_empty() {
                    t.to_app.push_back(data);
                }
            }
            // A stream we no longer carry: keep the connection's window open.
            None => i.conn.release(id, data.len()),
        },
        Event::StreamEnd { id } => {
            if let Some(t) = i.tuns.get_mut(&id.0) {
                t.peer_end = true;
            }
        }
        Event::Reset { id, code, remote } => {
            i.incoming.retain(|inc| inc.id != id);
            let end = TunnelEnd::Reset { code, remote };
            let client = i.conn.role() == h2::Role::Client;
            match i.tuns.get_mut(&id.0) {
                // Never processed by the peer, and nothing read from the app yet (a client
                // reads it only once established): the app may try another connection.
                Some(t) if client && remote && code == Reason::REFUSED_STREAM && !t.established => {
                    if let Some(app) = t.app.take() {
                        i.unprocessed.insert(id.0, app);
                    }
                    i.finish(id.0, TunnelEnd::Unprocessed);
                }
                Some(t) if t.app.is_some() && !t.to_app.is_empty() => t.reset = Some(Box::new(end)),
                _ => i.finish(id.0, end),
            }
        }
        Event::GoAway { .. }
        | Event::Pong { .. }
        | Event::WindowUpdate { .. }
        | Event::PeerSettings { .. }
        | Event::SettingsAcked
        | Event::Informational { .. }
        | Event::Trailers { .. } => {}
    }
}

/// Moves one tunnel's bytes as far as sockets and windows allow; Some(end) once it is over.
fn pump(i: &mut Inner, id: u32, cx: &mut Context<'_>) -> Option<TunnelEnd> {
    let sid = StreamId(id);
    let t = i.tuns.get_mut(&id)?;
    let app = t.app.as_mut()?;
    // Peer → app.
    while let Some(front) = t.to_app.front_mut() {
        match Pin::new(&mut *app).poll_write(cx, front) {
            Poll::Pending => break,
            Poll::Ready(Err(e)) => {
                i.conn.reset(sid, Reason::CANCEL);
                return Some(TunnelEnd::App(e.to_string()));
            }
            Poll::Ready(Ok(n)) => {
                let already = n.min(t.prereleased);
                t.prereleased -= already;
                if n > already {
                    t.counters.add_received((n - already) as u64);
                    i.conn.release(sid, n - already);
                }
                bytes::Buf::advance(front, n);
                if front.is_empty() {
                    t.to_app.pop_front();
                    if t.to_app.is_empty() {
                        // An idle tunnel keeps no queue (4 slots, 128 bytes, each).
                        t.to_app = VecDeque::new();
                    }
                }
            }
        }
    }
    if t.to_app.is_empty()
        && let Some(end) = t.reset.take()
    {
        return Some(*end);
    }
    if t.peer_end && t.to_app.is_empty() && !t.app_shut {
        match Pin::new(&mut *app).poll_shutdown(cx) {
            Poll::Pending => {}
            Poll::Ready(_) => t.app_shut = true,
        }
    }
    // App → peer.
    if t.established {
        loop {
            if !t.from_app.is_empty() {
                match i.conn.send_data(sid, &t.from_app, false) {
                    Ok(n) => {
                        t.counters.add_sent(n as u64);
                        bytes::Buf::advance(&mut t.from_app, n);
                        if !t.from_app.is_empty() {
                            break; // window full: wait for WINDOW_UPDATE
                        }
                        // Let go of the read buffer it was a view of.
                        t.from_app = Bytes::new();
                    }
                    Err(e) => return Some(TunnelEnd::Link(e.to_string())),
                }
            }
            if t.app_eof {
                if !t.end_sent && t.from_app.is_empty() {
                    if let Err(e) = i.conn.send_data(sid, &[], true) {
                        return Some(TunnelEnd::Link(e.to_string()));
                    }
                    t.end_sent = true;
                }
                break;
            }
            if i.conn.send_capacity(sid) == 0 {
                break;
            }
            if i.conn.pending_output().len() >= OUT_HIGH {
                i.out_full = true;
                break;
            }
            let buf = &mut i.scratch;
            if buf.capacity() < i.app_room / 4 {
                buf.reserve(i.app_room);
            }
            let room = buf.capacity();
            match tokio_util::io::poll_read_buf(Pin::new(&mut *app), cx, buf) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    i.conn.reset(sid, Reason::CANCEL);
                    return Some(TunnelEnd::App(e.to_string()));
                }
                Poll::Ready(Ok(0)) => t.app_eof = true,
                Poll::Ready(Ok(n)) => {
                    i.app_room = if streaming(n, room) {
                        APP_READ
                    } else {
                        QUIET_READ
                    };
                    t.from_app = buf.split().freeze();
                }
            }
        }
    }
    (t.app_eof && t.end_sent && t.peer_end && t.app_shut && t.to_app.is_empty())
        .then_some(TunnelEnd::Done)
}

/// Detaches every socket of a stopped link and collects its state (see [`Link::export`]).
async fn export(link: &Link, tls: TlsStream) -> Result<Exported, String> {
    // Streams with no app socket yet cannot move: refused now (the codec's output carries
    // the refusal over).
    let tuns = {
        let mut i = link.0.borrow_mut();
        let unanswered: Vec<u32> = i
            .tuns
            .iter()
            .filter(|(_, t)| t.app.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in unanswered {
            let _ = i.conn.send_headers(
                StreamId(id),
                &h2::response_fields(503, &http::HeaderMap::new()),
                true,
            );
            i.tuns.remove(&id);
        }
        std::mem::take(&mut i.tuns)
    };
    let mut tunnels = Vec::with_capacity(tuns.len());
    let mut app_fds = Vec::with_capacity(tuns.len());
    let mut err = None;
    let mut kept = BTreeMap::new();
    for (id, mut t) in tuns {
        if let Some(end) = t.reset.take() {
            // Reset by the peer with data still for the app: it ends here (cut short).
            match t.done.take() {
                Some(EndTo::Chan(tx)) => {
                    let _ = tx.send(*end);
                }
                Some(EndTo::Call(f)) => f.call(*end, None),
                None => {}
            }
            continue;
        }
        let Some(app) = t.app.take() else { continue };
        match app.detach().await {
            Ok((fd, ahead, unsent)) => {
                let mut from_app = t.from_app.to_vec();
                from_app.extend_from_slice(&ahead);
                // What the socket had queued for the app goes before what waits here.
                let to_app_released = (unsent.len() + t.prereleased) as u64;
                let mut to_app = unsent;
                to_app.extend(t.to_app.iter().flat_map(|b| b.iter().copied()));
                tunnels.push(TunnelState {
                    id,
                    established: t.established,
                    app_eof: t.app_eof,
                    end_sent: t.end_sent,
                    peer_end: t.peer_end,
                    app_shut: t.app_shut,
                    to_app,
                    to_app_released,
                    from_app,
                    sent: t.counters.sent.get(),
                    received: t.counters.received.get(),
                    meta: t.meta.as_ref().map(|m| m.encode()).unwrap_or_default(),
                });
                app_fds.push(fd);
            }
            Err(e) => err = Some(format!("app socket of stream {id}: {e}")),
        }
        kept.insert(id, t);
    }
    // Ends are sent by `run` once the export is delivered.
    link.0.borrow_mut().tuns = kept;
    if let Some(e) = err {
        return Err(e);
    }
    let (tls_fd, tls) = tls.export().await.map_err(|e| format!("TLS: {e}"))?;
    let conn = link.0.borrow().conn.export();
    let mut fds = vec![tls_fd];
    fds.extend(app_fds);
    Ok(Exported {
        state: LinkState { conn, tls, tunnels },
        fds,
    })
}

fn flush_output(i: &mut Inner, tls: &mut TlsStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        let out = i.conn.pending_output();
        if out.is_empty() {
            break;
        }
        match Pin::new(&mut *tls).poll_write(cx, out) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => i.conn.advance_output(n),
        }
    }
    Pin::new(&mut *tls).poll_flush(cx)
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
