//! Connection tests, codec against codec and codec against hand-made frames: streams,
//! flow control, SETTINGS, PING, GOAWAY, padding, CONTINUATION and the RFC 9113 error
//! code of every malformed input.

use bytes::{Bytes, BytesMut};

use super::frame::{self, FrameHeader, PREFACE};
use super::*;
use crate::hbone::{ConnectHeaders, connect_request, parse_connect, traceparent};

/// Moves output between two codecs until both are quiet.
pub(super) fn pump(a: &mut Conn, b: &mut Conn, ea: &mut Vec<Event>, eb: &mut Vec<Event>) {
    for _ in 0..1000 {
        let (oa, ob) = (a.poll_output(), b.poll_output());
        if oa.is_none() && ob.is_none() {
            return;
        }
        if let Some(o) = oa {
            b.recv(&o, eb).unwrap();
        }
        if let Some(o) = ob {
            a.recv(&o, ea).unwrap();
        }
    }
    panic!("codecs did not settle");
}

/// A client and a server after the handshake.
pub(super) fn pair(cc: Config, sc: Config) -> (Conn, Conn) {
    let mut c = Conn::new(Role::Client, cc);
    let mut s = Conn::new(Role::Server, sc);
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert!(c.settings_acked() && s.settings_acked());
    (c, s)
}

pub(super) fn hbone_request(n: u16) -> Vec<HeaderField> {
    let h = ConnectHeaders {
        client: format!("10.1.0.2:{}", 40_000 + n).parse().unwrap(),
        service_host: Some("echo.default.svc.cluster.local".into()),
        baggage: "k8s.cluster.name=c1,k8s.namespace.name=default".into(),
        traceparent: traceparent(0xabcd, 0xef),
    };
    request_fields(&connect_request("10.0.0.9:8080".parse().unwrap(), &h))
}

pub(super) fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    FrameHeader {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .write(&mut b);
    b.extend_from_slice(payload);
    b.to_vec()
}

