//! TLS 1.3 record protection after the handshake (RFC 8446 §5), the pure part.
//!
//! Owns: sealing application data into records and opening received records in place with the
//! traffic keys rustls hands over once its handshake is done (`KernelConnection`, the API
//! rustls made for kTLS), the per-record nonce (IV XOR sequence number), the inner content
//! type and padding, record size limits, and the post-handshake messages a TLS 1.3 peer may
//! send (KeyUpdate, NewSessionTicket) and alerts.
//!
//! Written by hand because measurement showed rustls's buffered API copies every byte two to
//! three times around the AES-GCM pass on the HBONE data path (record `Vec`s, its plaintext
//! queue, the caller's buffer: ≈ 30 % of a receiving shard's CPU at 5 Gb/s, bench/README.md),
//! and its unbuffered API copies through the same `Vec`s. Here a record is sealed where it
//! will be sent from and opened where it was received. The handshake, certificates, key
//! schedule and key updates stay with rustls; the AEAD is aws-lc-rs, as rustls uses it.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Outer record header length.
pub const HEADER: usize = 5;
/// Authentication tag length of every TLS 1.3 AEAD.
pub const TAG: usize = 16;
/// Largest plaintext in one record (2^14).
pub const MAX_PLAIN: usize = 16 * 1024;
/// Largest ciphertext a peer may send in one record (2^14 + 256, RFC 8446 §5.2).
pub const MAX_CIPHER: usize = MAX_PLAIN + 256;

/// Content types (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// Handshake message types that may follow a TLS 1.3 handshake.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// A record that cannot be accepted; each maps to the alert a peer is owed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of outer type {0} after the handshake (only application_data is allowed)")]
    UnexpectedType(u8),
    #[error("record of {0} bytes exceeds the 2^14 + 256 limit")]
    TooLong(usize),
    #[error("record failed authentication (bad_record_mac)")]
    BadMac,
    #[error("record has no content type (all padding)")]
    NoContentType,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unexpected handshake message type {0} after the handshake")]
    UnexpectedHandshake(u8),
    #[error("cipher suite {0} is not supported by the direct record layer")]
    Suite(String),
}

impl RecordError {
    /// The alert description to send before closing (RFC 8446 §6.2).
    pub fn alert(&self) -> u8 {
        match self {
            RecordError::UnexpectedType(_) | RecordError::UnexpectedHandshake(_) => 10,
            RecordError::TooLong(_) => 22,
            RecordError::BadMac => 20,
            RecordError::NoContentType | RecordError::Malformed(_) => 50,
            RecordError::Suite(_) => 80,
        }
    }
}

/// One direction's traffic key, IV and record sequence number.
pub struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("seq", &self.seq).finish()
    }
}

impl Keys {
    /// Keys from what rustls extracted, starting at record `seq`.
    pub fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Keys, RecordError> {
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(RecordError::Suite(
                    "not AES-GCM or ChaCha20-Poly1305".into(),
                ));
            }
        };
        let key = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| RecordError::Suite("key of the wrong length".into()))?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::Suite("IV of the wrong length".into()))?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// Records protected with these keys so far (the next record's sequence number).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn nonce(&self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Appends one record carrying `plain` (at most [`MAX_PLAIN`] bytes) of content type
    /// `typ` to `out`: header, plaintext, inner type, then encrypts in place and appends the
    /// tag. The only copy is `plain` into `out`.
    pub fn seal(&mut self, typ: u8, plain: &[u8], out: &mut bytes::BytesMut) {
        self.seal_parts(typ, &[plain], out)
    }

    /// [`Keys::seal`] of the concatenation of `parts` (an HTTP/2 frame header and its
    /// payload, say), copied once, straight into `out`.
    pub fn seal_parts(&mut self, typ: u8, parts: &[&[u8]], out: &mut bytes::BytesMut) {
        let plain_len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(plain_len <= MAX_PLAIN);
        let len = plain_len + 1 + TAG;
        out.reserve(HEADER + len);
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out.extend_from_slice(&header);
        let start = out.len();
        for p in parts {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(&[typ]);
        let nonce = self.nonce();
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start..])
            .expect("AES-GCM / ChaCha20 sealing of ≤ 2^14 bytes cannot fail");
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
    }

    /// Opens the record `rec` (header and ciphertext, exactly one record) in place. Returns
    /// its content type and the plaintext's length; the plaintext is `rec[HEADER..HEADER + n]`.
    pub fn open(&mut self, rec: &mut [u8]) -> Result<(u8, usize), RecordError> {
        let len = record_len(rec)?.ok_or(RecordError::Malformed("record"))?;
        if rec.len() != len || len < HEADER + TAG + 1 {
            return Err(RecordError::Malformed("record"));
        }
        let (header, body) = rec.split_at_mut(HEADER);
        let aad = Aad::from(<[u8; HEADER]>::try_from(&*header).expect("5 bytes"));
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, aad, body)
            .map_err(|_| RecordError::BadMac)?;
        self.seq += 1;
        // Strip the zero padding; the last non-zero byte is the content type.
        let end = plain
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(RecordError::NoContentType)?;
        if end > MAX_PLAIN {
            return Err(RecordError::TooLong(end));
        }
        Ok((plain[end], end))
    }
}

