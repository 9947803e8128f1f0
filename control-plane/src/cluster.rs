//! Client operations against the local member: writes through Raft (forwarded to the leader
//! when this member is a follower), linearizable reads, cluster status and membership changes.
//!
//! Forwarding, in one hop over the leader's client API:
//! - a write on a follower is sent as the Raft [`Request`] to the leader's
//!   `POST /internal/v1/propose`, which proposes it locally and answers the state machine's
//!   [`Response`]; a leader change during the hop is retried until the request timeout. The
//!   member that first receives a write gives it a request id ([`Request::Once`]) kept through
//!   every forward and retry, so an attempt that committed although its answer was lost (a
//!   deposed leader, a timed-out hop) is not applied again: the retry gets the first answer;
//! - a linearizable read on a follower asks the leader for a read index
//!   (`GET /internal/v1/read-index`, answered after the leader confirmed its leadership with a
//!   quorum), waits until it has applied that index, then reads its own state (ReadIndex);
//! - membership changes go to the leader's `POST /internal/v1/members`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError,
};
use openraft::{ChangeMembers, ServerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::app::{Request, Response, State};
use crate::errors::ClusterError;
use crate::proposer::{Outcome, Proposer};
use crate::store::state_machine::Applied;
use crate::{Member, NodeId, Raft};

/// Header marking a request forwarded by another member, so it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-palisade-forwarded";

/// Header a client sends to make its own retries of a write exactly-once (the name of the IETF
/// draft and of Stripe's API): the same key on another attempt, at this member or another, gets
/// the first attempt's answer. Keys are global: a client must choose unique ones.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 100;

/// Checks a client's idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "`Idempotency-Key`: 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        ));
    }
    Ok(())
}

struct ClientKey {
    key: String,
    /// Writes made so far by the call: its n-th write takes the id `c-<key>-<n>`.
    writes: AtomicU32,
}

tokio::task_local! {
    static CLIENT_KEY: ClientKey;
}

/// Serves one client call whose writes take their request ids from the client's idempotency key
/// (checked with [`check_idempotency_key`]), so the client's retry of the call takes effect once.
pub async fn with_idempotency_key<F: Future>(key: String, call: F) -> F::Output {
    let key = ClientKey {
        key,
        writes: AtomicU32::new(0),
    };
    CLIENT_KEY.scope(key, call).await
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum MembershipChange {
    /// Adds (or updates) a learner and waits until it has caught up.
    AddLearner {
        /// Its Raft id.
        id: NodeId,
        /// Its Raft peer address.
        raft_addr: String,
        /// Its client API address.
        api_addr: String,
    },
    /// Sets the voters to exactly this set (each must already be a member); members dropped from
    /// the voters are removed unless `retain` is true, in which case they stay as learners.
    ChangeMembership {
        /// The new voter set.
        voters: BTreeSet<NodeId>,
        /// Keep removed voters as learners.
        #[serde(default)]
        retain: bool,
    },
    /// Removes learners.
    RemoveLearners {
        /// Their ids.
        ids: BTreeSet<NodeId>,
    },
}

/// One member in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Raft id.
    pub id: NodeId,
    /// Raft peer address.
    pub raft_addr: String,
    /// Client API address.
    pub api_addr: String,
    /// Highest log index known replicated to it (leader's view only; `null` elsewhere).
    pub matched_index: Option<u64>,
}

/// The cluster as this member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This member's id.
    pub id: NodeId,
    /// This member's role: `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    /// The current leader, if known.
    pub leader: Option<NodeId>,
    /// The leader's client API address, if known.
    pub leader_api_addr: Option<String>,
    /// Current term.
    pub term: u64,
    /// Last log index on this member.
    pub last_log_index: Option<u64>,
    /// Highest committed index this member knows.
    pub commit_index: Option<u64>,
    /// Last applied index on this member.
    pub last_applied: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log was purged.
    pub purged_index: Option<u64>,
    /// Voters.
    pub voters: Vec<MemberStatus>,
    /// Learners.
    pub learners: Vec<MemberStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

