//! `networking.k8s.io/v1` NetworkPolicy.

use serde::{Deserialize, Serialize};

use super::meta::{IntOrString, LabelSelector, ObjectMeta};

/// A Kubernetes NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// `networking.k8s.io/v1`.
    pub api_version: String,
    /// `NetworkPolicy`.
    pub kind: String,
    /// Name, namespace, labels, annotations.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: NetworkPolicySpec,
    /// Ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `spec` of a [`NetworkPolicy`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Pods of the policy's namespace the policy applies to; `{}` selects all of them.
    pub pod_selector: LabelSelector,
    /// Directions the policy isolates. When omitted: `Ingress`, plus `Egress` when `egress` has
    /// at least one rule (the API server's defaulting).
    #[serde(default)]
    pub policy_types: Option<Vec<PolicyType>>,
    /// Allowed incoming traffic, ORed.
    #[serde(default)]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Allowed outgoing traffic, ORed.
    #[serde(default)]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

/// A direction a [`NetworkPolicy`] isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyType {
    /// Incoming traffic.
    Ingress,
    /// Outgoing traffic.
    Egress,
}

/// One ingress rule: traffic from any of `from` to any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyIngressRule {
    /// Sources, ORed; empty or absent means every source.
    #[serde(default)]
    pub from: Vec<NetworkPolicyPeer>,
    /// Ports, ORed; empty or absent means every port.
    #[serde(default)]
    pub ports: Vec<NetworkPolicyPort>,
}

/// One egress rule: traffic to any of `to` on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyEgressRule {
    /// Destinations, ORed; empty or absent means every destination.
    #[serde(default)]
    pub to: Vec<NetworkPolicyPeer>,
    /// Ports, ORed; empty or absent means every port.
    #[serde(default)]
    pub ports: Vec<NetworkPolicyPort>,
}

/// A peer: pods (by pod and/or namespace labels, ANDed when both are given) or an IP block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// Pods by their labels (in the policy's namespace unless `namespaceSelector` is set).
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by their labels.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// An IP block; matches external addresses and pods whose IP falls in it.
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

/// A CIDR with exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpBlock {
    /// The block, e.g. `192.168.0.0/16`.
    pub cidr: String,
    /// Sub-blocks excluded from `cidr`.
    #[serde(default)]
    pub except: Vec<String>,
}

/// A port (number or named container port), a protocol and an optional range end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Number or named port; absent means every port of the protocol.
    #[serde(default)]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at `port` (numeric `port` only).
    #[serde(default)]
    pub end_port: Option<i64>,
}
