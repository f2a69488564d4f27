//! Export/import tests: the byte encoding round trips, an imported codec behaves exactly
//! like the original, corrupt states are refused, and — against real h2 peers in both
//! roles — a connection exported mid-transfer (data in flight, a partial frame buffered,
//! dynamic HPACK entries) continues in a fresh codec with every byte arriving intact.

use std::collections::HashMap;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use tokio::io::AsyncWriteExt;

use super::conn_tests::{CONNECT, hbone_request, lit, pair, pump, raw};
use super::frame;
use super::harness_tests::*;
use super::*;

/// A server state with something in every field.
fn busy_server() -> Conn {
    let (mut c, mut s) = pair(Config::default(), Config::default());
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    for n in 0..4 {
        let id = c.open_stream(&hbone_request(n), false).unwrap();
        c.send_data(id, &payload(u64::from(n), 5_000), n == 3)
            .unwrap();
    }
    pump(&mut c, &mut s, &mut ec, &mut es);
    s.send_headers(
        StreamId(1),
        &response_fields(200, &http::HeaderMap::new()),
        false,
    )
    .unwrap();
    s.send_data(StreamId(1), b"unflushed", false).unwrap();
    s.reset(StreamId(5), Reason::CANCEL);
    s.send_ping(*b"in-fligh").unwrap();
    let mut st = *s.local_settings();
    st.initial_window_size = 1 << 20;
    s.update_settings(st).unwrap();
    s.release(StreamId(3), 2_000);
    // A header block cut after its HEADERS frame, and half of a DATA frame.
    let mut ev = Vec::new();
    s.recv(&raw(frame::HEADERS, 0, 9, &lit(CONNECT)), &mut ev)
        .unwrap();
    s.recv(
        &raw(frame::CONTINUATION, frame::FLAG_END_HEADERS, 9, &[])[..5],
        &mut ev,
    )
    .unwrap();
    s
}

#[test]
fn state_round_trips_through_bytes() {
    let s = busy_server();
    let st = s.export();
    assert!(st.streams() >= 3);
    assert!(st.buffered_input() > 0 && st.pending_output() > 0);
    assert!(st.partial.is_some() && st.ping_out.is_some() && !st.local_pending.is_empty());
    assert!(st.decoder.table.len() > 0);
    let bytes = st.encode();
    let back = ConnState::decode(&bytes).unwrap();
    assert_eq!(back, st);
    let again = Conn::import(back).unwrap().export();
    assert_eq!(again, st);
}

#[test]
fn imported_codec_continues_exactly_like_the_original() {
    let (mut c, mut s) = pair(Config::default(), Config::default());
    let (mut ec, mut es) = (Vec::new(), Vec::new());
    let id = c.open_stream(&hbone_request(1), false).unwrap();
    pump(&mut c, &mut s, &mut ec, &mut es);
    let mut twin = hand_over(&s);
    let mut inputs: Vec<Bytes> = Vec::new();
    for n in 0..20u16 {
        c.send_data(id, &payload(u64::from(n), 7_000), false)
            .unwrap();
        c.open_stream(&hbone_request(n + 2), n % 2 == 0).unwrap();
        if n % 5 == 0 {
            c.release(id, 0);
            c.reset(StreamId(u32::from(n) * 2 + 3), Reason::CANCEL);
        }
        inputs.push(c.poll_output().unwrap());
    }
    // Same input, split differently: same events, same output, same state.
    let (mut e1, mut e2) = (Vec::new(), Vec::new());
    for i in &inputs {
        s.recv(i, &mut e1).unwrap();
        let (a, b) = i.split_at(i.len() / 3);
        twin.recv(a, &mut e2).unwrap();
        twin.recv(b, &mut e2).unwrap();
    }
    assert_eq!(e1, e2);
    for e in &e1 {
        if let Event::Data { id, data } = e {
            s.release(*id, data.len());
            twin.release(*id, data.len());
        }
    }
    assert!(e1.len() > 40);
    assert_eq!(s.pending_output(), twin.pending_output());
    assert_eq!(s.export(), twin.export());
}

#[test]
fn corrupt_states_are_refused() {
    let bytes = busy_server().export().encode();
    for n in 0..bytes.len() {
        assert!(ConnState::decode(&bytes[..n]).is_err(), "truncated at {n}");
    }
    let mut wrong = bytes.clone();
    wrong[4] = 9;
    assert_eq!(ConnState::decode(&wrong), Err(ImportError::Version(9)));
    wrong[0] = b'X';
    assert_eq!(ConnState::decode(&wrong), Err(ImportError::Magic));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(ConnState::decode(&trailing).is_err());
    // Decodable but inconsistent: a server stream with a client's parity it never saw.
    let mut st = busy_server().export();
    st.streams.push((1_000_001, st.streams[0].1.clone()));
    assert!(matches!(Conn::import(st), Err(ImportError::Corrupt(_))));
    // Random corruption: never a panic; whatever imports still runs.
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    for _ in 0..2_000 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
        }
        if let Ok(st) = ConnState::decode(&b)
            && let Ok(mut conn) = Conn::import(st)
        {
            let _ = conn.recv(&raw(frame::PING, 0, 0, &[0; 8]), &mut Vec::new());
            let _ = conn.send_data(StreamId(1), b"x", false);
        }
    }
}

