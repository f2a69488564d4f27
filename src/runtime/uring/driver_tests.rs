//! Tests of the driver's own bookkeeping, on a real ring: what happens when the kernel
//! takes no submissions; a socket's operations in flight, the slot it holds and when it is
//! reused; stale and unknown completions; buffers lent out of the ring.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Wake, Waker};
use std::time::Duration;

use super::sock::Ready;
use bytes::Bytes;
use io_uring::opcode;

use super::sock::Src;
use super::*;

fn nop() -> squeue::Entry {
    opcode::Nop::new()
        .build()
        .user_data(SlotKey::DRIVER.user_data(Op::Ignore))
}

/// A ring whose fd no longer is a ring (replaced by /dev/null under it: every
/// `io_uring_enter` fails): a full submission queue ends in `broken`, in bounded time, and
/// later submissions are dropped at once instead of spinning. Before the bound, `push`
/// retried forever (the test's guard below then fails).
#[test]
fn a_ring_that_takes_nothing_is_marked_broken_not_spun_on() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = UringOpts {
            entries: 4,
            ..UringOpts::default()
        };
        let mut d = Driver::new(&opts).expect("io_uring");
        d.break_ring();
        assert!(d.broken().is_none());
        for _ in 0..opts.entries * 2 {
            d.push(nop());
        }
        let why = d.broken().map(str::to_string);
        // Once broken, a push returns at once.
        let t = std::time::Instant::now();
        d.push(nop());
        let again = t.elapsed();
        let _ = tx.send((why, again));
    });
    let (why, again) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("push returned (it spun on a ring that takes no submissions)");
    let why = why.expect("the ring is marked broken");
    assert!(why.contains("takes no submissions"), "{why}");
    assert!(why.contains("1100 tries"), "{why}");
    assert!(
        again < Duration::from_secs(1),
        "a push on a broken ring waited {again:?}"
    );
}

/// Far more submissions than the completion queue holds, never reaped in between (a
/// 4-entry submission queue, 16-entry completion queue, 400 nops): `push` gets each one in,
/// the ring is not marked broken, and every one of the 400 completes (counted from `cqes`
/// and the ring) with none dropped. A kernel that refuses submissions while completions
/// overflow (EBUSY) makes `push` reap them into `cqes`; Linux 6.18 keeps the overflow itself
/// and never refuses here, so on it this checks the count, not that reaping path.
#[test]
fn a_completion_queue_that_overflows_is_reaped_not_broken() {
    const N: usize = 400;
    let opts = UringOpts {
        entries: 4,
        ..UringOpts::default()
    };
    let mut d = Driver::new(&opts).expect("io_uring");
    for _ in 0..N {
        d.push(nop());
    }
    assert!(d.broken().is_none(), "{:?}", d.broken());
    let mut seen = std::mem::take(&mut d.cqes).len();
    for _ in 0..1000 {
        if seen >= N {
            break;
        }
        // Submits what is queued and flushes what the kernel kept aside (GETEVENTS).
        let ts = io_uring::types::Timespec::from(Duration::from_millis(1));
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        let _ = d.ring.submitter().submit_with_args(1, &args);
        seen += d.ring.completion().count();
    }
    assert_eq!(
        seen, N,
        "nops completed (reaped by push, then from the ring)"
    );
    let mut cq = d.ring.completion();
    cq.sync();
    assert_eq!(cq.overflow(), 0, "completions the kernel dropped");
}

// ---- in-flight bookkeeping, slot reuse and stale completions, on real sockets ----

/// Runs `f` with a driver installed on this thread, as an executor installs it (lent
/// buffers find it there), then tears it down as the executor does.
fn on_driver<R>(f: impl FnOnce() -> R) -> R {
    on_driver_with(&UringOpts::default(), f)
}

fn on_driver_with<R>(opts: &UringOpts, f: impl FnOnce() -> R) -> R {
    install(Driver::new(opts).expect("io_uring"));
    let r = f();
    if let Some(mut d) = uninstall() {
        d.turn(false, None);
        d.close_all();
    }
    r
}

