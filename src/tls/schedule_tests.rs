//! Tests of the key schedule against rustls's own: the first traffic keys of real in-memory
//! handshakes (every suite, both directions) and the keys after a KeyUpdate, compared by what
//! they seal; plus secret length checks and the suite code points.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};

use super::*;
use crate::identity::Identity;
use crate::identity::ca::Ca;
use crate::tls::record;

#[derive(Debug, Default)]
struct Log(Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for Log {
    fn log(&self, label: &str, _: &[u8], secret: &[u8]) {
        self.0.lock().unwrap().push((label.into(), secret.to_vec()));
    }
}

impl Log {
    fn get(&self, label: &str) -> Vec<u8> {
        let l = self.0.lock().unwrap();
        l.iter().find(|(k, _)| k == label).unwrap().1.clone()
    }
}

fn configs(suite: SupportedCipherSuite, log: Arc<Log>) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let ca = Ca::generate(SystemTime::now()).unwrap();
    let issue = |sa: &str| {
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
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![suite];
    let c = crate::tls::client_config_with(&issue("client"), roots.clone(), Arc::new(p));
    let mut c = (*c).clone();
    c.key_log = log;
    let s = crate::tls::server_config(&issue("server"), roots);
    (Arc::new(c), s)
}

/// What `keys` seals for a fixed plaintext (equal outputs: equal key, IV and sequence).
fn sealed(mut keys: record::Keys) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    keys.seal(record::APPLICATION_DATA, b"the same plaintext", &mut out)
        .unwrap();
    keys.seal(record::APPLICATION_DATA, b"and a second record", &mut out)
        .unwrap();
    out.to_vec()
}

/// The suites HBONE offers (ztunnel's: AES-GCM only; ChaCha20 is derived the same way and
/// only checked to build keys).
fn suites() -> [(SupportedCipherSuite, Suite); 2] {
    [
        (
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            Suite::Aes128GcmSha256,
        ),
        (
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            Suite::Aes256GcmSha384,
        ),
    ]
}

#[test]
fn first_traffic_keys_match_rustls_for_every_suite_and_direction() {
    for (rs, suite) in suites() {
        let log = Arc::new(Log::default());
        let (c, s) = configs(rs, log.clone());
        let (client, _server) = crate::tls::tests::handshake(c, s).unwrap();
        assert_eq!(
            Suite::from_rustls(client.negotiated_cipher_suite().unwrap().suite()),
            Some(suite)
        );
        let ext = client.dangerous_extract_secrets().unwrap();
        let ours_tx = TrafficSecret::new(suite, &log.get("CLIENT_TRAFFIC_SECRET_0")).unwrap();
        let ours_rx = TrafficSecret::new(suite, &log.get("SERVER_TRAFFIC_SECRET_0")).unwrap();
        let (tx_seq, rx_seq) = (ext.tx.0, ext.rx.0);
        assert_eq!(
            sealed(ours_tx.keys(tx_seq).unwrap()),
            sealed(record::Keys::new(tx_seq, ext.tx.1).unwrap()),
            "{suite:?} client to server"
        );
        assert_eq!(
            sealed(ours_rx.keys(rx_seq).unwrap()),
            sealed(record::Keys::new(rx_seq, ext.rx.1).unwrap()),
            "{suite:?} server to client"
        );
        // A wrong secret gives other keys (the comparison can fail).
        assert_ne!(
            sealed(ours_rx.keys(rx_seq).unwrap()),
            sealed(ours_tx.keys(rx_seq).unwrap())
        );
    }
}

#[test]
fn the_next_generation_matches_rustls_after_a_key_update() {
    for (rs, suite) in suites() {
        let log = Arc::new(Log::default());
        let (c, s) = configs(rs, log.clone());
        let (mut client, _server) = crate::tls::tests::handshake(c, s).unwrap();
        client.refresh_traffic_keys().unwrap();
        let mut sent = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut sent).unwrap();
        }
        let ext = client.dangerous_extract_secrets().unwrap();
        let gen0 = TrafficSecret::new(suite, &log.get("CLIENT_TRAFFIC_SECRET_0")).unwrap();
        let gen1 = gen0.next();
        assert_ne!(gen0.bytes(), gen1.bytes());
        assert_eq!(
            sealed(gen1.keys(ext.tx.0).unwrap()),
            sealed(record::Keys::new(ext.tx.0, ext.tx.1).unwrap()),
            "{suite:?} after KeyUpdate"
        );
    }
}

#[test]
fn secrets_of_the_wrong_length_and_unknown_code_points_are_refused() {
    assert!(matches!(
        TrafficSecret::new(Suite::Aes256GcmSha384, &[0; 32]),
        Err(ScheduleError::SecretLength {
            want: 48,
            got: 32,
            ..
        })
    ));
    assert!(TrafficSecret::new(Suite::Aes128GcmSha256, &[0; 32]).is_ok());
    let chacha = TrafficSecret::new(Suite::Chacha20Poly1305Sha256, &[7; 32]).unwrap();
    assert!(chacha.keys(0).is_ok() && chacha.next().keys(5).is_ok());
    for s in [
        Suite::Aes128GcmSha256,
        Suite::Aes256GcmSha384,
        Suite::Chacha20Poly1305Sha256,
    ] {
        assert_eq!(Suite::from_code(s.code()), Some(s));
    }
    assert_eq!(Suite::from_code(0x1304), None);
    assert_eq!(
        Suite::from_rustls(rustls::CipherSuite::TLS13_AES_128_CCM_SHA256),
        None
    );
}

#[test]
fn capture_keeps_secrets_only_while_armed() {
    use rustls::KeyLog;
    let cap = crate::tls::capture::Capture;
    assert!(!cap.will_log("CLIENT_TRAFFIC_SECRET_0"));
    cap.log("CLIENT_TRAFFIC_SECRET_0", &[], &[1; 32]);
    let mut acc = crate::tls::capture::Captured::default();
    crate::tls::capture::during(&mut acc, || {
        assert!(cap.will_log("SERVER_TRAFFIC_SECRET_0"));
        assert!(!cap.will_log("EXPORTER_SECRET"));
        cap.log("SERVER_TRAFFIC_SECRET_0", &[], &[2; 32]);
    });
    assert!(acc.client.is_none(), "logged while not armed: dropped");
    assert_eq!(
        acc.server.as_deref().map(|s| s.as_slice()),
        Some(&[2u8; 32][..])
    );
    assert!(!cap.will_log("SERVER_TRAFFIC_SECRET_0"));
}
