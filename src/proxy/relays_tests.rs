//! Tests of the relay registry and its hand-over on real loopback sockets and real shards
//! (each "process" a shard thread of its own, on either engine): a relay runs as the 15006
//! flow runs it, is exported, refused by the next process (fault port), continued by the old
//! one, exported again and continued by the next, byte-exact, with its metrics (opened once,
//! closed once, bytes where they moved), the access log's totals of every process and its
//! policy re-check; a policy change closes an adopted relay; bookkeeping this build does not
//! know is refused; a flow gone during an export does not hang the export.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::*;
use crate::proxy::links::{PolicyMeta, unix_ms_ago};
use crate::runtime::Engine;
use crate::runtime::net::Stream;
use crate::telemetry::metrics::TcpLabels;

use crate::proxy::test_shard::*;

impl Proc {
    /// Exports every relay of the shard (the hand-over's first step).
    fn export_all(&self) -> Vec<(TunnelMeta, RelayOut)> {
        self.spawn(|ctx| async move { ctx.relays.export_all().await })
            .recv_timeout(WAIT)
            .expect("the export finishes")
    }

    /// Continues an exported relay here, as the hand-over does (the state through its
    /// encoding, as over the socket).
    fn adopt(
        &self,
        meta: &TunnelMeta,
        state: &RelayState,
        fds: Vec<OwnedFd>,
        fault: Option<u16>,
    ) -> Result<(), String> {
        let (meta, bytes) = (meta.clone(), state.encode());
        self.call(move |ctx| {
            let state = RelayState::decode(&bytes).map_err(|e| e.to_string())?;
            adopt(ctx, &meta, &state, fds, fault)
        })
    }

    fn tcp(&self, labels: &TcpLabels) -> [u64; 5] {
        let c = self.metrics.counters_for(labels.clone());
        [&c.opened, &c.closed, &c.failed, &c.sent, &c.received].map(|v| v.load(Ordering::Relaxed))
    }
}

/// An inbound (15006) relay's bookkeeping, as `inbound_plain` writes it.
fn inbound_meta(src: SocketAddr, dst: SocketAddr) -> TunnelMeta {
    TunnelMeta {
        direction: "inbound".into(),
        pod: "srv".into(),
        src,
        src_id: None,
        dst,
        hbone_addr: None,
        dst_id: Some("spiffe://cluster.local/ns/default/sa/server".into()),
        service: None,
        labels: Arc::new(labels()),
        started_unix_ms: unix_ms_ago(Duration::from_secs(3)),
        policy: Some(PolicyMeta {
            dst_uid: "srv".into(),
            src,
            dst,
            src_identity: None,
        }),
    }
}

/// `n` bytes of pattern `seed` (no two phases alike, so a byte out of place shows).
fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

/// `far` writes `data` on a thread of its own.
fn write_later(far: &TcpStream, data: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = far.try_clone().unwrap();
    std::thread::spawn(move || w.write_all(&data).unwrap())
}

fn read_exact(far: &mut TcpStream, want: &[u8], what: &str) {
    let mut got = vec![0u8; want.len()];
    far.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(got == want, "{what}: the bytes differ");
}

/// `n` bytes each way at once: the client (a's far end) to the app (b's) and back.
fn exchange(client: &mut TcpStream, app: &mut TcpStream, seed: u8, n: usize) {
    let (up, down) = (pattern(seed, n), pattern(seed ^ 0x5a, n + 1));
    let w1 = write_later(client, up.clone());
    let w2 = write_later(app, down.clone());
    read_exact(app, &up, "client -> app");
    read_exact(client, &down, "app -> client");
    w1.join().unwrap();
    w2.join().unwrap();
}

/// Starts a relay between `a` and `b` on `p` as the 15006 flow runs one; its result (moved
/// or not, bytes each way) comes on the channel once it ends.
fn start_inbound(
    p: &Proc,
    a: OwnedFd,
    b: OwnedFd,
    meta: TunnelMeta,
) -> mpsc::Receiver<(Result<bool, String>, u64, u64)> {
    p.spawn(move |ctx| async move {
        let metrics = ConnMetrics::open(&ctx, TcpLabels::clone(&meta.labels));
        let counters = metrics.counters(false);
        let (a, b) = (Stream::from_fd(a).unwrap(), Stream::from_fd(b).unwrap());
        let c = counters.clone();
        let meta = Rc::new(meta);
        let end = carry(&ctx, &meta, false, move |ctl| {
            relay::run(a, b, Vec::new(), c, ctl)
        })
        .await;
        let r = outcome(end);
        if r == Ok(true) {
            metrics.moved();
        }
        (r, counters.sent.get(), counters.received.get())
    })
}

