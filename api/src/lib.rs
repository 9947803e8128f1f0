//! Palisade API types.
//!
//! The policy objects users already apply with kubectl (`cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy, `networking.k8s.io/v1` NetworkPolicy) as serde types, so the
//! policy engine, the control plane and the Kubernetes mirror share one definition. Protobufs and
//! REST types arrive with the control plane (issue 4).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
