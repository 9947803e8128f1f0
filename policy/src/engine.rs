//! The engine: identities, endpoints, policies, the selector cache and every endpoint's compiled
//! map state, kept up to date incrementally.
//!
//! ```text
//!  add_endpoint / add_external ──► identity (new?) ──► selector deltas ──► slice(id) of each
//!                                                                          affected endpoint
//!  replace_policy ──► (affected identities, revision) ──► full recompile of their endpoints
//! ```
//! Pure: every input arrives as a parameter; outputs are deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::compile::{Contribution, Kind, ProxyPorts, Slices, build_slice};
use crate::error::EngineError;
use crate::identity::{Identity, IdentityAllocator};
use crate::ir::{
    DefaultDeny, Direction, NormalizedPolicy, Origin, Peers, PolicyEntry, PortSpec, ResourceKey,
};
use crate::labels::{LabelSet, Source, pod_labels};
use crate::mapstate::{IpRule, L4Key, MapState, dir_byte, port_blocks};
use crate::selector::MatchContext;
use crate::selector_cache::{SelectorCache, SelectorId};

/// How many distinct compiled states one identity's endpoints may share among (see
/// `Engine::store_state`); states beyond are stored unshared.
const MAX_SHARED_STATES_PER_IDENTITY: usize = 8;

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Cluster id (high 8 bits of identities).
    pub cluster_id: u8,
    /// Cluster name (`io.cilium.k8s.policy.cluster`).
    pub cluster_name: String,
    /// Proxy ports used by redirects.
    pub proxy_ports: ProxyPorts,
    /// Keep an identity allocated when its last endpoint goes, so a pod re-created with the same
    /// labels gets the same identity and no policy entry has to change (Cilium keeps unreferenced
    /// identities for a grace period). The caller decides when they go:
    /// [`Engine::release_unreferenced_identities`]. Off: released at once (offline suites).
    pub retain_unreferenced_identities: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cluster_id: 0,
            cluster_name: "default".into(),
            proxy_ports: ProxyPorts {
                http: 15001,
                dns: 15053,
            },
            retain_unreferenced_identities: false,
        }
    }
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// Name.
    pub name: String,
    /// Number.
    pub port: u16,
    /// Protocol number.
    pub protocol: u8,
}

/// An endpoint (pod) as the engine needs it.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// `<namespace>/<pod>`. Shared (`Arc`): the engine keys its per-endpoint tables by it, and
    /// one string serves them all.
    pub name: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Pod labels; the engine keeps one copy for the endpoints of an identity that carry the
    /// same labels (nearly all of them), so a node's endpoints do not each hold their own. The
    /// namespace and service account are shared the same way.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Service account.
    pub service_account: Arc<str>,
    /// IP address.
    pub ip: IpAddr,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
}

/// An endpoint with its identity.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// What was given.
    pub spec: EndpointSpec,
    /// Its identity.
    pub identity: Identity,
}

/// A peer outside the cluster.
#[derive(Debug, Clone)]
pub struct External {
    /// Name (also matched by `toFQDNs`, as if the pod had resolved it).
    pub name: String,
    /// Address.
    pub ip: IpAddr,
    /// Its node-local CIDR identity.
    pub identity: Identity,
}

#[derive(Debug, Clone)]
struct StoredRule {
    id: u32,
    entry: PolicyEntry,
    subject: SelectorId,
    peers: Vec<SelectorId>,
}

#[derive(Debug, Clone)]
struct StoredDefault {
    id: u32,
    dd: DefaultDeny,
    subject: SelectorId,
}

#[derive(Debug, Clone, Default)]
struct StoredPolicy {
    rules: Vec<StoredRule>,
    defaults: Vec<StoredDefault>,
}

/// The rules and default-deny statements selecting one identity, by direction: the identity's
/// policy while it still speaks in selectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectorPolicy {
    /// Rule ids per direction (ingress, egress), ascending.
    pub rules: [Vec<u32>; 2],
    /// Default-deny statement ids per direction; empty means the direction is not enforced.
    pub default_deny: [Vec<u32>; 2],
}

/// The labels of an address learned from DNS: `cidr:<ip>/32` and `fqdn:<name>` per name.
fn fqdn_labels(ip: IpAddr, names: &BTreeSet<String>) -> LabelSet {
    let mut labels = LabelSet::new();
    labels.insert(Source::Cidr, ipnet::IpNet::from(ip).to_string(), "");
    for n in names {
        labels.insert(
            Source::Fqdn,
            n.trim_end_matches('.').to_ascii_lowercase(),
            "",
        );
    }
    labels
}

fn di(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Everything the policy engine knows, and the compiled result.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    identities: IdentityAllocator,
    cache: SelectorCache,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    endpoints: BTreeMap<Arc<str>, Endpoint>,
    by_identity: BTreeMap<Identity, BTreeSet<Arc<str>>>,
    externals: BTreeMap<String, External>,
    /// Addresses learned from DNS answers (the agent's DNS proxy), with the identity their
    /// current names give them.
    fqdn_ips: BTreeMap<IpAddr, Identity>,
    /// Node-local identities of the prefixes policies name ([`Engine::sync_cidr_identities`]).
    cidr_ids: BTreeMap<ipnet::IpNet, Identity>,
    /// Pods this engine does not compile for (on other nodes), by address, with their identity
    /// and named ports: what an egress rule's named port resolves to for those destinations,
    /// and the pod addresses an `ipBlock` rule is expanded over ([`Engine::pod_ips`]).
    remote_pods: BTreeMap<IpAddr, (Identity, Vec<NamedPort>)>,
    policies: BTreeMap<ResourceKey, StoredPolicy>,
    rule_loc: BTreeMap<u32, (ResourceKey, usize)>,
    default_loc: BTreeMap<u32, (ResourceKey, usize)>,
    origins: BTreeMap<u32, Origin>,
    peer_index: BTreeMap<SelectorId, BTreeSet<u32>>,
    next_rule: u32,
    revision: u64,
    /// Compiled state per endpoint; endpoints whose states are equal share one (see `states`).
    maps: BTreeMap<Arc<str>, Arc<MapState>>,
    /// The distinct compiled states in use, per identity: a newly compiled state equal to one of
    /// them is shared rather than stored again. Endpoints of one identity nearly always compile
    /// to the same state (Cilium computes policy per identity); only what is per pod (named
    /// ports) can set them apart, and then each gets its own.
    states: BTreeMap<Identity, Vec<Arc<MapState>>>,
    /// Selector policy per identity in use; exact because subject matches change only with
    /// policies (refreshed in `replace_policy`) and identities (filled in `add_endpoint`).
    sp_cache: BTreeMap<Identity, SelectorPolicy>,
    /// Subject selector → (rule or default-deny id, direction, is a default-deny statement).
    subject_index: BTreeMap<SelectorId, Vec<(u32, Direction, bool)>>,
    /// Endpoints whose compiled state may have changed since [`Engine::take_changed`]: what a
    /// map writer must look at, so a change costs what it touches, not every endpoint.
    changed: BTreeSet<Arc<str>>,
}

