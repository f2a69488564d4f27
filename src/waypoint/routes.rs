//! The waypoint's L7 routing core: Gateway API HTTPRoute and GRPCRoute attached to a core
//! `Service` (GAMMA), applied the way Istio's waypoint applies them.
//!
//! Owns the route model (independent of the YAML shapes, which `resources` converts), the
//! per-service route table (attachment, precedence, matching), route status, and the pure
//! decisions one request needs: backend pick, header modifiers, redirect, rewrite, mirror,
//! retry and timeouts. No I/O, no clock, no randomness: callers pass random numbers in.
//! Must not touch sockets, endpoints or the service registry; whether a backend Service
//! exists is the caller's question (`status` takes a lookup).
//!
//! ```text
//! request (svc ns/name, port, method, path, query, headers)
//!   └─ RouteTable::select ─┬─ NoRoutes  nothing attached: the service routes to itself
//!                          ├─ NotFound  routes attached, none matches: 404
//!                          └─ Matched   rule → filters (redirect | rewrite, headers, mirror)
//!                                        → pick_backend (None: 500) → retry_policy/timeouts
//! ```
//!
//! Precedence over every rule attached to one service port (Gateway API spec, Istio's
//! `sortHTTPRoutes`): Exact > PathPrefix > RegularExpression > no path > no matches at all;
//! longer path string; has method; more header matches; more query matches; older route
//! (no timestamp = newest); namespace/name; rule order; match order. Where Istio differs
//! from the spec, the spec wins and the item says so: Istio orders the route lists of
//! different namespaces (and of port-scoped vs port-less routes) one after the other instead
//! of merging them; here they are merged.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Serialize;

/// Which Gateway API kind a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum RouteKind {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// One HTTPRoute or GRPCRoute as loaded (defaults applied, nothing dropped yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339); absent counts as newest.
    pub creation: Option<String>,
    pub parents: Vec<ParentRef>,
    pub rules: Vec<Rule>,
    /// Where it was read: `file#document` (1-based).
    pub origin: String,
}

/// A `spec.parentRefs[]` entry, normalized: kind defaults to `Gateway`, namespace to the
/// route's; group is `""` for a `Service` written without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

impl ParentRef {
    /// A core `Service` parent (GAMMA), the only kind this waypoint attaches to.
    pub fn is_service(&self) -> bool {
        self.group.is_empty() && self.kind == "Service"
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rule {
    pub name: Option<String>,
    /// ORed; empty = matches everything (and ranks below an explicit `PathPrefix /`).
    pub matches: Vec<Match>,
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
}

/// All conditions ANDed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Match {
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub method: Option<Method>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise prefix; a trailing `/` in the prefix is ignored (`/` itself matches all).
    Prefix(String),
    /// Full match against the path (no query).
    Regex(Pattern),
}

/// A regular expression that must match the whole input (RE2-like syntax).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        let regex = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }
    pub fn as_str(&self) -> &str {
        &self.source
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StringMatch {
    Exact(String),
    Regex(Pattern),
}

impl StringMatch {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            StringMatch::Exact(v) => v == s,
            StringMatch::Regex(p) => p.is_match(s),
        }
    }
}

/// Name case-insensitive (stored lowercase); repeated request headers are joined with `,`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: StringMatch,
}

/// Name exact; the first occurrence in the query string counts; values percent-decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    pub name: String,
    pub value: StringMatch,
}

/// A `backendRefs[]` entry (or a mirror's `backendRef`, weight 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub group: String,
    pub kind: String,
    /// Defaults to the route's namespace.
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    /// Defaults to 1; 0 is never chosen.
    pub weight: u32,
    pub filters: Vec<Filter>,
}

