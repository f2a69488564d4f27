//! gRPC channels to Istio's control plane (istiod's xDS and CA, both usually on :15012), the
//! way ztunnel opens them: TLS 1.3 only, ALPN `h2`, the server verified against a root CA file
//! (`XDS_ROOT_CA` / `CA_ROOT_CA`), under the URL's host or an alternative name
//! (`ALT_XDS_HOSTNAME` / `ALT_CA_HOSTNAME`); every call carries `authorization: Bearer
//! <token>` (the token file re-read per call, so a rotated projected token is picked up) and
//! `clusterid`, plus any extra headers (`XDS_HEADER_*` / `CA_HEADER_*`).
//!
//! Owns: the channel and the per-call metadata. Control thread only; never a data-plane
//! socket. TLS is done here (tokio-rustls under tonic's custom connector) rather than by
//! tonic's TLS features, so the version, suites and name check are ours.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};

pub use crate::config::env::{AuthSource, RootSource};

/// One control-plane endpoint and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// What the endpoint serves, for messages ("xDS", "CA").
    pub what: &'static str,
    /// `https://host:port`.
    pub uri: Uri,
    pub root: RootSource,
    /// Also accept a server certificate for this name.
    pub alt_hostname: Option<String>,
    pub auth: AuthSource,
    pub cluster_id: String,
    /// Extra request metadata.
    pub headers: Vec<(String, String)>,
}

/// Why a control-plane call could not be made; names the endpoint and what to check.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("{what} address {addr:?}: {reason}")]
    Address {
        what: &'static str,
        addr: String,
        reason: String,
    },
    #[error("{what} root CA {source_name}: {reason}")]
    Root {
        what: &'static str,
        source_name: String,
        reason: String,
    },
    #[error("{what} token {path}: {reason}")]
    Token {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{what} header {name:?}: {reason}")]
    Header {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("cannot connect to {what} at {uri}: {reason}")]
    Connect {
        what: &'static str,
        uri: String,
        reason: String,
    },
}

/// Parses `XDS_ADDRESS`-style values: `host:port`, `https://host:port` (a missing scheme
/// means https; a missing port, 15012). `http://` is refused: the control plane carries
/// tokens and certificates.
pub fn parse_address(what: &'static str, s: &str) -> Result<Uri, GrpcError> {
    let bad = |reason: &str| GrpcError::Address {
        what,
        addr: s.to_string(),
        reason: reason.to_string(),
    };
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("only https:// is supported (TLS to the control plane)"));
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(15012);
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query("/")
        .build()
        .map_err(|e| bad(&e.to_string()))
}

