//! The Istio CA client: `istio.v1.auth.IstioCertificateService/CreateCertificate`, as
//! ztunnel calls it for the pods of its node.
//!
//! Per certificate: a fresh ECDSA P-256 key (it never leaves this process), a CSR whose only
//! SAN is the workload's SPIFFE URI, `validity_duration` = the configured TTL, and — because a
//! node proxy serves many identities — `metadata {"ImpersonatedIdentity": "<spiffe uri>"}`
//! (istiod allows that only to its trusted node proxy account, and only for identities with
//! a pod on the caller's node). The response's `cert_chain` is leaf, intermediates, then the
//! root bundle last; the leaf must carry exactly the identity asked for, and peers are then
//! verified against that root bundle. The server itself is authenticated with `CA_ROOT_CA`.
//!
//! Owns: one request, one answer. Scheduling, retries and rotation are the certificate
//! store's (`store`). Control thread only.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;

use crate::identity::Identity;
use crate::identity::ca::IssuedCert;
use crate::identity::svid::identity_of;
use crate::proto::ca as pb;
use crate::xds::grpc::{GrpcError, Target, error_chain};

/// The metadata key istiod reads the impersonated identity from.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Why a certificate could not be had, aimed at the operator.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error(transparent)]
    Channel(#[from] GrpcError),
    #[error("cannot build the CSR for {id}: {reason}")]
    Csr { id: Identity, reason: String },
    #[error("CA refused the CSR for {id} ({code:?}): {message}")]
    Refused {
        id: Identity,
        code: tonic::Code,
        message: String,
    },
    #[error("CA answered for {id} with a bad chain: {reason}")]
    BadChain { id: Identity, reason: String },
}

/// A client of one Istio CA.
pub struct CaClient {
    target: Target,
    ttl: Duration,
    /// The channel of the last successful call, reused until a call fails.
    channel: Mutex<Option<Channel>>,
    /// Ask for other identities (`ImpersonatedIdentity`, a node proxy for its pods), or only
    /// for the caller's own (a waypoint: istiod refuses impersonation from other accounts).
    impersonate: bool,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaClient({})", self.target.uri)
    }
}

impl CaClient {
    pub fn new(target: Target, ttl: Duration) -> CaClient {
        CaClient {
            target,
            ttl,
            channel: Mutex::new(None),
            impersonate: true,
        }
    }

    /// A client that asks only for the caller's own identity (no `ImpersonatedIdentity`).
    pub fn own_identity(mut self) -> CaClient {
        self.impersonate = false;
        self
    }

    pub fn address(&self) -> String {
        self.target.uri.to_string()
    }

    /// Asks the CA for a certificate for `id`.
    pub async fn fetch(&self, id: &Identity) -> Result<IssuedCert, CaClientError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
            CaClientError::Csr {
                id: id.clone(),
                reason: e.to_string(),
            }
        })?;
        let csr = csr_pem(id, &key)?;
        let mut metadata = prost_types::Struct::default();
        if self.impersonate {
            metadata.fields.insert(
                IMPERSONATED_IDENTITY.into(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
                },
            );
        }
        let mut req = tonic::Request::new(pb::IstioCertificateRequest {
            csr,
            validity_duration: self.ttl.as_secs().min(i64::MAX as u64) as i64,
            metadata: Some(metadata),
        });
        self.target.authorize(&mut req)?;
        req.set_timeout(Duration::from_secs(30));
        let channel = self.channel().await?;
        let mut client =
            pb::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
        let resp = match client.create_certificate(req).await {
            Ok(r) => r.into_inner(),
            Err(st) => {
                // Transport trouble: the next call reconnects.
                if matches!(st.code(), tonic::Code::Unavailable | tonic::Code::Unknown) {
                    *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                let mut message = st.message().to_string();
                if let Some(src) = std::error::Error::source(&st) {
                    message = format!("{message} ({})", error_chain(src));
                }
                return Err(CaClientError::Refused {
                    id: id.clone(),
                    code: st.code(),
                    message,
                });
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        parse_chain(id, &resp.cert_chain, key)
    }

    async fn channel(&self) -> Result<Channel, GrpcError> {
        if let Some(c) = self
            .channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let c = self.target.connect().await?;
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }
}

/// The PEM CSR for `id`: empty subject, one URI SAN.
pub fn csr_pem(id: &Identity, key: &KeyPair) -> Result<String, CaClientError> {
    let bad = |e: rcgen::Error| CaClientError::Csr {
        id: id.clone(),
        reason: e.to_string(),
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    params.distinguished_name = DistinguishedName::new();
    let uri = id.to_string();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(bad)?)];
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(bad)
}

