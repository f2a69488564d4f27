//! The certificate store: one certificate per local workload identity, published as an
//! immutable snapshot that shards read without locks.
//!
//! Owns: deciding which identities need a certificate, issuing missing ones, rotating each at
//! half of its lifetime, forgetting unused ones, and building the rustls configs once per
//! certificate. Live connections keep the configs they were made with, so rotation never
//! touches them. Runs on the control thread only.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::Identity;
use super::ca::{Ca, CaError, IssuedCert};
use crate::tls;

/// A workload certificate with the TLS configs built from it.
#[derive(Debug)]
pub struct WorkloadCert {
    pub issued: IssuedCert,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// Increases with each rotation of this identity.
    pub generation: u64,
}

/// What shards read: every local identity's current certificate.
#[derive(Debug, Default)]
pub struct CertSnapshot {
    pub certs: HashMap<Identity, Arc<WorkloadCert>>,
}

impl CertSnapshot {
    pub fn get(&self, id: &Identity) -> Option<&Arc<WorkloadCert>> {
        self.certs.get(id)
    }
}

/// Shared handle to the published certificate snapshot.
pub type CertHandle = Arc<ArcSwap<CertSnapshot>>;

/// Issues, rotates and publishes workload certificates. Control thread only.
pub struct CertManager {
    ca: Ca,
    ttl: Duration,
    roots: Arc<RootCertStore>,
    handle: CertHandle,
    generation: u64,
}

impl CertManager {
    pub fn new(ca: Ca, ttl: Duration) -> Result<CertManager, CaError> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.root().clone()).map_err(|e| CaError::BadPem {
            path: "<root>".into(),
            what: "trust anchor",
            reason: e.to_string(),
        })?;
        Ok(CertManager {
            ca,
            ttl,
            roots: Arc::new(roots),
            handle: Arc::new(ArcSwap::from_pointee(CertSnapshot::default())),
            generation: 0,
        })
    }

    pub fn handle(&self) -> CertHandle {
        self.handle.clone()
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Makes the published snapshot hold exactly `wanted`, each with a certificate that is not
    /// past its refresh time at `now`. Publishes only if something changed; returns how many
    /// certificates were issued.
    pub fn reconcile(
        &mut self,
        wanted: &BTreeSet<Identity>,
        now: SystemTime,
    ) -> Result<usize, CaError> {
        let current = self.handle.load_full();
        let mut next: HashMap<Identity, Arc<WorkloadCert>> = HashMap::new();
        let mut issued = 0;
        for id in wanted {
            match current.certs.get(id) {
                Some(c) if c.issued.refresh_at() > now => {
                    next.insert(id.clone(), c.clone());
                }
                _ => {
                    let cert = self.ca.issue(id, now, self.ttl)?;
                    self.generation += 1;
                    let server = tls::server_config(&cert, self.roots.clone());
                    let client = tls::client_config(&cert, self.roots.clone());
                    next.insert(
                        id.clone(),
                        Arc::new(WorkloadCert {
                            issued: cert,
                            server,
                            client,
                            generation: self.generation,
                        }),
                    );
                    issued += 1;
                }
            }
        }
        if issued > 0 || next.len() != current.certs.len() {
            self.handle.store(Arc::new(CertSnapshot { certs: next }));
        }
        Ok(issued)
    }

    /// The earliest time a certificate needs rotating, if any.
    pub fn next_refresh(&self) -> Option<SystemTime> {
        self.handle
            .load()
            .certs
            .values()
            .map(|c| c.issued.refresh_at())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_rotates_and_forgets() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let mut m = CertManager::new(ca, Duration::from_secs(100)).unwrap();
        let a = Identity::new("td", "ns", "a");
        let b = Identity::new("td", "ns", "b");
        let wanted: BTreeSet<_> = [a.clone(), b.clone()].into();
        assert_eq!(m.reconcile(&wanted, now).unwrap(), 2);
        let gen_a = m.handle().load().get(&a).unwrap().generation;
        // Nothing due: nothing issued.
        assert_eq!(
            m.reconcile(&wanted, now + Duration::from_secs(10)).unwrap(),
            0
        );
        // Past half-life: both rotate; the old Arc stays valid for whoever holds it.
        let old = m.handle().load().get(&a).unwrap().clone();
        assert_eq!(
            m.reconcile(&wanted, now + Duration::from_secs(60)).unwrap(),
            2
        );
        assert!(m.handle().load().get(&a).unwrap().generation > gen_a);
        assert_eq!(old.generation, gen_a);
        // b no longer wanted: forgotten.
        let only_a: BTreeSet<_> = [a.clone()].into();
        m.reconcile(&only_a, now + Duration::from_secs(60)).unwrap();
        assert!(m.handle().load().get(&b).is_none());
        assert!(m.next_refresh().is_some());
    }
}
