//! Security identities: `u32`, high 8 bits cluster id, low 24 bits cluster-local id.
//!
//! Reserved ids keep Cilium's numbering (0 any/unknown, 1 host, 2 world, 3 unmanaged, 4 health,
//! 5 init, 6 remote-node, 7 kube-apiserver, 8 ingress, 9 world-ipv4, 10 world-ipv6; 1–255
//! reserved). Node-local identities (CIDR and FQDN-derived peers) use cluster bits `0xFF`, so
//! they never collide with a cluster's ids; cluster ids usable in a mesh are therefore 0–254.

use std::collections::BTreeMap;
use std::fmt;

use crate::labels::{LabelSet, Source};

/// A security identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Identity(pub u32);

/// Cluster bits marking a node-local identity.
pub const LOCAL_SCOPE_CLUSTER: u8 = 0xFF;
/// First non-reserved cluster-local id.
pub const FIRST_ALLOCATED: u32 = 256;
/// Last cluster-local id.
pub const MAX_LOCAL: u32 = (1 << 24) - 1;

impl Identity {
    /// Any peer (wildcard key) / unknown.
    pub const ANY: Identity = Identity(0);
    /// The local host.
    pub const HOST: Identity = Identity(1);
    /// Outside the cluster.
    pub const WORLD: Identity = Identity(2);
    /// Endpoints not managed by Palisade.
    pub const UNMANAGED: Identity = Identity(3);
    /// Health endpoints.
    pub const HEALTH: Identity = Identity(4);
    /// Endpoints whose identity is not resolved yet.
    pub const INIT: Identity = Identity(5);
    /// Other nodes.
    pub const REMOTE_NODE: Identity = Identity(6);
    /// The Kubernetes API server.
    pub const KUBE_APISERVER: Identity = Identity(7);
    /// The ingress proxy.
    pub const INGRESS: Identity = Identity(8);
    /// IPv4 outside the cluster.
    pub const WORLD_IPV4: Identity = Identity(9);
    /// IPv6 outside the cluster.
    pub const WORLD_IPV6: Identity = Identity(10);

