//! The lab's topology file: nodes, namespaces' labels, pods (namespace, service account,
//! labels), services (VIP, ports, selector, labels), waypoints, policies (ztunnel's format) and
//! Kubernetes resources for the waypoints (kept as text). It becomes network namespaces
//! (`Lab`), the node proxies' config (ztunnel's local YAML, with `waypoint` fields resolved as
//! istiod does, see [`super::waypoints`]) and each node's ZDS enrolments.
//!
//! Each waypoint is also, once parsed, a pod and a Service like istiod's waypoint Deployment
//! makes: the lab builds its netns like any pod's (never captured) and the config lists it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde::Deserialize;

use super::LabError;
use super::waypoints::{
    self, FromNamespaces, GATEWAY_NAME_LABEL, HBONE_MTLS_PORT, MANAGED_LABEL, Resolution,
    TargetKind, WaypointFor,
};
use crate::config::LocalConfig;
use crate::identity::Identity;
use crate::inpod::zds::WorkloadInfo;
use crate::policy::Authorization;
use crate::state::{GatewayAddress, NetworkAddress, Protocol, Service, Workload};

/// The label that puts a pod in the mesh (istio-cni's default selector).
pub const AMBIENT_LABEL: (&str, &str) = ("istio.io/dataplane-mode", "ambient");

/// The label istiod's waypoint pods carry so that istio-cni never captures them.
pub const DATAPLANE_NONE_LABEL: (&str, &str) = ("istio.io/dataplane-mode", "none");

/// A whole topology file.
///
/// ```yaml
/// name: rmdemo                 # prefix of the lab's netns names, 1-16 letters/digits/'-'
/// trustDomain: cluster.local   # default cluster.local
/// nodes: [{name: node-a}]
/// namespaces:                  # optional: only namespaces whose labels matter
/// - {name: default, labels: {istio.io/use-waypoint: waypoint}}
/// pods:
/// - {name: client, node: node-a, labels: {istio.io/dataplane-mode: ambient}}
/// services:
/// - {name: echo, vip: 198.19.10.1, ports: {80: 8080}, selector: {app: echo},
///    labels: {istio.io/use-waypoint: none}}
/// waypoints:                   # optional
/// - {name: waypoint, node: node-a, for: service, vip: 198.19.0.100}
/// policies: []                 # ztunnel's local-config policies
/// resources: |                 # optional Kubernetes YAML for the waypoints, not parsed here
///   apiVersion: gateway.networking.k8s.io/v1
///   kind: HTTPRoute
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topology {
    /// Prefix of every namespace the lab makes (`<name>-<node|pod>`).
    pub name: String,
    #[serde(default = "default_td")]
    pub trust_domain: String,
    pub nodes: Vec<TopoNode>,
    /// Labels of Kubernetes namespaces (optional). A namespace that pods or services use needs
    /// no entry here; one is only needed to give it labels (`istio.io/use-waypoint`,
    /// `istio.io/use-waypoint-namespace`).
    #[serde(default)]
    pub namespaces: Vec<TopoNamespace>,
    /// The pods; once parsed, also one pod per waypoint (after the file's pods).
    pub pods: Vec<TopoPod>,
    /// The services; once parsed, also one Service per waypoint (after the file's services).
    #[serde(default)]
    pub services: Vec<TopoService>,
    /// Waypoints (optional): each one a `ringmesh waypoint` in its own pod.
    #[serde(default)]
    pub waypoints: Vec<TopoWaypoint>,
    #[serde(default)]
    pub policies: Vec<Authorization>,
    /// Kubernetes YAML for the waypoints (HTTPRoute, GRPCRoute, Service, …), kept as text for
    /// the lab's control plane; empty when absent. Not parsed or checked here.
    #[serde(default)]
    pub resources: String,
}

/// A Kubernetes namespace's labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopoNamespace {
    pub name: String,
    /// Read for waypoint binding only (`istio.io/use-waypoint`,
    /// `istio.io/use-waypoint-namespace`); `istio.io/dataplane-mode` is refused here, as the
    /// lab enrols pods by their own label.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A waypoint: a Gateway of class `istio-waypoint`, its pod and its Service.
