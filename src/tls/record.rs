//! TLS 1.3 record protection after the handshake (RFC 8446 §5), the pure part.
//!
//! Owns: sealing application data into records and opening received records in place with the
//! traffic keys of the handshake (`tls::schedule` derives them from the secrets rustls logs), the per-record nonce (IV XOR sequence number) and the end of the
//! sequence numbers (no record once the next number would wrap, §5.3), the inner content type
//! and padding, the record size limits (2^14 + 256 bytes of ciphertext, 2^14 + 1 of inner
//! plaintext with its padding), the post-handshake messages a TLS 1.3 peer may send
//! (KeyUpdate — the last message of its record, request 0 or 1 — and NewSessionTicket), the
//! limits on what a peer may send without application data (`PeerLimits`, rustls's), alerts
//! as RFC 8446 §6 says to read them (close_notify and user_canceled are not errors, every
//! other alert is, whatever its level), and the alert each refused record is owed.
//!
//! Written by hand because measurement showed rustls's buffered API copies every byte two to
//! three times around the AES-GCM pass on the HBONE data path (record `Vec`s, its plaintext
//! queue, the caller's buffer: ≈ 30 % of a receiving shard's CPU at 5 Gb/s, bench/README.md),
//! and its unbuffered API copies through the same `Vec`s. Here a record is sealed where it
//! will be sent from and opened where it was received. The handshake and certificates stay
//! with rustls; the AEAD is aws-lc-rs, as rustls uses it.

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

/// Alert descriptions we send (RFC 8446 §6).
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;
/// user_canceled: a warning that is not an error (RFC 8446 §6.1).
const USER_CANCELED: u8 = 90;

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
    #[error(
        "record whose inner plaintext (content, type and padding) is {0} bytes, over the \
         2^14 + 1 limit"
    )]
    InnerTooLong(usize),
    #[error("record failed authentication (bad_record_mac)")]
    BadMac,
    #[error("record has no content type (all padding)")]
    NoContentType,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unexpected handshake message type {0} after the handshake")]
    UnexpectedHandshake(u8),
    #[error("handshake record of zero length")]
    EmptyHandshake,
    #[error("KeyUpdate followed by another message in its record (a key change must end a record)")]
    KeyUpdateNotLast,
    #[error("KeyUpdate with request {0} (only 0 and 1 exist)")]
    KeyUpdateValue(u8),
    #[error(
        "more than {} KeyUpdates without application data between them",
        PeerLimits::KEY_UPDATES
    )]
    TooManyKeyUpdates,
    #[error("more than {} warning alerts", PeerLimits::WARNING_ALERTS)]
    TooManyWarnings,
    #[error("alert of level {0} (only 1, warning, and 2, fatal, exist)")]
    AlertLevel(u8),
    #[error(
        "2^64 - 1 records under one traffic key: its sequence numbers are used up (the key \
         must be updated first)"
    )]
    SeqExhausted,
    #[error("cipher suite {0} is not supported by the direct record layer")]
    Suite(String),
}

