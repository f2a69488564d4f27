//! Tables of Gateway API routing cases (spec, conformance and Istio semantics): attachment,
//! precedence tie-breakers, matching, invalid rules, backend picks, filters, retries,
//! timeouts and status. Fixtures are YAML loaded through `resources`.

use std::collections::HashMap;

use http::{HeaderMap, StatusCode};

use super::*;
use crate::waypoint::resources;

const WP_NS: &str = "istio-system";

fn routes(yaml: &str) -> Vec<Route> {
    match resources::parse("t.yaml", yaml) {
        Ok(r) => r.routes,
        Err(e) => panic!("fixture does not load: {e}"),
    }
}

/// An HTTPRoute `ns/name` on Service `default/echo` (optionally port-scoped) with `rules`
/// (YAML flow sequence items, one per line).
fn http(ns: &str, name: &str, created: Option<&str>, port: Option<u16>, rules: &[&str]) -> String {
    let created = created
        .map(|c| format!(", creationTimestamp: '{c}'"))
        .unwrap_or_default();
    let port = port.map(|p| format!(", port: {p}")).unwrap_or_default();
    let mut s = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}{created}}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, namespace: default{port}}}]\n  rules:\n"
    );
    for r in rules {
        s.push_str(&format!("  - {r}\n"));
    }
    s
}

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in list {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

/// "NoRoutes", "NotFound" or "ns/name#rule" (+ " prefix=<p>" when a prefix matched).
fn sel(t: &RouteTable, port: u16, method: Method, target: &str, hs: &[(&str, &str)]) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let h = headers(hs);
    let req = RequestInfo {
        method: &method,
        path,
        query,
        headers: &h,
    };
    match t.select("default", "echo", port, &req) {
        Selection::NoRoutes => "NoRoutes".into(),
        Selection::NotFound => "NotFound".into(),
        Selection::Matched {
            route,
            rule_index,
            matched_prefix,
            ..
        } => {
            let p = matched_prefix
                .map(|p| format!(" prefix={p}"))
                .unwrap_or_default();
            format!("{}/{}#{rule_index}{p}", route.namespace, route.name)
        }
    }
}

fn get(t: &RouteTable, target: &str) -> String {
    sel(t, 80, Method::GET, target, &[])
}

fn table(yaml: &str) -> RouteTable {
    RouteTable::build(&routes(yaml), WP_NS)
}

const B: &str = "backendRefs: [{name: echo, port: 80}]";

// ---- attachment ----

#[test]
fn seed_example_routes_every_port_of_its_service_only() {
    let t = table(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: echo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]\n",
    );
    assert_eq!(get(&t, "/anything"), "default/echo#0 prefix=/");
    assert_eq!(
        sel(&t, 8080, Method::POST, "/x", &[]),
        "default/echo#0 prefix=/"
    );
    let h = HeaderMap::new();
    let req = RequestInfo {
        method: &Method::GET,
        path: "/",
        query: None,
        headers: &h,
    };
    assert_eq!(t.select("default", "other", 80, &req), Selection::NoRoutes);
    assert_eq!(t.select("other-ns", "echo", 80, &req), Selection::NoRoutes);
    match t.select("default", "echo", 80, &req) {
        Selection::Matched { rule, .. } => {
            let b = pick_backend(&rule.backends, 7).expect("backend");
            assert_eq!((b.name.as_str(), b.port), ("echo-v1", Some(80)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn port_scoped_parent_applies_to_that_port_and_merges_with_portless_routes() {
    let yaml = http(
        "default",
        "p80",
        None,
        Some(80),
        &[&format!("{{matches: [{{path: {{value: /only80}}}}], {B}}}")],
    ) + &http(
        "default",
        "all",
        None,
        None,
        &[&format!("{{matches: [{{path: {{value: /all}}}}], {B}}}")],
    );
    let t = table(&yaml);
    assert_eq!(get(&t, "/only80/x"), "default/p80#0 prefix=/only80");
    assert_eq!(get(&t, "/all"), "default/all#0 prefix=/all");
    assert_eq!(
        sel(&t, 8080, Method::GET, "/all", &[]),
        "default/all#0 prefix=/all"
    );
    assert_eq!(sel(&t, 8080, Method::GET, "/only80", &[]), "NotFound");
    // Only a port-scoped route: other ports route to the service itself.
    let t = table(&http("default", "p80", None, Some(80), &[B]));
    assert_eq!(get(&t, "/"), "default/p80#0 prefix=/");
    assert_eq!(sel(&t, 9090, Method::GET, "/", &[]), "NoRoutes");
}

#[test]
fn only_service_and_waypoint_namespace_routes_are_honoured() {
    let yaml = http(
        "consumer",
        "c",
        None,
        None,
        &[&format!(
            "{{matches: [{{path: {{type: Exact, value: /c}}}}], {B}}}"
        )],
    ) + &http(
        WP_NS,
        "w",
        None,
        None,
        &[&format!(
            "{{matches: [{{path: {{type: Exact, value: /w}}}}], {B}}}"
        )],
    ) + &http(
        "default",
        "p",
        None,
        None,
        &[&format!(
            "{{matches: [{{path: {{type: Exact, value: /p}}}}], {B}}}"
        )],
    );
    let t = table(&yaml);
    assert_eq!(get(&t, "/c"), "NotFound");
    assert_eq!(get(&t, "/w"), format!("{WP_NS}/w#0"));
    assert_eq!(get(&t, "/p"), "default/p#0");
    // A third-namespace route alone attaches nothing.
    let t = table(&http("consumer", "c", None, None, &[B]));
    assert_eq!(get(&t, "/"), "NoRoutes");
}

#[test]
fn gateway_parents_are_not_attached() {
    let t = table(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: echo}, {group: networking.istio.io, kind: ServiceEntry, name: echo}]\n  rules: [{backendRefs: [{name: echo, port: 80}]}]\n",
    );
    assert_eq!(get(&t, "/"), "NoRoutes");
}

#[test]
fn attached_but_unmatched_is_not_found() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[&format!(
            "{{matches: [{{path: {{type: Exact, value: /a}}}}], {B}}}"
        )],
    ));
    assert_eq!(get(&t, "/b"), "NotFound");
}

