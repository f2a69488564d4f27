//! Tests of `lab::waypoints`: every binding precedence case (object over namespace,
//! `none`/`#none`, missing waypoint, `waypoint-for`, use-waypoint-namespace, allowedRoutes).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn wp(namespace: &str, name: &str, traffic_type: WaypointFor) -> TopoWaypoint {
    TopoWaypoint {
        name: name.into(),
        namespace: namespace.into(),
        node: "node-a".into(),
        traffic_type,
        vip: Ipv4Addr::new(198, 19, 0, 100),
        from_namespaces: FromNamespaces::Same,
    }
}

fn bound_to(r: &Resolution) -> Option<(&str, LabelSource)> {
    match r {
        Resolution::Bound { waypoint, from, .. } => Some((waypoint.as_str(), *from)),
        _ => None,
    }
}

const KINDS: [TargetKind; 2] = [TargetKind::Service, TargetKind::Workload];

#[test]
fn no_label_anywhere_is_no_waypoint() {
    let wps = [wp("default", "waypoint", WaypointFor::All)];
    let none = BTreeMap::new();
    for kind in KINDS {
        let r = resolve(&labels(&[("app", "echo")]), "default", &none, &wps, kind);
        assert_eq!(r, Resolution::NoLabel);
        assert_eq!(r.address(), None);
        assert_eq!(r.reason(), None);
    }
}

#[test]
fn namespace_label_binds_both_kinds_and_gives_the_hostname_address() {
    let wps = [wp("default", "waypoint", WaypointFor::All)];
    let ns = labels(&[(USE_WAYPOINT_LABEL, "waypoint")]);
    for kind in KINDS {
        let r = resolve(&BTreeMap::new(), "default", &ns, &wps, kind);
        assert_eq!(
            bound_to(&r),
            Some(("default/waypoint", LabelSource::Namespace))
        );
        assert_eq!(r.reason(), Some("WaypointAccepted"));
        let a = r.address().expect("bound");
        assert_eq!(a.hbone_mtls_port, 15008);
        assert_eq!(
            a.destination,
            GatewayDestination::Hostname {
                namespace: "default".into(),
                hostname: "waypoint.default.svc.cluster.local".into(),
            }
        );
    }
}

#[test]
fn gateway_address_serializes_as_ztunnel_reads_it() {
    let a = gateway_address("infra", "wp");
    let yaml = serde_yaml_ng::to_string(&a).expect("serializes");
    assert!(
        yaml.contains("destination: infra/wp.infra.svc.cluster.local"),
        "{yaml}"
    );
    assert!(yaml.contains("hboneMtlsPort: 15008"), "{yaml}");
}

#[test]
fn pod_label_wins_over_namespace_label() {
    let wps = [
        wp("default", "ns-wp", WaypointFor::All),
        wp("default", "pod-wp", WaypointFor::All),
    ];
    let ns = labels(&[(USE_WAYPOINT_LABEL, "ns-wp")]);
    let pod = labels(&[(USE_WAYPOINT_LABEL, "pod-wp"), ("app", "echo")]);
    let r = resolve(&pod, "default", &ns, &wps, TargetKind::Workload);
    assert_eq!(bound_to(&r), Some(("default/pod-wp", LabelSource::Object)));
}

#[test]
fn service_label_wins_over_namespace_label() {
    let wps = [
        wp("default", "ns-wp", WaypointFor::Service),
        wp("default", "svc-wp", WaypointFor::Service),
    ];
    let ns = labels(&[(USE_WAYPOINT_LABEL, "ns-wp")]);
    let svc = labels(&[(USE_WAYPOINT_LABEL, "svc-wp")]);
    let r = resolve(&svc, "default", &ns, &wps, TargetKind::Service);
    assert_eq!(bound_to(&r), Some(("default/svc-wp", LabelSource::Object)));
}

#[test]
fn none_and_hash_none_on_the_object_block_the_namespace_label() {
    let wps = [wp("default", "waypoint", WaypointFor::All)];
    let ns = labels(&[(USE_WAYPOINT_LABEL, "waypoint")]);
    for value in ["none", "#none"] {
        for kind in KINDS {
            let obj = labels(&[(USE_WAYPOINT_LABEL, value)]);
            let r = resolve(&obj, "default", &ns, &wps, kind);
            assert_eq!(r, Resolution::OptedOut(LabelSource::Object), "{value}");
            assert_eq!(r.address(), None);
        }
    }
}

