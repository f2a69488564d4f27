//! Conformance, client role: our client codec against the h2 crate's server over an
//! in-memory duplex — HBONE CONNECT streams, flow control both ways, RST_STREAM, GOAWAY,
//! PING, SETTINGS changes, CONTINUATION — and the error codes of malformed input compared
//! with what h2 answers.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn_tests::{frames, hbone_request};
use super::frame;
use super::harness_tests::*;
use super::*;
use crate::hbone::H2Settings;

fn client() -> Conn {
    Conn::new(
        Role::Client,
        Config::hbone(Role::Client, &H2Settings::default()),
    )
}

/// An h2 server that echoes every stream's body after it ended, answering 200 with a
/// `baggage` header; returns the sha256 of each body it received.
async fn echo_server(b: tokio::io::DuplexStream, builder: h2::server::Builder) -> Vec<Vec<u8>> {
    let mut conn = builder
        .handshake::<_, Bytes>(b)
        .await
        .expect("h2 handshake");
    let mut tasks = Vec::new();
    while let Some(r) = conn.accept().await {
        let (req, mut respond) = r.expect("h2 accept");
        tasks.push(tokio::spawn(async move {
            assert_eq!(req.method(), http::Method::CONNECT);
            assert_eq!(req.uri().authority().unwrap().as_str(), "10.0.0.9:8080");
            assert!(
                req.headers()["forwarded"]
                    .to_str()
                    .unwrap()
                    .starts_with("for=\"10.1.0.2:")
            );
            assert_eq!(req.headers()["traceparent"].len(), 55);
            let big = req.headers().get("x-big").cloned();
            let mut body = req.into_body();
            let got = read_body(&mut body).await.expect("h2 body");
            let mut resp = http::Response::builder()
                .status(200)
                .header("baggage", "k8s.namespace.name=default,service.name=echo");
            if let Some(v) = big {
                resp = resp.header("x-big-echo", v);
            }
            let mut send = respond
                .send_response(resp.body(()).unwrap(), false)
                .unwrap();
            write_body(&mut send, &got).await.expect("h2 echo");
            sha(&got)
        }));
    }
    let mut sums = Vec::new();
    for t in tasks {
        sums.push(t.await.expect("h2 stream task"));
    }
    sums
}

