//! Loading what users write for the waypoint: Kubernetes YAML/JSON with Gateway API
//! `HTTPRoute`/`GRPCRoute` and core `Service` objects, converted into the `routes` model.
//!
//! Owns the serde shapes of those kinds, the API server's part of the job a file loader has
//! to do itself (CRD defaults, enum/pattern/range checks, the CEL rules that reject a route
//! on `kubectl apply`), and each Service port's protocol (Istio's rule, §1.4). Every
//! rejection names the file, the document, the resource and the field path. Other kinds are
//! listed in [`Resources::ignored`], not rejected. Reads files only in [`load`]; no network.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_yaml_ng::Value;

use crate::waypoint::routes::{
    Backend, Cors, Filter, HeaderMatch, HeaderModifier, HeaderModifierError, Match, Mirror,
    ParentRef, PathMatch, PathModifier, Pattern, QueryMatch, Redirect, Retry, Route, RouteKind,
    Rule, StringMatch, Timeouts, UrlRewrite, parse_timestamp,
};

/// Everything loaded from one file or directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub routes: Vec<Route>,
    pub services: Vec<ServiceDef>,
    /// Kinds not taken, as `file: Kind ns/name`.
    pub ignored: Vec<String>,
}

/// The parts of a core `Service` the waypoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<ServicePort>,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub name: Option<String>,
    pub app_protocol: Option<String>,
    pub target_port: Option<TargetPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// How the waypoint treats a service port (§1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    Http1,
    Http2,
    Grpc,
    /// L4 only (tcp, tls, https, mongo, redis, mysql, udp, well-known server-first ports).
    Tcp,
    /// Unnamed/unknown: sniff HTTP/1.x or the h2c preface, else TCP.
    Auto,
}

/// Why loading failed: whose file, which document, which resource and field, what to write.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: document {doc} is not valid YAML: {reason}")]
    Syntax {
        file: String,
        doc: usize,
        reason: String,
    },
    /// `detail` starts with the field path, e.g. `spec.rules[0].matches[1].path.type: …`.
    #[error("{file}: document {doc}: {resource}: {detail}")]
    Invalid {
        file: String,
        doc: String,
        resource: String,
        detail: String,
    },
    #[error("{resource} is defined twice, in {first} and in {second}; keep one of them")]
    Duplicate {
        resource: String,
        first: String,
        second: String,
    },
}

/// Load a file, or every `*.yaml`, `*.yml`, `*.json` of a directory (sorted by name, not
/// recursive). A (kind, namespace, name) defined twice is an error naming both places.
pub fn load(path: &Path) -> Result<Resources, ResourceError> {
    let read_err = |p: &Path, source| ResourceError::Read {
        path: p.display().to_string(),
        source,
    };
    let files = if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| read_err(path, e))? {
            let p = entry.map_err(|e| read_err(path, e))?.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
                files.push(p);
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Resources::default();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| read_err(&f, e))?;
        out.extend(parse(&f.display().to_string(), &text)?)?;
    }
    Ok(out)
}

/// Parse one text (multi-document YAML, `kind: List` with `items`, or JSON). `file` labels
/// messages and origins.
pub fn parse(file: &str, text: &str) -> Result<Resources, ResourceError> {
    let mut out = Resources::default();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = Value::deserialize(doc).map_err(|e| ResourceError::Syntax {
            file: file.to_string(),
            doc: n,
            reason: e.to_string(),
        })?;
        let mut one = Resources::default();
        one.add(file, &n.to_string(), value)?;
        out.extend(one)?;
    }
    Ok(out)
}

/// Istio's protocol for a service port: `appProtocol`, else the port name's prefix before
/// `-` (case-insensitive); unknown on ports 25, 53, 3306, 27017 → TCP; else sniffed.
pub fn port_protocol(app_protocol: Option<&str>, name: Option<&str>, port: u16) -> PortProtocol {
    let proto = match app_protocol {
        Some("kubernetes.io/h2c") => return PortProtocol::Http2,
        Some("kubernetes.io/ws") => return PortProtocol::Http1,
        Some("kubernetes.io/wss") => return PortProtocol::Tcp,
        Some(a) => a,
        None => name.unwrap_or(""),
    };
    let lower = proto.to_ascii_lowercase();
    let prefix = if lower.starts_with("grpc-web") {
        "grpc-web"
    } else {
        lower.split('-').next().unwrap_or("")
    };
    match prefix {
        "http" | "http_proxy" => PortProtocol::Http1,
        "http2" => PortProtocol::Http2,
        "grpc" | "grpc-web" => PortProtocol::Grpc,
        "tcp" | "tls" | "https" | "mongo" | "redis" | "mysql" | "udp" => PortProtocol::Tcp,
        _ if matches!(port, 25 | 53 | 3306 | 27017) => PortProtocol::Tcp,
        _ => PortProtocol::Auto,
    }
}

