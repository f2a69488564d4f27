//! Istio's TCP and HTTP metrics, kept per shard and summed on scrape.
//!
//! Each shard owns a `ShardMetrics`: maps from a label set to counters. A connection looks up
//! (or creates) its label set once, at open, and then adds to its counters with relaxed atomic
//! adds on memory only that shard writes — no shared atomic on the hot path. A request does the
//! same with its HTTP label set once it has its response code (`ShardMetrics::request`, or
//! `ShardMetrics::http` for a handle the caller may keep); its histograms are atomic buckets.
//! Neither takes a lock: each map is a `ShardRegistry` (`telemetry::registry`) whose `Mutex`
//! is for registration and scrape only — taken the first time the shard's thread sees a label
//! set, and by the scrape; a label set seen before comes out of the shard thread's own cache.
//! A scrape (on the control thread) sums every shard's counters per label set and encodes
//! them with prometheus-client under Istio's names: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, `istio_tcp_connections_failed_total`;
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`.
//!
//! The HTTP histograms use Envoy's default buckets (`HTTP_BUCKETS`, waypoint-facts §4.1).
//! prometheus-client's `Histogram` can only be fed observations, not pre-summed bucket counts,
//! so the scrape encodes the shard sums through `SummedHistograms`, a small `EncodeMetric`
//! type; `le` renders as prometheus-client writes floats (`le="1.0"`, Envoy writes `le="1"`:
//! the same bound to every Prometheus parser).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::registry::ShardRegistry;
use crate::identity::Identity;

/// The label set of Istio's TCP metrics (names and order as ztunnel's `CommonTrafficLabels`).
#[derive(
    Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, serde::Serialize, serde::Deserialize,
)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// The workload side of a label set.
#[derive(Debug, Clone, Default)]
pub struct Peer<'a> {
    pub workload: Option<&'a crate::state::Workload>,
    pub principal: Option<String>,
}

/// The destination service side of a label set.
#[derive(Debug, Clone, Default)]
pub struct DstService<'a> {
    pub hostname: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        UNKNOWN.into()
    } else {
        s.to_string()
    }
}

impl TcpLabels {
    /// Builds labels; missing values render as `unknown`.
    pub fn new(
        reporter: &str,
        src: &Peer<'_>,
        dst: &Peer<'_>,
        svc: Option<&DstService<'_>>,
        mtls: bool,
        response_flags: &str,
    ) -> TcpLabels {
        let s = PeerLabels::new(src, UNKNOWN);
        let d = PeerLabels::new(dst, UNKNOWN);
        let v = ServiceLabels::new(svc);
        TcpLabels {
            reporter: reporter.into(),
            source_workload: s.workload,
            source_canonical_service: s.canonical_service,
            source_canonical_revision: s.canonical_revision,
            source_workload_namespace: s.namespace,
            source_principal: s.principal,
            source_app: s.app,
            source_version: s.version,
            source_cluster: s.cluster,
            destination_service: v.hostname,
            destination_service_namespace: v.namespace,
            destination_service_name: v.name,
            destination_workload: d.workload,
            destination_canonical_service: d.canonical_service,
            destination_canonical_revision: d.canonical_revision,
            destination_workload_namespace: d.namespace,
            destination_principal: d.principal,
            destination_app: d.app,
            destination_version: d.version,
            destination_cluster: d.cluster,
            request_protocol: "tcp".into(),
            response_flags: response_flags.into(),
            connection_security_policy: if mtls { "mutual_tls" } else { UNKNOWN }.into(),
        }
    }
}

/// The label set of Istio's HTTP metrics, names and order as Istio's stats filter reports
/// them for a waypoint (waypoint-facts §4.1).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct HttpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

impl HttpLabels {
    /// Builds labels as Istio's stats filter does: missing values render as `unknown`, a
    /// missing canonical revision as `latest`; a source without workload metadata takes its
    /// namespace from its SPIFFE principal. `request_protocol` is `http` or `grpc`,
    /// `response_code` 0 when no response was sent, `grpc_status` `None` unless gRPC,
    /// `response_flags` `-` when none; `mtls` gives `mutual_tls`, else `none`.
    #[allow(clippy::too_many_arguments)] // one argument per label input, as Istio's filter takes them
    pub fn new(
        reporter: &str,
        src: &Peer<'_>,
        dst: &Peer<'_>,
        svc: Option<&DstService<'_>>,
        request_protocol: &str,
        response_code: u16,
        grpc_status: Option<&str>,
        response_flags: &str,
        mtls: bool,
    ) -> HttpLabels {
        let mut s = PeerLabels::new(src, LATEST);
        // Parsed only without workload metadata (the hot path has it).
        if src.workload.is_none()
            && let Some(id) = src
                .principal
                .as_deref()
                .and_then(|p| p.parse::<Identity>().ok())
        {
            s.namespace = or_unknown(&id.namespace);
        }
        let d = PeerLabels::new(dst, LATEST);
        let v = ServiceLabels::new(svc);
        HttpLabels {
            reporter: reporter.into(),
            source_workload: s.workload,
            source_canonical_service: s.canonical_service,
            source_canonical_revision: s.canonical_revision,
            source_workload_namespace: s.namespace,
            source_principal: s.principal,
            source_app: s.app,
            source_version: s.version,
            source_cluster: s.cluster,
            destination_workload: d.workload,
            destination_workload_namespace: d.namespace,
            destination_principal: d.principal,
            destination_app: d.app,
            destination_version: d.version,
            destination_service: v.hostname,
            destination_canonical_service: d.canonical_service,
            destination_canonical_revision: d.canonical_revision,
            destination_service_name: v.name,
            destination_service_namespace: v.namespace,
            destination_cluster: d.cluster,
            request_protocol: request_protocol.into(),
            response_code: response_code.to_string(),
            grpc_response_status: grpc_status.unwrap_or("").into(),
            response_flags: response_flags.into(),
            connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
        }
    }
}

/// Envoy's default histogram bucket bounds, used for all three HTTP histograms (ms, bytes).
pub const HTTP_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Buckets per histogram: `HTTP_BUCKETS` and `+Inf`.
const BUCKETS: usize = HTTP_BUCKETS.len() + 1;

/// One histogram on one shard: per-bucket counts (not cumulative), sum and count.
#[derive(Debug, Default)]
pub struct ShardHistogram {
    buckets: [AtomicU64; BUCKETS],
    /// The sum as `f64` bits.
    sum: AtomicU64,
    count: AtomicU64,
}

impl ShardHistogram {
    /// Records one value; negative or non-finite values count as 0.
    pub fn observe(&self, v: f64) {
        let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
        // The first bucket whose bound is ≥ v (`le` is inclusive); `+Inf` past the last.
        let i = HTTP_BUCKETS.partition_point(|b| *b < v);
        TcpCounters::add(&self.buckets[i], 1);
        TcpCounters::add(&self.count, 1);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + v).to_bits())
            });
    }

    fn totals(&self) -> HistogramTotals {
        HistogramTotals {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// The HTTP metrics of one label set on one shard; `istio_requests_total` is the duration
/// histogram's count.
#[derive(Debug, Default)]
pub struct HttpCounters {
    pub duration_ms: ShardHistogram,
    pub request_bytes: ShardHistogram,
    pub response_bytes: ShardHistogram,
}

impl HttpCounters {
    /// Records one finished request.
    pub fn record(&self, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        self.duration_ms.observe(duration_ms);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

/// A histogram summed over shards: per-bucket counts (not cumulative, the last is `+Inf`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HistogramTotals {
    pub buckets: [u64; BUCKETS],
    pub sum: f64,
    pub count: u64,
}

impl HistogramTotals {
    fn add(&mut self, o: &HistogramTotals) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// One HTTP label set's metrics summed over shards.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HttpTotals {
    pub requests: u64,
    pub duration_ms: HistogramTotals,
    pub request_bytes: HistogramTotals,
    pub response_bytes: HistogramTotals,
}

const UNKNOWN: &str = "unknown";
const LATEST: &str = "latest";

/// One peer's labels, rendered; shared by `TcpLabels` and `HttpLabels`.
struct PeerLabels {
    workload: String,
    canonical_service: String,
    canonical_revision: String,
    namespace: String,
    principal: String,
    app: String,
    version: String,
    cluster: String,
}

impl PeerLabels {
    /// Missing values render as `unknown`, a missing canonical revision as `no_revision`.
    fn new(p: &Peer<'_>, no_revision: &str) -> PeerLabels {
        let w =
            |f: fn(&crate::state::Workload) -> &str| or_unknown(p.workload.map(f).unwrap_or(""));
        let revision = p.workload.map_or("", |w| &w.canonical_revision);
        PeerLabels {
            workload: w(workload_name),
            canonical_service: w(canonical),
            canonical_revision: if revision.is_empty() {
                no_revision.into()
            } else {
                revision.into()
            },
            namespace: w(|w| &w.namespace),
            principal: or_unknown(p.principal.as_deref().unwrap_or("")),
            app: w(canonical),
            version: w(|w| &w.canonical_revision),
            cluster: w(|w| &w.cluster_id),
        }
    }
}

/// The destination service's labels, rendered (`unknown` without one).
struct ServiceLabels {
    hostname: String,
    namespace: String,
    name: String,
}

impl ServiceLabels {
    fn new(svc: Option<&DstService<'_>>) -> ServiceLabels {
        ServiceLabels {
            hostname: or_unknown(svc.map_or("", |s| s.hostname)),
            namespace: or_unknown(svc.map_or("", |s| s.namespace)),
            name: or_unknown(svc.map_or("", |s| s.name)),
        }
    }
}

fn workload_name(w: &crate::state::Workload) -> &str {
    if w.workload_name.is_empty() {
        &w.name
    } else {
        &w.workload_name
    }
}

fn canonical(w: &crate::state::Workload) -> &str {
    if w.canonical_name.is_empty() {
        workload_name(w)
    } else {
        &w.canonical_name
    }
}

/// Counters of one label set on one shard.
#[derive(Debug, Default)]
pub struct TcpCounters {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub failed: AtomicU64,
    /// Response bytes (server → client), Istio's `sent`.
    pub sent: AtomicU64,
    /// Request bytes (client → server), Istio's `received`.
    pub received: AtomicU64,
}

impl TcpCounters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// One shard's metrics.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    tcp: ShardRegistry<TcpLabels, TcpCounters>,
    http: ShardRegistry<HttpLabels, HttpCounters>,
    /// Proxied connections and HBONE streams open now (the drain waits for 0).
    pub live: AtomicU64,
}

impl ShardMetrics {
    /// The counters of a label set (created on first use); counts a connection opened.
    pub fn open(&self, labels: TcpLabels) -> Arc<TcpCounters> {
        let c = self.counters_for(labels);
        TcpCounters::add(&c.opened, 1);
        c
    }

    /// As [`open`](Self::open), with the registry's shared copy of the label set (what a
    /// tunnel keeps for its hand-over, instead of its own copy).
    pub fn open_shared(&self, labels: TcpLabels) -> (Arc<TcpLabels>, Arc<TcpCounters>) {
        let (l, c) = self.tcp.get_shared(labels);
        TcpCounters::add(&c.opened, 1);
        (l, c)
    }

    /// The TCP counters of a label set (created on first use), nothing counted.
    pub fn counters_for(&self, labels: TcpLabels) -> Arc<TcpCounters> {
        self.tcp.get(labels)
    }

    /// The HTTP counters of a label set (created on first use), for a caller that keeps the
    /// handle across requests of the same label set.
    pub fn http(&self, labels: HttpLabels) -> Arc<HttpCounters> {
        self.http.get(labels)
    }

    /// Records one finished HTTP request under `labels`.
    pub fn request(
        &self,
        labels: HttpLabels,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.http
            .get(labels)
            .record(duration_ms, request_bytes, response_bytes);
    }
}

/// Control-plane counters (xDS stream, CA requests); written by the control thread only.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    xds_terminations: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// type URL → (responses, resource payload bytes).
    xds_messages: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    /// result ("success" / "failure") → requests.
    ca_requests: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl ControlMetrics {
    /// One xDS stream ended; `reason` is ztunnel's label value (`ConnectionError`, `Error`,
    /// `Reconnect`, `Complete`).
    pub fn xds_termination(&self, reason: &'static str) {
        *self
            .xds_terminations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// One xDS response of `type_url` carrying `bytes` of resource payload.
    pub fn xds_message(&self, type_url: &str, bytes: u64) {
        let mut m = self.xds_messages.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(type_url.to_string()).or_default();
        e.0 += 1;
        e.1 += bytes;
    }

    /// One certificate signing request to the CA, and whether it succeeded.
    pub fn ca_request(&self, ok: bool) {
        *self
            .ca_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(if ok { "success" } else { "failure" })
            .or_default() += 1;
    }

    fn register_istio(&self, istio: &mut Registry) {
        let term: Family<Vec<(String, String)>, Counter> = Family::default();
        for (r, n) in self
            .xds_terminations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            term.get_or_create(&vec![("reason".into(), r.to_string())])
                .inc_by(*n);
        }
        istio.register(
            "xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            term,
        );
        let msgs: Family<Vec<(String, String)>, Counter> = Family::default();
        let bytes: Family<Vec<(String, String)>, Counter> = Family::default();
        for (url, (n, b)) in self
            .xds_messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let l = vec![("url".into(), url.clone())];
            msgs.get_or_create(&l).inc_by(*n);
            bytes.get_or_create(&l).inc_by(*b);
        }
        istio.register(
            "xds_message",
            "Total number of messages received (unstable)",
            msgs,
        );
        istio.register_with_unit(
            "xds_message",
            "Total number of bytes received (unstable)",
            prometheus_client::registry::Unit::Bytes,
            bytes,
        );
    }

    fn register_root(&self, root: &mut Registry) {
        let ca: Family<Vec<(String, String)>, Counter> = Family::default();
        for (r, n) in self
            .ca_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            ca.get_or_create(&vec![("result".into(), r.to_string())])
                .inc_by(*n);
        }
        root.register(
            "ringmesh_ca_requests",
            "Certificate signing requests sent to the CA, by result",
            ca,
        );
    }
}

/// Every shard's metrics, plus process-level gauges; encodes on scrape.
#[derive(Debug, Default)]
pub struct Metrics {
    shards: Mutex<Vec<Arc<ShardMetrics>>>,
    pub active_pods: AtomicU64,
    pub engine: Mutex<String>,
    pub control: Arc<ControlMetrics>,
    /// Certificates by state (`Available`, `Initializing`, `Unavailable`), set by the
    /// certificate manager.
    pub cert_states: Mutex<std::collections::BTreeMap<&'static str, i64>>,
    /// When each held workload certificate expires (Unix seconds), by identity.
    pub cert_expiry: Mutex<std::collections::BTreeMap<String, i64>>,
    pub lifecycle: Lifecycle,
}

/// Failed accepts on any listener of the process (out of fds, mostly), over its life.
pub static ACCEPT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// When an accept failure was last logged (Unix seconds): the log is rate-limited.
pub static ACCEPT_FAILURES_LOGGED: AtomicU64 = AtomicU64::new(0);

/// Counts a failed accept (any listener of the process: the pods', the admin ports, the
/// hand-over socket) and says whether to log it: at most one line every 10 s for them all,
/// so that running out of fds costs a line, not a flood. Returns the total so far.
pub fn accept_failed() -> (u64, bool) {
    count_rate_limited(&ACCEPT_FAILURES, &ACCEPT_FAILURES_LOGGED)
}

/// Times a pod listener's accept loop stopped taking connections because its shard held
/// `--max-connections` (its share of it) open, over the process's life.
pub static CONN_LIMIT_PAUSES: AtomicU64 = AtomicU64::new(0);

/// When a pause at the connection bound was last logged (Unix seconds).
pub static CONN_LIMIT_PAUSES_LOGGED: AtomicU64 = AtomicU64::new(0);

/// Counts a pause at the connection bound and says whether to log it (at most one line
/// every 10 s). Returns the total so far.
pub fn conn_limit_paused() -> (u64, bool) {
    count_rate_limited(&CONN_LIMIT_PAUSES, &CONN_LIMIT_PAUSES_LOGGED)
}

/// Plain-passthrough directions that copied because the system refused them a pipe (the fd
/// limit, mostly), over the process's life.
pub static PIPES_REFUSED: AtomicU64 = AtomicU64::new(0);

/// When a refused pipe was last logged (Unix seconds).
pub static PIPES_REFUSED_LOGGED: AtomicU64 = AtomicU64::new(0);

/// Counts a relay direction left without a pipe and says whether to log it (at most one
/// line every 10 s: at the fd limit every new connection would). Returns the total so far.
pub fn pipe_refused() -> (u64, bool) {
    count_rate_limited(&PIPES_REFUSED, &PIPES_REFUSED_LOGGED)
}

/// Adds one to `count`; true when nothing was logged for it in the last 10 s (`logged`
/// holds when, in Unix seconds, and is claimed by exactly one caller).
fn count_rate_limited(count: &AtomicU64, logged: &AtomicU64) -> (u64, bool) {
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = logged.load(Ordering::Relaxed);
    let log = now >= last.saturating_add(10)
        && logged
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    (n, log)
}

/// Rolling updates and the SIGTERM drain, as counted by this process.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Pods whose listeners this process took over from the one before it.
    pub pods_received: AtomicU64,
    /// Pods whose listeners this process handed to the one after it.
    pub pods_sent: AtomicU64,
    /// Live connections (HBONE tunnels, plaintext TCP relays) handed to the next process,
    /// which continues them.
    pub conns_sent: AtomicU64,
    /// Live connections continued here, handed over by the previous process.
    pub conns_received: AtomicU64,
    /// Connections whose hand-over the next process refused: kept here and drained.
    pub conns_kept: AtomicU64,
    /// Connections that were live when the drain began and finished before its deadline.
    pub drained: AtomicU64,
    /// Connections still live at the drain's deadline, closed by the exit.
    pub cut: AtomicU64,
    /// Connections an earlier node proxy on this node had open when it died without
    /// draining (`kill -9`, OOM), as its live-connection record says.
    pub crash_cut: AtomicU64,
}

impl Metrics {
    /// Metrics around existing control-plane counters (the xDS client may start first).
    pub fn with_control(control: Arc<ControlMetrics>) -> Metrics {
        Metrics {
            control,
            ..Default::default()
        }
    }

    /// Registers a new shard and returns its metrics.
    pub fn shard(&self) -> Arc<ShardMetrics> {
        let m = Arc::new(ShardMetrics::default());
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(m.clone());
        m
    }

    /// Proxied connections and HBONE streams open now, over all shards.
    pub fn live(&self) -> u64 {
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.live.load(Ordering::Relaxed))
            .sum()
    }

    /// Sums every shard per label set.
    pub fn totals(&self) -> HashMap<TcpLabels, [u64; 5]> {
        let mut out: HashMap<TcpLabels, [u64; 5]> = HashMap::new();
        for s in self.shards.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            s.tcp.for_each(|l, c| {
                let e = out.entry(l.clone()).or_default();
                for (i, v) in [&c.opened, &c.closed, &c.failed, &c.sent, &c.received]
                    .iter()
                    .enumerate()
                {
                    e[i] += v.load(Ordering::Relaxed);
                }
            });
        }
        out
    }

    /// Sums every shard's HTTP metrics per label set.
    pub fn http_totals(&self) -> HashMap<HttpLabels, HttpTotals> {
        let mut out: HashMap<HttpLabels, HttpTotals> = HashMap::new();
        for s in self.shards.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            s.http.for_each(|l, c| {
                let e = out.entry(l.clone()).or_default();
                let d = c.duration_ms.totals();
                e.requests += d.count;
                e.duration_ms.add(&d);
                e.request_bytes.add(&c.request_bytes.totals());
                e.response_bytes.add(&c.response_bytes.totals());
            });
        }
        out
    }

    /// The Prometheus text exposition of all metrics.
    pub fn encode(&self) -> String {
        let mut reg = Registry::default();
        let istio = reg.sub_registry_with_prefix("istio");
        let fams: [Family<TcpLabels, Counter>; 5] = Default::default();
        for (l, v) in self.totals() {
            for (i, f) in fams.iter().enumerate() {
                f.get_or_create(&l).inc_by(v[i]);
            }
        }
        let [opened, closed, failed, sent, received] = fams;
        istio.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            opened,
        );
        istio.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            closed,
        );
        istio.register(
            "tcp_connections_failed",
            "The total number of TCP connections that failed to establish",
            failed,
        );
        istio.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            sent,
        );
        istio.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            received,
        );
        self.register_http(istio);
        let build: Family<Vec<(String, String)>, Gauge> = Family::default();
        build
            .get_or_create(&vec![
                ("component".into(), "ringmesh".into()),
                ("tag".into(), env!("CARGO_PKG_VERSION").into()),
            ])
            .set(1);
        istio.register("build", "Istio component build info", build);
        let pods: Gauge = Gauge::default();
        pods.set(self.active_pods.load(Ordering::Relaxed) as i64);
        let certs: Family<Vec<(String, String)>, Gauge> = Family::default();
        for (st, n) in self
            .cert_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            certs
                .get_or_create(&vec![("state".into(), st.to_string())])
                .set(*n);
        }
        self.control.register_istio(istio);
        self.control.register_root(&mut reg);
        reg.register(
            "workload_manager_active_proxy_count",
            "The total number of active pod proxies (ztunnel's name)",
            pods,
        );
        reg.register(
            "ringmesh_certificates",
            "Workload certificates held, by state",
            certs,
        );
        let expiry: Family<Vec<(String, String)>, Gauge> = Family::default();
        for (id, t) in self
            .cert_expiry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            expiry
                .get_or_create(&vec![("identity".into(), id.clone())])
                .set(*t);
        }
        reg.register(
            "ringmesh_certificate_expiry_timestamp_seconds",
            "When each workload certificate held expires (Unix time): alert when one comes within its rotation window, rotation has stopped",
            expiry,
        );
        let engine: Family<Vec<(String, String)>, Gauge> = Family::default();
        engine
            .get_or_create(&vec![(
                "engine".into(),
                self.engine
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            )])
            .set(1);
        reg.register(
            "ringmesh_io_engine",
            "The I/O engine the shards run",
            engine,
        );
        let u = crate::runtime::uring::stats();
        for (name, help, c) in [
            (
                "ringmesh_uring_buffer_exhausted",
                "Times a multishot receive stopped because the provided buffer ring was empty",
                &u.buffer_exhausted,
            ),
            (
                "ringmesh_uring_private_receives",
                "Receives into a private buffer while the buffer ring was empty",
                &u.private_recvs,
            ),
            (
                "ringmesh_uring_send_zc",
                "SEND_ZC operations submitted",
                &u.send_zc,
            ),
            (
                "ringmesh_task_panics",
                "Tasks (and shard control commands) that panicked on a shard, either engine: each was dropped, the shard kept serving",
                &u.task_panics,
            ),
        ] {
            let ctr: Counter = Counter::default();
            ctr.inc_by(c.load(std::sync::atomic::Ordering::Relaxed));
            reg.register(name, help, ctr);
        }
        let [recvs, recv_bytes, sends, send_bytes] = crate::runtime::uring::op_totals();
        for (name, help, v) in [
            (
                "ringmesh_uring_receives",
                "Receive completions that carried data (bytes / receives = mean receive size)",
                recvs,
            ),
            (
                "ringmesh_uring_received_bytes",
                "Bytes received through the ring",
                recv_bytes,
            ),
            (
                "ringmesh_uring_sends",
                "Send completions that moved data (bytes / sends = mean send size)",
                sends,
            ),
            (
                "ringmesh_uring_sent_bytes",
                "Bytes sent through the ring",
                send_bytes,
            ),
        ] {
            let ctr: Counter = Counter::default();
            ctr.inc_by(v);
            reg.register(name, help, ctr);
        }
        let accept_failures: Counter = Counter::default();
        accept_failures.inc_by(ACCEPT_FAILURES.load(Ordering::Relaxed));
        reg.register(
            "ringmesh_accept_failures",
            "Failed accepts on the pods' listeners, the admin ports and the hand-over socket (EMFILE and the like): the connection waits in the kernel's queue",
            accept_failures,
        );
        let paused: Counter = Counter::default();
        paused.inc_by(CONN_LIMIT_PAUSES.load(Ordering::Relaxed));
        reg.register(
            "ringmesh_connection_limit_pauses",
            "Times a pod listener stopped accepting because its shard held its share of --max-connections open: new connections wait in the kernel's queue (on io_uring, up to 256 per listener in the engine's) until one closes",
            paused,
        );
        let refused: Counter = Counter::default();
        refused.inc_by(PIPES_REFUSED.load(Ordering::Relaxed));
        reg.register(
            "ringmesh_splice_pipes_refused",
            "Plain-passthrough directions that copied through user space because the system refused them a pipe for splice (EMFILE and the like); nothing is lost",
            refused,
        );
        let live: Gauge = Gauge::default();
        live.set(self.live() as i64);
        reg.register(
            "ringmesh_live_connections",
            "Proxied connections and HBONE streams open now, over all shards",
            live,
        );
        let l = &self.lifecycle;
        let handover: Family<Vec<(String, String)>, Counter> = Family::default();
        for (dir, v) in [("received", &l.pods_received), ("sent", &l.pods_sent)] {
            handover
                .get_or_create(&vec![("direction".into(), dir.into())])
                .inc_by(v.load(Ordering::Relaxed));
        }
        reg.register(
            "ringmesh_handover_pods",
            "Pods whose listening sockets were taken over from the previous node proxy (received) or handed to the next one (sent)",
            handover,
        );
        let moved: Family<Vec<(String, String)>, Counter> = Family::default();
        for (outcome, v) in [
            ("sent", &l.conns_sent),
            ("received", &l.conns_received),
            ("kept", &l.conns_kept),
        ] {
            moved
                .get_or_create(&vec![("outcome".into(), outcome.into())])
                .inc_by(v.load(Ordering::Relaxed));
        }
        reg.register(
            "ringmesh_handover_connections",
            "Live connections handed to the next node proxy (sent), continued from the previous one (received), or refused by the next one and drained here (kept)",
            moved,
        );
        let drain: Family<Vec<(String, String)>, Counter> = Family::default();
        for (outcome, v) in [("drained", &l.drained), ("cut", &l.cut)] {
            drain
                .get_or_create(&vec![("outcome".into(), outcome.into())])
                .inc_by(v.load(Ordering::Relaxed));
        }
        reg.register(
            "ringmesh_drain_connections",
            "Connections live when a drain began: finished before its deadline (drained) or closed at it (cut)",
            drain,
        );
        let crash: Counter = Counter::default();
        crash.inc_by(l.crash_cut.load(Ordering::Relaxed));
        reg.register(
            "ringmesh_crash_connections_cut",
            "Connections an earlier node proxy on this node had open when it died without draining (kill -9, OOM), counted at this process's start from the record it kept",
            crash,
        );
        let shards: Gauge = Gauge::default();
        shards.set(self.shards.lock().unwrap_or_else(|e| e.into_inner()).len() as i64);
        reg.register("ringmesh_shards", "Number of data-plane shards", shards);
        let fds: Gauge = Gauge::default();
        fds.set(
            std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as i64)
                .unwrap_or(0),
        );
        reg.register("process_open_fds", "Number of open file descriptors", fds);
        let max_fds: Gauge = Gauge::default();
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            max_fds.set(soft as i64);
        }
        reg.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            max_fds,
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

impl Metrics {
    /// Istio's HTTP request metrics, summed over shards, in label order.
    fn register_http(&self, istio: &mut Registry) {
        let mut totals: Vec<_> = self.http_totals().into_iter().collect();
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        let requests: Family<HttpLabels, Counter> = Family::default();
        let mut hists: [SummedHistograms; 3] = Default::default();
        for (l, t) in totals {
            requests.get_or_create(&l).inc_by(t.requests);
            for (h, v) in hists
                .iter_mut()
                .zip([t.duration_ms, t.request_bytes, t.response_bytes])
            {
                h.0.push((l.clone(), v));
            }
        }
        let [duration, request_bytes, response_bytes] = hists;
        istio.register("requests", "Total number of requests", requests);
        istio.register(
            "request_duration_milliseconds",
            "Duration of requests in milliseconds",
            duration,
        );
        istio.register("request_bytes", "Size of requests in bytes", request_bytes);
        istio.register(
            "response_bytes",
            "Size of responses in bytes",
            response_bytes,
        );
    }
}

/// Histograms of pre-summed buckets, one per label set, encoded like prometheus-client's
/// `Family<_, Histogram>` (which cannot be built from bucket counts).
#[derive(Debug, Default)]
struct SummedHistograms(Vec<(HttpLabels, HistogramTotals)>);

impl EncodeMetric for SummedHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            let buckets: Vec<(f64, u64)> = HTTP_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(h.buckets)
                .collect();
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
