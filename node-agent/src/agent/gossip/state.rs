//! What one agent gossips about itself, as chitchat keys (versioned by chitchat, one value per
//! key), and the bounded decoding of a peer's keys. Pure code: no sockets, no engine.
//!
//! | key | value |
//! |---|---|
//! | `node` | JSON `{"address","podCidr","wireguardKey","wireguardEpoch"}` |
//! | `ep/<ip>` | the endpoint's identity (decimal) |
//! | `id/<id>` | JSON array of the identity's labels (`source:key=value`) |
//!
//! Bounds: at most [`MAX_ENDPOINTS`] endpoints and [`MAX_IDENTITIES`] identities per node,
//! values of at most [`MAX_VALUE`] bytes; what a peer sends beyond them is ignored and counted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Endpoints one node may gossip.
pub const MAX_ENDPOINTS: usize = 4_096;
/// Identities one node may gossip.
pub const MAX_IDENTITIES: usize = 1_024;
/// Longest value accepted.
pub const MAX_VALUE: usize = 4_096;
/// Reserved identities (Cilium's numbering) are never gossiped or accepted.
pub const FIRST_CLUSTER_ID: u32 = 256;
/// Cluster-local ids use the low 24 bits.
pub const LAST_CLUSTER_ID: u32 = 0x00FF_FFFF;

const NODE: &str = "node";
const EP: &str = "ep/";
const ID: &str = "id/";

/// A node's own record (the control plane keeps the authoritative copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Underlay address.
    pub address: IpAddr,
    /// Pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// WireGuard public key (base64).
    pub wireguard_key: String,
    /// Its epoch.
    pub wireguard_epoch: u64,
}

/// What a node gossips about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeGossip {
    /// Its record.
    pub node: Option<NodeInfo>,
    /// Its endpoints: address → identity.
    pub endpoints: BTreeMap<IpAddr, u32>,
    /// Identities its endpoints use and bindings it made from its block: id → labels.
    pub identities: BTreeMap<u32, Vec<String>>,
}

impl NodeGossip {
    /// The keys to publish (bounded as a receiver would bound them: what would be ignored is
    /// not sent).
    pub fn to_kv(&self) -> BTreeMap<String, String> {
        let mut kv = BTreeMap::new();
        if let Some(n) = &self.node
            && let Ok(v) = serde_json::to_string(n)
        {
            kv.insert(NODE.to_string(), v);
        }
        for (ip, id) in self.endpoints.iter().take(MAX_ENDPOINTS) {
            kv.insert(format!("{EP}{ip}"), id.to_string());
        }
        for (id, labels) in self
            .identities
            .iter()
            .filter(|(id, _)| (FIRST_CLUSTER_ID..=LAST_CLUSTER_ID).contains(*id))
            .take(MAX_IDENTITIES)
        {
            if let Ok(v) = serde_json::to_string(labels)
                && v.len() <= MAX_VALUE
            {
                kv.insert(format!("{ID}{id}"), v);
            }
        }
        kv
    }

    /// Decodes a peer's keys; returns the state and how many keys were ignored (unknown,
    /// unparsable, out of range or over the bounds).
    pub fn from_kv<'a>(kv: impl IntoIterator<Item = (&'a str, &'a str)>) -> (NodeGossip, usize) {
        let mut g = NodeGossip::default();
        let mut ignored = 0;
        for (k, v) in kv {
            if v.len() > MAX_VALUE {
                ignored += 1;
                continue;
            }
            let ok = if k == NODE {
                serde_json::from_str::<NodeInfo>(v)
                    .map(|n| g.node = Some(n))
                    .is_ok()
            } else if let Some(ip) = k.strip_prefix(EP) {
                match (ip.parse::<IpAddr>(), v.parse::<u32>()) {
                    (Ok(ip), Ok(id))
                        if g.endpoints.len() < MAX_ENDPOINTS
                            && (FIRST_CLUSTER_ID..=LAST_CLUSTER_ID).contains(&id) =>
                    {
                        g.endpoints.insert(ip, id);
                        true
                    }
                    _ => false,
                }
            } else if let Some(id) = k.strip_prefix(ID) {
                match (id.parse::<u32>(), serde_json::from_str::<Vec<String>>(v)) {
                    (Ok(id), Ok(labels))
                        if g.identities.len() < MAX_IDENTITIES
                            && (FIRST_CLUSTER_ID..=LAST_CLUSTER_ID).contains(&id) =>
                    {
                        g.identities.insert(id, labels);
                        true
                    }
                    _ => false,
                }
            } else {
                false
            };
            ignored += usize::from(!ok);
        }
        (g, ignored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeGossip {
        let mut g = NodeGossip {
            node: Some(NodeInfo {
                address: "10.99.0.12".parse().expect("ip"),
                pod_cidr: "10.200.2.0/24".parse().expect("cidr"),
                wireguard_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                wireguard_epoch: 3,
            }),
            ..NodeGossip::default()
        };
        g.endpoints.insert("10.200.2.10".parse().expect("ip"), 300);
        g.identities.insert(
            300,
            vec![
                "k8s:app=db".into(),
                "k8s:io.kubernetes.pod.namespace=default".into(),
            ],
        );
        g
    }

    #[test]
    fn state_round_trips_through_keys_with_exact_encodings() {
        let g = sample();
        let kv = g.to_kv();
        assert_eq!(kv.len(), 3);
        assert_eq!(kv["ep/10.200.2.10"], "300");
        assert_eq!(
            kv["node"],
            r#"{"address":"10.99.0.12","podCidr":"10.200.2.0/24","wireguardKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","wireguardEpoch":3}"#
        );
        assert_eq!(kv["id/300"].len(), 56);
        let (back, ignored) = NodeGossip::from_kv(kv.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(ignored, 0);
        assert_eq!(back, g);
    }

    #[test]
    fn reserved_ids_junk_and_oversize_values_are_ignored_and_counted() {
        let big = "x".repeat(MAX_VALUE + 1);
        let kv = [
            ("ep/10.200.2.11", "2"),        // reserved (world)
            ("ep/not-an-ip", "300"),        // bad address
            ("ep/10.200.2.12", "three"),    // bad id
            ("id/7", r#"["k8s:app=x"]"#),   // reserved
            ("id/400", "not json"),         // bad labels
            ("id/401", big.as_str()),       // oversize
            ("node", "{}"),                 // incomplete
            ("something/else", "1"),        // unknown key
            ("ep/10.200.2.13", "16777216"), // beyond 24 bits
            ("ep/10.200.2.14", "301"),      // fine
        ];
        let (g, ignored) = NodeGossip::from_kv(kv);
        assert_eq!(ignored, 9);
        assert_eq!(g.endpoints.len(), 1);
        assert!(g.identities.is_empty() && g.node.is_none());
    }

    #[test]
    fn a_peer_cannot_push_more_than_the_bounds() {
        let keys: Vec<(String, String)> = (0..MAX_ENDPOINTS + 10)
            .map(|i| {
                (
                    format!("ep/10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256),
                    "300".to_string(),
                )
            })
            .collect();
        let (g, ignored) = NodeGossip::from_kv(keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(g.endpoints.len(), MAX_ENDPOINTS);
        assert_eq!(ignored, 10);
    }
}
