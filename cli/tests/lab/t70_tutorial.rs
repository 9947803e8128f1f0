//! The zero-trust tutorial (`make demo`) as a test: the same binary, the same policy files, the
//! same probes; any result that differs from its expectation fails the test.

use crate::util::{lab_name, namespaces_of, palisade};

#[test]
fn the_zero_trust_tutorial_passes_end_to_end() {
    let lab = lab_name("zt");
    let started = std::time::Instant::now();
    let out = palisade(&["tutorial", "--lab", &lab, "--quiet", "--down"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left = namespaces_of(&lab);
    if !left.is_empty() {
        let _ = palisade(&["lab", "down", "--name", &lab]);
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "tutorial failed:\n{stdout}\n{stderr}"
    );
    // Every step printed its table and none had a mismatch; the checklist passed as a whole.
    for step in 0..=9 {
        assert!(
            stdout.contains(&format!("== Step {step}:")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(!stdout.contains('✗'), "{stdout}");
    let checks = stdout
        .lines()
        .filter(|l| l.contains(" PASS ") || l.contains(" FAIL "))
        .collect::<Vec<_>>();
    assert_eq!(checks.len(), 5, "{stdout}");
    assert!(checks.iter().all(|l| l.contains(" PASS ")), "{stdout}");
    // The L7 step really was answered by the proxy, and the service-account step really changed
    // the impostor's verdict (the table shows the tool output, not only the expectation).
    assert!(
        stdout.contains("403 denied (403 Access denied)"),
        "{stdout}"
    );
    assert!(stdout.contains("allowed (PONG)"), "{stdout}");
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    eprintln!("tutorial passed in {:.0?}", started.elapsed());
}
