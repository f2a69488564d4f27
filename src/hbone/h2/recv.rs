//! The receive side of a connection: cuts frames out of the receive buffer in place and
//! applies each to the state (RFC 9113 §5.1 stream states, §6 frame rules, §6.9 flow
//! control, §6.10 CONTINUATION sequencing), producing events.
//!
//! Owns: what a received frame means and which error it is. Connection errors come back
//! as `Err(Fault)` and become a GOAWAY in `process`; stream errors become an RST_STREAM
//! and an `Event::Reset` here.

use bytes::{Buf, Bytes, BytesMut};

use super::conn::{Conn, Event, PartialHeaders, Preface};
use super::frame::{self, FrameHeader, HEADER_LEN, MAX_WINDOW, PREFACE};
use super::message::{self, HeaderField};
use super::state::{Fault, StreamState};
use super::{ConnError, Reason, Role, StreamId};

impl Conn {
    /// Processes every complete frame in the receive buffer; a partial frame stays there.
    pub fn process(&mut self, events: &mut Vec<Event>) -> Result<(), ConnError> {
        if let Some(code) = self.failed {
            return Err(ConnError {
                code,
                detail: "the connection has already failed".into(),
            });
        }
        match self.process_frames(events) {
            Ok(()) => Ok(()),
            Err(f) => Err(self.fail(f.code, f.detail)),
        }
    }

