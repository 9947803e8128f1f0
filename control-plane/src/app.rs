//! The replicated state of the control plane and its pure transition function.
//!
//! ```text
//!   Request ──▶ State::apply ──▶ (Response, touched rows)
//!                    │                     │
//!                    ▼                     ▼
//!            in-memory tables      store::state_machine writes them to RocksDB
//! ```
//!
//! `State::apply` does no I/O and reads no clock: every member applies the same committed
//! requests in the same order and reaches the same state. Every operation is idempotent under
//! retry by its own semantics (no client request ids are needed):
//! - allocating a label set that already has an id returns that id;
//! - releasing an absent id, removing an absent node or endpoint, deleting an absent policy
//!   succeed with `existed: false` and change nothing;
//! - applying a policy identical to the stored one returns the stored revision, no bump;
//! - registering a node again keeps its pod CIDR and updates its address and key;
//! - a node's acknowledged revision only moves forward.
//!
//! Requests that fail validation inside `apply` (an exhausted CIDR, an unknown node) are
//! committed as no-ops and answered with [`Response::Rejected`]: nothing is half-applied.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Bits of an identity that hold the cluster-local id (DESIGN §2); the high 8 bits hold the
/// cluster id.
pub const LOCAL_ID_BITS: u32 = 24;
/// The largest cluster-local id.
pub const MAX_LOCAL_ID: u32 = (1 << LOCAL_ID_BITS) - 1;
/// The first cluster-local id handed out by allocation; 0–255 are reserved (DESIGN §2).
pub const FIRST_LOCAL_ID: u32 = 256;
/// At most this many labels in one label set.
pub const MAX_LABELS: usize = 64;
/// At most this many bytes in one label.
pub const MAX_LABEL_LEN: usize = 253;

/// Builds a cluster-scoped identity from a cluster id and a cluster-local id.
pub fn identity_of(cluster_id: u8, local: u32) -> u32 {
    (u32::from(cluster_id) << LOCAL_ID_BITS) | (local & MAX_LOCAL_ID)
}

// === Requests and responses ===

/// A write to the control plane, replicated through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Sets the cluster id and the CIDR pod CIDRs are carved from. Only before any node exists.
    SetClusterConfig(ClusterConfig),
    /// Returns the id of a label set, allocating one if it has none.
    AllocateIdentity {
        /// Normalized (sorted, deduplicated) labels; see [`normalize_labels`].
        labels: Vec<String>,
    },
    /// Returns the node's leased id block, carving one (or, with `replace`, a new one) from the
    /// top of the identity space.
    LeaseIdBlock {
        /// Node name (registered).
        node: String,
        /// Ids in a new block (1 to [`MAX_BLOCK`]).
        count: u32,
        /// Replace the node's block (it used it up) instead of returning it.
        #[serde(default)]
        replace: bool,
    },
    /// Commits a binding a node made from its block: the id becomes the label set's identity,
    /// or, when the set already has one, an alias of it. Answers with the canonical identity.
    BindIdentity {
        /// Node name.
        node: String,
        /// The id the node bound (inside its block).
        id: u32,
        /// Normalized labels.
        labels: Vec<String>,
    },
    /// Releases an identity.
    ReleaseIdentity {
        /// The full identity (cluster bits included).
        id: u32,
    },
    /// Registers or updates a node; allocates its pod CIDR on first registration.
    RegisterNode(NodeRegistration),
    /// Removes a node, frees its pod CIDR and its endpoints.
    RemoveNode {
        /// Node name.
        name: String,
    },
    /// Binds an endpoint IP to an identity on a node.
    UpsertEndpoint(Endpoint),
    /// Removes an endpoint.
    RemoveEndpoint {
        /// Endpoint IP.
        ip: IpAddr,
    },
    /// Stores a policy object (validated before it was proposed).
    ApplyPolicy {
        /// The object's key.
        key: PolicyKey,
        /// The raw object, as the client sent it.
        object: serde_json::Value,
        /// What must hold of the stored object for the write to happen (the Kubernetes API's
        /// create and optimistic-concurrency update); checked here, at apply time, so two
        /// racing writers cannot both pass it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        precondition: Option<PolicyPrecondition>,
    },
    /// Deletes a policy object.
    DeletePolicy {
        /// The object's key.
        key: PolicyKey,
    },
    /// Deletes a namespace the way the Kubernetes API does: its Namespace object (if stored)
    /// and every object stored in it (policies, Pod records), in one entry, so no reader sees
    /// half of it. Only the Kubernetes-compatible API asks for this; a plain `DeletePolicy` of
    /// a Namespace object removes that object alone (the mirror drops a namespace's copy when
    /// its last label goes, and its policies must stay).
    DeleteNamespace {
        /// The namespace.
        name: String,
    },
    /// Renews a node's lease: its last heartbeat becomes the replicated clock.
    Heartbeat {
        /// Node name.
        node: String,
    },
    /// Records the policy revision a node enforces.
    AckRevision {
        /// Node name.
        node: String,
        /// Revision enforced.
        revision: u64,
    },
    /// Several independent requests proposed as one log entry (group commit by the proposer),
    /// applied in order; each gets its own response.
    Batch {
        /// The requests.
        requests: Vec<Request>,
        /// Wall clock of the proposing leader (ms since the epoch); advances the replicated
        /// clock used by identity garbage collection (never moves it backwards).
        #[serde(default)]
        at_ms: u64,
    },
    /// Removes identities no endpoint references and that have been unreferenced for at least
    /// `grace_ms` of the replicated clock; at most `max` of them.
    CollectIdentities {
        /// Grace period in milliseconds.
        grace_ms: u64,
        /// Most identities removed by this request.
        max: u32,
    },
    /// A client write under the id the member that first received it gave it, so that a retry
    /// (after a lost answer, a forward that timed out or a leader change) takes effect once: the
    /// state machine remembers each id's answer ([`State::requests`]) and answers a repeat with
    /// it instead of applying the write again. Without this, a write whose first attempt
    /// committed under a deposed leader would be applied twice, possibly after another client's
    /// write to the same object (v1, v2, v1).
    Once {
        /// The request id (1 to [`MAX_REQUEST_ID_LEN`] bytes), unique per client call.
        id: String,
        /// The write.
        request: Box<Request>,
    },
}

/// Longest request id [`Request::Once`] accepts.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// How long (replicated clock) the answer of a [`Request::Once`] is remembered: far longer than
/// a member retries a call (its request timeout, 3 s by default) or a client fails over.
pub const REQUEST_RETENTION_MS: u64 = 2 * 60 * 1_000;
/// Most remembered answers; the oldest go first beyond it. They are in every snapshot, so the
/// bound also bounds what they add to one (a few MB): at 5,000 writes/s it still covers the last
/// 10 s, several times the retry window.
pub const MAX_REMEMBERED_REQUESTS: usize = 50_000;

/// The answer a [`Request::Once`] got, kept for its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedRequest {
    /// The replicated clock when it was applied (ms since the epoch).
    pub at_ms: u64,
    /// The answer.
    pub response: Response,
}

/// The answer of the state machine to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Blank and membership entries.
    #[default]
    Empty,
    /// The cluster configuration now in force.
    ClusterConfig(ClusterConfig),
    /// An identity and whether this request created it.
    Identity {
        /// The identity.
        identity: Identity,
        /// True when this request allocated it.
        created: bool,
    },
    /// Outcome of a removal: whether the object existed.
    Removed {
        /// True when something was removed.
        existed: bool,
    },
    /// The node as stored.
    Node(NodeRecord),
    /// The endpoint as stored.
    Endpoint(Endpoint),
    /// The policy revision after a policy write.
    Policy {
        /// Revision of the policy set after this request.
        revision: u64,
        /// False when the request changed nothing (identical apply, absent delete).
        changed: bool,
    },
    /// A node's last heartbeat after the request.
    Heartbeat {
        /// Replicated-clock time of the heartbeat (ms since the epoch).
        at_ms: u64,
    },
    /// A node's acknowledged revision after the request.
    Acked {
        /// The node's acknowledged revision.
        revision: u64,
    },
    /// Outcome of [`Request::CollectIdentities`].
    Collected {
        /// Identities removed.
        collected: u32,
        /// Identities still eligible (over `max`).
        remaining: u32,
    },
    /// A node's leased id block.
    IdBlock(IdBlock),
    /// One response per request of a [`Request::Batch`], in order.
    Batch {
        /// The responses.
        responses: Vec<Response>,
    },
    /// A policy write whose [`PolicyPrecondition`] did not hold; nothing changed.
    PolicyPreconditionFailed {
        /// The stored object's revision (`None`: there is none).
        current: Option<u64>,
    },
    /// The request was committed but rejected by the state machine; nothing changed.
    Rejected {
        /// Why, naming the offending field.
        reason: String,
    },
}