/// The one relay `p` exported.
fn exported(p: &Proc) -> (TunnelMeta, RelayExport) {
    let mut out = p.export_all();
    assert_eq!(out.len(), 1, "one relay to export");
    match out.pop() {
        Some((m, RelayOut::Moved(x))) => (m, x),
        Some((_, other)) => panic!("the relay did not move: {other:?}"),
        None => unreachable!(),
    }
}

fn dup(fds: &[OwnedFd]) -> Vec<OwnedFd> {
    fds.iter().map(|f| f.try_clone().unwrap()).collect()
}

/// The number after `key=` in the access line of `log`.
fn field(log: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("connection complete"))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .trim_start_matches('"')
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

const N: usize = 300 * 1024;
const AHEAD: usize = 100 * 1024;

/// The hand-over's whole life for one relay, old process on `old`, new on `new`.
fn handed_over_refused_kept_and_handed_over_again(old_engine: Engine, new_engine: Engine) {
    let (old, new) = (process(old_engine), process(new_engine));
    let (a, mut client) = pair();
    let (b, mut app) = pair();
    let meta = inbound_meta(client.local_addr().unwrap(), app.local_addr().unwrap());
    let first = start_inbound(&old, a, b, meta.clone());
    exchange(&mut client, &mut app, 1, N);
    old.wait_books((1, 1, 0), "registered for a hand-over and the re-check");

    // Bytes on their way to the client while the relay moves: carried, not lost.
    let ahead = pattern(9, AHEAD);
    write_later(&app, ahead.clone()).join().unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let (m, x) = exported(&old);
    assert_eq!(m, meta, "the bookkeeping comes with the export");
    let (r, sent, received) = first.recv_timeout(WAIT).unwrap();
    assert_eq!(r, Ok(true), "the flow sees its relay moved");
    assert_eq!((sent, x.state.a_to_b.bytes), (N as u64, N as u64));
    assert_eq!(x.state.b_to_a.bytes, received);
    assert_eq!(old.books(), (0, 0, 0), "a moved relay is nobody's here");

    // The next process refuses it (it gets duplicates, as over the socket)…
    let e = new
        .adopt(
            &m,
            &x.state,
            dup(&x.fds),
            Some(app.local_addr().unwrap().port()),
        )
        .unwrap_err();
    assert!(e.contains("fault injection"), "{e}");
    assert_eq!(new.books(), (0, 0, 0));
    // …so the old one continues it, and it drains there: every byte arrives.
    old.adopt(&m, &x.state, x.fds, None).unwrap();
    old.wait_books((1, 1, 1), "kept: live, registered again");
    read_exact(&mut client, &ahead, "bytes in flight during the hand-over");
    exchange(&mut client, &mut app, 2, N);

    // Handed over again (an adopted relay is exported like any), and taken this time.
    let (m, x) = exported(&old);
    old.wait_books((0, 0, 0), "moved again");
    assert_eq!(x.state.a_to_b.bytes, 2 * N as u64, "counts carried on");
    new.adopt(&m, &x.state, x.fds, None).unwrap();
    new.wait_books((1, 1, 1), "adopted");
    exchange(&mut client, &mut app, 3, N);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the client's FIN reached the app");
    app.shutdown(std::net::Shutdown::Write).unwrap();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the app's FIN reached the client");
    new.wait_idle();

    // Opened once (old), closed once (new); each process counted the bytes it moved.
    let [opened, closed, failed, s_old, r_old] = old.tcp(&m.labels);
    assert_eq!((opened, closed, failed), (1, 0, 0));
    let [opened, closed, failed, s_new, r_new] = new.tcp(&m.labels);
    assert_eq!((opened, closed, failed), (0, 1, 0));
    let up = 3 * N as u64;
    let down = 3 * (N as u64 + 1) + AHEAD as u64;
    assert_eq!(s_old + s_new + r_old + r_new, up + down);
    assert_eq!(
        s_new + r_new,
        (2 * N + 1) as u64,
        "the new process counts phase 3"
    );
    // One access line, in the new process, with the totals of both.
    let (old_log, new_log) = (old.log.text(), new.log.text());
    assert!(!old_log.contains("connection complete"), "{old_log}");
    assert_eq!(field(&new_log, "bytes_sent"), Some(up), "{new_log}");
    assert_eq!(field(&new_log, "bytes_recv"), Some(down), "{new_log}");
    assert!(new_log.contains("direction=\"inbound\""), "{new_log}");
    let ms = field(&new_log, "duration").unwrap_or(0);
    assert!(
        ms >= 3000,
        "the duration counts from the first process's start: {new_log}"
    );
    assert!(!new_log.contains("ERROR"), "{new_log}");
}

fn a_relay_is_handed_over_refused_kept_and_handed_over_again(engine: Engine) {
    handed_over_refused_kept_and_handed_over_again(engine, engine);
}

