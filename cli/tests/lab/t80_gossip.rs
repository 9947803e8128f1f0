//! Partition tolerance through gossip, on real packets: the agents of a 2-node lab are cut off
//! from the control plane (every voter SIGSTOPped); node 2 then starts a pod of a label set the
//! cluster knows and one of a label set nobody has seen (an id from node 2's leased block).
//! Node 1 enforces an egress policy towards them, which needs their addresses and identities
//! in its ipcache: only gossip can bring them while the control plane is stopped. n1-p1
//! reaches both on port 80, n1-p2 is refused by their ingress policy, and n1-p1 still cannot
//! reach anything else. A malformed and an unauthenticated datagram sent to node 2's gossip
//! port are dropped and counted (status and metrics), and a forging member (the key and node 1's
//! certificate, speaking for node 2) is dropped as `wrong_name`: its endpoint never reaches node
//! 1's ipcache while honest gossip keeps working. Then the voters continue and everything
//! converges with no manual step: the block id committed as canonical, the endpoints in the
//! control plane, nothing left known only through gossip. The time that takes is printed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use palisade_lab::Lab;
use palisade_lab::cluster::container_id;
use palisade_lab::state::{ClusterState, ProcessRole, agent_socket, netns_prefix, pin_root};
use palisade_node_agent::agent::{
    Gossip, GossipConfig, GossipKey, GossipSigner, GossipVerifier, NodeGossip,
};
use palisade_node_agent::datapath::{Datapath, DatapathConfig};

use crate::util::{Cleanup, apply_policy, down_and_assert_gone, lab_name, ok, palisade};

/// n1-p1 may talk to the database pods on port 80, and to nothing else.
const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: n1-p1}}
  egress:
  - toEndpoints: [{matchLabels: {role: db}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-ingress}
spec:
  endpointSelector: {matchLabels: {role: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: n1-p1}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

fn reachable(lab: &str, from: &str, to: IpAddr) -> bool {
    let to = to.to_string();
    let out = palisade(&[
        "lab",
        "probe",
        "--name",
        lab,
        from,
        &to,
        "--port",
        "80",
        "--timeout",
        "1s",
    ]);
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("probe {from} {to}: {out:?}"),
    }
}

fn agent_status(lab: &str, node: &str) -> serde_json::Value {
    let socket = agent_socket(lab, node);
    let out = ok(&[
        "agent",
        "status",
        "--socket",
        socket.to_str().expect("utf8"),
        "-o",
        "json",
    ]);
    serde_json::from_str(&out).expect("json")
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread")
}

/// Starts a pod on `node` as a container runtime does (namespace, `palisade-cni ADD` in the
/// node with these labels, a TCP 80 server inside), recorded so `lab down` removes it all.
/// Returns its address.
fn add_pod(lab: &mut Lab, node: &str, pod: &str, labels: &[(&str, &str)]) -> IpAddr {
    let st = lab.state().clone();
    let cluster = st.cluster.clone().expect("cluster");
    let node_ns = st.node(node).expect("node").netns.clone();
    // The lab's prefix: `down` sweeps every namespace named so.
    let netns = format!("{}{node}-{pod}", netns_prefix(&st.name));
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["netns", "add", &netns]);
    ip(&[
        "netns",
        "exec",
        &netns,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
    ]);
    let labels: Vec<serde_json::Value> = labels
        .iter()
        .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
        .collect();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "palisade",
        "type": "palisade-cni",
        "agentSocket": agent_socket(&st.name, node),
        "args": {"cni": {"labels": labels}},
        "mtu": 1420,
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node_ns])
        .arg(&cluster.cni_bin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container_id(&st.name, pod))
        .env("CNI_NETNS", Path::new("/run/netns").join(&netns))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_PATH",
            cluster.cni_bin.parent().expect("dir").as_os_str(),
        )
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("palisade-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("conf");
    let out = child.wait_with_output().expect("cni");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(out.status.success(), "CNI ADD {pod}: {result} {out:?}");
    let addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<IpAddr>().ok())
        .unwrap_or_else(|| panic!("CNI result without an address: {result}"));
    lab.spawn(
        ProcessRole::WorkloadServer,
        pod,
        Some(&netns),
        &st.palisade_bin,
        &[
            "workload".into(),
            "serve".into(),
            "--name".into(),
            pod.into(),
            "--tcp".into(),
            "80".into(),
        ],
    )
    .expect("server");
    wait_for(
        &format!("{pod}'s server to listen"),
        Duration::from_secs(10),
        || {
            let out = Command::new("ip")
                .args(["netns", "exec", &netns, "ss", "-Htln", "sport", "= :80"])
                .output()
                .expect("ss");
            !out.stdout.is_empty()
        },
    );
    addr
}