#[test]
fn none_on_the_namespace_is_no_waypoint() {
    let wps = [wp("default", "waypoint", WaypointFor::All)];
    for value in ["none", "#none"] {
        let ns = labels(&[(USE_WAYPOINT_LABEL, value)]);
        let r = resolve(&BTreeMap::new(), "default", &ns, &wps, TargetKind::Service);
        assert_eq!(r, Resolution::OptedOut(LabelSource::Namespace), "{value}");
    }
}

#[test]
fn a_label_naming_a_missing_waypoint_does_not_fall_back_to_the_namespace() {
    let wps = [wp("default", "waypoint", WaypointFor::All)];
    let ns = labels(&[(USE_WAYPOINT_LABEL, "waypoint")]);
    let obj = labels(&[(USE_WAYPOINT_LABEL, "missing")]);
    for kind in KINDS {
        let r = resolve(&obj, "default", &ns, &wps, kind);
        assert_eq!(r, Resolution::WaypointNotFound("default/missing".into()));
        assert_eq!(r.reason(), Some("WaypointIsNotReady"));
        assert!(r.to_string().contains("default/missing"), "{r}");
    }
    // The same name in another namespace is not it either.
    let elsewhere = [wp("other", "missing", WaypointFor::All)];
    let r = resolve(&obj, "default", &ns, &elsewhere, TargetKind::Service);
    assert_eq!(r, Resolution::WaypointNotFound("default/missing".into()));
    // A namespace label naming a missing waypoint: none as well.
    let ns_missing = labels(&[(USE_WAYPOINT_LABEL, "gone")]);
    let r = resolve(
        &BTreeMap::new(),
        "default",
        &ns_missing,
        &wps,
        TargetKind::Workload,
    );
    assert_eq!(r, Resolution::WaypointNotFound("default/gone".into()));
}

#[test]
fn waypoint_for_gates_each_kind() {
    use TargetKind::{Service, Workload};
    let cases = [
        (WaypointFor::Service, Service, true),
        (WaypointFor::Service, Workload, false),
        (WaypointFor::Workload, Service, false),
        (WaypointFor::Workload, Workload, true),
        (WaypointFor::All, Service, true),
        (WaypointFor::All, Workload, true),
        (WaypointFor::None, Service, false),
        (WaypointFor::None, Workload, false),
    ];
    for (traffic, kind, binds) in cases {
        let wps = [wp("default", "waypoint", traffic)];
        assert_eq!(traffic.admits(kind), binds, "{traffic} {kind}");
        for (obj, ns) in [
            (labels(&[(USE_WAYPOINT_LABEL, "waypoint")]), BTreeMap::new()),
            (BTreeMap::new(), labels(&[(USE_WAYPOINT_LABEL, "waypoint")])),
        ] {
            let r = resolve(&obj, "default", &ns, &wps, kind);
            if binds {
                assert!(bound_to(&r).is_some(), "{traffic} {kind}: {r:?}");
            } else {
                assert_eq!(
                    r,
                    Resolution::UnsupportedTrafficType {
                        waypoint: "default/waypoint".into(),
                        waypoint_for: traffic,
                        kind,
                    },
                    "{traffic} {kind}"
                );
                assert_eq!(r.reason(), Some("UnsupportedTrafficType"));
            }
        }
    }
}

#[test]
fn a_traffic_type_mismatch_does_not_fall_back_to_the_namespace() {
    let wps = [
        wp("default", "for-workloads", WaypointFor::Workload),
        wp("default", "for-services", WaypointFor::Service),
    ];
    let ns = labels(&[(USE_WAYPOINT_LABEL, "for-services")]);
    let svc = labels(&[(USE_WAYPOINT_LABEL, "for-workloads")]);
    let r = resolve(&svc, "default", &ns, &wps, TargetKind::Service);
    assert!(
        matches!(r, Resolution::UnsupportedTrafficType { ref waypoint, .. } if waypoint == "default/for-workloads"),
        "{r:?}"
    );
}

#[test]
fn use_waypoint_namespace_picks_the_waypoints_namespace() {
    let mut shared = wp("infra", "shared", WaypointFor::All);
    shared.from_namespaces = FromNamespaces::All;
    let wps = [shared, wp("default", "shared", WaypointFor::All)];
    let obj = labels(&[
        (USE_WAYPOINT_LABEL, "shared"),
        (USE_WAYPOINT_NAMESPACE_LABEL, "infra"),
    ]);
    let r = resolve(&obj, "default", &BTreeMap::new(), &wps, TargetKind::Service);
    assert_eq!(bound_to(&r), Some(("infra/shared", LabelSource::Object)));
    assert_eq!(
        r.address().map(|a| &a.destination),
        Some(&GatewayDestination::Hostname {
            namespace: "infra".into(),
            hostname: "shared.infra.svc.cluster.local".into(),
        })
    );
    // The namespace's pair of labels works the same way.
    let r = resolve(
        &BTreeMap::new(),
        "default",
        &obj,
        &wps,
        TargetKind::Workload,
    );
    assert_eq!(bound_to(&r), Some(("infra/shared", LabelSource::Namespace)));
}