// ---- precedence ----

#[test]
fn exact_beats_prefix_whatever_the_order() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!("{{matches: [{{path: {{value: /foo}}}}], {B}}}"),
            &format!("{{matches: [{{path: {{type: Exact, value: /foo}}}}], {B}}}"),
        ],
    ));
    assert_eq!(get(&t, "/foo"), "default/r#1");
    assert_eq!(get(&t, "/foo/bar"), "default/r#0 prefix=/foo");
}

#[test]
fn longer_prefix_first() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!("{{matches: [{{path: {{value: /}}}}], {B}}}"),
            &format!("{{matches: [{{path: {{value: /foo}}}}], {B}}}"),
            &format!("{{matches: [{{path: {{value: /foo/bar}}}}], {B}}}"),
        ],
    ));
    assert_eq!(get(&t, "/foo/bar/baz"), "default/r#2 prefix=/foo/bar");
    assert_eq!(get(&t, "/foo/baz"), "default/r#1 prefix=/foo");
    assert_eq!(get(&t, "/other"), "default/r#0 prefix=/");
}

#[test]
fn prefix_beats_regex_even_when_regex_is_longer() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!(
                "{{matches: [{{path: {{type: RegularExpression, value: '/api/v[0-9]+/.*'}}}}], {B}}}"
            ),
            &format!("{{matches: [{{path: {{value: /api}}}}], {B}}}"),
        ],
    ));
    assert_eq!(get(&t, "/api/v1/x"), "default/r#1 prefix=/api");
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!(
                "{{matches: [{{path: {{type: RegularExpression, value: '/v[0-9]+'}}}}], {B}}}"
            ),
            &format!("{{matches: [{{path: {{type: Exact, value: /nope}}}}], {B}}}"),
        ],
    ));
    assert_eq!(get(&t, "/v12"), "default/r#0");
    assert_eq!(get(&t, "/v12/x"), "NotFound", "regex is a full match");
}

#[test]
fn method_then_headers_then_query_break_ties() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!(
                "{{matches: [{{queryParams: [{{name: a, value: '1'}}, {{name: b, value: '2'}}]}}], {B}}}"
            ),
            &format!(
                "{{matches: [{{headers: [{{name: x, value: '1'}}], queryParams: [{{name: a, value: '1'}}]}}], {B}}}"
            ),
            &format!(
                "{{matches: [{{headers: [{{name: x, value: '1'}}, {{name: y, value: '2'}}]}}], {B}}}"
            ),
            &format!("{{matches: [{{method: GET}}], {B}}}"),
        ],
    ));
    let all = [("x", "1"), ("y", "2")];
    assert_eq!(
        sel(&t, 80, Method::GET, "/?a=1&b=2", &all),
        "default/r#3 prefix=/",
        "method first"
    );
    assert_eq!(
        sel(&t, 80, Method::POST, "/?a=1&b=2", &all),
        "default/r#2 prefix=/",
        "two headers"
    );
    assert_eq!(
        sel(&t, 80, Method::POST, "/?a=1&b=2", &[("x", "1")]),
        "default/r#1 prefix=/",
        "one header"
    );
    assert_eq!(
        sel(&t, 80, Method::POST, "/?a=1&b=2", &[]),
        "default/r#0 prefix=/",
        "query only"
    );
    assert_eq!(sel(&t, 80, Method::POST, "/?a=1", &[]), "NotFound");
}

#[test]
fn path_length_beats_method() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!("{{matches: [{{path: {{value: /a}}, method: GET}}], {B}}}"),
            &format!("{{matches: [{{path: {{value: /a/b}}}}], {B}}}"),
        ],
    ));
    assert_eq!(get(&t, "/a/b"), "default/r#1 prefix=/a/b");
}

#[test]
fn older_route_wins_a_tie_and_no_timestamp_is_newest() {
    let rule = format!("{{matches: [{{path: {{value: /x}}}}], {B}}}");
    let yaml = http(
        "default",
        "a-new",
        Some("2024-06-01T00:00:00Z"),
        None,
        &[&rule],
    ) + &http(
        "default",
        "z-old",
        Some("2024-01-01T00:00:00+02:00"),
        None,
        &[&rule],
    ) + &http("default", "b-none", None, None, &[&rule]);
    let t = table(&yaml);
    assert_eq!(get(&t, "/x"), "default/z-old#0 prefix=/x");
    let yaml = http("default", "a-none", None, None, &[&rule])
        + &http(
            "default",
            "z-dated",
            Some("2024-06-01T00:00:00Z"),
            None,
            &[&rule],
        );
    assert_eq!(get(&table(&yaml), "/x"), "default/z-dated#0 prefix=/x");
}

#[test]
fn namespace_then_name_break_remaining_ties() {
    let rule = format!("{{matches: [{{path: {{value: /x}}}}], {B}}}");
    let yaml =
        http("default", "b", None, None, &[&rule]) + &http("default", "a", None, None, &[&rule]);
    assert_eq!(get(&table(&yaml), "/x"), "default/a#0 prefix=/x");
    // Namespace first: "default" < "istio-system", whatever the names.
    let yaml = http(WP_NS, "a", None, None, &[&rule]) + &http("default", "z", None, None, &[&rule]);
    assert_eq!(get(&table(&yaml), "/x"), "default/z#0 prefix=/x");
}

