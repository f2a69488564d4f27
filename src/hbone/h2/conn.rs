//! One HTTP/2 connection, either role: the public sans-io API (input, events, `send_*`,
//! output) and the send side. The receive side (frame handling) is in `recv`.
//!
//! Owns: stream ids, the stream table, both levels of flow control, SETTINGS exchange,
//! PING and GOAWAY state, the receive and output buffers. Everything it owns is exported
//! by `export`; a field added here must be added there.
//!
//! Flow control policy: the app calls [`Conn::release`] with what it consumed; once half of
//! a window's target is released the codec queues a WINDOW_UPDATE (stream target: our
//! SETTINGS_INITIAL_WINDOW_SIZE; connection target: [`Config::connection_window`]).

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::frame::{self, MAX_STREAM_ID, PREFACE};
use super::hpack::{Decoder, Encoder};
use super::message::HeaderField;
use super::state::{Config, Settings, Stream, StreamState};
use super::{ConnError, Reason, Role, SendError, StreamId};

/// What the peer did, as the codec understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Server: the peer opened a stream with this request head (already checked to be a
    /// well-formed request, RFC 9113 §8.3.1).
    StreamOpened {
        id: StreamId,
        headers: Vec<HeaderField>,
    },
    /// Client: the final response head of a stream we opened.
    Response {
        id: StreamId,
        status: u16,
        headers: Vec<HeaderField>,
    },
    /// Client: an interim (1xx) response head.
    Informational {
        id: StreamId,
        status: u16,
        headers: Vec<HeaderField>,
    },
    /// A trailer section (always followed by `StreamEnd`).
    Trailers {
        id: StreamId,
        headers: Vec<HeaderField>,
    },
    /// Stream payload, a view into the receive buffer. Call [`Conn::release`] with its
    /// length once consumed, or the peer's window closes.
    Data { id: StreamId, data: Bytes },
    /// The peer ended its side of the stream (END_STREAM).
    StreamEnd { id: StreamId },
    /// The stream is gone: reset by the peer (`remote`), or by the codec because the peer
    /// broke a stream-level rule (an RST_STREAM with `code` was queued).
    Reset {
        id: StreamId,
        code: Reason,
        remote: bool,
    },
    /// The peer is going away: streams above `last_stream_id` were not processed (each
    /// of ours gets a `Reset` with REFUSED_STREAM and may be retried elsewhere).
    GoAway {
        last_stream_id: StreamId,
        code: Reason,
        debug: Bytes,
    },
    /// The ACK of our PING.
    Pong { payload: [u8; 8] },
    /// Send capacity grew on a stream (`StreamId(0)`: on the connection).
    WindowUpdate { id: StreamId },
    /// The peer's SETTINGS were applied (and acknowledged); a changed initial window
    /// changes every stream's send capacity, so re-check [`Conn::send_capacity`].
    PeerSettings { settings: Settings },
    /// The peer acknowledged our oldest unacknowledged SETTINGS.
    SettingsAcked,
}

/// How far the peer's connection preface has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preface {
    /// Server: the 24-octet client magic is expected.
    AwaitMagic,
    /// The peer's first frame must be SETTINGS.
    AwaitSettings,
    Ready,
}

/// A header block whose CONTINUATION frames are still arriving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartialHeaders {
    pub id: u32,
    pub end_stream: bool,
    /// The HEADERS frame said the stream depends on itself (a stream error once decoded).
    pub self_dependent: bool,
    pub block: BytesMut,
}

/// A sans-io HTTP/2 connection.
#[derive(Debug)]
pub struct Conn {
    pub(super) role: Role,
    pub(super) config: Config,
    pub(super) preface: Preface,
    /// Set once a connection error was sent (GOAWAY with this code).
    pub(super) failed: Option<Reason>,
    pub(super) next_local_id: u32,
    pub(super) last_peer_id: u32,
    /// Our acknowledged settings.
    pub(super) local: Settings,
    /// Our settings sent and not yet acknowledged, oldest first.
    pub(super) local_pending: VecDeque<Settings>,
    pub(super) peer: Settings,
    pub(super) conn_send_window: i64,
    pub(super) conn_recv_window: i64,
    pub(super) conn_recv_released: u32,
    pub(super) conn_recv_outstanding: u64,
    pub(super) streams: BTreeMap<u32, Stream>,
    pub(super) reset_recently: VecDeque<u32>,
    pub(super) decoder: Decoder,
    pub(super) encoder: Encoder,
    pub(super) ping_out: Option<[u8; 8]>,
    pub(super) goaway_sent: Option<u32>,
    pub(super) goaway_recv: Option<u32>,
    pub(super) partial: Option<PartialHeaders>,
    pub(super) rx: BytesMut,
    pub(super) tx: BytesMut,
    // Derived (recomputed on import), not exported.
    pub(super) local_active: u32,
    pub(super) peer_active: u32,
    pub(super) scratch: Vec<u8>,
}

