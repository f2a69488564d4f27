//! ztunnel's environment on the real binary: `ringmesh node --dry-run` and `ringmesh proxy
//! ztunnel --dry-run` with a clean environment plus the variables under test, checking the
//! effective settings they print; bad values stop the start naming the variable; unsupported
//! ones are named in one warning. No root, no network.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringmesh");

/// Runs the binary with exactly `vars` (and PATH) in its environment.
fn run(args: &[&str], vars: &[(&str, &str)]) -> (i32, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn settings(args: &[&str], vars: &[(&str, &str)]) -> serde_json::Value {
    let (code, out, err) = run(args, vars);
    assert_eq!(code, 0, "{args:?} {vars:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn every_flag_backed_variable_reaches_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(&cfg, "workloads: []\n").unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "t").unwrap();
    let cfg_s = cfg.display().to_string();
    let tok_s = tok.display().to_string();
    let vars = [
        ("ZTUNNEL_WORKER_THREADS", "1"),
        ("POOL_MAX_STREAMS_PER_CONNECTION", "50"),
        ("POOL_UNUSED_RELEASE_TIMEOUT", "2m"),
        ("HTTP2_STREAM_WINDOW_SIZE", "1048576"),
        ("HTTP2_CONNECTION_WINDOW_SIZE", "4194304"),
        ("HTTP2_FRAME_SIZE", "65536"),
        ("KEEPALIVE_TIME", "60s"),
        ("KEEPALIVE_INTERVAL", "1m30s"),
        ("KEEPALIVE_RETRIES", "3"),
        ("SECRET_TTL", "12h"),
        ("PACKET_MARK", "1338"),
        ("ENABLE_ORIG_SRC", "false"),
        ("INPOD_UDS", "/run/x.sock"),
        ("LOCAL_XDS_PATH", cfg_s.as_str()),
        ("CA_ADDRESS", "ca.example:443"),
        ("CA_ROOT_CA", "/etc/ca.pem"),
        ("ALT_CA_HOSTNAME", "ca.example"),
        ("AUTH_TOKEN", tok_s.as_str()),
        ("NETWORK", "net1"),
        ("POD_NAME", "ztunnel-x"),
        ("POD_NAMESPACE", "istio-system"),
        ("NODE_NAME", "node-a"),
        ("INSTANCE_IP", "198.18.0.9"),
        ("SERVICE_ACCOUNT", "ztunnel"),
        ("CLUSTER_ID", "c3"),
        ("ISTIO_META_ENABLE_HBONE", "true"),
        ("ISTIO_METAJSON_LABELS", "{\"app\":\"ztunnel\"}"),
        ("RINGMESH_IO_ENGINE", "epoll"),
    ];
    let s = settings(&["node", "--dry-run"], &vars);
    let want = [
        ("shards", serde_json::json!(1)),
        ("poolMaxStreamsPerConnection", 50.into()),
        ("poolUnusedReleaseTimeoutSeconds", 120.into()),
        ("http2StreamWindowSize", 1_048_576.into()),
        ("http2ConnectionWindowSize", 4_194_304.into()),
        ("http2FrameSize", 65_536.into()),
        (
            "keepalive",
            serde_json::json!({"time": 60, "interval": 90, "retries": 3}),
        ),
        ("certTtlSeconds", (12 * 3600).into()),
        ("packetMark", 1338.into()),
        ("origSrc", "Off".into()),
        ("zdsSocket", "/run/x.sock".into()),
        ("configSource", "file".into()),
        ("configFile", cfg_s.clone().into()),
        ("caSource", "istio".into()),
        ("caAddress", "ca.example:443".into()),
        ("caRootCa", "/etc/ca.pem".into()),
        ("altCaHostname", "ca.example".into()),
        ("authToken", format!("file {tok_s}").into()),
        ("network", "net1".into()),
        ("nodeName", "node-a".into()),
        ("clusterId", "c3".into()),
        (
            "nodeId",
            "ztunnel~198.18.0.9~ztunnel-x.istio-system~istio-system.svc.cluster.local".into(),
        ),
        ("serviceAccount", "ztunnel".into()),
        ("ioEngine", "epoll".into()),
    ];
    for (k, v) in want {
        assert_eq!(s[k], v, "{k} in {s:#}");
    }
    assert_eq!(s["nodeMetadata"]["ENABLE_HBONE"], "true");
    assert_eq!(s["nodeMetadata"]["LABELS"]["app"], "ztunnel");
    // A flag wins over its variable.
    let s = settings(
        &[
            "node",
            "--dry-run",
            "--pool-max-streams",
            "9",
            "--network",
            "n2",
        ],
        &vars,
    );
    assert_eq!(s["poolMaxStreamsPerConnection"], 9);
    assert_eq!(s["network"], "n2");
}

#[test]
fn the_charts_environment_under_proxy_ztunnel() {
    let vars = [
        ("CA_ADDRESS", "istiod.istio-system.svc:15012"),
        ("XDS_ADDRESS", "istiod.istio-system.svc:15012"),
        ("RUST_LOG", "info"),
        ("RUST_BACKTRACE", "1"),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("INPOD_ENABLED", "true"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("POD_NAME", "ztunnel-abcde"),
        ("POD_NAMESPACE", "istio-system"),
        ("NODE_NAME", "node-a"),
        ("INSTANCE_IP", "198.18.0.9"),
        ("SERVICE_ACCOUNT", "ztunnel"),
        ("ZTUNNEL_CPU_LIMIT", "1"),
        ("ISTIO_META_ENABLE_HBONE", "true"),
    ];
    let (code, out, err) = run(&["proxy", "ztunnel", "--dry-run"], &vars);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["configSource"], "xds");
    assert_eq!(s["xdsAddress"], "istiod.istio-system.svc:15012");
    assert_eq!(s["caSource"], "istio");
    assert_eq!(s["xdsRootCa"], "/var/run/secrets/istio/root-cert.pem");
    assert_eq!(s["shards"], 1, "ZTUNNEL_CPU_LIMIT caps the shards");
    assert_eq!(s["nodeMetadata"]["CLUSTER_ID"], "Kubernetes");
    // Everything the chart sets is supported: no warning; its grace period sets the drain.
    assert!(!err.contains("does not support"), "{err}");
    assert_eq!(s["drainDeadline"], "25s", "{s}");
    // No address at all: ztunnel's default, inside and outside Kubernetes.
    let s = settings(&["proxy", "ztunnel", "--dry-run"], &[]);
    assert_eq!(s["xdsAddress"], "localhost:15012");
    let s = settings(
        &["proxy", "ztunnel", "--dry-run"],
        &[("KUBERNETES_SERVICE_HOST", "10.96.0.1")],
    );
    assert_eq!(s["xdsAddress"], "istiod.istio-system.svc:15012");
    // JSON logs on request.
    let (_, _, err) = run(
        &["proxy", "ztunnel", "--dry-run"],
        &[("LOG_FORMAT", "json"), ("CRL_PATH", "/x")],
    );
    let line = err
        .lines()
        .find(|l| l.contains("does not support"))
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(j["level"], "WARN");
}

#[test]
fn bad_values_stop_the_start_naming_the_variable() {
    for (k, v, want) in [
        (
            "KEEPALIVE_ENABLED",
            "1",
            "KEEPALIVE_ENABLED=\"1\": expected true or false",
        ),
        (
            "ZTUNNEL_WORKER_THREADS",
            "150%",
            "ZTUNNEL_WORKER_THREADS=\"150%\"",
        ),
        (
            "SECRET_TTL",
            "1.5h",
            "SECRET_TTL=\"1.5h\": expected a duration",
        ),
        ("PROXY_MODE", "dedicated", "shared (in-pod) mode only"),
    ] {
        let (code, _, err) = run(&["proxy", "ztunnel"], &[(k, v)]);
        assert_eq!(code, 1, "{k}={v}: {err}");
        assert!(
            err.contains("invalid environment") && err.contains(want),
            "{k}={v}: {err}"
        );
    }
    // Bad combinations are explained too.
    let (code, _, err) = run(
        &["node", "--dry-run"],
        &[
            ("LOCAL_XDS_PATH", "/c.yaml"),
            ("XDS_ADDRESS", "istiod:15012"),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("choose one"), "{err}");
    let (code, _, err) = run(&["node", "--dry-run"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no config source"), "{err}");
    let (code, _, err) = run(
        &["node", "--dry-run"],
        &[("XDS_ADDRESS", "http://istiod:15010")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("only https://"), "{err}");
    let (code, _, err) = run(&["node", "--dry-run", "--config", "/no/such.yaml"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read config file /no/such.yaml"),
        "{err}"
    );
}
