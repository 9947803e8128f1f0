//! A control plane that requires bearer tokens: refused without one (clearly), accepted with the
//! token file from the flag or the environment.

use crate::fixture::{ControlPlane, run, scratch};

#[test]
fn tokens_from_a_file() {
    let cp = ControlPlane::start_with_token("auth");
    let token_file = cp.token_file.clone().expect("token file");
    let token_file = token_file.to_str().expect("utf-8");

    let out = cp.palisade(&["policy", "list"]);
    let line = out.error_line(2);
    assert!(line.contains("server refused (401)"), "{line}");
    assert!(line.contains("missing bearer token"), "{line}");
    assert!(line.contains("--token-file"), "{line}");

    let out = cp.palisade(&["policy", "list", "--token-file", token_file]);
    assert!(out.ok().contains("policy revision 0"), "{out:?}");
    let out = run(
        &["cluster", "status"],
        &[
            ("PALISADE_SERVER", &cp.url),
            ("PALISADE_TOKEN_FILE", token_file),
        ],
        None,
    );
    assert!(out.ok().contains("(leader)"), "{out:?}");

    // A wrong token is refused, and the token never shows in the error.
    let dir = scratch("auth-wrong");
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "not-the-admin-token-at-all\n").expect("write");
    let out = cp.palisade(&[
        "node",
        "list",
        "--token-file",
        wrong.to_str().expect("utf-8"),
    ]);
    let line = out.error_line(2);
    assert!(line.contains("invalid bearer token"), "{line}");
    assert!(!line.contains("not-the-admin-token"), "{line}");
    // An unreadable token file is a local error.
    let out = cp.palisade(&["node", "list", "--token-file", "/nonexistent/token"]);
    assert!(
        out.error_line(2)
            .contains("cannot read token file `/nonexistent/token`"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
