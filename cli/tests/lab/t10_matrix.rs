use std::collections::BTreeSet;
use std::time::Duration;

use palisade_lab::exec::exec_in;
use palisade_lab::{Lab, LabSpec, Outcome, ProcessRole, Protocol};

use crate::util::{Cleanup, bin, down_and_assert_gone, lab_name, palisade};

#[test]
fn tcp_and_udp_matrices_are_all_reachable_then_down_leaves_nothing() {
    let name = lab_name("matrix");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    let mut lab = Lab::up(&LabSpec::new(&name, 2, 3, bin())).unwrap();
    assert_eq!(lab.state().pods.len(), 6);
    assert!(
        lab.state()
            .pods
            .iter()
            .all(|p| lab.server_alive(&p.name) == Some(true))
    );

    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let m = lab.matrix(80, protocol, Duration::from_secs(1)).unwrap();
        assert_eq!(m.pairs.len(), 30);
        let bad: Vec<_> = m.unreachable().collect();
        assert!(m.all_reachable, "{protocol}: {bad:?}");
        // Same node and across nodes are both covered, and the reply names the right pod.
        let same = m.get("n1-p1", "n1-p2").unwrap();
        let across = m.get("n2-p3", "n1-p1").unwrap();
        assert_eq!(
            same.detail,
            format!("palisade-workload n1-p2 {protocol} 80")
        );
        assert_eq!(
            across.detail,
            format!("palisade-workload n1-p1 {protocol} 80")
        );
    }
    // A port nobody serves is refused, not reachable.
    let r = lab
        .probe(
            "n1-p1",
            lab.state().pod("n2-p1").unwrap().ip,
            81,
            Protocol::Tcp,
            Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(r.result, Outcome::Refused, "{r:?}");

    // Fault injection: with n2's underlay down, n2 is cut off from n1 but its pods still talk.
    lab.set_underlay("n2", false).unwrap();
    let t = Duration::from_millis(800);
    let pairs = [("n1-p1", "n2-p1"), ("n2-p1", "n2-p2"), ("n2-p3", "n1-p3")];
    let r = lab.probe_pairs(&pairs, 80, Protocol::Tcp, t).unwrap();
    let reachable: Vec<bool> = r.iter().map(|p| p.reachable).collect();
    assert_eq!(reachable, [false, true, false], "{r:?}");
    lab.set_underlay("n2", true).unwrap();
    let r = lab
        .probe_pairs(&pairs, 80, Protocol::Tcp, Duration::from_secs(1))
        .unwrap();
    assert!(r.iter().all(|p| p.reachable), "{r:?}");
    assert!(
        lab.probe_pairs(&[("n1-p1", "n9-p1")], 80, Protocol::Tcp, t)
            .is_err()
    );
    assert!(lab.set_underlay("n9", false).is_err());
    let addrs = lab
        .exec_in_pod("n2-p2", "ip", &["-br", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(addrs.contains("10.200.2.12/32"), "{addrs}");

    // A helper process recorded through the library shows up in `lab status` and dies in `down`.
    let node_ns = lab.state().nodes[0].netns.clone();
    let sleep = std::path::Path::new("/bin/sleep");
    let helper = lab
        .spawn(
            ProcessRole::Other,
            "helper",
            Some(&node_ns),
            sleep,
            &["300".to_string()],
        )
        .unwrap();
    let out = palisade(&["lab", "status", "--name", &name]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PROCESS") && text.contains("helper") && text.contains("other"),
        "{text}"
    );
    assert!(Lab::process_alive(&helper));

    let processes = lab.state().processes.clone();
    assert_eq!(processes.len(), 7);
    down_and_assert_gone(&name, &processes);
}

#[test]
fn negative_control_drop_rule_fails_exactly_the_affected_pairs() {
    let name = lab_name("negative");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    let lab = Lab::up(&LabSpec::new(&name, 2, 3, bin())).unwrap();
    let victim = lab.state().pod("n1-p2").unwrap().clone();
    let node = lab.state().node(&victim.node).unwrap().netns.clone();
    // Drop everything forwarded to the victim in its node: requests to it die, and so do the
    // replies to anything it sends (probes require the reply), so every pair touching it fails.
    exec_in(&node, "nft", &["add", "table", "inet", "paltest"]).unwrap();
    exec_in(&node, "nft", &["add chain inet paltest forward_chain { type filter hook forward priority 0 ; policy accept ; }"])
        .unwrap();
    exec_in(
        &node,
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "paltest",
            "forward_chain",
            "ip",
            "daddr",
            &victim.ip.to_string(),
            "drop",
        ],
    )
    .unwrap();

    let expected: BTreeSet<(String, String)> = lab
        .state()
        .pods
        .iter()
        .filter(|p| p.name != victim.name)
        .flat_map(|p| {
            [
                (p.name.clone(), victim.name.clone()),
                (victim.name.clone(), p.name.clone()),
            ]
        })
        .collect();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let m = lab
            .matrix(80, protocol, Duration::from_millis(800))
            .unwrap();
        let failed: BTreeSet<(String, String)> = m
            .unreachable()
            .map(|p| (p.from.clone(), p.to.clone()))
            .collect();
        assert_eq!(failed, expected, "{protocol}");
        assert!(
            m.unreachable().all(|p| p.result == Outcome::Timeout),
            "{protocol}: {:?}",
            m.pairs
        );
        assert!(!m.all_reachable);
    }

    // The CLI on the same lab: exit codes 0/1 and JSON that parses.
    let out = palisade(&[
        "lab", "probe", "--name", &name, "n2-p1", "n1-p1", "-o", "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reachable"], true);
    let out = palisade(&[
        "lab",
        "probe",
        "--name",
        &name,
        "n2-p1",
        &victim.name,
        "--timeout",
        "800ms",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = palisade(&[
        "lab",
        "probe",
        "--name",
        &name,
        "n2-p1",
        "10.200.1.11",
        "--protocol",
        "udp",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = palisade(&[
        "lab",
        "matrix",
        "--name",
        &name,
        "--timeout",
        "800ms",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["all_reachable"], false);
    assert_eq!(v["pairs"].as_array().unwrap().len(), 30);
    assert_eq!(
        v["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["reachable"] == false)
            .count(),
        10
    );
    let out = palisade(&["lab", "matrix", "--name", &name, "--timeout", "800ms"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("legend:") && text.contains("summary: 20/30 pairs reachable"),
        "{text}"
    );
    let out = palisade(&["lab", "status", "--name", &name, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pods"].as_array().unwrap().len(), 6);
    assert!(
        v["pods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["server_alive"] == true)
    );

    // No route to a pod CIDR that no node owns: unreachable (ICMP from the node), exit 1.
    let out = palisade(&[
        "lab",
        "probe",
        "--name",
        &name,
        "n2-p1",
        "10.200.9.11",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "unreachable");
    // An unknown pod is bad input: exit 2, one line naming it.
    let out = palisade(&["lab", "probe", "--name", &name, "n9-p9", "n1-p1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no pod `n9-p9`") && err.trim().lines().count() == 1,
        "{err}"
    );

    // `up` on the existing lab: one-line error, exit 2, the lab untouched.
    let out = palisade(&["lab", "up", "--name", &name]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ")
            && err.contains("already exists")
            && err.trim().lines().count() == 1,
        "{err}"
    );

    // Remove the rule: everything is reachable again (the failure was the rule, nothing else).
    exec_in(&node, "nft", &["delete", "table", "inet", "paltest"]).unwrap();
    let out = palisade(&["lab", "matrix", "--name", &name]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let processes = lab.state().processes.clone();
    let out = palisade(&["lab", "down", "--name", &name]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
    let out = palisade(&["lab", "down", "--name", &name]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to remove"));
    for p in &processes {
        assert!(!palisade_lab::procs::is_alive(p.pid, p.start_time));
    }
}
