//! Record protection checked against rustls's own TLS 1.3 record layer, both ways.

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
            k.seal(APPLICATION_DATA, &data, &mut out);
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
    keys(&secrets, 3).seal(APPLICATION_DATA, b"hello", &mut out);

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

#[test]
fn padding_is_stripped_and_all_padding_is_refused() {
    let (_, secrets) = suites().remove(0);
    // Inner plaintext "ab" + type 23 + three zero bytes of padding, sealed by hand.
    let mut out = BytesMut::new();
    keys(&secrets, 0).seal(0, b"ab\x17\0\0", &mut out);
    // The hand-built record ends in type byte 0 (our `seal` appended it): strip → 23.
    let mut rec = out.to_vec();
    assert_eq!(keys(&secrets, 0).open(&mut rec), Ok((APPLICATION_DATA, 2)));

    let mut out = BytesMut::new();
    keys(&secrets, 0).seal(0, b"\0\0", &mut out);
    let mut rec = out.to_vec();
    assert_eq!(
        keys(&secrets, 0).open(&mut rec),
        Err(RecordError::NoContentType)
    );
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
    assert_eq!(RecordError::BadMac.alert(), 20);
    assert_eq!(RecordError::TooLong(1).alert(), 22);
}

#[test]
fn post_handshake_messages_parse_and_strangers_are_refused() {
    let mut m = vec![24, 0, 0, 1, 1];
    m.extend_from_slice(&[4, 0, 0, 3, 9, 9, 9]);
    m.extend_from_slice(&KEY_UPDATE_NOT_REQUESTED);
    assert_eq!(
        post_handshake(&m).unwrap(),
        vec![
            PostHandshake::KeyUpdate {
                update_requested: true
            },
            PostHandshake::NewSessionTicket(&[9, 9, 9]),
            PostHandshake::KeyUpdate {
                update_requested: false
            },
        ]
    );
    assert_eq!(
        post_handshake(&[24, 0, 0, 1, 2]),
        Err(RecordError::Malformed("KeyUpdate"))
    );
    assert_eq!(
        post_handshake(&[1, 0, 0, 0]),
        Err(RecordError::UnexpectedHandshake(1))
    );
    assert!(post_handshake(&[4, 0, 0, 9, 1]).is_err());
    assert!(post_handshake(&[4, 0]).is_err());
}

#[test]
fn alerts_and_limits() {
    assert_eq!(alert(&CLOSE_NOTIFY), Ok(()));
    assert!(alert(&[2, 42]).unwrap_err().contains("bad_certificate"));
    assert!(alert(&[2]).is_err());
    let aes_gcm = 23_726_566u64; // 2^24.5
    assert!(key_update_after(aes_gcm) < aes_gcm);
    assert_eq!(key_update_after(0), 1);
}
