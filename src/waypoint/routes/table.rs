//! The per-service route table: attaching rules to Service parents, ordering them by the
//! Gateway API precedence (see the `routes` overview), and matching one request against
//! them. Also the RFC 3339 parser behind the "older route" tie-breaker. Pure; what a
//! matched rule's filters do lives in `filters`, why a rule is dropped in `check`.

use std::cmp::Ordering;
use std::collections::HashMap;

use http::{HeaderMap, Method};
use serde::Serialize;

use super::check::check_rule;
use super::{HeaderMatch, Match, ParentRef, PathMatch, Route, Rule, StringMatch};

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
    pub(super) waypoint_namespace: String,
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
                    // cannot panic: `index` has one entry per kept rule.
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
        // cannot panic (here and in `describe`): entries are made only by `build`, from the
        // route it pushes at `e.route` with `rule_index[e.route]` beside it, and name a kept
        // rule and one of its matches; the fields are private and the table immutable.
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
            // cannot panic: `keys` are this map's own, and the ports `by_port`'s.
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

pub(super) fn honoured(route: &Route, parent: &ParentRef, waypoint_namespace: &str) -> bool {
    route.namespace == parent.namespace || route.namespace == waypoint_namespace
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