impl Conn {
    /// A new connection; its preface (client) and SETTINGS are already in the output.
    pub fn new(role: Role, mut config: Config) -> Conn {
        let s = &mut config.settings;
        s.initial_window_size = s.initial_window_size.min(frame::MAX_WINDOW);
        s.max_frame_size = s
            .max_frame_size
            .clamp(frame::DEFAULT_MAX_FRAME_SIZE, frame::MAX_MAX_FRAME_SIZE);
        if role == Role::Server {
            s.enable_push = false;
        }
        config.connection_window = config.connection_window.min(frame::MAX_WINDOW);
        let mut c = Conn {
            role,
            preface: match role {
                Role::Server => Preface::AwaitMagic,
                Role::Client => Preface::AwaitSettings,
            },
            failed: None,
            next_local_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            last_peer_id: 0,
            local: Settings::default(),
            local_pending: VecDeque::new(),
            peer: Settings::default(),
            conn_send_window: 65_535,
            conn_recv_window: 65_535,
            conn_recv_released: 0,
            conn_recv_outstanding: 0,
            streams: BTreeMap::new(),
            reset_recently: VecDeque::new(),
            decoder: Decoder::new(),
            encoder: Encoder::new(config.encoder_table_size as usize),
            ping_out: None,
            goaway_sent: None,
            goaway_recv: None,
            partial: None,
            rx: BytesMut::new(),
            tx: BytesMut::with_capacity(4096),
            local_active: 0,
            peer_active: 0,
            scratch: Vec::new(),
            config,
        };
        if role == Role::Client {
            c.tx.put_slice(PREFACE);
        }
        let s = c.config.settings;
        frame::write_settings(&mut c.tx, &s.diff(&Settings::default()));
        c.local_pending.push_back(s);
        let target = i64::from(c.config.connection_window);
        if target > c.conn_recv_window {
            frame::write_window_update(&mut c.tx, 0, (target - c.conn_recv_window) as u32);
            c.conn_recv_window = target;
        }
        c.refresh_local_limits();
        c
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Copies `data` into the receive buffer and processes every complete frame.
    pub fn recv(&mut self, data: &[u8], events: &mut Vec<Event>) -> Result<(), ConnError> {
        self.rx.extend_from_slice(data);
        self.process(events)
    }

    /// Takes a buffer of received bytes without copying when nothing is buffered yet.
    pub fn recv_bytes(&mut self, data: BytesMut, events: &mut Vec<Event>) -> Result<(), ConnError> {
        if self.rx.is_empty() {
            self.rx = data;
        } else {
            self.rx.unsplit(data);
        }
        self.process(events)
    }

    /// The receive buffer, to read into directly (then call [`Conn::process`]). It holds
    /// any partial frame; DATA events are views into it.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.rx
    }

    /// Lets go of the receive and output buffers while they hold nothing, so that a quiet
    /// connection keeps no buffer of its own (the next read or frame allocates again). DATA
    /// events already given out keep their own view of the receive buffer.
    pub fn trim_buffers(&mut self) {
        if self.rx.is_empty() {
            self.rx = BytesMut::new();
        }
        if self.tx.is_empty() {
            self.tx = BytesMut::new();
        }
    }

    /// Bytes the receive and output buffers hold allocated (for tests and debugging).
    pub fn buffer_capacity(&self) -> usize {
        self.rx.capacity() + self.tx.capacity()
    }

    /// Received octets not yet processed (a partial frame).
    pub fn buffered_input(&self) -> usize {
        self.rx.len()
    }

    /// Octets the codec has queued for the peer.
    pub fn pending_output(&self) -> &[u8] {
        &self.tx
    }

    /// Marks `n` octets of [`Conn::pending_output`] as written.
    pub fn advance_output(&mut self, n: usize) {
        let n = n.min(self.tx.len());
        self.tx.advance(n);
    }

    /// Takes all queued output (then it is no longer part of an export).
    pub fn poll_output(&mut self) -> Option<Bytes> {
        (!self.tx.is_empty()).then(|| self.tx.split().freeze())
    }

