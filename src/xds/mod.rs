//! istiod's xDS: the delta ADS client for the Workload (`istio.workload.Address`) and
//! Authorization (`istio.security.Authorization`) APIs, and the gRPC channels to the control
//! plane that the CA client shares.
//!
//! ```text
//! istiod ──delta ADS──► client ──► store (resources by type/name) ──► Snapshot ──► control loop ──publish──► shards
//!                         ▲  ACK / NACK (per response)
//! ```
//!
//! Owns: the stream, the received resources and their conversion into the config model (the
//! same `Snapshot` the local config file builds: one model, two sources). Control thread only:
//! never a data-plane socket, never a shard.

pub mod client;
pub mod convert;
pub mod grpc;
pub mod store;

pub use client::{XdsConfig, XdsEvent, XdsStatus};