/// Turns the ring until `done` holds (about 10 s at most).
fn turn_until(what: &str, mut done: impl FnMut(&mut Driver) -> bool) {
    for _ in 0..1000 {
        if with(|d| {
            d.turn(true, Some(Duration::from_millis(10)));
            done(d)
        }) {
            return;
        }
    }
    panic!("timed out waiting until {what}");
}

/// A connected AF_UNIX stream pair: one end's fd (to register), the other end.
fn pair() -> (RawFd, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    (a.into_raw_fd(), b)
}

/// A connected loopback TCP pair (SEND_ZC needs an inet socket).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    (c, s)
}

fn inflight(idx: usize) -> u32 {
    with(|d| d.sock(idx).inflight)
}

/// A read with nothing queued: arms the socket's multishot receive, takes nothing.
fn arm(idx: usize) {
    assert!(with(|d| d.read(idx, Waker::noop(), |_| 0)).is_none());
}

/// A ring of 4 buffers: a receive that does not give back what it takes empties it fast.
const SMALL_RING: UringOpts = UringOpts {
    entries: 64,
    sqpoll_idle_ms: None,
    buf_count: 4,
    buf_size: 1024,
    send_zc_threshold: 0,
    send_queue: 64 * 1024,
    taskrun: super::super::TaskRun::Coop,
    recv_limit: true,
};

/// Writes `n` small messages to `peer`, turning the ring after each until `seen` counts it
/// (one receive completion each), so that each takes a ring buffer of its own.
fn feed(peer: &mut UnixStream, n: u64, mut seen: impl FnMut(&mut Driver, u64) -> bool) {
    for k in 0..n {
        peer.write_all(&[k as u8; 100]).unwrap();
        turn_until("the receive of one message", |d| seen(d, k));
    }
}

/// Whether slot `idx`'s socket receives into the ring (not a private buffer): the ring has
/// a buffer to give. Arms it, has its peer send, reads what came.
fn receives_into_the_ring(idx: usize, peer: &mut UnixStream) -> bool {
    arm(idx);
    peer.write_all(b"for the new socket").unwrap();
    turn_until("the new socket's bytes", |d| d.sock(idx).rx_bytes == 18);
    with(|d| matches!(d.sock(idx).rx.front().map(|c| &c.src), Some(Src::Ring(_))))
}

fn stale(d: &Driver) -> u64 {
    d.ops.stale.load(Ordering::Relaxed)
}

fn unknown(d: &Driver) -> u64 {
    d.ops.unknown.load(Ordering::Relaxed)
}

/// Registers a socket and releases it at once (nothing in flight: its slot is freed), then
/// registers another, which gets the same slot: returns that slot, the first socket's key
/// (the one a late completion of its would carry) and the second socket's peer.
fn reused_slot() -> (usize, SlotKey, UnixStream) {
    let (a, _pa) = pair();
    let idx = with(|d| d.register(a));
    let old = with(|d| d.sock(idx).key);
    with(|d| d.release(idx));
    let (b, pb) = pair();
    assert_eq!(with(|d| d.register(b)), idx, "a freed slot is reused");
    let new = with(|d| d.sock(idx).key);
    assert_eq!(new.idx(), old.idx());
    assert_eq!(new.generation(), old.generation().next());
    (idx, old, pb)
}

