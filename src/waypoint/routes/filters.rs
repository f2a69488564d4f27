//! The pure decisions a matched rule's filters and backends need for one request:
//! weighted backend pick, header modifiers, RequestRedirect `Location`, URLRewrite and
//! whether to mirror. Random numbers come from the caller; nothing here does I/O.

use http::{HeaderMap, StatusCode};

use super::{Backend, HeaderModifier, PathModifier, Redirect, UrlRewrite};

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
