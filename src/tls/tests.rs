//! In-memory TLS handshakes between our client and server configs (no sockets): the
//! ztunnel contract (TLS 1.3, ALPN h2, client cert required) and the identity checks.

use std::time::{Duration, SystemTime};

use rustls::{ClientConnection, ServerConnection};

use super::*;
use crate::identity::ca::Ca;

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(ca.root().clone()).unwrap();
    Arc::new(r)
}

/// Runs a handshake to completion; returns the error of whichever side failed.
pub(super) fn handshake(
    c: Arc<ClientConfig>,
    s: Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let mut client = ClientConnection::new(c, dummy_server_name())?;
    let mut server = ServerConnection::new(s)?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        server.process_new_packets()?;
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            // Let the server see the client's last flight.
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets()?;
            return Ok((client, server));
        }
    }
    panic!("handshake did not finish")
}

fn issue(ca: &Ca, td: &str, sa: &str) -> crate::identity::ca::IssuedCert {
    ca.issue(
        &Identity::new(td, "default", sa),
        SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap()
}

#[test]
fn mutual_tls13_with_h2_and_spiffe_identities() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let (cc, sc) = (
        issue(&ca, "cluster.local", "client"),
        issue(&ca, "cluster.local", "server"),
    );
    let (client, server) = handshake(
        client_config(&cc, roots(&ca)),
        server_config(&sc, roots(&ca)),
    )
    .unwrap();
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client.alpn_protocol(), Some(ALPN_H2));
    let suite = client.negotiated_cipher_suite().unwrap().suite();
    assert!(matches!(
        suite,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
            | rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    ));
    let server_id = verify_peer(
        client.peer_certificates(),
        std::slice::from_ref(&sc.identity),
    )
    .unwrap();
    assert_eq!(server_id.service_account, "server");
    let client_id = peer_identity(server.peer_certificates()).unwrap();
    assert_eq!(
        client_id.to_string(),
        "spiffe://cluster.local/ns/default/sa/client"
    );
}

#[test]
fn wrong_server_identity_is_refused() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let (cc, sc) = (
        issue(&ca, "cluster.local", "client"),
        issue(&ca, "cluster.local", "impostor"),
    );
    let (client, _) = handshake(
        client_config(&cc, roots(&ca)),
        server_config(&sc, roots(&ca)),
    )
    .unwrap();
    let want = Identity::new("cluster.local", "default", "server");
    let e = verify_peer(client.peer_certificates(), &[want]).unwrap_err();
    assert!(e.to_string().contains("presented spiffe://cluster.local/ns/default/sa/impostor, expected spiffe://cluster.local/ns/default/sa/server"), "{e}");
}

#[test]
fn other_trust_domain_client_is_refused() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let (cc, sc) = (
        issue(&ca, "other.domain", "client"),
        issue(&ca, "cluster.local", "server"),
    );
    let e = handshake(
        client_config(&cc, roots(&ca)),
        server_config(&sc, roots(&ca)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("trust domain cluster.local"), "{e}");
}

#[test]
fn certificates_from_another_ca_are_refused_both_ways() {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let rogue = Ca::generate(SystemTime::now()).unwrap();
    let good = issue(&ca, "cluster.local", "a");
    let bad = issue(&rogue, "cluster.local", "b");
    // Rogue server: the client refuses its chain.
    assert!(
        handshake(
            client_config(&good, roots(&ca)),
            server_config(&bad, roots(&rogue))
        )
        .is_err()
    );
    // Rogue client: the server refuses its chain.
    assert!(
        handshake(
            client_config(&bad, roots(&rogue)),
            server_config(&good, roots(&ca))
        )
        .is_err()
    );
}
