//! Palisade API types.
//!
//! The policy objects users already apply with kubectl (`cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy, `networking.k8s.io/v1` NetworkPolicy) as serde types, so the
//! policy engine, the control plane and the Kubernetes mirror share one definition. The
//! control plane's records live in [`controlplane`]; with the `grpc` feature, [`grpc`] holds the
//! automation gRPC API generated from `proto/`.
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
