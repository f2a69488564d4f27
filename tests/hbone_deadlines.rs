//! HBONE connection deadlines, in-process on loopback: a peer that accepts TCP and never
//! answers must not hang a dial (nor the streams queued behind it), a client that never
//! finishes its handshakes must not hold our server's task and fd, and a failed dial must
//! not stop the next one. Every test runs on both engines (uring, then epoll) and bounds
//! itself, so a hang fails instead of blocking the run.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::io::AsyncReadExt;

use ringmesh::certs::store::{CertManager, Issuer};
use ringmesh::config::flags::{OrigSrc, TlsRecords};
use ringmesh::hbone::h2::{Config, Conn, Role, StreamId};
use ringmesh::identity::Identity;
use ringmesh::identity::ca::Ca;
use ringmesh::inpod::Netns;
use ringmesh::io::link::{Incoming, Link};
use ringmesh::proxy::pool::{PoolKey, StreamError};
use ringmesh::proxy::{Pod, ProxyConfig, ShardCtx, h2conn, inbound, inbound_link, outbound};
use ringmesh::runtime::{Engine, UringOpts, engine};

/// The deadline the tests configure (`connect_timeout`).
const DEADLINE: Duration = Duration::from_secs(1);
/// What "did not hang" means: generous for a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(3);
/// Past this a test counts as hung.
const HUNG: Duration = Duration::from_secs(15);

const CFG: &str = r#"
workloads:
- {uid: srv, name: srv, namespace: default, serviceAccount: server, workloadIps: ["127.0.0.1"], protocol: HBONE, services: {}}
- {uid: cli, name: cli, namespace: default, serviceAccount: client, workloadIps: ["127.0.0.2"], protocol: HBONE, services: {}}
"#;

struct Env {
    ctx: Rc<ShardCtx>,
    certs: CertManager,
    /// The CONNECTs' destination: accepts and stays silent (a 200 needs no more).
    app: SocketAddr,
}

fn env() -> Env {
    env_with(TlsRecords::Direct)
}

fn env_with(records: TlsRecords) -> Env {
    let snap = ringmesh::config::snapshot_from_str("t.yaml", CFG, 1).unwrap();
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let (mut certs, _fetched) = CertManager::new(
        Issuer::BuiltIn(Box::new(ca)),
        Duration::from_secs(3600),
        None,
    );
    let ids: BTreeSet<_> = ["srv", "cli"]
        .iter()
        .map(|u| snap.identity_of(u).unwrap())
        .collect();
    certs.reconcile(&ids, SystemTime::now()).unwrap();
    let cfg = ProxyConfig {
        orig_src: OrigSrc::Off,
        mark: 0,
        tls_records: records,
        connect_timeout: DEADLINE,
        ..ProxyConfig::default()
    };
    let ctx = Rc::new(ShardCtx::new(
        0,
        Arc::new(cfg),
        Arc::new(ArcSwap::from_pointee(snap)),
        certs.handle(),
        Arc::new(ringmesh::telemetry::metrics::ShardMetrics::default()),
    ));
    Env {
        ctx,
        certs,
        app: silent_peer().0,
    }
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa)
}

/// Runs `test` on the uring engine, then on epoll; each run fails if it takes past [`HUNG`].
fn on_both_engines<F, Fut>(test: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    for e in [Engine::Uring, Engine::Epoll] {
        let t = test();
        let run = async move {
            if engine::timeout(HUNG, t).await.is_err() {
                panic!("on {e}: the test hung (no result in {HUNG:?})");
            }
        };
        engine::block_on(e, &UringOpts::default(), run).unwrap();
    }
}

/// A peer on loopback that accepts TCP connections, holds them and never sends a byte;
/// returns its address and how many connections it accepted.
fn silent_peer() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (a, n)
}

/// Our HBONE server (the inbound flow) for pod "srv" on 127.0.0.1; returns its address.
fn our_server(ctx: &Rc<ShardCtx>) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let a = l.local_addr().unwrap();
    let l = ringmesh::runtime::net::listener_from_std(l).unwrap();
    let pod = Arc::new(Pod::new("srv", Arc::new(Netns::current())));
    engine::spawn(inbound::serve(ctx.clone(), pod, l, Default::default()));
    a
}

/// A connection to `a` on this test's engine.
async fn our_connect(a: SocketAddr) -> ringmesh::runtime::net::Stream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_nonblocking(true).unwrap();
    ringmesh::runtime::net::connect(s.into(), a, Duration::from_secs(5))
        .await
        .unwrap()
}

fn key(addr: SocketAddr) -> PoolKey {
    PoolKey {
        src: id("client"),
        dst: vec![id("server")],
        addr,
        src_pod: "cli".into(),
    }
}

fn connect_req(e: &Env) -> http::Request<()> {
    http::Request::builder()
        .method("CONNECT")
        .uri(e.app.to_string())
        .body(())
        .unwrap()
}

