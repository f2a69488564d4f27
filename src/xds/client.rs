//! The delta ADS client: one stream to istiod for the Address and Authorization types, as
//! ztunnel runs it.
//!
//! Per connection: one initial request per type (Address first), wildcard, `node` only in
//! those two, `initial_resource_versions` = what the store holds (so the server can send
//! removals for what went away while we were disconnected). Per response: apply it, ACK
//! (`type_url` + `response_nonce`) or NACK (the same plus `error_detail` naming every
//! rejected resource; the good ones still apply), then hand the control loop a new snapshot.
//! `Synced` once each type has been ACKed at least once; readiness and ZDS wait for it.
//!
//! Reconnection keeps the store (the last good state keeps serving): after a connection
//! failure or an error status the pause doubles from 10 ms to 15 s; after a clean end or a
//! server going away, 10 ms and the backoff starts over. Runs on the control thread.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::grpc::Target;
use super::store::{Applied, XdsStore};
use crate::proto::{self, discovery};
use crate::state::Snapshot;
use crate::telemetry::metrics::ControlMetrics;

/// What the xDS client tells the control loop.
#[derive(Debug)]
pub enum XdsEvent {
    /// Everything received so far, as a snapshot to publish (its version is set by the
    /// publisher).
    Snapshot(Box<Snapshot>),
    /// Each type has been ACKed once: the node may report ready and start enrolling pods.
    Synced,
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    pub target: Target,
    /// Sent in the first request of each type.
    pub node: discovery::Node,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// What `/config_dump` shows of the xDS stream.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsStatus {
    pub address: String,
    pub connected: bool,
    pub synced: bool,
    pub connects: u64,
    pub last_error: Option<String>,
    /// Per type URL: the nonce last ACKed or NACKed, and when.
    pub types: std::collections::BTreeMap<String, TypeStatus>,
    pub workloads: usize,
    pub services: usize,
    pub policies: usize,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    pub last_nonce: String,
    pub acked: bool,
    /// The NACK's message, when the last response was rejected in part.
    pub rejected: Option<String>,
    pub responses: u64,
    pub updated_at: String,
}

/// Why a session ended, as the `reason` label of `istio_xds_connection_terminations`.
#[derive(Debug)]
enum End {
    /// Could not connect or open the stream.
    ConnectionError(String),
    /// The server went away in an ordinary way (GOAWAY, transport closing, cancelled).
    Reconnect(String),
    /// Another error status mid-stream.
    Error(String),
    /// The stream ended cleanly.
    Complete,
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::ConnectionError(_) => "ConnectionError",
            End::Reconnect(_) => "Reconnect",
            End::Error(_) => "Error",
            End::Complete => "Complete",
        }
    }
}

/// Starts the client on the current (control) runtime.
pub fn spawn(
    cfg: XdsConfig,
    events: mpsc::UnboundedSender<XdsEvent>,
    metrics: Arc<ControlMetrics>,
    status: Arc<Mutex<XdsStatus>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(cfg, events, metrics, status))
}

