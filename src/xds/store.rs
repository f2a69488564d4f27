//! The resources received over xDS, by type and name, and the `Snapshot` they make.
//!
//! Owns: applying one delta response (updates and removals) with ztunnel's semantics, the
//! per-resource rejection list a NACK carries, the name → version map a reconnect sends as
//! `initial_resource_versions`, and building the snapshot the shards read. Pure: no I/O,
//! no clock.
//!
//! ztunnel's rules kept here: Address updates are keyed by what is inside them (a workload's
//! uid, a service's `namespace/hostname`), removals by the resource name (tried as a workload
//! uid, then as `namespace/hostname`); Authorization resources are keyed by resource name; a
//! rejected resource leaves whatever was held under its name and is not reported as held on
//! reconnect; the good resources of a response apply even when others are rejected.
//!
//! Each applied response rebuilds the whole snapshot (O(resources)); the shards never see a
//! partial one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost::Message;

use super::convert::{self, AddressResource};
use crate::policy::Authorization;
use crate::proto::{self, discovery, security, workload};
use crate::state::{Service, Snapshot, StateError, Workload};

/// A resource the store would not take, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// What applying one response did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub rejected: Vec<Rejected>,
    /// Resources added or replaced, and removed.
    pub updated: usize,
    pub removed: usize,
}

impl Applied {
    /// The NACK's `error_detail.message`: every rejection, `name: reason`, joined by `; `
    /// (ztunnel's format). `None` when the response is ACKed.
    pub fn nack_message(&self) -> Option<String> {
        if self.rejected.is_empty() {
            return None;
        }
        Some(
            self.rejected
                .iter()
                .map(Rejected::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

/// What an Address resource name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AddressKey {
    Workload(String),
    Service(String),
}

/// Everything received so far.
#[derive(Debug, Default)]
pub struct XdsStore {
    workloads: BTreeMap<String, Arc<Workload>>,
    services: BTreeMap<String, Arc<Service>>,
    policies: BTreeMap<String, Arc<Authorization>>,
    /// Address resource name → what it holds (for removals by name).
    address_names: HashMap<String, AddressKey>,
    /// Type URL → resource name → version, of the accepted resources.
    versions: HashMap<String, BTreeMap<String, String>>,
}

impl XdsStore {
    /// Applies one `DeltaDiscoveryResponse`. Unknown type URLs change nothing (and are
    /// ACKed, as ztunnel does).
    pub fn apply(&mut self, r: &discovery::DeltaDiscoveryResponse) -> Applied {
        let mut out = Applied::default();
        let known = r.type_url == proto::ADDRESS_TYPE || r.type_url == proto::AUTHORIZATION_TYPE;
        if !known {
            return out;
        }
        for res in &r.resources {
            let result = match &res.resource {
                None => Err("resource without a payload".to_string()),
                Some(any) if r.type_url == proto::ADDRESS_TYPE => {
                    self.put_address(&res.name, &any.value)
                }
                Some(any) => self.put_policy(&res.name, &any.value),
            };
            match result {
                Ok(()) => {
                    out.updated += 1;
                    self.versions
                        .entry(r.type_url.clone())
                        .or_default()
                        .insert(res.name.clone(), res.version.clone());
                }
                Err(reason) => out.rejected.push(Rejected {
                    name: res.name.clone(),
                    reason,
                }),
            }
        }
        for name in &r.removed_resources {
            let gone = if r.type_url == proto::ADDRESS_TYPE {
                self.remove_address(name)
            } else {
                self.policies.remove(name).is_some()
            };
            if gone {
                out.removed += 1;
            } else {
                tracing::debug!(type_url = %r.type_url, %name, "xDS removal of a resource not held");
            }
            if let Some(v) = self.versions.get_mut(&r.type_url) {
                v.remove(name);
            }
        }
        out
    }

    fn put_address(&mut self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let a = workload::Address::decode(bytes).map_err(|e| format!("decode: {e}"))?;
        match convert::address(a).map_err(|e| e.to_string())? {
            AddressResource::Workload(w) => {
                let uid = w.uid.clone();
                self.workloads.insert(uid.clone(), Arc::new(*w));
                self.address_names
                    .insert(name.to_string(), AddressKey::Workload(uid));
            }
            AddressResource::Service(s) => {
                let key = s.key();
                self.services.insert(key.clone(), Arc::new(*s));
                self.address_names
                    .insert(name.to_string(), AddressKey::Service(key));
            }
        }
        Ok(())
    }

    fn put_policy(&mut self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let a = security::Authorization::decode(bytes).map_err(|e| format!("decode: {e}"))?;
        let p = convert::authorization(a).map_err(|e| e.to_string())?;
        self.policies.insert(name.to_string(), Arc::new(p));
        Ok(())
    }

    fn remove_address(&mut self, name: &str) -> bool {
        match self.address_names.remove(name) {
            Some(AddressKey::Workload(uid)) => self.workloads.remove(&uid).is_some(),
            Some(AddressKey::Service(key)) => self.services.remove(&key).is_some(),
            // A name we never saw: ztunnel's rule (a uid, else namespace/hostname).
            None => self.workloads.remove(name).is_some() || self.services.remove(name).is_some(),
        }
    }

    /// The accepted resources of a type with their versions (`initial_resource_versions`).
    pub fn versions(&self, type_url: &str) -> HashMap<String, String> {
        self.versions
            .get(type_url)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.workloads.len(),
            self.services.len(),
            self.policies.len(),
        )
    }

    /// The snapshot of everything held. Conflicts between resources (two workloads claiming
    /// one IP, a VIP that is also a pod IP) do not stop it: the later one wins, as in ztunnel,
    /// and each conflict is returned to be logged.
    pub fn snapshot(&self, version: u64) -> (Snapshot, Vec<StateError>) {
        Snapshot::build_lenient(
            version,
            self.workloads.values().cloned().collect(),
            self.services.values().cloned().collect(),
            self.policies.values().cloned().collect(),
        )
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
