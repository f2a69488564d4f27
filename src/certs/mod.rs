//! The workload certificate lifecycle: getting each local identity a certificate, turning it
//! into rustls configs, publishing them to the shards, and rotating them.
//!
//! Owns: the certificate store and its half-life rotation (`store`) and the Istio CA client
//! (`caclient`). Builds on `identity` (the SPIFFE id, the built-in CA, the SVID reader) and
//! `tls` (the configs); neither may use this module (`tests/layering.rs`), which is what
//! keeps `identity` ↔ `tls` free of a cycle. Must not touch: sockets of the data plane or pod
//! network namespaces. Runs on the control thread; shards only read the published snapshot.

pub mod caclient;
pub mod store;
