//! Export and import of a connection's complete state (hitless upgrades: the new process
//! continues the old one's HTTP/2 connections byte-exactly).
//!
//! Owns: [`ConnState`] and its compact byte encoding: a magic, a version octet, then every
//! field of `Conn` big-endian, byte strings length-prefixed. Import checks every invariant
//! the codec relies on (the bytes came from another process, maybe another build), so a
//! corrupt state is an error, never a panic or a misbehaving connection.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::conn::{Conn, PartialHeaders, Preface};
use super::frame::{MAX_STREAM_ID, MAX_WINDOW};
use super::hpack::{Decoder, Encoder, Table};
use super::state::{Config, Settings, Stream, StreamState};
use super::{Reason, Role};

const MAGIC: &[u8; 4] = b"RMH2";
const VERSION: u8 = 1;

/// Everything needed to continue a connection elsewhere: role, stream ids, every stream
/// with both windows, connection windows, both sides' settings (and which of ours are
/// unacknowledged), both HPACK tables, the pending PING, GOAWAY state, a partly received
/// header block, buffered input (a partial frame) and unflushed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnState {
    pub(crate) role: Role,
    pub(crate) config: Config,
    pub(crate) preface: Preface,
    pub(crate) failed: Option<Reason>,
    pub(crate) next_local_id: u32,
    pub(crate) last_peer_id: u32,
    pub(crate) local: Settings,
    pub(crate) local_pending: Vec<Settings>,
    pub(crate) peer: Settings,
    pub(crate) conn_send_window: i64,
    pub(crate) conn_recv_window: i64,
    pub(crate) conn_recv_released: u32,
    pub(crate) conn_recv_outstanding: u64,
    pub(crate) streams: Vec<(u32, Stream)>,
    pub(crate) reset_recently: Vec<u32>,
    pub(crate) decoder: Decoder,
    pub(crate) encoder: Encoder,
    pub(crate) ping_out: Option<[u8; 8]>,
    pub(crate) goaway_sent: Option<u32>,
    pub(crate) goaway_recv: Option<u32>,
    pub(crate) partial: Option<PartialHeaders>,
    pub(crate) rx: Vec<u8>,
    pub(crate) tx: Vec<u8>,
}

/// Why exported bytes could not become a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not an exported HTTP/2 connection state (bad magic)")]
    Magic,
    #[error(
        "exported HTTP/2 state has version {0}; this build reads version {VERSION} (export and import with compatible builds)"
    )]
    Version(u8),
    #[error("exported HTTP/2 state is truncated or corrupt: {0}")]
    Corrupt(&'static str),
}

impl ConnState {
    pub fn role(&self) -> Role {
        self.role
    }

    /// Received octets not yet processed (a partial frame).
    pub fn buffered_input(&self) -> usize {
        self.rx.len()
    }

    /// Output octets not yet written to the peer.
    pub fn pending_output(&self) -> usize {
        self.tx.len()
    }

    /// Live streams.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// The encoding to hand to another process.
    pub fn encode(&self) -> Vec<u8> {
        let mut w =
            Vec::with_capacity(256 + self.rx.len() + self.tx.len() + 48 * self.streams.len());
        w.extend_from_slice(MAGIC);
        w.push(VERSION);
        w.push(match self.role {
            Role::Client => 0,
            Role::Server => 1,
        });
        put_config(&mut w, &self.config);
        w.push(match self.preface {
            Preface::AwaitMagic => 0,
            Preface::AwaitSettings => 1,
            Preface::Ready => 2,
        });
        put_opt(&mut w, self.failed.map(|r| r.0));
        put32(&mut w, self.next_local_id);
        put32(&mut w, self.last_peer_id);
        put_settings(&mut w, &self.local);
        put32(&mut w, self.local_pending.len() as u32);
        for s in &self.local_pending {
            put_settings(&mut w, s);
        }
        put_settings(&mut w, &self.peer);
        put64(&mut w, self.conn_send_window as u64);
        put64(&mut w, self.conn_recv_window as u64);
        put32(&mut w, self.conn_recv_released);
        put64(&mut w, self.conn_recv_outstanding);
        put32(&mut w, self.streams.len() as u32);
        for (id, s) in &self.streams {
            put32(&mut w, *id);
            w.push(match s.state {
                StreamState::Idle => 0,
                StreamState::Open => 1,
                StreamState::HalfClosedLocal => 2,
                StreamState::HalfClosedRemote => 3,
                StreamState::Closed => 4,
            });
            put64(&mut w, s.send_window as u64);
            put64(&mut w, s.recv_window as u64);
            put32(&mut w, s.recv_released);
            put64(&mut w, s.recv_outstanding);
            w.push(u8::from(s.head_received));
        }
        put32(&mut w, self.reset_recently.len() as u32);
        for id in &self.reset_recently {
            put32(&mut w, *id);
        }
        put_table(&mut w, &self.decoder.table);
        put32(&mut w, self.decoder.limit as u32);
        w.push(u8::from(self.decoder.must_update));
        put_table(&mut w, &self.encoder.table);
        put32(&mut w, self.encoder.cap as u32);
        match self.encoder.pending {
            Some((min, fin)) => {
                w.push(1);
                put32(&mut w, min as u32);
                put32(&mut w, fin as u32);
            }
            None => w.push(0),
        }
        match self.ping_out {
            Some(p) => {
                w.push(1);
                w.extend_from_slice(&p);
            }
            None => w.push(0),
        }
        put_opt(&mut w, self.goaway_sent);
        put_opt(&mut w, self.goaway_recv);
        match &self.partial {
            Some(p) => {
                w.push(1);
                put32(&mut w, p.id);
                w.push(u8::from(p.end_stream));
                w.push(u8::from(p.self_dependent));
                put_bytes(&mut w, &p.block);
            }
            None => w.push(0),
        }
        put_bytes(&mut w, &self.rx);
        put_bytes(&mut w, &self.tx);
        w
    }

