//! Where the CLI looks for the control plane: flags, `PALISADE_SERVER`, several servers with one
//! dead, and none reachable.

use crate::fixture::{ControlPlane, free_port, run};

#[test]
fn unreachable_servers_are_named_on_one_line() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = run(&["policy", "list", "--server", &dead], &[], None);
    let line = out.error_line(2);
    assert!(
        line.contains(&format!("no control-plane server answered (tried {dead})")),
        "{line}"
    );
    assert!(line.contains("cannot connect"), "{line}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // From the environment, comma-separated.
    let other = format!("http://127.0.0.1:{}", free_port());
    let out = run(
        &["cluster", "status"],
        &[("PALISADE_SERVER", &format!("{dead},{other}"))],
        None,
    );
    assert!(
        out.error_line(2)
            .contains(&format!("(tried {dead}, {other})")),
        "{out:?}"
    );
    // A malformed URL is refused before any request.
    let out = run(
        &["node", "list", "--server", "https://127.0.0.1:1"],
        &[],
        None,
    );
    assert!(
        out.error_line(2).contains("https needs the cluster CA"),
        "{out:?}"
    );
}

#[test]
fn a_dead_server_first_fails_over_to_the_next() {
    let cp = ControlPlane::start("failover");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = run(
        &[
            "cluster", "status", "-o", "json", "--server", &dead, "--server", &cp.url,
        ],
        &[],
        None,
    );
    let s: serde_json::Value = serde_json::from_str(out.ok()).expect("JSON");
    assert_eq!(s["state"], "leader");
    // The --server flag wins over the environment.
    let out = run(
        &["policy", "list", "--server", &cp.url],
        &[("PALISADE_SERVER", &dead)],
        None,
    );
    assert!(out.ok().contains("policy revision 0"), "{out:?}");
}
