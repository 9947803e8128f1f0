//! Keeps the policy maps equal to what the engine compiled: computes the desired entries for every
//! registered endpoint, then removes what is stale and writes what is new or changed. Entries that
//! did not change are not touched, so established flows never see a gap.

use std::collections::BTreeMap;
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

/// What has been written, to diff against.
#[derive(Debug, Default)]
pub struct MapSync {
    identity: BTreeMap<IdKey, (u32, PolicyKey, PolicyValue)>,
    pod_ip: BTreeMap<PodKey, (PolicyMatch, IpAddr, PolicyValue)>,
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
}

impl MapSync {
    /// Entries written per endpoint id, as (identity-map entries, pod-address entries).
    pub fn entries_by_endpoint(&self) -> BTreeMap<u32, (usize, usize)> {
        let mut out: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for (_, key, _) in self.identity.values() {
            out.entry(u32::from_be_bytes(key.endpoint_id))
                .or_default()
                .0 += 1;
        }
        for (m, _, _) in self.pod_ip.values() {
            out.entry(m.endpoint_id).or_default().1 += 1;
        }
        out
    }

    /// Takes what the kernel maps already hold (pinned maps after a restart) as written, so the
    /// first sync removes whatever went stale while the agent was down.
    pub fn adopt(&mut self, dp: &Datapath) -> Result<usize, DatapathError> {
        for (bits, key, value) in dp.policy_entries()? {
            self.identity.insert(id_key(bits, &key), (bits, key, value));
        }
        for (m, peer, value) in dp.pod_ip_entries()? {
            self.pod_ip.insert(
                (
                    m.endpoint_id,
                    0,
                    m.direction,
                    m.protocol,
                    m.port,
                    m.port_prefix,
                    peer,
                ),
                (m, peer, value),
            );
        }
        Ok(self.identity.len() + self.pod_ip.len())
    }

    /// Brings the maps to the engine's current compiled state for every registered endpoint.
    pub fn sync(
        &mut self,
        dp: &mut Datapath,
        engine: &Engine,
        registry: &Registry,
    ) -> Result<SyncStats, DatapathError> {
        let pod_ips: Vec<IpAddr> = engine.endpoints().values().map(|e| e.spec.ip).collect();
        let mut want_id = BTreeMap::new();
        let mut want_pod = BTreeMap::new();
        for ep in registry.iter() {
            let Some(ms) = engine.map_state(&ep.name()) else {
                continue;
            };
            for (bits, key, value) in ms.datapath_entries(ep.endpoint_id) {
                want_id.insert(id_key(bits, &key), (bits, key, value));
            }
            for e in ms.pod_ip_entries(&pod_ips) {
                let (m, peer, v) = PolicyMatch::from_pod_ip_entry(ep.endpoint_id, &e);
                want_pod.insert(
                    (
                        ep.endpoint_id,
                        0,
                        m.direction,
                        m.protocol,
                        m.port,
                        m.port_prefix,
                        peer,
                    ),
                    (m, peer, v),
                );
            }
        }
        let mut stats = SyncStats::default();
        // Write first, remove after: a changed verdict is replaced in place, never absent.
        for (k, (bits, key, value)) in &want_id {
            if self.identity.get(k).is_none_or(|old| old.2 != *value) {
                dp.upsert_policy_entry(*bits, *key, *value)?;
                stats.written += 1;
            }
        }
        for (k, (m, peer, value)) in &want_pod {
            if self.pod_ip.get(k).is_none_or(|old| old.2 != *value) {
                dp.upsert_pod_ip_policy(*m, *peer, *value)?;
                stats.written += 1;
            }
        }
        for (k, (bits, key, _)) in &self.identity {
            if !want_id.contains_key(k) {
                dp.remove_policy_entry(*bits, *key)?;
                stats.removed += 1;
            }
        }
        for (k, (m, peer, _)) in &self.pod_ip {
            if !want_pod.contains_key(k) {
                dp.remove_pod_ip_policy(*m, *peer)?;
                stats.removed += 1;
            }
        }
        stats.total = want_id.len() + want_pod.len();
        self.identity = want_id;
        self.pod_ip = want_pod;
        Ok(stats)
    }
}
