//! What the flow reader knows about addresses, identities and policy rules: a snapshot the run
//! loop rebuilds whenever endpoints, identities or policies change, shared behind an
//! `RwLock<Arc<_>>` so the reader takes a reference per batch and never waits on the run loop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use crate::agent::sorted::SortedTable;
use palisade_api::flow;
use palisade_policy::identity::Identity;
use palisade_policy::ir::{Origin, PolicyKind, ResourceKey, Section};

/// The label carrying a pod's namespace, as identities hold it.
const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// One endpoint of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Node-local endpoint id.
    pub endpoint_id: u32,
    /// Security identity.
    pub identity: u32,
    /// `<namespace>/<pod>`: the policy engine's name for the endpoint, shared with it rather
    /// than copied (the snapshot is rebuilt on every endpoint change, and fresh strings for
    /// every endpoint each time would cost memory and fragment the heap).
    pub name: Arc<str>,
    /// Identity labels, `source:key=value`: the identity's list in
    /// [`Enrichment::identities`], shared by every endpoint of the identity rather than copied
    /// into each.
    pub labels: Arc<[String]>,
}

impl EndpointMeta {
    /// The pod's namespace (a namespace name has no `/`).
    pub fn namespace(&self) -> &str {
        self.name.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// The pod's name.
    pub fn pod(&self) -> &str {
        self.name
            .split_once('/')
            .map_or(&*self.name, |(_, pod)| pod)
    }
}

/// The snapshot.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {
    /// This node's name (every flow carries it).
    pub node: String,
    /// Local endpoints by address, sorted (see [`Enrichment::set_locals`]).
    pub(crate) by_ip: SortedTable<IpAddr, EndpointMeta>,
    /// Host-side interface names by ifindex.
    pub(crate) ifaces: SortedTable<u32, Arc<str>>,
    /// Labels of every identity known (local and cluster), shared with the previous snapshot
    /// where unchanged ([`Enrichment::share_labels`]): flows in the ring keep the snapshot they
    /// were read under alive until they are named, so snapshots must not each copy them all.
    pub identities: HashMap<u32, Arc<[String]>>,
    /// The policy behind each rule id, shared with the previous snapshot while policies are
    /// unchanged ([`PolicyNames::is_current`]).
    pub policies: Arc<PolicyNames>,
}

/// The policy object a rule belongs to, as a Hubble flow names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePolicy {
    /// The policy, built once per table (a flow copies it only when it is read).
    pub policy: Arc<flow::Policy>,
    /// A deny rule (`ingressDeny`/`egressDeny`): it names the policy that denied a flow, never
    /// one that allowed it.
    pub deny: bool,
}

/// Rule id → the policy it belongs to: how a flow's `rule_id` (the datapath entry's, the
/// policy engine's id of the rule that decided) becomes Hubble's `*_allowed_by` /
/// `*_denied_by`. Rule ids are never reused, so an older table never misnames a newer id: it
/// only does not know it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyNames {
    /// The engine revision the table was built from.
    engine_revision: u64,
    /// The revision flows report (`Policy.revision`).
    revision: u64,
    by_rule: HashMap<u32, RulePolicy>,
}

/// Hubble's name for a policy kind (Cilium's `derived-from` label value).
pub fn kind_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
        PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        PolicyKind::NetworkPolicy => "NetworkPolicy",
    }
}

/// A policy object as Hubble names it: name, namespace, kind, revision and the labels Cilium
/// derives for the object's rules (`k8s:io.cilium.k8s.policy.derived-from`, `.name`,
/// `.namespace` for namespaced kinds, `.uid` when the object has one), in Cilium's order.
pub fn hubble_policy(key: &ResourceKey, uid: Option<&str>, revision: u64) -> flow::Policy {
    const PREFIX: &str = "k8s:io.cilium.k8s.policy";
    let kind = kind_name(key.kind);
    let mut labels = vec![
        format!("{PREFIX}.derived-from={kind}"),
        format!("{PREFIX}.name={}", key.name),
    ];
    if let Some(ns) = &key.namespace {
        labels.push(format!("{PREFIX}.namespace={ns}"));
    }
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        labels.push(format!("{PREFIX}.uid={uid}"));
    }
    flow::Policy {
        name: key.name.clone(),
        namespace: key.namespace.clone().unwrap_or_default(),
        labels,
        revision,
        kind: kind.to_string(),
    }
}

impl PolicyNames {
    /// The table for the engine's rules (`engine.rule_origins()`) at `engine_revision`,
    /// reporting `revision`; `uid` gives an object's uid when it has one.
    pub fn build<'a>(
        engine_revision: u64,
        revision: u64,
        rules: impl IntoIterator<Item = (u32, &'a Origin)>,
        uid: impl Fn(&ResourceKey) -> Option<String>,
    ) -> Self {
        // One `Policy` per object, shared by all of its rules.
        let mut objects: HashMap<&ResourceKey, Arc<flow::Policy>> = HashMap::new();
        let mut by_rule = HashMap::new();
        for (id, origin) in rules {
            let policy = objects
                .entry(&origin.resource)
                .or_insert_with(|| {
                    Arc::new(hubble_policy(
                        &origin.resource,
                        uid(&origin.resource).as_deref(),
                        revision,
                    ))
                })
                .clone();
            let deny = matches!(origin.section, Section::IngressDeny | Section::EgressDeny);
            by_rule.insert(id, RulePolicy { policy, deny });
        }
        Self {
            engine_revision,
            revision,
            by_rule,
        }
    }

