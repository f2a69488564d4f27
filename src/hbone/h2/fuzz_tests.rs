//! Randomised robustness: random and mutated byte streams into both roles must never
//! panic (fixed seeds, so failures reproduce). The cargo-fuzz target will call the same
//! `fuzz_recv`.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::conn_tests::{hbone_request, pair, raw};
use super::frame::{self, PREFACE};
use super::*;

/// Iterations per test: `H2_FUZZ_ITERS` (default 3000) for longer local campaigns.
fn iters() -> usize {
    std::env::var("H2_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

/// A random frame: any type (known or not), flags, a small stream id, a payload.
fn random_frame(rng: &mut StdRng) -> Vec<u8> {
    let kind = rng.random_range(0..12u8);
    let flags: u8 = rng.random();
    let stream = if rng.random_bool(0.3) {
        0
    } else {
        rng.random_range(0..12u32)
    };
    let len = rng.random_range(0..64usize);
    let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    raw(kind, flags, stream, &payload)
}

#[test]
fn random_input_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x4832);
    for i in 0..iters() {
        let role = if i % 2 == 0 {
            Role::Server
        } else {
            Role::Client
        };
        let mut input = Vec::new();
        if rng.random_bool(0.8) {
            if role == Role::Server {
                input.extend_from_slice(PREFACE);
            }
            input.extend(raw(frame::SETTINGS, 0, 0, &[]));
        }
        if rng.random_bool(0.2) {
            input.extend((0..rng.random_range(0..300)).map(|_| rng.random::<u8>()));
        } else {
            for _ in 0..rng.random_range(1..30) {
                input.extend(random_frame(&mut rng));
            }
        }
        fuzz_recv(role, &input);
    }
}

/// Valid byte streams of a real session, both directions.
fn session() -> (Vec<u8>, Vec<u8>) {
    let mut cfg = Config::default();
    cfg.settings.max_frame_size = 16_384;
    cfg.settings.max_header_list_size = Some(64 * 1024);
    let mut c = Conn::new(Role::Client, cfg.clone());
    let mut s = Conn::new(Role::Server, cfg);
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let mut ev = Vec::new();
    let mut step = |c: &mut Conn, s: &mut Conn| {
        let o = c.poll_output().unwrap_or_default();
        to_server.extend_from_slice(&o);
        s.recv(&o, &mut ev).unwrap();
        let o = s.poll_output().unwrap_or_default();
        to_client.extend_from_slice(&o);
        c.recv(&o, &mut ev).unwrap();
    };
    step(&mut c, &mut s);
    for n in 0..6u16 {
        let mut f = hbone_request(n);
        if n == 2 {
            f.push(HeaderField::new(&b"x-big"[..], vec![b'q'; 20_000]));
        }
        let id = c.open_stream(&f, false).unwrap();
        c.send_data(id, &vec![n as u8; 3_000], n % 2 == 0).unwrap();
        step(&mut c, &mut s);
        s.send_headers(id, &response_fields(200, &http::HeaderMap::new()), false)
            .unwrap();
        s.send_data(id, b"pong", n % 3 == 0).unwrap();
        if n == 4 {
            s.reset(id, Reason::CANCEL);
        }
        c.send_ping([n as u8; 8]).unwrap();
        step(&mut c, &mut s);
    }
    s.send_goaway(Reason::NO_ERROR, b"bye");
    step(&mut c, &mut s);
    (to_server, to_client)
}

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..rng.random_range(1..6) {
        if b.is_empty() {
            break;
        }
        let i = rng.random_range(0..b.len());
        match rng.random_range(0..6) {
            0 => b[i] ^= 1 << rng.random_range(0..8),
            1 => b[i] = rng.random(),
            2 => {
                let j = (i + rng.random_range(1..40)).min(b.len());
                b.drain(i..j);
            }
            3 => {
                let j = (i + rng.random_range(1..40)).min(b.len());
                let dup = b[i..j].to_vec();
                b.splice(i..i, dup);
            }
            4 => b.truncate(i),
            _ => b.insert(i, rng.random()),
        }
    }
    b
}

#[test]
fn mutated_sessions_never_panic() {
    let (to_server, to_client) = session();
    // The unmutated streams are fully accepted.
    assert!(fuzz_recv(Role::Server, &to_server) > 10);
    assert!(fuzz_recv(Role::Client, &to_client) > 10);
    let mut rng = StdRng::seed_from_u64(0x68_62_6f_6e_65);
    let mut events = 0;
    for i in 0..iters() {
        let (role, base) = if i % 2 == 0 {
            (Role::Server, &to_server)
        } else {
            (Role::Client, &to_client)
        };
        events += fuzz_recv(role, &mutate(&mut rng, base));
    }
    assert!(
        events > 10_000,
        "mutations rarely got past the first frames: {events}"
    );
}

#[test]
fn codec_pairs_survive_random_api_use() {
    // Random interleavings of the send API on both ends, with everything delivered.
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let (mut c, mut s) = pair(Config::default(), Config::default());
        let (mut ec, mut es) = (Vec::new(), Vec::new());
        for _ in 0..30 {
            let id = StreamId(rng.random_range(0..20u32) | 1);
            match rng.random_range(0..7) {
                0 => {
                    let _ = c.open_stream(&hbone_request(1), rng.random_bool(0.2));
                }
                1 => {
                    let _ = c.send_data(id, &[1; 3000], rng.random_bool(0.3));
                }
                2 => {
                    let _ = s.send_headers(
                        id,
                        &response_fields(200, &http::HeaderMap::new()),
                        rng.random_bool(0.3),
                    );
                }
                3 => {
                    let _ = s.send_data(id, &[2; 5000], rng.random_bool(0.3));
                }
                4 => c.reset(id, Reason::CANCEL),
                5 => s.reset(id, Reason::REFUSED_STREAM),
                _ => {
                    let _ = c.send_ping(rng.random());
                }
            }
            super::conn_tests::pump(&mut c, &mut s, &mut ec, &mut es);
            for e in ec.drain(..) {
                if let Event::Data { id, data } = e {
                    c.release(id, data.len());
                }
            }
            for e in es.drain(..) {
                if let Event::Data { id, data } = e {
                    s.release(id, data.len());
                }
            }
        }
        assert_eq!((c.failure(), s.failure()), (None, None));
    }
}
