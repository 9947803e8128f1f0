//! The plugin against the real node agent (not [`crate::fake_agent::FakeAgent`]): pods created
//! through CNI get their address from the agent's IPAM, are registered with identities from their
//! labels, and the agent enforces a NetworkPolicy on their real traffic; the policy's port is a
//! named one, resolved from the pod's `args.cni.ports`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_api::agent::{AgentRequest, AgentResponse};
use palisade_node_agent::agent::{self, AgentConfig};
use palisade_node_agent::datapath::DatapathConfig;
use serde_json::json;

use crate::util::{Invocation, Netns, spawn_in, udp_echo, udp_roundtrip};

/// Pod `b` takes its named port `echo` (UDP 9000) only from pods labelled `app=a`.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: default}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: a}}}]
      ports: [{port: echo, protocol: UDP}]
";

fn endpoints(socket: &std::path::Path) -> usize {
    match agent::request(socket, &AgentRequest::Status {}) {
        Ok(AgentResponse::Status { status }) => status["endpoints"].as_array().map_or(0, Vec::len),
        other => panic!("status: {other:?}"),
    }
}

#[test]
fn pods_added_through_cni_are_enforced_by_the_real_agent() {
    let node = Netns::new("anode");
    node.ip(&["link", "set", "lo", "up"]);
    let fwd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status()
        .expect("sysctl");
    assert!(fwd.success());
    let dir = tempfile::tempdir().expect("tmp");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(policies.join("b.yaml"), POLICY).expect("policy");
    let socket = dir.path().join("agent.sock");
    let config = AgentConfig {
        node: "n1".into(),
        pod_cidr: "10.202.0.0/24".parse().expect("cidr"),
        node_ips: Vec::new(),
        socket: socket.clone(),
        state_dir: dir.path().join("state"),
        policy_dir: Some(policies),
        datapath: DatapathConfig::for_test(),
        control_plane: None,
        metrics_listen: None,
        encryption: None,
        hubble_listen: None,
        hubble_tls_dir: None,
        flow_ring_size: palisade_node_agent::agent::DEFAULT_FLOW_RING_SIZE,
        l7_proxy: None,
        gossip: None,
        dns_proxy: None,
    };
    // The agent runs for the rest of the test process, on a thread inside the node namespace.
    let _agent = spawn_in(&node.path(), move || {
        agent::run(config).map_err(|e| e.to_string())
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent::request(&socket, &AgentRequest::Status {}).is_err() {
        assert!(Instant::now() < deadline, "the agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut pods = Vec::new();
    for name in ["a", "b", "c"] {
        let pod = Netns::new(name);
        let ports = if name == "b" {
            json!([{"name": "echo", "containerPort": 9000, "protocol": "UDP"}])
        } else {
            json!([])
        };
        let conf = json!({
            "cniVersion": "1.0.0", "name": "palisade", "type": "palisade-cni",
            "agentSocket": socket, "mtu": 1500,
            "args": {"cni": {"labels": [{"key": "app", "value": name}], "ports": ports}},
        });
        let container = format!("ctr-{name}");
        let pod_args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        let mut add = Invocation::new("ADD", &container, &pod, &conf);
        add.args = &pod_args;
        let result = add.run(Some(&node.name)).success();
        let addr = result["ips"][0]["address"]
            .as_str()
            .expect("address")
            .to_string();
        let ip: Ipv4Addr = addr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("ip");
        assert!(
            addr.starts_with("10.202.0.") && addr.ends_with("/32"),
            "from the agent's IPAM: {addr}"
        );
        pods.push((pod, ip, container, conf));
    }
    assert_eq!(endpoints(&socket), 3, "every pod registered with the agent");

    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    let server = udp_echo(
        &b.0.path(),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9000),
    );
    let b_addr = SocketAddr::new(IpAddr::V4(b.1), 9000);
    assert!(
        udp_roundtrip(&a.0.path(), b_addr),
        "a -> b allowed by b-from-a"
    );
    assert!(
        !udp_roundtrip(&c.0.path(), b_addr),
        "c -> b denied: b is isolated"
    );
    drop(server);

    // DEL unregisters the endpoint (and is idempotent).
    for _ in 0..2 {
        let del = Invocation::new("DEL", &b.2, &b.0, &b.3).run(Some(&node.name));
        assert!(del.ok, "DEL: {} {}", del.stdout, del.stderr);
    }
    assert_eq!(endpoints(&socket), 2, "b unregistered");
}