async fn run(
    cfg: XdsConfig,
    events: mpsc::UnboundedSender<XdsEvent>,
    metrics: Arc<ControlMetrics>,
    status: Arc<Mutex<XdsStatus>>,
) {
    let mut s = Session {
        cfg: &cfg,
        store: XdsStore::default(),
        acked: BTreeSet::new(),
        synced: false,
        events: &events,
        metrics: &metrics,
        status: &status,
    };
    set(&status, |st| st.address = cfg.target.uri.to_string());
    let mut backoff = cfg.initial_backoff;
    loop {
        let end = s.session().await;
        metrics.xds_termination(end.label());
        let pause = match &end {
            End::ConnectionError(e) | End::Error(e) => {
                backoff = backoff.saturating_mul(2).min(cfg.max_backoff);
                tracing::warn!(
                    "xDS stream to {} ended ({}): {e}; retrying in {backoff:?}, serving the last state",
                    cfg.target.uri,
                    end.label()
                );
                set(&status, |st| st.last_error = Some(e.clone()));
                backoff
            }
            End::Reconnect(e) => {
                backoff = cfg.initial_backoff;
                tracing::info!(
                    "xDS stream to {} closed by the server ({e}): reconnecting",
                    cfg.target.uri
                );
                backoff
            }
            End::Complete => {
                backoff = cfg.initial_backoff;
                tracing::info!("xDS stream to {} completed: reconnecting", cfg.target.uri);
                backoff
            }
        };
        set(&status, |st| st.connected = false);
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

struct Session<'a> {
    cfg: &'a XdsConfig,
    store: XdsStore,
    /// Types ACKed at least once since start (readiness).
    acked: BTreeSet<String>,
    synced: bool,
    events: &'a mpsc::UnboundedSender<XdsEvent>,
    metrics: &'a ControlMetrics,
    status: &'a Mutex<XdsStatus>,
}

const TYPES: [&str; 2] = [proto::ADDRESS_TYPE, proto::AUTHORIZATION_TYPE];

impl Session<'_> {
    async fn session(&mut self) -> End {
        let target = &self.cfg.target;
        let channel = match target.connect().await {
            Ok(c) => c,
            Err(e) => return End::ConnectionError(e.to_string()),
        };
        let mut client = proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(200 * 1024 * 1024);
        let (tx, rx) = mpsc::channel::<discovery::DeltaDiscoveryRequest>(16);
        for t in TYPES {
            let req = discovery::DeltaDiscoveryRequest {
                node: Some(self.cfg.node.clone()),
                type_url: t.to_string(),
                initial_resource_versions: self.store.versions(t),
                ..Default::default()
            };
            let _ = tx.try_send(req);
        }
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Err(e) = target.authorize(&mut req) {
            return End::ConnectionError(e.to_string());
        }
        let mut stream = match client.delta_aggregated_resources(req).await {
            Ok(r) => r.into_inner(),
            Err(st) => return End::ConnectionError(status_text(&st)),
        };
        tracing::info!(
            "xDS: connected to {} (resuming with {} address, {} authorization resources)",
            target.uri,
            self.store.versions(proto::ADDRESS_TYPE).len(),
            self.store.versions(proto::AUTHORIZATION_TYPE).len()
        );
        set(self.status, |st| {
            st.connected = true;
            st.connects += 1;
        });
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    let reply = self.handle(resp);
                    if tx.send(reply).await.is_err() {
                        return End::Error("request stream closed".into());
                    }
                }
                Ok(None) => return End::Complete,
                Err(st) => return classify(&st),
            }
        }
    }

    /// Applies one response and returns its ACK or NACK.
    fn handle(
        &mut self,
        resp: discovery::DeltaDiscoveryResponse,
    ) -> discovery::DeltaDiscoveryRequest {
        let bytes: usize = resp
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .map(|a| a.value.len())
            .sum();
        self.metrics.xds_message(&resp.type_url, bytes as u64);
        let first = !self.acked.contains(&resp.type_url);
        let applied: Applied = self.store.apply(&resp);
        let nack = applied.nack_message();
        let (w, s, p) = self.store.counts();
        match &nack {
            None => tracing::info!(
                type_url = %resp.type_url,
                nonce = %resp.nonce,
                "xDS: applied {} updates, {} removals (now {w} workloads, {s} services, {p} policies)",
                applied.updated,
                applied.removed
            ),
            Some(m) => tracing::warn!(
                type_url = %resp.type_url,
                nonce = %resp.nonce,
                "xDS: NACK, {} resource(s) rejected, the other {} updates and {} removals applied: {m}",
                applied.rejected.len(),
                applied.updated,
                applied.removed
            ),
        }
        if applied.updated + applied.removed > 0 || first {
            let (snap, problems) = self.store.snapshot(0);
            for p in problems {
                tracing::warn!("xDS: {p} (the later entry wins)");
            }
            let _ = self.events.send(XdsEvent::Snapshot(Box::new(snap)));
        }
        let known = TYPES.contains(&resp.type_url.as_str());
        if nack.is_none() && known {
            self.acked.insert(resp.type_url.clone());
            if !self.synced && TYPES.iter().all(|t| self.acked.contains(*t)) {
                self.synced = true;
                tracing::info!("xDS: first responses of both types ACKed: synced");
                let _ = self.events.send(XdsEvent::Synced);
            }
        }
        let now = crate::telemetry::rfc3339(crate::telemetry::unix_secs(SystemTime::now()));
        set(self.status, |st| {
            st.synced = self.synced;
            (st.workloads, st.services, st.policies) = (w, s, p);
            let t = st.types.entry(resp.type_url.clone()).or_default();
            t.last_nonce = resp.nonce.clone();
            t.acked = nack.is_none();
            t.rejected = nack.clone();
            t.responses += 1;
            t.updated_at = now;
        });
        discovery::DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            error_detail: nack.map(|message| discovery::Status {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: vec![],
            }),
            ..Default::default()
        }
    }
}

