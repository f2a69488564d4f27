//! Workload identity: the SPIFFE id newtype, the built-in CA and the certificate store.
//!
//! Owns: parsing/printing `spiffe://<td>/ns/<ns>/sa/<sa>`, issuing workload certificates
//! (`ca`), asking an Istio CA for them (`caclient`), and the published certificate snapshot
//! with half-life rotation (`store`).
//! Must not touch: sockets or pod network namespaces. The store is driven by the control thread.

pub mod ca;
pub mod caclient;
pub mod store;

use std::fmt;
use std::str::FromStr;

/// A SPIFFE identity as Istio uses it: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a SPIFFE identity of Istio's shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "not an Istio SPIFFE identity {0:?}: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
)]
pub struct IdentityParseError(pub String);

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

impl FromStr for Identity {
    type Err = IdentityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdentityParseError(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Identity::new(td, ns, sa))
            }
            _ => Err(err()),
        }
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
}
