//! Fuzz entry points: one function per cargo-fuzz target (`tests/fuzz/`), each feeding
//! arbitrary bytes to the real parser, decoder or evaluator the node runs on input from a
//! file, istio-cni, a peer or the control plane. Also replayed on the stable toolchain by
//! `tests/fuzz_corpus.rs` (every committed seed and regression input).
//!
//! Owns: how bytes become each entry point's input, the oracles checked on the way (an
//! accepted config survives its own YAML round trip, a tampered TLS record never opens, a
//! policy decision does not depend on the order of the policies, …) and the generated seed
//! inputs ([`seeds`]). Must not touch: sockets, files, the clock, global state.
//!
//! Contract: no input may panic. Errors returned by the code under test are expected and
//! ignored; a failed oracle is a panic on purpose (a bug found). Each function returns how
//! many inputs or items were accepted, so a test can tell a seed reaches the success path.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use bytes::BytesMut;
use prost::Message;
use rustls::ConnectionTrafficSecrets;
use rustls::crypto::cipher::{AeadKey, Iv};

use crate::config::{self, env, flags};
use crate::hbone::{self, h2};
use crate::identity::Identity;
use crate::inpod::{handover, zds};
use crate::policy::{self, ConnFacts};
use crate::proto::{self, discovery, security as pb_sec, workload as pb};
use crate::state::Snapshot;
use crate::tls::record::{self, Keys, PeerLimits, PostHandshake};
use crate::xds::{convert, store::XdsStore};

/// `config`: the whole input as a ztunnel local config file (YAML, parsed and validated into
/// a snapshot), and the same bytes as `NAME=value` lines of environment variables (checked
/// as `ringmesh node` checks them at start, every value also through each flag parser).
/// Oracle: a config that parses serializes back (`config::to_yaml`) to one that parses equal.
pub fn config(data: &[u8]) -> usize {
    let mut accepted = 0;
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = config::parse("fuzz.yaml", text) {
            let again = config::parse("fuzz.yaml", &config::to_yaml(&cfg))
                .unwrap_or_else(|e| panic!("to_yaml output does not parse: {e}"));
            assert_eq!(cfg.workloads, again.workloads, "workloads change in YAML");
            assert_eq!(cfg.services, again.services, "services change in YAML");
            assert_eq!(cfg.policies, again.policies, "policies change in YAML");
        }
        if config::snapshot_from_str("fuzz.yaml", text, 1).is_ok() {
            accepted += 1;
        }
    }
    let text = String::from_utf8_lossy(data);
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    for v in vars.values() {
        let _ = flags::parse_duration(v);
        let _ = flags::parse_bool(v);
        let _ = flags::parse_orig_src(v);
        if let Ok(t) = flags::parse_threads(v) {
            assert!(t.resolve(4) >= 1, "{v:?} resolves to no shard");
        }
        let _ = env::RootSource::parse(v);
    }
    let _ = env::unsupported(&vars);
    let _ = env::drain_deadline(None, &vars);
    if !vars.is_empty() && env::check(&vars).is_empty() {
        accepted += 1;
    }
    accepted
}

