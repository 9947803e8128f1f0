//! Lab life-cycle tests that need no palisade binary (root, real namespaces): sweeping what a
//! crash left, rolling back a failed `up`, refusing a second `up`. Tests that start workload
//! servers live in `cli/tests/lab/` (they need the built binary).

mod t20_life_cycle;
mod util;