///
/// Once parsed the topology also has a pod named `name` on `node` (namespace `namespace`,
/// service account `name`, labels `istio.io/dataplane-mode: none`,
/// `gateway.networking.k8s.io/gateway-name: <name>` and `gateway.istio.io/managed:
/// istio.io-mesh-controller`) and a Service `name` with VIP `vip`, ports {15008: 15008},
/// selecting that pod by its `gateway-name` label.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopoWaypoint {
    /// The Gateway's name; also its pod's name, service account and Service name.
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    /// The node its pod runs on.
    pub node: String,
    /// `istio.io/waypoint-for`: `service` (default), `workload`, `all` or `none`.
    #[serde(rename = "for", default)]
    pub traffic_type: WaypointFor,
    /// The waypoint Service's VIP, in 198.19.0.0/16 like every service's.
    pub vip: Ipv4Addr,
    /// Its listener's `allowedRoutes.namespaces.from`: `Same` (default: only objects in
    /// `namespace` may use it) or `All`.
    #[serde(default)]
    pub from_namespaces: FromNamespaces,
}

impl TopoWaypoint {
    /// Its pod's name (the Gateway's name).
    pub fn pod_name(&self) -> &str {
        &self.name
    }

    /// Its service account (named after the Gateway, as istiod's deployment does).
    pub fn service_account(&self) -> &str {
        &self.name
    }

    /// Its Service's hostname, `<name>.<namespace>.svc.cluster.local`.
    pub fn hostname(&self) -> String {
        waypoints::waypoint_hostname(&self.namespace, &self.name)
    }

    /// What objects bound to it get as `waypoint`.
    pub fn gateway_address(&self) -> GatewayAddress {
        waypoints::gateway_address(&self.namespace, &self.name)
    }

    /// Its SPIFFE identity in `trust_domain`.
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, self.service_account())
    }

    fn pod(&self) -> TopoPod {
        TopoPod {
            name: self.name.clone(),
            node: self.node.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account().to_string(),
            labels: self.object_labels([DATAPLANE_NONE_LABEL]),
        }
    }

    fn service(&self) -> TopoService {
        TopoService {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            vip: self.vip,
            ports: HashMap::from([(HBONE_MTLS_PORT, HBONE_MTLS_PORT)]),
            selector: BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), self.name.clone())]),
            labels: self.object_labels([]),
        }
    }

    fn object_labels<const N: usize>(&self, extra: [(&str, &str); N]) -> BTreeMap<String, String> {
        [(GATEWAY_NAME_LABEL, self.name.as_str()), MANAGED_LABEL]
            .into_iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// Which waypoint one service or pod got, and why (for the lab's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointBinding {
    pub kind: TargetKind,
    pub namespace: String,
    pub name: String,
    pub resolution: Resolution,
}