/// A socket's in-flight count goes up with each submission and down with each operation's
/// last completion: a multishot receive counts once however many completions it posts, a
/// send and a shutdown until their result; EOF ends the receive and the count is 0 again.
#[test]
fn in_flight_goes_up_on_submit_and_down_on_the_last_completion() {
    on_driver(|| {
        let (a, mut peer) = pair();
        let idx = with(|d| d.register(a));
        assert_eq!(inflight(idx), 0);
        arm(idx);
        assert_eq!(inflight(idx), 1);
        assert!(with(|d| d.sock(idx).rx_armed));
        // Data: the multishot receive posts a completion and stays armed.
        peer.write_all(b"hello").unwrap();
        turn_until("5 bytes arrive", |d| d.sock(idx).rx_bytes == 5);
        assert_eq!(inflight(idx), 1, "a multishot counts once");
        // A send is one more until its result.
        let n = with(|d| d.write(idx, Waker::noop(), &[&b"ping"[..]])).unwrap();
        assert_eq!(n, 4);
        assert_eq!(inflight(idx), 2);
        turn_until("the send completes", |d| d.sock(idx).tx_cur.is_none());
        assert_eq!(inflight(idx), 1);
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        // So is a shutdown.
        assert!(with(|d| d.shutdown(idx, Waker::noop())).is_none());
        assert_eq!(inflight(idx), 2);
        turn_until("the shutdown completes", |d| d.sock(idx).shut_res.is_some());
        assert_eq!(inflight(idx), 1);
        // The peer's EOF is the receive's last completion (no MORE).
        drop(peer);
        turn_until("EOF", |d| d.sock(idx).rx_eof);
        assert_eq!(inflight(idx), 0);
        assert!(!with(|d| d.sock(idx).rx_armed));
        with(|d| d.release(idx));
    });
}

/// Releasing a socket whose receive is in flight cancels it but keeps the slot until the
/// cancelled receive's last completion: a socket registered meanwhile gets another slot;
/// the released one is freed (its generation moves on) only after, and reused then.
#[test]
fn a_close_with_ops_in_flight_keeps_the_slot_until_they_complete() {
    on_driver(|| {
        let (a, _pa) = pair();
        let idx = with(|d| d.register(a));
        arm(idx);
        let g0 = with(|d| d.socks.generation(idx));
        with(|d| d.release(idx));
        with(|d| {
            let s = d
                .socks
                .try_get(idx)
                .expect("the slot is kept while its receive is in flight");
            assert!(s.closed && !s.alive);
            assert_eq!(s.inflight, 1);
        });
        let (b, _pb) = pair();
        let other = with(|d| d.register(b));
        assert_ne!(
            other, idx,
            "a slot with an op in flight was handed out again"
        );
        turn_until("the cancelled receive completes", |d| {
            d.socks.try_get(idx).is_none()
        });
        assert_eq!(with(|d| d.socks.generation(idx)), g0.next());
        let (c, _pc) = pair();
        assert_eq!(with(|d| d.register(c)), idx, "the freed slot is reused");
        assert_eq!(with(|d| d.sock(idx).key.generation()), g0.next());
        with(|d| {
            d.release(idx);
            d.release(other);
        });
    });
}

/// A multishot receive that outlives its slot (freed under it, the bug generations guard
/// against) and posts after the slot went to a new socket: each completion is counted as
/// stale, its ring buffer goes back to the ring (twice the ring's 4 buffers pass through it
/// and the ring still has one for the new socket), and the new socket sees none of it — no
/// bytes, no change to its in-flight count. Without the generation it was the new socket's.
#[test]
fn a_stale_receive_returns_its_buffer_and_does_not_reach_the_new_socket() {
    on_driver_with(&SMALL_RING, || {
        let (a, mut pa) = pair();
        let idx = with(|d| d.register(a));
        arm(idx);
        let out = with(|d| d.bufs.out);
        with(|d| d.socks.forget(idx));
        let (b, mut pb) = pair();
        assert_eq!(with(|d| d.register(b)), idx);
        let before = with(|d| stale(d));
        feed(&mut pa, 8, |d, k| {
            stale(d) > before + k || d.sock(idx).rx_bytes > 0
        });
        assert_eq!(with(|d| stale(d)), before + 8);
        with(|d| {
            let s = d.sock(idx);
            assert_eq!(
                (s.rx_bytes, s.rx.len()),
                (0, 0),
                "the new socket got the bytes"
            );
            assert_eq!(s.inflight, 0);
            assert!(!s.rx_armed && !s.rx_eof);
            assert_eq!(
                d.bufs.out, out,
                "the stale completion's buffer is out of the ring"
            );
        });
        // The old receive's last completion (EOF) is stale too.
        drop(pa);
        turn_until("the old receive ends", |d| {
            stale(d) > before + 8 || d.sock(idx).rx_eof
        });
        assert!(
            !with(|d| d.sock(idx).rx_eof),
            "the new socket saw the old one's EOF"
        );
        assert!(
            receives_into_the_ring(idx, &mut pb),
            "the ring ran dry: stale completions kept its buffers"
        );
        with(|d| d.release(idx));
        // SAFETY: the forgotten socket's fd, which nothing else closes.
        unsafe { libc::close(a) };
    });
}

