//! Conformance, server role: the h2 crate's client against our server codec over an
//! in-memory duplex — CONNECT answered 200/400/503, echo with flow control both ways,
//! RST_STREAM, our graceful GOAWAY, PING, SETTINGS changes, CONTINUATION.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::conn_tests::frames;
use super::frame;
use super::harness_tests::*;
use super::*;
use crate::hbone::{
    ConnectHeaders, H2Settings, check_destination, connect_request, parse_connect, traceparent,
};

fn server(cfg: Config) -> Conn {
    Conn::new(Role::Server, cfg)
}

fn hbone_server() -> Conn {
    server(Config::hbone(Role::Server, &H2Settings::default()))
}

fn ztunnel_request(port: u16, n: u16) -> http::Request<()> {
    let h = ConnectHeaders {
        client: format!("10.1.0.2:{}", 40_000 + n).parse().unwrap(),
        service_host: None,
        baggage: "k8s.namespace.name=default".into(),
        traceparent: traceparent(u128::from(n), 7),
    };
    connect_request(format!("10.0.0.9:{port}").parse().unwrap(), &h)
}

/// What our server does with a request head: ztunnel's inbound checks, as a status.
fn decide(headers: &[HeaderField]) -> u16 {
    let Ok(req) = to_request(headers) else {
        return 400;
    };
    let local: IpAddr = "10.0.0.9".parse().unwrap();
    match parse_connect(req.method(), req.uri().authority().map(|a| a.as_str()))
        .and_then(|a| check_destination(a, local, &[15008]))
    {
        Ok(()) => 200,
        Err(e) => e.status().as_u16(),
    }
}

/// Our echo server: answers each stream (200 + echo, or an error status and END_STREAM),
/// writing as windows allow. Runs until `stop` says so.
struct Echo {
    pending: HashMap<StreamId, (Vec<u8>, usize, bool)>,
    statuses: Vec<u16>,
    resets: Vec<(StreamId, Reason)>,
    pongs: usize,
    big_header: Option<Vec<u8>>,
    continuation_sent: bool,
}

impl Echo {
    fn new() -> Echo {
        Echo {
            pending: HashMap::new(),
            statuses: Vec::new(),
            resets: Vec::new(),
            pongs: 0,
            big_header: None,
            continuation_sent: false,
        }
    }

    fn step(&mut self, conn: &mut Conn, ev: &mut Vec<Event>) {
        for e in ev.drain(..) {
            match e {
                Event::StreamOpened { id, headers } => {
                    let status = decide(&headers);
                    self.statuses.push(status);
                    let mut resp = response_fields(status, &http::HeaderMap::new());
                    if status == 200 {
                        resp.push(HeaderField::new(
                            &b"baggage"[..],
                            &b"k8s.namespace.name=default"[..],
                        ));
                    }
                    if let Some(v) = field(&headers, "x-big") {
                        self.big_header = Some(v.to_vec());
                        resp.push(HeaderField::new(
                            &b"x-big-echo"[..],
                            Bytes::copy_from_slice(v),
                        ));
                    }
                    let before = conn.pending_output().len();
                    conn.send_headers(id, &resp, status != 200).unwrap();
                    self.continuation_sent |= frames(&conn.pending_output()[before..])
                        .iter()
                        .any(|(h, _)| h.kind == frame::CONTINUATION);
                    if status == 200 {
                        self.pending.insert(id, (Vec::new(), 0, false));
                    }
                }
                Event::Data { id, data } => {
                    conn.release(id, data.len());
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.0.extend_from_slice(&data);
                    }
                }
                Event::StreamEnd { id } => {
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.2 = true;
                    }
                }
                Event::Reset { id, code, .. } => {
                    self.pending.remove(&id);
                    self.resets.push((id, code));
                }
                Event::Pong { .. } => self.pongs += 1,
                _ => {}
            }
        }
        let mut done = Vec::new();
        for (id, (buf, off, ended)) in self.pending.iter_mut() {
            if *off < buf.len() {
                *off += conn.send_data(*id, &buf[*off..], false).unwrap_or(0);
            }
            if *ended && *off == buf.len() && conn.send_data(*id, &[], true).is_ok() {
                done.push(*id);
            }
        }
        for id in done {
            self.pending.remove(&id);
        }
    }
}

