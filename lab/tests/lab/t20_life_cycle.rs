use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

use palisade_lab::exec::ip;
use palisade_lab::{Lab, LabError, LabSpec, Phase, ProcessRole};

use crate::util::{Cleanup, assert_nothing_left, lab_name, namespaces_of};

/// A lab without servers needs no palisade binary: `/bin/true` stands in.
fn serverless(name: &str, nodes: usize, pods: usize) -> LabSpec {
    let mut s = LabSpec::new(name, nodes, pods, "/bin/true");
    s.serve_tcp.clear();
    s.serve_udp.clear();
    s
}

#[test]
fn down_sweeps_what_a_crash_left_without_state() {
    let name = lab_name("crash");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    let (node, pod) = (format!("pal-{name}-n1"), format!("pal-{name}-n1-p1"));
    ip(&["netns", "add", &node]).unwrap();
    ip(&["netns", "add", &pod]).unwrap();
    // A stray process inside a pod namespace, in its own process group like lab servers.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &pod, "sleep", "300"])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Wait until `ip netns exec` has entered the namespace and exec'd sleep.
    let pid = child.id();
    for _ in 0..100 {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let report = Lab::down(&name).unwrap();
    assert_eq!(report.namespaces_removed.len(), 2, "{report:?}");
    assert_eq!(report.processes_killed, vec![pid]);
    assert!(!report.state_dir_removed);
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert_nothing_left(&name);

    // Idempotent: a second down finds nothing and succeeds.
    assert!(Lab::down(&name).unwrap().nothing_to_remove());
}

#[test]
fn up_refuses_an_existing_lab_and_leaves_it_alone() {
    let name = lab_name("exists");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    let lab = Lab::up(&serverless(&name, 2, 2)).unwrap();
    assert_eq!(lab.state().phase, Phase::Ready);
    assert_eq!(namespaces_of(&name).len(), 1 + 2 + 4);
    let loaded = Lab::load(&name).unwrap();
    assert_eq!(loaded.state(), lab.state());

    let err = Lab::up(&serverless(&name, 1, 1)).unwrap_err();
    assert!(matches!(err, LabError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        namespaces_of(&name).len(),
        7,
        "the existing lab was touched"
    );

    // The pod plumbing is in place: address, link-local gateway with a pinned MAC, node routes.
    let pod = lab.state().pod("n2-p1").unwrap();
    let routes = ip(&["-n", &pod.netns, "route"]).unwrap();
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    let neigh = ip(&["-n", &pod.netns, "neigh", "show", "169.254.1.1"]).unwrap();
    assert!(neigh.contains("PERMANENT"), "{neigh}");
    let n1 = lab.state().node("n1").unwrap();
    let routes = ip(&["-n", &n1.netns, "route"]).unwrap();
    assert!(
        routes.contains("10.200.2.0/24 via 10.98.0.12 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("10.200.1.11 dev lxc1"), "{routes}");

    let report = Lab::down(&name).unwrap();
    assert_eq!(report.namespaces_removed.len(), 7);
    assert!(report.state_dir_removed);
    assert_nothing_left(&name);
}

#[test]
fn up_that_fails_midway_rolls_back_completely() {
    let name = lab_name("rollback");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    // `/bin/false` exits at once instead of serving: the readiness wait fails after the
    // namespaces were built, and everything must be removed.
    let spec = LabSpec::new(&name, 2, 2, "/bin/false");
    let err = Lab::up(&spec).unwrap_err();
    let msg = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        matches!(err, LabError::UpFailed { rollback: None, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("rolled back") && msg.contains("server exited"),
        "{msg}"
    );
    assert_nothing_left(&name);
}

#[test]
fn bad_specs_touch_nothing() {
    let name = lab_name("badspec");
    for spec in [
        LabSpec::new(&name, 0, 1, "/bin/true"),
        LabSpec::new(&name, 1, 201, "/bin/true"),
        LabSpec::new(&name, 245, 1, "/bin/true"),
        LabSpec::new(&name, 1, 1, "/nonexistent/palisade"),
        LabSpec::new("Bad_Name", 1, 1, "/bin/true"),
    ] {
        let err = Lab::up(&spec).unwrap_err();
        assert!(
            matches!(
                err,
                LabError::InvalidSpec { .. } | LabError::InvalidName { .. }
            ),
            "{err}"
        );
        assert_nothing_left(&spec.name.to_lowercase().replace('_', "-"));
    }
    assert!(matches!(
        Lab::down("Bad_Name"),
        Err(LabError::InvalidName { .. })
    ));
    assert!(matches!(Lab::load(&name), Err(LabError::NotFound { .. })));
}

#[test]
fn spawned_processes_are_recorded_and_killed_by_down() {
    let name = lab_name("spawn");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    let mut lab = Lab::up(&serverless(&name, 1, 1)).unwrap();
    let node_ns = lab.state().nodes[0].netns.clone();
    let sleep = std::path::Path::new("/bin/sleep");
    let args = vec!["300".to_string()];
    let in_node = lab
        .spawn(
            ProcessRole::NodeAgent,
            "agent-n1",
            Some(&node_ns),
            sleep,
            &args,
        )
        .unwrap();
    // A process in the root namespace is found through its record alone.
    let in_root = lab
        .spawn(ProcessRole::Other, "helper", None, sleep, &args)
        .unwrap();
    assert!(Lab::process_alive(&in_node) && Lab::process_alive(&in_root));
    let on_disk = Lab::load(&name).unwrap();
    assert_eq!(
        on_disk.state().processes,
        vec![in_node.clone(), in_root.clone()]
    );
    assert!(in_node.log.ends_with("logs/agent-n1.log"));

    let report = Lab::down(&name).unwrap();
    assert!(report.processes_killed.contains(&in_node.pid), "{report:?}");
    assert!(report.processes_killed.contains(&in_root.pid), "{report:?}");
    for p in [&in_node, &in_root] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while Lab::process_alive(p) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!Lab::process_alive(p), "{p:?} survived down");
    }
    assert_nothing_left(&name);
}

#[test]
fn unreadable_state_is_reported_and_down_still_cleans_up() {
    let name = lab_name("corrupt");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    Lab::up(&serverless(&name, 1, 1)).unwrap();
    let file = palisade_lab::state::state_file(&name);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 99");
    std::fs::write(&file, text).unwrap();
    let err = Lab::load(&name).unwrap_err();
    assert!(matches!(err, LabError::CorruptState { .. }), "{err}");
    std::fs::write(&file, "{ not json").unwrap();
    assert!(matches!(
        Lab::load(&name),
        Err(LabError::CorruptState { .. })
    ));
    let report = Lab::down(&name).unwrap();
    assert_eq!(report.namespaces_removed.len(), 3);
    assert_nothing_left(&name);
}
