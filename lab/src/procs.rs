//! Processes of the lab: detached starts inside a namespace, liveness (pid + start time, so a
//! reused pid is not mistaken for ours), the pids inside namespaces, and SIGKILL.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::LabError;

/// Where `ip netns` keeps namespace mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Starts `ip netns exec <netns> <program> <args>` (or just `<program> <args>` when `netns` is
/// `None`) detached: own process group, stdin from /dev/null, stdout and stderr appended to
/// `log`. `ip netns exec` execs in place, so the pid returned is the program's. A thread reaps it
/// when it exits, so a long-lived caller (a test binary) never keeps zombies around.
pub fn spawn_detached(
    netns: Option<&str>,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<u32, LabError> {
    let open = |action| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| LabError::Io {
                action,
                path: log.to_path_buf(),
                source,
            })
    };
    let out: File = open("open log")?;
    let err = out.try_clone().map_err(|source| LabError::Io {
        action: "open log",
        path: log.to_path_buf(),
        source,
    })?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| LabError::Command {
        command: format!(
            "{}{} {}",
            netns
                .map(|n| format!("ip netns exec {n} "))
                .unwrap_or_default(),
            program.display(),
            args.join(" ")
        ),
        status: "not started".to_string(),
        stderr: e.to_string(),
    })?;
    let pid = child.id();
    let log = log.to_path_buf();
    thread::spawn(move || {
        // How it ended goes into its log, so a process found gone later says whether it exited,
        // crashed (SIGSEGV, SIGABRT) or was killed (SIGKILL: by a test, or by someone else).
        // Only while this process lives: a `palisade lab up` that returned leaves its children
        // to init.
        if let Ok(status) = child.wait()
            && let Ok(mut f) = OpenOptions::new().append(true).open(&log)
        {
            use std::io::Write;
            let _ = writeln!(f, "palisade lab: process {pid} ended: {status}");
        }
    });
    Ok(pid)
}

/// A process's kernel start time (field 22 of `/proc/<pid>/stat`) and state letter.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The start time to record for a freshly started pid.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// True if `pid` runs and, when given, started at `start_time`.
///
/// A zombie is gone only once it is its last thread. SIGKILL ends a process's threads one by
/// one: the main thread can be a zombie while others are still on their way out, and the open
/// files (listening sockets, map fds) are closed only when the last of them exits. Until then a
/// process started in its place cannot bind the same port: an agent restarted at once after
/// its predecessor "died" failed on `--metrics-listen` with "Address already in use" on a
/// loaded machine (issue 8).
pub fn is_alive(pid: u32, start_time: Option<u64>) -> bool {
    match stat(pid) {
        Some((state, t)) if start_time.is_none_or(|s| s == t) => {
            !matches!(state, 'Z' | 'X' | 'x') || threads(pid) > 1
        }
        _ => false,
    }
}

/// How many threads of `pid` are left (`/proc/<pid>/task`; 0 once it is gone).
fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Sends SIGKILL; a process that is already gone is not an error.
pub fn kill_now(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Waits until none of `pids` is alive, up to `limit`; returns the ones still alive.
pub fn wait_gone(pids: &[u32], limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| is_alive(*p, None))
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pids inside each of `namespaces` (like `ip netns pids`, for all of them in one /proc scan).
pub fn pids_in_netns(namespaces: &[String]) -> BTreeMap<String, Vec<u32>> {
    let mut by_inode = BTreeMap::new();
    for ns in namespaces {
        if let Ok(m) = fs::metadata(Path::new(NETNS_RUN_DIR).join(ns)) {
            by_inode.insert((m.dev(), m.ino()), ns.clone());
        }
    }
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    if by_inode.is_empty() {
        return out;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(m) = fs::metadata(e.path().join("ns/net"))
            && let Some(ns) = by_inode.get(&(m.dev(), m.ino()))
        {
            out.entry(ns.clone()).or_default().push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_uses_pid_and_start_time() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert!(is_alive(me, None));
        assert!(is_alive(me, Some(t)));
        assert!(
            !is_alive(me, Some(t + 1)),
            "a reused pid must not look alive"
        );
        assert!(!is_alive(u32::MAX, None));
        assert!(wait_gone(&[u32::MAX], Duration::from_millis(1)).is_empty());
    }

    /// A process whose main thread has exited while another still runs (what SIGKILL goes
    /// through on a multi-threaded agent): still holding its files, so still alive.
    #[test]
    fn a_zombie_main_thread_with_live_threads_is_alive() {
        let dir = std::env::temp_dir().join(format!("palisade-procs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("leader.c");
        let bin = dir.join("leader");
        fs::write(
            &src,
            "#include <pthread.h>\n#include <unistd.h>\n\
             static void *hold(void *a) { (void)a; sleep(2); return 0; }\n\
             int main(void) { pthread_t t; pthread_create(&t, 0, hold, 0); pthread_exit(0); }\n",
        )
        .unwrap();
        let cc = Command::new("cc")
            .args(["-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("cc");
        assert!(cc.success());
        let mut child = Command::new(&bin).spawn().expect("spawn");
        let pid = child.id();
        let t = start_time(pid);
        // The main thread exits at once; the other sleeps 2 s.
        let deadline = Instant::now() + Duration::from_secs(1);
        while stat(pid).is_some_and(|(s, _)| s != 'Z') {
            assert!(Instant::now() < deadline, "main thread never exited");
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(threads(pid), 2);
        assert!(is_alive(pid, t), "a thread still runs: not gone");
        assert!(!wait_gone(&[pid], Duration::from_millis(100)).is_empty());
        // The last thread exits: now it is gone (a zombie until reaped, but nothing held).
        assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
        assert!(!is_alive(pid, t));
        let _ = child.wait();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_namespaces_have_no_pids() {
        assert!(pids_in_netns(&["pal-no-such-lab-n1".to_string()]).is_empty());
    }
}