/// A SEND_ZC made for a slot's old occupant completes after the slot went to a new socket
/// that has a zero-copy send of its own waiting for its notification: the stale result and
/// the stale notification are both counted and neither touches the new socket (its pinned
/// buffer stays pinned, its in-flight count stays).
#[test]
fn a_stale_send_zc_notification_does_not_release_the_new_sockets_buffer() {
    on_driver(|| {
        let (idx, old, _pb) = reused_slot();
        // The new socket's own zero-copy send, still pinned until its notification.
        let pinned = Bytes::from(vec![7u8; 4096]);
        with(|d| {
            let s = d.sock(idx);
            s.tx_zc_hold.push_back(pinned.clone());
            s.inflight += 1;
        });
        let (c, mut peer) = tcp_pair();
        let data = vec![1u8; 64 * 1024];
        let before = with(|d| stale(d));
        with(|d| {
            let e = opcode::SendZc::new(types::Fd(c.as_raw_fd()), data.as_ptr(), data.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(old.user_data(Op::SendZc));
            d.push(e);
        });
        turn_until("the result and its notification", |d| {
            stale(d) >= before + 2 || d.sock(idx).tx_zc_hold.is_empty()
        });
        with(|d| {
            let s = d.sock(idx);
            assert_eq!(
                s.tx_zc_hold.len(),
                1,
                "the new socket's pinned buffer was let go"
            );
            assert_eq!(s.inflight, 1);
            assert_eq!(s.tx_err, None);
            assert_eq!(stale(d), before + 2);
            let s = d.sock(idx);
            s.tx_zc_hold.clear();
            s.inflight = 0;
            d.release(idx);
        });
        let mut got = vec![0u8; data.len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, data);
        drop(pinned);
    });
}

/// An accept made for a slot's old occupant completes after the slot went to a new socket:
/// counted as stale, not queued on the new socket, and the accepted connection is closed
/// (the client sees EOF), not leaked.
#[test]
fn a_stale_accept_closes_the_connection_it_accepted() {
    on_driver(|| {
        let (idx, old, _pb) = reused_slot();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let before = with(|d| stale(d));
        with(|d| {
            let e = opcode::Accept::new(
                types::Fd(l.as_raw_fd()),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(old.user_data(Op::Accept));
            d.push(e);
        });
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        turn_until("the stale accept", |d| stale(d) > before);
        with(|d| {
            let s = d.sock(idx);
            assert!(
                s.acc.is_empty(),
                "the new socket got the old one's connection"
            );
            assert_eq!(s.inflight, 0);
        });
        // The close is submitted at the next turn.
        with(|d| d.turn(false, None));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        let n = client
            .read(&mut b)
            .expect("EOF, not a connection left open");
        assert_eq!(n, 0);
        with(|d| d.release(idx));
    });
}

/// A completion whose op is none the driver submits is counted and dropped without a panic;
/// one that carries a ring buffer gives it back (twice the ring's 4 buffers pass through an
/// unknown receive, and the ring still has one for a socket).
#[test]
fn an_unknown_op_is_counted_and_its_buffer_returned() {
    on_driver_with(&SMALL_RING, || {
        let before = with(|d| unknown(d));
        with(|d| {
            d.push(opcode::Nop::new().build().user_data(0));
            d.push(opcode::Nop::new().build().user_data(0xffff_ffff_ffff_ffee));
        });
        turn_until("two unknown completions", |d| unknown(d) >= before + 2);
        // A receive under an unknown op takes a ring buffer: it goes back.
        let (a, mut pa) = pair();
        let out = with(|d| d.bufs.out);
        with(|d| {
            let e = opcode::RecvMulti::new(types::Fd(a), BGID)
                .build()
                .user_data(0x0000_0001_0000_00ee);
            d.push(e);
        });
        feed(&mut pa, 8, |d, k| unknown(d) > before + 2 + k);
        assert_eq!(with(|d| d.bufs.out), out);
        drop(pa);
        turn_until("its end", |d| unknown(d) > before + 10);
        assert_eq!(with(|d| d.bufs.out), out);
        let (b, mut pb) = pair();
        let idx = with(|d| d.register(b));
        assert!(
            receives_into_the_ring(idx, &mut pb),
            "the ring ran dry: unknown completions kept its buffers"
        );
        with(|d| d.release(idx));
        // SAFETY: the test's own fd.
        unsafe { libc::close(a) };
    });
}

/// A received buffer lent to the flows stays out of the ring while lent and goes back when
/// the `Bytes` drops: at once when dropped outside the driver, at the next turn when dropped
/// while the driver is borrowed (say by a send completing).
#[test]
fn a_lent_buffer_goes_back_to_the_ring_when_dropped() {
    on_driver(|| {
        let (a, mut peer) = pair();
        let idx = with(|d| d.register(a));
        arm(idx);
        let out = with(|d| d.bufs.out);
        let first: Vec<u8> = (0..6000).map(|i| i as u8).collect();
        peer.write_all(&first).unwrap();
        turn_until("6000 bytes", |d| d.sock(idx).rx_bytes == first.len());
        let held = with(|d| d.sock(idx).rx.len());
        assert_eq!(with(|d| d.bufs.out), out + held);
        let lent = with(|d| d.lend(idx, 1)).expect("a ring buffer is lent");
        assert_eq!(&lent[..], &first[..lent.len()]);
        assert_eq!(with(|d| d.sock(idx).rx.len()), held - 1);
        assert_eq!(
            with(|d| d.bufs.out),
            out + held,
            "a lent buffer is out of the ring"
        );
        drop(lent);
        assert_eq!(with(|d| d.bufs.out), out + held - 1, "dropped, it is back");
        // Read the rest out (those buffers go back as they are consumed).
        while with(|d| d.sock(idx).rx_bytes) > 0 {
            with(|d| d.read(idx, Waker::noop(), |b| b.len()));
        }
        assert_eq!(with(|d| d.bufs.out), out);
        // Dropped under the driver's own borrow: back at the next turn.
        peer.write_all(&first).unwrap();
        turn_until("6000 more bytes", |d| d.sock(idx).rx_bytes == first.len());
        let held = with(|d| d.sock(idx).rx.len());
        let lent = with(|d| d.lend(idx, 1)).expect("a ring buffer is lent");
        with(|_| drop(lent));
        assert_eq!(with(|d| d.bufs.out), out + held);
        with(|d| d.turn(false, None));
        assert_eq!(with(|d| d.bufs.out), out + held - 1, "back after the turn");
        with(|d| d.release(idx));
        assert_eq!(
            with(|d| d.bufs.out),
            out,
            "release gives back what was queued"
        );
    });
}

/// Sockets past one chunk of slots go in the next chunk: each keeps its own slot (the
/// chunks do not move, so a socket's state is where its slot says), a slot freed in the
/// first chunk is reused first, and a slot never made is no socket.
#[test]
fn slots_span_chunks_and_freed_ones_are_reused() {
    on_driver(|| {
        let mut peers = Vec::new();
        let mut idxs = Vec::new();
        for _ in 0..150 {
            let (a, pa) = pair();
            idxs.push(with(|d| d.register(a)));
            peers.push(pa);
        }
        let mut sorted = idxs.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 150, "every socket has a slot of its own");
        for &i in &idxs {
            assert_eq!(with(|d| d.sock(i).key.idx()), i);
        }
        // Data for the socket in the third chunk arrives in that socket's state only.
        let far = idxs[140];
        arm(far);
        peers[140].write_all(b"far").unwrap();
        turn_until("3 bytes arrive", |d| d.sock(far).rx_bytes == 3);
        assert_eq!(with(|d| d.sock(idxs[10]).rx_bytes), 0);
        let gen5 = with(|d| d.socks.generation(idxs[5]));
        with(|d| d.release(idxs[5]));
        let (b, _pb) = pair();
        assert_eq!(with(|d| d.register(b)), idxs[5], "the freed slot is reused");
        assert_eq!(with(|d| d.socks.generation(idxs[5])), gen5.next());
        assert!(with(|d| d.socks.try_get(10_000).is_none()));
    });
}

/// A small send from a large buffer (a quiet TLS connection's record, in a 16 KiB buffer)
/// leaves the idle socket no buffer larger than a small one; a large send keeps its buffer
/// for the next (a streaming socket does not allocate one per send).
#[test]
fn an_idle_socket_after_a_small_send_keeps_no_large_buffer() {
    on_driver(|| {
        let (a, mut peer) = pair();
        let idx = with(|d| d.register(a));
        let mut send = |n: usize| {
            let mut b = bytes::BytesMut::with_capacity(16 * 1024);
            b.extend_from_slice(&vec![3u8; n]);
            let mut data = Some(b.freeze());
            with(|d| d.write_bytes(idx, Waker::noop(), &mut data))
                .unwrap()
                .unwrap();
            turn_until("sent", |d| {
                let s = d.sock(idx);
                s.tx_cur.is_none() && s.tx_q.is_empty()
            });
            let mut got = vec![0u8; n];
            peer.read_exact(&mut got).unwrap();
            with(|d| {
                let s = d.sock(idx);
                s.tx_buf.capacity() + s.tx_spare.capacity()
            })
        };
        let kept = send(10);
        assert!(kept <= 4096, "an idle socket kept {kept} bytes of buffer");
        let kept = send(12 * 1024);
        assert!(kept >= 12 * 1024, "a streaming socket's buffer was let go");
        with(|d| d.release(idx));
    });
}

/// On a [`SMALL_RING`]: one socket takes every ring buffer and keeps them (unread), then a
/// second is armed and, the ring empty, polls. Their slots and their peers.
fn polling_on_an_empty_ring() -> (usize, usize, UnixStream, UnixStream) {
    let (a, mut pa) = pair();
    let hog = with(|d| d.register(a));
    arm(hog);
    feed(&mut pa, 4, |d, k| d.sock(hog).rx.len() as u64 == k + 1);
    let (b, pb) = pair();
    let idle = with(|d| d.register(b));
    arm(idle);
    turn_until("the empty ring's answer", |d| d.sock(idle).rx_polling);
    (hog, idle, pa, pb)
}

/// A socket armed while the ring is empty (the kernel answers ENOBUFS at once, data or
/// not) waits for data holding no buffer of its own, then receives what comes into a
/// private one. It held a 16 KiB buffer from then until its next data before.
#[test]
fn a_socket_armed_on_an_empty_ring_waits_without_a_buffer() {
    on_driver_with(&SMALL_RING, || {
        let (hog, idle, _pa, mut pb) = polling_on_an_empty_ring();
        with(|d| {
            let s = d.sock(idle);
            assert!(
                s.rx_private.is_none(),
                "an idle socket holds a private buffer"
            );
            assert!(!s.rx_armed);
            assert_eq!(s.inflight, 1, "the poll is in flight");
        });
        pb.write_all(b"late").unwrap();
        turn_until("the late bytes", |d| d.sock(idle).rx_bytes == 4);
        with(|d| {
            assert!(matches!(
                d.sock(idle).rx.front().map(|c| &c.src),
                Some(Src::Heap(_))
            ));
        });
        let mut got = Vec::new();
        let n = with(|d| {
            d.read(idle, Waker::noop(), |b| {
                got.extend_from_slice(b);
                b.len()
            })
        });
        assert_eq!(n.unwrap().unwrap(), 4);
        assert_eq!(got, b"late");
        with(|d| {
            d.release(hog);
            d.release(idle);
        });
    });
}

/// Counts its wakes.
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A detach of a socket waiting on an empty ring cancels its poll and is woken when the
/// poll ends, then hands the socket over. The poll's end woke nobody before: an export of a
/// relay whose ring had run dry waited forever (seen once in CI).
#[test]
fn a_detach_of_a_socket_polling_an_empty_ring_is_woken() {
    on_driver_with(&SMALL_RING, || {
        let (hog, idle, _pa, _pb) = polling_on_an_empty_ring();
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        assert!(
            with(|d| d.detach(idle, &waker)).is_none(),
            "the poll is in flight"
        );
        turn_until("the poll's end", |d| !d.sock(idle).rx_polling);
        assert!(
            wakes.0.load(Ordering::Relaxed) > 0,
            "the detach was not woken when the poll ended"
        );
        let (rx, tx) = with(|d| d.detach(idle, &waker)).unwrap().unwrap();
        assert!(rx.is_empty() && tx.is_empty());
        with(|d| {
            d.release(hog);
            d.release(idle);
        });
    });
}

/// A multishot receive ends by itself at the socket's share of the ring (the kernel's
/// total limit; its last receive may fill the rest of one buffer), however much the peer
/// has sent: a pause by cancel came after one wake-up had taken up to 32 buffers. Read
/// out, the socket is armed again and the stream is whole.
#[test]
fn a_receive_takes_no_more_than_its_share_of_the_ring() {
    let opts = UringOpts {
        buf_count: 32,
        buf_size: 1024,
        ..SMALL_RING
    };
    on_driver_with(&opts, || {
        let share = with(|d| d.rx_high()) + 1024;
        assert_eq!(share, 5120);
        let (ours, mut peer) = tcp_pair();
        let sent: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).unwrap();
        let idx = with(|d| d.register(ours.into_raw_fd()));
        arm(idx);
        turn_until("the receive's end", |d| {
            let s = d.sock(idx);
            !s.rx_armed && s.inflight == 0
        });
        let held = with(|d| d.sock(idx).rx_bytes);
        assert!(
            held <= share,
            "one receive took {held} bytes, its share is {share}"
        );
        let mut got = Vec::new();
        turn_until("the whole stream", |d| {
            let _ = d.read(idx, Waker::noop(), |b| {
                got.extend_from_slice(b);
                b.len()
            });
            let s = d.sock(idx);
            assert!(s.rx_bytes <= share, "held {} bytes", s.rx_bytes);
            got.len() == sent.len()
        });
        assert!(got == sent, "the stream came out of order or changed");
        with(|d| d.release(idx));
    });
}

