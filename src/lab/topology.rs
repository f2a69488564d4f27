//! The lab's topology file: nodes, pods (namespace, service account, labels), services (VIP,
//! ports, selector) and policies (ztunnel's format). It becomes network namespaces (`Lab`),
//! the node proxies' config (ztunnel's local YAML) and each node's ZDS enrolments.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde::Deserialize;

use super::LabError;
use crate::config::LocalConfig;
use crate::inpod::zds::WorkloadInfo;
use crate::policy::Authorization;
use crate::state::{NetworkAddress, Protocol, Service, Workload};

/// The label that puts a pod in the mesh (istio-cni's default selector).
pub const AMBIENT_LABEL: (&str, &str) = ("istio.io/dataplane-mode", "ambient");

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topology {
    /// Prefix of every namespace the lab makes (`<name>-<node|pod>`).
    pub name: String,
    #[serde(default = "default_td")]
    pub trust_domain: String,
    pub nodes: Vec<TopoNode>,
    pub pods: Vec<TopoPod>,
    #[serde(default)]
    pub services: Vec<TopoService>,
    #[serde(default)]
    pub policies: Vec<Authorization>,
}

fn default_td() -> String {
    "cluster.local".into()
}

fn default_ns() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopoNode {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopoPod {
    pub name: String,
    pub node: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    #[serde(default = "default_ns")]
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl TopoPod {
    pub fn ambient(&self) -> bool {
        self.labels.get(AMBIENT_LABEL.0).map(String::as_str) == Some(AMBIENT_LABEL.1)
    }

    /// The workload uid in the generated config (ztunnel's recommended form).
    pub fn workload_uid(&self) -> String {
        format!("cluster1//v1/Pod/{}/{}", self.namespace, self.name)
    }

    /// The Kubernetes-style pod UID the lab's ZDS sends.
    pub fn pod_uid(&self) -> String {
        format!("lab-{}-{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopoService {
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub ports: HashMap<u16, u16>,
    pub selector: BTreeMap<String, String>,
}

impl TopoService {
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    fn selects(&self, p: &TopoPod) -> bool {
        p.namespace == self.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| p.labels.get(k) == Some(v))
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 40 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Topology {
    /// Parses and checks a topology file's text.
    pub fn parse(path: &str, text: &str) -> Result<Topology, LabError> {
        let t: Topology = serde_yaml_ng::from_str(text)
            .map_err(|e| LabError::Topology(format!("{path}: {e}")))?;
        t.validate()
            .map_err(|e| LabError::Topology(format!("{path}: {e}")))?;
        Ok(t)
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) || self.name.len() > 16 {
            return Err(format!("name {:?}: 1-16 letters, digits or '-'", self.name));
        }
        if self.nodes.is_empty() {
            return Err("nodes: at least one node".into());
        }
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            if !valid_name(&n.name) || n.name == "fabric" || !seen.insert(n.name.clone()) {
                return Err(format!("nodes: bad or duplicate name {:?}", n.name));
            }
        }
        for (i, p) in self.pods.iter().enumerate() {
            if !valid_name(&p.name) || !seen.insert(p.name.clone()) {
                return Err(format!(
                    "pods[{i}].name: bad or duplicate name {:?}",
                    p.name
                ));
            }
            if !self.nodes.iter().any(|n| n.name == p.node) {
                return Err(format!("pods[{i}].node: no node {:?}", p.node));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            let o = s.vip.octets();
            if o[0] != 198 || o[1] != 19 || o[2] == 255 {
                return Err(format!(
                    "services[{i}].vip: {} must be in 198.19.0.0/16 (not 198.19.255.0/24, the fabric)",
                    s.vip
                ));
            }
        }
        Ok(())
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node proxies' config: every pod a workload (HBONE if ambient), every service
    /// with the endpoints its selector picks, and the policies.
    pub fn local_config(&self, lab: &super::Lab) -> LocalConfig {
        let workloads = self
            .pods
            .iter()
            .filter_map(|p| {
                let lp = lab.pod(&p.name)?;
                let (ip, ip6) = (lp.ip, lp.ip6);
                let services = self
                    .services
                    .iter()
                    .filter(|s| s.selects(p))
                    .map(|s| (format!("{}/{}", s.namespace, s.hostname()), s.ports.clone()))
                    .collect();
                let yaml = format!(
                    "{{workloadIps: [\"{ip}\", \"{ip6}\"], namespace: {ns}, name: {name}}}",
                    ns = p.namespace,
                    name = p.name
                );
                let mut w: Workload = serde_yaml_ng::from_str(&yaml).ok()?;
                w.uid = p.workload_uid();
                w.service_account = p.service_account.clone();
                w.trust_domain = self.trust_domain.clone();
                w.protocol = if p.ambient() {
                    Protocol::HBONE
                } else {
                    Protocol::TCP
                };
                w.node = p.node.clone();
                w.workload_name = p.name.clone();
                w.workload_type = "pod".into();
                w.cluster_id = "Kubernetes".into();
                w.canonical_name = p
                    .labels
                    .get("app")
                    .cloned()
                    .unwrap_or_else(|| p.name.clone());
                w.services = services;
                Some(w)
            })
            .collect();
        let services = self
            .services
            .iter()
            .map(|s| Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                hostname: s.hostname(),
                vips: vec![NetworkAddress {
                    address: s.vip.into(),
                }],
                ports: s.ports.clone(),
                endpoints: Default::default(),
                subject_alt_names: vec![],
                waypoint: None,
                load_balancer: None,
                ip_families: None,
                canonical: false,
                cidr_vips: vec![],
            })
            .collect();
        LocalConfig {
            workloads,
            services,
            policies: self.policies.clone(),
        }
    }

    /// The ambient pods of a node, as its ZDS server enrols them.
    pub fn zds_pods(&self, node: &str, lab: &super::Lab) -> Vec<super::zds_server::ZdsPod> {
        self.pods
            .iter()
            .filter(|p| p.node == node && p.ambient())
            .filter_map(|p| {
                Some(super::zds_server::ZdsPod {
                    uid: p.pod_uid(),
                    info: WorkloadInfo {
                        name: p.name.clone(),
                        namespace: p.namespace.clone(),
                        service_account: p.service_account.clone(),
                    },
                    netns: lab.pod(&p.name)?.netns_path(),
                })
            })
            .collect()
    }
}

/// The demo's topology: 2 nodes, client and server pods on each, a service with two
/// endpoints, one pod out of the mesh, one DENY policy.
pub const DEMO: &str = include_str!("demo.yaml");

/// The benchmarks' topology: client and server on node-a, a server on node-b.
pub const BENCH: &str = include_str!("bench.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_topology_parses() {
        let t = Topology::parse("demo.yaml", DEMO).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert!(t.pods.iter().any(|p| !p.ambient()));
        assert_eq!(t.policies.len(), 1);
    }

    #[test]
    fn bad_topologies_are_explained() {
        let e = Topology::parse(
            "t.yaml",
            "name: x\nnodes: [{name: a}]\npods: [{name: p, node: b}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pods[0].node: no node \"b\""), "{e}");
        let e = Topology::parse(
            "t.yaml",
            "name: x\nnodes: [{name: a}]\npods: []\nservices: [{name: s, vip: 10.0.0.1, ports: {80: 80}, selector: {app: x}}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("198.19.0.0/16"), "{e}");
        assert!(Topology::parse("t.yaml", "name: x\nnodes: []\npods: []").is_err());
        assert!(Topology::parse("t.yaml", "name: x\nnodez: []").is_err());
    }
}
