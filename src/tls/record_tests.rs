//! Record protection checked against rustls's own TLS 1.3 record layer, both ways; the size
//! and sequence-number limits; post-handshake messages, alerts and the peer limits as RFC
//! 8446 and rustls read them.

use super::*;
use bytes::BytesMut;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, OutboundChunks, OutboundPlainMessage,
};
use rustls::{ContentType, ProtocolVersion, SupportedCipherSuite};

fn suites() -> Vec<(SupportedCipherSuite, ConnectionTrafficSecrets)> {
    // rustls builds only 32-byte keys outside a handshake; AES-128 is checked over real
    // handshakes in io/tls.rs's tests.
    vec![(
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        secrets(),
    )]
}

fn secrets() -> ConnectionTrafficSecrets {
    ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from([9u8; 32]),
        iv: Iv::new([7u8; 12]),
    }
}

fn rustls_keys() -> (AeadKey, Iv) {
    (AeadKey::from([9u8; 32]), Iv::new([7u8; 12]))
}

fn keys(_: &ConnectionTrafficSecrets, seq: u64) -> Keys {
    Keys::new(seq, secrets()).unwrap()
}

#[test]
fn our_records_open_in_rustls_and_theirs_in_ours() {
    for (suite, secrets) in suites() {
        let t13 = suite.tls13().unwrap();
        for (seq, len) in [(0u64, 0usize), (1, 1), (5, 1000), (1 << 40, MAX_PLAIN)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();

            // Ours → rustls.
            let mut k = keys(&secrets, seq);
            let mut out = BytesMut::new();
            k.seal(APPLICATION_DATA, &data, &mut out).unwrap();
            assert_eq!(k.seq(), seq + 1);
            assert_eq!(record_len(&out).unwrap(), Some(out.len()));
            let (key, iv) = rustls_keys();
            let mut dec = t13.aead_alg.decrypter(key, iv);
            let mut payload = out[HEADER..].to_vec();
            let msg = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut payload,
            );
            let plain = dec.decrypt(msg, seq).expect("rustls opens our record");
            assert_eq!(plain.typ, ContentType::ApplicationData);
            assert_eq!(plain.payload, &data[..]);

            // rustls → ours.
            let (key, iv) = rustls_keys();
            let mut enc = t13.aead_alg.encrypter(key, iv);
            let rec = enc
                .encrypt(
                    OutboundPlainMessage {
                        typ: ContentType::Handshake,
                        version: ProtocolVersion::TLSv1_2,
                        payload: OutboundChunks::Single(&data),
                    },
                    seq,
                )
                .unwrap()
                .encode();
            let mut rec = rec;
            let mut k = keys(&secrets, seq);
            let (typ, n) = k.open(&mut rec).expect("we open rustls's record");
            assert_eq!(typ, HANDSHAKE);
            assert_eq!(&rec[HEADER..HEADER + n], &data[..]);
        }
    }
}

#[test]
fn tampering_or_a_wrong_sequence_number_fails_authentication() {
    let (_, secrets) = suites().remove(0);
    let mut out = BytesMut::new();
    keys(&secrets, 3)
        .seal(APPLICATION_DATA, b"hello", &mut out)
        .unwrap();

    let mut rec = out.to_vec();
    assert_eq!(
        keys(&secrets, 4).open(&mut rec),
        Err(RecordError::BadMac),
        "replayed or reordered"
    );
    for at in [2usize, 4, HEADER, out.len() - 1] {
        let mut rec = out.to_vec();
        rec[at] ^= 1;
        assert!(
            keys(&secrets, 3).open(&mut rec).is_err(),
            "byte {at} flipped"
        );
    }
    let mut rec = out.to_vec();
    assert_eq!(keys(&secrets, 3).open(&mut rec), Ok((APPLICATION_DATA, 5)));
}

/// A record sealed by rustls at sequence number 0: `payload`, then the type byte `typ` (0
/// makes the end of `payload` the type and padding). rustls does not check the size.
fn rustls_sealed(typ: u8, payload: &[u8]) -> Vec<u8> {
    let (suite, _) = suites().remove(0);
    let (key, iv) = rustls_keys();
    let mut enc = suite.tls13().unwrap().aead_alg.encrypter(key, iv);
    enc.encrypt(
        OutboundPlainMessage {
            typ: ContentType::from(typ),
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        },
        0,
    )
    .unwrap()
    .encode()
}

#[test]
fn padding_is_stripped_and_all_padding_is_unexpected_message() {
    let (_, secrets) = suites().remove(0);
    // Inner plaintext "ab" + type 23 + three zero bytes of padding.
    let mut rec = rustls_sealed(0, b"ab\x17\0\0");
    assert_eq!(keys(&secrets, 0).open(&mut rec), Ok((APPLICATION_DATA, 2)));

    let mut rec = rustls_sealed(0, b"\0\0");
    let e = keys(&secrets, 0).open(&mut rec).unwrap_err();
    assert_eq!(e, RecordError::NoContentType);
    // RFC 8446 §5.4: "MUST terminate the connection with an unexpected_message alert".
    assert_eq!(e.alert(), [2, 10]);
}