/// `zds`: records from istio-cni to a ZDS session, each `[ctl][len: u16 BE][record]`
/// (`ctl` bits 0-1: fds that came with it, bit 2: truncated). Also the whole input as the
/// other messages read off a ZDS or hand-over socket (`WorkloadResponse`, `ZdsHello`, the
/// hand-over's JSON `Request`/`Reply`).
pub fn zds(data: &[u8]) -> usize {
    let mut accepted = 0;
    let mut session = zds::Session::default();
    for (ctl, rec) in chunks(data) {
        let rec = &rec[..rec.len().min(zds::MAX_MESSAGE)];
        let was_synced = session.synced();
        match session.handle(rec, (ctl & 3) as usize, ctl & 4 != 0) {
            Ok(zds::Action::Reconcile { .. }) => {
                assert!(!was_synced && session.synced(), "snapshot_sent twice");
                accepted += 1;
            }
            Ok(_) => accepted += 1,
            Err(e) => {
                let _ = zds::WorkloadResponse::nack(e.to_string());
            }
        }
    }
    if let Ok(r) = zds::WorkloadResponse::decode(data) {
        let _ = r.error();
    }
    let _ = zds::ZdsHello::decode(data);
    accepted += usize::from(serde_json::from_slice::<handover::Request>(data).is_ok());
    accepted += usize::from(serde_json::from_slice::<handover::Reply>(data).is_ok());
    // The connection state a hand-over carries in its memfd (a TCP relay's, an HBONE
    // connection's): what decodes survives its own encoding unchanged.
    if let Ok(r) = crate::io::relay::RelayState::decode(data) {
        let again = crate::io::relay::RelayState::decode(&r.encode());
        assert_eq!(
            again.as_ref(),
            Ok(&r),
            "a relay state changed in its round trip"
        );
        accepted += 1;
    }
    if let Ok(l) = crate::io::link_state::LinkState::decode(data) {
        let again = crate::io::link_state::LinkState::decode(&l.encode());
        assert_eq!(
            again.as_ref(),
            Ok(&l),
            "a link state changed in its round trip"
        );
        accepted += 1;
    }
    accepted
}

/// The pod address a `connect` input is checked against, and the proxy's own ports.
const CONNECT_LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const PROXY_PORTS: [u16; 3] = [15001, 15006, 15008];

/// `connect`: an inbound CONNECT head as decoded HTTP/2 fields, one `name value` per line
/// (split at the first space), converted to a request and validated as inbound HBONE does
/// (`parse_connect`, `check_destination` against 10.0.0.1 and ports 15001/15006/15008).
/// Lines `@local IP`, `@host H`, `@baggage B` set the pod address and the outbound
/// headers. Oracle: an accepted authority, sent as an outbound CONNECT
/// (`connect_request` → fields → request), parses back to the same address.
pub fn connect(data: &[u8]) -> usize {
    let mut fields = Vec::new();
    let (mut local, mut host, mut baggage) = (CONNECT_LOCAL, None, String::new());
    for line in data.split(|&b| b == b'\n') {
        let (name, value) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let text = String::from_utf8_lossy(value).into_owned();
        match name {
            b"@local" => local = text.parse().unwrap_or(local),
            b"@host" => host = Some(text),
            b"@baggage" => baggage = text,
            _ => fields.push(h2::HeaderField::new(name.to_vec(), value.to_vec())),
        }
    }
    let Ok(req) = h2::to_request(&fields) else {
        return 0;
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    let Ok(dst) = hbone::parse_connect(req.method(), authority) else {
        return 0;
    };
    let checked = hbone::check_destination(dst, hbone::normalize(local), &PROXY_PORTS);
    if let Err(e) = &checked {
        let _ = e.status();
    }
    // What the outbound side would send for this destination: it must come back unchanged.
    // Header values RFC 9113 §8.2.1 refuses (control characters, whitespace at either end)
    // are the caller's to keep out: `connect_request` takes them as given.
    let valid = |s: &str| {
        http::HeaderValue::from_str(s).is_ok() && s.trim_matches([' ', '\t']).len() == s.len()
    };
    if host.as_deref().is_none_or(valid) && valid(&baggage) {
        let out = hbone::connect_request(
            dst,
            &hbone::ConnectHeaders {
                client: SocketAddr::new(local, 40000),
                service_host: host,
                baggage,
                traceparent: hbone::traceparent(u128::from(dst.port()), 7),
            },
        );
        let back = h2::to_request(&h2::request_fields(&out))
            .unwrap_or_else(|e| panic!("our own CONNECT for {dst} is malformed: {e}"));
        let again = hbone::parse_connect(back.method(), back.uri().authority().map(|a| a.as_str()))
            .unwrap_or_else(|e| panic!("our own CONNECT for {dst} is refused: {e}"));
        assert_eq!(again, dst, "CONNECT authority changes on the way out");
    }
    usize::from(checked.is_ok())
}

/// The input of the `policy` target: policies as istiod sends them, the destination
/// workload's selected policies and namespace, and one connection's facts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PolicyCase {
    #[prost(message, repeated, tag = "1")]
    pub policies: Vec<pb_sec::Authorization>,
    /// The destination workload's `authorization_policies` (`namespace/name`).
    #[prost(string, repeated, tag = "2")]
    pub selected: Vec<String>,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(bytes = "vec", tag = "4")]
    pub src_ip: Vec<u8>,
    #[prost(uint32, tag = "5")]
    pub src_port: u32,
    #[prost(bytes = "vec", tag = "6")]
    pub dst_ip: Vec<u8>,
    #[prost(uint32, tag = "7")]
    pub dst_port: u32,
    /// The peer's SPIFFE id (empty: plaintext; unparsable: plaintext too).
    #[prost(string, tag = "8")]
    pub identity: String,
}

