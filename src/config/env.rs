//! ztunnel's environment as ringmesh's configuration: every variable Istio's ztunnel Helm
//! chart (or a user of ztunnel) may set, what ringmesh does with it, checks that name the
//! variable when a value is bad, and the control-plane settings (xDS, CA, node identity)
//! resolved from flags and environment.
//!
//! Flags win over variables (clap reads each flag's variable when the flag is absent). The
//! table [`ZTUNNEL_VARS`] is the single list: the README's table is checked against it, and a
//! variable marked unsupported that is set is named in one log line at start.
//! Pure: takes the environment as a map.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::flags::{self, NodeArgs, env};

/// What ringmesh does with a ztunnel variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Read as the default of this flag.
    Flag(&'static str),
    /// Read directly (no flag of its own), with ztunnel's meaning.
    Yes,
    /// Accepted and ignored: it changes nothing ringmesh does.
    Ignored,
    /// Not supported: named in one log line at start when set.
    No,
}

/// One variable of ztunnel's.
#[derive(Debug, Clone, Copy)]
pub struct ZtunnelVar {
    pub name: &'static str,
    pub support: Support,
    /// What it does in ringmesh (or why not).
    pub what: &'static str,
}

const fn v(name: &'static str, support: Support, what: &'static str) -> ZtunnelVar {
    ZtunnelVar {
        name,
        support,
        what,
    }
}

