//! Errors of the client-facing operations, split into retryable and fatal ones.

use crate::NodeId;

/// An error of a client operation ([`crate::cluster::Cluster`]).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known right now (election in progress). Retryable.
    #[error("no raft leader is known; retry shortly")]
    NoLeader,
    /// The leader could not be reached to forward a request. Retryable.
    #[error("cannot forward to the leader at `{leader}`")]
    Forward {
        /// The leader's API address.
        leader: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The leader answered a forwarded request with an error.
    #[error("the leader at `{leader}` answered {status}: {message}")]
    Leader {
        /// The leader's API address.
        leader: String,
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The state machine refused the request; nothing changed. Not retryable as is.
    #[error("{reason}")]
    Rejected {
        /// Why, naming the field.
        reason: String,
    },
    /// A membership change was refused.
    #[error("membership change refused: {reason}")]
    Membership {
        /// Why.
        reason: String,
    },
    /// Another membership change is still being committed. Retryable.
    #[error("another membership change is in progress: {reason}")]
    MembershipBusy {
        /// openraft's message.
        reason: String,
    },
    /// The request did not complete in time. Retryable (operations are idempotent).
    #[error("timed out waiting for `{what}`")]
    Timeout {
        /// What was awaited.
        what: &'static str,
    },
    /// Raft stopped on this member. Fatal.
    #[error("raft on member `{id}` has stopped")]
    Fatal {
        /// This member.
        id: NodeId,
    },
    /// An unexpected internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClusterError {
    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader
                | ClusterError::Forward { .. }
                | ClusterError::Timeout { .. }
                | ClusterError::MembershipBusy { .. }
        )
    }
}
