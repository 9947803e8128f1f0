//! What this agent knows of the cluster from the control plane (identities, endpoints on other
//! nodes, policy objects, nodes) and how that maps into the engine and the ipcache. Saved to
//! disk after every applied update: the last-known-good state a restarted agent enforces before
//! (or without) reaching the control plane again.
//!
//! Every update is all-or-nothing: the policy objects it carries are parsed before anything
//! changes, and an update with one the engine cannot read is not applied at all (the previous
//! state stays in force and the error is reported), so a bad object never opens traffic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use palisade_api::agent::ContainerPort;
use palisade_api::controlplane::{Change, Endpoint, IdBlock, Identity, NodeRecord, PolicyRecord};
use palisade_policy::engine::{Engine, NamedPort};
use palisade_policy::identity::Identity as PolicyIdentity;
use palisade_policy::ir::{NormalizedPolicy, ResourceKey};
use palisade_policy::labels::LabelSet;
use palisade_policy::namespace::{self, Namespace};
use palisade_policy::pod::{self, Pod};
use serde::{Deserialize, Serialize};

use super::control_plane::Snapshot;
use crate::datapath::{Datapath, DatapathError};

/// File name of the saved view in the agent's state directory.
const FILE: &str = "control-plane-view.json";

/// The control plane's state as this agent applied it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ClusterView {
    /// The policy revision the applied state corresponds to (what the agent acknowledges).
    pub policy_revision: u64,
    /// Identity → its labels (the control plane's `source:key=value` strings).
    identities: BTreeMap<u32, Vec<String>>,
    /// Endpoints on other nodes: address → identity (this node's own come from the CNI plugin).
    remote: BTreeMap<IpAddr, u32>,
    /// Policy objects by `kind/namespace/name`.
    policies: BTreeMap<String, PolicyRecord>,
    /// Nodes by name.
    nodes: BTreeMap<String, NodeRecord>,
    /// The id block this node leased: new label sets take ids from it without a round trip.
    #[serde(default)]
    id_block: Option<IdBlock>,
    /// Bindings made from the block that the control plane has not confirmed yet: kept through
    /// snapshots (which cannot list them yet) and restarts.
    #[serde(default)]
    pending: BTreeMap<u32, Vec<String>>,
    /// The engine's keys of each applied policy object (derived, not saved).
    #[serde(skip)]
    engine_keys: BTreeMap<String, Vec<ResourceKey>>,
    /// Identities bound only because a peer gossiped them (the control plane has not listed
    /// them yet): bound as aliases, never canonical, dropped when gossip stops naming them.
    #[serde(skip)]
    gossip_ids: BTreeMap<u32, Vec<String>>,
    /// Ipcache entries written from gossip (addresses the control plane does not list). Saved,
    /// so a restarted agent knows which entries are gossip's to withdraw.
    #[serde(default)]
    gossip_remote: BTreeMap<IpAddr, u32>,
    /// Named ports of remote endpoints that have some (the control plane's endpoint records):
    /// saved, so a restarted agent resolves named egress ports before the control plane
    /// answers.
    #[serde(default)]
    remote_ports: BTreeMap<IpAddr, Vec<ContainerPort>>,
    /// Namespaces whose labels an applied update set or removed, for the agent to move their
    /// endpoints to their new identities (derived, not saved).
    #[serde(skip)]
    changed_namespaces: BTreeSet<String>,
    /// Pods (`namespace`, `name`) whose Pod record an applied update wrote or deleted, for the
    /// agent to move the endpoints that follow them (derived, not saved).
    #[serde(skip)]
    changed_pods: BTreeSet<(String, String)>,
}

/// What merging gossip changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GossipApplied {
    /// Identities bound or unbound.
    pub identities: usize,
    /// Ipcache entries written or removed.
    pub ipcache: usize,
    /// Endpoints refused: the address is not in the pod CIDR the control plane gave that node
    /// (or the node is unknown to it), or the identity is unknown.
    pub refused_endpoints: usize,
    /// Identities refused: the id is the control plane's with other labels, another peer
    /// claimed it first, or the labels do not parse.
    pub refused_identities: usize,
}

