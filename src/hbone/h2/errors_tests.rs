//! Error tests: every malformed input the codec must refuse, with the RFC 9113 code of the
//! connection error (GOAWAY) or stream error (RST_STREAM) it answers.

use super::conn_tests::{
    CONNECT, frames, goaway_code, headers, lit, raw, rst_codes, server, server_with,
};
use super::frame;
use super::*;

/// Cases where h2 0.4 answers PROTOCOL_ERROR and RFC 9113 names a more specific code,
/// which we send: FRAME_SIZE_ERROR (§4.2, §6.4, §6.5, §6.7, §6.8, §6.9), COMPRESSION_ERROR
/// (§4.3), FLOW_CONTROL_ERROR (§6.5.2).
pub(super) const H2_DIFFERS: &[&str] = &[
    "SETTINGS length 5",
    "SETTINGS ACK with payload",
    "SETTINGS_INITIAL_WINDOW_SIZE 2^31",
    "PING 7 octets",
    "WINDOW_UPDATE 3 octets",
    "RST_STREAM 3 octets",
    "GOAWAY 4 octets",
    "HPACK index 0",
    "HPACK truncated",
];

/// Inputs that break a connection-level rule, sent after the client preface and SETTINGS,
/// with the RFC 9113 code.
pub(super) fn connection_error_cases() -> Vec<(&'static str, Vec<u8>, Reason)> {
    let big = {
        let mut h = raw(frame::DATA, 0, 1, &[]);
        h[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        h
    };
    let open = headers(1, 0, CONNECT);
    let cat = |a: &[u8], b: &[u8]| [a, b].concat();
    let setting = |id: u16, v: u32| {
        let mut p = id.to_be_bytes().to_vec();
        p.extend(v.to_be_bytes());
        raw(frame::SETTINGS, 0, 0, &p)
    };
    vec![
        (
            "DATA on stream 0",
            raw(frame::DATA, 0, 0, b"x"),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "DATA on an idle stream",
            raw(frame::DATA, 0, 1, b"x"),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on stream 0",
            headers(0, 0, CONNECT),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on an even stream",
            headers(2, 0, CONNECT),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on a lower closed stream",
            cat(&headers(3, 0, CONNECT), &headers(1, 0, CONNECT)),
            Reason::PROTOCOL_ERROR,
        ),
        ("frame over max frame size", big, Reason::FRAME_SIZE_ERROR),
        (
            "SETTINGS length 5",
            raw(frame::SETTINGS, 0, 0, &[0; 5]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS ACK with payload",
            raw(frame::SETTINGS, frame::FLAG_ACK, 0, &[0; 6]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS on a stream",
            raw(frame::SETTINGS, 0, 1, &[]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_INITIAL_WINDOW_SIZE 2^31",
            setting(4, 1 << 31),
            Reason::FLOW_CONTROL_ERROR,
        ),
        (
            "SETTINGS_MAX_FRAME_SIZE 100",
            setting(5, 100),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_ENABLE_PUSH 2",
            setting(2, 2),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "second unexpected SETTINGS ACK",
            [
                raw(frame::SETTINGS, frame::FLAG_ACK, 0, &[]),
                raw(frame::SETTINGS, frame::FLAG_ACK, 0, &[]),
            ]
            .concat(),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "PING 7 octets",
            raw(frame::PING, 0, 0, &[0; 7]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "PING on a stream",
            raw(frame::PING, 0, 1, &[0; 8]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "WINDOW_UPDATE 3 octets",
            raw(frame::WINDOW_UPDATE, 0, 0, &[0; 3]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "WINDOW_UPDATE 0 on the connection",
            raw(frame::WINDOW_UPDATE, 0, 0, &[0; 4]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "connection window overflow",
            raw(frame::WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            Reason::FLOW_CONTROL_ERROR,
        ),
        (
            "WINDOW_UPDATE on an idle stream",
            raw(frame::WINDOW_UPDATE, 0, 7, &[0, 0, 0, 1]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM on an idle stream",
            raw(frame::RST_STREAM, 0, 1, &[0; 4]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM 3 octets",
            cat(&open, &raw(frame::RST_STREAM, 0, 1, &[0; 3])),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "RST_STREAM on stream 0",
            raw(frame::RST_STREAM, 0, 0, &[0; 4]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "GOAWAY on a stream",
            raw(frame::GOAWAY, 0, 1, &[0; 8]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "GOAWAY 4 octets",
            raw(frame::GOAWAY, 0, 0, &[0; 4]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "PUSH_PROMISE from a client",
            raw(
                frame::PUSH_PROMISE,
                frame::FLAG_END_HEADERS,
                1,
                &[0, 0, 0, 2],
            ),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "CONTINUATION without HEADERS",
            raw(frame::CONTINUATION, frame::FLAG_END_HEADERS, 1, &[]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "PING inside a header block",
            cat(
                &raw(frame::HEADERS, 0, 1, &lit(CONNECT)),
                &raw(frame::PING, 0, 0, &[0; 8]),
            ),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "CONTINUATION on another stream",
            cat(
                &raw(frame::HEADERS, 0, 1, &lit(CONNECT)),
                &raw(frame::CONTINUATION, frame::FLAG_END_HEADERS, 3, &[]),
            ),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "unknown frame inside a header block",
            cat(
                &raw(frame::HEADERS, 0, 1, &lit(CONNECT)),
                &raw(0xfa, 0, 0, &[]),
            ),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "HPACK index 0",
            raw(frame::HEADERS, frame::FLAG_END_HEADERS, 1, &[0x80]),
            Reason::COMPRESSION_ERROR,
        ),
        (
            "HPACK truncated",
            raw(
                frame::HEADERS,
                frame::FLAG_END_HEADERS,
                1,
                &[0x00, 0x05, b'a'],
            ),
            Reason::COMPRESSION_ERROR,
        ),
        (
            "padding longer than DATA",
            cat(&open, &raw(frame::DATA, frame::FLAG_PADDED, 1, &[5, 0, 0])),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "padding longer than HEADERS",
            raw(
                frame::HEADERS,
                frame::FLAG_PADDED | frame::FLAG_END_HEADERS,
                1,
                &[9, 0x82],
            ),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "GOAWAY raising its last stream id",
            cat(
                &raw(frame::GOAWAY, 0, 0, &[0; 8]),
                &raw(frame::GOAWAY, 0, 0, &[0, 0, 0, 2, 0, 0, 0, 0]),
            ),
            Reason::PROTOCOL_ERROR,
        ),
    ]
}

#[test]
fn connection_errors_have_rfc_codes() {
    let cases = connection_error_cases();
    for (what, bytes, code) in cases {
        let mut s = server();
        let err = s.recv(&bytes, &mut Vec::new()).expect_err(what);
        assert_eq!(err.code, code, "{what}: {err}");
        assert_eq!(goaway_code(s.pending_output()), Some(code.0), "{what}");
        assert_eq!(s.failure(), Some(code));
        assert!(
            s.recv(&[], &mut Vec::new()).is_err(),
            "{what}: stays failed"
        );
        assert_eq!(s.send_ping([0; 8]), Err(SendError::Failed(code)));
    }
}

#[test]
fn connection_flow_control_error() {
    let sc = Config {
        connection_window: 65_535,
        ..Config::default()
    };
    let mut s = server_with(sc);
    let mut bytes = headers(1, 0, CONNECT);
    for _ in 0..4 {
        bytes.extend(raw(frame::DATA, 0, 1, &[0; 16_384]));
    }
    let err = s.recv(&bytes, &mut Vec::new()).unwrap_err();
    assert_eq!(err.code, Reason::FLOW_CONTROL_ERROR);
}

/// Inputs that break a stream-level rule: RST_STREAM, the connection carries on.
#[test]
fn stream_errors_reset_only_the_stream() {
    let upper = [(":method", "CONNECT"), (":authority", "a:1"), ("X-Up", "1")];
    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        (
            "DATA after END_STREAM",
            [
                headers(1, frame::FLAG_END_STREAM, CONNECT),
                raw(frame::DATA, 0, 1, b"x"),
            ]
            .concat(),
            1,
            Reason::STREAM_CLOSED,
        ),
        (
            "DATA after the peer's RST_STREAM",
            [
                headers(1, 0, CONNECT),
                raw(frame::RST_STREAM, 0, 1, &[0, 0, 0, 8]),
                raw(frame::DATA, 0, 1, b"x"),
            ]
            .concat(),
            1,
            Reason::STREAM_CLOSED,
        ),
        (
            "uppercase header name",
            headers(1, 0, &upper),
            1,
            Reason::PROTOCOL_ERROR,
        ),
        (
            "CONNECT with :path",
            headers(
                1,
                0,
                &[
                    (":method", "CONNECT"),
                    (":authority", "a:1"),
                    (":path", "/"),
                ],
            ),
            1,
            Reason::PROTOCOL_ERROR,
        ),
        (
            "response pseudo-header in a request",
            headers(1, 0, &[(":status", "200")]),
            1,
            Reason::PROTOCOL_ERROR,
        ),
        (
            "connection-specific header",
            headers(
                1,
                0,
                &[
                    (":method", "CONNECT"),
                    (":authority", "a:1"),
                    ("connection", "close"),
                ],
            ),
            1,
            Reason::PROTOCOL_ERROR,
        ),
        (
            "trailers without END_STREAM",
            [headers(1, 0, CONNECT), headers(1, 0, &[("x", "y")])].concat(),
            1,
            Reason::PROTOCOL_ERROR,
        ),
        (
            "WINDOW_UPDATE 0 on a stream",
            [
                headers(1, 0, CONNECT),
                raw(frame::WINDOW_UPDATE, 0, 1, &[0; 4]),
            ]
            .concat(),
            1,
            Reason::PROTOCOL_ERROR,
        ),
        (
            "stream window overflow",
            [
                headers(1, 0, CONNECT),
                raw(frame::WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes()),
            ]
            .concat(),
            1,
            Reason::FLOW_CONTROL_ERROR,
        ),
        (
            "stream flow control",
            [headers(1, 0, CONNECT), raw(frame::DATA, 0, 1, &[0; 65_536])].concat(),
            1,
            Reason::FLOW_CONTROL_ERROR,
        ),
        (
            "PRIORITY on itself",
            [
                headers(1, 0, CONNECT),
                raw(frame::PRIORITY, 0, 1, &[0, 0, 0, 1, 16]),
            ]
            .concat(),
            1,
            Reason::PROTOCOL_ERROR,
        ),
        (
            "PRIORITY 4 octets",
            [
                headers(1, 0, CONNECT),
                raw(frame::PRIORITY, 0, 1, &[0, 0, 0, 0]),
            ]
            .concat(),
            1,
            Reason::FRAME_SIZE_ERROR,
        ),
    ];
    for (what, bytes, id, code) in cases {
        let mut s = server();
        let mut ev = Vec::new();
        s.recv(&bytes, &mut ev)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(rst_codes(s.pending_output()), [(id, code.0)], "{what}");
        assert_eq!(s.active_streams(), 0, "{what}");
        // Still alive: a PING is answered.
        s.advance_output(usize::MAX);
        s.recv(&raw(frame::PING, 0, 0, &[1; 8]), &mut ev).unwrap();
        assert_eq!(frames(s.pending_output())[0].0.kind, frame::PING, "{what}");
    }
}

#[test]
fn client_role_errors() {
    let client = || {
        let mut c = Conn::new(Role::Client, Config::default());
        c.advance_output(usize::MAX);
        c
    };
    let setting = |id: u16, v: u32| {
        let mut p = id.to_be_bytes().to_vec();
        p.extend(v.to_be_bytes());
        raw(frame::SETTINGS, 0, 0, &p)
    };
    let hello = raw(frame::SETTINGS, 0, 0, &[]);
    let resp = [(":status", "200")];
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "first frame not SETTINGS",
            raw(frame::PING, 0, 0, &[0; 8]),
            Reason::PROTOCOL_ERROR,
        ),
        ("server enables push", setting(2, 1), Reason::PROTOCOL_ERROR),
        (
            "PUSH_PROMISE",
            [
                hello.clone(),
                raw(
                    frame::PUSH_PROMISE,
                    frame::FLAG_END_HEADERS,
                    1,
                    &[0, 0, 0, 2],
                ),
            ]
            .concat(),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "response on a stream never opened",
            [hello.clone(), headers(1, 0, &resp)].concat(),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "server-initiated stream",
            [hello.clone(), headers(2, 0, &resp)].concat(),
            Reason::PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut c = client();
        let err = c.recv(&bytes, &mut Vec::new()).expect_err(what);
        assert_eq!(err.code, code, "{what}");
    }
    // A bad client preface at a server.
    let mut s = Conn::new(Role::Server, Config::default());
    let err = s.recv(b"GET / HTTP/1.1\r\n", &mut Vec::new()).unwrap_err();
    assert_eq!(err.code, Reason::PROTOCOL_ERROR);
}

#[test]
fn frames_on_a_stream_closed_both_ways_fail_the_connection() {
    let mut s = server();
    let mut ev = Vec::new();
    s.recv(&headers(1, frame::FLAG_END_STREAM, CONNECT), &mut ev)
        .unwrap();
    s.send_headers(
        StreamId(1),
        &response_fields(200, &http::HeaderMap::new()),
        true,
    )
    .unwrap();
    assert_eq!(s.stream_state(StreamId(1)), StreamState::Closed);
    let err = s.recv(&raw(frame::DATA, 0, 1, b"x"), &mut ev).unwrap_err();
    assert_eq!(err.code, Reason::STREAM_CLOSED);
    // WINDOW_UPDATE and RST_STREAM may still arrive for a while: ignored.
    let mut s = server();
    s.recv(&headers(1, frame::FLAG_END_STREAM, CONNECT), &mut ev)
        .unwrap();
    s.send_headers(
        StreamId(1),
        &response_fields(200, &http::HeaderMap::new()),
        true,
    )
    .unwrap();
    s.recv(&raw(frame::WINDOW_UPDATE, 0, 1, &[0, 0, 0, 1]), &mut ev)
        .unwrap();
    s.recv(&raw(frame::RST_STREAM, 0, 1, &[0, 0, 0, 0]), &mut ev)
        .unwrap();
}