    /// Reads an encoding made by [`ConnState::encode`].
    pub fn decode(b: &[u8]) -> Result<ConnState, ImportError> {
        let mut r = Reader { b };
        if r.take(4)? != MAGIC {
            return Err(ImportError::Magic);
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(ImportError::Version(v));
        }
        let role = match r.u8()? {
            0 => Role::Client,
            1 => Role::Server,
            _ => return Err(ImportError::Corrupt("role")),
        };
        let config = get_config(&mut r)?;
        let preface = match r.u8()? {
            0 => Preface::AwaitMagic,
            1 => Preface::AwaitSettings,
            2 => Preface::Ready,
            _ => return Err(ImportError::Corrupt("preface state")),
        };
        let failed = r.opt32()?.map(Reason);
        let next_local_id = r.u32()?;
        let last_peer_id = r.u32()?;
        let local = get_settings(&mut r)?;
        let n = r.count(16)?;
        let mut local_pending = Vec::with_capacity(n);
        for _ in 0..n {
            local_pending.push(get_settings(&mut r)?);
        }
        let peer = get_settings(&mut r)?;
        let conn_send_window = r.u64()? as i64;
        let conn_recv_window = r.u64()? as i64;
        let conn_recv_released = r.u32()?;
        let conn_recv_outstanding = r.u64()?;
        let n = r.count(34)?;
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.u32()?;
            let state = match r.u8()? {
                1 => StreamState::Open,
                2 => StreamState::HalfClosedLocal,
                3 => StreamState::HalfClosedRemote,
                _ => return Err(ImportError::Corrupt("stream state")),
            };
            let s = Stream {
                state,
                send_window: r.u64()? as i64,
                recv_window: r.u64()? as i64,
                recv_released: r.u32()?,
                recv_outstanding: r.u64()?,
                head_received: r.bool()?,
            };
            streams.push((id, s));
        }
        let n = r.count(4)?;
        let mut reset_recently = Vec::with_capacity(n);
        for _ in 0..n {
            reset_recently.push(r.u32()?);
        }
        let table = get_table(&mut r)?;
        let decoder = Decoder {
            table,
            limit: r.u32()? as usize,
            must_update: r.bool()?,
        };
        let table = get_table(&mut r)?;
        let cap = r.u32()? as usize;
        let pending = if r.bool()? {
            Some((r.u32()? as usize, r.u32()? as usize))
        } else {
            None
        };
        let encoder = Encoder {
            table,
            cap,
            pending,
        };
        let ping_out = if r.bool()? {
            let p: [u8; 8] = r
                .take(8)?
                .try_into()
                .map_err(|_| ImportError::Corrupt("ping"))?;
            Some(p)
        } else {
            None
        };
        let goaway_sent = r.opt32()?;
        let goaway_recv = r.opt32()?;
        let partial = if r.bool()? {
            Some(PartialHeaders {
                id: r.u32()?,
                end_stream: r.bool()?,
                self_dependent: r.bool()?,
                block: BytesMut::from(r.bytes()?),
            })
        } else {
            None
        };
        let rx = r.bytes()?.to_vec();
        let tx = r.bytes()?.to_vec();
        if !r.b.is_empty() {
            return Err(ImportError::Corrupt("trailing octets"));
        }
        Ok(ConnState {
            role,
            config,
            preface,
            failed,
            next_local_id,
            last_peer_id,
            local,
            local_pending,
            peer,
            conn_send_window,
            conn_recv_window,
            conn_recv_released,
            conn_recv_outstanding,
            streams,
            reset_recently,
            decoder,
            encoder,
            ping_out,
            goaway_sent,
            goaway_recv,
            partial,
            rx,
            tx,
        })
    }
}

