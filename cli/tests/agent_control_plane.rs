//! Agents following a real control plane, with real packets between pods on two nodes:
//! cluster-wide identities (the same labels on two nodes get the same id), remote endpoints in the
//! ipcache (cross-node policy by label), `policy wait` returning once both nodes enforce a change,
//! the propagation latency in the agents' metrics, and the last-known-good state: with the control
//! plane gone the policy stays enforced (also across an agent restart) and a change made once it
//! is back takes effect; a pod sending from an address not its own is dropped. Needs root; `make
//! test` runs it as root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_api::agent::{AgentRequest, AgentResponse, ContainerPort, EndpointSpec};
use palisade_api::controlplane::PolicyKey;
use palisade_cp_client::{Client, ClientConfig, WaitOutcome};
use palisade_lab::exec::spawn_in_netns;
use palisade_lab::{ExternalPlan, Lab, LabSpec, ProcessRole, Protocol};
use palisade_node_agent::agent;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
/// The control plane's host: a namespace on the fabric, outside the cluster.
const CP_IP: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
const METRICS_PORT: u16 = 9962;

/// db (on n1) accepts TCP 80 from web pods only, wherever they run.
const DB_FROM_WEB: &str = r#"{
  "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
  "metadata": {"name": "db-from-web", "namespace": "default"},
  "spec": {
    "endpointSelector": {"matchLabels": {"app": "db"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                 "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]
  }
}"#;

/// other (on n2) accepts nothing (Kubernetes default deny ingress).
const ISOLATE_OTHER: &str = r#"{
  "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
  "metadata": {"name": "isolate-other", "namespace": "default"},
  "spec": {"podSelector": {"matchLabels": {"app": "other"}}, "policyTypes": ["Ingress"]}
}"#;

struct Cleanup {
    lab: String,
    dir: PathBuf,
    pins: Vec<PathBuf>,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Lab::down(&self.lab);
        let _ = std::fs::remove_dir_all(&self.dir);
        for p in &self.pins {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Runs `f` inside a network namespace and returns its result.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f)
        .join()
        .expect("thread")
        .expect("enter netns")
}

fn client() -> Client {
    Client::new(ClientConfig::new([format!("http://{CP_IP}:8001")])).expect("client")
}

struct Cluster {
    lab: Lab,
    dir: PathBuf,
    cp_ns: String,
}

impl Cluster {
    /// A 2-node lab (`pods` per node) with the control plane's host on its fabric; the lab, the
    /// temp dir and the pins go when the returned guard drops. `tag` keeps concurrent tests apart.
    fn up(tag: &str, pods: usize) -> (Cleanup, Cluster) {
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("pal-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cleanup = Cleanup {
            lab: name.clone(),
            dir: dir.clone(),
            pins: vec![pin_dir(&dir, "n1"), pin_dir(&dir, "n2")],
        };
        let mut spec = LabSpec::new(&name, 2, pods, BIN);
        spec.externals.push(ExternalPlan {
            name: "cp".into(),
            ip: CP_IP,
        });
        let lab = Lab::up(&spec).expect("lab up");
        let cp_ns = lab
            .state()
            .externals
            .iter()
            .find(|x| x.name == "cp")
            .expect("cp host")
            .netns
            .clone();
        // The guard first: bound first, it drops after the cluster.
        (cleanup, Cluster { lab, dir, cp_ns })
    }