#[test]
fn rule_order_then_match_order_within_a_route() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!("{{matches: [{{path: {{value: /b}}}}, {{path: {{value: /a}}}}], {B}}}"),
            &format!("{{matches: [{{path: {{value: /a}}}}], {B}}}"),
        ],
    ));
    assert_eq!(get(&t, "/a"), "default/r#0 prefix=/a");
    let attached = t.attached();
    let order: Vec<(usize, Option<usize>)> = attached[0]
        .rules
        .iter()
        .map(|r| (r.rule, r.matched))
        .collect();
    // /b and /a have equal length: rule 0 match 0, rule 0 match 1, then rule 1.
    assert_eq!(order, [(0, Some(0)), (0, Some(1)), (1, Some(0))]);
}

#[test]
fn rule_without_matches_ranks_below_explicit_root_prefix() {
    // Route "a" is older and its rule has no matches at all; "b" says PathPrefix / explicitly.
    let mut rs = routes(
        &(http(
            "default",
            "a",
            Some("2020-01-01T00:00:00Z"),
            None,
            &[&format!("{{matches: [], {B}}}")],
        ) + &http(
            "default",
            "b",
            Some("2024-01-01T00:00:00Z"),
            None,
            &[&format!("{{matches: [{{path: {{value: /}}}}], {B}}}")],
        )),
    );
    let t = RouteTable::build(&rs, WP_NS);
    assert_eq!(get(&t, "/x"), "default/b#0 prefix=/");
    // The CRD default (matches absent) is an explicit PathPrefix /: age decides.
    rs[0].rules[0].matches = vec![Match {
        path: Some(PathMatch::Prefix("/".into())),
        ..Match::default()
    }];
    let t = RouteTable::build(&rs, WP_NS);
    assert_eq!(get(&t, "/x"), "default/a#0 prefix=/");
}

// ---- matching ----

#[test]
fn path_prefix_matches_whole_segments() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[&format!("{{matches: [{{path: {{value: /foo/}}}}], {B}}}")],
    ));
    for hit in ["/foo", "/foo/", "/foo/bar"] {
        assert_eq!(get(&t, hit), "default/r#0 prefix=/foo", "{hit}");
    }
    for miss in ["/foobar", "/fo", "/", "/bar/foo", "/Foo"] {
        assert_eq!(get(&t, miss), "NotFound", "{miss}");
    }
    // The query string is not part of the path.
    assert_eq!(get(&t, "/foo?x=/bar"), "default/r#0 prefix=/foo");
}

#[test]
fn exact_path_is_exact() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[&format!(
            "{{matches: [{{path: {{type: Exact, value: /foo}}}}], {B}}}"
        )],
    ));
    assert_eq!(get(&t, "/foo"), "default/r#0");
    assert_eq!(get(&t, "/foo?a=b"), "default/r#0");
    assert_eq!(get(&t, "/foo/"), "NotFound");
    assert_eq!(get(&t, "/foo/bar"), "NotFound");
}

#[test]
fn headers_anded_within_a_match_and_matches_ored() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[&format!(
            "{{matches: [{{headers: [{{name: Version, value: two}}, {{name: env, type: RegularExpression, value: 'prod|stage'}}]}}, {{path: {{value: /v2}}}}], {B}}}"
        )],
    ));
    let r = "default/r#0 prefix=/";
    assert_eq!(
        sel(
            &t,
            80,
            Method::GET,
            "/",
            &[("version", "two"), ("env", "prod")]
        ),
        r
    );
    assert_eq!(
        sel(
            &t,
            80,
            Method::GET,
            "/",
            &[("VERSION", "two"), ("Env", "stage")]
        ),
        r
    );
    assert_eq!(
        sel(&t, 80, Method::GET, "/", &[("version", "two")]),
        "NotFound"
    );
    assert_eq!(
        sel(
            &t,
            80,
            Method::GET,
            "/",
            &[("version", "Two"), ("env", "prod")]
        ),
        "NotFound",
        "values are case-sensitive"
    );
    assert_eq!(
        sel(
            &t,
            80,
            Method::GET,
            "/",
            &[("version", "two"), ("env", "production")]
        ),
        "NotFound",
        "regex is a full match"
    );
    assert_eq!(
        sel(&t, 80, Method::GET, "/v2/x", &[]),
        "default/r#0 prefix=/v2",
        "second match ORed"
    );
}

#[test]
fn repeated_request_headers_are_joined() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[&format!(
            "{{matches: [{{headers: [{{name: x, value: 'a,b'}}]}}], {B}}}"
        )],
    ));
    assert_eq!(
        sel(&t, 80, Method::GET, "/", &[("x", "a"), ("x", "b")]),
        "default/r#0 prefix=/"
    );
    assert_eq!(sel(&t, 80, Method::GET, "/", &[("x", "a")]), "NotFound");
}

#[test]
fn query_params_exact_regex_first_value_decoded() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[&format!(
            "{{matches: [{{queryParams: [{{name: animal, value: whale}}, {{name: n, type: RegularExpression, value: '[0-9]+'}}]}}], {B}}}"
        )],
    ));
    let r = "default/r#0 prefix=/";
    assert_eq!(get(&t, "/?animal=whale&n=42"), r);
    assert_eq!(get(&t, "/?n=42&animal=wh%61le"), r, "percent-decoded");
    assert_eq!(
        get(&t, "/?animal=whale&animal=dolphin&n=1"),
        r,
        "first value counts"
    );
    assert_eq!(get(&t, "/?animal=dolphin&animal=whale&n=1"), "NotFound");
    assert_eq!(get(&t, "/?animal=whale&n=4x"), "NotFound");
    assert_eq!(get(&t, "/?Animal=whale&n=1"), "NotFound", "names are exact");
    assert_eq!(get(&t, "/"), "NotFound");
}

