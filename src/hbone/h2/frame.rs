//! HTTP/2 frames (RFC 9113 §4, §6): the 9-octet header, per-type payload checks and the
//! serialisation of every frame the codec sends, appended to the caller's output buffer.
//!
//! Owns: wire layout only. Which frame is legal when (stream states, CONTINUATION
//! sequencing, flow control) is `recv`'s and `conn`'s business.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::Reason;
use super::state::Fault;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Octets in a frame header.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value and lower bound.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// SETTINGS_MAX_FRAME_SIZE's upper bound.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window and window increment (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The largest stream id.
pub const MAX_STREAM_ID: u32 = (1 << 31) - 1;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

/// SETTINGS identifiers (RFC 9113 §6.5.2, RFC 8441 §3).
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// A frame header (RFC 9113 §4.1); the reserved bit of the stream id is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    /// Parses the first 9 octets of `b`, or `None` when fewer are there.
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let h: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & MAX_STREAM_ID,
        })
    }

    pub fn write(&self, out: &mut BytesMut) {
        let len = self.len.to_be_bytes();
        out.put_slice(&len[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream & MAX_STREAM_ID);
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Removes the Pad Length octet and the padding of a PADDED frame (§6.1, §6.2) in place.
pub fn strip_padding(h: &FrameHeader, payload: &mut Bytes) -> Result<(), Fault> {
    if !h.has(FLAG_PADDED) {
        return Ok(());
    }
    let Some(&pad) = payload.first() else {
        return Err(Fault::new(
            Reason::FRAME_SIZE_ERROR,
            "PADDED frame without a Pad Length octet",
        ));
    };
    let pad = pad as usize;
    if pad >= payload.len() {
        return Err(Fault::new(
            Reason::PROTOCOL_ERROR,
            "padding as long as the frame payload or longer",
        ));
    }
    payload.advance(1);
    payload.truncate(payload.len() - pad);
    Ok(())
}

/// A PRIORITY frame's or HEADERS priority block's stream dependency (exclusive bit dropped).
pub fn priority_dependency(b: &[u8]) -> Option<u32> {
    let d: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(d) & MAX_STREAM_ID)
}

/// Reads a 4-octet payload as a big-endian number (RST_STREAM, WINDOW_UPDATE).
pub fn payload_u32(b: &[u8]) -> Option<u32> {
    let d: [u8; 4] = b.try_into().ok()?;
    Some(u32::from_be_bytes(d))
}

/// The SETTINGS entries of a payload (whose length is a multiple of 6).
pub fn settings_entries(b: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    b.chunks_exact(6).map(|c| {
        (
            u16::from_be_bytes([c[0], c[1]]),
            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
        )
    })
}

pub fn write_settings(out: &mut BytesMut, entries: &[(u16, u32)]) {
    let len = (entries.len() * 6) as u32;
    FrameHeader {
        len,
        kind: SETTINGS,
        flags: 0,
        stream: 0,
    }
    .write(out);
    for &(id, v) in entries {
        out.put_u16(id);
        out.put_u32(v);
    }
}

pub fn write_settings_ack(out: &mut BytesMut) {
    FrameHeader {
        len: 0,
        kind: SETTINGS,
        flags: FLAG_ACK,
        stream: 0,
    }
    .write(out);
}

pub fn write_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    FrameHeader {
        len: 4,
        kind: WINDOW_UPDATE,
        flags: 0,
        stream,
    }
    .write(out);
    out.put_u32(increment & MAX_WINDOW);
}

pub fn write_ping(out: &mut BytesMut, ack: bool, payload: [u8; 8]) {
    FrameHeader {
        len: 8,
        kind: PING,
        flags: if ack { FLAG_ACK } else { 0 },
        stream: 0,
    }
    .write(out);
    out.put_slice(&payload);
}

pub fn write_goaway(out: &mut BytesMut, last_stream: u32, code: Reason, debug: &[u8]) {
    FrameHeader {
        len: 8 + debug.len() as u32,
        kind: GOAWAY,
        flags: 0,
        stream: 0,
    }
    .write(out);
    out.put_u32(last_stream & MAX_STREAM_ID);
    out.put_u32(code.0);
    out.put_slice(debug);
}

pub fn write_rst(out: &mut BytesMut, stream: u32, code: Reason) {
    FrameHeader {
        len: 4,
        kind: RST_STREAM,
        flags: 0,
        stream,
    }
    .write(out);
    out.put_u32(code.0);
}

/// Writes DATA frames carrying `data`, each at most `max_frame` long; the last one carries
/// END_STREAM when `end_stream`. Empty `data` with `end_stream` writes one empty frame.
pub fn write_data(out: &mut BytesMut, stream: u32, data: &[u8], end_stream: bool, max_frame: u32) {
    let max = (max_frame as usize).max(1);
    out.reserve(data.len() + HEADER_LEN * data.len().div_ceil(max).max(1));
    let mut chunks = data.chunks(max).peekable();
    if chunks.peek().is_none() {
        if end_stream {
            write_data_header(out, stream, 0, true);
        }
        return;
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        write_data_header(out, stream, c.len() as u32, end_stream && last);
        out.put_slice(c);
    }
}

fn write_data_header(out: &mut BytesMut, stream: u32, len: u32, end_stream: bool) {
    FrameHeader {
        len,
        kind: DATA,
        flags: if end_stream { FLAG_END_STREAM } else { 0 },
        stream,
    }
    .write(out);
}

/// Writes a header block as one HEADERS frame followed by as many CONTINUATION frames as
/// `max_frame` requires (§6.10); END_HEADERS goes on the last, END_STREAM on the HEADERS.
pub fn write_header_block(
    out: &mut BytesMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: u32,
) {
    let max = (max_frame as usize).max(1);
    out.reserve(block.len() + HEADER_LEN * (block.len() / max + 1));
    let mut rest = block;
    let mut kind = HEADERS;
    loop {
        let n = rest.len().min(max);
        let (chunk, tail) = rest.split_at(n);
        let mut flags = 0;
        if kind == HEADERS && end_stream {
            flags |= FLAG_END_STREAM;
        }
        if tail.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        FrameHeader {
            len: n as u32,
            kind,
            flags,
            stream,
        }
        .write(out);
        out.put_slice(chunk);
        if tail.is_empty() {
            return;
        }
        rest = tail;
        kind = CONTINUATION;
    }
}
