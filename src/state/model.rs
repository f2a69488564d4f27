//! The config model: workloads and services in ztunnel's local-config shape (camelCase
//! fields, `network/ip` strings, `Healthy`/`HBONE` enum spellings).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::Identity;

/// How a workload receives mesh traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)] // ztunnel's YAML spells these upper case
pub enum Protocol {
    #[default]
    TCP,
    HBONE,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    #[default]
    Standard,
    HostNetwork,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub subzone: String,
}

/// An address on a network, written `network/ip` (`/198.19.0.1` on the default network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetworkAddress {
    pub address: IpAddr,
}

impl FromStr for NetworkAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (_network, ip) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("{s:?} is not <network>/<ip>"))?;
        let address = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
        Ok(NetworkAddress { address })
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.address)
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetworkAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a waypoint or gateway is: an address, or a service `namespace/hostname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayDestination {
    Address(NetworkAddress),
    Hostname { namespace: String, hostname: String },
}

impl<'de> Deserialize<'de> for GatewayDestination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(a) = s.parse::<NetworkAddress>() {
            return Ok(GatewayDestination::Address(a));
        }
        match s.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {
                Ok(GatewayDestination::Hostname {
                    namespace: ns.into(),
                    hostname: host.into(),
                })
            }
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is neither <network>/<ip> nor <namespace>/<hostname>"
            ))),
        }
    }
}

impl Serialize for GatewayDestination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GatewayDestination::Address(a) => s.collect_str(a),
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => s.collect_str(&format_args!("{namespace}/{hostname}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    pub hbone_mtls_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationTunnel {
    pub protocol: String,
    #[serde(default)]
    pub port: Option<u16>,
}

/// A workload (a pod), as a `workloads` entry of ztunnel's local config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub workload_ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_gateway: Option<GatewayAddress>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub network_mode: NetworkMode,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub workload_name: String,
    #[serde(default)]
    pub workload_type: String,
    #[serde(default)]
    pub canonical_name: String,
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub native_tunnel: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_tunnel: Option<ApplicationTunnel>,
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    #[serde(default)]
    pub status: HealthStatus,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub locality: Locality,
    #[serde(default = "one")]
    pub capacity: u32,
    /// Service `namespace/hostname` → {service port: target port}. Makes this workload an
    /// endpoint of those services.
    #[serde(default)]
    pub services: HashMap<String, HashMap<u16, u16>>,
}

fn one() -> u32 {
    1
}

impl Workload {
    /// Checks the fields a workload cannot do without and fills the xDS defaults (empty
    /// trust domain → `cluster.local`, empty service account → `default`). `i` is its
    /// position, for the messages.
    pub fn apply_defaults(&mut self, i: usize) -> Vec<super::StateError> {
        let entry = format!("workloads[{i}] (uid {:?}, name {:?})", self.uid, self.name);
        let err = |field, reason: &str| super::StateError {
            entry: entry.clone(),
            field,
            reason: reason.to_string(),
        };
        let mut errs = Vec::new();
        if self.uid.is_empty() {
            errs.push(err("uid", "must be set"));
        }
        if self.namespace.is_empty() {
            errs.push(err("namespace", "must be set"));
        }
        if self.trust_domain.is_empty() {
            self.trust_domain = super::DEFAULT_TRUST_DOMAIN.into();
        }
        if self.service_account.is_empty() {
            self.service_account = "default".into();
        }
        let names = [
            ("uid", &self.uid),
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("trustDomain", &self.trust_domain),
            ("serviceAccount", &self.service_account),
            ("workloadName", &self.workload_name),
            ("workloadType", &self.workload_type),
            ("canonicalName", &self.canonical_name),
            ("canonicalRevision", &self.canonical_revision),
            ("clusterId", &self.cluster_id),
            ("locality.region", &self.locality.region),
            ("locality.zone", &self.locality.zone),
            ("locality.subzone", &self.locality.subzone),
        ];
        for (field, value) in names {
            if let Some(reason) = control_char(value) {
                errs.push(err(field, &reason));
            }
        }
        for key in self.services.keys() {
            if key.split_once('/').is_none() {
                errs.push(super::StateError {
                    entry: entry.clone(),
                    field: "services",
                    reason: format!("key {key:?} is not <namespace>/<hostname>"),
                });
            }
        }
        errs
    }

    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEndpoint {
    pub workload_uid: String,
    #[serde(default)]
    pub port: HashMap<u16, u16>,
    #[serde(default)]
    pub status: HealthStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub routing_preferences: Vec<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub health_policy: Option<String>,
}

/// A service, as a `services` entry of ztunnel's local config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    /// Service port → target port (0: use the endpoint's own mapping).
    pub ports: HashMap<u16, u16>,
    #[serde(default)]
    pub endpoints: HashMap<String, ServiceEndpoint>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_families: Option<String>,
    #[serde(default)]
    pub canonical: bool,
    /// Accepted for compatibility with newer ztunnel configs; not used yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidr_vips: Vec<String>,
}

impl Service {
    /// Checks the names of a config file's service (`i`: its position, for the messages).
    pub fn check(&self, i: usize) -> Vec<super::StateError> {
        let entry = format!("services[{i}] ({}/{})", self.namespace, self.hostname);
        [
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("hostname", &self.hostname),
        ]
        .into_iter()
        .filter_map(|(field, value)| {
            control_char(value).map(|reason| super::StateError {
                entry: entry.clone(),
                field,
                reason,
            })
        })
        .collect()
    }

    /// `namespace/hostname`: the key workloads use in their `services` map.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// The target port for `svc_port` on `ep`: the endpoint's own mapping wins, then the
    /// service's; `None` if neither names a non-zero port.
    pub fn target_port(&self, ep_ports: &HashMap<u16, u16>, svc_port: u16) -> Option<u16> {
        match ep_ports.get(&svc_port) {
            Some(&p) if p != 0 => Some(p),
            _ => match self.ports.get(&svc_port) {
                Some(&p) if p != 0 => Some(p),
                _ => None,
            },
        }
    }

    /// The identities the service's SANs name (those that parse as SPIFFE ids).
    pub fn san_identities(&self) -> Vec<Identity> {
        self.subject_alt_names
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

/// Why `name` cannot be used, if it holds an ASCII control character: names go into HBONE
/// CONNECT headers (`forwarded: …;host=<hostname>`, `baggage`), which cannot carry one, so
/// every connection to or from the entry would fail.
fn control_char(name: &str) -> Option<String> {
    name.chars().find(char::is_ascii_control).map(|c| {
        format!(
            "contains the control character U+{:04X}: names go into HBONE headers, which \
             cannot carry it",
            u32::from(c)
        )
    })
}