/// What applying an update changed, for logs, status and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Identities bound or unbound.
    pub identities: usize,
    /// Remote ipcache entries written or removed.
    pub ipcache: usize,
    /// Policy objects applied or deleted.
    pub policies: usize,
    /// Pods on other nodes recorded, changed or forgotten in the engine (what `ipBlock` and
    /// named-port rules resolve against).
    pub remote_pods: usize,
    /// Replicated-clock times (ms) of the policy changes applied: the start of their
    /// propagation latency.
    pub policy_changed_at_ms: Vec<u64>,
}

impl Applied {
    /// Whether the engine's compiled state may have changed (a map sync is due).
    pub fn engine_changed(&self) -> bool {
        self.identities > 0 || self.policies > 0 || self.remote_pods > 0
    }
}

/// A failed update (nothing of it was applied).
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// A policy object the engine cannot read.
    #[error("policy `{key}` from the control plane: {reason}")]
    Policy {
        /// `kind/namespace/name`.
        key: String,
        /// The engine's message.
        reason: String,
    },
    /// An ipcache write failed.
    #[error("ipcache")]
    Datapath(#[from] DatapathError),
}

/// One parsed object of an update.
enum PolicyOp {
    Apply(PolicyRecord, Vec<NormalizedPolicy>),
    /// A `v1/Namespace` object: its labels, for the identities of its pods.
    Namespace(PolicyRecord, Namespace),
    /// A `v1/Pod` record: the labels, service account and named ports of a pod whose CNI ADD
    /// named it without them (read when it registers; the engine does not hold it).
    Pod(PolicyRecord),
    Delete(String),
}

impl ClusterView {
    /// Path of the saved view.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// The saved view, or an empty one when none was saved. A file that cannot be read is an
    /// error: starting from nothing would drop the policy the node enforces.
    pub fn load(state_dir: &Path) -> Result<ClusterView, String> {
        let path = Self::path(state_dir);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a saved control-plane view: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClusterView::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Saves the view atomically (write a temporary file, fsync, rename).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    }