impl Conn {
    /// A copy of the complete state; the connection carries on. To hand the connection
    /// over, stop reading and writing, export, and let the new owner import.
    pub fn export(&self) -> ConnState {
        ConnState {
            role: self.role,
            config: self.config.clone(),
            preface: self.preface,
            failed: self.failed,
            next_local_id: self.next_local_id,
            last_peer_id: self.last_peer_id,
            local: self.local,
            local_pending: self.local_pending.iter().copied().collect(),
            peer: self.peer,
            conn_send_window: self.conn_send_window,
            conn_recv_window: self.conn_recv_window,
            conn_recv_released: self.conn_recv_released,
            conn_recv_outstanding: self.conn_recv_outstanding,
            streams: self
                .streams
                .iter()
                .map(|(&id, s)| (id, s.clone()))
                .collect(),
            reset_recently: self.reset_recently.iter().copied().collect(),
            decoder: self.decoder.clone(),
            encoder: self.encoder.clone(),
            ping_out: self.ping_out,
            goaway_sent: self.goaway_sent,
            goaway_recv: self.goaway_recv,
            partial: self.partial.clone(),
            rx: self.rx.to_vec(),
            tx: self.tx.to_vec(),
        }
    }

    /// Continues a connection from an exported state, after checking its invariants.
    pub fn import(st: ConnState) -> Result<Conn, ImportError> {
        validate(&st)?;
        let role = st.role;
        let is_local = |id: u32| (id % 2 == 1) == (role == Role::Client);
        let local_active = st.streams.iter().filter(|(id, _)| is_local(*id)).count() as u32;
        let peer_active = st.streams.len() as u32 - local_active;
        let mut conn = Conn {
            role,
            config: st.config,
            preface: st.preface,
            failed: st.failed,
            next_local_id: st.next_local_id,
            last_peer_id: st.last_peer_id,
            local: st.local,
            local_pending: st.local_pending.into_iter().collect::<VecDeque<_>>(),
            peer: st.peer,
            conn_send_window: st.conn_send_window,
            conn_recv_window: st.conn_recv_window,
            conn_recv_released: st.conn_recv_released,
            conn_recv_outstanding: st.conn_recv_outstanding,
            streams: st.streams.into_iter().collect::<BTreeMap<_, _>>(),
            reset_recently: st.reset_recently.into_iter().collect(),
            decoder: st.decoder,
            encoder: st.encoder,
            ping_out: st.ping_out,
            goaway_sent: st.goaway_sent,
            goaway_recv: st.goaway_recv,
            partial: st.partial,
            rx: BytesMut::from(&st.rx[..]),
            tx: BytesMut::from(&st.tx[..]),
            local_active,
            peer_active,
            scratch: Vec::new(),
        };
        conn.refresh_local_limits();
        Ok(conn)
    }
}

fn validate(st: &ConnState) -> Result<(), ImportError> {
    let bad = |what| Err(ImportError::Corrupt(what));
    let client = st.role == Role::Client;
    let is_local = |id: u32| (id % 2 == 1) == client;
    if st.preface == Preface::AwaitMagic && client {
        return bad("a client does not await the client preface");
    }
    if st.next_local_id == 0 || !is_local(st.next_local_id) || st.next_local_id > MAX_STREAM_ID + 2
    {
        return bad("next stream id");
    }
    if st.last_peer_id > MAX_STREAM_ID || (st.last_peer_id != 0 && is_local(st.last_peer_id)) {
        return bad("last peer stream id");
    }
    for s in [&st.local, &st.peer].into_iter().chain(&st.local_pending) {
        if s.initial_window_size > MAX_WINDOW
            || !(super::frame::DEFAULT_MAX_FRAME_SIZE..=super::frame::MAX_MAX_FRAME_SIZE)
                .contains(&s.max_frame_size)
        {
            return bad("settings out of range");
        }
    }
    let window = |w: i64| (-i64::from(MAX_WINDOW)..=i64::from(MAX_WINDOW)).contains(&w);
    if !window(st.conn_send_window) || !window(st.conn_recv_window) {
        return bad("connection window");
    }
    if st.config.connection_window > MAX_WINDOW {
        return bad("configured connection window");
    }
    let mut prev = 0;
    for (id, s) in &st.streams {
        let seen = if is_local(*id) {
            *id < st.next_local_id
        } else {
            *id <= st.last_peer_id
        };
        if *id == 0 || *id <= prev || !seen {
            return bad("stream id");
        }
        prev = *id;
        if !window(s.send_window) || !window(s.recv_window) {
            return bad("stream window");
        }
    }
    if st.decoder.table.max_size() > st.decoder.limit.max(4096)
        || st.encoder.table.max_size() > st.encoder.cap.max(4096)
    {
        return bad("HPACK table size");
    }
    if let Some((min, fin)) = st.encoder.pending
        && (min > fin || fin != st.encoder.table.max_size())
    {
        return bad("HPACK pending size update");
    }
    if let Some(p) = &st.partial
        && (p.id == 0 || p.block.len() > st.config.max_header_block as usize)
    {
        return bad("partial header block");
    }
    Ok(())
}

