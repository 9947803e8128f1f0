//! Errors of the lab, one enum; every variant names the thing it is about.

use std::io;
use std::path::PathBuf;

/// A lab operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The lab name cannot be used.
    #[error("invalid lab name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// The spec cannot be built (counts, CIDRs, ports, binary).
    #[error("invalid lab spec for `{name}`: {reason}")]
    InvalidSpec {
        /// Lab name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `up` on a lab that already exists (state dir or namespaces present).
    #[error(
        "lab `{name}` already exists ({evidence}); run `palisade lab down --name {name}` first"
    )]
    AlreadyExists {
        /// Lab name.
        name: String,
        /// What was found.
        evidence: String,
    },
    /// No state for this lab.
    #[error("lab `{name}` does not exist (no state at `{}`); create it with `palisade lab up --name {name}`", path.display())]
    NotFound {
        /// Lab name.
        name: String,
        /// Where the state was looked for.
        path: PathBuf,
    },
    /// A pod name that is not in the lab.
    #[error("lab `{lab}` has no pod `{pod}` (pods: {known})")]
    UnknownPod {
        /// Lab name.
        lab: String,
        /// The pod asked for.
        pod: String,
        /// The pods that exist.
        known: String,
    },
    /// A node name that is not in the lab.
    #[error("lab `{lab}` has no node `{node}` (nodes: {known})")]
    UnknownNode {
        /// Lab name.
        lab: String,
        /// The node asked for.
        node: String,
        /// The nodes that exist.
        known: String,
    },
    /// An external command failed.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status or spawn failure.
        status: String,
        /// Its stderr, trimmed to one line.
        stderr: String,
    },
    /// Reading or writing lab files.
    #[error("cannot {action} `{}`", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The state file does not parse.
    #[error("corrupt lab state `{}`", path.display())]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A pod's server did not come up.
    #[error("workload server in pod `{pod}` is not ready: {reason} (log: `{}`)", log.display())]
    NotReady {
        /// Pod name.
        pod: String,
        /// What went wrong.
        reason: String,
        /// The server's log file.
        log: PathBuf,
    },
    /// A probe could not be run or its output not understood.
    #[error("probe from pod `{from}` failed: {reason}")]
    Probe {
        /// The source pod.
        from: String,
        /// What went wrong.
        reason: String,
    },
    /// `up` failed; everything it created was removed (unless `rollback` says otherwise).
    #[error("cannot bring up lab `{name}` ({})", rollback.as_ref().map_or_else(|| "rolled back".to_string(), |r| format!("rollback failed too: {r}")))]
    UpFailed {
        /// Lab name.
        name: String,
        /// Why the rollback failed, if it did.
        rollback: Option<String>,
        /// The failure.
        #[source]
        source: Box<LabError>,
    },
}
