//! The TLS 1.3 traffic-key schedule after the handshake (RFC 8446 §7.1–7.3), the pure part:
//! application traffic secrets, the record keys and IVs derived from them, and KeyUpdate's
//! next-generation secret.
//!
//! Owns: `HKDF-Expand-Label` over the suite's hash (aws-lc-rs, as rustls uses it) and the
//! secrets' lifetime (wiped on drop). Why not rustls's `KernelConnection`: it derives the next
//! keys but never shows its secrets, so a connection whose keys rustls holds cannot be moved
//! to another process (hitless upgrades) and go on updating its keys there. The secrets come
//! from the handshake through rustls's `KeyLog` (`tls::capture`), and a test checks every
//! derivation here against rustls's own.

use aws_lc_rs::{aead, hkdf};
use zeroize::Zeroizing;

use super::record::{Keys, RecordError};

/// The TLS 1.3 cipher suites HBONE peers negotiate (RFC 8446 §B.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Aes128GcmSha256,
    Aes256GcmSha384,
    Chacha20Poly1305Sha256,
}

impl Suite {
    /// The suite rustls negotiated, if it is one of ours.
    pub fn from_rustls(s: rustls::CipherSuite) -> Option<Suite> {
        match s {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128GcmSha256),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256GcmSha384),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
                Some(Suite::Chacha20Poly1305Sha256)
            }
            _ => None,
        }
    }

    /// The IANA code point (stable across versions: what an export carries).
    pub fn code(self) -> u16 {
        match self {
            Suite::Aes128GcmSha256 => 0x1301,
            Suite::Aes256GcmSha384 => 0x1302,
            Suite::Chacha20Poly1305Sha256 => 0x1303,
        }
    }

    /// The suite of an IANA code point.
    pub fn from_code(c: u16) -> Option<Suite> {
        [
            Suite::Aes128GcmSha256,
            Suite::Aes256GcmSha384,
            Suite::Chacha20Poly1305Sha256,
        ]
        .into_iter()
        .find(|s| s.code() == c)
    }

    /// Length of the suite's hash, and so of its secrets.
    pub fn hash_len(self) -> usize {
        match self {
            Suite::Aes256GcmSha384 => 48,
            _ => 32,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Suite::Aes128GcmSha256 => 16,
            _ => 32,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256GcmSha384 => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }
}

/// Errors building a schedule from what a handshake or an export gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "a traffic secret of {got} bytes for {suite:?} (needs {want}): the handshake's key log or the exported state is wrong"
    )]
    SecretLength {
        suite: Suite,
        got: usize,
        want: usize,
    },
    #[error("record keys: {0}")]
    Keys(#[from] RecordError),
}

/// One direction's application traffic secret (`[sender]_application_traffic_secret_N`).
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficSecret {
    suite: Suite,
    secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for TrafficSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficSecret")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl TrafficSecret {
    /// A secret of `suite` (its length is checked).
    pub fn new(suite: Suite, secret: &[u8]) -> Result<TrafficSecret, ScheduleError> {
        if secret.len() != suite.hash_len() {
            return Err(ScheduleError::SecretLength {
                suite,
                got: secret.len(),
                want: suite.hash_len(),
            });
        }
        Ok(TrafficSecret {
            suite,
            secret: Zeroizing::new(secret.to_vec()),
        })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The secret's bytes (for an export to the next process only).
    pub fn bytes(&self) -> &[u8] {
        &self.secret
    }

    /// The next generation (RFC 8446 §7.2: `HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)`).
    pub fn next(&self) -> TrafficSecret {
        let mut out = Zeroizing::new(vec![0u8; self.suite.hash_len()]);
        self.expand_label(b"traffic upd", &mut out);
        TrafficSecret {
            suite: self.suite,
            secret: out,
        }
    }

    /// The record keys of this secret, starting at record `seq` (§7.3: "key" and "iv").
    pub fn keys(&self, seq: u64) -> Result<Keys, ScheduleError> {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut iv = [0u8; 12];
        let klen = self.suite.key_len();
        self.expand_label(b"key", &mut key[..klen]);
        self.expand_label(b"iv", &mut iv);
        let alg = match self.suite {
            Suite::Aes128GcmSha256 => &aead::AES_128_GCM,
            Suite::Aes256GcmSha384 => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305Sha256 => &aead::CHACHA20_POLY1305,
        };
        Ok(Keys::from_raw(alg, &key[..klen], iv, seq)?)
    }

    /// `HKDF-Expand-Label(secret, label, "", out.len())` (§7.1).
    fn expand_label(&self, label: &[u8], out: &mut [u8]) {
        let len = (out.len() as u16).to_be_bytes();
        let label_len = [(6 + label.len()) as u8];
        let context_len = [0u8];
        let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &context_len];
        let prk = hkdf::Prk::new_less_safe(self.suite.hkdf(), &self.secret);
        // cannot fail: every output here is at most 48 bytes, far below 255 × HashLen.
        let okm = prk
            .expand(&info, Len(out.len()))
            .expect("HKDF output length within 255 * HashLen");
        okm.fill(out).expect("HKDF fill of the requested length");
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
