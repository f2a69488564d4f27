//! Frame layer tests: header layout, padding, splitting into CONTINUATION and DATA frames.

use bytes::{Bytes, BytesMut};

use super::Reason;
use super::frame::*;

fn frames(mut b: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(h) = FrameHeader::parse(b) {
        let end = HEADER_LEN + h.len as usize;
        out.push((h, b[HEADER_LEN..end].to_vec()));
        b = &b[end..];
    }
    assert!(b.is_empty(), "trailing partial frame");
    out
}

#[test]
fn header_round_trips_and_drops_reserved_bit() {
    let h = FrameHeader {
        len: 0x123456,
        kind: HEADERS,
        flags: FLAG_END_HEADERS | FLAG_END_STREAM,
        stream: 7,
    };
    let mut b = BytesMut::new();
    h.write(&mut b);
    assert_eq!(&b[..], &[0x12, 0x34, 0x56, 1, 5, 0, 0, 0, 7]);
    assert_eq!(FrameHeader::parse(&b), Some(h));
    let r = [0, 0, 0, 0, 0, 0x80, 0, 0, 3];
    assert_eq!(FrameHeader::parse(&r).unwrap().stream, 3);
    assert_eq!(FrameHeader::parse(&r[..8]), None);
}

#[test]
fn padding_is_stripped_or_rejected() {
    let padded = |flags| FrameHeader {
        len: 0,
        kind: DATA,
        flags,
        stream: 1,
    };
    let mut p = Bytes::from_static(&[3, b'a', b'b', 0, 0, 0]);
    strip_padding(&padded(FLAG_PADDED), &mut p).unwrap();
    assert_eq!(&p[..], b"ab");
    // Pad length equal to what follows: no data, legal.
    let mut p = Bytes::from_static(&[2, 0, 0]);
    strip_padding(&padded(FLAG_PADDED), &mut p).unwrap();
    assert!(p.is_empty());
    // Pad length >= payload length: PROTOCOL_ERROR.
    let mut p = Bytes::from_static(&[3, 0, 0]);
    assert_eq!(
        strip_padding(&padded(FLAG_PADDED), &mut p)
            .unwrap_err()
            .code,
        Reason::PROTOCOL_ERROR
    );
    let mut p = Bytes::new();
    assert_eq!(
        strip_padding(&padded(FLAG_PADDED), &mut p)
            .unwrap_err()
            .code,
        Reason::FRAME_SIZE_ERROR
    );
    // Not PADDED: untouched.
    let mut p = Bytes::from_static(&[9, 9]);
    strip_padding(&padded(0), &mut p).unwrap();
    assert_eq!(&p[..], &[9, 9]);
}

#[test]
fn header_block_splits_into_continuations() {
    let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut out = BytesMut::new();
    write_header_block(&mut out, 5, &block, true, 16_384);
    let f = frames(&out);
    assert_eq!(f.len(), 3);
    assert_eq!(f[0].0.kind, HEADERS);
    assert_eq!(f[0].0.flags, FLAG_END_STREAM);
    assert_eq!(f[1].0.kind, CONTINUATION);
    assert_eq!(f[1].0.flags, 0);
    assert_eq!(f[2].0.kind, CONTINUATION);
    assert_eq!(f[2].0.flags, FLAG_END_HEADERS);
    let joined: Vec<u8> = f.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(joined, block);
    let mut out = BytesMut::new();
    write_header_block(&mut out, 5, b"xy", false, 16_384);
    let f = frames(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0.flags, FLAG_END_HEADERS);
}

#[test]
fn data_splits_by_max_frame_and_ends_once() {
    let data = vec![7u8; 40_000];
    let mut out = BytesMut::new();
    write_data(&mut out, 3, &data, true, 16_384);
    let f = frames(&out);
    assert_eq!(
        f.iter().map(|(h, _)| h.len).collect::<Vec<_>>(),
        [16_384, 16_384, 7_232]
    );
    assert_eq!(
        f.iter().map(|(h, _)| h.flags).collect::<Vec<_>>(),
        [0, 0, FLAG_END_STREAM]
    );
    let mut out = BytesMut::new();
    write_data(&mut out, 3, &[], true, 16_384);
    assert_eq!(&out[..], &[0, 0, 0, DATA, FLAG_END_STREAM, 0, 0, 0, 3]);
    let mut out = BytesMut::new();
    write_data(&mut out, 3, &[], false, 16_384);
    assert!(out.is_empty());
}

#[test]
fn control_frames_have_rfc_layout() {
    let mut out = BytesMut::new();
    write_settings(&mut out, &[(SETTINGS_INITIAL_WINDOW_SIZE, 4 << 20)]);
    write_settings_ack(&mut out);
    write_window_update(&mut out, 0, 1 << 24);
    write_ping(&mut out, true, *b"12345678");
    write_goaway(&mut out, 9, Reason::ENHANCE_YOUR_CALM, b"bye");
    write_rst(&mut out, 11, Reason::CANCEL);
    let f = frames(&out);
    assert_eq!(f[0].1, [0, 4, 0, 0x40, 0, 0]);
    assert_eq!(
        settings_entries(&f[0].1).collect::<Vec<_>>(),
        [(SETTINGS_INITIAL_WINDOW_SIZE, 4 << 20)]
    );
    assert_eq!(
        (f[1].0.kind, f[1].0.flags, f[1].0.len),
        (SETTINGS, FLAG_ACK, 0)
    );
    assert_eq!(f[2].1, [1, 0, 0, 0]);
    assert_eq!((f[3].0.flags, &f[3].1[..]), (FLAG_ACK, &b"12345678"[..]));
    assert_eq!(f[4].1, [0, 0, 0, 9, 0, 0, 0, 0xb, b'b', b'y', b'e']);
    assert_eq!((f[5].0.stream, &f[5].1[..]), (11, &[0u8, 0, 0, 8][..]));
}
