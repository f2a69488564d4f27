//! Tests of the TCP relay on real loopback sockets, on both engines: bytes both ways checked
//! word by word (every 8-byte word of a stream is distinct, so a lost, doubled or reordered
//! byte shows, with its offset), FIN each way and half-close; exports at random moments of a
//! 64 MiB transfer each way, under back-pressure, right after a FIN, on an idle relay and
//! between engines, each continued by another executor on another thread (the next process)
//! from the encoded state and the sockets; garbage state refused; and the engine facts the
//! relay relies on (a dropped read loses nothing; a detach hands over what the ring read
//! ahead).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::runtime::engine::{self, Engine};
use crate::runtime::uring::UringOpts;

const MIB: u64 = 1 << 20;

/// The 8-byte word at word index `i` of stream `seed` (a bijection of `i`: all distinct).
fn word(seed: u64, i: u64) -> u64 {
    (i ^ seed.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed
}

/// Where a word that arrived out of place came from (a stream's offset, or nowhere).
fn origin(w: u64) -> String {
    // The inverse of the odd multiplier of `word`, mod 2^64.
    let mut inv: u64 = 1;
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(inv)));
    }
    for seed in [0xA11CE_u64, 0xB0B, 3, 7] {
        let i = (w ^ seed).wrapping_mul(inv) ^ seed.rotate_left(32);
        if i < 1 << 40 {
            return format!("offset {} of stream {seed:#x}", i * 8);
        }
    }
    format!("no stream ({w:#018x})")
}

/// Fills `buf` (a multiple of 8 long) with the stream's bytes from byte `pos` (a multiple
/// of 8).
fn fill(seed: u64, pos: u64, buf: &mut [u8]) {
    for (k, c) in buf.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&word(seed, pos / 8 + k as u64).to_le_bytes());
    }
}

/// Checks a received stream against its pattern as it arrives.
struct Check {
    seed: u64,
    pos: u64,
    carry: Vec<u8>,
    bad: Option<u64>,
    got: u64,
}

impl Check {
    fn new(seed: u64) -> Check {
        Check {
            seed,
            pos: 0,
            carry: Vec::with_capacity(8),
            bad: None,
            got: 0,
        }
    }

    fn word_ok(&mut self, w: &[u8]) {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let got = u64::from_le_bytes(a);
        if self.bad.is_none() && got != word(self.seed, self.pos / 8) {
            self.bad = Some(self.pos);
            self.got = got;
        }
        self.pos += 8;
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !self.carry.is_empty() && !data.is_empty() {
            self.carry.push(data[0]);
            data = &data[1..];
            if self.carry.len() == 8 {
                let c = std::mem::take(&mut self.carry);
                self.word_ok(&c);
            }
        }
        let mut it = data.chunks_exact(8);
        for w in &mut it {
            self.word_ok(w);
        }
        self.carry.extend_from_slice(it.remainder());
    }

    fn len(&self) -> u64 {
        self.pos + self.carry.len() as u64
    }

    /// Ok when exactly `want` bytes of the pattern arrived.
    fn result(&self, want: u64) -> Result<(), String> {
        if let Some(at) = self.bad {
            return Err(format!(
                "stream {:#x}: wrong byte at offset {at} (it came from {})",
                self.seed,
                origin(self.got)
            ));
        }
        if self.len() != want {
            return Err(format!(
                "stream {:#x}: {} bytes, want {want}",
                self.seed,
                self.len()
            ));
        }
        Ok(())
    }
}

/// A flag one thread sets and others wait for.
#[derive(Clone, Default)]
struct Flag(Arc<AtomicBool>);