impl Backend {
    /// A core `Service`, the only backend kind this waypoint can send to; requests that pick
    /// any other kind get 500 (Istio's `cluster_not_found_response_code`).
    pub fn is_service(&self) -> bool {
        self.group.is_empty() && self.kind == "Service"
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite(UrlRewrite),
    RequestMirror(Mirror),
    /// Parsed and kept for the config dump; the data path does not run it yet.
    Cors(Cors),
    /// A filter this waypoint does not run (ExtensionRef, ExternalAuth, an unknown type, a
    /// header value with control characters): the rule is dropped, `InvalidFilter`.
    Invalid {
        filter_type: String,
        message: String,
    },
}

impl Filter {
    /// The Gateway API `type` string.
    pub fn type_name(&self) -> &str {
        match self {
            Filter::RequestHeaderModifier(_) => "RequestHeaderModifier",
            Filter::ResponseHeaderModifier(_) => "ResponseHeaderModifier",
            Filter::RequestRedirect(_) => "RequestRedirect",
            Filter::UrlRewrite(_) => "URLRewrite",
            Filter::RequestMirror(_) => "RequestMirror",
            Filter::Cors(_) => "CORS",
            Filter::Invalid { filter_type, .. } => filter_type,
        }
    }
}

/// Set (overwrite), add (append), remove; normalized by [`HeaderModifier::parse`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
    /// `host` (or `:authority`) in `set`/`add`: a Host rewrite, not a header (set wins).
    pub host: Option<String>,
}

/// Why a header modifier cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderModifierError {
    #[error("header name {0:?} is not a valid HTTP header name")]
    InvalidName(String),
    #[error("header {0:?} value contains invalid characters")]
    InvalidValue(String),
}

impl HeaderModifier {
    /// Istio's rules: names lowercased; of duplicate names the first wins; pseudo-headers
    /// dropped; `host`/`:authority` become [`HeaderModifier::host`]; values with control
    /// characters (other than tab) rejected.
    pub fn parse(
        set: &[(&str, &str)],
        add: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<HeaderModifier, HeaderModifierError> {
        let mut out = HeaderModifier::default();
        let mut set_host = None;
        let mut add_host = None;
        for (list, target, host) in [
            (set, &mut out.set, &mut set_host),
            (add, &mut out.add, &mut add_host),
        ] {
            for (name, value) in list {
                if !value
                    .bytes()
                    .all(|c| c == b'\t' || (c >= 0x20 && c != 0x7f))
                {
                    return Err(HeaderModifierError::InvalidValue(name.to_string()));
                }
                let lower = name.to_ascii_lowercase();
                if lower == "host" || lower == ":authority" {
                    host.get_or_insert_with(|| value.to_string());
                    continue;
                }
                if lower.starts_with(':') {
                    continue;
                }
                let n = HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| HeaderModifierError::InvalidName(name.to_string()))?;
                let v = HeaderValue::from_str(value)
                    .map_err(|_| HeaderModifierError::InvalidValue(name.to_string()))?;
                if !target.iter().any(|(have, _)| *have == n) {
                    target.push((n, v));
                }
            }
        }
        out.host = set_host.or(add_host);
        for name in remove {
            let lower = name.to_ascii_lowercase();
            if lower == "host" || lower.starts_with(':') {
                continue;
            }
            let n = HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| HeaderModifierError::InvalidName(name.to_string()))?;
            if !out.remove.contains(&n) {
                out.remove.push(n);
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308; absent = 302 (the CRD default).
    pub status_code: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub backend: Backend,
    /// 0..=100 (`percent`, or `fraction` as a percentage); absent = 100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: Option<bool>,
    pub max_age: Option<u32>,
}

/// `timeouts`; a zero duration means "no timeout".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

/// `retry`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retry {
    pub attempts: Option<u32>,
    pub codes: Vec<u16>,
    pub backoff: Option<Duration>,
}

/// What one request offers to matching. `path` has no query; a `host` header match reads
/// the `host` header, so an HTTP/2 caller should put `:authority` there.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The verdict of [`RouteTable::select`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection<'a> {
    /// No (valid) rule is attached to this service port: the service routes to itself.
    NoRoutes,
    /// Rules are attached but none matches: answer 404.
    NotFound,
    Matched {
        route: &'a Route,
        rule: &'a Rule,
        /// The rule's position in the route as written (for telemetry and status).
        rule_index: usize,
        /// The PathPrefix that matched (`/` for a rule without matches), for
        /// `ReplacePrefixMatch`; None for Exact/regex paths.
        matched_prefix: Option<&'a str>,
    },
}