/// Runs our server until the h2 client task finishes, then returns its result.
async fn serve<T: Send + 'static>(
    d: &mut Driver,
    echo: &mut Echo,
    client: tokio::task::JoinHandle<T>,
) -> T {
    let mut client = client;
    let fut = async {
        loop {
            echo.step(&mut d.conn, &mut d.events);
            tokio::select! {
                r = &mut client => return r.expect("h2 client task"),
                r = d.step() => r.expect("codec error"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("test timed out")
}

async fn h2_connect(
    a: tokio::io::DuplexStream,
    b: h2::client::Builder,
) -> h2::client::SendRequest<Bytes> {
    let (client, conn) = b.handshake::<_, Bytes>(a).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// One CONNECT through h2: sends `body`, returns status and echoed body.
async fn h2_roundtrip(
    client: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut c = client.clone().ready().await.unwrap();
    let (resp, mut send) = c.send_request(req, false).unwrap();
    let writer = tokio::spawn(async move {
        let _ = write_body(&mut send, &body).await;
    });
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let got = read_body(&mut resp.into_body()).await.unwrap();
    writer.await.unwrap();
    (status, got)
}

#[tokio::test]
async fn server_answers_h2_connects_and_echoes() {
    let (a, b) = duplex();
    let client = tokio::spawn(async move {
        let client = h2_connect(a, h2_client_builder()).await;
        let mut tasks = Vec::new();
        for i in 0..60u16 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                let data = payload(u64::from(i), 5_000 + usize::from(i) * 4_000);
                let (status, got) =
                    h2_roundtrip(&mut c, ztunnel_request(8080, i), data.clone()).await;
                assert_eq!(status, 200);
                assert_eq!(sha(&got), sha(&data), "stream {i}");
            }));
        }
        // Refusals: an own port (503), a hostname authority (400), not CONNECT (400).
        let mut c = client.clone();
        let (s1, _) = h2_roundtrip(&mut c, ztunnel_request(15008, 99), Vec::new()).await;
        let host = http::Request::builder()
            .method("CONNECT")
            .uri("echo.svc:80")
            .body(())
            .unwrap();
        let (s2, _) = h2_roundtrip(&mut c, host, Vec::new()).await;
        let get = http::Request::builder()
            .uri("https://10.0.0.9:8080/")
            .body(())
            .unwrap();
        let (s3, _) = h2_roundtrip(&mut c, get, Vec::new()).await;
        for t in tasks {
            t.await.unwrap();
        }
        (s1, s2, s3)
    });
    let mut d = Driver::new(hbone_server(), b);
    let mut echo = Echo::new();
    let (s1, s2, s3) = serve(&mut d, &mut echo, client).await;
    assert_eq!((s1, s2, s3), (503, 400, 400));
    assert_eq!(echo.statuses.iter().filter(|&&s| s == 200).count(), 60);
    assert!(d.conn.hpack_entries().0 > 0);
}

#[tokio::test]
async fn server_large_transfer_with_small_windows() {
    let (a, b) = duplex();
    let up = payload(3, 3 << 20);
    let up2 = up.clone();
    let client = tokio::spawn(async move {
        // h2's defaults: 65 535 windows, 16 384 frames.
        let mut client = h2_connect(a, h2::client::Builder::new()).await;
        h2_roundtrip(&mut client, ztunnel_request(8080, 1), up2).await
    });
    let mut cfg = Config::default();
    cfg.settings.initial_window_size = 65_535;
    cfg.connection_window = 65_535;
    let mut d = Driver::new(server(cfg), b);
    let mut echo = Echo::new();
    let (status, got) = serve(&mut d, &mut echo, client).await;
    assert_eq!(status, 200);
    assert_eq!(sha(&got), sha(&up));
}

#[tokio::test]
async fn server_rst_stream_both_ways() {
    let (a, b) = duplex();
    let client = tokio::spawn(async move {
        let client = h2_connect(a, h2_client_builder()).await;
        let mut c = client.ready().await.unwrap();
        let (resp1, mut send1) = c.send_request(ztunnel_request(8080, 1), false).unwrap();
        let resp1 = resp1.await.unwrap();
        assert_eq!(resp1.status(), 200);
        send1.send_reset(h2::Reason::CANCEL);
        let mut c = c.ready().await.unwrap();
        let (resp2, _send2) = c.send_request(ztunnel_request(8080, 2), false).unwrap();
        let resp2 = resp2.await.unwrap();
        let err = read_body(&mut resp2.into_body()).await.unwrap_err();
        err.reason()
    });
    let mut d = Driver::new(hbone_server(), b);
    let mut echo = Echo::new();
    let fut = async {
        loop {
            echo.step(&mut d.conn, &mut d.events);
            if echo.resets.contains(&(StreamId(1), Reason::CANCEL)) && echo.statuses.len() == 2 {
                d.conn.reset(StreamId(3), Reason::REFUSED_STREAM);
                return;
            }
            d.step().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap();
    let reason = serve(&mut d, &mut echo, client).await;
    assert_eq!(reason, Some(h2::Reason::REFUSED_STREAM));
}

#[tokio::test]
async fn server_graceful_goaway_ping_and_settings() {
    let (a, b) = duplex();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(async move {
        let (client, mut conn) = h2_client_builder().handshake::<_, Bytes>(a).await.unwrap();
        let mut pp = conn.ping_pong().unwrap();
        let driver = tokio::spawn(conn);
        let pong = pp.ping(h2::Ping::opaque()).await.is_ok();
        let mut c = client.clone();
        let (s1, b1) = h2_roundtrip(&mut c, ztunnel_request(8080, 1), payload(9, 70_000)).await;
        // This head is encoded after h2 applied our SETTINGS (table size 0).
        let (s2, _) = h2_roundtrip(&mut c, ztunnel_request(8080, 2), Vec::new()).await;
        // Let the server send GOAWAY, then try a new stream.
        let _ = tx.send(());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = match c.clone().ready().await {
            Err(_) => true,
            Ok(mut c) => match c.send_request(ztunnel_request(8080, 3), false) {
                Err(_) => true,
                Ok((resp, mut send)) => {
                    let _ = send.send_data(Bytes::from_static(b"late"), true);
                    resp.await.is_err()
                }
            },
        };
        drop((client, c));
        let closed = driver.await.unwrap();
        (pong, (s1, s2), b1.len(), refused, closed.is_ok())
    });
    let mut d = Driver::new(hbone_server(), b);
    let mut echo = Echo::new();
    d.conn.send_ping(*b"srv-ping").unwrap();
    // Mid-connection SETTINGS: no HPACK table for the client, bigger stream windows.
    let mut s = d.conn.latest_settings();
    s.header_table_size = 0;
    s.initial_window_size = 8 << 20;
    d.conn.update_settings(s).unwrap();
    let mut rx = rx;
    let fut = async {
        loop {
            echo.step(&mut d.conn, &mut d.events);
            tokio::select! {
                _ = &mut rx => break,
                r = d.step() => r.unwrap(),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap();
    d.conn.send_goaway(Reason::NO_ERROR, b"upgrade");
    let (pong, s1, len, refused, closed) = serve(&mut d, &mut echo, client).await;
    assert!(pong, "our server answered h2's PING");
    assert_eq!(echo.pongs, 1, "h2 answered ours");
    assert_eq!((s1, len), ((200, 200), 70_000));
    assert!(refused, "a stream after our GOAWAY is not processed");
    assert!(closed, "h2 closed cleanly");
    assert_eq!(d.conn.local_settings().initial_window_size, 8 << 20);
    assert_eq!(d.conn.hpack_entries().0, 0);
    assert_eq!(d.conn.active_streams(), 0);
}

#[tokio::test]
async fn server_h2_client_settings_change_and_continuation() {
    let (a, b) = duplex();
    let big: String = (0..40_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let big2 = big.clone();
    let client = tokio::spawn(async move {
        let mut cb = h2::client::Builder::new();
        cb.max_header_list_size(256 * 1024);
        let (client, mut conn) = cb.handshake::<_, Bytes>(a).await.unwrap();
        let mut pp = conn.ping_pong().unwrap();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // h2 sends no SETTINGS while its first is unacknowledged: change it after a
            // PING round trip (our ACK precedes our PONG).
            tokio::select! {
                r = &mut conn => return r.unwrap(),
                _ = go_rx => conn.set_initial_window_size(1 << 20).unwrap(),
            }
            conn.await.unwrap()
        });
        pp.ping(h2::Ping::opaque()).await.unwrap();
        go_tx.send(()).unwrap();
        let mut req = ztunnel_request(8080, 1);
        req.headers_mut().insert("x-big", big2.parse().unwrap());
        let mut c = client.ready().await.unwrap();
        let (resp, mut send) = c.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(b"hi"), true).unwrap();
        let resp = resp.await.unwrap();
        let echo = resp.headers()["x-big-echo"].to_str().unwrap().to_string();
        let got = read_body(&mut resp.into_body()).await.unwrap();
        (echo, got)
    });
    let mut cfg = Config::hbone(Role::Server, &H2Settings::default());
    cfg.settings.max_frame_size = 16_384;
    cfg.settings.max_header_list_size = Some(256 * 1024);
    let mut d = Driver::new(server(cfg), b);
    // h2 may not send frames over our 16 384 limit, so its 40 KB head came in CONTINUATION
    // frames (or we would have failed with FRAME_SIZE_ERROR).
    let mut echo = Echo::new();
    let (hdr, got) = serve(&mut d, &mut echo, client).await;
    assert_eq!(echo.big_header.as_deref(), Some(big.as_bytes()));
    assert_eq!(hdr, big);
    assert_eq!(got, b"hi");
    assert_eq!(d.conn.peer_settings().initial_window_size, 1 << 20);
    assert!(
        echo.continuation_sent,
        "our 40 KB response head crossed h2's 16 384 frames"
    );
    d.wr.shutdown().await.unwrap();
}
