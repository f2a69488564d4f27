//! Tests of the bookkeeping that travels with a tunnel: it survives its encoding, and the
//! access log's start time and errors come out of it as they went in.

use super::*;

fn meta() -> TunnelMeta {
    TunnelMeta {
        direction: "inbound".into(),
        pod: "uid-1".into(),
        src: "198.18.0.2:40000".parse().unwrap(),
        src_id: Some("spiffe://cluster.local/ns/default/sa/client".into()),
        dst: "198.18.1.2:15008".parse().unwrap(),
        hbone_addr: Some("198.18.1.2:9000".parse().unwrap()),
        dst_id: Some("spiffe://cluster.local/ns/default/sa/server".into()),
        service: Some("echo.default.svc.cluster.local".into()),
        labels: Arc::new(TcpLabels::new(
            "destination",
            &Default::default(),
            &Default::default(),
            None,
            true,
            "-",
        )),
        started_unix_ms: unix_ms_ago(Duration::from_secs(90)),
        policy: Some(PolicyMeta {
            dst_uid: "uid-1".into(),
            src: "198.18.0.2:40000".parse().unwrap(),
            dst: "198.18.1.2:9000".parse().unwrap(),
            src_identity: Some("spiffe://cluster.local/ns/default/sa/client".into()),
        }),
    }
}

#[test]
fn tunnel_meta_round_trips_and_names_the_app_port() {
    let m = meta();
    let back: TunnelMeta = serde_json::from_slice(&m.encode()).unwrap();
    assert_eq!(back, m);
    assert_eq!(m.app_port(), 9000);
    let mut out = m.clone();
    out.hbone_addr = None;
    assert_eq!(out.app_port(), 15008);
}

#[test]
fn a_carried_start_time_gives_the_age_of_the_connection() {
    let age = started_at(meta().started_unix_ms).elapsed();
    assert!(
        (Duration::from_secs(89)..Duration::from_secs(120)).contains(&age),
        "{age:?}"
    );
    // A start in the future (clock moved) is now, not a panic.
    assert!(started_at(u64::MAX / 2).elapsed() < Duration::from_secs(5));
}

#[test]
fn tunnel_ends_read_as_access_log_errors() {
    assert_eq!(end_error(&TunnelEnd::Done), None);
    assert_eq!(end_error(&TunnelEnd::Moved), None);
    assert_eq!(
        end_error(&TunnelEnd::Refused(401)).as_deref(),
        Some("HBONE CONNECT answered 401")
    );
    assert!(
        end_error(&TunnelEnd::App("broken pipe".into()))
            .unwrap()
            .contains("broken pipe")
    );
}
