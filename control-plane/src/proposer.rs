//! Group commit: concurrent writes on the leader are proposed together as one
//! [`Request::Batch`] log entry, so one fsync and one replication round carry many writes.
//!
//! ```text
//!  write_local ──(request, reply slot)──▶ queue ──▶ proposer loop
//!                                                   │ wait for one of MAX_IN_FLIGHT permits,
//!                                                   │ drain up to MAX_BATCH queued requests
//!                                                   ▼
//!                                         client_write(one request | Batch) ──▶ replies
//! ```
//!
//! Every entry is a `Batch` (of one, when alone) stamped with the leader's wall clock, which
//! advances the replicated clock identity garbage collection measures grace periods with.
//!
//! While `MAX_IN_FLIGHT` entries are being committed, new requests queue up and form the next
//! batch, so a lone client pays no batching delay and many clients share fsyncs. A batch is one
//! log entry: its requests commit or fail together, each gets its own response.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::app::{Request, Response};
use crate::{Member, NodeId, Raft};

/// Most requests in one log entry.
const MAX_BATCH: usize = 512;
/// Most log entries being committed at once by the proposer.
const MAX_IN_FLIGHT: usize = 4;
/// Queued requests before `propose` waits.
const QUEUE: usize = 8192;

/// The outcome of one proposed request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Committed and applied.
    Applied(Response),
    /// This member does not lead; the leader, when known.
    NotLeader(Option<(NodeId, Member)>),
    /// openraft refused a membership change.
    Membership {
        /// Whether another change is still in progress (retryable).
        in_progress: bool,
        /// openraft's message.
        reason: String,
    },
    /// Raft has stopped.
    Stopped,
}

struct Pending {
    req: Request,
    reply: oneshot::Sender<Outcome>,
}

/// Handle to the proposer task. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the proposer task for `raft`; it ends when every handle is dropped.
    pub fn spawn(raft: Raft) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Proposes one request and waits for its outcome.
    pub async fn propose(&self, req: Request) -> Outcome {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Pending { req, reply }).await.is_err() {
            return Outcome::Stopped;
        }
        rx.await.unwrap_or(Outcome::Stopped)
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch).await;
            drop(permit);
        });
    }
}

async fn commit(raft: &Raft, batch: Vec<Pending>) {
    let started = Instant::now();
    // Every entry is a batch stamped with this leader's clock (see `Request::Batch`).
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<Outcome>>) =
        batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    let n = replies.len();
    let payload = Request::Batch { requests, at_ms };
    let outcome = match raft.client_write(payload).await {
        Ok(r) => {
            let secs = started.elapsed().as_secs_f64();
            let h = metrics::histogram!(crate::metrics::PROPOSAL_SECONDS);
            for _ in 0..n {
                h.record(secs);
            }
            metrics::histogram!(crate::metrics::BATCH_SIZE).record(n as f64);
            match r.data {
                Response::Batch { responses } if responses.len() == n => {
                    responses.into_iter().map(Outcome::Applied).collect()
                }
                other => {
                    tracing::error!(response = ?other, "batch answered with a non-batch response");
                    vec![Outcome::Stopped; n]
                }
            }
        }
        Err(e) => {
            let o = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    Outcome::NotLeader(f.leader_id.zip(f.leader_node))
                }
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    Outcome::Membership {
                        in_progress: matches!(e, ChangeMembershipError::InProgress(_)),
                        reason: e.to_string(),
                    }
                }
                RaftError::Fatal(_) => Outcome::Stopped,
            };
            vec![o; n]
        }
    };
    for (reply, o) in replies.into_iter().zip(outcome) {
        let _ = reply.send(o);
    }
}
