//! The node agent as a real process in a lab node: endpoints registered over its socket (as the
//! CNI plugin does), policies from its policy directory, enforcement measured with real traffic,
//! policy changes picked up live, invalid policy files ignored whole, endpoints restored after a
//! restart. Needs root; `make test` runs it as root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_api::agent::{AgentRequest, AgentResponse, EndpointSpec};
use palisade_lab::{Lab, LabSpec, ProcessRole, Protocol};
use palisade_node_agent::agent;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

struct Cleanup {
    lab: String,
    dir: PathBuf,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Lab::down(&self.lab);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ingress to n1-p2 only from n1-p1 on TCP 80 (a NetworkPolicy, as kubectl would apply it).
const ALLOW_P1_TO_P2: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2-from-p1, namespace: default}
spec:
  podSelector: {matchLabels: {app: n1-p2}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: n1-p1}}}]
      ports: [{port: 80, protocol: TCP}]
";

/// Default deny ingress for n1-p1.
const ISOLATE_P1: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-p1, namespace: default}
spec:
  podSelector: {matchLabels: {app: n1-p1}}
  policyTypes: [Ingress]
";

fn spawn_agent(lab: &mut Lab, socket: &Path, state: &Path, policies: &Path) -> u32 {
    let node = lab.state().nodes[0].clone();
    let args: Vec<String> = [
        "agent",
        "run",
        "--node",
        &node.name,
        "--pod-cidr",
        &node.pod_cidr.to_string(),
        "--node-ip",
        &node.underlay_ip.to_string(),
        "--socket",
        socket.to_str().expect("utf8"),
        "--state-dir",
        state.to_str().expect("utf8"),
        "--policy-dir",
        policies.to_str().expect("utf8"),
        "--small-maps",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rec = lab
        .spawn(
            ProcessRole::NodeAgent,
            "agent-n1",
            Some(&node.netns),
            Path::new(BIN),
            &args,
        )
        .expect("spawn agent");
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent::request(socket, &AgentRequest::Status {}).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent did not start; see {}",
            rec.log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rec.pid
}

fn reachable(lab: &Lab, from: &str, to: &str) -> bool {
    let ip = lab.state().pod(to).expect("pod").ip;
    lab.probe(from, ip, 80, Protocol::Tcp, Duration::from_millis(600))
        .expect("probe")
        .reachable
}

/// Waits (up to 5 s) until `from → to` has the wanted reachability; returns whether it did.
fn eventually(lab: &Lab, from: &str, to: &str, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if reachable(lab, from, to) == want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(socket: &Path) -> serde_json::Value {
    match agent::request(socket, &AgentRequest::Status {}).expect("status") {
        AgentResponse::Status { status } => status,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn agent_enforces_directory_policy_for_registered_endpoints_and_survives_restart() {
    let name = format!("agt{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("pal-agent-{}", std::process::id()));
    let _cleanup = Cleanup {
        lab: name.clone(),
        dir: dir.clone(),
    };
    let (socket, state, policies) = (
        dir.join("agent.sock"),
        dir.join("state"),
        dir.join("policies"),
    );
    std::fs::create_dir_all(&policies).expect("dirs");
    std::fs::write(policies.join("p2.yaml"), ALLOW_P1_TO_P2).expect("policy");

    let mut lab = Lab::up(&LabSpec::new(&name, 1, 3, BIN)).expect("lab up");
    let pid = spawn_agent(&mut lab, &socket, &state, &policies);

    // IPAM answers from the node's pod CIDR.
    let cidr = lab.state().nodes[0].pod_cidr;
    match agent::request(
        &socket,
        &AgentRequest::IpamAllocate {
            container_id: "c-x".into(),
            ifname: "eth0".into(),
            requested: None,
        },
    )
    .expect("ipam")
    {
        AgentResponse::IpamAllocated {
            ip: std::net::IpAddr::V4(ip),
            prefix: 32,
            ..
        } => assert!(cidr.contains(ip), "{ip} in {cidr}"),
        other => panic!("unexpected {other:?}"),
    }

    // Before registration nothing is policed.
    assert!(
        reachable(&lab, "n1-p3", "n1-p2"),
        "unregistered pods are not policed"
    );
    for pod in lab.state().pods.clone() {
        let spec = EndpointSpec {
            container_id: format!("c-{}", pod.name),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{}", pod.netns),
            host_iface: pod.host_iface.clone(),
            pod_namespace: "default".into(),
            pod_name: pod.name.clone(),
            labels: BTreeMap::from([("app".to_string(), pod.name.clone())]),
            service_account: None,
            ips: vec![pod.ip],
        };
        match agent::request(&socket, &AgentRequest::EndpointAdd(spec)).expect("endpoint add") {
            AgentResponse::EndpointAdded { identity, .. } => {
                assert!(identity > 255, "a cluster identity")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(reachable(&lab, "n1-p1", "n1-p2"), "allowed by p2-from-p1");
    assert!(!reachable(&lab, "n1-p3", "n1-p2"), "p2 is isolated from p3");
    assert!(
        reachable(&lab, "n1-p2", "n1-p1"),
        "p1 is not selected: open"
    );
    assert_eq!(
        status(&socket)["endpoints"].as_array().map(Vec::len),
        Some(3)
    );

    // A policy added to the directory is enforced without a restart.
    std::fs::write(policies.join("p1.yaml"), ISOLATE_P1).expect("policy");
    assert!(
        eventually(&lab, "n1-p2", "n1-p1", false),
        "isolate-p1 takes effect"
    );
    assert!(
        reachable(&lab, "n1-p1", "n1-p2"),
        "p2-from-p1 still applies"
    );

    // An invalid file is not applied at all; what was in force stays.
    std::fs::write(policies.join("bad.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: default}\nspec: {podSelector: {}, bogus: 1}\n").expect("bad");
    std::thread::sleep(Duration::from_millis(1500));
    let st = status(&socket);
    assert!(
        st["policyError"]
            .as_str()
            .is_some_and(|e| e.contains("bogus")),
        "error names the field: {st}"
    );
    assert!(
        !reachable(&lab, "n1-p2", "n1-p1"),
        "previous policy still enforced"
    );
    assert!(
        !reachable(&lab, "n1-p3", "n1-p2"),
        "previous policy still enforced"
    );
    std::fs::remove_file(policies.join("bad.yaml")).expect("rm");

    // The CLI shows the same endpoints.
    let out = Command::new(BIN)
        .args([
            "endpoint",
            "list",
            "--socket",
            socket.to_str().expect("utf8"),
            "-o",
            "json",
        ])
        .output()
        .expect("cli");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");

    // Restart: the registry is restored and enforcement comes back without new registrations.
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    std::thread::sleep(Duration::from_millis(300));
    spawn_agent(&mut lab, &socket, &state, &policies);
    assert_eq!(
        status(&socket)["endpoints"].as_array().map(Vec::len),
        Some(3),
        "endpoints restored"
    );
    assert!(
        eventually(&lab, "n1-p3", "n1-p2", false),
        "p2 isolated again after restart"
    );
    assert!(reachable(&lab, "n1-p1", "n1-p2"), "and p1 still allowed");

    // Deleting an endpoint is idempotent and stops policing it.
    for _ in 0..2 {
        let r = agent::request(
            &socket,
            &AgentRequest::EndpointDel {
                container_id: "c-n1-p2".into(),
                ifname: "eth0".into(),
            },
        );
        assert!(matches!(r.expect("del"), AgentResponse::Done));
    }
    assert!(
        eventually(&lab, "n1-p3", "n1-p2", true),
        "a deleted endpoint is no longer policed"
    );
}
