//! Routing decisions over a snapshot.

use super::*;
use crate::config::snapshot_from_str;

const CFG: &str = r#"
workloads:
- {uid: c, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, services: {}}
- {uid: s1, name: s1, namespace: default, serviceAccount: server, workloadIps: ["198.18.1.3"], protocol: HBONE, services: {"default/echo.svc": {80: 8080}}}
- {uid: s2, name: s2, namespace: default, serviceAccount: server, workloadIps: ["198.18.2.3"], protocol: HBONE, services: {"default/echo.svc": {80: 8080}}}
- {uid: out, name: out, namespace: default, workloadIps: ["198.18.1.9"], protocol: TCP, services: {"default/plain.svc": {}}}
- {uid: wp, name: waypoint, namespace: default, serviceAccount: waypoint, workloadIps: ["198.18.1.20"], protocol: HBONE, services: {"default/waypoint.svc": {15008: 15008}}}
- {uid: behind, name: behind, namespace: default, serviceAccount: behind, workloadIps: ["198.18.1.21"], protocol: HBONE, services: {},
   waypoint: {destination: "default/waypoint.svc", hboneMtlsPort: 15008}}
services:
- {name: echo, namespace: default, hostname: echo.svc, vips: ["/198.19.10.1"], ports: {80: 8080}, subjectAltNames: ["spiffe://cluster.local/ns/default/sa/echo-san"]}
- {name: plain, namespace: default, hostname: plain.svc, vips: ["/198.19.10.2"], ports: {80: 9090}}
- {name: empty, namespace: default, hostname: empty.svc, vips: ["/198.19.10.3"], ports: {80: 80}}
- {name: waypoint, namespace: default, hostname: waypoint.svc, vips: ["/198.19.10.4"], ports: {15008: 15008}}
- {name: wsvc, namespace: default, hostname: w.svc, vips: ["/198.19.10.5"], ports: {80: 80}, waypoint: {destination: "/198.18.1.20", hboneMtlsPort: 15008}}
"#;

fn r(orig: &str, rr: usize) -> Result<Route, RouteError> {
    let snap = snapshot_from_str("t", CFG, 1).unwrap();
    let src = snap.workload_by_uid("c").unwrap().clone();
    route(
        &snap,
        &src,
        orig.parse().unwrap(),
        15008,
        &[15001, 15006, 15008],
        |_| rr,
    )
}

#[test]
fn service_vip_round_robins_and_maps_port() {
    let a = r("198.19.10.1:80", 0).unwrap();
    let b = r("198.19.10.1:80", 1).unwrap();
    let Route::Hbone {
        next_hop,
        authority,
        expected,
        service_host,
    } = a
    else {
        panic!("{a:?}")
    };
    assert_eq!(next_hop, "198.18.1.3:15008".parse().unwrap());
    assert_eq!(authority, "198.18.1.3:8080".parse().unwrap());
    assert_eq!(service_host.as_deref(), Some("echo.svc"));
    assert_eq!(
        expected[0].to_string(),
        "spiffe://cluster.local/ns/default/sa/server"
    );
    assert_eq!(
        expected[1].to_string(),
        "spiffe://cluster.local/ns/default/sa/echo-san"
    );
    let Route::Hbone { authority, .. } = b else {
        panic!()
    };
    assert_eq!(authority, "198.18.2.3:8080".parse().unwrap());
}

#[test]
fn pod_ip_goes_to_that_pod() {
    let Route::Hbone {
        next_hop,
        authority,
        ..
    } = r("198.18.2.3:7000", 0).unwrap()
    else {
        panic!()
    };
    assert_eq!(next_hop, "198.18.2.3:15008".parse().unwrap());
    assert_eq!(authority, "198.18.2.3:7000".parse().unwrap());
}

#[test]
fn uncaptured_and_unknown_pass_through() {
    assert_eq!(
        r("198.18.1.9:80", 0).unwrap(),
        Route::Passthrough {
            dst: "198.18.1.9:80".parse().unwrap()
        }
    );
    assert_eq!(
        r("198.19.10.2:80", 0).unwrap(),
        Route::Passthrough {
            dst: "198.18.1.9:9090".parse().unwrap()
        }
    );
    assert_eq!(
        r("198.18.99.1:443", 0).unwrap(),
        Route::Passthrough {
            dst: "198.18.99.1:443".parse().unwrap()
        }
    );
}

#[test]
fn errors() {
    assert_eq!(
        r("198.19.10.3:80", 0).unwrap_err(),
        RouteError::NoHealthyUpstream("default/empty.svc".into())
    );
    assert!(matches!(
        r("198.19.10.1:81", 0).unwrap_err(),
        RouteError::NoTargetPort { .. }
    ));
    assert!(matches!(
        r("127.0.0.1:15001", 0).unwrap_err(),
        RouteError::SelfCall(_)
    ));
    assert!(matches!(
        r("198.18.1.2:15008", 0).unwrap_err(),
        RouteError::SelfCall(_)
    ));
}

#[test]
fn waypoints() {
    // Workload waypoint, by hostname.
    let Route::Hbone {
        next_hop,
        authority,
        expected,
        ..
    } = r("198.18.1.21:80", 0).unwrap()
    else {
        panic!()
    };
    assert_eq!(next_hop, "198.18.1.20:15008".parse().unwrap());
    assert_eq!(authority, "198.18.1.21:80".parse().unwrap());
    assert_eq!(
        expected[0].to_string(),
        "spiffe://cluster.local/ns/default/sa/waypoint"
    );
    // Service waypoint, by address: authority stays the VIP.
    let Route::Hbone {
        next_hop,
        authority,
        ..
    } = r("198.19.10.5:80", 0).unwrap()
    else {
        panic!()
    };
    assert_eq!(next_hop, "198.18.1.20:15008".parse().unwrap());
    assert_eq!(authority, "198.19.10.5:80".parse().unwrap());
}
