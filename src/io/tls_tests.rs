//! The direct record layer against real rustls peers (tokio-rustls, buffered API) over real
//! loopback sockets, in both roles: data both ways, data riding on the handshake's last
//! flight, key updates from either side, AES-128, close_notify, a corrupted record (alert
//! to the peer) and a failed handshake (alert, clear error). These run on epoll; the same
//! and the RFC 8446 corner cases (alerts, KeyUpdate limits, padding, records split across
//! ring buffers, EOF) on both engines: `tests/tls_record_engines.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::identity::Identity;
use crate::identity::ca::{Ca, IssuedCert};
use crate::tls::{client_config, dummy_server_name, server_config};

fn issue(ca: &Ca, sa: &str) -> IssuedCert {
    ca.issue(
        &Identity::new("cluster.local", "default", sa),
        SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(ca.root().clone()).unwrap();
    Arc::new(r)
}

struct Pki {
    ca: Ca,
    client_cert: IssuedCert,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn pki() -> Pki {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let client_cert = issue(&ca, "client");
    Pki {
        client: client_config(&client_cert, roots(&ca)),
        server: server_config(&issue(&ca, "server"), roots(&ca)),
        client_cert,
        ca,
    }
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(a), l.accept());
    (c.unwrap(), s.unwrap().0)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn direct_client_with_a_rustls_server() {
    let p = pki();
    let (c, s) = pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(p.server.clone());
    let server = tokio::spawn(async move {
        let mut t = acceptor.accept(s).await.unwrap();
        // Echo 1 MiB back, then a key update of our own and more data, then close.
        let mut got = vec![0u8; 1 << 20];
        t.read_exact(&mut got).await.unwrap();
        t.write_all(&got).await.unwrap();
        t.get_mut().1.refresh_traffic_keys().unwrap();
        t.write_all(b"after the server's key update").await.unwrap();
        t.flush().await.unwrap();
        let mut tail = vec![0u8; 29];
        t.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b"after the client's key update");
        t.shutdown().await.unwrap();
        got
    });
    let mut t = connect(Stream::Epoll(c), p.client.clone(), dummy_server_name())
        .await
        .unwrap();
    assert!(t.peer_certificates().is_some());
    let data = pattern(1 << 20, 3);
    t.write_all(&data).await.unwrap();
    t.flush().await.unwrap();
    let mut back = vec![0u8; 1 << 20];
    t.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
    let mut note = vec![0u8; 29];
    t.read_exact(&mut note).await.unwrap();
    assert_eq!(&note, b"after the server's key update");
    // Our own key update: every record after it is sealed with the next key.
    t.rekey_after = t.tx_keys.seq();
    t.write_all(b"after the client's key update").await.unwrap();
    t.flush().await.unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "close_notify ends the stream cleanly");
    assert_eq!(server.await.unwrap(), data);
}

#[tokio::test]
async fn session_tickets_from_a_rustls_server_are_taken_in_stride() {
    // ztunnel's server may send NewSessionTickets after the handshake (ours sends none): the
    // direct client must read past them.
    let p = pki();
    let mut sc = (*p.server).clone();
    sc.send_tls13_tickets = 2;
    sc.session_storage = rustls::server::ServerSessionMemoryCache::new(16);
    let (c, s) = pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let server = tokio::spawn(async move {
        let mut t = acceptor.accept(s).await.unwrap();
        t.write_all(b"hello after tickets").await.unwrap();
        t.flush().await.unwrap();
        let mut got = [0u8; 2];
        t.read_exact(&mut got).await.unwrap();
        got
    });
    let mut t = connect(Stream::Epoll(c), p.client.clone(), dummy_server_name())
        .await
        .unwrap();
    let mut got = vec![0u8; 19];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello after tickets");
    assert!(
        t.rx_keys.seq() >= 2,
        "the ticket record(s) came before the data: {}",
        t.rx_keys.seq()
    );
    t.write_all(b"ok").await.unwrap();
    t.flush().await.unwrap();
    assert_eq!(&server.await.unwrap(), b"ok");
}