/// A policy object's latest change (see [`State::policy_changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// The policy revision of the change: the record's revision, or the one its deletion was
    /// recorded at.
    pub revision: u64,
    /// Its storage key.
    pub key: String,
    /// The record now; `None` when deleted.
    pub record: Option<PolicyRecord>,
}

/// A condition on the stored policy object that a [`Request::ApplyPolicy`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyPrecondition {
    /// No object is stored under the key (a create).
    Absent,
    /// The stored object was last written at this revision (an update of what the writer read).
    Revision(u64),
}

impl PolicyPrecondition {
    /// Whether it holds of `current`, the stored object's revision.
    pub fn holds(self, current: Option<u64>) -> bool {
        match self {
            PolicyPrecondition::Absent => current.is_none(),
            PolicyPrecondition::Revision(r) => current == Some(r),
        }
    }
}

// === Records ===
// The record types are shared with clients (the CLI, the agents): they live in `palisade-api`.
pub use palisade_api::controlplane::{
    Change, ClusterConfig, Endpoint, IdBlock, Identity, NodeRecord, NodeRegistration, PolicyKey,
    PolicyRecord,
};

/// The largest id block a node may lease.
pub const MAX_BLOCK: u32 = 65_536;

/// Scalars of the state machine, stored in one row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Policy revision: bumped by every policy apply or delete that changes something.
    pub revision: u64,
    /// Next cluster-local id to try.
    pub next_local_id: u32,
    /// The replicated clock: the largest proposer timestamp applied (ms since the epoch).
    #[serde(default)]
    pub clock_ms: u64,
    /// Cluster-local ids at and above this are leased in blocks (carved downwards from the top
    /// of the space, while [`Request::AllocateIdentity`] counts upwards); 0 means none yet.
    #[serde(default)]
    pub block_floor: u32,
    /// Change revision: numbers every change of an identity, node, endpoint or policy.
    #[serde(default)]
    pub change_revision: u64,
}

/// Changes kept in memory for watchers; older ones need a full re-list.
pub const CHANGE_FEED_LEN: usize = 100_000;

/// One entry of the in-memory change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FeedEntry {
    revision: u64,
    /// The policy revision once this change was applied.
    policy_revision: u64,
    /// The policy revision before the request that made this change: every policy change after
    /// it is in the feed while this entry is.
    policy_revision_before: u64,
    /// The replicated clock when it was applied (ms since the epoch).
    at_ms: u64,
    table: Table,
    kind: &'static str,
    key: String,
}

// === Tables ===

/// The tables of the state; each is one RocksDB column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// Scalars: cluster config and counters.
    Meta,
    /// id → [`Identity`].
    Identities,
    /// name → [`NodeRecord`].
    Nodes,
    /// ip → [`Endpoint`].
    Endpoints,
    /// `kind/namespace/name` → [`PolicyRecord`].
    Policies,
    /// node → acknowledged revision.
    Acks,
    /// request id → [`RememberedRequest`] (exactly-once writes).
    Requests,
}

impl Table {
    /// All tables.
    pub const ALL: [Table; 7] = [
        Table::Meta,
        Table::Identities,
        Table::Nodes,
        Table::Endpoints,
        Table::Policies,
        Table::Acks,
        Table::Requests,
    ];

    /// Column family name.
    pub fn cf_name(self) -> &'static str {
        match self {
            Table::Meta => "sm_meta_rows",
            Table::Identities => "sm_identities",
            Table::Nodes => "sm_nodes",
            Table::Endpoints => "sm_endpoints",
            Table::Policies => "sm_policies",
            Table::Acks => "sm_acks",
            Table::Requests => "sm_requests",
        }
    }
}

const META_CLUSTER: &str = "cluster";
const META_COUNTERS: &str = "counters";
const META_LEASES: &str = "id_leases";

/// A row touched by `apply`, to be persisted from the state.
pub type RowKey = (Table, String);

/// Error restoring state from stored rows or a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A stored row did not decode.
    #[error("row `{key}` of table `{table}` does not decode")]
    Decode {
        /// Table name.
        table: &'static str,
        /// Row key.
        key: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Cluster settings.
    pub cluster: ClusterConfig,
    /// Counters.
    pub counters: Counters,
    /// id → identity.
    pub identities: BTreeMap<u32, Identity>,
    /// name → node.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// ip → endpoint.
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
    /// `kind/namespace/name` → policy.
    pub policies: BTreeMap<String, PolicyRecord>,
    /// node → acknowledged revision.
    pub acks: BTreeMap<String, u64>,
    /// node → its leased id block.
    #[serde(default)]
    pub leases: BTreeMap<String, IdBlock>,
    /// request id → the answer it got (see [`Request::Once`]); bounded by
    /// [`REQUEST_RETENTION_MS`] and [`MAX_REMEMBERED_REQUESTS`]. Replicated and in snapshots,
    /// so a retry reaching a new leader or a restarted member still finds it.
    #[serde(default)]
    pub requests: BTreeMap<String, RememberedRequest>,
    /// Derived index: (applied at, id) of [`State::requests`], oldest first. Rebuilt on load.
    #[serde(skip)]
    requests_by_age: std::collections::BTreeSet<(u64, String)>,
    /// Derived index: label-set key → id. Rebuilt on load, not stored.
    #[serde(skip)]
    by_labels: BTreeMap<String, u32>,
    /// Derived index: id → number of endpoints using it. Rebuilt on load, not stored.
    #[serde(skip)]
    refs: BTreeMap<u32, u32>,
    /// Derived index: canonical id → the ids that are aliases of it (`alias_of`), so removing a
    /// canonical id finds its heir without scanning every identity (a bulk GC removes tens of
    /// thousands per entry). Rebuilt on load, not stored.
    #[serde(skip)]
    aliases: BTreeMap<u32, std::collections::BTreeSet<u32>>,
    /// Recent changes for watchers, in memory only: it starts empty after a restart or a
    /// snapshot install, and watchers from before then re-list.
    #[serde(skip)]
    feed: std::collections::VecDeque<FeedEntry>,
}

/// Normalizes a label set: sorted, deduplicated, each label validated. Errors name the index of
/// the offending label.
pub fn normalize_labels(labels: &[String]) -> Result<Vec<String>, String> {
    if labels.is_empty() {
        return Err("`labels`: must not be empty".to_owned());
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("`labels`: more than {MAX_LABELS} labels"));
    }
    for (i, l) in labels.iter().enumerate() {
        if l.is_empty() || l.len() > MAX_LABEL_LEN {
            return Err(format!("`labels[{i}]`: must be 1 to {MAX_LABEL_LEN} bytes"));
        }
        if l.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "`labels[{i}]`: must not contain whitespace or control characters"
            ));
        }
    }
    let mut v = labels.to_vec();
    v.sort();
    v.dedup();
    Ok(v)
}

fn label_key(labels: &[String]) -> String {
    labels.join("\n")
}

// === impl State ===

impl State {
    /// A fresh state.
    pub fn new() -> Self {
        State {
            counters: Counters {
                revision: 0,
                next_local_id: FIRST_LOCAL_ID,
                clock_ms: 0,
                change_revision: 0,
                block_floor: 0,
            },
            ..State::default()
        }
    }

    /// Rebuilds derived indexes after loading or deserializing.
    pub fn reindex(&mut self) {
        // Aliases never shadow the canonical id of their label set.
        self.by_labels = self
            .identities
            .values()
            .filter(|i| i.alias_of.is_none())
            .map(|i| (label_key(&i.labels), i.id))
            .collect();
        self.aliases.clear();
        for i in self.identities.values() {
            if let Some(c) = i.alias_of {
                self.aliases.entry(c).or_default().insert(i.id);
            }
        }
        self.refs.clear();
        for e in self.endpoints.values() {
            *self.refs.entry(e.identity).or_insert(0) += 1;
        }
        if self.counters.next_local_id < FIRST_LOCAL_ID {
            self.counters.next_local_id = FIRST_LOCAL_ID;
        }
        self.requests_by_age = self
            .requests
            .iter()
            .map(|(id, r)| (r.at_ms, id.clone()))
            .collect();
    }

    /// Looks up the id of a normalized label set.
    pub fn identity_by_labels(&self, labels: &[String]) -> Option<u32> {
        self.by_labels.get(&label_key(labels)).copied()
    }

    /// Applies one committed request. Pure: the same request on the same state gives the same
    /// result everywhere. Returns the response and the rows it touched.
    pub fn apply(&mut self, req: &Request) -> (Response, Vec<RowKey>) {
        let mut touched = Vec::new();
        let before = self.counters.revision;
        let resp = self.apply_into(req, &mut touched);
        touched.sort();
        touched.dedup();
        self.record_changes(&touched, before);
        (resp, touched)
    }

