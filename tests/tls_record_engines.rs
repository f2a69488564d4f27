//! The direct TLS record layer (`io::tls`) on both I/O engines, io_uring and epoll, against
//! real rustls peers over real loopback sockets (RFC 8446 §§4.6.3, 5, 6).
//!
//! Two kinds of peer, each on a thread of its own with blocking sockets:
//! - `RustlsPeer`: rustls's ordinary buffered connection, its records sent as they are, or
//!   split at a chosen byte, or with a byte flipped; what it reports (data, close_notify, the
//!   alert it received) is rustls's own verdict on what we sent.
//! - `RecordPeer`: a rustls handshake (unbuffered API), then rustls's key schedule
//!   (`KernelConnection`) and rustls's record encryption, so that it can send what no
//!   well-behaved stack sends (a KeyUpdate followed by another message, a record of padding
//!   only, an oversized inner plaintext, a burst of KeyUpdates, a user_canceled alert) and
//!   open every record we send back.
//!
//! Hitless upgrades: a connection exported mid-transfer (`TlsStream::export`) continues on
//! another executor from its fd and encoded state, in both roles.
//!
//! Our side runs on a fresh executor of the engine under test (the uring one with 1 KiB ring
//! buffers, so a full record spans 17 of them and every test gathers records across buffers).

use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundPlainMessage,
};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{
    AlertDescription, ClientConfig, ConnectionTrafficSecrets, ContentType, ProtocolVersion,
    RootCertStore, ServerConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use ringmesh::identity::Identity;
use ringmesh::identity::ca::{Ca, IssuedCert};
use ringmesh::io::tls::{self, TlsStream};
use ringmesh::runtime::engine::{self, Engine};
use ringmesh::runtime::net::Stream;
use ringmesh::runtime::uring::{self, UringOpts};
use ringmesh::tls::{client_config, dummy_server_name, server_config};

/// Each test below, once per engine: `<test>::uring` and `<test>::epoll`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn uring() {
                    super::$name(ringmesh::runtime::Engine::Uring)
                }
                #[test]
                fn epoll() {
                    super::$name(ringmesh::runtime::Engine::Epoll)
                }
            }
        )*
    };
}

on_both_engines!(
    key_updates_from_a_rustls_client,
    key_updates_from_a_rustls_server,
    a_flipped_byte_is_answered_with_bad_record_mac,
    a_flipped_byte_from_a_rustls_server_is_answered_with_bad_record_mac,
    records_split_at_every_offset_arrive_whole,
    close_notify_ends_the_stream_while_tcp_stays_open,
    eof_without_close_notify_is_an_error,
    eof_in_the_middle_of_a_record_is_an_error,
    fatal_alerts_fail_the_read_whatever_their_level,
    user_canceled_is_not_fatal,
    a_key_update_not_last_in_its_record_is_unexpected_message,
    key_updates_are_capped_between_data_records_and_answered_once,
    nothing_follows_our_close_notify,
    an_inner_plaintext_over_2_14_plus_1_is_record_overflow,
    a_record_of_padding_only_is_unexpected_message,
    a_key_update_of_value_2_is_illegal_parameter,
    a_zero_length_handshake_record_is_unexpected_message,
    a_server_exported_mid_stream_continues_in_another_executor,
    a_client_exported_mid_stream_continues_in_another_executor,
);

// ---- the tests ----

/// Hitless upgrade, server role: mid-transfer — the peer's data partly read, partly in the
/// socket and the ring, some of ours sealed and not yet sent — the connection is exported,
/// its state encoded and decoded, and continued by a fresh executor on another thread (as
/// the next process would) from a duplicate of the fd. Both byte streams arrive whole and in
/// order; the peer updates its keys after the move and the imported side updates its own
/// soon after (its key schedule came along); close_notify ends it cleanly both ways.
fn a_server_exported_mid_stream_continues_in_another_executor(engine: Engine) {
    exported_mid_stream(engine, Role::Server)
}

fn a_client_exported_mid_stream_continues_in_another_executor(engine: Engine) {
    exported_mid_stream(engine, Role::Client)
}