/// Every variable ztunnel reads, and what ringmesh does with it (one line each: a table).
#[rustfmt::skip]
pub const ZTUNNEL_VARS: &[ZtunnelVar] = &[
    v(env::XDS_ADDRESS, Support::Flag("--xds-address"), "istiod's delta ADS address; empty: no xDS"),
    v(env::CA_ADDRESS, Support::Flag("--ca-address"), "Istio CA address; default: the xDS address"),
    v(env::XDS_ROOT_CA, Support::Flag("--xds-root-ca"), "root the xDS server is verified with (file, PEM or SYSTEM)"),
    v(env::CA_ROOT_CA, Support::Flag("--ca-root-ca"), "root the CA server is verified with (file, PEM or SYSTEM)"),
    v(env::ALT_XDS_HOSTNAME, Support::Flag("--alt-xds-hostname"), "another accepted name for the xDS server certificate"),
    v(env::ALT_CA_HOSTNAME, Support::Flag("--alt-ca-hostname"), "another accepted name for the CA server certificate"),
    v(env::AUTH_TOKEN, Support::Flag("--auth-token"), "bearer token file (re-read per call) or token"),
    v(env::META_CLUSTER_ID, Support::Flag("--cluster-id"), "cluster id (`clusterid` header), wins over CLUSTER_ID"),
    v(env::CLUSTER_ID, Support::Flag("--cluster-id"), "cluster id when ISTIO_META_CLUSTER_ID is unset; default Kubernetes"),
    v(env::NETWORK, Support::Flag("--network"), "this node's network"),
    v(env::POD_NAME, Support::Flag("--pod-name"), "xDS node id and metadata NAME"),
    v(env::POD_NAMESPACE, Support::Flag("--pod-namespace"), "xDS node id and metadata NAMESPACE"),
    v(env::NODE_NAME, Support::Flag("--node-name"), "xDS metadata NODE_NAME"),
    v(env::INSTANCE_IP, Support::Flag("--instance-ip"), "xDS node id and metadata INSTANCE_IPS"),
    v(env::SERVICE_ACCOUNT, Support::Flag("--service-account"), "this proxy's service account (config_dump)"),
    v("INPOD_ENABLED", Support::Ignored, "in-pod mode is the only mode (ztunnel ignores it too)"),
    v(env::ZDS_SOCKET, Support::Flag("--zds-socket"), "istio-cni's ZDS socket"),
    v("INPOD_PORT_REUSE", Support::Ignored, "in-pod listeners always use SO_REUSEPORT (one per shard)"),
    v(env::GRACE_PERIOD, Support::Yes, "the drain deadline on SIGTERM: grace − 5 s when over 10 s, else grace − 1 s"),
    v(env::DRAIN_DEADLINE, Support::Flag("--drain-deadline"), "the drain deadline on SIGTERM, wins over TERMINATION_GRACE_PERIOD_SECONDS"),
    v(env::SECRET_TTL, Support::Flag("--cert-ttl"), "workload certificate lifetime asked of the CA"),
    v(env::XDS_ON_DEMAND, Support::Flag("--xds-on-demand"), "not honoured: ringmesh subscribes to everything (a log line says so)"),
    v(env::SHARDS, Support::Flag("--shards"), "shards: N, N% of the CPUs, or 0 for all"),
    v(env::CPU_LIMIT, Support::Flag("--cpu-limit"), "caps the default shard count"),
    v("ZTUNNEL_RESOURCE_CPU_LIMIT", Support::Ignored, "ZTUNNEL_CPU_LIMIT already caps the shards"),
    v("ZTUNNEL_RESOURCE_CPU_REQUEST", Support::Ignored, "shards follow the CPUs allowed, not the request"),
    v(env::LOCAL_XDS_PATH, Support::Flag("--config"), "ztunnel local config file instead of xDS"),
    v("LOCAL_XDS", Support::No, "inline local config: write it to a file and use LOCAL_XDS_PATH"),
    v("PROXY_MODE", Support::Yes, "`shared` (in-pod) only; `dedicated` is refused at start"),
    v("PROXY_WORKLOAD_INFO", Support::No, "dedicated mode is not supported"),
    v(env::POOL_MAX_STREAMS, Support::Flag("--pool-max-streams"), "streams per pooled HBONE connection"),
    v(env::POOL_IDLE, Support::Flag("--pool-idle-timeout"), "idle HBONE connections are released after this"),
    v(env::H2_STREAM_WINDOW, Support::Flag("--h2-stream-window"), "HTTP/2 stream window, bytes"),
    v(env::H2_CONNECTION_WINDOW, Support::Flag("--h2-connection-window"), "HTTP/2 connection window, bytes"),
    v(env::H2_FRAME_SIZE, Support::Flag("--h2-frame-size"), "HTTP/2 max frame size, bytes"),
    v(env::KEEPALIVE_TIME, Support::Flag("--keepalive-time"), "TCP keepalive idle time"),
    v(env::KEEPALIVE_INTERVAL, Support::Flag("--keepalive-interval"), "TCP keepalive probe interval"),
    v(env::KEEPALIVE_RETRIES, Support::Flag("--keepalive-retries"), "TCP keepalive probes"),
    v(env::KEEPALIVE_ENABLED, Support::Flag("--keepalive-enabled"), "TCP keepalive on app-facing connections"),
    v("USER_TIMEOUT_ENABLED", Support::No, "TCP_USER_TIMEOUT is not set"),
    v(env::PACKET_MARK, Support::Flag("--mark"), "SO_MARK on every proxy socket"),
    v(env::ORIG_SRC, Support::Flag("--orig-src"), "keep the client's source IP to the app (true/false)"),
    v("IPV6_ENABLED", Support::Ignored, "listeners are dual-stack ([::]) with IPv4 fallback"),
    v(env::LOG, Support::Yes, "log filter (tracing EnvFilter syntax; a bad one is refused)"),
    v(env::LOG_FORMAT, Support::Yes, "`json`: one JSON object per log line"),
    v("RUST_BACKTRACE", Support::Yes, "Rust's own"),
    v("ISTIO_META_*", Support::Yes, "proxy metadata, sent to istiod as node metadata (prefix removed)"),
    v("ISTIO_METAJSON_*", Support::Yes, "node metadata with JSON values"),
    v("XDS_HEADER_*", Support::Yes, "extra xDS request metadata"),
    v("CA_HEADER_*", Support::Yes, "extra CA request metadata"),
    v(env::KUBERNETES_SERVICE_HOST, Support::Yes, "with `proxy ztunnel` and no XDS_ADDRESS: istiod.istio-system.svc:15012"),
    v("ISTIO_META_DNS_CAPTURE", Support::No, "no DNS proxy (15053): turn istio-cni's DNS capture off"),
    v("ISTIO_META_DNS_PROXY_ADDR", Support::No, "no DNS proxy"),
    v("DNS_PROXY_ADDR", Support::No, "no DNS proxy"),
    v("CLUSTER_DOMAIN", Support::No, "used by ztunnel's DNS proxy only"),
    v("TRUST_DOMAIN", Support::No, "no self-proxy listener for the proxy's own identity"),
    v("FAKE_CA", Support::No, "the built-in CA is --ca-cert/--ca-key (or generated)"),
    v("CRL_PATH", Support::No, "certificate revocation lists are not checked"),
    v("ENABLE_RESPONSE_BAGGAGE", Support::Ignored, "baggage is always sent"),
    v("LOCALHOST_APP_TUNNEL", Support::No, "application tunnels (PROXY protocol) are not supported"),
    v("UNSTABLE_ENABLE_SOCKS5", Support::No, "no SOCKS5 listener"),
    v("TLS12_ENABLED", Support::No, "HBONE is TLS 1.3 only"),
    v("COMPLIANCE_POLICY", Support::No, "no PQC-only key exchange policy"),
    v("PROXY_CONFIG", Support::No, "ProxyConfig is not read; use the variables or flags"),
    v("ENABLE_PROXY", Support::Ignored, "the proxy always runs"),
    v("PREFERED_SERVICE_NAMESPACE", Support::No, "service picks prefer the client's namespace, then canonical"),
    v("AUTHZ_POLICY_INFO_LOGGING", Support::No, "policy decisions are logged at debug"),
];

