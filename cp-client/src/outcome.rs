//! Results of the operations that answer more than a record.

use palisade_api::controlplane::Change;
use serde::{Deserialize, Serialize};

/// The result of applying or deleting a policy object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// The policy revision after the write (unchanged when `changed` is false).
    pub revision: u64,
    /// Whether the write changed anything: an identical re-apply, or deleting an absent
    /// object, does not bump the revision.
    pub changed: bool,
}

/// The result of waiting for nodes to acknowledge a policy revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every live node acknowledged `revision`.
    Done {
        /// The revision waited for.
        revision: u64,
        /// How many live nodes there were.
        nodes: usize,
    },
    /// The wait timed out; `laggards` are the live nodes still behind, with the revision each
    /// acknowledged last.
    TimedOut {
        /// The revision waited for.
        revision: u64,
        /// `(node, acked_revision)` of each live node behind `revision`.
        laggards: Vec<(String, u64)>,
    },
}

/// One answer of the change feed's long poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchBatch {
    /// The member's change revision when it answered: watch from here next when `changes` is
    /// empty (otherwise from the last change's revision).
    pub revision: u64,
    /// The policy revision when it answered.
    pub policy_revision: u64,
    /// Changes after the requested revision, oldest first (empty after the timeout).
    pub changes: Vec<Change>,
}
