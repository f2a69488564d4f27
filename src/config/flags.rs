//! Command-line flags and their environment variables, in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Environment variable names (each flag can also be set from its variable).
/// ringmesh's own variables are `RINGMESH_*`; the others are ztunnel's (the names Istio's
/// ztunnel Helm chart sets), so the chart configures ringmesh unchanged. `config::env` has
/// the whole list of ztunnel's variables and what ringmesh does with each.
pub mod env {
    pub const IO_ENGINE: &str = "RINGMESH_IO_ENGINE";
    pub const LOCAL_TCP_CONGESTION: &str = "RINGMESH_LOCAL_TCP_CONGESTION";
    pub const TLS_RECORDS: &str = "RINGMESH_TLS_RECORDS";
    pub const HBONE_CODEC: &str = "RINGMESH_HBONE_CODEC";
    pub const FAULT_REFUSE_ADOPT: &str = "RINGMESH_FAULT_REFUSE_ADOPT";
    pub const MAX_CONNECTIONS: &str = "RINGMESH_MAX_CONNECTIONS";
    pub const CA_CERT: &str = "RINGMESH_CA_CERT";
    pub const CA_KEY: &str = "RINGMESH_CA_KEY";
    // ztunnel's names.
    pub const LOCAL_XDS_PATH: &str = "LOCAL_XDS_PATH";
    pub const SHARDS: &str = "ZTUNNEL_WORKER_THREADS";
    pub const CPU_LIMIT: &str = "ZTUNNEL_CPU_LIMIT";
    pub const H2_STREAM_WINDOW: &str = "HTTP2_STREAM_WINDOW_SIZE";
    pub const H2_CONNECTION_WINDOW: &str = "HTTP2_CONNECTION_WINDOW_SIZE";
    pub const H2_FRAME_SIZE: &str = "HTTP2_FRAME_SIZE";
    pub const POOL_MAX_STREAMS: &str = "POOL_MAX_STREAMS_PER_CONNECTION";
    pub const POOL_IDLE: &str = "POOL_UNUSED_RELEASE_TIMEOUT";
    pub const KEEPALIVE_TIME: &str = "KEEPALIVE_TIME";
    pub const KEEPALIVE_INTERVAL: &str = "KEEPALIVE_INTERVAL";
    pub const KEEPALIVE_RETRIES: &str = "KEEPALIVE_RETRIES";
    pub const KEEPALIVE_ENABLED: &str = "KEEPALIVE_ENABLED";
    pub const SECRET_TTL: &str = "SECRET_TTL";
    pub const PACKET_MARK: &str = "PACKET_MARK";
    pub const ORIG_SRC: &str = "ENABLE_ORIG_SRC";
    pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
    pub const XDS_ROOT_CA: &str = "XDS_ROOT_CA";
    pub const ALT_XDS_HOSTNAME: &str = "ALT_XDS_HOSTNAME";
    pub const CA_ADDRESS: &str = "CA_ADDRESS";
    pub const CA_ROOT_CA: &str = "CA_ROOT_CA";
    pub const ALT_CA_HOSTNAME: &str = "ALT_CA_HOSTNAME";
    pub const AUTH_TOKEN: &str = "AUTH_TOKEN";
    pub const META_CLUSTER_ID: &str = "ISTIO_META_CLUSTER_ID";
    pub const CLUSTER_ID: &str = "CLUSTER_ID";
    pub const NETWORK: &str = "NETWORK";
    pub const POD_NAME: &str = "POD_NAME";
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    pub const NODE_NAME: &str = "NODE_NAME";
    pub const INSTANCE_IP: &str = "INSTANCE_IP";
    pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
    pub const XDS_ON_DEMAND: &str = "XDS_ON_DEMAND";
    pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    pub const LOG: &str = "RUST_LOG";
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    pub const ZDS_SOCKET: &str = "INPOD_UDS";
    pub const HANDOVER_SOCKET: &str = "RINGMESH_HANDOVER_SOCKET";
    pub const DRAIN_DEADLINE: &str = "CONNECTION_TERMINATION_DEADLINE";
    pub const GRACE_PERIOD: &str = "TERMINATION_GRACE_PERIOD_SECONDS";
    pub const WAYPOINT_NAME: &str = "RINGMESH_WAYPOINT_NAME";
    pub const WAYPOINT_RESOURCES: &str = "RINGMESH_WAYPOINT_RESOURCES";
    pub const TRUST_DOMAIN: &str = "RINGMESH_TRUST_DOMAIN";
    /// Prefixes of variable families: extra xDS / CA request metadata, proxy metadata.
    pub const XDS_HEADER_PREFIX: &str = "XDS_HEADER_";
    pub const CA_HEADER_PREFIX: &str = "CA_HEADER_";
    pub const META_PREFIX: &str = "ISTIO_META_";
    pub const META_JSON_PREFIX: &str = "ISTIO_METAJSON_";
}

/// Ports the node proxy opens inside each pod's network namespace (fixed, as in ztunnel).
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = 15008;
/// Congestion control on pod-local legs unless `--local-tcp-congestion` says otherwise.
pub const DEFAULT_LOCAL_TCP_CONGESTION: &str = "cubic";
/// istio-cni's default ZDS socket.
pub const DEFAULT_ZDS_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// The packet mark on every proxy socket (ztunnel's 1337); capture rules skip it.
pub const DEFAULT_MARK: u32 = 0x539;
/// Where Istio's ztunnel chart mounts the mesh root (the `istio-ca-root-cert` ConfigMap).
pub const DEFAULT_ROOT_CA: &str = "/var/run/secrets/istio/root-cert.pem";
/// Where Istio's ztunnel chart mounts the projected service-account token (audience istio-ca).
pub const DEFAULT_TOKEN: &str = "/var/run/secrets/tokens/istio-token";

