//! The lab control plane's delta ADS, as istiod serves ambient node proxies.
//!
//! Per stream: the first request must carry a node id (else `InvalidArgument`, as istiod);
//! the token must be known (else `Unauthenticated`) and its namespace must match the node's
//! `NAMESPACE` metadata when that is set (istiod's identity check, else `PermissionDenied`).
//! Per type: a request without a nonce subscribes (wildcard) and is always answered — every
//! resource except those the client already holds at the same version, plus removals for
//! names it holds that are gone; a request with the nonce of our last response is its ACK
//! or NACK (recorded; nothing is resent); a stale nonce is ignored. A config change pushes
//! each subscribed type's difference from what the client was last sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{Event, Shared};
use crate::proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
    aggregated_discovery_service_server::AggregatedDiscoveryService,
};

pub(crate) struct Ads(pub(crate) Arc<Shared>);

type Out = Result<DeltaDiscoveryResponse, Status>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type DeltaAggregatedResourcesStream = tokio_stream::wrappers::ReceiverStream<Out>;

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = self
            .0
            .authenticate(req.metadata())
            .ok_or_else(|| Status::unauthenticated("authentication failure"))?;
        let (tx, rx) = mpsc::channel::<Out>(16);
        let shared = self.0.clone();
        tokio::spawn(async move {
            shared.connections.fetch_add(1, Ordering::Relaxed);
            let mut s = Stream {
                shared: shared.clone(),
                caller,
                out: tx,
                node_id: None,
                types: HashMap::new(),
                nonce: 0,
            };
            s.run(req.into_inner()).await;
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            if let Some(node_id) = s.node_id {
                shared.record(Event::Disconnected { node_id });
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

#[derive(Default)]
struct TypeState {
    /// What the client holds as far as we know: name → version.
    held: BTreeMap<String, String>,
    last_nonce: String,
}

struct Stream {
    shared: Arc<Shared>,
    caller: super::Caller,
    out: mpsc::Sender<Out>,
    node_id: Option<String>,
    types: HashMap<String, TypeState>,
    nonce: u64,
}

impl Stream {
    async fn run(&mut self, mut reqs: Streaming<DeltaDiscoveryRequest>) {
        let mut changes = self.shared.subscribe();
        loop {
            tokio::select! {
                r = reqs.message() => match r {
                    Ok(Some(req)) => {
                        if let Err(st) = self.request(req).await {
                            let _ = self.out.send(Err(st)).await;
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
                c = changes.changed() => {
                    if c.is_err() {
                        return;
                    }
                    let types: Vec<String> = self.types.keys().cloned().collect();
                    for t in types {
                        if !self.push(&t, false).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        if self.node_id.is_none() {
            let node = req
                .node
                .as_ref()
                .filter(|n| !n.id.is_empty())
                .ok_or_else(|| Status::invalid_argument("missing node information"))?;
            let ns = node
                .metadata
                .as_ref()
                .and_then(|m| m.fields.get("NAMESPACE"))
                .and_then(|v| match &v.kind {
                    Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            if !ns.is_empty() && ns != self.caller.namespace {
                return Err(Status::permission_denied(format!(
                    "authorization failed: the token is for namespace {:?}, the node says {ns:?}",
                    self.caller.namespace
                )));
            }
            self.node_id = Some(node.id.clone());
            self.shared.record(Event::Connected {
                node_id: node.id.clone(),
            });
        }
        let node_id = self.node_id.clone().unwrap_or_default();
        if !req.response_nonce.is_empty() {
            let t = self.types.entry(req.type_url.clone()).or_default();
            if req.response_nonce != t.last_nonce {
                return Ok(()); // stale: ignored, as istiod
            }
            self.shared.record(match req.error_detail {
                Some(e) => Event::Nack {
                    node_id,
                    type_url: req.type_url,
                    nonce: req.response_nonce,
                    message: e.message,
                },
                None => Event::Ack {
                    node_id,
                    type_url: req.type_url,
                    nonce: req.response_nonce,
                },
            });
            return Ok(());
        }
        let t = self.types.entry(req.type_url.clone()).or_default();
        t.held = req.initial_resource_versions.into_iter().collect();
        self.push(&req.type_url, true).await;
        Ok(())
    }

    /// Sends what `type_url`'s client lacks; `always`: even an empty response. False when
    /// the stream is gone.
    async fn push(&mut self, type_url: &str, always: bool) -> bool {
        let now = self.shared.snapshot(type_url);
        let t = self.types.entry(type_url.to_string()).or_default();
        let mut resources = Vec::new();
        for (name, s) in &now {
            if t.held.get(name) != Some(&s.version) {
                resources.push(Resource {
                    name: name.clone(),
                    version: s.version.clone(),
                    resource: Some(prost_types::Any {
                        type_url: type_url.to_string(),
                        value: s.bytes.clone(),
                    }),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = t
            .held
            .keys()
            .filter(|n| !now.contains_key(*n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && !always {
            return true;
        }
        self.nonce += 1;
        let nonce = format!("{}-{}", self.nonce, rand::random::<u32>());
        t.held = now
            .iter()
            .map(|(n, s)| (n.clone(), s.version.clone()))
            .collect();
        t.last_nonce = nonce.clone();
        let resp = DeltaDiscoveryResponse {
            system_version_info: format!("lab/{}", self.nonce),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
        };
        self.out.send(Ok(resp)).await.is_ok()
    }
}
