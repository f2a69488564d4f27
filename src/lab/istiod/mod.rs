//! The lab's control plane: istiod's two gRPC services on one TLS port (15012), for node
//! proxies in the lab — ringmesh or the real ztunnel.
//!
//! - **xDS** (`ads`): delta ADS for `istio.workload.Address` and `istio.security.Authorization`,
//!   serving the topology's workloads, services and policies as istiod names and versions them;
//!   answers every initial request (skipping what the client already holds at the same version,
//!   removing what it holds that is gone), pushes changes when the config changes, records
//!   every ACK and NACK.
//! - **CA** (`ca`): `IstioCertificateService/CreateCertificate`, signing CSRs with an
//!   intermediate under the lab's root (the chain is leaf, intermediate, root), for the
//!   caller's own identity or — only for a trusted node-proxy account, and only for an
//!   identity with a pod on the caller's node — an impersonated one, as istiod's node
//!   authorizer decides.
//!
//! Callers authenticate with a bearer token the lab wrote (one per node proxy), standing in
//! for Kubernetes' bound service-account tokens: the token names the account and the node.
//! Runs on its own thread with its own runtime; the lab holds an [`Istiod`] handle.

pub mod ads;
pub mod ca;
pub mod resources;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::config::LocalConfig;
use crate::identity::ca::Ca;
use resources::{Resources, Served};

/// Who a token belongs to (what a Kubernetes TokenReview would say of a bound token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    /// The node of the caller's pod.
    pub node: Option<String>,
}

/// The control plane's settings.
pub struct IstiodConfig {
    /// The lab's root CA (signs the serving certificate and the intermediate).
    pub root: Ca,
    pub trust_domain: String,
    /// Bearer token → caller.
    pub tokens: HashMap<String, Caller>,
    /// Accounts (`namespace`, `service account`) allowed to impersonate the pods of their
    /// node (istiod's `CA_TRUSTED_NODE_ACCOUNTS`, `istio-system/ztunnel` by default).
    pub trusted_node_accounts: Vec<(String, String)>,
    /// Names and addresses the serving certificate is for.
    pub server_names: Vec<String>,
    pub server_ips: Vec<IpAddr>,
}

/// Something a client did, for tests and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected {
        node_id: String,
    },
    Ack {
        node_id: String,
        type_url: String,
        nonce: String,
    },
    Nack {
        node_id: String,
        type_url: String,
        nonce: String,
        message: String,
    },
    Certificate {
        caller: String,
        identity: String,
        /// `None` when issued, else why not.
        refused: Option<String>,
    },
    Disconnected {
        node_id: String,
    },
}

struct Inner {
    config: LocalConfig,
    /// Raw resources that replace or add to the config's (tests push malformed ones).
    injected: BTreeMap<(String, String), Vec<u8>>,
    resources: Resources,
}

/// State shared by the services and the handle.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    generation: watch::Sender<u64>,
    events: Mutex<Vec<Event>>,
    pub(crate) cfg: IstiodConfig,
    /// Signs workload certificates.
    pub(crate) intermediate: Ca,
    connections: std::sync::atomic::AtomicUsize,
}

impl Shared {
    pub(crate) fn record(&self, e: Event) {
        match &e {
            Event::Nack {
                node_id,
                type_url,
                message,
                ..
            } => {
                tracing::warn!(%node_id, %type_url, "lab istiod: NACK: {message}")
            }
            Event::Certificate {
                caller,
                identity,
                refused: Some(why),
            } => {
                tracing::warn!(%caller, %identity, "lab istiod: certificate refused: {why}")
            }
            e => tracing::debug!("lab istiod: {e:?}"),
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }

    /// The resources of a type now, and the generation they belong to.
    pub(crate) fn snapshot(&self, type_url: &str) -> BTreeMap<String, Served> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.resources.get(type_url).cloned().unwrap_or_default()
    }

