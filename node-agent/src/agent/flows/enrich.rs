//! What the flow reader knows about addresses and identities: a snapshot the run loop rebuilds
//! whenever endpoints or identities change, shared behind an `RwLock<Arc<_>>` so the reader
//! takes a reference per batch and never waits on the run loop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use palisade_api::flow;
use palisade_policy::identity::Identity;

/// The label carrying a pod's namespace, as identities hold it.
const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// One endpoint of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Node-local endpoint id.
    pub endpoint_id: u32,
    /// Security identity.
    pub identity: u32,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Identity labels, `source:key=value`.
    pub labels: Vec<String>,
}

/// The snapshot.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {
    /// This node's name (every flow carries it).
    pub node: String,
    /// Local endpoints by address.
    pub by_ip: HashMap<IpAddr, EndpointMeta>,
    /// Host-side interface names by ifindex.
    pub ifaces: HashMap<u32, String>,
    /// Labels of every identity known (local and cluster), shared with the previous snapshot
    /// where unchanged ([`Enrichment::share_labels`]): flows in the ring keep the snapshot they
    /// were read under alive until they are named, so snapshots must not each copy them all.
    pub identities: HashMap<u32, Arc<[String]>>,
}

/// The shared handle: the run loop swaps in a new snapshot, readers clone the `Arc`.
pub type SharedEnrichment = Arc<RwLock<Arc<Enrichment>>>;

impl Enrichment {
    /// Adds a local endpoint.
    pub fn add_local(&mut self, ifindex: u32, iface: &str, ip: IpAddr, meta: EndpointMeta) {
        self.ifaces.insert(ifindex, iface.to_string());
        self.identities
            .insert(meta.identity, Arc::from(meta.labels.as_slice()));
        self.by_ip.insert(ip, meta);
    }

    /// The labels for `identity`: `prev`'s list when it holds the same labels (so consecutive
    /// snapshots share them), a new one otherwise.
    pub fn share_labels(prev: &Enrichment, identity: u32, labels: Vec<String>) -> Arc<[String]> {
        match prev.identities.get(&identity) {
            Some(p) if **p == *labels => Arc::clone(p),
            _ => Arc::from(labels),
        }
    }

    /// The name of a host-side interface (empty when unknown).
    pub fn iface_name(&self, ifindex: u32) -> String {
        self.ifaces.get(&ifindex).cloned().unwrap_or_default()
    }

    /// The flow endpoint for `ip` seen with `identity`: a local endpoint by address, otherwise
    /// what the identity says (labels, namespace; pods of other nodes have no name here).
    pub fn endpoint(&self, ip: IpAddr, identity: u32) -> flow::Endpoint {
        if let Some(m) = self.by_ip.get(&ip) {
            return flow::Endpoint {
                id: m.endpoint_id,
                identity: if identity == 0 { m.identity } else { identity },
                namespace: m.namespace.clone(),
                labels: m.labels.clone(),
                pod_name: m.pod.clone(),
                workloads: Vec::new(),
            };
        }
        let labels = match Identity(identity).reserved_name() {
            Some(name) => vec![format!("reserved:{name}")],
            None => self
                .identities
                .get(&identity)
                .map(|l| l.to_vec())
                .unwrap_or_default(),
        };
        let namespace = labels
            .iter()
            .find_map(|l| {
                let (_, kv) = l.split_once(':')?;
                kv.strip_prefix(NAMESPACE_LABEL)?.strip_prefix('=')
            })
            .unwrap_or_default()
            .to_string();
        flow::Endpoint {
            id: 0,
            identity,
            namespace,
            labels,
            pod_name: String::new(),
            workloads: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_snapshots_share_unchanged_label_lists() {
        let labels = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut first = Enrichment::default();
        first
            .identities
            .insert(7, Arc::from(labels(&["k8s:app=a"])));
        first
            .identities
            .insert(8, Arc::from(labels(&["k8s:app=b"])));
        let same = Enrichment::share_labels(&first, 7, labels(&["k8s:app=a"]));
        assert!(
            Arc::ptr_eq(&same, &first.identities[&7]),
            "unchanged: shared"
        );
        let changed = Enrichment::share_labels(&first, 8, labels(&["k8s:app=c"]));
        assert!(!Arc::ptr_eq(&changed, &first.identities[&8]));
        assert_eq!(&*changed, labels(&["k8s:app=c"]).as_slice());
        let new = Enrichment::share_labels(&first, 9, labels(&["k8s:app=d"]));
        assert_eq!(new.len(), 1);
    }
}
