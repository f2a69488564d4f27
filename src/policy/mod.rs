//! L4 AuthorizationPolicy, evaluated exactly as ztunnel evaluates it.
//!
//! Owns: the policy model (the `policies` entries of ztunnel's local config, same camelCase
//! fields and YAML tags) and `evaluate`, a pure function from the applicable policies and the
//! facts of one connection to a decision. Must not touch: sockets, the clock, the snapshot
//! store (callers pass the policies that apply).

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// One authorization policy (`istio.security.Authorization`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// rules → clauses → matches: any rule, all clauses, any match.
    pub rules: Vec<Vec<Vec<Match>>>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

/// One match: fields of different kinds are AND-ed, values of one kind OR-ed, `not*` forms
/// must match none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

/// A string matcher, written in YAML with tags: `!Exact "x"`, `!Prefix "x"`, `!Suffix "x"`,
/// `!Presence []`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StringMatch {
    Prefix(String),
    Suffix(String),
    Exact(String),
    Presence(),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// What a policy sees of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnFacts {
    /// The TCP peer (the HBONE client, or the plaintext client).
    pub src: SocketAddr,
    /// The resolved destination: pod IP and target port (not 15008).
    pub dst: SocketAddr,
    /// The mTLS peer identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
}

/// The outcome of evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by the named DENY policy.
    Denied {
        policy: String,
    },
    /// ALLOW policies exist but none matched.
    NotAllowed,
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Allow => f.write_str("allowed"),
            Decision::Denied { policy } => write!(f, "explicitly denied by {policy}"),
            Decision::NotAllowed => f.write_str("allow policies exist, but none allowed"),
        }
    }
}

impl Authorization {
    /// `namespace/name`, the key workloads use in `authorizationPolicies`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this policy's rules match the connection.
    pub fn matches(&self, conn: &ConnFacts) -> bool {
        let principal = conn
            .src_identity
            .as_ref()
            .map(|i| i.principal())
            .unwrap_or_default();
        let ns = conn
            .src_identity
            .as_ref()
            .map(|i| i.namespace.as_str())
            .unwrap_or("");
        self.rules.iter().any(|rule| {
            rule.iter().all(|clause| {
                clause.is_empty()
                    || clause.iter().any(|m| {
                        !m.is_empty() && m.matches(conn, &principal, ns, conn.src_identity.as_ref())
                    })
            })
        })
    }
}

impl Match {
    fn is_empty(&self) -> bool {
        *self == Match::default()
    }

    fn matches(&self, conn: &ConnFacts, principal: &str, ns: &str, id: Option<&Identity>) -> bool {
        one_of(&self.destination_ips, &self.not_destination_ips, |n| {
            n.contains(&conn.dst.ip())
        }) && one_of(&self.source_ips, &self.not_source_ips, |n| {
            n.contains(&conn.src.ip())
        }) && one_of(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == conn.dst.port()
        }) && one_of(&self.service_accounts, &self.not_service_accounts, |s| {
            id.is_some_and(|i| i.namespace == s.namespace && i.service_account == s.service_account)
        }) && one_of(&self.principals, &self.not_principals, |p| {
            id.is_some() && p.matches(principal)
        }) && one_of(&self.namespaces, &self.not_namespaces, |p| p.matches(ns))
    }
}

impl StringMatch {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            StringMatch::Prefix(p) => s.starts_with(p.as_str()),
            StringMatch::Suffix(p) => s.ends_with(p.as_str()),
            StringMatch::Exact(p) => s == p,
            StringMatch::Presence() => !s.is_empty(),
        }
    }
}

fn one_of<T>(pos: &[T], neg: &[T], pred: impl Fn(&T) -> bool) -> bool {
    (pos.is_empty() || pos.iter().any(&pred)) && !neg.iter().any(&pred)
}

/// Evaluates the policies that apply to a destination (the caller selects them: global,
/// the destination's namespace, and the workload's own list). Order as in ztunnel: any
/// enforced DENY match denies; no enforced ALLOW policy allows; an ALLOW match allows; else
/// deny. Dry-run policies never change the decision.
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    conn: &ConnFacts,
) -> Decision {
    let mut have_allow = false;
    let mut allowed = false;
    for p in policies {
        if p.dry_run {
            continue;
        }
        match p.action {
            Action::Deny => {
                if p.matches(conn) {
                    return Decision::Denied { policy: p.key() };
                }
            }
            Action::Allow => {
                have_allow = true;
                allowed = allowed || p.matches(conn);
            }
        }
    }
    if !have_allow || allowed {
        Decision::Allow
    } else {
        Decision::NotAllowed
    }
}

#[cfg(test)]
mod tests;
