//! The serde shapes of the Kubernetes objects the waypoint reads (Gateway API v1
//! `HTTPRoute`/`GRPCRoute`, core `Service`), as a file holds them: unknown spec fields are
//! rejected like `kubectl --validate`, and the scalars the API server range-checks (ports,
//! weights, percentages, status codes, durations) are checked while deserializing, so the
//! error carries the field path. No defaults and no model here; `convert` does that.

use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_yaml_ng::Value;

/// Deserialize with field paths in errors: serde_yaml_ng tracks paths only when reading
/// text, so the value is written back out first. Its line numbers would point into that
/// copy, so they are cut.
pub(super) fn typed<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, String> {
    let text = serde_yaml_ng::to_string(value).map_err(|e| e.to_string())?;
    serde_yaml_ng::from_str(&text).map_err(|e| {
        let msg = e.to_string();
        match (e.location(), msg.rfind(" at line ")) {
            (Some(_), Some(at)) => msg[..at].to_string(),
            _ => msg,
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Meta {
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    pub(super) creation_timestamp: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RouteDoc<S> {
    pub(super) metadata: Meta,
    pub(super) spec: S,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HttpSpec {
    #[serde(default)]
    pub(super) parent_refs: Vec<YParentRef>,
    #[allow(dead_code)] // ignored for Service parents (§2.1)
    pub(super) hostnames: Option<IgnoredAny>,
    pub(super) rules: Option<Vec<YHttpRule>>,
    #[allow(dead_code)] // accepted, meaningless for Service parents
    pub(super) use_default_gateways: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GrpcSpec {
    #[serde(default)]
    pub(super) parent_refs: Vec<YParentRef>,
    #[allow(dead_code)] // ignored for Service parents (§2.1)
    pub(super) hostnames: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) rules: Vec<YGrpcRule>,
    #[allow(dead_code)] // accepted, meaningless for Service parents
    pub(super) use_default_gateways: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YParentRef {
    pub(super) group: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) name: String,
    pub(super) section_name: Option<String>,
    pub(super) port: Option<Port>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YHttpRule {
    pub(super) name: Option<String>,
    pub(super) matches: Option<Vec<YHttpMatch>>,
    #[serde(default)]
    pub(super) filters: Vec<YFilter>,
    #[serde(default)]
    pub(super) backend_refs: Vec<YBackendRef>,
    pub(super) timeouts: Option<YTimeouts>,
    pub(super) retry: Option<YRetry>,
    #[allow(dead_code)] // accepted, not implemented (Istio ignores it too)
    pub(super) session_persistence: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YGrpcRule {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) matches: Vec<YGrpcMatch>,
    #[serde(default)]
    pub(super) filters: Vec<YFilter>,
    #[serde(default)]
    pub(super) backend_refs: Vec<YBackendRef>,
    #[allow(dead_code)] // accepted, not implemented (Istio ignores it too)
    pub(super) session_persistence: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YHttpMatch {
    pub(super) path: Option<YPathMatch>,
    #[serde(default)]
    pub(super) headers: Vec<YValueMatch>,
    #[serde(default)]
    pub(super) query_params: Vec<YValueMatch>,
    pub(super) method: Option<YMethod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YPathMatch {
    #[serde(rename = "type")]
    pub(super) kind: Option<PathType>,
    pub(super) value: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
pub(super) enum PathType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
pub(super) enum ValueType {
    Exact,
    RegularExpression,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YValueMatch {
    #[serde(rename = "type")]
    pub(super) kind: Option<ValueType>,
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Deserialize)]
#[allow(clippy::upper_case_acronyms)] // the Gateway API enum values
pub(super) enum YMethod {
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
pub(super) struct YGrpcMatch {
    pub(super) method: Option<YGrpcMethod>,
    #[serde(default)]
    pub(super) headers: Vec<YValueMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YGrpcMethod {
    #[serde(rename = "type")]
    pub(super) kind: Option<ValueType>,
    pub(super) service: Option<String>,
    pub(super) method: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YFilter {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) request_header_modifier: Option<YHeaderFilter>,
    pub(super) response_header_modifier: Option<YHeaderFilter>,
    pub(super) request_mirror: Option<YMirror>,
    pub(super) request_redirect: Option<YRedirect>,
    pub(super) url_rewrite: Option<YRewrite>,
    pub(super) cors: Option<YCors>,
    pub(super) external_auth: Option<IgnoredAny>,
    pub(super) extension_ref: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YHeaderFilter {
    #[serde(default)]
    pub(super) set: Vec<YHeader>,
    #[serde(default)]
    pub(super) add: Vec<YHeader>,
    #[serde(default)]
    pub(super) remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YHeader {
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YMirror {
    pub(super) backend_ref: YBackendObject,
    pub(super) percent: Option<Percent>,
    pub(super) fraction: Option<YFraction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YFraction {
    pub(super) numerator: u32,
    pub(super) denominator: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YBackendObject {
    pub(super) group: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    pub(super) port: Option<Port>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YBackendRef {
    pub(super) group: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    pub(super) port: Option<Port>,
    pub(super) weight: Option<Weight>,
    #[serde(default)]
    pub(super) filters: Vec<YFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YRedirect {
    pub(super) scheme: Option<Scheme>,
    pub(super) hostname: Option<String>,
    pub(super) path: Option<YPathModifier>,
    pub(super) port: Option<Port>,
    pub(super) status_code: Option<RedirectCode>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Scheme {
    Http,
    Https,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YRewrite {
    pub(super) hostname: Option<String>,
    pub(super) path: Option<YPathModifier>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YPathModifier {
    #[serde(rename = "type")]
    pub(super) kind: PathModType,
    pub(super) replace_full_path: Option<String>,
    pub(super) replace_prefix_match: Option<String>,
}

#[derive(Deserialize, PartialEq)]
pub(super) enum PathModType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YCors {
    #[serde(default)]
    pub(super) allow_origins: Vec<String>,
    pub(super) allow_credentials: Option<bool>,
    #[serde(default)]
    pub(super) allow_methods: Vec<String>,
    #[serde(default)]
    pub(super) allow_headers: Vec<String>,
    #[serde(default)]
    pub(super) expose_headers: Vec<String>,
    pub(super) max_age: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct YTimeouts {
    pub(super) request: Option<GwDuration>,
    pub(super) backend_request: Option<GwDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct YRetry {
    #[serde(default)]
    pub(super) codes: Vec<RetryCode>,
    pub(super) attempts: Option<u32>,
    pub(super) backoff: Option<GwDuration>,
}

#[derive(Deserialize)]
pub(super) struct ServiceDoc {
    pub(super) metadata: Meta,
    pub(super) spec: ServiceSpecDoc,
}

#[derive(Deserialize)]
pub(super) struct ServiceSpecDoc {
    #[serde(default)]
    pub(super) ports: Vec<YServicePort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct YServicePort {
    pub(super) port: Port,
    pub(super) name: Option<String>,
    pub(super) app_protocol: Option<String>,
    pub(super) target_port: Option<IntOrString>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum IntOrString {
    Int(u16),
    Str(String),
}

/// Checked scalars: the message says what is accepted. The check runs inside the visitor,
/// while the deserializer still stands on the field, so the error carries its path.
macro_rules! checked {
    ($name:ident, $inner:ty, $what:literal, |$v:ident| $check:expr) => {
        #[derive(Clone, Copy)]
        pub(super) struct $name(pub(super) $inner);
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
pub(super) struct GwDuration(pub(super) Duration);

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

pub(super) fn parse_duration(s: &str) -> Option<Duration> {
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
