//! The mesh state: workloads, services and policies, and the immutable `Snapshot` shards read.
//!
//! Owns: the model (shaped like ztunnel's local config: same camelCase fields, same YAML
//! forms) and the lookups the data path needs (by uid, by pod IP, by service VIP, by service
//! hostname, the endpoints of a service, the policies that apply to a workload). A snapshot is
//! built once, validated whole, then shared as `Arc` and replaced whole. Pure: no I/O.

mod model;
#[cfg(test)]
mod tests;

pub use model::*;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::identity::Identity;
use crate::policy::{Authorization, Scope};

/// A validation problem, naming the entry and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: {field}: {reason}")]
pub struct StateError {
    pub entry: String,
    pub field: &'static str,
    pub reason: String,
}

/// One endpoint of a service: a healthy workload and its port map (service port → target).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub ports: HashMap<u16, u16>,
}

/// An immutable, versioned view of the whole config.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<Authorization>>,
    by_uid: HashMap<String, Arc<Workload>>,
    by_name: HashMap<(String, String), Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    by_host: HashMap<String, Arc<Service>>,
    endpoints: HashMap<String, Vec<Endpoint>>,
    policy_by_key: HashMap<String, Arc<Authorization>>,
    policies_by_ns: HashMap<String, Vec<Arc<Authorization>>>,
    global_policies: Vec<Arc<Authorization>>,
}

impl Snapshot {
    /// Validates and indexes a config. All problems are reported, not only the first.
    pub fn build(
        version: u64,
        workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Authorization>,
    ) -> Result<Snapshot, Vec<StateError>> {
        let mut errs = Vec::new();
        let workloads = workloads
            .into_iter()
            .enumerate()
            .map(|(i, mut w)| {
                errs.extend(w.apply_defaults(i));
                Arc::new(w)
            })
            .collect();
        for (i, svc) in services.iter().enumerate() {
            errs.extend(svc.check(i));
        }
        let (s, index_errs) = Self::index(
            version,
            workloads,
            services.into_iter().map(Arc::new).collect(),
            policies.into_iter().map(Arc::new).collect(),
        );
        errs.extend(index_errs);
        if errs.is_empty() { Ok(s) } else { Err(errs) }
    }

    /// Indexes resources that were each validated on their own (xDS converts and checks
    /// every resource as it arrives). Conflicts between them do not stop the build: the
    /// later entry wins and each conflict is returned, so a control plane's mistake about one
    /// address never takes the rest of the mesh down.
    pub fn build_lenient(
        version: u64,
        workloads: Vec<Arc<Workload>>,
        services: Vec<Arc<Service>>,
        policies: Vec<Arc<Authorization>>,
    ) -> (Snapshot, Vec<StateError>) {
        Self::index(version, workloads, services, policies)
    }