/// A header block of literals without indexing (no HPACK state involved).
pub(super) fn lit(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        b.push(0);
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

pub(super) const CONNECT: &[(&str, &str)] =
    &[(":method", "CONNECT"), (":authority", "10.0.0.9:80")];

pub(super) fn frames(mut b: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(h) = FrameHeader::parse(b) {
        let end = frame::HEADER_LEN + h.len as usize;
        out.push((h, b[frame::HEADER_LEN..end].to_vec()));
        b = &b[end..];
    }
    out
}

pub(super) fn server_with(config: Config) -> Conn {
    let mut s = Conn::new(Role::Server, config);
    let mut hello = PREFACE.to_vec();
    hello.extend(raw(frame::SETTINGS, 0, 0, &[]));
    s.recv(&hello, &mut Vec::new()).unwrap();
    s.advance_output(usize::MAX);
    s
}

pub(super) fn server() -> Conn {
    server_with(Config::default())
}

pub(super) fn goaway_code(out: &[u8]) -> Option<u32> {
    frames(out)
        .into_iter()
        .find(|(h, _)| h.kind == frame::GOAWAY)
        .map(|(_, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

pub(super) fn rst_codes(out: &[u8]) -> Vec<(u32, u32)> {
    frames(out)
        .into_iter()
        .filter(|(h, _)| h.kind == frame::RST_STREAM)
        .map(|(h, p)| (h.stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]])))
        .collect()
}

pub(super) fn headers(stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
    raw(
        frame::HEADERS,
        flags | frame::FLAG_END_HEADERS,
        stream,
        &lit(fields),
    )
}

#[test]
fn handshake_exchanges_and_acks_settings() {
    let h = crate::hbone::H2Settings::default();
    let (c, s) = pair(
        Config::hbone(Role::Client, &h),
        Config::hbone(Role::Server, &h),
    );
    assert_eq!(c.peer_settings().max_concurrent_streams, Some(200));
    assert_eq!(c.peer_settings().initial_window_size, 4 << 20);
    assert_eq!(c.peer_settings().max_frame_size, 1 << 20);
    assert_eq!(s.peer_settings().initial_window_size, 4 << 20);
    assert!(!s.peer_settings().enable_push);
    assert_eq!(c.local_settings().initial_window_size, 4 << 20);
    // The connection window was raised to 16 MiB at once.
    assert_eq!(c.send_windows(StreamId(0)).0, 16 << 20);
}

#[test]
fn connect_stream_round_trip() {
    let (mut c, mut s) = pair(Config::default(), Config::default());
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    let id = c.open_stream(&hbone_request(1), false).unwrap();
    assert_eq!(id, StreamId(1));
    pump(&mut c, &mut s, &mut ec, &mut es);
    let Some(Event::StreamOpened { id: sid, headers }) = es.pop() else {
        panic!("{es:?}")
    };
    let req = to_request(&headers).unwrap();
    let target = parse_connect(req.method(), req.uri().authority().map(|a| a.as_str())).unwrap();
    assert_eq!(target, "10.0.0.9:8080".parse().unwrap());
    assert_eq!(
        req.headers()["forwarded"],
        "for=\"10.1.0.2:40001\";host=echo.default.svc.cluster.local"
    );
    s.send_headers(sid, &response_fields(200, &http::HeaderMap::new()), false)
        .unwrap();
    assert_eq!(c.send_data(id, b"hello", true).unwrap(), 5);
    assert_eq!(s.send_data(sid, b"world", true).unwrap(), 5);
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert_eq!(
        es,
        [
            Event::Data {
                id: sid,
                data: Bytes::from_static(b"hello")
            },
            Event::StreamEnd { id: sid }
        ]
    );
    assert!(matches!(ec[0], Event::Response { status: 200, .. }));
    assert_eq!(
        ec[1..],
        [
            Event::Data {
                id,
                data: Bytes::from_static(b"world")
            },
            Event::StreamEnd { id }
        ]
    );
    assert_eq!((c.active_streams(), s.active_streams()), (0, 0));
    assert_eq!(c.stream_state(id), StreamState::Closed);
    assert_eq!(c.stream_state(StreamId(3)), StreamState::Idle);
    assert_eq!(
        c.send_data(id, b"x", false),
        Err(SendError::StreamNotOpen(id))
    );
}

#[test]
fn flow_control_blocks_and_resumes() {
    let mut small = Config::default();
    small.settings.initial_window_size = 65_535;
    small.connection_window = 65_535;
    let (mut c, mut s) = pair(Config::default(), small);
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    let id = c.open_stream(&hbone_request(1), false).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut rounds = 0;
    while got.len() < payload.len() {
        rounds += 1;
        assert!(rounds < 100);
        sent += c.send_data(id, &payload[sent..], true).unwrap();
        assert!(sent - got.len() <= 65_535, "sent beyond the window");
        pump(&mut c, &mut s, &mut ec, &mut es);
        for e in es.drain(..) {
            if let Event::Data { id, data } = e {
                got.extend_from_slice(&data);
                s.release(id, data.len());
            }
        }
        pump(&mut c, &mut s, &mut ec, &mut es);
    }
    assert_eq!(got, payload);
    assert!(rounds >= 5, "only {rounds} rounds: windows did not bind");
    assert!(
        ec.iter()
            .any(|e| matches!(e, Event::WindowUpdate { id: StreamId(0) }))
    );
}

#[test]
fn release_is_clamped_to_what_was_delivered() {
    let (mut c, mut s) = pair(Config::default(), Config::default());
    let id = c.open_stream(&hbone_request(1), false).unwrap();
    c.send_data(id, &[1; 100], false).unwrap();
    s.recv(&c.poll_output().unwrap(), &mut Vec::new()).unwrap();
    s.release(StreamId(1), 1 << 30);
    s.release(StreamId(99), 1 << 30);
    assert!(
        s.pending_output().is_empty(),
        "no WINDOW_UPDATE for 100 octets"
    );
}

#[test]
fn ping_both_ways() {
    let (mut c, mut s) = pair(Config::default(), Config::default());
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    c.send_ping(*b"client01").unwrap();
    assert_eq!(c.send_ping(*b"again..."), Err(SendError::PingInFlight));
    s.send_ping(*b"server01").unwrap();
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert_eq!(
        ec,
        [Event::Pong {
            payload: *b"client01"
        }]
    );
    assert_eq!(
        es,
        [Event::Pong {
            payload: *b"server01"
        }]
    );
    assert!(!c.ping_in_flight());
}

#[test]
fn goaway_is_graceful_and_refuses_later_streams() {
    let (mut c, mut s) = pair(Config::default(), Config::default());
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    let first = c.open_stream(&hbone_request(1), false).unwrap();
    pump(&mut c, &mut s, &mut ec, &mut es);
    s.send_goaway(Reason::NO_ERROR, b"draining");
    // The client opens another stream before it sees the GOAWAY.
    let late = c.open_stream(&hbone_request(2), false).unwrap();
    c.send_data(late, b"lost", false).unwrap();
    es.clear();
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert!(
        es.is_empty(),
        "the server ignores streams above its GOAWAY: {es:?}"
    );
    assert_eq!(
        ec,
        [
            Event::GoAway {
                last_stream_id: first,
                code: Reason::NO_ERROR,
                debug: Bytes::from_static(b"draining")
            },
            Event::Reset {
                id: late,
                code: Reason::REFUSED_STREAM,
                remote: true
            }
        ]
    );
    assert_eq!(
        c.open_stream(&hbone_request(3), false),
        Err(SendError::GoingAway)
    );
    // The stream below the last id completes.
    s.send_headers(first, &response_fields(200, &http::HeaderMap::new()), false)
        .unwrap();
    s.send_data(first, b"done", true).unwrap();
    c.send_data(first, b"", true).unwrap();
    ec.clear();
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert!(ec.contains(&Event::StreamEnd { id: first }));
    assert_eq!(s.active_streams(), 0);
}

#[test]
fn rst_stream_both_ways() {
    let (mut c, mut s) = pair(Config::default(), Config::default());
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    let a = c.open_stream(&hbone_request(1), false).unwrap();
    let b = c.open_stream(&hbone_request(2), false).unwrap();
    pump(&mut c, &mut s, &mut ec, &mut es);
    c.reset(a, Reason::CANCEL);
    // Data the server sent before it saw the reset is ignored by the client.
    s.send_headers(a, &response_fields(200, &http::HeaderMap::new()), false)
        .unwrap();
    s.send_data(a, b"late", false).unwrap();
    s.reset(b, Reason::CONNECT_ERROR);
    es.clear();
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert_eq!(
        es,
        [Event::Reset {
            id: a,
            code: Reason::CANCEL,
            remote: true
        }]
    );
    assert_eq!(
        ec,
        [Event::Reset {
            id: b,
            code: Reason::CONNECT_ERROR,
            remote: true
        }]
    );
    assert_eq!((c.active_streams(), s.active_streams()), (0, 0));
    assert_eq!(c.failure(), None);
}

#[test]
fn max_concurrent_streams_both_sides() {
    let mut sc = Config::default();
    sc.settings.max_concurrent_streams = Some(2);
    let (mut c, _s) = pair(Config::default(), sc.clone());
    c.open_stream(&hbone_request(1), false).unwrap();
    c.open_stream(&hbone_request(2), false).unwrap();
    assert_eq!(
        c.open_stream(&hbone_request(3), false),
        Err(SendError::TooManyStreams(2))
    );
    // A peer that ignores the limit gets REFUSED_STREAM once our SETTINGS are acked.
    let mut s = server_with(sc);
    s.recv(
        &raw(frame::SETTINGS, frame::FLAG_ACK, 0, &[]),
        &mut Vec::new(),
    )
    .unwrap();
    let mut ev = Vec::new();
    for id in [1, 3, 5] {
        s.recv(&headers(id, 0, CONNECT), &mut ev).unwrap();
    }
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::StreamOpened { .. }))
            .count(),
        2
    );
    assert_eq!(
        rst_codes(s.pending_output()),
        [(5, Reason::REFUSED_STREAM.0)]
    );
    // Its DATA, sent before the RST arrived, is ignored.
    s.recv(&raw(frame::DATA, 0, 5, b"x"), &mut ev).unwrap();
}

