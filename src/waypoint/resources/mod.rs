//! Loading what users write for the waypoint: Kubernetes YAML/JSON with Gateway API
//! `HTTPRoute`/`GRPCRoute` and core `Service` objects, converted into the `routes` model.
//!
//! Owns the serde shapes of those kinds, the API server's part of the job a file loader has
//! to do itself (CRD defaults, enum/pattern/range checks, the CEL rules that reject a route
//! on `kubectl apply`), and each Service port's protocol (Istio's rule, §1.4). Every
//! rejection names the file, the document, the resource and the field path. Other kinds are
//! listed in [`Resources::ignored`], not rejected. Reads files only in [`load`]; no network.
//!
//! Files: the API below (what a load returns and its errors, the port protocol rule);
//! `k8s` (the serde shapes of the Kubernetes objects, with the API server's range and
//! pattern checks); `convert` (from those shapes into the `routes` model, with the CRD
//! defaults and CEL rules, every error starting with its field path).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::waypoint::routes::Route;

mod convert;
mod k8s;

use convert::{grpc_route, http_route, service_port};
use k8s::{GrpcSpec, HttpSpec, RouteDoc, ServiceDoc, typed};

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

#[cfg(test)]
mod tests;
