//! Policy custom resources and Kubernetes NetworkPolicy, exactly as `kubectl apply` takes them.

pub mod cilium;
pub mod meta;
pub mod networkpolicy;

pub use cilium::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy};
pub use meta::{LabelSelector, LabelSelectorRequirement, ObjectMeta, Operator};
pub use networkpolicy::NetworkPolicy;

/// API group/version of the Cilium policy objects.
pub const CILIUM_API_VERSION: &str = "cilium.io/v2";
/// API group/version of Kubernetes NetworkPolicy.
pub const NETWORKING_API_VERSION: &str = "networking.k8s.io/v1";
