//! HBONE in-process, on loopback: our server and our client against each other, and each
//! against the plain `h2` crate (over tokio-rustls) as an independent peer.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ringmesh::certs::store::{CertManager, Issuer};
use ringmesh::config::flags::{OrigSrc, TlsRecords};
use ringmesh::identity::Identity;
use ringmesh::identity::ca::Ca;
use ringmesh::inpod::Netns;
use ringmesh::proxy::pool::{PoolKey, StreamError};
use ringmesh::proxy::{Pod, ProxyConfig, ShardCtx, h2conn, inbound};

const CFG: &str = r#"
workloads:
- {uid: srv, name: srv, namespace: default, serviceAccount: server, workloadIps: ["127.0.0.1"], protocol: HBONE, services: {}}
- {uid: cli, name: cli, namespace: default, serviceAccount: client, workloadIps: ["127.0.0.2"], protocol: HBONE, services: {}}
policies:
- {name: deny-7, namespace: default, scope: Namespace, action: Deny, dryRun: false, rules: [[[{destinationPorts: [7]}]]]}
"#;

struct Env {
    ctx: Rc<ShardCtx>,
    certs: CertManager,
}

fn env(max_streams: usize) -> Env {
    env_ttl(max_streams, Duration::from_secs(3600))
}

fn env_ttl(max_streams: usize, ttl: Duration) -> Env {
    env_full(max_streams, ttl, None, TlsRecords::Direct)
}

fn env_full(
    max_streams: usize,
    ttl: Duration,
    ping: Option<(Duration, Duration)>,
    records: TlsRecords,
) -> Env {
    let snap = ringmesh::config::snapshot_from_str("t.yaml", CFG, 1).unwrap();
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let (mut certs, _fetched) = CertManager::new(Issuer::BuiltIn(Box::new(ca)), ttl, None);
    let ids: BTreeSet<_> = ["srv", "cli"]
        .iter()
        .map(|u| snap.identity_of(u).unwrap())
        .collect();
    certs.reconcile(&ids, SystemTime::now()).unwrap();
    let mut cfg = ProxyConfig {
        orig_src: OrigSrc::Off,
        mark: 0,
        tls_records: records,
        ..ProxyConfig::default()
    };
    cfg.h2.client_max_streams = max_streams;
    if let Some((interval, timeout)) = ping {
        cfg.h2.ping_interval = interval;
        cfg.h2.ping_timeout = timeout;
    }
    let ctx = Rc::new(ShardCtx::new(
        0,
        Arc::new(cfg),
        Arc::new(ArcSwap::from_pointee(snap)),
        certs.handle(),
        Arc::new(ringmesh::telemetry::metrics::ShardMetrics::default()),
    ));
    Env { ctx, certs }
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// An echo app on loopback; returns its address.
async fn echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    ringmesh::runtime::engine::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            ringmesh::runtime::engine::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    a
}

/// Our HBONE server (the inbound flow) for pod "srv" on 127.0.0.1; returns its address.
async fn our_server(ctx: &Rc<ShardCtx>) -> SocketAddr {
    let (l, a) = our_listener();
    let pod = Arc::new(Pod::new("srv", Arc::new(Netns::current())));
    ringmesh::runtime::engine::spawn(inbound::serve(ctx.clone(), pod, l, Default::default()));
    a
}

/// Runs a test on the engine `RINGMESH_IO_ENGINE` names (default uring, like the node). On
/// uring our side runs on the ring executor, and the test's own tokio peers on a tokio
/// runtime whose worker thread drives their sockets.
fn run<F: std::future::Future + 'static>(f: F) -> F::Output {
    use ringmesh::runtime::{Engine, UringOpts, engine};
    let uring = std::env::var("RINGMESH_IO_ENGINE").map_or(true, |e| e != "epoll");
    if uring {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        engine::block_on(Engine::Uring, &UringOpts::default(), f).unwrap()
    } else {
        engine::block_on(Engine::Epoll, &UringOpts::default(), f).unwrap()
    }
}

/// A listener on loopback on this test's engine.
fn our_listener() -> (ringmesh::runtime::net::Listener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let a = l.local_addr().unwrap();
    (ringmesh::runtime::net::listener_from_std(l).unwrap(), a)
}

/// A connection to `a` on this test's engine.
async fn our_connect(a: SocketAddr) -> ringmesh::runtime::net::Stream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_nonblocking(true).unwrap();
    ringmesh::runtime::net::connect(s.into(), a, Duration::from_secs(5))
        .await
        .unwrap()
}