/// `policy`: a protobuf [`PolicyCase`]; its policies converted as from xDS, indexed into a
/// snapshot with the destination workload, and the connection evaluated against the ones
/// that apply. Oracles: allow/deny does not depend on the policies' order; a denial names
/// an enforced DENY policy that matches; only dry-run policies allow; a policy survives its
/// local-config YAML form unchanged.
pub fn policy(data: &[u8]) -> usize {
    let Ok(case) = PolicyCase::decode(data) else {
        return 0;
    };
    let ip = |b: &[u8]| convert::ip_from_bytes(b).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let conn = ConnFacts {
        src: SocketAddr::new(ip(&case.src_ip), case.src_port as u16),
        dst: SocketAddr::new(ip(&case.dst_ip), case.dst_port as u16),
        src_identity: case.identity.parse::<Identity>().ok(),
    };
    let policies: Vec<policy::Authorization> = case
        .policies
        .into_iter()
        .filter_map(|a| convert::authorization(a).ok())
        .collect();
    for p in &policies {
        let yaml = serde_yaml_ng::to_string(p).expect("a policy serializes");
        let back: policy::Authorization = serde_yaml_ng::from_str(&yaml)
            .unwrap_or_else(|e| panic!("policy YAML does not parse back: {e}\n{yaml}"));
        assert_eq!(&back, p, "policy changes in YAML");
    }
    let d = policy::evaluate(&policies, &conn);
    let _ = d.to_string();
    let reversed = policy::evaluate(policies.iter().rev(), &conn);
    assert_eq!(
        d.is_allow(),
        reversed.is_allow(),
        "decision depends on order"
    );
    if let policy::Decision::Denied { policy: key } = &d {
        assert!(
            policies.iter().any(|p| &p.key() == key
                && p.action == policy::Action::Deny
                && !p.dry_run
                && p.matches(&conn)),
            "denied by {key}, which does not deny this connection"
        );
    }
    if policies.iter().all(|p| p.dry_run) {
        assert!(d.is_allow(), "dry-run policies changed the decision");
    }
    let dst = pb::Workload {
        uid: "fuzz//v1/Pod/dst".into(),
        namespace: case.namespace,
        addresses: vec![case.dst_ip],
        authorization_policies: case.selected,
        ..Default::default()
    };
    let mut accepted = policies.len();
    if let Ok(w) = convert::workload(dst) {
        accepted += 1;
        let policies = policies.into_iter().map(Arc::new).collect();
        let (snap, _) = Snapshot::build_lenient(1, vec![Arc::new(w.clone())], vec![], policies);
        let _ = policy::evaluate(snap.policies_for(&w), &conn);
    }
    accepted
}

/// The fixed traffic keys of the `tls_record` target (the peer's and ours are the same).
const TLS_KEY: [u8; 32] = [9; 32];
const TLS_IV: [u8; 12] = [7; 12];

