//! Route status (Gateway API §2.8 as Istio writes it): the `Accepted` and `ResolvedRefs`
//! conditions of each Service parentRef, computed from the routes and a Service lookup.
//! Pure; must not decide what is programmed (that is `check` and `table`).

use serde::Serialize;

use super::check::check_rule;
use super::table::honoured;
use super::{ParentRef, Route, RouteKind, RouteTable};

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
}

fn condition(kind: &'static str, error: Option<&str>, message: &str) -> Condition {
    Condition {
        kind,
        status: if error.is_some() { "False" } else { "True" },
        reason: error.unwrap_or(kind).to_string(),
        message: message.to_string(),
    }
}
