//! The config model → Workload API / Authorization API resources, as istiod names and
//! versions them: a workload under its uid, a service under `namespace/hostname`, a policy
//! under `namespace/name`; the version is a hash of the encoded resource, so it is the same
//! for the same content across restarts (istiod does the same with xxhash). The exact
//! inverse of `xds::convert`, which the round-trip test holds it to.

use std::collections::BTreeMap;
use std::net::IpAddr;

use prost::Message;

use crate::config::LocalConfig;
use crate::policy::{self, Authorization};
use crate::proto::{self, security as pb_sec, workload as pb};
use crate::state::{
    GatewayAddress, GatewayDestination, HealthStatus, NetworkMode, Protocol, Service, Workload,
};

/// One resource as served: version and encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub version: String,
    pub bytes: Vec<u8>,
}

/// Type URL → resource name → resource.
pub type Resources = BTreeMap<String, BTreeMap<String, Served>>;

fn served(bytes: Vec<u8>) -> Served {
    Served {
        version: format!("{:016x}", fnv1a(&bytes)),
        bytes,
    }
}

/// FNV-1a, 64 bit: a stable content hash for versions.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Every resource of a config.
pub fn resources(cfg: &LocalConfig) -> Resources {
    let mut addr = BTreeMap::new();
    for w in &cfg.workloads {
        let a = pb::Address {
            r#type: Some(pb::address::Type::Workload(workload(w))),
        };
        addr.insert(w.uid.clone(), served(a.encode_to_vec()));
    }
    for s in &cfg.services {
        let a = pb::Address {
            r#type: Some(pb::address::Type::Service(service(s))),
        };
        addr.insert(s.key(), served(a.encode_to_vec()));
    }
    let mut authz = BTreeMap::new();
    for p in &cfg.policies {
        authz.insert(p.key(), served(authorization(p).encode_to_vec()));
    }
    let mut r = Resources::new();
    r.insert(proto::ADDRESS_TYPE.to_string(), addr);
    r.insert(proto::AUTHORIZATION_TYPE.to_string(), authz);
    r
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn gateway(g: &Option<GatewayAddress>) -> Option<pb::GatewayAddress> {
    let g = g.as_ref()?;
    let destination = Some(match &g.destination {
        GatewayDestination::Address(a) => {
            pb::gateway_address::Destination::Address(pb::NetworkAddress {
                network: String::new(),
                address: ip_bytes(&a.address),
                length: None,
            })
        }
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => pb::gateway_address::Destination::Hostname(pb::NamespacedHostname {
            namespace: namespace.clone(),
            hostname: hostname.clone(),
        }),
    });
    Some(pb::GatewayAddress {
        destination,
        hbone_mtls_port: g.hbone_mtls_port as u32,
    })
}

fn ports(m: &std::collections::HashMap<u16, u16>) -> Vec<pb::Port> {
    let mut v: Vec<pb::Port> = m
        .iter()
        .map(|(&sp, &tp)| pb::Port {
            service_port: sp as u32,
            target_port: tp as u32,
            app_protocol: 0,
        })
        .collect();
    v.sort_by_key(|p| p.service_port);
    v
}

/// A workload as istiod sends it.
pub fn workload(w: &Workload) -> pb::Workload {
    let workload_type = match w.workload_type.as_str() {
        "cronjob" => pb::WorkloadType::Cronjob,
        "pod" => pb::WorkloadType::Pod,
        "job" => pb::WorkloadType::Job,
        _ => pb::WorkloadType::Deployment,
    };
    pb::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.workload_ips.iter().map(ip_bytes).collect(),
        hostname: w.hostname.clone(),
        network: w.network.clone(),
        tunnel_protocol: match w.protocol {
            Protocol::HBONE => pb::TunnelProtocol::Hbone,
            Protocol::TCP => pb::TunnelProtocol::None,
        } as i32,
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        waypoint: gateway(&w.waypoint),
        network_gateway: gateway(&w.network_gateway),
        node: w.node.clone(),
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        workload_type: workload_type as i32,
        workload_name: w.workload_name.clone(),
        native_tunnel: w.native_tunnel,
        application_tunnel: w
            .application_tunnel
            .as_ref()
            .map(|t| pb::ApplicationTunnel {
                protocol: if t.protocol == "PROXY" {
                    pb::application_tunnel::Protocol::Proxy
                } else {
                    pb::application_tunnel::Protocol::None
                } as i32,
                port: t.port.unwrap_or(0) as u32,
            }),
        services: w
            .services
            .iter()
            .map(|(k, m)| (k.clone(), pb::PortList { ports: ports(m) }))
            .collect(),
        authorization_policies: w.authorization_policies.clone(),
        status: match w.status {
            HealthStatus::Healthy => pb::WorkloadStatus::Healthy,
            HealthStatus::Unhealthy => pb::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: w.cluster_id.clone(),
        locality: Some(pb::Locality {
            region: w.locality.region.clone(),
            zone: w.locality.zone.clone(),
            subzone: w.locality.subzone.clone(),
        }),
        network_mode: match w.network_mode {
            NetworkMode::Standard => pb::NetworkMode::Standard,
            NetworkMode::HostNetwork => pb::NetworkMode::HostNetwork,
        } as i32,
        extensions: vec![],
        capacity: Some(w.capacity),
    }
}

/// A service as istiod sends it.
pub fn service(s: &Service) -> pb::Service {
    use pb::load_balancing::{HealthPolicy, Mode, Scope};
    let mut addresses: Vec<pb::NetworkAddress> = s
        .vips
        .iter()
        .map(|v| pb::NetworkAddress {
            network: String::new(),
            address: ip_bytes(&v.address),
            length: None,
        })
        .collect();
    for c in &s.cidr_vips {
        // "<network>/<ip>/<len>"
        let mut parts = c.rsplitn(3, '/');
        let (len, ip, net) = (parts.next(), parts.next(), parts.next());
        if let (Some(len), Some(ip), Some(net)) = (len, ip, net)
            && let (Ok(len), Ok(ip)) = (len.parse::<u32>(), ip.parse::<IpAddr>())
        {
            addresses.push(pb::NetworkAddress {
                network: net.to_string(),
                address: ip_bytes(&ip),
                length: Some(len),
            });
        }
    }
    let load_balancing = s.load_balancer.as_ref().map(|lb| pb::LoadBalancing {
        routing_preference: lb
            .routing_preferences
            .iter()
            .map(|p| match p.as_str() {
                "Region" => Scope::Region,
                "Zone" => Scope::Zone,
                "Subzone" => Scope::Subzone,
                "Node" => Scope::Node,
                "Cluster" => Scope::Cluster,
                "Network" => Scope::Network,
                _ => Scope::UnspecifiedScope,
            } as i32)
            .collect(),
        mode: match lb.mode.as_deref() {
            Some("Strict") => Mode::Strict,
            Some("Failover") => Mode::Failover,
            Some("Passthrough") => Mode::Passthrough,
            _ => Mode::UnspecifiedMode,
        } as i32,
        health_policy: match lb.health_policy.as_deref() {
            Some("AllowAll") => HealthPolicy::AllowAll,
            _ => HealthPolicy::OnlyHealthy,
        } as i32,
    });
    pb::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses,
        ports: ports(&s.ports),
        subject_alt_names: s.subject_alt_names.clone(),
        waypoint: gateway(&s.waypoint),
        load_balancing,
        ip_families: match s.ip_families.as_deref() {
            Some("IPv4") => pb::IpFamilies::Ipv4Only,
            Some("IPv6") => pb::IpFamilies::Ipv6Only,
            Some("Dual") => pb::IpFamilies::Dual,
            _ => pb::IpFamilies::Automatic,
        } as i32,
        extensions: vec![],
        canonical: s.canonical,
        ingress_use_waypoint: false,
        weighted_waypoints: vec![],
        visibility: 0,
    }
}

