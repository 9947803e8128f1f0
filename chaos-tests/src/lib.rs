//! Palisade's chaos suite (issue 10): the linearizability checker and the sequential models the
//! suite's histories are checked against, the recorder of those histories, and the harness the
//! tests in `tests/chaos/` use to inject real faults (links down, netem, nftables drops, SIGKILL,
//! SIGSTOP) into labs of real processes. See README.md and docs/RELIABILITY.md.

pub mod agents;
pub mod api;
pub mod faults;
pub mod history;
pub mod linearizability;
pub mod models;
pub mod storm;
pub mod tcp;
pub mod voters;