/// The read index a leader hands to a follower.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReadIndex {
    /// Apply at least this index before serving the read (`null`: nothing to wait for).
    pub index: Option<u64>,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    applied: Arc<RwLock<Applied>>,
    committed: Arc<AtomicU64>,
    http: reqwest::Client,
    timeout: Duration,
    proposer: Proposer,
    member_token: Option<String>,
    /// `https` when members talk TLS ([`crate::tls`]), else `http`.
    scheme: &'static str,
    /// Request ids are `<member>-<boot>-<n>`: unique across members and restarts.
    boot: u64,
    next_request: AtomicU64,
}

/// Client operations on the local member. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

const RETRY_PAUSE: Duration = Duration::from_millis(50);

// === impl Cluster ===

impl Cluster {
    /// Wraps the local Raft, its applied state and its committed-index view.
    pub fn new(
        id: NodeId,
        raft: Raft,
        applied: Arc<RwLock<Applied>>,
        committed: Arc<AtomicU64>,
        timeout: Duration,
        member_token: Option<String>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ClusterError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(1));
        if let Some(cfg) = tls {
            // Trusts the cluster CA only and presents this member's certificate.
            http = http.use_preconfigured_tls(cfg);
        }
        let http = http
            .build()
            .map_err(|e| ClusterError::Internal(format!("http client: {e}")))?;
        Ok(Cluster {
            inner: Arc::new(Inner {
                id,
                proposer: Proposer::spawn(raft.clone()),
                raft,
                applied,
                committed,
                http,
                timeout,
                member_token,
                scheme,
                boot: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                next_request: AtomicU64::new(0),
            }),
        })
    }

    /// The local Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Reads the local applied state (no consistency check; see [`Cluster::linearize`]).
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, ClusterError> {
        let a = self
            .inner
            .applied
            .read()
            .map_err(|_| ClusterError::Internal("state lock poisoned".to_owned()))?;
        Ok(f(&a.state))
    }

    /// Proposes a write through Raft, forwarding it to the leader when this member is not the
    /// leader, retrying across leader changes until the request timeout; the write takes effect
    /// once however many attempts reach the log (see [`Request::Once`]). A
    /// [`Response::Rejected`] becomes [`ClusterError::Rejected`].
    pub async fn write(&self, req: Request) -> Result<Response, ClusterError> {
        let req = self.once(req);
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let err = match self.write_local(req.clone()).await {
                Err(ClusterError::NoLeader) => ClusterError::NoLeader,
                Err(e) => return Err(e),
                Ok(Ok(resp)) => return finish(resp),
                Ok(Err(leader)) => match self
                    .forward::<_, Response>(&leader.api_addr, "/internal/v1/propose", &req)
                    .await
                {
                    Ok(resp) => return finish(resp),
                    Err(e) if e.is_retryable() => e,
                    Err(ClusterError::Leader { status: 421, .. }) => ClusterError::NoLeader,
                    Err(e) => return Err(e),
                },
            };
            if Instant::now() + RETRY_PAUSE > deadline {
                return Err(err);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Gives a write its request id — from the client's idempotency key when the call has one,
    /// else a fresh one — unless it has one or repeating it is harmless and frequent (heartbeats
    /// and acknowledgements set values; their answers carry the current ones).
    fn once(&self, req: Request) -> Request {
        match req {
            Request::Once { .. } | Request::Heartbeat { .. } | Request::AckRevision { .. } => req,
            req => {
                let id = CLIENT_KEY
                    .try_with(|c| {
                        let n = c.writes.fetch_add(1, Ordering::Relaxed);
                        format!("c-{}-{n}", c.key)
                    })
                    .unwrap_or_else(|_| {
                        let n = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
                        format!("{}-{:x}-{n:x}", self.inner.id, self.inner.boot)
                    });
                Request::Once {
                    id,
                    request: Box::new(req),
                }
            }
        }
    }

    /// Proposes on this member only (through the group-commit proposer). `Ok(Err(leader))`
    /// when another member leads.
    pub async fn write_local(
        &self,
        req: Request,
    ) -> Result<Result<Response, Member>, ClusterError> {
        match self.inner.proposer.propose(req).await {
            Outcome::Applied(r) => Ok(Ok(r)),
            Outcome::NotLeader(Some((id, node))) if id != self.inner.id => Ok(Err(node)),
            Outcome::NotLeader(_) => Err(ClusterError::NoLeader),
            Outcome::Membership {
                in_progress: true,
                reason,
            } => Err(ClusterError::MembershipBusy { reason }),
            Outcome::Membership { reason, .. } => Err(ClusterError::Membership { reason }),
            Outcome::Stopped => Err(ClusterError::Fatal { id: self.inner.id }),
        }
    }

    fn leader_of(&self, f: ForwardToLeader<NodeId, Member>) -> Result<Member, ClusterError> {
        match (f.leader_id, f.leader_node) {
            (Some(id), _) if id == self.inner.id => Err(ClusterError::NoLeader),
            (Some(_), Some(node)) => Ok(node),
            _ => Err(ClusterError::NoLeader),
        }
    }

    /// Waits until this member's state reflects every write committed before the call
    /// (linearizable read), asking the leader for a read index when this member follows.
    pub async fn linearize(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let err = match self.inner.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    match self.leader_of(f) {
                        Ok(leader) => match self.follower_read_index(&leader).await {
                            Ok(()) => return Ok(()),
                            Err(e) if e.is_retryable() => e,
                            Err(ClusterError::Leader { status: 421, .. }) => ClusterError::NoLeader,
                            Err(e) => return Err(e),
                        },
                        Err(e) => e,
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    ClusterError::NoLeader
                }
                Err(RaftError::Fatal(_)) => return Err(ClusterError::Fatal { id: self.inner.id }),
            };
            if Instant::now() + RETRY_PAUSE > deadline {
                return Err(err);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn follower_read_index(&self, leader: &Member) -> Result<(), ClusterError> {
        let ri: ReadIndex = self
            .forward_get(&leader.api_addr, "/internal/v1/read-index")
            .await?;
        if let Some(index) = ri.index {
            self.inner
                .raft
                .wait(Some(self.inner.timeout))
                .applied_index_at_least(Some(index), "read index")
                .await
                .map_err(|_| ClusterError::Timeout {
                    what: "apply up to the leader's read index",
                })?;
        }
        Ok(())
    }

    /// The read index, when this member is the leader (confirmed with a quorum).
    pub async fn read_index(&self) -> Result<Result<ReadIndex, Option<Member>>, ClusterError> {
        match self.inner.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(Ok(ReadIndex {
                index: read.map(|l| l.index),
            })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Ok(Err(f.leader_node))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ClusterError::NoLeader)
            }
            Err(RaftError::Fatal(_)) => Err(ClusterError::Fatal { id: self.inner.id }),
        }
    }

    /// Applies a membership change, forwarding it to the leader when needed.
    /// Retries while another change is still being committed or no leader is known.
    pub async fn change_members(&self, change: MembershipChange) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let res = match self.change_members_local(change.clone()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(leader)) => self
                    .forward::<_, serde_json::Value>(
                        &leader.api_addr,
                        "/internal/v1/members",
                        &change,
                    )
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match res {
                Err(ClusterError::Leader {
                    status, message, ..
                }) if status == 421 || status == 503 => {
                    if Instant::now() + RETRY_PAUSE > deadline {
                        return Err(ClusterError::MembershipBusy { reason: message });
                    }
                }
                Err(e) if e.is_retryable() && Instant::now() + RETRY_PAUSE <= deadline => {}
                other => return other,
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Applies a membership change on this member. `Ok(Err(leader))` when another member leads.
    pub async fn change_members_local(
        &self,
        change: MembershipChange,
    ) -> Result<Result<(), Member>, ClusterError> {
        let raft = &self.inner.raft;
        let res = match change {
            MembershipChange::AddLearner {
                id,
                raft_addr,
                api_addr,
            } => {
                raft.add_learner(
                    id,
                    Member {
                        raft_addr,
                        api_addr,
                    },
                    true,
                )
                .await
            }
            MembershipChange::ChangeMembership { voters, retain } => {
                raft.change_membership(voters, retain).await
            }
            MembershipChange::RemoveLearners { ids } => {
                raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                    .await
            }
        };
        match res {
            Ok(_) => Ok(Ok(())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.leader_of(f).map(Err)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(e),
            ))) => Err(ClusterError::MembershipBusy {
                reason: e.to_string(),
            }),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ClusterError::Membership {
                    reason: e.to_string(),
                })
            }
            Err(RaftError::Fatal(_)) => Err(ClusterError::Fatal { id: self.inner.id }),
        }
    }

    /// The cluster as this member sees it.
    pub fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let matched: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let member_status = |id: &NodeId, n: &Member| MemberStatus {
            id: *id,
            raft_addr: n.raft_addr.clone(),
            api_addr: n.api_addr.clone(),
            matched_index: matched.get(id).copied().flatten().or_else(|| {
                (*id == m.id && m.state == ServerState::Leader)
                    .then_some(m.last_log_index)
                    .flatten()
            }),
        };
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for (id, n) in membership.nodes() {
            if voter_ids.contains(id) {
                voters.push(member_status(id, n));
            } else {
                learners.push(member_status(id, n));
            }
        }
        let committed = self.inner.committed.load(Ordering::Relaxed);
        let leader_api_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.api_addr.clone()));
        ClusterStatus {
            id: m.id,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            leader: m.current_leader,
            leader_api_addr,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: (committed != u64::MAX).then_some(committed),
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters,
            learners,
        }
    }

    // --- forwarding ---

    async fn forward<B: Serialize, T: DeserializeOwned>(
        &self,
        leader: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClusterError> {
        let req = self
            .inner
            .http
            .post(format!("{}://{leader}{path}", self.inner.scheme))
            .header(FORWARDED_HEADER, self.inner.id.to_string())
            .json(body);
        self.send(leader, self.with_token(req)).await
    }

    async fn forward_get<T: DeserializeOwned>(
        &self,
        leader: &str,
        path: &str,
    ) -> Result<T, ClusterError> {
        let req = self
            .inner
            .http
            .get(format!("{}://{leader}{path}", self.inner.scheme))
            .header(FORWARDED_HEADER, self.inner.id.to_string());
        self.send(leader, self.with_token(req)).await
    }

    fn with_token(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.inner.member_token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        leader: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClusterError> {
        let fwd = |source| ClusterError::Forward {
            leader: leader.to_owned(),
            source,
        };
        let resp = req.send().await.map_err(fwd)?;
        let status = resp.status();
        if status.is_success() {
            return resp.json::<T>().await.map_err(fwd);
        }
        let message = match resp.json::<ErrorBody>().await {
            Ok(b) => b.error,
            Err(_) => status.to_string(),
        };
        match status.as_u16() {
            409 => Err(ClusterError::Rejected { reason: message }),
            503 => Err(ClusterError::NoLeader),
            s => Err(ClusterError::Leader {
                leader: leader.to_owned(),
                status: s,
                message,
            }),
        }
    }
}

fn finish(resp: Response) -> Result<Response, ClusterError> {
    match resp {
        Response::Rejected { reason } => Err(ClusterError::Rejected { reason }),
        r => Ok(r),
    }
}
