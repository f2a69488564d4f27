//! Workload API and Authorization API resources → the config model (`state::Workload`,
//! `state::Service`, `policy::Authorization`): the same types the local config file
//! builds, so both sources feed one `Snapshot`.
//!
//! Pure: values in, values out. Every rejection names the field and what was wrong, so a
//! NACK tells the control plane's operator what to fix. Defaults follow ztunnel's xDS path:
//! empty trust domain → `cluster.local`, empty service account → `default`, empty cluster id
//! → `Kubernetes`, no capacity → 1.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::{self, Authorization};
use crate::proto::{security as pb_sec, workload as pb};
use crate::state::{
    ApplicationTunnel, DEFAULT_TRUST_DOMAIN, GatewayAddress, GatewayDestination, HealthStatus,
    LoadBalancer, Locality, NetworkAddress, NetworkMode, Protocol, Service, Workload,
};

/// One Address resource, converted.
#[derive(Debug, Clone, PartialEq)]
pub enum AddressResource {
    Workload(Box<Workload>),
    Service(Box<Service>),
}

/// Why a resource was rejected: the field (dotted path) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Decodes and converts an `istio.workload.Address`.
pub fn address(a: pb::Address) -> Result<AddressResource, ConvertError> {
    match a.r#type {
        Some(pb::address::Type::Workload(w)) => {
            workload(w).map(|w| AddressResource::Workload(Box::new(w)))
        }
        Some(pb::address::Type::Service(s)) => {
            service(s).map(|s| AddressResource::Service(Box::new(s)))
        }
        None => Err(err("type", "neither a workload nor a service")),
    }
}