#[test]
fn method_match() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[&format!("{{matches: [{{method: POST}}], {B}}}")],
    ));
    assert_eq!(sel(&t, 80, Method::POST, "/x", &[]), "default/r#0 prefix=/");
    assert_eq!(sel(&t, 80, Method::GET, "/x", &[]), "NotFound");
}

#[test]
fn grpc_method_matching_and_precedence() {
    let t = table(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{kind: Service, name: echo}]\n  rules:\n\
         \x20 - {matches: [{method: {service: pkg.Echo}}], backendRefs: [{name: s, port: 9090}]}\n\
         \x20 - {matches: [{method: {service: pkg.Echo, method: Say}}], backendRefs: [{name: s, port: 9090}]}\n\
         \x20 - {matches: [{method: {method: Ping}}], backendRefs: [{name: s, port: 9090}]}\n\
         \x20 - {matches: [{method: {type: RegularExpression, service: 'pkg\\.v[0-9]\\.Echo', method: 'S.*'}}], backendRefs: [{name: s, port: 9090}]}\n\
         \x20 - {matches: [{headers: [{name: x-env, value: canary}]}], backendRefs: [{name: s, port: 9090}]}\n\
         \x20 - {backendRefs: [{name: s, port: 9090}]}\n",
    );
    let post = |p: &str, h: &[(&str, &str)]| sel(&t, 9090, Method::POST, p, h);
    assert_eq!(post("/pkg.Echo/Say", &[]), "default/g#1");
    assert_eq!(
        post("/pkg.Echo/Other", &[]),
        "default/g#0 prefix=/pkg.Echo/"
    );
    assert_eq!(post("/any.Svc/Ping", &[]), "default/g#2");
    assert_eq!(
        post("/a/b/Ping", &[]),
        "default/g#5 prefix=/",
        "[^/]+ is one segment"
    );
    assert_eq!(post("/pkg.v2.Echo/Stream", &[]), "default/g#3");
    assert_eq!(
        post("/pkg.v2.Echo/Get", &[("x-env", "canary")]),
        "default/g#4"
    );
    assert_eq!(
        post("/pkg.v2.Echo/Get", &[]),
        "default/g#5 prefix=/",
        "no matches: everything, last"
    );
}

// ---- invalid rules ----

#[test]
fn unsupported_filter_drops_only_that_rule() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!(
                "{{matches: [{{path: {{value: /ext}}}}], filters: [{{type: ExtensionRef, extensionRef: {{group: x, kind: Y, name: z}}}}], {B}}}"
            ),
            &format!("{{matches: [{{path: {{value: /ok}}}}], {B}}}"),
        ],
    ));
    assert_eq!(get(&t, "/ext"), "NotFound");
    assert_eq!(
        get(&t, "/ok"),
        "default/r#1 prefix=/ok",
        "the original rule index is reported"
    );
}

#[test]
fn all_rules_invalid_means_no_routes() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            "{backendRefs: [{name: echo}]}",
            "{backendRefs: [{name: echo.default.svc.cluster.local, port: 80}]}",
            "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: \"a\\u0007\"}]}}], backendRefs: [{name: echo, port: 80}]}",
            "{backendRefs: [{name: echo, port: 80, filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}}}]}]}",
        ],
    ));
    assert_eq!(get(&t, "/"), "NoRoutes");
}

#[test]
fn unsupported_backend_kind_keeps_its_weight_share() {
    let rs = routes(&http(
        "default",
        "r",
        None,
        None,
        &[
            "{backendRefs: [{name: echo, port: 80}, {group: example.com, kind: Bucket, name: b, port: 80}]}",
        ],
    ));
    let t = RouteTable::build(&rs, WP_NS);
    let h = HeaderMap::new();
    let req = RequestInfo {
        method: &Method::GET,
        path: "/",
        query: None,
        headers: &h,
    };
    let Selection::Matched { rule, .. } = t.select("default", "echo", 80, &req) else {
        panic!("rule kept");
    };
    assert!(pick_backend(&rule.backends, 0).is_some_and(Backend::is_service));
    assert!(
        pick_backend(&rule.backends, 1).is_some_and(|b| !b.is_service()),
        "its share gets 500"
    );
}

#[test]
fn bad_mirror_drops_the_mirror_for_http_and_the_rule_for_grpc() {
    let yaml = http(
        "default",
        "r",
        None,
        None,
        &[
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}}}], backendRefs: [{name: echo, port: 80}]}",
        ],
    );
    let t = table(&yaml);
    let h = HeaderMap::new();
    let req = RequestInfo {
        method: &Method::GET,
        path: "/",
        query: None,
        headers: &h,
    };
    match t.select("default", "echo", 80, &req) {
        Selection::Matched { rule, .. } => assert!(rule.filters.is_empty(), "{:?}", rule.filters),
        other => panic!("{other:?}"),
    }
    let t = table(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{kind: Service, name: echo}]\n  rules:\n  - {filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}}}], backendRefs: [{name: s, port: 9090}]}\n",
    );
    assert_eq!(get(&t, "/"), "NoRoutes");
}

#[test]
fn grpc_route_rejects_http_only_filters() {
    let t = table(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{kind: Service, name: echo}]\n  rules:\n  - {filters: [{type: URLRewrite, urlRewrite: {hostname: x}}], backendRefs: [{name: s, port: 9090}]}\n",
    );
    assert_eq!(get(&t, "/"), "NoRoutes");
}

