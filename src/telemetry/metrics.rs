//! Istio's TCP metrics, kept per shard and summed on scrape.
//!
//! Each shard owns a `ShardMetrics`: a map from a label set to counters. A connection looks up
//! (or creates) its label set once, at open, and then adds to its counters with relaxed atomic
//! adds on memory only that shard writes — no shared atomic on the hot path. A scrape (on the
//! control thread) sums every shard's counters per label set and encodes them with
//! prometheus-client under Istio's names: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`, `istio_tcp_connections_failed_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label set of Istio's TCP metrics (names and order as ztunnel's `CommonTrafficLabels`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
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
        "unknown".into()
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
        let w = |p: &Peer<'_>, f: fn(&crate::state::Workload) -> &str| {
            or_unknown(p.workload.map(f).unwrap_or(""))
        };
        TcpLabels {
            reporter: reporter.into(),
            source_workload: w(src, workload_name),
            source_canonical_service: w(src, canonical),
            source_canonical_revision: w(src, |w| &w.canonical_revision),
            source_workload_namespace: w(src, |w| &w.namespace),
            source_principal: or_unknown(src.principal.as_deref().unwrap_or("")),
            source_app: w(src, canonical),
            source_version: w(src, |w| &w.canonical_revision),
            source_cluster: w(src, |w| &w.cluster_id),
            destination_service: or_unknown(svc.map_or("", |s| s.hostname)),
            destination_service_namespace: or_unknown(svc.map_or("", |s| s.namespace)),
            destination_service_name: or_unknown(svc.map_or("", |s| s.name)),
            destination_workload: w(dst, workload_name),
            destination_canonical_service: w(dst, canonical),
            destination_canonical_revision: w(dst, |w| &w.canonical_revision),
            destination_workload_namespace: w(dst, |w| &w.namespace),
            destination_principal: or_unknown(dst.principal.as_deref().unwrap_or("")),
            destination_app: w(dst, canonical),
            destination_version: w(dst, |w| &w.canonical_revision),
            destination_cluster: w(dst, |w| &w.cluster_id),
            request_protocol: "tcp".into(),
            response_flags: response_flags.into(),
            connection_security_policy: if mtls { "mutual_tls" } else { "unknown" }.into(),
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
    tcp: Mutex<HashMap<TcpLabels, Arc<TcpCounters>>>,
}

impl ShardMetrics {
    /// The counters of a label set (created on first use); counts a connection opened.
    pub fn open(&self, labels: TcpLabels) -> Arc<TcpCounters> {
        let c = self
            .tcp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(labels)
            .or_default()
            .clone();
        TcpCounters::add(&c.opened, 1);
        c
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

    /// Sums every shard per label set.
    pub fn totals(&self) -> HashMap<TcpLabels, [u64; 5]> {
        let mut out: HashMap<TcpLabels, [u64; 5]> = HashMap::new();
        for s in self.shards.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (l, c) in s.tcp.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let e = out.entry(l.clone()).or_default();
                for (i, v) in [&c.opened, &c.closed, &c.failed, &c.sent, &c.received]
                    .iter()
                    .enumerate()
                {
                    e[i] += v.load(Ordering::Relaxed);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_shards_and_uses_istio_names() {
        let m = Metrics::default();
        let (a, b) = (m.shard(), m.shard());
        let l = TcpLabels::new(
            "source",
            &Peer::default(),
            &Peer::default(),
            None,
            true,
            "-",
        );
        let ca = a.open(l.clone());
        let cb = b.open(l.clone());
        TcpCounters::add(&ca.sent, 10);
        TcpCounters::add(&cb.sent, 5);
        TcpCounters::add(&cb.received, 7);
        let t = m.totals();
        assert_eq!(t[&l], [2, 0, 0, 15, 7]);
        let text = m.encode();
        assert!(
            text.contains("istio_tcp_sent_bytes_total{reporter=\"source\""),
            "{text}"
        );
        assert!(
            text.contains("connection_security_policy=\"mutual_tls\"} 15"),
            "{text}"
        );
        assert!(
            text.contains("istio_tcp_connections_opened_total{"),
            "{text}"
        );
        assert!(text.contains("source_workload=\"unknown\""), "{text}");
        assert!(
            text.contains("istio_build{component=\"ringmesh\""),
            "{text}"
        );
    }
}
