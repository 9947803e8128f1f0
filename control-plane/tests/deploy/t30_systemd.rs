//! `deploy/systemd/`: `systemd-analyze verify` reads each unit (the template as instance `@1`)
//! without a complaint other than the binaries not being installed on this machine; a typo in a
//! directive is caught the same way.

use std::path::Path;
use std::process::Command;

/// `systemd-analyze verify`'s complaints about `unit` (named `name` in a scratch directory),
/// without the ones about the binaries this build machine has not installed.
fn complaints(name: &str, text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze: {e}"));
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("is not executable: No such file or directory"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn units_verify() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    for (file, instance) in [
        (
            "palisade-controlplane@.service",
            "palisade-controlplane@1.service",
        ),
        ("palisade-agent.service", "palisade-agent.service"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).expect("read unit");
        assert!(text.contains("NoNewPrivileges=yes"), "{file}: not hardened");
        let c = complaints(instance, &text);
        assert!(c.is_empty(), "{file}: {c:#?}");
        let typo = text.replacen("NoNewPrivileges=yes", "NoNewPrivilege=yes", 1);
        let c = complaints(instance, &typo);
        assert!(
            c.iter().any(|l| l.contains("NoNewPrivilege")),
            "{file}: the typo went unnoticed: {c:#?}"
        );
    }
}
