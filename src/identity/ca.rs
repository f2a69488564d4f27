//! The built-in certificate authority: the embedded default when no Istio CA is configured.
//!
//! Owns: loading a root (certificate + key PEM) from files or generating one, and issuing
//! ECDSA P-256 leaf certificates for SPIFFE identities (URI SAN, serverAuth+clientAuth).
//! Time is passed in (`now`), never read here, so issuance is deterministic to test.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::Identity;

/// Errors of the built-in CA, aimed at the operator.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read CA file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write CA file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {path} is not a usable PEM {what}: {reason}")]
    BadPem {
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("identity {0} cannot be written as a URI SAN")]
    BadSan(String),
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
}

/// A certificate and its key, issued for one workload identity.
#[derive(Debug)]
pub struct IssuedCert {
    pub identity: Identity,
    /// What this workload presents: the leaf first, then any intermediates (not the root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The trust anchors peers are verified against (the CA's root, or the roots an Istio
    /// CA returned with this certificate).
    pub roots: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this process got it.
    pub issued_at: SystemTime,
}

impl IssuedCert {
    /// When this certificate should be replaced: half-way through its lifetime, as ztunnel
    /// does — counted from when it was issued, not from a back-dated `notBefore` (CAs
    /// back-date it for clock skew: istiod by 2 minutes, which with a short TTL would put
    /// the half-way point in the past and rotate without end).
    pub fn refresh_at(&self) -> SystemTime {
        let start = self.not_before.max(self.issued_at);
        let life = self.not_after.duration_since(start).unwrap_or_default();
        start + life / 2
    }
}

/// The root CA: signs workload certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca{..}")
    }
}

impl Ca {
    /// Generates a fresh root (ECDSA P-256, valid 10 years from `now`).
    pub fn generate(now: SystemTime) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringmesh");
        dn.push(DnType::CommonName, "ringmesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_time(now - Duration::from_secs(60));
        params.not_after = to_time(now + Duration::from_secs(10 * 365 * 24 * 3600));
        let cert = params.self_signed(&key)?;
        let root_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let root_der = cert.der().clone();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            root_der,
            root_pem,
            key_pem,
        })
    }

    /// An intermediate CA under this one (ECDSA P-256, valid a year): its `root()` is the
    /// intermediate's own certificate, which it signs leaves with. (The lab's control plane
    /// signs with one, so chains carry an intermediate as a real mesh CA's may.)
    pub fn intermediate(&self, now: SystemTime) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringmesh");
        dn.push(DnType::CommonName, "ringmesh intermediate CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_time(now - Duration::from_secs(60));
        params.not_after = to_time(now + Duration::from_secs(365 * 24 * 3600));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Ca {
            root_pem: cert.pem(),
            root_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root from PEM files (certificate, PKCS#8 key).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CaError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let root_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let bad = |p: &Path, what, reason: String| CaError::BadPem {
            path: p.display().to_string(),
            what,
            reason,
        };
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| bad(key_path, "private key", e.to_string()))?;
        let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| bad(cert_path, "certificate", e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&root_pem, key)
            .map_err(|e| bad(cert_path, "CA certificate", e.to_string()))?;
        Ok(Ca {
            issuer,
            root_der,
            root_pem,
            key_pem,
        })
    }

    /// Writes the root certificate and key as PEM files (key mode 0600).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
        use std::os::unix::fs::OpenOptionsExt;
        let write = |p: &Path, data: &str, mode: u32| -> Result<(), CaError> {
            let err = |source| CaError::Write {
                path: p.display().to_string(),
                source,
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(p)
                .map_err(err)?;
            std::io::Write::write_all(&mut f, data.as_bytes()).map_err(err)
        };
        write(cert_path, &self.root_pem, 0o644)?;
        write(key_path, &self.key_pem, 0o600)
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a leaf certificate for `identity`, valid from `now` (minus a minute of clock
    /// skew) for `ttl`.
    pub fn issue(
        &self,
        identity: &Identity,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let (params, not_before, not_after) = leaf_params(identity, now, ttl)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            identity: identity.clone(),
            chain: vec![cert.der().clone()],
            roots: vec![self.root_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
            issued_at: now,
        })
    }

    /// Signs a PEM certificate signing request (as Istio's CA does for `CreateCertificate`):
    /// the request's signature must verify; its subject and SANs are ignored, and the leaf
    /// gets exactly `identity` as its URI SAN. Returns the leaf (DER).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let (params, _, _) = leaf_params(identity, now, ttl)?;
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.der().clone())
    }

    /// Issues a TLS server certificate for DNS names and IP addresses (the lab's control
    /// plane serves xDS and the CA with one).
    pub fn issue_server(
        &self,
        dns: &[String],
        ips: &[std::net::IpAddr],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(dns.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns.first().map(String::as_str).unwrap_or("server"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = to_time(now - Duration::from_secs(60));
        params.not_after = to_time(now + ttl);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            vec![cert.der().clone(), self.root_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }
}

/// A workload leaf's parameters: empty subject but O=<trust domain>, one URI SAN (the
/// identity, critical as Istio marks it), digitalSignature+keyEncipherment,
/// serverAuth+clientAuth.
fn leaf_params(
    identity: &Identity,
    now: SystemTime,
    ttl: Duration,
) -> Result<(CertificateParams, SystemTime, SystemTime), CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, identity.trust_domain.as_str());
    params.distinguished_name = dn;
    let uri = identity.to_string();
    params.subject_alt_names = vec![SanType::URI(
        uri.clone().try_into().map_err(|_| CaError::BadSan(uri))?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let not_before = now - Duration::from_secs(60);
    let not_after = now + ttl;
    params.not_before = to_time(not_before);
    params.not_after = to_time(not_after);
    Ok((params, not_before, not_after))
}

fn to_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_leaf_with_spiffe_san_and_half_life() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let id = Identity::new("cluster.local", "ns1", "sa1");
        let cert = ca.issue(&id, now, Duration::from_secs(24 * 3600)).unwrap();
        assert_eq!(cert.chain.len(), 1);
        assert_eq!(cert.roots, vec![ca.root().clone()]);
        let ids = crate::tls::identities_of(&cert.chain[0]);
        assert_eq!(ids, vec![id.clone()]);
        let half = cert.refresh_at().duration_since(now).unwrap();
        assert!(half > Duration::from_secs(11 * 3600) && half < Duration::from_secs(13 * 3600));
        // A short lifetime with a back-dated notBefore still refreshes half-way from issue
        // (not at once, which would rotate without end).
        let short = ca.issue(&id, now, Duration::from_secs(8)).unwrap();
        assert!(short.not_before < now);
        assert_eq!(
            short.refresh_at().duration_since(now).unwrap(),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let (c, k) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        ca.save(&c, &k).unwrap();
        let loaded = Ca::load(&c, &k).unwrap();
        assert_eq!(loaded.root(), ca.root());
        let id = Identity::new("td", "a", "b");
        loaded.issue(&id, now, Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn load_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("ca.pem");
        std::fs::write(&c, "not pem").unwrap();
        let err = Ca::load(&c, &c).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
        let err = Ca::load(&dir.path().join("missing"), &c)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read CA file"), "{err}");
    }
}
