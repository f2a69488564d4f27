//! An HBONE connection in transit to the next process (hitless upgrades): the codec's and
//! the TLS record layer's states and every tunnel's bytes in flight, as versioned bytes.
//!
//! Owns: [`LinkState`], [`TunnelState`] and their encoding (magic, version, the codec's and
//! TLS's own encodings length-prefixed, then the tunnels); decoding checks everything (the
//! bytes come from another process, maybe another build).

use crate::hbone::h2;
use crate::tls::state::TlsState;

const MAGIC: &[u8; 4] = b"RMLK";
const VERSION: u8 = 2;

/// One tunnel of an exported connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelState {
    pub id: u32,
    pub established: bool,
    pub app_eof: bool,
    pub end_sent: bool,
    pub peer_end: bool,
    pub app_shut: bool,
    /// Received from the peer, not yet written to the app.
    pub to_app: Vec<u8>,
    /// Leading bytes of `to_app` already released to the codec and counted (the previous
    /// process's socket had queued them); the rest is unreleased.
    pub to_app_released: u64,
    /// Read from the app, not yet sent (and what the app socket had received ahead).
    pub from_app: Vec<u8>,
    /// Bytes carried so far each way (for the access log's totals).
    pub sent: u64,
    pub received: u64,
    /// The proxy's bookkeeping for the tunnel (opaque here).
    pub meta: Vec<u8>,
}

/// A whole HBONE connection in transit to the next process: codec, TLS, tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub conn: h2::ConnState,
    pub tls: TlsState,
    pub tunnels: Vec<TunnelState>,
}

/// Why bytes are not a connection this build can continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("not an exported HBONE connection (bad magic)")]
    Magic,
    #[error("exported HBONE connection has version {0}; this build reads version {VERSION}")]
    Version(u8),
    #[error("exported HBONE connection is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("exported HTTP/2 state: {0}")]
    Conn(#[from] h2::ImportError),
    #[error("exported TLS state: {0}")]
    Tls(#[from] crate::tls::state::StateError),
}

impl LinkState {
    /// The state as bytes (TLS secrets included: for the hand-over socket only).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(MAGIC);
        w.push(VERSION);
        put(&mut w, &self.conn.encode());
        put(&mut w, &self.tls.encode());
        w.extend_from_slice(&(self.tunnels.len() as u32).to_be_bytes());
        for t in &self.tunnels {
            w.extend_from_slice(&t.id.to_be_bytes());
            w.push(
                u8::from(t.established)
                    | u8::from(t.app_eof) << 1
                    | u8::from(t.end_sent) << 2
                    | u8::from(t.peer_end) << 3
                    | u8::from(t.app_shut) << 4,
            );
            put(&mut w, &t.to_app);
            w.extend_from_slice(&t.to_app_released.to_be_bytes());
            put(&mut w, &t.from_app);
            w.extend_from_slice(&t.sent.to_be_bytes());
            w.extend_from_slice(&t.received.to_be_bytes());
            put(&mut w, &t.meta);
        }
        w
    }

    /// Reads what [`LinkState::encode`] wrote.
    pub fn decode(b: &[u8]) -> Result<LinkState, StateError> {
        let mut r = b;
        if take(&mut r, 4)? != MAGIC {
            return Err(StateError::Magic);
        }
        let v = take(&mut r, 1)?[0];
        if v != VERSION {
            return Err(StateError::Version(v));
        }
        let conn = h2::ConnState::decode(get(&mut r)?)?;
        let tls = TlsState::decode(get(&mut r)?)?;
        let n = u32_at(&mut r)? as usize;
        if n > 1 << 16 {
            return Err(StateError::Corrupt("more than 65536 tunnels"));
        }
        let mut tunnels = Vec::with_capacity(n);
        for _ in 0..n {
            let id = u32_at(&mut r)?;
            let f = take(&mut r, 1)?[0];
            if f & !0x1f != 0 {
                return Err(StateError::Corrupt("unknown tunnel flags"));
            }
            let to_app = get(&mut r)?.to_vec();
            let to_app_released = u64_at(&mut r)?;
            if to_app_released > to_app.len() as u64 {
                return Err(StateError::Corrupt("more bytes released than held"));
            }
            let from_app = get(&mut r)?.to_vec();
            let sent = u64_at(&mut r)?;
            let received = u64_at(&mut r)?;
            let meta = get(&mut r)?.to_vec();
            tunnels.push(TunnelState {
                id,
                established: f & 1 != 0,
                app_eof: f & 2 != 0,
                end_sent: f & 4 != 0,
                peer_end: f & 8 != 0,
                app_shut: f & 16 != 0,
                to_app,
                to_app_released,
                from_app,
                sent,
                received,
                meta,
            });
        }
        if !r.is_empty() {
            return Err(StateError::Corrupt("trailing bytes"));
        }
        Ok(LinkState { conn, tls, tunnels })
    }
}

fn put(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_be_bytes());
    w.extend_from_slice(b);
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], StateError> {
    if r.len() < n {
        return Err(StateError::Corrupt("truncated"));
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Ok(a)
}

fn get<'a>(r: &mut &'a [u8]) -> Result<&'a [u8], StateError> {
    let n = u32_at(r)? as usize;
    take(r, n)
}

fn u32_at(r: &mut &[u8]) -> Result<u32, StateError> {
    let mut a = [0u8; 4];
    a.copy_from_slice(take(r, 4)?);
    Ok(u32::from_be_bytes(a))
}

fn u64_at(r: &mut &[u8]) -> Result<u64, StateError> {
    let mut a = [0u8; 8];
    a.copy_from_slice(take(r, 8)?);
    Ok(u64::from_be_bytes(a))
}