fn set(status: &Mutex<XdsStatus>, f: impl FnOnce(&mut XdsStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

fn status_text(st: &tonic::Status) -> String {
    let mut s = format!("{:?}: {}", st.code(), st.message());
    if let Some(src) = std::error::Error::source(st) {
        s.push_str(": ");
        s.push_str(&super::grpc::error_chain(src));
    }
    s
}

/// ztunnel's split: a server going away normally reconnects at once; other errors back off.
fn classify(st: &tonic::Status) -> End {
    let text = status_text(st);
    let goaway = st.message().contains("transport is closing")
        || st.message().contains("received prior goaway")
        || text.contains("GOAWAY")
        || text.contains("connection closed")
        || text.contains("broken pipe");
    match st.code() {
        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
            End::Reconnect(text)
        }
        tonic::Code::Unavailable if goaway => End::Reconnect(text),
        _ => End::Error(text),
    }
}

/// ztunnel's node id: `ztunnel~<INSTANCE_IP or 1.1.1.1>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`.
pub fn node_id(instance_ip: &str, pod_name: &str, pod_namespace: &str) -> String {
    let ip = if instance_ip.is_empty() {
        "1.1.1.1"
    } else {
        instance_ip
    };
    format!("ztunnel~{ip}~{pod_name}.{pod_namespace}~{pod_namespace}.svc.cluster.local")
}

/// ztunnel's node metadata: NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, then every
/// `ISTIO_META_<K>` as `<K>` (strings), then `ISTIO_METAJSON_<K>` as JSON values.
pub fn node_metadata(
    pod_name: &str,
    pod_namespace: &str,
    instance_ip: &str,
    node_name: &str,
    meta: &[(String, String)],
    meta_json: &[(String, serde_json::Value)],
) -> prost_types::Struct {
    use prost_types::value::Kind;
    let s = |v: &str| prost_types::Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("NAME".to_string(), s(pod_name));
    fields.insert("NAMESPACE".to_string(), s(pod_namespace));
    fields.insert("INSTANCE_IPS".to_string(), s(instance_ip));
    fields.insert("NODE_NAME".to_string(), s(node_name));
    for (k, v) in meta {
        fields.insert(k.clone(), s(v));
    }
    for (k, v) in meta_json {
        fields.insert(k.clone(), json_value(v));
    }
    prost_types::Struct { fields }
}

fn json_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_and_metadata_as_ztunnel() {
        assert_eq!(
            node_id("198.19.255.1", "ztunnel-x", "istio-system"),
            "ztunnel~198.19.255.1~ztunnel-x.istio-system~istio-system.svc.cluster.local"
        );
        assert!(node_id("", "p", "n").starts_with("ztunnel~1.1.1.1~p.n~"));
        let md = node_metadata(
            "p",
            "n",
            "198.19.255.1",
            "node-a",
            &[("CLUSTER_ID".into(), "Kubernetes".into())],
            &[("LABELS".into(), serde_json::json!({"a": 1}))],
        );
        use prost_types::value::Kind;
        let get = |k: &str| md.fields.get(k).and_then(|v| v.kind.clone());
        assert_eq!(get("NODE_NAME"), Some(Kind::StringValue("node-a".into())));
        assert_eq!(
            get("INSTANCE_IPS"),
            Some(Kind::StringValue("198.19.255.1".into()))
        );
        assert_eq!(
            get("CLUSTER_ID"),
            Some(Kind::StringValue("Kubernetes".into()))
        );
        assert!(matches!(get("LABELS"), Some(Kind::StructValue(_))));
    }

    #[test]
    fn goaway_reconnects_other_errors_back_off() {
        let st = tonic::Status::unavailable("transport is closing");
        assert_eq!(classify(&st).label(), "Reconnect");
        let st = tonic::Status::permission_denied("nope");
        assert_eq!(classify(&st).label(), "Error");
        let st = tonic::Status::cancelled("x");
        assert_eq!(classify(&st).label(), "Reconnect");
    }
}
