//! Tests of the hand-over socket: listeners passed between processes with their queues, a
//! missing or stale peer, refused fds and garbled requests, live connections and TCP relays
//! handed over (their state checked before the control thread sees it), and the version
//! both sides agree on.

use std::net::TcpListener;
use std::os::fd::OwnedFd;

use super::*;
use crate::inpod::netns_cookie;

/// A stand-in for the old process's control thread: answers `Take` with duplicates of
/// `listeners` for uid "pod-1" and `Absent` otherwise; reports each `Took` on the channel.
/// (It runs as long as the server thread holds its sender: the test process's life.)
fn control(
    listeners: Vec<(u16, TcpListener)>,
) -> (
    tokio::sync::mpsc::UnboundedSender<HandoverEvent>,
    std_mpsc::Receiver<String>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<HandoverEvent>();
    let (took_tx, took_rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                HandoverEvent::Take { uid, reply } if uid == "pod-1" => {
                    let dups = listeners
                        .iter()
                        .map(|(p, l)| (*p, OwnedFd::from(l.try_clone().unwrap())))
                        .collect();
                    let _ = reply.send(Ok(dups));
                }
                HandoverEvent::Take { uid, reply } => {
                    let _ = reply.send(Err(format!("no pod {uid}")));
                }
                HandoverEvent::Took { uid, reply } => {
                    let _ = took_tx.send(uid);
                    let _ = reply.send(());
                }
                // Adopts what says "ok" (answering with the state's length and the number
                // of sockets), refuses the rest.
                HandoverEvent::Adopt {
                    info,
                    state,
                    fds,
                    reply,
                } => {
                    let r = if info == "ok" {
                        Ok(state.len() * 1000 + fds.len())
                    } else {
                        Err(format!("not taking {info}"))
                    };
                    let _ = reply.send(r);
                }
                // Adopts the relay whose info says "ok"; refuses the rest, describing what
                // arrived (the decoded state and the sockets).
                HandoverEvent::AdoptRelay {
                    info,
                    state,
                    fds,
                    reply,
                } => {
                    let r = if info == "ok" {
                        Ok(())
                    } else {
                        Err(format!(
                            "not taking {info}: {} bytes a->b, unsent {:?}, {} sockets",
                            state.a_to_b.bytes,
                            String::from_utf8_lossy(&state.a_to_b.unsent),
                            fds.len()
                        ))
                    };
                    let _ = reply.send(r);
                }
            }
        }
    });
    (tx, took_rx)
}

#[test]
fn listeners_move_to_the_new_process_and_keep_their_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock.handover");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // A connection waits in the listen queue, not yet accepted by anyone.
    let mut waiting = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (tx, took) = control(vec![(port, l)]);
    let _server = serve(&path, tx).unwrap();

    let c = Client::connect(&path)
        .unwrap()
        .expect("a server is listening");
    assert_eq!(c.peer_pid, std::process::id());
    let got = c.take("pod-1").unwrap().expect("pod-1 has listeners");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, port);
    let cookie = netns_cookie(&got[0].1).unwrap();
    check_listener(&got[0].1, port, cookie).unwrap();
    assert!(check_listener(&got[0].1, port + 1, cookie).is_err());
    assert!(check_listener(&got[0].1, port, cookie ^ 1).is_err());
    assert!(c.take("pod-2").unwrap().is_none(), "absent pod");
    c.took("pod-1").unwrap();
    assert_eq!(took.recv_timeout(TIMEOUT).unwrap(), "pod-1");

    // The received socket is the same listener: the queued connection is accepted here.
    let (fd_port, fd) = got.into_iter().next().unwrap();
    assert_eq!(fd_port, port);
    let received = TcpListener::from(fd);
    let (mut s, _) = received.accept().unwrap();
    use std::io::{Read, Write};
    waiting.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");

    assert!(took.try_recv().is_err(), "only pod-1 was taken");
}

#[test]
fn no_old_process_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Client::connect(&dir.path().join("none")).unwrap().is_none());
    // A stale socket file nobody listens on.
    let p = dir.path().join("stale");
    drop(SeqPacketListener::bind(&p).unwrap());
    assert!(Client::connect(&p).unwrap().is_none());
}

#[test]
fn a_wrong_fd_is_refused_by_the_checks() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = OwnedFd::from(udp);
    let e = check_listener(&fd, 0, 0).unwrap_err();
    assert!(e.contains("not a stream socket"), "{e}");
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let e = check_listener(&OwnedFd::from(s), 0, 0).unwrap_err();
    assert!(e.contains("not listening"), "{e}");
}

