//! The waypoint's only listener, HBONE on 15008: TLS 1.3 with the waypoint's certificate
//! (client certificate required, verified against the mesh roots), HTTP/2, and per CONNECT
//! stream the decision of what it is for.
//!
//! `admit` (pure, over a snapshot): the `:authority` must be a service VIP:port whose
//! service names this waypoint, or a pod IP:port whose workload does (Istio's waypoint
//! serves exactly those). Anything else is refused with 400 and a log line naming the target
//! and the waypoint it does use — Envoy's waypoint accepts such a stream and closes it with
//! no data; an explicit status lets the client's node proxy log why. The client is the
//! CONNECT's `forwarded: for=` address (else the TCP peer — the same when the node proxy
//! dials from the pod, as ztunnel does) with the identity of its certificate.
//!
//! Then the stream is answered 200 and handed to the HTTP pipeline (`http.rs`) or the TCP
//! one (`tcp.rs`) by the port's protocol: the Service's `appProtocol` or port name in the
//! resources, else sniffed (an HTTP/1.x request line or the HTTP/2 preface → HTTP).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::WaypointShard;
use super::resources::PortProtocol;
use crate::hbone::{self, Reject};
use crate::identity::Identity;
use crate::io::h2io;
use crate::proxy::h2conn;
use crate::runtime::net::{Listener, Stream};
use crate::state::{Service, Snapshot, Workload};

/// What a CONNECT is for.
#[derive(Debug, Clone)]
pub enum Target {
    /// A service bound to this waypoint, at one of its ports (`addr` = VIP:port).
    Service {
        svc: Arc<Service>,
        port: u16,
        addr: SocketAddr,
    },
    /// A workload bound to this waypoint, addressed directly (pod IP:port).
    Workload { w: Arc<Workload>, addr: SocketAddr },
}

impl Target {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Service { addr, .. } | Target::Workload { addr, .. } => *addr,
        }
    }
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Connect(#[from] Reject),
    #[error("{0} is neither a service VIP nor a workload this waypoint knows")]
    Unknown(SocketAddr),
    #[error("{what} does not use this waypoint (its waypoint: {uses})")]
    NotBound { what: String, uses: String },
    #[error("service {svc} has no port {port}")]
    NoPort { svc: String, port: u16 },
}

/// Decides what the CONNECT to `authority` is for, or why it is refused.
pub fn admit(
    snap: &Snapshot,
    cfg: &super::WaypointConfig,
    authority: SocketAddr,
) -> Result<Target, Refusal> {
    let ip = hbone::normalize(authority.ip());
    let addr = SocketAddr::new(ip, authority.port());
    let uses = |gw: &Option<crate::state::GatewayAddress>| match gw {
        Some(g) => serde_json::to_value(&g.destination)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        None => "none".into(),
    };
    if let Some(svc) = snap.service_by_vip(ip) {
        if !svc.waypoint.as_ref().is_some_and(|g| cfg.is_me(g)) {
            return Err(Refusal::NotBound {
                what: format!("service {}", svc.key()),
                uses: uses(&svc.waypoint),
            });
        }
        if !svc.ports.contains_key(&authority.port()) {
            return Err(Refusal::NoPort {
                svc: svc.key(),
                port: authority.port(),
            });
        }
        return Ok(Target::Service {
            svc: svc.clone(),
            port: authority.port(),
            addr,
        });
    }
    if let Some(w) = snap.workload_by_ip(ip) {
        if !w.waypoint.as_ref().is_some_and(|g| cfg.is_me(g)) {
            return Err(Refusal::NotBound {
                what: format!("workload {}/{}", w.namespace, w.name),
                uses: uses(&w.waypoint),
            });
        }
        return Ok(Target::Workload { w: w.clone(), addr });
    }
    Err(Refusal::Unknown(addr))
}

/// The client of a tunnel: its address (the TCP peer) and certificate identity.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub identity: Option<Identity>,
}