/// Opens a stream for `key(addr)` with our pooled client, dialing `addr` for real.
async fn real_stream(
    e: &Env,
    addr: SocketAddr,
) -> Result<ringmesh::proxy::pool::Stream, StreamError> {
    let cert = e.certs.handle().load().get(&id("client")).unwrap().clone();
    let cfg = e.ctx.cfg.clone();
    let (max, timeout) = (cfg.h2.client_max_streams, cfg.connect_timeout);
    e.ctx
        .pool
        .stream(
            &key(addr),
            max,
            timeout,
            connect_req(e),
            |deadline| async move {
                let tcp = our_connect(addr).await;
                let (h2s, records) = (&cfg.h2, cfg.tls_records);
                h2conn::dial(
                    tcp,
                    cert.client.clone(),
                    &[id("server")],
                    h2s,
                    records,
                    &deadline,
                )
                .await
            },
        )
        .await
}

/// Opens a stream for `key(addr)` whose dial never gets past its TCP connect.
async fn stalled_stream(
    e: &Env,
    addr: SocketAddr,
) -> Result<ringmesh::proxy::pool::Stream, StreamError> {
    let (max, timeout) = (e.ctx.cfg.h2.client_max_streams, e.ctx.cfg.connect_timeout);
    e.ctx
        .pool
        .stream(&key(addr), max, timeout, connect_req(e), |_| async {
            std::future::pending::<()>().await;
            unreachable!()
        })
        .await
}

fn err_text(r: Result<ringmesh::proxy::pool::Stream, StreamError>) -> String {
    match r {
        Ok(_) => panic!("a stream through a peer that never answers"),
        Err(e) => e.to_string(),
    }
}

/// Defect 1: a peer on 15008 that accepts TCP and never answers TLS fails the dial at the
/// deadline, and the error names the phase and the peer (both record layers).
#[test]
fn dial_to_a_silent_peer_times_out_naming_tls_and_the_peer() {
    on_both_engines(|| async {
        for records in [TlsRecords::Direct, TlsRecords::Rustls] {
            let e = env_with(records);
            let (peer, _) = silent_peer();
            let t0 = Instant::now();
            let msg = err_text(real_stream(&e, peer).await);
            let took = t0.elapsed();
            assert!(took < BOUND, "failed after {took:?}, deadline {DEADLINE:?}");
            assert!(msg.contains("TLS handshake"), "{msg}");
            assert!(msg.contains(&peer.to_string()), "{msg}");
            assert!(msg.contains("timed out"), "{msg}");
            assert_eq!(e.ctx.pool.len(), 0);
        }
    });
}

/// Defect 1, the TCP phase: a dial stuck before its TCP connect completes is cut at the
/// same deadline, and the error says so.
#[test]
fn a_stalled_tcp_connect_times_out_naming_the_phase() {
    on_both_engines(|| async {
        let e = env();
        let peer: SocketAddr = "127.0.0.1:15008".parse().unwrap();
        let t0 = Instant::now();
        let msg = err_text(stalled_stream(&e, peer).await);
        let took = t0.elapsed();
        assert!(took < BOUND, "failed after {took:?}, deadline {DEADLINE:?}");
        assert!(msg.contains("TCP connect"), "{msg}");
        assert!(msg.contains("127.0.0.1:15008"), "{msg}");
    });
}

/// Reads until EOF or an error; returns how long that took.
async fn until_closed(mut r: impl tokio::io::AsyncRead + Unpin) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    t0.elapsed()
}

/// Defect 2: a client that completes TLS and then sends nothing (no HTTP/2 preface) is
/// dropped by our server at the deadline: its connection is closed (both record layers).
#[test]
fn inbound_closes_a_client_silent_after_tls() {
    on_both_engines(|| async {
        for records in [TlsRecords::Direct, TlsRecords::Rustls] {
            silent_after_tls(env_with(records)).await;
        }
    });
}

async fn silent_after_tls(e: Env) {
    let server = our_server(&e.ctx);
    let cert = e.certs.handle().load().get(&id("client")).unwrap().clone();
    let tcp = our_connect(server).await;
    let name = ringmesh::tls::dummy_server_name();
    let tls = ringmesh::io::tls::connect(tcp, cert.client.clone(), name)
        .await
        .unwrap();
    let took = until_closed(tls).await;
    assert!(took < BOUND, "closed after {took:?}, deadline {DEADLINE:?}");
}

/// Defect 2, the TLS side: a client that connects and never starts TLS is dropped at the
/// same deadline.
#[test]
fn inbound_closes_a_client_that_never_starts_tls() {
    on_both_engines(|| async {
        let e = env();
        let server = our_server(&e.ctx);
        let tcp = our_connect(server).await;
        let took = until_closed(tcp).await;
        assert!(took < BOUND, "closed after {took:?}, deadline {DEADLINE:?}");
    });
}

