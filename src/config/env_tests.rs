//! ztunnel's variables: what the chart sets becomes ringmesh's settings; bad values are
//! refused with the variable's name; unsupported ones are named.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;

use super::*;
use crate::config::flags::{Cli, Command};

fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses `ringmesh node ARGS…` (flags only: the variables' path through clap is tested on
/// the real binary in tests/env_config.rs).
fn node(args: &[&str]) -> NodeArgs {
    let mut argv = vec!["ringmesh", "node"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Node(n) => *n,
        _ => unreachable!(),
    }
}

fn no_files(_: &std::path::Path) -> bool {
    false
}

/// Everything Istio's ztunnel chart sets for a pod on node-a.
const CHART: &[(&str, &str)] = &[
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
    ("ZTUNNEL_CPU_LIMIT", "2"),
    ("ISTIO_META_ENABLE_HBONE", "true"),
];

#[test]
fn the_charts_environment_configures_the_node() {
    // What clap hands over for the chart's variables (each flag carries its variable).
    let args = node(&[
        "--xds-address",
        "istiod.istio-system.svc:15012",
        "--ca-address",
        "istiod.istio-system.svc:15012",
        "--pod-name",
        "ztunnel-abcde",
        "--pod-namespace",
        "istio-system",
        "--node-name",
        "node-a",
        "--instance-ip",
        "198.18.0.9",
        "--service-account",
        "ztunnel",
        "--cpu-limit",
        "2",
    ]);
    let vars = map(CHART);
    assert!(check(&vars).is_empty(), "{:?}", check(&vars));
    let exists = |p: &std::path::Path| p == std::path::Path::new(flags::DEFAULT_TOKEN);
    let cp = control_plane(&args, &vars, true, &exists).unwrap();
    let xds = Endpoint {
        address: "istiod.istio-system.svc:15012".into(),
        root: RootSource::File(flags::DEFAULT_ROOT_CA.into()),
        alt_hostname: None,
        headers: vec![],
    };
    assert_eq!(cp.source, ConfigSource::Xds(xds.clone()));
    assert_eq!(cp.ca, CaSource::Istio(xds));
    assert_eq!(cp.auth, AuthSource::File(flags::DEFAULT_TOKEN.into()));
    assert_eq!(cp.cluster_id, "Kubernetes");
    assert_eq!(
        cp.node_id,
        "ztunnel~198.18.0.9~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
    );
    assert!(
        cp.metadata
            .contains(&("CLUSTER_ID".into(), "Kubernetes".into()))
    );
    assert!(
        cp.metadata
            .contains(&("ENABLE_HBONE".into(), "true".into()))
    );
    assert_eq!(args.cpu_limit, Some(2));
    assert_eq!(args.control.node_name, "node-a");
    // Everything the chart sets is supported; its grace period sets the drain.
    let u = unsupported(&vars);
    assert!(u.is_empty(), "{u:?}");
    assert_eq!(
        drain_deadline(args.drain_deadline, &vars),
        Duration::from_secs(25)
    );
}

#[test]
fn drain_deadline_as_ztunnel_derives_it() {
    let vars = |g: &str| {
        BTreeMap::from([(
            "TERMINATION_GRACE_PERIOD_SECONDS".to_string(),
            g.to_string(),
        )])
    };
    let s = Duration::from_secs;
    assert_eq!(drain_deadline(None, &BTreeMap::new()), s(5));
    assert_eq!(drain_deadline(None, &vars("30")), s(25));
    assert_eq!(drain_deadline(None, &vars("11")), s(6));
    assert_eq!(drain_deadline(None, &vars("10")), s(9));
    assert_eq!(drain_deadline(None, &vars("0")), s(0));
    assert_eq!(drain_deadline(None, &vars("junk")), s(5));
    assert_eq!(drain_deadline(Some(s(60)), &vars("30")), s(60));
    // CONNECTION_TERMINATION_DEADLINE is the flag's variable.
    let a = node(&["--drain-deadline", "7s"]);
    assert_eq!(drain_deadline(a.drain_deadline, &vars("30")), s(7));
}

#[test]
fn cluster_id_precedence() {
    // --cluster-id beats ISTIO_META_CLUSTER_ID beats CLUSTER_ID.
    let a = node(&["--xds-address", "x:1", "--cluster-id", "c1"]);
    let vars = map(&[("ISTIO_META_CLUSTER_ID", "c2"), ("CLUSTER_ID", "c3")]);
    assert_eq!(
        control_plane(&a, &vars, false, &no_files)
            .unwrap()
            .cluster_id,
        "c1"
    );
    let a = node(&["--xds-address", "x:1"]);
    assert_eq!(
        control_plane(&a, &vars, false, &no_files)
            .unwrap()
            .cluster_id,
        "c2"
    );
    let vars = map(&[("CLUSTER_ID", "c3")]);
    assert_eq!(
        control_plane(&a, &vars, false, &no_files)
            .unwrap()
            .cluster_id,
        "c3"
    );
    assert_eq!(
        control_plane(&a, &BTreeMap::new(), false, &no_files)
            .unwrap()
            .cluster_id,
        "Kubernetes"
    );
}

#[test]
fn bad_values_name_their_variable() {
    let cases = [
        (
            "ZTUNNEL_WORKER_THREADS",
            "lots",
            "ZTUNNEL_WORKER_THREADS=\"lots\": expected N",
        ),
        ("ZTUNNEL_WORKER_THREADS", "150%", "at most 100"),
        (
            "ZTUNNEL_CPU_LIMIT",
            "500m",
            "ZTUNNEL_CPU_LIMIT=\"500m\": expected a whole number",
        ),
        ("POOL_MAX_STREAMS_PER_CONNECTION", "0", "from 1 to 65535"),
        ("POOL_UNUSED_RELEASE_TIMEOUT", "1.5s", "expected a duration"),
        ("HTTP2_STREAM_WINDOW_SIZE", "4Mi", "RFC 9113"),
        ("HTTP2_FRAME_SIZE", "1024", "16384 to 16777215"),
        (
            "KEEPALIVE_ENABLED",
            "1",
            "KEEPALIVE_ENABLED=\"1\": expected true or false",
        ),
        ("KEEPALIVE_RETRIES", "-1", "expected a whole number"),
        ("SECRET_TTL", "1y", "unknown unit"),
        ("PACKET_MARK", "0x539", "expected a whole number"),
        (
            "ENABLE_ORIG_SRC",
            "maybe",
            "expected auto, on (true) or off (false)",
        ),
        ("XDS_ON_DEMAND", "yes", "expected true or false"),
        ("PROXY_MODE", "dedicated", "shared (in-pod) mode only"),
        (
            "TERMINATION_GRACE_PERIOD_SECONDS",
            "soon",
            "expected a whole number",
        ),
        ("RUST_LOG", "info,[", "not a log filter"),
        ("XDS_HEADER_bad header", "x", "not a valid xDS header name"),
        ("CA_HEADER_X", "caf\u{e9}", "not printable ASCII"),
    ];
    for (k, v, want) in cases {
        let errs = check(&map(&[(k, v)]));
        assert_eq!(errs.len(), 1, "{k}={v}: {errs:?}");
        assert!(
            errs[0].contains(want),
            "{k}={v}: {:?} lacks {want:?}",
            errs[0]
        );
    }
}

#[test]
fn config_source_rules() {
    // Neither: an error that says both ways.
    let a = node(&[]);
    let e = control_plane(&a, &BTreeMap::new(), false, &no_files).unwrap_err();
    assert!(e.contains("--config") && e.contains("--xds-address"), "{e}");
    // `proxy ztunnel` with nothing: ztunnel's defaults.
    let cp = control_plane(&a, &BTreeMap::new(), true, &no_files).unwrap();
    assert!(matches!(&cp.source, ConfigSource::Xds(e) if e.address == "localhost:15012"));
    let k8s = map(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]);
    let cp = control_plane(&a, &k8s, true, &no_files).unwrap();
    assert!(
        matches!(&cp.source, ConfigSource::Xds(e) if e.address == "istiod.istio-system.svc:15012")
    );
    assert_eq!(cp.auth, AuthSource::None);
    // XDS_ADDRESS="" with a local config: file mode (how ztunnel is run without istiod).
    let a = node(&["--config", "/c.yaml", "--xds-address", ""]);
    let vars = map(&[("XDS_ADDRESS", ""), ("LOCAL_XDS_PATH", "/c.yaml")]);
    let cp = control_plane(&a, &vars, true, &no_files).unwrap();
    assert_eq!(cp.source, ConfigSource::File("/c.yaml".into()));
    // XDS_ADDRESS="" alone under `proxy ztunnel`: no config source at all.
    let a = node(&["--xds-address", ""]);
    let e = control_plane(&a, &map(&[("XDS_ADDRESS", "")]), true, &no_files).unwrap_err();
    assert!(e.contains("no config source"), "{e}");
    // xDS with a separate CA, roots inline and SYSTEM, headers, a static token.
    let vars = [
        ("XDS_ADDRESS", "https://istiod:15012"),
        ("CA_ADDRESS", "ca.example:443"),
        (
            "XDS_ROOT_CA",
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----",
        ),
        ("CA_ROOT_CA", "SYSTEM"),
        ("XDS_HEADER_X-Tenant", "t1"),
        ("CA_HEADER_X-Ca", "c"),
        ("AUTH_TOKEN", "eyJhbGciOi"),
        ("ISTIO_METAJSON_LABELS", "{\"app\": \"ztunnel\"}"),
    ];
    let root_flag = format!("--xds-root-ca={}", vars[2].1);
    let a = node(&[
        "--xds-address",
        "https://istiod:15012",
        "--ca-address",
        "ca.example:443",
        &root_flag,
        "--ca-root-ca",
        "SYSTEM",
        "--auth-token",
        "eyJhbGciOi",
    ]);
    let cp = control_plane(&a, &map(&vars), false, &no_files).unwrap();
    let ConfigSource::Xds(x) = &cp.source else {
        panic!("{cp:?}")
    };
    assert!(matches!(x.root, RootSource::Pem(_)));
    assert_eq!(x.headers, vec![("X-Tenant".to_string(), "t1".to_string())]);
    let CaSource::Istio(c) = &cp.ca else {
        panic!("{cp:?}")
    };
    assert_eq!(c.address, "ca.example:443");
    assert_eq!(c.root, RootSource::System);
    assert_eq!(c.headers, vec![("X-Ca".to_string(), "c".to_string())]);
    assert_eq!(cp.auth, AuthSource::Static("eyJhbGciOi".into()));
    assert_eq!(cp.metadata_json[0].0, "LABELS");
    // Bad JSON metadata is refused.
    let vars = [("ISTIO_METAJSON_X", "{nope")];
    let e = control_plane(&a, &map(&vars), false, &no_files).unwrap_err();
    assert!(e.contains("ISTIO_METAJSON_X: not JSON"), "{e}");
    // A config file and an xDS address: refused.
    let a = node(&["--config", "c.yaml", "--xds-address", "x:1"]);
    let e = control_plane(&a, &BTreeMap::new(), false, &no_files).unwrap_err();
    assert!(e.contains("choose one"), "{e}");
    // An Istio CA address and the built-in CA's files: refused by the flags.
    let e = Cli::try_parse_from([
        "ringmesh",
        "node",
        "--config",
        "c",
        "--ca-address",
        "x:1",
        "--ca-cert",
        "a",
        "--ca-key",
        "b",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot be used with"), "{e}");
    // xDS with --ca-cert/--ca-key: the built-in CA (explicit files win).
    let a = node(&["--xds-address", "x:1", "--ca-cert", "a", "--ca-key", "b"]);
    let cp = control_plane(&a, &BTreeMap::new(), false, &no_files).unwrap();
    assert_eq!(cp.ca, CaSource::BuiltIn(Some(("a".into(), "b".into()))));
}

#[test]
fn every_ztunnel_variable_is_in_the_readme() {
    let readme = include_str!("../../README.md");
    let missing: Vec<&str> = ZTUNNEL_VARS
        .iter()
        .map(|z| z.name)
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's variable table lacks {missing:?}"
    );
}

/// Found by the `config` fuzz target: tracing-subscriber (0.3.20 to 0.3.23) trims each
/// directive, then slices the untrimmed one at the trimmed offsets, so a blank after a comma
/// shifts the target name and a non-ASCII character after one panics.
#[test]
fn log_filters_with_blanks_after_commas_are_checked_as_written() {
    assert_eq!(
        log_directives(" info , ringmesh=debug,, é=warn "),
        "info,ringmesh=debug,,é=warn"
    );
    assert!(check(&map(&[("RUST_LOG", "info, é=debug")])).is_empty());
    let f = tracing_subscriber::EnvFilter::try_new(log_directives("info, ringmesh=debug")).unwrap();
    assert!(f.to_string().contains("ringmesh=debug"), "{f}");
    let e = check(&map(&[("RUST_LOG", "info, é[")]));
    assert!(e[0].contains("not a log filter"), "{e:?}");
}

/// The logger reads RUST_LOG the way the check does: before, `telemetry::init` parsed it
/// untrimmed, so `info, é=debug` (accepted by the check) panicked at start and
/// `info, ringmesh=debug` silently logged at `info` only.
#[test]
fn the_logger_reads_rust_log_as_the_check_does() {
    let f = crate::telemetry::filter(Some("info, ringmesh=debug"));
    assert!(f.to_string().contains("ringmesh=debug"), "{f}");
    let f = crate::telemetry::filter(Some("info, é=debug"));
    assert!(f.to_string().contains("é=debug"), "{f}");
    assert_eq!(crate::telemetry::filter(None).to_string(), "info");
    assert_eq!(crate::telemetry::filter(Some("  ")).to_string(), "info");
    assert_eq!(
        crate::telemetry::filter(Some("info, é[")).to_string(),
        "info"
    );
}