/// The agent's metrics page, fetched from inside the node.
fn metrics(netns: &str, addr: SocketAddr) -> String {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    })
}

fn voters(lab: &Lab, signal: Signal) {
    for p in lab
        .state()
        .processes
        .iter()
        .filter(|p| p.role == ProcessRole::ControlPlane)
    {
        if let Err(e) = kill(Pid::from_raw(p.pid as i32), signal) {
            // A voter gone before the fault is injected: say how it ended.
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "signal {signal} to voter `{}` (pid {}): {e}; its log ends:\n{}",
                p.name,
                p.pid,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

#[test]
fn agents_cut_off_from_the_control_plane_learn_new_pods_through_gossip_and_converge_after() {
    let name = lab_name("gsp");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    ok(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
    ]);
    let mut lab = Lab::load(&name).expect("state");
    let st = lab.state().clone();
    let cluster = st.cluster.clone().expect("cluster");
    let (n1, n2) = (st.nodes[0].clone(), st.nodes[1].clone());
    // The control plane as the operator reaches it: from the lab's control-plane host (every
    // lab uses the same addresses, each in its own namespaces).
    let cp_config =
        palisade_lab::cluster::operator_client_config(&st, &cluster).expect("client config");
    let cp_netns = cluster.cp_netns.clone();
    let (quick_config, quick_netns) = (
        cp_config.clone().with_timeout(Duration::from_millis(500)),
        cp_netns.clone(),
    );
    let cp_answers = move || {
        let cfg = quick_config.clone();
        in_netns(&quick_netns, move || {
            palisade_cp_client::Client::new(cfg)
                .expect("client")
                .list_endpoints()
                .is_ok()
        })
    };
    let cp_lists = move || {
        let cfg = cp_config.clone();
        in_netns(&cp_netns, move || {
            let c = palisade_cp_client::Client::new(cfg).expect("client");
            (c.list_identities(), c.list_endpoints())
        })
    };

    // The agents gossip with each other from the start.
    wait_for(
        "both agents to see each other live",
        Duration::from_secs(20),
        || {
            [("n1", "n2"), ("n2", "n1")].iter().all(|(me, peer)| {
                let g = agent_status(&name, me)["gossip"].clone();
                g["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["node"] == *peer && m["live"] == true))
            })
        },
    );

    // A database pod of a label set the control plane knows, and the policy.
    let db_a = add_pod(&mut lab, "n2", "db-a", &[("role", "db")]);
    apply_policy(&name, POLICY);
    ok(&["policy", "wait", "--lab", &name, "--timeout", "30s"]);
    let n2_p1 = st.pod("n2-p1").expect("pod").ip;
    wait_for(
        "db-a to be reachable from n1-p1",
        Duration::from_secs(20),
        || reachable(&name, "n1-p1", db_a),
    );
    assert!(!reachable(&name, "n1-p2", db_a), "db-a admits n1-p1 only");
    assert!(
        !reachable(&name, "n1-p1", n2_p1),
        "n1-p1 egresses to role=db only"
    );

    // 1. The partition: every voter stopped. Node 1 cannot learn anything from them.
    voters(&lab, Signal::SIGSTOP);
    assert!(
        !cp_answers(),
        "the control plane must not answer during the partition"
    );
    // 2. On node 2: a pod of the known set, and one of a new set (an id from node 2's block).
    let t = Instant::now();
    let db_b = add_pod(&mut lab, "n2", "db-b", &[("role", "db")]);
    let known_start = t.elapsed();
    let t = Instant::now();
    let db_c = add_pod(&mut lab, "n2", "db-c", &[("role", "db"), ("tier", "new")]);
    let new_start = t.elapsed();
    let started = Instant::now();
    println!(
        "gossip: pods started during the partition in {known_start:.2?} (known set) and {new_start:.2?} (new set, id from the block), servers listening included"
    );
    let n2_status = agent_status(&name, "n2");
    let pending = n2_status["controlPlane"]["pendingBindings"].clone();
    let id_of = |s: &serde_json::Value, pod: &str| {
        s["endpoints"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == format!("default/{pod}")))
            .and_then(|e| e["identity"].as_u64())
            .unwrap_or_else(|| panic!("{pod} not in {s}"))
    };
    let (id_a, id_b, id_c) = (
        id_of(&n2_status, "db-a"),
        id_of(&n2_status, "db-b"),
        id_of(&n2_status, "db-c"),
    );
    assert_eq!(
        id_a, id_b,
        "a known label set resolves locally to its identity"
    );
    assert_ne!(id_c, id_a);
    assert_eq!(
        pending,
        serde_json::json!([id_c]),
        "the new set's id comes from node 2's block, not yet committed: {n2_status}"
    );
    // Node 1 learns both through gossip only.
    wait_for(
        "node 1 to learn db-b and db-c through gossip",
        Duration::from_secs(15),
        || {
            let g = agent_status(&name, "n1")["gossip"].clone();
            g["gossipOnlyEndpoints"].as_u64() >= Some(2)
                && g["gossipOnlyIdentities"].as_u64() >= Some(1)
        },
    );
    println!(
        "gossip: node 1 learned both new pods {:.0} ms after the second one started",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        !cp_answers(),
        "still partitioned: what node 1 knows came through gossip"
    );
    // 2b. A forging member: a process (this test) holding the gossip key and node 1's valid
    // certificate, on node 1's underlay, gossips as node 2 (a newer generation, advertising
    // node 2's gossip address) an endpoint in node 2's pod CIDR with a known identity. Without
    // per-node signatures node 1 would take it (the newest generation of a name wins, and the
    // address matches node 2's record). Node 1 must drop it as `wrong_name` and never write it.
    let real_n2 = agent_status(&name, "n1")["gossip"]["members"][0].clone();
    assert_eq!(real_n2["node"], "n2", "{real_n2}");
    let forged_ip: IpAddr = {
        let o = n2.pod_cidr.addr().octets();
        IpAddr::from([o[0], o[1], o[2], 250])
    };
    let forger = {
        let pki_n1 = ClusterState::pki_dir(&name).join("n1");
        let key = GossipKey::from_file(&ClusterState::gossip_key_file(&name)).expect("gossip key");
        let listen = SocketAddr::new(n1.underlay_ip.into(), ClusterState::GOSSIP_PORT + 1);
        let n1_gossip = SocketAddr::new(n1.underlay_ip.into(), ClusterState::GOSSIP_PORT);
        let n2_gossip = SocketAddr::new(n2.underlay_ip.into(), ClusterState::GOSSIP_PORT);
        in_netns(&n1.netns, move || {
            Gossip::start(
                "n2",
                GossipConfig {
                    listen,
                    seeds: vec![n1_gossip],
                    key,
                    interval: Duration::from_millis(300),
                    signer: Arc::new(GossipSigner::from_dir(&pki_n1).expect("n1's certificate")),
                    verifier: GossipVerifier::from_dir(&pki_n1).expect("cluster CA"),
                    advertise: Some(n2_gossip),
                },
            )
            .expect("forging member")
        })
    };
    let mut forged = NodeGossip::default();
    forged.endpoints.insert(forged_ip, id_a as u32);
    forger.publish(&forged);
    wait_for(
        "node 1 to drop the forged state of node 2 as wrong_name",
        Duration::from_secs(15),
        || agent_status(&name, "n1")["gossip"]["dropped"]["wrong_name"].as_u64() >= Some(1),
    );
    // Give a merge the time it would need (several rounds), then look at node 1's ipcache.
    thread::sleep(Duration::from_secs(2));
    let g1 = agent_status(&name, "n1")["gossip"].clone();
    assert_eq!(g1["gossipOnlyEndpoints"], 2, "only db-b and db-c: {g1}");
    assert_eq!(g1["members"].as_array().map(Vec::len), Some(1), "{g1}");
    assert_eq!(
        g1["members"][0]["generation"], real_n2["generation"],
        "node 1 still shows node 2's own generation, not the forger's: {g1}"
    );
    let ipcache = {
        let pins = pin_root(&name).join("n1");
        Datapath::load_with(&DatapathConfig {
            pin_dir: Some(pins),
            ..DatapathConfig::default()
        })
        .expect("node 1's pinned maps")
        .ipcache_entries()
        .expect("ipcache")
    };
    assert!(
        ipcache.iter().any(|(ip, _, _)| *ip == db_c),
        "honest gossip is in node 1's ipcache: {ipcache:?}"
    );
    assert!(
        !ipcache.iter().any(|(ip, _, _)| *ip == forged_ip),
        "the forged endpoint reached node 1's ipcache: {ipcache:?}"
    );
    let page = metrics(&n1.netns, SocketAddr::new(n1.underlay_ip.into(), 9962));
    assert!(
        page.lines()
            .any(|l| l.starts_with("palisade_agent_gossip_dropped_total{")
                && l.contains("\"wrong_name\"")
                && !l.ends_with(" 0")),
        "no wrong_name drop in node 1's metrics:\n{page}"
    );
    println!(
        "gossip: a member with node 1's certificate speaking for node 2 was dropped (wrong_name {}), its endpoint {forged_ip} never merged",
        g1["dropped"]["wrong_name"]
    );
    // 3. Real packets, exactly as policy allows.
    assert!(
        reachable(&name, "n1-p1", db_b),
        "known set, learned by gossip"
    );
    assert!(
        reachable(&name, "n1-p1", db_c),
        "new set, block id learned by gossip"
    );
    assert!(!reachable(&name, "n1-p2", db_b), "db-b admits n1-p1 only");
    assert!(!reachable(&name, "n1-p2", db_c), "db-c admits n1-p1 only");
    assert!(
        !reachable(&name, "n1-p1", n2_p1),
        "still no egress elsewhere"
    );
    // The same new set on node 1 too, now that node 1 knows it through gossip: a set known
    // only that way is not node 1's to publish, so it takes an id from its own block. Two ids
    // for one set, both matched by the same selectors, until the control plane picks one.
    let db_d = add_pod(&mut lab, "n1", "db-d", &[("role", "db"), ("tier", "new")]);
    let s1 = agent_status(&name, "n1");
    let id_d = id_of(&s1, "db-d");
    assert_ne!(
        id_d, id_c,
        "two ids for one label set while partitioned: {s1}"
    );
    assert_eq!(
        s1["controlPlane"]["pendingBindings"],
        serde_json::json!([id_d]),
        "{s1}"
    );
    assert!(
        reachable(&name, "n1-p1", db_d),
        "node 1's own id for the set"
    );
    assert!(!reachable(&name, "n1-p2", db_d), "db-d admits n1-p1 only");

    // 4. Junk and a datagram sealed with another key, to node 2's gossip port.
    let gossip_addr = SocketAddr::new(n2.underlay_ip.into(), ClusterState::GOSSIP_PORT);
    let wrong = palisade_node_agent::agent::GossipSealer::new(&GossipKey::from_bytes([0x5a; 32]));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let forged = wrong.seal(b"\x00forged syn", now_ms).expect("fits");
    in_netns(&n1.netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.send_to(b"not gossip at all", gossip_addr)
            .expect("send junk");
        s.send_to(&forged, gossip_addr).expect("send forged");
    });
    wait_for(
        "node 2 to count both drops",
        Duration::from_secs(10),
        || {
            let d = agent_status(&name, "n2")["gossip"]["dropped"].clone();
            d["malformed"].as_u64() >= Some(1) && d["unauthenticated"].as_u64() >= Some(1)
        },
    );
    let page = metrics(&n1.netns, SocketAddr::new(n2.underlay_ip.into(), 9962));
    for reason in ["malformed", "unauthenticated"] {
        assert!(
            page.lines().any(
                |l| l.starts_with("palisade_agent_gossip_dropped_total{reason=\"")
                    && l.contains(&format!("\"{reason}\""))
                    && !l.ends_with(" 0")
            ),
            "no {reason} drop in node 2's metrics:\n{page}"
        );
    }
    let members = agent_status(&name, "n2")["gossip"]["members"].clone();
    assert_eq!(
        members.as_array().map(Vec::len),
        Some(1),
        "nobody joined with a forged datagram: {members}"
    );

    // 5. Heal: the voters continue. No manual step from here.
    // No policy gap while converging: n1-p1 keeps probing both pods of the new set until the
    // cluster has converged; every probe must get through.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, name) = (stop.clone(), name.clone());
        thread::spawn(move || {
            let (mut probes, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for (pod, ip) in [("db-c", db_c), ("db-d", db_d)] {
                    probes += 1;
                    if !reachable(&name, "n1-p1", ip) {
                        failed.push(pod);
                    }
                }
            }
            (probes, failed)
        })
    };
    voters(&lab, Signal::SIGCONT);
    let healed = Instant::now();
    let mut last = String::new();
    let deadline = healed + Duration::from_secs(40);
    loop {
        assert!(
            Instant::now() < deadline,
            "no convergence within 40 s: {last}"
        );
        let (ids, eps) = match cp_lists() {
            (Ok(i), Ok(e)) => (i, e),
            (Err(e), _) | (_, Err(e)) => {
                last = format!("the control plane does not answer yet: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let s1 = agent_status(&name, "n1");
        let s2 = agent_status(&name, "n2");
        // One canonical id for the new set (one of the two block ids), the other its alias.
        let set_ids: Vec<(u32, Option<u32>)> = ids
            .iter()
            .filter(|i| u64::from(i.id) == id_c || u64::from(i.id) == id_d)
            .map(|i| (i.id, i.alias_of))
            .collect();
        let canonical: Vec<u64> = set_ids
            .iter()
            .filter(|(_, alias_of)| alias_of.is_none())
            .map(|(id, _)| u64::from(*id))
            .collect();
        let one_canonical = set_ids.len() == 2 && canonical.len() == 1;
        let on_canonical = canonical.first().is_some_and(|cid| {
            [
                (db_b, id_b, "n2", &s2, "db-b"),
                (db_c, *cid, "n2", &s2, "db-c"),
                (db_d, *cid, "n1", &s1, "db-d"),
            ]
            .iter()
            .all(|(ip, id, node, s, pod)| {
                id_of(s, pod) == *id
                    && eps
                        .iter()
                        .any(|e| e.ip == *ip && u64::from(e.identity) == *id && e.node == *node)
            })
        });
        last = format!(
            "ids {set_ids:?}, one canonical {one_canonical}, endpoints on it {on_canonical}, pending n1 {} n2 {}, n1 connected {}, n1 gossip-only {} endpoint(s) {} identit(ies)",
            s1["controlPlane"]["pendingBindings"],
            s2["controlPlane"]["pendingBindings"],
            s1["controlPlane"]["connected"],
            s1["gossip"]["gossipOnlyEndpoints"],
            s1["gossip"]["gossipOnlyIdentities"]
        );
        if one_canonical
            && on_canonical
            && s1["controlPlane"]["pendingBindings"] == serde_json::json!([])
            && s2["controlPlane"]["pendingBindings"] == serde_json::json!([])
            && s1["controlPlane"]["connected"] == true
            && s1["gossip"]["gossipOnlyEndpoints"] == 0
            && s1["gossip"]["gossipOnlyIdentities"] == 0
        {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let converged = healed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (probes, failed) = prober.join().expect("prober");
    assert!(
        failed.is_empty(),
        "policy gap while converging: probes to {failed:?} failed ({probes} probes)"
    );
    println!(
        "gossip: converged {:.0} ms after the voters continued ({last}; n1-p1 reached db-c and db-d in all {probes} probes meanwhile)",
        converged.as_secs_f64() * 1000.0
    );
    // Policy holds with the control plane's data.
    assert!(reachable(&name, "n1-p1", db_b));
    assert!(reachable(&name, "n1-p1", db_c));
    assert!(reachable(&name, "n1-p1", db_d));
    assert!(!reachable(&name, "n1-p2", db_c));
    assert!(!reachable(&name, "n1-p2", db_d));

    let processes = Lab::load(&name).expect("state").state().processes.clone();
    down_and_assert_gone(&name, &processes);
}