    /// Builds an id from its cluster and local parts.
    pub fn new(cluster: u8, local: u32) -> Identity {
        Identity((u32::from(cluster) << 24) | (local & MAX_LOCAL))
    }
    /// Cluster bits.
    pub fn cluster(self) -> u8 {
        (self.0 >> 24) as u8
    }
    /// Cluster-local part.
    pub fn local(self) -> u32 {
        self.0 & MAX_LOCAL
    }
    /// Whether this is one of the reserved ids (1–255 in any cluster's numbering).
    pub fn is_reserved(self) -> bool {
        self.0 != 0 && self.0 < FIRST_ALLOCATED
    }
    /// Whether this is a node-local (CIDR/FQDN) identity.
    pub fn is_local_scope(self) -> bool {
        self.cluster() == LOCAL_SCOPE_CLUSTER
    }
    /// The reserved label name (`host`, `world`, ...) of a reserved id.
    pub fn reserved_name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "host",
            2 => "world",
            3 => "unmanaged",
            4 => "health",
            5 => "init",
            6 => "remote-node",
            7 => "kube-apiserver",
            8 => "ingress",
            9 => "world-ipv4",
            10 => "world-ipv6",
            _ => return None,
        })
    }
    /// Every reserved id that has a name.
    pub fn reserved() -> impl Iterator<Item = Identity> {
        (1..=10).map(Identity)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reserved_name() {
            Some(n) => write!(f, "{}(reserved:{n})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Errors of the allocator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The 24-bit space of a scope is used up.
    #[error("identity space of cluster `{cluster}` is exhausted")]
    Exhausted {
        /// Cluster bits of the exhausted scope.
        cluster: u8,
    },
    /// An identity bound elsewhere collides with a binding this allocator already holds.
    #[error("identity {id} for `{labels}` conflicts with {existing}")]
    Conflict {
        /// The identity being bound.
        id: u32,
        /// Its label set.
        labels: String,
        /// What is already bound: the label set's other id, or the id's other label set.
        existing: String,
    },
}

/// Allocates identities for label sets, deterministically (in order of first use). Reserved
/// identities are pre-registered with their `reserved:` label.
#[derive(Debug, Clone)]
pub struct IdentityAllocator {
    cluster: u8,
    next_cluster: u32,
    next_local: u32,
    by_labels: BTreeMap<LabelSet, Identity>,
    by_id: BTreeMap<Identity, LabelSet>,
}

impl IdentityAllocator {
    /// An allocator for cluster id `cluster` (0–254).
    pub fn new(cluster: u8) -> Self {
        let mut a = IdentityAllocator {
            cluster,
            next_cluster: FIRST_ALLOCATED,
            next_local: 1,
            by_labels: BTreeMap::new(),
            by_id: BTreeMap::new(),
        };
        for id in Identity::reserved() {
            let mut set = LabelSet::new();
            if let Some(n) = id.reserved_name() {
                set.insert(Source::Reserved, n, "");
            }
            a.by_labels.insert(set.clone(), id);
            a.by_id.insert(id, set);
        }
        a
    }

    /// The identity of `labels`, allocating one when the set is new. Returns `(id, is_new)`.
    /// Sets with a `cidr` or `fqdn` label get node-local ids.
    pub fn allocate(&mut self, labels: LabelSet) -> Result<(Identity, bool), IdentityError> {
        if let Some(id) = self.by_labels.get(&labels) {
            return Ok((*id, false));
        }
        let local = labels.has_source(Source::Cidr) || labels.has_source(Source::Fqdn);
        let id = if local {
            // Ids bound ahead of allocation (a restarted agent's learned addresses keep theirs)
            // are skipped, never handed out twice.
            while self.next_local <= MAX_LOCAL
                && self
                    .by_id
                    .contains_key(&Identity::new(LOCAL_SCOPE_CLUSTER, self.next_local))
            {
                self.next_local += 1;
            }
            if self.next_local > MAX_LOCAL {
                return Err(IdentityError::Exhausted {
                    cluster: LOCAL_SCOPE_CLUSTER,
                });
            }
            self.next_local += 1;
            Identity::new(LOCAL_SCOPE_CLUSTER, self.next_local - 1)
        } else {
            if self.next_cluster > MAX_LOCAL {
                return Err(IdentityError::Exhausted {
                    cluster: self.cluster,
                });
            }
            self.next_cluster += 1;
            Identity::new(self.cluster, self.next_cluster - 1)
        };
        self.by_labels.insert(labels.clone(), id);
        self.by_id.insert(id, labels);
        Ok((id, true))
    }

    /// Binds an identity allocated elsewhere (the control plane, or this node's leased id
    /// block) to its label set. Returns whether the binding is new; binding the same pair again
    /// changes nothing. The id bound to other labels is a [`IdentityError::Conflict`].
    ///
    /// A label set may have several ids while the cluster converges (two nodes took ids from
    /// their blocks for the same new set): the first bound is its *primary* id — what endpoints
    /// with those labels get — and later ones are aliases that selectors match all the same, so
    /// policy has no gap while endpoints move to the canonical id
    /// ([`IdentityAllocator::make_primary`]).
    pub fn bind(&mut self, id: Identity, labels: LabelSet) -> Result<bool, IdentityError> {
        match self.by_id.get(&id) {
            Some(bound) if *bound == labels => Ok(false),
            Some(other) => Err(IdentityError::Conflict {
                id: id.0,
                labels: labels.to_string(),
                existing: format!("its binding to `{other}`"),
            }),
            None => {
                self.by_labels.entry(labels.clone()).or_insert(id);
                self.by_id.insert(id, labels);
                Ok(true)
            }
        }
    }

    /// Makes a bound id the one its label set resolves to (the control plane's canonical id);
    /// other ids of the set stay bound as aliases. Returns whether the primary changed.
    pub fn make_primary(&mut self, id: Identity) -> bool {
        let Some(labels) = self.by_id.get(&id) else {
            return false;
        };
        self.by_labels.insert(labels.clone(), id) != Some(id)
    }

    /// Labels of an identity.
    pub fn labels(&self, id: Identity) -> Option<&LabelSet> {
        self.by_id.get(&id)
    }

    /// Looks up an existing identity.
    pub fn lookup(&self, labels: &LabelSet) -> Option<Identity> {
        self.by_labels.get(labels).copied()
    }

    /// Releases an identity (its labels may be allocated again later, under a new id).
    pub fn release(&mut self, id: Identity) -> Option<LabelSet> {
        let labels = self.by_id.remove(&id)?;
        if self.by_labels.get(&labels) == Some(&id) {
            // An alias of the same set, if any, takes over (lowest id: deterministic).
            match self
                .by_id
                .iter()
                .find(|(_, l)| **l == labels)
                .map(|(i, _)| *i)
            {
                Some(alias) => self.by_labels.insert(labels.clone(), alias),
                None => self.by_labels.remove(&labels),
            };
        }
        Some(labels)
    }

    /// All identities with their labels, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &LabelSet)> {
        self.by_id.iter().map(|(i, l)| (*i, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_set_may_have_aliases_while_the_cluster_converges() {
        let mut a = IdentityAllocator::new(0);
        let labels = LabelSet::from_strings(&["k8s:app=web"]).expect("labels");
        let (block, canonical) = (Identity::new(0, 0xFF_FF00), Identity::new(0, 300));
        assert_eq!(a.bind(block, labels.clone()), Ok(true));
        assert_eq!(a.bind(block, labels.clone()), Ok(false));
        assert_eq!(a.bind(canonical, labels.clone()), Ok(true), "an alias");
        assert_eq!(
            a.lookup(&labels),
            Some(block),
            "the first bound stays primary"
        );
        assert!(a.make_primary(canonical));
        assert!(!a.make_primary(canonical));
        assert_eq!(a.lookup(&labels), Some(canonical));
        assert_eq!(a.labels(block), Some(&labels), "the alias still resolves");
        let other = LabelSet::from_strings(&["k8s:app=db"]).expect("labels");
        assert!(a.bind(block, other).is_err(), "an id has one label set");
        // Releasing the primary promotes the remaining alias.
        assert_eq!(a.release(canonical), Some(labels.clone()));
        assert_eq!(a.lookup(&labels), Some(block));
        assert_eq!(a.release(block), Some(labels.clone()));
        assert_eq!(a.lookup(&labels), None);
    }

    #[test]
    fn layout_and_reserved_ids() {
        let id = Identity::new(3, 300);
        assert_eq!(id.0, (3 << 24) | 300);
        assert_eq!(id.cluster(), 3);
        assert_eq!(id.local(), 300);
        assert!(Identity::HOST.is_reserved());
        assert_eq!(Identity::WORLD_IPV6.reserved_name(), Some("world-ipv6"));
        assert!(!Identity(256).is_reserved());
    }

    #[test]
    fn allocation_is_deterministic_and_scoped() {
        let mut a = IdentityAllocator::new(0);
        let mut l = LabelSet::new();
        l.insert(Source::K8s, "app", "a");
        let (id, new) = a.allocate(l.clone()).unwrap();
        assert_eq!((id, new), (Identity(256), true));
        assert_eq!(a.allocate(l).unwrap(), (Identity(256), false));
        let mut c = LabelSet::new();
        c.insert(Source::Cidr, "10.0.0.1/32", "");
        let (cid, _) = a.allocate(c).unwrap();
        assert!(cid.is_local_scope());
        let mut host = LabelSet::new();
        host.insert(Source::Reserved, "host", "");
        assert_eq!(a.lookup(&host), Some(Identity::HOST));
    }

    #[test]
    fn a_local_id_bound_ahead_is_never_allocated_again() {
        let mut a = IdentityAllocator::new(0);
        let restored =
            LabelSet::from_strings(&["cidr:10.96.0.11/32", "fqdn:api.corp.test"]).expect("labels");
        let id = Identity::new(LOCAL_SCOPE_CLUSTER, 1);
        assert_eq!(a.bind(id, restored.clone()), Ok(true));
        let other = LabelSet::from_strings(&["cidr:10.0.0.0/8"]).expect("labels");
        let (fresh, new) = a.allocate(other).expect("allocates");
        assert!(new);
        assert_eq!(fresh, Identity::new(LOCAL_SCOPE_CLUSTER, 2));
        assert_eq!(a.lookup(&restored), Some(id));
    }
}