#[test]
fn use_waypoint_namespace_is_read_from_the_same_object_only() {
    let mut infra = wp("infra", "wp", WaypointFor::All);
    infra.from_namespaces = FromNamespaces::All;
    let wps = [infra, wp("default", "wp", WaypointFor::All)];
    // The object names `wp`; its namespace's `use-waypoint-namespace` does not apply to it.
    let obj = labels(&[(USE_WAYPOINT_LABEL, "wp")]);
    let ns = labels(&[
        (USE_WAYPOINT_LABEL, "wp"),
        (USE_WAYPOINT_NAMESPACE_LABEL, "infra"),
    ]);
    let r = resolve(&obj, "default", &ns, &wps, TargetKind::Service);
    assert_eq!(bound_to(&r), Some(("default/wp", LabelSource::Object)));
    // An object's own `use-waypoint-namespace` without `use-waypoint` means nothing.
    let stray = labels(&[(USE_WAYPOINT_NAMESPACE_LABEL, "infra")]);
    let r = resolve(
        &stray,
        "default",
        &BTreeMap::new(),
        &wps,
        TargetKind::Service,
    );
    assert_eq!(r, Resolution::NoLabel);
}

#[test]
fn a_waypoint_in_another_namespace_must_admit_all_namespaces() {
    let wps = [wp("infra", "shared", WaypointFor::All)];
    let obj = labels(&[
        (USE_WAYPOINT_LABEL, "shared"),
        (USE_WAYPOINT_NAMESPACE_LABEL, "infra"),
    ]);
    let r = resolve(&obj, "default", &BTreeMap::new(), &wps, TargetKind::Service);
    assert_eq!(r, Resolution::AttachmentDenied("infra/shared".into()));
    assert_eq!(r.reason(), Some("AttachmentDenied"));
    assert!(r.to_string().contains("fromNamespaces: All"), "{r}");
    // From its own namespace, `Same` admits.
    let r = resolve(&obj, "infra", &BTreeMap::new(), &wps, TargetKind::Service);
    assert_eq!(bound_to(&r), Some(("infra/shared", LabelSource::Object)));
}

#[test]
fn waypoints_own_pod_and_service_are_never_bound() {
    let wps = [wp("default", "waypoint", WaypointFor::All)];
    let ns = labels(&[(USE_WAYPOINT_LABEL, "waypoint")]);
    let own = labels(&[
        (GATEWAY_NAME_LABEL, "waypoint"),
        MANAGED_LABEL,
        (USE_WAYPOINT_LABEL, "waypoint"),
    ]);
    assert!(is_waypoint(&own));
    for kind in KINDS {
        assert_eq!(
            resolve(&own, "default", &ns, &wps, kind),
            Resolution::IsWaypoint
        );
    }
    // The gateway-name label alone does not make a waypoint.
    let lookalike = labels(&[(GATEWAY_NAME_LABEL, "waypoint")]);
    assert!(!is_waypoint(&lookalike));
    assert!(
        bound_to(&resolve(
            &lookalike,
            "default",
            &ns,
            &wps,
            TargetKind::Workload
        ))
        .is_some()
    );
}

#[test]
fn waypoint_for_values_parse_and_bad_ones_are_explained() {
    for (text, want) in [
        ("service", WaypointFor::Service),
        ("workload", WaypointFor::Workload),
        ("all", WaypointFor::All),
        ("none", WaypointFor::None),
    ] {
        assert_eq!(WaypointFor::try_from(text.to_string()), Ok(want));
        assert_eq!(want.as_str(), text);
    }
    let e = WaypointFor::try_from("Service".to_string()).unwrap_err();
    assert!(
        e.contains("`for`") && e.contains("service, workload, all, none"),
        "{e}"
    );
    assert_eq!(WaypointFor::default(), WaypointFor::Service);
    let e = FromNamespaces::try_from("Selector".to_string()).unwrap_err();
    assert!(e.contains("Same or All"), "{e}");
}