impl Flag {
    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn wait(&self) {
        while !self.is_set() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What a peer sends: `len` bytes of stream `seed` (after `go`), then FIN (once `hold_fin`
/// is set; then it sets `fin`).
#[derive(Clone, Default)]
struct Out {
    seed: u64,
    len: u64,
    go: Option<Flag>,
    hold_fin: Option<Flag>,
    fin: Option<Flag>,
}

/// What a peer expects: `len` bytes of stream `seed`, then EOF (then `eof`); with `pause`,
/// it stops reading after that many bytes until the flag is set.
#[derive(Clone, Default)]
struct In {
    seed: u64,
    len: u64,
    pause: Option<(u64, Flag)>,
    eof: Option<Flag>,
}

/// A peer of the relay (a blocking std socket): a writer and a reader thread.
fn peer(s: std::net::TcpStream, out: Out, inp: In) -> JoinHandle<Result<(), String>> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || -> Result<(), String> {
        if let Some(g) = &out.go {
            g.wait();
        }
        let mut buf = vec![0u8; 128 * 1024];
        let mut pos = 0u64;
        let mut k = 0u64;
        while pos < out.len {
            // Varying write sizes (multiples of 8).
            let n = ((16 + (k * 7919) % 113) * 1024).min(out.len - pos) as usize;
            fill(out.seed, pos, &mut buf[..n]);
            w.write_all(&buf[..n])
                .map_err(|e| format!("peer write at {pos}: {e}"))?;
            pos += n as u64;
            k += 1;
        }
        if let Some(h) = &out.hold_fin {
            h.wait();
        }
        w.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("peer shutdown: {e}"))?;
        if let Some(f) = &out.fin {
            f.set();
        }
        Ok(())
    });
    std::thread::spawn(move || {
        let mut s = s;
        let mut c = Check::new(inp.seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut paused = inp.pause.is_none();
        loop {
            if !paused
                && let Some((at, go)) = &inp.pause
                && c.len() >= *at
            {
                go.wait();
                paused = true;
            }
            let max = match &inp.pause {
                Some((at, _)) if !paused => (*at - c.len()).clamp(1, buf.len() as u64) as usize,
                _ => buf.len(),
            };
            match s.read(&mut buf[..max]) {
                Ok(0) => break,
                Ok(n) => c.feed(&buf[..n]),
                Err(e) => return Err(format!("peer read after {} bytes: {e}", c.len())),
            }
        }
        if let Some(f) = &inp.eof {
            f.set();
        }
        let wrote = writer
            .join()
            .map_err(|_| "peer writer panicked".to_string())?;
        c.result(inp.len).and(wrote)
    })
}

/// Two connected loopback sockets: ours (non-blocking, for the relay) and the peer's.
fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    (ours, peer)
}

/// How a relay starts on a hop: fresh sockets, or an export of the hop before.
enum Start {
    Fresh(std::net::TcpStream, std::net::TcpStream),
    Moved(Vec<u8>, Vec<OwnedFd>),
}

/// When a hop exports its relay.
#[derive(Clone)]
enum When {
    Never,
    /// After this long.
    After(Duration),
    /// Once this many bytes went a → b (all hops together).
    Sent(u64),
    /// Once the flag is set.
    Flag(Flag),
    /// Once no byte has moved either way for 300 ms, after at least this many each way.
    Stalled(u64),
}

/// How a hop ended.
enum Hop {
    /// The relay ended here: its end and the bytes carried each way (all hops).
    Ended(RelayEnd, u64, u64),
    /// Exported: the state, encoded, and the sockets.
    Moved(RelayState, Vec<u8>, Vec<OwnedFd>),
}

/// How a hop's relay moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// splice(2) through pipes (the node proxy's default).
    Splice,
    /// Through buffers (`--splice false`).
    Copy,
    /// Splicing, but the system refuses every pipe: each direction copies by itself.
    NoPipes,
}

thread_local! {
    /// How the hops this test thread starts move bytes.
    static MODE: Cell<Mode> = const { Cell::new(Mode::Splice) };
    /// Per hop, in order (then `MODE` once it is empty).
    static MODE_PLAN: RefCell<VecDeque<Mode>> = const { RefCell::new(VecDeque::new()) };
}

/// Runs `f` with the relays it starts in `mode`.
fn in_mode<R>(mode: Mode, f: impl FnOnce() -> R) -> R {
    MODE.set(mode);
    let r = f();
    MODE.set(Mode::Splice);
    r
}

/// Runs a relay on a fresh executor of `engine` on a new thread (the next process).
fn hop(engine: Engine, start: Start, when: When) -> Hopping {
    hop_with(engine, UringOpts::default(), start, when, None)
}

/// A hop under way: its result comes once the relay ends or moves.
struct Hopping {
    rx: std::sync::mpsc::Receiver<Hop>,
    thread: JoinHandle<()>,
}

impl Hopping {
    /// Waits for the hop's result and its thread.
    fn join(self) -> Hop {
        let h = self.result();
        self.thread.join().unwrap();
        h
    }

    fn result(&self) -> Hop {
        self.rx
            .recv()
            .unwrap_or_else(|_| panic!("the hop's thread panicked (see above)"))
    }
}

/// As [`hop`]; with `linger`, the executor lives on after an export until the flag is set,
/// as the old process does: the ring keeps what zero-copy sends still use (the memory of a
/// torn-down ring is freed and reused at once in a test process, not in one that exits).
fn hop_with(
    engine: Engine,
    opts: UringOpts,
    start: Start,
    when: When,
    linger: Option<Flag>,
) -> Hopping {
    let (tx, rx) = std::sync::mpsc::channel();
    let mode = MODE_PLAN
        .with_borrow_mut(|p| p.pop_front())
        .unwrap_or(MODE.get());
    let thread = std::thread::spawn(move || {
        engine::block_on(engine, &opts, async move {
            let h = engine::timeout(Duration::from_secs(90), run_hop(start, when, mode))
                .await
                .unwrap_or_else(|_| panic!("relay hop timed out on {engine}"));
            let _ = tx.send(h);
            if let Some(f) = linger {
                while !f.is_set() {
                    engine::sleep(Duration::from_millis(5)).await;
                }
            }
        })
        .unwrap()
    });
    Hopping { rx, thread }
}

