//! The xDS client and the CA client against the lab's control plane, in one process on
//! loopback: real TLS (the control plane's certificate is for istiod's name, so the clients
//! need ALT_*_HOSTNAME), real gRPC (tonic on both sides), real delta ADS and CSRs.
//! No root needed.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;
use ringmesh::certs::caclient::{CaClient, CaClientError};
use ringmesh::config::LocalConfig;
use ringmesh::config::env::{AuthSource, RootSource};
use ringmesh::identity::Identity;
use ringmesh::identity::ca::Ca;
use ringmesh::lab::istiod::{Caller, Event, Istiod, IstiodConfig};
use ringmesh::proto;
use ringmesh::state::Snapshot;
use ringmesh::telemetry::metrics::ControlMetrics;
use ringmesh::xds::client::{XdsConfig, XdsEvent, XdsStatus};
use ringmesh::xds::grpc::{Target, parse_address};
use tokio::sync::mpsc;

const CFG: &str = r#"
workloads:
- {uid: c1//Pod/default/web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-a, services: {"default/echo.default.svc.cluster.local": {80: 8080}}}
- {uid: c1//Pod/default/db, name: db, namespace: default, serviceAccount: db, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-b, services: {"default/echo.default.svc.cluster.local": {80: 8080}}}
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["/198.19.10.1"], ports: {80: 8080}}
policies: []
"#;

const NAME: &str = "istiod.istio-system.svc";

struct Plane {
    istiod: Option<Istiod>,
    dir: tempfile::TempDir,
    root_pem: std::path::PathBuf,
    port: u16,
}

fn tokens() -> HashMap<String, Caller> {
    let c = |ns: &str, sa: &str, node: &str| Caller {
        namespace: ns.into(),
        service_account: sa.into(),
        node: Some(node.into()),
    };
    [
        (
            "tok-node-a".to_string(),
            c("istio-system", "ztunnel", "node-a"),
        ),
        ("tok-app".to_string(), c("default", "web", "node-a")),
    ]
    .into()
}

fn start(dir: tempfile::TempDir, port: u16, cfg: LocalConfig) -> Plane {
    let ca_cert = dir.path().join("ca.pem");
    let ca = Ca::load(&ca_cert, &dir.path().join("ca.key")).unwrap();
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let port = l.local_addr().unwrap().port();
    let istiod = Istiod::start(
        l,
        IstiodConfig {
            root: ca,
            trust_domain: "cluster.local".into(),
            tokens: tokens(),
            trusted_node_accounts: vec![("istio-system".into(), "ztunnel".into())],
            server_names: vec![NAME.into()],
            server_ips: vec![],
        },
        cfg,
    )
    .unwrap();
    Plane {
        istiod: Some(istiod),
        root_pem: ca_cert,
        dir,
        port,
    }
}

fn plane() -> Plane {
    let dir = tempfile::tempdir().unwrap();
    Ca::generate(SystemTime::now())
        .unwrap()
        .save(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
        .unwrap();
    start(dir, 0, ringmesh::config::parse("t", CFG).unwrap())
}

fn target(p: &Plane, what: &'static str, token: &str, alt: Option<&str>) -> Target {
    Target {
        what,
        uri: parse_address(what, &format!("127.0.0.1:{}", p.port)).unwrap(),
        root: RootSource::File(p.root_pem.clone()),
        alt_hostname: alt.map(str::to_string),
        auth: AuthSource::Static(token.into()),
        cluster_id: "Kubernetes".into(),
        headers: vec![],
    }
}

fn xds_config(p: &Plane, token: &str, alt: Option<&str>) -> XdsConfig {
    XdsConfig {
        target: target(p, "xDS", token, alt),
        node: proto::discovery::Node {
            id: "ztunnel~198.19.255.1~ztunnel-a.istio-system~istio-system.svc.cluster.local".into(),
            metadata: Some(ringmesh::xds::client::node_metadata(
                "ztunnel-a",
                "istio-system",
                "198.19.255.1",
                "node-a",
                &[],
                &[],
            )),
            ..Default::default()
        },
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
    }
}

/// Waits for the next snapshot that satisfies `f` (or panics after 10 s).
async fn snapshot_where(
    rx: &mut mpsc::UnboundedReceiver<XdsEvent>,
    synced: &mut bool,
    f: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no matching snapshot within 10 s")
            .expect("client gone");
        match ev {
            XdsEvent::Synced => *synced = true,
            XdsEvent::Snapshot(s) if f(&s) => return *s,
            XdsEvent::Snapshot(_) => {}
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits for an event at the control plane, running the client's runtime meanwhile.
fn wait_event(rt: &tokio::runtime::Runtime, p: &Plane, f: impl Fn(&Event) -> bool) -> Event {
    for _ in 0..500 {
        if let Some(e) = p
            .istiod
            .as_ref()
            .unwrap()
            .events()
            .into_iter()
            .find(|e| f(e))
        {
            return e;
        }
        rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
    }
    panic!(
        "event not seen; events: {:#?}",
        p.istiod.as_ref().unwrap().events()
    );
}

#[test]
fn xds_sync_updates_nack_and_resync_after_a_control_plane_restart() {
    let mut p = plane();
    let rt = rt();
    let status = Arc::new(Mutex::new(XdsStatus::default()));
    let metrics = Arc::new(ControlMetrics::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _g = rt.enter();
    let client = ringmesh::xds::client::spawn(
        xds_config(&p, "tok-node-a", Some(NAME)),
        tx,
        metrics.clone(),
        status.clone(),
    );
    let mut synced = false;
    // First sync: both workloads, the service with two endpoints; synced after both ACKs.
    let snap = rt.block_on(snapshot_where(&mut rx, &mut synced, |s| {
        s.workloads.len() == 2 && s.services.len() == 1
    }));
    let echo = snap
        .service_by_vip("198.19.10.1".parse().unwrap())
        .unwrap()
        .clone();
    assert_eq!(snap.endpoints(&echo).len(), 2);
    while !synced {
        match rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.recv()).await }) {
            Ok(Some(XdsEvent::Synced)) => synced = true,
            Ok(Some(_)) => {}
            other => panic!("not synced: {other:?}"),
        }
    }
    wait_event(
        &rt,
        &p,
        |e| matches!(e, Event::Ack { type_url, .. } if type_url == proto::AUTHORIZATION_TYPE),
    );

    // A push: db removed, a DENY policy added.
    let mut cfg = ringmesh::config::parse("t", CFG).unwrap();
    cfg.workloads.retain(|w| w.name != "db");
    cfg.policies = serde_yaml_ng::from_str(
        "- {name: deny-all, namespace: default, scope: Namespace, action: Deny, dryRun: false, rules: [[]]}",
    )
    .unwrap();
    p.istiod.as_ref().unwrap().set_config(cfg.clone());
    rt.block_on(snapshot_where(&mut rx, &mut synced, |s| {
        s.workloads.len() == 1 && s.policies.len() == 1
    }));

    // One push with a malformed workload and a good one: NACK naming the bad one, the good
    // one applies.
    let bad = vec![0x0a, 0x05, 0xff, 0xff];
    let good = proto::workload::Address {
        r#type: Some(proto::workload::address::Type::Workload(
            proto::workload::Workload {
                uid: "c1//Pod/default/late".into(),
                name: "late".into(),
                namespace: "default".into(),
                addresses: vec![vec![198, 18, 1, 9]],
                ..Default::default()
            },
        )),
    };
    p.istiod.as_ref().unwrap().inject_many(vec![
        (
            proto::ADDRESS_TYPE.into(),
            "c1//Pod/default/broken".into(),
            bad,
        ),
        (
            proto::ADDRESS_TYPE.into(),
            "c1//Pod/default/late".into(),
            good.encode_to_vec(),
        ),
    ]);
    rt.block_on(snapshot_where(&mut rx, &mut synced, |s| {
        s.workload_by_uid("c1//Pod/default/late").is_some()
    }));
    let nack = wait_event(&rt, &p, |e| matches!(e, Event::Nack { .. }));
    let Event::Nack {
        message, type_url, ..
    } = nack
    else {
        unreachable!()
    };
    assert_eq!(type_url, proto::ADDRESS_TYPE);
    assert!(
        message.starts_with("c1//Pod/default/broken: decode: "),
        "{message}"
    );
    assert!(!message.contains("late"), "{message}");
    {
        let st = status.lock().unwrap();
        let t = &st.types[proto::ADDRESS_TYPE];
        assert!(!t.acked && t.rejected.as_deref() == Some(message.as_str()));
    }

    // The control plane restarts with `late` gone: the client keeps serving its last state
    // while disconnected, reconnects with what it holds, and the new server removes `late`.
    let port = p.port;
    p.istiod = None;
    rt.block_on(tokio::time::sleep(Duration::from_millis(300)));
    assert!(!status.lock().unwrap().connected);
    let dir = std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap());
    let p2 = start(dir, port, cfg);
    let snap = rt.block_on(snapshot_where(&mut rx, &mut synced, |s| {
        s.workload_by_uid("c1//Pod/default/late").is_none()
    }));
    assert_eq!(snap.workloads.len(), 1);
    assert_eq!(snap.policies.len(), 1);
    assert!(status.lock().unwrap().connects >= 2);
    wait_event(&rt, &p2, |e| matches!(e, Event::Connected { .. }));
    // Metrics: responses counted by type, and the lost connection.
    let m = ringmesh::telemetry::metrics::Metrics::with_control(metrics.clone()).encode();
    assert!(
        m.contains("istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"}"),
        "{m}"
    );
    assert!(
        m.contains("istio_xds_connection_terminations_total{reason="),
        "{m}"
    );
    client.abort();
}

