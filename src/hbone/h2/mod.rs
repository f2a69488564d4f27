//! A sans-io HTTP/2 codec for HBONE: the subset of RFC 9113 + RFC 7541 that CONNECT tunnels
//! use, with a connection state that can be exported and imported (hitless upgrades).
//!
//! Owns: frames (`frame`), HPACK (`hpack`, `huffman`), header-list rules (`message`), the
//! per-connection state machine for both roles (`conn`, `recv`, `state`) and its export
//! (`export`). Must not touch: sockets, TLS, tasks, clocks — the caller moves bytes and
//! keeps time (ping timeouts are the driver's).
//!
//! Shape: the caller puts received bytes into the codec ([`Conn::recv`], or reads straight
//! into [`Conn::read_buf`] and calls [`Conn::process`]), gets [`Event`]s, calls `send_*`
//! methods, and writes [`Conn::pending_output`] to the wire. Nothing here blocks.
//!
//! Why not the `h2` crate: it cannot export its connection state. Why not an HPACK crate:
//! the candidates on crates.io (`hpack`, `loona-hpack`/`fluke-hpack`, `httlib-hpack`) keep
//! their dynamic tables private — no way to read the entries out or to build a coder from
//! them — so a table could not cross a process boundary. HPACK is written by hand.
//!
//! Copies avoided (the data path carries multi-Gb/s):
//! - Received frames are cut out of the receive buffer in place (`BytesMut::split_to` +
//!   `freeze`); a DATA payload reaches the app as a `Bytes` view into the buffer the socket
//!   was read into, padding sliced off, nothing copied or allocated per frame. The only
//!   allocation is the buffer itself when the caller `reserve`s while earlier views are
//!   still alive (once per buffer, not per frame).
//! - Header literals that are not Huffman coded are `Bytes` slices of the header block; only
//!   entries inserted into the HPACK dynamic table are copied (so a table entry does not pin
//!   a large receive buffer).
//! - Sending DATA copies the payload once, into the output buffer next to its frame header,
//!   so the caller hands the TLS writer one contiguous slice (the TLS layer copies into
//!   records anyway). Header blocks are encoded into a reused scratch buffer, then framed.

mod conn;
mod export;
mod frame;
mod hpack;
mod huffman;
mod message;
mod recv;
mod state;

pub use conn::{Conn, Event};
pub use export::{ConnState, ImportError};
pub use message::{
    HeaderField, MessageError, field, request_fields, response_fields, to_request, to_response,
};
pub use state::{Config, Settings, StreamState};

/// Which end of the connection this codec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends the preface, opens streams with odd ids.
    Client,
    /// Accepts streams.
    Server,
}

/// An HTTP/2 stream identifier (31 bits; 0 is the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream {}", self.0)
    }
}

/// An HTTP/2 error code (RFC 9113 §7), as carried by RST_STREAM and GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const SETTINGS_TIMEOUT: Reason = Reason(0x4);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const CONNECT_ERROR: Reason = Reason(0xa);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
    pub const INADEQUATE_SECURITY: Reason = Reason(0xc);
    pub const HTTP_1_1_REQUIRED: Reason = Reason(0xd);

    /// The RFC's name for the code, or `None` for an unknown (extension) code.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "error code {:#x}", self.0),
        }
    }
}

/// A connection error (RFC 9113 §5.4.1) the codec detected in what the peer sent. The
/// codec has queued a GOAWAY with `code`; flush the output, then close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 peer broke the protocol ({code}): {detail}; GOAWAY sent, close the connection")]
pub struct ConnError {
    pub code: Reason,
    pub detail: String,
}

/// Why a `send_*` call was refused. The caller's mistake or the connection's state, never
/// the peer's fault; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{0} is not open for sending (never opened, ended, reset or refused)")]
    StreamNotOpen(StreamId),
    #[error("the connection is going away (GOAWAY sent or received); open a new connection")]
    GoingAway,
    #[error("the connection failed ({0}); open a new connection")]
    Failed(Reason),
    #[error(
        "the peer allows {0} concurrent streams and all are in use; wait or open a new connection"
    )]
    TooManyStreams(u32),
    #[error("stream ids are exhausted on this connection; open a new connection")]
    StreamIdsExhausted,
    #[error("only a client opens streams on an HBONE connection")]
    WrongRole,
    #[error("header list of {size} bytes exceeds the peer's SETTINGS_MAX_HEADER_LIST_SIZE {limit}")]
    HeadersTooLarge { size: usize, limit: u32 },
    #[error("a PING is already awaiting its ACK; wait for the Pong event")]
    PingInFlight,
    #[error("setting {what} = {value} is out of range (RFC 9113 §6.5.2)")]
    BadSetting { what: &'static str, value: u32 },
}

/// Feeds arbitrary bytes to a fresh codec of `role` (the fuzz entry point): decodes them as
/// a peer's byte stream, answers PINGs and SETTINGS, releases all received data, and
/// returns how many events came out. A client has opened streams 1 to 15 first, so that
/// responses are reachable. Must never panic, whatever the input.
pub fn fuzz_recv(role: Role, bytes: &[u8]) -> usize {
    let mut conn = Conn::new(role, Config::default());
    let mut events = Vec::new();
    let mut total = 0;
    if role == Role::Client {
        let head = [
            HeaderField::new(&b":method"[..], &b"CONNECT"[..]),
            HeaderField::new(&b":authority"[..], &b"10.0.0.1:80"[..]),
        ];
        for _ in 0..8 {
            let _ = conn.open_stream(&head, false);
        }
    }
    // Two halves so that frames cut across calls take the partial-frame path.
    let (a, b) = bytes.split_at(bytes.len() / 2);
    for part in [a, b] {
        events.clear();
        let res = conn.recv(part, &mut events);
        total += events.len();
        for ev in &events {
            if let Event::Data { id, data } = ev {
                conn.release(*id, data.len());
            }
            if let Event::StreamOpened { id, .. } = ev {
                let _ =
                    conn.send_headers(*id, &response_fields(200, &http::HeaderMap::new()), false);
                let _ = conn.send_data(*id, b"ok", false);
            }
        }
        let _ = conn.pending_output().len();
        conn.advance_output(conn.pending_output().len());
        if res.is_err() {
            break;
        }
    }
    // Exporting and re-importing any reachable state must work too.
    if let Ok(mut again) = Conn::import(conn.export()) {
        events.clear();
        let _ = again.recv(bytes, &mut events);
        total += events.len();
    }
    total
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod frame_tests;

#[cfg(test)]
#[path = "hpack_tests.rs"]
mod hpack_tests;

#[cfg(test)]
#[path = "conn_tests.rs"]
mod conn_tests;

#[cfg(test)]
#[path = "errors_tests.rs"]
mod errors_tests;

#[cfg(test)]
#[path = "export_tests.rs"]
mod export_tests;

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod fuzz_tests;

#[cfg(test)]
#[path = "harness_tests.rs"]
mod harness_tests;

#[cfg(test)]
#[path = "conformance_tests.rs"]
mod conformance_tests;

#[cfg(test)]
#[path = "conformance_server_tests.rs"]
mod conformance_server_tests;