    pub(crate) fn config(&self) -> LocalConfig {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The caller a request's bearer token stands for.
    pub(crate) fn authenticate(&self, md: &tonic::metadata::MetadataMap) -> Option<Caller> {
        let v = md.get("authorization")?.to_str().ok()?;
        let token = v.strip_prefix("Bearer ")?.trim();
        self.cfg.tokens.get(token).cloned()
    }

    fn rebuild(&self, g: &mut Inner) {
        let mut r = resources::resources(&g.config);
        for ((t, name), bytes) in &g.injected {
            r.entry(t.clone()).or_default().insert(
                name.clone(),
                Served {
                    version: format!("injected-{}", bytes.len()),
                    bytes: bytes.clone(),
                },
            );
        }
        g.resources = r;
        self.generation.send_modify(|v| *v += 1);
    }
}

/// A running lab control plane; stopped on drop.
pub struct Istiod {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Istiod {
    /// Serves on `listener` (already bound, e.g. inside the lab's control-plane netns).
    pub fn start(
        listener: std::net::TcpListener,
        cfg: IstiodConfig,
        config: LocalConfig,
    ) -> Result<Istiod, String> {
        let now = SystemTime::now();
        let intermediate = cfg
            .root
            .intermediate(now)
            .map_err(|e| format!("lab istiod: intermediate CA: {e}"))?;
        let (chain, key) = cfg
            .root
            .issue_server(
                &cfg.server_names,
                &cfg.server_ips,
                now,
                Duration::from_secs(365 * 24 * 3600),
            )
            .map_err(|e| format!("lab istiod: serving certificate: {e}"))?;
        let tls = server_tls(chain, key)?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (generation, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                config: LocalConfig::default(),
                injected: BTreeMap::new(),
                resources: Resources::new(),
            }),
            generation,
            events: Mutex::new(Vec::new()),
            cfg,
            intermediate,
            connections: Default::default(),
        });
        {
            let mut g = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.config = config;
            shared.rebuild(&mut g);
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lab-istiod".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("lab istiod: no runtime: {e}");
                        return;
                    }
                };
                // Stopping drops every connection at once (as a control plane that goes away
                // does); a graceful drain would wait for clients to hang up.
                rt.block_on(async {
                    tokio::select! {
                        _ = serve(sh, listener, tls) => {}
                        _ = stop_rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .map_err(|e| e.to_string())?;
        Ok(Istiod {
            shared,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Replaces what is served; connected clients get the difference.
    pub fn set_config(&self, config: LocalConfig) {
        let mut g = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.config = config;
        self.shared.rebuild(&mut g);
    }

    /// The config served now.
    pub fn config(&self) -> LocalConfig {
        self.shared.config()
    }

    /// Serves `bytes` as the resource `name` of `type_url` (over whatever the config has
    /// under that name), e.g. a malformed resource; pushed to connected clients.
    pub fn inject(&self, type_url: &str, name: &str, bytes: Vec<u8>) {
        let mut g = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.injected
            .insert((type_url.to_string(), name.to_string()), bytes);
        self.shared.rebuild(&mut g);
    }

    /// Several resources at once: one push carries them all (a test's "bad and good in the
    /// same response").
    pub fn inject_many(&self, items: Vec<(String, String, Vec<u8>)>) {
        let mut g = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (t, name, bytes) in items {
            g.injected.insert((t, name), bytes);
        }
        self.shared.rebuild(&mut g);
    }

    /// Drops every injected resource.
    pub fn clear_injected(&self) {
        let mut g = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.injected.clear();
        self.shared.rebuild(&mut g);
    }

    pub fn events(&self) -> Vec<Event> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// xDS streams open now.
    pub fn connections(&self) -> usize {
        self.shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn server_tls(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS connection, as tonic's server takes them.
struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = Option<SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

async fn serve(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("lab istiod: listener: {e}");
            return;
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsIo>>(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("lab istiod: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(TlsIo(s))).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, "lab istiod: TLS handshake failed: {e}"),
                    Err(_) => tracing::warn!(%peer, "lab istiod: TLS handshake timed out"),
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let r = tonic::transport::Server::builder()
        .add_service(
            crate::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(
                ads::Ads(shared.clone()),
            ),
        )
        .add_service(
            crate::proto::ca::istio_certificate_service_server::IstioCertificateServiceServer::new(
                ca::CaService(shared.clone()),
            ),
        )
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = r {
        tracing::error!("lab istiod stopped: {e}");
    }
}
