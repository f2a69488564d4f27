//! Which waypoint a lab Service or Pod uses: istiod's `istio.io/use-waypoint` resolution
//! (`fetchWaypointForTarget`, `fetchWaypointForService` / `fetchWaypointForWorkload` in
//! istio's ambient index), as a pure function over labels.
//!
//! Owns: the label names and values of waypoint binding, the `istio.io/waypoint-for` gating,
//! `allowedRoutes` namespace attachment (`Same` / `All`), and the [`GatewayAddress`] a bound
//! object gets. Must not: read files, know about network namespaces or addresses, or parse
//! Kubernetes resources (the topology hands it labels).
//!
//! The rules, in istiod's order:
//! 1. Waypoints (objects labelled `gateway.istio.io/managed: istio.io-mesh-controller`) never
//!    get a waypoint.
//! 2. The object's own `istio.io/use-waypoint` label wins: `none` (the lab also takes
//!    `#none`, as Istio's docs write it) opts out and blocks the namespace's label; any other
//!    value names a waypoint in the object's namespace, or in the object's
//!    `istio.io/use-waypoint-namespace`. A named waypoint that does not exist (or
//!    does not admit the object's namespace) gives no waypoint, with no fallback.
//! 3. Else the Namespace's labels, read the same way (its namespace label is relative to it).
//! 4. The waypoint's `istio.io/waypoint-for` must admit the object's kind, else no waypoint.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::topology::TopoWaypoint;
use crate::state::{GatewayAddress, GatewayDestination};

/// Label naming the waypoint a Service, Pod or Namespace uses.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Label giving the namespace of the waypoint [`USE_WAYPOINT_LABEL`] names (same object).
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Label on a waypoint (Gateway) saying which traffic it takes.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// Label istiod's waypoint Deployment puts on its pods: the Gateway's name.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Label istiod puts on a waypoint's pods and Service; objects carrying it never get a
/// waypoint themselves.
pub const MANAGED_LABEL: (&str, &str) = ("gateway.istio.io/managed", "istio.io-mesh-controller");
/// The HBONE port of every waypoint (istiod hard-codes it in `GatewayAddress`).
pub const HBONE_MTLS_PORT: u16 = 15008;

/// `istio.io/waypoint-for`: which kinds of traffic a waypoint accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum WaypointFor {
    /// Traffic to Service VIPs only (istiod's default).
    #[default]
    Service,
    /// Traffic to pod IPs only.
    Workload,
    /// Both.
    All,
    /// Neither: the waypoint is deployed but nothing binds to it.
    None,
}

impl WaypointFor {
    /// Whether objects of `kind` may bind to a waypoint of this type.
    pub fn admits(self, kind: TargetKind) -> bool {
        matches!(
            (self, kind),
            (WaypointFor::All, _)
                | (WaypointFor::Service, TargetKind::Service)
                | (WaypointFor::Workload, TargetKind::Workload)
        )
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WaypointFor::Service => "service",
            WaypointFor::Workload => "workload",
            WaypointFor::All => "all",
            WaypointFor::None => "none",
        }
    }
}

impl TryFrom<String> for WaypointFor {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "service" => Ok(WaypointFor::Service),
            "workload" => Ok(WaypointFor::Workload),
            "all" => Ok(WaypointFor::All),
            "none" => Ok(WaypointFor::None),
            _ => Err(format!(
                "`for` ({WAYPOINT_FOR_LABEL}) is {s:?}; use one of service, workload, all, none"
            )),
        }
    }
}

impl fmt::Display for WaypointFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The waypoint listener's `allowedRoutes.namespaces.from`: which namespaces' objects may
/// bind to it. (Gateway API's `Selector` is not supported by the lab.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum FromNamespaces {
    /// Only objects in the waypoint's namespace (Gateway API's default).
    #[default]
    Same,
    /// Objects in any namespace.
    All,
}

impl TryFrom<String> for FromNamespaces {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "Same" => Ok(FromNamespaces::Same),
            "All" => Ok(FromNamespaces::All),
            _ => Err(format!(
                "`fromNamespaces` (allowedRoutes.namespaces.from) is {s:?}; use Same or All \
                 (Selector is not supported by the lab)"
            )),
        }
    }
}

/// What is being bound: a Service (traffic to its VIPs) or a workload (traffic to its pod IPs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Service,
    Workload,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Service => "service",
            TargetKind::Workload => "workload",
        })
    }
}

/// Where the deciding `istio.io/use-waypoint` label was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    /// On the Service or Pod itself.
    Object,
    /// On its Namespace.
    Namespace,
}

impl fmt::Display for LabelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LabelSource::Object => "its own label",
            LabelSource::Namespace => "its namespace's label",
        })
    }
}

/// The outcome of [`resolve`]: the waypoint, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Bound to waypoint `namespace/name`, through the label at `from`.
    Bound {
        waypoint: String,
        from: LabelSource,
        address: GatewayAddress,
    },
    /// Neither the object nor its namespace has `istio.io/use-waypoint`.
    NoLabel,
    /// The label at the given place is `none` (or `#none`).
    OptedOut(LabelSource),
    /// The object is a waypoint itself.
    IsWaypoint,
    /// The label names waypoint `namespace/name`, which the topology does not have
    /// (istiod: `WaypointIsNotReady`). No fallback to the namespace's label.
    WaypointNotFound(String),
    /// Waypoint `namespace/name` does not admit objects from this namespace
    /// (`fromNamespaces: Same`; istiod: `AttachmentDenied`).
    AttachmentDenied(String),
    /// Waypoint `waypoint` has a `waypoint-for` that excludes this kind of object.
    UnsupportedTrafficType {
        waypoint: String,
        waypoint_for: WaypointFor,
        kind: TargetKind,
    },
}

