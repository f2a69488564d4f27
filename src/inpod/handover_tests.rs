//! Tests of the hand-over socket: listeners passed between processes with their queues, a
//! missing or stale peer, refused fds and garbled requests.

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
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    let fds = vec![OwnedFd::from(a), OwnedFd::from(b)];
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
    let lfd = vec![OwnedFd::from(l)];
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