    fn cp<T: Send + 'static>(&self, f: impl FnOnce(&Client) -> T + Send + 'static) -> T {
        in_netns(&self.cp_ns, move || f(&client()))
    }

    fn start_control_plane(&mut self) -> u32 {
        let bin = Path::new(BIN).with_file_name("palisade-controlplane");
        let data = self.dir.join("cp-data");
        let args: Vec<String> = vec![
            "--id".into(),
            "1".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--raft-listen".into(),
            format!("{CP_IP}:7001"),
            "--api-listen".into(),
            format!("{CP_IP}:8001"),
            "--init".into(),
        ];
        let ns = self.cp_ns.clone();
        let rec = self
            .lab
            .spawn(ProcessRole::ControlPlane, "cp1", Some(&ns), &bin, &args)
            .expect("spawn control plane");
        let log = rec.log.clone();
        let up = self.cp(|c| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if c.cluster_status()
                    .is_ok_and(|s| s["leader"].as_u64().is_some())
                {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        assert!(up, "control plane has no leader; see {}", log.display());
        rec.pid
    }

    fn start_agent(&mut self, i: usize) -> u32 {
        let node = self.lab.state().nodes[i].clone();
        let socket = self.socket(i);
        let args: Vec<String> = vec![
            "agent".into(),
            "run".into(),
            "--node".into(),
            node.name.clone(),
            "--pod-cidr".into(),
            node.pod_cidr.to_string(),
            "--node-ip".into(),
            node.underlay_ip.to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            self.dir
                .join(format!("state-{}", node.name))
                .display()
                .to_string(),
            "--small-maps".into(),
            "--netns".into(),
            node.netns.clone(),
            "--bpf-pin-dir".into(),
            pin_dir(&self.dir, &node.name).display().to_string(),
            "--control-plane".into(),
            format!("http://{CP_IP}:8001"),
            "--metrics-listen".into(),
            format!("{}:{METRICS_PORT}", node.underlay_ip),
        ];
        let rec = self
            .lab
            .spawn(
                ProcessRole::NodeAgent,
                &format!("agent-{}", node.name),
                None,
                Path::new(BIN),
                &args,
            )
            .expect("spawn agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent::request(&socket, &AgentRequest::Status {}).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent did not start; see {}",
                rec.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rec.pid
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("agent-n{}.sock", i + 1))
    }

    fn status(&self, i: usize) -> serde_json::Value {
        match agent::request(&self.socket(i), &AgentRequest::Status {}).expect("status") {
            AgentResponse::Status { status } => status,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Registers a lab pod with its node's agent (what the CNI plugin does); returns its identity.
    fn add_pod(&self, pod: &str, app: &str) -> u32 {
        self.add_pod_in(pod, "default", app, vec![])
    }

    /// [`Cluster::add_pod`] in namespace `namespace`, with named container ports.
    fn add_pod_in(&self, pod: &str, namespace: &str, app: &str, ports: Vec<ContainerPort>) -> u32 {
        let p = self.lab.state().pod(pod).expect("pod").clone();
        let i = self
            .lab
            .state()
            .nodes
            .iter()
            .position(|n| n.name == p.node)
            .expect("node");
        let spec = EndpointSpec {
            container_id: format!("c-{pod}"),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{}", p.netns),
            host_iface: p.host_iface.clone(),
            pod_namespace: namespace.into(),
            pod_name: pod.into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]).into(),
            service_account: None,
            ips: vec![p.ip],
            ports,
            from_pod_record: false,
            pod_uid: None,
        };
        match agent::request(&self.socket(i), &AgentRequest::EndpointAdd(spec)).expect("add") {
            AgentResponse::EndpointAdded { identity, .. } => identity,
            other => panic!("endpoint {pod}: {other:?}"),
        }
    }

    fn reachable(&self, from: &str, to: &str) -> bool {
        let ip = self.lab.state().pod(to).expect("pod").ip;
        self.lab
            .probe(from, ip, 80, Protocol::Tcp, Duration::from_millis(600))
            .expect("probe")
            .reachable
    }

    /// The whole matrix the test cares about, as `from→to` strings that are reachable.
    fn open_pairs(&self) -> Vec<String> {
        let pairs = [
            ("n1-p1", "n1-p2"),
            ("n2-p1", "n1-p2"),
            ("n2-p2", "n1-p2"),
            ("n1-p1", "n2-p2"),
            ("n2-p1", "n2-p2"),
            ("n1-p2", "n2-p1"),
        ];
        pairs
            .iter()
            .filter(|(a, b)| self.reachable(a, b))
            .map(|(a, b)| format!("{a}→{b}"))
            .collect()
    }

    /// Stores a `v1/Namespace` with these labels; returns the policy revision.
    fn label_namespace(&self, name: &'static str, labels: serde_json::Value) -> u64 {
        self.cp(move |c| {
            let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}});
            c.apply_policy(&namespace_key(name), &object)
                .expect("apply namespace")
                .revision
        })
    }

    /// The identity the agent gave the endpoint `ns/pod`.
    fn identity_of(&self, node: usize, endpoint: &str) -> u64 {
        self.status(node)["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == endpoint)
            .and_then(|e| e["identity"].as_u64())
            .unwrap_or_else(|| panic!("endpoint {endpoint} on node {node}"))
    }

    /// Polls until `from → to` on TCP 80 is `want`; returns how long it took.
    fn until_reachable(&self, from: &str, to: &str, want: bool, why: &str) -> Duration {
        let start = Instant::now();
        while self.reachable(from, to) != want {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{from}→{to} should be {}: {why}",
                if want { "open" } else { "closed" }
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    fn apply(&self, text: &'static str) -> u64 {
        self.cp(move |c| {
            let object: serde_json::Value = serde_json::from_str(text).expect("json");
            let key = PolicyKey {
                kind: object["kind"].as_str().expect("kind").into(),
                namespace: object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .into(),
                name: object["metadata"]["name"].as_str().expect("name").into(),
            };
            c.apply_policy(&key, &object).expect("apply").revision
        })
    }

    fn wait(&self, revision: u64) -> WaitOutcome {
        self.cp(move |c| {
            c.wait_policies(Some(revision), Duration::from_secs(15))
                .expect("wait")
        })
    }

    fn metrics(&self, i: usize) -> String {
        let node = self.lab.state().nodes[i].clone();
        in_netns(&node.netns, move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect((node.underlay_ip, METRICS_PORT))
                .expect("connect metrics");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        })
    }
}

fn pin_dir(dir: &Path, node: &str) -> PathBuf {
    let tag = dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    PathBuf::from(format!("/sys/fs/bpf/{tag}-{node}"))
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agents_follow_the_control_plane_and_keep_enforcing_without_it() {
    let (_cleanup, mut c) = Cluster::up("acp", 3);
    let cp_pid = c.start_control_plane();
    let mut agents = [c.start_agent(0), c.start_agent(1)];

    // Identities come from the control plane: web on n1 and web on n2 share one.
    let web1 = c.add_pod("n1-p1", "web");
    let db = c.add_pod("n1-p2", "db");
    let web2 = c.add_pod("n2-p1", "web");
    let other = c.add_pod("n2-p2", "other");
    assert_eq!(
        web1, web2,
        "the same labels on two nodes get the same identity"
    );
    assert!(web1 > 255 && db > 255 && other > 255);
    assert_eq!(
        [web1, db, other]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
    let cp_ids: Vec<u32> = c.cp(|c| {
        c.list_identities()
            .expect("identities")
            .iter()
            .map(|i| i.id)
            .collect()
    });
    for id in [web1, db, other] {
        assert!(cp_ids.contains(&id), "identity {id} is the control plane's");
    }
    // Both nodes are registered and their endpoints published.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let eps = c.cp(|c| c.list_endpoints().expect("endpoints").len());
        if eps == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "4 endpoints published, saw {eps}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.open_pairs().len(), 6, "no policy: everything open");

    // Cross-node policy by label: enforced on both nodes when `policy wait` returns.
    c.apply(DB_FROM_WEB);
    let rev = c.apply(ISOLATE_OTHER);
    match c.wait(rev) {
        WaitOutcome::Done { nodes, .. } => assert_eq!(nodes, 2),
        other => panic!("policy wait: {other:?}"),
    }
    let enforced = vec![
        "n1-p1→n1-p2".to_string(),
        "n2-p1→n1-p2".into(),
        "n1-p2→n2-p1".into(),
    ];
    assert_eq!(c.open_pairs(), enforced, "db only from web; other isolated");
    for i in 0..2 {
        let m = c.metrics(i);
        assert!(
            sample(&m, "palisade_agent_policy_propagation_seconds_count").is_some_and(|n| n >= 1.0),
            "node {i} propagation metric:\n{m}"
        );
        assert_eq!(
            sample(&m, "palisade_agent_policy_revision"),
            Some(rev as f64),
            "node {i} enforces revision {rev}"
        );
        assert_eq!(
            sample(&m, "palisade_agent_control_plane_connected"),
            Some(1.0)
        );
    }

    // The control plane goes away: the policy stays enforced, also across an agent restart.
    kill(cp_pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.status(0)["controlPlane"]["connected"] != serde_json::json!(false) {
        assert!(
            Instant::now() < deadline,
            "agent notices the control plane is gone"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.open_pairs(), enforced, "last-known-good policy enforced");
    kill(agents[0]);
    agents[0] = c.start_agent(0);
    let st = c.status(0);
    assert_eq!(
        st["controlPlane"]["policyRevision"],
        serde_json::json!(rev),
        "{st}"
    );
    assert_eq!(
        c.open_pairs(),
        enforced,
        "a restarted agent enforces the saved policy without the control plane"
    );

    // New label sets while the control plane is gone: pods start with ids from their node's
    // leased block (not refused with "try again"); the same new set on both nodes gets two ids.
    let block = |i: usize| {
        let b = c.status(i)["controlPlane"]["idBlock"].clone();
        let first = b["first"].as_u64().expect("a leased block") as u32;
        first..first + b["count"].as_u64().expect("count") as u32
    };
    let (block1, block2) = (block(0), block(1));
    let cache1 = c.add_pod("n1-p3", "cache");
    let cache2 = c.add_pod("n2-p3", "cache");
    assert!(block1.contains(&cache1), "{cache1} from {block1:?}");
    assert!(block2.contains(&cache2), "{cache2} from {block2:?}");
    assert_ne!(cache1, cache2);

    // Back again: a change made now reaches both nodes.
    c.start_control_plane();
    let rev2 = c.cp(|c| {
        c.delete_policy(&PolicyKey {
            kind: "NetworkPolicy".into(),
            namespace: "default".into(),
            name: "isolate-other".into(),
        })
        .expect("delete")
        .revision
    });
    match c.wait(rev2) {
        WaitOutcome::Done { nodes, .. } => assert_eq!(nodes, 2),
        other => panic!("policy wait after the control plane returned: {other:?}"),
    }
    let open = c.open_pairs();
    assert!(
        open.contains(&"n1-p1→n2-p2".to_string()) && open.contains(&"n2-p1→n2-p2".to_string()),
        "other is open again: {open:?}"
    );
    // The bindings are committed and converge: one canonical id for `cache`, the other an
    // alias; the node holding the alias moves its pod to the canonical id.
    let ip3 = |pod: &str| c.lab.state().pod(pod).expect("pod").ip;
    let (ip1, ip2) = (ip3("n1-p3"), ip3("n2-p3"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let canonical = loop {
        let (ids, eps) = c.cp(|c| {
            (
                c.list_identities().expect("identities"),
                c.list_endpoints().expect("endpoints"),
            )
        });
        let of = |ip| eps.iter().find(|e| e.ip == ip).map(|e| e.identity);
        let canonical = ids
            .iter()
            .find(|i| i.alias_of.is_none() && i.labels.iter().any(|l| l.ends_with("app=cache")))
            .map(|i| i.id);
        if let (Some(k), Some(a), Some(b)) = (canonical, of(ip1), of(ip2))
            && a == k
            && b == k
        {
            let alias = [cache1, cache2]
                .into_iter()
                .find(|i| *i != k)
                .expect("alias");
            assert!(
                ids.iter().any(|i| i.id == alias && i.alias_of == Some(k)),
                "the other binding is recorded as an alias of {k}: {ids:?}"
            );
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "cache did not converge: {ids:?} {eps:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!([cache1, cache2].contains(&canonical));
    for i in 0..2 {
        let st = c.status(i);
        let pod = if i == 0 {
            "default/n1-p3"
        } else {
            "default/n2-p3"
        };
        let ep = st["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == pod)
            .expect("endpoint")
            .clone();
        assert_eq!(ep["identity"], serde_json::json!(canonical), "{pod}: {ep}");
        assert_eq!(
            st["controlPlane"]["pendingBindings"],
            serde_json::json!([]),
            "node {i}"
        );
    }
    assert!(
        !open.contains(&"n2-p2→n1-p2".to_string()),
        "db still only from web"
    );

    // Anti-spoofing on real packets: n2-p1 sending from an address that is not its own is
    // dropped at its veth (and counted); from its own address the same datagram is answered.
    let target = c.lab.state().pod("n2-p2").expect("pod").ip;
    let own = c.lab.state().pod("n2-p1").expect("pod").ip;
    let spoofed: std::net::IpAddr = "10.200.2.99".parse().expect("ip");
    c.lab
        .exec_in_pod(
            "n2-p1",
            "ip",
            &["addr", "add", "10.200.2.99/32", "dev", "eth0"],
        )
        .expect("second address in the pod");
    let ns = c.lab.state().pod("n2-p1").expect("pod").netns.clone();
    let before = spoofed_drops(&c.status(1));
    let answered = move |src: std::net::IpAddr| {
        in_netns(&ns.clone(), move || {
            let sock = std::net::UdpSocket::bind((src, 0)).expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(700)))
                .expect("timeout");
            sock.send_to(b"hello", (target, 80)).expect("send");
            let mut buf = [0u8; 512];
            sock.recv_from(&mut buf).is_ok()
        })
    };
    assert!(answered(own), "from its own address: answered");
    assert!(!answered(spoofed), "from a spoofed address: dropped");
    assert!(
        spoofed_drops(&c.status(1)) > before,
        "the drop is counted as spoofed_source: {}",
        c.status(1)["verdicts"]
    );
    for pid in agents {
        kill(pid);
    }
}

fn namespace_key(name: &str) -> PolicyKey {
    PolicyKey {
        kind: "Namespace".into(),
        namespace: "-".into(),
        name: name.into(),
    }
}

/// db (namespace `data`, on n1) accepts its named port `web` (TCP 80) only from namespaces
/// labelled `env=prod`.
const DB_FROM_PROD: &str = r#"{
  "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
  "metadata": {"name": "db-from-prod", "namespace": "data"},
  "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
           "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                        "ports": [{"port": "web", "protocol": "TCP"}]}]}
}"#;

/// ops pods may only reach db pods (any namespace), on db's named port `web`: resolved on
/// ops' node from db's endpoint record, db being on another node.
const OPS_TO_DB_WEB: &str = r#"{
  "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
  "metadata": {"name": "ops-to-db", "namespace": "ops"},
  "spec": {"podSelector": {"matchLabels": {"app": "ops"}}, "policyTypes": ["Egress"],
           "egress": [{"to": [{"namespaceSelector": {},
                               "podSelector": {"matchLabels": {"app": "db"}}}],
                       "ports": [{"port": "web", "protocol": "TCP"}]}]}
}"#;

/// Namespace labels stored in the control plane (`v1/Namespace` objects, as `kubectl apply`
/// or the mirror write them) become part of the identities of the namespace's pods on every
/// node, so a `namespaceSelector` on any label selects them; relabelling a namespace moves its
/// pods to new identities, on their own node and, through the control plane, in the other
/// nodes' ipcache. The policy's port is a named one, resolved from the pod's registration.
#[test]
fn namespace_labels_select_pods_on_every_node_and_follow_relabelling() {
    let (_cleanup, mut c) = Cluster::up("acn", 2);
    c.start_control_plane();
    let agents = [c.start_agent(0), c.start_agent(1)];

    // Namespaces labelled before their pods start: the pods' first identity carries the labels.
    c.label_namespace("front", serde_json::json!({"env": "prod"}));
    let rev = c.label_namespace("back", serde_json::json!({"env": "dev"}));
    match c.wait(rev) {
        WaitOutcome::Done { nodes, .. } => assert_eq!(nodes, 2),
        other => panic!("policy wait: {other:?}"),
    }
    // db declares its named port through the registration (the CNI plugin's `args.cni.ports`).
    let web = ContainerPort {
        name: "web".into(),
        container_port: 80,
        protocol: "TCP".into(),
    };
    c.add_pod_in("n1-p2", "data", "db", vec![web]);
    c.add_pod_in("n1-p1", "front", "client", vec![]);
    let back_dev = c.add_pod_in("n2-p1", "back", "client", vec![]);
    let rev = c.apply(DB_FROM_PROD);
    match c.wait(rev) {
        WaitOutcome::Done { nodes, .. } => assert_eq!(nodes, 2),
        other => panic!("policy wait: {other:?}"),
    }
    let labels_of = |id: u64| -> Vec<String> {
        c.cp(move |c| {
            c.list_identities()
                .expect("identities")
                .into_iter()
                .find(|i| u64::from(i.id) == id)
                .map(|i| i.labels)
                .unwrap_or_default()
        })
    };
    assert!(
        labels_of(u64::from(back_dev))
            .contains(&"k8s:io.cilium.k8s.namespace.labels.env=dev".to_string()),
        "the namespace's labels are in its pods' identity: {:?}",
        labels_of(u64::from(back_dev))
    );
    c.until_reachable("n1-p1", "n1-p2", true, "front is env=prod (same node)");
    c.until_reachable("n2-p1", "n1-p2", false, "back is env=dev (other node)");

    // back becomes prod: n2's agent moves its pod to a new identity, n1 learns it and lets it in.
    c.label_namespace("back", serde_json::json!({"env": "prod", "tier": "2"}));
    let took = c.until_reachable("n2-p1", "n1-p2", true, "back relabelled env=prod");
    eprintln!("relabel → cross-node traffic allowed after {took:?}");
    let back_prod = c.identity_of(1, "back/n2-p1");
    assert_ne!(
        back_prod,
        u64::from(back_dev),
        "a relabelled namespace's pod gets a new identity"
    );
    let labels = labels_of(back_prod);
    assert!(
        labels.contains(&"k8s:io.cilium.k8s.namespace.labels.env=prod".to_string())
            && labels.contains(&"k8s:io.cilium.k8s.namespace.labels.tier=2".to_string()),
        "{labels:?}"
    );
    // front becomes dev: its pod on db's own node is shut out.
    c.label_namespace("front", serde_json::json!({"env": "dev"}));
    c.until_reachable("n1-p1", "n1-p2", false, "front relabelled env=dev");
    // Deleting back's Namespace object drops its labels: its pod is no longer selected.
    c.cp(|c| {
        c.delete_policy(&namespace_key("back"))
            .expect("delete namespace")
    });
    c.until_reachable("n2-p1", "n1-p2", false, "back's labels are gone");
    // Egress to a named port of a pod on another node: ops (n2) reaches db (n1) on `web`,
    // resolved from db's endpoint record; nothing else.
    c.label_namespace("ops", serde_json::json!({"env": "prod"}));
    c.add_pod_in("n2-p2", "ops", "ops", vec![]);
    let rev = c.apply(OPS_TO_DB_WEB);
    match c.wait(rev) {
        WaitOutcome::Done { nodes, .. } => assert_eq!(nodes, 2),
        other => panic!("policy wait: {other:?}"),
    }
    c.until_reachable("n2-p2", "n1-p2", true, "ops → db:web, a remote named port");
    c.until_reachable(
        "n2-p2",
        "n1-p1",
        false,
        "ops → front: not allowed by ops' egress",
    );

    // An invalid label is refused by the control plane, naming the field; nothing changes.
    let refused = c.cp(|c| {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "front", "labels": {"env": "-prod"}}});
        c.apply_policy(&namespace_key("front"), &object)
            .expect_err("an invalid label value")
            .to_string()
    });
    assert!(refused.contains("metadata.labels.env"), "{refused}");
    c.until_reachable("n1-p1", "n1-p2", false, "front still env=dev");
    for pid in agents {
        kill(pid);
    }
}

/// The node's count of egress packets dropped for a spoofed source.
fn spoofed_drops(status: &serde_json::Value) -> u64 {
    status["verdicts"]["spoofed_source/egress"]
        .as_u64()
        .unwrap_or(0)
}