impl RecordError {
    /// The alert to send before closing, level and description (RFC 8446 §6.2): fatal, except
    /// a close_notify when the peer's sequence numbers ran out (no fatal alert names that;
    /// rustls closes with close_notify there too).
    pub fn alert(&self) -> [u8; 2] {
        let desc = match self {
            RecordError::UnexpectedType(_)
            | RecordError::UnexpectedHandshake(_)
            | RecordError::NoContentType
            | RecordError::EmptyHandshake
            | RecordError::KeyUpdateNotLast
            | RecordError::TooManyKeyUpdates
            | RecordError::TooManyWarnings => UNEXPECTED_MESSAGE,
            RecordError::TooLong(_) | RecordError::InnerTooLong(_) => RECORD_OVERFLOW,
            RecordError::BadMac => BAD_RECORD_MAC,
            RecordError::Malformed(_) => DECODE_ERROR,
            RecordError::KeyUpdateValue(_) | RecordError::AlertLevel(_) => ILLEGAL_PARAMETER,
            RecordError::SeqExhausted => return CLOSE_NOTIFY,
            RecordError::Suite(_) => INTERNAL_ERROR,
        };
        [2, desc]
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
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::Suite("IV of the wrong length".into()))?;
        Keys::from_raw(alg, key.as_ref(), iv, seq)
    }

    /// Keys from a key and IV of `alg` (the key schedule's own derivation), starting at
    /// record `seq`.
    pub fn from_raw(
        alg: &'static aead::Algorithm,
        key: &[u8],
        iv: [u8; 12],
        seq: u64,
    ) -> Result<Keys, RecordError> {
        let key = UnboundKey::new(alg, key)
            .map_err(|_| RecordError::Suite("key of the wrong length".into()))?;
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
    /// tag. The only copy is `plain` into `out`. Fails, appending nothing, once this key's
    /// sequence numbers are used up (a nonce is never used twice; the caller updates the key
    /// long before: [`key_update_after`]).
    pub fn seal(
        &mut self,
        typ: u8,
        plain: &[u8],
        out: &mut bytes::BytesMut,
    ) -> Result<(), RecordError> {
        self.seal_parts(typ, &[plain], out)
    }

    /// [`Keys::seal`] of the concatenation of `parts` (an HTTP/2 frame header and its
    /// payload, say), copied once, straight into `out`.
    pub fn seal_parts(
        &mut self,
        typ: u8,
        parts: &[&[u8]],
        out: &mut bytes::BytesMut,
    ) -> Result<(), RecordError> {
        // RFC 8446 §5.3: sequence numbers must not wrap (the last one is never used).
        let next = self.seq.checked_add(1).ok_or(RecordError::SeqExhausted)?;
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
        self.seq = next;
        Ok(())
    }

    /// Opens the record `rec` (header and ciphertext, exactly one record) in place. Returns
    /// its content type and the plaintext's length; the plaintext is `rec[HEADER..HEADER + n]`.
    pub fn open(&mut self, rec: &mut [u8]) -> Result<(u8, usize), RecordError> {
        let len = record_len(rec)?.ok_or(RecordError::Malformed("record"))?;
        if rec.len() != len || len < HEADER + TAG + 1 {
            return Err(RecordError::Malformed("record"));
        }
        let next = self.seq.checked_add(1).ok_or(RecordError::SeqExhausted)?;
        let (header, body) = rec.split_at_mut(HEADER);
        let aad = Aad::from(<[u8; HEADER]>::try_from(&*header).expect("5 bytes"));
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, aad, body)
            .map_err(|_| RecordError::BadMac)?;
        self.seq = next;
        // RFC 8446 §5.4: the whole inner plaintext, padding included, is at most 2^14 + 1
        // bytes (checked once authenticated, as rustls does).
        if plain.len() > MAX_PLAIN + 1 {
            return Err(RecordError::InnerTooLong(plain.len()));
        }
        // Strip the zero padding; the last non-zero byte is the content type.
        let end = plain
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(RecordError::NoContentType)?;
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

/// The messages of one handshake record's plaintext, in order, without allocating. A record
/// of zero length is refused (RFC 8446 §5.1: no zero-length handshake fragments), and so is a
/// message split across records (no TLS 1.3 stack splits these short messages).
pub fn post_handshake(msgs: &[u8]) -> Result<Messages<'_>, RecordError> {
    if msgs.is_empty() {
        return Err(RecordError::EmptyHandshake);
    }
    Ok(Messages(msgs))
}

/// The messages of a handshake record ([`post_handshake`]); ends after the first error.
#[derive(Debug, Clone)]
pub struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = Result<PostHandshake<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(match next_message(self.0) {
            Ok((m, rest)) => {
                self.0 = rest;
                Ok(m)
            }
            Err(e) => {
                self.0 = &[];
                Err(e)
            }
        })
    }
}

/// The first message of `msgs`, and what follows it.
fn next_message(msgs: &[u8]) -> Result<(PostHandshake<'_>, &[u8]), RecordError> {
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
    let m = match *typ {
        KEY_UPDATE => {
            let &[request] = body else {
                return Err(RecordError::Malformed("KeyUpdate"));
            };
            // RFC 8446 §5.1: the messages before a key change must end at a record boundary;
            // the KeyUpdate ends its record (rustls: `check_aligned_handshake`).
            if !rest.is_empty() {
                return Err(RecordError::KeyUpdateNotLast);
            }
            match request {
                0 => PostHandshake::KeyUpdate {
                    update_requested: false,
                },
                1 => PostHandshake::KeyUpdate {
                    update_requested: true,
                },
                // RFC 8446 §4.6.3: any other value is illegal_parameter.
                v => return Err(RecordError::KeyUpdateValue(v)),
            }
        }
        NEW_SESSION_TICKET => PostHandshake::NewSessionTicket(body),
        t => return Err(RecordError::UnexpectedHandshake(t)),
    };
    Ok((m, rest))
}