#[test]
fn xds_refuses_a_bad_token_a_wrong_name_and_an_unknown_root() {
    let p = plane();
    let rt = rt();
    let _g = rt.enter();
    let run = |cfg: XdsConfig| {
        let status = Arc::new(Mutex::new(XdsStatus::default()));
        let (tx, _rx) = mpsc::unbounded_channel();
        let h = ringmesh::xds::client::spawn(
            cfg,
            tx,
            Arc::new(ControlMetrics::default()),
            status.clone(),
        );
        rt.block_on(tokio::time::sleep(Duration::from_millis(600)));
        h.abort();
        status.lock().unwrap().clone()
    };
    let st = run(xds_config(&p, "nope", Some(NAME)));
    assert!(!st.synced);
    let e = st.last_error.unwrap_or_default();
    assert!(
        e.contains("Unauthenticated") && e.contains("authentication failure"),
        "{e}"
    );
    // The certificate is for istiod's name, not 127.0.0.1: without the alternative name the
    // TLS handshake fails.
    let st = run(xds_config(&p, "tok-node-a", None));
    let e = st.last_error.unwrap_or_default();
    assert!(!st.synced && e.contains("cannot connect"), "{e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // A root that did not sign the server: refused too.
    let other = tempfile::tempdir().unwrap();
    let other_root = other.path().join("root.pem");
    Ca::generate(SystemTime::now())
        .unwrap()
        .save(&other_root, &other.path().join("root.key"))
        .unwrap();
    let mut cfg = xds_config(&p, "tok-node-a", Some(NAME));
    cfg.target.root = RootSource::File(other_root);
    let st = run(cfg);
    let e = st.last_error.unwrap_or_default();
    assert!(
        !st.synced && e.to_lowercase().contains("certificate"),
        "{e}"
    );
}

#[test]
fn the_ca_signs_only_what_the_caller_may_have() {
    let p = plane();
    let rt = rt();
    let ttl = Duration::from_secs(3600);
    let web = Identity::new("cluster.local", "default", "web");
    let db = Identity::new("cluster.local", "default", "db");
    // The node proxy of node-a gets web's certificate (web runs on node-a): leaf +
    // intermediate presented, the root as trust anchor, the key never left this process.
    let ca = CaClient::new(target(&p, "CA", "tok-node-a", Some(NAME)), ttl);
    let cert = rt.block_on(ca.fetch(&web)).unwrap();
    assert_eq!(cert.chain.len(), 2, "leaf + intermediate");
    assert_eq!(cert.roots.len(), 1);
    assert_eq!(
        ringmesh::identity::svid::identity_of(&cert.chain[0]).unwrap(),
        web
    );
    let root = Ca::load(&p.root_pem, &p.dir.path().join("ca.key")).unwrap();
    assert_eq!(&cert.roots[0], root.root());
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(
        life >= ttl && life < ttl + Duration::from_secs(300),
        "{life:?}"
    );
    // ...but not db's (db runs on node-b).
    let e = rt.block_on(ca.fetch(&db)).unwrap_err();
    match &e {
        CaClientError::Refused { code, message, .. } => {
            assert_eq!(*code, tonic::Code::Unauthenticated);
            assert!(
                message.contains("no instances of \"default/db\" found on node \"node-a\""),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    // An application's token may not impersonate at all.
    let app = CaClient::new(target(&p, "CA", "tok-app", Some(NAME)), ttl);
    let e = rt.block_on(app.fetch(&db)).unwrap_err().to_string();
    assert!(e.contains("not allowed to impersonate"), "{e}");
    // An unknown token is not authenticated.
    let anon = CaClient::new(target(&p, "CA", "who", Some(NAME)), ttl);
    let e = rt.block_on(anon.fetch(&web)).unwrap_err().to_string();
    assert!(e.contains("request authenticate failure"), "{e}");
    let ev = p.istiod.as_ref().unwrap().events();
    let refused = ev
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Certificate {
                    refused: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, 2, "{ev:#?}");
}