#[derive(Debug, Parser)]
#[command(
    name = "ringmesh",
    version,
    about = "ringmesh: a thread-per-core, ztunnel-compatible node proxy for Istio ambient mode",
    long_about = "ringmesh: a thread-per-core, ztunnel-compatible node proxy for Istio ambient mode.\n\n\
        `ringmesh node` runs the node proxy (ztunnel's role): for every enrolled pod it opens \
        listeners inside the pod's network namespace (15001 outbound, 15006 inbound plaintext, \
        15008 inbound HBONE) on every shard, and carries captured traffic between pods in HBONE \
        (mutual TLS 1.3 + HTTP/2 CONNECT) with SPIFFE identities."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node proxy.
    Node(Box<NodeArgs>),
    /// Run as Istio's ztunnel chart starts ztunnel (`args: [proxy, ztunnel]`): the node proxy
    /// configured from ztunnel's environment variables only (see README.md, "ztunnel's
    /// environment"), with ztunnel's defaults — xDS and CA from istiod at
    /// istiod.istio-system.svc:15012 inside Kubernetes (localhost:15012 elsewhere) unless
    /// XDS_ADDRESS / LOCAL_XDS_PATH say otherwise.
    Proxy(ProxyArgs),
    /// Run a waypoint (ambient mode's L7 proxy): HBONE in on 15008 for the services and
    /// workloads whose `waypoint` names it, Gateway API HTTPRoute/GRPCRoute routing and
    /// per-request load balancing, a second HBONE hop to the endpoints with its own identity.
    Waypoint(Box<WaypointArgs>),
    /// Manage the built-in CA's root.
    #[command(subcommand)]
    Ca(CaCommand),
    #[cfg(feature = "lab")]
    /// Bring up a local ambient mesh in network namespaces, drive traffic along every path,
    /// print a report, clean up (root).
    Demo(DemoFlags),
    /// Local ambient meshes in network namespaces, with the lab playing istio-cni (root).
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Lab(LabCommand),
    #[cfg(feature = "lab")]
    /// Benchmark raw (no mesh), ringmesh and any --peer node proxy side by side in one run,
    /// interleaved, in the lab (root).
    Bench(BenchFlags),
}