async fn run_hop(start: Start, when: When, mode: Mode) -> Hop {
    let counters = Rc::new(Counters::default());
    let ctl = RelayCtl::new();
    ctl.set_splice(mode != Mode::Copy);
    crate::runtime::splice::refuse_pipes_here(mode == Mode::NoPipes);
    let (before_s, before_r, task): (u64, u64, Pin<Box<dyn Future<Output = RelayEnd>>>) =
        match start {
            Start::Fresh(a, b) => {
                let a = Stream::from_fd(a.into()).unwrap();
                let b = Stream::from_fd(b.into()).unwrap();
                let r = run(a, b, b"who=test".to_vec(), counters.clone(), ctl.clone());
                (0, 0, Box::pin(r))
            }
            Start::Moved(bytes, fds) => {
                let state = RelayState::decode(&bytes).unwrap();
                let relay = import(&state, fds).unwrap();
                assert_eq!(relay.meta(), b"who=test", "the bookkeeping moved");
                let (s, r) = (relay.sent_before(), relay.received_before());
                (s, r, Box::pin(resume(relay, counters.clone(), ctl.clone())))
            }
        };
    let (tx, mut rx) = oneshot::channel();
    engine::spawn(async move {
        let _ = tx.send(task.await);
    });
    let t0 = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    loop {
        if let Ok(end) = rx.try_recv() {
            assert!(ctl.is_ended());
            return Hop::Ended(
                end,
                before_s + counters.sent.get(),
                before_r + counters.received.get(),
            );
        }
        let (s, r) = (
            before_s + counters.sent.get(),
            before_r + counters.received.get(),
        );
        if s + r != last.0 {
            last = (s + r, Instant::now());
        }
        let go = match &when {
            When::Never => false,
            When::After(d) => t0.elapsed() >= *d,
            When::Sent(n) => s >= *n,
            When::Flag(f) => f.is_set(),
            When::Stalled(min) => {
                s >= *min && r >= *min && last.1.elapsed() >= Duration::from_millis(300)
            }
        };
        if go {
            let x = ctl.export().await.unwrap().expect("the export succeeds");
            assert_eq!(rx.await.unwrap(), RelayEnd::Moved);
            assert!(ctl.is_ended());
            assert_eq!(x.fds.len(), 2);
            let (s, r) = (
                before_s + counters.sent.get(),
                before_r + counters.received.get(),
            );
            assert_eq!(x.state.a_to_b.bytes, s, "the count moved with the relay");
            assert_eq!(x.state.b_to_a.bytes, r);
            let bytes = x.state.encode();
            return Hop::Moved(x.state, bytes, x.fds);
        }
        engine::sleep(Duration::from_millis(1)).await;
    }
}

/// Chains hops until the relay ends (every executor lives on until the peers are done):
/// returns the exported states on the way and the end, once the peers have checked what
/// they got. `fins` is set once every planned export has happened (peers that hold their
/// FIN until then cannot end the relay before its last planned export).
fn hops(
    first: Start,
    plan: &[(Engine, When)],
    last: Engine,
    peers: Peers,
    fins: Option<Flag>,
) -> (Vec<RelayState>, Hop) {
    hops_with(&UringOpts::default(), first, plan, last, peers, fins)
}

fn hops_with(
    opts: &UringOpts,
    first: Start,
    plan: &[(Engine, When)],
    last: Engine,
    peers: Peers,
    fins: Option<Flag>,
) -> (Vec<RelayState>, Hop) {
    let linger = Some(Flag::default());
    let mut start = first;
    let mut states = Vec::new();
    let mut threads = Vec::new();
    let mut plan = plan.iter();
    let end = loop {
        let (engine, when) = match plan.next() {
            Some((e, w)) => (*e, w.clone()),
            None => {
                if let Some(f) = &fins {
                    f.set();
                }
                (last, When::Never)
            }
        };
        let h = hop_with(engine, opts.clone(), start, when, linger.clone());
        let r = h.result();
        threads.push(h.thread);
        match r {
            Hop::Moved(state, bytes, fds) => {
                let (x, y) = (&state.a_to_b, &state.b_to_a);
                eprintln!(
                    "exported: a -> b {} (+{} unsent +{} unwritten), b -> a {} (+{} +{})",
                    x.bytes,
                    x.unsent.len(),
                    x.unwritten.len(),
                    y.bytes,
                    y.unsent.len(),
                    y.unwritten.len()
                );
                states.push(state);
                start = Start::Moved(bytes, fds);
            }
            end @ Hop::Ended(..) => break end,
        }
    };
    join_peers(peers);
    if let Some(f) = linger {
        f.set();
    }
    for t in threads {
        t.join().unwrap();
    }
    (states, end)
}