/// The set variables ringmesh does not support, `NAME=value`, for the one log line at start.
/// How long a SIGTERM drain waits, as ztunnel derives it: the flag (or
/// CONNECTION_TERMINATION_DEADLINE), else TERMINATION_GRACE_PERIOD_SECONDS − 5 s when that is
/// over 10 s, else − 1 s (at least 0), else 5 s.
pub fn drain_deadline(
    flag: Option<std::time::Duration>,
    vars: &BTreeMap<String, String>,
) -> std::time::Duration {
    use std::time::Duration;
    if let Some(d) = flag {
        return d;
    }
    match vars
        .get(env::GRACE_PERIOD)
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(g) if g > 10 => Duration::from_secs(g - 5),
        Some(g) => Duration::from_secs(g.saturating_sub(1)),
        None => Duration::from_secs(5),
    }
}

pub fn unsupported(vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for z in ZTUNNEL_VARS.iter().filter(|z| z.support == Support::No) {
        if let Some(val) = vars.get(z.name) {
            out.push(format!("{}={val} ({})", z.name, z.what));
        }
    }
    if vars.get("INPOD_ENABLED").is_some_and(|v| v == "false") {
        out.push("INPOD_ENABLED=false (in-pod mode is the only mode)".into());
    }
    if vars
        .get(env::XDS_ON_DEMAND)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        out.push("XDS_ON_DEMAND=true (ringmesh subscribes to every workload instead)".into());
    }
    out
}

/// Checks the values of the variables ringmesh reads, so a bad one is refused with its
/// name: `POOL_MAX_STREAMS_PER_CONNECTION="abc": expected a whole number …`.
pub fn check(vars: &BTreeMap<String, String>) -> Vec<String> {
    type Check = fn(&str) -> Result<(), String>;
    fn dur(s: &str) -> Result<(), String> {
        flags::parse_duration(s).map(|_| ())
    }
    fn boolean(s: &str) -> Result<(), String> {
        flags::parse_bool(s).map(|_| ())
    }
    fn threads(s: &str) -> Result<(), String> {
        flags::parse_threads(s).map(|_| ())
    }
    fn orig(s: &str) -> Result<(), String> {
        flags::parse_orig_src(s).map(|_| ())
    }
    fn count(s: &str) -> Result<(), String> {
        s.trim()
            .parse::<u32>()
            .map(|_| ())
            .map_err(|_| format!("{s:?}: expected a whole number"))
    }
    fn streams(s: &str) -> Result<(), String> {
        match s.trim().parse::<u16>() {
            Ok(n) if n >= 1 => Ok(()),
            _ => Err(format!("{s:?}: expected a whole number from 1 to 65535")),
        }
    }
    fn window(s: &str) -> Result<(), String> {
        match s.trim().parse::<u32>() {
            Ok(n) if (65_535..=2_147_483_647).contains(&n) => Ok(()),
            _ => Err(format!(
                "{s:?}: expected bytes from 65535 to 2147483647 (RFC 9113 §6.9.2)"
            )),
        }
    }
    fn frame(s: &str) -> Result<(), String> {
        match s.trim().parse::<u32>() {
            Ok(n) if (16_384..=16_777_215).contains(&n) => Ok(()),
            _ => Err(format!(
                "{s:?}: expected bytes from 16384 to 16777215 (RFC 9113 §6.5.2)"
            )),
        }
    }
    fn mode(s: &str) -> Result<(), String> {
        match s {
            "shared" => Ok(()),
            "dedicated" => Err("\"dedicated\": ringmesh runs in shared (in-pod) mode only".into()),
            _ => Err(format!(
                "{s:?}: expected shared (dedicated is not supported)"
            )),
        }
    }
    fn log(s: &str) -> Result<(), String> {
        tracing_subscriber::EnvFilter::try_new(log_directives(s))
            .map(|_| ())
            .map_err(|e| format!("{s:?}: not a log filter: {e}"))
    }
    let checks: &[(&str, Check)] = &[
        (env::SHARDS, threads),
        (env::CPU_LIMIT, count),
        (env::H2_STREAM_WINDOW, window),
        (env::H2_CONNECTION_WINDOW, window),
        (env::H2_FRAME_SIZE, frame),
        (env::POOL_MAX_STREAMS, streams),
        (env::POOL_IDLE, dur),
        (env::KEEPALIVE_TIME, dur),
        (env::KEEPALIVE_INTERVAL, dur),
        (env::KEEPALIVE_RETRIES, count),
        (env::KEEPALIVE_ENABLED, boolean),
        (env::SECRET_TTL, dur),
        (env::PACKET_MARK, count),
        (env::ORIG_SRC, orig),
        (env::XDS_ON_DEMAND, boolean),
        ("INPOD_ENABLED", boolean),
        ("PROXY_MODE", mode),
        (env::GRACE_PERIOD, count),
        (env::LOG, log),
    ];
    let mut errs = Vec::new();
    for (name, f) in checks {
        if let Some(val) = vars.get(*name)
            && let Err(e) = f(val)
        {
            errs.push(format!("{name}={e}"));
        }
    }
    for (prefix, what) in [
        (env::XDS_HEADER_PREFIX, "xDS"),
        (env::CA_HEADER_PREFIX, "CA"),
    ] {
        for (k, v) in vars.range(prefix.to_string()..) {
            let Some(h) = k.strip_prefix(prefix) else {
                break;
            };
            let ok_name = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name {
                errs.push(format!("{k}: {h:?} is not a valid {what} header name"));
            } else if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                errs.push(format!("{k}: the value is not printable ASCII"));
            }
        }
    }
    errs
}