fn exported_mid_stream(engine: Engine, role: Role) {
    use ringmesh::tls::state::TlsState;
    const IN: usize = 300_000;
    const OUT: usize = 120_000;
    let p = pki();
    let (ours, peer) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(role, s, &p).await;
                let mut got = vec![0u8; 50_000];
                t.read_exact(&mut got).await.unwrap();
                let out = pattern(OUT, 7);
                // Not flushed: the last records may still be queued when the export starts.
                t.write_all(&out[..30_001]).await.unwrap();
                // More of the peer's data arrives meanwhile (into the socket, on uring into
                // the ring).
                let _ =
                    engine::timeout(Duration::from_millis(50), std::future::pending::<()>()).await;
                let (fd, st) = t.export().await.unwrap();
                assert_eq!(st.client, role == Role::Client);
                let bytes = st.encode();
                let next = std::thread::spawn(move || {
                    engine::block_on(engine, &uring_opts(), async move {
                        let go = async move {
                            let mut st = TlsState::decode(&bytes).unwrap();
                            // Our own KeyUpdate a few records after the import.
                            st.rekey_after = st.tx_seq + 3;
                            let s = Stream::from_fd(fd).unwrap();
                            let mut t = TlsStream::import(s, st).unwrap();
                            t.write_all(&out[30_001..]).await.unwrap();
                            t.flush().await.unwrap();
                            let mut rest = Vec::new();
                            t.read_to_end(&mut rest).await.unwrap();
                            t.shutdown().await.unwrap();
                            rest
                        };
                        engine::timeout(Duration::from_secs(20), go)
                            .await
                            .expect("the imported side timed out")
                    })
                    .unwrap()
                });
                let rest = next.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                [got, rest].concat()
            }
        },
        move |tcp| {
            let mut r = RustlsPeer::new(tcp, role.peer(), &p);
            let data = pattern(IN, 3);
            // In pieces: rustls buffers at most 64 KiB of plaintext.
            for c in data[..200_000].chunks(16 * 1024) {
                r.send(c);
            }
            r.conn.refresh_traffic_keys().unwrap();
            for c in data[200_000..].chunks(16 * 1024) {
                r.send(c);
            }
            r.conn.send_close_notify();
            r.flush();
            r.recv(None)
        },
    );
    assert!(
        ours == pattern(IN, 3),
        "the peer's bytes arrived whole and in order"
    );
    assert_eq!(peer.1, Some(End::CloseNotify));
    assert!(
        peer.0 == pattern(OUT, 7),
        "our bytes arrived whole and in order"
    );
}

/// Server role: the rustls client sends KeyUpdate (update_requested) three times, with data
/// either side; we follow each key change and answer with our own before our next data.
fn key_updates_from_a_rustls_client(engine: Engine) {
    key_updates_from_rustls(engine, Role::Server)
}

/// Client role: the same with a rustls server updating its keys.
fn key_updates_from_a_rustls_server(engine: Engine) {
    key_updates_from_rustls(engine, Role::Client)
}

fn key_updates_from_rustls(engine: Engine, role: Role) {
    let p = pki();
    let (ours, peer) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(role, s, &p).await;
                for round in 0..3u8 {
                    let mut got = vec![0u8; 12];
                    t.read_exact(&mut got).await.unwrap();
                    assert_eq!(got, [b"ping ".as_slice(), &[round], b"+after"].concat());
                    t.write_all(&[b"pong ".as_slice(), &[round]].concat())
                        .await
                        .unwrap();
                    t.flush().await.unwrap();
                }
                let mut rest = Vec::new();
                t.read_to_end(&mut rest).await.unwrap();
                t.shutdown().await.unwrap();
                rest
            }
        },
        move |tcp| {
            let mut r = RustlsPeer::new(tcp, role.peer(), &p);
            for round in 0..3u8 {
                r.send(&[b"ping ".as_slice(), &[round]].concat());
                r.conn.refresh_traffic_keys().unwrap();
                r.send(b"+after");
                let (got, end) = r.recv(Some(6));
                assert_eq!(end, None, "round {round}");
                assert_eq!(got, [b"pong ".as_slice(), &[round]].concat());
            }
            r.conn.send_close_notify();
            r.flush();
            r.recv(None)
        },
    );
    assert!(ours.is_empty(), "close_notify ends our stream cleanly");
    assert_eq!(peer, (Vec::new(), Some(End::CloseNotify)));
}

/// A record with one byte flipped (in the ciphertext, in the tag): our read fails with
/// bad_record_mac, and rustls receives that alert before the connection closes — also on
/// io_uring, where the socket drops what is still queued for it when it is closed.
fn a_flipped_byte_is_answered_with_bad_record_mac(engine: Engine) {
    flipped_byte(engine, Role::Server)
}

fn a_flipped_byte_from_a_rustls_server_is_answered_with_bad_record_mac(engine: Engine) {
    flipped_byte(engine, Role::Client)
}

fn flipped_byte(engine: Engine, role: Role) {
    let p = pki();
    // In the ciphertext, in the tag (the record is 5 + 5 + 1 + 16 bytes).
    for at in [7usize, 26] {
        let p = p.clone();
        let (err, end) = run(
            engine,
            false,
            {
                let p = p.clone();
                async move |s| {
                    let mut t = handshake(role, s, &p).await;
                    let e = first_read_error(&mut t).await;
                    // Later reads repeat it; then the stream is dropped at once, as h2 does.
                    assert!(t.read(&mut [0u8; 8]).await.is_err());
                    e
                }
            },
            move |tcp| {
                let mut r = RustlsPeer::new(tcp, role.peer(), &p);
                r.conn.writer().write_all(b"hello").unwrap();
                let mut rec = r.take_tls();
                rec[at] ^= 1;
                r.tcp.write_all(&rec).unwrap();
                r.recv(None)
            },
        );
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("bad_record_mac"), "{err}");
        assert_eq!(
            end,
            (
                Vec::new(),
                Some(End::Tls(rustls::Error::AlertReceived(
                    AlertDescription::BadRecordMac
                )))
            ),
            "byte {at} flipped: rustls must receive bad_record_mac"
        );
    }
}