/// Defect 3: streams queued behind a dial to a silent peer share that one dial and fail
/// with it at the deadline — not one after another, and without dialing again.
#[test]
fn waiters_share_one_dial_and_give_up_at_the_deadline() {
    on_both_engines(|| async {
        let e = env();
        let (peer, accepted) = silent_peer();
        let t0 = Instant::now();
        let timed = |r| (err_text(r), t0.elapsed());
        let (a, b, c, d, f) = tokio::join!(
            real_stream(&e, peer),
            real_stream(&e, peer),
            real_stream(&e, peer),
            real_stream(&e, peer),
            real_stream(&e, peer),
        );
        for (msg, took) in [timed(a), timed(b), timed(c), timed(d), timed(f)] {
            assert!(took < BOUND, "a stream failed after {took:?}: {msg}");
            assert!(msg.contains(&peer.to_string()), "{msg}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one dial for the five");
    });
}

/// Defect 3: a dial that timed out leaves the key free: the next stream dials afresh and
/// succeeds, and the stream after it reuses that connection.
#[test]
fn a_failed_dial_leaves_the_key_free_and_the_next_connection_is_pooled() {
    on_both_engines(|| async {
        let e = env();
        let server = our_server(&e.ctx);
        let msg = err_text(stalled_stream(&e, server).await);
        assert!(msg.contains("TCP connect"), "{msg}");
        let t0 = Instant::now();
        let first = real_stream(&e, server).await;
        assert!(first.is_ok(), "{:?}", first.err());
        assert!(t0.elapsed() < BOUND);
        let (max, timeout) = (e.ctx.cfg.h2.client_max_streams, e.ctx.cfg.connect_timeout);
        let second = e
            .ctx
            .pool
            .stream(&key(server), max, timeout, connect_req(&e), |_| async {
                panic!("dialed again although a pooled connection had room")
            })
            .await;
        assert!(second.is_ok(), "{:?}", second.err());
        assert_eq!(e.ctx.pool.len(), 1);
    });
}

/// A dial abandoned by its caller (the client went away) hands over to the stream waiting
/// behind it, which dials itself and succeeds.
#[test]
fn a_dropped_dialer_hands_over_to_a_waiter() {
    on_both_engines(|| async {
        let e = env();
        let server = our_server(&e.ctx);
        let abandoned = async {
            let r = engine::timeout(Duration::from_millis(200), stalled_stream(&e, server)).await;
            assert!(r.is_err(), "the stalled dial finished on its own");
        };
        let waiter = async {
            engine::sleep(Duration::from_millis(50)).await;
            real_stream(&e, server).await
        };
        let ((), got) = tokio::join!(abandoned, waiter);
        assert!(got.is_ok(), "{:?}", got.err());
        assert_eq!(e.ctx.pool.len(), 1);
    });
}

/// Streams opened together to a new destination share one new connection.
#[test]
fn concurrent_streams_share_one_new_connection() {
    on_both_engines(|| async {
        let e = env();
        let server = our_server(&e.ctx);
        let (a, b, c) = tokio::join!(
            real_stream(&e, server),
            real_stream(&e, server),
            real_stream(&e, server),
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(e.ctx.pool.len(), 1);
    });
}

/// The dial's and the accept's handshake state is boxed for the handshakes' duration: the
/// futures that live as long as a stream or an inbound connection stay small (before the
/// deadlines: 6568 and 6744 bytes; the deadline wrappers inline would make the stream's
/// 23 KiB), and so do an outbound connection's task and an inbound stream's as spawned
/// (the dial, the pool's wait and the admission are boxed for their duration, and the
/// tunnel's bookkeeping is a handle, not a copy).
#[test]
fn per_connection_futures_stay_small() {
    on_both_engines(|| async {
        let e = env();
        let (peer, _) = silent_peer();
        let stream = real_stream(&e, peer);
        let size = std::mem::size_of_val(&stream);
        assert!(size <= 2048, "a pooled stream's future is {size} bytes");
        drop(stream);
        let pod = Arc::new(Pod::new("srv", Arc::new(Netns::current())));
        let conn = inbound::handle_conn(e.ctx.clone(), pod.clone(), our_connect(peer).await, peer);
        let size = std::mem::size_of_val(&conn);
        assert!(
            size <= 6144,
            "an inbound connection's future is {size} bytes"
        );
        drop(conn);
        // An outbound connection's task and an inbound stream's, as spawned. Neither lasts
        // as long as its tunnel (the link holds the tunnel's end), but every connection
        // being set up has one. They were 21 000 bytes while two `async move` wrappers each
        // stored the connection's future twice, and ≈ 5.3 and 2.6 KB while they held the
        // pool's and the admission's futures, the TLS dial and the bookkeeping inline.
        let task = outbound::conn_task(
            &e.ctx,
            &pod,
            our_connect(peer).await,
            peer,
            e.ctx.limit.take(),
        );
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= 2048,
            "an outbound connection's task is {size} bytes"
        );
        drop(task);
        let link = Link::new(Conn::new(
            Role::Server,
            Config::hbone(Role::Server, &e.ctx.cfg.h2),
        ));
        let inc = Incoming {
            id: StreamId(1),
            headers: Vec::new(),
        };
        let task = inbound_link::stream_task(&e.ctx, pod, &link, inc, peer, peer, &Rc::new(None));
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "an inbound stream's task is {size} bytes");
    });
}