    /// Remembers the answer of request `id` and forgets those past their retention (or beyond
    /// the bound, oldest first). Deterministic: every member holds the same set.
    fn remember(&mut self, id: &str, resp: &Response, touched: &mut Vec<RowKey>) {
        let at_ms = self.counters.clock_ms;
        self.requests.insert(
            id.to_owned(),
            RememberedRequest {
                at_ms,
                response: resp.clone(),
            },
        );
        self.requests_by_age.insert((at_ms, id.to_owned()));
        touched.push((Table::Requests, id.to_owned()));
        while let Some((oldest_at, oldest)) = self.requests_by_age.first().cloned() {
            let expired = oldest_at.saturating_add(REQUEST_RETENTION_MS) < at_ms;
            if !expired && self.requests.len() <= MAX_REMEMBERED_REQUESTS {
                break;
            }
            self.requests_by_age.pop_first();
            self.requests.remove(&oldest);
            touched.push((Table::Requests, oldest));
        }
    }

    /// Numbers every changed object row with the next change revision and keeps it in the
    /// in-memory change feed (bounded to [`CHANGE_FEED_LEN`]).
    fn record_changes(&mut self, touched: &[RowKey], policy_revision_before: u64) {
        for (table, key) in touched {
            let kind = match table {
                Table::Identities => "identity",
                Table::Nodes => "node",
                Table::Endpoints => "endpoint",
                Table::Policies => "policy",
                Table::Meta | Table::Acks | Table::Requests => continue,
            };
            self.counters.change_revision += 1;
            self.feed.push_back(FeedEntry {
                revision: self.counters.change_revision,
                policy_revision: self.counters.revision,
                policy_revision_before,
                at_ms: self.counters.clock_ms,
                table: *table,
                kind,
                key: key.clone(),
            });
            if self.feed.len() > CHANGE_FEED_LEN {
                self.feed.pop_front();
            }
        }
    }

    /// Changes after `revision`, oldest first, at most `limit`, each with the object's current
    /// value (level-triggered: it may already reflect a later change; `None` once deleted).
    /// `None` when the feed no longer holds every change after `revision` (the caller must list
    /// everything again).
    pub fn changes_since(&self, revision: u64, limit: usize) -> Option<Vec<Change>> {
        let oldest_kept = self
            .feed
            .front()
            .map_or(self.counters.change_revision + 1, |c| c.revision);
        if revision + 1 < oldest_kept && revision < self.counters.change_revision {
            return None;
        }
        Some(
            self.feed
                .iter()
                .filter(|c| c.revision > revision)
                .take(limit)
                .map(|c| Change {
                    revision: c.revision,
                    policy_revision: c.policy_revision,
                    at_ms: c.at_ms,
                    kind: c.kind.to_owned(),
                    key: c.key.clone(),
                    value: self
                        .row(c.table, &c.key)
                        .and_then(|v| serde_json::from_slice(&v).ok()),
                })
                .collect(),
        )
    }

    /// The policy objects changed after policy revision `revision`, for the Kubernetes API's
    /// watch (whose resource versions are policy revisions): each changed key once, oldest change
    /// first, with its stored record (`None` once deleted) and the policy revision of its last
    /// change. `None` when the feed no longer holds every policy change after `revision`.
    pub fn policy_changes_since(&self, revision: u64) -> Option<Vec<PolicyChange>> {
        if revision >= self.counters.revision {
            return Some(Vec::new());
        }
        match self.feed.front() {
            Some(front) if revision >= front.policy_revision_before => {}
            _ => return None,
        }
        let mut last: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
        for (i, c) in self.feed.iter().enumerate() {
            if c.table == Table::Policies && c.policy_revision > revision {
                last.insert(c.key.as_str(), (i, c.policy_revision));
            }
        }
        let mut out: Vec<(usize, PolicyChange)> = last
            .into_iter()
            .map(|(key, (i, policy_revision))| {
                let record = self.policies.get(key).cloned();
                let change = PolicyChange {
                    revision: record.as_ref().map_or(policy_revision, |r| r.revision),
                    key: key.to_owned(),
                    record,
                };
                (i, change)
            })
            .collect();
        out.sort_by_key(|(i, _)| *i);
        Some(out.into_iter().map(|(_, c)| c).collect())
    }