/// rustls's records sent in two writes with a pause between, so that the second part is
/// received into another ring buffer: split after every byte of a short record (header and
/// body), at the header bytes and at buffer-sized offsets of a full 16 KiB record, and with a
/// record's tail and the next record's partial header arriving together. (Each pause ends a
/// receive — counted once: 39 receives for the 37 short cases —, so a ring buffer boundary
/// falls at every split offset; one case's second part and the next one's first share a
/// receive.)
fn records_split_at_every_offset_arrive_whole(engine: Engine) {
    let p = pki();
    let expected = split_cases()
        .iter()
        .map(|c| c.expected())
        .collect::<Vec<_>>()
        .concat();
    let (got, ()) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(Role::Server, s, &p).await;
                let mut got = Vec::new();
                t.read_to_end(&mut got).await.unwrap();
                got
            }
        },
        move |tcp| {
            tcp.set_nodelay(true).unwrap();
            let mut r = RustlsPeer::new(tcp, Role::Client, &p);
            for c in split_cases() {
                let mut bytes = Vec::new();
                for m in &c.messages {
                    r.conn.writer().write_all(m).unwrap();
                    bytes.extend(r.take_tls());
                }
                r.tcp.write_all(&bytes[..c.at]).unwrap();
                std::thread::sleep(Duration::from_millis(3));
                r.tcp.write_all(&bytes[c.at..]).unwrap();
            }
            r.conn.send_close_notify();
            r.flush();
        },
    );
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the split records' plaintext differs");
}

/// The peer's close_notify ends our stream (a clean EOF) although its TCP side stays open,
/// and ours ends rustls's.
fn close_notify_ends_the_stream_while_tcp_stays_open(engine: Engine) {
    let p = pki();
    let (got, peer) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(Role::Server, s, &p).await;
                let mut got = Vec::new();
                t.read_to_end(&mut got).await.unwrap();
                t.write_all(b"ack").await.unwrap();
                t.shutdown().await.unwrap();
                got
            }
        },
        move |tcp| {
            let mut r = RustlsPeer::new(tcp, Role::Client, &p);
            r.conn.writer().write_all(b"bye").unwrap();
            r.conn.send_close_notify();
            r.flush();
            r.recv(None)
        },
    );
    assert_eq!(got, b"bye");
    assert_eq!(peer, (b"ack".to_vec(), Some(End::CloseNotify)));
}

/// TCP ends after data but without close_notify: the data is delivered, then the read fails
/// (a truncation attack must not look like a clean end).
fn eof_without_close_notify_is_an_error(engine: Engine) {
    let p = pki();
    let ((got, err), ()) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(Role::Server, s, &p).await;
                let mut got = Vec::new();
                let e = t.read_to_end(&mut got).await.unwrap_err();
                (got, e)
            }
        },
        move |tcp| {
            let mut r = RustlsPeer::new(tcp, Role::Client, &p);
            r.send(b"data");
            r.tcp.shutdown(std::net::Shutdown::Write).unwrap();
            // Wait for our side to close.
            let _ = r.tcp.read(&mut [0u8; 64]);
        },
    );
    assert_eq!(got, b"data");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(
        err.to_string().contains("without sending TLS close_notify"),
        "{err}"
    );
}

/// TCP ends inside a record (inside its header, right after it, inside its body).
fn eof_in_the_middle_of_a_record_is_an_error(engine: Engine) {
    let p = pki();
    for cut in [2usize, 5, 12] {
        let p = p.clone();
        let ((got, err), ()) = run(
            engine,
            false,
            {
                let p = p.clone();
                async move |s| {
                    let mut t = handshake(Role::Server, s, &p).await;
                    let mut got = Vec::new();
                    let e = t.read_to_end(&mut got).await.unwrap_err();
                    (got, e)
                }
            },
            move |tcp| {
                let mut r = RustlsPeer::new(tcp, Role::Client, &p);
                r.conn.writer().write_all(b"ok").unwrap();
                let mut bytes = r.take_tls();
                r.conn.writer().write_all(b"never whole").unwrap();
                bytes.extend_from_slice(&r.take_tls()[..cut]);
                r.tcp.write_all(&bytes).unwrap();
                r.tcp.shutdown(std::net::Shutdown::Write).unwrap();
                let _ = r.tcp.read(&mut [0u8; 64]);
            },
        );
        assert_eq!(got, b"ok", "cut after {cut} bytes");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert!(
            err.to_string().contains("in the middle of a TLS record"),
            "cut after {cut} bytes: {err}"
        );
    }
}