/// Converts a `Workload`.
pub fn workload(w: pb::Workload) -> Result<Workload, ConvertError> {
    if w.uid.is_empty() {
        return Err(err("uid", "must be set"));
    }
    if w.namespace.is_empty() {
        return Err(err("namespace", "must be set"));
    }
    let mut ips = Vec::with_capacity(w.addresses.len());
    for (i, a) in w.addresses.iter().enumerate() {
        ips.push(ip_from_bytes(a).map_err(|r| err(format!("addresses[{i}]"), r))?);
    }
    let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(pb::TunnelProtocol::None) => Protocol::TCP,
        Ok(pb::TunnelProtocol::Hbone) => Protocol::HBONE,
        Ok(pb::TunnelProtocol::LegacyIstioMtls) => {
            return Err(err(
                "tunnelProtocol",
                "LEGACY_ISTIO_MTLS is not supported (as in ztunnel): use HBONE or NONE",
            ));
        }
        Err(_) => return Err(unknown_enum("tunnelProtocol", w.tunnel_protocol)),
    };
    let workload_type = match pb::WorkloadType::try_from(w.workload_type) {
        Ok(t) => t.as_str_name().to_ascii_lowercase(),
        Err(_) => return Err(unknown_enum("workloadType", w.workload_type)),
    };
    let status = match pb::WorkloadStatus::try_from(w.status) {
        Ok(pb::WorkloadStatus::Healthy) => HealthStatus::Healthy,
        Ok(pb::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
        Err(_) => return Err(unknown_enum("status", w.status)),
    };
    let network_mode = match pb::NetworkMode::try_from(w.network_mode) {
        Ok(pb::NetworkMode::Standard) => NetworkMode::Standard,
        Ok(pb::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
        Err(_) => return Err(unknown_enum("networkMode", w.network_mode)),
    };
    let application_tunnel = match w.application_tunnel {
        None => None,
        Some(t) => {
            let protocol = match pb::application_tunnel::Protocol::try_from(t.protocol) {
                Ok(p) => p.as_str_name().to_string(),
                Err(_) => return Err(unknown_enum("applicationTunnel.protocol", t.protocol)),
            };
            let port = match t.port {
                0 => None,
                p => Some(port16("applicationTunnel.port", p)?),
            };
            Some(ApplicationTunnel { protocol, port })
        }
    };
    let mut services = HashMap::with_capacity(w.services.len());
    for (key, list) in w.services {
        if !is_namespaced_hostname(&key) {
            return Err(err(
                format!("services[{key:?}]"),
                "key is not <namespace>/<hostname>",
            ));
        }
        let mut ports = HashMap::with_capacity(list.ports.len());
        for (i, p) in list.ports.iter().enumerate() {
            let f = |what| format!("services[{key:?}].ports[{i}].{what}");
            ports.insert(
                port16(&f("servicePort"), p.service_port)?,
                port16_or_zero(&f("targetPort"), p.target_port)?,
            );
        }
        services.insert(key, ports);
    }
    let trust_domain = if w.trust_domain.is_empty() {
        DEFAULT_TRUST_DOMAIN.to_string()
    } else {
        w.trust_domain
    };
    let service_account = if w.service_account.is_empty() {
        "default".to_string()
    } else {
        w.service_account
    };
    Ok(Workload {
        workload_ips: ips,
        waypoint: gateway("waypoint", w.waypoint)?,
        network_gateway: gateway("networkGateway", w.network_gateway)?,
        protocol,
        network_mode,
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        trust_domain,
        service_account,
        network: w.network,
        workload_name: w.workload_name,
        workload_type,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        hostname: w.hostname,
        node: w.node,
        native_tunnel: w.native_tunnel,
        application_tunnel,
        authorization_policies: w.authorization_policies,
        status,
        // ztunnel's xDS default.
        cluster_id: if w.cluster_id.is_empty() {
            "Kubernetes".to_string()
        } else {
            w.cluster_id
        },
        locality: w
            .locality
            .map(|l| Locality {
                region: l.region,
                zone: l.zone,
                subzone: l.subzone,
            })
            .unwrap_or_default(),
        capacity: w.capacity.unwrap_or(1),
        services,
    })
}

/// Converts a `Service`.
pub fn service(s: pb::Service) -> Result<Service, ConvertError> {
    if s.hostname.is_empty() {
        return Err(err("hostname", "must be set"));
    }
    if s.namespace.is_empty() {
        return Err(err("namespace", "must be set"));
    }
    let mut vips = Vec::new();
    let mut cidr_vips = Vec::new();
    for (i, a) in s.addresses.iter().enumerate() {
        let ip = ip_from_bytes(&a.address).map_err(|r| err(format!("addresses[{i}]"), r))?;
        match a.length {
            None => vips.push(NetworkAddress { address: ip }),
            Some(len) => {
                let net = IpNet::new(ip, len.min(255) as u8).map_err(|_| {
                    err(
                        format!("addresses[{i}].length"),
                        format!("/{len} is too long for {ip}"),
                    )
                })?;
                cidr_vips.push(format!("{}/{net}", a.network));
            }
        }
    }
    let mut ports = HashMap::with_capacity(s.ports.len());
    for (i, p) in s.ports.iter().enumerate() {
        ports.insert(
            port16(&format!("ports[{i}].servicePort"), p.service_port)?,
            port16_or_zero(&format!("ports[{i}].targetPort"), p.target_port)?,
        );
    }
    let load_balancer = match s.load_balancing {
        None => None,
        Some(lb) => Some(load_balancing(lb)?),
    };
    let ip_families = match pb::IpFamilies::try_from(s.ip_families) {
        Ok(pb::IpFamilies::Automatic) => None,
        Ok(pb::IpFamilies::Ipv4Only) => Some("IPv4".to_string()),
        Ok(pb::IpFamilies::Ipv6Only) => Some("IPv6".to_string()),
        Ok(pb::IpFamilies::Dual) => Some("Dual".to_string()),
        Err(_) => return Err(unknown_enum("ipFamilies", s.ip_families)),
    };
    Ok(Service {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        ports,
        endpoints: HashMap::new(),
        subject_alt_names: s.subject_alt_names,
        waypoint: gateway("waypoint", s.waypoint)?,
        load_balancer,
        ip_families,
        canonical: s.canonical,
        cidr_vips,
    })
}

fn load_balancing(lb: pb::LoadBalancing) -> Result<LoadBalancer, ConvertError> {
    use pb::load_balancing::{HealthPolicy, Mode, Scope};
    let mut prefs = Vec::with_capacity(lb.routing_preference.len());
    for (i, &p) in lb.routing_preference.iter().enumerate() {
        let name = match Scope::try_from(p) {
            Ok(Scope::UnspecifiedScope) => continue,
            Ok(Scope::Region) => "Region",
            Ok(Scope::Zone) => "Zone",
            Ok(Scope::Subzone) => "Subzone",
            Ok(Scope::Node) => "Node",
            Ok(Scope::Cluster) => "Cluster",
            Ok(Scope::Network) => "Network",
            Err(_) => {
                return Err(unknown_enum(
                    &format!("loadBalancing.routingPreference[{i}]"),
                    p,
                ));
            }
        };
        prefs.push(name.to_string());
    }
    let mode = match Mode::try_from(lb.mode) {
        Ok(Mode::UnspecifiedMode) => None,
        Ok(Mode::Strict) => Some("Strict"),
        Ok(Mode::Failover) => Some("Failover"),
        Ok(Mode::Passthrough) => Some("Passthrough"),
        Err(_) => return Err(unknown_enum("loadBalancing.mode", lb.mode)),
    };
    let health = match HealthPolicy::try_from(lb.health_policy) {
        Ok(HealthPolicy::OnlyHealthy) => None,
        Ok(HealthPolicy::AllowAll) => Some("AllowAll"),
        Err(_) => return Err(unknown_enum("loadBalancing.healthPolicy", lb.health_policy)),
    };
    Ok(LoadBalancer {
        routing_preferences: prefs,
        mode: mode.map(str::to_string),
        health_policy: health.map(str::to_string),
    })
}

fn gateway(
    field: &str,
    g: Option<pb::GatewayAddress>,
) -> Result<Option<GatewayAddress>, ConvertError> {
    let Some(g) = g else { return Ok(None) };
    let destination = match g.destination {
        Some(pb::gateway_address::Destination::Hostname(h)) => {
            if h.namespace.is_empty() || h.hostname.is_empty() {
                return Err(err(
                    format!("{field}.hostname"),
                    "namespace and hostname must both be set",
                ));
            }
            GatewayDestination::Hostname {
                namespace: h.namespace,
                hostname: h.hostname,
            }
        }
        Some(pb::gateway_address::Destination::Address(a)) => {
            let ip = ip_from_bytes(&a.address).map_err(|r| err(format!("{field}.address"), r))?;
            GatewayDestination::Address(NetworkAddress { address: ip })
        }
        None => return Err(err(field, "has no destination (hostname or address)")),
    };
    // istiod always sets the port; an unset one means HBONE's 15008.
    let port = match g.hbone_mtls_port {
        0 => crate::config::flags::HBONE_PORT,
        p => port16(&format!("{field}.hboneMtlsPort"), p)?,
    };
    Ok(Some(GatewayAddress {
        destination,
        hbone_mtls_port: port,
    }))
}

/// Converts an `istio.security.Authorization`.
pub fn authorization(a: pb_sec::Authorization) -> Result<Authorization, ConvertError> {
    if a.name.is_empty() {
        return Err(err("name", "must be set"));
    }
    let scope = match pb_sec::Scope::try_from(a.scope) {
        Ok(pb_sec::Scope::Global) => policy::Scope::Global,
        Ok(pb_sec::Scope::Namespace) => policy::Scope::Namespace,
        Ok(pb_sec::Scope::WorkloadSelector) => policy::Scope::WorkloadSelector,
        Err(_) => return Err(unknown_enum("scope", a.scope)),
    };
    let action = match pb_sec::Action::try_from(a.action) {
        Ok(pb_sec::Action::Allow) => policy::Action::Allow,
        Ok(pb_sec::Action::Deny) => policy::Action::Deny,
        Err(_) => return Err(unknown_enum("action", a.action)),
    };
    let mut rules = Vec::with_capacity(a.rules.len());
    for (ri, r) in a.rules.into_iter().enumerate() {
        let mut clauses = Vec::with_capacity(r.clauses.len());
        for (ci, c) in r.clauses.into_iter().enumerate() {
            let mut matches = Vec::with_capacity(c.matches.len());
            for (mi, m) in c.matches.into_iter().enumerate() {
                let at = format!("rules[{ri}].clauses[{ci}].matches[{mi}]");
                matches.push(policy_match(&at, m)?);
            }
            clauses.push(matches);
        }
        rules.push(clauses);
    }
    Ok(Authorization {
        name: a.name,
        namespace: a.namespace,
        scope,
        action,
        rules,
        dry_run: a.dry_run,
    })
}

fn policy_match(at: &str, m: pb_sec::Match) -> Result<policy::Match, ConvertError> {
    let strings = |what: &str, v: Vec<pb_sec::StringMatch>| {
        v.into_iter()
            .enumerate()
            .map(|(i, s)| string_match(&format!("{at}.{what}[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()
    };
    let cidrs = |what: &str, v: Vec<pb_sec::Address>| {
        v.into_iter()
            .enumerate()
            .map(|(i, a)| cidr(&format!("{at}.{what}[{i}]"), &a))
            .collect::<Result<Vec<_>, _>>()
    };
    let ports = |what: &str, v: Vec<u32>| {
        v.into_iter()
            .enumerate()
            .map(|(i, p)| port16(&format!("{at}.{what}[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()
    };
    let sas = |v: Vec<pb_sec::ServiceAccountMatch>| {
        v.into_iter()
            .map(|s| policy::ServiceAccountMatch {
                namespace: s.namespace,
                service_account: s.service_account,
            })
            .collect::<Vec<_>>()
    };
    Ok(policy::Match {
        namespaces: strings("namespaces", m.namespaces)?,
        not_namespaces: strings("notNamespaces", m.not_namespaces)?,
        service_accounts: sas(m.service_accounts),
        not_service_accounts: sas(m.not_service_accounts),
        principals: strings("principals", m.principals)?,
        not_principals: strings("notPrincipals", m.not_principals)?,
        source_ips: cidrs("sourceIps", m.source_ips)?,
        not_source_ips: cidrs("notSourceIps", m.not_source_ips)?,
        destination_ips: cidrs("destinationIps", m.destination_ips)?,
        not_destination_ips: cidrs("notDestinationIps", m.not_destination_ips)?,
        destination_ports: ports("destinationPorts", m.destination_ports)?,
        not_destination_ports: ports("notDestinationPorts", m.not_destination_ports)?,
    })
}

fn string_match(at: &str, s: pb_sec::StringMatch) -> Result<policy::StringMatch, ConvertError> {
    use pb_sec::string_match::MatchType;
    match s.match_type {
        Some(MatchType::Exact(v)) => Ok(policy::StringMatch::Exact(v)),
        Some(MatchType::Prefix(v)) => Ok(policy::StringMatch::Prefix(v)),
        Some(MatchType::Suffix(v)) => Ok(policy::StringMatch::Suffix(v)),
        Some(MatchType::Presence(_)) => Ok(policy::StringMatch::Presence()),
        None => Err(err(at, "no match type (exact, prefix, suffix or presence)")),
    }
}

fn cidr(at: &str, a: &pb_sec::Address) -> Result<IpNet, ConvertError> {
    let ip = ip_from_bytes(&a.address).map_err(|r| err(at, r))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if a.length > max {
        return Err(err(
            format!("{at}.length"),
            format!("/{} is too long for {ip}", a.length),
        ));
    }
    IpNet::new(ip, a.length as u8).map_err(|e| err(format!("{at}.length"), e.to_string()))
}

/// Raw 4- or 16-byte address → IP.
pub fn ip_from_bytes(b: &[u8]) -> Result<IpAddr, String> {
    match b.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(b).expect("length checked"),
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(b).expect("length checked"),
        )),
        n => Err(format!(
            "{n} bytes is not an address (IPv4 is 4 bytes, IPv6 16)"
        )),
    }
}

fn port16(field: &str, p: u32) -> Result<u16, ConvertError> {
    match u16::try_from(p) {
        Ok(v) if v != 0 => Ok(v),
        _ => Err(err(field, format!("{p} is not a port (1-65535)"))),
    }
}

fn port16_or_zero(field: &str, p: u32) -> Result<u16, ConvertError> {
    u16::try_from(p).map_err(|_| err(field, format!("{p} is not a port (0-65535)")))
}

fn unknown_enum(field: &str, v: i32) -> ConvertError {
    err(field, format!("unknown value {v}"))
}

fn is_namespaced_hostname(k: &str) -> bool {
    matches!(k.split_once('/'), Some((ns, host)) if !ns.is_empty() && !host.is_empty())
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