/// Rules attached to service ports, in precedence order. Built once per config change.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Routes with unusable rules dropped (and, for HTTPRoute, unusable mirrors).
    routes: Vec<Route>,
    /// Per effective route: the original index of each kept rule.
    rule_index: Vec<Vec<usize>>,
    services: HashMap<(String, String), ServiceRoutes>,
    waypoint_namespace: String,
}

#[derive(Debug, Clone, Default)]
struct ServiceRoutes {
    /// From parentRefs without a port: every port of the service.
    any_port: Vec<Entry>,
    /// Port-scoped parentRefs, each list already merged with `any_port`.
    by_port: HashMap<u16, Vec<Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    route: usize,
    rule: usize,
    /// None: the rule has no matches.
    matched: Option<usize>,
    key: SortKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SortKey {
    rank: u8,
    len: usize,
    method: bool,
    headers: usize,
    query: usize,
    /// None = no timestamp = newest.
    created: Option<i128>,
    namespace: String,
    name: String,
    rule: usize,
    matched: usize,
}

/// One service port's attached rules, for the config dump.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attachment {
    pub namespace: String,
    pub name: String,
    /// None: the rules that apply to ports without port-scoped routes.
    pub port: Option<u16>,
    /// In precedence order.
    pub rules: Vec<AttachedRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttachedRule {
    /// `HTTPRoute ns/name`.
    pub route: String,
    pub rule: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matched: Option<usize>,
    /// E.g. `PathPrefix /api, method GET, 1 header(s), 0 query param(s)`.
    pub condition: String,
}

/// The controller name written into route status.
pub const CONTROLLER_NAME: &str = "ringmesh/waypoint";

/// Status of one route, one entry per Service parentRef (other parents are not ours).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

impl RouteTable {
    /// Attach every route's rules to the Service parents it names (§2.1): group `""` and kind
    /// `Service`; a parentRef port limits it to that service port; only routes in the
    /// service's namespace or `waypoint_namespace` count; hostnames are ignored. Rules that
    /// cannot be programmed (unsupported filter, backendRef without port, Service name with
    /// a `.`) are left out; [`RouteTable::status`] says why.
    pub fn build(routes: &[Route], waypoint_namespace: &str) -> RouteTable {
        let mut table = RouteTable {
            waypoint_namespace: waypoint_namespace.to_string(),
            ..RouteTable::default()
        };
        for route in routes {
            let mut kept = Vec::new();
            let mut index = Vec::new();
            for (i, rule) in route.rules.iter().enumerate() {
                if let Some(rule) = check_rule(route.kind, rule, None).kept {
                    kept.push(rule);
                    index.push(i);
                }
            }
            let effective = Route {
                rules: kept,
                ..route.clone()
            };
            let ri = table.routes.len();
            let created = effective.creation.as_deref().and_then(parse_timestamp);
            for parent in &effective.parents {
                if !parent.is_service() || !honoured(&effective, parent, waypoint_namespace) {
                    continue;
                }
                let svc = table
                    .services
                    .entry((parent.namespace.clone(), parent.name.clone()))
                    .or_default();
                let list = match parent.port {
                    Some(p) => svc.by_port.entry(p).or_default(),
                    None => &mut svc.any_port,
                };
                for (rule_i, rule) in effective.rules.iter().enumerate() {
                    let original = index[rule_i];
                    if rule.matches.is_empty() {
                        list.push(entry(&effective, ri, rule_i, original, None, created));
                    }
                    for m in 0..rule.matches.len() {
                        list.push(entry(&effective, ri, rule_i, original, Some(m), created));
                    }
                }
            }
            table.routes.push(effective);
            table.rule_index.push(index);
        }
        for svc in table.services.values_mut() {
            let any = svc.any_port.clone();
            for list in svc.by_port.values_mut() {
                list.extend(any.iter().cloned());
                sort_entries(list);
            }
            sort_entries(&mut svc.any_port);
        }
        table
    }