    fn apply_into(&mut self, req: &Request, touched: &mut Vec<RowKey>) -> Response {
        match req {
            Request::Batch { requests, at_ms } => {
                if *at_ms > self.counters.clock_ms {
                    self.counters.clock_ms = *at_ms;
                    touched.push((Table::Meta, META_COUNTERS.to_owned()));
                }
                Response::Batch {
                    responses: requests
                        .iter()
                        .map(|r| self.apply_into(r, touched))
                        .collect(),
                }
            }
            Request::Once { id, request } => {
                if let Some(first) = self.requests.get(id) {
                    return first.response.clone();
                }
                if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
                    return Response::Rejected {
                        reason: format!("`id`: a request id is 1 to {MAX_REQUEST_ID_LEN} bytes"),
                    };
                }
                let resp = self.apply_into(request, touched);
                self.remember(id, &resp, touched);
                resp
            }
            Request::CollectIdentities { grace_ms, max } => self.collect(*grace_ms, *max, touched),
            Request::SetClusterConfig(cfg) => self.set_cluster(cfg, touched),
            Request::AllocateIdentity { labels } => self.allocate(labels, touched),
            Request::ReleaseIdentity { id } if self.refs.get(id).is_some_and(|n| *n > 0) => {
                Response::Rejected {
                    reason: format!(
                        "`id`: identity {id} is used by {} endpoint(s)",
                        self.refs.get(id).copied().unwrap_or(0)
                    ),
                }
            }
            Request::ReleaseIdentity { id } => {
                let existed = self.forget_identity(*id, touched);
                Response::Removed { existed }
            }
            Request::LeaseIdBlock {
                node,
                count,
                replace,
            } => self.lease_block(node, *count, *replace, touched),
            Request::BindIdentity { node, id, labels } => self.bind(node, *id, labels, touched),
            Request::RegisterNode(reg) => self.register_node(reg, touched),
            Request::RemoveNode { name } => {
                let existed = self.nodes.remove(name).is_some();
                touched.push((Table::Nodes, name.clone()));
                let gone: Vec<IpAddr> = self
                    .endpoints
                    .values()
                    .filter(|e| &e.node == name)
                    .map(|e| e.ip)
                    .collect();
                for ip in gone {
                    if let Some(e) = self.endpoints.remove(&ip) {
                        self.unref(e.identity, touched);
                    }
                    touched.push((Table::Endpoints, ip.to_string()));
                }
                if self.acks.remove(name).is_some() {
                    touched.push((Table::Acks, name.clone()));
                }
                // Its block's unbound ids are simply never used (16M ids; blocks are small).
                if self.leases.remove(name).is_some() {
                    touched.push((Table::Meta, META_LEASES.to_owned()));
                }
                Response::Removed { existed }
            }
            Request::UpsertEndpoint(ep) => {
                if !self.nodes.contains_key(&ep.node) {
                    Response::Rejected {
                        reason: format!("`node`: node `{}` is not registered", ep.node),
                    }
                } else if !self.identities.contains_key(&ep.identity) && ep.identity >= 256 {
                    Response::Rejected {
                        reason: format!("`identity`: identity {} is not allocated", ep.identity),
                    }
                } else {
                    if let Some(old) = self.endpoints.insert(ep.ip, ep.clone()) {
                        self.unref(old.identity, touched);
                    }
                    self.add_ref(ep.identity, touched);
                    touched.push((Table::Endpoints, ep.ip.to_string()));
                    Response::Endpoint(ep.clone())
                }
            }
            Request::RemoveEndpoint { ip } => {
                let old = self.endpoints.remove(ip);
                let existed = old.is_some();
                if let Some(e) = old {
                    self.unref(e.identity, touched);
                }
                touched.push((Table::Endpoints, ip.to_string()));
                Response::Removed { existed }
            }
            Request::ApplyPolicy {
                key,
                object,
                precondition,
            } => {
                let skey = key.storage_key();
                let stored = self.policies.get(&skey);
                let current = stored.map(|p| p.revision);
                if let Some(pre) = precondition
                    && !pre.holds(current)
                {
                    return Response::PolicyPreconditionFailed { current };
                }
                // Kept across updates: the Kubernetes API tells created from modified by it.
                let created_revision = stored.map(|p| p.created_revision);
                match stored {
                    Some(p) if &p.object == object => Response::Policy {
                        revision: self.counters.revision,
                        changed: false,
                    },
                    _ => {
                        self.counters.revision += 1;
                        let revision = self.counters.revision;
                        self.policies.insert(
                            skey.clone(),
                            PolicyRecord {
                                key: key.clone(),
                                object: object.clone(),
                                revision,
                                created_revision: created_revision.unwrap_or(revision),
                            },
                        );
                        touched.push((Table::Policies, skey));
                        touched.push((Table::Meta, META_COUNTERS.to_owned()));
                        Response::Policy {
                            revision,
                            changed: true,
                        }
                    }
                }
            }
            Request::DeletePolicy { key } => {
                let skey = key.storage_key();
                if self.policies.remove(&skey).is_some() {
                    self.counters.revision += 1;
                    touched.push((Table::Policies, skey));
                    touched.push((Table::Meta, META_COUNTERS.to_owned()));
                    Response::Policy {
                        revision: self.counters.revision,
                        changed: true,
                    }
                } else {
                    Response::Policy {
                        revision: self.counters.revision,
                        changed: false,
                    }
                }
            }
            Request::DeleteNamespace { name } => {
                let doomed: Vec<String> = self
                    .policies
                    .iter()
                    .filter(|(_, r)| {
                        (r.key.kind == palisade_policy::namespace::KIND && &r.key.name == name)
                            || (r.key.kind != palisade_policy::namespace::KIND
                                && &r.key.namespace == name)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let changed = !doomed.is_empty();
                if changed {
                    self.counters.revision += 1;
                    for k in doomed {
                        self.policies.remove(&k);
                        touched.push((Table::Policies, k));
                    }
                    touched.push((Table::Meta, META_COUNTERS.to_owned()));
                }
                Response::Policy {
                    revision: self.counters.revision,
                    changed,
                }
            }
            Request::Heartbeat { node } => {
                let clock = self.counters.clock_ms;
                match self.nodes.get_mut(node) {
                    None => Response::Rejected {
                        reason: format!("`node`: node `{node}` is not registered"),
                    },
                    Some(n) => {
                        if clock > n.last_heartbeat_ms {
                            n.last_heartbeat_ms = clock;
                            touched.push((Table::Nodes, node.clone()));
                        }
                        Response::Heartbeat {
                            at_ms: n.last_heartbeat_ms,
                        }
                    }
                }
            }
            Request::AckRevision { node, revision } => {
                if !self.nodes.contains_key(node) {
                    Response::Rejected {
                        reason: format!("`node`: node `{node}` is not registered"),
                    }
                } else {
                    let slot = self.acks.entry(node.clone()).or_insert(0);
                    if *revision > *slot {
                        *slot = *revision;
                        touched.push((Table::Acks, node.clone()));
                    }
                    Response::Acked { revision: *slot }
                }
            }
        }
    }

    fn set_cluster(&mut self, cfg: &ClusterConfig, touched: &mut Vec<RowKey>) -> Response {
        if &self.cluster == cfg {
            return Response::ClusterConfig(cfg.clone());
        }
        if !self.nodes.is_empty() || !self.identities.is_empty() {
            return Response::Rejected {
                reason:
                    "`cluster`: cannot change the cluster config once nodes or identities exist"
                        .to_owned(),
            };
        }
        if cfg.node_prefix_len < cfg.cluster_cidr.prefix_len() || cfg.node_prefix_len > 30 {
            return Response::Rejected {
                reason: "`node_prefix_len`: must be between the cluster CIDR's prefix and 30"
                    .to_owned(),
            };
        }
        self.cluster = cfg.clone();
        touched.push((Table::Meta, META_CLUSTER.to_owned()));
        Response::ClusterConfig(cfg.clone())
    }

    fn allocate(&mut self, labels: &[String], touched: &mut Vec<RowKey>) -> Response {
        let labels = match normalize_labels(labels) {
            Ok(l) => l,
            Err(reason) => return Response::Rejected { reason },
        };
        let key = label_key(&labels);
        if let Some(id) = self.by_labels.get(&key) {
            let identity = self.identities.get(id).cloned().unwrap_or(Identity {
                id: *id,
                labels,
                unreferenced_since_ms: None,
                alias_of: None,
            });
            return Response::Identity {
                identity,
                created: false,
            };
        }
        // Ids from the lowest leased block up belong to nodes' blocks.
        let max = match self.counters.block_floor {
            0 => MAX_LOCAL_ID,
            f => f - 1,
        };
        let span = max.saturating_sub(FIRST_LOCAL_ID) + 1;
        let mut local = self.counters.next_local_id.clamp(FIRST_LOCAL_ID, max);
        let cluster_id = self.cluster.cluster_id;
        for _ in 0..span {
            let id = identity_of(cluster_id, local);
            let next = if local == max {
                FIRST_LOCAL_ID
            } else {
                local + 1
            };
            if let std::collections::btree_map::Entry::Vacant(slot) = self.identities.entry(id) {
                let identity = Identity {
                    id,
                    labels,
                    unreferenced_since_ms: Some(self.counters.clock_ms),
                    alias_of: None,
                };
                slot.insert(identity.clone());
                self.by_labels.insert(key, id);
                self.counters.next_local_id = next;
                touched.push((Table::Identities, id.to_string()));
                touched.push((Table::Meta, META_COUNTERS.to_owned()));
                return Response::Identity {
                    identity,
                    created: true,
                };
            }
            local = next;
        }
        Response::Rejected {
            reason: "`labels`: the cluster's identity space is exhausted".to_owned(),
        }
    }

    fn add_ref(&mut self, id: u32, touched: &mut Vec<RowKey>) {
        let n = self.refs.entry(id).or_insert(0);
        *n += 1;
        if *n == 1
            && let Some(i) = self.identities.get_mut(&id)
        {
            i.unreferenced_since_ms = None;
            touched.push((Table::Identities, id.to_string()));
        }
    }

    /// Removes an identity. A canonical id with aliases hands its label set to the lowest alias,
    /// which stops being one. Returns whether it existed.
    fn forget_identity(&mut self, id: u32, touched: &mut Vec<RowKey>) -> bool {
        let Some(gone) = self.identities.remove(&id) else {
            return false;
        };
        touched.push((Table::Identities, id.to_string()));
        if let Some(c) = gone.alias_of
            && let Some(set) = self.aliases.get_mut(&c)
        {
            set.remove(&id);
            if set.is_empty() {
                self.aliases.remove(&c);
            }
        }
        let key = label_key(&gone.labels);
        if self.by_labels.get(&key) == Some(&id) {
            self.by_labels.remove(&key);
            let mut heirs = self.aliases.remove(&id).unwrap_or_default();
            if let Some(heir) = heirs.pop_first() {
                self.by_labels.insert(key, heir);
                for alias in std::iter::once(heir).chain(heirs.iter().copied()) {
                    if let Some(i) = self.identities.get_mut(&alias) {
                        i.alias_of = (alias != heir).then_some(heir);
                        touched.push((Table::Identities, alias.to_string()));
                    }
                }
                if !heirs.is_empty() {
                    self.aliases.insert(heir, heirs);
                }
            }
        }
        true
    }

    fn lease_block(
        &mut self,
        node: &str,
        count: u32,
        replace: bool,
        touched: &mut Vec<RowKey>,
    ) -> Response {
        if !self.nodes.contains_key(node) {
            return Response::Rejected {
                reason: format!("`node`: node `{node}` is not registered"),
            };
        }
        if let (Some(b), false) = (self.leases.get(node), replace) {
            return Response::IdBlock(*b);
        }
        if count == 0 || count > MAX_BLOCK {
            return Response::Rejected {
                reason: format!("`count`: must be 1 to {MAX_BLOCK}"),
            };
        }
        let top = match self.counters.block_floor {
            0 => MAX_LOCAL_ID + 1,
            f => f,
        };
        // Blocks grow down from the top, allocation up from the bottom; they must not meet.
        let Some(first) = top
            .checked_sub(count)
            .filter(|f| *f > self.counters.next_local_id.max(FIRST_LOCAL_ID))
        else {
            return Response::Rejected {
                reason: "`count`: the cluster's identity space has no room for another block"
                    .to_owned(),
            };
        };
        let block = IdBlock {
            first: identity_of(self.cluster.cluster_id, first),
            count,
        };
        self.counters.block_floor = first;
        self.leases.insert(node.to_owned(), block);
        touched.push((Table::Meta, META_COUNTERS.to_owned()));
        touched.push((Table::Meta, META_LEASES.to_owned()));
        Response::IdBlock(block)
    }

    fn bind(
        &mut self,
        node: &str,
        id: u32,
        labels: &[String],
        touched: &mut Vec<RowKey>,
    ) -> Response {
        let labels = match normalize_labels(labels) {
            Ok(l) => l,
            Err(reason) => return Response::Rejected { reason },
        };
        if let Some(existing) = self.identities.get(&id) {
            if existing.labels != labels {
                return Response::Rejected {
                    reason: format!("`id`: identity {id} is bound to other labels"),
                };
            }
            // A retry: answer with the canonical identity of the set.
            let canonical = existing.alias_of.unwrap_or(id);
            let identity = self
                .identities
                .get(&canonical)
                .cloned()
                .unwrap_or_else(|| existing.clone());
            return Response::Identity {
                identity,
                created: false,
            };
        }
        if !self.leases.get(node).is_some_and(|b| b.contains(id)) {
            return Response::Rejected {
                reason: format!("`id`: {id} is not inside node `{node}`'s leased id block"),
            };
        }
        let key = label_key(&labels);
        let canonical = self.by_labels.get(&key).copied();
        let record = Identity {
            id,
            labels,
            unreferenced_since_ms: Some(self.counters.clock_ms),
            alias_of: canonical,
        };
        self.identities.insert(id, record.clone());
        touched.push((Table::Identities, id.to_string()));
        if let Some(c) = canonical {
            self.aliases.entry(c).or_default().insert(id);
        }
        match canonical {
            Some(c) => Response::Identity {
                identity: self.identities.get(&c).cloned().unwrap_or(record),
                created: false,
            },
            None => {
                self.by_labels.insert(key, id);
                Response::Identity {
                    identity: record,
                    created: true,
                }
            }
        }
    }

    fn unref(&mut self, id: u32, touched: &mut Vec<RowKey>) {
        let Some(n) = self.refs.get_mut(&id) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.refs.remove(&id);
            if let Some(i) = self.identities.get_mut(&id) {
                i.unreferenced_since_ms = Some(self.counters.clock_ms);
                touched.push((Table::Identities, id.to_string()));
            }
        }
    }