impl Resources {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceDef> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The protocol of one port of a loaded Service; None when the Service or port is absent.
    pub fn port_protocol(&self, namespace: &str, name: &str, port: u16) -> Option<PortProtocol> {
        let p = self
            .service(namespace, name)?
            .ports
            .iter()
            .find(|p| p.port == port)?;
        Some(port_protocol(
            p.app_protocol.as_deref(),
            p.name.as_deref(),
            p.port,
        ))
    }

    /// A Service's ports, None when it was not loaded (the shape `RouteTable::status` takes).
    pub fn service_ports(&self, namespace: &str, name: &str) -> Option<Vec<u16>> {
        Some(
            self.service(namespace, name)?
                .ports
                .iter()
                .map(|p| p.port)
                .collect(),
        )
    }

    fn extend(&mut self, other: Resources) -> Result<(), ResourceError> {
        let mut seen: HashMap<(&str, String, String), String> = HashMap::new();
        for r in &self.routes {
            let key = (r.kind.as_str(), r.namespace.clone(), r.name.clone());
            seen.insert(key, r.origin.clone());
        }
        for s in &self.services {
            seen.insert(
                ("Service", s.namespace.clone(), s.name.clone()),
                s.origin.clone(),
            );
        }
        let keys = other
            .routes
            .iter()
            .map(|r| (r.kind.as_str(), &r.namespace, &r.name, &r.origin))
            .chain(
                other
                    .services
                    .iter()
                    .map(|s| ("Service", &s.namespace, &s.name, &s.origin)),
            );
        for (kind, ns, name, origin) in keys {
            if let Some(first) = seen.get(&(kind, ns.clone(), name.clone())) {
                return Err(ResourceError::Duplicate {
                    resource: format!("{kind} {ns}/{name}"),
                    first: first.clone(),
                    second: origin.clone(),
                });
            }
        }
        self.routes.extend(other.routes);
        self.services.extend(other.services);
        self.ignored.extend(other.ignored);
        Ok(())
    }

    /// One document (or List item) as a parsed value.
    fn add(&mut self, file: &str, doc: &str, value: Value) -> Result<(), ResourceError> {
        if value.is_null() {
            return Ok(());
        }
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let invalid = |resource: &str, detail: String| ResourceError::Invalid {
            file: file.to_string(),
            doc: doc.to_string(),
            resource: resource.to_string(),
            detail,
        };
        let (Some(api), Some(kind)) = (text(&value, "apiVersion"), text(&value, "kind")) else {
            return Err(invalid(
                "(no kind)",
                "every document needs string fields apiVersion and kind, \
                 e.g. gateway.networking.k8s.io/v1 HTTPRoute"
                    .to_string(),
            ));
        };
        let meta = value.get("metadata");
        let ns = meta
            .and_then(|m| text(m, "namespace"))
            .unwrap_or_else(|| "default".to_string());
        let name = meta.and_then(|m| text(m, "name")).unwrap_or_default();
        let resource = format!("{kind} {ns}/{name}");
        let origin = format!("{file}#{doc}");
        let gateway_api = matches!(
            api.as_str(),
            "gateway.networking.k8s.io/v1"
                | "gateway.networking.k8s.io/v1beta1"
                | "gateway.networking.k8s.io/v1alpha2"
        );
        match (kind.as_str(), gateway_api, api.as_str()) {
            ("List", _, "v1") => {
                let items = match value.get("items") {
                    None | Some(Value::Null) => return Ok(()),
                    Some(Value::Sequence(items)) => items.clone(),
                    Some(_) => return Err(invalid("List", "items: expected a list".to_string())),
                };
                for (i, item) in items.into_iter().enumerate() {
                    let mut one = Resources::default();
                    one.add(file, &format!("{doc} items[{i}]"), item)?;
                    self.extend(one)?;
                }
            }
            ("HTTPRoute", true, _) => {
                let d: RouteDoc<HttpSpec> = typed(&value).map_err(|e| invalid(&resource, e))?;
                let route = http_route(d, origin).map_err(|e| invalid(&resource, e))?;
                self.routes.push(route);
            }
            ("GRPCRoute", true, _) => {
                let d: RouteDoc<GrpcSpec> = typed(&value).map_err(|e| invalid(&resource, e))?;
                let route = grpc_route(d, origin).map_err(|e| invalid(&resource, e))?;
                self.routes.push(route);
            }
            ("Service", _, "v1") => {
                let d: ServiceDoc = typed(&value).map_err(|e| invalid(&resource, e))?;
                self.services.push(ServiceDef {
                    namespace: d.metadata.namespace.unwrap_or_else(|| "default".into()),
                    name: d.metadata.name,
                    ports: d.spec.ports.into_iter().map(service_port).collect(),
                    origin,
                });
            }
            _ => self.ignored.push(format!("{file}: {kind} {ns}/{name}")),
        }
        Ok(())
    }
}