/// A kernel that refuses the receive limit (older than it: EINVAL) costs nothing but the
/// limit: the receive is armed again without it, on this and every later socket, and
/// the data comes; no error reaches the reader.
#[test]
fn a_refused_receive_limit_is_dropped_and_the_data_comes() {
    on_driver(|| {
        with(|d| d.refuse_limit = true);
        let (a, mut pa) = pair();
        let idx = with(|d| d.register(a));
        arm(idx);
        pa.write_all(b"still here").unwrap();
        turn_until("the bytes", |d| d.sock(idx).rx_bytes == 10);
        with(|d| {
            assert!(!d.recv_limit, "the limit is still on");
            assert!(d.sock(idx).rx_err.is_none());
            assert!(d.sock(idx).rx_armed, "not armed again");
        });
        let (b, mut pb) = pair();
        let other = with(|d| d.register(b));
        arm(other);
        pb.write_all(b"too").unwrap();
        turn_until("the second socket's bytes", |d| d.sock(other).rx_bytes == 3);
        with(|d| {
            d.release(idx);
            d.release(other);
        });
    });
}

/// Sockets with data waiting, armed one after another, each take at most half of what the
/// ring has left: eight of them do not empty a ring of 32 buffers (their full shares, about
/// five buffers each, ran it dry at the eighth). Every socket still gets a buffer, so
/// enough of them at once empty any ring: then the private receive takes over.
#[test]
fn sockets_armed_one_after_another_leave_the_ring_buffers() {
    let opts = UringOpts {
        buf_count: 32,
        buf_size: 1024,
        ..SMALL_RING
    };
    on_driver_with(&opts, || {
        let mut socks = Vec::new();
        for k in 0..8 {
            let (ours, mut peer) = tcp_pair();
            peer.write_all(&[k as u8; 16 * 1024]).unwrap();
            let idx = with(|d| d.register(ours.into_raw_fd()));
            arm(idx);
            turn_until("the receive's end", |d| {
                let s = d.sock(idx);
                !s.rx_armed && s.inflight == 0
            });
            with(|d| {
                let s = d.sock(idx);
                assert!(s.rx_bytes > 0, "socket {k} received nothing");
                assert!(
                    s.rx.iter().all(|c| matches!(c.src, Src::Ring(_))),
                    "socket {k} found the ring empty (received privately)"
                );
            });
            socks.push((idx, peer));
        }
        with(|d| {
            for (idx, _) in &socks {
                d.release(*idx);
            }
        });
    });
}

