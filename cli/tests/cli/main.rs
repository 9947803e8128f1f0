//! CLI-level tests of `palisade lab` and `palisade workload`: bad input gives one `error:` line
//! and a non-zero exit and builds nothing; probe exit codes; JSON output parses.

mod t10_workload;
mod t60_bad_input;