/// Export, encode, decode, import: what a hand-over between processes does.
fn hand_over(conn: &Conn) -> Conn {
    let bytes = conn.export().encode();
    Conn::import(ConnState::decode(&bytes).expect("decode")).expect("import")
}

/// An h2 server: answers 200 with `baggage`, then sends `x-down` octets while reading the
/// upload; returns (stream id, sha of the upload).
async fn h2_transfer_server(b: tokio::io::DuplexStream) -> Vec<(u32, Vec<u8>)> {
    let mut conn = h2_server_builder()
        .handshake::<_, Bytes>(b)
        .await
        .expect("h2 handshake");
    let mut tasks = Vec::new();
    while let Some(r) = conn.accept().await {
        let (req, mut respond) = r.expect("h2 accept");
        tasks.push(tokio::spawn(async move {
            let id = u32::from(respond.stream_id());
            let down: usize = req.headers()["x-down"].to_str().unwrap().parse().unwrap();
            let resp = http::Response::builder()
                .status(200)
                .header("baggage", "k8s.namespace.name=default,service.name=echo")
                .body(())
                .unwrap();
            let mut send = respond.send_response(resp, false).unwrap();
            let mut body = req.into_body();
            let data = payload(u64::from(id) + 100, down);
            let (got, sent) = tokio::join!(read_body(&mut body), write_body(&mut send, &data));
            sent.expect("h2 send");
            (id, sha(&got.expect("h2 receive")))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("h2 stream task"));
    }
    out
}

fn transfer_request(n: u16, down: usize) -> Vec<HeaderField> {
    let mut f = hbone_request(n);
    f.push(HeaderField::new(
        &b"x-down"[..],
        Bytes::from(down.to_string()),
    ));
    f
}

#[tokio::test]
async fn client_exported_mid_transfer_continues_against_h2() {
    let (a, b) = duplex();
    let server = tokio::spawn(h2_transfer_server(b));
    let cfg = Config::hbone(Role::Client, &crate::hbone::H2Settings::default());
    let mut d = Driver::new(Conn::new(Role::Client, cfg), a);
    // Stream 1 completes first, so both HPACK tables hold entries.
    let first = d
        .conn
        .open_stream(&transfer_request(1, 1_000), true)
        .unwrap();
    let mut bodies: HashMap<StreamId, Vec<u8>> = HashMap::new();
    let mut ended = Vec::new();
    d.until(|conn, ev| {
        take_data(conn, ev, &mut bodies, &mut ended);
        ended.contains(&first)
    })
    .await;
    let size = 2 << 20;
    let big = d
        .conn
        .open_stream(&transfer_request(2, size), false)
        .unwrap();
    let up = payload(7, size);
    let mut off = 0;
    // Small reads: frames often straddle reads. Upload at most 2/3 before the hand-over.
    d.max_read = 1_000;
    d.until(|conn, ev| {
        let upto = (off + 50_000).min(size * 2 / 3);
        off += conn.send_data(big, &up[off..upto], false).unwrap();
        take_data(conn, ev, &mut bodies, &mut ended);
        let down = bodies.get(&big).map_or(0, Vec::len);
        off > size / 3
            && down > size / 3
            && conn.buffered_input() > 0
            && !conn.pending_output().is_empty()
    })
    .await;
    let (dec, enc) = d.conn.hpack_entries();
    assert!(dec > 0 && enc > 0, "dynamic HPACK entries at export");
    let st = d.conn.export();
    assert!(st.buffered_input() > 0 && st.pending_output() > 0 && st.streams() == 1);
    // The new process takes over.
    d.conn = hand_over(&d.conn);
    d.max_read = 64 * 1024;
    d.until(|conn, ev| {
        if off < up.len() {
            off += conn.send_data(big, &up[off..], true).unwrap();
        }
        take_data(conn, ev, &mut bodies, &mut ended);
        off == up.len() && ended.contains(&big)
    })
    .await;
    // A new stream after the hand-over uses both imported HPACK tables.
    let third = d
        .conn
        .open_stream(&transfer_request(3, 10_000), false)
        .unwrap();
    d.conn.send_data(third, b"after", true).unwrap();
    let mut status = None;
    d.until(|conn, ev| {
        for e in take_data(conn, ev, &mut bodies, &mut ended) {
            if let Event::Response {
                id,
                status: s,
                headers,
            } = e
            {
                assert_eq!(
                    field(&headers, "baggage"),
                    Some(&b"k8s.namespace.name=default,service.name=echo"[..])
                );
                if id == third {
                    status = Some(s);
                }
            }
        }
        ended.contains(&third)
    })
    .await;
    assert_eq!(status, Some(200));
    assert_eq!(
        sha(&bodies[&big]),
        sha(&payload(u64::from(big.0) + 100, size))
    );
    assert_eq!(bodies[&third], payload(u64::from(third.0) + 100, 10_000));
    d.conn.send_goaway(Reason::NO_ERROR, b"");
    d.flush().await;
    d.wr.shutdown().await.unwrap();
    let mut sums = server.await.expect("h2 server saw an error");
    sums.sort();
    assert_eq!(sums[1], (big.0, sha(&up)));
    assert_eq!(sums[2], (third.0, sha(b"after")));
}

#[tokio::test]
async fn server_exported_mid_transfer_continues_against_h2() {
    let (a, b) = duplex();
    let size = 2 << 20;
    let up = payload(11, size);
    let up2 = up.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(async move {
        let (client, conn) = h2_client_builder().handshake::<_, Bytes>(a).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let roundtrip = |n: u16, body: Vec<u8>| {
            let client = client.clone();
            async move {
                let mut c = client.ready().await.unwrap();
                let req = super::to_request(&hbone_request(n)).unwrap();
                let (resp, mut send) = c.send_request(req, false).unwrap();
                let w = tokio::spawn(async move { write_body(&mut send, &body).await.unwrap() });
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200);
                let got = read_body(&mut resp.into_body()).await.unwrap();
                w.await.unwrap();
                got
            }
        };
        assert_eq!(roundtrip(1, b"warm".to_vec()).await, b"warm");
        let big = roundtrip(2, up2.clone()).await;
        // The server was handed over during the big transfer; a new stream follows.
        rx.await.unwrap();
        let after = roundtrip(3, b"after".to_vec()).await;
        (sha(&big) == sha(&up2), after)
    });
    let mut d = Driver::new(
        Conn::new(
            Role::Server,
            Config::hbone(Role::Server, &crate::hbone::H2Settings::default()),
        ),
        b,
    );
    let mut echo: HashMap<StreamId, (Vec<u8>, usize, bool)> = HashMap::new();
    let mut served = 0usize;
    let mut run = |conn: &mut Conn, ev: &mut Vec<Event>| {
        for e in ev.drain(..) {
            match e {
                Event::StreamOpened { id, .. } => {
                    let mut h = http::HeaderMap::new();
                    h.insert("baggage", "k8s.namespace.name=default".parse().unwrap());
                    conn.send_headers(id, &response_fields(200, &h), false)
                        .unwrap();
                    echo.insert(id, (Vec::new(), 0, false));
                }
                Event::Data { id, data } => {
                    conn.release(id, data.len());
                    served += data.len();
                    echo.get_mut(&id).unwrap().0.extend_from_slice(&data);
                }
                Event::StreamEnd { id } => echo.get_mut(&id).unwrap().2 = true,
                Event::Reset { .. } => panic!("{e:?}"),
                _ => {}
            }
        }
        let mut done = Vec::new();
        for (id, (buf, off, end)) in echo.iter_mut() {
            // Echo in pieces so output is pending most of the time.
            let upto = buf.len().min(*off + 20_000);
            *off += conn.send_data(*id, &buf[*off..upto], false).unwrap();
            if *end && *off == buf.len() && conn.send_data(*id, &[], true).is_ok() {
                done.push(*id);
            }
        }
        for id in done {
            echo.remove(&id);
        }
        served
    };
    d.max_read = 1_000;
    d.until(|conn, ev| {
        let served = run(conn, ev);
        served > size / 2 && conn.buffered_input() > 0 && !conn.pending_output().is_empty()
    })
    .await;
    assert!(d.conn.hpack_entries().0 > 0 && d.conn.hpack_entries().1 > 0);
    d.conn = hand_over(&d.conn);
    d.max_read = 64 * 1024;
    let _ = tx.send(());
    let mut client = client;
    let result = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            run(&mut d.conn, &mut d.events);
            tokio::select! {
                r = &mut client => return r.expect("h2 client saw an error"),
                r = d.step() => r.expect("codec error"),
            }
        }
    })
    .await
    .expect("timed out");
    assert_eq!(result, (true, b"after".to_vec()));
}