    /// The rule for one request to `svc_namespace/svc_name:port`.
    pub fn select<'a>(
        &'a self,
        svc_namespace: &str,
        svc_name: &str,
        port: u16,
        req: &RequestInfo,
    ) -> Selection<'a> {
        let Some(svc) = self
            .services
            .get(&(svc_namespace.to_string(), svc_name.to_string()))
        else {
            return Selection::NoRoutes;
        };
        let list = svc.by_port.get(&port).unwrap_or(&svc.any_port);
        if list.is_empty() {
            return Selection::NoRoutes;
        }
        let mut query: Option<Vec<(String, String)>> = None;
        for e in list {
            let route = &self.routes[e.route];
            let rule = &route.rules[e.rule];
            let matched_prefix = match e.matched {
                None => Some("/"),
                Some(m) => {
                    let m = &rule.matches[m];
                    if !match_ok(m, req, &mut query) {
                        continue;
                    }
                    match &m.path {
                        Some(PathMatch::Prefix(p)) => Some(p.as_str()),
                        _ => None,
                    }
                }
            };
            return Selection::Matched {
                route,
                rule,
                rule_index: self.rule_index[e.route][e.rule],
                matched_prefix,
            };
        }
        Selection::NotFound
    }

    /// Every service port with rules, in precedence order (sorted by service, then port).
    pub fn attached(&self) -> Vec<Attachment> {
        let mut out = Vec::new();
        let mut keys: Vec<_> = self.services.keys().collect();
        keys.sort();
        for key in keys {
            let svc = &self.services[key];
            let mut ports: Vec<_> = svc.by_port.keys().copied().collect();
            ports.sort_unstable();
            let lists = std::iter::once((None, &svc.any_port))
                .chain(ports.into_iter().map(|p| (Some(p), &svc.by_port[&p])));
            for (port, list) in lists {
                if list.is_empty() {
                    continue;
                }
                out.push(Attachment {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    port,
                    rules: list.iter().map(|e| self.describe(e)).collect(),
                });
            }
        }
        out
    }

    /// Route status per Service parentRef (§2.8). `services(ns, name)` answers a Service's
    /// ports, or None when it does not exist; it decides `NoMatchingParent` and
    /// `BackendNotFound`. Deviations from Istio, both in the user's favour: a route outside the
    /// service's and the waypoint's namespace is `Accepted: False` (Istio accepts it and the
    /// waypoint silently ignores it), and so is a parentRef port the service lacks.
    pub fn status(
        &self,
        routes: &[Route],
        services: &dyn Fn(&str, &str) -> Option<Vec<u16>>,
    ) -> Vec<RouteStatus> {
        let exists = |ns: &str, name: &str| services(ns, name).is_some();
        routes
            .iter()
            .map(|route| {
                let mut problems = Vec::new();
                for rule in &route.rules {
                    problems.extend(check_rule(route.kind, rule, Some(&exists)).problems);
                }
                let resolved = match problems.first() {
                    None => condition("ResolvedRefs", None, "All references resolved"),
                    Some(first) => {
                        let message = problems
                            .iter()
                            .map(|p| p.message.as_str())
                            .collect::<Vec<_>>()
                            .join("; ");
                        condition("ResolvedRefs", Some(first.reason), &message)
                    }
                };
                let parents = route
                    .parents
                    .iter()
                    .filter(|p| p.is_service())
                    .map(|parent| RouteParentStatus {
                        parent_ref: parent.clone(),
                        controller_name: CONTROLLER_NAME.to_string(),
                        conditions: vec![self.accepted(route, parent, services), resolved.clone()],
                    })
                    .collect();
                RouteStatus {
                    kind: route.kind,
                    namespace: route.namespace.clone(),
                    name: route.name.clone(),
                    parents,
                }
            })
            .collect()
    }

    fn accepted(
        &self,
        route: &Route,
        parent: &ParentRef,
        services: &dyn Fn(&str, &str) -> Option<Vec<u16>>,
    ) -> Condition {
        let Some(ports) = services(&parent.namespace, &parent.name) else {
            let msg = format!("parent service: {:?} not found", parent.name);
            return condition("Accepted", Some("NoMatchingParent"), &msg);
        };
        if !honoured(route, parent, &self.waypoint_namespace) {
            let msg = format!(
                "route in namespace {:?} targets service {}/{}: the waypoint only honours routes \
                 in the service's namespace or its own ({:?}); move the route there",
                route.namespace, parent.namespace, parent.name, self.waypoint_namespace
            );
            return condition("Accepted", Some("NotAllowedByListeners"), &msg);
        }
        if let Some(port) = parent.port.filter(|p| !ports.contains(p)) {
            let msg = format!(
                "port {port} not found on service {}/{}",
                parent.namespace, parent.name
            );
            return condition("Accepted", Some("NoMatchingParent"), &msg);
        }
        condition("Accepted", None, "Route was valid")
    }

    fn describe(&self, e: &Entry) -> AttachedRule {
        let route = &self.routes[e.route];
        let rule = &route.rules[e.rule];
        let condition = match e.matched {
            None => "no matches (everything)".to_string(),
            Some(m) => {
                let m = &rule.matches[m];
                let path = match &m.path {
                    None => "any path".to_string(),
                    Some(PathMatch::Exact(p)) => format!("Exact {p}"),
                    Some(PathMatch::Prefix(p)) => format!("PathPrefix {p}"),
                    Some(PathMatch::Regex(p)) => format!("RegularExpression {}", p.as_str()),
                };
                let method = m
                    .method
                    .as_ref()
                    .map(|x| format!(", method {x}"))
                    .unwrap_or_default();
                format!(
                    "{path}{method}, {} header(s), {} query param(s)",
                    m.headers.len(),
                    m.query.len()
                )
            }
        };
        AttachedRule {
            route: format!("{} {}/{}", route.kind.as_str(), route.namespace, route.name),
            rule: self.rule_index[e.route][e.rule],
            rule_name: rule.name.clone(),
            matched: e.matched,
            condition,
        }
    }
}

