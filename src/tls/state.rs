//! A direct-record-layer connection's state in transit between processes (hitless upgrades):
//! what the next process needs to go on protecting and opening records byte-exactly.
//!
//! Owns: [`TlsState`] and its byte encoding (a magic, a version octet, then the fields
//! big-endian, byte strings length-prefixed) and the checks on import: the bytes came from
//! another process, perhaps another build, so anything malformed is an error, never a panic.

use super::record::PeerLimits;
use super::schedule::{ScheduleError, Suite, TrafficSecret};

const MAGIC: &[u8; 4] = b"RMTL";
const VERSION: u8 = 1;
/// More than any buffer a connection holds (its send queue is bounded at 256 KiB, received
/// records at a few 100 KiB): a larger length is corruption, not data.
const MAX_BYTES: usize = 64 << 20;

/// Everything a TLS 1.3 connection past its handshake is, on our side: both directions'
/// traffic secrets and sequence numbers, the key-update and close state, and the bytes in
/// flight inside the process (ciphertext received and not yet opened, plaintext opened and
/// not yet read, records sealed and not yet sent).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsState {
    pub client: bool,
    pub tx_secret: TrafficSecret,
    pub tx_seq: u64,
    pub rx_secret: TrafficSecret,
    pub rx_seq: u64,
    /// Records one key seals before we update it.
    pub rekey_after: u64,
    /// The peer asked for a KeyUpdate we have not sent yet.
    pub key_update_owed: bool,
    /// close_notify received.
    pub read_closed: bool,
    /// Our close_notify (or an alert) is sealed.
    pub close_sent: bool,
    pub limits: PeerLimits,
    /// Received ciphertext not yet opened (whole and partial records).
    pub rx: Vec<u8>,
    /// Opened plaintext the reader has not taken.
    pub plain: Vec<u8>,
    /// Sealed records not yet on the wire: sent first by the importer.
    pub tx: Vec<u8>,
    /// The peer's certificate chain (DER), as the handshake verified it.
    pub peer_certs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("client", &self.client)
            .field("suite", &self.tx_secret.suite())
            .field("tx_seq", &self.tx_seq)
            .field("rx_seq", &self.rx_seq)
            .field("rx", &self.rx.len())
            .field("plain", &self.plain.len())
            .field("tx", &self.tx.len())
            .finish_non_exhaustive()
    }
}

/// Why exported bytes are not a TLS state this build can continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("not an exported TLS state (bad magic)")]
    Magic,
    #[error(
        "exported TLS state has version {0}; this build reads version {VERSION} (roll between compatible builds)"
    )]
    Version(u8),
    #[error("exported TLS state is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("exported TLS state names cipher suite {0:#06x}, which this build does not speak")]
    Suite(u16),
    #[error("exported TLS state: {0}")]
    Secret(#[from] ScheduleError),
}

impl TlsState {
    /// The state as bytes (secrets included: pass them only to the next process, over the
    /// hand-over socket, never to a file).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(
            128 + self.rx.len() + self.plain.len() + self.tx.len() + 1500 * self.peer_certs.len(),
        );
        w.extend_from_slice(MAGIC);
        w.push(VERSION);
        w.push(u8::from(self.client));
        w.extend_from_slice(&self.tx_secret.suite().code().to_be_bytes());
        put_bytes(&mut w, self.tx_secret.bytes());
        w.extend_from_slice(&self.tx_seq.to_be_bytes());
        put_bytes(&mut w, self.rx_secret.bytes());
        w.extend_from_slice(&self.rx_seq.to_be_bytes());
        w.extend_from_slice(&self.rekey_after.to_be_bytes());
        w.push(
            u8::from(self.key_update_owed)
                | u8::from(self.read_closed) << 1
                | u8::from(self.close_sent) << 2,
        );
        let (k, a) = self.limits.remaining();
        w.extend_from_slice(&[k, a]);
        put_bytes(&mut w, &self.rx);
        put_bytes(&mut w, &self.plain);
        put_bytes(&mut w, &self.tx);
        w.extend_from_slice(&(self.peer_certs.len() as u32).to_be_bytes());
        for c in &self.peer_certs {
            put_bytes(&mut w, c);
        }
        w
    }

    /// Reads what [`TlsState::encode`] wrote, checking every field.
    pub fn decode(b: &[u8]) -> Result<TlsState, StateError> {
        let mut r = Reader(b);
        if r.take(4)? != MAGIC {
            return Err(StateError::Magic);
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(StateError::Version(v));
        }
        let client = r.bool()?;
        let code = r.u16()?;
        let suite = Suite::from_code(code).ok_or(StateError::Suite(code))?;
        let tx_secret = TrafficSecret::new(suite, r.bytes()?)?;
        let tx_seq = r.u64()?;
        let rx_secret = TrafficSecret::new(suite, r.bytes()?)?;
        let rx_seq = r.u64()?;
        let rekey_after = r.u64()?;
        let flags = r.u8()?;
        if flags & !0b111 != 0 {
            return Err(StateError::Corrupt("unknown flags"));
        }
        let limits = PeerLimits::with_remaining(r.u8()?, r.u8()?)
            .ok_or(StateError::Corrupt("peer limits above their maximum"))?;
        let rx = r.bytes()?.to_vec();
        let plain = r.bytes()?.to_vec();
        let tx = r.bytes()?.to_vec();
        let n = r.u32()? as usize;
        if n > 16 {
            return Err(StateError::Corrupt("more than 16 peer certificates"));
        }
        let mut peer_certs = Vec::with_capacity(n);
        for _ in 0..n {
            peer_certs.push(r.bytes()?.to_vec());
        }
        if !r.0.is_empty() {
            return Err(StateError::Corrupt("trailing bytes"));
        }
        Ok(TlsState {
            client,
            tx_secret,
            tx_seq,
            rx_secret,
            rx_seq,
            rekey_after,
            key_update_owed: flags & 1 != 0,
            read_closed: flags & 2 != 0,
            close_sent: flags & 4 != 0,
            limits,
            rx,
            plain,
            tx,
            peer_certs,
        })
    }
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    w.extend_from_slice(&(b.len() as u32).to_be_bytes());
    w.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Corrupt("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(StateError::Corrupt("a flag that is neither 0 nor 1")),
        }
    }

    fn u16(&mut self) -> Result<u16, StateError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let n = self.u32()? as usize;
        if n > MAX_BYTES {
            return Err(StateError::Corrupt("a byte string longer than 64 MiB"));
        }
        self.take(n)
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
