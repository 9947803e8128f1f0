//! Keeps the policy maps equal to what the engine compiled: computes the desired entries of each
//! endpoint the engine reports changed, then writes what is new or changed and removes what is
//! stale. Entries that did not change are not touched, so established flows never see a gap.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use palisade_datapath_common::policy::{PolicyKey, PolicyValue};
use palisade_policy::engine::Engine;

use super::registry::Registry;
use crate::datapath::{Datapath, DatapathError, PolicyMatch};

/// An identity-map entry as an ordered key: (prefix length, key bytes).
type IdKey = (u32, [u8; 12]);
/// A pod-address entry as an ordered key.
type PodKey = (u32, u32, u8, u8, u16, u8, IpAddr);

fn id_key(bits: u32, k: &PolicyKey) -> IdKey {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&k.endpoint_id);
    b[4..8].copy_from_slice(&k.identity);
    b[8] = k.direction;
    b[9] = k.protocol;
    b[10..12].copy_from_slice(&k.dport);
    (bits, b)
}

/// What has been written, per endpoint id, to diff against.
#[derive(Debug, Default)]
pub struct MapSync {
    identity: BTreeMap<u32, BTreeMap<IdKey, (u32, PolicyKey, PolicyValue)>>,
    pod_ip: BTreeMap<u32, BTreeMap<PodKey, (PolicyMatch, IpAddr, PolicyValue)>>,
    /// The pod addresses the pod-address entries were computed against (sorted).
    pod_ips: Vec<IpAddr>,
}

/// How much one sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Entries written (new or changed).
    pub written: usize,
    /// Entries removed.
    pub removed: usize,
    /// Entries in the maps afterwards.
    pub total: usize,
    /// Endpoints whose entries were recomputed.
    pub endpoints: usize,
}

fn pod_key(m: &PolicyMatch, peer: IpAddr) -> PodKey {
    (
        m.endpoint_id,
        0,
        m.direction,
        m.protocol,
        m.port,
        m.port_prefix,
        peer,
    )
}

impl MapSync {
    /// Entries written per endpoint id, as (identity-map entries, pod-address entries).
    pub fn entries_by_endpoint(&self) -> BTreeMap<u32, (usize, usize)> {
        let mut out: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for (id, m) in &self.identity {
            out.entry(*id).or_default().0 += m.len();
        }
        for (id, m) in &self.pod_ip {
            out.entry(*id).or_default().1 += m.len();
        }
        out
    }

    /// Entries written in all.
    pub fn total(&self) -> usize {
        self.identity.values().map(BTreeMap::len).sum::<usize>()
            + self.pod_ip.values().map(BTreeMap::len).sum::<usize>()
    }

    /// Takes what the kernel maps already hold (pinned maps after a restart) as written, so the
    /// first sync removes whatever went stale while the agent was down.
    pub fn adopt(&mut self, dp: &Datapath) -> Result<usize, DatapathError> {
        for (bits, key, value) in dp.policy_entries()? {
            self.identity
                .entry(u32::from_be_bytes(key.endpoint_id))
                .or_default()
                .insert(id_key(bits, &key), (bits, key, value));
        }
        for (m, peer, value) in dp.pod_ip_entries()? {
            self.pod_ip
                .entry(m.endpoint_id)
                .or_default()
                .insert(pod_key(&m, peer), (m, peer, value));
        }
        Ok(self.total())
    }

    /// Brings the maps to the engine's compiled state for every registered endpoint, and removes
    /// the entries of every endpoint that is not registered (agent start, after `adopt`).
    pub fn sync(
        &mut self,
        dp: &mut Datapath,
        engine: &Engine,
        registry: &Registry,
    ) -> Result<SyncStats, DatapathError> {
        let all: BTreeSet<String> = registry.iter().map(|e| e.name()).collect();
        self.sync_changed(dp, engine, registry, &all)
    }