/// What a peer may send without application data, as rustls limits it (rustls 0.23.46,
/// `src/common_state.rs`, `struct TemperCounters`): at most 32 KeyUpdates between two
/// application data records (`INITIAL_KEY_UPDATE_REQUESTS = 32`, "cf. BoringSSL
/// `kMaxKeyUpdates`", restored by `received_app_data`), and 4 warning alerts per connection
/// (`allowed_warning_alerts: 4`, BoringSSL's `kMaxWarningAlerts`). Every KeyUpdate costs a key
/// derivation (and one with update_requested an answer): without a cap a peer could keep us
/// deriving keys without ever sending data. Past a limit rustls fails without an alert; we
/// send unexpected_message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    key_updates: u8,
    warnings: u8,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            key_updates: Self::KEY_UPDATES,
            warnings: Self::WARNING_ALERTS,
        }
    }
}

impl PeerLimits {
    /// KeyUpdates a peer may send between two application data records.
    pub const KEY_UPDATES: u8 = 32;
    /// Warning alerts (user_canceled: the others are errors) a peer may send.
    pub const WARNING_ALERTS: u8 = 4;

    /// What is left: (KeyUpdates before the next application data, warning alerts).
    pub fn remaining(&self) -> (u8, u8) {
        (self.key_updates, self.warnings)
    }

    /// Limits with this much left (an imported connection's); None above the maximums.
    pub fn with_remaining(key_updates: u8, warnings: u8) -> Option<PeerLimits> {
        (key_updates <= Self::KEY_UPDATES && warnings <= Self::WARNING_ALERTS).then_some(
            PeerLimits {
                key_updates,
                warnings,
            },
        )
    }

    /// A KeyUpdate arrived.
    pub fn key_update(&mut self) -> Result<(), RecordError> {
        self.key_updates = self
            .key_updates
            .checked_sub(1)
            .ok_or(RecordError::TooManyKeyUpdates)?;
        Ok(())
    }

    /// An application data record arrived (one store: this is on every record's path).
    pub fn app_data(&mut self) {
        self.key_updates = Self::KEY_UPDATES;
    }

    /// A warning alert that is not an error arrived.
    pub fn warning_alert(&mut self) -> Result<(), RecordError> {
        self.warnings = self
            .warnings
            .checked_sub(1)
            .ok_or(RecordError::TooManyWarnings)?;
        Ok(())
    }
}

/// The KeyUpdate message we send: handshake type 24, length 1, `update_not_requested`.
pub const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

/// A close_notify alert (warning level).
pub const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// An alert, as the reader must take it (RFC 8446 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// close_notify, at either level: the peer sends nothing more (a clean end).
    CloseNotify,
    /// user_canceled: not an error; "should be followed by a close_notify" (§6.1).
    UserCanceled,
    /// Any other alert: an error alert "regardless of the AlertLevel in the message" (§6).
    Error { level: u8, description: u8 },
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (level, desc) = match *self {
            Alert::CloseNotify => (1, 0),
            Alert::UserCanceled => (1, USER_CANCELED),
            Alert::Error { level, description } => (level, description),
        };
        write!(
            f,
            "peer sent TLS alert {desc} (level {level}): {}",
            alert_name(desc)
        )
    }
}

/// Reads an alert record's plaintext: exactly one alert (RFC 8446 §5.1: alerts are neither
/// fragmented nor coalesced), of level warning (1) or fatal (2) — another level is
/// illegal_parameter, as rustls answers it.
pub fn alert(body: &[u8]) -> Result<Alert, RecordError> {
    let &[level, description] = body else {
        return Err(RecordError::Malformed("alert"));
    };
    if !matches!(level, 1 | 2) {
        return Err(RecordError::AlertLevel(level));
    }
    Ok(match description {
        0 => Alert::CloseNotify,
        USER_CANCELED => Alert::UserCanceled,
        description => Alert::Error { level, description },
    })
}

/// An alert description's name (RFC 8446 §6, RFC 8446's registry).
fn alert_name(desc: u8) -> &'static str {
    match desc {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "unknown alert",
    }
}

/// Records a key may protect before it must be replaced: the cipher suite's confidentiality
/// limit (AES-GCM: 2^24.5 full records, RFC 8446 §5.5) with a margin. The margin also keeps
/// every key far from the end of its sequence numbers (2^64 - 2^60 for a suite without a
/// limit), so the KeyUpdate and a last alert always have numbers left.
pub fn key_update_after(limit: u64) -> u64 {
    limit.saturating_sub(limit / 16).max(1)
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
