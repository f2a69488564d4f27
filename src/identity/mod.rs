//! Workload identity: the SPIFFE id newtype, the built-in CA and the X.509-SVID reader.
//!
//! Owns: parsing (strictly, per the SPIFFE ID spec) and printing
//! `spiffe://<td>/ns/<ns>/sa/<sa>`, issuing workload certificates and keeping the built-in
//! root's key file (`ca`, with [`ca::IssuedCert`]), and reading the identity out of a
//! certificate (`svid`).
//! Must not touch: sockets, pod network namespaces, TLS configs. This is the low layer under
//! `tls` (which builds configs from an `IssuedCert`) and `certs` (which asks a CA, keeps the
//! certificates and rotates them): it must not use either (`tests/layering.rs`).

pub mod ca;
pub mod svid;

use std::fmt;
use std::str::FromStr;

/// A SPIFFE identity as Istio uses it: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a SPIFFE identity of Istio's shape: the input and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an Istio SPIFFE identity {input:?}: {reason}")]
pub struct IdentityParseError {
    pub input: String,
    pub reason: String,
}

/// The longest SPIFFE ID accepted, in bytes (SPIFFE ID spec, section 2.3).
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain accepted, in bytes (SPIFFE ID spec, section 2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// The identity without the `spiffe://` prefix, as AuthorizationPolicy principals are written.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Strict, as go-spiffe's `ParseID` plus Istio's path shape: `spiffe://` in lower case; a
/// trust domain of `a-z 0-9 . - _` (no userinfo, no port); the path exactly
/// `/ns/<namespace>/sa/<service-account>` with segments of `A-Z a-z 0-9 . - _`, none empty,
/// `.` or `..` (so no percent-encoding); no query, no fragment; at most [`MAX_ID_LEN`] bytes.
impl FromStr for Identity {
    type Err = IdentityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| IdentityParseError {
            input: s.to_string(),
            reason,
        };
        if s.len() > MAX_ID_LEN {
            return Err(err(format!("longer than {MAX_ID_LEN} bytes")));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("the scheme must be spiffe:// (lower case)".into()))?;
        if let Some(i) = rest.find(['?', '#']) {
            let what = if rest[i..].starts_with('?') {
                "a query (?…)"
            } else {
                "a fragment (#…)"
            };
            return Err(err(format!("{what} is not allowed")));
        }
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        check_trust_domain(td).map_err(err)?;
        let shape = || {
            err(format!(
                "the path must be /ns/<namespace>/sa/<service-account>, not {path:?}"
            ))
        };
        let Some(path_rest) = path.strip_prefix('/') else {
            return Err(shape());
        };
        let segments: Vec<&str> = path_rest.split('/').collect();
        for seg in &segments {
            check_segment(seg).map_err(err)?;
        }
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => Ok(Identity::new(td, ns, sa)),
            _ => Err(shape()),
        }
    }
}

fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("empty trust domain".into());
    }
    if td.contains('@') {
        return Err("userinfo (…@) is not allowed before the trust domain".into());
    }
    if td.contains(':') {
        return Err("a port is not allowed after the trust domain".into());
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
        ));
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(format!(
            "the trust domain may hold only a-z 0-9 . - _, not {c:?}"
        )),
        None => Ok(()),
    }
}

fn check_segment(seg: &str) -> Result<(), String> {
    if seg.is_empty() {
        return Err("empty path segment (// or a trailing /)".into());
    }
    if seg == "." || seg == ".." {
        return Err("a \".\" or \"..\" path segment is not allowed".into());
    }
    match seg
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(format!(
            "path segment {seg:?} may hold only A-Z a-z 0-9 . - _, not {c:?}"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/client"
            .parse()
            .unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "client"));
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/client"
        );
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/client");
    }

    #[test]
    fn rejects_wrong_shapes() {
        for bad in [
            "cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/namespace/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }

    /// SPIFFE ID rules (go-spiffe's): scheme `spiffe` in lower case; a trust domain of
    /// `a-z 0-9 . - _` with no userinfo or port; path segments of `A-Z a-z 0-9 . - _`, none
    /// empty, `.` or `..`; no query or fragment. Each error names what is wrong.
    #[test]
    fn parses_strictly_and_says_why() {
        for (bad, why) in [
            ("spiffe://td/ns/a/sa/b?x=1", "query"),
            ("spiffe://td/ns/a/sa/b#f", "fragment"),
            ("spiffe://td/ns/a/sa/b?", "query"),
            ("spiffe://u@td/ns/a/sa/b", "userinfo"),
            ("spiffe://td:8080/ns/a/sa/b", "port"),
            ("spiffe://TD/ns/a/sa/b", "trust domain"),
            ("spiffe://t d/ns/a/sa/b", "trust domain"),
            ("spiffe:///ns/a/sa/b", "empty trust domain"),
            ("spiffe://td", "path must be"),
            ("SPIFFE://td/ns/a/sa/b", "scheme"),
            ("http://td/ns/a/sa/b", "scheme"),
            ("spiffe://td/ns//sa/b", "empty path segment"),
            ("spiffe://td//ns/a/sa/b", "empty path segment"),
            ("spiffe://td/ns/a/sa/b/", "empty path segment"),
            ("spiffe://td/ns/../sa/b", "\".\" or \"..\""),
            ("spiffe://td/ns/./sa/b", "\".\" or \"..\""),
            ("spiffe://td/ns/a%2Fb/sa/b", "path segment"),
            ("spiffe://td/ns/a/sa/b c", "path segment"),
            ("spiffe://td/ns/a/sa/b/extra", "path must be"),
            ("spiffe://td/x/a/sa/b", "path must be"),
        ] {
            let e = bad.parse::<Identity>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e:?} does not say {why:?}");
            assert!(
                e.contains(&format!("{bad:?}")),
                "{bad}: {e:?} does not quote it"
            );
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(2048));
        let e = long.parse::<Identity>().unwrap_err().to_string();
        assert!(e.contains("2048"), "{e}");
        // What Istio and Kubernetes names use is accepted.
        let id: Identity = "spiffe://cluster.local/ns/my-ns/sa/Default_SA.v2"
            .parse()
            .unwrap();
        assert_eq!(id, Identity::new("cluster.local", "my-ns", "Default_SA.v2"));
    }
}
