//! The one seam through which the plugin changes the system: every link, address, route and
//! neighbour is set by running `ip` (iproute2), inside the pod's namespace through `nsenter`.
//! [`System`] spawns the command; unit tests pass a fake [`Runner`] that records the exact
//! command sequence.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

/// A command line to run, with optional stdin (for `ip -batch -`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// What to feed on stdin.
    pub stdin: Option<String>,
}

// === impl Cmd ===

impl Cmd {
    /// `program args...`.
    pub fn new<S: AsRef<str>>(program: &str, args: &[S]) -> Cmd {
        Cmd {
            program: program.to_string(),
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
            stdin: None,
        }
    }

    /// Feeds `input` on stdin.
    pub fn stdin(mut self, input: String) -> Cmd {
        self.stdin = Some(input);
        self
    }
}

/// The command line, space separated (stdin not shown).
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdOutput {
    /// Exit status 0.
    pub success: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// A command that failed (CNI error code 100).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command `{command}` failed: {stderr}")]
pub struct CommandError {
    /// The command line.
    pub command: String,
    /// Its stderr on one line, or why it could not run.
    pub stderr: String,
}

/// The seam: runs a command to completion and returns its output, whatever its exit status;
/// only a failure to run it at all is an error.
pub trait Runner {
    /// Runs `cmd`.
    fn run(&self, cmd: &Cmd) -> Result<CmdOutput, CommandError>;
}

/// The real runner.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        "no error output".to_string()
    } else {
        lines.join("; ")
    }
}

impl Runner for System {
    fn run(&self, cmd: &Cmd) -> Result<CmdOutput, CommandError> {
        let fail = |e: std::io::Error| CommandError {
            command: cmd.to_string(),
            stderr: format!("cannot run it: {e}"),
        };
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(fail)?;
        if let (Some(input), Some(mut pipe)) = (&cmd.stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(fail)?;
        }
        let out = child.wait_with_output().map_err(fail)?;
        Ok(CmdOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Runs `cmd` through `runner` and requires success; returns its stdout.
pub fn run_ok(runner: &impl Runner, cmd: &Cmd) -> Result<String, CommandError> {
    let out = runner.run(cmd)?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(CommandError {
            command: cmd.to_string(),
            stderr: one_line(&out.stderr),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_runner_reports_status_output_and_stdin() {
        let out = System
            .run(&Cmd::new("cat", &[] as &[&str]).stdin("hi\n".into()))
            .unwrap();
        assert!(out.success);
        assert_eq!(out.stdout, "hi\n");
        let cmd = Cmd::new("sh", &["-c", "echo a >&2; echo b >&2; exit 3"]);
        let err = run_ok(&System, &cmd).unwrap_err();
        assert_eq!(
            err.to_string(),
            "command `sh -c echo a >&2; echo b >&2; exit 3` failed: a; b"
        );
        let err = System
            .run(&Cmd::new("/nonexistent/ip", &["x"]))
            .unwrap_err();
        assert!(err.stderr.starts_with("cannot run it"), "{err}");
    }
}
