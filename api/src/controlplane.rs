//! The control plane's records as its REST API serves them: shared by the server
//! (`palisade-control-plane`), its client (`palisade-cp-client`) and everything built on them.

use std::net::IpAddr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Cluster id, the high 8 bits of every identity (cluster mesh).
    pub cluster_id: u8,
    /// The CIDR node pod CIDRs are allocated from.
    pub cluster_cidr: Ipv4Net,
    /// Prefix length of each node's pod CIDR.
    pub node_prefix_len: u8,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_id: 0,
            cluster_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 200, 0, 0), 16)
                .unwrap_or_default(),
            node_prefix_len: 24,
        }
    }
}

/// A security identity and the label set it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The identity (cluster bits included).
    pub id: u32,
    /// Sorted, deduplicated labels.
    pub labels: Vec<String>,
    /// Replicated-clock time since when no endpoint references it (`None` while referenced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreferenced_since_ms: Option<u64>,
    /// Set when a node bound this id from its leased block for a label set that already had an
    /// id: the canonical id, which the label set resolves to and endpoints move to. Both stay
    /// valid (selectors match labels) until this alias is unreferenced and collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<u32>,
}

/// A block of identities leased to a node: it binds new label sets from it without a round trip
/// and commits each binding afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdBlock {
    /// First id of the block (cluster bits included).
    pub first: u32,
    /// Number of ids.
    pub count: u32,
}

impl IdBlock {
    /// Whether `id` is inside the block.
    pub fn contains(&self, id: u32) -> bool {
        id >= self.first && id - self.first < self.count
    }
}

/// What a node sends to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// Node name, unique in the cluster.
    pub name: String,
    /// Underlay address other nodes reach it at.
    pub address: IpAddr,
    /// WireGuard public key (base64 of 32 bytes).
    pub wireguard_public_key: String,
    /// Epoch of that key; a registration with an older epoch than the stored one is rejected.
    pub wireguard_epoch: u64,
    /// The pod CIDR this node asks for (a /`node_prefix_len` of the cluster CIDR, free); when
    /// absent the control plane picks the first free one. Ignored on re-registration (a node
    /// keeps its pod CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub address: IpAddr,
    /// Pod CIDR allocated from the cluster CIDR.
    pub pod_cidr: Ipv4Net,
    /// WireGuard public key.
    pub wireguard_public_key: String,
    /// Epoch of that key.
    pub wireguard_epoch: u64,
    /// Replicated-clock time of its last heartbeat or registration (ms since the epoch).
    #[serde(default)]
    pub last_heartbeat_ms: u64,
}

/// An endpoint: IP → identity on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Endpoint IP.
    pub ip: IpAddr,
    /// Its identity.
    pub identity: u32,
    /// The node hosting it.
    pub node: String,
    /// The pod's named container ports: what egress rules with named ports resolve to on
    /// other nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::agent::ContainerPort>,
}

/// The key of a policy object: `kind/namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    /// Object kind, e.g. `CiliumNetworkPolicy`.
    pub kind: String,
    /// Namespace, `-` for cluster-scoped kinds.
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl PolicyKey {
    /// The storage key, `kind/namespace/name`.
    pub fn storage_key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A stored policy object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Its key.
    pub key: PolicyKey,
    /// The raw object.
    pub object: serde_json::Value,
    /// The policy revision this object was last written at.
    pub revision: u64,
    /// The policy revision it was created at (0 in records written before it was kept).
    #[serde(default)]
    pub created_revision: u64,
}

/// One change of an object, as served to watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Change revision.
    pub revision: u64,
    /// The policy revision once this change was applied: a watcher that applied every change
    /// up to this one enforces this policy revision (what it acknowledges).
    #[serde(default)]
    pub policy_revision: u64,
    /// When it was applied, on the replicated clock (ms since the epoch): the start of the
    /// propagation latency a node measures.
    #[serde(default)]
    pub at_ms: u64,
    /// `identity`, `node`, `endpoint` or `policy`.
    pub kind: String,
    /// The object's key in its table.
    pub key: String,
    /// The object's current value; `None` when it is deleted.
    pub value: Option<serde_json::Value>,
}