/// A log filter (RUST_LOG) with the blanks around each directive removed, as it must reach
/// `tracing_subscriber::EnvFilter`: 0.3.20 to 0.3.23 trim a directive and then slice the
/// untrimmed one at the trimmed offsets, so `info, ringmesh=debug` filters target ` r` and a
/// non-ASCII character after a blank panics (`is not a char boundary`). Without those
/// blanks both offsets agree. `EnvFilter` splits at every comma too, so nothing else changes.
pub fn log_directives(s: &str) -> String {
    s.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

/// Where a server's trust anchors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// A PEM file (re-read on every connect, so a rotated root is picked up).
    File(PathBuf),
    /// PEM text given inline.
    Pem(String),
    /// The system's trust store (`SYSTEM`).
    System,
}

impl RootSource {
    /// `SYSTEM`, inline PEM (`-----BEGIN …`), or a file path.
    pub fn parse(s: &str) -> RootSource {
        if s == "SYSTEM" {
            RootSource::System
        } else if s.contains("-----BEGIN") {
            RootSource::Pem(s.to_string())
        } else {
            RootSource::File(PathBuf::from(s))
        }
    }
}

/// Where the bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    /// No token (then no `clusterid` either, as ztunnel).
    None,
    /// A token file, re-read on every call (Kubernetes rotates projected tokens).
    File(PathBuf),
    /// A token given inline.
    Static(String),
}

/// One control-plane endpoint (xDS or CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As given (`host:port` or `https://host:port`).
    pub address: String,
    pub root: RootSource,
    pub alt_hostname: Option<String>,
    /// Extra request metadata (`XDS_HEADER_*` / `CA_HEADER_*`, prefix removed).
    pub headers: Vec<(String, String)>,
}

/// Where the workloads, services and policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Xds(Endpoint),
}

/// Who signs workload certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// The built-in CA: a root from these files, or one generated at start.
    BuiltIn(Option<(PathBuf, PathBuf)>),
    /// An Istio CA: this node holds no CA key.
    Istio(Endpoint),
}

/// The control-plane settings of `ringmesh node`.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlane {
    pub source: ConfigSource,
    pub ca: CaSource,
    pub auth: AuthSource,
    pub cluster_id: String,
    pub node_id: String,
    /// `ISTIO_META_<K>` as `<K>`.
    pub metadata: Vec<(String, String)>,
    /// `ISTIO_METAJSON_<K>` as `<K>` (JSON values).
    pub metadata_json: Vec<(String, serde_json::Value)>,
}

/// ztunnel's default xDS address when none is set: istiod's service inside Kubernetes,
/// else localhost.
pub fn default_xds_address(vars: &BTreeMap<String, String>) -> &'static str {
    if vars.contains_key(env::KUBERNETES_SERVICE_HOST) {
        "istiod.istio-system.svc:15012"
    } else {
        "localhost:15012"
    }
}