/// Sends `bodies` on the streams (as windows allow) and collects the echoes.
async fn run_echo(d: &mut Driver, sent: &[(StreamId, Vec<u8>)]) -> HashMap<StreamId, Vec<u8>> {
    let mut offsets = vec![0usize; sent.len()];
    let mut bodies = HashMap::new();
    let mut ended = Vec::new();
    let mut responses = 0;
    d.until(|conn, ev| {
        for (i, (id, data)) in sent.iter().enumerate() {
            if offsets[i] < data.len() || (data.is_empty() && offsets[i] == 0) {
                offsets[i] += conn.send_data(*id, &data[offsets[i]..], true).unwrap();
                if data.is_empty() {
                    offsets[i] = 1;
                }
            }
        }
        for e in take_data(conn, ev, &mut bodies, &mut ended) {
            match e {
                Event::Response {
                    status, headers, ..
                } => {
                    assert_eq!(status, 200);
                    assert_eq!(
                        field(&headers, "baggage"),
                        Some(&b"k8s.namespace.name=default,service.name=echo"[..])
                    );
                    responses += 1;
                }
                Event::PeerSettings { .. } | Event::SettingsAcked | Event::WindowUpdate { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        ended.len() == sent.len()
    })
    .await;
    assert_eq!(responses, sent.len());
    bodies
}

async fn close(mut d: Driver) {
    d.conn.send_goaway(Reason::NO_ERROR, b"");
    d.flush().await;
    d.wr.shutdown().await.unwrap();
    while !d.eof {
        tokio::time::timeout(Duration::from_secs(10), d.step())
            .await
            .expect("peer did not close")
            .expect("codec error");
    }
}

#[tokio::test]
async fn client_many_connect_streams_against_h2() {
    let (a, b) = duplex();
    let server = tokio::spawn(echo_server(b, h2_server_builder()));
    let mut d = Driver::new(client(), a);
    let mut sent = Vec::new();
    for i in 0..60u16 {
        let id = d.conn.open_stream(&hbone_request(i), false).unwrap();
        sent.push((id, payload(u64::from(i), 10_000 + usize::from(i) * 3_000)));
    }
    let bodies = run_echo(&mut d, &sent).await;
    for (id, data) in &sent {
        assert_eq!(sha(&bodies[id]), sha(data), "{id}");
    }
    assert!(
        d.conn.hpack_entries().0 > 0,
        "h2 indexed its response headers"
    );
    assert!(
        d.conn.hpack_entries().1 > 0,
        "we indexed our request headers"
    );
    close(d).await;
    let mut sums = server.await.unwrap();
    let mut want: Vec<_> = sent.iter().map(|(_, d)| sha(d)).collect();
    sums.sort();
    want.sort();
    assert_eq!(sums, want);
}

#[tokio::test]
async fn client_large_transfer_with_small_windows() {
    let (a, b) = duplex();
    let mut sb = h2::server::Builder::new();
    sb.initial_window_size(65_535)
        .initial_connection_window_size(65_535);
    let up = payload(1, 3 << 20);
    let down = payload(2, 3 << 20);
    let down2 = down.clone();
    let server = tokio::spawn(async move {
        let mut conn = sb.handshake::<_, Bytes>(b).await.unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        let task = tokio::spawn(async move {
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            let mut body = req.into_body();
            let (got, sent) = tokio::join!(read_body(&mut body), write_body(&mut send, &down2));
            sent.unwrap();
            sha(&got.unwrap())
        });
        while let Some(r) = conn.accept().await {
            r.unwrap();
        }
        task.await.unwrap()
    });
    let mut cfg = Config::default();
    cfg.settings.initial_window_size = 65_535;
    cfg.settings.max_frame_size = 16_384;
    cfg.connection_window = 65_535;
    let mut d = Driver::new(Conn::new(Role::Client, cfg), a);
    let id = d.conn.open_stream(&hbone_request(1), false).unwrap();
    let (mut off, mut blocked, mut updates) = (0, 0, 0);
    let mut bodies = HashMap::new();
    let mut ended = Vec::new();
    d.until(|conn, ev| {
        if off < up.len() {
            let n = conn.send_data(id, &up[off..], true).unwrap();
            off += n;
            if off < up.len() && conn.send_capacity(id) == 0 {
                blocked += 1;
            }
        }
        for e in take_data(conn, ev, &mut bodies, &mut ended) {
            if matches!(e, Event::WindowUpdate { .. }) {
                updates += 1;
            }
        }
        off == up.len() && ended.contains(&id)
    })
    .await;
    assert_eq!(sha(&bodies[&id]), sha(&down));
    assert!(
        blocked > 10 && updates > 10,
        "blocked {blocked}, updates {updates}"
    );
    close(d).await;
    assert_eq!(server.await.unwrap(), sha(&up));
}

#[tokio::test]
async fn client_rst_stream_both_ways() {
    let (a, b) = duplex();
    let server = tokio::spawn(async move {
        let mut conn = h2_server_builder().handshake::<_, Bytes>(b).await.unwrap();
        let mut tasks = Vec::new();
        while let Some(r) = conn.accept().await {
            let (_req, mut respond) = r.unwrap();
            tasks.push(tokio::spawn(async move {
                if u32::from(respond.stream_id()) == 3 {
                    respond.send_reset(h2::Reason::CONNECT_ERROR);
                    return None;
                }
                std::future::poll_fn(|cx| respond.poll_reset(cx)).await.ok()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut d = Driver::new(client(), a);
    let first = d.conn.open_stream(&hbone_request(1), false).unwrap();
    let second = d.conn.open_stream(&hbone_request(2), false).unwrap();
    let mut reset = None;
    d.until(|_, ev| {
        for e in ev.drain(..) {
            if let Event::Reset { id, code, remote } = e {
                reset = Some((id, code, remote));
            }
        }
        reset.is_some()
    })
    .await;
    assert_eq!(reset, Some((second, Reason::CONNECT_ERROR, true)));
    d.conn.reset(first, Reason::CANCEL);
    assert_eq!(d.conn.stream_state(first), StreamState::Closed);
    close(d).await;
    let out = server.await.unwrap();
    assert_eq!(out, [Some(h2::Reason::CANCEL), None]);
}

#[tokio::test]
async fn client_sees_h2_graceful_goaway() {
    let (a, b) = duplex();
    let server = tokio::spawn(async move {
        let mut conn = h2_server_builder().handshake::<_, Bytes>(b).await.unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        conn.graceful_shutdown();
        let task = tokio::spawn(async move {
            let got = read_body(&mut req.into_body()).await.unwrap();
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            write_body(&mut send, &got).await.unwrap();
        });
        while let Some(r) = conn.accept().await {
            r.unwrap();
        }
        task.await.unwrap();
    });
    let mut d = Driver::new(client(), a);
    let id = d.conn.open_stream(&hbone_request(1), false).unwrap();
    let mut goaways = Vec::new();
    d.until(|_, ev| {
        for e in ev.drain(..) {
            if let Event::GoAway {
                last_stream_id,
                code,
                ..
            } = e
            {
                goaways.push((last_stream_id, code));
            }
        }
        goaways.len() == 2
    })
    .await;
    // h2 first announces 2^31-1, then (after a PING round trip) the real last stream.
    assert_eq!(
        goaways[0],
        (StreamId(frame::MAX_STREAM_ID), Reason::NO_ERROR)
    );
    assert_eq!(goaways[1], (id, Reason::NO_ERROR));
    assert_eq!(
        d.conn.open_stream(&hbone_request(2), false),
        Err(SendError::GoingAway)
    );
    let data = payload(5, 100_000);
    d.conn.send_data(id, &data, true).unwrap();
    let mut bodies = HashMap::new();
    let mut ended = Vec::new();
    d.until(|conn, ev| {
        take_data(conn, ev, &mut bodies, &mut ended);
        ended.contains(&id)
    })
    .await;
    assert_eq!(bodies[&id], data);
    // h2 closes the connection once its last stream is done.
    while !d.eof {
        tokio::time::timeout(Duration::from_secs(10), d.step())
            .await
            .unwrap()
            .unwrap();
    }
    server.await.unwrap();
}

#[tokio::test]
async fn client_ping_both_ways() {
    let (a, b) = duplex();
    let server = tokio::spawn(async move {
        let mut conn = h2_server_builder().handshake::<_, Bytes>(b).await.unwrap();
        let mut pp = conn.ping_pong().unwrap();
        let ping = tokio::spawn(async move { pp.ping(h2::Ping::opaque()).await.is_ok() });
        while let Some(r) = conn.accept().await {
            r.unwrap();
        }
        ping.await.unwrap()
    });
    let mut d = Driver::new(client(), a);
    d.conn.send_ping(*b"hbone-pi").unwrap();
    let mut pong = None;
    d.until(|_, ev| {
        for e in ev.drain(..) {
            if let Event::Pong { payload } = e {
                pong = Some(payload);
            }
        }
        pong.is_some()
    })
    .await;
    assert_eq!(pong, Some(*b"hbone-pi"));
    // Give h2's ping its answer before closing.
    for _ in 0..5 {
        let _ = tokio::time::timeout(Duration::from_millis(20), d.step()).await;
    }
    close(d).await;
    assert!(server.await.unwrap(), "h2's PING was answered");
}

#[tokio::test]
async fn client_settings_change_mid_connection() {
    let (a, b) = duplex();
    let server = tokio::spawn(async move {
        let mut conn = h2_server_builder().handshake::<_, Bytes>(b).await.unwrap();
        let mut n = 0;
        let mut tasks = Vec::new();
        while let Some(r) = conn.accept().await {
            let (req, mut respond) = r.unwrap();
            n += 1;
            if n == 2 {
                // After a full round trip h2's own SETTINGS are acknowledged.
                conn.set_initial_window_size(1 << 20).unwrap();
            }
            tasks.push(tokio::spawn(async move {
                let _ = read_body(&mut req.into_body()).await;
                let resp = http::Response::builder()
                    .status(200)
                    .header("baggage", "k8s.namespace.name=default,service.name=echo")
                    .body(())
                    .unwrap();
                let _ = respond.send_response(resp, true);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut d = Driver::new(client(), a);
    let mut windows = Vec::new();
    let mut done = Vec::new();
    let first = d.conn.open_stream(&hbone_request(1), true).unwrap();
    d.until(|_, ev| {
        for e in ev.drain(..) {
            if let Event::StreamEnd { id } = e {
                done.push(id);
            }
        }
        done.contains(&first)
    })
    .await;
    let next = d.conn.open_stream(&hbone_request(2), false).unwrap();
    d.until(|conn, ev| {
        for e in ev.drain(..) {
            if let Event::PeerSettings { settings } = e {
                windows.push(settings.initial_window_size);
            }
        }
        windows.last() == Some(&(1 << 20)) && conn.hpack_entries().0 > 0
    })
    .await;
    // The new initial window applies to the open stream.
    assert_eq!(d.conn.send_windows(next).1, Some(1 << 20));
    d.conn.send_data(next, b"", true).unwrap();
    // Our turn: no more HPACK dynamic table for the server's encoder.
    let mut s = d.conn.latest_settings();
    s.header_table_size = 0;
    d.conn.update_settings(s).unwrap();
    d.until(|conn, _| conn.settings_acked()).await;
    let second = d.conn.open_stream(&hbone_request(3), true).unwrap();
    d.until(|_, ev| ev.iter().any(|e| *e == Event::StreamEnd { id: second }))
        .await;
    assert_eq!(d.conn.hpack_entries().0, 0, "h2 sent the size update");
    close(d).await;
    server.await.unwrap();
}

#[tokio::test]
async fn client_big_headers_use_continuation_both_ways() {
    let (a, b) = duplex();
    // h2's default SETTINGS_MAX_FRAME_SIZE is 16 384: our 40 KB header needs CONTINUATION.
    let mut sb = h2::server::Builder::new();
    sb.max_header_list_size(256 * 1024);
    let server = tokio::spawn(echo_server(b, sb));
    let mut cfg = Config::default();
    cfg.settings.max_frame_size = 16_384;
    cfg.settings.max_header_list_size = Some(256 * 1024);
    let mut d = Driver::new(Conn::new(Role::Client, cfg), a);
    d.until(|conn, _| conn.settings_acked()).await;
    let big: String = (0..40_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let mut fields = hbone_request(1);
    fields.push(HeaderField::new(&b"x-big"[..], Bytes::from(big.clone())));
    let id = d.conn.open_stream(&fields, false).unwrap();
    let sent_frames = frames(d.conn.pending_output());
    assert!(
        sent_frames
            .iter()
            .any(|(h, _)| h.kind == frame::CONTINUATION)
    );
    d.conn.send_data(id, b"x", true).unwrap();
    let mut echo = None;
    d.until(|_, ev| {
        for e in ev.drain(..) {
            if let Event::Response { headers, .. } = e {
                echo = field(&headers, "x-big-echo").map(|v| v.to_vec());
            }
        }
        echo.is_some()
    })
    .await;
    assert_eq!(echo.unwrap(), big.as_bytes());
    close(d).await;
    server.await.unwrap();
}

/// Feeds raw bytes to an h2 server and returns what it answered: the GOAWAY code, and
/// the RST_STREAM codes.
async fn h2_server_answer(bytes: Vec<u8>) -> (Option<u32>, Vec<u32>) {
    let (mut a, b) = duplex();
    tokio::spawn(async move {
        let Ok(mut conn) = h2::server::Builder::new().handshake::<_, Bytes>(b).await else {
            return;
        };
        let mut keep = Vec::new();
        while let Some(Ok(r)) = conn.accept().await {
            keep.push(r);
        }
    });
    let mut input = frame::PREFACE.to_vec();
    input.extend(super::conn_tests::raw(frame::SETTINGS, 0, 0, &[]));
    input.extend(bytes);
    a.write_all(&input).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), a.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let f = frames(&out);
    let goaway = f
        .iter()
        .find(|(h, _)| h.kind == frame::GOAWAY)
        .map(|(_, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
    let rst = f
        .iter()
        .filter(|(h, _)| h.kind == frame::RST_STREAM)
        .map(|(_, p)| u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
        .collect();
    (goaway, rst)
}

/// Our connection-error codes against h2's for the same malformed input.
#[tokio::test]
async fn error_codes_match_h2() {
    let mut mismatches = Vec::new();
    for (what, bytes, code) in super::errors_tests::connection_error_cases() {
        let (goaway, rst) = h2_server_answer(bytes).await;
        if goaway != Some(code.0) {
            mismatches.push(format!(
                "{what}: ours {code}, h2 GOAWAY {goaway:?} RST {rst:?}"
            ));
        }
    }
    let known: &[&str] = super::errors_tests::H2_DIFFERS;
    let unexpected: Vec<_> = mismatches
        .iter()
        .filter(|m| !known.iter().any(|k| m.starts_with(k)))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    for k in known {
        assert!(
            mismatches.iter().any(|m| m.starts_with(k)),
            "{k}: h2 now agrees, drop it from H2_DIFFERS"
        );
    }
}