/// RFC 8446 §6: every alert but close_notify and user_canceled is an error alert "regardless
/// of the AlertLevel in the message": a fatal bad_certificate and a warning-level one alike.
fn fatal_alerts_fail_the_read_whatever_their_level(engine: Engine) {
    let p = pki();
    for level in [2u8, 1] {
        let p = p.clone();
        let (err, records) = run(
            engine,
            false,
            {
                let p = p.clone();
                async move |s| {
                    let mut t = handshake(Role::Server, s, &p).await;
                    first_read_error(&mut t).await
                }
            },
            move |tcp| {
                let mut r = RecordPeer::new(tcp, Role::Client, &p);
                r.send(ContentType::Alert, &[level, 42]);
                r.records_to_end()
            },
        );
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
        assert!(err.to_string().contains("bad_certificate"), "{err}");
        assert!(
            records.is_empty(),
            "no alert is owed for an alert: {records:?}"
        );
    }
}

/// user_canceled (warning) is not fatal (RFC 8446 §6.1: it is followed by close_notify):
/// data after it is still delivered, and the close_notify ends the stream cleanly.
fn user_canceled_is_not_fatal(engine: Engine) {
    let p = pki();
    let (got, records) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(Role::Server, s, &p).await;
                let mut got = Vec::new();
                let r = t.read_to_end(&mut got).await;
                t.shutdown().await.unwrap();
                r.map(|_| got)
            }
        },
        move |tcp| {
            let mut r = RecordPeer::new(tcp, Role::Client, &p);
            r.send(ContentType::Alert, &[1, 90]);
            r.send(ContentType::ApplicationData, b"still here");
            r.send(ContentType::Alert, &[1, 0]);
            r.records_to_end()
        },
    );
    assert_eq!(got.unwrap(), b"still here");
    assert_eq!(records, vec![(ContentType::Alert, vec![1, 0])]);
}

/// RFC 8446 §5.1: a key change must align with a record boundary. One record carrying two
/// KeyUpdates is refused with unexpected_message (before: both were applied).
fn a_key_update_not_last_in_its_record_is_unexpected_message(engine: Engine) {
    let p = pki();
    let (err, records) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(Role::Server, s, &p).await;
                first_read_error(&mut t).await
            }
        },
        move |tcp| {
            let mut r = RecordPeer::new(tcp, Role::Client, &p);
            r.send(
                ContentType::Handshake,
                &[KEY_UPDATE_NOT_REQUESTED, KEY_UPDATE_NOT_REQUESTED].concat(),
            );
            // What a stack that took both would expect next.
            r.update_tx();
            r.update_tx();
            r.send(ContentType::ApplicationData, b"x");
            r.records_to_end()
        },
    );
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert_eq!(records, vec![fatal(10)], "unexpected_message, nothing else");
}

/// A burst of KeyUpdates with update_requested: 32 between two application data records are
/// taken (rustls's limit) and answered with ONE KeyUpdate; a 33rd is unexpected_message.
fn key_updates_are_capped_between_data_records_and_answered_once(engine: Engine) {
    let p = pki();
    let (err, second) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(Role::Server, s, &p).await;
                let mut got = [0u8; 1];
                t.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"a");
                t.write_all(b"b").await.unwrap();
                t.flush().await.unwrap();
                first_read_error(&mut t).await
            }
        },
        move |tcp| {
            let mut r = RecordPeer::new(tcp, Role::Client, &p);
            // Let the handshake's last flight be taken on its own.
            std::thread::sleep(Duration::from_millis(50));
            let mut burst = Vec::new();
            for _ in 0..32 {
                burst.extend(r.seal(ContentType::Handshake, &KEY_UPDATE_REQUESTED));
                r.update_tx();
            }
            burst.extend(r.seal(ContentType::ApplicationData, b"a"));
            r.tcp.write_all(&burst).unwrap();
            let first =
                r.records_until(|(typ, body)| *typ == ContentType::ApplicationData && body == b"b");
            assert_eq!(
                first,
                vec![
                    (ContentType::Handshake, KEY_UPDATE_NOT_REQUESTED.to_vec()),
                    (ContentType::ApplicationData, b"b".to_vec())
                ],
                "one reply to 32 requests, before our data"
            );
            let mut burst = Vec::new();
            for _ in 0..33 {
                burst.extend(r.seal(ContentType::Handshake, &KEY_UPDATE_REQUESTED));
                r.update_tx();
            }
            r.tcp.write_all(&burst).unwrap();
            r.records_to_end()
        },
    );
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("KeyUpdates"), "{err}");
    assert_eq!(
        second,
        vec![fatal(10)],
        "the 33rd KeyUpdate: unexpected_message"
    );
}

