//! The client operations both client APIs serve, independent of their transport: the REST API
//! ([`crate::http_api`]) and the automation gRPC API ([`crate::grpc::automation`]) parse their
//! requests, call these, and turn [`OpError`] into their own error answers (an HTTP status, a
//! gRPC code). Input checks, policy validation, read consistency, the wait for acknowledgements
//! and the change feed's long poll live here once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::{
    Change, Endpoint, Identity, NodeRecord, PolicyChange, PolicyKey, PolicyPrecondition,
    PolicyRecord, Request, Response,
};
use crate::cluster::Cluster;
use crate::errors::ClusterError;
use crate::validate::{PolicyRejected, PolicyValidator};

/// How fresh a read must be.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Reflects every write committed before the call (the leader confirms its leadership; a
    /// follower waits for the leader's read index).
    #[default]
    Linearizable,
    /// This member's applied state (stale by at most the replication lag).
    Local,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A malformed argument; `field` names it.
    #[error("`{field}`: {reason}")]
    Invalid {
        /// The offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The policy validator refused the object; nothing was proposed.
    #[error(transparent)]
    Policy(#[from] PolicyRejected),
    /// The object does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up, e.g. "policy `kind/ns/name`".
        what: String,
    },
    /// This member's change feed no longer reaches back to `from`.
    #[error(
        "changes after revision {from} are no longer kept here; list again and watch from the current revision"
    )]
    Gone {
        /// The revision asked for.
        from: u64,
    },
    /// A policy write's precondition did not hold; nothing changed.
    #[error("policy `{key}` changed: its revision is {}", current.map_or("none (absent)".to_owned(), |r| r.to_string()))]
    PreconditionFailed {
        /// The storage key.
        key: String,
        /// The stored object's revision (`None`: there is none).
        current: Option<u64>,
    },
    /// The cluster operation failed (see [`ClusterError`]).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The state machine answered something the operation does not expect.
    #[error("unexpected state machine response: {0}")]
    Unexpected(String),
}

impl OpError {
    /// An [`OpError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        OpError::Invalid {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

fn unexpected(r: &Response) -> OpError {
    OpError::Unexpected(format!("{r:?}"))
}

/// The outcome of a policy write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PolicyWritten {
    /// The policy revision after the write.
    pub revision: u64,
    /// Whether anything changed.
    pub changed: bool,
}

/// A node with what this member knows about its policy acknowledgement and lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// The registered node.
    #[serde(flatten)]
    pub node: NodeRecord,
    /// The highest policy revision it acknowledged.
    pub acked_revision: u64,
    /// Whether its lease is current on this member's clock.
    pub live: bool,
}

/// A live node behind the awaited revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Laggard {
    /// The node.
    pub node: String,
    /// What it acknowledged.
    pub acked_revision: u64,
}

/// The outcome of [`Ops::wait_policies`]: done when `laggards` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitReport {
    /// The awaited policy revision.
    pub revision: u64,
    /// Live nodes.
    pub nodes: usize,
    /// Live nodes that had not acknowledged `revision` at the deadline.
    pub laggards: Vec<Laggard>,
}

impl WaitReport {
    /// The error message of a failed wait, naming the laggards.
    pub fn failure_message(&self) -> String {
        let names: Vec<String> = self
            .laggards
            .iter()
            .map(|l| format!("`{}` (acked {})", l.node, l.acked_revision))
            .collect();
        format!(
            "{} of {} node(s) have not acknowledged revision {}: {}",
            self.laggards.len(),
            self.nodes,
            self.revision,
            names.join(", ")
        )
    }
}

/// A batch of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Feed {
    /// The member's current change revision.
    pub revision: u64,
    /// Its current policy revision.
    pub policy_revision: u64,
    /// The changes after the asked revision, oldest first.
    pub changes: Vec<Change>,
}

/// Long polls (the feed, `wait`) wake as soon as this member applies a log entry (Raft's
/// metrics change); this is only the longest they sleep without one, a safety net.
const RECHECK: Duration = Duration::from_millis(500);