/// Opens a stream with our pooled client.
async fn our_stream(
    e: &Env,
    server: SocketAddr,
    authority: &str,
    expected: Identity,
) -> Result<ringmesh::proxy::pool::Stream, StreamError> {
    our_stream_from(e, "cli", server, authority, expected).await
}

async fn our_stream_from(
    e: &Env,
    src_pod: &str,
    server: SocketAddr,
    authority: &str,
    expected: Identity,
) -> Result<ringmesh::proxy::pool::Stream, StreamError> {
    let cert = e.certs.handle().load().get(&id("client")).unwrap().clone();
    let key = PoolKey {
        src: id("client"),
        dst: vec![expected.clone()],
        addr: server,
        src_pod: src_pod.into(),
    };
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(authority)
        .body(())
        .unwrap();
    let h2s = e.ctx.cfg.h2.clone();
    let records = e.ctx.cfg.tls_records;
    let (max, timeout) = (h2s.client_max_streams, e.ctx.cfg.connect_timeout);
    e.ctx
        .pool
        .stream(&key, max, timeout, req, |deadline| async move {
            let tcp = our_connect(server).await;
            let client = cert.client.clone();
            h2conn::dial(tcp, client, &[expected], &h2s, records, &deadline).await
        })
        .await
}

async fn roundtrip(s: &mut ringmesh::proxy::pool::Stream, msg: &[u8]) -> Vec<u8> {
    s.send
        .send_data(Bytes::copy_from_slice(msg), false)
        .unwrap();
    let got = s.recv.data().await.unwrap().unwrap();
    let _ = s.recv.flow_control().release_capacity(got.len());
    got.to_vec()
}

#[test]
fn ours_to_ours_pools_streams() {
    run(async move {
        let e = env(2);
        let app = echo_app().await;
        let server = our_server(&e.ctx).await;
        let auth = format!("127.0.0.1:{}", app.port());
        let mut a = our_stream(&e, server, &auth, id("server")).await.unwrap();
        let mut b = our_stream(&e, server, &auth, id("server")).await.unwrap();
        assert_eq!(roundtrip(&mut a, b"one").await, b"one");
        assert_eq!(roundtrip(&mut b, b"two").await, b"two");
        assert_eq!(e.ctx.pool.len(), 1, "two streams share one connection");
        // A third stream exceeds max_streams=2: a second connection.
        let mut c = our_stream(&e, server, &auth, id("server")).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"three").await, b"three");
        assert_eq!(e.ctx.pool.len(), 2);
        // Denied port → 401, bad authority → 400, dead app port → 503.
        let denied = our_stream(&e, server, "127.0.0.1:7", id("server")).await;
        assert!(matches!(denied, Err(StreamError::Status { status, .. }) if status == 401));
        let wrong_ip = our_stream(
            &e,
            server,
            &format!("127.0.0.9:{}", app.port()),
            id("server"),
        )
        .await;
        assert!(matches!(wrong_ip, Err(StreamError::Status { status, .. }) if status == 400));
        let dead = our_stream(&e, server, "127.0.0.1:1", id("server")).await;
        assert!(matches!(dead, Err(StreamError::Status { status, .. }) if status == 503));
        // A wrong expected identity is refused before any CONNECT is sent.
        let wrong = our_stream(&e, server, &auth, id("someone-else")).await;
        let msg = wrong.err().unwrap().to_string();
        assert!(msg.contains("presented spiffe://cluster.local/ns/default/sa/server, expected spiffe://cluster.local/ns/default/sa/someone-else"), "{msg}");
        // Half-close: END_STREAM reaches the app as EOF and the app's EOF comes back.
        a.send.send_data(Bytes::new(), true).unwrap();
        while let Some(d) = a.recv.data().await {
            assert!(d.unwrap().is_empty(), "no data after the echo");
        }
    });
}