impl Engine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Self {
        let ctx = MatchContext {
            cluster_name: config.cluster_name.clone(),
        };
        Engine {
            identities: IdentityAllocator::new(config.cluster_id),
            cache: SelectorCache::new(ctx),
            config,
            namespaces: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            by_identity: BTreeMap::new(),
            externals: BTreeMap::new(),
            fqdn_ips: BTreeMap::new(),
            cidr_ids: BTreeMap::new(),
            remote_pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            rule_loc: BTreeMap::new(),
            default_loc: BTreeMap::new(),
            origins: BTreeMap::new(),
            peer_index: BTreeMap::new(),
            next_rule: 1,
            revision: 0,
            maps: BTreeMap::new(),
            states: BTreeMap::new(),
            sp_cache: BTreeMap::new(),
            subject_index: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }

    /// Proxy ports used by redirects.
    pub fn proxy_ports(&self) -> ProxyPorts {
        self.config.proxy_ports
    }

    /// Policy revision: increases with every policy change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Sets a namespace's labels. Call before adding the namespace's endpoints.
    pub fn set_namespace(&mut self, namespace: &str, labels: BTreeMap<String, String>) {
        self.namespaces.insert(namespace.to_string(), labels);
    }

    /// Endpoints by name.
    pub fn endpoints(&self) -> &BTreeMap<Arc<str>, Endpoint> {
        &self.endpoints
    }

    /// Externals by name.
    pub fn externals(&self) -> &BTreeMap<String, External> {
        &self.externals
    }

    /// The identity allocator.
    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    /// The selector cache.
    pub fn selector_cache(&self) -> &SelectorCache {
        &self.cache
    }

    /// Origin of a rule or default-deny statement id.
    pub fn origin(&self, id: u32) -> Option<&Origin> {
        self.origins.get(&id)
    }

    /// Every rule id in force with its origin, in id order. Default-deny statements are left
    /// out: their ids name no rule that decided a packet. Rule ids are never reused, so a
    /// table built from this names an id correctly for as long as the id exists.
    pub fn rule_origins(&self) -> impl Iterator<Item = (u32, &Origin)> {
        self.rule_loc
            .keys()
            .filter_map(|id| Some((*id, self.origins.get(id)?)))
    }

    /// The normalized rule behind a rule id.
    pub fn rule(&self, id: u32) -> Option<&PolicyEntry> {
        let (k, i) = self.rule_loc.get(&id)?;
        self.policies.get(k)?.rules.get(*i).map(|r| &r.entry)
    }

    /// Compiled state of an endpoint.
    pub fn map_state(&self, endpoint: &str) -> Option<&MapState> {
        self.maps.get(endpoint).map(|m| &**m)
    }

    /// Compiled state of an endpoint as shared: endpoints with equal states hold the same `Arc`,
    /// and a state is never changed in place (a change stores a new one), so a caller holding
    /// the `Arc` it last saw can tell "unchanged" by `Arc::ptr_eq` alone.
    pub fn shared_map_state(&self, endpoint: &str) -> Option<&Arc<MapState>> {
        self.maps.get(endpoint)
    }

    /// Labels of an identity.
    pub fn labels(&self, id: Identity) -> Option<&LabelSet> {
        self.identities.labels(id)
    }

    /// Policy objects loaded, in order.
    pub fn policy_keys(&self) -> impl Iterator<Item = &ResourceKey> {
        self.policies.keys()
    }