#[test]
fn a_garbled_request_gets_an_error_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let (tx, _took) = control(vec![]);
    let _server = serve(&path, tx).unwrap();
    let raw = SeqPacket::connect(&path).unwrap();
    raw.send(b"{not json", &[]).unwrap();
    let r = raw.recv(MAX_RECORD).unwrap().unwrap();
    let reply: Reply = serde_json::from_slice(&r.data).unwrap();
    assert!(matches!(reply, Reply::Error { .. }), "{reply:?}");
    drop(raw);
    let c = Client::connect(&path).unwrap().unwrap();
    assert!(c.take("x").unwrap().is_none());
}

#[test]
fn a_live_connection_is_adopted_with_its_state_and_sockets_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let (tx, _took) = control(vec![]);
    let _server = serve(&path, tx).unwrap();
    let c = Client::connect(&path).unwrap().unwrap();
    let fds = connection();
    // The state travels in a memfd, larger than a record may be.
    let state = vec![7u8; 300 * 1024];
    match c.adopt("ok", &state, &fds) {
        AdoptOutcome::Adopted(n) => assert_eq!(n, 300 * 1024 * 1000 + 2),
        other => panic!("{other:?}"),
    }
    match c.adopt("no", &state, &fds) {
        AdoptOutcome::Kept(why) => assert!(why.contains("not taking no"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A listener is not a connection: refused before the control thread sees it.
    let lfd = vec![OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap())];
    match c.adopt("ok", &state, &lfd) {
        AdoptOutcome::Kept(why) => assert!(why.contains("a listening socket"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Our sockets stay ours (a kept connection is continued here).
    assert!(socket2::SockRef::from(&fds[0]).peer_addr().is_ok());
}

#[test]
fn the_path_sits_beside_the_zds_socket() {
    assert_eq!(
        path_for(Path::new("/var/run/ztunnel/ztunnel.sock")),
        PathBuf::from("/var/run/ztunnel/ztunnel.sock.handover")
    );
}

fn relay_state() -> RelayState {
    let mut s = RelayState::default();
    s.a_to_b.bytes = 1000;
    s.a_to_b.unsent = b"queued".to_vec();
    s.b_to_a.unwritten = b"on its way".to_vec();
    s
}

fn connection() -> Vec<OwnedFd> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    vec![OwnedFd::from(a), OwnedFd::from(b)]
}

#[test]
fn a_tcp_relay_is_adopted_with_its_state_and_two_sockets_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let (tx, _took) = control(vec![]);
    let _server = serve(&path, tx).unwrap();
    let c = Client::connect(&path).unwrap().unwrap();
    assert_eq!(c.version, VERSION);
    let fds = connection();
    match c.adopt_relay("ok", &relay_state(), &fds) {
        AdoptOutcome::Adopted(n) => assert_eq!(n, 1, "a relay is one connection"),
        other => panic!("{other:?}"),
    }
    // The control thread got the state decoded and both sockets.
    match c.adopt_relay("no", &relay_state(), &fds) {
        AdoptOutcome::Kept(why) => assert_eq!(
            why,
            "not taking no: 1000 bytes a->b, unsent \"queued\", 2 sockets"
        ),
        other => panic!("{other:?}"),
    }
    // A relay has two sockets: the sender does not even ask with another count.
    match c.adopt_relay("ok", &relay_state(), &fds[..1]) {
        AdoptOutcome::Kept(why) => assert!(why.contains("1 sockets"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A listener is not a connection.
    let l = OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap());
    let with_listener = vec![fds[0].try_clone().unwrap(), l];
    match c.adopt_relay("ok", &relay_state(), &with_listener) {
        AdoptOutcome::Kept(why) => {
            assert!(why.contains("socket 1: a listening socket"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // Our sockets stay ours (a kept relay is continued here).
    assert!(socket2::SockRef::from(&fds[1]).peer_addr().is_ok());
}

/// What a sender that skips the client's checks gets: the server checks the record itself.
#[test]
fn a_broken_relay_record_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let (tx, _took) = control(vec![]);
    let _server = serve(&path, tx).unwrap();
    let raw = SeqPacket::connect(&path).unwrap();
    let ask = |state: &[u8], socks: &[OwnedFd]| -> Reply {
        let memfd = state_memfd(state).unwrap();
        let mut fds = vec![memfd.as_raw_fd()];
        fds.extend(socks.iter().map(|f| f.as_raw_fd()));
        let req = serde_json::to_vec(&Request::AdoptRelay { info: "ok".into() }).unwrap();
        raw.send(&req, &fds).unwrap();
        let r = raw.recv(MAX_RECORD).unwrap().unwrap();
        serde_json::from_slice(&r.data).unwrap()
    };
    let why = |r: Reply| match r {
        Reply::Refused { why } => why,
        other => panic!("{other:?}"),
    };
    let socks = connection();
    let w = why(ask(b"GET / HTTP/1.1\r\n", &socks));
    assert!(
        w.contains("TCP relay state: not an exported TCP relay"),
        "{w}"
    );
    let mut bad = relay_state().encode();
    bad[4] = 9;
    let w = why(ask(&bad, &socks));
    assert!(w.contains("version 9"), "{w}");
    let w = why(ask(&relay_state().encode(), &socks[..1]));
    assert!(w.contains("2 fds for a TCP relay"), "{w}");
    // A state fd that is not a memfd (a socket).
    let req = serde_json::to_vec(&Request::AdoptRelay { info: "ok".into() }).unwrap();
    let raws: Vec<_> = [&socks[0], &socks[0], &socks[1]]
        .iter()
        .map(|f| f.as_raw_fd())
        .collect();
    raw.send(&req, &raws).unwrap();
    let r = raw.recv(MAX_RECORD).unwrap().unwrap();
    let w = why(serde_json::from_slice(&r.data).unwrap());
    assert!(w.contains("not a memfd"), "{w}");
    // And a good one still goes through on the same connection.
    assert_eq!(
        ask(&relay_state().encode(), &socks),
        Reply::Adopted { tunnels: 1 }
    );
}

/// Both sides speak the lower version: an older peer is still served (listeners, HBONE
/// connections), and is not offered TCP relays.
#[test]
fn peers_agree_on_the_lower_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let (tx, _took) = control(vec![]);
    let _server = serve(&path, tx).unwrap();
    let raw = SeqPacket::connect(&path).unwrap();
    for (theirs, agreed) in [(1, 1), (VERSION, VERSION), (VERSION + 7, VERSION)] {
        let hello = serde_json::to_vec(&Request::Hello {
            version: theirs,
            pid: 1,
        })
        .unwrap();
        raw.send(&hello, &[]).unwrap();
        let r = raw.recv(MAX_RECORD).unwrap().unwrap();
        match serde_json::from_slice(&r.data).unwrap() {
            Reply::Hello { version, .. } => assert_eq!(version, agreed, "peer at {theirs}"),
            other => panic!("{other:?}"),
        }
    }

    // A server of version 1 (the build before relays): connected, but no relay is sent.
    let old = dir.path().join("v1");
    let l = SeqPacketListener::bind(&old).unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = asked.clone();
    std::thread::spawn(move || {
        let c = l.accept().unwrap();
        while let Ok(Some(rec)) = c.recv(MAX_RECORD) {
            let reply = match serde_json::from_slice::<Request>(&rec.data) {
                Ok(Request::Hello { .. }) => Reply::Hello {
                    version: 1,
                    pid: 4242,
                },
                _ => {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Reply::Error {
                        why: "unreadable request".into(),
                    }
                }
            };
            c.send(&serde_json::to_vec(&reply).unwrap(), &[]).unwrap();
        }
    });
    let c = Client::connect(&old).unwrap().unwrap();
    assert_eq!((c.version, c.peer_pid), (1, 4242));
    match c.adopt_relay("ok", &relay_state(), &connection()) {
        AdoptOutcome::Kept(why) => assert!(why.contains("version 1"), "{why}"),
        other => panic!("a version-1 peer was asked to take a relay: {other:?}"),
    }
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A peer of a version we do not speak at all: a protocol error (fresh listeners).
    let odd = dir.path().join("v0");
    let l = SeqPacketListener::bind(&odd).unwrap();
    std::thread::spawn(move || {
        let c = l.accept().unwrap();
        let _ = c.recv(MAX_RECORD);
        let reply = Reply::Hello { version: 0, pid: 1 };
        let _ = c.send(&serde_json::to_vec(&reply).unwrap(), &[]);
    });
    let e = Client::connect(&odd).unwrap_err();
    assert!(e.to_string().contains("version 0"), "{e}");
}