impl Resolution {
    /// The address to write into `Service.waypoint` / `Workload.waypoint`.
    pub fn address(&self) -> Option<&GatewayAddress> {
        match self {
            Resolution::Bound { address, .. } => Some(address),
            _ => None,
        }
    }

    /// istiod's status reason for this outcome (`WaypointAccepted`, `WaypointIsNotReady`, …);
    /// `None` where istiod reports nothing.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Resolution::Bound { .. } => Some("WaypointAccepted"),
            Resolution::WaypointNotFound(_) => Some("WaypointIsNotReady"),
            Resolution::AttachmentDenied(_) => Some("AttachmentDenied"),
            Resolution::UnsupportedTrafficType { .. } => Some("UnsupportedTrafficType"),
            Resolution::NoLabel | Resolution::OptedOut(_) | Resolution::IsWaypoint => None,
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolution::Bound { waypoint, from, .. } => {
                write!(f, "uses waypoint {waypoint} (by {from})")
            }
            Resolution::NoLabel => write!(f, "no waypoint (no {USE_WAYPOINT_LABEL} label)"),
            Resolution::OptedOut(from) => write!(f, "no waypoint (opted out by {from})"),
            Resolution::IsWaypoint => write!(f, "no waypoint (it is a waypoint)"),
            Resolution::WaypointNotFound(w) => write!(
                f,
                "no waypoint: {USE_WAYPOINT_LABEL} names {w}, which the topology's \
                 `waypoints` does not have"
            ),
            Resolution::AttachmentDenied(w) => write!(
                f,
                "no waypoint: {w} only admits its own namespace (set `fromNamespaces: All` on it)"
            ),
            Resolution::UnsupportedTrafficType {
                waypoint,
                waypoint_for,
                kind,
            } => write!(
                f,
                "no waypoint: {waypoint} is for {waypoint_for} traffic, not {kind} traffic"
            ),
        }
    }
}

/// The waypoint of an object with labels `target_labels` in namespace `target_namespace`,
/// whose Namespace has `namespace_labels`, among `waypoints`, as istiod decides it.
pub fn resolve(
    target_labels: &BTreeMap<String, String>,
    target_namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    waypoints: &[TopoWaypoint],
    kind: TargetKind,
) -> Resolution {
    if is_waypoint(target_labels) {
        return Resolution::IsWaypoint;
    }
    let (wanted, from) = match use_waypoint(target_labels, target_namespace) {
        UseWaypoint::None => return Resolution::OptedOut(LabelSource::Object),
        UseWaypoint::Named(ns, name) => ((ns, name), LabelSource::Object),
        UseWaypoint::Absent => match use_waypoint(namespace_labels, target_namespace) {
            UseWaypoint::None => return Resolution::OptedOut(LabelSource::Namespace),
            UseWaypoint::Named(ns, name) => ((ns, name), LabelSource::Namespace),
            UseWaypoint::Absent => return Resolution::NoLabel,
        },
    };
    let (ns, name) = wanted;
    let key = format!("{ns}/{name}");
    let Some(wp) = waypoints
        .iter()
        .find(|w| w.name == name && w.namespace == ns)
    else {
        return Resolution::WaypointNotFound(key);
    };
    if wp.from_namespaces == FromNamespaces::Same && wp.namespace != target_namespace {
        return Resolution::AttachmentDenied(key);
    }
    if !wp.traffic_type.admits(kind) {
        return Resolution::UnsupportedTrafficType {
            waypoint: key,
            waypoint_for: wp.traffic_type,
            kind,
        };
    }
    Resolution::Bound {
        waypoint: key,
        from,
        address: gateway_address(&wp.namespace, &wp.name),
    }
}

/// The address istiod gives objects bound to waypoint `namespace/name`: its Service's
/// hostname and port 15008.
pub fn gateway_address(namespace: &str, name: &str) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Hostname {
            namespace: namespace.to_string(),
            hostname: waypoint_hostname(namespace, name),
        },
        hbone_mtls_port: HBONE_MTLS_PORT,
    }
}

/// The hostname of waypoint `namespace/name`'s Service.
pub fn waypoint_hostname(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local")
}

/// Whether labels mark a waypoint's own pod or Service.
pub fn is_waypoint(labels: &BTreeMap<String, String>) -> bool {
    labels.get(MANAGED_LABEL.0).map(String::as_str) == Some(MANAGED_LABEL.1)
}

enum UseWaypoint<'a> {
    Absent,
    None,
    Named(&'a str, &'a str),
}

/// istiod's `getUseWaypoint`: the label on one object, its namespace label defaulting to
/// `default_namespace`.
fn use_waypoint<'a>(
    labels: &'a BTreeMap<String, String>,
    default_namespace: &'a str,
) -> UseWaypoint<'a> {
    let Some(value) = labels.get(USE_WAYPOINT_LABEL) else {
        return UseWaypoint::Absent;
    };
    // istiod compares with "none" only; Istio's docs write the opt-out as "#none" (a value a
    // waypoint name cannot take), so the lab accepts both as the same opt-out.
    if value == "none" || value == "#none" {
        return UseWaypoint::None;
    }
    let ns = labels
        .get(USE_WAYPOINT_NAMESPACE_LABEL)
        .map_or(default_namespace, String::as_str);
    UseWaypoint::Named(ns, value)
}

#[cfg(test)]
#[path = "waypoints_tests.rs"]
mod tests;