    /// The endpoint whose IP this is.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.spec.ip == ip)
    }

    // === identities ===

    fn new_identity(
        &mut self,
        name: &str,
        labels: LabelSet,
    ) -> Result<(Identity, Vec<SelectorId>), EngineError> {
        let (id, is_new) =
            self.identities
                .allocate(labels)
                .map_err(|source| EngineError::Identity {
                    name: name.to_string(),
                    source,
                })?;
        if !is_new {
            return Ok((id, vec![]));
        }
        let labels = self.identities.labels(id).cloned().unwrap_or_default();
        let deltas = self.cache.update_identities(&[(id, &labels)], &[]);
        Ok((id, deltas.into_iter().map(|d| d.selector).collect()))
    }

    /// Recomputes slice(`peer`) of every endpoint with a rule whose peer selector is in `gained`.
    fn apply_peer_gain(&mut self, peer: Identity, gained: &[SelectorId], skip: Option<&str>) {
        // Subject selectors whose rules name a gained selector as a peer, with the directions.
        let mut subjects: BTreeMap<SelectorId, [bool; 2]> = BTreeMap::new();
        for s in gained {
            for rid in self.peer_index.get(s).into_iter().flatten() {
                if let Some(r) = self.stored_rule(*rid) {
                    subjects.entry(r.subject).or_default()[di(r.entry.direction)] = true;
                }
            }
        }
        let mut eps: BTreeMap<Arc<str>, [bool; 2]> = BTreeMap::new();
        for (s, dirs) in subjects {
            for id in self.cache.matches(s) {
                for n in self.by_identity.get(id).into_iter().flatten() {
                    let e = eps.entry(n.clone()).or_default();
                    e[0] |= dirs[0];
                    e[1] |= dirs[1];
                }
            }
        }
        for (name, dirs) in eps {
            if Some(&*name) == skip {
                continue;
            }
            self.recompute_slice(&name, peer, dirs);
        }
    }

    /// Adds an endpoint and updates every compiled state it affects.
    pub fn add_endpoint(&mut self, spec: EndpointSpec) -> Result<Identity, EngineError> {
        if self.endpoints.contains_key(&spec.name) || self.externals.contains_key(&*spec.name) {
            return Err(EngineError::Duplicate {
                name: spec.name.to_string(),
            });
        }
        let labels = self.endpoint_labels(&spec);
        let is_new = self.identities.lookup(&labels).is_none();
        let (id, gained) = self.new_identity(&spec.name, labels)?;
        let mut spec = spec;
        if let Some(same) = self
            .by_identity
            .get(&id)
            .and_then(|names| names.first())
            .and_then(|n| self.endpoints.get(n))
            .filter(|other| other.spec.labels == spec.labels)
        {
            spec.labels = Arc::clone(&same.spec.labels);
            if same.spec.namespace == spec.namespace {
                spec.namespace = Arc::clone(&same.spec.namespace);
            }
            if same.spec.service_account == spec.service_account {
                spec.service_account = Arc::clone(&same.spec.service_account);
            }
        }
        let name = spec.name.clone();
        let has_named = !spec.ports.is_empty();
        self.by_identity.entry(id).or_default().insert(name.clone());
        self.endpoints
            .insert(name.clone(), Endpoint { spec, identity: id });
        if !self.sp_cache.contains_key(&id) {
            // A new identity is selected exactly by the subject selectors that just gained it.
            let sp = if is_new {
                self.selector_policy_from(&gained)
            } else {
                self.compute_selector_policy(id)
            };
            self.sp_cache.insert(id, sp);
        }
        if has_named {
            // Egress rules with named ports resolve against destination endpoints' ports.
            self.recompile_named_port_users(Some(&name));
        }
        self.apply_peer_gain(id, &gained, Some(&name));
        self.recompile(&name);
        Ok(id)
    }

    /// The security label set a pod would get (its identity's key), with the namespace labels
    /// this engine knows.
    pub fn endpoint_labels(&self, spec: &EndpointSpec) -> LabelSet {
        let empty = BTreeMap::new();
        pod_labels(
            &spec.labels,
            &spec.namespace,
            self.namespaces.get(&*spec.namespace).unwrap_or(&empty),
            &spec.service_account,
            &self.config.cluster_name,
        )
    }

    /// Binds an identity allocated elsewhere (the control plane) to its labels: selectors start
    /// matching it and local endpoints' policy naming it is recompiled. A local endpoint with
    /// those labels added later gets this id. Returns whether anything changed.
    pub fn bind_identity(&mut self, id: Identity, labels: LabelSet) -> Result<bool, EngineError> {
        let name = labels.to_string();
        let is_new =
            self.identities
                .bind(id, labels.clone())
                .map_err(|source| EngineError::Identity {
                    name: name.clone(),
                    source,
                })?;
        if !is_new {
            return Ok(false);
        }
        let deltas = self.cache.update_identities(&[(id, &labels)], &[]);
        let gained: Vec<SelectorId> = deltas.into_iter().map(|d| d.selector).collect();
        self.apply_peer_gain(id, &gained, None);
        Ok(true)
    }

    /// Makes a bound identity the one its label set resolves to (the control plane's canonical
    /// id after two nodes bound the same new set); endpoints added later get it, existing ones
    /// keep theirs until re-added. Other ids of the set stay bound as aliases, matched by the
    /// same selectors. Returns whether anything changed.
    pub fn set_canonical_identity(&mut self, id: Identity) -> bool {
        self.identities.make_primary(id)
    }

    /// Forgets an identity bound with [`Engine::bind_identity`] once the control plane released
    /// it. Refused (false) while a local endpoint uses it.
    pub fn unbind_identity(&mut self, id: Identity) -> bool {
        if self.by_identity.contains_key(&id) || self.identities.labels(id).is_none() {
            return false;
        }
        self.release_identity(id);
        true
    }

    /// Releases every identity no endpoint uses any more (with
    /// [`EngineConfig::retain_unreferenced_identities`], the caller's grace-period collection);
    /// returns them.
    pub fn release_unreferenced_identities(&mut self) -> Vec<Identity> {
        let unused: Vec<Identity> = self
            .sp_cache
            .keys()
            .copied()
            .filter(|id| {
                !self.by_identity.contains_key(id)
                    && !self.externals.values().any(|x| x.identity == *id)
                    && !self.fqdn_ips.values().any(|x| x == id)
            })
            .collect();
        for id in &unused {
            self.release_identity(*id);
        }
        unused
    }

    /// Forgets an identity: allocation, selector memberships, cached policy, entries naming it.
    fn release_identity(&mut self, id: Identity) {
        self.sp_cache.remove(&id);
        // Its endpoints are gone; a state a caller still holds (a map writer's last write) is
        // not kept for sharing.
        self.states.remove(&id);
        self.identities.release(id);
        self.cache.update_identities(&[], &[id]);
        // Endpoints sharing a state share its replacement: each distinct state is filtered once.
        let mut replaced: Vec<(Arc<MapState>, Arc<MapState>)> = Vec::new();
        let mut updates = Vec::new();
        for (name, m) in &self.maps {
            if let Some((_, new)) = replaced.iter().find(|(old, _)| Arc::ptr_eq(old, m)) {
                updates.push((name.clone(), new.clone()));
                continue;
            }
            let names_id = |k: &crate::mapstate::PolicyKey| k.identity == id.0;
            if !m.entries.keys().any(names_id) && !m.l7.keys().any(names_id) {
                continue;
            }
            let mut new = MapState::clone(m);
            new.entries.retain(|k, _| !names_id(k));
            new.l7.retain(|k, _| !names_id(k));
            let new = Arc::new(new);
            replaced.push((m.clone(), new.clone()));
            updates.push((name.clone(), new));
        }
        drop(replaced);
        for (name, new) in updates {
            if let Some(owner) = self.endpoints.get(&name).map(|e| e.identity) {
                self.store_state(&name, owner, new);
            }
            self.changed.insert(name);
        }
    }

    /// Stores `m` as the compiled state of endpoint `name` (of identity `id`), sharing an equal
    /// state another endpoint of the identity holds, and forgets the state it replaces when no
    /// endpoint uses that any more.
    fn store_state(&mut self, name: &Arc<str>, id: Identity, m: Arc<MapState>) {
        let list = self.states.entry(id).or_default();
        let shared = match list.iter().find(|s| Arc::ptr_eq(s, &m) || **s == m) {
            Some(s) => s.clone(),
            None => {
                // Past a handful of distinct states (an identity whose pods differ in named
                // ports) comparing against each costs more than sharing saves: store unshared.
                if list.len() < MAX_SHARED_STATES_PER_IDENTITY {
                    list.push(m.clone());
                }
                m
            }
        };
        let old = self.maps.insert(Arc::clone(name), shared);
        if old.is_some() {
            drop(old);
            self.prune_states(id);
        }
    }

    /// Forgets the shared states of `id` that no endpoint holds any more (the list's own
    /// reference is the last one; a caller such as a map writer may still hold a clone, and
    /// then the state goes on its next store or removal).
    fn prune_states(&mut self, id: Identity) {
        if let Some(list) = self.states.get_mut(&id) {
            list.retain(|s| Arc::strong_count(s) > 1);
            if list.is_empty() {
                self.states.remove(&id);
            }
        }
    }

    /// The endpoints whose compiled state may have changed since the last call (added,
    /// recompiled, removed, or entries naming a released identity dropped), and forgets them.
    pub fn take_changed(&mut self) -> BTreeSet<Arc<str>> {
        std::mem::take(&mut self.changed)
    }

    /// Removes an endpoint (its identity stays allocated while other endpoints use it).
    pub fn remove_endpoint(&mut self, name: &str) -> bool {
        let Some(ep) = self.endpoints.remove(name) else {
            return false;
        };
        self.maps.remove(name);
        self.changed.insert(Arc::clone(&ep.spec.name));
        let id = ep.identity;
        self.prune_states(id);
        let last = match self.by_identity.get_mut(&id) {
            Some(set) => {
                set.remove(name);
                set.is_empty()
            }
            None => true,
        };
        if last {
            self.by_identity.remove(&id);
            if !self.config.retain_unreferenced_identities {
                self.release_identity(id);
            }
        }
        if !ep.spec.ports.is_empty() {
            self.recompile_named_port_users(None);
        }
        true
    }

    /// Recompiles the endpoints (but `skip`) whose egress rules use named ports: the ports a
    /// name resolves to changed.
    fn recompile_named_port_users(&mut self, skip: Option<&str>) {
        let users: Vec<Arc<str>> = self
            .endpoints
            .keys()
            .filter(|n| Some(&***n) != skip && self.uses_egress_named_ports(n))
            .cloned()
            .collect();
        for n in users {
            self.recompile(&n);
        }
    }

    /// Records (`Some`) or forgets (`None`) a pod on another node, at `ip` with identity `id`
    /// and its named ports, so egress rules with named ports resolve against it as against a
    /// local pod (Cilium resolves them from every endpoint's ports cluster-wide) and `ipBlock`
    /// rules match its address. Local endpoints using named-port rules are recompiled when its
    /// ports changed; returns whether anything changed.
    pub fn set_remote_pod(&mut self, ip: IpAddr, pod: Option<(Identity, Vec<NamedPort>)>) -> bool {
        let before = self.remote_pods.get(&ip);
        if before == pod.as_ref() {
            return false;
        }
        // Only pods with named ports change what named-port rules resolve to.
        let ports_changed = before.is_some_and(|(_, p)| !p.is_empty())
            || pod.as_ref().is_some_and(|(_, p)| !p.is_empty());
        match pod {
            Some(p) => self.remote_pods.insert(ip, p),
            None => self.remote_pods.remove(&ip),
        };
        if ports_changed {
            self.recompile_named_port_users(None);
        }
        true
    }

    /// Every pod address of the cluster, sorted: local endpoints' and those of pods on other
    /// nodes ([`Engine::set_remote_pod`]). An `ipBlock` rule matches pods by these
    /// ([`crate::mapstate::MapState::pod_ip_entries`]), wherever they run.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .endpoints
            .values()
            .map(|e| e.spec.ip)
            .chain(self.remote_pods.keys().copied())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Every pod's named ports with its identity and address: local endpoints, then pods on
    /// other nodes ([`Engine::set_remote_pod`]).
    fn all_named_ports(&self) -> impl Iterator<Item = (IpAddr, Identity, &[NamedPort])> {
        self.endpoints
            .values()
            .map(|e| (e.spec.ip, e.identity, e.spec.ports.as_slice()))
            .chain(
                self.remote_pods
                    .iter()
                    .map(|(ip, (id, p))| (*ip, *id, p.as_slice())),
            )
    }

    /// Adds a peer outside the cluster.
    pub fn add_external(&mut self, name: &str, ip: IpAddr) -> Result<Identity, EngineError> {
        if self.endpoints.contains_key(name) || self.externals.contains_key(name) {
            return Err(EngineError::Duplicate {
                name: name.to_string(),
            });
        }
        let mut labels = LabelSet::new();
        labels.insert(Source::Cidr, ipnet::IpNet::from(ip).to_string(), "");
        labels.insert(
            Source::Fqdn,
            name.trim_end_matches('.').to_ascii_lowercase(),
            "",
        );
        let (id, gained) = self.new_identity(name, labels)?;
        self.externals.insert(
            name.to_string(),
            External {
                name: name.to_string(),
                ip,
                identity: id,
            },
        );
        self.apply_peer_gain(id, &gained, None);
        Ok(id)
    }

    /// Gives an address learned from DNS answers the identity of its names: labels
    /// `cidr:<ip>/32` and `fqdn:<name>` for each name, so `toFQDNs` selectors (and `toCIDR`)
    /// match it and every endpoint whose policy names them is recompiled. An empty set forgets
    /// the address. The identity the address had before is released when nothing else uses it.
    /// Returns the address's identity now.
    pub fn set_fqdn_names(
        &mut self,
        ip: IpAddr,
        names: &BTreeSet<String>,
    ) -> Result<Option<Identity>, EngineError> {
        let old = self.fqdn_ips.get(&ip).copied();
        let new = if names.is_empty() {
            self.fqdn_ips.remove(&ip);
            None
        } else {
            let labels = fqdn_labels(ip, names);
            let (id, gained) = self.new_identity(&format!("fqdn {ip}"), labels)?;
            self.fqdn_ips.insert(ip, id);
            self.apply_peer_gain(id, &gained, None);
            Some(id)
        };
        if let Some(o) = old
            && Some(o) != new
            && !self.by_identity.contains_key(&o)
            && !self.externals.values().any(|x| x.identity == o)
            && !self.fqdn_ips.values().any(|x| *x == o)
        {
            self.release_identity(o);
        }
        Ok(new)
    }

    /// [`Engine::set_fqdn_names`] for an address a previous run of the agent learned, giving it
    /// the identity it had then (`id`) when that id is node-local and free and the labels have
    /// none yet: the ipcache entry and policy entries the datapath kept across the restart stay
    /// valid, so the address is never unknown in between. Otherwise a fresh id, as for a new
    /// answer. Call before other node-local identities are allocated (policies' CIDRs).
    pub fn restore_fqdn_names(
        &mut self,
        ip: IpAddr,
        names: &BTreeSet<String>,
        id: Identity,
    ) -> Result<Option<Identity>, EngineError> {
        let labels = fqdn_labels(ip, names);
        if !names.is_empty()
            && id.is_local_scope()
            && self.identities.labels(id).is_none()
            && self.identities.lookup(&labels).is_none()
        {
            self.identities
                .bind(id, labels.clone())
                .map_err(|source| EngineError::Identity {
                    name: format!("fqdn {ip}"),
                    source,
                })?;
            let deltas = self.cache.update_identities(&[(id, &labels)], &[]);
            let gained: Vec<SelectorId> = deltas.into_iter().map(|d| d.selector).collect();
            self.apply_peer_gain(id, &gained, None);
        }
        self.set_fqdn_names(ip, names)
    }

    /// Gives every prefix a stored policy's CIDR selector names (blocks and their exceptions;
    /// `/0` aside, which is `world`) a node-local identity labelled `cidr:<prefix>`, and
    /// releases those of prefixes no longer named; returns every prefix's identity now.
    ///
    /// The agent writes these into the ipcache as prefix entries, as Cilium allocates CIDR
    /// identities for policy prefixes: an address outside the cluster then resolves (longest
    /// prefix match) to the most specific prefix any policy names, which every CIDR selector
    /// whose block holds the address, and none of whose exceptions does, selects. Pods, nodes
    /// and DNS-learned addresses keep their own, more specific, entries.
    pub fn sync_cidr_identities(
        &mut self,
    ) -> Result<&BTreeMap<ipnet::IpNet, Identity>, EngineError> {
        let want: BTreeSet<ipnet::IpNet> = self
            .cache
            .cidr_prefixes()
            .into_iter()
            .filter(|n| n.prefix_len() > 0)
            .collect();
        let gone: Vec<(ipnet::IpNet, Identity)> = self
            .cidr_ids
            .iter()
            .filter(|(n, _)| !want.contains(n))
            .map(|(n, id)| (*n, *id))
            .collect();
        for (n, id) in gone {
            self.cidr_ids.remove(&n);
            self.release_identity(id);
        }
        for n in want {
            if self.cidr_ids.contains_key(&n) {
                continue;
            }
            let mut labels = LabelSet::new();
            labels.insert(Source::Cidr, n.to_string(), "");
            let (id, gained) = self.new_identity(&format!("cidr {n}"), labels)?;
            self.cidr_ids.insert(n, id);
            self.apply_peer_gain(id, &gained, None);
        }
        Ok(&self.cidr_ids)
    }

    /// The addresses learned from DNS answers and their identities.
    pub fn fqdn_ips(&self) -> &BTreeMap<IpAddr, Identity> {
        &self.fqdn_ips
    }

    // === policies ===

    /// Replaces (or with `None` removes) a policy object. Returns the identities whose policy
    /// may have changed and the new revision; their endpoints are recompiled.
    pub fn replace_policy(
        &mut self,
        key: &ResourceKey,
        policy: Option<NormalizedPolicy>,
    ) -> (BTreeSet<Identity>, u64) {
        let mut affected: BTreeSet<Identity> = BTreeSet::new();
        // Register the new version first so selectors shared with the old one stay cached.
        let old = self.policies.remove(key);
        if let Some(p) = policy {
            let mut stored = StoredPolicy::default();
            for (i, entry) in p.entries.into_iter().enumerate() {
                let id = self.next_rule;
                self.next_rule += 1;
                let subject = self.cache.add_user(&entry.subject, &self.identities);
                affected.extend(self.cache.matches(subject).iter().copied());
                let mut peers = Vec::new();
                if let Peers::Selectors(sels) = &entry.peers {
                    for s in sels {
                        let sid = self.cache.add_user(s, &self.identities);
                        self.peer_index.entry(sid).or_default().insert(id);
                        peers.push(sid);
                    }
                }
                self.subject_index
                    .entry(subject)
                    .or_default()
                    .push((id, entry.direction, false));
                self.origins.insert(id, entry.origin.clone());
                self.rule_loc.insert(id, (key.clone(), i));
                stored.rules.push(StoredRule {
                    id,
                    entry,
                    subject,
                    peers,
                });
            }
            for (i, dd) in p.default_deny.into_iter().enumerate() {
                let id = self.next_rule;
                self.next_rule += 1;
                let subject = self.cache.add_user(&dd.subject, &self.identities);
                affected.extend(self.cache.matches(subject).iter().copied());
                self.subject_index
                    .entry(subject)
                    .or_default()
                    .push((id, dd.direction, true));
                self.origins.insert(id, dd.origin.clone());
                self.default_loc.insert(id, (key.clone(), i));
                stored.defaults.push(StoredDefault { id, dd, subject });
            }
            self.policies.insert(key.clone(), stored);
        }
        if let Some(old) = old {
            for r in &old.rules {
                affected.extend(self.cache.matches(r.subject).iter().copied());
                self.unindex_subject(r.subject, r.id);
                self.cache.remove_user(r.subject);
                for p in &r.peers {
                    if let Some(set) = self.peer_index.get_mut(p) {
                        set.remove(&r.id);
                        if set.is_empty() {
                            self.peer_index.remove(p);
                        }
                    }
                    self.cache.remove_user(*p);
                }
                self.rule_loc.remove(&r.id);
                self.origins.remove(&r.id);
            }
            for d in &old.defaults {
                affected.extend(self.cache.matches(d.subject).iter().copied());
                self.unindex_subject(d.subject, d.id);
                self.cache.remove_user(d.subject);
                self.default_loc.remove(&d.id);
                self.origins.remove(&d.id);
            }
        }
        self.revision += 1;
        // Patch the cached selector policies: drop the old version's ids, add the new version's
        // statements whose subject selects the identity.
        let new_items: Vec<(u32, Direction, bool, SelectorId)> = self
            .policies
            .get(key)
            .map(|p| {
                p.rules
                    .iter()
                    .map(|r| (r.id, r.entry.direction, false, r.subject))
                    .chain(
                        p.defaults
                            .iter()
                            .map(|d| (d.id, d.dd.direction, true, d.subject)),
                    )
                    .collect()
            })
            .unwrap_or_default();
        for id in &affected {
            if !self.by_identity.contains_key(id) {
                continue;
            }
            let mut sp = match self.sp_cache.remove(id) {
                Some(sp) => sp,
                None => {
                    let sp = self.compute_selector_policy(*id);
                    self.sp_cache.insert(*id, sp);
                    continue;
                }
            };
            for v in sp.rules.iter_mut().chain(sp.default_deny.iter_mut()) {
                v.retain(|r| self.origins.contains_key(r));
            }
            for (rid, dir, is_default, subject) in &new_items {
                if self.cache.matches(*subject).contains(id) {
                    let v = if *is_default {
                        &mut sp.default_deny[di(*dir)]
                    } else {
                        &mut sp.rules[di(*dir)]
                    };
                    v.push(*rid);
                }
            }
            for v in sp.rules.iter_mut().chain(sp.default_deny.iter_mut()) {
                v.sort_unstable();
                v.dedup();
            }
            self.sp_cache.insert(*id, sp);
        }
        let eps: Vec<Arc<str>> = affected
            .iter()
            .flat_map(|id| self.by_identity.get(id).into_iter().flatten().cloned())
            .collect();
        for e in eps {
            self.recompile(&e);
        }
        (affected, self.revision)
    }

    fn unindex_subject(&mut self, subject: SelectorId, id: u32) {
        if let Some(v) = self.subject_index.get_mut(&subject) {
            v.retain(|(i, _, _)| *i != id);
            if v.is_empty() {
                self.subject_index.remove(&subject);
            }
        }
    }

    /// The rules and default-deny statements that select `id`.
    pub fn selector_policy(&self, id: Identity) -> SelectorPolicy {
        match self.sp_cache.get(&id) {
            Some(sp) => sp.clone(),
            None => self.compute_selector_policy(id),
        }
    }

    /// The selector policy of an identity matched by exactly the selectors in `matching`.
    fn selector_policy_from(&self, matching: &[SelectorId]) -> SelectorPolicy {
        let mut sp = SelectorPolicy::default();
        for s in matching {
            for (id, dir, is_default) in self.subject_index.get(s).into_iter().flatten() {
                if *is_default {
                    sp.default_deny[di(*dir)].push(*id);
                } else {
                    sp.rules[di(*dir)].push(*id);
                }
            }
        }
        for v in sp.rules.iter_mut().chain(sp.default_deny.iter_mut()) {
            v.sort_unstable();
            v.dedup();
        }
        sp
    }

    fn compute_selector_policy(&self, id: Identity) -> SelectorPolicy {
        let mut sp = SelectorPolicy::default();
        for p in self.policies.values() {
            for r in &p.rules {
                if self.cache.matches(r.subject).contains(&id) {
                    sp.rules[di(r.entry.direction)].push(r.id);
                }
            }
            for d in &p.defaults {
                if self.cache.matches(d.subject).contains(&id) {
                    sp.default_deny[di(d.dd.direction)].push(d.id);
                }
            }
        }
        for v in sp.rules.iter_mut().chain(sp.default_deny.iter_mut()) {
            v.sort_unstable();
        }
        sp
    }

    fn stored_rule(&self, id: u32) -> Option<&StoredRule> {
        let (k, i) = self.rule_loc.get(&id)?;
        self.policies.get(k)?.rules.get(*i)
    }

    fn uses_egress_named_ports(&self, endpoint: &str) -> bool {
        let Some(ep) = self.endpoints.get(endpoint) else {
            return false;
        };
        let sp = self.selector_policy(ep.identity);
        sp.rules[1]
            .iter()
            .filter_map(|r| self.stored_rule(*r))
            .any(|r| {
                r.entry
                    .l4
                    .iter()
                    .flatten()
                    .any(|m| matches!(m.port, PortSpec::Named(_)))
            })
    }

    // === compilation ===

    /// L4 keys of a rule for one peer (named ports resolved per destination endpoint).
    pub(crate) fn l4_keys(
        &self,
        entry: &PolicyEntry,
        subject: &Endpoint,
        peer: Identity,
    ) -> Vec<L4Key> {
        let Some(ms) = &entry.l4 else {
            return vec![L4Key::ANY];
        };
        let mut out = Vec::new();
        for m in ms {
            let ranges: Vec<(u16, u16)> = match &m.port {
                PortSpec::Range(lo, hi) => vec![(*lo, *hi)],
                PortSpec::Named(n) => self
                    .resolve_named(n, m.proto, entry.direction, subject, peer)
                    .into_iter()
                    .map(|p| (p, p))
                    .collect(),
            };
            for (lo, hi) in ranges {
                for (port, len) in port_blocks(lo, hi) {
                    out.push(L4Key {
                        protocol: m.proto,
                        prefix_len: len,
                        port,
                    });
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Ports a named port stands for: the subject's own ports at ingress; at egress the ports of
    /// the destination endpoints with identity `peer` (every endpoint when `peer` is 0).
    pub(crate) fn resolve_named(
        &self,
        name: &str,
        proto: u8,
        dir: Direction,
        subject: &Endpoint,
        peer: Identity,
    ) -> BTreeSet<u16> {
        let pick = |e: &Endpoint| -> Vec<u16> {
            e.spec
                .ports
                .iter()
                .filter(|p| p.name == name && p.protocol == proto)
                .map(|p| p.port)
                .collect()
        };
        match dir {
            Direction::Ingress => pick(subject).into_iter().collect(),
            Direction::Egress => self
                .all_named_ports()
                .filter(|(_, id, _)| peer == Identity::ANY || *id == peer)
                .flat_map(|(_, _, ports)| ports)
                .filter(|p| p.name == name && p.protocol == proto)
                .map(|p| p.port)
                .collect(),
        }
    }

    /// Contributions of the endpoint's rules for one direction, for peers in `only` (all when
    /// `None`), plus the direction's default.
    fn contributions(
        &self,
        ep: &Endpoint,
        sp: &SelectorPolicy,
        dir: Direction,
        only: Option<&[Identity]>,
    ) -> Slices {
        let mut slices: Slices = BTreeMap::new();
        let dd = &sp.default_deny[di(dir)];
        if dd.is_empty() {
            slices.entry(Identity::ANY).or_default().push((
                L4Key::ANY,
                Contribution {
                    kind: Kind::DefaultAllow,
                    audit: false,
                    rule: 0,
                },
            ));
        } else if dd
            .iter()
            .all(|d| self.origins.get(d).is_some_and(|o| o.audit))
        {
            slices.entry(Identity::ANY).or_default().push((
                L4Key::ANY,
                Contribution {
                    kind: Kind::AuditDefault,
                    audit: true,
                    rule: dd[0],
                },
            ));
        }
        for rid in &sp.rules[di(dir)] {
            let Some(r) = self.stored_rule(*rid) else {
                continue;
            };
            let kind = |l7: &Option<std::sync::Arc<crate::ir::L7>>| {
                if r.entry.deny {
                    Kind::Deny
                } else {
                    match l7 {
                        Some(l) => Kind::Redirect(l.clone()),
                        None => Kind::Allow,
                    }
                }
            };
            let mut peers: Vec<Identity> = Vec::new();
            match &r.entry.peers {
                Peers::Any => peers.push(Identity::ANY),
                Peers::Selectors(_) => {
                    for s in &r.peers {
                        let m = self.cache.matches(*s);
                        match only {
                            Some(ids) => peers.extend(ids.iter().filter(|i| m.contains(i))),
                            None => peers.extend(m.iter().copied()),
                        }
                    }
                }
            }
            peers.sort_unstable();
            peers.dedup();
            for peer in peers {
                if let Some(ids) = only
                    && !ids.contains(&peer)
                {
                    continue;
                }
                let audit = r.entry.origin.audit;
                match &r.entry.l4 {
                    None => slices.entry(peer).or_default().push((
                        L4Key::ANY,
                        Contribution {
                            kind: kind(&None),
                            audit,
                            rule: r.id,
                        },
                    )),
                    Some(ms) => {
                        for m in ms {
                            match &m.port {
                                PortSpec::Range(lo, hi) => {
                                    let list = slices.entry(peer).or_default();
                                    for (port, len) in port_blocks(*lo, *hi) {
                                        let k = L4Key {
                                            protocol: m.proto,
                                            prefix_len: len,
                                            port,
                                        };
                                        list.push((
                                            k,
                                            Contribution {
                                                kind: kind(&m.l7),
                                                audit,
                                                rule: r.id,
                                            },
                                        ));
                                    }
                                }
                                PortSpec::Named(n)
                                    if peer == Identity::ANY && dir == Direction::Egress =>
                                {
                                    // Resolved per destination: one entry per identity whose
                                    // pods (here or on other nodes) expose the name (externals
                                    // never do).
                                    let mut by_id: BTreeMap<Identity, BTreeSet<u16>> =
                                        BTreeMap::new();
                                    for (_, id, ports) in self.all_named_ports() {
                                        if let Some(ids) = only
                                            && !ids.contains(&id)
                                        {
                                            continue;
                                        }
                                        by_id.entry(id).or_default().extend(
                                            ports
                                                .iter()
                                                .filter(|p| p.name == *n && p.protocol == m.proto)
                                                .map(|p| p.port),
                                        );
                                    }
                                    for (id, ports) in by_id {
                                        if ports.is_empty() {
                                            continue;
                                        }
                                        let list = slices.entry(id).or_default();
                                        for port in ports {
                                            let k = L4Key {
                                                protocol: m.proto,
                                                prefix_len: 16,
                                                port,
                                            };
                                            list.push((
                                                k,
                                                Contribution {
                                                    kind: kind(&m.l7),
                                                    audit,
                                                    rule: r.id,
                                                },
                                            ));
                                        }
                                    }
                                }
                                PortSpec::Named(n) => {
                                    let ports = self.resolve_named(n, m.proto, dir, ep, peer);
                                    let list = slices.entry(peer).or_default();
                                    for port in ports {
                                        let k = L4Key {
                                            protocol: m.proto,
                                            prefix_len: 16,
                                            port,
                                        };
                                        list.push((
                                            k,
                                            Contribution {
                                                kind: kind(&m.l7),
                                                audit,
                                                rule: r.id,
                                            },
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        slices
    }

    fn ip_rules(&self, ep: &Endpoint, sp: &SelectorPolicy) -> Vec<IpRule> {
        let mut out = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            for rid in &sp.rules[di(dir)] {
                let Some(r) = self.stored_rule(*rid) else {
                    continue;
                };
                if r.entry.deny || r.entry.pod_ip_blocks.is_empty() {
                    continue;
                }
                let named_egress = dir == Direction::Egress
                    && r.entry
                        .l4
                        .iter()
                        .flatten()
                        .any(|m| matches!(m.port, PortSpec::Named(_)));
                if named_egress {
                    // Named ports resolve on the destination: one host rule per pod in the block.
                    for (net, except) in &r.entry.pod_ip_blocks {
                        for (ip, identity, ports) in self.all_named_ports() {
                            let ipn = ipnet::IpNet::from(ip);
                            if !net.contains(&ipn) || except.iter().any(|e| e.contains(&ipn)) {
                                continue;
                            }
                            let l4 = self.l4_keys(&r.entry, ep, identity);
                            let l4: Vec<L4Key> = l4
                                .into_iter()
                                .filter(|k| {
                                    // keep numeric keys, and named ones that this pod exposes
                                    r.entry.l4.iter().flatten().any(|m| match &m.port {
                                        PortSpec::Range(lo, hi) => {
                                            m.proto == k.protocol
                                                && port_blocks(*lo, *hi)
                                                    .contains(&(k.port, k.prefix_len))
                                        }
                                        PortSpec::Named(n) => {
                                            k.prefix_len == 16
                                                && ports.iter().any(|p| {
                                                    p.name == *n
                                                        && p.protocol == k.protocol
                                                        && p.port == k.port
                                                })
                                        }
                                    })
                                })
                                .collect();
                            if !l4.is_empty() {
                                out.push(IpRule {
                                    direction: dir,
                                    net: ipn,
                                    except: vec![],
                                    l4,
                                    rule: r.id,
                                });
                            }
                        }
                    }
                    continue;
                }
                let l4 = match &r.entry.l4 {
                    None => vec![],
                    Some(_) => self.l4_keys(&r.entry, ep, Identity::ANY),
                };
                if r.entry.l4.is_some() && l4.is_empty() {
                    continue; // named ports that resolve to nothing
                }
                for (net, except) in &r.entry.pod_ip_blocks {
                    out.push(IpRule {
                        direction: dir,
                        net: *net,
                        except: except.clone(),
                        l4: l4.clone(),
                        rule: r.id,
                    });
                }
            }
        }
        out
    }

    fn recompile(&mut self, name: &str) {
        if let Some((name, ep)) = self.endpoints.get_key_value(name) {
            let m = self.compile_endpoint(ep);
            let (name, id) = (Arc::clone(name), ep.identity);
            self.store_state(&name, id, Arc::new(m));
            self.changed.insert(name);
        }
    }

    /// Compiles an endpoint's full state.
    pub fn compile_endpoint(&self, ep: &Endpoint) -> MapState {
        let sp = self.selector_policy(ep.identity);
        let mut m = MapState::default();
        for dir in [Direction::Ingress, Direction::Egress] {
            let slices = self.contributions(ep, &sp, dir, None);
            let empty = Vec::new();
            let wildcard = slices.get(&Identity::ANY).unwrap_or(&empty);
            let mut out = Vec::new();
            for (id, own) in &slices {
                build_slice(
                    *id,
                    own,
                    wildcard,
                    dir_byte(dir),
                    self.config.proxy_ports,
                    &mut out,
                );
            }
            for (k, v, l7) in out {
                m.entries.insert(k, v);
                if !l7.is_empty() {
                    m.l7.insert(k, l7);
                }
            }
        }
        m.ip_rules = self.ip_rules(ep, &sp);
        m
    }

    /// Rebuilds slice(`peer`) of one endpoint in the directions flagged in `dirs`.
    fn recompute_slice(&mut self, name: &str, peer: Identity, dirs: [bool; 2]) {
        let Some((name, ep)) = self.endpoints.get_key_value(name) else {
            return;
        };
        let name = Arc::clone(name);
        let computed;
        let sp = match self.sp_cache.get(&ep.identity) {
            Some(sp) => sp,
            None => {
                computed = self.compute_selector_policy(ep.identity);
                &computed
            }
        };
        let mut new_entries = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            if !dirs[di(dir)] {
                continue;
            }
            let slices = self.contributions(ep, sp, dir, Some(&[Identity::ANY, peer]));
            let empty = Vec::new();
            let wildcard = slices.get(&Identity::ANY).unwrap_or(&empty);
            if let Some(own) = slices.get(&peer) {
                build_slice(
                    peer,
                    own,
                    wildcard,
                    dir_byte(dir),
                    self.config.proxy_ports,
                    &mut new_entries,
                );
            }
        }
        let bytes: Vec<u8> = [Direction::Ingress, Direction::Egress]
            .iter()
            .filter(|d| dirs[di(**d)])
            .map(|d| dir_byte(*d))
            .collect();
        let id = ep.identity;
        self.changed.insert(Arc::clone(&name));
        // A shared state is never changed in place: the endpoint gets an edited copy, which
        // `store_state` shares again with the endpoints of its identity that got the same edit.
        let mut m = self
            .maps
            .get(&name)
            .map(|m| MapState::clone(m))
            .unwrap_or_default();
        m.entries
            .retain(|k, _| k.identity != peer.0 || !bytes.contains(&k.direction));
        m.l7.retain(|k, _| k.identity != peer.0 || !bytes.contains(&k.direction));
        for (k, v, l7) in new_entries {
            m.entries.insert(k, v);
            if !l7.is_empty() {
                m.l7.insert(k, l7);
            }
        }
        self.store_state(&name, id, Arc::new(m));
    }
}

#[cfg(test)]
mod tests;
