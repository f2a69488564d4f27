//! Loading cases: CRD defaults, the field-path errors users see, multi-document files,
//! directories, duplicates, GRPCRoute conversion and the port protocol rule.

use std::time::Duration;

use http::Method;

use super::k8s::parse_duration;
use super::*;
use crate::waypoint::routes::{
    Filter, PathMatch, PathModifier, Redirect, RouteKind, StringMatch, UrlRewrite,
};

const SEED: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
"#;

fn err(text: &str) -> String {
    match parse("routes.yaml", text) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn route(text: &str) -> Route {
    let r = parse("routes.yaml", text).expect("parses");
    assert_eq!(r.routes.len(), 1, "{r:?}");
    r.routes.into_iter().next().expect("one route")
}

fn http_route_with_rule(rule: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: echo}}\n\
         spec:\n  parentRefs: [{{kind: Service, name: echo}}]\n  rules:\n  - {rule}\n"
    )
}

#[test]
fn seed_example_loads_with_crd_defaults() {
    let r = route(SEED);
    assert_eq!(r.kind, RouteKind::Http);
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("default", "echo"));
    assert_eq!(r.origin, "routes.yaml#1");
    assert_eq!(r.parents.len(), 1);
    let p = &r.parents[0];
    assert!(p.is_service());
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str(), p.port),
        ("default", "echo", None)
    );
    let rule = &r.rules[0];
    // matches absent → the CRD default: one PathPrefix / match.
    assert_eq!(rule.matches.len(), 1);
    assert_eq!(rule.matches[0].path, Some(PathMatch::Prefix("/".into())));
    let b = &rule.backends[0];
    assert_eq!(
        (b.name.as_str(), b.namespace.as_str(), b.port, b.weight),
        ("echo-v1", "default", Some(80), 1)
    );
    assert!(b.is_service());
    assert!(rule.retry.is_none());
}

#[test]
fn service_parent_without_group_is_core_service_and_gateway_default_is_not() {
    let r = route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a, namespace: ns}\n\
         spec:\n  parentRefs: [{kind: Service, name: s, port: 8080}, {name: gw}]\n",
    );
    assert!(r.parents[0].is_service());
    assert_eq!(r.parents[0].port, Some(8080));
    assert_eq!(r.parents[0].namespace, "ns");
    assert_eq!(r.parents[1].kind, "Gateway");
    assert_eq!(r.parents[1].group, "gateway.networking.k8s.io");
    assert!(!r.parents[1].is_service());
    // rules absent → the CRD default rule (PathPrefix /, no backends).
    assert_eq!(r.rules.len(), 1);
    assert!(r.rules[0].backends.is_empty());
}

#[test]
fn multi_document_file_with_service_route_and_ignored_kinds() {
    let text = format!(
        "---\n# only a comment\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: default}}\n\
         spec:\n  selector: {{app: echo}}\n  clusterIP: 10.0.0.1\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n\
         \x20 - {{name: grpc-api, port: 9090, targetPort: grpc}}\n  - {{port: 3306}}\n  - {{port: 7000, appProtocol: kubernetes.io/h2c}}\n\
         ---\n{SEED}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: istio-system}}\nspec: {{}}\n\
         ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny}}\n"
    );
    let r = parse("mesh.yaml", &text).expect("parses");
    assert_eq!(r.services.len(), 1);
    assert_eq!(r.routes.len(), 1);
    assert_eq!(r.routes[0].origin, "mesh.yaml#3");
    assert_eq!(
        r.ignored,
        vec![
            "mesh.yaml: Gateway istio-system/waypoint".to_string(),
            "mesh.yaml: AuthorizationPolicy default/deny".to_string()
        ]
    );
    let svc = r.service("default", "echo").expect("service");
    assert_eq!(svc.ports[0].target_port, Some(TargetPort::Number(8080)));
    assert_eq!(
        svc.ports[1].target_port,
        Some(TargetPort::Name("grpc".into()))
    );
    assert_eq!(
        r.port_protocol("default", "echo", 80),
        Some(PortProtocol::Http1)
    );
    assert_eq!(
        r.port_protocol("default", "echo", 9090),
        Some(PortProtocol::Grpc)
    );
    assert_eq!(
        r.port_protocol("default", "echo", 3306),
        Some(PortProtocol::Tcp)
    );
    assert_eq!(
        r.port_protocol("default", "echo", 7000),
        Some(PortProtocol::Http2)
    );
    assert_eq!(r.port_protocol("default", "echo", 81), None);
    assert_eq!(r.port_protocol("default", "nope", 80), None);
    assert_eq!(
        r.service_ports("default", "echo"),
        Some(vec![80, 9090, 3306, 7000])
    );
    assert_eq!(r.service_ports("other", "echo"), None);
}

