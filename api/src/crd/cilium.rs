//! `cilium.io/v2` CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::meta::{IntOrString, LabelSelector, ObjectMeta};

/// A namespaced Cilium policy: one rule in `spec`, more in `specs`, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumNetworkPolicy {
    /// `cilium.io/v2`.
    pub api_version: String,
    /// `CiliumNetworkPolicy`.
    pub kind: String,
    /// Name, namespace, labels, annotations.
    pub metadata: ObjectMeta,
    /// One rule.
    #[serde(default)]
    pub spec: Option<Rule>,
    /// More rules.
    #[serde(default)]
    pub specs: Option<Vec<Rule>>,
    /// Ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// A cluster-wide Cilium policy: same shape as [`CiliumNetworkPolicy`], not namespaced.
pub type CiliumClusterwideNetworkPolicy = CiliumNetworkPolicy;

/// One Cilium rule: the endpoints it applies to and what they may send and receive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Endpoints the rule applies to (in the policy's namespace for a CiliumNetworkPolicy).
    #[serde(default)]
    pub endpoint_selector: Option<LabelSelector>,
    /// Nodes the rule applies to (host policy; CiliumClusterwideNetworkPolicy only).
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    /// Allowed incoming traffic.
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    /// Denied incoming traffic (wins over any allow).
    #[serde(default)]
    pub ingress_deny: Option<Vec<IngressRule>>,
    /// Allowed outgoing traffic.
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
    /// Denied outgoing traffic (wins over any allow).
    #[serde(default)]
    pub egress_deny: Option<Vec<EgressRule>>,
    /// Whether the rule puts its endpoints in default deny, per direction.
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Labels identifying the rule (free-form `key=value` or `{key, value, source}`).
    #[serde(default)]
    pub labels: Option<Vec<RuleLabel>>,
}

/// `enableDefaultDeny`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    /// Default deny at ingress; when absent, true iff the rule has ingress or ingressDeny rules.
    #[serde(default)]
    pub ingress: Option<bool>,
    /// Default deny at egress; when absent, true iff the rule has egress or egressDeny rules.
    #[serde(default)]
    pub egress: Option<bool>,
}

/// A rule label, as a string or as Cilium's `{key, value, source}` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RuleLabel {
    /// `key=value` or `key`.
    String(String),
    /// Structured label.
    Object(BTreeMap<String, String>),
}

/// An ingress (or ingressDeny) rule. Peers are ORed; peers and ports are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// Source endpoints by labels.
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Source entities (`world`, `cluster`, `host`, ...).
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    /// Source CIDRs (or single addresses).
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    /// Source CIDRs with exceptions.
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Destination ports (on the selected endpoint), with optional L7 rules.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// An egress (or egressDeny) rule. Peers are ORed; peers and ports are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination endpoints by labels.
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Destination entities.
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    /// Destination CIDRs (or single addresses).
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    /// Destination CIDRs with exceptions.
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Destination names learned through the DNS proxy (allow rules only, no other L3 peer).
    #[serde(default, rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    /// Destination ports, with optional L7 rules.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default)]
    pub icmps: Option<Vec<IcmpRule>>,
}

/// A CIDR with exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    /// The block.
    pub cidr: String,
    /// Sub-blocks excluded from it.
    #[serde(default)]
    pub except: Vec<String>,
}

/// A DNS name or pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    /// Exact name.
    #[serde(default)]
    pub match_name: Option<String>,
    /// Pattern with `*` (one label part) and a leading `**.` (any subdomains).
    #[serde(default)]
    pub match_pattern: Option<String>,
}

/// Ports and, optionally, L7 rules enforced on them by a proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    /// Ports, ORed.
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
    /// L7 rules (not allowed in deny rules).
    #[serde(default)]
    pub rules: Option<L7Rules>,
}

/// A port or port range and its protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    /// Number (`"0"` means every port) or named container port.
    pub port: IntOrString,
    /// Last port of a range starting at `port`.
    #[serde(default)]
    pub end_port: Option<i64>,
    /// `TCP`, `UDP`, `SCTP` or `ANY` (the three); `ANY` when omitted.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// L7 rules; one kind per port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L7Rules {
    /// HTTP rules, ORed.
    #[serde(default)]
    pub http: Option<Vec<HttpRule>>,
    /// DNS rules, ORed.
    #[serde(default)]
    pub dns: Option<Vec<DnsRule>>,
}

/// One HTTP rule; every field set must match (regular expressions match the whole value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    /// Method regex.
    #[serde(default)]
    pub method: Option<String>,
    /// Path regex.
    #[serde(default)]
    pub path: Option<String>,
    /// Host header regex.
    #[serde(default)]
    pub host: Option<String>,
    /// Headers that must be present: `Name` or `Name: value`.
    #[serde(default)]
    pub headers: Option<Vec<String>>,
}

/// One DNS rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsRule {
    /// Exact name.
    #[serde(default)]
    pub match_name: Option<String>,
    /// Pattern.
    #[serde(default)]
    pub match_pattern: Option<String>,
}

/// ICMP types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    /// Types, ORed.
    #[serde(default)]
    pub fields: Vec<IcmpField>,
}

/// One ICMP type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    /// `IPv4` (default) or `IPv6`.
    #[serde(default)]
    pub family: Option<String>,
    /// Type number (0-255) or name (`EchoRequest`, ...).
    #[serde(rename = "type")]
    pub icmp_type: IntOrString,
}