fn assert_done(end: Hop, sent: u64, received: u64) {
    match end {
        Hop::Ended(end, s, r) => {
            assert_eq!(end, RelayEnd::Done);
            assert_eq!((s, r), (sent, received), "bytes counted each way");
        }
        Hop::Moved(..) => panic!("the relay moved instead of ending"),
    }
}

fn pending(d: &DirState) -> usize {
    d.unsent.len() + d.unwritten.len()
}

/// A relay with peers `pa` (on socket a) and `pb` (on b) sending these streams.
fn relay_pair(a_out: Out, b_out: Out, a_in: In, b_in: In) -> (Start, Peers) {
    let (oa, pa) = pair();
    let (ob, pb) = pair();
    let ha = peer(pa, a_out, a_in);
    let hb = peer(pb, b_out, b_in);
    (Start::Fresh(oa, ob), vec![ha, hb])
}

fn streams(a_len: u64, b_len: u64) -> (Out, Out, In, In) {
    let (sa, sb) = (0xA11CE, 0xB0B);
    (
        Out {
            seed: sa,
            len: a_len,
            ..Out::default()
        },
        Out {
            seed: sb,
            len: b_len,
            ..Out::default()
        },
        In {
            seed: sb,
            len: b_len,
            ..In::default()
        },
        In {
            seed: sa,
            len: a_len,
            ..In::default()
        },
    )
}

type Peers = Vec<JoinHandle<Result<(), String>>>;

fn join_peers(peers: Peers) {
    for (side, p) in ["a", "b"].into_iter().zip(peers) {
        if let Err(e) = p.join().unwrap() {
            panic!("peer {side}: {e}");
        }
    }
}

// ---- plain relay ----

fn relays_both_ways_with_fin_each_way(engine: Engine) {
    let (ao, bo, ai, bi) = streams(4 * MIB, 3 * MIB + 8);
    let (start, peers) = relay_pair(ao, bo, ai, bi);
    let (_, end) = hops(start, &[], engine, peers, None);
    assert_done(end, 4 * MIB, 3 * MIB + 8);
}

/// a sends a little and shuts its write side; b reads to that EOF, then sends 2 MiB and
/// shuts: the relay carries b's bytes after a's FIN, and ends once both are through.
fn a_half_closed_side_keeps_receiving(engine: Engine) {
    let (oa, mut pa) = pair();
    let (ob, mut pb) = pair();
    let b_side = std::thread::spawn(move || {
        let mut got = Vec::new();
        pb.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        pb.read_to_end(&mut got).unwrap();
        let mut buf = vec![0u8; 2 * MIB as usize];
        fill(7, 0, &mut buf);
        pb.write_all(&buf).unwrap();
        pb.shutdown(std::net::Shutdown::Write).unwrap();
        got
    });
    let a_side = std::thread::spawn(move || {
        pa.write_all(b"hello, half-closed world").unwrap();
        pa.shutdown(std::net::Shutdown::Write).unwrap();
        pa.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        pa.read_to_end(&mut got).unwrap();
        let mut c = Check::new(7);
        c.feed(&got);
        c.result(2 * MIB)
    });
    let (_, end) = hops(Start::Fresh(oa, ob), &[], engine, Vec::new(), None);
    assert_eq!(b_side.join().unwrap(), b"hello, half-closed world");
    a_side.join().unwrap().unwrap();
    assert_done(end, 24, 2 * MIB);
}

// ---- exports ----

const BIG: u64 = 64 * MIB;