/// Accept loop of this shard's HBONE listener.
pub async fn serve(ctx: Rc<WaypointShard>, l: Listener) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                crate::runtime::engine::spawn(handle_conn(ctx.clone(), s, peer));
            }
            Err(e) => {
                tracing::warn!("HBONE accept failed: {e}");
                crate::runtime::engine::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handle_conn(ctx: Rc<WaypointShard>, s: Stream, peer: SocketAddr) {
    let _ = s.set_nodelay(true);
    let id = ctx.cfg.identity.clone();
    let Some(cert) = crate::proxy::wait_for(|| ctx.certs.load().get(&id).cloned()).await else {
        tracing::warn!(%peer, "no certificate for {id} (the CA has not issued one): closing HBONE connection");
        return;
    };
    let p = &ctx.cfg.proxy;
    let (cfg, records) = (cert.server.clone(), p.tls_records);
    let accepted = h2conn::accept(s, cfg, records, &p.h2, p.connect_timeout).await;
    let (mut conn, peer_id) = match accepted {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, "{e}");
            return;
        }
    };
    let client = Rc::new(Client {
        addr: SocketAddr::new(hbone::normalize(peer.ip()), peer.port()),
        identity: peer_id,
    });
    while let Some(next) = conn.accept().await {
        match next {
            Ok((req, respond)) => {
                crate::runtime::engine::spawn(handle_stream(
                    ctx.clone(),
                    req,
                    respond,
                    client.clone(),
                ));
            }
            Err(e) => {
                tracing::debug!(%peer, "HBONE connection ended: {e}");
                break;
            }
        }
    }
}

async fn handle_stream(
    ctx: Rc<WaypointShard>,
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    client: Rc<Client>,
) {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    // The client's address: `forwarded: for=` of the CONNECT (what ztunnel sends), else the
    // TCP peer (the same address when the node proxy dials from the pod, as ztunnel does).
    let client = match forwarded_for(req.headers()) {
        Some(a) if a != client.addr => Rc::new(Client {
            addr: a,
            identity: client.identity.clone(),
        }),
        _ => client,
    };
    let target = hbone::parse_connect(req.method(), authority.as_deref())
        .map_err(Refusal::from)
        .and_then(|a| admit(&ctx.state.load(), &ctx.cfg, a));
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            let status = match &e {
                Refusal::Connect(r) => r.status(),
                _ => StatusCode::BAD_REQUEST,
            };
            tracing::warn!(
                src.addr = %client.addr,
                src.identity = client.identity.as_ref().map(|i| i.to_string()),
                authority = authority.as_deref().unwrap_or("-"),
                "waypoint refused CONNECT ({}): {e}",
                status.as_u16()
            );
            let _ = respond.send_response(status_only(status), true);
            return;
        }
    };
    let send = match respond.send_response(status_only(StatusCode::OK), false) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(src.addr = %client.addr, "client went away before 200: {e}");
            return;
        }
    };
    let mut recv = req.into_body();
    let declared = port_protocol(&ctx, &target);
    if declared == PortProtocol::Tcp {
        let io = h2io::H2Io::new(send, recv, Bytes::new());
        return super::tcp::serve(ctx, io, client, target).await;
    }
    // HTTP ports still look at the first bytes, for the codec (HTTP/1.x or the HTTP/2
    // preface, as Envoy's AUTO codec); unrecognised ports also for HTTP or TCP. A
    // server-first protocol on an unrecognised port sends nothing: after SNIFF_TIMEOUT it
    // is TCP.
    let first = match crate::runtime::engine::timeout(SNIFF_TIMEOUT, h2io::peek(&mut recv, 1)).await
    {
        Ok(Ok(first)) => sniff_more(&mut recv, first).await,
        Ok(Err(e)) => {
            tracing::debug!(src.addr = %client.addr, "tunnel ended before any data: {e}");
            return;
        }
        Err(_) if declared == PortProtocol::Auto => Bytes::new(),
        Err(_) => match h2io::peek(&mut recv, 1).await {
            Ok(first) => sniff_more(&mut recv, first).await,
            Err(_) => return,
        },
    };
    let seen = sniff(&first);
    let io = h2io::H2Io::new(send, recv, first);
    match (declared, seen) {
        (PortProtocol::Auto, PortProtocol::Tcp) => super::tcp::serve(ctx, io, client, target).await,
        (declared, seen) => {
            let h2 = seen == PortProtocol::Http2;
            super::http::serve(ctx, io, client, target, declared, h2).await
        }
    }
}

