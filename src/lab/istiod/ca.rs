//! The lab control plane's CA: `IstioCertificateService/CreateCertificate` with istiod's
//! rules.
//!
//! A caller gets its own identity, or with `metadata.ImpersonatedIdentity` set, another one —
//! only if its account is a trusted node proxy (istiod's `CA_TRUSTED_NODE_ACCOUNTS`) and a pod
//! with that namespace and service account runs on the caller's node (the node proxy's own
//! pod's node, which the token names). Refusals are `Unauthenticated` as istiod answers them,
//! with the reason appended (istiod only logs it; a lab wants it on the wire). The CSR's
//! signature must verify; its subject and SANs are ignored — the certificate carries the
//! identity decided here. `validity_duration` ≤ 0 means 24 h; above 90 days is refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};

use super::{Caller, Event, Shared};
use crate::certs::caclient::IMPERSONATED_IDENTITY;
use crate::config::LocalConfig;
use crate::identity::Identity;
use crate::proto::ca::{
    IstioCertificateRequest, IstioCertificateResponse,
    istio_certificate_service_server::IstioCertificateService,
};

pub(crate) struct CaService(pub(crate) Arc<Shared>);

/// istiod's limit on a workload certificate's lifetime.
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// The identity `caller` may have a certificate for, or why not.
pub fn authorize(
    caller: &Caller,
    requested: Option<&Identity>,
    trust_domain: &str,
    trusted: &[(String, String)],
    config: &LocalConfig,
) -> Result<Identity, String> {
    let own = Identity::new(trust_domain, &caller.namespace, &caller.service_account);
    let Some(id) = requested else {
        return Ok(own);
    };
    if *id == own {
        return Ok(own);
    }
    if !trusted
        .iter()
        .any(|(ns, sa)| *ns == caller.namespace && *sa == caller.service_account)
    {
        return Err(format!(
            "caller {}/{} is not allowed to impersonate (not a trusted node proxy account)",
            caller.namespace, caller.service_account
        ));
    }
    if id.trust_domain != trust_domain {
        return Err(format!(
            "{id} is not in the mesh's trust domain {trust_domain}"
        ));
    }
    let Some(node) = caller.node.as_deref() else {
        return Err("the caller's token names no node".into());
    };
    let on_node = config.workloads.iter().any(|w| {
        w.namespace == id.namespace
            && w.node == node
            && (w.service_account == id.service_account
                || (w.service_account.is_empty() && id.service_account == "default"))
    });
    if on_node {
        Ok(id.clone())
    } else {
        Err(format!(
            "no instances of \"{}/{}\" found on node {node:?}",
            id.namespace, id.service_account
        ))
    }
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for c in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(c).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let sh = &self.0;
        let caller = sh
            .authenticate(req.metadata())
            .ok_or_else(|| Status::unauthenticated("request authenticate failure"))?;
        let r = req.into_inner();
        let requested = r
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            });
        let who = format!("{}/{}", caller.namespace, caller.service_account);
        let refuse = |identity: String, why: String, st: Status| {
            sh.record(Event::Certificate {
                caller: who.clone(),
                identity,
                refused: Some(why),
            });
            st
        };
        let requested_id = match &requested {
            None => None,
            Some(s) => match s.parse::<Identity>() {
                Ok(id) => Some(id),
                Err(e) => {
                    return Err(refuse(
                        s.clone(),
                        e.to_string(),
                        Status::invalid_argument(format!("impersonated identity: {e}")),
                    ));
                }
            },
        };
        let id = match authorize(
            &caller,
            requested_id.as_ref(),
            &sh.cfg.trust_domain,
            &sh.cfg.trusted_node_accounts,
            &sh.config(),
        ) {
            Ok(id) => id,
            Err(why) => {
                return Err(refuse(
                    requested.unwrap_or_default(),
                    why.clone(),
                    Status::unauthenticated(format!(
                        "request impersonation authentication failure: {why}"
                    )),
                ));
            }
        };
        let ttl = match r.validity_duration {
            d if d <= 0 => Duration::from_secs(24 * 3600),
            d => Duration::from_secs(d as u64),
        };
        if ttl > MAX_TTL {
            return Err(refuse(
                id.to_string(),
                "TTL too long".into(),
                Status::invalid_argument(format!(
                    "CSR signing error (requested TTL {ttl:?} is greater than the max allowed TTL {MAX_TTL:?})"
                )),
            ));
        }
        let leaf = sh
            .intermediate
            .sign_csr(&r.csr, &id, SystemTime::now(), ttl)
            .map_err(|e| {
                refuse(
                    id.to_string(),
                    e.to_string(),
                    Status::invalid_argument(format!("CSR error: {e}")),
                )
            })?;
        sh.record(Event::Certificate {
            caller: who,
            identity: id.to_string(),
            refused: None,
        });
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![
                pem(&leaf),
                pem(sh.intermediate.root()),
                pem(sh.cfg.root.root()),
            ],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LocalConfig {
        crate::config::parse(
            "t",
            r#"
workloads:
- {uid: a, name: a, namespace: default, serviceAccount: web, workloadIps: ["198.18.1.2"], node: node-a, services: {}}
- {uid: b, name: b, namespace: default, serviceAccount: db, workloadIps: ["198.18.2.2"], node: node-b, services: {}}
"#,
        )
        .unwrap()
    }

    fn ztunnel(node: &str) -> Caller {
        Caller {
            namespace: "istio-system".into(),
            service_account: "ztunnel".into(),
            node: Some(node.into()),
        }
    }

    #[test]
    fn node_proxies_may_impersonate_only_their_nodes_pods() {
        let trusted = vec![("istio-system".to_string(), "ztunnel".to_string())];
        let web = Identity::new("cluster.local", "default", "web");
        let db = Identity::new("cluster.local", "default", "db");
        let c = cfg();
        let ok = authorize(
            &ztunnel("node-a"),
            Some(&web),
            "cluster.local",
            &trusted,
            &c,
        );
        assert_eq!(ok, Ok(web.clone()));
        let e =
            authorize(&ztunnel("node-a"), Some(&db), "cluster.local", &trusted, &c).unwrap_err();
        assert!(
            e.contains("no instances of \"default/db\" found on node \"node-a\""),
            "{e}"
        );
        // A workload account may not impersonate at all, but gets its own identity.
        let app = Caller {
            namespace: "default".into(),
            service_account: "web".into(),
            node: Some("node-a".into()),
        };
        let e = authorize(&app, Some(&db), "cluster.local", &trusted, &c).unwrap_err();
        assert!(e.contains("not allowed to impersonate"), "{e}");
        assert_eq!(
            authorize(&app, None, "cluster.local", &trusted, &c),
            Ok(web.clone())
        );
        assert_eq!(
            authorize(&app, Some(&web), "cluster.local", &trusted, &c),
            Ok(web)
        );
        let other_td = Identity::new("evil.example", "default", "web");
        let e = authorize(
            &ztunnel("node-a"),
            Some(&other_td),
            "cluster.local",
            &trusted,
            &c,
        )
        .unwrap_err();
        assert!(e.contains("trust domain"), "{e}");
    }
}
