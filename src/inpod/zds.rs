//! ZDS, istio-cni's enrolment protocol: the messages (istio's `zds.proto`, same package
//! semantics and field numbers, written as prost structs so no protoc is needed) and the
//! session state machine, which is pure: a request in, an action or a protocol error out.
//!
//! Sequence (per connection): node proxy sends `ZdsHello{V1}`; the CNI sends `Add` (with the
//! pod's netns fd) / `Keep` for every pod it knows, then `SnapshotSent`, then `Add`/`Del` as
//! pods come and go. Every request gets an `Ack` (empty error = ACK, else NACK + reason).
//!
//! ```text
//!  Connected ──Add/Keep/Del──► Connected ──SnapshotSent──► Synced ──Add/Del──► Synced
//!      (Keep after SnapshotSent, a second SnapshotSent: NACK, state unchanged)
//! ```

use std::collections::BTreeSet;

use prost::Message;

/// The largest ZDS message either side sends or accepts (one SEQPACKET record).
pub const MAX_MESSAGE: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Version {
    NotUsed = 0,
    V1 = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ZdsHello {
    #[prost(enumeration = "Version", tag = "1")]
    pub version: i32,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WorkloadInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub service_account: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AddWorkload {
    #[prost(string, tag = "1")]
    pub uid: String,
    #[prost(message, optional, tag = "2")]
    pub workload_info: Option<WorkloadInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeepWorkload {
    #[prost(string, tag = "1")]
    pub uid: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DelWorkload {
    #[prost(string, tag = "2")]
    pub uid: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotSent {}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Payload {
    #[prost(message, tag = "1")]
    Add(AddWorkload),
    #[prost(message, tag = "5")]
    Keep(KeepWorkload),
    #[prost(message, tag = "2")]
    Del(DelWorkload),
    #[prost(message, tag = "3")]
    SnapshotSent(SnapshotSent),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadRequest {
    #[prost(oneof = "Payload", tags = "1, 5, 2, 3")]
    pub payload: Option<Payload>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(string, tag = "1")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ResponsePayload {
    #[prost(message, tag = "1")]
    Ack(Ack),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadResponse {
    #[prost(oneof = "ResponsePayload", tags = "1")]
    pub payload: Option<ResponsePayload>,
}

impl WorkloadResponse {
    pub fn ack() -> Self {
        Self::nack(String::new())
    }

    pub fn nack(error: String) -> Self {
        WorkloadResponse {
            payload: Some(ResponsePayload::Ack(Ack { error })),
        }
    }

    /// The NACK reason, or `None` for an ACK.
    pub fn error(&self) -> Option<&str> {
        match &self.payload {
            Some(ResponsePayload::Ack(a)) if a.error.is_empty() => None,
            Some(ResponsePayload::Ack(a)) => Some(&a.error),
            None => Some("response without an ack"),
        }
    }
}

/// Encodes a message as one ZDS record.
pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// What the node proxy must do for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start (or keep, if the same netns) serving a pod; the netns fd came with the message.
    Add { uid: String, info: WorkloadInfo },
    /// Nothing to start: the pod is known and stays.
    Keep { uid: String },
    /// Stop serving a pod.
    Del { uid: String },
    /// The snapshot is complete: stop serving every pod not in `keep`.
    Reconcile { keep: BTreeSet<String> },
}

/// Why a request is refused (sent back as the NACK reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZdsError {
    #[error("message of {0} bytes does not decode as WorkloadRequest: {1}")]
    Decode(usize, String),
    #[error("message truncated: ZDS messages are at most {MAX_MESSAGE} bytes")]
    Truncated,
    #[error("request has no payload")]
    Empty,
    #[error("add for {0} carries no network namespace fd")]
    MissingFd(String),
    #[error("{0} must not carry a file descriptor (only add does)")]
    UnexpectedFd(&'static str),
    #[error("{0} carried {1} file descriptors, expected exactly one")]
    TooManyFds(&'static str, usize),
    #[error("add for {0} has no workload_info")]
    MissingInfo(String),
    #[error("{0} has an empty uid")]
    EmptyUid(&'static str),
    #[error("keep for {0} after snapshot_sent: keep is only valid during the snapshot")]
    KeepAfterSnapshot(String),
    #[error("second snapshot_sent on one connection")]
    DuplicateSnapshot,
}

/// One ZDS connection's state: whether the snapshot is complete, and the pods it named.
#[derive(Debug, Default)]
pub struct Session {
    synced: bool,
    named: BTreeSet<String>,
}

impl Session {
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Decodes and checks one record (`fds` = how many fds came with it).
    pub fn handle(
        &mut self,
        record: &[u8],
        fds: usize,
        truncated: bool,
    ) -> Result<Action, ZdsError> {
        if truncated {
            return Err(ZdsError::Truncated);
        }
        let req = WorkloadRequest::decode(record)
            .map_err(|e| ZdsError::Decode(record.len(), e.to_string()))?;
        let name = match &req.payload {
            None => return Err(ZdsError::Empty),
            Some(Payload::Add(_)) => "add",
            Some(Payload::Keep(_)) => "keep",
            Some(Payload::Del(_)) => "del",
            Some(Payload::SnapshotSent(_)) => "snapshot_sent",
        };
        match (name, fds) {
            ("add", 0) => {}
            ("add", 1) => {}
            ("add", n) => return Err(ZdsError::TooManyFds("add", n)),
            (n, f) if f > 0 => return Err(ZdsError::UnexpectedFd(n)),
            _ => {}
        }
        match req.payload.expect("checked above") {
            Payload::Add(a) => {
                if a.uid.is_empty() {
                    return Err(ZdsError::EmptyUid("add"));
                }
                if fds == 0 {
                    return Err(ZdsError::MissingFd(a.uid));
                }
                let info = a
                    .workload_info
                    .ok_or(ZdsError::MissingInfo(a.uid.clone()))?;
                if !self.synced {
                    self.named.insert(a.uid.clone());
                }
                Ok(Action::Add { uid: a.uid, info })
            }
            Payload::Keep(k) => {
                if k.uid.is_empty() {
                    return Err(ZdsError::EmptyUid("keep"));
                }
                if self.synced {
                    return Err(ZdsError::KeepAfterSnapshot(k.uid));
                }
                self.named.insert(k.uid.clone());
                Ok(Action::Keep { uid: k.uid })
            }
            Payload::Del(d) => {
                if d.uid.is_empty() {
                    return Err(ZdsError::EmptyUid("del"));
                }
                self.named.remove(&d.uid);
                Ok(Action::Del { uid: d.uid })
            }
            Payload::SnapshotSent(_) => {
                if self.synced {
                    return Err(ZdsError::DuplicateSnapshot);
                }
                self.synced = true;
                Ok(Action::Reconcile {
                    keep: std::mem::take(&mut self.named),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(uid: &str) -> Vec<u8> {
        encode(&WorkloadRequest {
            payload: Some(Payload::Add(AddWorkload {
                uid: uid.into(),
                workload_info: Some(WorkloadInfo {
                    name: "web".into(),
                    namespace: "default".into(),
                    service_account: "sa".into(),
                }),
            })),
        })
    }

    fn req(p: Payload) -> Vec<u8> {
        encode(&WorkloadRequest { payload: Some(p) })
    }

    #[test]
    fn bytes_match_istio_field_numbers() {
        // Verified on the wire against ztunnel and istio-cni.
        assert_eq!(
            encode(&ZdsHello {
                version: Version::V1 as i32
            }),
            [0x08, 0x01]
        );
        assert_eq!(encode(&WorkloadResponse::ack()), [0x0a, 0x00]);
        assert_eq!(req(Payload::SnapshotSent(SnapshotSent {})), [0x1a, 0x00]);
        // add = field 1, uid = 1, workload_info = 2 {name 1, namespace 2, sa 3}
        let a = add("u");
        assert_eq!(&a[..5], &[0x0a, 0x17, 0x0a, 0x01, b'u']);
        assert_eq!(a[5], 0x12);
        // del = field 2 with uid in field 2; keep = field 5 with uid in field 1.
        assert_eq!(
            req(Payload::Del(DelWorkload { uid: "u".into() })),
            [0x12, 0x03, 0x12, 0x01, b'u']
        );
        assert_eq!(
            req(Payload::Keep(KeepWorkload { uid: "u".into() })),
            [0x2a, 0x03, 0x0a, 0x01, b'u']
        );
        let nack = encode(&WorkloadResponse::nack("bad".into()));
        assert_eq!(
            WorkloadResponse::decode(&nack[..]).unwrap().error(),
            Some("bad")
        );
    }

    #[test]
    fn snapshot_then_updates() {
        let mut s = Session::default();
        assert!(matches!(
            s.handle(&add("a"), 1, false),
            Ok(Action::Add { .. })
        ));
        assert!(matches!(
            s.handle(
                &req(Payload::Keep(KeepWorkload { uid: "b".into() })),
                0,
                false
            ),
            Ok(Action::Keep { .. })
        ));
        assert!(matches!(
            s.handle(&add("c"), 1, false),
            Ok(Action::Add { .. })
        ));
        s.handle(
            &req(Payload::Del(DelWorkload { uid: "c".into() })),
            0,
            false,
        )
        .unwrap();
        let r = s
            .handle(&req(Payload::SnapshotSent(SnapshotSent {})), 0, false)
            .unwrap();
        assert_eq!(
            r,
            Action::Reconcile {
                keep: ["a".to_string(), "b".to_string()].into()
            }
        );
        assert!(s.synced());
        // After the snapshot: add/del fine; keep and a second snapshot are refused.
        assert!(s.handle(&add("d"), 1, false).is_ok());
        assert_eq!(
            s.handle(
                &req(Payload::Keep(KeepWorkload { uid: "d".into() })),
                0,
                false
            ),
            Err(ZdsError::KeepAfterSnapshot("d".into()))
        );
        assert_eq!(
            s.handle(&req(Payload::SnapshotSent(SnapshotSent {})), 0, false),
            Err(ZdsError::DuplicateSnapshot)
        );
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let mut s = Session::default();
        assert!(matches!(
            s.handle(&[0xff, 0xff, 0xff], 0, false),
            Err(ZdsError::Decode(..))
        ));
        assert_eq!(s.handle(&[], 0, false), Err(ZdsError::Empty));
        assert_eq!(
            s.handle(&add("a"), 0, false),
            Err(ZdsError::MissingFd("a".into()))
        );
        assert_eq!(
            s.handle(&add("a"), 2, false),
            Err(ZdsError::TooManyFds("add", 2))
        );
        assert_eq!(
            s.handle(
                &req(Payload::Del(DelWorkload { uid: "a".into() })),
                1,
                false
            ),
            Err(ZdsError::UnexpectedFd("del"))
        );
        assert_eq!(s.handle(&add("a"), 1, true), Err(ZdsError::Truncated));
        let no_info = req(Payload::Add(AddWorkload {
            uid: "x".into(),
            workload_info: None,
        }));
        assert_eq!(
            s.handle(&no_info, 1, false),
            Err(ZdsError::MissingInfo("x".into()))
        );
        assert_eq!(s.handle(&add(""), 1, false), Err(ZdsError::EmptyUid("add")));
        // Errors change nothing: a good request still works.
        assert!(s.handle(&add("a"), 1, false).is_ok());
    }
}