    fn collect(&mut self, grace_ms: u64, max: u32, touched: &mut Vec<RowKey>) -> Response {
        let clock = self.counters.clock_ms;
        let eligible: Vec<u32> = self
            .identities
            .values()
            .filter(|i| {
                !self.refs.contains_key(&i.id)
                    && i.unreferenced_since_ms
                        .is_some_and(|s| s.saturating_add(grace_ms) <= clock)
            })
            .map(|i| i.id)
            .collect();
        let take = eligible.len().min(max as usize);
        for id in &eligible[..take] {
            self.forget_identity(*id, touched);
        }
        Response::Collected {
            collected: u32::try_from(take).unwrap_or(u32::MAX),
            remaining: u32::try_from(eligible.len() - take).unwrap_or(u32::MAX),
        }
    }

    fn register_node(&mut self, reg: &NodeRegistration, touched: &mut Vec<RowKey>) -> Response {
        if let Some(existing) = self.nodes.get(&reg.name) {
            if reg.wireguard_epoch < existing.wireguard_epoch {
                return Response::Rejected {
                    reason: format!(
                        "`wireguard_epoch`: {} is older than the stored epoch {}",
                        reg.wireguard_epoch, existing.wireguard_epoch
                    ),
                };
            }
            let rec = NodeRecord {
                name: reg.name.clone(),
                address: reg.address,
                pod_cidr: existing.pod_cidr,
                wireguard_public_key: reg.wireguard_public_key.clone(),
                wireguard_epoch: reg.wireguard_epoch,
                last_heartbeat_ms: self.counters.clock_ms.max(existing.last_heartbeat_ms),
            };
            if &rec != existing {
                self.nodes.insert(reg.name.clone(), rec.clone());
                touched.push((Table::Nodes, reg.name.clone()));
            }
            return Response::Node(rec);
        }
        let Ok(subnets) = self
            .cluster
            .cluster_cidr
            .subnets(self.cluster.node_prefix_len)
        else {
            return Response::Rejected {
                reason: "`cluster`: invalid node prefix length".to_owned(),
            };
        };
        let used: std::collections::BTreeSet<Ipv4Net> =
            self.nodes.values().map(|n| n.pod_cidr).collect();
        // A node may ask for a particular pod CIDR (an operator's or a lab's addressing plan):
        // granted when it is one of the cluster CIDR's node-sized subnets and free.
        if let Some(want) = reg.pod_cidr {
            if !subnets.clone().any(|s| s == want) {
                return Response::Rejected {
                    reason: format!(
                        "`pod_cidr`: {want} is not a /{} inside the cluster CIDR {}",
                        self.cluster.node_prefix_len, self.cluster.cluster_cidr
                    ),
                };
            }
            if used.contains(&want) {
                return Response::Rejected {
                    reason: format!("`pod_cidr`: {want} is already allocated to another node"),
                };
            }
        }
        let Some(pod_cidr) = reg
            .pod_cidr
            .or_else(|| subnets.into_iter().find(|s| !used.contains(s)))
        else {
            return Response::Rejected {
                reason: format!(
                    "`pod_cidr`: cluster CIDR {} has no free /{}",
                    self.cluster.cluster_cidr, self.cluster.node_prefix_len
                ),
            };
        };
        let rec = NodeRecord {
            name: reg.name.clone(),
            address: reg.address,
            pod_cidr,
            wireguard_public_key: reg.wireguard_public_key.clone(),
            wireguard_epoch: reg.wireguard_epoch,
            last_heartbeat_ms: self.counters.clock_ms,
        };
        self.nodes.insert(reg.name.clone(), rec.clone());
        touched.push((Table::Nodes, reg.name.clone()));
        Response::Node(rec)
    }

    // --- rows ---

    /// The current encoded value of a row, `None` when it is absent.
    pub fn row(&self, table: Table, key: &str) -> Option<Vec<u8>> {
        fn enc<T: Serialize>(v: &T) -> Vec<u8> {
            // These plain records (string keys, no floats) always serialize.
            serde_json::to_vec(v).unwrap_or_default()
        }
        match table {
            Table::Meta => match key {
                META_CLUSTER => Some(enc(&self.cluster)),
                META_COUNTERS => Some(enc(&self.counters)),
                META_LEASES => Some(enc(&self.leases)),
                _ => None,
            },
            Table::Identities => key
                .parse::<u32>()
                .ok()
                .and_then(|id| self.identities.get(&id))
                .map(enc),
            Table::Nodes => self.nodes.get(key).map(enc),
            Table::Endpoints => key
                .parse::<IpAddr>()
                .ok()
                .and_then(|ip| self.endpoints.get(&ip))
                .map(enc),
            Table::Policies => self.policies.get(key).map(enc),
            Table::Acks => self.acks.get(key).map(enc),
            Table::Requests => self.requests.get(key).map(enc),
        }
    }

    /// Every row of the state, for a full rewrite after installing a snapshot.
    pub fn all_rows(&self) -> Vec<(Table, String, Vec<u8>)> {
        let mut keys: Vec<RowKey> = vec![
            (Table::Meta, META_CLUSTER.to_owned()),
            (Table::Meta, META_COUNTERS.to_owned()),
            (Table::Meta, META_LEASES.to_owned()),
        ];
        keys.extend(
            self.identities
                .keys()
                .map(|k| (Table::Identities, k.to_string())),
        );
        keys.extend(self.nodes.keys().map(|k| (Table::Nodes, k.clone())));
        keys.extend(
            self.endpoints
                .keys()
                .map(|k| (Table::Endpoints, k.to_string())),
        );
        keys.extend(self.policies.keys().map(|k| (Table::Policies, k.clone())));
        keys.extend(self.acks.keys().map(|k| (Table::Acks, k.clone())));
        keys.extend(self.requests.keys().map(|k| (Table::Requests, k.clone())));
        keys.into_iter()
            .filter_map(|(t, k)| self.row(t, &k).map(|v| (t, k, v)))
            .collect()
    }

