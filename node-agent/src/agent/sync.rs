//! Keeps the policy maps equal to what the engine compiled: computes the desired entries of each
//! endpoint the engine reports changed, then writes what is new or changed and removes what is
//! stale. Entries that did not change are not touched, so established flows never see a gap.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use palisade_datapath_common::policy::{PolicyKey, PolicyValue};
use palisade_policy::engine::Engine;
use palisade_policy::mapstate::MapState;

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
    written: BTreeMap<u32, Written>,
    /// The pod addresses the pod-address entries were computed against (sorted).
    pod_ips: Vec<IpAddr>,
    /// Entries in the maps, kept as they are written and removed (what `total` reports).
    total: usize,
}

/// What one endpoint id's entries in the maps are.
#[derive(Debug)]
enum Written {
    /// Read back from the kernel maps by [`MapSync::adopt`]: no compiled state is known behind
    /// them, so the entries themselves, until the endpoint's first sync.
    Adopted(Box<AdoptedEntries>),
    /// The entries of this compiled state for the endpoint id, its pod-address entries computed
    /// against [`MapSync::pod_ips`]. The state is the engine's, shared with the other endpoints
    /// of its identity (and never changed in place), so this costs a pointer, not a copy of
    /// every entry; the entries are derived again when the next diff needs them.
    Compiled {
        state: Arc<MapState>,
        /// Identity-map and pod-address entries it stands for, for counting without deriving.
        entries: (u32, u32),
    },
}

/// Entries found in the kernel maps for one endpoint id.
#[derive(Debug, Default)]
struct AdoptedEntries {
    identity: IdEntries,
    pod: PodEntries,
}

type IdEntries = BTreeMap<IdKey, (u32, PolicyKey, PolicyValue)>;
type PodEntries = BTreeMap<PodKey, (PolicyMatch, IpAddr, PolicyValue)>;

/// The identity-map entries of `state` for `endpoint_id`, ordered.
fn id_entries(state: &MapState, endpoint_id: u32) -> IdEntries {
    state
        .datapath_entries(endpoint_id)
        .into_iter()
        .map(|(bits, key, value)| (id_key(bits, &key), (bits, key, value)))
        .collect()
}

/// The pod-address entries of `state` for `endpoint_id` against the pod addresses `pod_ips`.
fn pod_entries(state: &MapState, endpoint_id: u32, pod_ips: &[IpAddr]) -> PodEntries {
    if state.ip_rules.is_empty() {
        return BTreeMap::new();
    }
    state
        .pod_ip_entries(pod_ips)
        .iter()
        .map(|e| {
            let (m, peer, v) = PolicyMatch::from_pod_ip_entry(endpoint_id, e);
            (pod_key(&m, peer), (m, peer, v))
        })
        .collect()
}

impl Written {
    /// Whether its pod-address entries depend on the set of pod addresses.
    fn depends_on_pod_ips(&self) -> bool {
        match self {
            Written::Adopted(a) => !a.pod.is_empty(),
            Written::Compiled { state, .. } => !state.ip_rules.is_empty(),
        }
    }

