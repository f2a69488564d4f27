//! The certificate store: one certificate per local workload identity, published as an
//! immutable snapshot that shards read without locks.
//!
//! Owns: deciding which identities need a certificate, getting missing ones (from the
//! built-in CA at once, or from an Istio CA in the background), rotating each at half of its
//! lifetime, retrying a failed request with backoff (1 s doubling to 150 s, ±20 %) while the
//! current certificate keeps serving until it expires, forgetting unused ones, and building
//! the rustls configs once per certificate (trusting the roots that came with it). Live
//! connections keep the configs they were made with, so rotation never touches them. Runs
//! on the control thread only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::sync::mpsc;

use super::caclient::CaClient;
use crate::identity::Identity;
use crate::identity::ca::{Ca, CaError, IssuedCert};
use crate::telemetry::metrics::Metrics;
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

/// What shards read: every local identity's current certificate, and (for the dump) the
/// state of those that have none yet.
#[derive(Debug, Default)]
pub struct CertSnapshot {
    pub certs: HashMap<Identity, Arc<WorkloadCert>>,
    /// Wanted identities without a usable certificate: `Initializing` or
    /// `Unavailable: <why>` (ztunnel's state strings).
    pub pending: BTreeMap<Identity, String>,
}

impl CertSnapshot {
    pub fn get(&self, id: &Identity) -> Option<&Arc<WorkloadCert>> {
        self.certs.get(id)
    }
}

/// Shared handle to the published certificate snapshot.
pub type CertHandle = Arc<ArcSwap<CertSnapshot>>;

/// Who signs workload certificates.
pub enum Issuer {
    /// The built-in CA: this process holds the root key.
    BuiltIn(Box<Ca>),
    /// An Istio CA (istiod): this process holds no CA key at all.
    Istio(Arc<CaClient>),
}

/// The outcome of one background CA request.
#[derive(Debug)]
pub struct Fetched {
    pub id: Identity,
    pub result: Result<IssuedCert, String>,
}

/// Retry state of one identity whose certificate is being fetched.
#[derive(Debug, Default)]
struct Fetch {
    in_flight: bool,
    failures: u32,
    retry_at: Option<SystemTime>,
    last_error: Option<String>,
}

/// Issues, rotates and publishes workload certificates. Control thread only.
pub struct CertManager {
    issuer: Issuer,
    ttl: Duration,
    handle: CertHandle,
    generation: u64,
    wanted: BTreeSet<Identity>,
    fetches: HashMap<Identity, Fetch>,
    done_tx: mpsc::UnboundedSender<Fetched>,
    metrics: Option<Arc<Metrics>>,
}