/// Weighted choice (`weight` 0 never chosen) with `r` uniform over u64: `r % total` walks
/// the cumulative weights, so r in 0..total hits each backend exactly `weight` times. None
/// when the weights sum to 0 (also for no backends): the caller answers 500.
pub fn pick_backend(backends: &[Backend], r: u64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = r % total;
    for b in backends {
        let w = u64::from(b.weight);
        if x < w {
            return Some(b);
        }
        x -= w;
    }
    None
}

/// Apply one header modifier: remove, then set (overwrite), then add (append) — Envoy's order.
/// Returns the Host rewrite it asks for, if any (the caller rewrites `:authority`/`host`;
/// a URLRewrite hostname takes precedence over it). Apply the rule's modifier before the
/// chosen backend's, so the backend's (more specific) one wins.
pub fn apply_headers<'m>(m: &'m HeaderModifier, h: &mut HeaderMap) -> Option<&'m str> {
    for name in &m.remove {
        h.remove(name);
    }
    for (name, value) in &m.set {
        h.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        h.append(name.clone(), value.clone());
    }
    m.host.as_deref()
}

/// The request a redirect is computed from. `port` is the service port the request came in
/// on (Istio's "request port"), `host` the Host without port.
#[derive(Debug, Clone, Copy)]
pub struct RedirectRequest<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Status and `Location` for a RequestRedirect. Status default 302; host from `hostname`
/// else the request; scheme from `scheme` else the request; port explicit, else (scheme
/// set) that scheme's default, else the request port — and 80 for http / 443 for https is
/// never written; path ReplaceFullPath or ReplacePrefixMatch (segment-wise, as
/// [`rewrite`]); the query is kept unless ReplaceFullPath carries its own.
pub fn redirect_location(
    r: &Redirect,
    req: &RedirectRequest,
    matched_prefix: Option<&str>,
) -> (StatusCode, String) {
    let status = r
        .status_code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::FOUND);
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    let host = r.hostname.as_deref().unwrap_or(req.host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => req.port,
    };
    let port = port.filter(|&p| {
        !((p == 80 && scheme.eq_ignore_ascii_case("http"))
            || (p == 443 && scheme.eq_ignore_ascii_case("https")))
    });
    let path = match &r.path {
        None => req.path.to_string(),
        Some(PathModifier::ReplaceFullPath(p)) => p.clone(),
        Some(PathModifier::ReplacePrefixMatch(rep)) => {
            replace_prefix(req.path, matched_prefix.unwrap_or("/"), rep)
        }
    };
    let mut location = format!("{scheme}://");
    if host.contains(':') && !host.starts_with('[') {
        location.push_str(&format!("[{host}]"));
    } else {
        location.push_str(host);
    }
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&path);
    if let Some(q) = req.query.filter(|q| !q.is_empty() && !path.contains('?')) {
        location.push('?');
        location.push_str(q);
    }
    (status, location)
}

