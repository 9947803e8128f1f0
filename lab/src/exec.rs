//! Every external command the lab runs goes through one [`Runner`]: the real one ([`System`],
//! [`run_output`]) spawns, collects, and turns a spawn failure into a [`LabError::Command`] naming
//! the command and its stderr; unit tests pass a fake that records commands. Namespaces, links,
//! addresses, routes and sysctls are all set through `ip` (iproute2), via [`Cmds`].

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::LabError;

fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "no error output".to_string()
    } else {
        lines.join("; ")
    }
}

/// Runs a command to completion (feeding `stdin` if given) and returns its output whatever its
/// exit status; only a failure to run it at all is an error.
pub fn run_output(cmd: &mut Command, stdin: Option<&str>) -> Result<Output, LabError> {
    let spawn_err = |cmd: &Command, e: std::io::Error| LabError::Command {
        command: render(cmd),
        status: "not started".to_string(),
        stderr: e.to_string(),
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_err(cmd, e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| spawn_err(cmd, e))?;
    }
    child.wait_with_output().map_err(|e| spawn_err(cmd, e))
}

/// The seam through which the lab runs external commands.
pub trait Runner: Sync {
    /// Runs `cmd` to completion, feeding `stdin`; returns its output whatever its exit status.
    fn output(&self, cmd: &mut Command, stdin: Option<&str>) -> Result<Output, LabError>;
}

/// The real runner: spawns processes ([`run_output`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Runner for System {
    fn output(&self, cmd: &mut Command, stdin: Option<&str>) -> Result<Output, LabError> {
        run_output(cmd, stdin)
    }
}

/// The commands the lab issues, through a [`Runner`].
#[derive(Clone, Copy)]
pub struct Cmds<'a>(pub &'a dyn Runner);

// === impl Cmds ===

impl Cmds<'_> {
    /// Runs a command and requires exit status 0; returns its stdout.
    pub fn run(&self, cmd: &mut Command, stdin: Option<&str>) -> Result<String, LabError> {
        let out = self.0.output(cmd, stdin)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(LabError::Command {
                command: render(cmd),
                status: out.status.to_string(),
                stderr: one_line(&out.stderr),
            })
        }
    }

    /// `ip <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        self.run(Command::new("ip").args(args), None)
    }

    /// `ip -n <netns> -batch -` with one `ip` command per line of `script` (fewer processes).
    pub fn ip_batch(&self, netns: &str, script: &str) -> Result<(), LabError> {
        self.run(
            Command::new("ip").args(["-n", netns, "-batch", "-"]),
            Some(script),
        )
        .map(drop)
    }

    /// `ip netns exec <netns> sysctl -qw <settings...>`.
    pub fn sysctl(&self, netns: &str, settings: &[&str]) -> Result<(), LabError> {
        self.run(
            Command::new("ip")
                .args(["netns", "exec", netns, "sysctl", "-qw"])
                .args(settings),
            None,
        )
        .map(drop)
    }

    /// The MAC address of an interface in a namespace.
    pub fn link_mac(&self, netns: &str, iface: &str) -> Result<String, LabError> {
        let command = format!("ip -n {netns} -j link show dev {iface}");
        let out = self.ip(&["-n", netns, "-j", "link", "show", "dev", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Command {
            command: command.clone(),
            status: "unparsable output".to_string(),
            stderr: e.to_string(),
        })?;
        v.get(0)
            .and_then(|l| l.get("address"))
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .ok_or_else(|| LabError::Command {
                command,
                status: "no address in output".to_string(),
                stderr: out.trim().to_string(),
            })
    }
}

/// Runs a command and requires exit status 0; returns its stdout.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String, LabError> {
    Cmds(&System).run(cmd, stdin)
}

/// `ip <args>` (real runner).
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    Cmds(&System).ip(args)
}

/// `ip -n <netns> -batch -` (real runner).
pub fn ip_batch(netns: &str, script: &str) -> Result<(), LabError> {
    Cmds(&System).ip_batch(netns, script)
}

/// The names of every network namespace (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>, LabError> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Runs `program args...` inside a namespace (`ip netns exec`) and returns its stdout; tests use
/// it to add nftables rules, read counters, and so on.
pub fn exec_in(netns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    run(
        Command::new("ip")
            .args(["netns", "exec", netns, program])
            .args(args),
        None,
    )
}

/// Moves the calling thread into the named network namespace (`/run/netns/<netns>`). Only this
/// thread moves; its mount namespace stays the host's (unlike `ip netns exec`, /sys/fs/bpf
/// stays visible).
pub fn enter_netns(netns: &str) -> Result<(), LabError> {
    let path = std::path::PathBuf::from(format!("/run/netns/{netns}"));
    let file = std::fs::File::open(&path).map_err(|source| LabError::Io {
        action: "open",
        path: path.clone(),
        source,
    })?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Io {
        action: "enter",
        path,
        source: std::io::Error::from(e),
    })
}

/// Runs `f` on a new thread inside the named network namespace (tests, `lab test` and benches
/// use it to hold sockets or datapaths in a node or pod).
pub fn spawn_in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T, LabError>> {
    let netns = netns.to_string();
    std::thread::spawn(move || enter_netns(&netns).map(|()| f()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_and_its_stderr() {
        let err = run(
            Command::new("sh").args(["-c", "echo oops >&2; echo more >&2; exit 3"]),
            None,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("command `sh -c echo oops"), "{msg}");
        assert!(
            msg.contains("exit status: 3") && msg.ends_with("oops; more"),
            "{msg}"
        );
        let err = run(&mut Command::new("/nonexistent/tool"), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("`/nonexistent/tool` failed (not started)"),
            "{err}"
        );
        assert_eq!(run(&mut Command::new("cat"), Some("in\n")).unwrap(), "in\n");
    }
}