impl CertManager {
    /// A manager and the receiver its background requests report to (the control loop
    /// passes what arrives to [`CertManager::fetched`]).
    pub fn new(
        issuer: Issuer,
        ttl: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> (CertManager, mpsc::UnboundedReceiver<Fetched>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        (
            CertManager {
                issuer,
                ttl,
                handle: Arc::new(ArcSwap::from_pointee(CertSnapshot::default())),
                generation: 0,
                wanted: BTreeSet::new(),
                fetches: HashMap::new(),
                done_tx,
                metrics,
            },
            done_rx,
        )
    }

    pub fn handle(&self) -> CertHandle {
        self.handle.clone()
    }

    /// The built-in CA, if that is the issuer.
    pub fn ca(&self) -> Option<&Ca> {
        match &self.issuer {
            Issuer::BuiltIn(ca) => Some(ca.as_ref()),
            Issuer::Istio(_) => None,
        }
    }

    /// Makes the published snapshot hold exactly `wanted`, each with a certificate that is not
    /// past its refresh time at `now` (built-in CA), or with a request under way for it (an
    /// Istio CA; the current certificate serves until it expires). Returns how many
    /// certificates were issued now.
    pub fn reconcile(
        &mut self,
        wanted: &BTreeSet<Identity>,
        now: SystemTime,
    ) -> Result<usize, CaError> {
        self.wanted = wanted.clone();
        self.fetches.retain(|id, _| wanted.contains(id));
        let current = self.handle.load_full();
        let mut next: HashMap<Identity, Arc<WorkloadCert>> = HashMap::new();
        let mut issued = 0;
        let mut changed = false;
        for id in wanted {
            let have = current.certs.get(id).cloned();
            match &have {
                Some(c) if c.issued.refresh_at() > now => {
                    next.insert(id.clone(), c.clone());
                    continue;
                }
                _ => {}
            }
            match &self.issuer {
                Issuer::BuiltIn(ca) => {
                    let cert = ca.issue(id, now, self.ttl)?;
                    let wc = self
                        .build(cert)
                        .map_err(|e| CaError::BadSan(e.to_string()))?;
                    next.insert(id.clone(), wc);
                    issued += 1;
                    changed = true;
                }
                Issuer::Istio(client) => {
                    // Serve the current one until it expires; ask for a new one unless a
                    // request is under way or waiting out its backoff.
                    if let Some(c) = have.filter(|c| c.issued.not_after > now) {
                        next.insert(id.clone(), c);
                    } else if current.certs.contains_key(id) {
                        tracing::error!(identity = %id, "certificate expired and no new one could be had: its pods' connections fail until the CA answers");
                        changed = true;
                    }
                    let f = self.fetches.entry(id.clone()).or_default();
                    let due = f.retry_at.is_none_or(|t| t <= now);
                    if !f.in_flight && due {
                        f.in_flight = true;
                        let (client, id, tx) = (client.clone(), id.clone(), self.done_tx.clone());
                        tokio::spawn(async move {
                            let result = client.fetch(&id).await.map_err(|e| e.to_string());
                            let _ = tx.send(Fetched { id, result });
                        });
                    }
                }
            }
        }
        if changed || next.len() != current.certs.len() || self.pending_changed(&current) {
            self.publish(next);
        }
        Ok(issued)
    }

    /// Takes in the answer of a background CA request.
    pub fn fetched(&mut self, f: Fetched, now: SystemTime) {
        if !self.fetches.contains_key(&f.id) {
            return; // no longer wanted
        }
        let current = self.handle.load_full();
        let mut next = current.certs.clone();
        let built = f
            .result
            .and_then(|c| self.build(c).map_err(|e| e.to_string()));
        let Some(state) = self.fetches.get_mut(&f.id) else {
            return; // cannot happen: checked above, and `build` leaves `fetches` alone
        };
        state.in_flight = false;
        let ok = match built {
            Ok(wc) => {
                let exp =
                    crate::telemetry::rfc3339(crate::telemetry::unix_secs(wc.issued.not_after));
                tracing::info!(identity = %f.id, expires = %exp, "workload certificate issued by the CA");
                next.insert(f.id.clone(), wc);
                self.fetches.remove(&f.id);
                true
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                let wait = backoff(state.failures, rand::random::<f64>());
                state.retry_at = Some(now + wait);
                state.last_error = Some(e.clone());
                let keep = current
                    .certs
                    .get(&f.id)
                    .map(|c| c.issued.not_after > now)
                    .unwrap_or(false);
                if !keep {
                    next.remove(&f.id);
                }
                tracing::warn!(
                    identity = %f.id,
                    "CA request failed (attempt {}): {e}; retrying in {wait:?}{}",
                    state.failures,
                    if keep { ", the current certificate keeps serving until it expires" } else { "" }
                );
                false
            }
        };
        if let Some(m) = &self.metrics {
            m.control.ca_request(ok);
        }
        self.publish(next);
    }

    fn build(&mut self, cert: IssuedCert) -> Result<Arc<WorkloadCert>, rustls::Error> {
        let mut roots = RootCertStore::empty();
        for r in &cert.roots {
            roots
                .add(r.clone())
                .map_err(|e| rustls::Error::General(format!("root certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let server = tls::try_server_config(&cert, roots.clone())?;
        let client = tls::try_client_config(&cert, roots)?;
        self.generation += 1;
        Ok(Arc::new(WorkloadCert {
            issued: cert,
            server,
            client,
            generation: self.generation,
        }))
    }

    fn pending_states(
        &self,
        certs: &HashMap<Identity, Arc<WorkloadCert>>,
    ) -> BTreeMap<Identity, String> {
        self.wanted
            .iter()
            .filter(|id| !certs.contains_key(*id))
            .map(|id| {
                let st = match self.fetches.get(id).and_then(|f| f.last_error.as_ref()) {
                    Some(e) => format!("Unavailable: {e}"),
                    None => "Initializing".to_string(),
                };
                (id.clone(), st)
            })
            .collect()
    }

    fn pending_changed(&self, current: &CertSnapshot) -> bool {
        self.pending_states(&current.certs) != current.pending
    }

    fn publish(&mut self, certs: HashMap<Identity, Arc<WorkloadCert>>) {
        let pending = self.pending_states(&certs);
        if let Some(m) = &self.metrics {
            let mut st = m.cert_states.lock().unwrap_or_else(|e| e.into_inner());
            st.clear();
            st.insert("Available", certs.len() as i64);
            let unavailable = pending
                .values()
                .filter(|s| s.starts_with("Unavailable"))
                .count();
            st.insert("Unavailable", unavailable as i64);
            st.insert("Initializing", (pending.len() - unavailable) as i64);
            drop(st);
            *m.cert_expiry.lock().unwrap_or_else(|e| e.into_inner()) = certs
                .iter()
                .map(|(id, c)| {
                    (
                        id.to_string(),
                        crate::telemetry::unix_secs(c.issued.not_after),
                    )
                })
                .collect();
        }
        self.handle.store(Arc::new(CertSnapshot { certs, pending }));
    }

    /// When the control loop should next call `reconcile`: the earliest rotation or retry.
    pub fn next_refresh(&self) -> Option<SystemTime> {
        let rotations = self
            .handle
            .load()
            .certs
            .values()
            .map(|c| c.issued.refresh_at())
            .min();
        let retries = self
            .fetches
            .values()
            .filter(|f| !f.in_flight)
            .filter_map(|f| f.retry_at)
            .min();
        [rotations, retries].into_iter().flatten().min()
    }
}

/// ztunnel's CA backoff: about 1 s, doubling, at most 150 s, ±20 % (`jitter` in [0, 1)).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = 2f64
        .powi(failures.saturating_sub(1).min(10) as i32)
        .min(150.0);
    Duration::from_secs_f64(base * (0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_rotates_and_forgets() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let (mut m, _rx) = CertManager::new(
            Issuer::BuiltIn(Box::new(ca)),
            Duration::from_secs(100),
            None,
        );
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
        assert!(m.handle().load().pending.is_empty());
    }

    #[test]
    fn the_expiry_of_every_certificate_held_is_a_metric() {
        let now = SystemTime::now();
        let ca = Ca::generate(now).unwrap();
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::default());
        let (mut m, _rx) = CertManager::new(
            Issuer::BuiltIn(Box::new(ca)),
            Duration::from_secs(100),
            Some(metrics.clone()),
        );
        let a = Identity::new("td", "ns", "a");
        m.reconcile(&[a.clone()].into(), now).unwrap();
        let not_after = m.handle().load().get(&a).unwrap().issued.not_after;
        let text = metrics.encode();
        let line = format!(
            "ringmesh_certificate_expiry_timestamp_seconds{{identity=\"{a}\"}} {}",
            crate::telemetry::unix_secs(not_after)
        );
        assert!(text.contains(&line), "{line} not in:\n{text}");
        // Forgotten: gone from the metric.
        m.reconcile(&BTreeSet::new(), now).unwrap();
        assert!(!metrics.encode().contains(&format!("identity=\"{a}\"")));
    }

    #[test]
    fn backoff_doubles_to_150s_with_jitter() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(8, 0.5), Duration::from_secs(128));
        assert_eq!(backoff(9, 0.5), Duration::from_secs(150));
        assert_eq!(backoff(40, 0.5), Duration::from_secs(150));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(800));
        assert!(backoff(1, 0.999) < Duration::from_millis(1200));
    }
}
