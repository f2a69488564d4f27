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
//!
//! Files: the model below; `table` (attachment, precedence, matching: [`RouteTable`]);
//! `check` (which rules can be programmed, and why not); `status` (route status
//! conditions); `filters` (backend pick, header modifiers, redirect, rewrite, mirror);
//! `policy` (retry policy and timeouts).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;

mod check;
mod filters;
mod policy;
mod status;
mod table;

pub use filters::{
    RedirectRequest, apply_headers, mirror_hit, pick_backend, redirect_location, rewrite,
};
pub use policy::{RetryPolicy, retry_policy, timeouts};
pub use status::{CONTROLLER_NAME, Condition, RouteParentStatus, RouteStatus};
pub use table::{AttachedRule, Attachment, RequestInfo, RouteTable, Selection, parse_timestamp};

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

#[cfg(test)]
mod tests;