    /// Whether this table is the one [`PolicyNames::build`] would make for these revisions
    /// (then the next snapshot shares it instead of building it again).
    pub fn is_current(&self, engine_revision: u64, revision: u64) -> bool {
        self.engine_revision == engine_revision && self.revision == revision
    }

    /// The policies a rule names in the given role: its policy when the rule is a deny rule and
    /// `deny` is asked, or an allow rule and `!deny`; none for rule 0 (no rule decided: default
    /// deny or default allow), an unknown id, or a rule in the other role (an allow that an
    /// audit-mode deny beside it marked carries the deny rule's id: that policy allowed
    /// nothing). A list, as Hubble's fields are: one entry per rule id here.
    pub fn deciding(&self, rule_id: u32, deny: bool) -> Vec<flow::Policy> {
        match self.by_rule.get(&rule_id) {
            Some(r) if r.deny == deny => vec![(*r.policy).clone()],
            _ => Vec::new(),
        }
    }

    /// Rules known.
    pub fn len(&self) -> usize {
        self.by_rule.len()
    }

    /// Whether no rule is known.
    pub fn is_empty(&self) -> bool {
        self.by_rule.is_empty()
    }
}

/// The shared handle: the run loop swaps in a new snapshot, readers clone the `Arc`.
pub type SharedEnrichment = Arc<RwLock<Arc<Enrichment>>>;

/// A local endpoint as [`Enrichment::set_locals`] takes it.
#[derive(Debug, Clone)]
pub struct LocalEndpoint {
    /// Ifindex of its host-side interface.
    pub ifindex: u32,
    /// Name of its host-side interface.
    pub iface: Arc<str>,
    /// Its address.
    pub ip: IpAddr,
    /// What flows say of it.
    pub meta: EndpointMeta,
}