#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Which proxy: `ztunnel` (the node proxy).
    #[arg(value_parser = ["ztunnel"])]
    pub kind: String,
    /// Print the effective settings and exit (as `ringmesh node --dry-run`).
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BenchFlags {
    /// Small sizes, finishes in about two minutes (for CI).
    #[arg(long)]
    pub quick: bool,
    /// Run only the L7 benchmark: HTTP/1.1 and HTTP/2 requests for 1 KiB answers through
    /// node proxy → waypoint → node proxy, against the same path without the waypoint (l4)
    /// and raw, in one lab; requests/s, p50/p99, the waypoint's vCPU per 1000 requests/s and
    /// RSS. Takes --quick, --rounds, --json, --out, --ringmesh-arg and --waypoint-arg.
    #[arg(long, conflicts_with_all = ["peers", "relay", "engines", "modes", "tuning"])]
    pub l7: bool,
    /// Extra arguments for `ringmesh waypoint` in --l7 (e.g. --waypoint-arg=--shards=1).
    /// Repeatable.
    #[arg(long = "waypoint-arg", allow_hyphen_values = true, requires = "l7")]
    pub waypoint_args: Vec<String>,
    /// The waypoint's RUST_LOG in --l7 (`info`, the default, writes an access line per
    /// request; `info,access=off` measures it without).
    #[arg(long, default_value = "info", requires = "l7")]
    pub waypoint_log: String,
    /// Another ZDS-speaking node proxy, started per node as `sh -c "exec COMMAND"` with
    /// ZDS_SOCKET, CONFIG (ztunnel local config), CA_CERT, CA_KEY, NODE and ZTUNNEL_ENV (a
    /// file of ztunnel's variables for the lab's control plane: `env $(cat $ZTUNNEL_ENV)
    /// ztunnel` runs ztunnel on xDS and the lab's CA) in its environment. Repeatable.
    #[arg(long = "peer", value_name = "NAME=COMMAND")]
    pub peers: Vec<String>,
    /// Leave out the raw (no mesh) baseline.
    #[arg(long)]
    pub no_raw: bool,
    /// Leave out ringmesh itself.
    #[arg(long)]
    pub no_ringmesh: bool,
    /// Add two reference contenders: `relay`, a plaintext TCP relay (`ringmesh lab relay`) in
    /// every ambient pod instead of a node proxy — the floor: the path's three TCP legs and
    /// two user-space hops, what moving the bytes alone costs this machine — and `relay-tls`,
    /// the same with mutual TLS on the middle leg the textbook way (tokio-rustls). Neither
    /// has HTTP/2 or policy.
    #[arg(long)]
    pub relay: bool,
    /// Run ringmesh once per I/O engine, side by side: `--engines uring,epoll` gives the
    /// contenders `ringmesh` (uring) and `ringmesh-epoll`. Default: one `ringmesh` on the
    /// node's default engine.
    #[arg(long, value_delimiter = ',', value_name = "ENGINE,...")]
    pub engines: Vec<String>,
    /// Where ringmesh's node proxies get their config: `xds` (the lab's control plane and its
    /// CA; the default) and/or `file` (the local config file and the built-in CA).
    /// `--modes xds,file` runs both, as `ringmesh` and `ringmesh-file`.
    #[arg(long, value_delimiter = ',', value_name = "MODE,...")]
    pub modes: Vec<String>,
    /// Extra arguments for `ringmesh node` (e.g. --ringmesh-arg=--shards=1). Repeatable.
    #[arg(long = "ringmesh-arg", allow_hyphen_values = true)]
    pub ringmesh_args: Vec<String>,
    /// Rounds (default 2 with --quick, else 3).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write results.md, latency.svg and throughput.svg into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A tuning profile (sysctl `key = value` lines, e.g. tuning/profile.conf) applied in
    /// every lab namespace before measuring.
    #[arg(long)]
    pub tuning: Option<PathBuf>,
    #[arg(long, default_value = LAB_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct DemoFlags {
    /// Leave the lab and proxies running after the report, until Ctrl-C or `lab down`.
    #[arg(long)]
    pub keep: bool,
    /// Bytes for the bulk-throughput path.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub bulk_bytes: u64,
    /// Request/response round trips for the latency percentiles.
    #[arg(long, default_value_t = 2000)]
    pub pings: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run the node proxies from a local config file with the built-in CA instead of xDS
    /// and certificates from the lab's control plane.
    #[arg(long)]
    pub local_config: bool,
    /// Where labs keep their state (configs, CA, ZDS sockets, logs).
    #[arg(long, default_value = LAB_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// Where labs keep their state by default.
pub const LAB_STATE_DIR: &str = "/run/ringmesh/lab";

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create the topology's namespaces and capture rules, serve ZDS per node, write the node
    /// proxies' config, and (unless --no-proxies) start `ringmesh node` on every node.
    Up {
        /// Topology file (see src/lab/demo.yaml for the format).
        file: PathBuf,
        /// Leave the nodes without a node proxy (start any ZDS-speaking proxy yourself; the
        /// summary prints the environment a ztunnel needs for the lab's control plane).
        #[arg(long)]
        no_proxies: bool,
        /// Run the node proxies from the lab's local config file with the built-in CA,
        /// instead of xDS and certificates from the lab's control plane.
        #[arg(long)]
        local_config: bool,
        #[arg(long, default_value = LAB_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Tear a lab down: stop its processes, delete its namespaces and state. Idempotent.
    Down {
        /// Topology file or lab name.
        lab: String,
        #[arg(long, default_value = LAB_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Run a command inside a pod's or node's network namespace.
    Exec {
        /// Pod or node name.
        target: String,
        /// The lab (needed only when several are up).
        #[arg(long)]
        lab: Option<String>,
        #[arg(long, default_value = LAB_STATE_DIR)]
        state_dir: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// A TCP relay for the pod netns it runs in (the bench's reference contenders, see
    /// `ringmesh bench --relay`): connections the capture rules redirect to 15001 and 15006
    /// go on to their original destination, in plaintext (or --tls), with no HTTP/2 and no
    /// policy. IPv4 only.
    Relay {
        /// Threads, each with its own SO_REUSEPORT listeners (default: one per allowed CPU).
        #[arg(long)]
        threads: Option<usize>,
        /// Carry the middle leg in mutual TLS 1.3 (ringmesh's TLS configs, a certificate from
        /// the lab's CA) to the destination pod's relay on 15008.
        #[arg(long, requires_all = ["ca_cert", "ca_key"])]
        tls: bool,
        /// The lab CA's certificate (PEM), for --tls.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// The lab CA's key (PEM), for --tls.
        #[arg(long)]
        ca_key: Option<PathBuf>,
    },
    /// Show the labs that are up.
    Status {
        #[arg(long, default_value = LAB_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// (internal) Hold a lab up until SIGTERM; `lab up` starts this in the background.
    #[command(hide = true)]
    Serve {
        file: PathBuf,
        #[arg(long)]
        no_proxies: bool,
        #[arg(long)]
        local_config: bool,
        #[arg(long, default_value = LAB_STATE_DIR)]
        state_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Generate a root certificate and key (PEM) for `ringmesh node --ca-cert/--ca-key`, so that
    /// several node proxies trust each other.
    Init {
        /// Where to write the root certificate.
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the root key (mode 0600).
        #[arg(long)]
        key: PathBuf,
    },
}

/// Whether inbound connections to the app keep the client's source IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrigSrc {
    /// Spoof the source when IP_TRANSPARENT can be set (needs istio-cni's capture rules:
    /// connmark 0x111 + `ip rule fwmark 0x111 lookup 100`).
    Auto,
    /// Always spoof; fail the connection if IP_TRANSPARENT cannot be set.
    On,
    /// Never spoof: the app sees the proxy's address (the pod IP).
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// ztunnel local config (LOCAL_XDS YAML: workloads, services, policies) instead of istiod.
    /// Re-read on SIGHUP and when it changes; a bad new file is rejected and the old config
    /// keeps serving. One of --config and --xds-address is needed.
    #[arg(long, env = env::LOCAL_XDS_PATH)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub control: ControlPlaneFlags,

    /// Enrol a local pod: UID is the workload uid in the config, NETNS_PATH its network
    /// namespace (e.g. /var/run/netns/NAME). Repeatable.
    #[arg(long = "pod", value_name = "UID=NETNS_PATH", value_parser = parse_pod)]
    pub pods: Vec<PodArg>,

    /// Number of shards (threads, each with its own runtime and listeners): N, N% of the CPUs
    /// this process may run on, or 0 for all of them. Default: one per allowed CPU, at most
    /// --cpu-limit.
    #[arg(long, env = env::SHARDS, value_parser = parse_threads)]
    pub shards: Option<Threads>,

    /// CPUs the proxy may use (the chart sets it from the container's CPU limit, or the
    /// node's allocatable CPUs): caps the default shard count.
    #[arg(long, env = env::CPU_LIMIT)]
    pub cpu_limit: Option<usize>,

    /// Pin shard N to the N-th allowed CPU.
    #[arg(long)]
    pub pin_cores: bool,

    /// The shards' I/O engine. `uring`: every socket operation of a shard goes through its
    /// own io_uring (multishot accept and receive, provided buffers); if io_uring cannot be
    /// set up (ENOSYS, or EPERM under a container runtime's default seccomp profile) the
    /// node logs why and runs `epoll` instead; `ringmesh_io_engine` says which one runs.
    #[arg(long, value_enum, default_value_t = IoEngine::Uring, env = env::IO_ENGINE)]
    pub io_engine: IoEngine,

    #[command(flatten)]
    pub uring: UringFlags,

    /// Plaintext passthrough (outbound to a destination outside the mesh, inbound
    /// plaintext on 15006) moves bytes with splice(2) through a pipe per direction, never
    /// through user space. `false`: copies through buffers, as the HBONE path does. A
    /// connection whose pipe cannot be made (fd limit) copies instead.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", env = "RINGMESH_SPLICE")]
    pub splice: bool,

    /// Root certificate of the built-in CA (PEM). Without it a root is generated at start.
    #[arg(long, env = env::CA_CERT, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// Root key of the built-in CA (PEM, PKCS#8).
    #[arg(long, env = env::CA_KEY, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// Lifetime of workload certificates (asked of the CA); each is rotated at half of it.
    #[arg(long, default_value = "24h", env = env::SECRET_TTL, value_parser = parse_duration)]
    pub cert_ttl: Duration,

    /// Keep the client's source IP on inbound connections to the app: auto, on (also
    /// `true`), off (also `false`).
    #[arg(long, default_value = "auto", env = env::ORIG_SRC, value_parser = parse_orig_src)]
    pub orig_src: OrigSrc,

    /// SO_MARK on every proxy socket (capture rules skip marked packets).
    #[arg(long, default_value_t = DEFAULT_MARK, env = env::PACKET_MARK)]
    pub mark: u32,

    /// TCP keepalive on app-facing connections: idle time before the first probe.
    #[arg(long, default_value = "180s", env = env::KEEPALIVE_TIME, value_parser = parse_duration)]
    pub keepalive_time: Duration,

    /// TCP keepalive: time between probes.
    #[arg(long, default_value = "180s", env = env::KEEPALIVE_INTERVAL, value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// TCP keepalive: unanswered probes before the connection is dropped.
    #[arg(long, default_value_t = 9, env = env::KEEPALIVE_RETRIES)]
    pub keepalive_retries: u32,

    /// TCP keepalive on app-facing connections at all (true/false).
    #[arg(long, default_value = "true", env = env::KEEPALIVE_ENABLED, value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub keepalive_enabled: bool,

    /// TCP congestion control on the pod-local legs: the app's connection into the node
    /// proxy and the proxy's connection to the app, both inside the pod's netns, never on a
    /// network. `default` keeps the node's (often BBR, whose pacing timers cost CPU and
    /// nothing is gained on a local path; tuning/README.md). The HBONE leg between nodes
    /// and plaintext from other pods always keep the node's choice.
    #[arg(long, default_value = DEFAULT_LOCAL_TCP_CONGESTION, env = env::LOCAL_TCP_CONGESTION)]
    pub local_tcp_congestion: String,

    /// HTTP/2 stream flow-control window (bytes; 65535 to 2^31-1, RFC 9113 §6.9.2).
    #[arg(long, default_value_t = 4 * 1024 * 1024, env = env::H2_STREAM_WINDOW,
          value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub h2_stream_window: u32,

    /// HTTP/2 connection flow-control window (bytes; 65535 to 2^31-1).
    #[arg(long, default_value_t = 16 * 1024 * 1024, env = env::H2_CONNECTION_WINDOW,
          value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub h2_connection_window: u32,

    /// Who protects HBONE's TLS records once the handshake is done: `direct` (default) —
    /// rustls runs the handshake and key schedule, ringmesh seals and opens records in the
    /// buffers it sends from and receives into (fewer user-space copies; measured in
    /// bench/README.md); `rustls` — rustls's own
    /// buffered record layer (tokio-rustls), kept as a fallback.
    #[arg(long, value_enum, default_value_t = TlsRecords::Direct, env = env::TLS_RECORDS)]
    pub tls_records: TlsRecords,

    /// Who speaks HTTP/2 on the node proxy's HBONE connections: `link` (default) — one task
    /// per connection on ringmesh's own codec, whose whole state (TLS secrets, HTTP/2
    /// windows and HPACK tables, bytes in flight) is handed to the next process in a rolling
    /// update, so long-lived connections survive it; `h2` — the h2 crate (on SIGTERM its
    /// connections drain and are cut at the deadline), kept as a fallback: in `ringmesh
    /// bench` it still carries 8 parallel streams faster (bench/README.md). `link`
    /// needs `--tls-records direct`; with `rustls` records, `h2` is used.
    #[arg(long, value_enum, default_value_t = HboneCodec::Link, env = env::HBONE_CODEC)]
    pub hbone_codec: HboneCodec,

    /// Fault injection, for tests of the hand-over: refuse to adopt (from the previous
    /// process) any connection that carries a tunnel to this destination port, and any
    /// plaintext TCP relay to it; the previous process then keeps it and drains it. Not for
    /// production.
    #[arg(long, hide = true, env = env::FAULT_REFUSE_ADOPT)]
    pub fault_refuse_adopt: Option<u16>,

    /// HTTP/2 maximum frame size (bytes; 16384 to 16777215, RFC 9113 §6.5.2).
    #[arg(long, default_value_t = 1024 * 1024, env = env::H2_FRAME_SIZE,
          value_parser = clap::value_parser!(u32).range(16_384..=16_777_215))]
    pub h2_frame_size: u32,

    /// Connections the pods' listeners hold open at most, over all shards (each shard gets
    /// an even share). At the bound a shard stops accepting: new connections wait in the
    /// kernel's listen queue (on io_uring, up to 256 per listener accepted in the engine's
    /// queue first) until one closes, and `ringmesh_connection_limit_pauses_total` counts
    /// it (logged at most every 10 s); open connections are not touched. Default: the
    /// open-files limit (raised to its hard limit at start) less an eighth of it (64 to
    /// 4096) kept for listeners, HBONE connections and the control plane.
    #[arg(long, env = env::MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Streams per pooled HBONE connection before another is opened.
    #[arg(long, default_value_t = 100, env = env::POOL_MAX_STREAMS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub pool_max_streams: u16,

    /// An HBONE connection unused this long is released.
    #[arg(long, default_value = "5m", env = env::POOL_IDLE, value_parser = parse_duration)]
    pub pool_idle_timeout: Duration,

    /// HTTP/2 PING interval on HBONE connections.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// An HBONE connection whose PING is unanswered this long is dropped.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub ping_timeout: Duration,

    /// Timeout of TCP connects to apps, and of establishing an HBONE connection either way
    /// (TCP connect, TLS and HTTP/2 handshakes, under one deadline).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// istio-cni's ZDS socket to enrol pods from (SOCK_SEQPACKET; the node proxy connects).
    /// Default: /var/run/ztunnel/ztunnel.sock when no --pod is given; with --pod, ZDS is
    /// used only if this is set.
    #[arg(long, env = env::ZDS_SOCKET)]
    pub zds_socket: Option<PathBuf>,

    /// Do not use ZDS even without --pod.
    #[arg(long, conflicts_with = "zds_socket")]
    pub no_zds: bool,

    /// Longest pause between ZDS reconnection attempts (backoff starts at 10ms, doubling).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub zds_max_backoff: Duration,

    /// The hand-over socket of a rolling update: a new node proxy asks the old one listening
    /// here for each pod's listening sockets (no connection refused while both run), then
    /// listens here itself for the next one. Default: beside the ZDS socket,
    /// `<zds socket>.handover`; none without ZDS.
    #[arg(long, env = env::HANDOVER_SOCKET, conflicts_with = "no_handover")]
    pub handover_socket: Option<PathBuf>,

    /// Neither take over nor hand over listeners: open fresh ones, close them on exit.
    #[arg(long)]
    pub no_handover: bool,

    /// How long SIGTERM waits for live connections to finish (after GOAWAY to HBONE peers
    /// and with the listeners closed or handed over) before cutting the rest. Default, as
    /// ztunnel: TERMINATION_GRACE_PERIOD_SECONDS − 5 s when that is over 10 s, else − 1 s;
    /// 5 s when neither is set.
    #[arg(long, env = env::DRAIN_DEADLINE, value_parser = parse_duration)]
    pub drain_deadline: Option<Duration>,

    /// Longest pause between xDS reconnection attempts after errors (from 10ms, doubling).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub xds_max_backoff: Duration,

    /// Admin API (config_dump, quitquitquit); keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics (/metrics, /stats/prometheus).
    #[arg(long, default_value = "[::]:15020")]
    pub stats_addr: SocketAddr,

    /// Readiness (/healthz/ready).
    #[arg(long, default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,

    /// Print the effective settings (flags, then ztunnel's environment, then defaults) as
    /// JSON — the `config` section of /config_dump — after checking the config file and the
    /// control-plane addresses, and exit without starting anything.
    #[arg(long)]
    pub dry_run: bool,

    /// How often the config file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub config_poll: Duration,
}

/// `ringmesh waypoint`. Who it is comes from its pod (POD_NAMESPACE, SERVICE_ACCOUNT,
/// INSTANCE_IP, as Kubernetes' downward API sets them); the workloads and services (and their
/// `waypoint` fields) from the same sources as the node's; routes from Kubernetes YAML.
#[derive(Debug, Clone, Args)]
#[command(
    long_about = "Run a waypoint: ambient mode's L7 proxy, in its own pod (never captured).\n\n\
        It accepts only HBONE (mTLS 1.3 + HTTP/2 CONNECT) on --listen. A CONNECT's :authority \
        must be a service VIP:port whose service names this waypoint (Service.waypoint), or a \
        pod IP:port whose workload does; anything else is refused with 400. HTTP ports \
        (appProtocol or port name http/http2/grpc in --resources, or sniffed) get Gateway API \
        routing: HTTPRoute and GRPCRoute with a Service parentRef (matches on path, headers, \
        query, method; weighted backendRefs; header modifiers, redirect, URL rewrite, mirror; \
        timeouts; retries as Istio maps them). No route: the service routes to itself. Each \
        request is balanced over the backend's endpoints (least request by default; endpoints \
        with consecutive 5xx or connect errors are ejected for a while) and sent over a second \
        HBONE hop to endpoint:15008 with :authority endpoint:targetPort and the waypoint's own \
        identity (plain TCP to endpoints without a node proxy). TCP ports are forwarded whole."
)]
pub struct WaypointArgs {
    /// ztunnel local config (LOCAL_XDS YAML) with the workloads, services and their
    /// `waypoint` fields; re-read on SIGHUP and when it changes. One of --config and
    /// --xds-address is needed.
    #[arg(long, env = env::LOCAL_XDS_PATH)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub control: ControlPlaneFlags,

