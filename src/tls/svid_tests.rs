//! X.509-SVID checks through real handshakes: certificates made with rcgen (any SAN set,
//! validity window, EKU, an intermediate), verified by the crate's own client and server
//! configs — the server's client-certificate verifier and the client's server-certificate
//! verifier, then [`peer_identity`] / [`verify_peer`] as the flows call them.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{CertificateError, ClientConnection, ServerConnection};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::tests::handshake;
use super::*;

const TD: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);

/// A CA made here with rcgen (not `identity::ca`), so leaves can carry anything.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn root() -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params("test root", BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn intermediate(&self) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params("test intermediate", BasicConstraints::Constrained(0));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestCa {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut r = RootCertStore::empty();
        r.add(self.der.clone()).unwrap();
        Arc::new(r)
    }

    /// A leaf with exactly `sans` and `eku`, valid over `[not_before, not_after]`.
    fn leaf(
        &self,
        sans: &[&str],
        eku: &[ExtendedKeyUsagePurpose],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> IssuedCert {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.strip_prefix("dns:") {
                Some(d) => SanType::DnsName((*d).try_into().unwrap()),
                None => SanType::URI((*s).try_into().unwrap()),
            })
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = eku.to_vec();
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        IssuedCert {
            // What the config builders read: our own trust domain.
            identity: Identity::new(TD, "default", "self"),
            chain: vec![cert.der().clone()],
            roots: vec![self.der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
            issued_at: not_before,
        }
    }

    /// A current leaf with serverAuth+clientAuth, as workload certificates are.
    fn svid(&self, sans: &[&str]) -> IssuedCert {
        let now = SystemTime::now();
        self.leaf(sans, &BOTH, now - HOUR, now + HOUR)
    }
}

const BOTH: [ExtendedKeyUsagePurpose; 2] = [
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
];

fn ca_params(cn: &str, bc: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(bc);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = time::OffsetDateTime::from(now - 24 * HOUR);
    params.not_after = time::OffsetDateTime::from(now + 24 * HOUR);
    params
}

