//! The codec's plain state: settings (ours and the peer's), configuration, and one
//! stream's state machine (RFC 9113 §5.1) with its two flow-control windows.
//!
//! Owns: values and their transitions. The connection (`conn`, `recv`) decides when a
//! transition happens; `export` serialises these types.

use super::Reason;
use super::Role;
use super::frame::{
    DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE, MAX_WINDOW, SETTINGS_ENABLE_CONNECT_PROTOCOL,
    SETTINGS_ENABLE_PUSH, SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE,
};
use crate::hbone::H2Settings;

/// One endpoint's SETTINGS (RFC 9113 §6.5.2); `Default` is the RFC's initial values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: u32,
    pub enable_push: bool,
    /// `None`: unlimited (never sent).
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: u32,
    pub max_frame_size: u32,
    /// `None`: unlimited (never sent).
    pub max_header_list_size: Option<u32>,
    pub enable_connect_protocol: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_table_size: 4096,
            enable_push: true,
            max_concurrent_streams: None,
            initial_window_size: 65_535,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: None,
            enable_connect_protocol: false,
        }
    }
}

impl Settings {
    /// Applies one received entry, checking its range. `from` is the role of the sender.
    pub(crate) fn apply(&mut self, from: Role, id: u16, value: u32) -> Result<(), Fault> {
        match id {
            SETTINGS_HEADER_TABLE_SIZE => self.header_table_size = value,
            SETTINGS_ENABLE_PUSH => match (value, from) {
                (0, _) => self.enable_push = false,
                (1, Role::Client) => self.enable_push = true,
                _ => {
                    return Err(Fault::new(
                        Reason::PROTOCOL_ERROR,
                        "SETTINGS_ENABLE_PUSH not 0 (or 1 from a client)",
                    ));
                }
            },
            SETTINGS_MAX_CONCURRENT_STREAMS => self.max_concurrent_streams = Some(value),
            SETTINGS_INITIAL_WINDOW_SIZE => {
                if value > MAX_WINDOW {
                    return Err(Fault::new(
                        Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                    ));
                }
                self.initial_window_size = value;
            }
            SETTINGS_MAX_FRAME_SIZE => {
                if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) {
                    return Err(Fault::new(
                        Reason::PROTOCOL_ERROR,
                        "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
                    ));
                }
                self.max_frame_size = value;
            }
            SETTINGS_MAX_HEADER_LIST_SIZE => self.max_header_list_size = Some(value),
            SETTINGS_ENABLE_CONNECT_PROTOCOL => match value {
                0 => self.enable_connect_protocol = false,
                1 => self.enable_connect_protocol = true,
                _ => {
                    return Err(Fault::new(
                        Reason::PROTOCOL_ERROR,
                        "SETTINGS_ENABLE_CONNECT_PROTOCOL not 0 or 1",
                    ));
                }
            },
            // Unknown settings are ignored (§6.5.2).
            _ => {}
        }
        Ok(())
    }

    /// Checks our own settings before sending them.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, u32)> {
        if self.initial_window_size > MAX_WINDOW {
            return Err(("SETTINGS_INITIAL_WINDOW_SIZE", self.initial_window_size));
        }
        if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&self.max_frame_size) {
            return Err(("SETTINGS_MAX_FRAME_SIZE", self.max_frame_size));
        }
        Ok(())
    }

    /// The entries to send to move the peer's view from `prev` to `self`.
    pub(crate) fn diff(&self, prev: &Settings) -> Vec<(u16, u32)> {
        let mut e = Vec::new();
        if self.header_table_size != prev.header_table_size {
            e.push((SETTINGS_HEADER_TABLE_SIZE, self.header_table_size));
        }
        if self.enable_push != prev.enable_push {
            e.push((SETTINGS_ENABLE_PUSH, u32::from(self.enable_push)));
        }
        if self.max_concurrent_streams != prev.max_concurrent_streams {
            // "Unlimited" cannot be sent back; the largest value is the closest.
            e.push((
                SETTINGS_MAX_CONCURRENT_STREAMS,
                self.max_concurrent_streams.unwrap_or(u32::MAX),
            ));
        }
        if self.initial_window_size != prev.initial_window_size {
            e.push((SETTINGS_INITIAL_WINDOW_SIZE, self.initial_window_size));
        }
        if self.max_frame_size != prev.max_frame_size {
            e.push((SETTINGS_MAX_FRAME_SIZE, self.max_frame_size));
        }
        if self.max_header_list_size != prev.max_header_list_size {
            e.push((
                SETTINGS_MAX_HEADER_LIST_SIZE,
                self.max_header_list_size.unwrap_or(u32::MAX),
            ));
        }
        if self.enable_connect_protocol != prev.enable_connect_protocol {
            e.push((
                SETTINGS_ENABLE_CONNECT_PROTOCOL,
                u32::from(self.enable_connect_protocol),
            ));
        }
        e
    }
}

