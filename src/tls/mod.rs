//! TLS for HBONE: rustls configs built from workload certificates, and SPIFFE peer checks.
//!
//! Owns: the wire contract of ztunnel's TLS (TLS 1.3 only, AES-GCM suites, ALPN `h2`, client
//! certificate required, no SNI, no resumption), the X.509-SVID check of peers, the
//! server-side trust-domain check, and the peer checks the flows call after a handshake.
//! Pure: no sockets, no clock reads beyond what rustls does during a handshake. Builds on
//! `identity` (the SPIFFE id, the issued certificate, the SVID reader); `identity` must not
//! use this module (`tests/layering.rs`).
//!
//! A peer's certificate is an X.509-SVID: exactly one URI SAN, a SPIFFE ID parsed strictly
//! (`identity::svid::identity_of`, the one reader, which also refuses several URI SANs).
//! Both roles apply it inside the handshake: the server's client-certificate verifier checks
//! that one identity's trust domain, the client's server-certificate verifier refuses a
//! certificate that is not an SVID, and [`verify_peer`] / [`peer_identity`] return that
//! same identity to the flows for policy.
//!
//! Chains are checked by rustls-webpki: validity window (expired and not-yet-valid refused),
//! intermediates from the presented chain, and the extended key usage only when the
//! extension is present (`KeyUsage::required_if_present`): a leaf without an EKU extension is
//! accepted in either role, one whose EKU lacks clientAuth is refused as a client and one
//! lacking serverAuth as a server (as ztunnel, which uses the same verifiers).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

pub mod capture;
pub mod record;
pub mod schedule;
pub mod state;

use crate::identity::Identity;
use crate::identity::ca::IssuedCert;
use crate::identity::svid::{SvidError, identity_of};

/// ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors of peer verification after a handshake, aimed at the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("peer presented no certificate")]
    NoCertificate,
    /// The certificate is not an X.509-SVID (no URI SAN, several, a malformed one).
    #[error(transparent)]
    NotSvid(#[from] SvidError),
    #[error("peer presented {got}, expected {}", expected.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" or "))]
    WrongIdentity {
        got: String,
        expected: Vec<Identity>,
    },
}

/// The crypto provider HBONE uses: aws-lc-rs, restricted to the TLS 1.3 AES-GCM suites
/// ztunnel offers.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
}

/// The server config of one workload identity: presents its certificate, requires a client
/// certificate that chains to `roots` and carries a SPIFFE id of the same trust domain.
pub fn server_config(cert: &IssuedCert, roots: Arc<RootCertStore>) -> Arc<ServerConfig> {
    try_server_config(cert, roots).expect("a certificate we just issued matches its key")
}

/// [`server_config`] for a certificate that came from elsewhere (an Istio CA): a chain that
/// does not match its key, or an empty root store, is an error instead of a panic.
pub fn try_server_config(
    cert: &IssuedCert,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(format!("trust anchors: {e}")))?;
    let verifier = Arc::new(TrustDomainVerifier {
        inner,
        trust_domain: cert.identity.trust_domain.clone(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with AES-GCM suites is a valid protocol set")
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.enable_secret_extraction = true;
    // The direct record layer keeps the traffic secrets (its own key schedule).
    cfg.key_log = Arc::new(capture::Capture);
    Ok(Arc::new(cfg))
}

/// The client config of one workload identity: presents its certificate, sends no SNI, keeps
/// no session, and accepts any server chaining to `roots` with an X.509-SVID. The server's
/// SPIFFE identity is checked with [`verify_peer`] right after the handshake, before a byte
/// of payload is sent.
pub fn client_config(cert: &IssuedCert, roots: Arc<RootCertStore>) -> Arc<ClientConfig> {
    client_config_with(cert, roots, provider())
}

/// [`client_config`] for a certificate that came from elsewhere: errors instead of panics.
pub fn try_client_config(
    cert: &IssuedCert,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    try_client_config_with(cert, roots, provider())
}

/// [`client_config`] with another crypto provider (tests offer a single cipher suite).
pub(crate) fn client_config_with(
    cert: &IssuedCert,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
) -> Arc<ClientConfig> {
    try_client_config_with(cert, roots, provider)
        .expect("a certificate we just issued matches its key")
}

fn try_client_config_with(
    cert: &IssuedCert,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = Arc::new(ChainVerifier {
        roots,
        algs: provider.signature_verification_algorithms,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with AES-GCM suites is a valid protocol set")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    // The direct record layer (`io::tls`) takes the traffic keys over after the handshake.
    cfg.enable_secret_extraction = true;
    cfg.key_log = Arc::new(capture::Capture);
    Ok(Arc::new(cfg))
}

/// The server name rustls is given: a dummy, as ztunnel does; identity is checked by SAN.
pub fn dummy_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The peer's identity: `identity::svid::identity_of` its leaf certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<Identity, PeerError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(PeerError::NoCertificate)?;
    Ok(identity_of(leaf)?)
}

/// Checks that the peer's identity is one of `expected` (any one suffices, as in ztunnel).
pub fn verify_peer(
    certs: Option<&[CertificateDer<'_>]>,
    expected: &[Identity],
) -> Result<Identity, PeerError> {
    let got = peer_identity(certs)?;
    if expected.contains(&got) {
        Ok(got)
    } else {
        Err(PeerError::WrongIdentity {
            got: got.to_string(),
            expected: expected.to_vec(),
        })
    }
}

/// Client-certificate verifier: WebPKI chain check (clientAuth), then the certificate must be
/// an X.509-SVID whose one identity is in our trust domain (ztunnel's `TrustDomainVerifier`,
/// stricter: ztunnel accepts any of several URI SANs).
#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = identity_of(end_entity)
            .map_err(|e| rustls::Error::General(format!("client certificate refused: {e}")))?;
        if id.trust_domain == self.trust_domain {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "client certificate refused: {id} is not in trust domain {}",
                self.trust_domain
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server-certificate verifier: the chain must reach our roots (serverAuth when the leaf has
/// an EKU) and the leaf must be an X.509-SVID; names are not checked here (there is no SNI),
/// the identity is compared with the expected ones by [`verify_peer`] after the handshake.
#[derive(Debug)]
struct ChainVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        identity_of(end_entity)
            .map_err(|e| rustls::Error::General(format!("server certificate refused: {e}")))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod svid_tests;
#[cfg(test)]
mod tests;
