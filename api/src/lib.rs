//! Palisade API types.
//!
//! The policy objects users already apply with kubectl (`cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy, `networking.k8s.io/v1` NetworkPolicy) as serde types, so the
//! policy engine, the control plane and the Kubernetes mirror share one definition. The
//! control plane's records live in [`controlplane`]; with the `grpc` feature, [`grpc`] holds the
//! automation gRPC API generated from `proto/`, and [`flow`], [`relay`] and [`observer`] the
//! Hubble-compatible flow observer.
//!
//! The types only describe shape (field names, types, unknown fields rejected); semantic checks
//! (port ranges, regular expressions, CIDRs, incompatible fields) live in `palisade-policy`, which
//! reports them with the field path.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agent;
pub mod controlplane;
pub mod crd;
#[cfg(feature = "grpc")]
pub mod grpc;

/// Hubble-compatible flow records (`flow` package, feature `grpc`), generated from
/// `proto/flow/flow.proto`.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod flow {
    tonic::include_proto!("flow");
}

#[cfg(feature = "grpc")]
pub mod flow_merge;

/// Hubble-compatible relay node states (`relay` package, feature `grpc`).
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod relay {
    tonic::include_proto!("relay");
}

/// Hubble-compatible `observer.Observer` service (feature `grpc`), generated from
/// `proto/observer/observer.proto`; the file documents who may call it.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod observer {
    tonic::include_proto!("observer");
}