    /// Kubernetes YAML with HTTPRoute, GRPCRoute and Service objects (a file, or a directory
    /// of *.yaml/*.yml/*.json; multi-document). Routes attach to a Service parentRef; Service
    /// ports' appProtocol/name decide HTTP or TCP. Re-read on SIGHUP and when it changes; a
    /// bad file is refused naming the file, resource and field, and the old routes keep
    /// serving.
    #[arg(long, env = env::WAYPOINT_RESOURCES)]
    pub resources: Option<PathBuf>,

    /// The waypoint's name (its Gateway's; its Service is NAME.NAMESPACE.svc.cluster.local).
    /// Default: the service account.
    #[arg(long, env = env::WAYPOINT_NAME)]
    pub name: Option<String>,

    /// The mesh's trust domain (the waypoint's identity is
    /// spiffe://TD/ns/POD_NAMESPACE/sa/SERVICE_ACCOUNT).
    #[arg(long, default_value = "cluster.local", env = env::TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Where HBONE is accepted (one SO_REUSEPORT listener per shard).
    #[arg(long, default_value = "[::]:15008")]
    pub listen: SocketAddr,

    /// Per-request load balancing over a backend's endpoints.
    #[arg(long, value_enum, default_value_t = LbFlag::LeastRequest)]
    pub lb: LbFlag,

