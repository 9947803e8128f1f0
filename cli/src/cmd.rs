//! Subcommands, one module each, plus the error conventions they share.

pub mod agent;
pub mod cluster;
pub mod connect;
pub mod encrypt;
pub mod identity;
pub mod kubeconfig;
pub mod lab;
pub mod lab_test;
pub mod mirror;
pub mod node;
pub mod observe;
pub mod policy;
pub mod status;
pub mod tutorial;
pub mod ui;
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
    /// YAML, one document, for scripts and people.
    Yaml,
}

impl Output {
    /// Renders `doc` as this format's document (pretty JSON for `Table`, whose callers print
    /// their own text), ending with a newline.
    pub fn render<T: serde::Serialize>(self, doc: &T) -> anyhow::Result<String> {
        Ok(match self {
            Output::Yaml => serde_yaml::to_string(doc)?,
            Output::Json | Output::Table => format!("{}\n", serde_json::to_string_pretty(doc)?),
        })
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub fn emit(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes()).and_then(|()| out.flush());
}

/// Left-aligned columns separated by two spaces; the first row is usually the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