#[test]
fn list_items_are_loaded() {
    let text = "apiVersion: v1\nkind: List\nitems:\n\
        - {apiVersion: v1, kind: Service, metadata: {name: a, namespace: x}, spec: {ports: [{port: 80}]}}\n\
        - {apiVersion: gateway.networking.k8s.io/v1beta1, kind: HTTPRoute, metadata: {name: r, namespace: x}, spec: {parentRefs: [{kind: Service, name: a}]}}\n\
        - {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n";
    let r = parse("list.yaml", text).expect("parses");
    assert_eq!(r.services[0].name, "a");
    assert_eq!(r.routes[0].origin, "list.yaml#1 items[1]");
    assert_eq!(
        r.ignored,
        vec!["list.yaml: ConfigMap default/c".to_string()]
    );
}

#[test]
fn duplicate_inside_a_list_is_rejected() {
    let item = "- {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {}}\n";
    let e = err(&format!("apiVersion: v1\nkind: List\nitems:\n{item}{item}"));
    assert!(e.contains("Service default/a is defined twice, in routes.yaml#1 items[0] and in routes.yaml#1 items[1]"), "{e}");
}

#[test]
fn json_document_parses() {
    let text = r#"{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"j","namespace":"n"},
        "spec":{"parentRefs":[{"group":"","kind":"Service","name":"s"}],"rules":[{"backendRefs":[{"name":"s","port":80,"weight":3}]}]}}"#;
    let r = route(text);
    assert_eq!(r.rules[0].backends[0].weight, 3);
}

#[test]
fn unknown_path_match_type_names_file_document_resource_field_and_choices() {
    let text = format!(
        "{SEED}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: echo2}}\nspec:\n  rules:\n  - matches:\n    - path: {{type: Exact, value: /a}}\n    - path: {{type: Foo, value: /b}}\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("routes.yaml: document 2: HTTPRoute default/echo2: "),
        "{e}"
    );
    assert!(e.contains("spec.rules[0].matches[1].path.type"), "{e}");
    assert!(
        e.contains("Foo") && e.contains("PathPrefix") && e.contains("RegularExpression"),
        "{e}"
    );
    assert!(
        !e.contains(" at line "),
        "line numbers of the re-serialized copy must not leak: {e}"
    );
}

#[test]
fn negative_weight_is_rejected_with_range() {
    let e = err(&http_route_with_rule(
        "backendRefs: [{name: a, port: 80}, {name: b, port: 80, weight: -1}]",
    ));
    assert!(e.contains("HTTPRoute default/echo"), "{e}");
    assert!(e.contains("spec.rules[0].backendRefs[1].weight"), "{e}");
    assert!(e.contains("0-1000000"), "{e}");
}

#[test]
fn bad_duration_is_rejected_with_pattern() {
    let e = err(&http_route_with_rule("timeouts: {request: 10}"));
    assert!(e.contains("spec.rules[0].timeouts.request"), "{e}");
    let e = err(&http_route_with_rule("timeouts: {request: 1d}"));
    assert!(
        e.contains("spec.rules[0].timeouts.request") && e.contains("not a Gateway API duration"),
        "{e}"
    );
    let e = err(&http_route_with_rule("timeouts: {request: 1h1m1s1ms1h}"));
    assert!(e.contains("not a Gateway API duration"), "five groups: {e}");
    let e = err(&http_route_with_rule("timeouts: {request: 123456s}"));
    assert!(e.contains("not a Gateway API duration"), "six digits: {e}");
}

#[test]
fn durations_and_retry_convert() {
    let r = route(&http_route_with_rule(
        "timeouts: {request: 1h30m, backendRequest: 500ms}\n    retry: {attempts: 3, codes: [503, 504], backoff: 100ms}",
    ));
    let rule = &r.rules[0];
    assert_eq!(rule.timeouts.request, Some(Duration::from_secs(5400)));
    assert_eq!(
        rule.timeouts.backend_request,
        Some(Duration::from_millis(500))
    );
    let retry = rule.retry.as_ref().expect("retry");
    assert_eq!(retry.attempts, Some(3));
    assert_eq!(retry.codes, vec![503, 504]);
    assert_eq!(retry.backoff, Some(Duration::from_millis(100)));
    let r = route(&http_route_with_rule("timeouts: {request: 0s}"));
    assert_eq!(r.rules[0].timeouts.request, Some(Duration::ZERO));
}

