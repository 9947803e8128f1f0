//! The chaos suite: real processes in labs of network namespaces, real faults. Each test prints
//! what it checked and what it measured (run with `--nocapture`, as `make chaos` does).
//! `PALISADE_CHAOS=full` selects the long form (more rounds, longer storms); the default is the
//! short form `make test` runs.

mod t10_leader_kill;
mod t20_voter_partition;
mod t30_agent_restart;
mod t40_rolling_restart;
mod t50_agent_partition;
mod util;