/// `tls_record`: `[suite][seq: u64 BE]` then chunks `[kind][len: u16 BE][bytes]` received
/// on one connection under fixed keys (suite bit 0: ChaCha20-Poly1305, else AES-256-GCM).
/// Kind 0: `bytes` is a whole record as it came off the wire. Kind 1: `bytes` is an inner
/// plaintext (content, type, padding), sealed here with the right key, header and nonce.
/// Kind 2: as 1, with one bit of the record flipped (byte `kind / 4`, header included). Kind 3: `bytes[0]` is a content type
/// and the rest data, sealed by our own sender (`Keys::seal`). Every opened record is taken
/// as the reader takes it: handshake messages, alerts, the peer limits. Oracles: a flipped
/// record never opens and does not move the sequence number; what we seal opens to itself.
pub fn tls_record(data: &[u8]) -> usize {
    let [suite, s0, s1, s2, s3, s4, s5, s6, s7, rest @ ..] = data else {
        return 0;
    };
    let chacha = suite & 1 == 1;
    let seq = u64::from_be_bytes([*s0, *s1, *s2, *s3, *s4, *s5, *s6, *s7]);
    let Ok(mut keys) = Keys::new(seq, tls_secrets(chacha)) else {
        return 0;
    };
    let _ = record::key_update_after(seq);
    let mut limits = PeerLimits::default();
    let mut accepted = 0;
    for (kind, bytes) in chunks(rest) {
        // What the record must open to, when we know (typ, content).
        let mut expect: Option<(u8, &[u8])> = None;
        let mut rec = match kind % 4 {
            0 => bytes.to_vec(),
            1 | 2 => {
                let end = bytes.iter().rposition(|&b| b != 0);
                if let Some(end) = end
                    && bytes.len() <= record::MAX_PLAIN + 1
                    && keys.seq() != u64::MAX
                {
                    expect = Some((bytes[end], &bytes[..end]));
                }
                tls_seal_inner(chacha, keys.seq(), bytes)
            }
            _ => {
                let Ok(mut ours) = Keys::new(keys.seq(), tls_secrets(chacha)) else {
                    return accepted;
                };
                let (typ, plain) = bytes
                    .split_first()
                    .unwrap_or((&record::APPLICATION_DATA, &[]));
                let plain = &plain[..plain.len().min(record::MAX_PLAIN)];
                let mut out = BytesMut::new();
                if ours.seal(*typ, plain, &mut out).is_err() {
                    continue;
                }
                if *typ != 0 {
                    expect = Some((*typ, plain));
                }
                out.to_vec()
            }
        };
        let before = keys.seq();
        if kind % 4 == 2 && !rec.is_empty() {
            let at = usize::from(kind / 4) % rec.len();
            rec[at] ^= 0x01;
            assert!(keys.open(&mut rec).is_err(), "a flipped record opened");
            assert_eq!(
                keys.seq(),
                before,
                "a refused record moved the sequence number"
            );
            continue;
        }
        let _ = record::record_len(&rec);
        match keys.open(&mut rec) {
            Ok((typ, n)) => {
                accepted += 1;
                let plain = &rec[record::HEADER..record::HEADER + n];
                if let Some(want) = expect {
                    assert_eq!((typ, plain), want, "record (seq {before}) opens to another");
                }
                if let Err(e) = tls_take(typ, plain, &mut limits) {
                    let _ = (e.alert(), e.to_string());
                }
            }
            Err(e) => {
                assert!(expect.is_none(), "record (seq {before}) refused: {e}");
                // A record refused for its content was authenticated: it used its number.
                let authenticated = matches!(
                    e,
                    record::RecordError::InnerTooLong(_) | record::RecordError::NoContentType
                );
                assert_eq!(
                    keys.seq(),
                    before + u64::from(authenticated),
                    "a refused record moved the sequence number"
                );
                let _ = (e.alert(), e.to_string());
            }
        }
    }
    accepted
}

/// `h2`: the HTTP/2 codec as HBONE's server (first byte even) or client (odd) receiving
/// the rest from its peer ([`h2::fuzz_recv`]: both halves, answers, export and import).
pub fn h2(data: &[u8]) -> usize {
    let Some((role, bytes)) = data.split_first() else {
        return 0;
    };
    let role = if role & 1 == 0 {
        h2::Role::Server
    } else {
        h2::Role::Client
    };
    h2::fuzz_recv(role, bytes)
}