/// Once our close_notify is sealed nothing may follow it, not even the KeyUpdate the peer
/// asked for. Our close_notify waits behind data the peer does not read yet (small socket
/// buffers); meanwhile the peer's KeyUpdate (update_requested) is read.
fn nothing_follows_our_close_notify(engine: Engine) {
    let p = pki();
    // Our side tells the peer when to start reading.
    let (go, ready) = std::sync::mpsc::channel::<()>();
    let (sent, records) = run(
        engine,
        true,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(Role::Server, s, &p).await;
                let chunk = vec![7u8; 64 * 1024];
                let mut sent = 0usize;
                loop {
                    match poll_once(|cx| Pin::new(&mut t).poll_write(cx, &chunk)).await {
                        Poll::Ready(r) => sent += r.unwrap(),
                        Poll::Pending => break,
                    }
                    assert!(sent < 64 << 20, "the socket never filled");
                }
                let shut = poll_once(|cx| Pin::new(&mut t).poll_shutdown(cx)).await;
                assert!(shut.is_pending(), "close_notify waits behind the data");
                // The KeyUpdate was sent right after the handshake: it is here by now.
                engine::sleep(Duration::from_millis(50)).await;
                let mut buf = [0u8; 16];
                let read = poll_once(|cx| {
                    let mut rb = tokio::io::ReadBuf::new(&mut buf);
                    Pin::new(&mut t).poll_read(cx, &mut rb)
                })
                .await;
                assert!(read.is_pending(), "{read:?}");
                go.send(()).unwrap();
                t.shutdown().await.unwrap();
                sent
            }
        },
        move |tcp| {
            let mut r = RecordPeer::new(tcp, Role::Client, &p);
            r.send(ContentType::Handshake, &KEY_UPDATE_REQUESTED);
            r.update_tx();
            ready.recv_timeout(Duration::from_secs(10)).unwrap();
            r.records_to_end()
        },
    );
    let close = records
        .iter()
        .position(|(typ, body)| *typ == ContentType::Alert && body == &[1, 0])
        .expect("our close_notify");
    assert_eq!(
        &records[close + 1..],
        &[] as &[(ContentType, Vec<u8>)],
        "records after our close_notify"
    );
    let data: usize = records[..close]
        .iter()
        .filter(|(typ, _)| *typ == ContentType::ApplicationData)
        .map(|(_, b)| b.len())
        .sum();
    assert_eq!(data, sent, "all data before the close_notify");
}

/// RFC 8446 §5.4: the whole TLSInnerPlaintext (content, type, padding) is at most 2^14 + 1
/// bytes. 2^14 bytes of content unpadded and 2^14 - 1 padded by one are taken; 2^14 bytes
/// padded by one is record_overflow.
fn an_inner_plaintext_over_2_14_plus_1_is_record_overflow(engine: Engine) {
    let p = pki();
    let full = pattern(1 << 14, 5);
    let (err, records) = run(
        engine,
        false,
        {
            let p = p.clone();
            let full = full.clone();
            async move |s| {
                let mut t = handshake(Role::Server, s, &p).await;
                let mut got = vec![0u8; 2 * (1 << 14) - 1];
                t.read_exact(&mut got).await.unwrap();
                assert!(got[..1 << 14] == full[..] && got[1 << 14..] == full[1..]);
                first_read_error(&mut t).await
            }
        },
        move |tcp| {
            let mut r = RecordPeer::new(tcp, Role::Client, &p);
            r.send(ContentType::ApplicationData, &full);
            r.send(ContentType::Unknown(0), &[&full[1..], &[23]].concat());
            r.send(ContentType::Unknown(0), &[&full[..], &[23]].concat());
            r.records_to_end()
        },
    );
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert_eq!(records, vec![fatal(22)], "record_overflow");
}

/// RFC 8446 §5.4: no non-zero byte in the inner plaintext → unexpected_message.
fn a_record_of_padding_only_is_unexpected_message(engine: Engine) {
    refused(engine, Role::Server, ContentType::Unknown(0), &[0; 4], 10)
}

/// RFC 8446 §4.6.3: a KeyUpdate request other than 0 or 1 → illegal_parameter (client role).
fn a_key_update_of_value_2_is_illegal_parameter(engine: Engine) {
    refused(
        engine,
        Role::Client,
        ContentType::Handshake,
        &[24, 0, 0, 1, 2],
        47,
    )
}

/// RFC 8446 §5.1: zero-length handshake fragments must not be sent → unexpected_message
/// (before: the record was taken in silence, and the data after it delivered).
fn a_zero_length_handshake_record_is_unexpected_message(engine: Engine) {
    refused(engine, Role::Server, ContentType::Handshake, &[], 10)
}