/// `len_a` bytes a → b and `len_b` b → a at once, exported at `n` random moments (each
/// import exported again), hop `k` on `engine(k)`, every hop on a new executor and thread:
/// both far ends get every byte once, in order. The peers hold their FIN until the last
/// planned export, so that every one happens on a live relay.
fn random_exports(
    opts: &UringOpts,
    n: usize,
    engine: impl Fn(usize) -> Engine,
    len_a: u64,
    len_b: u64,
) -> Vec<RelayState> {
    let mut at: Vec<u64> = (0..n).map(|_| rand::random_range(1..len_a)).collect();
    at.sort_unstable();
    eprintln!("exports once a -> b has carried {at:?} bytes");
    let (mut ao, mut bo, ai, bi) = streams(len_a, len_b);
    let fins = Flag::default();
    ao.hold_fin = Some(fins.clone());
    bo.hold_fin = Some(fins.clone());
    let (start, peers) = relay_pair(ao, bo, ai, bi);
    let plan: Vec<_> = at
        .iter()
        .enumerate()
        .map(|(k, &m)| (engine(k), When::Sent(m)))
        .collect();
    let (states, end) = hops_with(opts, start, &plan, engine(n), peers, Some(fins));
    assert_eq!(states.len(), n, "every planned export happened");
    assert_done(end, len_a, len_b);
    states
}

/// 64 MiB each way, exported at three random moments.
fn an_export_at_random_moments_continues_byte_exact(engine: Engine) {
    random_exports(&UringOpts::default(), 3, |_| engine, BIG, BIG - 8 * 1000);
}

/// Both far ends stop reading after 8 MiB: the relay's writes block (back-pressure) and it
/// is exported stalled, holding bytes each way; they resume only once it has moved.
fn an_export_under_back_pressure_carries_what_waits(engine: Engine) {
    let (ao, bo, mut ai, mut bi) = streams(BIG, BIG);
    let resume_reads = Flag::default();
    ai.pause = Some((8 * MIB, resume_reads.clone()));
    bi.pause = Some((8 * MIB, resume_reads.clone()));
    let (start, peers) = relay_pair(ao, bo, ai, bi);
    let Hop::Moved(state, bytes, fds) = hop(engine, start, When::Stalled(8 * MIB)).join() else {
        panic!("the relay ended before its export");
    };
    for d in [&state.a_to_b, &state.b_to_a] {
        assert!(
            pending(d) > 0,
            "a blocked direction carries what waits: {d:?}"
        );
        assert!(!d.eof && !d.shut);
        assert!(d.bytes < BIG);
    }
    eprintln!(
        "{engine}: stalled export carries {}+{} / {}+{} bytes (unsent+unwritten)",
        state.a_to_b.unsent.len(),
        state.a_to_b.unwritten.len(),
        state.b_to_a.unsent.len(),
        state.b_to_a.unwritten.len()
    );
    let next = hop(engine, Start::Moved(bytes, fds), When::Never);
    // The pending bytes wait in the new relay until the far ends read again.
    std::thread::sleep(Duration::from_millis(50));
    resume_reads.set();
    let end = next.join();
    join_peers(peers);
    assert_done(end, BIG, BIG);
}

/// a sends 16 MiB and shuts: exported right after its FIN (bytes and the FIN still on the
/// way), then again once b has seen the FIN (that direction is over), while b → a goes on.
fn an_export_right_after_a_fin(engine: Engine) {
    // b -> a carries 4 × BIG: it must still run when b sees the FIN (with BIG it sometimes
    // ended first on a busy machine, and the second export never happened).
    let (mut ao, bo, ai, mut bi) = streams(16 * MIB, 4 * BIG);
    let a_fin = Flag::default();
    let b_eof = Flag::default();
    ao.fin = Some(a_fin.clone());
    bi.eof = Some(b_eof.clone());
    let (start, peers) = relay_pair(ao, bo, ai, bi);
    let plan = [(engine, When::Flag(a_fin)), (engine, When::Flag(b_eof))];
    let (states, end) = hops(start, &plan, engine, peers, None);
    assert_eq!(
        states.len(),
        2,
        "both exports happened before the relay ended"
    );
    let after = &states[1].a_to_b;
    assert!(
        after.eof && after.shut && pending(after) == 0,
        "once b saw the FIN, a -> b is over: {after:?}"
    );
    assert_eq!(after.bytes, 16 * MIB);
    assert!(!states[1].b_to_a.shut, "b -> a still runs");
    assert_done(end, 16 * MIB, 4 * BIG);
}

/// Nothing flows until the relay has moved: it exports with nothing in flight, and the new
/// process carries everything.
fn an_idle_relay_moves(engine: Engine) {
    let (mut ao, mut bo, ai, bi) = streams(MIB, MIB);
    let go = Flag::default();
    ao.go = Some(go.clone());
    bo.go = Some(go.clone());
    let (start, peers) = relay_pair(ao, bo, ai, bi);
    let Hop::Moved(state, bytes, fds) =
        hop(engine, start, When::After(Duration::from_millis(50))).join()
    else {
        panic!("the idle relay ended");
    };
    for d in [&state.a_to_b, &state.b_to_a] {
        assert_eq!(d, &DirState::default(), "an idle relay carries nothing");
    }
    let next = hop(engine, Start::Moved(bytes, fds), When::Never);
    go.set();
    let end = next.join();
    join_peers(peers);
    assert_done(end, MIB, MIB);
}