/// `xds`: first byte 0: an `istio.workload.Address` to convert; 1: an
/// `istio.security.Authorization`; 2, 3, 4+: a `DeltaDiscoveryResponse` applied to a fresh
/// store (type forced to Address, to Authorization, or as decoded), the snapshot built, then
/// every resource it named removed by a second response.
pub fn xds(data: &[u8]) -> usize {
    let Some((mode, bytes)) = data.split_first() else {
        return 0;
    };
    match mode {
        0 => pb::Address::decode(bytes)
            .ok()
            .and_then(|a| convert::address(a).ok())
            .map_or(0, |_| 1),
        1 => pb_sec::Authorization::decode(bytes)
            .ok()
            .and_then(|a| convert::authorization(a).ok())
            .map_or(0, |_| 1),
        _ => {
            let Ok(mut r) = discovery::DeltaDiscoveryResponse::decode(bytes) else {
                return 0;
            };
            match mode {
                2 => r.type_url = proto::ADDRESS_TYPE.into(),
                3 => r.type_url = proto::AUTHORIZATION_TYPE.into(),
                _ => {}
            }
            let mut store = XdsStore::default();
            let applied = store.apply(&r);
            let _ = applied.nack_message();
            let _ = store.versions(&r.type_url);
            let (snap, _) = store.snapshot(1);
            let _ = snap.workloads.len();
            let removal = discovery::DeltaDiscoveryResponse {
                type_url: r.type_url.clone(),
                removed_resources: r.resources.iter().map(|x| x.name.clone()).collect(),
                ..Default::default()
            };
            store.apply(&removal);
            assert!(
                store.versions(&r.type_url).is_empty(),
                "a removed resource is still reported as held"
            );
            let _ = store.snapshot(2);
            applied.updated
        }
    }
}

/// One generated seed input of a target.
#[derive(Debug, Clone)]
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

/// A fuzz entry point: bytes in, how many were accepted out.
pub type Target = fn(&[u8]) -> usize;

/// The targets, by name, as `tests/fuzz/fuzz_targets/<name>.rs` and the corpus directories.
pub const TARGETS: [(&str, Target); 7] = [
    ("config", config),
    ("zds", zds),
    ("connect", connect),
    ("policy", policy),
    ("tls_record", tls_record),
    ("h2", h2),
    ("xds", xds),
];

/// Valid inputs of every target (each is accepted: its function returns more than 0),
/// written to `tests/fuzz/corpus/<target>/seed-<name>`.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target, name, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name,
            bytes,
        })
    };
    for (name, text) in CONFIG_SEEDS {
        add("config", name, text.as_bytes().to_vec());
    }
    let rec = |m: zds::Payload| zds::encode(&zds::WorkloadRequest { payload: Some(m) });
    let info = zds::WorkloadInfo {
        name: "web".into(),
        namespace: "default".into(),
        service_account: "web".into(),
    };
    let add_a = rec(zds::Payload::Add(zds::AddWorkload {
        uid: "cluster1//v1/Pod/default/web".into(),
        workload_info: Some(info),
    }));
    let keep = rec(zds::Payload::Keep(zds::KeepWorkload { uid: "old".into() }));
    let snap = rec(zds::Payload::SnapshotSent(zds::SnapshotSent {}));
    let del = rec(zds::Payload::Del(zds::DelWorkload { uid: "old".into() }));
    add(
        "zds",
        "snapshot",
        frames(&[(1, &add_a), (0, &keep), (0, &snap), (0, &del)]),
    );
    add(
        "zds",
        "after-snapshot",
        frames(&[(0, &snap), (1, &add_a), (0, &keep)]),
    );
    add(
        "zds",
        "handover-take",
        br#"{"op":"take","uid":"u1"}"#.to_vec(),
    );
    let mut relay = crate::io::relay::RelayState::default();
    relay.a_to_b.bytes = 1 << 20;
    relay.a_to_b.unsent = b"queued".to_vec();
    relay.b_to_a.unwritten = b"on its way".to_vec();
    add("zds", "handover-relay-state", relay.encode());
    for (name, text) in CONNECT_SEEDS {
        add("connect", name, text.as_bytes().to_vec());
    }
    for (name, case) in policy_seeds() {
        add("policy", name, case.encode_to_vec());
    }
    for (name, bytes) in tls_seeds() {
        add("tls_record", name, bytes);
    }
    let (to_server, to_client) = h2_exchange();
    add("h2", "server", [&[0][..], &to_server].concat());
    add("h2", "client", [&[1][..], &to_client].concat());
    for (name, bytes) in xds_seeds() {
        add("xds", name, bytes);
    }
    out
}

