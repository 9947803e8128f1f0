use std::process::Command;

use palisade_lab::exec::list_netns;

fn lab_name() -> String {
    format!("badin-{}", std::process::id())
}

/// Runs `palisade <args>` and asserts: exit code 2, stderr is exactly one `error: ...` line that
/// mentions `needle`, nothing on stdout, and no namespace of the test lab exists afterwards.
fn rejects(args: &[&str], needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env("PALISADE_LAB", lab_name())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: `{needle}` not in: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?}: stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let prefix = format!("pal-{}-", lab_name());
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "{args:?} left {left:?}");
}

#[test]
fn lab_up_bad_input() {
    rejects(&["lab", "up", "--nodes", "0"], "--nodes");
    rejects(&["lab", "up", "--nodes", "251"], "--nodes");
    rejects(
        &["lab", "up", "--nodes", "245"],
        "does not fit the underlay",
    );
    rejects(&["lab", "up", "--nodes", "two"], "--nodes");
    rejects(&["lab", "up", "--pods-per-node", "0"], "--pods-per-node");
    rejects(&["lab", "up", "--pods-per-node", "201"], "--pods-per-node");
    rejects(&["lab", "up", "--serve-tcp", "0"], "out of range");
    rejects(&["lab", "up", "--serve-tcp", "80,80"], "listed twice");
    rejects(&["lab", "up", "--serve-udp", ""], "empty port");
    rejects(&["lab", "up", "--serve-udp", "dns"], "not a number");
    rejects(
        &["lab", "up", "--underlay-cidr", "10.98.0.1/24"],
        "host bits",
    );
    rejects(
        &["lab", "up", "--underlay-cidr", "10.200.0.0/24"],
        "overlaps",
    );
    rejects(&["lab", "up", "--name", "Upper"], "invalid lab name");
    rejects(
        &[
            "lab",
            "up",
            "--name",
            "a-name-that-is-far-too-long-for-a-lab",
        ],
        "longer than 24",
    );
    rejects(&["lab", "up", "--name", "-x"], "-x");
    rejects(&["lab", "up", "extra"], "unexpected argument");
    rejects(&["lab", "up", "--bogus"], "unexpected argument");
}

#[test]
fn lab_other_commands_bad_input() {
    rejects(&["lab", "status"], "does not exist");
    rejects(&["lab", "status", "-o", "xml"], "xml");
    rejects(&["lab", "down", "--name", "UPPER"], "invalid lab name");
    rejects(&["lab", "probe", "n1-p1"], "missing FROM and TO");
    rejects(&["lab", "probe", "n1-p1", "n1-p2"], "does not exist");
    rejects(
        &["lab", "probe", "n1-p1", "n1-p2", "--port", "0"],
        "out of range",
    );
    rejects(
        &["lab", "probe", "n1-p1", "n1-p2", "--protocol", "sctp"],
        "unknown protocol",
    );
    rejects(
        &["lab", "probe", "n1-p1", "n1-p2", "--timeout", "1x"],
        "invalid timeout",
    );
    rejects(&["lab", "matrix", "--port", "70000"], "out of range");
    rejects(&["lab", "matrix", "--protocol", "icmp"], "unknown protocol");
    rejects(&["lab", "matrix", "--timeout", "0s"], "greater than zero");
    rejects(&["lab", "matrix"], "does not exist");
    // A missing subcommand prints the help (on stderr) and exits 2.
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("lab")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn workload_bad_input() {
    rejects(&["workload", "serve", "--tcp", "0"], "out of range");
    rejects(&["workload", "serve", "--tcp", "65536"], "out of range");
    rejects(&["workload", "serve", "--udp", "abc"], "not a number");
    rejects(&["workload", "serve", "--tcp", ""], "empty port");
    rejects(&["workload", "serve", "--tcp", "80,,81"], "empty port");
    rejects(&["workload", "serve", "--udp", "53,53"], "listed twice");
    rejects(&["workload", "serve"], "nothing to serve");
    rejects(&["workload", "probe", "--port", "80"], "missing --to");
    rejects(
        &["workload", "probe", "--to", "1.2.3", "--port", "80"],
        "not an IP address",
    );
    rejects(
        &["workload", "probe", "--to", "127.0.0.1"],
        "missing --port",
    );
    rejects(
        &["workload", "probe", "--to", "127.0.0.1", "--port", "0"],
        "out of range",
    );
    rejects(
        &[
            "workload",
            "probe",
            "--to",
            "127.0.0.1",
            "--port",
            "80",
            "--protocol",
            "sctp",
        ],
        "unknown protocol",
    );
    rejects(
        &[
            "workload",
            "probe",
            "--to",
            "127.0.0.1",
            "--port",
            "80",
            "--timeout",
            "1x",
        ],
        "invalid timeout",
    );
    rejects(
        &[
            "workload",
            "probe",
            "--to",
            "127.0.0.1",
            "--port",
            "80",
            "--timeout",
            "-1s",
        ],
        "unexpected argument",
    );
}

#[test]
fn help_explains_the_address_plan() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["lab", "up", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Address plan",
        "pal-L-n<i>-p<j>",
        "10.98.0.(10+i)",
        "10.200.i.(10+j)",
        "169.254.1.1",
        "lab down",
    ] {
        assert!(
            text.contains(needle),
            "`{needle}` missing from lab up --help:\n{text}"
        );
    }
    for sub in ["status", "down", "probe", "matrix"] {
        let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["lab", sub, "--help"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "lab {sub} --help");
    }
}