/// The plain h2 crate as client against our server.
#[test]
fn h2_crate_client_to_our_server() {
    run(async move {
        let e = env(100);
        let app = echo_app().await;
        let server = our_server(&e.ctx).await;
        let cert = e.certs.handle().load().get(&id("client")).unwrap().clone();
        let tcp = TcpStream::connect(server).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(cert.client.clone())
            .connect(ringmesh::tls::dummy_server_name(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (h2, conn) = h2::client::handshake(tls).await.unwrap();
        ringmesh::runtime::engine::spawn(async move {
            let _ = conn.await;
        });
        let send = |req: http::Request<()>| {
            let h2 = h2.clone();
            async move {
                let mut h2 = h2.ready().await.unwrap();
                let (resp, s) = h2.send_request(req, false).unwrap();
                (resp.await.unwrap(), s)
            }
        };
        let connect = |a: String| {
            http::Request::builder()
                .method("CONNECT")
                .uri(a)
                .body(())
                .unwrap()
        };
        let (resp, mut s) = send(connect(format!("127.0.0.1:{}", app.port()))).await;
        assert_eq!(resp.status(), 200);
        s.send_data(Bytes::from_static(b"hello"), true).unwrap();
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = body.data().await {
            got.extend_from_slice(&d.unwrap());
        }
        assert_eq!(got, b"hello", "echo then EOF after our END_STREAM");
        let get = http::Request::builder()
            .uri(format!("http://127.0.0.1:{}/", app.port()))
            .body(())
            .unwrap();
        assert_eq!(send(get).await.0.status(), 400);
        assert_eq!(send(connect("not-an-ip:80".into())).await.0.status(), 400);
        assert_eq!(send(connect("127.0.0.1:7".into())).await.0.status(), 401);
        assert_eq!(
            send(connect("127.0.0.1:15008".into())).await.0.status(),
            503
        );
        // The server still serves after the bad requests.
        let (resp, _s) = send(connect(format!("127.0.0.1:{}", app.port()))).await;
        assert_eq!(resp.status(), 200);
    });
}

/// Our client against a plain h2 crate server (mTLS via our server config).
#[test]
fn our_client_to_h2_crate_server() {
    run(async move {
        let e = env(100);
        let srv_cert = e.certs.handle().load().get(&id("server")).unwrap().clone();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        ringmesh::runtime::engine::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(srv_cert.server.clone())
                .accept(tcp)
                .await
                .unwrap();
            let mut conn = h2::server::handshake(tls).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                ringmesh::runtime::engine::spawn(async move {
                    assert_eq!(req.method(), http::Method::CONNECT);
                    assert!(
                        req.headers().contains_key("forwarded") || req.uri().authority().is_some()
                    );
                    let status = if req.uri().authority().unwrap().port_u16() == Some(503) {
                        503
                    } else {
                        200
                    };
                    let resp = http::Response::builder().status(status).body(()).unwrap();
                    let mut send = respond.send_response(resp, status != 200).unwrap();
                    if status != 200 {
                        return;
                    }
                    let mut body = req.into_body();
                    while let Some(Ok(d)) = body.data().await {
                        let _ = body.flow_control().release_capacity(d.len());
                        send.send_data(d, false).unwrap();
                    }
                    let _ = send.send_data(Bytes::new(), true);
                });
            }
        });
        let mut s = our_stream(&e, addr, "198.18.0.9:80", id("server"))
            .await
            .unwrap();
        assert_eq!(roundtrip(&mut s, b"via h2 crate").await, b"via h2 crate");
        let bad = our_stream(&e, addr, "198.18.0.9:503", id("server")).await;
        assert!(matches!(bad, Err(StreamError::Status { status, .. }) if status == 503));
    });
}

/// A byte stream through our client and server, with the copy loop on both ends.
#[test]
fn copy_loop_carries_a_megabyte_each_way() {
    copy_loop(TlsRecords::Direct);
}

/// The same over rustls's own record layer (`--tls-records rustls`), on both ends.
#[test]
fn copy_loop_over_rustls_records() {
    copy_loop(TlsRecords::Rustls);
}