    /// Brings the maps up to date for the endpoints in `changed` (from
    /// [`Engine::take_changed`]); also for every endpoint with `ipBlock` rules when the set of
    /// pod addresses changed (their pod-address entries depend on it), and removes the entries
    /// of endpoints no longer registered. Unchanged endpoints cost nothing: an endpoint added
    /// to a busy node does not re-diff every other endpoint's entries.
    pub fn sync_changed(
        &mut self,
        dp: &mut Datapath,
        engine: &Engine,
        registry: &Registry,
        changed: &BTreeSet<String>,
    ) -> Result<SyncStats, DatapathError> {
        // Every pod of the cluster, wherever it runs: an `ipBlock` rule matches them all.
        let pod_ips = engine.pod_ips();
        let ips_changed = pod_ips != self.pod_ips;
        let mut stats = SyncStats::default();
        let mut registered = BTreeSet::new();
        for ep in registry.iter() {
            registered.insert(ep.endpoint_id);
            let name = ep.name();
            let ms = engine.map_state(&name);
            // Pod-address entries depend on every pod's address: recompute them for endpoints
            // with `ipBlock` rules (or entries written from them) when the addresses changed.
            let due = changed.contains(&name)
                || (ips_changed
                    && (ms.is_some_and(|m| !m.ip_rules.is_empty())
                        || self.pod_ip.contains_key(&ep.endpoint_id)));
            if !due {
                continue;
            }
            stats.endpoints += 1;
            let mut want_id = BTreeMap::new();
            let mut want_pod = BTreeMap::new();
            if let Some(ms) = ms {
                for (bits, key, value) in ms.datapath_entries(ep.endpoint_id) {
                    want_id.insert(id_key(bits, &key), (bits, key, value));
                }
                for e in ms.pod_ip_entries(&pod_ips) {
                    let (m, peer, v) = PolicyMatch::from_pod_ip_entry(ep.endpoint_id, &e);
                    want_pod.insert(pod_key(&m, peer), (m, peer, v));
                }
            }
            self.apply(dp, ep.endpoint_id, want_id, want_pod, &mut stats)?;
        }
        let gone: BTreeSet<u32> = self
            .identity
            .keys()
            .chain(self.pod_ip.keys())
            .filter(|id| !registered.contains(*id))
            .copied()
            .collect();
        for id in gone {
            self.apply(dp, id, BTreeMap::new(), BTreeMap::new(), &mut stats)?;
        }
        self.pod_ips = pod_ips;
        stats.total = self.total();
        Ok(stats)
    }

    /// Makes one endpoint's written entries equal to `want_*`: writes first, removes after, so a
    /// changed verdict is replaced in place, never absent.
    fn apply(
        &mut self,
        dp: &mut Datapath,
        endpoint_id: u32,
        want_id: BTreeMap<IdKey, (u32, PolicyKey, PolicyValue)>,
        want_pod: BTreeMap<PodKey, (PolicyMatch, IpAddr, PolicyValue)>,
        stats: &mut SyncStats,
    ) -> Result<(), DatapathError> {
        let had_id = self.identity.remove(&endpoint_id).unwrap_or_default();
        let had_pod = self.pod_ip.remove(&endpoint_id).unwrap_or_default();
        for (k, (bits, key, value)) in &want_id {
            if had_id.get(k).is_none_or(|old| old.2 != *value) {
                dp.upsert_policy_entry(*bits, *key, *value)?;
                stats.written += 1;
            }
        }
        for (k, (m, peer, value)) in &want_pod {
            if had_pod.get(k).is_none_or(|old| old.2 != *value) {
                dp.upsert_pod_ip_policy(*m, *peer, *value)?;
                stats.written += 1;
            }
        }
        for (k, (bits, key, _)) in &had_id {
            if !want_id.contains_key(k) {
                dp.remove_policy_entry(*bits, *key)?;
                stats.removed += 1;
            }
        }
        for (k, (m, peer, _)) in &had_pod {
            if !want_pod.contains_key(k) {
                dp.remove_pod_ip_policy(*m, *peer)?;
                stats.removed += 1;
            }
        }
        if !want_id.is_empty() {
            self.identity.insert(endpoint_id, want_id);
        }
        if !want_pod.is_empty() {
            self.pod_ip.insert(endpoint_id, want_pod);
        }
        Ok(())
    }
}