#[test]
fn zero_weight_rule_still_matches_and_picks_nothing() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &["{backendRefs: [{name: echo, port: 80, weight: 0}]}", "{}"],
    ));
    let h = HeaderMap::new();
    let req = RequestInfo {
        method: &Method::GET,
        path: "/",
        query: None,
        headers: &h,
    };
    match t.select("default", "echo", 80, &req) {
        Selection::Matched {
            rule, rule_index, ..
        } => {
            assert_eq!(rule_index, 0);
            assert!(
                pick_backend(&rule.backends, 3).is_none(),
                "caller answers 500"
            );
        }
        other => panic!("{other:?}"),
    }
}

// ---- backends ----

fn backend(name: &str, weight: u32) -> Backend {
    Backend {
        group: String::new(),
        kind: "Service".into(),
        namespace: "default".into(),
        name: name.into(),
        port: Some(80),
        weight,
        filters: vec![],
    }
}

#[test]
fn weighted_pick_is_exact_over_evenly_spread_values() {
    let bs = [backend("v1", 90), backend("off", 0), backend("v2", 10)];
    let mut counts = HashMap::new();
    for r in 0..1000u64 {
        *counts
            .entry(pick_backend(&bs, r).expect("picked").name.clone())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.get("v1"), Some(&900));
    assert_eq!(counts.get("v2"), Some(&100));
    assert_eq!(counts.get("off"), None, "weight 0 never chosen");
    assert_eq!(
        pick_backend(&bs, 12345).map(|b| &b.name),
        pick_backend(&bs, 12345).map(|b| &b.name)
    );
    assert_eq!(
        pick_backend(&bs, u64::MAX).map(|b| b.name.as_str()),
        Some("v1")
    );
}

#[test]
fn all_zero_or_no_backends_pick_none() {
    assert!(pick_backend(&[backend("a", 0), backend("b", 0)], 5).is_none());
    assert!(pick_backend(&[], 5).is_none());
    assert_eq!(
        pick_backend(&[backend("a", 0), backend("b", 1)], 99).map(|b| b.name.as_str()),
        Some("b")
    );
}

// ---- filters ----