    /// (identity-map entries, pod-address entries).
    fn counts(&self) -> (usize, usize) {
        match self {
            Written::Adopted(a) => (a.identity.len(), a.pod.len()),
            Written::Compiled { entries, .. } => (entries.0 as usize, entries.1 as usize),
        }
    }
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
        self.written
            .iter()
            .map(|(id, w)| (*id, w.counts()))
            .filter(|(_, c)| *c != (0, 0))
            .collect()
    }

    /// Takes what the kernel maps already hold (pinned maps after a restart) as written, so the
    /// first sync removes whatever went stale while the agent was down.
    pub fn adopt(&mut self, dp: &Datapath) -> Result<usize, DatapathError> {
        let mut found: BTreeMap<u32, AdoptedEntries> = BTreeMap::new();
        for (bits, key, value) in dp.policy_entries()? {
            found
                .entry(u32::from_be_bytes(key.endpoint_id))
                .or_default()
                .identity
                .insert(id_key(bits, &key), (bits, key, value));
        }
        for (m, peer, value) in dp.pod_ip_entries()? {
            found
                .entry(m.endpoint_id)
                .or_default()
                .pod
                .insert(pod_key(&m, peer), (m, peer, value));
        }
        for (id, a) in found {
            let w = Written::Adopted(Box::new(a));
            let (n_id, n_pod) = w.counts();
            self.total += n_id + n_pod;
            if let Some(old) = self.written.insert(id, w) {
                let (o_id, o_pod) = old.counts();
                self.total -= o_id + o_pod;
            }
        }
        Ok(self.total)
    }

    /// Brings the maps to the engine's compiled state for every registered endpoint, and removes
    /// the entries of every endpoint that is not registered (agent start, after `adopt`).
    pub fn sync(
        &mut self,
        dp: &mut Datapath,
        engine: &Engine,
        registry: &Registry,
    ) -> Result<SyncStats, DatapathError> {
        let all: BTreeSet<Arc<str>> = registry.iter().map(|e| e.name().into()).collect();
        self.sync_changed(dp, engine, registry, &all)
    }

    /// Brings the maps up to date for the endpoints in `changed` (from
    /// [`Engine::take_changed`]); also for every endpoint with `ipBlock` rules when the set of
    /// pod addresses changed (their pod-address entries depend on it), and removes the entries
    /// of endpoints no longer registered. Unchanged endpoints cost nothing: an endpoint added
    /// to a busy node does not re-diff every other endpoint's entries, and an endpoint whose
    /// shared state is the one already written is not diffed at all.
    pub fn sync_changed(
        &mut self,
        dp: &mut Datapath,
        engine: &Engine,
        registry: &Registry,
        changed: &BTreeSet<Arc<str>>,
    ) -> Result<SyncStats, DatapathError> {
        // Every pod of the cluster, wherever it runs: an `ipBlock` rule matches them all.
        let pod_ips = engine.pod_ips();
        let ips_changed = pod_ips != self.pod_ips;
        let mut stats = SyncStats::default();
        let mut registered = BTreeSet::new();
        for ep in registry.iter() {
            registered.insert(ep.endpoint_id);
            let name = ep.name();
            let ms = engine.shared_map_state(&name);
            let old = self.written.get(&ep.endpoint_id);
            // Pod-address entries depend on every pod's address: recompute them for endpoints
            // with `ipBlock` rules (or entries written from them) when the addresses changed.
            let ip_due = ips_changed
                && (ms.is_some_and(|m| !m.ip_rules.is_empty())
                    || old.is_some_and(Written::depends_on_pod_ips));
            if !ip_due && !changed.contains(name.as_str()) {
                continue;
            }
            // The state already written (same `Arc`: states are never changed in place), with
            // the same pod addresses: nothing to diff.
            let same = match (old, ms) {
                (Some(Written::Compiled { state, .. }), Some(ms)) => Arc::ptr_eq(state, ms),
                _ => false,
            };
            if same && !ip_due {
                continue;
            }
            stats.endpoints += 1;
            self.apply(dp, ep.endpoint_id, ms.cloned(), &pod_ips, &mut stats)?;
        }
        let gone: Vec<u32> = self
            .written
            .keys()
            .filter(|id| !registered.contains(*id))
            .copied()
            .collect();
        for id in gone {
            self.apply(dp, id, None, &pod_ips, &mut stats)?;
        }
        self.pod_ips = pod_ips;
        stats.total = self.total;
        Ok(stats)
    }

    /// Makes one endpoint's entries those of `want` (none when `None`) against the pod
    /// addresses `pod_ips`: writes first, removes after, so a changed verdict is replaced in
    /// place, never absent. What was written before is derived from the recorded state and the
    /// pod addresses of the last sync (or is the adopted entries).
    fn apply(
        &mut self,
        dp: &mut Datapath,
        endpoint_id: u32,
        want: Option<Arc<MapState>>,
        pod_ips: &[IpAddr],
        stats: &mut SyncStats,
    ) -> Result<(), DatapathError> {
        let (had_id, had_pod) = match self.written.remove(&endpoint_id) {
            None => (BTreeMap::new(), BTreeMap::new()),
            Some(Written::Adopted(a)) => (a.identity, a.pod),
            Some(Written::Compiled { state, .. }) => (
                id_entries(&state, endpoint_id),
                pod_entries(&state, endpoint_id, &self.pod_ips),
            ),
        };
        self.total -= had_id.len() + had_pod.len();
        let (want_id, want_pod) = match &want {
            None => (BTreeMap::new(), BTreeMap::new()),
            Some(state) => (
                id_entries(state, endpoint_id),
                pod_entries(state, endpoint_id, pod_ips),
            ),
        };
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
        if let Some(state) = want {
            self.total += want_id.len() + want_pod.len();
            let entries = (
                u32::try_from(want_id.len()).unwrap_or(u32::MAX),
                u32::try_from(want_pod.len()).unwrap_or(u32::MAX),
            );
            self.written
                .insert(endpoint_id, Written::Compiled { state, entries });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Against a real datapath (root, bpffs): what the maps hold after each sync is compared
    //! with what the engine's compiled states ask for, computed from scratch.

    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::path::PathBuf;

    use palisade_api::agent::EndpointSpec as ApiEndpoint;
    use palisade_policy::engine::{EndpointSpec, Engine, EngineConfig};
    use palisade_policy::load::load_file;

    use super::*;
    use crate::datapath::DatapathConfig;

    const ALLOW_B_80: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]\n    ports: [{port: 80}]\n";
    const ALLOW_BLOCK: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-block, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.128/25]}}]\n    ports: [{port: 80}]\n";

    /// An engine, a registry of the same endpoints, and a datapath of their own.
    struct Node {
        engine: Engine,
        registry: Registry,
        dir: PathBuf,
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Node {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("pal-sync-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("state dir");
            Node {
                engine: Engine::new(EngineConfig::default()),
                registry: Registry::open(&dir).expect("registry"),
                dir,
            }
        }

        fn policy(&mut self, yaml: &str) {
            for p in load_file("p.yaml", yaml).expect("valid policy") {
                self.engine.replace_policy(&p.key.clone(), Some(p));
            }
        }

        fn add(&mut self, pod: &str, app: &str, ip: &str) {
            let ip: IpAddr = ip.parse().expect("ip");
            let id = self
                .engine
                .add_endpoint(EndpointSpec {
                    name: format!("x/{pod}").into(),
                    namespace: "x".into(),
                    labels: Arc::new(BTreeMap::from([("app".to_string(), app.to_string())])),
                    service_account: "default".into(),
                    ip,
                    ports: vec![],
                })
                .expect("engine endpoint");
            let spec = ApiEndpoint {
                container_id: format!("c-{pod}"),
                ifname: "eth0".into(),
                netns: "/proc/1/ns/net".into(),
                host_iface: format!("lxc-{pod}"),
                pod_namespace: "x".into(),
                pod_name: pod.into(),
                labels: BTreeMap::from([("app".to_string(), app.to_string())]).into(),
                service_account: None,
                ips: vec![ip],
                ports: vec![],
                from_pod_record: false,
                pod_uid: None,
            };
            self.registry.insert(spec, id.0).expect("registry insert");
        }

        fn remove(&mut self, pod: &str) {
            assert!(self.engine.remove_endpoint(&format!("x/{pod}")));
            assert!(
                self.registry
                    .remove(&format!("c-{pod}"), "eth0")
                    .expect("registry remove")
                    .is_some()
            );
        }

        fn endpoint_id(&self, pod: &str) -> u32 {
            self.registry
                .get(&format!("c-{pod}"), "eth0")
                .expect("registered")
                .endpoint_id
        }

        /// The entries the engine asks for, computed from scratch, as the maps would list them.
        fn expected(&self) -> (Vec<String>, Vec<String>) {
            let pod_ips = self.engine.pod_ips();
            let mut id = Vec::new();
            let mut pod = Vec::new();
            for ep in self.registry.iter() {
                let Some(m) = self.engine.map_state(&ep.name()) else {
                    continue;
                };
                id.extend(id_entries(m, ep.endpoint_id).values().map(show_id));
                pod.extend(
                    pod_entries(m, ep.endpoint_id, &pod_ips)
                        .values()
                        .map(|(m, peer, v)| show_pod(m, peer, v)),
                );
            }
            id.sort();
            pod.sort();
            (id, pod)
        }
    }

    fn show_id(e: &(u32, PolicyKey, PolicyValue)) -> String {
        format!("{e:?}")
    }

    /// The match, peer and decision (the value's key length is the map's bookkeeping).
    fn show_pod(m: &PolicyMatch, peer: &IpAddr, v: &PolicyValue) -> String {
        format!("{m:?} {peer} verdict {} rule {}", v.verdict, v.rule_id)
    }

    fn in_maps(dp: &Datapath) -> (Vec<String>, Vec<String>) {
        let mut id: Vec<String> = dp
            .policy_entries()
            .expect("read policy map")
            .iter()
            .map(show_id)
            .collect();
        let mut pod: Vec<String> = dp
            .pod_ip_entries()
            .expect("read pod-address map")
            .iter()
            .map(|(m, peer, v)| show_pod(m, peer, v))
            .collect();
        id.sort();
        pod.sort();
        (id, pod)
    }

    fn datapath() -> Datapath {
        Datapath::load_with(&DatapathConfig::for_test()).expect("load (root, bpffs)")
    }

    fn entries_of(dp: &Datapath, endpoint_id: u32) -> usize {
        dp.policy_entries()
            .expect("read policy map")
            .iter()
            .filter(|(_, k, _)| u32::from_be_bytes(k.endpoint_id) == endpoint_id)
            .count()
    }

    #[test]
    fn endpoints_sharing_a_state_each_get_their_entries_and_lose_them_alone() {
        let mut dp = datapath();
        let mut n = Node::new("share");
        n.policy(ALLOW_B_80);
        n.add("a1", "a", "10.0.0.1");
        n.add("a2", "a", "10.0.0.2");
        n.add("b", "b", "10.0.0.3");
        let shared = Arc::ptr_eq(
            n.engine.shared_map_state("x/a1").expect("a1"),
            n.engine.shared_map_state("x/a2").expect("a2"),
        );
        assert!(shared, "one identity, one compiled state");
        let mut sync = MapSync::default();
        let stats = sync.sync(&mut dp, &n.engine, &n.registry).expect("sync");
        assert_eq!(in_maps(&dp), n.expected());
        let (a1, a2) = (n.endpoint_id("a1"), n.endpoint_id("a2"));
        assert!(entries_of(&dp, a1) > 0 && entries_of(&dp, a1) == entries_of(&dp, a2));
        assert_eq!(stats.total, dp.policy_entries().expect("read").len());

        // The engine reports them changed (they were added), but the states written are still
        // the engine's: nothing to diff, nothing written.
        let changed = n.engine.take_changed();
        assert!(changed.contains("x/a1"));
        let stats = sync
            .sync_changed(&mut dp, &n.engine, &n.registry, &changed)
            .expect("sync");
        assert_eq!((stats.endpoints, stats.written, stats.removed), (0, 0, 0));

        // One of the two goes: its entries go, the other's stay.
        n.remove("a1");
        let changed = n.engine.take_changed();
        let stats = sync
            .sync_changed(&mut dp, &n.engine, &n.registry, &changed)
            .expect("sync");
        assert_eq!(in_maps(&dp), n.expected());
        assert_eq!(entries_of(&dp, a1), 0);
        assert!(entries_of(&dp, a2) > 0);
        assert!(stats.removed > 0);

        // A policy change rewrites the survivor from the state it shared.
        n.policy(&ALLOW_B_80.replace("port: 80", "port: 81"));
        let changed = n.engine.take_changed();
        let stats = sync
            .sync_changed(&mut dp, &n.engine, &n.registry, &changed)
            .expect("sync");
        assert_eq!(in_maps(&dp), n.expected());
        assert!(stats.written > 0 && stats.removed > 0);
        assert_eq!(stats.total, dp.policy_entries().expect("read").len());
        assert_eq!(
            sync.entries_by_endpoint().get(&a2).map(|c| c.0),
            Some(entries_of(&dp, a2))
        );
    }

    #[test]
    fn after_adopt_the_first_sync_removes_what_went_stale() {
        let mut dp = datapath();
        {
            let mut before = Node::new("adopt-1");
            before.policy(ALLOW_B_80);
            before.policy(ALLOW_BLOCK);
            before.add("a1", "a", "10.0.0.1");
            before.add("a2", "a", "10.0.0.2");
            before.add("b", "b", "10.0.0.3");
            MapSync::default()
                .sync(&mut dp, &before.engine, &before.registry)
                .expect("sync");
            assert_eq!(in_maps(&dp), before.expected());
            assert!(!in_maps(&dp).1.is_empty(), "pod-address entries written");
        }
        // The agent comes back with other policy, and one endpoint gone while it was down.
        let mut after = Node::new("adopt-2");
        after.policy(&ALLOW_B_80.replace("port: 80", "port: 81"));
        after.add("a1", "a", "10.0.0.1");
        after.add("b", "b", "10.0.0.3");
        let mut sync = MapSync::default();
        let adopted = sync.adopt(&dp).expect("adopt");
        let (id, pod) = in_maps(&dp);
        assert_eq!(adopted, id.len() + pod.len());
        let stats = sync
            .sync(&mut dp, &after.engine, &after.registry)
            .expect("sync");
        assert!(stats.removed > 0);
        assert_eq!(in_maps(&dp), after.expected());
        assert!(in_maps(&dp).1.is_empty(), "the ipBlock policy is gone");
        assert_eq!(stats.total, in_maps(&dp).0.len());
    }

    #[test]
    fn pod_address_entries_follow_the_pod_addresses_for_each_sharing_endpoint() {
        let mut dp = datapath();
        let mut n = Node::new("pods");
        n.policy(ALLOW_BLOCK);
        n.add("a1", "a", "10.0.0.1");
        n.add("a2", "a", "10.0.0.2");
        let mut sync = MapSync::default();
        sync.sync(&mut dp, &n.engine, &n.registry).expect("sync");
        n.engine.take_changed();
        assert_eq!(in_maps(&dp), n.expected());
        // Two endpoints × two addresses in the block.
        assert_eq!(in_maps(&dp).1.len(), 4);

        // A pod inside the block and one in its exception appear: only the first is allowed,
        // for both endpoints, though neither's compiled state changed.
        n.add("c", "c", "10.0.0.7");
        n.add("d", "c", "10.0.0.200");
        let changed = n.engine.take_changed();
        assert!(!changed.contains("x/a1"));
        sync.sync_changed(&mut dp, &n.engine, &n.registry, &changed)
            .expect("sync");
        assert_eq!(in_maps(&dp), n.expected());
        assert_eq!(in_maps(&dp).1.len(), 6);

        // It goes again: so do its entries, and the ones allowing it.
        let own = entries_of(&dp, n.endpoint_id("c"));
        n.remove("c");
        let changed = n.engine.take_changed();
        let stats = sync
            .sync_changed(&mut dp, &n.engine, &n.registry, &changed)
            .expect("sync");
        assert_eq!(in_maps(&dp), n.expected());
        assert_eq!(in_maps(&dp).1.len(), 4);
        assert_eq!(stats.removed, own + 2);
        assert_eq!(stats.total, in_maps(&dp).0.len() + 4);
    }
}
