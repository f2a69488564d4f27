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
use super::tls::TlsStream;
use crate::hbone::h2::{self, Conn, Event, HeaderField, Reason, StreamId};
use crate::runtime::net::Stream;

/// How much one read from an app socket takes.
const APP_READ: usize = 64 * 1024;
/// Room reserved in the codec's receive buffer for one read from TLS.
const TLS_READ: usize = 64 * 1024;

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
}

/// A stream the peer opened (server role), waiting to be answered.
#[derive(Debug)]
pub struct Incoming {
    pub id: StreamId,
    pub headers: Vec<HeaderField>,
}

struct Tun {
    app: Option<Stream>,
    /// Received DATA not yet written to the app (at most the stream's window).
    to_app: VecDeque<Bytes>,
    /// Read from the app, not yet taken by the codec (its window was full).
    from_app: Bytes,
    /// The app's read side ended; END_STREAM is sent once `from_app` is.
    app_eof: bool,
    end_sent: bool,
    /// END_STREAM received: the app's write side is shut once `to_app` is written.
    peer_end: bool,
    app_shut: bool,
    /// Client: the response arrived (2xx): data may flow.
    established: bool,
    counters: Rc<Counters>,
    done: Option<tokio::sync::oneshot::Sender<TunnelEnd>>,
}

struct Inner {
    conn: Conn,
    tuns: BTreeMap<u32, Tun>,
    incoming: VecDeque<Incoming>,
    accept_waker: Option<Waker>,
    task_waker: Option<Waker>,
    closed: Option<String>,
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
            && let Some(tx) = t.done.take()
        {
            let _ = tx.send(end);
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
        })))
    }

    /// Client: opens a tunnel for `app` with the CONNECT `headers`; the receiver says how
    /// it ended. Data flows once the peer's 2xx arrives.
    pub fn open(
        &self,
        headers: &[HeaderField],
        app: Stream,
        counters: Rc<Counters>,
    ) -> Result<tokio::sync::oneshot::Receiver<TunnelEnd>, LinkError> {
        let mut i = self.0.borrow_mut();
        i.check_open()?;
        let id = i.conn.open_stream(headers, false)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        i.tuns.insert(id.0, tun(Some(app), counters, tx, false));
        i.wake_task();
        Ok(rx)
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

    /// Server: answers stream `id` with 200 and tunnels it to `app`.
    pub fn establish(
        &self,
        id: StreamId,
        app: Stream,
        counters: Rc<Counters>,
    ) -> Result<tokio::sync::oneshot::Receiver<TunnelEnd>, LinkError> {
        let mut i = self.0.borrow_mut();
        i.check_open()?;
        i.conn.send_headers(
            id,
            &h2::response_fields(200, &http::HeaderMap::new()),
            false,
        )?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        match i.tuns.get_mut(&id.0) {
            Some(t) if t.app.is_none() => {
                t.app = Some(app);
                t.counters = counters;
                t.done = Some(tx);
                t.established = true;
            }
            _ => {
                return Err(LinkError::Closed(format!(
                    "{id} is gone (reset by the peer) or already answered"
                )));
            }
        }
        i.wake_task();
        Ok(rx)
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

    /// Tunnels on this link now.
    pub fn tunnels(&self) -> usize {
        self.0.borrow().tuns.len()
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

fn tun(
    app: Option<Stream>,
    counters: Rc<Counters>,
    done: tokio::sync::oneshot::Sender<TunnelEnd>,
    established: bool,
) -> Tun {
    Tun {
        app,
        counters,
        done: Some(done),
        established,
        ..tun_base()
    }
}

fn tun_base() -> Tun {
    Tun {
        app: None,
        to_app: VecDeque::new(),
        from_app: Bytes::new(),
        app_eof: false,
        end_sent: false,
        peer_end: false,
        app_shut: false,
        established: false,
        counters: Rc::new(Counters::default()),
        done: None,
    }
}

/// The link task: runs until the connection ends (peer closed, failed, or GOAWAY and no
/// tunnel left). Every tunnel still open then ends with `TunnelEnd::Link`.
pub async fn run(link: Link, mut tls: TlsStream) {
    let mut events = Vec::new();
    let why = poll_fn(|cx| poll_link(&link, &mut tls, &mut events, cx)).await;
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
    // Receive: records → codec → events.
    loop {
        let buf = i.conn.read_buf();
        if buf.capacity() - buf.len() < TLS_READ / 4 {
            buf.reserve(TLS_READ);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut *tls), cx, buf) {
            Poll::Pending => break,
            Poll::Ready(Err(e)) => return Poll::Ready(format!("TLS: {e}")),
            Poll::Ready(Ok(0)) => return Poll::Ready("the peer closed the connection".into()),
            Poll::Ready(Ok(_)) => {
                events.clear();
                if let Err(e) = i.conn.process(events) {
                    let _ = flush_output(i, tls, cx);
                    return Poll::Ready(e.to_string());
                }
                for ev in events.drain(..) {
                    on_event(i, ev);
                }
            }
        }
    }
    // Tunnels: app ↔ stream.
    let ids: Vec<u32> = i.tuns.keys().copied().collect();
    for id in ids {
        if let Some(end) = pump(i, id, cx) {
            i.finish(id, end);
        }
    }
    // Send what the codec has.
    if let Poll::Ready(Err(e)) = flush_output(i, tls, cx) {
        return Poll::Ready(format!("TLS: {e}"));
    }
    if let Some(code) = i.conn.failure() {
        return Poll::Ready(format!("HTTP/2 connection failed ({code})"));
    }
    if i.conn.is_going_away() && i.tuns.is_empty() && i.conn.active_streams() == 0 {
        return Poll::Ready("GOAWAY and no stream left".into());
    }
    Poll::Pending
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
            i.tuns.insert(id.0, t);
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
            i.finish(id.0, TunnelEnd::Reset { code, remote });
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
                t.counters.add_received(n as u64);
                i.conn.release(sid, n);
                bytes::Buf::advance(front, n);
                if front.is_empty() {
                    t.to_app.pop_front();
                }
            }
        }
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
            let mut buf = BytesMut::with_capacity(APP_READ);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *app), cx, &mut buf) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    i.conn.reset(sid, Reason::CANCEL);
                    return Some(TunnelEnd::App(e.to_string()));
                }
                Poll::Ready(Ok(0)) => t.app_eof = true,
                Poll::Ready(Ok(_)) => t.from_app = buf.freeze(),
            }
        }
    }
    (t.app_eof && t.end_sent && t.peer_end && t.app_shut && t.to_app.is_empty())
        .then_some(TunnelEnd::Done)
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
