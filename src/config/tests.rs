//! Config parsing: ztunnel's own example shapes load, and errors name file, entry and field.

use super::*;
use crate::policy::{Action, Scope, StringMatch};
use crate::state::Protocol;

const EXAMPLE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/client
  name: client
  namespace: default
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["198.18.0.1"]
  protocol: HBONE
  node: node-a
  services: {}
- uid: cluster1//v1/Pod/default/server
  name: server
  namespace: default
  serviceAccount: server
  trustDomain: cluster.local
  workloadIps: ["198.18.0.2"]
  protocol: HBONE
  node: node-b
  services:
    "default/echo.default.svc.cluster.local":
      80: 8080
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/198.19.0.10"]
  ports: {80: 8080}
policies:
- name: deny-9999
  namespace: default
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - notDestinationPorts: [9999]
- name: deny-web
  namespace: default
  scope: Global
  action: Deny
  dryRun: false
  rules:
  - - - principals: [!Exact "cluster.local/ns/default/sa/web", !Prefix "x", !Suffix "y", !Presence []]
"#;

#[test]
fn loads_ztunnel_local_config() {
    let s = snapshot_from_str("t.yaml", EXAMPLE, 7).unwrap();
    assert_eq!(s.version, 7);
    let c = s
        .workload_by_uid("cluster1//v1/Pod/default/client")
        .unwrap();
    assert_eq!(c.protocol, Protocol::HBONE);
    assert_eq!(
        c.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/client"
    );
    let svc = s.service_by_vip("198.19.0.10".parse().unwrap()).unwrap();
    let eps = s.endpoints(svc);
    assert_eq!(eps.len(), 1);
    assert_eq!(svc.target_port(&eps[0].ports, 80), Some(8080));
    let p = &s.policies[1];
    assert_eq!((p.scope, p.action), (Scope::Global, Action::Deny));
    assert_eq!(
        p.rules[0][0][0].principals,
        vec![
            StringMatch::Exact("cluster.local/ns/default/sa/web".into()),
            StringMatch::Prefix("x".into()),
            StringMatch::Suffix("y".into()),
            StringMatch::Presence()
        ]
    );
}

#[test]
fn empty_file_is_empty_config() {
    let s = snapshot_from_str("e.yaml", "\n", 1).unwrap();
    assert!(s.workloads.is_empty());
}

#[test]
fn parse_errors_name_file_and_field() {
    let bad = EXAMPLE.replace(
        "protocol: HBONE\n  node: node-a",
        "protocol: HBONX\n  node: node-a",
    );
    let e = snapshot_from_str("bad.yaml", &bad, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.yaml"), "{e}");
    assert!(e.contains("workloads[0].protocol"), "{e}");
    assert!(e.contains("HBONX"), "{e}");

    let unknown = EXAMPLE.replace("node: node-a", "nodeName: node-a");
    let e = snapshot_from_str("u.yaml", &unknown, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nodeName"), "{e}");

    let bad_ip = EXAMPLE.replace("[\"198.18.0.1\"]", "[\"198.18.0.300\"]");
    let e = snapshot_from_str("ip.yaml", &bad_ip, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("workloads[0].workloadIps"), "{e}");

    let bad_vip = EXAMPLE.replace("/198.19.0.10", "198.19.0.10");
    let e = snapshot_from_str("v.yaml", &bad_vip, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("services[0].vips"), "{e}");

    // The map form of a string match is rejected, as ztunnel rejects it.
    let map_form = EXAMPLE.replace("!Exact \"cluster.local/ns/default/sa/web\"", "{Exact: x}");
    assert!(snapshot_from_str("m.yaml", &map_form, 1).is_err());
}

#[test]
fn validation_errors_name_entry_and_field() {
    let dup = EXAMPLE.replace("[\"198.18.0.2\"]", "[\"198.18.0.1\"]");
    let e = snapshot_from_str("d.yaml", &dup, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.yaml"), "{e}");
    assert!(e.contains("workloads[1]"), "{e}");
    assert!(
        e.contains("workloadIps: 198.18.0.1 is also the address"),
        "{e}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let e = load(Path::new("/nonexistent/ringmesh.yaml"), 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read config file /nonexistent/ringmesh.yaml"),
        "{e}"
    );
}
