//! `palisade lab test` over the project's own policy suites: every case probed on real packets
//! through a lab running the whole product (control plane, agents, CNI-made pods, eBPF) must
//! agree with the suite's expectation and the engine's offline verdict (the command exits 0
//! only then). Needs root; `make test` runs it as root.

use std::process::Command;

#[test]
fn every_suite_passes_on_real_packets_with_offline_verdicts() {
    let suites = concat!(env!("CARGO_MANIFEST_DIR"), "/../policy/tests/suites");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["lab", "test", suites])
        .output()
        .expect("run palisade lab test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = stdout.lines().filter(|l| l.contains(" FAIL ")).collect();
    assert!(
        out.status.success() && failures.is_empty(),
        "lab test failed ({}):\n{}\nstderr:\n{}",
        out.status,
        failures.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or_default();
    let passed: usize = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 300,
        "expected hundreds of probed cases, got: {summary}"
    );
    // L7 cases go through the agents' HTTP proxy, which refuses what the rules do not allow.
    assert!(
        stdout.contains("HTTP 403 Access denied (the proxy)") && stdout.contains("HTTP 200"),
        "HTTP cases were probed through the proxy:\n{stdout}"
    );
    // DNS cases go through the agents' DNS proxy to the pods' name servers, over UDP and TCP.
    assert!(
        stdout.contains("over UDP")
            && stdout.contains("over TCP")
            && stdout.contains("DNS NOERROR"),
        "DNS cases were probed through the proxy:\n{stdout}"
    );
}

#[test]
fn invalid_suite_is_rejected_before_any_lab_exists() {
    let dir = std::env::temp_dir().join(format!("pal-labtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "endpoints:\n  - {name: x/a, bogus: 1}\ncases: []\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["lab", "test", bad.to_str().expect("utf8")])
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "invalid input exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus"), "the error names the field: {err}");
}