    fn index(
        version: u64,
        workloads: Vec<Arc<Workload>>,
        services: Vec<Arc<Service>>,
        policies: Vec<Arc<Authorization>>,
    ) -> (Snapshot, Vec<StateError>) {
        let mut errs = Vec::new();
        let mut s = Snapshot {
            version,
            ..Default::default()
        };
        for (i, w) in workloads.into_iter().enumerate() {
            let entry = format!("workloads[{i}] (uid {:?}, name {:?})", w.uid, w.name);
            let err = |field, reason: String| StateError {
                entry: entry.clone(),
                field,
                reason,
            };
            if !w.name.is_empty() {
                s.by_name
                    .insert((w.namespace.clone(), w.name.clone()), w.clone());
            }
            if s.by_uid.insert(w.uid.clone(), w.clone()).is_some() {
                errs.push(err("uid", "duplicate uid".into()));
            }
            for ip in &w.workload_ips {
                if let Some(other) = s.by_ip.insert(*ip, w.clone()) {
                    errs.push(err(
                        "workloadIps",
                        format!("{ip} is also the address of workload {:?}", other.uid),
                    ));
                }
            }
            s.workloads.push(w);
        }
        for (i, svc) in services.into_iter().enumerate() {
            let entry = format!("services[{i}] ({}/{})", svc.namespace, svc.hostname);
            let err = |field, reason: String| StateError {
                entry: entry.clone(),
                field,
                reason,
            };
            if svc.hostname.is_empty() {
                errs.push(err("hostname", "must be set".into()));
            }
            for vip in &svc.vips {
                if let Some(other) = s.by_vip.insert(vip.address, svc.clone()) {
                    errs.push(err(
                        "vips",
                        format!("{} is also a VIP of {}", vip.address, other.key()),
                    ));
                }
                if s.by_ip.contains_key(&vip.address) {
                    errs.push(err(
                        "vips",
                        format!("{} is also a workload address", vip.address),
                    ));
                }
            }
            if s.by_host.insert(svc.key(), svc.clone()).is_some() {
                errs.push(err("hostname", "duplicate namespace/hostname".into()));
            }
            s.services.push(svc);
        }
        // Endpoints: workloads name the services they belong to (with their port maps), and
        // services may list endpoints explicitly too.
        for w in &s.workloads {
            if w.status != HealthStatus::Healthy {
                continue;
            }
            for (key, ports) in &w.services {
                s.endpoints.entry(key.clone()).or_default().push(Endpoint {
                    workload: w.clone(),
                    ports: ports.clone(),
                });
            }
        }
        for svc in &s.services {
            for ep in svc.endpoints.values() {
                let Some(w) = s.by_uid.get(&ep.workload_uid) else {
                    errs.push(StateError {
                        entry: format!("services ({})", svc.key()),
                        field: "endpoints",
                        reason: format!("unknown workload uid {:?}", ep.workload_uid),
                    });
                    continue;
                };
                let list = s.endpoints.entry(svc.key()).or_default();
                if ep.status == HealthStatus::Healthy
                    && !list.iter().any(|e| e.workload.uid == w.uid)
                {
                    list.push(Endpoint {
                        workload: w.clone(),
                        ports: ep.port.clone(),
                    });
                }
            }
        }
        for list in s.endpoints.values_mut() {
            list.sort_by(|a, b| a.workload.uid.cmp(&b.workload.uid));
        }
        for (i, p) in policies.into_iter().enumerate() {
            if s.policy_by_key.insert(p.key(), p.clone()).is_some() {
                errs.push(StateError {
                    entry: format!("policies[{i}] ({})", p.key()),
                    field: "name",
                    reason: "duplicate namespace/name".into(),
                });
            }
            match p.scope {
                Scope::Global => s.global_policies.push(p.clone()),
                Scope::Namespace => s
                    .policies_by_ns
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(p.clone()),
                Scope::WorkloadSelector => {}
            }
            s.policies.push(p);
        }
        (s, errs)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid)
    }

    /// A workload by namespace and name (how ZDS names pods: its uid is the Kubernetes pod
    /// UID, which need not be the config's workload uid).
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.by_name.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)
    }

    /// A service by `namespace/hostname`.
    pub fn service_by_key(&self, key: &str) -> Option<&Arc<Service>> {
        self.by_host.get(key)
    }

    /// A service by hostname, preferring one in `namespace` (ztunnel's pick when several
    /// namespaces define the same hostname).
    pub fn service_by_hostname(
        &self,
        hostname: &str,
        namespace: Option<&str>,
    ) -> Option<&Arc<Service>> {
        if let Some(ns) = namespace
            && let Some(s) = self.by_host.get(&format!("{ns}/{hostname}"))
        {
            return Some(s);
        }
        let mut hits = self.services.iter().filter(|s| s.hostname == hostname);
        let first = hits.next()?;
        Some(
            std::iter::once(first)
                .chain(hits)
                .find(|s| s.canonical)
                .unwrap_or(first),
        )
    }

    /// The healthy endpoints of a service, in a stable order.
    pub fn endpoints(&self, svc: &Service) -> &[Endpoint] {
        self.endpoints
            .get(&svc.key())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The policies that apply to a destination workload: global ones, its namespace's, and
    /// the workload-selector policies it lists. Unknown keys are skipped.
    pub fn policies_for<'a>(&'a self, w: &'a Workload) -> impl Iterator<Item = &'a Authorization> {
        self.global_policies
            .iter()
            .chain(self.policies_by_ns.get(&w.namespace).into_iter().flatten())
            .map(|p| p.as_ref())
            .chain(
                w.authorization_policies
                    .iter()
                    .filter_map(|k| self.policy_by_key.get(k))
                    .filter(|p| p.scope == Scope::WorkloadSelector)
                    .map(|p| p.as_ref()),
            )
    }

    /// The identities of the given workloads (for certificate issuance).
    pub fn identity_of(&self, uid: &str) -> Option<Identity> {
        self.by_uid.get(uid).map(|w| w.identity())
    }
}

/// ztunnel's xDS default; the local YAML path leaves it empty, which yields no valid SPIFFE id,
/// so ringmesh applies the xDS default there too.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Shared handle to the published snapshot: the control thread stores, shards load.
pub type StateHandle = Arc<arc_swap::ArcSwap<Snapshot>>;