// ---- readiness for a caller's own syscalls (`ready`, splice) ----

/// A readiness poll counts as in flight until it completes, reports once (then the
/// direction is idle again), and wakes its waiter: POLLOUT at once on a fresh socket,
/// POLLIN only once the peer has sent.
#[test]
fn a_readiness_poll_reports_once_and_wakes_its_waiter() {
    on_driver(|| {
        let (a, mut pa) = pair();
        let idx = with(|d| d.register(a));
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        assert!(with(|d| d.ready(idx, &waker, true)).is_none(), "armed");
        assert!(with(|d| d.ready(idx, &waker, false)).is_none(), "armed");
        assert_eq!(inflight(idx), 2, "one poll per direction");
        turn_until("POLLOUT", |d| d.sock(idx).ready_out != Ready::Armed);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "the writer was woken");
        assert!(with(|d| d.ready(idx, &waker, true)).unwrap().is_ok());
        assert_eq!(
            with(|d| d.sock(idx).ready_out),
            Ready::Idle,
            "reported once"
        );
        // Nothing to read yet: the POLLIN waits.
        with(|d| d.turn(true, Some(Duration::from_millis(50))));
        assert!(with(|d| d.ready(idx, &waker, false)).is_none());
        assert_eq!(inflight(idx), 1);
        pa.write_all(b"x").unwrap();
        turn_until("POLLIN", |d| d.sock(idx).ready_in != Ready::Armed);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2, "the reader was woken");
        assert!(with(|d| d.ready(idx, &waker, false)).unwrap().is_ok());
        assert_eq!(inflight(idx), 0);
        with(|d| d.release(idx));
        turn_until("the slot is freed", |d| d.socks.try_get(idx).is_none());
    });
}