    /// Consecutive 5xx answers or connect errors that eject an endpoint (0: never eject).
    #[arg(long, default_value_t = 5)]
    pub outlier_consecutive_errors: u32,

    /// How long an ejected endpoint sits out (times the number of its ejections, at most 10x).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub outlier_base_ejection: Duration,

    /// Number of shards: N, N%, or 0 for one per allowed CPU (default).
    #[arg(long, env = env::SHARDS, value_parser = parse_threads)]
    pub shards: Option<Threads>,

    /// Pin shard N to the N-th allowed CPU.
    #[arg(long)]
    pub pin_cores: bool,

    /// The shards' I/O engine (uring, falling back to epoll when io_uring is blocked).
    #[arg(long, value_enum, default_value_t = IoEngine::Uring, env = env::IO_ENGINE)]
    pub io_engine: IoEngine,

    /// Root certificate of the built-in CA (PEM), when there is no Istio CA.
    #[arg(long, env = env::CA_CERT, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// Root key of the built-in CA (PEM, PKCS#8).
    #[arg(long, env = env::CA_KEY, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// Lifetime of the waypoint's certificate; rotated at half of it.
    #[arg(long, default_value = "24h", env = env::SECRET_TTL, value_parser = parse_duration)]
    pub cert_ttl: Duration,