/// The peer sends one record of type `typ` carrying `body`, then application data; our read
/// must fail, and the peer receive exactly the fatal alert `desc`.
fn refused(engine: Engine, role: Role, typ: ContentType, body: &[u8], desc: u8) {
    let p = pki();
    let body = body.to_vec();
    let (err, records) = run(
        engine,
        false,
        {
            let p = p.clone();
            async move |s| {
                let mut t = handshake(role, s, &p).await;
                first_read_error(&mut t).await
            }
        },
        move |tcp| {
            let mut r = RecordPeer::new(tcp, role.peer(), &p);
            r.send(typ, &body);
            r.send(ContentType::ApplicationData, b"after it");
            r.records_to_end()
        },
    );
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert_eq!(records, vec![fatal(desc)]);
}

// ---- our side ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Server,
    Client,
}

impl Role {
    fn peer(self) -> Role {
        match self {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        }
    }
}

#[derive(Clone)]
struct Pki {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn pki() -> Pki {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let issue = |sa: &str| -> IssuedCert {
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
        client: client_config(&issue("client"), roots.clone()),
        server: server_config(&issue("server"), roots),
    }
}

async fn handshake(role: Role, s: Stream, p: &Pki) -> TlsStream {
    match role {
        Role::Server => tls::accept(s, p.server.clone()).await.unwrap(),
        Role::Client => tls::connect(s, p.client.clone(), dummy_server_name())
            .await
            .unwrap(),
    }
}

/// Reads until the first error; data instead is a failure (the record was taken).
async fn first_read_error(t: &mut TlsStream) -> io::Error {
    let mut buf = vec![0u8; 64 * 1024];
    match t.read(&mut buf).await {
        Ok(n) => panic!(
            "the read succeeded: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => e,
    }
}

/// One poll of `f`, whatever it returns.
async fn poll_once<T>(mut f: impl FnMut(&mut std::task::Context<'_>) -> Poll<T>) -> Poll<T> {
    poll_fn(|cx| Poll::Ready(f(cx))).await
}

/// The uring engine's knobs in these tests: 1 KiB ring buffers.
fn uring_opts() -> UringOpts {
    UringOpts {
        buf_count: 64,
        buf_size: 1024,
        ..UringOpts::default()
    }
}

/// Runs `ours` on a fresh `engine` executor on this thread and `peer` on a thread of its own,
/// over a loopback TCP connection (with `small_buffers`, 16 KiB socket buffers on our send
/// side and the peer's receive side); returns both results.
fn run<T: 'static, P: Send + 'static, F: Future<Output = T> + 'static>(
    engine: Engine,
    small_buffers: bool,
    ours: impl FnOnce(Stream) -> F + 'static,
    peer: impl FnOnce(TcpStream) -> P + Send + 'static,
) -> (T, P) {
    let (mine, theirs) = pair(small_buffers);
    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    theirs
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let peer = std::thread::spawn(move || peer(theirs));
    let t = engine::block_on(engine, &uring_opts(), async move {
        mine.set_nonblocking(true).unwrap();
        mine.set_nodelay(true).unwrap();
        let s = match engine {
            Engine::Epoll => Stream::Epoll(tokio::net::TcpStream::from_std(mine).unwrap()),
            Engine::Uring => Stream::Uring(uring::net::Stream::from_std(mine)),
        };
        engine::timeout(Duration::from_secs(20), ours(s))
            .await
            .unwrap_or_else(|_| panic!("our side timed out on {engine}"))
    })
    .unwrap();
    let p = peer.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    (t, p)
}

/// A connected loopback pair: ours (the accepted side), the peer's.
fn pair(small_buffers: bool) -> (TcpStream, TcpStream) {
    const SMALL: usize = 16 * 1024;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if small_buffers {
        socket2::SockRef::from(&l)
            .set_send_buffer_size(SMALL)
            .unwrap();
        c.set_recv_buffer_size(SMALL).unwrap();
    }
    c.connect(&l.local_addr().unwrap().into()).unwrap();
    let (ours, _) = l.accept().unwrap();
    (ours, c.into())
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// One split-write case: `messages` (one record each) sent as one byte string cut at `at`.
struct SplitCase {
    messages: Vec<Vec<u8>>,
    at: usize,
}

impl SplitCase {
    fn expected(&self) -> Vec<u8> {
        self.messages.concat()
    }
}

fn split_cases() -> Vec<SplitCase> {
    let mut cases = Vec::new();
    // A 10-byte message is a 32-byte record: cut after every byte of it.
    for at in 1..32 {
        cases.push(SplitCase {
            messages: vec![pattern(10, at as u8)],
            at,
        });
    }
    // One record whole (32 bytes) and the next one's first `k` bytes together.
    for k in 1..=6 {
        cases.push(SplitCase {
            messages: vec![pattern(10, 1), pattern(300, k as u8)],
            at: 32 + k,
        });
    }
    // A full record (16 KiB + 22 bytes): in its header, at its first body bytes, at ring
    // buffer sizes, near its tag.
    for at in [
        1, 2, 3, 4, 5, 6, 7, 21, 1023, 1024, 1025, 8192, 16384, 16400, 16405,
    ] {
        cases.push(SplitCase {
            messages: vec![pattern(1 << 14, at as u8)],
            at,
        });
    }
    cases
}

// ---- the peers ----

/// rustls's buffered connection on a blocking socket.
struct RustlsPeer {
    tcp: TcpStream,
    conn: rustls::Connection,
}

/// How the stream from us ended, as rustls saw it.
#[derive(Debug, PartialEq)]
enum End {
    CloseNotify,
    /// TCP ended without close_notify.
    Eof,
    Tls(rustls::Error),
    Io(io::ErrorKind),
}

impl RustlsPeer {
    fn new(tcp: TcpStream, role: Role, p: &Pki) -> RustlsPeer {
        let conn: rustls::Connection = match role {
            Role::Client => rustls::ClientConnection::new(p.client.clone(), dummy_server_name())
                .unwrap()
                .into(),
            Role::Server => rustls::ServerConnection::new(p.server.clone())
                .unwrap()
                .into(),
        };
        let mut r = RustlsPeer { tcp, conn };
        while r.conn.is_handshaking() {
            r.conn.complete_io(&mut r.tcp).unwrap();
        }
        r.flush();
        r
    }

    fn flush(&mut self) {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.tcp).unwrap();
        }
    }

    /// The records rustls has queued, taken instead of sent.
    fn take_tls(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).unwrap();
        }
        out
    }

    fn send(&mut self, data: &[u8]) {
        self.conn.writer().write_all(data).unwrap();
        self.flush();
    }

    /// Plaintext until `want` bytes (then no `End`) or until the stream ends.
    fn recv(&mut self, want: Option<usize>) -> (Vec<u8>, Option<End>) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            loop {
                match self.conn.reader().read(&mut buf) {
                    Ok(0) => return (got, Some(End::CloseNotify)),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if want.is_some_and(|w| got.len() >= w) {
                            return (got, None);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return (got, Some(End::Eof));
                    }
                    Err(e) => panic!("rustls reader: {e}"),
                }
            }
            match self.conn.read_tls(&mut self.tcp) {
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        return (got, Some(End::Tls(e)));
                    }
                }
                Err(e) => return (got, Some(End::Io(e.kind()))),
            }
        }
    }
}