fn copy_loop(records: TlsRecords) {
    run(async move {
        let e = env_full(100, Duration::from_secs(3600), None, records);
        let app = echo_app().await;
        let server = our_server(&e.ctx).await;
        let s = our_stream(
            &e,
            server,
            &format!("127.0.0.1:{}", app.port()),
            id("server"),
        )
        .await
        .unwrap();
        let (l, la) = our_listener();
        let mut local = TcpStream::connect(la).await.unwrap();
        let (remote, _) = l.accept().await.unwrap();
        let counters = Rc::new(ringmesh::io::Counters::default());
        let c2 = counters.clone();
        let ringmesh::proxy::pool::Stream { send, recv, .. } = s;
        ringmesh::runtime::engine::spawn(async move {
            ringmesh::io::copy_h2(remote, send, recv, c2).await.unwrap();
        });
        let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let (mut rd, mut wr) = tokio::io::split(&mut local);
        let writer = async {
            wr.write_all(&data).await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let reader = rd.read_to_end(&mut back);
        let (_, n) = tokio::join!(writer, reader);
        assert_eq!(n.unwrap(), data.len());
        assert_eq!(back, data);
        assert_eq!(counters.sent.get(), data.len() as u64);
    });
}

/// Certificates rotate at half-life without touching live connections.
#[test]
fn rotation_keeps_live_connections() {
    run(async move {
        let mut e = env_ttl(100, Duration::from_secs(60));
        let app = echo_app().await;
        let server = our_server(&e.ctx).await;
        let auth = format!("127.0.0.1:{}", app.port());
        let mut live = our_stream(&e, server, &auth, id("server")).await.unwrap();
        assert_eq!(roundtrip(&mut live, b"before").await, b"before");
        let gen_before = e
            .certs
            .handle()
            .load()
            .get(&id("server"))
            .unwrap()
            .generation;
        let ids: BTreeSet<_> = [id("server"), id("client")].into();
        let later = SystemTime::now() + Duration::from_secs(31);
        assert_eq!(
            e.certs.reconcile(&ids, later).unwrap(),
            2,
            "both rotated past half-life"
        );
        let gen_after = e
            .certs
            .handle()
            .load()
            .get(&id("server"))
            .unwrap()
            .generation;
        assert!(gen_after > gen_before);
        // The live stream keeps working on its old certificates…
        assert_eq!(roundtrip(&mut live, b"after").await, b"after");
        // …and a new connection handshakes with the new ones.
        let mut fresh = our_stream_from(&e, "other-pod", server, &auth, id("server"))
            .await
            .unwrap();
        assert_eq!(roundtrip(&mut fresh, b"new").await, b"new");
        assert_eq!(e.ctx.pool.len(), 2);
    });
}

/// The server sends its own PINGs: a live client keeps its connection, one that stops
/// answering is dropped.
#[test]
fn server_pings_drop_a_silent_client() {
    run(async move {
        let e = env_full(
            100,
            Duration::from_secs(3600),
            Some((Duration::from_millis(100), Duration::from_millis(200))),
            TlsRecords::Direct,
        );
        let app = echo_app().await;
        let server = our_server(&e.ctx).await;
        let cert = e.certs.handle().load().get(&id("client")).unwrap().clone();
        let connect = |cfg: Arc<rustls::ClientConfig>| async move {
            let tcp = TcpStream::connect(server).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(ringmesh::tls::dummy_server_name(), tcp)
                .await
                .unwrap();
            h2::client::handshake(tls).await.unwrap()
        };
        // A client that keeps polling its connection answers PINGs and stays usable.
        let (live, conn) = connect(cert.client.clone()).await;
        ringmesh::runtime::engine::spawn(async move {
            let _ = conn.await;
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        let req = http::Request::builder()
            .method("CONNECT")
            .uri(format!("127.0.0.1:{}", app.port()))
            .body(())
            .unwrap();
        let mut live = live.ready().await.unwrap();
        let (resp, _s) = live.send_request(req, false).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
        // A client that never polls its connection never answers: the server drops it.
        let (_silent, conn) = connect(cert.client.clone()).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let ended = tokio::time::timeout(Duration::from_secs(2), conn).await;
        assert!(
            ended.is_ok(),
            "the server did not drop a connection that stopped answering PINGs"
        );
    });
}

/// The direct TLS record layer on this test's engine (on uring: records opened in the ring's
/// buffers, some split across two of them) against a tokio-rustls peer: 8 MiB each way, and
/// a key update from the peer (update requested: we answer) in the middle of its stream.
#[test]
fn direct_tls_records_on_this_engine_against_rustls() {
    run(async move {
        let e = env(100);
        let certs = e.certs.handle().load();
        let (client_cfg, server_cfg) = (
            certs.get(&id("client")).unwrap().client.clone(),
            certs.get(&id("server")).unwrap().server.clone(),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        let data: Vec<u8> = (0..8 << 20).map(|i| (i % 253) as u8).collect();
        let expect = data.clone();
        // The peer: reads 8 MiB, then sends 4 MiB, a key update, 4 MiB more, then closes.
        let peer = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut t = acceptor.accept(s).await.unwrap();
            let mut got = vec![0u8; expect.len()];
            t.read_exact(&mut got).await.unwrap();
            assert!(got == expect, "the peer got our 8 MiB intact");
            t.write_all(&expect[..4 << 20]).await.unwrap();
            t.get_mut().1.refresh_traffic_keys().unwrap();
            t.write_all(&expect[4 << 20..]).await.unwrap();
            t.shutdown().await.unwrap();
            // Our KeyUpdate reply and close_notify: read, so closing does not reset.
            let mut rest = Vec::new();
            t.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        });
        let tcp = our_connect(a).await;
        let mut t = ringmesh::io::tls::connect(tcp, client_cfg, ringmesh::tls::dummy_server_name())
            .await
            .unwrap();
        t.write_all(&data).await.unwrap();
        t.flush().await.unwrap();
        let mut back = Vec::new();
        t.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "8 MiB back intact across the key update");
        t.shutdown().await.unwrap();
        peer.await.unwrap();
    });
}