#[test]
fn settings_change_mid_connection() {
    let (mut c, mut s) = pair(Config::default(), Config::default());
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    for n in 0..3 {
        c.open_stream(&hbone_request(n), true).unwrap();
    }
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert!(s.hpack_entries().0 > 0);
    // The server shrinks its HPACK table to 0 and its stream window to 1000.
    let mut new = s.latest_settings();
    new.header_table_size = 0;
    new.initial_window_size = 1000;
    s.update_settings(new).unwrap();
    es.clear();
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert_eq!(es, [Event::SettingsAcked]);
    assert_eq!(c.peer_settings().header_table_size, 0);
    let id = c.open_stream(&hbone_request(9), false).unwrap();
    assert_eq!(c.send_capacity(id), 1000);
    pump(&mut c, &mut s, &mut ec, &mut es);
    assert!(matches!(es[1], Event::StreamOpened { .. }), "{es:?}");
    assert_eq!(s.hpack_entries().0, 0);
    assert_eq!(c.hpack_entries().1, 0);
    assert_eq!(
        s.update_settings(Settings {
            max_frame_size: 10,
            ..new
        }),
        Err(SendError::BadSetting {
            what: "SETTINGS_MAX_FRAME_SIZE",
            value: 10
        })
    );
}

#[test]
fn continuation_carries_big_headers() {
    let mut sc = Config::default();
    sc.settings.max_frame_size = 16_384;
    sc.settings.max_header_list_size = Some(128 * 1024);
    let (mut c, mut s) = pair(Config::default(), sc);
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    let mut fields = hbone_request(1);
    let big: String = (0..50_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    fields.push(HeaderField::new(&b"x-big"[..], Bytes::from(big)));
    c.open_stream(&fields, false).unwrap();
    let kinds: Vec<u8> = frames(c.pending_output())
        .iter()
        .map(|(h, _)| h.kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|&&k| k == frame::CONTINUATION).count(),
        2
    );
    pump(&mut c, &mut s, &mut ec, &mut es);
    let Some(Event::StreamOpened { headers, .. }) = es.pop() else {
        panic!()
    };
    assert_eq!(headers, fields);
}

