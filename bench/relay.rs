//! Minimal relays for the ceiling columns of `l4_throughput`: the three TCP legs a meshed
//! connection has (app → relay in the client pod, relay → relay between pods, relay → app in
//! the server pod) and nothing else. `tcp` only copies bytes; `tls` adds rustls (TLS 1.3,
//! aws-lc-rs, the suite rustls picks) on the middle leg. Blocking threads with 256 KiB reads
//! and writes, rustls' send buffer unlimited, TLS read 256 KiB at a time under rustls.
//!
//! They serve the sink protocol only — every byte one way, then the sink's short reply back —
//! so each side runs its two directions one after the other. No HBONE, HTTP/2, identities or
//! policy: the point is what the copies and the crypto alone cost on this machine, the floor
//! under any node proxy's CPU per GB.
//!
//! `ringmesh bench --relay` runs the same idea as contenders beside the node proxies, with
//! `ringmesh lab relay` (`src/lab/relay.rs`: a process behind the real capture rules).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringmesh::inpod::Netns;

const BUF: usize = 256 * 1024;

/// Relays started for one path; counts their threads' CPU time.
pub struct Relay {
    cpu_ns: Arc<AtomicU64>,
    active: Arc<AtomicUsize>,
}

impl Relay {
    /// CPU seconds the relay threads have used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_ns.load(Ordering::SeqCst) as f64 / 1e9
    }

    /// Waits until no relayed connection is open (their CPU time is then counted).
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn thread_cpu_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("thread CPU clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

struct Tls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

fn tls_configs() -> Tls {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["relay.invalid".into()]).expect("cert");
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server cert");
    server.send_tls13_tickets = 0;
    Tls {
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

/// Starts a relay pair: `front` (127.0.0.1 in `client_ns`) → `server_ip:mid_port` (in
/// `server_ns`) → 127.0.0.1:`sink_port` in `server_ns`.
pub fn start(
    client_ns: Netns,
    server_ns: Netns,
    server_ip: IpAddr,
    front: u16,
    mid_port: u16,
    sink_port: u16,
    tls: bool,
) -> Relay {
    let relay = Relay {
        cpu_ns: Arc::new(AtomicU64::new(0)),
        active: Arc::new(AtomicUsize::new(0)),
    };
    let cfg = tls.then(|| Arc::new(tls_configs()));
    let front_l = client_ns
        .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, front)))
        .expect("netns")
        .expect("relay front listener");
    let mid_l = server_ns
        .run(|| TcpListener::bind((server_ip, mid_port)))
        .expect("netns")
        .expect("relay middle listener");
    let mid = SocketAddr::new(server_ip, mid_port);
    let sink = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), sink_port);
    let side = |l: TcpListener, ns: Arc<Netns>, to: SocketAddr, client_side: bool| {
        let (cpu, active, cfg) = (relay.cpu_ns.clone(), relay.active.clone(), cfg.clone());
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (cpu, active, cfg) = (cpu.clone(), active.clone(), cfg.clone());
                let out = ns
                    .run(|| TcpStream::connect(to))
                    .expect("netns")
                    .expect("relay connect");
                active.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let t0 = thread_cpu_ns();
                    let r = match (cfg, client_side) {
                        (None, _) => plain(c, out),
                        (Some(t), true) => tls_client(c, out, &t),
                        (Some(t), false) => tls_server(c, out, &t),
                    };
                    if let Err(e) = r {
                        eprintln!("relay: {e}");
                    }
                    cpu.fetch_add(thread_cpu_ns() - t0, Ordering::SeqCst);
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    };
    side(front_l, Arc::new(client_ns), mid, true);
    side(mid_l, Arc::new(server_ns), sink, false);
    relay
}

type R = std::io::Result<()>;

fn copy(from: &mut TcpStream, to: &mut TcpStream, buf: &mut [u8]) -> R {
    loop {
        let n = from.read(buf)?;
        if n == 0 {
            return to.shutdown(Shutdown::Write);
        }
        to.write_all(&buf[..n])?;
    }
}

fn plain(mut a: TcpStream, mut b: TcpStream) -> R {
    let mut buf = vec![0u8; BUF];
    copy(&mut a, &mut b, &mut buf)?;
    copy(&mut b, &mut a, &mut buf)
}

fn tls_err(e: rustls::Error) -> std::io::Error {
    std::io::Error::other(e)
}

/// Plaintext from `from`, encrypted onto `to`; close_notify at EOF.
fn encrypt(conn: &mut rustls::Connection, from: &mut TcpStream, to: &mut TcpStream) -> R {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            conn.send_close_notify();
        } else {
            conn.writer().write_all(&buf[..n])?;
        }
        while conn.wants_write() {
            conn.write_tls(to)?;
        }
        if n == 0 {
            return to.shutdown(Shutdown::Write);
        }
    }
}

/// TLS from `from`, decrypted onto `to` until close_notify or EOF.
fn decrypt(conn: &mut rustls::Connection, from: &mut TcpStream, to: &mut TcpStream) -> R {
    let mut buf = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    let mut closed = false;
    while !closed {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut rd = &buf[..n];
        let mut have = 0;
        while !rd.is_empty() {
            conn.read_tls(&mut rd)?;
            let st = conn.process_new_packets().map_err(tls_err)?;
            let mut avail = st.plaintext_bytes_to_read();
            while avail > 0 {
                if have == out.len() {
                    to.write_all(&out)?;
                    have = 0;
                }
                let k = conn.reader().read(&mut out[have..])?;
                have += k;
                avail -= k;
            }
            closed |= st.peer_has_closed();
        }
        to.write_all(&out[..have])?;
        while conn.wants_write() {
            conn.write_tls(from)?;
        }
    }
    to.shutdown(Shutdown::Write)
}

fn handshake(conn: &mut rustls::Connection, s: &mut TcpStream) -> R {
    while conn.is_handshaking() {
        conn.complete_io(s)?;
    }
    conn.set_buffer_limit(None);
    Ok(())
}

fn tls_client(mut app: TcpStream, mut net: TcpStream, t: &Tls) -> R {
    let name = rustls::pki_types::ServerName::try_from("relay.invalid").expect("name");
    let mut conn: rustls::Connection = rustls::ClientConnection::new(t.client.clone(), name)
        .map_err(tls_err)?
        .into();
    handshake(&mut conn, &mut net)?;
    encrypt(&mut conn, &mut app, &mut net)?;
    decrypt(&mut conn, &mut net, &mut app)
}

fn tls_server(mut net: TcpStream, mut app: TcpStream, t: &Tls) -> R {
    let mut conn: rustls::Connection = rustls::ServerConnection::new(t.server.clone())
        .map_err(tls_err)?
        .into();
    handshake(&mut conn, &mut net)?;
    decrypt(&mut conn, &mut net, &mut app)?;
    encrypt(&mut conn, &mut app, &mut net)
}