    /// Timeout of TCP connects to endpoints (Istio's connectTimeout), and of establishing
    /// an HBONE connection either way (TCP connect, TLS and HTTP/2 handshakes).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Admin API (config_dump with routes and their status, quitquitquit).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics (/metrics, /stats/prometheus).
    #[arg(long, default_value = "[::]:15020")]
    pub stats_addr: SocketAddr,

    /// Readiness (/healthz/ready).
    #[arg(long, default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,

    /// Check the config and resources, print the effective settings, and exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--lb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LbFlag {
    /// Envoy's default: the less busy of two random endpoints.
    LeastRequest,
    RoundRobin,
}

/// Istio's control plane: istiod's xDS and CA, and who this node proxy is to them. Every
/// flag falls back to the variable Istio's ztunnel chart sets.
#[derive(Debug, Clone, Args)]
pub struct ControlPlaneFlags {
    /// istiod's xDS address (`host:port` or `https://host:port`; port 15012 if none): the
    /// workloads, services and policies come from there (delta ADS) instead of --config.
    #[arg(long, env = env::XDS_ADDRESS)]
    pub xds_address: Option<String>,

    /// Root certificate the xDS server is verified with: a PEM file, inline PEM, or SYSTEM.
    #[arg(long, default_value = DEFAULT_ROOT_CA, env = env::XDS_ROOT_CA)]
    pub xds_root_ca: String,

    /// Also accept the xDS server's certificate for this name (when the address is an IP or
    /// another name than the certificate's).
    #[arg(long, env = env::ALT_XDS_HOSTNAME)]
    pub alt_xds_hostname: Option<String>,