#[test]
fn backend_request_longer_than_request_is_rejected() {
    let e = err(&http_route_with_rule(
        "timeouts: {request: 1s, backendRequest: 2s}",
    ));
    assert!(
        e.contains("spec.rules[0].timeouts: backendRequest timeout cannot be longer"),
        "{e}"
    );
    // request 0s = no timeout: any backendRequest is fine.
    route(&http_route_with_rule(
        "timeouts: {request: 0s, backendRequest: 2s}",
    ));
}

#[test]
fn retry_code_out_of_range_is_rejected() {
    let e = err(&http_route_with_rule("retry: {codes: [200]}"));
    assert!(
        e.contains("spec.rules[0].retry.codes[0]") && e.contains("400-599"),
        "{e}"
    );
}

#[test]
fn misspelled_field_is_rejected() {
    let e = err(&http_route_with_rule("backendRef: [{name: a, port: 80}]"));
    assert!(
        e.contains("spec.rules[0]") && e.contains("unknown field `backendRef`"),
        "{e}"
    );
}

#[test]
fn wrong_type_is_rejected() {
    let e = err(&http_route_with_rule(
        "backendRefs: [{name: a, port: eighty}]",
    ));
    assert!(e.contains("spec.rules[0].backendRefs[0].port"), "{e}");
    let e = err(&http_route_with_rule(
        "backendRefs: [{name: a, port: 70000}]",
    ));
    assert!(
        e.contains("spec.rules[0].backendRefs[0].port") && e.contains("1-65535"),
        "{e}"
    );
}