/// How long an unrecognised port waits for the client's first bytes before it is TCP.
const SNIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The `for=` address of a `forwarded` header (RFC 7239: `for="198.18.1.2:5000"`,
/// `for="[fd00::2]:5000"`, or a bare IP), normalized.
pub fn forwarded_for(h: &http::HeaderMap) -> Option<SocketAddr> {
    let f = h.get("forwarded")?.to_str().ok()?;
    let v = f
        .split([';', ','])
        .find_map(|p| p.trim().strip_prefix("for="))?
        .trim_matches('"');
    let a = v.parse::<SocketAddr>().ok().or_else(|| {
        v.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 0))
    })?;
    Some(SocketAddr::new(hbone::normalize(a.ip()), a.port()))
}

/// Reads on until the sniffer can decide (at most 24 bytes: the HTTP/2 preface's length).
async fn sniff_more(recv: &mut h2::RecvStream, mut got: Bytes) -> Bytes {
    while got.len() < PREFACE.len() && undecided(&got) {
        match h2io::peek(recv, 1).await {
            Ok(more) if !more.is_empty() => {
                let mut b = bytes::BytesMut::from(&got[..]);
                b.extend_from_slice(&more);
                got = b.freeze();
            }
            _ => break,
        }
    }
    got
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Whether more bytes could still change the verdict of [`sniff`].
fn undecided(b: &[u8]) -> bool {
    let prefix_of = |t: &[u8]| b.len() < t.len() && t.starts_with(b);
    prefix_of(PREFACE) || METHODS.iter().any(|m| prefix_of(m))
}

/// HTTP/2 preface → Http2, an HTTP/1.x method token → Http1, else Tcp (as Envoy's
/// `http_inspector` decides).
pub fn sniff(b: &[u8]) -> PortProtocol {
    if b.starts_with(PREFACE) {
        PortProtocol::Http2
    } else if METHODS.iter().any(|m| b.starts_with(m)) {
        PortProtocol::Http1
    } else {
        PortProtocol::Tcp
    }
}

/// The protocol of the target's port: the resources' Service port (appProtocol, name), else
/// sniffed. Direct workload traffic is always sniffed.
fn port_protocol(ctx: &WaypointShard, t: &Target) -> PortProtocol {
    match t {
        Target::Service { svc, port, .. } => ctx
            .l7
            .load()
            .resources
            .port_protocol(&svc.namespace, &svc.name, *port)
            .unwrap_or(PortProtocol::Auto),
        Target::Workload { .. } => PortProtocol::Auto,
    }
}

fn status_only(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_gives_the_client_address() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert("forwarded", v.parse().unwrap());
            m
        };
        let a: SocketAddr = "198.18.1.2:5000".parse().unwrap();
        assert_eq!(
            forwarded_for(&h(
                "for=\"198.18.1.2:5000\";host=echo.default.svc.cluster.local"
            )),
            Some(a)
        );
        assert_eq!(forwarded_for(&h("host=x;for=\"198.18.1.2:5000\"")), Some(a));
        assert_eq!(
            forwarded_for(&h("for=\"[fd00::2]:80\"")),
            Some("[fd00::2]:80".parse().unwrap())
        );
        assert_eq!(
            forwarded_for(&h("for=198.18.1.2")),
            Some("198.18.1.2:0".parse().unwrap())
        );
        assert_eq!(forwarded_for(&h("for=unknown")), None);
        assert_eq!(forwarded_for(&http::HeaderMap::new()), None);
    }

    #[test]
    fn sniffing_tells_http_from_tcp() {
        assert_eq!(sniff(PREFACE), PortProtocol::Http2);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), PortProtocol::Http1);
        assert_eq!(sniff(b"POST /x HTTP/1.1\r\n"), PortProtocol::Http1);
        assert_eq!(sniff(b"hello"), PortProtocol::Tcp);
        assert_eq!(sniff(b"\x16\x03\x01"), PortProtocol::Tcp);
        assert!(undecided(b"GE"));
        assert!(undecided(b"PRI * HTTP"));
        assert!(!undecided(b"GET "));
        assert!(!undecided(b"xyz"));
    }
}