    /// Istio CA address (`IstioCertificateService`). Default: the xDS address when there is
    /// one, else the built-in CA (--ca-cert/--ca-key or a generated root).
    #[arg(long, env = env::CA_ADDRESS, conflicts_with_all = ["ca_cert", "ca_key"])]
    pub ca_address: Option<String>,

    /// Root certificate the CA server is verified with (a PEM file, inline PEM, or SYSTEM).
    /// Peers are verified with the root the CA returns, not this one.
    #[arg(long, default_value = DEFAULT_ROOT_CA, env = env::CA_ROOT_CA)]
    pub ca_root_ca: String,

    /// Also accept the CA server's certificate for this name.
    #[arg(long, env = env::ALT_CA_HOSTNAME)]
    pub alt_ca_hostname: Option<String>,

    /// Bearer token for xDS and the CA: a file (re-read on every call) or the token itself.
    /// Default: /var/run/secrets/tokens/istio-token when it exists.
    #[arg(long, env = env::AUTH_TOKEN)]
    pub auth_token: Option<String>,

    /// The cluster this node is in (`clusterid` header). Default: $ISTIO_META_CLUSTER_ID,
    /// else $CLUSTER_ID, else Kubernetes.
    #[arg(long)]
    pub cluster_id: Option<String>,

    /// The network this node is on (multi-network meshes).
    #[arg(long, default_value = "", env = env::NETWORK)]
    pub network: String,

    /// This proxy's pod name (xDS node id).
    #[arg(long, default_value = "", env = env::POD_NAME)]
    pub pod_name: String,

    /// This proxy's namespace (xDS node id; istiod checks it against the token).
    #[arg(long, default_value = "", env = env::POD_NAMESPACE)]
    pub pod_namespace: String,

    /// The Kubernetes node this proxy serves.
    #[arg(long, default_value = "", env = env::NODE_NAME)]
    pub node_name: String,

    /// This proxy's pod IP (xDS node id; 1.1.1.1 if unset, as ztunnel).
    #[arg(long, default_value = "", env = env::INSTANCE_IP)]
    pub instance_ip: String,

    /// This proxy's service account.
    #[arg(long, default_value = "", env = env::SERVICE_ACCOUNT)]
    pub service_account: String,

    /// Subscribe to workloads on demand (not supported: ringmesh subscribes to all of them,
    /// which serves the same traffic; a log line says so).
    #[arg(long, default_value = "false", env = env::XDS_ON_DEMAND, value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub xds_on_demand: bool,
}

/// `--shards` / `ZTUNNEL_WORKER_THREADS`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threads {
    /// This many (0: one per allowed CPU).
    Count(usize),
    /// This share of the allowed CPUs, rounded up, at least 1.
    Percent(f64),
}

impl Threads {
    /// The shard count on a machine with `cpus` allowed CPUs.
    pub fn resolve(self, cpus: usize) -> usize {
        match self {
            Threads::Count(0) => cpus.max(1),
            Threads::Count(n) => n,
            Threads::Percent(p) => ((cpus as f64 * p / 100.0).ceil() as usize).max(1),
        }
    }
}

/// `N`, `N%` (0 < N ≤ 100) or `0`.
pub fn parse_threads(s: &str) -> Result<Threads, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: expected N, N% or 0"))?;
        if !(v > 0.0 && v <= 100.0) {
            return Err(format!(
                "{s:?}: a percentage must be above 0 and at most 100"
            ));
        }
        return Ok(Threads::Percent(v));
    }
    s.parse()
        .map(Threads::Count)
        .map_err(|_| format!("{s:?}: expected N (threads), N% (of the CPUs) or 0 (all CPUs)"))
}

/// `true` or `false` (any case), as ztunnel's boolean variables.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{s:?}: expected true or false")),
    }
}

/// `auto`, `on`/`true`, `off`/`false`.
pub fn parse_orig_src(s: &str) -> Result<OrigSrc, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(OrigSrc::Auto),
        "on" | "true" => Ok(OrigSrc::On),
        "off" | "false" => Ok(OrigSrc::Off),
        _ => Err(format!("{s:?}: expected auto, on (true) or off (false)")),
    }
}

/// `--pod UID=NETNS_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodArg {
    pub uid: String,
    pub netns: PathBuf,
}

fn parse_pod(s: &str) -> Result<PodArg, String> {
    match s.rsplit_once('=') {
        Some((uid, path)) if !uid.is_empty() && !path.is_empty() => Ok(PodArg {
            uid: uid.to_string(),
            netns: PathBuf::from(path),
        }),
        _ => Err(format!(
            "{s:?}: expected UID=NETNS_PATH, e.g. cluster1//v1/Pod/default/web=/var/run/netns/web"
        )),
    }
}

/// The shards' I/O engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoEngine {
    Uring,
    Epoll,
}

