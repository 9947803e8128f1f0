//! `palisade lab up` runs Palisade: a 3-voter control plane over mutual TLS, an agent per node,
//! pods made by the CNI plugin. A policy applied with `palisade policy apply --lab` is enforced
//! on real packets once `palisade policy wait --lab` returns; deleting it reopens the path; the
//! agents' certificates act for their own node only; `down` leaves nothing (pins included).

use palisade_lab::Lab;
use palisade_lab::state::pin_root;

use crate::util::{Cleanup, apply_policy, down_and_assert_gone, lab_name, ok, palisade};

/// n1-p2 accepts TCP 80 only from n2-p1 (on the other node).
const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p2-from-n2-p1}
spec:
  endpointSelector: {matchLabels: {app: n1-p2}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: n2-p1}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

fn reachable(lab: &str, from: &str, to: &str) -> bool {
    let out = palisade(&["lab", "probe", "--name", lab, from, to, "--port", "80"]);
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("probe {from} {to}: {out:?}"),
    }
}

#[test]
fn a_policy_applied_to_the_labs_control_plane_is_enforced_on_every_node() {
    let name = lab_name("clu");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    let up = ok(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
    ]);
    assert!(up.contains("3 voter(s)"), "{up}");
    let lab = Lab::load(&name).expect("state");
    let cluster = lab.state().cluster.clone().expect("the lab runs Palisade");
    assert!(cluster.api_urls.iter().all(|u| u.starts_with("https://")));
    // Pods were made by the CNI plugin: its host-side interface names, its registrations.
    for pod in &lab.state().pods {
        assert!(
            pod.host_iface.starts_with("lxc") && pod.host_iface.len() == 14,
            "{pod:?}"
        );
    }
    let nodes = ok(&["node", "list", "--lab", &name, "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&nodes).expect("json");
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(2), "{nodes}");
    let status = ok(&["cluster", "status", "--lab", &name, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert!(status["leader"].as_u64().is_some(), "{status}");
    assert_eq!(
        status["voters"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );

    assert!(reachable(&name, "n1-p1", "n1-p2") && reachable(&name, "n2-p2", "n1-p2"));
    apply_policy(&name, POLICY);
    ok(&["policy", "wait", "--lab", &name, "--timeout", "20s"]);
    assert!(reachable(&name, "n2-p1", "n1-p2"), "allowed across nodes");
    assert!(
        !reachable(&name, "n1-p1", "n1-p2"),
        "same node, not selected"
    );
    assert!(
        !reachable(&name, "n2-p2", "n1-p2"),
        "other node, not selected"
    );
    assert!(
        reachable(&name, "n1-p2", "n2-p2"),
        "egress of n1-p2 is open"
    );

    // kubectl against the lab's control plane with `palisade kubeconfig --lab` (kubectl runs in
    // the control plane's host namespace, where the lab's addresses exist).
    let kubeconfig = std::env::temp_dir().join(format!("{name}-kubeconfig"));
    ok(&[
        "kubeconfig",
        "--lab",
        &name,
        "-o",
        kubeconfig.to_str().expect("utf8"),
    ]);
    let got = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &cluster.cp_netns,
            "kubectl",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .args(["get", "cnp", "-A", "-o", "json"])
        .output()
        .expect("kubectl");
    let _ = std::fs::remove_file(&kubeconfig);
    let list: serde_json::Value = serde_json::from_slice(&got.stdout)
        .unwrap_or_else(|e| panic!("kubectl get cnp: {e}: {got:?}"));
    let names: Vec<(&str, &str)> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["metadata"]["namespace"].as_str().unwrap_or(""),
                i["metadata"]["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(names, [("default", "p2-from-n2-p1")], "{list}");

    // `palisade status` (cilium status): every agent connected and enforcing the revision.
    let st = ok(&["status", "--lab", &name, "-o", "json"]);
    let st: serde_json::Value = serde_json::from_str(&st).expect("json");
    assert_eq!(st["policy"]["objects"], 1, "{st}");
    assert_eq!(st["problems"].as_array().map(Vec::len), Some(0), "{st}");
    let agents = st["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 2, "{st}");
    for a in agents {
        assert_eq!(a["controlPlane"]["connected"], true, "{a}");
        // The lab's agents follow the members' gRPC change stream (one URL per voter).
        assert_eq!(a["controlPlane"]["feed"]["kind"], "grpc", "{a}");
        assert_eq!(
            a["controlPlane"]["feed"]["members"]
                .as_array()
                .map(Vec::len),
            Some(3),
            "{a}"
        );
        assert_eq!(
            a["controlPlane"]["policyRevision"], st["policy"]["revision"],
            "{a}"
        );
    }

    ok(&[
        "policy",
        "delete",
        "--lab",
        &name,
        "ciliumnetworkpolicy/default/p2-from-n2-p1",
    ]);
    ok(&["policy", "wait", "--lab", &name, "--timeout", "20s"]);
    assert!(reachable(&name, "n2-p2", "n1-p2"), "open again");

    // An agent gone: status says which, and exits 1.
    let agent = lab
        .state()
        .processes
        .iter()
        .find(|p| p.role == palisade_lab::state::ProcessRole::NodeAgent && p.name.contains("n2"))
        .expect("n2's agent")
        .clone();
    palisade_lab::procs::kill_now(agent.pid);
    palisade_lab::procs::wait_gone(&[agent.pid], std::time::Duration::from_secs(5));
    let degraded = palisade(&["status", "--lab", &name]);
    let text = String::from_utf8_lossy(&degraded.stdout);
    assert_eq!(degraded.status.code(), Some(1), "{text}");
    assert!(text.contains("agent n2: "), "{text}");

    let processes = lab.state().processes.clone();
    down_and_assert_gone(&name, &processes);
    assert!(!pin_root(&name).exists(), "pins left behind");
}