#[test]
fn the_inner_plaintext_with_its_padding_is_at_most_2_14_plus_1_bytes() {
    let (_, secrets) = suites().remove(0);
    let full = vec![0x61u8; MAX_PLAIN];
    // 2^14 bytes of content and the type: 2^14 + 1, taken.
    let mut rec = rustls_sealed(APPLICATION_DATA, &full);
    assert_eq!(
        keys(&secrets, 0).open(&mut rec),
        Ok((APPLICATION_DATA, MAX_PLAIN))
    );
    // 2^14 - 1 bytes, the type and one byte of padding: 2^14 + 1, taken.
    let mut rec = rustls_sealed(0, &[&full[1..], &[23][..]].concat());
    assert_eq!(
        keys(&secrets, 0).open(&mut rec),
        Ok((APPLICATION_DATA, MAX_PLAIN - 1))
    );
    // 2^14 bytes, the type and one byte of padding: record_overflow.
    let mut rec = rustls_sealed(0, &[&full[..], &[23][..]].concat());
    let e = keys(&secrets, 0).open(&mut rec).unwrap_err();
    assert_eq!(e, RecordError::InnerTooLong(MAX_PLAIN + 2));
    assert_eq!(e.alert(), [2, 22]);
    // Padded up to the ciphertext limit (2^14 + 256 - 16 bytes of inner plaintext): the same.
    let mut rec = rustls_sealed(0, &[&b"x\x17"[..], &[0; MAX_CIPHER - TAG - 3][..]].concat());
    assert_eq!(record_len(&rec), Ok(Some(HEADER + MAX_CIPHER)));
    assert_eq!(
        keys(&secrets, 0).open(&mut rec),
        Err(RecordError::InnerTooLong(MAX_CIPHER - TAG))
    );
}

#[test]
fn sequence_numbers_never_wrap() {
    let (_, secrets) = suites().remove(0);
    let mut k = keys(&secrets, u64::MAX - 1);
    let mut out = BytesMut::new();
    k.seal(APPLICATION_DATA, b"last", &mut out).unwrap();
    assert_eq!(k.seq(), u64::MAX);
    let sealed = out.len();
    // The next number would wrap to 0 and reuse the first record's nonce: refused, and
    // nothing appended.
    assert_eq!(
        k.seal(APPLICATION_DATA, b"one more", &mut out),
        Err(RecordError::SeqExhausted)
    );
    assert_eq!(k.seq(), u64::MAX);
    assert_eq!(out.len(), sealed);
    assert_eq!(
        k.seal_parts(ALERT, &[&CLOSE_NOTIFY], &mut out),
        Err(RecordError::SeqExhausted)
    );
    assert_eq!(out.len(), sealed);

    // Opening: the record sealed at u64::MAX - 1 opens; after it nothing does.
    let mut rx = keys(&secrets, u64::MAX - 1);
    let mut rec = out.to_vec();
    assert_eq!(rx.open(&mut rec), Ok((APPLICATION_DATA, 4)));
    let mut rec = out.to_vec();
    let e = rx.open(&mut rec).unwrap_err();
    assert_eq!(e, RecordError::SeqExhausted);
    assert_eq!(e.alert(), CLOSE_NOTIFY, "closed, as rustls closes there");
    // Keys are replaced long before: even without a confidentiality limit, 2^60 - 1 numbers
    // are left for the KeyUpdate and a last alert.
    assert!(u64::MAX - key_update_after(u64::MAX) >= (1 << 60) - 1);
}

#[test]
fn headers_are_checked_before_anything_is_buffered() {
    assert_eq!(record_len(&[23, 3, 3, 0]), Ok(None));
    assert_eq!(record_len(&[23, 3, 3, 0, 40]), Ok(Some(45)));
    assert_eq!(
        record_len(&[22, 3, 3, 0, 40]),
        Err(RecordError::UnexpectedType(22))
    );
    assert_eq!(
        record_len(&[23, 3, 3, 0x41, 0x01]),
        Err(RecordError::TooLong(0x4101))
    );
    assert!(record_len(&[23, 3, 3, 0x41, 0x00]).unwrap().is_some());
    assert_eq!(RecordError::BadMac.alert(), [2, 20]);
    assert_eq!(RecordError::TooLong(1).alert(), [2, 22]);
}

fn messages(m: &[u8]) -> Result<Vec<PostHandshake<'_>>, RecordError> {
    post_handshake(m)?.collect()
}