    /// Client: opens a stream with a request head (e.g. [`super::request_fields`] of an
    /// HBONE CONNECT). Returns its id.
    pub fn open_stream(
        &mut self,
        headers: &[HeaderField],
        end_stream: bool,
    ) -> Result<StreamId, SendError> {
        self.check_alive()?;
        if self.role != Role::Client {
            return Err(SendError::WrongRole);
        }
        if self.goaway_recv.is_some() || self.goaway_sent.is_some() {
            return Err(SendError::GoingAway);
        }
        let limit = self
            .peer
            .max_concurrent_streams
            .unwrap_or(u32::MAX)
            .min(self.config.max_send_streams);
        if self.local_active >= limit {
            return Err(SendError::TooManyStreams(limit));
        }
        let id = self.next_local_id;
        if id > MAX_STREAM_ID {
            return Err(SendError::StreamIdsExhausted);
        }
        self.check_list_size(headers)?;
        self.write_headers(id, headers, end_stream);
        self.next_local_id += 2;
        let state = if end_stream {
            StreamState::HalfClosedLocal
        } else {
            StreamState::Open
        };
        self.streams.insert(id, self.new_stream(state, false));
        self.local_active += 1;
        Ok(StreamId(id))
    }

    /// Sends a head on an open stream: the server's response (e.g.
    /// [`super::response_fields`]`(200, ..)`), or trailers.
    pub fn send_headers(
        &mut self,
        id: StreamId,
        headers: &[HeaderField],
        end_stream: bool,
    ) -> Result<(), SendError> {
        self.check_alive()?;
        if !self.stream_state(id).can_send() {
            return Err(SendError::StreamNotOpen(id));
        }
        self.check_list_size(headers)?;
        self.write_headers(id.0, headers, end_stream);
        if end_stream {
            self.end_local(id.0);
        }
        Ok(())
    }

    /// Sends as much of `data` as both send windows allow, in DATA frames no larger than
    /// the peer's SETTINGS_MAX_FRAME_SIZE; returns how much was taken. END_STREAM is sent
    /// only with the last octet (or alone for empty `data`). Retry the rest after a
    /// `WindowUpdate` event.
    pub fn send_data(
        &mut self,
        id: StreamId,
        data: &[u8],
        end_stream: bool,
    ) -> Result<usize, SendError> {
        self.check_alive()?;
        let max_frame = self.peer.max_frame_size;
        let s = self
            .streams
            .get_mut(&id.0)
            .filter(|s| s.state.can_send())
            .ok_or(SendError::StreamNotOpen(id))?;
        let cap = s.send_window.min(self.conn_send_window).max(0) as usize;
        let n = data.len().min(cap);
        let eos = end_stream && n == data.len();
        if n == 0 && !eos {
            return Ok(0);
        }
        s.send_window -= n as i64;
        self.conn_send_window -= n as i64;
        frame::write_data(&mut self.tx, id.0, &data[..n], eos, max_frame);
        if eos {
            self.end_local(id.0);
        }
        Ok(n)
    }

    /// How much [`Conn::send_data`] would take now on `id`.
    pub fn send_capacity(&self, id: StreamId) -> usize {
        match self.streams.get(&id.0) {
            Some(s) if s.state.can_send() => {
                s.send_window.min(self.conn_send_window).max(0) as usize
            }
            _ => 0,
        }
    }

    /// The app consumed `n` octets of `Data` on `id` (also after the stream closed): the
    /// windows reopen by that much, with a WINDOW_UPDATE once half a window is released.
    pub fn release(&mut self, id: StreamId, n: usize) {
        let n = (n as u64).min(self.conn_recv_outstanding);
        if n == 0 || self.failed.is_some() {
            return;
        }
        self.conn_recv_outstanding -= n;
        self.credit_connection(n as u32);
        if let Some(s) = self.streams.get_mut(&id.0) {
            let k = n.min(s.recv_outstanding);
            s.recv_outstanding -= k;
            s.recv_released += k as u32;
            self.maybe_update_stream(id.0);
        }
    }

    /// Resets a stream (RST_STREAM with `code`); frames the peer sent before seeing it are
    /// ignored. A stream that is not live is left alone.
    pub fn reset(&mut self, id: StreamId, code: Reason) {
        if self.failed.is_some() || self.remove_stream(id.0).is_none() {
            return;
        }
        frame::write_rst(&mut self.tx, id.0, code);
        self.remember_reset(id.0, false);
    }