/// Splits `cert_chain` (leaf, intermediates…, root bundle) and checks the leaf.
pub fn parse_chain(
    id: &Identity,
    chain: &[String],
    key: PrivateKeyDer<'static>,
) -> Result<IssuedCert, CaClientError> {
    let bad = |reason: String| CaClientError::BadChain {
        id: id.clone(),
        reason,
    };
    let certs_of = |i: usize, pem: &str| -> Result<Vec<CertificateDer<'static>>, CaClientError> {
        let v = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("cert_chain[{i}] is not PEM: {e}")))?;
        if v.is_empty() {
            return Err(bad(format!("cert_chain[{i}] holds no certificate")));
        }
        Ok(v)
    };
    let [first, middle @ .., last] = chain else {
        return Err(bad(format!(
            "{} element(s); expected the leaf, any intermediates, and the root last",
            chain.len()
        )));
    };
    // The leaf is the first certificate of the first element (`certs_of` never returns none).
    let Some(leaf) = certs_of(0, first)?.into_iter().next() else {
        return Err(bad("cert_chain[0] holds no certificate".into()));
    };
    let mut presented = vec![leaf.clone()];
    for (i, pem) in middle.iter().enumerate() {
        presented.extend(certs_of(i + 1, pem)?);
    }
    let roots = certs_of(chain.len() - 1, last)?;
    match identity_of(&leaf) {
        Ok(got) if got == *id => {}
        Ok(got) => {
            return Err(bad(format!(
                "the leaf is for {got}, not the identity asked for"
            )));
        }
        Err(e) => return Err(bad(format!("the leaf: {e}"))),
    }
    let (not_before, not_after) =
        validity(&leaf).ok_or_else(|| bad("the leaf's validity cannot be read".into()))?;
    Ok(IssuedCert {
        identity: id.clone(),
        chain: presented,
        roots,
        key,
        not_before,
        not_after,
        issued_at: SystemTime::now(),
    })
}

fn validity(der: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let t = |secs: i64| {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.max(0).unsigned_abs()))
    };
    Some((
        t(c.validity().not_before.timestamp())?,
        t(c.validity().not_after.timestamp())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::Ca;
    use x509_parser::prelude::FromDer;

    fn pem(der: &[u8]) -> String {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn csr_carries_only_the_spiffe_uri_and_a_ca_signs_it() {
        let id = Identity::new("cluster.local", "default", "web");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = csr_pem(&id, &key).unwrap();
        assert!(
            csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{csr}"
        );
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        assert!(
            req.certification_request_info
                .subject
                .iter()
                .next()
                .is_none()
        );
        let sans: Vec<String> = req
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => Some(
                    s.general_names
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(
            sans,
            vec!["URI(\"spiffe://cluster.local/ns/default/sa/web\")"]
        );
        // The key is P-256.
        let alg = &req.certification_request_info.subject_pki.algorithm;
        assert_eq!(alg.algorithm.to_id_string(), "1.2.840.10045.2.1");

        // A CA signs it (with the identity it decides, whatever the CSR asks), and the chain
        // it returns parses back into a certificate for the key we hold.
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let leaf = ca
            .sign_csr(&csr, &id, now, Duration::from_secs(3600))
            .unwrap();
        let chain = vec![pem(&leaf), pem(ca.root())];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let cert = parse_chain(&id, &chain, key_der).unwrap();
        assert_eq!(cert.chain.len(), 1);
        assert_eq!(cert.roots, vec![ca.root().clone()]);
        let life = cert.not_after.duration_since(cert.not_before).unwrap();
        assert!(life >= Duration::from_secs(3600), "{life:?}");
        // And it makes working TLS configs (key and leaf match).
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(ca.root().clone()).unwrap();
            std::sync::Arc::new(r)
        };
        crate::tls::try_server_config(&cert, roots.clone()).unwrap();
        crate::tls::try_client_config(&cert, roots).unwrap();
    }

    #[test]
    fn bad_chains_are_explained() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let id = Identity::new("cluster.local", "default", "web");
        let other = Identity::new("cluster.local", "default", "admin");
        let key = || {
            let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()))
        };
        let leaf = |who: &Identity| {
            let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let csr = csr_pem(who, &k).unwrap();
            pem(&ca
                .sign_csr(&csr, who, now, Duration::from_secs(60))
                .unwrap())
        };
        let e = parse_chain(&id, &[leaf(&id)], key())
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 element(s)"), "{e}");
        let e = parse_chain(&id, &[leaf(&other), pem(ca.root())], key())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the leaf is for spiffe://cluster.local/ns/default/sa/admin"),
            "{e}"
        );
        let e = parse_chain(&id, &[leaf(&id), "garbage".into()], key())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert_chain[1] holds no certificate"), "{e}");
        // Intermediates in the middle are presented; several roots in the last element all
        // become trust anchors.
        let other_root = Ca::generate(now).unwrap();
        let bundle = format!("{}{}", pem(ca.root()), pem(other_root.root()));
        let c = parse_chain(&id, &[leaf(&id), pem(other_root.root()), bundle], key()).unwrap();
        assert_eq!(c.chain.len(), 2);
        assert_eq!(c.roots.len(), 2);
    }
}