fn hm(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderModifier {
    HeaderModifier::parse(set, add, remove).expect("valid modifier")
}

#[test]
fn header_modifier_set_add_remove() {
    let m = hm(&[("X-Set", "new")], &[("X-Add", "two")], &["X-Remove"]);
    let mut h = headers(&[
        ("x-set", "old"),
        ("x-set", "older"),
        ("x-add", "one"),
        ("x-remove", "gone"),
        ("keep", "k"),
    ]);
    assert_eq!(apply_headers(&m, &mut h), None);
    let all = |h: &HeaderMap, n: &str| {
        h.get_all(n)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(all(&h, "x-set"), ["new"]);
    assert_eq!(all(&h, "x-add"), ["one", "two"]);
    assert!(h.get("x-remove").is_none());
    assert_eq!(all(&h, "keep"), ["k"]);
    // set and add of absent headers add them.
    let mut h = HeaderMap::new();
    apply_headers(&m, &mut h);
    assert_eq!(
        (all(&h, "x-set"), all(&h, "x-add")),
        (vec!["new".to_string()], vec!["two".to_string()])
    );
    // remove runs first: a header both removed and set ends up set.
    let m = hm(&[("x", "set")], &[], &["x"]);
    let mut h = headers(&[("x", "old")]);
    apply_headers(&m, &mut h);
    assert_eq!(all(&h, "x"), ["set"]);
}

#[test]
fn header_modifier_normalizes_like_istio() {
    let m = hm(
        &[("X-A", "first"), ("x-a", "second"), (":path", "/evil")],
        &[("B", "1"), ("b", "2")],
        &["C", "c", "host", ":authority"],
    );
    assert_eq!(
        m.set,
        vec![(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("first")
        )]
    );
    assert_eq!(
        m.add,
        vec![(HeaderName::from_static("b"), HeaderValue::from_static("1"))]
    );
    assert_eq!(m.remove, vec![HeaderName::from_static("c")]);
    assert_eq!(m.host, None);
    let m = hm(&[("Host", "set.example")], &[("host", "add.example")], &[]);
    assert_eq!(m.host.as_deref(), Some("set.example"), "set beats add");
    assert!(m.set.is_empty() && m.add.is_empty(), "host is not a header");
    let mut h = HeaderMap::new();
    assert_eq!(apply_headers(&m, &mut h), Some("set.example"));
    let m = hm(&[], &[(":authority", "a.example")], &[]);
    assert_eq!(m.host.as_deref(), Some("a.example"));
    assert_eq!(
        HeaderModifier::parse(&[("x", "a\nb")], &[], &[]),
        Err(HeaderModifierError::InvalidValue("x".into()))
    );
    assert!(HeaderModifier::parse(&[("x", "tab\tok")], &[], &[]).is_ok());
    assert_eq!(
        HeaderModifier::parse(&[("bad name", "v")], &[], &[]),
        Err(HeaderModifierError::InvalidName("bad name".into()))
    );
}

fn rreq<'a>(path: &'a str, query: Option<&'a str>, port: Option<u16>) -> RedirectRequest<'a> {
    RedirectRequest {
        scheme: "http",
        host: "echo.default.svc.cluster.local",
        port,
        path,
        query,
    }
}

#[test]
fn redirect_defaults_to_302_and_the_request_port() {
    let r = Redirect {
        hostname: Some("example.org".into()),
        ..Redirect::default()
    };
    assert_eq!(
        redirect_location(&r, &rreq("/a", Some("x=1"), Some(8080)), None),
        (
            StatusCode::FOUND,
            "http://example.org:8080/a?x=1".to_string()
        )
    );
    assert_eq!(
        redirect_location(&r, &rreq("/a", None, Some(80)), None).1,
        "http://example.org/a",
        "80 omitted for http"
    );
    let r = Redirect::default();
    assert_eq!(
        redirect_location(&r, &rreq("/a", None, None), None).1,
        "http://echo.default.svc.cluster.local/a"
    );
}

#[test]
fn redirect_scheme_port_and_status() {
    let https = Redirect {
        scheme: Some("https".into()),
        ..Redirect::default()
    };
    assert_eq!(
        redirect_location(&https, &rreq("/a", None, Some(8080)), None).1,
        "https://echo.default.svc.cluster.local/a",
        "scheme set → its default port, omitted"
    );
    let r = Redirect {
        scheme: Some("https".into()),
        port: Some(8443),
        status_code: Some(301),
        ..Redirect::default()
    };
    assert_eq!(
        redirect_location(&r, &rreq("/a", None, Some(80)), None),
        (
            StatusCode::MOVED_PERMANENTLY,
            "https://echo.default.svc.cluster.local:8443/a".to_string()
        )
    );
    let r = Redirect {
        scheme: Some("https".into()),
        port: Some(443),
        ..Redirect::default()
    };
    assert_eq!(
        redirect_location(&r, &rreq("/", None, Some(80)), None).1,
        "https://echo.default.svc.cluster.local/"
    );
    let r = Redirect {
        port: Some(80),
        ..Redirect::default()
    };
    assert_eq!(
        redirect_location(&r, &rreq("/", None, Some(8080)), None).1,
        "http://echo.default.svc.cluster.local/"
    );
    let r = Redirect {
        scheme: Some("http".into()),
        port: Some(443),
        ..Redirect::default()
    };
    assert_eq!(
        redirect_location(&r, &rreq("/", None, None), None).1,
        "http://echo.default.svc.cluster.local:443/"
    );
    for code in [303, 307, 308] {
        let r = Redirect {
            status_code: Some(code),
            ..Redirect::default()
        };
        assert_eq!(
            redirect_location(&r, &rreq("/", None, None), None)
                .0
                .as_u16(),
            code
        );
    }
}

#[test]
fn redirect_paths() {
    let prefix = |rep: &str| Redirect {
        path: Some(PathModifier::ReplacePrefixMatch(rep.into())),
        ..Redirect::default()
    };
    let loc = |r: &Redirect, path: &str, q: Option<&str>, m: Option<&str>| {
        redirect_location(r, &rreq(path, q, None), m).1
    };
    let host = "http://echo.default.svc.cluster.local";
    assert_eq!(
        loc(
            &prefix("/replacement-prefix"),
            "/original-prefix/lemon",
            None,
            Some("/original-prefix")
        ),
        format!("{host}/replacement-prefix/lemon")
    );
    assert_eq!(
        loc(
            &prefix("/replacement-prefix"),
            "/path-and-host",
            None,
            Some("/path-and-host")
        ),
        format!("{host}/replacement-prefix")
    );
    assert_eq!(
        loc(&prefix("/new"), "/old/x", Some("a=b"), Some("/old")),
        format!("{host}/new/x?a=b"),
        "query kept"
    );
    let full = Redirect {
        path: Some(PathModifier::ReplaceFullPath(
            "/full-path-replacement".into(),
        )),
        ..Redirect::default()
    };
    assert_eq!(
        loc(&full, "/full/path/original", Some("a=b"), Some("/full")),
        format!("{host}/full-path-replacement?a=b")
    );
    let full_q = Redirect {
        path: Some(PathModifier::ReplaceFullPath("/x?own=1".into())),
        ..Redirect::default()
    };
    assert_eq!(
        loc(&full_q, "/y", Some("a=b"), None),
        format!("{host}/x?own=1"),
        "its own query wins"
    );
}

#[test]
fn rewrite_follows_the_http_path_modifier_table() {
    // (request path, prefix match, replace prefix, modified path) — the spec's table.
    let table = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        // Conformance (httproute-rewrite-path) and the root prefix.
        ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
        ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
        ("/strip-prefix", "/strip-prefix", "/", "/"),
        ("/anything", "/", "/api", "/api/anything"),
        ("/anything", "/", "/", "/anything"),
    ];
    for (path, prefix, rep, want) in table {
        let u = UrlRewrite {
            hostname: None,
            path: Some(PathModifier::ReplacePrefixMatch(rep.into())),
        };
        assert_eq!(
            rewrite(&u, path, Some(prefix)),
            (None, want.to_string()),
            "{path} {prefix} {rep:?}"
        );
    }
    let u = UrlRewrite {
        hostname: Some("new.example".into()),
        path: Some(PathModifier::ReplaceFullPath("/one".into())),
    };
    assert_eq!(
        rewrite(&u, "/full/one/two", Some("/full/one")),
        (Some("new.example".into()), "/one".into())
    );
    let u = UrlRewrite {
        hostname: Some("h".into()),
        path: None,
    };
    assert_eq!(
        rewrite(&u, "/keep", None),
        (Some("h".into()), "/keep".into())
    );
}

#[test]
fn mirror_percent() {
    let hits = |p: f64| {
        (0..1_000_000u64)
            .step_by(7)
            .filter(|&r| mirror_hit(p, r))
            .count()
    };
    let total = (0..1_000_000u64).step_by(7).count();
    assert_eq!(hits(100.0), total);
    assert_eq!(hits(0.0), 0);
    let half = hits(50.0) as f64 / total as f64;
    assert!((half - 0.5).abs() < 0.001, "{half}");
    assert!(mirror_hit(25.0, 249_999) && !mirror_hit(25.0, 250_000));
}

// ---- retries and timeouts ----

fn rule_with(retry: Option<Retry>, request: Option<u64>, backend: Option<u64>) -> Rule {
    Rule {
        retry,
        timeouts: Timeouts {
            request: request.map(Duration::from_millis),
            backend_request: backend.map(Duration::from_millis),
        },
        ..Rule::default()
    }
}

#[test]
fn default_retry_is_istios_mesh_default() {
    for p in [retry_policy(None), retry_policy(Some(&Rule::default()))] {
        assert_eq!(p.attempts, 2);
        assert!(p.on_connect_failure && p.on_refused_stream && p.on_unavailable && p.on_cancelled);
        assert!(p.codes.is_empty());
        assert_eq!(
            (p.backoff, p.max_backoff),
            (Duration::from_millis(25), Duration::from_millis(250))
        );
        assert!(p.avoid_previous_hosts);
    }
}

#[test]
fn retry_stanza_maps_attempts_codes_backoff() {
    let r = rule_with(
        Some(Retry {
            attempts: Some(5),
            codes: vec![503, 504],
            backoff: Some(Duration::from_millis(100)),
        }),
        None,
        None,
    );
    let p = retry_policy(Some(&r));
    assert_eq!(p.attempts, 5);
    assert_eq!(p.codes, [503, 504]);
    assert!(p.on_connect_failure && p.on_refused_stream && p.on_unavailable && p.on_cancelled);
    assert_eq!(
        (p.backoff, p.max_backoff),
        (Duration::from_millis(100), Duration::from_secs(1))
    );
    let p = retry_policy(Some(&rule_with(Some(Retry::default()), None, None)));
    assert_eq!(
        (p.attempts, p.backoff),
        (2, Duration::from_millis(25)),
        "attempts default 2"
    );
    let p = retry_policy(Some(&rule_with(
        Some(Retry {
            attempts: Some(0),
            codes: vec![503],
            backoff: None,
        }),
        None,
        None,
    )));
    assert_eq!(p, RetryPolicy::off());
    assert!(!p.on_connect_failure && p.codes.is_empty());
}

#[test]
fn tries_count_the_first_and_every_retry_without_overflow() {
    assert_eq!(retry_policy(None).tries(), 3);
    assert_eq!(RetryPolicy::off().tries(), 1);
    // `attempts` is the route's (any u32): the request loop must not overflow on it.
    let p = retry_policy(Some(&rule_with(
        Some(Retry {
            attempts: Some(u32::MAX),
            codes: vec![],
            backoff: None,
        }),
        None,
        None,
    )));
    assert_eq!(p.tries(), u32::MAX);
}

#[test]
fn timeouts_map_request_and_backend_request() {
    let ms = |v| Some(Duration::from_millis(v));
    assert_eq!(timeouts(None), (None, None), "no default timeout");
    assert_eq!(timeouts(Some(&rule_with(None, None, None))), (None, None));
    assert_eq!(
        timeouts(Some(&rule_with(None, Some(10_000), None))),
        (ms(10_000), None)
    );
    assert_eq!(
        timeouts(Some(&rule_with(None, Some(10_000), Some(2_000)))),
        (ms(2_000), None),
        "no retry stanza: backendRequest replaces"
    );
    assert_eq!(
        timeouts(Some(&rule_with(
            Some(Retry::default()),
            Some(10_000),
            Some(2_000)
        ))),
        (ms(10_000), ms(2_000)),
        "retry stanza: per try"
    );
    assert_eq!(
        timeouts(Some(&rule_with(Some(Retry::default()), None, Some(2_000)))),
        (None, ms(2_000))
    );
    assert_eq!(
        timeouts(Some(&rule_with(None, Some(0), Some(0)))),
        (None, None),
        "0s disables"
    );
    assert_eq!(
        timeouts(Some(&rule_with(None, Some(5_000), Some(0)))),
        (ms(5_000), None)
    );
}

// ---- status ----

fn services(ns: &str, name: &str) -> Option<Vec<u16>> {
    match (ns, name) {
        ("default", "echo") => Some(vec![80, 8080]),
        ("default", "echo-v1") => Some(vec![80]),
        _ => None,
    }
}

fn conds(s: &RouteParentStatus) -> Vec<(String, String, String)> {
    s.conditions
        .iter()
        .map(|c| (c.kind.to_string(), c.status.to_string(), c.reason.clone()))
        .collect()
}

fn c(kind: &str, status: &str, reason: &str) -> (String, String, String) {
    (kind.into(), status.into(), reason.into())
}

#[test]
fn status_valid_route_and_json_shape() {
    let rs = routes(&http(
        "default",
        "ok",
        None,
        Some(80),
        &["{backendRefs: [{name: echo-v1, port: 80}]}"],
    ));
    let t = RouteTable::build(&rs, WP_NS);
    let st = t.status(&rs, &services);
    assert_eq!(st.len(), 1);
    assert_eq!(
        conds(&st[0].parents[0]),
        [
            c("Accepted", "True", "Accepted"),
            c("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(st[0].parents[0].conditions[0].message, "Route was valid");
    let json = serde_json::to_value(&st[0]).expect("serializes");
    assert_eq!(json["kind"], "HTTPRoute");
    assert_eq!(json["parents"][0]["parentRef"]["kind"], "Service");
    assert_eq!(json["parents"][0]["parentRef"]["group"], "");
    assert_eq!(json["parents"][0]["parentRef"]["port"], 80);
    assert_eq!(json["parents"][0]["controllerName"], CONTROLLER_NAME);
    assert_eq!(json["parents"][0]["conditions"][1]["type"], "ResolvedRefs");
    assert_eq!(json["parents"][0]["conditions"][1]["status"], "True");
}

#[test]
fn status_parent_problems() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: consumer}\nspec:\n  parentRefs:\n  - {kind: Service, name: x}\n  - {kind: Service, name: echo, namespace: default}\n  - {name: some-gateway}\n  rules: [{backendRefs: [{name: echo, namespace: default, port: 80}]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: p}\nspec:\n  parentRefs: [{kind: Service, name: echo, port: 81}]\n";
    let rs = routes(yaml);
    let st = RouteTable::build(&rs, WP_NS).status(&rs, &services);
    assert_eq!(st[0].parents.len(), 2, "the Gateway parent is not ours");
    let missing = &st[0].parents[0].conditions[0];
    assert_eq!(
        (missing.status, missing.reason.as_str()),
        ("False", "NoMatchingParent")
    );
    assert_eq!(missing.message, "parent service: \"x\" not found");
    let consumer = &st[0].parents[1].conditions[0];
    assert_eq!(
        (consumer.status, consumer.reason.as_str()),
        ("False", "NotAllowedByListeners")
    );
    assert!(
        consumer.message.contains("only honours routes"),
        "{}",
        consumer.message
    );
    let port = &st[1].parents[0].conditions[0];
    assert_eq!(
        (port.status, port.reason.as_str()),
        ("False", "NoMatchingParent")
    );
    assert!(
        port.message.contains("port 81 not found"),
        "{}",
        port.message
    );
}

#[test]
fn status_resolved_refs_reasons() {
    let cases = [
        (
            "{filters: [{type: ExtensionRef, extensionRef: {group: g, kind: K, name: n}}], backendRefs: [{name: echo, port: 80}]}",
            "InvalidFilter",
            "unsupported filter type \"ExtensionRef\"",
        ),
        (
            "{backendRefs: [{name: missing, port: 80}]}",
            "BackendNotFound",
            "backend(default/missing) not found",
        ),
        (
            "{backendRefs: [{group: example.com, kind: Bucket, name: b, port: 80}]}",
            "InvalidKind",
            "referencing unsupported backendRef: group \"example.com\" kind \"Bucket\"",
        ),
        (
            "{backendRefs: [{name: echo}]}",
            "InvalidDestination",
            "port is required in backendRef",
        ),
        (
            "{backendRefs: [{name: echo.default.svc, port: 80}]}",
            "InvalidDestination",
            "service name invalid; the name of the Service must be used, not the hostname.",
        ),
        (
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nope, port: 80}}}], backendRefs: [{name: echo, port: 80}]}",
            "BackendNotFound",
            "backend(default/nope) not found",
        ),
        (
            "{backendRefs: [{name: echo, port: 80, filters: [{type: URLRewrite, urlRewrite: {hostname: h}}]}]}",
            "InvalidFilter",
            "unsupported filter type \"URLRewrite\"",
        ),
    ];
    for (rule, reason, message) in cases {
        let rs = routes(&http("default", "r", None, None, &[rule]));
        let st = RouteTable::build(&rs, WP_NS).status(&rs, &services);
        let parent = &st[0].parents[0];
        assert_eq!(
            conds(parent)[0],
            c("Accepted", "True", "Accepted"),
            "{rule}"
        );
        let rr = &parent.conditions[1];
        assert_eq!(
            (rr.status, rr.reason.as_str(), rr.message.as_str()),
            ("False", reason, message),
            "{rule}"
        );
    }
    // Weight 0 backends are not checked (Istio skips them).
    let rs = routes(&http(
        "default",
        "r",
        None,
        None,
        &["{backendRefs: [{name: missing, port: 80, weight: 0}]}"],
    ));
    let st = RouteTable::build(&rs, WP_NS).status(&rs, &services);
    assert_eq!(st[0].parents[0].conditions[1].status, "True");
}

