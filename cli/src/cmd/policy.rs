//! `palisade policy` (placeholder until its owner lands it).

use std::process::ExitCode;

/// Arguments of `palisade policy`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `palisade policy`.
pub fn run(_args: Args) -> ExitCode {
    eprintln!("error: `palisade policy` is not built yet");
    ExitCode::from(super::EXIT_INVALID)
}