/// `[ctl][len: u16 BE][bytes]` chunks; the last one may be cut short.
fn chunks(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let [ctl, hi, lo, rest @ ..] = data else {
            return None;
        };
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        data = tail;
        Some((*ctl, chunk))
    })
}

/// The inverse of [`chunks`].
fn frames(parts: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ctl, p) in parts {
        out.push(*ctl);
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn tls_secrets(chacha: bool) -> ConnectionTrafficSecrets {
    let (key, iv) = (AeadKey::from(TLS_KEY), Iv::new(TLS_IV));
    if chacha {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    } else {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    }
}

/// A record whose inner plaintext is `inner` as given (so any padding, any or no type, any
/// length up to what the outer length field holds), sealed as a peer at `seq` would.
fn tls_seal_inner(chacha: bool, seq: u64, inner: &[u8]) -> Vec<u8> {
    let alg = if chacha {
        &aead::CHACHA20_POLY1305
    } else {
        &aead::AES_256_GCM
    };
    let Ok(key) = UnboundKey::new(alg, &TLS_KEY) else {
        return Vec::new();
    };
    let inner = &inner[..inner.len().min(usize::from(u16::MAX) - record::TAG)];
    let len = inner.len() + record::TAG;
    let header = [record::APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
    let mut nonce = TLS_IV;
    for (b, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    let mut body = inner.to_vec();
    let sealed = LessSafeKey::new(key).seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(header),
        &mut body,
    );
    if sealed.is_err() {
        return Vec::new();
    }
    [&header[..], &body].concat()
}

/// What the reader does with an opened record of content type `typ`.
fn tls_take(typ: u8, plain: &[u8], limits: &mut PeerLimits) -> Result<(), record::RecordError> {
    match typ {
        record::APPLICATION_DATA => limits.app_data(),
        record::HANDSHAKE => {
            for m in record::post_handshake(plain)? {
                if let PostHandshake::KeyUpdate { .. } = m? {
                    limits.key_update()?;
                }
            }
        }
        record::ALERT => {
            let a = record::alert(plain)?;
            let _ = a.to_string();
            if a == record::Alert::UserCanceled {
                limits.warning_alert()?;
            }
        }
        t => return Err(record::RecordError::UnexpectedType(t)),
    }
    Ok(())
}

const CONFIG_SEEDS: [(&str, &str); 3] = [
    (
        "local-config",
        r#"workloads:
- uid: cluster1//v1/Pod/default/client
  name: client
  namespace: default
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["198.18.0.1", "fd00::1"]
  protocol: HBONE
  node: node-a
  services:
    "default/echo.default.svc.cluster.local":
      80: 8080
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: ["/198.19.0.10"]
  ports: {80: 8080}
policies:
- name: allow-front
  namespace: default
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact "cluster.local/ns/front/sa/web", !Prefix "x", !Suffix "y", !Presence []]
      - notDestinationPorts: [9999]
        sourceIps: ["198.18.0.0/16"]
"#,
    ),
    ("empty", "workloads: []\nservices: []\npolicies: []\n"),
    (
        "env",
        "ZTUNNEL_WORKER_THREADS=50%\nPOOL_UNUSED_RELEASE_TIMEOUT=1h30m\nTERMINATION_GRACE_PERIOD_SECONDS=30\nRUST_LOG=info,ringmesh=debug\nISTIO_META_CLUSTER_ID=c1\nXDS_HEADER_x-a=b\n",
    ),
];

const CONNECT_SEEDS: [(&str, &str); 3] = [
    (
        "inbound",
        ":method CONNECT\n:authority 10.0.0.1:8080\nforwarded for=\"198.18.0.1:40000\";host=echo.default.svc.cluster.local\nbaggage k8s.namespace.name=default\ntraceparent 00-0000000000000000000000000000002a-0000000000000007-00\n@host echo.default.svc.cluster.local\n@baggage k8s.namespace.name=default",
    ),
    (
        "inbound-v6",
        ":method CONNECT\n:authority [::ffff:10.0.0.1]:80\n@local ::ffff:10.0.0.1",
    ),
    (
        "inbound-v6-pod",
        ":method CONNECT\n:authority [fd00::2]:443\n@local fd00::2",
    ),
];

fn policy_seeds() -> Vec<(&'static str, PolicyCase)> {
    use pb_sec::string_match::MatchType as T;
    let sm = |t| pb_sec::StringMatch {
        match_type: Some(t),
    };
    let cidr = |b: &[u8], length| pb_sec::Address {
        address: b.to_vec(),
        length,
    };
    let every = pb_sec::Match {
        namespaces: vec![sm(T::Exact("front".into()))],
        not_namespaces: vec![sm(T::Prefix("kube-".into()))],
        service_accounts: vec![pb_sec::ServiceAccountMatch {
            namespace: "front".into(),
            service_account: "web".into(),
        }],
        principals: vec![sm(T::Suffix("/sa/web".into())), sm(T::Presence(()))],
        source_ips: vec![cidr(&[198, 18, 0, 0], 16)],
        not_source_ips: vec![cidr(&[198, 18, 1, 7], 32)],
        destination_ips: vec![cidr(&[198, 18, 0, 2], 32)],
        destination_ports: vec![8080],
        not_destination_ports: vec![9999],
        ..Default::default()
    };
    let auth = |name: &str, scope: pb_sec::Scope, action: pb_sec::Action, m: pb_sec::Match| {
        pb_sec::Authorization {
            name: name.into(),
            namespace: "default".into(),
            scope: scope as i32,
            action: action as i32,
            rules: vec![pb_sec::Rule {
                clauses: vec![pb_sec::Clause { matches: vec![m] }],
            }],
            ..Default::default()
        }
    };
    let base = PolicyCase {
        policies: vec![],
        selected: vec![],
        namespace: "default".into(),
        src_ip: vec![198, 18, 0, 1],
        src_port: 40000,
        dst_ip: vec![198, 18, 0, 2],
        dst_port: 8080,
        identity: "spiffe://cluster.local/ns/front/sa/web".into(),
    };
    let deny_port = pb_sec::Match {
        destination_ports: vec![8080],
        ..Default::default()
    };
    vec![
        ("none", base.clone()),
        (
            "allow-every-kind",
            PolicyCase {
                policies: vec![auth(
                    "a",
                    pb_sec::Scope::Namespace,
                    pb_sec::Action::Allow,
                    every,
                )],
                ..base.clone()
            },
        ),
        (
            "selector-and-dry-run-deny",
            PolicyCase {
                policies: vec![
                    auth(
                        "sel",
                        pb_sec::Scope::WorkloadSelector,
                        pb_sec::Action::Allow,
                        Default::default(),
                    ),
                    pb_sec::Authorization {
                        dry_run: true,
                        ..auth("d", pb_sec::Scope::Global, pb_sec::Action::Deny, deny_port)
                    },
                ],
                selected: vec!["default/sel".into()],
                src_ip: "fd00::1"
                    .parse::<std::net::Ipv6Addr>()
                    .map(|a| a.octets().to_vec())
                    .unwrap_or_default(),
                identity: String::new(),
                ..base.clone()
            },
        ),
    ]
}

fn tls_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let head = |suite: u8| [&[suite][..], &[0; 8]].concat();
    let app = [&b"hello"[..], &[record::APPLICATION_DATA, 0, 0]].concat();
    let key_update = [&record::KEY_UPDATE_NOT_REQUESTED[..], &[record::HANDSHAKE]].concat();
    let ticket = [&[4, 0, 0, 2, 1, 2][..], &[record::HANDSHAKE]].concat();
    let cancel = [1, 90, record::ALERT];
    let raw = tls_seal_inner(false, 3, &app);
    vec![
        (
            "aes",
            [
                head(0),
                frames(&[
                    (1, &app),
                    (1, &key_update),
                    (1, &ticket),
                    (1, &cancel),
                    (2, &app),
                    (0, &raw),
                ]),
            ]
            .concat(),
        ),
        (
            "chacha",
            [
                head(1),
                frames(&[(3, &[record::APPLICATION_DATA, b'x']), (1, &app)]),
            ]
            .concat(),
        ),
    ]
}