#[test]
fn attached_lists_rules_in_precedence_order() {
    let t = table(&http(
        "default",
        "r",
        None,
        None,
        &[
            &format!("{{matches: [{{path: {{value: /a}}}}], {B}}}"),
            &format!(
                "{{name: exact, matches: [{{path: {{type: Exact, value: /a}}, method: GET}}], {B}}}"
            ),
        ],
    ));
    let a = t.attached();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].namespace.as_str(), a[0].name.as_str(), a[0].port),
        ("default", "echo", None)
    );
    assert_eq!(a[0].rules[0].route, "HTTPRoute default/r");
    assert_eq!(a[0].rules[0].rule_name.as_deref(), Some("exact"));
    assert_eq!(
        a[0].rules[0].condition,
        "Exact /a, method GET, 0 header(s), 0 query param(s)"
    );
    assert_eq!(
        a[0].rules[1].condition,
        "PathPrefix /a, 0 header(s), 0 query param(s)"
    );
    let json = serde_json::to_value(&a).expect("serializes");
    assert_eq!(json[0]["rules"][0]["match"], 0);
}

#[test]
fn timestamps_parse_and_order() {
    assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_timestamp("1970-01-01T00:00:01.5Z"),
        Some(1_500_000_000)
    );
    assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00"), Some(0));
    assert_eq!(
        parse_timestamp("2024-02-29T00:00:00Z"),
        Some(1_709_164_800 * 1_000_000_000)
    );
    assert!(parse_timestamp("2023-02-29T00:00:00Z").is_none());
    assert!(parse_timestamp("2024-01-01").is_none());
    assert!(parse_timestamp("2024-01-01T00:00:00").is_none());
    assert!(parse_timestamp("2024-13-01T00:00:00Z").is_none());
    assert!(parse_timestamp("2024-01-01T00:00:00.Z").is_none());
    assert!(parse_timestamp("2024-01-01T00:00:05Z") > parse_timestamp("2024-01-01T00:00:04.9Z"));
}
