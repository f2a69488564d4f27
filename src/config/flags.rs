//! Command-line flags and their environment variables, in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Environment variable names (each flag can also be set from its variable).
pub mod env {
    pub const CONFIG: &str = "RINGMESH_CONFIG";
    pub const SHARDS: &str = "RINGMESH_SHARDS";
    pub const IO_ENGINE: &str = "RINGMESH_IO_ENGINE";
    pub const LOCAL_TCP_CONGESTION: &str = "RINGMESH_LOCAL_TCP_CONGESTION";
    pub const H2_STREAM_WINDOW: &str = "RINGMESH_H2_STREAM_WINDOW";
    pub const H2_CONNECTION_WINDOW: &str = "RINGMESH_H2_CONNECTION_WINDOW";
    pub const H2_FRAME_SIZE: &str = "RINGMESH_H2_FRAME_SIZE";
    pub const TLS_RECORDS: &str = "RINGMESH_TLS_RECORDS";
    pub const CA_CERT: &str = "RINGMESH_CA_CERT";
    pub const CA_KEY: &str = "RINGMESH_CA_KEY";
    pub const LOG: &str = "RUST_LOG";
    pub const ZDS_SOCKET: &str = "INPOD_UDS";
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
    /// Manage the built-in CA's root.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Bring up a local ambient mesh in network namespaces, drive traffic along every path,
    /// print a report, clean up (root).
    Demo(DemoFlags),
    /// Local ambient meshes in network namespaces, with the lab playing istio-cni (root).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Benchmark raw (no mesh), ringmesh and any --peer node proxy side by side in one run,
    /// interleaved, in the lab (root).
    Bench(BenchFlags),
}

#[derive(Debug, Clone, Args)]
pub struct BenchFlags {
    /// Small sizes, finishes in about two minutes (for CI).
    #[arg(long)]
    pub quick: bool,
    /// Another ZDS-speaking node proxy, started per node as `sh -c "exec COMMAND"` with
    /// ZDS_SOCKET, CONFIG (ztunnel local config), CA_CERT, CA_KEY and NODE in its
    /// environment. Repeatable.
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
        /// Leave the nodes without a node proxy (start any ZDS-speaking proxy yourself).
        #[arg(long)]
        no_proxies: bool,
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
    /// ztunnel local config (LOCAL_XDS YAML: workloads, services, policies). Re-read on SIGHUP
    /// and when it changes; a bad new file is rejected and the old config keeps serving.
    #[arg(long, env = env::CONFIG)]
    pub config: PathBuf,

    /// Enrol a local pod: UID is the workload uid in the config, NETNS_PATH its network
    /// namespace (e.g. /var/run/netns/NAME). Repeatable.
    #[arg(long = "pod", value_name = "UID=NETNS_PATH", value_parser = parse_pod)]
    pub pods: Vec<PodArg>,

    /// Number of shards (threads, each with its own runtime and listeners). Default: one per
    /// CPU this process may run on.
    #[arg(long, env = env::SHARDS)]
    pub shards: Option<usize>,

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

    /// Root certificate of the built-in CA (PEM). Without it a root is generated at start.
    #[arg(long, env = env::CA_CERT, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// Root key of the built-in CA (PEM, PKCS#8).
    #[arg(long, env = env::CA_KEY, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// Lifetime of workload certificates; each is rotated at half of it.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,

    /// Keep the client's source IP on inbound connections to the app.
    #[arg(long, value_enum, default_value = "auto")]
    pub orig_src: OrigSrc,

    /// SO_MARK on every proxy socket (capture rules skip marked packets).
    #[arg(long, default_value_t = DEFAULT_MARK)]
    pub mark: u32,

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

    /// HTTP/2 maximum frame size (bytes; 16384 to 16777215, RFC 9113 §6.5.2).
    #[arg(long, default_value_t = 1024 * 1024, env = env::H2_FRAME_SIZE,
          value_parser = clap::value_parser!(u32).range(16_384..=16_777_215))]
    pub h2_frame_size: u32,

    /// Streams per pooled HBONE connection before another is opened.
    #[arg(long, default_value_t = 100)]
    pub pool_max_streams: usize,

    /// An HBONE connection unused this long is released.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub pool_idle_timeout: Duration,

    /// HTTP/2 PING interval on HBONE connections.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// An HBONE connection whose PING is unanswered this long is dropped.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub ping_timeout: Duration,

    /// Timeout of TCP connects (to peers' 15008 and to apps).
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

    /// Admin API (config_dump, quitquitquit); keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics (/metrics, /stats/prometheus).
    #[arg(long, default_value = "[::]:15020")]
    pub stats_addr: SocketAddr,

    /// Readiness (/healthz/ready).
    #[arg(long, default_value = "[::]:15021")]
    pub readiness_addr: SocketAddr,

    /// How often the config file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub config_poll: Duration,
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

/// `--uring-taskrun` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UringTaskRun {
    Coop,
    Defer,
    Interrupt,
}

/// Parses `500ms`, `10s`, `5m`, `24h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 10s, 5m or 24h"))?;
    let mul = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs(n * mul))
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
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("x").is_err());
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
        assert_eq!(n.shards, Some(2));
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