/// One HBONE exchange through the codec: what the client sends (preface, settings, a
/// CONNECT with data, a ping, a second CONNECT, a reset) and what the server answers.
fn h2_exchange() -> (Vec<u8>, Vec<u8>) {
    use h2::{Config, Conn, Event, Reason, Role};
    let mut c = Conn::new(Role::Client, Config::default());
    let mut s = Conn::new(Role::Server, Config::default());
    let head = |port: u16| {
        let dst = SocketAddr::new(CONNECT_LOCAL, port);
        let req = hbone::connect_request(
            dst,
            &hbone::ConnectHeaders {
                client: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 40000),
                service_host: Some("echo.default.svc.cluster.local".into()),
                baggage: "k8s.namespace.name=default".into(),
                traceparent: hbone::traceparent(42, 7),
            },
        );
        h2::request_fields(&req)
    };
    if let Ok(id) = c.open_stream(&head(8080), false) {
        let _ = c.send_data(id, b"hello", false);
    }
    let _ = c.send_ping(*b"pingpong");
    if let Ok(id) = c.open_stream(&head(8081), false) {
        c.reset(id, Reason::CANCEL);
    }
    let to_server = c.pending_output().to_vec();
    let mut events = Vec::new();
    let _ = s.recv(&to_server, &mut events);
    for ev in &events {
        if let Event::StreamOpened { id, .. } = ev {
            let _ = s.send_headers(
                *id,
                &h2::response_fields(200, &http::HeaderMap::new()),
                false,
            );
            let _ = s.send_data(*id, b"world", true);
        }
    }
    s.send_goaway(Reason::NO_ERROR, b"bye");
    (to_server, s.pending_output().to_vec())
}

