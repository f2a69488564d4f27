//! From the Kubernetes shapes (`k8s`) into the `routes` model, with the checks the API
//! server would have made: CRD defaults, path and hostname patterns, the CEL rules on
//! HTTPRouteRule and its filters, GRPCRoute method matches as path matches (§2.6). Every
//! error starts with its field path, e.g. `spec.rules[0].matches[1].path.value: …`.

use http::{HeaderName, Method};

use super::k8s::{
    GrpcSpec, HttpSpec, IntOrString, Meta, PathModType, PathType, RouteDoc, Scheme, ValueType,
    YBackendRef, YFilter, YGrpcMethod, YHeaderFilter, YHttpMatch, YHttpRule, YMethod, YParentRef,
    YPathModifier, YServicePort, YValueMatch,
};
use super::{ServicePort, TargetPort};
use crate::waypoint::routes::{
    Backend, Cors, Filter, HeaderMatch, HeaderModifier, HeaderModifierError, Match, Mirror,
    ParentRef, PathMatch, PathModifier, Pattern, QueryMatch, Redirect, Retry, Route, RouteKind,
    Rule, StringMatch, Timeouts, UrlRewrite, parse_timestamp,
};

pub(super) fn http_route(d: RouteDoc<HttpSpec>, origin: String) -> Result<Route, String> {
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

pub(super) fn grpc_route(d: RouteDoc<GrpcSpec>, origin: String) -> Result<Route, String> {
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

pub(super) fn service_port(p: YServicePort) -> ServicePort {
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