    /// Sends a PING; its ACK comes back as `Event::Pong`. One at a time.
    pub fn send_ping(&mut self, payload: [u8; 8]) -> Result<(), SendError> {
        self.check_alive()?;
        if self.ping_out.is_some() {
            return Err(SendError::PingInFlight);
        }
        frame::write_ping(&mut self.tx, false, payload);
        self.ping_out = Some(payload);
        Ok(())
    }

    /// Sends GOAWAY with the last peer stream we accepted: peer streams above it are not
    /// processed, and no new ones are accepted. With NO_ERROR the live streams carry on
    /// (graceful); any other code ends the connection.
    pub fn send_goaway(&mut self, code: Reason, debug: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let last = match self.goaway_sent {
            Some(prev) => prev.min(self.last_peer_id),
            None => self.last_peer_id,
        };
        frame::write_goaway(&mut self.tx, last, code, debug);
        self.goaway_sent = Some(last);
        if code != Reason::NO_ERROR {
            self.failed = Some(code);
        }
    }

    /// Sends new SETTINGS of ours; they apply once the peer acknowledges them. (A server's
    /// `enable_push` is meaningless and always sent as 0.)
    pub fn update_settings(&mut self, mut new: Settings) -> Result<(), SendError> {
        self.check_alive()?;
        if self.role == Role::Server {
            new.enable_push = false;
        }
        new.validate()
            .map_err(|(what, value)| SendError::BadSetting { what, value })?;
        let prev = *self.local_pending.back().unwrap_or(&self.local);
        frame::write_settings(&mut self.tx, &new.diff(&prev));
        self.local_pending.push_back(new);
        self.refresh_local_limits();
        Ok(())
    }

    /// A stream's state as RFC 9113 §5.1 names it.
    pub fn stream_state(&self, id: StreamId) -> StreamState {
        if let Some(s) = self.streams.get(&id.0) {
            return s.state;
        }
        if id.0 == 0 || self.is_idle(id.0) {
            StreamState::Idle
        } else {
            StreamState::Closed
        }
    }

    /// Streams that are open or half closed.
    pub fn active_streams(&self) -> usize {
        self.streams.len()
    }

    pub fn peer_settings(&self) -> &Settings {
        &self.peer
    }

    /// Our settings the peer has acknowledged.
    pub fn local_settings(&self) -> &Settings {
        &self.local
    }

    /// Our settings as last sent (acknowledged or not): the base for an update.
    pub fn latest_settings(&self) -> Settings {
        *self.local_pending.back().unwrap_or(&self.local)
    }

    /// Whether all our SETTINGS have been acknowledged.
    pub fn settings_acked(&self) -> bool {
        self.local_pending.is_empty()
    }

    /// Whether the peer's connection preface (its first SETTINGS) has arrived.
    pub fn preface_received(&self) -> bool {
        self.preface == Preface::Ready
    }

    /// GOAWAY was sent or received: open no more streams here.
    pub fn is_going_away(&self) -> bool {
        self.goaway_sent.is_some() || self.goaway_recv.is_some()
    }

    /// The connection failed with this code (our GOAWAY); close it once output is flushed.
    pub fn failure(&self) -> Option<Reason> {
        self.failed
    }

    pub fn ping_in_flight(&self) -> bool {
        self.ping_out.is_some()
    }

    /// Our send window on the connection and, with `id`, on the stream.
    pub fn send_windows(&self, id: StreamId) -> (i64, Option<i64>) {
        (
            self.conn_send_window,
            self.streams.get(&id.0).map(|s| s.send_window),
        )
    }

    /// The HPACK dynamic tables' entry counts: (decoder, encoder).
    pub fn hpack_entries(&self) -> (usize, usize) {
        (self.decoder.table.len(), self.encoder.table.len())
    }

    // ---- helpers shared with `recv` and `export` ----

    pub(super) fn check_alive(&self) -> Result<(), SendError> {
        match self.failed {
            Some(code) => Err(SendError::Failed(code)),
            None => Ok(()),
        }
    }

    fn check_list_size(&self, headers: &[HeaderField]) -> Result<(), SendError> {
        let size: usize = headers.iter().map(HeaderField::list_size).sum();
        match self.peer.max_header_list_size {
            Some(limit) if size > limit as usize => Err(SendError::HeadersTooLarge { size, limit }),
            _ => Ok(()),
        }
    }