fn xds_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let pod = pb::Workload {
        uid: "cluster1//v1/Pod/default/web".into(),
        name: "web".into(),
        namespace: "default".into(),
        service_account: "web".into(),
        addresses: vec![vec![198, 18, 1, 2]],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        services: [(
            "default/echo.default.svc.cluster.local".to_string(),
            pb::PortList {
                ports: vec![pb::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]
        .into(),
        authorization_policies: vec!["default/p".into()],
        ..Default::default()
    };
    let svc = pb::Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![198, 19, 10, 1],
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: pb::AppProtocol::Http11 as i32,
        }],
        ..Default::default()
    };
    let addr = |t| pb::Address { r#type: Some(t) };
    let w = addr(pb::address::Type::Workload(pod));
    let s = addr(pb::address::Type::Service(svc));
    let pol = policy_seeds().swap_remove(1).1.policies.swap_remove(0);
    let res = |name: &str, type_url: &str, value: Vec<u8>| discovery::Resource {
        name: name.into(),
        version: "v1".into(),
        resource: Some(prost_types::Any {
            type_url: type_url.into(),
            value,
        }),
        ..Default::default()
    };
    let addrs = discovery::DeltaDiscoveryResponse {
        type_url: proto::ADDRESS_TYPE.into(),
        resources: vec![
            res(
                "cluster1//v1/Pod/default/web",
                proto::ADDRESS_TYPE,
                w.encode_to_vec(),
            ),
            res(
                "default/echo.default.svc.cluster.local",
                proto::ADDRESS_TYPE,
                s.encode_to_vec(),
            ),
        ],
        removed_resources: vec!["gone".into()],
        nonce: "n1".into(),
        ..Default::default()
    };
    let auths = discovery::DeltaDiscoveryResponse {
        type_url: proto::AUTHORIZATION_TYPE.into(),
        resources: vec![res(
            "default/p",
            proto::AUTHORIZATION_TYPE,
            pol.encode_to_vec(),
        )],
        nonce: "n2".into(),
        ..Default::default()
    };
    let with = |mode: u8, m: Vec<u8>| [vec![mode], m].concat();
    vec![
        ("workload", with(0, w.encode_to_vec())),
        ("service", with(0, s.encode_to_vec())),
        ("authorization", with(1, pol.encode_to_vec())),
        ("delta-addresses", with(2, addrs.encode_to_vec())),
        ("delta-authorizations", with(4, auths.encode_to_vec())),
    ]
}
