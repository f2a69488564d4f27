//! HBONE, the pure part: CONNECT request building and checking, response codes, settings.
//!
//! Owns: what goes on the wire in ztunnel's HBONE (`:authority` = ip:port, `forwarded`,
//! `baggage`, `traceparent` headers; 200/400/401/503), and the HTTP/2 settings. Pure: values
//! in, values out; the h2 connections themselves live in `proxy`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{Method, Request, StatusCode};

use crate::state::Workload;

pub mod h2;

/// HTTP/2 settings of HBONE connections (ztunnel's defaults).
#[derive(Debug, Clone)]
pub struct H2Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub frame_size: u32,
    /// Streams a client puts on one connection before opening another.
    pub client_max_streams: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS a server advertises.
    pub server_max_streams: u32,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_header_list_size: u32,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            frame_size: 1024 * 1024,
            client_max_streams: 100,
            server_max_streams: 200,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
            max_header_list_size: 16 * 1024,
        }
    }
}

/// Why an inbound CONNECT is refused, mapped to its status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Reject::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Headers of an outbound CONNECT, besides `:authority`.
#[derive(Debug, Clone)]
pub struct ConnectHeaders {
    /// The original client address (`forwarded: for="ip:port"`).
    pub client: SocketAddr,
    /// The service hostname when the app dialled a service (`;host=`).
    pub service_host: Option<String>,
    pub baggage: String,
    pub traceparent: String,
}

/// Builds the CONNECT request ztunnel sends: `:authority` = `authority`, no scheme or path.
pub fn connect_request(authority: SocketAddr, h: &ConnectHeaders) -> Request<()> {
    let forwarded = match &h.service_host {
        Some(host) => format!("for=\"{}\";host={host}", h.client),
        None => format!("for=\"{}\"", h.client),
    };
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    // cannot fail: a socket address is always a valid authority.
    if let Ok(uri) = authority.to_string().parse() {
        *req.uri_mut() = uri;
    }
    // Values built from control-plane strings (a service hostname, workload names) that
    // cannot be header values are left out rather than failing the connection.
    let hs = req.headers_mut();
    let forwarded = http::HeaderValue::from_str(&forwarded)
        .or_else(|_| http::HeaderValue::from_str(&format!("for=\"{}\"", h.client)));
    if let Ok(v) = forwarded {
        hs.insert("forwarded", v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&h.traceparent) {
        hs.insert("traceparent", v);
    }
    if !h.baggage.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&h.baggage)
    {
        hs.insert("baggage", v);
    }
    req
}

