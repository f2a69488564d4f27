//! Which rules can be programmed, and why not: Istio's per-rule conversion errors
//! (unsupported filters, backendRefs without a port or with a hostname for a name, other
//! backend kinds, missing backends). `table` drops what this rejects; `status` reports it.

use super::{Backend, Filter, RouteKind, Rule};

/// Does Service `ns/name` exist? (status only)
pub(super) type Exists<'a> = &'a dyn Fn(&str, &str) -> bool;

#[derive(Debug, Clone)]
pub(super) struct Problem {
    pub(super) reason: &'static str,
    pub(super) message: String,
}

pub(super) struct Checked {
    /// The rule as programmed (bad HTTPRoute mirrors removed), or None when dropped.
    pub(super) kept: Option<Rule>,
    pub(super) problems: Vec<Problem>,
}

fn problem(reason: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        reason,
        message: message.into(),
    }
}

/// Istio's per-rule conversion errors (§2.3, §2.4). `exists` (status only) adds
/// `BackendNotFound`, which never drops a rule (its weight share gets 500).
pub(super) fn check_rule(kind: RouteKind, rule: &Rule, exists: Option<Exists>) -> Checked {
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
