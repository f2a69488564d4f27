//! Tests of the TLS state encoding: a round trip keeps every field; truncation at every
//! length, a flipped magic or version, an unknown suite, a wrong secret length, bad flags and
//! trailing bytes are errors, never panics.

use super::*;

fn sample() -> TlsState {
    TlsState {
        client: true,
        tx_secret: TrafficSecret::new(Suite::Aes256GcmSha384, &[1; 48]).unwrap(),
        tx_seq: 77,
        rx_secret: TrafficSecret::new(Suite::Aes256GcmSha384, &[2; 48]).unwrap(),
        rx_seq: 1 << 40,
        rekey_after: 12345,
        key_update_owed: true,
        read_closed: false,
        close_sent: true,
        limits: PeerLimits::with_remaining(3, 1).unwrap(),
        rx: vec![23, 3, 3, 0, 9, 1, 2],
        plain: b"hello".to_vec(),
        tx: vec![9; 300],
        peer_certs: vec![vec![0x30, 1, 2], vec![0x30; 40]],
    }
}

#[test]
fn a_round_trip_keeps_every_field() {
    let st = sample();
    let back = TlsState::decode(&st.encode()).unwrap();
    assert_eq!(back, st);
    assert_eq!(back.limits.remaining(), (3, 1));
    let mut other = sample();
    other.client = false;
    other.read_closed = true;
    other.key_update_owed = false;
    other.peer_certs.clear();
    assert_eq!(TlsState::decode(&other.encode()).unwrap(), other);
    assert_ne!(other.encode(), st.encode());
}

#[test]
fn every_truncation_and_trailing_byte_is_an_error() {
    let b = sample().encode();
    for n in 0..b.len() {
        assert!(TlsState::decode(&b[..n]).is_err(), "truncated at {n}");
    }
    let mut long = b.clone();
    long.push(0);
    assert_eq!(
        TlsState::decode(&long),
        Err(StateError::Corrupt("trailing bytes"))
    );
}

#[test]
fn wrong_magic_version_suite_secret_and_flags_are_refused() {
    let b = sample().encode();
    let mut m = b.clone();
    m[0] ^= 1;
    assert_eq!(TlsState::decode(&m), Err(StateError::Magic));
    let mut v = b.clone();
    v[4] = 9;
    assert_eq!(TlsState::decode(&v), Err(StateError::Version(9)));
    let mut s = b.clone();
    s[6..8].copy_from_slice(&0x1304u16.to_be_bytes());
    assert_eq!(TlsState::decode(&s), Err(StateError::Suite(0x1304)));
    // The same secrets under a 32-byte-hash suite: the length no longer fits.
    let mut l = b.clone();
    l[6..8].copy_from_slice(&0x1301u16.to_be_bytes());
    assert!(matches!(
        TlsState::decode(&l),
        Err(StateError::Secret(ScheduleError::SecretLength { .. }))
    ));
    let mut c = b.clone();
    c[5] = 2;
    assert!(matches!(TlsState::decode(&c), Err(StateError::Corrupt(_))));
    assert!(PeerLimits::with_remaining(PeerLimits::KEY_UPDATES + 1, 0).is_none());
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let base = sample().encode();
    for _ in 0..2000 {
        let mut b = base.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
        }
        let _ = TlsState::decode(&b);
    }
}