/// The client operations on this member. Cheap to clone.
#[derive(Clone)]
pub struct Ops {
    cluster: Cluster,
    node_lease: Duration,
    validator: Arc<dyn PolicyValidator>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks a policy key: each part 1 to 253 characters, no `/`, no control characters.
pub fn policy_key(kind: String, namespace: String, name: String) -> Result<PolicyKey, OpError> {
    for (field, v) in [("kind", &kind), ("namespace", &namespace), ("name", &name)] {
        if v.is_empty() || v.len() > 253 || v.contains('/') || v.chars().any(char::is_control) {
            return Err(OpError::invalid(
                field,
                "must be 1 to 253 characters without `/`",
            ));
        }
    }
    Ok(PolicyKey {
        kind,
        namespace,
        name,
    })
}

/// Checks a node name: 1 to 253 characters of a-z, 0-9, `-` and `.`.
pub fn check_node_name(field: &str, name: &str) -> Result<(), OpError> {
    if crate::tls::valid_name(name) {
        Ok(())
    } else {
        Err(OpError::invalid(
            field,
            "must be 1 to 253 characters of a-z, 0-9, `-` and `.`",
        ))
    }
}

/// Parses an endpoint IP.
pub fn parse_ip(field: &str, ip: &str) -> Result<IpAddr, OpError> {
    ip.parse()
        .map_err(|_| OpError::invalid(field, "must be an IPv4 or IPv6 address"))
}

// === impl Ops ===

impl Ops {
    /// Operations on `cluster`; nodes are live for `node_lease` after their last heartbeat;
    /// policies are checked by `validator` before they are proposed.
    pub fn new(
        cluster: Cluster,
        node_lease: Duration,
        validator: Arc<dyn PolicyValidator>,
    ) -> Self {
        Ops {
            cluster,
            node_lease,
            validator,
        }
    }

    /// The cluster the operations run on.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The node lease.
    pub fn node_lease(&self) -> Duration {
        self.node_lease
    }

    /// Makes the next read as fresh as `consistency` asks.
    pub async fn before_read(&self, consistency: Consistency) -> Result<(), OpError> {
        if consistency == Consistency::Linearizable {
            self.cluster.linearize().await?;
        }
        Ok(())
    }

    /// Whether a node's lease is current: its last heartbeat (leader clock at commit) is within
    /// the lease of this member's clock. Members' clocks are assumed close (NTP).
    pub fn is_live(&self, n: &NodeRecord) -> bool {
        let lease = u64::try_from(self.node_lease.as_millis()).unwrap_or(u64::MAX);
        now_ms().saturating_sub(n.last_heartbeat_ms) <= lease
    }

    fn node_view(&self, s: &crate::app::State, n: &NodeRecord) -> NodeView {
        NodeView {
            node: n.clone(),
            acked_revision: s.acks.get(&n.name).copied().unwrap_or(0),
            live: self.is_live(n),
        }
    }

    // --- policies ---

    /// Validates `object` (nothing is proposed when the validator refuses it), then stores it
    /// under `key`.
    pub async fn apply_policy(
        &self,
        key: PolicyKey,
        object: Value,
    ) -> Result<PolicyWritten, OpError> {
        self.validator.validate(&key, &object)?;
        policy_written(
            self.cluster
                .write(Request::ApplyPolicy {
                    key,
                    object,
                    precondition: None,
                })
                .await?,
        )
    }

    /// The policy validator writes go through.
    pub fn validator(&self) -> &dyn PolicyValidator {
        self.validator.as_ref()
    }

    /// Validates `checked` (the object as the engine sees it), then stores `object` under `key`
    /// if `precondition` holds of the stored object when the write is applied (the Kubernetes
    /// API's create and update; its objects carry metadata the engine does not read).
    pub async fn apply_policy_if(
        &self,
        key: PolicyKey,
        object: Value,
        checked: &Value,
        precondition: Option<PolicyPrecondition>,
    ) -> Result<PolicyWritten, OpError> {
        self.validator.validate(&key, checked)?;
        let skey = key.storage_key();
        match self
            .cluster
            .write(Request::ApplyPolicy {
                key,
                object,
                precondition,
            })
            .await?
        {
            Response::PolicyPreconditionFailed { current } => {
                Err(OpError::PreconditionFailed { key: skey, current })
            }
            other => policy_written(other),
        }
    }