/// Deserialize with field paths in errors: serde_yaml_ng tracks paths only when reading
/// text, so the value is written back out first. Its line numbers would point into that
/// copy, so they are cut.
fn typed<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, String> {
    let text = serde_yaml_ng::to_string(value).map_err(|e| e.to_string())?;
    serde_yaml_ng::from_str(&text).map_err(|e| {
        let msg = e.to_string();
        match (e.location(), msg.rfind(" at line ")) {
            (Some(_), Some(at)) => msg[..at].to_string(),
            _ => msg,
        }
    })
}

// ---- serde shapes (Gateway API v1; unknown spec fields rejected like `kubectl --validate`) ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: String,
    namespace: Option<String>,
    creation_timestamp: Option<String>,
}

#[derive(Deserialize)]
struct RouteDoc<S> {
    metadata: Meta,
    spec: S,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpSpec {
    #[serde(default)]
    parent_refs: Vec<YParentRef>,
    #[allow(dead_code)] // ignored for Service parents (§2.1)
    hostnames: Option<IgnoredAny>,
    rules: Option<Vec<YHttpRule>>,
    #[allow(dead_code)] // accepted, meaningless for Service parents
    use_default_gateways: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcSpec {
    #[serde(default)]
    parent_refs: Vec<YParentRef>,
    #[allow(dead_code)] // ignored for Service parents (§2.1)
    hostnames: Option<IgnoredAny>,
    #[serde(default)]
    rules: Vec<YGrpcRule>,
    #[allow(dead_code)] // accepted, meaningless for Service parents
    use_default_gateways: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YParentRef {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<Port>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YHttpRule {
    name: Option<String>,
    matches: Option<Vec<YHttpMatch>>,
    #[serde(default)]
    filters: Vec<YFilter>,
    #[serde(default)]
    backend_refs: Vec<YBackendRef>,
    timeouts: Option<YTimeouts>,
    retry: Option<YRetry>,
    #[allow(dead_code)] // accepted, not implemented (Istio ignores it too)
    session_persistence: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YGrpcRule {
    name: Option<String>,
    #[serde(default)]
    matches: Vec<YGrpcMatch>,
    #[serde(default)]
    filters: Vec<YFilter>,
    #[serde(default)]
    backend_refs: Vec<YBackendRef>,
    #[allow(dead_code)] // accepted, not implemented (Istio ignores it too)
    session_persistence: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YHttpMatch {
    path: Option<YPathMatch>,
    #[serde(default)]
    headers: Vec<YValueMatch>,
    #[serde(default)]
    query_params: Vec<YValueMatch>,
    method: Option<YMethod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YPathMatch {
    #[serde(rename = "type")]
    kind: Option<PathType>,
    value: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
enum PathType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
enum ValueType {
    Exact,
    RegularExpression,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YValueMatch {
    #[serde(rename = "type")]
    kind: Option<ValueType>,
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[allow(clippy::upper_case_acronyms)] // the Gateway API enum values
enum YMethod {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    CONNECT,
    OPTIONS,
    TRACE,
    PATCH,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YGrpcMatch {
    method: Option<YGrpcMethod>,
    #[serde(default)]
    headers: Vec<YValueMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YGrpcMethod {
    #[serde(rename = "type")]
    kind: Option<ValueType>,
    service: Option<String>,
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YFilter {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<YHeaderFilter>,
    response_header_modifier: Option<YHeaderFilter>,
    request_mirror: Option<YMirror>,
    request_redirect: Option<YRedirect>,
    url_rewrite: Option<YRewrite>,
    cors: Option<YCors>,
    external_auth: Option<IgnoredAny>,
    extension_ref: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YHeaderFilter {
    #[serde(default)]
    set: Vec<YHeader>,
    #[serde(default)]
    add: Vec<YHeader>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YMirror {
    backend_ref: YBackendObject,
    percent: Option<Percent>,
    fraction: Option<YFraction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YFraction {
    numerator: u32,
    denominator: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YBackendObject {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<Port>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YBackendRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<Port>,
    weight: Option<Weight>,
    #[serde(default)]
    filters: Vec<YFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YRedirect {
    scheme: Option<Scheme>,
    hostname: Option<String>,
    path: Option<YPathModifier>,
    port: Option<Port>,
    status_code: Option<RedirectCode>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scheme {
    Http,
    Https,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YRewrite {
    hostname: Option<String>,
    path: Option<YPathModifier>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YPathModifier {
    #[serde(rename = "type")]
    kind: PathModType,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Deserialize, PartialEq)]
enum PathModType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YCors {
    #[serde(default)]
    allow_origins: Vec<String>,
    allow_credentials: Option<bool>,
    #[serde(default)]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    max_age: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct YTimeouts {
    request: Option<GwDuration>,
    backend_request: Option<GwDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YRetry {
    #[serde(default)]
    codes: Vec<RetryCode>,
    attempts: Option<u32>,
    backoff: Option<GwDuration>,
}

#[derive(Deserialize)]
struct ServiceDoc {
    metadata: Meta,
    spec: ServiceSpecDoc,
}

#[derive(Deserialize)]
struct ServiceSpecDoc {
    #[serde(default)]
    ports: Vec<YServicePort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct YServicePort {
    port: Port,
    name: Option<String>,
    app_protocol: Option<String>,
    target_port: Option<IntOrString>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u16),
    Str(String),
}

/// Checked scalars: the message says what is accepted. The check runs inside the visitor,
/// while the deserializer still stands on the field, so the error carries its path.
macro_rules! checked {
    ($name:ident, $inner:ty, $what:literal, |$v:ident| $check:expr) => {
        #[derive(Clone, Copy)]
        struct $name($inner);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_i64<E: serde::de::Error>(self, $v: i64) -> Result<$name, E> {
                        let r: Result<$inner, String> = $check;
                        r.map($name).map_err(E::custom)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$name, E> {
                        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
                    }
                }
                d.deserialize_i64(V)
            }
        }
    };
}

checked!(Port, u16, "a port number 1-65535", |v| u16::try_from(v)
    .ok()
    .filter(|p| *p > 0)
    .ok_or(format!("port {v} is out of range; a port is 1-65535")));
checked!(Weight, u32, "a weight 0-1000000", |v| u32::try_from(v)
    .ok()
    .filter(|w| *w <= 1_000_000)
    .ok_or(format!(
        "weight {v} is out of range; a weight is 0-1000000"
    )));
checked!(Percent, u32, "a percentage 0-100", |v| u32::try_from(v)
    .ok()
    .filter(|w| *w <= 100)
    .ok_or(format!("percent {v} is out of range; percent is 0-100")));
checked!(RedirectCode, u16, "a redirect status code", |v| match v {
    301 | 302 | 303 | 307 | 308 => Ok(v as u16),
    _ => Err(format!(
        "redirect status {v} is not supported; use 301, 302, 303, 307 or 308"
    )),
});
checked!(RetryCode, u16, "an HTTP status code 400-599", |v| match v {
    400..=599 => Ok(v as u16),
    _ => Err(format!("retry code {v} is out of range; codes are 400-599")),
});

/// A Gateway API duration, `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.
#[derive(Clone, Copy)]
struct GwDuration(Duration);

impl<'de> Deserialize<'de> for GwDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = GwDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Gateway API duration string such as 10s, 1h30m or 500ms")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<GwDuration, E> {
                parse_duration(s).map(GwDuration).ok_or_else(|| {
                    E::custom(format!(
                        "{s:?} is not a Gateway API duration: 1-4 groups of up to 5 digits \
                         each followed by h, m, s or ms, e.g. 10s, 1h30m, 500ms"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let b = s.as_bytes();
    let (mut i, mut groups, mut total) = (0, 0, Duration::ZERO);
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = s[start..i].parse().ok()?;
        let unit = if b[i..].starts_with(b"ms") {
            i += 2;
            Duration::from_millis(n)
        } else {
            let d = match b.get(i)? {
                b'h' => Duration::from_secs(n * 3600),
                b'm' => Duration::from_secs(n * 60),
                b's' => Duration::from_secs(n),
                _ => return None,
            };
            i += 1;
            d
        };
        total += unit;
        groups += 1;
    }
    (1..=4).contains(&groups).then_some(total)
}

// ---- conversion into the model, with the checks the API server would have made ----

fn http_route(d: RouteDoc<HttpSpec>, origin: String) -> Result<Route, String> {
    let (namespace, creation) = meta(&d.metadata)?;
    let rules = match d.spec.rules {
        // CRD default: one rule matching PathPrefix / (no backends: 500).
        None => vec![Rule {
            matches: vec![prefix_root()],
            ..Rule::default()
        }],
        Some(rules) => rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| http_rule(r, &format!("spec.rules[{i}]"), &namespace))
            .collect::<Result<_, _>>()?,
    };
    Ok(Route {
        kind: RouteKind::Http,
        parents: parents(d.spec.parent_refs, &namespace),
        namespace,
        name: d.metadata.name,
        creation,
        rules,
        origin,
    })
}

fn grpc_route(d: RouteDoc<GrpcSpec>, origin: String) -> Result<Route, String> {
    let (namespace, creation) = meta(&d.metadata)?;
    let mut rules = Vec::new();
    for (i, r) in d.spec.rules.into_iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let mut matches = Vec::new();
        for (j, m) in r.matches.into_iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            matches.push(Match {
                path: m.method.map(|x| grpc_path(x, &at)).transpose()?,
                headers: value_matches(m.headers, &format!("{at}.headers"), true)?
                    .into_iter()
                    .map(header_match)
                    .collect::<Result<_, _>>()?,
                ..Match::default()
            });
        }
        let filters = filters(r.filters, &format!("{at}.filters"), &namespace)?;
        let backends = backends(r.backend_refs, &format!("{at}.backendRefs"), &namespace)?;
        rules.push(Rule {
            name: r.name,
            matches,
            filters,
            backends,
            ..Rule::default()
        });
    }
    Ok(Route {
        kind: RouteKind::Grpc,
        parents: parents(d.spec.parent_refs, &namespace),
        namespace,
        name: d.metadata.name,
        creation,
        rules,
        origin,
    })
}

fn meta(m: &Meta) -> Result<(String, Option<String>), String> {
    if m.name.is_empty() {
        return Err("metadata.name: must not be empty".to_string());
    }
    if let Some(t) = &m.creation_timestamp
        && parse_timestamp(t).is_none()
    {
        return Err(format!(
            "metadata.creationTimestamp: {t:?} is not an RFC 3339 timestamp \
             (e.g. 2024-05-01T12:00:00Z)"
        ));
    }
    let ns = m.namespace.clone().unwrap_or_else(|| "default".to_string());
    Ok((ns, m.creation_timestamp.clone()))
}

fn parents(refs: Vec<YParentRef>, namespace: &str) -> Vec<ParentRef> {
    refs.into_iter()
        .map(|p| {
            let kind = p.kind.unwrap_or_else(|| "Gateway".to_string());
            // Without an API server nothing defaults the group, so a `Service` written
            // without one is taken to mean the core Service.
            let group = p.group.unwrap_or_else(|| {
                if kind == "Service" {
                    String::new()
                } else {
                    "gateway.networking.k8s.io".to_string()
                }
            });
            ParentRef {
                group,
                kind,
                namespace: p.namespace.unwrap_or_else(|| namespace.to_string()),
                name: p.name,
                port: p.port.map(|x| x.0),
                section_name: p.section_name,
            }
        })
        .collect()
}

fn prefix_root() -> Match {
    Match {
        path: Some(PathMatch::Prefix("/".to_string())),
        ..Match::default()
    }
}

fn http_rule(r: YHttpRule, at: &str, namespace: &str) -> Result<Rule, String> {
    let mut matches = Vec::new();
    match r.matches {
        None => matches.push(prefix_root()), // CRD default
        Some(list) => {
            for (j, m) in list.into_iter().enumerate() {
                matches.push(http_match(m, &format!("{at}.matches[{j}]"))?);
            }
        }
    }
    let filters = filters(r.filters, &format!("{at}.filters"), namespace)?;
    let backends = backends(r.backend_refs, &format!("{at}.backendRefs"), namespace)?;
    rule_cel(at, &matches, &filters, &backends)?;
    let timeouts = r.timeouts.map_or(Timeouts::default(), |t| Timeouts {
        request: t.request.map(|d| d.0),
        backend_request: t.backend_request.map(|d| d.0),
    });
    if let (Some(req), Some(backend)) = (timeouts.request, timeouts.backend_request)
        && !req.is_zero()
        && backend > req
    {
        return Err(format!(
            "{at}.timeouts: backendRequest timeout cannot be longer than request timeout"
        ));
    }
    Ok(Rule {
        name: r.name,
        matches,
        filters,
        backends,
        timeouts,
        retry: r.retry.map(|y| Retry {
            attempts: y.attempts,
            codes: y.codes.into_iter().map(|c| c.0).collect(),
            backoff: y.backoff.map(|b| b.0),
        }),
    })
}

/// The CEL rules on HTTPRouteRule and its filters.
fn rule_cel(
    at: &str,
    matches: &[Match],
    filters: &[Filter],
    backends: &[Backend],
) -> Result<(), String> {
    for (list, at) in std::iter::once((filters, format!("{at}.filters"))).chain(
        backends.iter().enumerate().map(|(i, b)| {
            (
                b.filters.as_slice(),
                format!("{at}.backendRefs[{i}].filters"),
            )
        }),
    ) {
        let count = |t: &str| list.iter().filter(|f| f.type_name() == t).count();
        for t in [
            "RequestHeaderModifier",
            "ResponseHeaderModifier",
            "RequestRedirect",
            "URLRewrite",
            "CORS",
        ] {
            if count(t) > 1 {
                return Err(format!("{at}: {t} filter cannot be repeated"));
            }
        }
        if count("RequestRedirect") > 0 && count("URLRewrite") > 0 {
            return Err(format!(
                "{at}: may specify either RequestRedirect or URLRewrite, but not both"
            ));
        }
        let prefix_replace = list.iter().any(|f| match f {
            Filter::RequestRedirect(Redirect { path, .. })
            | Filter::UrlRewrite(UrlRewrite { path, .. }) => {
                matches!(path, Some(PathModifier::ReplacePrefixMatch(_)))
            }
            _ => false,
        });
        let one_prefix =
            matches.len() == 1 && matches!(matches[0].path, Some(PathMatch::Prefix(_)));
        if prefix_replace && !one_prefix {
            return Err(format!(
                "{at}: when using path.replacePrefixMatch, the rule must have exactly one \
                 PathPrefix match"
            ));
        }
    }
    let redirect = filters
        .iter()
        .any(|f| matches!(f, Filter::RequestRedirect(_)));
    if redirect && !backends.is_empty() {
        return Err(format!(
            "{at}: RequestRedirect filter must not be used together with backendRefs"
        ));
    }
    Ok(())
}

fn http_match(m: YHttpMatch, at: &str) -> Result<Match, String> {
    let path = match m.path {
        None => PathMatch::Prefix("/".to_string()),
        Some(p) => {
            let value = p.value.unwrap_or_else(|| "/".to_string());
            let kind = p.kind.unwrap_or(PathType::PathPrefix);
            let vat = format!("{at}.path.value");
            match kind {
                PathType::RegularExpression => PathMatch::Regex(regex(&value, &vat)?),
                _ => {
                    check_path(&value, &vat)?;
                    if kind == PathType::Exact {
                        PathMatch::Exact(value)
                    } else if value == "/" {
                        PathMatch::Prefix(value)
                    } else {
                        PathMatch::Prefix(value.trim_end_matches('/').to_string())
                    }
                }
            }
        }
    };
    let headers = value_matches(m.headers, &format!("{at}.headers"), true)?
        .into_iter()
        .map(header_match)
        .collect::<Result<_, _>>()?;
    let query = value_matches(m.query_params, &format!("{at}.queryParams"), false)?
        .into_iter()
        .map(|(name, value, _)| QueryMatch { name, value })
        .collect();
    let method = m.method.map(|x| match x {
        YMethod::GET => Method::GET,
        YMethod::HEAD => Method::HEAD,
        YMethod::POST => Method::POST,
        YMethod::PUT => Method::PUT,
        YMethod::DELETE => Method::DELETE,
        YMethod::CONNECT => Method::CONNECT,
        YMethod::OPTIONS => Method::OPTIONS,
        YMethod::TRACE => Method::TRACE,
        YMethod::PATCH => Method::PATCH,
    });
    Ok(Match {
        path: Some(path),
        headers,
        query,
        method,
    })
}

fn check_path(value: &str, at: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!(
            "{at}: {value:?} must be an absolute path starting with '/'"
        ));
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
        if value.contains(bad) {
            return Err(format!("{at}: {value:?} must not contain {bad:?}"));
        }
    }
    if value.ends_with("/..") || value.ends_with("/.") {
        return Err(format!("{at}: {value:?} must not end with '/.' or '/..'"));
    }
    Ok(())
}

fn regex(source: &str, at: &str) -> Result<Pattern, String> {
    Pattern::new(source).map_err(|e| format!("{at}: invalid regular expression {source:?}: {e}"))
}

/// Header/query matches: first of equivalent names wins (headers compare case-insensitively).
fn value_matches(
    list: Vec<YValueMatch>,
    at: &str,
    fold_case: bool,
) -> Result<Vec<(String, StringMatch, String)>, String> {
    let mut out: Vec<(String, StringMatch, String)> = Vec::new();
    for (i, m) in list.into_iter().enumerate() {
        let name = if fold_case {
            m.name.to_ascii_lowercase()
        } else {
            m.name
        };
        if out.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        let value = match m.kind.unwrap_or(ValueType::Exact) {
            ValueType::Exact => StringMatch::Exact(m.value),
            ValueType::RegularExpression => {
                StringMatch::Regex(regex(&m.value, &format!("{at}[{i}].value"))?)
            }
        };
        out.push((name, value, format!("{at}[{i}].name")));
    }
    Ok(out)
}

fn header_match((name, value, at): (String, StringMatch, String)) -> Result<HeaderMatch, String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{at}: {name:?} is not a valid HTTP header name"))?;
    Ok(HeaderMatch { name, value })
}

/// §2.6: a gRPC method match as a path match.
fn grpc_path(m: YGrpcMethod, at: &str) -> Result<PathMatch, String> {
    let exact = m.kind.unwrap_or(ValueType::Exact) == ValueType::Exact;
    if exact {
        let svc_ok = |s: &str| {
            let s = s.strip_prefix('.').unwrap_or(s);
            !s.is_empty() && s.split('.').all(ident)
        };
        if let Some(s) = m.service.as_deref().filter(|s| !svc_ok(s)) {
            return Err(format!(
                "{at}.method.service: {s:?} is not a gRPC service name (letters, digits, _ and .)"
            ));
        }
        if let Some(x) = m.method.as_deref().filter(|x| !ident(x)) {
            return Err(format!(
                "{at}.method.method: {x:?} is not a gRPC method name (letters, digits and _)"
            ));
        }
    }
    let at = format!("{at}.method");
    match (exact, m.service, m.method) {
        (_, None, None) => Err(format!(
            "{at}: one or both of 'service' or 'method' must be specified"
        )),
        (true, Some(s), Some(x)) => Ok(PathMatch::Exact(format!("/{s}/{x}"))),
        (true, Some(s), None) => Ok(PathMatch::Prefix(format!("/{s}/"))),
        (_, None, Some(x)) => Ok(PathMatch::Regex(regex(&format!("/[^/]+/{x}"), &at)?)),
        (false, Some(s), Some(x)) => Ok(PathMatch::Regex(regex(&format!("/{s}/{x}"), &at)?)),
        (false, Some(s), None) => Ok(PathMatch::Regex(regex(&format!("/{s}/.+"), &at)?)),
    }
}

fn ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn backends(list: Vec<YBackendRef>, at: &str, namespace: &str) -> Result<Vec<Backend>, String> {
    list.into_iter()
        .enumerate()
        .map(|(i, b)| {
            let at = format!("{at}[{i}]");
            Ok(Backend {
                group: b.group.unwrap_or_default(),
                kind: b.kind.unwrap_or_else(|| "Service".to_string()),
                namespace: b.namespace.unwrap_or_else(|| namespace.to_string()),
                name: b.name,
                port: b.port.map(|p| p.0),
                weight: b.weight.map_or(1, |w| w.0),
                filters: filters(b.filters, &format!("{at}.filters"), namespace)?,
            })
        })
        .collect()
}

fn filters(list: Vec<YFilter>, at: &str, namespace: &str) -> Result<Vec<Filter>, String> {
    list.into_iter()
        .enumerate()
        .map(|(i, f)| filter(f, &format!("{at}[{i}]"), namespace))
        .collect()
}

fn filter(f: YFilter, at: &str, namespace: &str) -> Result<Filter, String> {
    let present = [
        (
            "RequestHeaderModifier",
            "requestHeaderModifier",
            f.request_header_modifier.is_some(),
        ),
        (
            "ResponseHeaderModifier",
            "responseHeaderModifier",
            f.response_header_modifier.is_some(),
        ),
        ("RequestMirror", "requestMirror", f.request_mirror.is_some()),
        (
            "RequestRedirect",
            "requestRedirect",
            f.request_redirect.is_some(),
        ),
        ("URLRewrite", "urlRewrite", f.url_rewrite.is_some()),
        ("CORS", "cors", f.cors.is_some()),
        ("ExternalAuth", "externalAuth", f.external_auth.is_some()),
        ("ExtensionRef", "extensionRef", f.extension_ref.is_some()),
    ];
    for (kind, field, there) in present {
        if there && f.kind != kind {
            return Err(format!(
                "{at}.{field}: must not be set when type is {:?}",
                f.kind
            ));
        }
        if !there && f.kind == kind {
            return Err(format!("{at}.{field}: must be set when type is {kind:?}"));
        }
    }
    let headers =
        |h: Option<YHeaderFilter>, field: &str| -> Result<Result<HeaderModifier, String>, String> {
            let h = h.unwrap_or(YHeaderFilter {
                set: vec![],
                add: vec![],
                remove: vec![],
            });
            let set: Vec<(&str, &str)> = h
                .set
                .iter()
                .map(|x| (x.name.as_str(), x.value.as_str()))
                .collect();
            let add: Vec<(&str, &str)> = h
                .add
                .iter()
                .map(|x| (x.name.as_str(), x.value.as_str()))
                .collect();
            let remove: Vec<&str> = h.remove.iter().map(String::as_str).collect();
            match HeaderModifier::parse(&set, &add, &remove) {
                Ok(m) => Ok(Ok(m)),
                Err(e @ HeaderModifierError::InvalidName(_)) => Err(format!("{at}.{field}: {e}")),
                Err(e @ HeaderModifierError::InvalidValue(_)) => Ok(Err(e.to_string())),
            }
        };
    let invalid = |message: String| Filter::Invalid {
        filter_type: f.kind.clone(),
        message,
    };
    Ok(match f.kind.as_str() {
        "RequestHeaderModifier" => {
            match headers(f.request_header_modifier, "requestHeaderModifier")? {
                Ok(m) => Filter::RequestHeaderModifier(m),
                Err(msg) => invalid(msg),
            }
        }
        "ResponseHeaderModifier" => {
            match headers(f.response_header_modifier, "responseHeaderModifier")? {
                Ok(m) => Filter::ResponseHeaderModifier(m),
                Err(msg) => invalid(msg),
            }
        }
        "RequestRedirect" => {
            let Some(r) = f.request_redirect else {
                return Err(missing(at));
            };
            Filter::RequestRedirect(Redirect {
                scheme: r.scheme.map(|s| match s {
                    Scheme::Http => "http".to_string(),
                    Scheme::Https => "https".to_string(),
                }),
                hostname: r
                    .hostname
                    .map(|h| hostname(h, &format!("{at}.requestRedirect.hostname")))
                    .transpose()?,
                path: r
                    .path
                    .map(|p| path_modifier(p, &format!("{at}.requestRedirect.path")))
                    .transpose()?,
                port: r.port.map(|p| p.0),
                status_code: r.status_code.map(|c| c.0),
            })
        }
        "URLRewrite" => {
            let Some(r) = f.url_rewrite else {
                return Err(missing(at));
            };
            Filter::UrlRewrite(UrlRewrite {
                hostname: r
                    .hostname
                    .map(|h| hostname(h, &format!("{at}.urlRewrite.hostname")))
                    .transpose()?,
                path: r
                    .path
                    .map(|p| path_modifier(p, &format!("{at}.urlRewrite.path")))
                    .transpose()?,
            })
        }
        "RequestMirror" => {
            let Some(m) = f.request_mirror else {
                return Err(missing(at));
            };
            let mat = format!("{at}.requestMirror");
            let percent = match (m.percent, m.fraction) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{mat}: only one of percent or fraction may be specified"
                    ));
                }
                (Some(p), None) => f64::from(p.0),
                (None, Some(fr)) => {
                    let den = fr.denominator.unwrap_or(100);
                    if den == 0 || fr.numerator > den {
                        return Err(format!(
                            "{mat}.fraction: numerator must be <= denominator and denominator >= 1"
                        ));
                    }
                    100.0 * f64::from(fr.numerator) / f64::from(den)
                }
                (None, None) => 100.0,
            };
            let b = m.backend_ref;
            Filter::RequestMirror(Mirror {
                backend: Backend {
                    group: b.group.unwrap_or_default(),
                    kind: b.kind.unwrap_or_else(|| "Service".to_string()),
                    namespace: b.namespace.unwrap_or_else(|| namespace.to_string()),
                    name: b.name,
                    port: b.port.map(|p| p.0),
                    weight: 1,
                    filters: Vec::new(),
                },
                percent,
            })
        }
        "CORS" => {
            let Some(c) = f.cors else {
                return Err(missing(at));
            };
            Filter::Cors(Cors {
                allow_origins: c.allow_origins,
                allow_methods: c.allow_methods,
                allow_headers: c.allow_headers,
                expose_headers: c.expose_headers,
                allow_credentials: c.allow_credentials,
                max_age: c.max_age,
            })
        }
        other => invalid(format!("unsupported filter type {other:?}")),
    })
}

/// The presence check in `filter` makes this impossible; an error rather than a panic anyway.
fn missing(at: &str) -> String {
    format!("{at}: filter body missing")
}

fn path_modifier(p: YPathModifier, at: &str) -> Result<PathModifier, String> {
    match (p.kind, p.replace_full_path, p.replace_prefix_match) {
        (PathModType::ReplaceFullPath, Some(v), None) => Ok(PathModifier::ReplaceFullPath(v)),
        (PathModType::ReplacePrefixMatch, None, Some(v)) => Ok(PathModifier::ReplacePrefixMatch(v)),
        (PathModType::ReplaceFullPath, _, _) => Err(format!(
            "{at}: type ReplaceFullPath needs replaceFullPath (and no replacePrefixMatch)"
        )),
        (PathModType::ReplacePrefixMatch, _, _) => Err(format!(
            "{at}: type ReplacePrefixMatch needs replacePrefixMatch (and no replaceFullPath)"
        )),
    }
}

/// A PreciseHostname: lowercase RFC 1123 labels.
fn hostname(h: String, at: &str) -> Result<String, String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() <= 253 && h.split('.').all(label_ok) {
        Ok(h)
    } else {
        Err(format!(
            "{at}: {h:?} is not a hostname (lowercase letters, digits, '-' and '.', no wildcard)"
        ))
    }
}

fn service_port(p: YServicePort) -> ServicePort {
    ServicePort {
        port: p.port.0,
        name: p.name,
        app_protocol: p.app_protocol,
        target_port: p.target_port.map(|t| match t {
            IntOrString::Int(n) => TargetPort::Number(n),
            IntOrString::Str(s) => TargetPort::Name(s),
        }),
    }
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