/// The `baggage` header describing a workload, as ztunnel writes it (empty values omitted).
pub fn baggage(w: &Workload) -> String {
    let kind = if w.workload_type.is_empty() {
        "deployment"
    } else {
        w.workload_type.as_str()
    };
    let pairs = [
        ("k8s.cluster.name", w.cluster_id.as_str()),
        ("k8s.namespace.name", w.namespace.as_str()),
        (&format!("k8s.{kind}.name"), w.workload_name.as_str()),
        ("service.name", w.canonical_name.as_str()),
        ("service.version", w.canonical_revision.as_str()),
        ("cloud.region", w.locality.region.as_str()),
        ("cloud.availability_zone", w.locality.zone.as_str()),
    ];
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A W3C `traceparent` from a random trace id and span id.
pub fn traceparent(trace_id: u128, span_id: u64) -> String {
    format!("00-{trace_id:032x}-{span_id:016x}-00")
}

/// Checks the method and parses `:authority` as `ip:port`.
pub fn parse_connect(method: &Method, authority: Option<&str>) -> Result<SocketAddr, Reject> {
    if method != Method::CONNECT {
        return Err(Reject::BadRequest(format!(
            "method {method} is not CONNECT"
        )));
    }
    let a = authority.ok_or_else(|| Reject::BadRequest("missing :authority".into()))?;
    a.parse()
        .map_err(|_| Reject::BadRequest(format!("authority {a:?} is not ip:port")))
}

/// The authority's IP must be the pod this HBONE connection reached (ztunnel's
/// `validate_destination`), and its port must not be one of the proxy's own.
pub fn check_destination(
    authority: SocketAddr,
    local_ip: IpAddr,
    proxy_ports: &[u16],
) -> Result<(), Reject> {
    if normalize(authority.ip()) != normalize(local_ip) {
        return Err(Reject::BadRequest(format!(
            "ip mismatch: {} != {local_ip}",
            authority.ip()
        )));
    }
    if proxy_ports.contains(&authority.port()) {
        return Err(Reject::Unavailable(format!(
            "port {} is the proxy's own",
            authority.port()
        )));
    }
    Ok(())
}

/// Maps an IPv4-mapped IPv6 address back to IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_ztunnel_shape() {
        let h = ConnectHeaders {
            client: "198.18.1.2:40000".parse().unwrap(),
            service_host: Some("echo.default.svc.cluster.local".into()),
            baggage: "k8s.namespace.name=default".into(),
            traceparent: traceparent(1, 2),
        };
        let r = connect_request("198.18.2.3:8080".parse().unwrap(), &h);
        assert_eq!(r.method(), Method::CONNECT);
        assert_eq!(r.uri().authority().unwrap().as_str(), "198.18.2.3:8080");
        assert!(r.uri().scheme().is_none());
        assert_eq!(
            r.headers()["forwarded"],
            "for=\"198.18.1.2:40000\";host=echo.default.svc.cluster.local"
        );
        assert_eq!(r.headers()["traceparent"].len(), 55);
        let v6 = connect_request("[fd00::1]:80".parse().unwrap(), &h);
        assert_eq!(v6.uri().authority().unwrap().as_str(), "[fd00::1]:80");
    }

    /// Control-plane strings that cannot be header values (istiod is not checked for them)
    /// are left out; the connection is not lost, nothing panics.
    #[test]
    fn names_that_cannot_be_header_values_are_left_out() {
        let h = ConnectHeaders {
            client: "198.18.1.2:40000".parse().unwrap(),
            service_host: Some("echo\n.svc".into()),
            baggage: "k8s.namespace.name=de\u{7f}fault".into(),
            traceparent: traceparent(1, 2),
        };
        let r = connect_request("198.18.2.3:8080".parse().unwrap(), &h);
        assert_eq!(r.method(), Method::CONNECT);
        assert_eq!(r.headers()["forwarded"], "for=\"198.18.1.2:40000\"");
        assert!(!r.headers().contains_key("baggage"));
        assert_eq!(r.headers()["traceparent"].len(), 55);
    }

    #[test]
    fn parse_and_check() {
        assert_eq!(
            parse_connect(&Method::GET, Some("1.2.3.4:80"))
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        assert!(parse_connect(&Method::CONNECT, Some("host:80")).is_err());
        assert!(parse_connect(&Method::CONNECT, None).is_err());
        let a = parse_connect(&Method::CONNECT, Some("198.18.0.2:8080")).unwrap();
        assert!(check_destination(a, "198.18.0.2".parse().unwrap(), &[15008]).is_ok());
        assert_eq!(
            check_destination(a, "198.18.0.3".parse().unwrap(), &[15008])
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        let own = parse_connect(&Method::CONNECT, Some("198.18.0.2:15008")).unwrap();
        assert_eq!(
            check_destination(own, "198.18.0.2".parse().unwrap(), &[15008])
                .unwrap_err()
                .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(check_destination(a, "::ffff:198.18.0.2".parse().unwrap(), &[]).is_ok());
    }

    #[test]
    fn baggage_omits_empty() {
        let w: Workload = serde_yaml_ng::from_str(
            "{workloadIps: [], namespace: ns, workloadName: web, clusterId: c1}",
        )
        .unwrap();
        assert_eq!(
            baggage(&w),
            "k8s.cluster.name=c1,k8s.namespace.name=ns,k8s.deployment.name=web"
        );
    }
}