/// The full length (header included) of the record that starts `buf`, once its header is
/// there; checks the outer type and the length limit.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    if buf[0] != APPLICATION_DATA {
        return Err(RecordError::UnexpectedType(buf[0]));
    }
    if buf[1] != 3 {
        return Err(RecordError::Malformed("record version"));
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len > MAX_CIPHER {
        return Err(RecordError::TooLong(len));
    }
    Ok(Some(HEADER + len))
}

/// A handshake message that may follow a TLS 1.3 handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostHandshake<'a> {
    /// The peer switched its sending key; `update_requested`: it wants us to switch ours.
    KeyUpdate { update_requested: bool },
    /// A session ticket (the payload after type and length).
    NewSessionTicket(&'a [u8]),
}

/// Splits the plaintext of one handshake record into messages. A message split across
/// records is refused (no TLS 1.3 stack splits these short messages).
pub fn post_handshake(mut msgs: &[u8]) -> Result<Vec<PostHandshake<'_>>, RecordError> {
    let mut out = Vec::new();
    while !msgs.is_empty() {
        let [typ, a, b, c, rest @ ..] = msgs else {
            return Err(RecordError::Malformed("handshake message header"));
        };
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        if rest.len() < len {
            return Err(RecordError::Malformed(
                "handshake message split across records",
            ));
        }
        let (body, rest) = rest.split_at(len);
        match *typ {
            KEY_UPDATE => match body {
                [0] => out.push(PostHandshake::KeyUpdate {
                    update_requested: false,
                }),
                [1] => out.push(PostHandshake::KeyUpdate {
                    update_requested: true,
                }),
                _ => return Err(RecordError::Malformed("KeyUpdate")),
            },
            NEW_SESSION_TICKET => out.push(PostHandshake::NewSessionTicket(body)),
            t => return Err(RecordError::UnexpectedHandshake(t)),
        }
        msgs = rest;
    }
    Ok(out)
}

/// The KeyUpdate message we send: handshake type 24, length 1, `update_not_requested`.
pub const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

/// A close_notify alert (warning level).
pub const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// An alert's meaning for the reader: `Ok(())` for close_notify (a clean end of data),
/// otherwise the alert as an error message.
pub fn alert(body: &[u8]) -> Result<(), String> {
    match body {
        [_, 0] => Ok(()),
        [level, desc] => Err(format!(
            "peer sent TLS alert {desc} (level {level}){}",
            match desc {
                40 => ": handshake_failure",
                42 => ": bad_certificate",
                20 => ": bad_record_mac",
                80 => ": internal_error",
                _ => "",
            }
        )),
        _ => Err("malformed TLS alert".into()),
    }
}

/// Records a key may protect before it must be replaced: the cipher suite's confidentiality
/// limit (AES-GCM: 2^24.5 full records, RFC 8446 §5.5) with a margin.
pub fn key_update_after(limit: u64) -> u64 {
    limit.saturating_sub(limit / 16).max(1)
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
