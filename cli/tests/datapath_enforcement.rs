//! Policy enforced by the eBPF datapath on real packets between lab pods, same node and across
//! nodes: maps programmed directly (the control plane and agent that will program them are
//! issues 4 and 5), reachability measured with the lab's real TCP/UDP probes.
//!
//! Needs root; `make test` runs it as root.

use std::{collections::BTreeSet, net::IpAddr, sync::mpsc, thread, time::Duration};

use palisade_datapath_common::{
    endpoint::{EndpointInfo, FLAG_HAS_IPV4},
    policy::{DIRECTION_EGRESS, DIRECTION_INGRESS, PolicyValue, VERDICT_ALLOW},
    proto,
};
use palisade_lab::{Lab, LabSpec, Protocol};
use palisade_node_agent::datapath::{Datapath, DatapathConfig, PolicyMatch};

struct LabGuard(String);
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}

/// One policy entry for the test: (subject pod, peer pod or None for any, direction, protocol, port).
type Entry = (&'static str, Option<&'static str>, u8, u8, u16);

/// Pods: n1-p1 = A, n1-p2 = B (node 1); n2-p1 = C, n2-p2 = D (node 2).
const POLICY: &[Entry] = &[
    // Egress: A, B, C may send anything anywhere; D may only send UDP 80 to C.
    ("n1-p1", None, DIRECTION_EGRESS, 0, 0),
    ("n1-p2", None, DIRECTION_EGRESS, 0, 0),
    ("n2-p1", None, DIRECTION_EGRESS, 0, 0),
    ("n2-p2", Some("n2-p1"), DIRECTION_EGRESS, proto::UDP, 80),
    // Ingress (default deny everywhere): B takes TCP 80 from A (same node); C takes TCP 80 from A
    // (across nodes) and UDP 80 from D.
    ("n1-p2", Some("n1-p1"), DIRECTION_INGRESS, proto::TCP, 80),
    ("n2-p1", Some("n1-p1"), DIRECTION_INGRESS, proto::TCP, 80),
    ("n2-p1", Some("n2-p2"), DIRECTION_INGRESS, proto::UDP, 80),
];

fn identity_of(pod_index: usize) -> u32 {
    1000 + pod_index as u32
}

#[test]
fn identity_policy_is_enforced_on_real_traffic_within_and_across_nodes() {
    let name = format!("enf{}", std::process::id() % 100_000);
    let _guard = LabGuard(name.clone());
    let spec = LabSpec::new(&name, 2, 2, env!("CARGO_BIN_EXE_palisade"));
    let lab = Lab::up(&spec).expect("lab up");
    let state = lab.state().clone();

    // Before any program is attached, everything is reachable.
    let before = lab
        .matrix(80, Protocol::Tcp, Duration::from_secs(1))
        .expect("matrix");
    assert!(before.all_reachable, "no policy: all pairs reachable");

    // One datapath per node, living on a thread inside that node's namespace.
    let index_of = |pod: &str| state.pods.iter().position(|p| p.name == pod).expect("pod");
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let mut node_threads = Vec::new();
    for node in &state.nodes {
        let node = node.clone();
        let pods = state.pods.clone();
        let ready = ready_tx.clone();
        let stop = stop_rx.clone();
        let idx: Vec<(String, usize)> = pods
            .iter()
            .map(|p| (p.name.clone(), index_of(&p.name)))
            .collect();
        node_threads.push(thread::spawn(move || {
            palisade_lab::exec::enter_netns(&node.netns).expect("enter the node's netns");
            let mut dp = Datapath::load_with(&DatapathConfig::for_test()).expect("load");
            let index = |pod: &str| {
                idx.iter()
                    .find(|(n, _)| n == pod)
                    .map(|(_, i)| *i)
                    .expect("pod index")
            };
            for (i, pod) in pods.iter().enumerate() {
                let IpAddr::V4(v4) = pod.ip else {
                    panic!("lab pods are IPv4")
                };
                dp.upsert_ipcache(pod.ip, 32, identity_of(i))
                    .expect("ipcache");
                if pod.node != node.name {
                    continue;
                }
                let ifindex =
                    nix::net::if_::if_nametoindex(pod.host_iface.as_str()).expect("ifindex");
                let mut info = EndpointInfo {
                    endpoint_id: i as u32 + 1,
                    identity: identity_of(i),
                    flags: FLAG_HAS_IPV4,
                    ..Default::default()
                };
                info.ipv4 = v4.octets();
                dp.upsert_endpoint(ifindex, info).expect("endpoint");
                for &(subject, peer, direction, protocol, port) in
                    POLICY.iter().filter(|e| e.0 == pod.name)
                {
                    let m = PolicyMatch {
                        endpoint_id: index(subject) as u32 + 1,
                        identity: peer.map(|p| identity_of(index(p))).unwrap_or(0),
                        direction,
                        protocol,
                        port,
                        port_prefix: if protocol == 0 { 0 } else { 16 },
                    };
                    let v = PolicyValue {
                        verdict: VERDICT_ALLOW,
                        rule_id: 1,
                        ..Default::default()
                    };
                    dp.upsert_policy(m, v).expect("policy");
                }
                dp.attach_enforcement(&pod.host_iface).expect("attach");
            }
            ready.send(()).expect("ready");
            let _ = stop.lock().expect("lock").recv();
            dp.verdict_counts().expect("counts")
        }));
    }
    for _ in &state.nodes {
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("datapaths attached");
    }

    let reachable = |protocol| -> BTreeSet<(String, String)> {
        let m = lab
            .matrix(80, protocol, Duration::from_millis(700))
            .expect("matrix");
        m.pairs
            .into_iter()
            .filter(|p| p.reachable)
            .map(|p| (p.from, p.to))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<BTreeSet<_>>()
    };

    let tcp = reachable(Protocol::Tcp);
    let udp = reachable(Protocol::Udp);
    for _ in &state.nodes {
        let _ = stop_tx.send(());
    }
    let counts: Vec<_> = node_threads
        .into_iter()
        .map(|t| t.join().expect("node thread"))
        .collect();

    assert_eq!(
        tcp,
        pairs(&[("n1-p1", "n1-p2"), ("n1-p1", "n2-p1")]),
        "TCP 80 (verdict counts: {counts:?})"
    );
    assert_eq!(
        udp,
        pairs(&[("n2-p2", "n2-p1")]),
        "UDP 80 (verdict counts: {counts:?})"
    );
}