#[test]
fn invalid_yaml_names_file_and_document() {
    let text = format!("{SEED}---\nkind: [unclosed\n");
    match parse("bad.yaml", &text) {
        Err(ResourceError::Syntax { file, doc, .. }) => {
            assert_eq!((file.as_str(), doc), ("bad.yaml", 2))
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn document_without_kind_is_rejected() {
    let e = err("apiVersion: v1\nmetadata: {name: x}\n");
    assert!(
        e.contains("routes.yaml: document 1") && e.contains("apiVersion and kind"),
        "{e}"
    );
}

#[test]
fn invalid_regex_names_field() {
    let e = err(&http_route_with_rule(
        "matches: [{path: {type: RegularExpression, value: '/(a'}}]",
    ));
    assert!(
        e.contains("spec.rules[0].matches[0].path.value: invalid regular expression"),
        "{e}"
    );
    let e = err(&http_route_with_rule(
        "matches: [{headers: [{type: RegularExpression, name: x, value: '[z'}]}]",
    ));
    assert!(
        e.contains("spec.rules[0].matches[0].headers[0].value"),
        "{e}"
    );
}

#[test]
fn path_value_must_be_clean_absolute_path() {
    let e = err(&http_route_with_rule(
        "matches: [{path: {type: Exact, value: foo}}]",
    ));
    assert!(
        e.contains("spec.rules[0].matches[0].path.value") && e.contains("absolute path"),
        "{e}"
    );
    let e = err(&http_route_with_rule("matches: [{path: {value: /a//b}}]"));
    assert!(e.contains("must not contain \"//\""), "{e}");
}

#[test]
fn prefix_trailing_slash_trimmed_and_duplicate_headers_first_wins() {
    let r = route(&http_route_with_rule(
        "matches:\n    - path: {value: /foo/}\n      headers: [{name: X-A, value: one}, {name: x-a, value: two}, {name: b, value: c}]\n      queryParams: [{name: q, value: '1'}, {name: q, value: '2'}]\n      method: GET",
    ));
    let m = &r.rules[0].matches[0];
    assert_eq!(m.path, Some(PathMatch::Prefix("/foo".into())));
    assert_eq!(m.headers.len(), 2);
    assert_eq!(m.headers[0].name.as_str(), "x-a");
    assert_eq!(m.headers[0].value, StringMatch::Exact("one".into()));
    assert_eq!(m.query.len(), 1);
    assert_eq!(m.query[0].value, StringMatch::Exact("1".into()));
    assert_eq!(m.method, Some(Method::GET));
    // A match without path gets the CRD default.
    let r = route(&http_route_with_rule("matches: [{method: POST}]"));
    assert_eq!(
        r.rules[0].matches[0].path,
        Some(PathMatch::Prefix("/".into()))
    );
    // An explicit empty list stays empty (ranks below an explicit PathPrefix /).
    let r = route(&http_route_with_rule("matches: []"));
    assert!(r.rules[0].matches.is_empty());
}

#[test]
fn unknown_method_is_rejected() {
    let e = err(&http_route_with_rule("matches: [{method: FETCH}]"));
    assert!(
        e.contains("spec.rules[0].matches[0].method") && e.contains("GET"),
        "{e}"
    );
}

#[test]
fn unsupported_filters_are_kept_as_invalid_not_load_errors() {
    let r = route(&http_route_with_rule(
        "filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: Y, name: z}}]\n    backendRefs: [{name: a, port: 80}]",
    ));
    match &r.rules[0].filters[0] {
        Filter::Invalid {
            filter_type,
            message,
        } => {
            assert_eq!(filter_type, "ExtensionRef");
            assert_eq!(message, "unsupported filter type \"ExtensionRef\"");
        }
        other => panic!("{other:?}"),
    }
    let r = route(&http_route_with_rule(
        "filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: \"a\\u0001b\"}]}}]",
    ));
    assert!(
        matches!(&r.rules[0].filters[0], Filter::Invalid { message, .. } if message.contains("invalid characters")),
        "{:?}",
        r.rules[0].filters
    );
}

#[test]
fn filter_body_must_match_type() {
    let e = err(&http_route_with_rule(
        "filters: [{type: RequestHeaderModifier}]",
    ));
    assert!(
        e.contains("spec.rules[0].filters[0].requestHeaderModifier: must be set"),
        "{e}"
    );
    let e = err(&http_route_with_rule(
        "filters: [{type: URLRewrite, requestRedirect: {hostname: a.b}}]",
    ));
    assert!(
        e.contains("spec.rules[0].filters[0].requestRedirect: must not be set"),
        "{e}"
    );
}

#[test]
fn rule_level_cel_rules() {
    let e = err(&http_route_with_rule(
        "filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n    backendRefs: [{name: a, port: 80}]",
    ));
    assert!(
        e.contains("RequestRedirect filter must not be used together with backendRefs"),
        "{e}"
    );
    let e = err(&http_route_with_rule(
        "matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
    ));
    assert!(e.contains("exactly one PathPrefix match"), "{e}");
    let e = err(&http_route_with_rule(
        "filters: [{type: URLRewrite, urlRewrite: {hostname: a}}, {type: URLRewrite, urlRewrite: {hostname: b}}]",
    ));
    assert!(e.contains("URLRewrite filter cannot be repeated"), "{e}");
    let e = err(&http_route_with_rule(
        "filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replacePrefixMatch: /x}}}]",
    ));
    assert!(
        e.contains("filters[0].urlRewrite.path") && e.contains("needs replaceFullPath"),
        "{e}"
    );
    // A rule without matches defaults to one PathPrefix /, so ReplacePrefixMatch is fine.
    let r = route(&http_route_with_rule(
        "filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
    ));
    assert_eq!(
        r.rules[0].filters[0],
        Filter::UrlRewrite(UrlRewrite {
            hostname: None,
            path: Some(PathModifier::ReplacePrefixMatch("/b".into()))
        })
    );
}

#[test]
fn redirect_fields_convert_and_validate() {
    let r = route(&http_route_with_rule(
        "filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org, port: 8443, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /x}}}]",
    ));
    assert_eq!(
        r.rules[0].filters[0],
        Filter::RequestRedirect(Redirect {
            scheme: Some("https".into()),
            hostname: Some("example.org".into()),
            path: Some(PathModifier::ReplaceFullPath("/x".into())),
            port: Some(8443),
            status_code: Some(301),
        })
    );
    let e = err(&http_route_with_rule(
        "filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]",
    ));
    assert!(
        e.contains("requestRedirect.statusCode") && e.contains("301, 302, 303, 307 or 308"),
        "{e}"
    );
    let e = err(&http_route_with_rule(
        "filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]",
    ));
    assert!(e.contains("requestRedirect.scheme"), "{e}");
    let e = err(&http_route_with_rule(
        "filters: [{type: RequestRedirect, requestRedirect: {hostname: Example.ORG}}]",
    ));
    assert!(
        e.contains("requestRedirect.hostname") && e.contains("not a hostname"),
        "{e}"
    );
}

#[test]
fn mirror_percent_and_fraction() {
    let r = route(&http_route_with_rule(
        "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, namespace: o, port: 80}, fraction: {numerator: 1, denominator: 4}}}]\n    backendRefs: [{name: a, port: 80}]",
    ));
    match &r.rules[0].filters[0] {
        Filter::RequestMirror(m) => {
            assert_eq!(m.percent, 25.0);
            assert_eq!(
                (
                    m.backend.namespace.as_str(),
                    m.backend.name.as_str(),
                    m.backend.port
                ),
                ("o", "m", Some(80))
            );
        }
        other => panic!("{other:?}"),
    }
    let r = route(&http_route_with_rule(
        "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}}}]",
    ));
    assert!(matches!(&r.rules[0].filters[0], Filter::RequestMirror(m) if m.percent == 100.0));
    let e = err(&http_route_with_rule(
        "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, percent: 10, fraction: {numerator: 1}}}]",
    ));
    assert!(e.contains("only one of percent or fraction"), "{e}");
    let e = err(&http_route_with_rule(
        "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, percent: 101}}]",
    ));
    assert!(
        e.contains("requestMirror.percent") && e.contains("0-100"),
        "{e}"
    );
}

#[test]
fn grpc_methods_become_paths() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: n}\nspec:\n  parentRefs: [{kind: Service, name: s}]\n  rules:\n  - matches:\n    - method: {service: pkg.Echo, method: Say}\n    - method: {service: pkg.Echo}\n    - method: {method: Say}\n    - method: {type: RegularExpression, service: 'pkg\\..*', method: 'S.*'}\n    - method: {type: RegularExpression, service: pkg.Echo}\n    - headers: [{name: X-Env, value: prod}]\n    backendRefs: [{name: s, port: 9090}]\n";
    let r = route(text);
    assert_eq!(r.kind, RouteKind::Grpc);
    let paths: Vec<String> = r.rules[0]
        .matches
        .iter()
        .map(|m| match &m.path {
            Some(PathMatch::Exact(p)) => format!("exact {p}"),
            Some(PathMatch::Prefix(p)) => format!("prefix {p}"),
            Some(PathMatch::Regex(p)) => format!("regex {}", p.as_str()),
            None => "none".into(),
        })
        .collect();
    assert_eq!(
        paths,
        [
            "exact /pkg.Echo/Say",
            "prefix /pkg.Echo/",
            "regex /[^/]+/Say",
            "regex /pkg\\..*/S.*",
            "regex /pkg.Echo/.+",
            "none"
        ]
    );
    assert_eq!(r.rules[0].matches[5].headers[0].name.as_str(), "x-env");
}

#[test]
fn grpc_method_match_is_validated() {
    let base = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules:\n  - matches:\n    - method: ";
    let e = err(&format!("{base}{{type: Exact}}\n"));
    assert!(
        e.contains("GRPCRoute default/g")
            && e.contains("spec.rules[0].matches[0].method: one or both"),
        "{e}"
    );
    let e = err(&format!("{base}{{service: 'a/b', method: X}}\n"));
    assert!(e.contains("spec.rules[0].matches[0].method.service"), "{e}");
}

#[test]
fn grpc_route_with_http_only_filter_is_kept_for_status() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n";
    let r = route(text);
    assert!(matches!(r.rules[0].filters[0], Filter::RequestRedirect(_)));
}