    /// Deletes the policy under `key`.
    pub async fn delete_policy(&self, key: PolicyKey) -> Result<PolicyWritten, OpError> {
        policy_written(self.cluster.write(Request::DeletePolicy { key }).await?)
    }

    /// Deletes namespace `name` with everything stored in it (the Kubernetes API's namespace
    /// delete; see [`Request::DeleteNamespace`]).
    pub async fn delete_namespace(&self, name: String) -> Result<PolicyWritten, OpError> {
        policy_written(
            self.cluster
                .write(Request::DeleteNamespace { name })
                .await?,
        )
    }

    /// The policy under `key`.
    pub async fn get_policy(
        &self,
        key: &PolicyKey,
        consistency: Consistency,
    ) -> Result<PolicyRecord, OpError> {
        self.before_read(consistency).await?;
        let skey = key.storage_key();
        self.cluster
            .read(|s| s.policies.get(&skey).cloned())?
            .ok_or_else(|| OpError::NotFound {
                what: format!("policy `{skey}`"),
            })
    }

    /// The policy revision and every policy.
    pub async fn list_policies(
        &self,
        consistency: Consistency,
    ) -> Result<(u64, Vec<PolicyRecord>), OpError> {
        self.before_read(consistency).await?;
        Ok(self
            .cluster
            .read(|s| (s.counters.revision, s.policies.values().cloned().collect()))?)
    }

    /// Waits until every live node (lease current) acknowledged `revision` (the current policy
    /// revision when `None`, read linearizably), at most `timeout`. A report with laggards when
    /// the timeout passed first.
    pub async fn wait_policies(
        &self,
        revision: Option<u64>,
        timeout: Duration,
    ) -> Result<WaitReport, OpError> {
        self.cluster.linearize().await?;
        let revision = match revision {
            Some(r) => r,
            None => self.cluster.read(|s| s.counters.revision)?,
        };
        let deadline = Instant::now() + timeout;
        let mut applied = self.cluster.raft().metrics();
        loop {
            let seen = applied.borrow_and_update().last_applied;
            let report = self.cluster.read(|s| {
                let live: Vec<&NodeRecord> = s.nodes.values().filter(|n| self.is_live(n)).collect();
                let laggards = live
                    .iter()
                    .filter_map(|n| {
                        let acked = s.acks.get(&n.name).copied().unwrap_or(0);
                        (acked < revision).then(|| Laggard {
                            node: n.name.clone(),
                            acked_revision: acked,
                        })
                    })
                    .collect();
                WaitReport {
                    revision,
                    nodes: live.len(),
                    laggards,
                }
            })?;
            if report.laggards.is_empty() || Instant::now() >= deadline {
                return Ok(report);
            }
            next_apply(&mut applied, seen, deadline).await;
        }
    }

    // --- identities, nodes, endpoints ---

    /// Every identity.
    pub async fn list_identities(
        &self,
        consistency: Consistency,
    ) -> Result<Vec<Identity>, OpError> {
        self.before_read(consistency).await?;
        Ok(self
            .cluster
            .read(|s| s.identities.values().cloned().collect())?)
    }

    /// The identity `id`.
    pub async fn get_identity(
        &self,
        id: u32,
        consistency: Consistency,
    ) -> Result<Identity, OpError> {
        self.before_read(consistency).await?;
        self.cluster
            .read(|s| s.identities.get(&id).cloned())?
            .ok_or_else(|| OpError::NotFound {
                what: format!("identity {id}"),
            })
    }

    /// Every node.
    pub async fn list_nodes(&self, consistency: Consistency) -> Result<Vec<NodeView>, OpError> {
        self.before_read(consistency).await?;
        Ok(self.cluster.read(|s| {
            s.nodes
                .values()
                .map(|n| self.node_view(s, n))
                .collect::<Vec<_>>()
        })?)
    }