    /// Loads one stored row into the state; call [`State::reindex`] after the last.
    pub fn load_row(&mut self, table: Table, key: &str, value: &[u8]) -> Result<(), StateError> {
        let err = |source| StateError::Decode {
            table: table.cf_name(),
            key: key.to_owned(),
            source,
        };
        match table {
            Table::Meta => match key {
                META_CLUSTER => self.cluster = serde_json::from_slice(value).map_err(err)?,
                META_COUNTERS => self.counters = serde_json::from_slice(value).map_err(err)?,
                META_LEASES => self.leases = serde_json::from_slice(value).map_err(err)?,
                _ => {}
            },
            Table::Identities => {
                let v: Identity = serde_json::from_slice(value).map_err(err)?;
                self.identities.insert(v.id, v);
            }
            Table::Nodes => {
                let v: NodeRecord = serde_json::from_slice(value).map_err(err)?;
                self.nodes.insert(v.name.clone(), v);
            }
            Table::Endpoints => {
                let v: Endpoint = serde_json::from_slice(value).map_err(err)?;
                self.endpoints.insert(v.ip, v);
            }
            Table::Policies => {
                let v: PolicyRecord = serde_json::from_slice(value).map_err(err)?;
                self.policies.insert(key.to_owned(), v);
            }
            Table::Acks => {
                let v: u64 = serde_json::from_slice(value).map_err(err)?;
                self.acks.insert(key.to_owned(), v);
            }
            Table::Requests => {
                let v: RememberedRequest = serde_json::from_slice(value).map_err(err)?;
                self.requests.insert(key.to_owned(), v);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(s: &mut State, labels: &[&str]) -> Response {
        s.apply(&Request::AllocateIdentity {
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        })
        .0
    }

    #[test]
    fn same_labels_same_id_and_ids_start_at_256() {
        let mut s = State::new();
        let a = alloc(
            &mut s,
            &["k8s:app=api", "k8s:io.kubernetes.pod.namespace=default"],
        );
        let b = alloc(
            &mut s,
            &["k8s:io.kubernetes.pod.namespace=default", "k8s:app=api"],
        );
        let (
            Response::Identity {
                identity: ia,
                created: true,
            },
            Response::Identity {
                identity: ib,
                created: false,
            },
        ) = (a, b)
        else {
            panic!("unexpected responses");
        };
        assert_eq!(ia.id, 256);
        assert_eq!(ia, ib);
        let Response::Identity { identity: ic, .. } = alloc(&mut s, &["k8s:app=db"]) else {
            panic!("unexpected response");
        };
        assert_eq!(ic.id, 257);
    }

    #[test]
    fn cluster_bits_and_release() {
        let mut s = State::new();
        let cfg = ClusterConfig {
            cluster_id: 3,
            ..ClusterConfig::default()
        };
        assert!(matches!(
            s.apply(&Request::SetClusterConfig(cfg)).0,
            Response::ClusterConfig(_)
        ));
        let Response::Identity { identity, .. } = alloc(&mut s, &["a=b"]) else {
            panic!("unexpected response");
        };
        assert_eq!(identity.id, (3 << 24) | 256);
        let r = s.apply(&Request::ReleaseIdentity { id: identity.id }).0;
        assert_eq!(r, Response::Removed { existed: true });
        let r = s.apply(&Request::ReleaseIdentity { id: identity.id }).0;
        assert_eq!(r, Response::Removed { existed: false });
        assert_eq!(s.identity_by_labels(&["a=b".to_owned()]), None);
    }

    #[test]
    fn bad_labels_are_rejected_naming_the_field() {
        let mut s = State::new();
        let Response::Rejected { reason } = alloc(&mut s, &["ok", "bad label"]) else {
            panic!("expected rejection");
        };
        assert!(reason.contains("labels[1]"), "{reason}");
        assert!(matches!(alloc(&mut s, &[]), Response::Rejected { .. }));
    }

    #[test]
    fn policy_preconditions_and_the_policy_feed() {
        let mut s = State::new();
        let key = |name: &str| PolicyKey {
            kind: "CiliumNetworkPolicy".into(),
            namespace: "default".into(),
            name: name.into(),
        };
        let apply = |name: &str, v: u64, pre: Option<PolicyPrecondition>| Request::ApplyPolicy {
            key: key(name),
            object: serde_json::json!({"v": v}),
            precondition: pre,
        };
        let created = Response::Policy {
            revision: 1,
            changed: true,
        };
        assert_eq!(
            s.apply(&apply("a", 1, Some(PolicyPrecondition::Absent))).0,
            created
        );
        assert_eq!(
            s.apply(&apply("a", 2, Some(PolicyPrecondition::Absent))).0,
            Response::PolicyPreconditionFailed { current: Some(1) }
        );
        assert_eq!(
            s.apply(&apply("a", 2, Some(PolicyPrecondition::Revision(7))))
                .0,
            Response::PolicyPreconditionFailed { current: Some(1) }
        );
        assert_eq!(
            s.apply(&apply("a", 2, Some(PolicyPrecondition::Revision(1))))
                .0,
            Response::Policy {
                revision: 2,
                changed: true
            }
        );
        s.apply(&apply("b", 1, None));
        s.apply(&Request::DeletePolicy { key: key("b") });
        let rec = s.policies.get("CiliumNetworkPolicy/default/a").cloned();
        assert_eq!(
            rec.as_ref().map(|r| (r.created_revision, r.revision)),
            Some((1, 2))
        );
        // Every key once, at its last change: `a` modified at 2, `b` deleted at 4.
        let feed = s.policy_changes_since(0).unwrap_or_default();
        let seen: Vec<(String, u64, bool)> = feed
            .iter()
            .map(|c| (c.key.clone(), c.revision, c.record.is_some()))
            .collect();
        assert_eq!(
            seen,
            [
                ("CiliumNetworkPolicy/default/a".to_owned(), 2, true),
                ("CiliumNetworkPolicy/default/b".to_owned(), 4, false)
            ]
        );
        assert_eq!(s.policy_changes_since(2).map(|c| c.len()), Some(1));
        assert_eq!(s.policy_changes_since(4).map(|c| c.len()), Some(0));
        // A state without the feed (as after a restart) cannot serve an old revision.
        let mut t = State::new();
        t.counters.revision = 4;
        assert_eq!(t.policy_changes_since(1), None);
        assert_eq!(t.policy_changes_since(4), Some(Vec::new()));
    }

    #[test]
    fn deleting_a_namespace_takes_what_it_holds_in_one_revision() {
        let mut s = State::new();
        let put = |s: &mut State, kind: &str, ns: &str, name: &str| {
            s.apply(&Request::ApplyPolicy {
                key: PolicyKey {
                    kind: kind.into(),
                    namespace: ns.into(),
                    name: name.into(),
                },
                object: serde_json::json!({"name": name}),
                precondition: None,
            })
        };
        put(&mut s, "Namespace", "-", "shop");
        put(&mut s, "NetworkPolicy", "shop", "deny");
        put(&mut s, "Pod", "shop", "web");
        put(&mut s, "NetworkPolicy", "other", "keep");
        put(&mut s, "CiliumClusterwideNetworkPolicy", "-", "shop");
        let before = s.counters.revision;
        let r = s.apply(&Request::DeleteNamespace {
            name: "shop".into(),
        });
        assert_eq!(
            r.0,
            Response::Policy {
                revision: before + 1,
                changed: true
            }
        );
        let left: Vec<&String> = s.policies.keys().collect();
        assert_eq!(
            left,
            [
                "CiliumClusterwideNetworkPolicy/-/shop",
                "NetworkPolicy/other/keep"
            ],
            "the namespace, its policy and its pod went; other namespaces and cluster-wide objects stay"
        );
        // Nothing left to delete: no revision, not changed.
        let r = s.apply(&Request::DeleteNamespace {
            name: "shop".into(),
        });
        assert_eq!(
            r.0,
            Response::Policy {
                revision: before + 1,
                changed: false
            }
        );
    }

    #[test]
    fn policy_revision_bumps_only_on_change() {
        let mut s = State::new();
        let key = PolicyKey {
            kind: "CiliumNetworkPolicy".into(),
            namespace: "default".into(),
            name: "p".into(),
        };
        let obj = serde_json::json!({"kind": "CiliumNetworkPolicy"});
        let apply = Request::ApplyPolicy {
            key: key.clone(),
            object: obj,
            precondition: None,
        };
        assert_eq!(
            s.apply(&apply).0,
            Response::Policy {
                revision: 1,
                changed: true
            }
        );
        assert_eq!(
            s.apply(&apply).0,
            Response::Policy {
                revision: 1,
                changed: false
            }
        );
        let del = Request::DeletePolicy { key };
        assert_eq!(
            s.apply(&del).0,
            Response::Policy {
                revision: 2,
                changed: true
            }
        );
        assert_eq!(
            s.apply(&del).0,
            Response::Policy {
                revision: 2,
                changed: false
            }
        );
    }

    #[test]
    fn a_node_gets_the_pod_cidr_it_asks_for_when_free_and_inside_the_cluster_cidr() {
        let mut s = State::new();
        let reg = |name: &str, cidr: &str| {
            Request::RegisterNode(NodeRegistration {
                name: name.into(),
                address: IpAddr::from([192, 0, 2, 1]),
                wireguard_public_key: "k".into(),
                wireguard_epoch: 1,
                pod_cidr: cidr.parse().ok(),
            })
        };
        let Response::Node(a) = s.apply(&reg("a", "10.200.7.0/24")).0 else {
            panic!("a")
        };
        assert_eq!(a.pod_cidr.to_string(), "10.200.7.0/24");
        let taken = s.apply(&reg("b", "10.200.7.0/24")).0;
        assert!(
            matches!(&taken, Response::Rejected { reason } if reason.contains("already allocated")),
            "{taken:?}"
        );
        for outside in ["10.201.0.0/24", "10.200.7.0/25"] {
            let r = s.apply(&reg("b", outside)).0;
            assert!(
                matches!(&r, Response::Rejected { reason } if reason.starts_with("`pod_cidr`")),
                "{outside}: {r:?}"
            );
        }
        assert!(
            !s.nodes.contains_key("b"),
            "a rejected registration adds nothing"
        );
        // Without a request the first free subnet is picked, skipping the taken one.
        let Response::Node(c) = s.apply(&reg("c", "")).0 else {
            panic!("c")
        };
        assert_eq!(c.pod_cidr.to_string(), "10.200.0.0/24");
    }

    #[test]
    fn nodes_get_distinct_pod_cidrs_kept_on_reregistration() {
        let mut s = State::new();
        let reg = |name: &str, epoch| {
            Request::RegisterNode(NodeRegistration {
                name: name.into(),
                address: "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                wireguard_public_key: "k".into(),
                wireguard_epoch: epoch,
                pod_cidr: None,
            })
        };
        let Response::Node(a) = s.apply(&reg("a", 1)).0 else {
            panic!("a")
        };
        let Response::Node(b) = s.apply(&reg("b", 1)).0 else {
            panic!("b")
        };
        assert_ne!(a.pod_cidr, b.pod_cidr);
        let Response::Node(a2) = s.apply(&reg("a", 2)).0 else {
            panic!("a2")
        };
        assert_eq!(a.pod_cidr, a2.pod_cidr);
        assert!(matches!(s.apply(&reg("a", 1)).0, Response::Rejected { .. }));
        assert_eq!(
            s.apply(&Request::RemoveNode { name: "a".into() }).0,
            Response::Removed { existed: true }
        );
        let Response::Node(c) = s.apply(&reg("c", 1)).0 else {
            panic!("c")
        };
        assert_eq!(c.pod_cidr, a.pod_cidr);
    }

    #[test]
    fn a_batch_applies_in_order_with_one_response_each() {
        let mut s = State::new();
        let batch = Request::Batch {
            requests: vec![
                Request::AllocateIdentity {
                    labels: vec!["a=1".into()],
                },
                Request::AllocateIdentity {
                    labels: vec!["a=1".into()],
                },
                Request::AllocateIdentity { labels: vec![] },
            ],
            at_ms: 0,
        };
        let (resp, touched) = s.apply(&batch);
        let Response::Batch { responses } = resp else {
            panic!("not a batch response")
        };
        assert_eq!(responses.len(), 3);
        assert!(matches!(
            responses[0],
            Response::Identity { created: true, .. }
        ));
        assert!(matches!(
            responses[1],
            Response::Identity { created: false, .. }
        ));
        assert!(matches!(responses[2], Response::Rejected { .. }));
        assert!(touched.contains(&(Table::Identities, "256".to_owned())));
    }

    #[test]
    fn gc_collects_only_unreferenced_identities_past_their_grace() {
        let mut s = State::new();
        let at = |s: &mut State, at_ms, r: Request| {
            let (resp, _) = s.apply(&Request::Batch {
                requests: vec![r],
                at_ms,
            });
            let Response::Batch { mut responses } = resp else {
                panic!("not a batch")
            };
            responses.remove(0)
        };
        for l in ["a=1", "a=2", "a=3"] {
            at(
                &mut s,
                1_000,
                Request::AllocateIdentity {
                    labels: vec![l.into()],
                },
            );
        }
        at(
            &mut s,
            1_000,
            Request::RegisterNode(NodeRegistration {
                name: "n".into(),
                address: IpAddr::from([192, 0, 2, 1]),
                wireguard_public_key: "k".into(),
                wireguard_epoch: 1,
                pod_cidr: None,
            }),
        );
        let ip = IpAddr::from([10, 200, 0, 5]);
        let ep = Endpoint {
            ip,
            identity: 256,
            node: "n".into(),
            ports: vec![],
        };
        assert!(matches!(
            at(&mut s, 1_000, Request::UpsertEndpoint(ep)),
            Response::Endpoint(_)
        ));
        // Referenced identities cannot be released.
        assert!(matches!(
            at(&mut s, 1_000, Request::ReleaseIdentity { id: 256 }),
            Response::Rejected { .. }
        ));
        let gc = |grace_ms| Request::CollectIdentities { grace_ms, max: 1 };
        // Within the grace period nothing goes.
        assert_eq!(
            at(&mut s, 5_000, gc(10_000)),
            Response::Collected {
                collected: 0,
                remaining: 0
            }
        );
        // Past it, only the unreferenced ones, `max` at a time.
        assert_eq!(
            at(&mut s, 20_000, gc(10_000)),
            Response::Collected {
                collected: 1,
                remaining: 1
            }
        );
        assert_eq!(
            at(&mut s, 20_000, gc(10_000)),
            Response::Collected {
                collected: 1,
                remaining: 0
            }
        );
        assert!(s.identities.contains_key(&256));
        // Removing the endpoint starts 256's grace period at the current clock.
        at(&mut s, 30_000, Request::RemoveEndpoint { ip });
        assert_eq!(s.identities[&256].unreferenced_since_ms, Some(30_000));
        assert_eq!(
            at(&mut s, 35_000, gc(10_000)),
            Response::Collected {
                collected: 0,
                remaining: 0
            }
        );
        assert_eq!(
            at(&mut s, 40_000, gc(10_000)),
            Response::Collected {
                collected: 1,
                remaining: 0
            }
        );
        assert!(s.identities.is_empty());
    }

    fn register(s: &mut State, name: &str) {
        let r = s
            .apply(&Request::RegisterNode(NodeRegistration {
                name: name.into(),
                address: IpAddr::from([192, 0, 2, 1]),
                wireguard_public_key: "k".into(),
                wireguard_epoch: 1,
                pod_cidr: None,
            }))
            .0;
        assert!(matches!(r, Response::Node(_)), "{r:?}");
    }

    fn lease(s: &mut State, node: &str, count: u32, replace: bool) -> Response {
        s.apply(&Request::LeaseIdBlock {
            node: node.into(),
            count,
            replace,
        })
        .0
    }

    fn bind(s: &mut State, node: &str, id: u32, labels: &[&str]) -> Response {
        s.apply(&Request::BindIdentity {
            node: node.into(),
            id,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        })
        .0
    }

    #[test]
    fn id_blocks_are_leased_from_the_top_and_bindings_commit_or_alias() {
        let mut s = State::new();
        assert!(
            matches!(lease(&mut s, "a", 16, false), Response::Rejected { reason } if reason.contains("not registered"))
        );
        register(&mut s, "a");
        register(&mut s, "b");
        let Response::IdBlock(a) = lease(&mut s, "a", 16, false) else {
            panic!("lease a")
        };
        assert_eq!((a.first, a.count), (MAX_LOCAL_ID + 1 - 16, 16));
        assert_eq!(
            lease(&mut s, "a", 99, false),
            Response::IdBlock(a),
            "idempotent"
        );
        let Response::IdBlock(b) = lease(&mut s, "b", 16, false) else {
            panic!("lease b")
        };
        assert_eq!(b.first + b.count, a.first, "blocks do not overlap");
        assert!(
            matches!(lease(&mut s, "b", 0, true), Response::Rejected { reason } if reason.contains("`count`"))
        );

        // a binds a new label set from its block: it becomes the canonical identity.
        let Response::Identity {
            identity,
            created: true,
        } = bind(&mut s, "a", a.first, &["app=web"])
        else {
            panic!("bind")
        };
        assert_eq!((identity.id, identity.alias_of), (a.first, None));
        // A retry is idempotent; another node's id is refused; an id bound to other labels too.
        assert!(matches!(
            bind(&mut s, "a", a.first, &["app=web"]),
            Response::Identity { created: false, .. }
        ));
        assert!(
            matches!(bind(&mut s, "a", b.first, &["app=x"]), Response::Rejected { reason } if reason.contains("leased id block"))
        );
        assert!(
            matches!(bind(&mut s, "a", a.first, &["app=x"]), Response::Rejected { reason } if reason.contains("other labels"))
        );
        // b bound the same set meanwhile (a partition): its id becomes an alias of a's.
        let Response::Identity {
            identity: canonical,
            created: false,
        } = bind(&mut s, "b", b.first, &["app=web"])
        else {
            panic!("alias")
        };
        assert_eq!(canonical.id, a.first);
        assert_eq!(s.identities[&b.first].alias_of, Some(a.first));
        assert_eq!(s.identity_by_labels(&["app=web".to_owned()]), Some(a.first));
        // The global allocator never hands out leased ids, and a reload keeps the canonical one.
        let Response::Identity { identity: g, .. } = alloc(&mut s, &["app=db"]) else {
            panic!("alloc")
        };
        assert!(g.id < b.first);
        let mut t = State::new();
        for (table, key, value) in s.all_rows() {
            t.load_row(table, &key, &value).expect("row");
        }
        t.reindex();
        assert_eq!(t.identity_by_labels(&["app=web".to_owned()]), Some(a.first));
        assert_eq!(t.leases, s.leases);
        // Releasing the canonical id hands the set to its alias.
        assert_eq!(
            s.apply(&Request::ReleaseIdentity { id: a.first }).0,
            Response::Removed { existed: true }
        );
        assert_eq!(s.identity_by_labels(&["app=web".to_owned()]), Some(b.first));
        assert_eq!(s.identities[&b.first].alias_of, None);
        // A node that leaves gives its block up; a replacement block is a fresh one.
        let Response::IdBlock(b2) = lease(&mut s, "b", 8, true) else {
            panic!("replace")
        };
        assert_eq!(b2.first + 8, b.first);
        s.apply(&Request::RemoveNode { name: "b".into() });
        assert!(!s.leases.contains_key("b"));
    }

    #[test]
    fn a_removed_canonical_id_hands_its_labels_to_the_lowest_alias_and_the_rest_follow() {
        let mut s = State::new();
        let mut blocks = Vec::new();
        for node in ["a", "b", "c"] {
            register(&mut s, node);
            let Response::IdBlock(block) = lease(&mut s, node, 16, false) else {
                panic!("lease {node}")
            };
            blocks.push(block.first);
            // Each node bound the same label set during a partition; the first is canonical.
            bind(&mut s, node, block.first, &["app=web"]);
        }
        let [a, b, c] = blocks[..] else {
            panic!("three blocks")
        };
        assert!(c < b && b < a, "blocks are leased from the top");
        assert_eq!(
            (s.identities[&b].alias_of, s.identities[&c].alias_of),
            (Some(a), Some(a))
        );
        let reloaded = |s: &State| {
            let mut t = State::new();
            for (table, key, value) in s.all_rows() {
                t.load_row(table, &key, &value).expect("row");
            }
            t.reindex();
            // The change feed is in memory only; everything else must match.
            t.feed = s.feed.clone();
            t
        };

        // The lowest alias inherits the set; the other alias now points at it.
        s.apply(&Request::ReleaseIdentity { id: a });
        assert_eq!(s.identity_by_labels(&["app=web".to_owned()]), Some(c));
        assert_eq!(
            (s.identities[&c].alias_of, s.identities[&b].alias_of),
            (None, Some(c))
        );
        assert_eq!(reloaded(&s), s, "the derived indexes match a reload's");
        // And once more, down to the last holder of the set.
        s.apply(&Request::ReleaseIdentity { id: c });
        assert_eq!(s.identity_by_labels(&["app=web".to_owned()]), Some(b));
        assert_eq!(s.identities[&b].alias_of, None);
        assert_eq!(reloaded(&s), s);
        s.apply(&Request::ReleaseIdentity { id: b });
        assert_eq!(s.identity_by_labels(&["app=web".to_owned()]), None);
        assert_eq!(reloaded(&s), s);
    }

    #[test]
    fn heartbeats_follow_the_replicated_clock() {
        let mut s = State::new();
        let reg = Request::RegisterNode(NodeRegistration {
            name: "n".into(),
            address: IpAddr::from([192, 0, 2, 1]),
            wireguard_public_key: "k".into(),
            wireguard_epoch: 1,
            pod_cidr: None,
        });
        s.apply(&Request::Batch {
            requests: vec![reg],
            at_ms: 1_000,
        });
        assert_eq!(s.nodes["n"].last_heartbeat_ms, 1_000);
        let hb = |node: &str| Request::Heartbeat { node: node.into() };
        let (r, _) = s.apply(&Request::Batch {
            requests: vec![hb("n"), hb("x")],
            at_ms: 5_000,
        });
        let Response::Batch { responses } = r else {
            panic!("not a batch")
        };
        assert_eq!(responses[0], Response::Heartbeat { at_ms: 5_000 });
        assert!(matches!(responses[1], Response::Rejected { .. }));
        // A leader with a slower clock never moves it backwards.
        s.apply(&Request::Batch {
            requests: vec![hb("n")],
            at_ms: 4_000,
        });
        assert_eq!(s.nodes["n"].last_heartbeat_ms, 5_000);
    }

    #[test]
    fn the_change_feed_numbers_changes_and_resumes() {
        let mut s = State::new();
        alloc(&mut s, &["f=1"]);
        alloc(&mut s, &["f=1"]); // no change
        alloc(&mut s, &["f=2"]);
        s.apply(&Request::ReleaseIdentity { id: 256 });
        assert_eq!(s.counters.change_revision, 3);
        let all = s.changes_since(0, 10).unwrap_or_default();
        let revs: Vec<u64> = all.iter().map(|c| c.revision).collect();
        assert_eq!(revs, vec![1, 2, 3]);
        assert_eq!(all[2].value, None);
        assert_eq!(all[0].kind, "identity");
        assert_eq!(s.changes_since(2, 10).map(|c| c.len()), Some(1));
        assert_eq!(s.changes_since(3, 10).map(|c| c.len()), Some(0));
        // A restarted member has an empty feed: older revisions must re-list.
        let mut t = State::new();
        for (table, k, v) in s.all_rows() {
            t.load_row(table, &k, &v).unwrap_or_else(|e| panic!("{e}"));
        }
        t.reindex();
        assert_eq!(t.changes_since(1, 10), None);
        assert_eq!(t.changes_since(3, 10).map(|c| c.len()), Some(0));
    }

    #[test]
    fn rows_round_trip() {
        let mut s = State::new();
        alloc(&mut s, &["x=1"]);
        alloc(&mut s, &["x=2"]);
        let mut t = State::new();
        for (table, k, v) in s.all_rows() {
            t.load_row(table, &k, &v).unwrap_or_else(|e| panic!("{e}"));
        }
        t.reindex();
        let json = |s: &State| serde_json::to_value(s).unwrap_or_default();
        assert_eq!(json(&s), json(&t));
        assert_eq!(t.identity_by_labels(&["x=2".to_owned()]), Some(257));
    }

    #[test]
    fn a_retried_once_request_takes_effect_once_and_gets_the_first_answer() {
        let mut s = State::new();
        let key = PolicyKey {
            kind: "CiliumNetworkPolicy".into(),
            namespace: "demo".into(),
            name: "p".into(),
        };
        let apply = |v: u64| Request::ApplyPolicy {
            key: key.clone(),
            object: serde_json::json!({"v": v}),
            precondition: None,
        };
        let once = |id: &str, req: Request, at_ms| Request::Batch {
            requests: vec![Request::Once {
                id: id.into(),
                request: Box::new(req),
            }],
            at_ms,
        };
        let first = Response::Batch {
            responses: vec![Response::Policy {
                revision: 1,
                changed: true,
            }],
        };
        let (r, rows) = s.apply(&once("m1-a", apply(1), 1_000));
        assert_eq!(r, first);
        assert!(rows.contains(&(Table::Requests, "m1-a".to_owned())));
        // Another client writes v2; then the first call's retry arrives (v1, v2, v1 must not be
        // visible): it answers as the first attempt did and changes nothing.
        s.apply(&apply(2));
        let (r, rows) = s.apply(&once("m1-a", apply(1), 2_000));
        assert_eq!(r, first);
        assert!(rows.iter().all(|(t, _)| *t != Table::Policies), "{rows:?}");
        assert_eq!(s.policies[&key.storage_key()].object["v"], 2);
        assert_eq!(s.counters.revision, 2);
        // The same id inside one batch twice also applies once.
        let Response::Batch { responses } = s
            .apply(&Request::Batch {
                requests: vec![
                    Request::Once {
                        id: "m2-b".into(),
                        request: Box::new(Request::AllocateIdentity {
                            labels: vec!["app=x".into()],
                        }),
                    },
                    Request::Once {
                        id: "m2-b".into(),
                        request: Box::new(Request::AllocateIdentity {
                            labels: vec!["app=x".into()],
                        }),
                    },
                ],
                at_ms: 2_000,
            })
            .0
        else {
            panic!("batch")
        };
        assert_eq!(responses[0], responses[1]);
        assert!(matches!(
            responses[0],
            Response::Identity { created: true, .. }
        ));
        // A bad id is refused, naming the field, and nothing is applied.
        let (r, _) = s.apply(&Request::Once {
            id: String::new(),
            request: Box::new(apply(3)),
        });
        assert!(matches!(r, Response::Rejected { ref reason } if reason.contains("`id`")));
        assert_eq!(s.counters.revision, 2);
    }

    #[test]
    fn remembered_answers_survive_a_reload_and_a_snapshot_then_expire() {
        let mut s = State::new();
        let once = |id: &str, labels: &str, at_ms| Request::Batch {
            requests: vec![Request::Once {
                id: id.into(),
                request: Box::new(Request::AllocateIdentity {
                    labels: vec![labels.into()],
                }),
            }],
            at_ms,
        };
        let (first, _) = s.apply(&once("a", "app=a", 1_000));
        // From stored rows (a restarted member) and from a snapshot (a wiped one).
        let mut from_rows = State::new();
        for (table, key, value) in s.all_rows() {
            from_rows.load_row(table, &key, &value).expect("row");
        }
        from_rows.reindex();
        let mut from_snapshot: State =
            serde_json::from_slice(&serde_json::to_vec(&s).expect("encode")).expect("decode");
        from_snapshot.reindex();
        for t in [&mut from_rows, &mut from_snapshot] {
            assert_eq!(t.apply(&once("a", "app=a", 2_000)).0, first);
        }
        // Past the retention, the next remembered request forgets it (and deletes its row).
        let later = 1_000 + REQUEST_RETENTION_MS + 1;
        let (_, rows) = s.apply(&once("b", "app=b", later));
        assert!(rows.contains(&(Table::Requests, "a".to_owned())));
        assert!(s.row(Table::Requests, "a").is_none());
        assert!(s.row(Table::Requests, "b").is_some());
        assert_eq!(s.requests.len(), 1);
    }
}