#[test]
fn creation_timestamp_is_validated() {
    let e = err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a, creationTimestamp: yesterday}\nspec: {}\n",
    );
    assert!(
        e.contains("metadata.creationTimestamp") && e.contains("RFC 3339"),
        "{e}"
    );
    let r = route(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a, creationTimestamp: '2024-05-01T12:00:00Z'}\nspec: {}\n",
    );
    assert_eq!(r.creation.as_deref(), Some("2024-05-01T12:00:00Z"));
}

#[test]
fn other_api_groups_of_taken_kinds_are_ignored() {
    let r = parse(
        "x.yaml",
        "apiVersion: example.com/v1\nkind: HTTPRoute\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Service\nmetadata: {name: b, namespace: n}\n",
    )
    .expect("parses");
    assert!(r.routes.is_empty() && r.services.is_empty());
    assert_eq!(
        r.ignored,
        vec![
            "x.yaml: HTTPRoute default/a".to_string(),
            "x.yaml: Service n/b".to_string()
        ]
    );
}

#[test]
fn duplicate_in_one_file_names_both_documents() {
    let e = err(&format!("{SEED}---\n{SEED}"));
    assert!(
        e.contains(
            "HTTPRoute default/echo is defined twice, in routes.yaml#1 and in routes.yaml#2"
        ),
        "{e}"
    );
}