    /// The node `name`.
    pub async fn get_node(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<NodeView, OpError> {
        check_node_name("name", name)?;
        self.before_read(consistency).await?;
        self.cluster
            .read(|s| s.nodes.get(name).map(|n| self.node_view(s, n)))?
            .ok_or_else(|| OpError::NotFound {
                what: format!("node `{name}`"),
            })
    }

    /// Every endpoint.
    pub async fn list_endpoints(&self, consistency: Consistency) -> Result<Vec<Endpoint>, OpError> {
        self.before_read(consistency).await?;
        Ok(self
            .cluster
            .read(|s| s.endpoints.values().cloned().collect())?)
    }

    // --- change feed ---

    /// The current change revision.
    pub async fn change_revision(&self, consistency: Consistency) -> Result<u64, OpError> {
        self.before_read(consistency).await?;
        Ok(self.cluster.read(|s| s.counters.change_revision)?)
    }

    /// Long poll of this member's change feed: at most `limit` changes after `from` as soon as
    /// one exists, or none once `timeout` passed. [`OpError::Gone`] when the feed no longer
    /// reaches back to `from` (after a restart, a snapshot install, or too many newer changes).
    pub async fn next_changes(
        &self,
        from: u64,
        limit: usize,
        timeout: Duration,
    ) -> Result<Feed, OpError> {
        let deadline = Instant::now() + timeout;
        let mut applied = self.cluster.raft().metrics();
        loop {
            // What was applied before the read: anything applied after it wakes the wait below.
            let seen = applied.borrow_and_update().last_applied;
            let (revision, policy_revision, changes) = self.cluster.read(|s| {
                (
                    s.counters.change_revision,
                    s.counters.revision,
                    s.changes_since(from, limit),
                )
            })?;
            let changes = changes.ok_or(OpError::Gone { from })?;
            if !changes.is_empty() || Instant::now() >= deadline {
                return Ok(Feed {
                    revision,
                    policy_revision,
                    changes,
                });
            }
            next_apply(&mut applied, seen, deadline).await;
        }
    }
}

impl Ops {
    /// Long poll of the policy changes after policy revision `from` (the Kubernetes API's
    /// watch): this member's current policy revision and each changed object once, as soon as
    /// there is one, or none once `timeout` passed. [`OpError::Gone`] when this member's feed no
    /// longer reaches back to `from`.
    pub async fn next_policy_changes(
        &self,
        from: u64,
        timeout: Duration,
    ) -> Result<(u64, Vec<PolicyChange>), OpError> {
        let deadline = Instant::now() + timeout;
        let mut applied = self.cluster.raft().metrics();
        loop {
            let seen = applied.borrow_and_update().last_applied;
            let (revision, changes) = self
                .cluster
                .read(|s| (s.counters.revision, s.policy_changes_since(from)))?;
            let changes = changes.ok_or(OpError::Gone { from })?;
            if !changes.is_empty() || Instant::now() >= deadline {
                return Ok((revision.max(from), changes));
            }
            next_apply(&mut applied, seen, deadline).await;
        }
    }
}

/// Sleeps until this member applies past `seen` (a change, an acknowledgement, a heartbeat:
/// the caller re-reads), the deadline, or [`RECHECK`], whichever comes first. Replaces a fixed
/// polling interval: a watcher hears of a commit at once instead of up to one interval late.
async fn next_apply(
    applied: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<crate::NodeId, crate::Member>>,
    seen: Option<openraft::LogId<crate::NodeId>>,
    deadline: Instant,
) {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(RECHECK);
    let _ = tokio::time::timeout(wait, applied.wait_for(|m| m.last_applied != seen)).await;
}

fn policy_written(r: Response) -> Result<PolicyWritten, OpError> {
    match r {
        Response::Policy { revision, changed } => Ok(PolicyWritten { revision, changed }),
        other => Err(unexpected(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names_name_the_field() {
        let e = policy_key("K".into(), "a/b".into(), "n".into()).err();
        assert!(matches!(e, Some(OpError::Invalid { field, .. }) if field == "namespace"));
        assert!(policy_key("K".into(), "-".into(), "n".into()).is_ok());
        assert!(matches!(
            check_node_name("node", "Bad_Name"),
            Err(OpError::Invalid { field, .. }) if field == "node"
        ));
        let r = WaitReport {
            revision: 7,
            nodes: 2,
            laggards: vec![Laggard {
                node: "node-a".into(),
                acked_revision: 3,
            }],
        };
        assert_eq!(
            r.failure_message(),
            "1 of 2 node(s) have not acknowledged revision 7: `node-a` (acked 3)"
        );
    }
}