/// Resolves the control-plane settings from the flags (which already hold the variables'
/// values where no flag was given) and the environment (for the prefixed families).
/// `ztunnel_defaults`: `ringmesh proxy ztunnel` — with neither a config file nor an xDS
/// address, use ztunnel's default xDS address. `exists` tells whether a file exists.
pub fn control_plane(
    args: &NodeArgs,
    vars: &BTreeMap<String, String>,
    ztunnel_defaults: bool,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<ControlPlane, String> {
    let c = &args.control;
    let headers = |prefix: &str| -> Vec<(String, String)> {
        vars.iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
            .filter(|(k, _)| !k.is_empty())
            .collect()
    };
    let xds_address = c.xds_address.clone().filter(|a| !a.trim().is_empty());
    let source = match (&args.config, xds_address) {
        (Some(_), Some(_)) => {
            return Err(
                "both a config file (--config / LOCAL_XDS_PATH) and an xDS address (--xds-address / XDS_ADDRESS) are set: choose one".into(),
            );
        }
        (Some(p), None) => ConfigSource::File(p.clone()),
        (None, Some(a)) => ConfigSource::Xds(Endpoint {
            address: a,
            root: RootSource::parse(&c.xds_root_ca),
            alt_hostname: c.alt_xds_hostname.clone(),
            headers: headers(env::XDS_HEADER_PREFIX),
        }),
        (None, None) if ztunnel_defaults && !vars.contains_key(env::XDS_ADDRESS) => {
            ConfigSource::Xds(Endpoint {
                address: default_xds_address(vars).to_string(),
                root: RootSource::parse(&c.xds_root_ca),
                alt_hostname: c.alt_xds_hostname.clone(),
                headers: headers(env::XDS_HEADER_PREFIX),
            })
        }
        (None, None) => {
            return Err(
                "no config source: give --config FILE (ztunnel local config, or LOCAL_XDS_PATH) or --xds-address ADDR (istiod, or XDS_ADDRESS)".into(),
            );
        }
    };
    let ca_endpoint = |address: String| Endpoint {
        address,
        root: RootSource::parse(&c.ca_root_ca),
        alt_hostname: c.alt_ca_hostname.clone(),
        headers: headers(env::CA_HEADER_PREFIX),
    };
    let builtin = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    let ca = match (
        c.ca_address.clone().filter(|a| !a.trim().is_empty()),
        &source,
    ) {
        (Some(a), _) => CaSource::Istio(ca_endpoint(a)),
        (None, ConfigSource::Xds(x)) if builtin.is_none() => {
            CaSource::Istio(ca_endpoint(x.address.clone()))
        }
        (None, _) => CaSource::BuiltIn(builtin),
    };
    let auth = match &c.auth_token {
        Some(t) if t.is_empty() => AuthSource::None,
        Some(t) if exists(Path::new(t)) || t.starts_with('/') || t.starts_with("./") => {
            AuthSource::File(PathBuf::from(t))
        }
        Some(t) => AuthSource::Static(t.clone()),
        None if exists(Path::new(flags::DEFAULT_TOKEN)) => {
            AuthSource::File(PathBuf::from(flags::DEFAULT_TOKEN))
        }
        None => AuthSource::None,
    };
    let cluster_id = c
        .cluster_id
        .clone()
        .or_else(|| vars.get(env::META_CLUSTER_ID).cloned())
        .or_else(|| vars.get(env::CLUSTER_ID).cloned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "Kubernetes".into());
    let node_id = {
        let ip = if c.instance_ip.is_empty() {
            "1.1.1.1"
        } else {
            &c.instance_ip
        };
        format!(
            "ztunnel~{ip}~{}.{ns}~{ns}.svc.cluster.local",
            c.pod_name,
            ns = c.pod_namespace
        )
    };
    let metadata = headers(env::META_PREFIX);
    let mut metadata_json = Vec::new();
    for (k, v) in headers(env::META_JSON_PREFIX) {
        match serde_json::from_str(&v) {
            Ok(j) => metadata_json.push((k, j)),
            Err(e) => return Err(format!("{}{k}: not JSON: {e}", env::META_JSON_PREFIX)),
        }
    }
    Ok(ControlPlane {
        source,
        ca,
        auth,
        cluster_id,
        node_id,
        metadata,
        metadata_json,
    })
}

/// The process environment as a map (variables that are not UTF-8 are skipped).
pub fn vars() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
