//! Table of Workload API / Authorization API resources and what they become (or why they
//! are rejected).

use std::collections::HashMap;

use super::*;
use crate::proto::workload::{gateway_address, load_balancing};

fn pod(uid: &str) -> pb::Workload {
    pb::Workload {
        uid: uid.into(),
        name: "web-1".into(),
        namespace: "default".into(),
        addresses: vec![vec![198, 18, 1, 2]],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

#[test]
fn workload_every_field() {
    let mut services = HashMap::new();
    services.insert(
        "default/echo.default.svc.cluster.local".to_string(),
        pb::PortList {
            ports: vec![
                pb::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                },
                pb::Port {
                    service_port: 443,
                    target_port: 0,
                    app_protocol: 0,
                },
            ],
        },
    );
    let w = pb::Workload {
        uid: "Kubernetes//Pod/default/web-1".into(),
        name: "web-1".into(),
        namespace: "default".into(),
        addresses: vec![
            vec![198, 18, 1, 2],
            "fd00:198:18:1::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
        ],
        hostname: "".into(),
        network: "net1".into(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        trust_domain: "example.org".into(),
        service_account: "web".into(),
        waypoint: Some(pb::GatewayAddress {
            destination: Some(gateway_address::Destination::Hostname(
                pb::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        network_gateway: None,
        node: "node-a".into(),
        canonical_name: "web".into(),
        canonical_revision: "v1".into(),
        workload_type: pb::WorkloadType::Deployment as i32,
        workload_name: "web".into(),
        native_tunnel: false,
        application_tunnel: Some(pb::ApplicationTunnel {
            protocol: pb::application_tunnel::Protocol::Proxy as i32,
            port: 15088,
        }),
        services,
        authorization_policies: vec!["default/allow-web".into()],
        status: pb::WorkloadStatus::Unhealthy as i32,
        cluster_id: "Kubernetes".into(),
        locality: Some(pb::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        network_mode: pb::NetworkMode::HostNetwork as i32,
        extensions: vec![],
        capacity: Some(3),
    };
    let got = workload(w).unwrap();
    assert_eq!(got.uid, "Kubernetes//Pod/default/web-1");
    assert_eq!(
        got.workload_ips,
        vec![
            "198.18.1.2".parse::<IpAddr>().unwrap(),
            "fd00:198:18:1::2".parse().unwrap()
        ]
    );
    assert_eq!(got.protocol, Protocol::HBONE);
    assert_eq!(got.trust_domain, "example.org");
    assert_eq!(got.service_account, "web");
    assert_eq!(got.network, "net1");
    assert_eq!(got.node, "node-a");
    assert_eq!(got.workload_type, "deployment");
    assert_eq!(got.canonical_revision, "v1");
    assert_eq!(got.status, HealthStatus::Unhealthy);
    assert_eq!(got.network_mode, NetworkMode::HostNetwork);
    assert_eq!(got.capacity, 3);
    assert_eq!(got.locality.zone, "z");
    assert_eq!(got.authorization_policies, vec!["default/allow-web"]);
    assert_eq!(
        got.application_tunnel,
        Some(ApplicationTunnel {
            protocol: "PROXY".into(),
            port: Some(15088)
        })
    );
    assert_eq!(
        got.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname {
                namespace: "default".into(),
                hostname: "waypoint.default.svc.cluster.local".into()
            },
            hbone_mtls_port: 15008
        })
    );
    let ports = &got.services["default/echo.default.svc.cluster.local"];
    assert_eq!(ports[&80], 8080);
    assert_eq!(ports[&443], 0);
    // The converted workload is exactly what the local config file would have produced.
    assert_eq!(
        got.identity().to_string(),
        "spiffe://example.org/ns/default/sa/web"
    );
}

#[test]
fn workload_defaults_as_ztunnel_xds() {
    let got = workload(pod("u1")).unwrap();
    assert_eq!(got.trust_domain, "cluster.local");
    assert_eq!(got.service_account, "default");
    assert_eq!(got.capacity, 1);
    assert_eq!(got.status, HealthStatus::Healthy);
    assert_eq!(got.workload_type, "deployment");
    assert_eq!(got.cluster_id, "Kubernetes");
    let mut tcp = pod("u2");
    tcp.tunnel_protocol = pb::TunnelProtocol::None as i32;
    assert_eq!(workload(tcp).unwrap().protocol, Protocol::TCP);
}

#[test]
fn bad_workloads_say_which_field() {
    let cases: Vec<(pb::Workload, &str)> = vec![
        (
            pb::Workload {
                uid: "".into(),
                ..pod("x")
            },
            "uid: must be set",
        ),
        (
            pb::Workload {
                namespace: "".into(),
                ..pod("x")
            },
            "namespace: must be set",
        ),
        (
            pb::Workload {
                addresses: vec![vec![198, 18, 1, 2], vec![1, 2, 3, 4, 5]],
                ..pod("x")
            },
            "addresses[1]: 5 bytes is not an address (IPv4 is 4 bytes, IPv6 16)",
        ),
        (
            pb::Workload {
                tunnel_protocol: pb::TunnelProtocol::LegacyIstioMtls as i32,
                ..pod("x")
            },
            "tunnelProtocol: LEGACY_ISTIO_MTLS is not supported",
        ),
        (
            pb::Workload {
                tunnel_protocol: 7,
                ..pod("x")
            },
            "tunnelProtocol: unknown value 7",
        ),
        (
            pb::Workload {
                status: 9,
                ..pod("x")
            },
            "status: unknown value 9",
        ),
        (
            pb::Workload {
                services: [("no-slash".to_string(), pb::PortList::default())].into(),
                ..pod("x")
            },
            "services[\"no-slash\"]: key is not <namespace>/<hostname>",
        ),
        (
            pb::Workload {
                services: [(
                    "ns/h".to_string(),
                    pb::PortList {
                        ports: vec![pb::Port {
                            service_port: 70000,
                            target_port: 1,
                            app_protocol: 0,
                        }],
                    },
                )]
                .into(),
                ..pod("x")
            },
            "services[\"ns/h\"].ports[0].servicePort: 70000 is not a port",
        ),
        (
            pb::Workload {
                waypoint: Some(pb::GatewayAddress {
                    destination: None,
                    hbone_mtls_port: 15008,
                }),
                ..pod("x")
            },
            "waypoint: has no destination",
        ),
        (
            pb::Workload {
                waypoint: Some(pb::GatewayAddress {
                    destination: Some(gateway_address::Destination::Address(pb::NetworkAddress {
                        network: "".into(),
                        address: vec![1, 2],
                        length: None,
                    })),
                    hbone_mtls_port: 15008,
                }),
                ..pod("x")
            },
            "waypoint.address: 2 bytes is not an address",
        ),
    ];
    for (w, want) in cases {
        let e = workload(w).unwrap_err().to_string();
        assert!(e.starts_with(want), "got {e:?}, want {want:?}");
    }
}

#[test]
fn address_oneof() {
    let a = pb::Address {
        r#type: Some(pb::address::Type::Workload(pod("u"))),
    };
    assert!(matches!(address(a), Ok(AddressResource::Workload(_))));
    let e = address(pb::Address { r#type: None }).unwrap_err();
    assert_eq!(e.to_string(), "type: neither a workload nor a service");
}

fn svc() -> pb::Service {
    pb::Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: "".into(),
            address: vec![198, 19, 10, 1],
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: pb::AppProtocol::Http11 as i32,
        }],
        ..Default::default()
    }
}

#[test]
fn service_fields() {
    let mut s = svc();
    s.addresses.push(pb::NetworkAddress {
        network: "net1".into(),
        address: vec![198, 19, 11, 0],
        length: Some(24),
    });
    s.subject_alt_names = vec!["spiffe://cluster.local/ns/default/sa/echo".into()];
    s.canonical = true;
    s.ip_families = pb::IpFamilies::Dual as i32;
    s.load_balancing = Some(pb::LoadBalancing {
        routing_preference: vec![
            load_balancing::Scope::Network as i32,
            load_balancing::Scope::Zone as i32,
        ],
        mode: load_balancing::Mode::Failover as i32,
        health_policy: load_balancing::HealthPolicy::AllowAll as i32,
    });
    s.waypoint = Some(pb::GatewayAddress {
        destination: Some(gateway_address::Destination::Address(pb::NetworkAddress {
            network: "".into(),
            address: vec![198, 18, 1, 9],
            length: None,
        })),
        hbone_mtls_port: 0,
    });
    let got = service(s).unwrap();
    assert_eq!(got.key(), "default/echo.default.svc.cluster.local");
    assert_eq!(
        got.vips,
        vec![NetworkAddress {
            address: "198.19.10.1".parse().unwrap()
        }]
    );
    assert_eq!(got.cidr_vips, vec!["net1/198.19.11.0/24"]);
    assert_eq!(got.ports[&80], 8080);
    assert!(got.canonical);
    assert_eq!(got.ip_families.as_deref(), Some("Dual"));
    let lb = got.load_balancer.clone().unwrap();
    assert_eq!(lb.routing_preferences, vec!["Network", "Zone"]);
    assert_eq!(lb.mode.as_deref(), Some("Failover"));
    assert_eq!(lb.health_policy.as_deref(), Some("AllowAll"));
    // An unset HBONE port on a gateway means 15008.
    assert_eq!(got.waypoint.as_ref().unwrap().hbone_mtls_port, 15008);
    assert_eq!(got.san_identities().len(), 1);
}

#[test]
fn bad_services_say_which_field() {
    let cases: Vec<(pb::Service, &str)> = vec![
        (
            pb::Service {
                hostname: "".into(),
                ..svc()
            },
            "hostname: must be set",
        ),
        (
            pb::Service {
                namespace: "".into(),
                ..svc()
            },
            "namespace: must be set",
        ),
        (
            pb::Service {
                addresses: vec![pb::NetworkAddress {
                    network: "".into(),
                    address: vec![198, 19, 0, 0],
                    length: Some(33),
                }],
                ..svc()
            },
            "addresses[0].length: /33 is too long for 198.19.0.0",
        ),
        (
            pb::Service {
                ports: vec![pb::Port {
                    service_port: 0,
                    target_port: 1,
                    app_protocol: 0,
                }],
                ..svc()
            },
            "ports[0].servicePort: 0 is not a port",
        ),
        (
            pb::Service {
                ip_families: 12,
                ..svc()
            },
            "ipFamilies: unknown value 12",
        ),
    ];
    for (s, want) in cases {
        let e = service(s).unwrap_err().to_string();
        assert!(e.starts_with(want), "got {e:?}, want {want:?}");
    }
}

fn sm(t: pb_sec::string_match::MatchType) -> pb_sec::StringMatch {
    pb_sec::StringMatch {
        match_type: Some(t),
    }
}

fn cidr_pb(b: &[u8], len: u32) -> pb_sec::Address {
    pb_sec::Address {
        address: b.to_vec(),
        length: len,
    }
}

#[test]
fn authorization_every_match_kind() {
    use pb_sec::string_match::MatchType as T;
    let m = pb_sec::Match {
        namespaces: vec![sm(T::Exact("a".into()))],
        not_namespaces: vec![sm(T::Prefix("kube-".into()))],
        service_accounts: vec![pb_sec::ServiceAccountMatch {
            namespace: "a".into(),
            service_account: "sa".into(),
        }],
        not_service_accounts: vec![pb_sec::ServiceAccountMatch {
            namespace: "b".into(),
            service_account: "bad".into(),
        }],
        principals: vec![sm(T::Suffix("/sa/client".into()))],
        not_principals: vec![sm(T::Presence(()))],
        source_ips: vec![cidr_pb(&[198, 18, 0, 0], 15)],
        not_source_ips: vec![cidr_pb(&[198, 18, 1, 7], 32)],
        destination_ips: vec![cidr_pb(
            &"fd00::".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            8,
        )],
        not_destination_ips: vec![],
        destination_ports: vec![8080],
        not_destination_ports: vec![9999],
        extensions: vec![],
    };
    let a = pb_sec::Authorization {
        name: "p".into(),
        namespace: "a".into(),
        scope: pb_sec::Scope::WorkloadSelector as i32,
        action: pb_sec::Action::Deny as i32,
        rules: vec![pb_sec::Rule {
            clauses: vec![pb_sec::Clause { matches: vec![m] }],
        }],
        dry_run: true,
        extensions: vec![],
    };
    let got = authorization(a).unwrap();
    assert_eq!(got.key(), "a/p");
    assert_eq!(got.scope, policy::Scope::WorkloadSelector);
    assert_eq!(got.action, policy::Action::Deny);
    assert!(got.dry_run);
    let m = &got.rules[0][0][0];
    assert_eq!(m.namespaces, vec![policy::StringMatch::Exact("a".into())]);
    assert_eq!(
        m.not_namespaces,
        vec![policy::StringMatch::Prefix("kube-".into())]
    );
    assert_eq!(
        m.principals,
        vec![policy::StringMatch::Suffix("/sa/client".into())]
    );
    assert_eq!(m.not_principals, vec![policy::StringMatch::Presence()]);
    assert_eq!(m.service_accounts[0].service_account, "sa");
    assert_eq!(m.not_service_accounts[0].namespace, "b");
    assert_eq!(
        m.source_ips,
        vec!["198.18.0.0/15".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        m.not_source_ips,
        vec!["198.18.1.7/32".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        m.destination_ips,
        vec!["fd00::/8".parse::<IpNet>().unwrap()]
    );
    assert_eq!(m.destination_ports, vec![8080]);
    assert_eq!(m.not_destination_ports, vec![9999]);
    // The same policy written in ztunnel's local config YAML parses to the same value.
    let yaml = r#"
name: p
namespace: a
scope: WorkloadSelector
action: Deny
dryRun: true
rules:
- - - namespaces: [!Exact "a"]
      notNamespaces: [!Prefix "kube-"]
      serviceAccounts: [{namespace: a, serviceAccount: sa}]
      notServiceAccounts: [{namespace: b, serviceAccount: bad}]
      principals: [!Suffix "/sa/client"]
      notPrincipals: [!Presence []]
      sourceIps: ["198.18.0.0/15"]
      notSourceIps: ["198.18.1.7/32"]
      destinationIps: ["fd00::/8"]
      destinationPorts: [8080]
      notDestinationPorts: [9999]
"#;
    let from_file: Authorization = serde_yaml_ng::from_str(yaml).unwrap();
    assert_eq!(got, from_file);
}

#[test]
fn bad_authorizations_say_which_field() {
    use pb_sec::string_match::MatchType as T;
    let base = || pb_sec::Authorization {
        name: "p".into(),
        namespace: "a".into(),
        ..Default::default()
    };
    let with = |m: pb_sec::Match| pb_sec::Authorization {
        rules: vec![pb_sec::Rule {
            clauses: vec![pb_sec::Clause { matches: vec![m] }],
        }],
        ..base()
    };
    let cases: Vec<(pb_sec::Authorization, &str)> = vec![
        (
            pb_sec::Authorization {
                name: "".into(),
                ..base()
            },
            "name: must be set",
        ),
        (
            pb_sec::Authorization {
                action: 5,
                ..base()
            },
            "action: unknown value 5",
        ),
        (
            pb_sec::Authorization {
                scope: -1,
                ..base()
            },
            "scope: unknown value -1",
        ),
        (
            with(pb_sec::Match {
                source_ips: vec![cidr_pb(&[198, 18, 0, 0], 40)],
                ..Default::default()
            }),
            "rules[0].clauses[0].matches[0].sourceIps[0].length: /40 is too long",
        ),
        (
            with(pb_sec::Match {
                destination_ips: vec![cidr_pb(&[1, 2, 3], 8)],
                ..Default::default()
            }),
            "rules[0].clauses[0].matches[0].destinationIps[0]: 3 bytes",
        ),
        (
            with(pb_sec::Match {
                principals: vec![pb_sec::StringMatch { match_type: None }],
                ..Default::default()
            }),
            "rules[0].clauses[0].matches[0].principals[0]: no match type",
        ),
        (
            with(pb_sec::Match {
                not_destination_ports: vec![65536],
                namespaces: vec![sm(T::Exact("a".into()))],
                ..Default::default()
            }),
            "rules[0].clauses[0].matches[0].notDestinationPorts[0]: 65536 is not a port",
        ),
    ];
    for (a, want) in cases {
        let e = authorization(a).unwrap_err().to_string();
        assert!(e.starts_with(want), "got {e:?}, want {want:?}");
    }
}