/// The KeyUpdate messages (handshake type 24, length 1).
const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [24, 0, 0, 1, 0];
const KEY_UPDATE_REQUESTED: [u8; 5] = [24, 0, 0, 1, 1];

fn fatal(desc: u8) -> (ContentType, Vec<u8>) {
    (ContentType::Alert, vec![2, desc])
}

enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

/// A rustls handshake, then rustls's key schedule and record protection driven by hand.
struct RecordPeer {
    tcp: TcpStream,
    kernel: Kernel,
    aead: &'static dyn rustls::crypto::cipher::Tls13AeadAlgorithm,
    enc: Box<dyn MessageEncrypter>,
    tx_seq: u64,
    dec: Box<dyn MessageDecrypter>,
    rx_seq: u64,
    /// Received bytes not yet opened.
    inbuf: Vec<u8>,
}

impl RecordPeer {
    fn new(mut tcp: TcpStream, role: Role, p: &Pki) -> RecordPeer {
        let (inbuf, secrets, kernel) = match role {
            Role::Client => {
                let mut c =
                    UnbufferedClientConnection::new(p.client.clone(), dummy_server_name()).unwrap();
                let rest = unbuffered_handshake(&mut tcp, &mut c);
                let (s, k) = c.dangerous_into_kernel_connection().unwrap();
                (rest, s, Kernel::Client(k))
            }
            Role::Server => {
                let mut c = UnbufferedServerConnection::new(p.server.clone()).unwrap();
                let rest = unbuffered_handshake(&mut tcp, &mut c);
                let (s, k) = c.dangerous_into_kernel_connection().unwrap();
                (rest, s, Kernel::Server(k))
            }
        };
        let suite = match &kernel {
            Kernel::Client(k) => k.negotiated_cipher_suite(),
            Kernel::Server(k) => k.negotiated_cipher_suite(),
        };
        let aead = suite.tls13().unwrap().aead_alg;
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let (k, iv) = key_iv(tx);
        let enc = aead.encrypter(k, iv);
        let (k, iv) = key_iv(rx);
        let dec = aead.decrypter(k, iv);
        RecordPeer {
            tcp,
            kernel,
            aead,
            enc,
            tx_seq,
            dec,
            rx_seq,
            inbuf,
        }
    }