/// A detach cancels the socket's readiness polls and waits for their end (an export of a
/// splicing relay stopped while it waited for data); a release does too, and the slot is
/// freed only once they have ended.
#[test]
fn a_detach_or_release_cancels_readiness_polls() {
    on_driver(|| {
        let (a, _pa) = pair();
        let idx = with(|d| d.register(a));
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        assert!(with(|d| d.ready(idx, &waker, false)).is_none());
        assert!(
            with(|d| d.detach(idx, &waker)).is_none(),
            "the detach waits for the poll"
        );
        turn_until("the poll's end", |d| !d.sock(idx).ready_in.in_flight());
        assert!(wakes.0.load(Ordering::Relaxed) > 0, "the detach was woken");
        let (rx, tx) = with(|d| d.detach(idx, &waker)).unwrap().unwrap();
        assert!(rx.is_empty() && tx.is_empty());
        // Polled again after a detach (as a splicing relay does), then released.
        assert!(
            with(|d| d.ready(idx, &waker, false)).unwrap().is_ok(),
            "the cancelled poll reports ready"
        );
        assert!(with(|d| d.ready(idx, &waker, false)).is_none());
        with(|d| d.release(idx));
        with(|d| {
            assert!(
                d.socks.try_get(idx).is_some(),
                "kept while the poll is in flight"
            )
        });
        turn_until("the slot is freed", |d| d.socks.try_get(idx).is_none());
    });
}