/// URLRewrite: the new Host (if any) and the new path (the caller keeps the query).
/// ReplaceFullPath replaces the whole path; ReplacePrefixMatch replaces the matched prefix
/// segment-wise per the HTTPPathModifier table (`/` or `""` strips it, keeping one `/`).
pub fn rewrite(
    u: &UrlRewrite,
    path: &str,
    matched_prefix: Option<&str>,
) -> (Option<String>, String) {
    let new_path = match &u.path {
        None => path.to_string(),
        Some(PathModifier::ReplaceFullPath(p)) => p.clone(),
        Some(PathModifier::ReplacePrefixMatch(rep)) => {
            replace_prefix(path, matched_prefix.unwrap_or("/"), rep)
        }
    };
    (u.hostname.clone(), new_path)
}

/// Whether this request is mirrored, `r` uniform over u64 (resolution 1/1,000,000 as
/// Envoy's runtime fraction).
pub fn mirror_hit(percent: f64, r: u64) -> bool {
    let threshold = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u64;
    r % 1_000_000 < threshold
}

/// How a request is retried (§2.5). `unavailable` and `cancelled` are gRPC statuses 14 and
/// 1 in response headers; `refused_stream` an HTTP/2 REFUSED_STREAM reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try; 0 = off.
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_refused_stream: bool,
    pub on_unavailable: bool,
    pub on_cancelled: bool,
    /// Response status codes that are retried.
    pub codes: Vec<u16>,
    /// Base interval of Envoy's exponential backoff (jittered), 25 ms by default.
    pub backoff: Duration,
    /// 10 × `backoff`, Envoy's default cap.
    pub max_backoff: Duration,
    /// Retry on another endpoint than the ones tried (Envoy `previous_hosts`, 5 attempts).
    pub avoid_previous_hosts: bool,
}

impl RetryPolicy {
    pub fn off() -> RetryPolicy {
        RetryPolicy {
            attempts: 0,
            on_connect_failure: false,
            on_refused_stream: false,
            on_unavailable: false,
            on_cancelled: false,
            codes: Vec::new(),
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_BACKOFF * 10,
            avoid_previous_hosts: false,
        }
    }
}

const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// The retry policy for a matched rule, or for the default route (`None`): without a
/// `retry` stanza Istio's mesh default — 2 retries on connect-failure, refused-stream,
/// unavailable, cancelled; with one, `attempts` (default 2, 0 = off), the same conditions
/// plus `codes`, `backoff` as the base interval.
pub fn retry_policy(rule: Option<&Rule>) -> RetryPolicy {
    let default = RetryPolicy {
        attempts: 2,
        on_connect_failure: true,
        on_refused_stream: true,
        on_unavailable: true,
        on_cancelled: true,
        avoid_previous_hosts: true,
        ..RetryPolicy::off()
    };
    let Some(retry) = rule.and_then(|r| r.retry.as_ref()) else {
        return default;
    };
    let attempts = retry.attempts.unwrap_or(2);
    if attempts == 0 {
        return RetryPolicy::off();
    }
    let backoff = retry
        .backoff
        .filter(|b| !b.is_zero())
        .unwrap_or(DEFAULT_BACKOFF);
    RetryPolicy {
        attempts,
        codes: retry.codes.clone(),
        backoff,
        max_backoff: backoff * 10,
        ..default
    }
}

/// (whole-request timeout, per-try timeout) for a matched rule (§2.5); zero durations are
/// "none"; no default. `backendRequest` is the per-try timeout when the rule has a `retry`
/// stanza, otherwise it replaces the request timeout (Istio). With `retry: {attempts: 0}`
/// it still bounds the single try (Istio drops it there; the spec says it bounds each try).
pub fn timeouts(rule: Option<&Rule>) -> (Option<Duration>, Option<Duration>) {
    let Some(rule) = rule else {
        return (None, None);
    };
    let request = rule.timeouts.request.filter(|d| !d.is_zero());
    let backend = rule.timeouts.backend_request.filter(|d| !d.is_zero());
    if rule.retry.is_some() {
        (request, backend)
    } else {
        (backend.or(request), None)
    }
}

