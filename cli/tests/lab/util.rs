//! Shared helpers: the binary, unique lab names and the "nothing left" assertion.

use std::path::PathBuf;
use std::process::{Command, Output};

use palisade_lab::exec::list_netns;
use palisade_lab::procs::is_alive;
use palisade_lab::state::{netns_prefix, state_dir};
use palisade_lab::{Lab, ProcessRecord};

/// The palisade binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_palisade"))
}

/// Runs the binary.
pub fn palisade(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// `palisade policy apply --lab LAB -f -` with `yaml` on standard input, as a user pipes a
/// manifest in; asserts it exited 0 (waiting for the nodes is the caller's, with its timeout).
pub fn apply_policy(lab: &str, yaml: &str) {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(["policy", "apply", "--lab", lab, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn palisade policy apply");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(yaml.as_bytes())
            .expect("write the manifest");
    }
    let out = child.wait_with_output().expect("palisade policy apply");
    assert_eq!(
        out.status.code(),
        Some(0),
        "policy apply --lab {lab}: {out:?}"
    );
}

/// Runs the binary, asserts it exited 0, and returns its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = palisade(args);
    assert_eq!(out.status.code(), Some(0), "palisade {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lab up` of `nodes` nodes with `pods` pods each (the lab's defaults otherwise: a 3-voter
/// control plane, WireGuard) and `extra` flags: the lab's name, the guard that removes it, and
/// its state.
pub fn lab_up(
    tag: &str,
    nodes: usize,
    pods: usize,
    extra: &[&str],
) -> (String, Cleanup, palisade_lab::LabState) {
    let name = lab_name(tag);
    let _ = Lab::down(&name);
    let cleanup = Cleanup(name.clone());
    let (nodes, pods) = (nodes.to_string(), pods.to_string());
    let mut args = vec![
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        &nodes,
        "--pods-per-node",
        &pods,
    ];
    args.extend_from_slice(extra);
    ok(&args);
    let st = Lab::load(&name).expect("state").state().clone();
    (name, cleanup, st)
}

/// A lab name unique to this test process and tag (`tag` ≤ 12 chars).
pub fn lab_name(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// The namespaces of `lab` that exist now.
pub fn namespaces_of(lab: &str) -> Vec<String> {
    let prefix = netns_prefix(lab);
    list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Tears `lab` down and asserts that no namespace, state directory or process remains.
pub fn down_and_assert_gone(lab: &str, processes: &[ProcessRecord]) {
    let report = Lab::down(lab).unwrap();
    assert!(report.state_dir_removed, "{report:?}");
    assert_eq!(
        namespaces_of(lab),
        Vec::<String>::new(),
        "namespaces of `{lab}` left behind"
    );
    assert!(!state_dir(lab).exists(), "state dir of `{lab}` left behind");
    for p in processes {
        assert!(
            !is_alive(p.pid, p.start_time),
            "process {p:?} survived down"
        );
    }
}

/// Tears the lab down when dropped, so a failing test leaves nothing behind either.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}