    /// Endpoints on other nodes: address and identity (the control plane's, then gossip's).
    pub fn remote_endpoints(&self) -> impl Iterator<Item = (IpAddr, u32)> + '_ {
        self.remote
            .iter()
            .chain(self.gossip_remote.iter())
            .map(|(ip, id)| (*ip, *id))
    }

    /// Ipcache entries and identities known only through gossip (0 and 0 once the control
    /// plane has caught up).
    pub fn gossip_only(&self) -> (usize, usize) {
        (self.gossip_remote.len(), self.gossip_ids.len())
    }

    /// Whether an identity is bound only because a peer gossiped it.
    pub fn is_gossip_only(&self, id: u32) -> bool {
        self.gossip_ids.contains_key(&id)
    }

    /// Merges what peers gossip, under the control plane's authority:
    ///
    /// - an identity is bound (as an alias: never what a label set resolves to) only when the
    ///   control plane does not list that id; the control plane's binding replaces it;
    /// - an endpoint is written to the ipcache only when the control plane does not list the
    ///   address, and only for an address inside the pod CIDR the control plane registered for
    ///   the node that gossips it (a member cannot claim another node's pods; the same rule as
    ///   WireGuard's allowed IPs), naming an identity known here;
    /// - what gossip no longer says is withdrawn (identities still used by a local endpoint
    ///   stay, the engine refuses to unbind them).
    ///
    /// `peers` is every other node's gossiped state by node name; `node` is this node.
    pub fn merge_gossip<'a>(
        &mut self,
        peers: impl IntoIterator<Item = (&'a str, &'a super::gossip::NodeGossip)> + Clone,
        node: &str,
        engine: &mut Engine,
        dp: &mut Datapath,
    ) -> Result<GossipApplied, ViewError> {
        let mut applied = GossipApplied::default();
        // Identities first: endpoints may name them.
        let mut wanted: BTreeMap<u32, &Vec<String>> = BTreeMap::new();
        for (name, g) in peers.clone() {
            if name == node {
                continue;
            }
            for (id, labels) in &g.identities {
                if self.identities.contains_key(id) && self.identities.get(id) == Some(labels) {
                    continue;
                }
                if self.identities.contains_key(id) || self.pending.contains_key(id) {
                    applied.refused_identities += 1;
                    continue;
                }
                match wanted.get(id) {
                    Some(l) if *l != labels => applied.refused_identities += 1,
                    _ => {
                        wanted.insert(*id, labels);
                    }
                }
            }
        }
        let gone: Vec<u32> = self
            .gossip_ids
            .iter()
            .filter(|(id, l)| wanted.get(*id) != Some(l))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.gossip_ids.remove(&id);
            if !self.identities.contains_key(&id) {
                applied.identities += usize::from(engine.unbind_identity(PolicyIdentity(id)));
            }
        }
        for (id, labels) in wanted {
            if self.gossip_ids.contains_key(&id) {
                continue;
            }
            let Ok(set) = LabelSet::from_strings(labels) else {
                applied.refused_identities += 1;
                continue;
            };
            // Bound, but the set keeps resolving to the id it had (if any): a gossiped id is
            // matched by the same selectors without taking over local allocations.
            match engine.bind_identity(PolicyIdentity(id), set) {
                Ok(changed) => {
                    applied.identities += usize::from(changed);
                    self.gossip_ids.insert(id, labels.clone());
                }
                Err(_) => applied.refused_identities += 1,
            }
        }
        // Endpoints.
        let mut want_ep: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for (name, g) in peers {
            if name == node {
                continue;
            }
            let cidr = self.nodes.get(name).map(|n| n.pod_cidr);
            for (ip, id) in &g.endpoints {
                let inside = match (cidr, ip) {
                    (Some(c), IpAddr::V4(v4)) => c.contains(v4),
                    _ => false,
                };
                if !inside || engine.labels(PolicyIdentity(*id)).is_none() {
                    applied.refused_endpoints += 1;
                    continue;
                }
                want_ep.insert(*ip, *id);
            }
        }
        let written: Vec<(IpAddr, u32)> =
            self.gossip_remote.iter().map(|(k, v)| (*k, *v)).collect();
        for (ip, id) in written {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            if self.remote.contains_key(&ip) {
                // The control plane's entry replaced it.
                self.gossip_remote.remove(&ip);
                continue;
            }
            // Gossip carries no named ports: a gossiped pod is known by address and identity
            // until the control plane's record (with its ports) replaces it.
            match want_ep.get(&ip) {
                Some(w) if *w == id => {}
                Some(w) => {
                    dp.upsert_ipcache(ip, prefix, *w)?;
                    self.gossip_remote.insert(ip, *w);
                    engine.set_remote_pod(ip, Some((PolicyIdentity(*w), Vec::new())));
                    applied.ipcache += 1;
                }
                None => {
                    dp.remove_ipcache(ip, prefix)?;
                    self.gossip_remote.remove(&ip);
                    engine.set_remote_pod(ip, None);
                    applied.ipcache += 1;
                }
            }
        }
        for (ip, id) in want_ep {
            if self.remote.contains_key(&ip) || self.gossip_remote.contains_key(&ip) {
                continue;
            }
            dp.upsert_ipcache(ip, if ip.is_ipv4() { 32 } else { 128 }, id)?;
            self.gossip_remote.insert(ip, id);
            engine.set_remote_pod(ip, Some((PolicyIdentity(id), Vec::new())));
            applied.ipcache += 1;
        }
        Ok(applied)
    }

    /// Number of identities, remote endpoints and policy objects held.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.identities.len(),
            self.remote.len(),
            self.policies.len(),
        )
    }

    /// The namespaces whose labels changed since the last call (their local endpoints may need
    /// new identities), and forgets them.
    pub fn take_changed_namespaces(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed_namespaces)
    }

    /// The pods whose Pod record changed since the last call (a local endpoint following one may
    /// need a new identity), and forgets them.
    pub fn take_changed_pods(&mut self) -> BTreeSet<(String, String)> {
        std::mem::take(&mut self.changed_pods)
    }

    /// The Pod record of `namespace/name`, when the control plane has one (validated by it with
    /// the same reader, so an applied record parses).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let rec = self
            .policies
            .get(&format!("{}/{namespace}/{name}", pod::KIND))?;
        pod::parse(&rec.object).ok()
    }

    /// Applied policy objects' keys.
    pub fn policy_keys(&self) -> impl Iterator<Item = &String> {
        self.policies.keys()
    }

    /// The `metadata.uid` of each applied policy object that has one (objects written through
    /// the Kubernetes-compatible API do), by the engine keys the object became: flows name a
    /// policy with it, as Cilium's `io.cilium.k8s.policy.uid` label does.
    pub fn policy_uids(&self) -> HashMap<ResourceKey, String> {
        let mut out = HashMap::new();
        for (storage, keys) in &self.engine_keys {
            let uid = self
                .policies
                .get(storage)
                .and_then(|r| r.object.pointer("/metadata/uid"))
                .and_then(|u| u.as_str());
            if let Some(uid) = uid {
                for k in keys {
                    out.insert(k.clone(), uid.to_string());
                }
            }
        }
        out
    }

    /// Known nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// Puts a loaded view into a fresh engine and the ipcache (agent start, before endpoints are
    /// restored, so they get their cluster identities back).
    pub fn restore(&mut self, engine: &mut Engine, dp: &mut Datapath) -> Result<(), ViewError> {
        let identities = std::mem::take(&mut self.identities);
        let remote = std::mem::take(&mut self.remote);
        let policies = std::mem::take(&mut self.policies);
        let ops = self.policy_ops(policies.into_iter().map(|(k, r)| (k, Some(r))).collect())?;
        for (id, labels) in identities {
            self.bind(engine, id, labels);
        }
        self.apply_policies(engine, ops);
        for (ip, id) in remote {
            self.set_remote(dp, ip, Some(id))?;
        }
        let ports = std::mem::take(&mut self.remote_ports);
        let remote: Vec<(IpAddr, u32)> = self.remote.iter().map(|(ip, id)| (*ip, *id)).collect();
        for (ip, id) in remote {
            let p = ports.get(&ip).map_or(&[][..], Vec::as_slice);
            self.set_remote_pod(engine, ip, Some((id, p)));
        }
        // Entries learned through gossip before the restart stay in force until gossip (or
        // the control plane) says otherwise: the next merge withdraws what is no longer said.
        for (ip, id) in self.gossip_remote.clone() {
            dp.upsert_ipcache(ip, if ip.is_ipv4() { 32 } else { 128 }, id)?;
            engine.set_remote_pod(ip, Some((PolicyIdentity(id), Vec::new())));
        }
        Ok(())
    }

    /// Makes the view equal to a snapshot. `node` is this node (its own endpoints are skipped).
    pub fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        node: &str,
        engine: &mut Engine,
        dp: &mut Datapath,
    ) -> Result<Applied, ViewError> {
        // Every stored object absent from the snapshot is deleted; present ones are (re)applied.
        let mut updates: BTreeMap<String, Option<PolicyRecord>> =
            self.policies.keys().map(|k| (k.clone(), None)).collect();
        for p in &snap.policies {
            updates.insert(p.key.storage_key(), Some(p.clone()));
        }
        let ops = self.policy_ops(updates)?;
        let mut applied = Applied::default();
        // Identities: unbind the released ones first (their labels may come back under a new id).
        let want: BTreeMap<u32, &Vec<String>> =
            snap.identities.iter().map(|i| (i.id, &i.labels)).collect();
        let stale: Vec<u32> = self
            .identities
            .keys()
            .filter(|id| !want.contains_key(id) && !self.pending.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            applied.identities += usize::from(self.unbind(engine, id));
        }
        for i in &snap.identities {
            applied.identities += usize::from(self.bind_identity(
                engine,
                i.id,
                i.labels.clone(),
                i.alias_of.is_none(),
            ));
        }
        applied.policies += self.apply_policies(engine, ops);
        let remote: BTreeMap<IpAddr, u32> = snap
            .endpoints
            .iter()
            .filter(|e| e.node != node)
            .map(|e| (e.ip, e.identity))
            .collect();
        let stale: Vec<IpAddr> = self
            .remote
            .keys()
            .filter(|ip| !remote.contains_key(ip))
            .copied()
            .collect();
        for ip in stale {
            applied.ipcache += self.set_remote(dp, ip, None)?;
            applied.remote_pods += self.set_remote_pod(engine, ip, None);
        }
        for (ip, id) in remote {
            applied.ipcache += self.set_remote(dp, ip, Some(id))?;
        }
        for e in snap.endpoints.iter().filter(|e| e.node != node) {
            applied.remote_pods += self.set_remote_pod(engine, e.ip, Some((e.identity, &e.ports)));
        }
        self.nodes = snap
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.clone()))
            .collect();
        self.policy_revision = snap.policy_revision;
        Ok(applied)
    }

    /// Applies changes from the feed, in order. `policy_revision` is what the agent enforces
    /// once they are applied.
    pub fn apply_changes(
        &mut self,
        changes: &[Change],
        policy_revision: u64,
        node: &str,
        engine: &mut Engine,
        dp: &mut Datapath,
    ) -> Result<Applied, ViewError> {
        // Parse every policy object first: all or nothing. Each object's last change wins.
        let mut updates: BTreeMap<String, Option<PolicyRecord>> = BTreeMap::new();
        let mut committed_at: BTreeMap<&str, u64> = BTreeMap::new();
        for c in changes.iter().filter(|c| c.kind == "policy") {
            let rec = match &c.value {
                Some(v) => Some(PolicyRecord::deserialize(v).map_err(|e| ViewError::Policy {
                    key: c.key.clone(),
                    reason: format!("not a policy record: {e}"),
                })?),
                None => None,
            };
            updates.insert(c.key.clone(), rec);
            committed_at.insert(c.key.as_str(), c.at_ms);
        }
        let ops = self.policy_ops(updates)?;
        let mut applied = Applied::default();
        // Only what this update changes counts as propagated (a replayed change was enforced
        // when it first came).
        for op in &ops {
            let key = match op {
                PolicyOp::Apply(rec, _) | PolicyOp::Namespace(rec, _) | PolicyOp::Pod(rec) => {
                    rec.key.storage_key()
                }
                PolicyOp::Delete(key) => key.clone(),
            };
            applied
                .policy_changed_at_ms
                .extend(committed_at.get(key.as_str()).copied());
        }
        for c in changes {
            match c.kind.as_str() {
                "identity" => {
                    let Ok(id) = c.key.parse::<u32>() else {
                        continue;
                    };
                    match c.value.as_ref().and_then(|v| Identity::deserialize(v).ok()) {
                        Some(i) => {
                            let canonical = i.alias_of.is_none();
                            applied.identities +=
                                usize::from(self.bind_identity(engine, i.id, i.labels, canonical))
                        }
                        None => applied.identities += usize::from(self.unbind(engine, id)),
                    }
                }
                "endpoint" => {
                    let Ok(ip) = c.key.parse::<IpAddr>() else {
                        continue;
                    };
                    let ep = c.value.as_ref().and_then(|v| Endpoint::deserialize(v).ok());
                    match ep {
                        Some(e) if e.node != node => {
                            applied.ipcache += self.set_remote(dp, ip, Some(e.identity))?;
                            applied.remote_pods +=
                                self.set_remote_pod(engine, ip, Some((e.identity, &e.ports)));
                        }
                        // Gone, or (re)assigned to this node: no longer a remote entry.
                        _ => {
                            applied.ipcache += self.set_remote(dp, ip, None)?;
                            applied.remote_pods += self.set_remote_pod(engine, ip, None);
                        }
                    }
                }
                "node" => match c
                    .value
                    .as_ref()
                    .and_then(|v| NodeRecord::deserialize(v).ok())
                {
                    Some(n) => {
                        self.nodes.insert(n.name.clone(), n);
                    }
                    None => {
                        self.nodes.remove(&c.key);
                    }
                },
                _ => {}
            }
        }
        applied.policies += self.apply_policies(engine, ops);
        self.policy_revision = self.policy_revision.max(policy_revision);
        Ok(applied)
    }

    /// Records an identity this agent allocated for a local pod (bound in the engine by the
    /// caller) so the saved view has it before the feed echoes it.
    pub fn note_identity(&mut self, id: u32, labels: Vec<String>) {
        self.identities.insert(id, labels);
    }

    /// The leased id block, if any.
    pub fn id_block(&self) -> Option<IdBlock> {
        self.id_block
    }

    /// Takes a newly leased block.
    pub fn set_id_block(&mut self, block: IdBlock) {
        self.id_block = Some(block);
    }

    /// Binds `labels` to the next free id of the block, in the engine and here, as pending until
    /// the control plane confirms it. Returns the id and how many ids the block has left, or
    /// `None` when there is no block or it is used up.
    pub fn bind_from_block(&mut self, engine: &mut Engine, labels: LabelSet) -> Option<(u32, u32)> {
        let block = self.id_block?;
        let free = (block.first..block.first.saturating_add(block.count)).filter(|id| {
            !self.identities.contains_key(id)
                && !self.pending.contains_key(id)
                && engine.labels(PolicyIdentity(*id)).is_none()
        });
        let mut free = free;
        let id = free.next()?;
        let left = u32::try_from(free.count()).unwrap_or(u32::MAX);
        let strings = labels.to_strings();
        engine.bind_identity(PolicyIdentity(id), labels).ok()?;
        // A peer's gossiped id for the same set may be bound already: local endpoints take this
        // node's own binding (the one it commits), the other stays an alias.
        engine.set_canonical_identity(PolicyIdentity(id));
        self.identities.insert(id, strings.clone());
        self.pending.insert(id, strings);
        Some((id, left))
    }

    /// Bindings made from the block still waiting for the control plane (sent again after a
    /// restart).
    pub fn pending_bindings(&self) -> impl Iterator<Item = (u32, &Vec<String>)> {
        self.pending.iter().map(|(k, v)| (*k, v))
    }

    /// The control plane committed a binding from the block: `canonical` is the label set's
    /// identity, bound here as canonical (endpoints with these labels get it from now on).
    /// Returns whether the local id is an alias the caller must move its endpoints off.
    pub fn confirm(&mut self, engine: &mut Engine, id: u32, canonical: &Identity) -> bool {
        self.pending.remove(&id);
        self.bind_identity(engine, canonical.id, canonical.labels.clone(), true);
        canonical.id != id
    }

    /// The control plane refused a binding from the block: forget it as pending (the caller
    /// allocates the labels another way and moves the endpoints).
    pub fn refuse(&mut self, id: u32) {
        self.pending.remove(&id);
    }

    /// What to do for each `kind/namespace/name` (`None`: deleted): objects equal to the applied
    /// ones and deletions of absent ones are skipped (a reconnect's snapshot or a replayed change
    /// recompiles nothing); the others are parsed with the engine's loader, the first unreadable
    /// one failing the whole update.
    fn policy_ops(
        &self,
        updates: BTreeMap<String, Option<PolicyRecord>>,
    ) -> Result<Vec<PolicyOp>, ViewError> {
        let mut ops = Vec::new();
        for (key, rec) in updates {
            let Some(rec) = rec else {
                if self.policies.contains_key(&key) {
                    ops.push(PolicyOp::Delete(key));
                }
                continue;
            };
            if rec.key.kind == namespace::KIND {
                if self.policies.get(&key) == Some(&rec) {
                    continue;
                }
                let ns = namespace::parse(&rec.object).map_err(|e| ViewError::Policy {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
                ops.push(PolicyOp::Namespace(rec, ns));
                continue;
            }
            if rec.key.kind == pod::KIND {
                if self.policies.get(&key) == Some(&rec) {
                    continue;
                }
                pod::parse(&rec.object).map_err(|e| ViewError::Policy {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
                ops.push(PolicyOp::Pod(rec));
                continue;
            }
            if self.policies.get(&key) == Some(&rec) && self.engine_keys.contains_key(&key) {
                continue;
            }
            let text = serde_json::to_string(&rec.object).map_err(|e| ViewError::Policy {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            // JSON is YAML: the same loader as `palisade policy test` and the policy directory.
            let parsed =
                palisade_policy::load::load_file(&key, &text).map_err(|e| ViewError::Policy {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            ops.push(PolicyOp::Apply(rec, parsed));
        }
        Ok(ops)
    }

    /// Binds an identity; a canonical one becomes what its label set resolves to, an alias
    /// (`canonical` false) is matched by the same selectors while the cluster converges.
    fn bind_identity(
        &mut self,
        engine: &mut Engine,
        id: u32,
        labels: Vec<String>,
        canonical: bool,
    ) -> bool {
        let changed = self.bind(engine, id, labels);
        canonical && engine.set_canonical_identity(PolicyIdentity(id)) || changed
    }

    fn bind(&mut self, engine: &mut Engine, id: u32, labels: Vec<String>) -> bool {
        if self.identities.get(&id) == Some(&labels) && engine.labels(PolicyIdentity(id)).is_some()
        {
            return false;
        }
        let set = match LabelSet::from_strings(&labels) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("palisade agent: identity {id} from the control plane: {e} (skipped)");
                return false;
            }
        };
        // A local binding of the same labels to another id is either stale (released and
        // re-allocated) or one side of a convergence (an alias): drop it only when it is neither
        // the control plane's (a canonical id stays when its alias is bound) nor pending
        // confirmation nor a peer's gossiped one, and nothing local uses it.
        if let Some(old) = engine.identities().lookup(&set)
            && old.0 != id
            && !self.identities.contains_key(&old.0)
            && !self.pending.contains_key(&old.0)
            && !self.gossip_ids.contains_key(&old.0)
        {
            self.unbind(engine, old.0);
        }
        // The control plane now lists an id gossip had bound: it is the control plane's from
        // here on (with its labels, should they differ).
        if let Some(g) = self.gossip_ids.remove(&id)
            && g != labels
        {
            engine.unbind_identity(PolicyIdentity(id));
        }
        match engine.bind_identity(PolicyIdentity(id), set) {
            Ok(changed) => {
                self.identities.insert(id, labels);
                changed
            }
            Err(e) => {
                eprintln!(
                    "palisade agent: binding identity {id}: {}",
                    super::server::chain(&e)
                );
                false
            }
        }
    }

    /// Forgets an identity; one a local endpoint still uses stays bound, and so stays known
    /// here (the view and the engine never disagree on it).
    fn unbind(&mut self, engine: &mut Engine, id: u32) -> bool {
        let unbound = engine.unbind_identity(PolicyIdentity(id));
        if unbound || engine.labels(PolicyIdentity(id)).is_none() {
            self.identities.remove(&id);
        }
        unbound
    }

    fn apply_policies(&mut self, engine: &mut Engine, ops: Vec<PolicyOp>) -> usize {
        let mut n = 0;
        for op in ops {
            // A Pod record changes no compiled policy: no map sync for it (the endpoints that
            // follow it move on their own, see `take_changed_pods`).
            n += usize::from(!matches!(op, PolicyOp::Pod(_)));
            match op {
                PolicyOp::Apply(rec, parsed) => {
                    let key = rec.key.storage_key();
                    let new_keys: Vec<ResourceKey> = parsed.iter().map(|p| p.key.clone()).collect();
                    for old in self.engine_keys.remove(&key).unwrap_or_default() {
                        if !new_keys.contains(&old) {
                            engine.replace_policy(&old, None);
                        }
                    }
                    for p in parsed {
                        let k = p.key.clone();
                        engine.replace_policy(&k, Some(p));
                    }
                    self.engine_keys.insert(key.clone(), new_keys);
                    self.policies.insert(key, rec);
                }
                PolicyOp::Namespace(rec, ns) => {
                    engine.set_namespace(&ns.name, ns.labels);
                    self.changed_namespaces.insert(ns.name);
                    self.policies.insert(rec.key.storage_key(), rec);
                }
                PolicyOp::Pod(rec) => {
                    self.changed_pods
                        .insert((rec.key.namespace.clone(), rec.key.name.clone()));
                    self.policies.insert(rec.key.storage_key(), rec);
                }
                PolicyOp::Delete(key) => {
                    for old in self.engine_keys.remove(&key).unwrap_or_default() {
                        engine.replace_policy(&old, None);
                    }
                    match self.policies.remove(&key) {
                        Some(rec) if rec.key.kind == namespace::KIND => {
                            // Back to a namespace nobody labelled (it still exists for its pods).
                            engine.set_namespace(&rec.key.name, BTreeMap::new());
                            self.changed_namespaces.insert(rec.key.name);
                        }
                        // A deleted Pod record changes nothing here: the pod's endpoint keeps
                        // the labels it has until its CNI DEL (a pod deleted from the cluster
                        // is torn down by its kubelet; it never drops to no labels).
                        _ => {}
                    }
                }
            }
        }
        n
    }

    /// Records (`Some`: identity and ports) or forgets (`None`) a pod on another node in the
    /// engine — its address is what `ipBlock` rules match, its named ports what named-port rules
    /// resolve to — and keeps its ports in the view; 1 when the engine's picture changed.
    fn set_remote_pod(
        &mut self,
        engine: &mut Engine,
        ip: IpAddr,
        ep: Option<(u32, &[ContainerPort])>,
    ) -> usize {
        match ep.filter(|(_, ports)| !ports.is_empty()) {
            Some((_, ports)) => self.remote_ports.insert(ip, ports.to_vec()),
            None => self.remote_ports.remove(&ip),
        };
        let pod = ep.map(|(id, ports)| (PolicyIdentity(id), named_ports(ports)));
        usize::from(engine.set_remote_pod(ip, pod))
    }

    /// Writes (`Some`) or removes (`None`) a remote endpoint's ipcache entry; 1 when it changed.
    fn set_remote(
        &mut self,
        dp: &mut Datapath,
        ip: IpAddr,
        id: Option<u32>,
    ) -> Result<usize, DatapathError> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        match id {
            Some(id) if self.remote.get(&ip) != Some(&id) => {
                dp.upsert_ipcache(ip, prefix, id)?;
                self.remote.insert(ip, id);
                self.gossip_remote.remove(&ip);
                Ok(1)
            }
            Some(_) => Ok(0),
            None => {
                if self.remote.remove(&ip).is_some() {
                    dp.remove_ipcache(ip, prefix)?;
                    Ok(1)
                } else {
                    Ok(0)
                }
            }
        }
    }
}

/// The engine's form of a pod's named ports (protocols were validated where the ports came in:
/// the CNI plugin, the control plane; an unknown one is skipped rather than guessed).
pub fn named_ports(ports: &[ContainerPort]) -> Vec<NamedPort> {
    ports
        .iter()
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone(),
                port: p.container_port,
                protocol: palisade_policy::ir::proto::parse(&p.protocol)?,
            })
        })
        .collect()
}