/// A buffer ring so small (two buffers: each socket's receive limit is one) that it runs
/// dry (sockets fall back to a private receive, which an export cancels) and a small send
/// queue (writes wait on it; sends in flight are cancelled and requeued by the export):
/// exported at five random moments.
#[test]
fn an_export_with_a_starved_ring_continues_byte_exact() {
    let opts = UringOpts {
        buf_count: 2,
        buf_size: 4096,
        send_queue: 64 * 1024,
        ..UringOpts::default()
    };
    let before = crate::runtime::uring::stats()
        .private_recvs
        .load(Ordering::Relaxed);
    in_mode(Mode::Copy, || {
        random_exports(&opts, 5, |_| Engine::Uring, 16 * MIB, 16 * MIB)
    });
    let after = crate::runtime::uring::stats()
        .private_recvs
        .load(Ordering::Relaxed);
    assert!(after > before, "the buffer ring never ran dry");
}

/// Zero-copy sends (SEND_ZC, off by default): an export cancels the one in flight, whose
/// notification then comes before those of earlier sends still in the kernel's queue.
#[test]
fn an_export_with_zero_copy_sends_continues_byte_exact() {
    let opts = UringOpts {
        send_zc_threshold: 8 * 1024,
        send_queue: 64 * 1024,
        ..UringOpts::default()
    };
    in_mode(Mode::Copy, || {
        random_exports(&opts, 5, |_| Engine::Uring, 16 * MIB, 16 * MIB)
    });
}

/// The state does not depend on how the bytes move either: hops that splice, copy, and
/// splice without pipes (each direction copying by itself), on both engines, in turn.
#[test]
fn a_relay_moves_between_splicing_and_copying() {
    let modes = [
        Mode::Splice,
        Mode::Copy,
        Mode::NoPipes,
        Mode::Copy,
        Mode::Splice,
        Mode::NoPipes,
    ];
    MODE_PLAN.with_borrow_mut(|p| p.extend(modes));
    let engine = |k: usize| [Engine::Uring, Engine::Epoll, Engine::Epoll][k % 3];
    random_exports(&UringOpts::default(), 5, engine, 16 * MIB, 16 * MIB);
    assert!(
        MODE_PLAN.with_borrow(|p| p.is_empty()),
        "every hop took its mode"
    );
}

/// A splicing relay moves its bytes with splice(2), none through a buffer of ours: the
/// process's spliced count grows by at least what this relay carried (other tests splice
/// at the same time; a relay that silently copied would add nothing).
fn a_splicing_relay_splices_every_byte(engine: Engine) {
    let before = crate::runtime::splice::spliced_bytes();
    relays_both_ways_with_fin_each_way(engine);
    let moved = crate::runtime::splice::spliced_bytes() - before;
    let carried = 7 * MIB + 8;
    assert!(
        moved >= carried,
        "{engine}: {moved} bytes spliced, the relay carried {carried}"
    );
}

/// The copying relay (`--splice false`) and one whose pipes are refused (the fd limit):
/// the same tests as the splicing one.
fn copying_relays_both_ways(engine: Engine) {
    in_mode(Mode::Copy, || relays_both_ways_with_fin_each_way(engine));
}
fn copying_half_closed_side_keeps_receiving(engine: Engine) {
    in_mode(Mode::Copy, || a_half_closed_side_keeps_receiving(engine));
}
fn copying_export_at_random_moments(engine: Engine) {
    in_mode(Mode::Copy, || {
        an_export_at_random_moments_continues_byte_exact(engine)
    });
}
fn copying_export_under_back_pressure(engine: Engine) {
    in_mode(Mode::Copy, || {
        an_export_under_back_pressure_carries_what_waits(engine)
    });
}
fn copying_export_right_after_a_fin(engine: Engine) {
    in_mode(Mode::Copy, || an_export_right_after_a_fin(engine));
}
fn without_pipes_relays_both_ways(engine: Engine) {
    let refused =
        || crate::telemetry::metrics::PIPES_REFUSED.load(std::sync::atomic::Ordering::Relaxed);
    let before = refused();
    in_mode(Mode::NoPipes, || relays_both_ways_with_fin_each_way(engine));
    // Each direction that had something to move asked for a pipe, was refused and counted.
    assert!(
        refused() >= before + 2,
        "{engine}: ringmesh_splice_pipes_refused went from {before} to {}",
        refused()
    );
}
fn without_pipes_export_under_back_pressure(engine: Engine) {
    in_mode(Mode::NoPipes, || {
        an_export_under_back_pressure_carries_what_waits(engine)
    });
}