/// io_uring engine knobs (tuning/README.md has the measurements behind the defaults).
#[derive(Debug, Clone, Args)]
pub struct UringFlags {
    /// Submission queue entries of each shard's ring (completion queue: 4x).
    #[arg(long, default_value_t = 1024, env = "RINGMESH_URING_ENTRIES")]
    pub uring_entries: u32,
    /// Run a kernel SQ-polling thread per ring, sleeping after this many idle ms (costs a
    /// core per shard while busy; off by default).
    #[arg(long, value_name = "MS", env = "RINGMESH_URING_SQPOLL")]
    pub uring_sqpoll: Option<u32>,
    /// Buffers in each shard's provided buffer ring (a power of two). The ring's memory
    /// (count x size) becomes resident as the kernel cycles through it.
    #[arg(long, default_value_t = 32, env = "RINGMESH_URING_BUFFERS")]
    pub uring_buffers: u16,
    /// Size of each provided buffer, bytes. One receive completion carries at most this much:
    /// with 256 KiB buffers a bulk stream makes a fraction of the completions of 64 KiB ones
    /// and measured 0.8x the CPU per GB (tuning/README.md).
    #[arg(long, default_value_t = 262144, env = "RINGMESH_URING_BUFFER_SIZE")]
    pub uring_buffer_size: u32,
    /// Sends of at least this many bytes use SEND_ZC (0: never).
    #[arg(long, default_value_t = 0, env = "RINGMESH_URING_SEND_ZC_THRESHOLD")]
    pub uring_send_zc_threshold: usize,
    /// Bytes a socket may queue for sending before its writer waits.
    #[arg(long, default_value_t = 262144, env = "RINGMESH_URING_SEND_QUEUE")]
    pub uring_send_queue: usize,
    /// Limit each multishot receive in the kernel to what is left of the socket's share of
    /// the buffer ring, and to at most half of what the ring has free, so that a few bulk
    /// streams cannot empty it (Linux 6.18 has the limit; an older kernel's refusal turns
    /// it off by itself). `false`: pause by cancel only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", env = "RINGMESH_URING_RECV_LIMIT")]
    pub uring_recv_limit: bool,
    /// How the kernel delivers completions: `coop` (posted at the shard's next enter),
    /// `defer` (processed only in the shard's own enters), `interrupt` (as they happen).
    #[arg(long, value_enum, default_value_t = UringTaskRun::Coop, env = "RINGMESH_URING_TASKRUN")]
    pub uring_taskrun: UringTaskRun,
}

/// `--tls-records` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsRecords {
    Direct,
    Rustls,
}

/// `--hbone-codec` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HboneCodec {
    Link,
    H2,
}

/// `--uring-taskrun` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UringTaskRun {
    Coop,
    Defer,
    Interrupt,
}

/// Parses durations as ztunnel's variables are written: `500ms`, `10s`, `5m`, `24h`, `1d`,
/// compounds like `1h30m` or `1m30s`, and a bare number as seconds (`300`). Units: ms, s/sec,
/// m/min, h/hr, d (any case).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("{s:?}: expected a duration like 500ms, 10s, 5m, 1h30m or 24h");
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim().to_ascii_lowercase();
        rest = &rest[unit_len..];
        if !unit.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(bad());
        }
        let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
        let d = match unit.as_str() {
            "ms" => Some(Duration::from_millis(n)),
            "" | "s" | "sec" | "secs" => Some(Duration::from_secs(n)),
            "m" | "min" | "mins" => secs(60),
            "h" | "hr" | "hrs" => secs(3600),
            "d" => secs(86400),
            u => return Err(format!("{s:?}: unknown unit {u:?} (ms, s, m, h, d)")),
        };
        total = d
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| format!("{s:?}: too long (at most {} s)", u64::MAX))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("3m31").unwrap(), Duration::from_secs(211));
        assert_eq!(parse_duration("2min").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
    }

    /// A number of units past what a `Duration` holds is an error, not an overflow panic
    /// (`Duration` addition panics even in release builds).
    #[test]
    fn durations_too_long_are_refused() {
        for s in [
            "18446744073709551615d",
            "18446744073709551615s1s",
            "307445734561825861m",
        ] {
            assert!(parse_duration(s).unwrap_err().contains("too long"), "{s}");
        }
        assert_eq!(
            parse_duration("18446744073709551615").unwrap(),
            Duration::from_secs(u64::MAX)
        );
    }

    #[test]
    fn pods() {
        let p = parse_pod("cluster1//v1/Pod/default/a=/var/run/netns/a").unwrap();
        assert_eq!(p.uid, "cluster1//v1/Pod/default/a");
        assert_eq!(p.netns, PathBuf::from("/var/run/netns/a"));
        assert!(parse_pod("nopath").is_err());
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "ringmesh", "node", "--config", "c.yaml", "--pod", "u=/p", "--shards", "2",
        ])
        .unwrap();
        let Command::Node(n) = cli.command else {
            panic!()
        };
        assert_eq!(n.shards, Some(Threads::Count(2)));
        assert_eq!(n.pods.len(), 1);
        assert_eq!(n.h2_stream_window, 4 * 1024 * 1024);
    }

    #[test]
    fn h2_sizes_out_of_range_are_refused() {
        for (flag, v) in [
            ("--h2-stream-window", "2147483648"),
            ("--h2-connection-window", "100"),
            ("--h2-frame-size", "16777216"),
            ("--h2-frame-size", "1024"),
        ] {
            let e = Cli::try_parse_from(["ringmesh", "node", "--config", "c.yaml", flag, v])
                .err()
                .unwrap_or_else(|| panic!("{flag} {v} accepted"));
            let msg = e.to_string();
            assert!(
                msg.contains(flag) && msg.contains("not in"),
                "{flag} {v}: {msg}"
            );
        }
        let ok = Cli::try_parse_from([
            "ringmesh",
            "node",
            "--config",
            "c.yaml",
            "--h2-stream-window",
            "2147483647",
            "--h2-frame-size",
            "16384",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
    }
}
