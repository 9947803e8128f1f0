//! Subcommands, one module each, plus the error conventions they share.

pub mod agent;
pub mod lab;
pub mod lab_test;
pub mod policy;
pub mod workload;

use std::process::ExitCode;

/// Exit code for invalid input or a command that could not be carried out.
pub const EXIT_INVALID: u8 = 2;

/// Prints a clap error as one line (help and version output are printed in full).
pub fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{first} (see --help)");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// Prints an error chain on one line, `error: outer: inner: root`, and returns [`EXIT_INVALID`].
pub fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(EXIT_INVALID)
}

/// Output formats shared by subcommands that print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON, one document, for scripts.
    Json,
}