impl Target {
    fn host(&self) -> &str {
        self.uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    fn port(&self) -> u16 {
        self.uri.port_u16().unwrap_or(15012)
    }

    /// The trust anchors, read now.
    pub fn roots(&self) -> Result<RootCertStore, GrpcError> {
        let err = |name: String, reason: String| GrpcError::Root {
            what: self.what,
            source_name: name,
            reason,
        };
        let mut store = RootCertStore::empty();
        let (name, pem) = match &self.root {
            RootSource::System => {
                let r = rustls_native_certs::load_native_certs();
                if let Some(e) = r.errors.first() {
                    return Err(err("SYSTEM".into(), e.to_string()));
                }
                for c in r.certs {
                    let _ = store.add(c);
                }
                if store.is_empty() {
                    return Err(err(
                        "SYSTEM".into(),
                        "the system has no root certificates".into(),
                    ));
                }
                return Ok(store);
            }
            RootSource::File(p) => (
                p.display().to_string(),
                std::fs::read(p).map_err(|e| err(p.display().to_string(), e.to_string()))?,
            ),
            RootSource::Pem(t) => ("(inline PEM)".to_string(), t.clone().into_bytes()),
        };
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| err(name.clone(), format!("not PEM: {e}")))?;
            store
                .add(c)
                .map_err(|e| err(name.clone(), format!("not a usable CA certificate: {e}")))?;
        }
        if store.is_empty() {
            return Err(err(name, "holds no certificate".into()));
        }
        Ok(store)
    }

    /// The TLS client config: TLS 1.3, ALPN h2, no client certificate.
    fn tls(&self) -> Result<Arc<ClientConfig>, GrpcError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(|e| GrpcError::Root {
                    what: self.what,
                    source_name: format!("{:?}", self.root),
                    reason: e.to_string(),
                })?;
        let alt = match &self.alt_hostname {
            None => None,
            Some(h) => Some(server_name(h).ok_or_else(|| GrpcError::Address {
                what: self.what,
                addr: h.clone(),
                reason: "not a valid alternative hostname".into(),
            })?),
        };
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by aws-lc-rs")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AltNameVerifier { inner, alt }))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Connects (TCP, TLS, HTTP/2) and returns a channel for one session.
    pub async fn connect(&self) -> Result<Channel, GrpcError> {
        let tls = tokio_rustls::TlsConnector::from(self.tls()?);
        let name = server_name(self.host()).ok_or_else(|| GrpcError::Address {
            what: self.what,
            addr: self.uri.to_string(),
            reason: "host is not a valid DNS name or IP address".into(),
        })?;
        let (host, port) = (self.host().to_string(), self.port());
        let connector = tower::service_fn(move |_: Uri| {
            let (tls, name, host) = (tls.clone(), name.clone(), host.clone());
            async move {
                let tcp = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect((host.as_str(), port)),
                )
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TCP connect timed out after 5s",
                    )
                })??;
                let _ = tcp.set_nodelay(true);
                let ka = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(300))
                    .with_interval(Duration::from_secs(75))
                    .with_retries(9);
                let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
                let s = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        });
        Endpoint::from(self.uri.clone())
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_with_connector(connector)
            .await
            .map_err(|e| GrpcError::Connect {
                what: self.what,
                uri: self.uri.to_string(),
                reason: error_chain(&e),
            })
    }

    /// Adds the call's metadata: the token (read now), `clusterid`, extra headers.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) -> Result<(), GrpcError> {
        let md = req.metadata_mut();
        for (k, v) in &self.headers {
            let bad = |reason: String| GrpcError::Header {
                what: self.what,
                name: k.clone(),
                reason,
            };
            let key = AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            let val = AsciiMetadataValue::try_from(v.as_str()).map_err(|e| bad(e.to_string()))?;
            md.insert(key, val);
        }
        let token = match &self.auth {
            AuthSource::None => return Ok(()),
            AuthSource::Static(t) => t.clone(),
            AuthSource::File(p) => {
                let terr = |reason: String| GrpcError::Token {
                    what: self.what,
                    path: p.display().to_string(),
                    reason,
                };
                let t = std::fs::read_to_string(p).map_err(|e| terr(e.to_string()))?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(terr("the file is empty".into()));
                }
                t
            }
        };
        let val = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            GrpcError::Token {
                what: self.what,
                path: "(token)".into(),
                reason: "not printable ASCII".into(),
            }
        })?;
        md.insert("authorization", val);
        let cid = AsciiMetadataValue::try_from(self.cluster_id.as_str()).map_err(|e| {
            GrpcError::Header {
                what: self.what,
                name: "clusterid".into(),
                reason: e.to_string(),
            }
        })?;
        md.insert("clusterid", cid);
        Ok(())
    }
}

/// A DNS name or IP as rustls wants it.
fn server_name(h: &str) -> Option<ServerName<'static>> {
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(h.to_string()).ok()
}

/// The whole cause chain of an error, for one log line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// WebPKI verification under the URL's host, or else under the alternative name.
#[derive(Debug)]
struct AltNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    alt: Option<ServerName<'static>>,
}

impl ServerCertVerifier for AltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.alt.is_some() => {
                let alt = self.alt.as_ref().expect("checked");
                self.inner
                    .verify_server_cert(end_entity, intermediates, alt, ocsp, now)
            }
            r => r,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_the_chart_writes_them() {
        let u = parse_address("xDS", "istiod.istio-system.svc:15012").unwrap();
        assert_eq!(u.to_string(), "https://istiod.istio-system.svc:15012/");
        let u = parse_address("xDS", "https://198.19.255.250").unwrap();
        assert_eq!(u.port_u16(), Some(15012));
        let u = parse_address("xDS", "https://[fd00::1]:15012").unwrap();
        assert_eq!(u.host(), Some("[fd00::1]"));
        let e = parse_address("xDS", "http://istiod:15010")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only https://"), "{e}");
        assert!(parse_address("CA", "https://").is_err());
    }

    #[test]
    fn metadata_has_token_and_cluster_and_headers() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("istio-token");
        std::fs::write(&tok, "abc.def\n").unwrap();
        let t = Target {
            what: "xDS",
            uri: parse_address("xDS", "istiod:15012").unwrap(),
            root: RootSource::Pem(String::new()),
            alt_hostname: None,
            auth: AuthSource::File(tok.clone()),
            cluster_id: "Kubernetes".into(),
            headers: vec![("X-Extra".into(), "1".into())],
        };
        let mut req = tonic::Request::new(());
        t.authorize(&mut req).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer abc.def"
        );
        assert_eq!(req.metadata().get("clusterid").unwrap(), "Kubernetes");
        assert_eq!(req.metadata().get("x-extra").unwrap(), "1");
        // Re-read per call.
        std::fs::write(&tok, "rotated").unwrap();
        let mut req = tonic::Request::new(());
        t.authorize(&mut req).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer rotated"
        );
        std::fs::write(&tok, "").unwrap();
        let e = t
            .authorize(&mut tonic::Request::new(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        // An inline root without certificates is refused with its source named.
        let e = t.roots().unwrap_err().to_string();
        assert!(
            e.contains("xDS root CA (inline PEM): holds no certificate"),
            "{e}"
        );
    }
}
