//! `palisade workload` (placeholder until its owner lands it).

use std::process::ExitCode;

/// Arguments of `palisade workload`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `palisade workload`.
pub fn run(_args: Args) -> ExitCode {
    eprintln!("error: `palisade workload` is not built yet");
    ExitCode::from(super::EXIT_INVALID)
}