#[test]
fn directory_loads_sorted_files_and_rejects_duplicates_across_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec: {ports: [{port: 80, name: http}]}\n";
    std::fs::write(dir.path().join("b-routes.yml"), SEED).expect("write");
    std::fs::write(
        dir.path().join("a-svc.json"),
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"other"},"spec":{}}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("a-svc.yaml"), svc).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/c.yaml"), SEED).expect("write");
    let r = load(dir.path()).expect("loads");
    assert_eq!(
        r.services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["other", "echo"]
    );
    assert_eq!(r.routes.len(), 1);
    assert!(
        r.routes[0].origin.ends_with("b-routes.yml#1"),
        "{}",
        r.routes[0].origin
    );
    assert_eq!(
        r.port_protocol("default", "echo", 80),
        Some(PortProtocol::Http1)
    );

    std::fs::write(dir.path().join("c-again.yaml"), SEED).expect("write");
    let e = load(dir.path()).expect_err("duplicate").to_string();
    assert!(e.contains("HTTPRoute default/echo is defined twice"), "{e}");
    assert!(
        e.contains("b-routes.yml#1") && e.contains("c-again.yaml#1"),
        "{e}"
    );

    let one = load(&dir.path().join("b-routes.yml")).expect("a single file loads");
    assert_eq!(one.routes.len(), 1);
    let missing = load(&dir.path().join("nope.yaml"))
        .expect_err("missing file")
        .to_string();
    assert!(
        missing.starts_with("cannot read ") && missing.contains("nope.yaml"),
        "{missing}"
    );
}

#[test]
fn port_protocol_follows_istio() {
    let cases: &[(Option<&str>, Option<&str>, u16, PortProtocol)] = &[
        (None, Some("http"), 80, PortProtocol::Http1),
        (None, Some("http-web"), 8080, PortProtocol::Http1),
        (None, Some("HTTP-upper"), 8080, PortProtocol::Http1),
        (None, Some("http_proxy"), 3128, PortProtocol::Http1),
        (None, Some("http2-api"), 8080, PortProtocol::Http2),
        (None, Some("grpc"), 9090, PortProtocol::Grpc),
        (None, Some("grpc-web"), 9090, PortProtocol::Grpc),
        (None, Some("grpc-web-x"), 9090, PortProtocol::Grpc),
        (None, Some("tcp-db"), 5432, PortProtocol::Tcp),
        (None, Some("tls"), 443, PortProtocol::Tcp),
        (None, Some("https"), 443, PortProtocol::Tcp),
        (None, Some("mongo"), 27017, PortProtocol::Tcp),
        (None, Some("redis"), 6379, PortProtocol::Tcp),
        (None, Some("mysql"), 3306, PortProtocol::Tcp),
        (None, None, 25, PortProtocol::Tcp),
        (None, None, 53, PortProtocol::Tcp),
        (None, None, 3306, PortProtocol::Tcp),
        (None, None, 27017, PortProtocol::Tcp),
        (None, Some("web"), 3306, PortProtocol::Tcp),
        (None, None, 8080, PortProtocol::Auto),
        (None, Some("web"), 8080, PortProtocol::Auto),
        (Some("http"), Some("tcp"), 80, PortProtocol::Http1),
        (Some("grpc"), Some("http"), 80, PortProtocol::Grpc),
        (
            Some("kubernetes.io/h2c"),
            Some("http"),
            80,
            PortProtocol::Http2,
        ),
        (Some("kubernetes.io/ws"), None, 80, PortProtocol::Http1),
        (Some("kubernetes.io/wss"), None, 443, PortProtocol::Tcp),
        (
            Some("example.com/custom"),
            Some("http"),
            80,
            PortProtocol::Auto,
        ),
    ];
    for (app, name, port, want) in cases {
        assert_eq!(
            port_protocol(*app, *name, *port),
            *want,
            "appProtocol {app:?} name {name:?} port {port}"
        );
    }
}

#[test]
fn parse_duration_units() {
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("2m3s"), Some(Duration::from_secs(123)));
    assert_eq!(parse_duration("1s500ms"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    assert_eq!(parse_duration(""), None);
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration("1.5s"), None);
    assert_eq!(parse_duration("-1s"), None);
}