    fn write_headers(&mut self, id: u32, headers: &[HeaderField], end_stream: bool) {
        self.scratch.clear();
        self.encoder.encode(headers, &mut self.scratch);
        frame::write_header_block(
            &mut self.tx,
            id,
            &self.scratch,
            end_stream,
            self.peer.max_frame_size,
        );
    }

    pub(super) fn new_stream(&self, state: StreamState, head_received: bool) -> Stream {
        Stream {
            state,
            send_window: i64::from(self.peer.initial_window_size),
            recv_window: i64::from(self.local.initial_window_size),
            recv_released: 0,
            recv_outstanding: 0,
            head_received,
        }
    }

    /// Whether `id` is of the parity this endpoint opens.
    pub(super) fn is_local(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.role == Role::Client)
    }

    pub(super) fn is_idle(&self, id: u32) -> bool {
        if self.is_local(id) {
            id >= self.next_local_id
        } else {
            id > self.last_peer_id
        }
    }

    pub(super) fn remove_stream(&mut self, id: u32) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        if self.is_local(id) {
            self.local_active = self.local_active.saturating_sub(1);
        } else {
            self.peer_active = self.peer_active.saturating_sub(1);
        }
        Some(s)
    }

    /// Remembers a reset stream; `by_peer` marks the peer's RST_STREAM (in the id's
    /// reserved top bit).
    pub(super) fn remember_reset(&mut self, id: u32, by_peer: bool) {
        self.reset_recently
            .push_back(id | if by_peer { 1 << 31 } else { 0 });
        while self.reset_recently.len() > self.config.reset_memory as usize {
            self.reset_recently.pop_front();
        }
    }

    /// Whether `id` was reset recently: `Some(true)` by the peer, `Some(false)` by us.
    pub(super) fn was_reset(&self, id: u32) -> Option<bool> {
        let ours = self.reset_recently.iter().rev().any(|&e| e == id);
        let theirs = self.reset_recently.iter().rev().any(|&e| e == id | 1 << 31);
        match (ours, theirs) {
            (true, _) => Some(false),
            (false, true) => Some(true),
            _ => None,
        }
    }

    /// We sent END_STREAM on `id`.
    pub(super) fn end_local(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.state = s.state.send_end();
            if s.state == StreamState::Closed {
                self.remove_stream(id);
            }
        }
    }

    /// The peer sent END_STREAM on `id`.
    pub(super) fn end_remote(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.state = s.state.recv_end();
            if s.state == StreamState::Closed {
                self.remove_stream(id);
            }
        }
    }

    /// Returns `n` octets to the connection window (WINDOW_UPDATE at half the target).
    pub(super) fn credit_connection(&mut self, n: u32) {
        self.conn_recv_released = self.conn_recv_released.saturating_add(n);
        let target = self.config.connection_window.max(65_535);
        let r = self.conn_recv_released;
        if r > 0 && r >= target / 2 {
            frame::write_window_update(&mut self.tx, 0, r);
            self.conn_recv_window += i64::from(r);
            self.conn_recv_released = 0;
        }
    }

    pub(super) fn maybe_update_stream(&mut self, id: u32) {
        let target = self.local.initial_window_size;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let r = s.recv_released;
        if s.state.can_recv() && r > 0 && r >= target / 2 {
            frame::write_window_update(&mut self.tx, id, r);
            s.recv_window += i64::from(r);
            s.recv_released = 0;
        }
    }

    /// Our settings as the peer may currently apply them: the decoder accepts table sizes
    /// and frame sizes up to the largest of the acknowledged and pending values.
    pub(super) fn refresh_local_limits(&mut self) {
        let limit = self
            .local_pending
            .iter()
            .map(|s| s.header_table_size)
            .fold(self.local.header_table_size, u32::max);
        self.decoder.set_limit(limit as usize);
    }

    pub(super) fn max_recv_frame(&self) -> u32 {
        self.local_pending
            .iter()
            .map(|s| s.max_frame_size)
            .fold(self.local.max_frame_size, u32::max)
    }

    /// Fails the connection: queues GOAWAY(`code`) once and returns the error.
    pub(super) fn fail(&mut self, code: Reason, detail: &str) -> ConnError {
        if self.failed.is_none() {
            let last = self
                .goaway_sent
                .unwrap_or(self.last_peer_id)
                .min(self.last_peer_id);
            frame::write_goaway(&mut self.tx, last, code, detail.as_bytes());
            self.goaway_sent = Some(last);
            self.failed = Some(code);
        }
        ConnError {
            code,
            detail: detail.to_string(),
        }
    }
}