/// RFC 3339 timestamp → nanoseconds since the Unix epoch; None when malformed.
pub fn parse_timestamp(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, min, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if sep(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = s.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        let padded: String = digits.chars().chain("000000000".chars()).take(9).collect();
        nanos = padded.parse().ok()?;
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *c == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Replace the segment-wise `prefix` of `path` with `replacement` (HTTPPathModifier table).
fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let p = prefix.trim_end_matches('/');
    let rest = match path.strip_prefix(p) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => return path.to_string(),
    };
    let r = replacement.trim_end_matches('/');
    if r.is_empty() {
        if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        }
    } else {
        format!("{r}{rest}")
    }
}

fn honoured(route: &Route, parent: &ParentRef, waypoint_namespace: &str) -> bool {
    route.namespace == parent.namespace || route.namespace == waypoint_namespace
}

fn condition(kind: &'static str, error: Option<&str>, message: &str) -> Condition {
    Condition {
        kind,
        status: if error.is_some() { "False" } else { "True" },
        reason: error.unwrap_or(kind).to_string(),
        message: message.to_string(),
    }
}

fn entry(
    route: &Route,
    ri: usize,
    rule: usize,
    original: usize,
    matched: Option<usize>,
    created: Option<i128>,
) -> Entry {
    let (rank, len, method, headers, query) = match matched {
        None => (0, 0, false, 0, 0),
        Some(m) => {
            let m = &route.rules[rule].matches[m];
            let (rank, len) = match &m.path {
                Some(PathMatch::Exact(p)) => (4, p.len()),
                Some(PathMatch::Prefix(p)) => (3, p.len()),
                Some(PathMatch::Regex(p)) => (2, p.as_str().len()),
                None => (1, 0),
            };
            (
                rank,
                len,
                m.method.is_some(),
                m.headers.len(),
                m.query.len(),
            )
        }
    };
    Entry {
        route: ri,
        rule,
        matched,
        key: SortKey {
            rank,
            len,
            method,
            headers,
            query,
            created,
            namespace: route.namespace.clone(),
            name: route.name.clone(),
            rule: original,
            matched: matched.unwrap_or(0),
        },
    }
}

fn compare(a: &SortKey, b: &SortKey) -> Ordering {
    let created = match (a.created, b.created) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    b.rank
        .cmp(&a.rank)
        .then(b.len.cmp(&a.len))
        .then(b.method.cmp(&a.method))
        .then(b.headers.cmp(&a.headers))
        .then(b.query.cmp(&a.query))
        .then(created)
        .then_with(|| a.namespace.cmp(&b.namespace))
        .then_with(|| a.name.cmp(&b.name))
        .then(a.rule.cmp(&b.rule))
        .then(a.matched.cmp(&b.matched))
}

fn sort_entries(list: &mut Vec<Entry>) {
    list.sort_by(|a, b| compare(&a.key, &b.key).then(a.route.cmp(&b.route)));
    list.dedup_by(|a, b| a.route == b.route && a.rule == b.rule && a.matched == b.matched);
}

fn match_ok(m: &Match, req: &RequestInfo, query: &mut Option<Vec<(String, String)>>) -> bool {
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Exact(p)) => req.path == p,
        Some(PathMatch::Prefix(p)) => prefix_matches(p, req.path),
        Some(PathMatch::Regex(p)) => p.is_match(req.path),
    };
    if !path_ok || m.method.as_ref().is_some_and(|x| x != req.method) {
        return false;
    }
    if !m.headers.iter().all(|h| header_ok(h, req.headers)) {
        return false;
    }
    if m.query.is_empty() {
        return true;
    }
    let params = query.get_or_insert_with(|| parse_query(req.query.unwrap_or("")));
    m.query.iter().all(|q| {
        params
            .iter()
            .find(|(name, _)| *name == q.name)
            .is_some_and(|(_, value)| q.value.matches(value))
    })
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || p.is_empty(),
        None => false,
    }
}