impl Enrichment {
    /// Sets the local endpoints (replacing any). They are kept in sorted vectors, not hash
    /// maps: the snapshot is rebuilt on every endpoint change and read by binary search, and a
    /// hash table's spare buckets (up to half of them at some sizes) cost more per endpoint than
    /// the endpoint's own entry.
    pub fn set_locals(&mut self, locals: Vec<LocalEndpoint>) {
        let mut ifaces = Vec::with_capacity(locals.len());
        let mut by_ip = Vec::with_capacity(locals.len());
        for l in locals {
            self.identities
                .insert(l.meta.identity, Arc::clone(&l.meta.labels));
            ifaces.push((l.ifindex, l.iface));
            by_ip.push((l.ip, l.meta));
        }
        self.ifaces = ifaces.into();
        self.by_ip = by_ip.into();
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
        self.ifaces
            .get(&ifindex)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// The local endpoint at `ip`, if any.
    pub fn local(&self, ip: IpAddr) -> Option<&EndpointMeta> {
        self.by_ip.get(&ip)
    }

    /// The name of a host-side interface, as this snapshot holds it.
    pub fn iface(&self, ifindex: u32) -> Option<&Arc<str>> {
        self.ifaces.get(&ifindex)
    }

    /// The flow endpoint for `ip` seen with `identity`: a local endpoint by address, otherwise
    /// what the identity says (labels, namespace; pods of other nodes have no name here).
    pub fn endpoint(&self, ip: IpAddr, identity: u32) -> flow::Endpoint {
        if let Some(m) = self.by_ip.get(&ip) {
            return flow::Endpoint {
                id: m.endpoint_id,
                identity: if identity == 0 { m.identity } else { identity },
                namespace: m.namespace().to_string(),
                labels: m.labels.to_vec(),
                pod_name: m.pod().to_string(),
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
    fn local_endpoints_are_found_by_address_and_interface_and_the_newest_entry_wins() {
        let meta = |id: u32, pod: &str| EndpointMeta {
            endpoint_id: id,
            identity: 300 + id,
            name: format!("demo/{pod}").into(),
            labels: Arc::from(vec![format!("k8s:app={pod}")]),
        };
        let local = |ifindex: u32, ip: &str, m: EndpointMeta| LocalEndpoint {
            ifindex,
            iface: format!("lxc{ifindex}").into(),
            ip: ip.parse().expect("ip"),
            meta: m,
        };
        let mut e = Enrichment::default();
        e.set_locals(vec![
            local(9, "10.0.0.9", meta(9, "old")),
            local(2, "10.0.0.2", meta(2, "b")),
            local(5, "fd00::5", meta(5, "c")),
            // The same address registered again (a re-created pod): the later entry counts.
            local(9, "10.0.0.9", meta(10, "new")),
        ]);
        let at = |e: &Enrichment, ip: &str| e.endpoint(ip.parse().expect("ip"), 0);
        assert_eq!(
            (at(&e, "10.0.0.2").id, at(&e, "10.0.0.2").pod_name.as_str()),
            (2, "b")
        );
        assert_eq!(
            (at(&e, "fd00::5").identity, at(&e, "fd00::5").labels.clone()),
            (305, vec!["k8s:app=c".to_string()])
        );
        assert_eq!(
            (at(&e, "10.0.0.9").id, at(&e, "10.0.0.9").pod_name.as_str()),
            (10, "new")
        );
        assert_eq!(at(&e, "10.0.0.3").id, 0, "not local");
        assert_eq!(e.iface_name(5), "lxc5");
        assert_eq!(e.iface_name(4), "");
        // Replacing the set forgets the old endpoints.
        e.set_locals(vec![local(3, "10.0.0.3", meta(3, "d"))]);
        assert_eq!(at(&e, "10.0.0.2").id, 0);
        assert_eq!(at(&e, "10.0.0.3").pod_name, "d");
        assert_eq!(e.iface_name(2), "");
    }

    fn origin(kind: PolicyKind, ns: Option<&str>, name: &str, section: Section) -> Origin {
        Origin {
            resource: ResourceKey {
                kind,
                namespace: ns.map(str::to_string),
                name: name.to_string(),
            },
            spec: None,
            section,
            rule: Some(0),
            audit: false,
        }
    }

    #[test]
    fn policies_are_named_as_hubble_names_them() {
        let cnp = ResourceKey {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some("demo".into()),
            name: "api-ingress".into(),
        };
        assert_eq!(
            hubble_policy(&cnp, Some("1234-5678"), 7),
            flow::Policy {
                name: "api-ingress".into(),
                namespace: "demo".into(),
                labels: vec![
                    "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy".into(),
                    "k8s:io.cilium.k8s.policy.name=api-ingress".into(),
                    "k8s:io.cilium.k8s.policy.namespace=demo".into(),
                    "k8s:io.cilium.k8s.policy.uid=1234-5678".into(),
                ],
                revision: 7,
                kind: "CiliumNetworkPolicy".into(),
            }
        );
        // Cluster-wide: no namespace, and no namespace label; no uid: no uid label.
        let ccnp = ResourceKey {
            kind: PolicyKind::CiliumClusterwideNetworkPolicy,
            namespace: None,
            name: "lockdown".into(),
        };
        let p = hubble_policy(&ccnp, None, 1);
        assert_eq!(p.namespace, "");
        assert_eq!(p.kind, "CiliumClusterwideNetworkPolicy");
        assert_eq!(
            p.labels,
            vec![
                "k8s:io.cilium.k8s.policy.derived-from=CiliumClusterwideNetworkPolicy".to_string(),
                "k8s:io.cilium.k8s.policy.name=lockdown".to_string(),
            ]
        );
        assert_eq!(kind_name(PolicyKind::NetworkPolicy), "NetworkPolicy");
    }

    #[test]
    fn rule_ids_resolve_to_their_policy_in_the_role_they_play() {
        let allow = origin(
            PolicyKind::CiliumNetworkPolicy,
            Some("demo"),
            "allow-fe",
            Section::Ingress,
        );
        let deny = origin(
            PolicyKind::CiliumNetworkPolicy,
            Some("demo"),
            "deny-db",
            Section::EgressDeny,
        );
        let np = origin(
            PolicyKind::NetworkPolicy,
            Some("demo"),
            "np",
            Section::Egress,
        );
        let names = PolicyNames::build(
            4,
            9,
            [(3, &allow), (4, &allow), (5, &deny), (8, &np)],
            |k| (k.name == "np").then(|| "u-1".to_string()),
        );
        assert_eq!(names.len(), 4);
        // An allow rule names its policy as the one that allowed, never as one that denied.
        let got = names.deciding(3, false);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].name.as_str(),
                got[0].namespace.as_str(),
                got[0].revision
            ),
            ("allow-fe", "demo", 9)
        );
        assert!(names.deciding(3, true).is_empty());
        // Two rules of one object share one built `Policy`.
        assert!(Arc::ptr_eq(
            &names.by_rule[&3].policy,
            &names.by_rule[&4].policy
        ));
        // A deny rule names its policy as the one that denied.
        assert_eq!(names.deciding(5, true)[0].name, "deny-db");
        assert!(names.deciding(5, false).is_empty());
        assert_eq!(names.deciding(8, false)[0].kind, "NetworkPolicy");
        assert!(
            names.deciding(8, false)[0]
                .labels
                .contains(&"k8s:io.cilium.k8s.policy.uid=u-1".to_string())
        );
        // No rule (default deny / default allow) and ids this table does not know: none.
        assert!(names.deciding(0, false).is_empty());
        assert!(names.deciding(0, true).is_empty());
        assert!(names.deciding(99, false).is_empty());
        assert!(names.is_current(4, 9));
        assert!(!names.is_current(5, 9) && !names.is_current(4, 10));
    }

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