    /// One record: `payload` then the inner content type `typ`, encrypted (no padding
    /// unless `payload` carries it: `typ` 0 makes the last bytes of `payload` the type and
    /// padding).
    fn seal(&mut self, typ: ContentType, payload: &[u8]) -> Vec<u8> {
        let rec = self
            .enc
            .encrypt(
                OutboundPlainMessage {
                    typ,
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(payload),
                },
                self.tx_seq,
            )
            .unwrap()
            .encode();
        self.tx_seq += 1;
        rec
    }

    fn send(&mut self, typ: ContentType, payload: &[u8]) {
        let rec = self.seal(typ, payload);
        self.tcp.write_all(&rec).unwrap();
    }

    /// Switches our sending key to the next one (after sending a KeyUpdate).
    fn update_tx(&mut self) {
        let (seq, s) = match &mut self.kernel {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        }
        .unwrap();
        let (k, iv) = key_iv(s);
        self.enc = self.aead.encrypter(k, iv);
        self.tx_seq = seq;
    }

    fn update_rx(&mut self) {
        let (seq, s) = match &mut self.kernel {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        }
        .unwrap();
        let (k, iv) = key_iv(s);
        self.dec = self.aead.decrypter(k, iv);
        self.rx_seq = seq;
    }

    /// The next record from us, opened (a KeyUpdate switches the receiving key after it);
    /// None once TCP ends (a partial record there is a failure).
    fn next_record(&mut self) -> Option<(ContentType, Vec<u8>)> {
        loop {
            if self.inbuf.len() >= 5 {
                let len = 5 + u16::from_be_bytes([self.inbuf[3], self.inbuf[4]]) as usize;
                if self.inbuf.len() >= len {
                    let mut rec: Vec<u8> = self.inbuf.drain(..len).collect();
                    assert_eq!(rec[0], 23, "outer type of our record");
                    let msg = InboundOpaqueMessage::new(
                        ContentType::ApplicationData,
                        ProtocolVersion::TLSv1_2,
                        &mut rec[5..],
                    );
                    let plain = self
                        .dec
                        .decrypt(msg, self.rx_seq)
                        .expect("rustls opens our record");
                    self.rx_seq += 1;
                    let out = (plain.typ, plain.payload.to_vec());
                    if out.0 == ContentType::Handshake && out.1.first() == Some(&24) {
                        self.update_rx();
                    }
                    return Some(out);
                }
            }
            let mut buf = [0u8; 64 * 1024];
            match self.tcp.read(&mut buf) {
                Ok(0) => {
                    assert!(self.inbuf.is_empty(), "TCP ended inside one of our records");
                    return None;
                }
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("peer read: {e}"),
            }
        }
    }

    fn records_to_end(&mut self) -> Vec<(ContentType, Vec<u8>)> {
        std::iter::from_fn(|| self.next_record()).collect()
    }

    /// Records up to and including the first that `last` accepts.
    fn records_until(
        &mut self,
        last: impl Fn(&(ContentType, Vec<u8>)) -> bool,
    ) -> Vec<(ContentType, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(r) = self.next_record() {
            let done = last(&r);
            out.push(r);
            if done {
                return out;
            }
        }
        panic!("TCP ended before the record awaited: {out:?}");
    }
}

fn key_iv(s: ConnectionTrafficSecrets) -> (AeadKey, Iv) {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => panic!("a cipher suite this test does not know"),
    }
}

/// Either side's unbuffered connection, for one handshake loop.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// Runs the handshake on a blocking socket; returns what was received after it.
fn unbuffered_handshake<C: Unbuffered>(tcp: &mut TcpStream, conn: &mut C) -> Vec<u8> {
    let mut inbuf = Vec::new();
    let mut out = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut inbuf);
        let mut read = false;
        let mut done = false;
        match state.expect("the peer's handshake") {
            ConnectionState::EncodeTlsData(mut e) => {
                let mut buf = vec![0u8; 64 * 1024];
                match e.encode(&mut buf) {
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(EncodeError::AlreadyEncoded) => {}
                    Err(EncodeError::InsufficientSize(_)) => panic!("a 64 KiB flight"),
                }
            }
            ConnectionState::TransmitTlsData(t) => {
                tcp.write_all(&out).unwrap();
                out.clear();
                t.done();
            }
            ConnectionState::BlockedHandshake => read = true,
            // Done; records after the handshake stay in `inbuf` for the record layer.
            ConnectionState::WriteTraffic(_) | ConnectionState::ReadTraffic(_) => done = true,
            _ => panic!("unexpected state in the peer's handshake"),
        }
        inbuf.drain(..discard);
        if done {
            tcp.write_all(&out).unwrap();
            return inbuf;
        }
        if read {
            let mut buf = [0u8; 16 * 1024];
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0, "we closed during the handshake");
            inbuf.extend_from_slice(&buf[..n]);
        }
    }
}
