//! Tests of the link task against the `h2` crate as the HBONE peer, over our TLS on real
//! loopback sockets, on both engines: several tunnels at once carrying a megabyte each way
//! (more than the stream window, so flow control and back-pressure work), half-close in both
//! directions, a refused CONNECT, a peer reset.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rustls::RootCertStore;

use super::*;
use crate::hbone::H2Settings;
use crate::hbone::h2::{Config, Role};
use crate::identity::Identity;
use crate::identity::ca::Ca;
use crate::runtime::engine::{self, Engine};
use crate::runtime::uring::UringOpts;

struct Pki {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let issue = |sa: &str| {
        ca.issue(
            &Identity::new("cluster.local", "default", sa),
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap()
    };
    let mut roots = RootCertStore::empty();
    roots.add(ca.root().clone()).unwrap();
    let roots = Arc::new(roots);
    Pki {
        client: crate::tls::client_config(&issue("client"), roots.clone()),
        server: crate::tls::server_config(&issue("server"), roots),
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What the h2 server does with a CONNECT whose authority has this port.
const ECHO: u16 = 1;
const REFUSE: u16 = 2;
const RESET: u16 = 3;

/// The `h2` crate as the HBONE server, on our TLS: echoes each tunnel (ECHO), answers 403
/// (REFUSE) or resets it after the response (RESET).
async fn h2_server(l: std::net::TcpListener, p: Arc<rustls::ServerConfig>) {
    let (tcp, _) = l.accept().unwrap();
    tcp.set_nonblocking(true).unwrap();
    let s = Stream::from_fd(tcp.into()).unwrap();
    let tls = crate::io::tls::accept(s, p).await.unwrap();
    let mut conn = ::h2::server::handshake(tls).await.unwrap();
    while let Some(r) = conn.accept().await {
        let (req, mut respond) = r.unwrap();
        let port = req.uri().port_u16().unwrap_or(0);
        engine::spawn(async move {
            match port {
                REFUSE => {
                    let resp = http::Response::builder().status(403).body(()).unwrap();
                    let _ = respond.send_response(resp, true);
                }
                RESET => {
                    let mut send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    send.send_reset(::h2::Reason::INTERNAL_ERROR);
                }
                _ => {
                    let mut send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    let mut body = req.into_body();
                    while let Some(d) = body.data().await {
                        let mut d = d.unwrap();
                        let _ = body.flow_control().release_capacity(d.len());
                        while !d.is_empty() {
                            send.reserve_capacity(d.len());
                            let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
                                .await
                                .unwrap()
                                .unwrap();
                            let part = d.split_to(cap.min(d.len()));
                            send.send_data(part, false).unwrap();
                        }
                    }
                    send.send_data(Bytes::new(), true).unwrap();
                }
            }
        });
    }
}

fn connect_fields(port: u16) -> Vec<HeaderField> {
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::CONNECT;
    *req.uri_mut() = format!("198.18.0.9:{port}").parse().unwrap();
    h2::request_fields(&req)
}

/// An app socket pair: ours (for the link) and the app's (a blocking std socket).
fn app_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let app = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    app.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    (ours, app)
}

/// Runs a client link against the h2 server; `body` gets the link and opens tunnels.
fn with_client_link<F, Fut>(engine: Engine, body: F)
where
    F: FnOnce(Link) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    engine::block_on(engine, &UringOpts::default(), async move {
        let server = p.server.clone();
        engine::spawn(h2_server(l, server));
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let s = Stream::from_fd(tcp.into()).unwrap();
        let tls = crate::io::tls::connect(s, p.client.clone(), crate::tls::dummy_server_name())
            .await
            .unwrap();
        let link = Link::new(Conn::new(
            Role::Client,
            Config::hbone(Role::Client, &H2Settings::default()),
        ));
        engine::spawn(run(link.clone(), tls));
        engine::timeout(Duration::from_secs(30), body(link))
            .await
            .unwrap_or_else(|_| panic!("timed out on {engine}"));
    })
    .unwrap();
}

fn several_tunnels_carry_a_megabyte_each_way(engine: Engine) {
    with_client_link(engine, |link| async move {
        let mut ends = Vec::new();
        let mut apps = Vec::new();
        for k in 0..3u8 {
            let (ours, app) = app_pair();
            let ours = Stream::from_fd(ours.into()).unwrap();
            let counters = Rc::new(Counters::default());
            let rx = link
                .open(
                    &connect_fields(ECHO),
                    ours,
                    counters.clone(),
                    b"m1".to_vec(),
                )
                .unwrap()
                .1;
            ends.push((rx, counters));
            // The app: sends 1 MiB (more than the 4 MiB window? no: several windows' worth
            // over the connection window once all three run), half-closes, reads the echo.
            apps.push(std::thread::spawn(move || {
                let data = pattern(1 << 20, k);
                let mut w = app.try_clone().unwrap();
                let d = data.clone();
                let writer = std::thread::spawn(move || {
                    w.write_all(&d).unwrap();
                    w.shutdown(std::net::Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                let mut app = app;
                app.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                back == data
            }));
        }
        for (rx, counters) in ends {
            assert_eq!(rx.await.unwrap(), TunnelEnd::Done);
            assert_eq!(counters.sent.get(), 1 << 20);
            assert_eq!(counters.received.get(), 1 << 20);
        }
        assert_eq!(link.tunnels(), 0);
        for a in apps {
            assert!(a.join().unwrap(), "the echo came back whole and in order");
        }
    });
}

fn a_refused_connect_and_a_reset_end_their_tunnels(engine: Engine) {
    with_client_link(engine, |link| async move {
        let (ours, app) = app_pair();
        let rx = link
            .open(
                &connect_fields(REFUSE),
                Stream::from_fd(ours.into()).unwrap(),
                Rc::default(),
                Vec::new(),
            )
            .unwrap()
            .1;
        assert_eq!(rx.await.unwrap(), TunnelEnd::Refused(403));
        let (ours, app2) = app_pair();
        let rx = link
            .open(
                &connect_fields(RESET),
                Stream::from_fd(ours.into()).unwrap(),
                Rc::default(),
                Vec::new(),
            )
            .unwrap()
            .1;
        assert_eq!(
            rx.await.unwrap(),
            TunnelEnd::Reset {
                code: Reason::INTERNAL_ERROR,
                remote: true
            }
        );
        // Both app sockets are closed by the link: EOF or a reset, not a read timeout.
        for app in [app, app2] {
            let r = std::thread::spawn(move || {
                let mut app = app;
                app.read(&mut [0u8; 1]).map_err(|e| e.kind())
            });
            while !r.is_finished() {
                engine::sleep(Duration::from_millis(5)).await;
            }
            let r = r.join().unwrap();
            assert!(
                matches!(r, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
                "{r:?}"
            );
        }
        // The link still serves.
        assert!(link.is_usable());
        let (ours, mut app3) = app_pair();
        let rx = link
            .open(
                &connect_fields(ECHO),
                Stream::from_fd(ours.into()).unwrap(),
                Rc::default(),
                Vec::new(),
            )
            .unwrap()
            .1;
        let t = std::thread::spawn(move || {
            app3.write_all(b"still here").unwrap();
            app3.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            app3.read_to_end(&mut back).unwrap();
            back
        });
        assert_eq!(rx.await.unwrap(), TunnelEnd::Done);
        assert_eq!(t.join().unwrap(), b"still here");
    });
}

/// Server role: the `h2` crate as the client opens tunnels on our link; we answer each with
/// an echo app (two of them with data sent before our 200 arrives) and refuse one.
fn a_server_link_serves_h2_clients_tunnels(engine: Engine) {
    let p = pki();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    engine::block_on(engine, &UringOpts::default(), async move {
        let server = p.server.clone();
        engine::spawn(async move {
            let (tcp, _) = l.accept().unwrap();
            tcp.set_nonblocking(true).unwrap();
            let s = Stream::from_fd(tcp.into()).unwrap();
            let tls = crate::io::tls::accept(s, server).await.unwrap();
            let link = Link::new(Conn::new(
                Role::Server,
                Config::hbone(Role::Server, &H2Settings::default()),
            ));
            engine::spawn(run(link.clone(), tls));
            while let Some(inc) = link.accept().await {
                let authority = h2::field(&inc.headers, ":authority").unwrap().to_vec();
                if authority.ends_with(b":2") {
                    link.refuse(inc.id, 403);
                    continue;
                }
                // An echo app on loopback.
                let (ours, app) = app_pair();
                std::thread::spawn(move || {
                    let mut r = app.try_clone().unwrap();
                    let mut w = app;
                    std::io::copy(&mut r, &mut w).unwrap();
                    w.shutdown(std::net::Shutdown::Write).unwrap();
                });
                // The tunnel's end is not awaited here (the client checks the bytes).
                drop(
                    link.establish(
                        inc.id,
                        Stream::from_fd(ours.into()).unwrap(),
                        Rc::default(),
                        Vec::new(),
                    )
                    .unwrap(),
                );
            }
        });
        let go = async move {
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_nonblocking(true).unwrap();
            let s = Stream::from_fd(tcp.into()).unwrap();
            let tls = crate::io::tls::connect(s, p.client.clone(), crate::tls::dummy_server_name())
                .await
                .unwrap();
            let (send_req, conn) = ::h2::client::handshake(tls).await.unwrap();
            engine::spawn(async move {
                let _ = conn.await;
            });
            let mut tunnels = Vec::new();
            for k in 0..2u8 {
                let mut sr = send_req.clone().ready().await.unwrap();
                let req = http::Request::builder()
                    .method("CONNECT")
                    .uri("198.18.0.9:1")
                    .body(())
                    .unwrap();
                let (resp, mut send) = sr.send_request(req, false).unwrap();
                // Data before the response: held by the link until the app is attached.
                send.send_data(Bytes::from(pattern(1000, k)), false)
                    .unwrap();
                tunnels.push((k, resp, send));
            }
            for (k, resp, mut send) in tunnels {
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200);
                let data = Bytes::from(pattern(1 << 20, k));
                let mut rest = data.clone();
                while !rest.is_empty() {
                    send.reserve_capacity(rest.len());
                    let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                    send.send_data(rest.split_to(cap.min(rest.len())), false)
                        .unwrap();
                }
                send.send_data(Bytes::new(), true).unwrap();
                let mut body = resp.into_body();
                let mut back = Vec::new();
                while let Some(d) = body.data().await {
                    let d = d.unwrap();
                    let _ = body.flow_control().release_capacity(d.len());
                    back.extend_from_slice(&d);
                }
                let want = [pattern(1000, k), data.to_vec()].concat();
                assert!(back == want, "tunnel {k}: {} bytes back", back.len());
            }
            let mut sr = send_req.ready().await.unwrap();
            let req = http::Request::builder()
                .method("CONNECT")
                .uri("198.18.0.9:2")
                .body(())
                .unwrap();
            let (resp, _send) = sr.send_request(req, false).unwrap();
            assert_eq!(resp.await.unwrap().status(), 403);
        };
        engine::timeout(Duration::from_secs(30), go)
            .await
            .unwrap_or_else(|_| panic!("timed out on {engine}"));
    })
    .unwrap();
}

/// Hand-over: a tunnel mid-transfer (bytes in flight both ways) is exported with its
/// connection, its state encoded and decoded, and continued by another executor on another
/// thread (the next process) from the sockets; the h2 peer never notices and the app's
/// echo comes back whole and in order.
fn an_exported_link_continues_in_another_executor(engine: Engine) {
    const TOTAL: usize = 16 << 20;
    with_client_link(engine, move |link| async move {
        let (ours, app) = app_pair();
        // Small socket buffers: once the app stops reading, bytes pile up in the link (both
        // ways: the echo peer stops reading once its replies are blocked).
        socket2::SockRef::from(&ours)
            .set_send_buffer_size(64 * 1024)
            .unwrap();
        socket2::SockRef::from(&app)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        let counters = Rc::new(Counters::default());
        let end = link
            .open(
                &connect_fields(ECHO),
                Stream::from_fd(ours.into()).unwrap(),
                counters.clone(),
                b"carried".to_vec(),
            )
            .unwrap()
            .1;
        let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
        let app_thread = std::thread::spawn(move || {
            let data = pattern(TOTAL, 9);
            let mut w = app.try_clone().unwrap();
            let d = data.clone();
            let writer = std::thread::spawn(move || {
                w.write_all(&d).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let mut app = app;
            let mut back = vec![0u8; 1 << 20];
            app.read_exact(&mut back).unwrap();
            // The app stops reading until the connection has moved.
            resume_rx.recv().unwrap();
            app.read_to_end(&mut back).unwrap();
            writer.join().unwrap();
            back == data
        });
        while counters.received.get() < 1 << 20 {
            engine::sleep(Duration::from_millis(2)).await;
        }
        engine::sleep(Duration::from_millis(300)).await;
        let exported = link.export().await.unwrap().unwrap();
        assert_eq!(end.await.unwrap(), TunnelEnd::Moved);
        assert_eq!(exported.fds.len(), 2);
        assert_eq!(exported.state.tunnels.len(), 1);
        let t = &exported.state.tunnels[0];
        assert!(t.sent > 0 && (t.sent as usize) < TOTAL, "{}", t.sent);
        // Bytes in flight inside the link travel with it (the test exercises both).
        assert!(!t.to_app.is_empty(), "nothing waiting for the app");
        assert!(!t.from_app.is_empty(), "nothing waiting for the window");
        let bytes = exported.state.encode();
        let fds = exported.fds;
        let next = std::thread::spawn(move || {
            engine::block_on(engine, &UringOpts::default(), async move {
                let state = LinkState::decode(&bytes).unwrap();
                let counters = Rc::new(Counters::default());
                let c = counters.clone();
                let (link, tls, mut tunnels) =
                    Link::import(&state, fds, move |_| c.clone()).unwrap();
                let t = tunnels.pop().unwrap();
                let end = link.end_channel(t.id);
                engine::spawn(run(link, tls));
                resume_tx.send(()).unwrap();
                assert_eq!(t.meta, b"carried", "the bookkeeping moved with the tunnel");
                let end = engine::timeout(Duration::from_secs(30), end)
                    .await
                    .expect("the imported tunnel timed out");
                (end.unwrap(), t.sent_before + counters.sent.get())
            })
            .unwrap()
        });
        // The h2 peer lives on this executor: keep it running while the next one works.
        while !next.is_finished() {
            engine::sleep(Duration::from_millis(5)).await;
        }
        let (end, sent) = next.join().unwrap();
        assert_eq!(end, TunnelEnd::Done);
        assert_eq!(sent as usize, TOTAL);
        while !app_thread.is_finished() {
            engine::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            app_thread.join().unwrap(),
            "the echo came back whole and in order"
        );
    });
}

/// A link's buffers follow its traffic: streaming grows them to the streaming sizes, and
/// once the traffic is small again the link holds none while its tunnel stays open (and
/// the tunnel still carries bytes after that).
fn a_quiet_link_holds_no_buffers(engine: Engine) {
    with_client_link(engine, |link| async move {
        let (ours, app) = app_pair();
        let ours = Stream::from_fd(ours.into()).unwrap();
        let (_, end) = link
            .open(
                &connect_fields(ECHO),
                ours,
                Rc::new(Counters::default()),
                b"m".to_vec(),
            )
            .unwrap();
        let (phase_tx, phase) = std::sync::mpsc::channel::<&'static str>();
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        let app_thread = std::thread::spawn(move || {
            let mut app = app;
            let data = pattern(4 << 20, 7);
            let mut w = app.try_clone().unwrap();
            let d = data.clone();
            let writer = std::thread::spawn(move || w.write_all(&d).unwrap());
            let mut back = vec![0u8; data.len()];
            app.read_exact(&mut back).unwrap();
            writer.join().unwrap();
            assert!(back == data, "the bulk echo came back whole");
            // Small round trips: the link is quiet again.
            for k in 0..3u8 {
                app.write_all(&[k; 10]).unwrap();
                let mut b = [0u8; 10];
                app.read_exact(&mut b).unwrap();
                assert_eq!(b, [k; 10]);
            }
            phase_tx.send("quiet").unwrap();
            go.recv().unwrap();
            app.write_all(b"after").unwrap();
            let mut b = [0u8; 5];
            app.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"after");
            app.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            app.read_to_end(&mut rest).unwrap();
            rest.is_empty()
        });
        let mut most = 0;
        loop {
            most = most.max(link.buffer_bytes());
            if phase.try_recv().is_ok() {
                break;
            }
            engine::sleep(Duration::from_micros(200)).await;
        }
        assert!(
            most >= TLS_READ,
            "while streaming the link reads with streaming-sized buffers (at most {most} B seen)"
        );
        // The last round trip's round may still be finishing.
        let mut held = link.buffer_bytes();
        for _ in 0..100 {
            if held == 0 {
                break;
            }
            engine::sleep(Duration::from_millis(5)).await;
            held = link.buffer_bytes();
        }
        assert_eq!(held, 0, "a quiet link holds no buffer");
        assert_eq!(link.tunnels(), 1, "the idle tunnel stays open");
        go_tx.send(()).unwrap();
        assert_eq!(end.await.unwrap(), TunnelEnd::Done);
        while !app_thread.is_finished() {
            engine::sleep(Duration::from_millis(5)).await;
        }
        assert!(app_thread.join().unwrap(), "the tunnel ended cleanly");
    });
}

on_both_engines!(
    a_quiet_link_holds_no_buffers,
    several_tunnels_carry_a_megabyte_each_way,
    a_refused_connect_and_a_reset_end_their_tunnels,
    a_server_link_serves_h2_clients_tunnels,
    an_exported_link_continues_in_another_executor,
);