#[test]
fn post_handshake_messages_parse_and_strangers_are_refused() {
    let mut m = vec![4, 0, 0, 3, 9, 9, 9];
    m.extend_from_slice(&[4, 0, 0, 1, 8]);
    m.extend_from_slice(&[24, 0, 0, 1, 1]);
    assert_eq!(
        messages(&m).unwrap(),
        vec![
            PostHandshake::NewSessionTicket(&[9, 9, 9]),
            PostHandshake::NewSessionTicket(&[8]),
            PostHandshake::KeyUpdate {
                update_requested: true
            },
        ]
    );
    assert_eq!(
        messages(&KEY_UPDATE_NOT_REQUESTED).unwrap(),
        vec![PostHandshake::KeyUpdate {
            update_requested: false
        }]
    );
    assert_eq!(
        messages(&[1, 0, 0, 0]),
        Err(RecordError::UnexpectedHandshake(1))
    );
    assert!(messages(&[4, 0, 0, 9, 1]).is_err());
    assert!(messages(&[4, 0]).is_err());
    assert_eq!(
        messages(&[24, 0, 0, 2, 0, 0]),
        Err(RecordError::Malformed("KeyUpdate"))
    );
    // The iterator stops after an error.
    let mut it = post_handshake(&[1, 0, 0, 0, 4, 0, 0, 0]).unwrap();
    assert!(it.next().unwrap().is_err());
    assert!(it.next().is_none());
}

#[test]
fn a_key_update_ends_its_record() {
    // RFC 8446 §5.1: a key change must align with a record boundary → unexpected_message.
    for m in [
        [KEY_UPDATE_NOT_REQUESTED, KEY_UPDATE_NOT_REQUESTED].concat(),
        [&KEY_UPDATE_NOT_REQUESTED[..], &[4, 0, 0, 1, 7]].concat(),
        [&KEY_UPDATE_NOT_REQUESTED[..], &[4]].concat(),
    ] {
        let e = messages(&m).unwrap_err();
        assert_eq!(e, RecordError::KeyUpdateNotLast, "{m:?}");
        assert_eq!(e.alert(), [2, 10]);
    }
    // Even a record of 3000 KeyUpdates yields none: the first is refused.
    let burst = KEY_UPDATE_NOT_REQUESTED.repeat(3000);
    let mut it = post_handshake(&burst).unwrap();
    assert_eq!(it.next(), Some(Err(RecordError::KeyUpdateNotLast)));
    assert_eq!(it.next(), None);
}

#[test]
fn key_update_requests_other_than_0_and_1_are_illegal_parameter() {
    for v in [2u8, 3, 255] {
        let e = messages(&[24, 0, 0, 1, v]).unwrap_err();
        assert_eq!(e, RecordError::KeyUpdateValue(v));
        assert_eq!(e.alert(), [2, 47]);
    }
}

#[test]
fn a_zero_length_handshake_record_is_unexpected_message() {
    let e = post_handshake(&[]).unwrap_err();
    assert_eq!(e, RecordError::EmptyHandshake);
    assert_eq!(e.alert(), [2, 10]);
}

#[test]
fn alerts_as_rfc_8446_section_6_reads_them() {
    // close_notify at either level is a clean end.
    assert_eq!(alert(&CLOSE_NOTIFY), Ok(Alert::CloseNotify));
    assert_eq!(alert(&[2, 0]), Ok(Alert::CloseNotify));
    // user_canceled is not an error, at either level.
    assert_eq!(alert(&[1, 90]), Ok(Alert::UserCanceled));
    // Every other alert is an error whatever its level.
    for level in [1, 2] {
        let a = alert(&[level, 42]).unwrap();
        assert_eq!(
            a,
            Alert::Error {
                level,
                description: 42
            }
        );
        assert!(a.to_string().contains("bad_certificate"), "{a}");
    }
    assert!(
        alert(&[2, 200])
            .unwrap()
            .to_string()
            .contains("unknown alert")
    );
    // Malformed: not exactly one alert (decode_error), or an unknown level.
    for bad in [&[2u8][..], &[], &[2, 0, 2, 0], &[1, 0, 0]] {
        let e = alert(bad).unwrap_err();
        assert_eq!(e, RecordError::Malformed("alert"), "{bad:?}");
        assert_eq!(e.alert(), [2, 50]);
    }
    let e = alert(&[3, 0]).unwrap_err();
    assert_eq!(e, RecordError::AlertLevel(3));
    assert_eq!(e.alert(), [2, 47]);
}

#[test]
fn peer_limits_are_rustls_s() {
    let mut l = PeerLimits::default();
    for round in 0..3 {
        for _ in 0..PeerLimits::KEY_UPDATES {
            l.key_update().unwrap();
        }
        if round < 2 {
            // Application data restores the allowance.
            l.app_data();
        }
    }
    let e = l.key_update().unwrap_err();
    assert_eq!(e, RecordError::TooManyKeyUpdates);
    assert_eq!(e.alert(), [2, 10]);
    assert_eq!(PeerLimits::KEY_UPDATES, 32);

    // Warning alerts: 4 per connection, application data or not.
    let mut l = PeerLimits::default();
    for _ in 0..PeerLimits::WARNING_ALERTS {
        l.warning_alert().unwrap();
        l.app_data();
    }
    assert_eq!(l.warning_alert(), Err(RecordError::TooManyWarnings));
}

#[test]
fn limits() {
    let aes_gcm = 23_726_566u64; // 2^24.5
    assert!(key_update_after(aes_gcm) < aes_gcm);
    assert_eq!(key_update_after(0), 1);
}