    fn process_frames(&mut self, ev: &mut Vec<Event>) -> Result<(), Fault> {
        if self.preface == Preface::AwaitMagic {
            let n = self.rx.len().min(PREFACE.len());
            if self.rx[..n] != PREFACE[..n] {
                return Err(Fault::new(
                    Reason::PROTOCOL_ERROR,
                    "the client did not send the HTTP/2 connection preface",
                ));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.rx.advance(PREFACE.len());
            self.preface = Preface::AwaitSettings;
        }
        while let Some(h) = FrameHeader::parse(&self.rx) {
            if h.len > self.max_recv_frame() {
                return Err(Fault::new(
                    Reason::FRAME_SIZE_ERROR,
                    "frame larger than our SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if self.preface == Preface::AwaitSettings
                && (h.kind != frame::SETTINGS || h.has(frame::FLAG_ACK))
            {
                return Err(Fault::new(
                    Reason::PROTOCOL_ERROR,
                    "the peer's first frame is not SETTINGS",
                ));
            }
            let total = HEADER_LEN + h.len as usize;
            if self.rx.len() < total {
                self.rx.reserve(total - self.rx.len());
                break;
            }
            self.rx.advance(HEADER_LEN);
            let payload = self.rx.split_to(h.len as usize).freeze();
            self.frame(h, payload, ev)?;
        }
        Ok(())
    }

    fn frame(&mut self, h: FrameHeader, payload: Bytes, ev: &mut Vec<Event>) -> Result<(), Fault> {
        if let Some(p) = &self.partial
            && (h.kind != frame::CONTINUATION || h.stream != p.id)
        {
            return Err(Fault::new(
                Reason::PROTOCOL_ERROR,
                "header block interrupted by another frame",
            ));
        }
        match h.kind {
            frame::DATA => self.on_data(h, payload, ev),
            frame::HEADERS => self.on_headers(h, payload, ev),
            frame::PRIORITY => self.on_priority(h, &payload, ev),
            frame::RST_STREAM => self.on_rst(h, &payload, ev),
            frame::SETTINGS => self.on_settings(h, &payload, ev),
            frame::PUSH_PROMISE => Err(Fault::new(
                Reason::PROTOCOL_ERROR,
                "PUSH_PROMISE received (push is disabled; a client cannot push)",
            )),
            frame::PING => self.on_ping(h, &payload, ev),
            frame::GOAWAY => self.on_goaway(h, payload, ev),
            frame::WINDOW_UPDATE => self.on_window_update(h, &payload, ev),
            frame::CONTINUATION => self.on_continuation(h, &payload, ev),
            // Unknown frame types are ignored (§4.1, §5.5).
            _ => Ok(()),
        }
    }

    fn on_data(
        &mut self,
        h: FrameHeader,
        mut payload: Bytes,
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        let id = h.stream;
        if id == 0 {
            return Err(Fault::new(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        // The whole payload, padding included, counts against flow control (§6.9).
        let len = payload.len() as u32;
        frame::strip_padding(&h, &mut payload)?;
        if i64::from(len) > self.conn_recv_window {
            return Err(Fault::new(
                Reason::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        self.conn_recv_window -= i64::from(len);
        let verdict = match self.streams.get(&id) {
            None if self.is_idle(id) => {
                return Err(Fault::new(Reason::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            None if self.ignores(id) => Verdict::Ignore,
            // After the peer's own RST_STREAM: a stream error (§5.1).
            None if self.was_reset(id) == Some(true) => Verdict::Reset(Reason::STREAM_CLOSED),
            None => {
                return Err(Fault::new(Reason::STREAM_CLOSED, "DATA on a closed stream"));
            }
            Some(s) if !s.state.can_recv() => Verdict::Reset(Reason::STREAM_CLOSED),
            // A response starts with its head (RFC 9113 §8.1).
            Some(s) if !s.head_received => Verdict::Reset(Reason::PROTOCOL_ERROR),
            Some(s) if i64::from(len) > s.recv_window => Verdict::Reset(Reason::FLOW_CONTROL_ERROR),
            Some(_) => Verdict::Accept,
        };
        let s = match (verdict, self.streams.get_mut(&id)) {
            (Verdict::Accept, Some(s)) => s,
            (verdict, _) => {
                // The app never sees it: the connection window gets it back at once.
                self.credit_connection(len);
                if let Verdict::Reset(code) = verdict {
                    self.stream_error(id, code, ev);
                }
                return Ok(());
            }
        };
        s.recv_window -= i64::from(len);
        let data_len = payload.len() as u32;
        let padding = len - data_len;
        s.recv_outstanding += u64::from(data_len);
        s.recv_released += padding;
        self.conn_recv_outstanding += u64::from(data_len);
        if padding > 0 {
            self.credit_connection(padding);
            self.maybe_update_stream(id);
        }
        if data_len > 0 {
            ev.push(Event::Data {
                id: StreamId(id),
                data: payload,
            });
        }
        if h.has(frame::FLAG_END_STREAM) {
            self.end_remote(id);
            ev.push(Event::StreamEnd { id: StreamId(id) });
        }
        Ok(())
    }

    fn on_headers(
        &mut self,
        h: FrameHeader,
        mut payload: Bytes,
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        if h.stream == 0 {
            return Err(Fault::new(Reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        frame::strip_padding(&h, &mut payload)?;
        let mut self_dependent = false;
        if h.has(frame::FLAG_PRIORITY) {
            let Some(dep) = frame::priority_dependency(&payload).filter(|_| payload.len() >= 5)
            else {
                let code = if h.has(frame::FLAG_PADDED) {
                    Reason::PROTOCOL_ERROR
                } else {
                    Reason::FRAME_SIZE_ERROR
                };
                return Err(Fault::new(
                    code,
                    "HEADERS too short for its priority fields",
                ));
            };
            self_dependent = dep == h.stream;
            payload.advance(5);
        }
        let end_stream = h.has(frame::FLAG_END_STREAM);
        if h.has(frame::FLAG_END_HEADERS) {
            return self.on_header_block(h.stream, end_stream, self_dependent, payload, ev);
        }
        self.check_block_size(payload.len())?;
        self.partial = Some(PartialHeaders {
            id: h.stream,
            end_stream,
            self_dependent,
            block: BytesMut::from(&payload[..]),
        });
        Ok(())
    }

    fn on_continuation(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        let Some(mut p) = self.partial.take() else {
            return Err(Fault::new(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION without a preceding HEADERS",
            ));
        };
        self.check_block_size(p.block.len() + payload.len())?;
        p.block.extend_from_slice(payload);
        if h.has(frame::FLAG_END_HEADERS) {
            return self.on_header_block(
                p.id,
                p.end_stream,
                p.self_dependent,
                p.block.freeze(),
                ev,
            );
        }
        self.partial = Some(p);
        Ok(())
    }

    fn check_block_size(&self, n: usize) -> Result<(), Fault> {
        if n > self.config.max_header_block as usize {
            return Err(Fault::new(
                Reason::ENHANCE_YOUR_CALM,
                "header block larger than we accept",
            ));
        }
        Ok(())
    }

    /// A complete header block on stream `id`: always decoded (the HPACK state must follow
    /// the peer's), then applied to the stream.
    fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        self_dependent: bool,
        block: Bytes,
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        let mut fields = Vec::new();
        let max_list = self
            .local_pending
            .iter()
            .chain([&self.local])
            .map(|s| s.max_header_list_size.map_or(usize::MAX, |m| m as usize))
            .max()
            .unwrap_or(usize::MAX);
        let Ok(fits) = self.decoder.decode(&block, &mut fields, max_list) else {
            return Err(Fault::new(
                Reason::COMPRESSION_ERROR,
                "header block does not decode (HPACK)",
            ));
        };
        let too_big = !fits;
        if !self.streams.contains_key(&id) {
            return self.open_remote(id, end_stream, self_dependent, too_big, fields, ev);
        }
        if self_dependent || too_big {
            self.stream_error(id, Reason::PROTOCOL_ERROR, ev);
            return Ok(());
        }
        let Some((state, head_received)) =
            self.streams.get(&id).map(|s| (s.state, s.head_received))
        else {
            return Ok(());
        };
        if !state.can_recv() {
            self.stream_error(id, Reason::STREAM_CLOSED, ev);
            return Ok(());
        }
        let sid = StreamId(id);
        if head_received || self.role == Role::Server {
            // A second head is a trailer section and must end the stream.
            if !end_stream || message::check_trailers(&fields).is_err() {
                self.stream_error(id, Reason::PROTOCOL_ERROR, ev);
                return Ok(());
            }
            ev.push(Event::Trailers {
                id: sid,
                headers: fields,
            });
        } else {
            let Ok(status) = message::check_response(&fields) else {
                self.stream_error(id, Reason::PROTOCOL_ERROR, ev);
                return Ok(());
            };
            if (100..200).contains(&status) {
                if end_stream {
                    self.stream_error(id, Reason::PROTOCOL_ERROR, ev);
                    return Ok(());
                }
                ev.push(Event::Informational {
                    id: sid,
                    status,
                    headers: fields,
                });
                return Ok(());
            }
            if let Some(s) = self.streams.get_mut(&id) {
                s.head_received = true;
            }
            ev.push(Event::Response {
                id: sid,
                status,
                headers: fields,
            });
        }
        if end_stream {
            self.end_remote(id);
            ev.push(Event::StreamEnd { id: sid });
        }
        Ok(())
    }

    /// A head on a stream we do not hold: a new peer stream, or a late frame.
    fn open_remote(
        &mut self,
        id: u32,
        end_stream: bool,
        self_dependent: bool,
        too_big: bool,
        fields: Vec<HeaderField>,
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        if self.is_local(id) || self.role == Role::Client {
            if self.is_idle(id) {
                return Err(Fault::new(
                    Reason::PROTOCOL_ERROR,
                    "HEADERS on a stream this endpoint never opened",
                ));
            }
            return self.on_closed_stream(id, ev);
        }
        if id <= self.last_peer_id {
            return self.on_closed_stream(id, ev);
        }
        self.last_peer_id = id;
        if self.goaway_sent.is_some() {
            // Above the last stream id of our GOAWAY: not processed (§6.8).
            return Ok(());
        }
        let limit = self.local.max_concurrent_streams.unwrap_or(u32::MAX);
        if self.peer_active >= limit {
            frame::write_rst(&mut self.tx, id, Reason::REFUSED_STREAM);
            self.remember_reset(id, false);
            return Ok(());
        }
        if self_dependent || too_big || message::check_request(&fields).is_err() {
            frame::write_rst(&mut self.tx, id, Reason::PROTOCOL_ERROR);
            self.remember_reset(id, false);
            return Ok(());
        }
        let state = if end_stream {
            StreamState::HalfClosedRemote
        } else {
            StreamState::Open
        };
        self.streams.insert(id, self.new_stream(state, true));
        self.peer_active += 1;
        ev.push(Event::StreamOpened {
            id: StreamId(id),
            headers: fields,
        });
        if end_stream {
            ev.push(Event::StreamEnd { id: StreamId(id) });
        }
        Ok(())
    }

    fn on_priority(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        if h.stream == 0 {
            return Err(Fault::new(Reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
        }
        if payload.len() != 5 {
            if self.streams.contains_key(&h.stream) {
                self.stream_error(h.stream, Reason::FRAME_SIZE_ERROR, ev);
                return Ok(());
            }
            return Err(Fault::new(
                Reason::FRAME_SIZE_ERROR,
                "PRIORITY not 5 octets",
            ));
        }
        if frame::priority_dependency(payload) == Some(h.stream)
            && self.streams.contains_key(&h.stream)
        {
            self.stream_error(h.stream, Reason::PROTOCOL_ERROR, ev);
        }
        // Otherwise parsed and ignored: the codec does not prioritise.
        Ok(())
    }

    fn on_rst(&mut self, h: FrameHeader, payload: &[u8], ev: &mut Vec<Event>) -> Result<(), Fault> {
        let Some(code) = frame::payload_u32(payload) else {
            return Err(Fault::new(
                Reason::FRAME_SIZE_ERROR,
                "RST_STREAM not 4 octets",
            ));
        };
        if h.stream == 0 {
            return Err(Fault::new(Reason::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
        }
        if self.is_idle(h.stream) {
            return Err(Fault::new(
                Reason::PROTOCOL_ERROR,
                "RST_STREAM on an idle stream",
            ));
        }
        if self.remove_stream(h.stream).is_some() {
            self.remember_reset(h.stream, true);
            ev.push(Event::Reset {
                id: StreamId(h.stream),
                code: Reason(code),
                remote: true,
            });
        }
        Ok(())
    }

    fn on_settings(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        if h.stream != 0 {
            return Err(Fault::new(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if h.has(frame::FLAG_ACK) {
            if !payload.is_empty() {
                return Err(Fault::new(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            let Some(new) = self.local_pending.pop_front() else {
                return Err(Fault::new(
                    Reason::PROTOCOL_ERROR,
                    "SETTINGS ACK for nothing we sent",
                ));
            };
            let delta =
                i64::from(new.initial_window_size) - i64::from(self.local.initial_window_size);
            self.local = new;
            for s in self.streams.values_mut() {
                s.recv_window += delta;
            }
            self.refresh_local_limits();
            ev.push(Event::SettingsAcked);
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(Fault::new(
                Reason::FRAME_SIZE_ERROR,
                "SETTINGS length not a multiple of 6",
            ));
        }
        let from = match self.role {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        let mut next = self.peer;
        for (id, v) in frame::settings_entries(payload) {
            next.apply(from, id, v)?;
        }
        let delta = i64::from(next.initial_window_size) - i64::from(self.peer.initial_window_size);
        if delta != 0 {
            for s in self.streams.values_mut() {
                s.send_window += delta;
                if s.send_window > i64::from(MAX_WINDOW) {
                    return Err(Fault::new(
                        Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE pushes a stream window past 2^31-1",
                    ));
                }
            }
        }
        if next.header_table_size != self.peer.header_table_size {
            self.encoder.set_peer_limit(next.header_table_size);
        }
        self.peer = next;
        self.preface = Preface::Ready;
        frame::write_settings_ack(&mut self.tx);
        ev.push(Event::PeerSettings { settings: next });
        Ok(())
    }

    fn on_ping(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        let Ok(data) = <[u8; 8]>::try_from(payload) else {
            return Err(Fault::new(Reason::FRAME_SIZE_ERROR, "PING not 8 octets"));
        };
        if h.stream != 0 {
            return Err(Fault::new(Reason::PROTOCOL_ERROR, "PING on a stream"));
        }
        if !h.has(frame::FLAG_ACK) {
            frame::write_ping(&mut self.tx, true, data);
        } else if self.ping_out == Some(data) {
            self.ping_out = None;
            ev.push(Event::Pong { payload: data });
        }
        Ok(())
    }

    fn on_goaway(
        &mut self,
        h: FrameHeader,
        payload: Bytes,
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        if h.stream != 0 {
            return Err(Fault::new(Reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
        }
        let (Some(last), Some(code)) = (
            payload.get(..4).and_then(frame::payload_u32),
            payload.get(4..8).and_then(frame::payload_u32),
        ) else {
            return Err(Fault::new(
                Reason::FRAME_SIZE_ERROR,
                "GOAWAY shorter than 8 octets",
            ));
        };
        let last = last & frame::MAX_STREAM_ID;
        if self.goaway_recv.is_some_and(|prev| last > prev) {
            return Err(Fault::new(
                Reason::PROTOCOL_ERROR,
                "GOAWAY raised its last stream id",
            ));
        }
        self.goaway_recv = Some(last);
        ev.push(Event::GoAway {
            last_stream_id: StreamId(last),
            code: Reason(code),
            debug: payload.slice(8..),
        });
        let refused: Vec<u32> = self
            .streams
            .range(last.saturating_add(1)..)
            .map(|(&id, _)| id)
            .filter(|&id| self.is_local(id))
            .collect();
        for id in refused {
            self.remove_stream(id);
            ev.push(Event::Reset {
                id: StreamId(id),
                code: Reason::REFUSED_STREAM,
                remote: true,
            });
        }
        Ok(())
    }

    fn on_window_update(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        ev: &mut Vec<Event>,
    ) -> Result<(), Fault> {
        let Some(inc) = frame::payload_u32(payload) else {
            return Err(Fault::new(
                Reason::FRAME_SIZE_ERROR,
                "WINDOW_UPDATE not 4 octets",
            ));
        };
        let inc = i64::from(inc & MAX_WINDOW);
        if h.stream == 0 {
            if inc == 0 {
                return Err(Fault::new(
                    Reason::PROTOCOL_ERROR,
                    "WINDOW_UPDATE of 0 on the connection",
                ));
            }
            self.conn_send_window += inc;
            if self.conn_send_window > i64::from(MAX_WINDOW) {
                return Err(Fault::new(
                    Reason::FLOW_CONTROL_ERROR,
                    "connection window past 2^31-1",
                ));
            }
            ev.push(Event::WindowUpdate { id: StreamId(0) });
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&h.stream) else {
            if self.is_idle(h.stream) {
                return Err(Fault::new(
                    Reason::PROTOCOL_ERROR,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            return Ok(());
        };
        let code = if inc == 0 {
            Reason::PROTOCOL_ERROR
        } else if s.send_window + inc > i64::from(MAX_WINDOW) {
            Reason::FLOW_CONTROL_ERROR
        } else {
            s.send_window += inc;
            Reason::NO_ERROR
        };
        if code != Reason::NO_ERROR {
            self.stream_error(h.stream, code, ev);
            return Ok(());
        }
        ev.push(Event::WindowUpdate {
            id: StreamId(h.stream),
        });
        Ok(())
    }

    /// A stream error (§5.4.2): RST_STREAM, the stream is dropped, the app told.
    fn stream_error(&mut self, id: u32, code: Reason, ev: &mut Vec<Event>) {
        frame::write_rst(&mut self.tx, id, code);
        if self.remove_stream(id).is_some() {
            ev.push(Event::Reset {
                id: StreamId(id),
                code,
                remote: false,
            });
        }
        self.remember_reset(id, false);
    }

    /// A head on a closed stream: ignored if we reset it (or refused it by GOAWAY), a
    /// stream error after the peer's own RST_STREAM, else a connection error (§5.1).
    fn on_closed_stream(&mut self, id: u32, ev: &mut Vec<Event>) -> Result<(), Fault> {
        if self.ignores(id) {
            return Ok(());
        }
        if self.was_reset(id) == Some(true) {
            self.stream_error(id, Reason::STREAM_CLOSED, ev);
            return Ok(());
        }
        // A head on an id below the newest is an unexpected stream identifier (§5.1.1).
        Err(Fault::new(
            Reason::PROTOCOL_ERROR,
            "HEADERS on a closed or skipped stream id",
        ))
    }

    /// Frames on a closed stream we reset, or on a peer stream our GOAWAY refused, are
    /// ignored: the peer sent them before it knew.
    fn ignores(&self, id: u32) -> bool {
        self.was_reset(id) == Some(false)
            || (!self.is_local(id) && self.goaway_sent.is_some_and(|last| id > last))
    }
}

/// What happens to a DATA frame.
enum Verdict {
    Accept,
    /// Late for a stream we reset: dropped silently.
    Ignore,
    /// A stream error with this code.
    Reset(Reason),
}
