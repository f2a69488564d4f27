//! `/config_dump`: the proxy state as ztunnel shapes it (`workloads`, `services`, `policies`,
//! `certificates`, `workloadState`, `config`), with the fields `istioctl ztunnel-config`
//! parses.

use base64::Engine;
use serde_json::{Value, json};

use super::AdminState;

pub fn config_dump(st: &AdminState) -> Value {
    let snap = st.state.load();
    let workloads: Vec<Value> = snap
        .workloads
        .iter()
        .map(|w| {
            // cannot panic: a struct serializes as an object, and a failure is Null, which
            // string indexing turns into one.
            let mut v = serde_json::to_value(w.as_ref()).unwrap_or(Value::Null);
            v["services"] = json!(w.services.keys().collect::<Vec<_>>());
            v
        })
        .collect();
    let services: Vec<Value> = snap
        .services
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s.as_ref()).unwrap_or(Value::Null);
            let eps: serde_json::Map<String, Value> = snap
                .endpoints(s)
                .iter()
                .map(|e| {
                    (
                        e.workload.uid.clone(),
                        json!({
                            "workloadUid": e.workload.uid,
                            "service": s.key(),
                            "address": e.workload.workload_ips.first().map(|ip| format!("/{ip}")),
                            "port": e.ports,
                        }),
                    )
                })
                .collect();
            v["endpoints"] = Value::Object(eps);
            v
        })
        .collect();
    let policies: Vec<Value> = snap
        .policies
        .iter()
        .map(|p| serde_json::to_value(p.as_ref()).unwrap_or(Value::Null))
        .collect();
    let certs = st.certs.load();
    let mut certificates: Vec<Value> = certs
        .certs
        .values()
        .map(|c| {
            // certChain: the leaf and intermediates; rootCerts: the trust anchors (istioctl's
            // layout).
            let leaf: Vec<Value> = c.issued.chain.iter().map(|d| cert_json(d)).collect();
            let roots: Vec<Value> = c.issued.roots.iter().map(|d| cert_json(d)).collect();
            json!({
                "identity": c.issued.identity.to_string(),
                "state": "Available",
                "certChain": leaf,
                "rootCerts": roots,
            })
        })
        .chain(certs.pending.iter().map(|(id, state)| {
            json!({
                "identity": id.to_string(),
                "state": state,
                "certChain": [],
                "rootCerts": [],
            })
        }))
        .collect();
    certificates.sort_by_key(|v| v["identity"].as_str().unwrap_or("").to_string());
    let pods = st.pods.lock().unwrap_or_else(|e| e.into_inner());
    let workload_state: serde_json::Map<String, Value> = pods
        .iter()
        .map(|(uid, p)| {
            (
                uid.clone(),
                json!({"state": p.state, "info": p.info, "connections": {"inbound": [], "outbound": []}}),
            )
        })
        .collect();
    let mut dump = json!({
        "workloads": workloads,
        "services": services,
        "policies": policies,
        "stagedServices": {},
        "certificates": certificates,
        "workloadState": workload_state,
        "config": st.config,
        "xds": st.xds.lock().map(|x| serde_json::to_value(&*x).unwrap_or(Value::Null)).unwrap_or(Value::Null),
        "version": {"component": "ringmesh", "version": env!("CARGO_PKG_VERSION"), "configVersion": snap.version},
    });
    for (k, v) in st.sections.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // cannot panic: `dump` is the object literal above (indexing a non-object panics).
        dump[*k] = v.clone();
    }
    dump
}

fn cert_json(der: &[u8]) -> Value {
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    let (serial, from, to) = match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => (
            // Decimal, as ztunnel writes it and istioctl parses it.
            c.serial.to_str_radix(10),
            crate::telemetry::rfc3339(c.validity().not_before.timestamp()),
            crate::telemetry::rfc3339(c.validity().not_after.timestamp()),
        ),
        Err(_) => Default::default(),
    };
    json!({
        "pem": base64::engine::general_purpose::STANDARD.encode(pem),
        "serialNumber": serial,
        "validFrom": from,
        "expirationTime": to,
    })
}