#[tokio::test]
async fn rustls_client_with_a_direct_server_and_data_on_the_last_flight() {
    let p = pki();
    let (c, s) = pair().await;
    let connector = tokio_rustls::TlsConnector::from(p.client.clone());
    let client = tokio::spawn(async move {
        let mut t = connector.connect(dummy_server_name(), c).await.unwrap();
        // Written right after the handshake: it may arrive with the client's Finished.
        t.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let big = pattern(3 << 20, 9);
        t.write_all(&big).await.unwrap();
        t.flush().await.unwrap();
        let mut back = vec![0u8; 6];
        t.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"thanks");
        t.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = t.read_to_end(&mut rest).await;
    });
    let mut t = accept(Stream::Epoll(s), p.server.clone()).await.unwrap();
    assert!(t.peer_certificates().is_some());
    let mut head = vec![0u8; 14];
    t.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"PRI * HTTP/2.0");
    let mut big = vec![0u8; 3 << 20];
    t.read_exact(&mut big).await.unwrap();
    assert_eq!(big, pattern(3 << 20, 9));
    t.write_all(b"thanks").await.unwrap();
    t.flush().await.unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    t.shutdown().await.unwrap();
    client.await.unwrap();
}

#[tokio::test]
async fn direct_to_direct_with_aes_128() {
    let p = pki();
    // The server takes the client's preference; offering only AES-128 forces it.
    let mut provider = (*crate::tls::provider()).clone();
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let client_cfg =
        crate::tls::client_config_with(&p.client_cert, roots(&p.ca), Arc::new(provider));
    let (c, s) = pair().await;
    let (ct, st) = tokio::join!(
        connect(Stream::Epoll(c), client_cfg, dummy_server_name()),
        accept(Stream::Epoll(s), p.server.clone())
    );
    let (mut ct, mut st) = (ct.unwrap(), st.unwrap());
    let data = pattern(200_000, 1);
    let (_, got) = tokio::join!(
        async {
            ct.write_all(&data).await.unwrap();
            ct.shutdown().await.unwrap();
        },
        async {
            let mut got = Vec::new();
            st.read_to_end(&mut got).await.unwrap();
            got
        }
    );
    assert_eq!(got, data);
}

#[tokio::test]
async fn a_corrupted_record_fails_the_read_and_alerts_the_peer() {
    let p = pki();
    let (c, s) = pair().await;
    let connector = tokio_rustls::TlsConnector::from(p.client.clone());
    let client = tokio::spawn(async move {
        let t = connector.connect(dummy_server_name(), c).await.unwrap();
        let (mut tcp, _) = t.into_inner();
        // A well-framed application_data record whose ciphertext is garbage.
        let mut rec = vec![23u8, 3, 3, 0, 40];
        rec.extend_from_slice(&[0xAB; 40]);
        tcp.write_all(&rec).await.unwrap();
        // The server owes us a bad_record_mac alert (it is encrypted; we only see a record).
        let mut buf = vec![0u8; 64];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            n >= 5 && buf[0] == 23,
            "an encrypted alert record, got {n} bytes"
        );
    });
    let mut t = accept(Stream::Epoll(s), p.server.clone()).await.unwrap();
    let mut buf = [0u8; 16];
    let e = t.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("bad_record_mac"), "{e}");
    // Later reads repeat the error; the alert went out without waiting for a flush.
    assert!(t.read(&mut buf).await.is_err());
    client.await.unwrap();
    drop(t);
}

#[tokio::test]
async fn a_failed_handshake_is_a_clear_error_on_both_sides() {
    let p = pki();
    let other = pki(); // a different CA: the server's chain is not trusted
    let (c, s) = pair().await;
    let (ct, st) = tokio::join!(
        connect(Stream::Epoll(c), other.client.clone(), dummy_server_name()),
        accept(Stream::Epoll(s), p.server.clone())
    );
    let ce = ct.unwrap_err();
    assert_eq!(ce.kind(), io::ErrorKind::InvalidData, "{ce}");
    assert!(
        ce.to_string().to_lowercase().contains("certificate"),
        "{ce}"
    );
    let se = st.unwrap_err();
    assert!(
        se.to_string().contains("alert") || se.kind() == io::ErrorKind::UnexpectedEof,
        "the server learns why, or at least that the peer left: {se}"
    );
}
