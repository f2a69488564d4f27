//! ringmesh: a thread-per-core, ztunnel-compatible node proxy for Istio ambient mode.
//!
//! ```text
//!              control thread (never touches data-plane sockets)
//! config file ──► config ───────────┐
//! istiod xDS ──► xds (delta ADS) ───┴─► state::Snapshot (immutable, versioned) ──ArcSwap──► shards
//! built-in CA / istiod CA ──► certs::store (certs + rustls configs) ────────────ArcSwap──► shards
//! --pod / ZDS ──► inpod: setns into the pod, N SO_REUSEPORT listeners ──mailbox──► shards
//!
//!              shard = one OS thread, one single-threaded runtime, no locks on the data path
//! pod socket ──► proxy::outbound ──► route ──► pool (per shard) ──► tls ──► h2 CONNECT ──► wire
//! wire ──► tls ──► h2 ──► proxy::inbound ──► policy::evaluate ──► pod socket
//! ```
//!
//! | thread        | count            | owns                                                   |
//! |---------------|------------------|--------------------------------------------------------|
//! | main/control  | 1                | config reload or xDS, CA (client) + rotation, snapshots |
//! | `shard-N`     | 1 per core       | per pod: listeners 15001, 15006, 15008; pool; conns    |
//!
//! Layering (arrows only upward, checked by `tests/layering.rs`): pure cores (`state`,
//! `policy`, `tls`, `hbone`, `config`, `proto`) ← drivers (`io`) ← flows (`proxy`, `inpod`) ←
//! wiring (`app`); the control thread's `xds`, `identity`, `certs` and `admin` never touch
//! the data plane (`identity` ← `tls` ← `certs`); `runtime` is the platform layer;
//! `telemetry` is passive. No two top-level modules use each other, directly or round a
//! longer loop. `lab`, `demo` and `benchmark` are behind the `lab` feature (default on; the
//! cluster build leaves them out).

#![deny(unsafe_code)]

pub mod admin;
pub mod app;
#[cfg(feature = "lab")]
pub mod benchmark;
pub mod certs;
pub mod config;
#[cfg(feature = "lab")]
pub mod demo;
#[doc(hidden)] // the cargo-fuzz targets' entry points (tests/fuzz)
pub mod fuzzing;
pub mod hbone;
pub mod identity;
#[allow(unsafe_code)] // fd passing (SCM_RIGHTS); each block has a SAFETY comment
pub mod inpod;
#[macro_use]
pub mod io;
#[cfg(feature = "lab")]
pub mod lab;
pub mod policy;
pub mod proto;
pub mod proxy;
#[allow(unsafe_code)] // the platform layer (io_uring engine); each block has a SAFETY comment
pub mod runtime;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod waypoint;
pub mod xds;