#[test]
fn a_relay_is_handed_over_between_engines() {
    handed_over_refused_kept_and_handed_over_again(Engine::Uring, Engine::Epoll);
}

/// A policy change that denies an adopted 15006 connection closes it, as it would have in
/// the process that authorized it.
fn a_policy_change_closes_an_adopted_relay(engine: Engine) {
    policy_closes_an_adopted_relay(engine, false);
}

/// A policy change the old process had not seen when it let go: the new process, which has
/// it already, closes the relay as soon as it continues it (no later change needed).
fn a_relay_adopted_under_a_denying_policy_is_closed_at_once(engine: Engine) {
    policy_closes_an_adopted_relay(engine, true);
}

/// A 15006 relay moves to `new`, whose policies then (or, `before`, already when it adopts)
/// deny it: it is closed, logged as closed by policy.
fn policy_closes_an_adopted_relay(engine: Engine, before: bool) {
    let (old, new) = (process(engine), process(engine));
    let (a, mut client) = pair();
    let (b, mut app) = pair();
    let meta = inbound_meta(client.local_addr().unwrap(), app.local_addr().unwrap());
    let _first = start_inbound(&old, a, b, meta);
    exchange(&mut client, &mut app, 1, 1000);
    let (m, x) = exported(&old);
    let deny = || {
        let snap = crate::config::snapshot_from_str("t.yaml", CFG_GONE, 2).unwrap();
        new.state.store(Arc::new(snap));
    };
    if before {
        deny();
    }
    new.adopt(&m, &x.state, x.fds, None).unwrap();
    if !before {
        exchange(&mut client, &mut app, 2, 1000);
        deny();
        assert_eq!(new.call(|ctx| ctx.conns.recheck(&ctx.state.load())), 1);
    }
    let log = closed_by_policy(&new, &mut client);
    let sent = if before { 1000 } else { 2000 };
    assert_eq!(field(&log, "bytes_sent"), Some(sent), "{log}");
}

/// Waits for `client`'s connection to be closed (EOF or reset) and `p` idle; its log, which
/// says the policy closed it.
fn closed_by_policy(p: &Proc, client: &mut TcpStream) -> String {
    let mut rest = Vec::new();
    let r = client.read_to_end(&mut rest);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client's connection is closed: {r:?}"
    );
    p.wait_idle();
    let log = p.log.text();
    assert!(log.contains(POLICY_CLOSED), "{log}");
    log
}

/// Bookkeeping this build does not know, and a wrong socket count, are refused; nothing is
/// left registered or live.
fn unknown_bookkeeping_is_refused(engine: Engine) {
    let p = process(engine);
    let (a, _ca) = pair();
    let (b, _cb) = pair();
    let mut meta = inbound_meta(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    meta.direction = "sideways".into();
    let e = p
        .adopt(&meta, &RelayState::default(), vec![a, b], None)
        .unwrap_err();
    assert!(
        e.contains("sideways") && e.contains("does not understand"),
        "{e}"
    );
    meta.direction = "outbound".into();
    let (a, _ca) = pair();
    let e = p
        .adopt(&meta, &RelayState::default(), vec![a], None)
        .unwrap_err();
    assert!(e.contains("1 sockets"), "{e}");
    assert_eq!(p.books(), (0, 0, 0));
}

/// A flow that lets go of its relay while an export waits for it (a policy change closed
/// it) ends that export instead of hanging the hand-over.
fn an_export_ends_when_the_flow_goes(engine: Engine) {
    let p = process(engine);
    let rx = p.spawn(|ctx| async move {
        let meta = inbound_meta(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        // Registered, but no relay task answers its handle.
        let reg = ctx.relays.register(RelayCtl::new(), Rc::new(meta));
        let (c, (tx, rx)) = (ctx.clone(), tokio::sync::oneshot::channel());
        engine::spawn(async move {
            let out = c.relays.export_all().await;
            let _ = tx.send(out.into_iter().map(|(_, r)| r).collect::<Vec<_>>());
        });
        engine::sleep(Duration::from_millis(20)).await;
        drop(reg);
        (rx.await, ctx.relays.len())
    });
    let (exported, left) = rx.recv_timeout(WAIT).expect("the export ended");
    assert_eq!(left, 0);
    match exported.unwrap().as_slice() {
        [RelayOut::Ended(why)] => assert!(why.contains("closed during its export"), "{why}"),
        other => panic!("{other:?}"),
    }
}

on_both_engines!(
    a_relay_is_handed_over_refused_kept_and_handed_over_again,
    a_policy_change_closes_an_adopted_relay,
    a_relay_adopted_under_a_denying_policy_is_closed_at_once,
    unknown_bookkeeping_is_refused,
    an_export_ends_when_the_flow_goes,
);