/// The state does not depend on the engine: a relay hops uring → epoll → uring → epoll →
/// uring at random moments.
#[test]
fn a_relay_moves_between_engines() {
    let engine = |k: usize| [Engine::Uring, Engine::Epoll][k % 2];
    random_exports(&UringOpts::default(), 4, engine, 16 * MIB, 16 * MIB);
}

/// An export is refused (an error, not a hang) once the relay has ended; a second one
/// while the first is under way is refused too, and the first still succeeds.
fn exports_of_an_ended_or_exporting_relay_are_refused(engine: Engine) {
    engine::block_on(engine, &UringOpts::default(), async {
        let (oa, pa) = pair();
        let (ob, pb) = pair();
        drop((pa, pb)); // both far ends close: the relay ends at once
        let ctl = RelayCtl::new();
        let a = Stream::from_fd(oa.into()).unwrap();
        let b = Stream::from_fd(ob.into()).unwrap();
        let end = run(a, b, Vec::new(), Rc::default(), ctl.clone()).await;
        assert_eq!(end, RelayEnd::Done);
        let e = ctl.export().await.unwrap().unwrap_err();
        assert!(e.contains("ended"), "{e}");

        let (oa, _pa) = pair();
        let (ob, _pb) = pair();
        let ctl = RelayCtl::new();
        let a = Stream::from_fd(oa.into()).unwrap();
        let b = Stream::from_fd(ob.into()).unwrap();
        let task = run(a, b, b"m".to_vec(), Rc::default(), ctl.clone());
        let first = ctl.export();
        let second = ctl.export();
        assert_eq!(task.await, RelayEnd::Moved);
        let x = first.await.unwrap().unwrap();
        assert_eq!(x.state.meta, b"m");
        let e = second.await.unwrap().unwrap_err();
        assert!(e.contains("under way"), "{e}");
    })
    .unwrap();
}

// ---- the engine facts the relay relies on ----

