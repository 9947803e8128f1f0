//! `palisade lab` (placeholder until its owner lands it).

use std::process::ExitCode;

/// Arguments of `palisade lab`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `palisade lab`.
pub fn run(_args: Args) -> ExitCode {
    eprintln!("error: `palisade lab` is not built yet");
    ExitCode::from(super::EXIT_INVALID)
}