/// A policy as istiod sends it.
pub fn authorization(p: &Authorization) -> pb_sec::Authorization {
    let sm = |v: &[policy::StringMatch]| -> Vec<pb_sec::StringMatch> {
        use pb_sec::string_match::MatchType;
        v.iter()
            .map(|m| pb_sec::StringMatch {
                match_type: Some(match m {
                    policy::StringMatch::Exact(s) => MatchType::Exact(s.clone()),
                    policy::StringMatch::Prefix(s) => MatchType::Prefix(s.clone()),
                    policy::StringMatch::Suffix(s) => MatchType::Suffix(s.clone()),
                    policy::StringMatch::Presence() => MatchType::Presence(()),
                }),
            })
            .collect()
    };
    let nets = |v: &[ipnet::IpNet]| -> Vec<pb_sec::Address> {
        v.iter()
            .map(|n| pb_sec::Address {
                address: ip_bytes(&n.addr()),
                length: n.prefix_len() as u32,
            })
            .collect()
    };
    let sas = |v: &[policy::ServiceAccountMatch]| -> Vec<pb_sec::ServiceAccountMatch> {
        v.iter()
            .map(|s| pb_sec::ServiceAccountMatch {
                namespace: s.namespace.clone(),
                service_account: s.service_account.clone(),
            })
            .collect()
    };
    let ports = |v: &[u16]| v.iter().map(|&p| p as u32).collect::<Vec<_>>();
    pb_sec::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match p.scope {
            policy::Scope::Global => pb_sec::Scope::Global,
            policy::Scope::Namespace => pb_sec::Scope::Namespace,
            policy::Scope::WorkloadSelector => pb_sec::Scope::WorkloadSelector,
        } as i32,
        action: match p.action {
            policy::Action::Allow => pb_sec::Action::Allow,
            policy::Action::Deny => pb_sec::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|r| pb_sec::Rule {
                clauses: r
                    .iter()
                    .map(|c| pb_sec::Clause {
                        matches: c
                            .iter()
                            .map(|m| pb_sec::Match {
                                namespaces: sm(&m.namespaces),
                                not_namespaces: sm(&m.not_namespaces),
                                service_accounts: sas(&m.service_accounts),
                                not_service_accounts: sas(&m.not_service_accounts),
                                principals: sm(&m.principals),
                                not_principals: sm(&m.not_principals),
                                source_ips: nets(&m.source_ips),
                                not_source_ips: nets(&m.not_source_ips),
                                destination_ips: nets(&m.destination_ips),
                                not_destination_ips: nets(&m.not_destination_ips),
                                destination_ports: ports(&m.destination_ports),
                                not_destination_ports: ports(&m.not_destination_ports),
                                extensions: vec![],
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: p.dry_run,
        extensions: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::convert;

    const CFG: &str = r#"
workloads:
- {uid: c1//Pod/default/a, name: a, namespace: default, serviceAccount: sa-a, trustDomain: cluster.local,
   workloadIps: ["198.18.1.2", "fd00:198:18:1::2"], protocol: HBONE, node: node-a, workloadName: a,
   workloadType: pod, canonicalName: app-a, canonicalRevision: v2, clusterId: Kubernetes,
   locality: {region: r, zone: z, subzone: s}, capacity: 2, status: Unhealthy,
   authorizationPolicies: [default/sel],
   waypoint: {destination: default/wp.default.svc.cluster.local, hboneMtlsPort: 15008},
   services: {"default/echo.default.svc.cluster.local": {80: 8080, 443: 0}}}
- {uid: c1//Pod/default/b, name: b, namespace: default, serviceAccount: default, trustDomain: cluster.local,
   workloadIps: ["198.18.2.2"], protocol: TCP, node: node-b, networkMode: HostNetwork, workloadType: deployment, clusterId: Kubernetes,
   waypoint: {destination: /198.18.9.9, hboneMtlsPort: 15008}, services: {}}
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["/198.19.10.1"],
   ports: {80: 8080}, subjectAltNames: ["spiffe://cluster.local/ns/default/sa/sa-a"], canonical: true,
   ipFamilies: Dual, cidrVips: ["net1/198.19.11.0/24"],
   loadBalancer: {routingPreferences: [Network, Zone], mode: Failover, healthPolicy: AllowAll}}
policies:
- name: sel
  namespace: default
  scope: WorkloadSelector
  action: Deny
  dryRun: true
  rules:
  - - - namespaces: [!Exact "a"]
        notPrincipals: [!Presence []]
        serviceAccounts: [{namespace: a, serviceAccount: b}]
        sourceIps: ["198.18.0.0/15"]
        notDestinationIps: ["fd00::/8"]
        destinationPorts: [80]
"#;

    #[test]
    fn round_trip_through_the_wire_is_the_identity() {
        let cfg = crate::config::parse("t", CFG).unwrap();
        let res = resources(&cfg);
        let addr = &res[proto::ADDRESS_TYPE];
        assert_eq!(
            addr.keys().collect::<Vec<_>>(),
            vec![
                "c1//Pod/default/a",
                "c1//Pod/default/b",
                "default/echo.default.svc.cluster.local"
            ]
        );
        for (i, w) in cfg.workloads.iter().enumerate() {
            let a = pb::Address::decode(addr[&w.uid].bytes.as_slice()).unwrap();
            match convert::address(a).unwrap() {
                convert::AddressResource::Workload(got) => assert_eq!(*got, *w, "workload {i}"),
                other => panic!("{other:?}"),
            }
        }
        let a = pb::Address::decode(
            addr["default/echo.default.svc.cluster.local"]
                .bytes
                .as_slice(),
        )
        .unwrap();
        match convert::address(a).unwrap() {
            convert::AddressResource::Service(got) => assert_eq!(*got, cfg.services[0]),
            other => panic!("{other:?}"),
        }
        let p = &res[proto::AUTHORIZATION_TYPE]["default/sel"];
        let got =
            convert::authorization(pb_sec::Authorization::decode(p.bytes.as_slice()).unwrap())
                .unwrap();
        assert_eq!(got, cfg.policies[0]);
        // Versions are content hashes: the same for the same content, different otherwise.
        let again = resources(&cfg);
        assert_eq!(again, res);
        let mut changed = cfg.clone();
        changed.workloads[1].canonical_name = "x".into();
        let res2 = resources(&changed);
        assert_eq!(
            res2[proto::ADDRESS_TYPE]["c1//Pod/default/a"].version,
            addr["c1//Pod/default/a"].version
        );
        assert_ne!(
            res2[proto::ADDRESS_TYPE]["c1//Pod/default/b"].version,
            addr["c1//Pod/default/b"].version
        );
    }
}
