//! Reading the SPIFFE identity out of an X.509-SVID: the one URI SAN of a certificate,
//! parsed strictly ([`Identity`]'s `FromStr`).
//!
//! Owns: [`identity_of`], the one reader — the TLS verifiers (`tls`), the peer checks the
//! flows call, and the check of what a CA returned (`certs::caclient`) all go through it.
//! Other SAN types (DNS, IP) are allowed beside the URI SAN; several URI SANs are refused,
//! not searched (SPIFFE X.509-SVID spec, section 2: "Validators encountering an SVID
//! containing more than one URI SAN MUST reject the SVID").
//! Pure: x509 parsing only; no chain or validity check (that is rustls-webpki's, in `tls`).

use rustls_pki_types::CertificateDer;

use super::{Identity, IdentityParseError};

/// Why a certificate is not an X.509-SVID of an Istio identity, aimed at the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SvidError {
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error(
        "certificate has no URI SAN: an X.509-SVID carries exactly one, \
         spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    NoUriSan,
    #[error(
        "certificate has {} URI SANs ({}): an X.509-SVID carries exactly one",
        .0.len(),
        .0.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
    )]
    UriSans(Vec<String>),
    #[error("malformed URI SAN {:?}: {}", .0.input, .0.reason)]
    MalformedSan(IdentityParseError),
}

/// The SPIFFE identity of a certificate (an X.509-SVID): its one URI SAN, parsed strictly.
/// No URI SAN, several, or one that is not an Istio SPIFFE ID is an error saying which.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, SvidError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| SvidError::BadCertificate(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| SvidError::BadCertificate(format!("subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [one] => one.parse().map_err(SvidError::MalformedSan),
        many => Err(SvidError::UriSans(
            many.iter().map(|u| u.to_string()).collect(),
        )),
    }
}
