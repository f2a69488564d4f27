//! The policy matrix: each match kind, its `not` form, and the ALLOW/DENY combination rules.

use super::*;

fn conn(id: Option<&str>, src: &str, dst: &str) -> ConnFacts {
    ConnFacts {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        src_identity: id.map(|s| s.parse().unwrap()),
    }
}

fn pol(action: Action, m: Match) -> Authorization {
    Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: Scope::Namespace,
        action,
        rules: vec![vec![vec![m]]],
        dry_run: false,
    }
}

const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/web";

#[test]
fn no_policies_allow() {
    assert_eq!(
        evaluate([], &conn(None, "198.18.0.1:1000", "198.18.0.2:80")),
        Decision::Allow
    );
}

#[test]
fn each_match_kind_and_its_not_form() {
    let c = conn(Some(CLIENT), "198.18.0.1:1000", "198.18.0.2:80");
    let cases: Vec<(Match, bool)> = vec![
        (
            Match {
                namespaces: vec![StringMatch::Exact("front".into())],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                namespaces: vec![StringMatch::Exact("back".into())],
                ..Default::default()
            },
            false,
        ),
        (
            Match {
                not_namespaces: vec![StringMatch::Exact("front".into())],
                ..Default::default()
            },
            false,
        ),
        (
            Match {
                not_namespaces: vec![StringMatch::Prefix("ba".into())],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                principals: vec![StringMatch::Exact("cluster.local/ns/front/sa/web".into())],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                principals: vec![StringMatch::Suffix("/sa/web".into())],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                principals: vec![StringMatch::Presence()],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                not_principals: vec![StringMatch::Presence()],
                ..Default::default()
            },
            false,
        ),
        (
            Match {
                service_accounts: vec![ServiceAccountMatch {
                    namespace: "front".into(),
                    service_account: "web".into(),
                }],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                not_service_accounts: vec![ServiceAccountMatch {
                    namespace: "front".into(),
                    service_account: "web".into(),
                }],
                ..Default::default()
            },
            false,
        ),
        (
            Match {
                source_ips: vec!["198.18.0.0/24".parse().unwrap()],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                not_source_ips: vec!["198.18.0.1/32".parse().unwrap()],
                ..Default::default()
            },
            false,
        ),
        (
            Match {
                destination_ips: vec!["198.18.0.2/32".parse().unwrap()],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                not_destination_ips: vec!["198.19.0.0/16".parse().unwrap()],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                destination_ports: vec![80, 81],
                ..Default::default()
            },
            true,
        ),
        (
            Match {
                destination_ports: vec![81],
                ..Default::default()
            },
            false,
        ),
        (
            Match {
                not_destination_ports: vec![80],
                ..Default::default()
            },
            false,
        ),
        // Kinds AND together.
        (
            Match {
                destination_ports: vec![80],
                namespaces: vec![StringMatch::Exact("back".into())],
                ..Default::default()
            },
            false,
        ),
    ];
    for (i, (m, want)) in cases.into_iter().enumerate() {
        let deny = pol(Action::Deny, m.clone());
        assert_eq!(deny.matches(&c), want, "case {i}: {m:?}");
        let d = evaluate([&deny], &c);
        assert_eq!(d.is_allow(), !want, "deny case {i}");
        let allow = pol(Action::Allow, m);
        assert_eq!(evaluate([&allow], &c).is_allow(), want, "allow case {i}");
    }
}

#[test]
fn identity_matches_fail_without_identity() {
    let c = conn(None, "198.18.0.1:1000", "198.18.0.2:80");
    let any_id = pol(
        Action::Allow,
        Match {
            principals: vec![StringMatch::Presence()],
            ..Default::default()
        },
    );
    assert_eq!(evaluate([&any_id], &c), Decision::NotAllowed);
    // A namespace matcher compares against "" for plaintext.
    let not_ns = pol(
        Action::Allow,
        Match {
            not_namespaces: vec![StringMatch::Exact("front".into())],
            ..Default::default()
        },
    );
    assert!(evaluate([&not_ns], &c).is_allow());
}

#[test]
fn deny_wins_over_allow_and_dry_run_is_ignored() {
    let c = conn(Some(CLIENT), "198.18.0.1:1000", "198.18.0.2:80");
    let allow_all = pol(
        Action::Allow,
        Match {
            destination_ports: vec![80],
            ..Default::default()
        },
    );
    let deny_web = pol(
        Action::Deny,
        Match {
            principals: vec![StringMatch::Suffix("sa/web".into())],
            ..Default::default()
        },
    );
    assert_eq!(
        evaluate([&allow_all, &deny_web], &c),
        Decision::Denied {
            policy: "ns/p".into()
        }
    );
    let mut dry = deny_web.clone();
    dry.dry_run = true;
    assert!(evaluate([&allow_all, &dry], &c).is_allow());
}

#[test]
fn empty_structures() {
    let c = conn(Some(CLIENT), "198.18.0.1:1000", "198.18.0.2:80");
    // No rules: never matches.
    let mut p = pol(Action::Deny, Match::default());
    p.rules = vec![];
    assert!(!p.matches(&c));
    // A rule with no clauses matches.
    p.rules = vec![vec![]];
    assert!(p.matches(&c));
    // A clause with no matches matches.
    p.rules = vec![vec![vec![]]];
    assert!(p.matches(&c));
    // A clause of only empty matches does not.
    p.rules = vec![vec![vec![Match::default()]]];
    assert!(!p.matches(&c));
}

#[test]
fn any_rule_all_clauses() {
    let c = conn(Some(CLIENT), "198.18.0.1:1000", "198.18.0.2:80");
    let port80 = Match {
        destination_ports: vec![80],
        ..Default::default()
    };
    let port81 = Match {
        destination_ports: vec![81],
        ..Default::default()
    };
    let mut p = pol(Action::Deny, port80.clone());
    p.rules = vec![vec![vec![port80.clone()], vec![port81.clone()]]];
    assert!(!p.matches(&c), "clauses AND");
    p.rules = vec![vec![vec![port81.clone(), port80.clone()]]];
    assert!(p.matches(&c), "matches in a clause OR");
    p.rules = vec![vec![vec![port81]], vec![vec![port80]]];
    assert!(p.matches(&c), "rules OR");
}
