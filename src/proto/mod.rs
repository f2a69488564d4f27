//! Generated protobuf types and gRPC stubs (from `src/proto/*.proto`, by `src/build.rs`):
//! Envoy's delta ADS, Istio's Workload and Authorization APIs, and Istio's CA service.
//!
//! Owns: nothing but the wire types. Conversion into the config model lives in `xds`; the
//! lab's control plane serves them from `lab::istiod`.

#![allow(clippy::all, missing_docs)] // generated code

pub mod envoy {
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
}

pub mod istio {
    pub mod workload {
        tonic::include_proto!("istio.workload");
    }
    pub mod security {
        tonic::include_proto!("istio.security");
    }
    pub mod ca {
        tonic::include_proto!("istio.v1.auth");
    }
}

pub use envoy::service::discovery::v3 as discovery;
pub use istio::ca;
pub use istio::security;
pub use istio::workload;

/// Type URL of Address resources (a Workload or a Service).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of Authorization resources (L4 policies).
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";