/// Reads dropped while pending (a timeout that fires first) lose no byte; after a pause the
/// socket is detached: on uring it hands over what the ring had received ahead (and that
/// is the data's continuation), on epoll nothing (the kernel keeps it); read on from the
/// adopted fd, the stream is whole.
fn a_dropped_read_or_a_detach_loses_no_byte(engine: Engine) {
    const LEN: u64 = 4 * MIB;
    let (ours, mut theirs) = pair();
    let sent_half = Flag::default();
    let s2 = sent_half.clone();
    let sender = std::thread::spawn(move || {
        let mut buf = vec![0u8; 8 * 1024];
        let mut pos = 0;
        while pos < LEN {
            fill(3, pos, &mut buf);
            theirs.write_all(&buf).unwrap();
            pos += buf.len() as u64;
            if pos == LEN / 2 {
                s2.set();
                std::thread::sleep(Duration::from_millis(100));
            } else if pos % (64 * 1024) == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let ahead = engine::block_on(engine, &UringOpts::default(), async move {
        let mut c = Check::new(3);
        let (mut r, w) = Stream::from_fd(ours.into()).unwrap().into_split();
        let mut dropped = 0;
        // Each read is polled once and dropped if it is not ready: many are dropped while
        // pending (some while bytes are on their way).
        while c.len() < LEN / 4 {
            let polled = {
                let mut read = pin!(r.read_fresh(16 * 1024));
                poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
            };
            match polled {
                Poll::Ready(b) => c.feed(&b.unwrap()),
                Poll::Pending => {
                    dropped += 1;
                    engine::sleep(Duration::from_micros(100)).await;
                }
            }
        }
        assert!(dropped > 0, "no read was dropped: the test proves nothing");
        // Stop reading while the sender goes on: the ring receives ahead.
        while !sent_half.is_set() {
            engine::sleep(Duration::from_millis(1)).await;
        }
        engine::sleep(Duration::from_millis(30)).await;
        let s = Stream::reunite(r, w).unwrap();
        let (fd, ahead, unsent) = s.detach().await.unwrap();
        assert!(unsent.is_empty());
        let got_ahead = ahead.len();
        c.feed(&ahead);
        let (mut r, _w) = Stream::from_fd(fd).unwrap().into_split();
        loop {
            let b = r.read_fresh(64 * 1024).await.unwrap();
            if b.is_empty() {
                break;
            }
            c.feed(&b);
        }
        c.result(LEN).unwrap();
        got_ahead
    })
    .unwrap();
    sender.join().unwrap();
    match engine {
        Engine::Uring => assert!(ahead > 0, "the ring received nothing ahead"),
        Engine::Epoll => assert_eq!(ahead, 0),
    }
}

// ---- garbage ----

fn sample() -> RelayState {
    RelayState {
        a_to_b: DirState {
            unsent: b"queued".to_vec(),
            unwritten: b"held and ahead".to_vec(),
            eof: true,
            shut: false,
            bytes: 1000,
        },
        b_to_a: DirState {
            eof: true,
            shut: true,
            bytes: 7,
            ..DirState::default()
        },
        meta: b"{\"labels\":1}".to_vec(),
    }
}

#[test]
fn state_round_trips() {
    let s = sample();
    assert_eq!(RelayState::decode(&s.encode()), Ok(s.clone()));
    let json = serde_json::to_vec(&s).unwrap();
    assert_eq!(serde_json::from_slice::<RelayState>(&json).unwrap(), s);
}

#[test]
fn garbage_state_is_refused_with_a_clear_error() {
    let good = sample().encode();
    // Every truncation.
    for n in 0..good.len() {
        let e = RelayState::decode(&good[..n]).unwrap_err();
        assert!(
            matches!(
                e,
                RelayStateError::Corrupt("truncated") | RelayStateError::Magic
            ),
            "{n}: {e}"
        );
    }
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(RelayState::decode(&b), Err(RelayStateError::Magic));
    let mut b = good.clone();
    b[4] = 9;
    let e = RelayState::decode(&b).unwrap_err();
    assert_eq!(e, RelayStateError::Version(9));
    assert!(e.to_string().contains("version 9"), "{e}");
    let mut b = good.clone();
    b.push(0);
    assert_eq!(
        RelayState::decode(&b),
        Err(RelayStateError::Corrupt("trailing bytes"))
    );
    let mut b = good.clone();
    b[5] = 0x80;
    assert_eq!(
        RelayState::decode(&b),
        Err(RelayStateError::Corrupt("unknown direction flags"))
    );
    // A length prefix far beyond the input (and any relay) is refused without allocating.
    let mut b = good.clone();
    b[14..18].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        RelayState::decode(&b),
        Err(RelayStateError::Corrupt(
            "a length beyond what a relay holds"
        ))
    );
    // States no relay can be in.
    let mut s = sample();
    s.b_to_a.unwritten = b"x".to_vec();
    assert_eq!(
        RelayState::decode(&s.encode()),
        Err(RelayStateError::Corrupt(
            "bytes pending on a direction already shut"
        ))
    );
    let mut s = sample();
    s.a_to_b.bytes = 2;
    assert_eq!(
        RelayState::decode(&s.encode()),
        Err(RelayStateError::Corrupt("more bytes queued than counted"))
    );
    let mut s = sample();
    s.a_to_b.eof = false;
    s.a_to_b.shut = true;
    s.a_to_b.unsent.clear();
    s.a_to_b.unwritten.clear();
    assert_eq!(
        RelayState::decode(&s.encode()),
        Err(RelayStateError::Corrupt("a direction shut before its EOF"))
    );
    let e = RelayState::decode(b"GET / HTTP/1.1\r\n").unwrap_err();
    assert!(e.to_string().contains("not an exported TCP relay"), "{e}");
}

fn import_refuses_a_wrong_socket_count(engine: Engine) {
    engine::block_on(engine, &UringOpts::default(), async {
        let fds = |n: usize| -> Vec<OwnedFd> { (0..n).map(|_| pair().0.into()).collect() };
        for n in [0, 1, 3] {
            let e = import(&sample(), fds(n)).unwrap_err();
            assert!(matches!(e, ImportError::Sockets(k) if k == n), "{e}");
            assert!(e.to_string().contains(&format!("{n} sockets")), "{e}");
        }
        // A state that came another way (serde) is checked too.
        let mut bad = sample();
        bad.a_to_b.bytes = 0;
        let e = import(&bad, fds(2)).unwrap_err();
        assert!(matches!(e, ImportError::State(_)), "{e}");
        assert!(import(&sample(), fds(2)).is_ok());
    })
    .unwrap();
}

on_both_engines!(
    relays_both_ways_with_fin_each_way,
    a_half_closed_side_keeps_receiving,
    an_export_at_random_moments_continues_byte_exact,
    an_export_under_back_pressure_carries_what_waits,
    an_export_right_after_a_fin,
    an_idle_relay_moves,
    exports_of_an_ended_or_exporting_relay_are_refused,
    a_dropped_read_or_a_detach_loses_no_byte,
    import_refuses_a_wrong_socket_count,
    a_splicing_relay_splices_every_byte,
    copying_relays_both_ways,
    copying_half_closed_side_keeps_receiving,
    copying_export_at_random_moments,
    copying_export_under_back_pressure,
    copying_export_right_after_a_fin,
    without_pipes_relays_both_ways,
    without_pipes_export_under_back_pressure,
);