/// How a codec behaves: the settings it advertises and its local limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What we send in our first SETTINGS.
    pub settings: Settings,
    /// Our connection-level receive window (raised from 65 535 by a WINDOW_UPDATE at start).
    pub connection_window: u32,
    /// At most this many streams we open at once (besides the peer's limit).
    pub max_send_streams: u32,
    /// Cap on our HPACK encoder's dynamic table (the peer's setting may be larger).
    pub encoder_table_size: u32,
    /// Cap on one received header block (HEADERS + CONTINUATION octets) before the
    /// connection is closed with ENHANCE_YOUR_CALM.
    pub max_header_block: u32,
    /// How many locally reset stream ids are remembered, so that frames the peer sent
    /// before it saw our RST_STREAM are ignored instead of failing the connection.
    pub reset_memory: u32,
}

impl Config {
    /// The configuration ztunnel uses for HBONE in `role`.
    pub fn hbone(role: Role, h: &H2Settings) -> Config {
        let settings = Settings {
            header_table_size: 4096,
            enable_push: false,
            max_concurrent_streams: match role {
                Role::Server => Some(h.server_max_streams),
                Role::Client => None,
            },
            initial_window_size: h.stream_window.min(MAX_WINDOW),
            max_frame_size: h
                .frame_size
                .clamp(DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE),
            max_header_list_size: Some(h.max_header_list_size),
            enable_connect_protocol: false,
        };
        Config {
            settings,
            connection_window: h.connection_window.min(MAX_WINDOW),
            max_send_streams: u32::try_from(h.client_max_streams).unwrap_or(u32::MAX),
            encoder_table_size: 4096,
            max_header_block: 256 * 1024,
            reset_memory: 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::hbone(Role::Server, &H2Settings::default())
    }
}

/// Where a stream is in RFC 9113 §5.1's life cycle (reserved states are never entered:
/// push is disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Idle,
    Open,
    /// We sent END_STREAM; the peer may still send.
    HalfClosedLocal,
    /// The peer sent END_STREAM; we may still send.
    HalfClosedRemote,
    Closed,
}

impl StreamState {
    /// After we send END_STREAM.
    pub(crate) fn send_end(self) -> StreamState {
        match self {
            StreamState::Open => StreamState::HalfClosedLocal,
            StreamState::HalfClosedRemote => StreamState::Closed,
            s => s,
        }
    }

    /// After the peer's END_STREAM.
    pub(crate) fn recv_end(self) -> StreamState {
        match self {
            StreamState::Open => StreamState::HalfClosedRemote,
            StreamState::HalfClosedLocal => StreamState::Closed,
            s => s,
        }
    }

    pub(crate) fn can_send(self) -> bool {
        matches!(self, StreamState::Open | StreamState::HalfClosedRemote)
    }

    pub(crate) fn can_recv(self) -> bool {
        matches!(self, StreamState::Open | StreamState::HalfClosedLocal)
    }
}

/// One live stream (Idle and Closed streams are not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stream {
    pub state: StreamState,
    /// What we may still send (may go negative after the peer lowers its initial window).
    pub send_window: i64,
    /// What the peer may still send.
    pub recv_window: i64,
    /// Consumed by the app, not yet returned to the peer in a WINDOW_UPDATE.
    pub recv_released: u32,
    /// Handed to the app as DATA, not yet released by it.
    pub recv_outstanding: u64,
    /// The request (server) or final response (client) head has been received.
    pub head_received: bool,
}

/// A protocol violation found while decoding: the code and what was wrong. Whether it is a
/// stream or a connection error is the caller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub code: Reason,
    pub detail: &'static str,
}

impl Fault {
    pub(crate) fn new(code: Reason, detail: &'static str) -> Fault {
        Fault { code, detail }
    }
}