#[test]
fn padded_frames_are_accepted_and_padding_is_returned() {
    let sc = Config {
        connection_window: 65_535,
        ..Config::default()
    };
    let mut s = server_with(sc);
    let mut ev = Vec::new();
    // Padded HEADERS with priority fields: pad length 4, dependency 0, weight 16.
    let mut p = vec![4, 0, 0, 0, 0, 16];
    p.extend(lit(CONNECT));
    p.extend([0; 4]);
    let flags = frame::FLAG_PADDED | frame::FLAG_PRIORITY | frame::FLAG_END_HEADERS;
    s.recv(&raw(frame::HEADERS, flags, 1, &p), &mut ev).unwrap();
    assert!(matches!(&ev[0], Event::StreamOpened { headers, .. } if headers.len() == 2));
    // Padded DATA: 3 data octets and 40 000 octets of padding (pad length max 255, so
    // 160 frames of 250).
    let mut data = vec![250];
    data.extend(b"abc");
    data.extend([0; 250]);
    s.recv(&raw(frame::DATA, frame::FLAG_PADDED, 1, &data), &mut ev)
        .unwrap();
    assert_eq!(
        ev[1],
        Event::Data {
            id: StreamId(1),
            data: Bytes::from_static(b"abc")
        }
    );
    let pad_only = raw(frame::DATA, frame::FLAG_PADDED, 1, &[250; 251]);
    for _ in 0..160 {
        s.recv(&pad_only, &mut ev).unwrap();
    }
    // Padding went straight back to the connection window (no app release needed).
    let updates: Vec<_> = frames(s.pending_output())
        .into_iter()
        .filter(|(h, _)| h.kind == frame::WINDOW_UPDATE && h.stream == 0)
        .collect();
    assert!(!updates.is_empty());
    assert_eq!(ev.len(), 2);
}