fn put32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_be_bytes());
}

fn put64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_be_bytes());
}

fn put_opt(w: &mut Vec<u8>, v: Option<u32>) {
    match v {
        Some(v) => {
            w.push(1);
            put32(w, v);
        }
        None => w.push(0),
    }
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put32(w, b.len() as u32);
    w.extend_from_slice(b);
}

fn put_settings(w: &mut Vec<u8>, s: &Settings) {
    put32(w, s.header_table_size);
    w.push(u8::from(s.enable_push));
    put_opt(w, s.max_concurrent_streams);
    put32(w, s.initial_window_size);
    put32(w, s.max_frame_size);
    put_opt(w, s.max_header_list_size);
    w.push(u8::from(s.enable_connect_protocol));
}

fn get_settings(r: &mut Reader<'_>) -> Result<Settings, ImportError> {
    Ok(Settings {
        header_table_size: r.u32()?,
        enable_push: r.bool()?,
        max_concurrent_streams: r.opt32()?,
        initial_window_size: r.u32()?,
        max_frame_size: r.u32()?,
        max_header_list_size: r.opt32()?,
        enable_connect_protocol: r.bool()?,
    })
}

fn put_config(w: &mut Vec<u8>, c: &Config) {
    put_settings(w, &c.settings);
    put32(w, c.connection_window);
    put32(w, c.max_send_streams);
    put32(w, c.encoder_table_size);
    put32(w, c.max_header_block);
    put32(w, c.reset_memory);
}

fn get_config(r: &mut Reader<'_>) -> Result<Config, ImportError> {
    Ok(Config {
        settings: get_settings(r)?,
        connection_window: r.u32()?,
        max_send_streams: r.u32()?,
        encoder_table_size: r.u32()?,
        max_header_block: r.u32()?,
        reset_memory: r.u32()?,
    })
}

fn put_table(w: &mut Vec<u8>, t: &Table) {
    put32(w, t.max_size() as u32);
    put32(w, t.len() as u32);
    for (n, v) in t.entries() {
        put_bytes(w, n);
        put_bytes(w, v);
    }
}

fn get_table(r: &mut Reader<'_>) -> Result<Table, ImportError> {
    let max = r.u32()? as usize;
    let n = r.count(8)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let name = Bytes::copy_from_slice(r.bytes()?);
        let value = Bytes::copy_from_slice(r.bytes()?);
        entries.push((name, value));
    }
    Table::from_parts(entries, max).ok_or(ImportError::Corrupt("HPACK table over its size"))
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImportError> {
        if self.b.len() < n {
            return Err(ImportError::Corrupt("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }

    fn u8(&mut self) -> Result<u8, ImportError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, ImportError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ImportError::Corrupt("boolean")),
        }
    }

    fn u32(&mut self) -> Result<u32, ImportError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ImportError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn opt32(&mut self) -> Result<Option<u32>, ImportError> {
        Ok(if self.bool()? {
            Some(self.u32()?)
        } else {
            None
        })
    }

    fn bytes(&mut self) -> Result<&'a [u8], ImportError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A count of elements at least `min_size` octets each, checked against what is left
    /// (so a corrupt count cannot make us allocate much).
    fn count(&mut self, min_size: usize) -> Result<usize, ImportError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size) > self.b.len() {
            return Err(ImportError::Corrupt("element count larger than the data"));
        }
        Ok(n)
    }
}