impl std::fmt::Display for WaypointBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{}: {}",
            self.kind, self.namespace, self.name, self.resolution
        )
    }
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
    /// `istio.io/dataplane-mode: ambient` enrols it; `istio.io/use-waypoint` (and
    /// `istio.io/use-waypoint-namespace`) bind traffic to its pod IPs to a waypoint.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl TopoPod {
    pub fn ambient(&self) -> bool {
        self.labels.get(AMBIENT_LABEL.0).map(String::as_str) == Some(AMBIENT_LABEL.1)
    }

    /// Whether this is a waypoint's pod (made by the lab from `waypoints`).
    pub fn is_waypoint(&self) -> bool {
        waypoints::is_waypoint(&self.labels)
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
    /// The Service's own labels (optional): `istio.io/use-waypoint` (and
    /// `istio.io/use-waypoint-namespace`) bind traffic to its VIP to a waypoint.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
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

/// A service VIP must be in 198.19.0.0/16, outside the fabric's 198.19.255.0/24.
fn check_vip(field: &str, vip: Ipv4Addr) -> Result<(), String> {
    let o = vip.octets();
    if o[0] != 198 || o[1] != 19 || o[2] == 255 {
        return Err(format!(
            "{field}: {vip} must be in 198.19.0.0/16 (not 198.19.255.0/24, the fabric)"
        ));
    }
    Ok(())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 40 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Topology {
    /// Parses and checks a topology file's text, and adds each waypoint's pod and Service.
    pub fn parse(path: &str, text: &str) -> Result<Topology, LabError> {
        let mut t: Topology = serde_yaml_ng::from_str(text)
            .map_err(|e| LabError::Topology(format!("{path}: {e}")))?;
        t.validate()
            .map_err(|e| LabError::Topology(format!("{path}: {e}")))?;
        let (pods, services): (Vec<_>, Vec<_>) =
            t.waypoints.iter().map(|w| (w.pod(), w.service())).unzip();
        t.pods.extend(pods);
        t.services.extend(services);
        Ok(t)
    }

    /// The waypoint named `name` in `namespace`.
    pub fn waypoint(&self, namespace: &str, name: &str) -> Option<&TopoWaypoint> {
        self.waypoints
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// The pod the lab made for waypoint `w`.
    pub fn waypoint_pod(&self, w: &TopoWaypoint) -> Option<&TopoPod> {
        self.pods
            .iter()
            .find(|p| p.is_waypoint() && p.name == w.name && p.namespace == w.namespace)
    }

    /// The labels of Kubernetes namespace `namespace` (none if it has no `namespaces` entry).
    pub fn namespace_labels(&self, namespace: &str) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.namespaces
            .iter()
            .find(|n| n.name == namespace)
            .map_or(&NONE, |n| &n.labels)
    }

    /// The waypoint of service `s` (traffic to its VIPs), or why it has none.
    pub fn service_waypoint(&self, s: &TopoService) -> Resolution {
        waypoints::resolve(
            &s.labels,
            &s.namespace,
            self.namespace_labels(&s.namespace),
            &self.waypoints,
            TargetKind::Service,
        )
    }

    /// The waypoint of pod `p` (traffic to its pod IPs), or why it has none.
    pub fn workload_waypoint(&self, p: &TopoPod) -> Resolution {
        waypoints::resolve(
            &p.labels,
            &p.namespace,
            self.namespace_labels(&p.namespace),
            &self.waypoints,
            TargetKind::Workload,
        )
    }

    /// Every service's and pod's waypoint resolution, services first, in file order (for
    /// the lab's log).
    pub fn waypoint_bindings(&self) -> Vec<WaypointBinding> {
        let services = self.services.iter().map(|s| WaypointBinding {
            kind: TargetKind::Service,
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            resolution: self.service_waypoint(s),
        });
        let pods = self.pods.iter().map(|p| WaypointBinding {
            kind: TargetKind::Workload,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            resolution: self.workload_waypoint(p),
        });
        services.chain(pods).collect()
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
            check_vip(&format!("services[{i}].vip"), s.vip)?;
        }
        let mut namespaces = std::collections::HashSet::new();
        for (i, n) in self.namespaces.iter().enumerate() {
            if n.name.is_empty() || !namespaces.insert(n.name.as_str()) {
                return Err(format!(
                    "namespaces[{i}].name: empty or duplicate name {:?}",
                    n.name
                ));
            }
            if n.labels.contains_key(AMBIENT_LABEL.0) {
                return Err(format!(
                    "namespaces[{i}].labels: {} is not read from namespaces in the lab; \
                     label the pods instead",
                    AMBIENT_LABEL.0
                ));
            }
        }
        for (i, w) in self.waypoints.iter().enumerate() {
            let at = format!("waypoints[{i}]");
            if !valid_name(&w.name) || ["fabric", "istiod"].contains(&w.name.as_str()) {
                return Err(format!(
                    "{at}.name: bad name {:?} (1-40 letters, digits or '-'; not fabric or istiod)",
                    w.name
                ));
            }
            if !seen.insert(w.name.clone()) {
                return Err(format!(
                    "{at}.name: {:?} is already a node, pod or waypoint (a waypoint is a pod \
                     of that name)",
                    w.name
                ));
            }
            if !self.nodes.iter().any(|n| n.name == w.node) {
                return Err(format!("{at}.node: no node {:?}", w.node));
            }
            check_vip(&format!("{at}.vip"), w.vip)?;
            if let Some(s) = self
                .services
                .iter()
                .find(|s| s.namespace == w.namespace && s.name == w.name)
            {
                return Err(format!(
                    "{at}.name: service {}/{} already exists (a waypoint is also a Service \
                     of its name)",
                    s.namespace, s.name
                ));
            }
            let other_vip = self
                .services
                .iter()
                .map(|s| (format!("service {}/{}", s.namespace, s.name), s.vip))
                .chain(
                    self.waypoints[..i]
                        .iter()
                        .map(|o| (format!("waypoint {}/{}", o.namespace, o.name), o.vip)),
                )
                .find(|(_, vip)| *vip == w.vip);
            if let Some((owner, _)) = other_vip {
                return Err(format!("{at}.vip: {} is already {owner}'s VIP", w.vip));
            }
            let impostor = self.pods.iter().position(|p| {
                p.namespace == w.namespace && p.labels.get(GATEWAY_NAME_LABEL) == Some(&w.name)
            });
            if let Some(k) = impostor {
                return Err(format!(
                    "pods[{k}].labels: {GATEWAY_NAME_LABEL}: {} would make it a pod of \
                     {at}; only the lab sets that label",
                    w.name
                ));
            }
        }
        Ok(())
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node proxies' config: every pod a workload (HBONE if ambient), every service
    /// with the endpoints its selector picks, each one's `waypoint` as istiod resolves it
    /// ([`Topology::service_waypoint`], [`Topology::workload_waypoint`]), and the policies.
    pub fn local_config(&self, lab: &super::Lab) -> LocalConfig {
        self.local_config_with(|name| lab.pod(name))
    }

    /// [`Topology::local_config`] with the pods' addresses from `pod` (by pod name).
    pub fn local_config_with<'a>(
        &self,
        pod: impl Fn(&str) -> Option<&'a super::LabPod>,
    ) -> LocalConfig {
        let workloads = self
            .pods
            .iter()
            .filter_map(|p| {
                let lp = pod(&p.name)?;
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
                w.waypoint = self.workload_waypoint(p).address().cloned();
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
                waypoint: self.service_waypoint(s).address().cloned(),
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

    #[test]
    fn bench_has_no_waypoints_and_no_bindings() {
        let t = Topology::parse("bench.yaml", BENCH).unwrap();
        assert!(t.waypoints.is_empty() && t.namespaces.is_empty());
        assert!(t.resources.is_empty());
        assert!(t.pods.iter().all(|p| !p.is_waypoint()));
        assert!(
            t.waypoint_bindings()
                .iter()
                .all(|b| b.resolution == Resolution::NoLabel)
        );
    }

    /// The demo's waypoint (namespace l7, for all traffic) takes services echo and echo-split
    /// and pods echo-v1 and echo-v2; nothing in namespace default uses a waypoint.
    #[test]
    fn demo_binds_only_its_l7_objects_to_its_waypoint() {
        let t = Topology::parse("demo.yaml", DEMO).unwrap();
        assert_eq!(t.waypoints.len(), 1);
        let w = t.waypoint("l7", "waypoint").unwrap();
        assert_eq!(w.traffic_type, WaypointFor::All);
        assert!(t.resources.contains("kind: HTTPRoute"));
        let mut bound: Vec<(TargetKind, &str)> = Vec::new();
        let bindings = t.waypoint_bindings();
        for b in &bindings {
            match &b.resolution {
                Resolution::Bound { waypoint, .. } => {
                    assert_eq!(
                        (b.namespace.as_str(), waypoint.as_str()),
                        ("l7", "l7/waypoint"),
                        "{b}"
                    );
                    bound.push((b.kind, b.name.as_str()));
                }
                Resolution::NoLabel | Resolution::IsWaypoint => {}
                other => panic!("{b}: {other:?}"),
            }
        }
        assert_eq!(
            bound,
            [
                (TargetKind::Service, "echo"),
                (TargetKind::Service, "echo-split"),
                (TargetKind::Workload, "echo-v1"),
                (TargetKind::Workload, "echo-v2"),
            ]
        );
    }

    /// Two nodes; namespace `default` uses `waypoint` (for all traffic); `echo` opts its
    /// service out, `pinned` names `svc-wp`; pod `server-b` opts out, `legacy` names a
    /// missing waypoint.
    const WAYPOINTS: &str = r##"
name: wp
nodes: [{name: node-a}, {name: node-b}]
namespaces:
- {name: default, labels: {istio.io/use-waypoint: waypoint}}
pods:
- {name: client, node: node-a, labels: {istio.io/dataplane-mode: ambient, app: client}}
- {name: server-a, node: node-a, serviceAccount: echo, labels: {istio.io/dataplane-mode: ambient, app: echo}}
- {name: server-b, node: node-b, serviceAccount: echo, labels: {istio.io/dataplane-mode: ambient, app: echo, istio.io/use-waypoint: none}}
- {name: legacy, node: node-b, labels: {app: legacy, istio.io/use-waypoint: missing}}
services:
- {name: echo, vip: 198.19.10.1, ports: {80: 8080}, selector: {app: echo}, labels: {istio.io/use-waypoint: "#none"}}
- {name: pinned, vip: 198.19.10.2, ports: {80: 8080}, selector: {app: echo}, labels: {istio.io/use-waypoint: svc-wp}}
- {name: plain, vip: 198.19.10.3, ports: {80: 8080}, selector: {app: client}}
waypoints:
- {name: waypoint, node: node-a, for: all, vip: 198.19.0.100}
- {name: svc-wp, node: node-b, vip: 198.19.0.101}
resources: |
  apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
"##;

    fn lab_pods(t: &Topology) -> Vec<super::super::LabPod> {
        t.pods
            .iter()
            .enumerate()
            .map(|(k, p)| super::super::LabPod {
                name: p.name.clone(),
                netns: format!("wp-{}", p.name),
                node: t.node_index(&p.node).unwrap(),
                ip: Ipv4Addr::new(198, 18, 1, k as u8 + 2),
                ip6: super::super::node_ip6(1, k as u16 + 2),
                captured: p.ambient(),
            })
            .collect()
    }

    fn addr(ns: &str, name: &str) -> Option<GatewayAddress> {
        Some(waypoints::gateway_address(ns, name))
    }

    #[test]
    fn waypoints_become_a_pod_and_a_service() {
        let t = Topology::parse("t.yaml", WAYPOINTS).unwrap();
        assert_eq!(t.pods.len(), 6);
        assert_eq!(t.services.len(), 5);
        assert!(t.resources.contains("kind: HTTPRoute"));
        let w = t.waypoint("default", "waypoint").unwrap();
        assert_eq!(w.traffic_type, WaypointFor::All);
        assert_eq!(w.from_namespaces, FromNamespaces::Same);
        assert_eq!(
            t.waypoint("default", "svc-wp").unwrap().traffic_type,
            WaypointFor::Service
        );
        assert_eq!(w.hostname(), "waypoint.default.svc.cluster.local");
        assert_eq!(
            w.identity(&t.trust_domain).to_string(),
            "spiffe://cluster.local/ns/default/sa/waypoint"
        );
        let pod = t.waypoint_pod(w).unwrap();
        assert_eq!(
            (pod.name.as_str(), pod.node.as_str()),
            ("waypoint", "node-a")
        );
        assert_eq!(pod.service_account, "waypoint");
        assert!(pod.is_waypoint() && !pod.ambient());
        assert_eq!(pod.labels["istio.io/dataplane-mode"], "none");
        assert_eq!(pod.labels[GATEWAY_NAME_LABEL], "waypoint");
        assert!(
            t.zds_pods("node-a", &dummy_lab()).is_empty(),
            "never enrolled"
        );
        let svc = t.services.iter().find(|s| s.name == "waypoint").unwrap();
        assert_eq!(svc.vip, Ipv4Addr::new(198, 19, 0, 100));
        assert_eq!(svc.ports, HashMap::from([(15008, 15008)]));
        let selected: Vec<_> = t
            .pods
            .iter()
            .filter(|p| svc.selects(p))
            .map(|p| &p.name)
            .collect();
        assert_eq!(selected, ["waypoint"]);
    }

    fn dummy_lab() -> super::super::Lab {
        // No namespaces: dropping it runs no command.
        super::super::Lab {
            prefix: "wp".into(),
            nodes: Vec::new(),
            pods: Vec::new(),
            fabric: None,
            namespaces: Vec::new(),
        }
    }

    #[test]
    fn local_config_carries_each_objects_waypoint() {
        let t = Topology::parse("t.yaml", WAYPOINTS).unwrap();
        let pods = lab_pods(&t);
        let cfg = t.local_config_with(|n| pods.iter().find(|p| p.name == n));
        let svc = |n: &str| cfg.services.iter().find(|s| s.name == n).unwrap();
        let wl = |n: &str| cfg.workloads.iter().find(|w| w.name == n).unwrap();
        // Services: `#none` blocks the namespace, own label wins, else the namespace's.
        assert_eq!(svc("echo").waypoint, None);
        assert_eq!(svc("pinned").waypoint, addr("default", "svc-wp"));
        assert_eq!(svc("plain").waypoint, addr("default", "waypoint"));
        assert_eq!(svc("waypoint").waypoint, None);
        assert_eq!(svc("svc-wp").waypoint, None);
        // Workloads follow their pod's labels, not their services': server-a is behind the
        // opted-out `echo` and still gets the namespace's waypoint.
        assert_eq!(wl("client").waypoint, addr("default", "waypoint"));
        assert_eq!(wl("server-a").waypoint, addr("default", "waypoint"));
        assert_eq!(wl("server-b").waypoint, None);
        assert_eq!(wl("legacy").waypoint, None, "missing waypoint: no fallback");
        // The waypoint's pod: a plain-TCP workload, its Service's endpoint, no waypoint.
        let w = wl("waypoint");
        assert_eq!(w.protocol, Protocol::TCP);
        assert_eq!(w.waypoint, None);
        assert_eq!(w.service_account, "waypoint");
        assert_eq!(w.node, "node-a");
        assert_eq!(
            w.services.keys().collect::<Vec<_>>(),
            ["default/waypoint.default.svc.cluster.local"]
        );
        assert_eq!(wl("client").protocol, Protocol::HBONE);
        // svc-wp is for services only: a pod naming it gets none.
        let why = t
            .waypoint_bindings()
            .into_iter()
            .find(|b| b.name == "legacy")
            .unwrap();
        assert_eq!(
            why.resolution,
            Resolution::WaypointNotFound("default/missing".into())
        );
        assert!(
            why.to_string()
                .starts_with("workload default/legacy: no waypoint"),
            "{why}"
        );
        // The generated YAML is what ztunnel reads back.
        let yaml = crate::config::to_yaml(&cfg);
        assert!(
            yaml.contains("default/waypoint.default.svc.cluster.local"),
            "{yaml}"
        );
        let back: LocalConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back.services.len(), 5);
    }

    #[test]
    fn a_workload_only_waypoint_binds_pods_and_not_services() {
        let text = WAYPOINTS.replace("for: all", "for: workload");
        let t = Topology::parse("t.yaml", &text).unwrap();
        let plain = t.services.iter().find(|s| s.name == "plain").unwrap();
        assert!(matches!(
            t.service_waypoint(plain),
            Resolution::UnsupportedTrafficType {
                kind: TargetKind::Service,
                ..
            }
        ));
        let client = t.pods.iter().find(|p| p.name == "client").unwrap();
        assert_eq!(
            t.workload_waypoint(client).address().cloned(),
            addr("default", "waypoint")
        );
    }

    fn parse_err(text: &str) -> String {
        Topology::parse("t.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn bad_waypoints_are_explained() {
        let base = "name: x\nnodes: [{name: a}]\npods: [{name: p, node: a}]\n";
        let e = parse_err(&format!(
            "{base}waypoints: [{{name: p, node: a, vip: 198.19.0.9}}]"
        ));
        assert!(
            e.contains("waypoints[0].name") && e.contains("already"),
            "{e}"
        );
        let e = parse_err(&format!(
            "{base}waypoints: [{{name: a, node: a, vip: 198.19.0.9}}]"
        ));
        assert!(e.contains("waypoints[0].name"), "{e}");
        let e = parse_err(&format!(
            "{base}waypoints: [{{name: w, node: a, vip: 198.19.0.9}}, {{name: w, node: a, vip: 198.19.0.8}}]"
        ));
        assert!(e.contains("waypoints[1].name"), "{e}");
        let e = parse_err(&format!(
            "{base}waypoints: [{{name: w, node: b, vip: 198.19.0.9}}]"
        ));
        assert!(e.contains("waypoints[0].node: no node \"b\""), "{e}");
        let e = parse_err(&format!(
            "{base}waypoints: [{{name: w, node: a, for: services, vip: 198.19.0.9}}]"
        ));
        assert!(e.contains("waypoints[0]: `for`"), "{e}");
        assert!(e.contains("service, workload, all, none"), "{e}");
        let e = parse_err(&format!(
            "{base}waypoints: [{{name: w, node: a, vip: 10.0.0.1}}]"
        ));
        assert!(
            e.contains("waypoints[0].vip") && e.contains("198.19.0.0/16"),
            "{e}"
        );
        let e = parse_err(&format!(
            "{base}services: [{{name: s, vip: 198.19.0.9, ports: {{80: 80}}, selector: {{app: x}}}}]\n\
             waypoints: [{{name: w, node: a, vip: 198.19.0.9}}]"
        ));
        assert!(e.contains("already service default/s's VIP"), "{e}");
        let e = parse_err(&format!(
            "{base}services: [{{name: w, vip: 198.19.0.8, ports: {{80: 80}}, selector: {{app: x}}}}]\n\
             waypoints: [{{name: w, node: a, vip: 198.19.0.9}}]"
        ));
        assert!(e.contains("service default/w already exists"), "{e}");
        let e = parse_err(&format!(
            "{base}waypoints: [{{name: w, node: a, vip: 198.19.0.9, fromNamespaces: Selector}}]"
        ));
        assert!(e.contains("Same or All"), "{e}");
        let e = parse_err(&format!(
            "{base}waypoints: [{{name: w, node: a, vip: 198.19.0.9, port: 1}}]"
        ));
        assert!(e.contains("port"), "{e}");
        let e = parse_err(
            "name: x\nnodes: [{name: a}]\npods: [{name: p, node: a, labels: {gateway.networking.k8s.io/gateway-name: w}}]\n\
             waypoints: [{name: w, node: a, vip: 198.19.0.9}]",
        );
        assert!(e.contains("pods[0].labels"), "{e}");
        // The same label in another namespace than the waypoint's is no clash.
        Topology::parse(
            "t.yaml",
            "name: x\nnodes: [{name: a}]\npods: [{name: p, node: a, namespace: other, labels: {gateway.networking.k8s.io/gateway-name: w}}]\n\
             waypoints: [{name: w, node: a, vip: 198.19.0.9}]",
        )
        .unwrap();
    }

    #[test]
    fn bad_namespaces_are_explained() {
        let base = "name: x\nnodes: [{name: a}]\npods: []\n";
        let e = parse_err(&format!("{base}namespaces: [{{name: d}}, {{name: d}}]"));
        assert!(e.contains("namespaces[1].name"), "{e}");
        let e = parse_err(&format!(
            "{base}namespaces: [{{name: d, labels: {{istio.io/dataplane-mode: ambient}}}}]"
        ));
        assert!(
            e.contains("namespaces[0].labels") && e.contains("label the pods"),
            "{e}"
        );
        let t = Topology::parse(
            "t.yaml",
            &format!("{base}namespaces: [{{name: d, labels: {{k: v}}}}]"),
        )
        .unwrap();
        assert_eq!(t.namespace_labels("d")["k"], "v");
        assert!(t.namespace_labels("elsewhere").is_empty());
    }
}
