//! Snapshot lookups and validation.

use crate::config::snapshot_from_str;

const CFG: &str = r#"
workloads:
- {uid: a, name: a, namespace: ns1, workloadIps: ["198.18.0.1", "fd00::1"], protocol: HBONE, authorizationPolicies: ["ns1/sel", "ns1/missing"], services: {"ns1/svc": {80: 0}}}
- {uid: b, name: b, namespace: ns2, workloadIps: ["198.18.0.2"], status: Unhealthy, services: {"ns1/svc": {80: 8080}}}
services:
- {name: svc, namespace: ns1, hostname: svc, vips: ["/198.19.0.1"], ports: {80: 8081}}
policies:
- {name: g, namespace: istio-system, scope: Global, action: Deny, dryRun: false, rules: []}
- {name: n, namespace: ns1, scope: Namespace, action: Allow, dryRun: false, rules: []}
- {name: n2, namespace: ns2, scope: Namespace, action: Allow, dryRun: false, rules: []}
- {name: sel, namespace: ns1, scope: WorkloadSelector, action: Allow, dryRun: false, rules: []}
- {name: unlisted, namespace: ns1, scope: WorkloadSelector, action: Deny, dryRun: false, rules: []}
"#;

#[test]
fn lookups() {
    let s = snapshot_from_str("t", CFG, 3).unwrap();
    assert_eq!(
        s.workload_by_ip("fd00::1".parse().unwrap()).unwrap().uid,
        "a"
    );
    assert_eq!(s.workload_by_uid("b").unwrap().name, "b");
    assert!(s.workload_by_ip("198.18.0.9".parse().unwrap()).is_none());
    let svc = s.service_by_vip("198.19.0.1".parse().unwrap()).unwrap();
    assert_eq!(s.service_by_key("ns1/svc").unwrap().name, "svc");
    // The unhealthy workload is not an endpoint.
    let eps = s.endpoints(svc);
    assert_eq!(eps.len(), 1);
    // Endpoint port 0 falls back to the service's target port.
    assert_eq!(svc.target_port(&eps[0].ports, 80), Some(8081));
    // Trust domain and service account defaults.
    assert_eq!(
        s.identity_of("a").unwrap().to_string(),
        "spiffe://cluster.local/ns/ns1/sa/default"
    );
}

#[test]
fn applicable_policies() {
    let s = snapshot_from_str("t", CFG, 3).unwrap();
    let a = s.workload_by_uid("a").unwrap();
    let mut names: Vec<_> = s.policies_for(a).map(|p| p.name.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["g", "n", "sel"]);
    let b = s.workload_by_uid("b").unwrap();
    let mut names: Vec<_> = s.policies_for(b).map(|p| p.name.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["g", "n2"]);
}

#[test]
fn duplicates_rejected() {
    let dup_vip = CFG.replace("vips: [\"/198.19.0.1\"]", "vips: [\"/198.18.0.1\"]");
    let e = snapshot_from_str("t", &dup_vip, 1).unwrap_err().to_string();
    assert!(e.contains("also a workload address"), "{e}");
    let dup_uid = CFG.replace("{uid: b,", "{uid: a,");
    let e = snapshot_from_str("t", &dup_uid, 1).unwrap_err().to_string();
    assert!(e.contains("duplicate uid"), "{e}");
    let unknown_ep = CFG.replace(
        "ports: {80: 8081}}",
        "ports: {80: 8081}, endpoints: {x: {workloadUid: nope, port: {}, status: Healthy}}}",
    );
    let e = snapshot_from_str("t", &unknown_ep, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown workload uid \"nope\""), "{e}");
}

#[test]
fn names_with_control_characters_are_rejected() {
    // These names go into HBONE CONNECT headers (`forwarded: …;host=<hostname>`, `baggage`),
    // where a control character cannot be written: such a config would make every
    // connection to or from the entry fail, so the file is refused, naming the field.
    let bad_host = CFG.replace("hostname: svc,", "hostname: \"svc\\n\",");
    let e = snapshot_from_str("t", &bad_host, 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hostname") && e.contains("control character"),
        "{e}"
    );
    let bad_name = CFG.replace(
        "{uid: a, name: a, namespace: ns1,",
        "{uid: a, name: a, namespace: ns1, canonicalName: \"a\\u007f\",",
    );
    let e = snapshot_from_str("t", &bad_name, 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("canonicalName") && e.contains("control character"),
        "{e}"
    );
    let bad_zone = CFG.replace(
        "{uid: b, name: b,",
        "{uid: b, locality: {region: r, zone: \"z\\r\"}, name: b,",
    );
    let e = snapshot_from_str("t", &bad_zone, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("locality.zone"), "{e}");
    // Other characters are names like any other.
    let ok = CFG.replace("hostname: svc,", "hostname: \"svc.ns1.svc.cluster.local\",");
    assert!(snapshot_from_str("t", &ok, 1).is_ok());
}