fn id(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

/// A handshake where `client` presents `cc` and the server presents a good SVID.
fn as_client(ca: &TestCa, cc: &IssuedCert) -> Result<Identity, String> {
    let sc = ca.svid(&[&id("server")]);
    let (_, server) = handshake(
        client_config(cc, ca.roots()),
        server_config(&sc, ca.roots()),
    )
    .map_err(|e| e.to_string())?;
    peer_identity(server.peer_certificates()).map_err(|e| e.to_string())
}

/// A handshake where the server presents `sc` and the client a good SVID; then the client's
/// post-handshake check with `expected`.
fn as_server(ca: &TestCa, sc: &IssuedCert, expected: &str) -> Result<Identity, String> {
    let cc = ca.svid(&[&id("client")]);
    let (client, _) = handshake(
        client_config(&cc, ca.roots()),
        server_config(sc, ca.roots()),
    )
    .map_err(|e| e.to_string())?;
    let want: Identity = expected.parse().unwrap();
    verify_peer(client.peer_certificates(), &[want]).map_err(|e| e.to_string())
}

fn assert_err(r: Result<Identity, String>, want: &str) {
    match r {
        Ok(id) => panic!("accepted as {id}, expected an error containing {want:?}"),
        Err(e) => assert!(e.contains(want), "error {e:?} does not contain {want:?}"),
    }
}

#[test]
fn svid_without_uri_san_is_refused_in_both_roles() {
    let ca = TestCa::root();
    for sans in [&[][..], &["dns:web.default.svc"][..]] {
        let c = ca.svid(sans);
        assert_err(as_client(&ca, &c), "no URI SAN");
        assert_err(as_server(&ca, &c, &id("server")), "no URI SAN");
        assert_eq!(
            peer_identity(Some(&c.chain)),
            Err(PeerError::NotSvid(SvidError::NoUriSan))
        );
    }
}

#[test]
fn svid_with_two_uri_sans_is_refused_in_both_roles() {
    let ca = TestCa::root();
    let foreign = "spiffe://evil.example/ns/default/sa/admin";
    for sans in [
        // The foreign one first: the old code checked "any SAN in our trust domain" and then
        // took the first as the identity, so policy saw evil.example.
        [foreign, id("client").as_str()],
        [id("client").as_str(), foreign],
        // Both in our trust domain: which one is it?
        [id("client").as_str(), id("other").as_str()],
    ] {
        let c = ca.svid(&sans);
        assert_err(as_client(&ca, &c), "2 URI SANs");
        assert_err(as_server(&ca, &c, sans[0]), "2 URI SANs");
        assert_err(as_server(&ca, &c, sans[1]), "2 URI SANs");
    }
    let c = ca.svid(&[foreign, &id("client")]);
    assert_eq!(
        identity_of(&c.chain[0]).unwrap_err().to_string(),
        format!(
            "certificate has 2 URI SANs ({foreign:?}, {:?}): an X.509-SVID carries exactly one",
            id("client")
        )
    );
    // A DNS SAN beside the one URI SAN is allowed (X.509-SVID: any number of other SANs).
    let c = ca.svid(&[&id("client"), "dns:client.default.svc"]);
    assert_eq!(as_client(&ca, &c).unwrap().to_string(), id("client"));
    assert_eq!(
        as_server(&ca, &c, &id("client")).unwrap().to_string(),
        id("client")
    );
}

#[test]
fn svid_with_malformed_uri_san_is_refused_in_both_roles() {
    let ca = TestCa::root();
    for san in [
        format!("{}?admin=1", id("client")),
        format!("{}#frag", id("client")),
        format!("spiffe://user@{TD}/ns/default/sa/client"),
        format!("spiffe://{TD}:8443/ns/default/sa/client"),
        format!("{}/extra", id("client")),
        format!("spiffe://{TD}/ns//sa/client"),
        format!("spiffe://{TD}/ns/../sa/client"),
        format!("spiffe://{TD}/ns/a%2Fb/sa/client"),
        format!("SPIFFE://{TD}/ns/default/sa/client"),
        format!("https://{TD}/ns/default/sa/client"),
    ] {
        let c = ca.svid(&[&san]);
        let want = format!("malformed URI SAN {san:?}");
        assert_err(as_client(&ca, &c), &want);
        assert_err(as_server(&ca, &c, &id("client")), &want);
    }
    // A malformed SAN beside a good one is not skipped: the certificate has two URI SANs.
    let c = ca.svid(&["spiffe://nope", &id("client")]);
    assert_err(as_client(&ca, &c), "2 URI SANs");
    assert_err(as_server(&ca, &c, &id("client")), "2 URI SANs");
}

#[test]
fn client_in_another_trust_domain_is_refused_by_the_server() {
    let ca = TestCa::root();
    let c = ca.svid(&["spiffe://other.domain/ns/default/sa/client"]);
    let e = as_client(&ca, &c).unwrap_err();
    assert!(
        e.contains("spiffe://other.domain/ns/default/sa/client")
            && e.contains("trust domain cluster.local"),
        "{e}"
    );
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_in_both_roles() {
    let ca = TestCa::root();
    let now = SystemTime::now();
    let san = id("client");
    let expired = ca.leaf(&[&san], &BOTH, now - 3 * HOUR, now - HOUR);
    let early = ca.leaf(&[&san], &BOTH, now + HOUR, now + 3 * HOUR);
    for (c, want) in [(&expired, "expired"), (&early, "not valid yet")] {
        assert_err(as_client(&ca, c), want);
        assert_err(as_server(&ca, c, &san), want);
    }
}

#[test]
fn leaf_signed_by_an_intermediate_is_accepted_with_the_chain() {
    let root = TestCa::root();
    let inter = root.intermediate();
    let mut c = inter.svid(&[&id("client")]);
    c.chain.push(inter.der.clone());
    // Peers trust only the root; the intermediate comes in the presented chain.
    assert_eq!(as_client(&root, &c).unwrap().to_string(), id("client"));
    assert_eq!(
        as_server(&root, &c, &id("client")).unwrap().to_string(),
        id("client")
    );
    // Without the intermediate the chain does not reach the root.
    c.chain.truncate(1);
    assert_err(as_client(&root, &c), "UnknownIssuer");
    assert_err(as_server(&root, &c, &id("client")), "UnknownIssuer");
}

/// rustls-webpki enforces an EKU only when the extension is present
/// (`KeyUsage::required_if_present`): a certificate without the extension is accepted for
/// either role; one whose EKU lacks the role's purpose is refused.
#[test]
fn extended_key_usage_is_enforced_when_present() {
    let ca = TestCa::root();
    let now = SystemTime::now();
    let san = id("client");
    let leaf = |eku: &[ExtendedKeyUsagePurpose]| ca.leaf(&[&san], eku, now - HOUR, now + HOUR);
    let purpose = |r: Result<(ClientConnection, ServerConnection), rustls::Error>| {
        matches!(
            r.err(),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ))
        )
    };
    let good = ca.svid(&[&id("server")]);
    // serverAuth only: refused as a client certificate, accepted as a server certificate.
    let server_only = leaf(&[ExtendedKeyUsagePurpose::ServerAuth]);
    assert!(purpose(handshake(
        client_config(&server_only, ca.roots()),
        server_config(&good, ca.roots()),
    )));
    assert!(as_server(&ca, &server_only, &san).is_ok());
    // clientAuth only: the other way round.
    let client_only = leaf(&[ExtendedKeyUsagePurpose::ClientAuth]);
    assert!(purpose(handshake(
        client_config(&good, ca.roots()),
        server_config(&client_only, ca.roots()),
    )));
    assert!(as_client(&ca, &client_only).is_ok());
    // No EKU extension: accepted in both roles.
    let none = leaf(&[]);
    assert!(as_client(&ca, &none).is_ok());
    assert!(as_server(&ca, &none, &san).is_ok());
}

#[test]
fn the_one_san_is_both_the_trust_domain_checked_and_the_identity() {
    let ca = TestCa::root();
    let c = ca.svid(&[&id("client")]);
    assert_eq!(as_client(&ca, &c).unwrap().to_string(), id("client"));
    let e = verify_peer(Some(&c.chain), &[Identity::new(TD, "default", "x")]).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("presented {}, expected", id("client"))),
        "{e}"
    );
    assert_eq!(
        verify_peer(None, &[]).unwrap_err(),
        PeerError::NoCertificate
    );
}
