//! Delta responses applied to the store: updates, removals, partial rejection, versions.

use prost::Message;

use super::*;
use crate::proto::discovery::{DeltaDiscoveryResponse, Resource};

fn wl(uid: &str, ip: [u8; 4]) -> workload::Address {
    workload::Address {
        r#type: Some(workload::address::Type::Workload(workload::Workload {
            uid: uid.into(),
            name: uid.rsplit('/').next().unwrap_or(uid).into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
            services: [(
                "default/echo.default.svc.cluster.local".to_string(),
                workload::PortList {
                    ports: vec![workload::Port {
                        service_port: 80,
                        target_port: 8080,
                        app_protocol: 0,
                    }],
                },
            )]
            .into(),
            ..Default::default()
        })),
    }
}

fn svc() -> workload::Address {
    workload::Address {
        r#type: Some(workload::address::Type::Service(workload::Service {
            name: "echo".into(),
            namespace: "default".into(),
            hostname: "echo.default.svc.cluster.local".into(),
            addresses: vec![workload::NetworkAddress {
                network: "".into(),
                address: vec![198, 19, 10, 1],
                length: None,
            }],
            ports: vec![workload::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            ..Default::default()
        })),
    }
}

fn res(name: &str, version: &str, type_url: &str, bytes: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(prost_types::Any {
            type_url: type_url.into(),
            value: bytes,
        }),
        ..Default::default()
    }
}

fn addr_res(name: &str, version: &str, a: workload::Address) -> Resource {
    res(name, version, proto::ADDRESS_TYPE, a.encode_to_vec())
}

fn response(type_url: &str, resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        nonce: "n1".into(),
        ..Default::default()
    }
}

#[test]
fn updates_build_the_snapshot_and_removals_by_name_work() {
    let mut st = XdsStore::default();
    let a = st.apply(&response(
        proto::ADDRESS_TYPE,
        vec![
            addr_res(
                "c1//Pod/default/a",
                "v1",
                wl("c1//Pod/default/a", [198, 18, 1, 2]),
            ),
            addr_res(
                "c1//Pod/default/b",
                "v1",
                wl("c1//Pod/default/b", [198, 18, 2, 2]),
            ),
            addr_res("default/echo.default.svc.cluster.local", "v1", svc()),
        ],
        &[],
    ));
    assert_eq!(a.updated, 3);
    assert!(a.nack_message().is_none());
    let (snap, problems) = st.snapshot(7);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(snap.version, 7);
    assert_eq!(snap.workloads.len(), 2);
    let echo = snap.service_by_vip("198.19.10.1".parse().unwrap()).unwrap();
    assert_eq!(snap.endpoints(echo).len(), 2);
    assert!(snap.workload_by_ip("198.18.2.2".parse().unwrap()).is_some());

    // Removals use resource names: a workload uid and a namespace/hostname.
    let a = st.apply(&response(
        proto::ADDRESS_TYPE,
        vec![],
        &[
            "c1//Pod/default/b",
            "default/echo.default.svc.cluster.local",
        ],
    ));
    assert_eq!(a.removed, 2);
    let (snap, _) = st.snapshot(8);
    assert!(snap.workload_by_ip("198.18.2.2".parse().unwrap()).is_none());
    assert!(
        snap.service_by_vip("198.19.10.1".parse().unwrap())
            .is_none()
    );
    assert_eq!(
        st.versions(proto::ADDRESS_TYPE),
        [("c1//Pod/default/a".to_string(), "v1".to_string())].into()
    );
}

#[test]
fn a_bad_resource_is_rejected_and_the_good_ones_apply() {
    let mut st = XdsStore::default();
    st.apply(&response(
        proto::ADDRESS_TYPE,
        vec![addr_res(
            "c1//Pod/default/a",
            "v1",
            wl("c1//Pod/default/a", [198, 18, 1, 2]),
        )],
        &[],
    ));
    let mut bad = wl("c1//Pod/default/a", [198, 18, 1, 2]);
    if let Some(workload::address::Type::Workload(w)) = &mut bad.r#type {
        w.addresses = vec![vec![1, 2, 3]];
    }
    let a = st.apply(&response(
        proto::ADDRESS_TYPE,
        vec![
            addr_res("c1//Pod/default/a", "v2", bad),
            addr_res(
                "c1//Pod/default/c",
                "v1",
                wl("c1//Pod/default/c", [198, 18, 1, 3]),
            ),
            res("junk", "v1", proto::ADDRESS_TYPE, vec![0xff, 0xff, 0xff]),
            Resource {
                name: "empty".into(),
                ..Default::default()
            },
        ],
        &[],
    ));
    assert_eq!(a.updated, 1);
    let msg = a.nack_message().unwrap();
    assert!(
        msg.starts_with(
            "c1//Pod/default/a: addresses[0]: 3 bytes is not an address (IPv4 is 4 bytes, IPv6 16); junk: decode: "
        ),
        "{msg}"
    );
    assert!(
        msg.ends_with("; empty: resource without a payload"),
        "{msg}"
    );
    let (snap, _) = st.snapshot(2);
    // The old version of the rejected workload keeps serving; the good new one is in.
    assert!(snap.workload_by_ip("198.18.1.2".parse().unwrap()).is_some());
    assert!(snap.workload_by_ip("198.18.1.3".parse().unwrap()).is_some());
    // The version held for the rejected name is still the accepted one; junk is not held.
    let v = st.versions(proto::ADDRESS_TYPE);
    assert_eq!(v["c1//Pod/default/a"], "v1");
    assert!(!v.contains_key("junk"));
}

#[test]
fn policies_are_keyed_by_resource_name() {
    let mut st = XdsStore::default();
    let p = security::Authorization {
        name: "deny".into(),
        namespace: "default".into(),
        scope: security::Scope::Namespace as i32,
        action: security::Action::Deny as i32,
        rules: vec![],
        dry_run: false,
        extensions: vec![],
    };
    let a = st.apply(&response(
        proto::AUTHORIZATION_TYPE,
        vec![res(
            "default/deny",
            "",
            proto::AUTHORIZATION_TYPE,
            p.encode_to_vec(),
        )],
        &[],
    ));
    assert_eq!(a.updated, 1);
    assert_eq!(st.snapshot(1).0.policies.len(), 1);
    assert_eq!(st.versions(proto::AUTHORIZATION_TYPE)["default/deny"], "");
    st.apply(&response(
        proto::AUTHORIZATION_TYPE,
        vec![],
        &["default/deny"],
    ));
    assert_eq!(st.snapshot(2).0.policies.len(), 0);
    assert!(st.versions(proto::AUTHORIZATION_TYPE).is_empty());
}

#[test]
fn conflicts_between_resources_do_not_stop_the_snapshot() {
    let mut st = XdsStore::default();
    st.apply(&response(
        proto::ADDRESS_TYPE,
        vec![
            addr_res("u1", "v", wl("u1", [198, 18, 1, 2])),
            addr_res("u2", "v", wl("u2", [198, 18, 1, 2])),
        ],
        &[],
    ));
    let (snap, problems) = st.snapshot(1);
    assert_eq!(snap.workloads.len(), 2);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .to_string()
            .contains("198.18.1.2 is also the address")
    );
}

#[test]
fn unknown_types_change_nothing() {
    let mut st = XdsStore::default();
    let a = st.apply(&response(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        vec![res("x", "1", "t", vec![1])],
        &[],
    ));
    assert_eq!(a, Applied::default());
    assert_eq!(st.counts(), (0, 0, 0));
}