#[test]
fn data_is_a_view_into_the_receive_buffer() {
    let mut s = server();
    let mut ev = Vec::new();
    s.recv(&headers(1, 0, CONNECT), &mut ev).unwrap();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    buf.extend_from_slice(&raw(frame::DATA, 0, 1, &[42; 1000]));
    buf.extend_from_slice(&raw(frame::DATA, 0, 1, &[43; 1000]));
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    s.recv_bytes(buf, &mut ev).unwrap();
    for e in &ev[1..] {
        let Event::Data { data, .. } = e else {
            panic!()
        };
        assert!(range.contains(&(data.as_ptr() as usize)), "DATA was copied");
    }
}

#[test]
fn partial_frames_wait_for_the_rest() {
    let mut s = server();
    let mut ev = Vec::new();
    let mut bytes = headers(1, 0, CONNECT);
    bytes.extend(raw(frame::DATA, frame::FLAG_END_STREAM, 1, b"payload"));
    for b in &bytes {
        s.recv(std::slice::from_ref(b), &mut ev).unwrap();
    }
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!(ev[2], Event::StreamEnd { id: StreamId(1) });
}

#[test]
fn priority_and_unknown_frames_are_ignored() {
    let mut s = server();
    let mut ev = Vec::new();
    s.recv(&raw(frame::PRIORITY, 0, 9, &[0, 0, 0, 3, 200]), &mut ev)
        .unwrap();
    s.recv(&raw(0xfa, 0xff, 3, b"extension"), &mut ev).unwrap();
    s.recv(&headers(1, 0, CONNECT), &mut ev).unwrap();
    assert_eq!(ev.len(), 1);
    // A PRIORITY frame does not open the stream it names.
    assert_eq!(s.stream_state(StreamId(9)), StreamState::Idle);
}

#[test]
fn client_checks_responses() {
    let (mut c, _) = pair(Config::default(), Config::default());
    let id = c.open_stream(&hbone_request(1), false).unwrap();
    let mut ev = Vec::new();
    c.recv(&headers(id.0, 0, &[(":status", "100")]), &mut ev)
        .unwrap();
    c.recv(
        &headers(id.0, 0, &[(":status", "503"), ("x", "y")]),
        &mut ev,
    )
    .unwrap();
    assert!(matches!(ev[0], Event::Informational { status: 100, .. }));
    assert!(matches!(ev[1], Event::Response { status: 503, .. }));
    let id2 = c.open_stream(&hbone_request(2), false).unwrap();
    c.recv(&headers(id2.0, 0, &[(":status", "20")]), &mut ev)
        .unwrap();
    assert_eq!(
        ev[2],
        Event::Reset {
            id: id2,
            code: Reason::PROTOCOL_ERROR,
            remote: false
        }
    );
}

#[test]
fn per_stream_and_event_sizes_stay_small() {
    // 200 streams per connection, events in a reused Vec: keep both compact.
    assert!(std::mem::size_of::<super::state::Stream>() <= 40);
    assert!(std::mem::size_of::<Event>() <= 56);
}

#[test]
fn reading_straight_into_the_receive_buffer() {
    let mut s = server();
    let mut ev = Vec::new();
    let bytes = [
        headers(1, 0, CONNECT),
        raw(frame::DATA, frame::FLAG_END_STREAM, 1, b"abc"),
    ]
    .concat();
    let (a, b) = bytes.split_at(bytes.len() - 2);
    s.read_buf().extend_from_slice(a);
    s.process(&mut ev).unwrap();
    assert_eq!(s.buffered_input(), frame::HEADER_LEN + 3 - 2);
    assert_eq!(ev.len(), 1);
    s.read_buf().extend_from_slice(b);
    s.process(&mut ev).unwrap();
    assert_eq!(s.buffered_input(), 0);
    assert_eq!(ev[2], Event::StreamEnd { id: StreamId(1) });
}