fn header_ok(h: &HeaderMatch, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(&h.name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in values {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    match (&h.value, std::str::from_utf8(&joined)) {
        (StringMatch::Exact(v), _) => v.as_bytes() == joined.as_slice(),
        (StringMatch::Regex(p), Ok(s)) => p.is_match(s),
        (StringMatch::Regex(_), Err(_)) => false,
    }
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Does Service `ns/name` exist? (status only)
type Exists<'a> = &'a dyn Fn(&str, &str) -> bool;

#[derive(Debug, Clone)]
struct Problem {
    reason: &'static str,
    message: String,
}

struct Checked {
    /// The rule as programmed (bad HTTPRoute mirrors removed), or None when dropped.
    kept: Option<Rule>,
    problems: Vec<Problem>,
}

fn problem(reason: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        reason,
        message: message.into(),
    }
}

/// Istio's per-rule conversion errors (§2.3, §2.4). `exists` (status only) adds
/// `BackendNotFound`, which never drops a rule (its weight share gets 500).
fn check_rule(kind: RouteKind, rule: &Rule, exists: Option<Exists>) -> Checked {
    let mut problems = Vec::new();
    let drop = |mut problems: Vec<Problem>, p: Problem| {
        problems.push(p);
        Checked {
            kept: None,
            problems,
        }
    };
    let mut kept = rule.clone();
    kept.filters.clear();
    for f in &rule.filters {
        let unsupported = || {
            problem(
                "InvalidFilter",
                format!("unsupported filter type {:?}", f.type_name()),
            )
        };
        match (f, kind) {
            (Filter::Invalid { message, .. }, _) => {
                return drop(problems, problem("InvalidFilter", message.clone()));
            }
            (Filter::RequestMirror(m), _) => match check_backend(&m.backend, exists) {
                Ok(None) => kept.filters.push(f.clone()),
                Ok(Some(p)) | Err(p) if kind == RouteKind::Http => problems.push(p),
                Ok(Some(p)) | Err(p) => return drop(problems, p),
            },
            (
                Filter::RequestRedirect(_) | Filter::UrlRewrite(_) | Filter::Cors(_),
                RouteKind::Grpc,
            ) => {
                return drop(problems, unsupported());
            }
            _ => kept.filters.push(f.clone()),
        }
    }
    let redirect = rule
        .filters
        .iter()
        .any(|f| matches!(f, Filter::RequestRedirect(_)));
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    if total > 0 || redirect {
        for b in rule.backends.iter().filter(|b| b.weight > 0) {
            match check_backend(b, exists) {
                Ok(None) => {}
                Ok(Some(p)) => problems.push(p),
                Err(p) => return drop(problems, p),
            }
            for f in &b.filters {
                match f {
                    Filter::RequestHeaderModifier(_) | Filter::ResponseHeaderModifier(_) => {}
                    Filter::Invalid { message, .. } => {
                        return drop(problems, problem("InvalidFilter", message.clone()));
                    }
                    other => {
                        let msg = format!("unsupported filter type {:?}", other.type_name());
                        return drop(problems, problem("InvalidFilter", msg));
                    }
                }
            }
        }
    }
    Checked {
        kept: Some(kept),
        problems,
    }
}

/// Err: the whole rule is dropped; Ok(Some): the backend stays (500 for its share).
fn check_backend(b: &Backend, exists: Option<Exists>) -> Result<Option<Problem>, Problem> {
    if !b.is_service() {
        return Ok(Some(problem(
            "InvalidKind",
            format!(
                "referencing unsupported backendRef: group {:?} kind {:?}",
                b.group, b.kind
            ),
        )));
    }
    if b.name.contains('.') {
        return Err(problem(
            "InvalidDestination",
            "service name invalid; the name of the Service must be used, not the hostname.",
        ));
    }
    if b.port.is_none() {
        return Err(problem(
            "InvalidDestination",
            "port is required in backendRef",
        ));
    }
    if let Some(exists) = exists
        && !exists(&b.namespace, &b.name)
    {
        return Ok(Some(problem(
            "BackendNotFound",
            format!("backend({}/{}) not found", b.namespace, b.name),
        )));
    }
    Ok(None)
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
