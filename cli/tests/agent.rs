//! The node agent as a real process in a lab node: endpoints registered over its socket (as the
//! CNI plugin does), policies from its policy directory, enforcement measured with real traffic,
//! policy changes picked up live, invalid policy files ignored whole, endpoints restored after a
//! restart. Needs root; `make test` runs it as root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_api::agent::{AgentRequest, AgentResponse, EndpointSpec};
use palisade_lab::exec::spawn_in_netns;
use palisade_lab::{Lab, LabSpec, ProcessRole, Protocol};
use palisade_node_agent::agent;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

struct Cleanup {
    lab: String,
    dir: PathBuf,
    pins: PathBuf,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Lab::down(&self.lab);
        let _ = std::fs::remove_dir_all(&self.dir);
        // Pinned maps and links outlive the agent by design; the test removes its own.
        let _ = std::fs::remove_dir_all(&self.pins);
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
      ports: [{port: 80, protocol: TCP}, {port: 9100, protocol: TCP}]
";

/// Default deny ingress for n1-p1.
const ISOLATE_P1: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-p1, namespace: default}
spec:
  podSelector: {matchLabels: {app: n1-p1}}
  policyTypes: [Ingress]
";

fn spawn_agent(lab: &mut Lab, socket: &Path, state: &Path, policies: &Path, pins: &Path) -> u32 {
    let node = lab.state().nodes[0].clone();
    // The agent enters the node's namespace itself (--netns), staying in the host's mount
    // namespace where /sys/fs/bpf (the pins) lives.
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
        "--netns",
        &node.netns,
        "--bpf-pin-dir",
        pins.to_str().expect("utf8"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rec = lab
        .spawn(
            ProcessRole::NodeAgent,
            "agent-n1",
            None,
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

/// A TCP connection from `from` to `to_ip:9100` exchanging a line every 25 ms until finished.
struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    client: std::thread::JoinHandle<Result<(usize, Vec<String>), palisade_lab::LabError>>,
}

impl Stream {
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.client.join().expect("client thread").expect("netns")
    }
}

fn long_lived_stream(from: &str, to_netns: &str, to_ip: std::net::IpAddr) -> Stream {
    use std::io::{BufRead, BufReader, Write};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    spawn_in_netns(to_netns, move || {
        let listener = std::net::TcpListener::bind(("0.0.0.0", 9100)).expect("bind 9100");
        ready_tx.send(()).expect("ready");
        if let Ok((conn, _)) = listener.accept() {
            let mut w = conn.try_clone().expect("clone");
            for line in BufReader::new(conn).lines().map_while(Result::ok) {
                if w.write_all(format!("{line}\n").as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let client = spawn_in_netns(from, move || {
        let mut errors = Vec::new();
        let conn = match std::net::TcpStream::connect_timeout(
            &(to_ip, 9100).into(),
            Duration::from_secs(2),
        ) {
            Ok(c) => c,
            Err(e) => return (0, vec![format!("connect: {e}")]),
        };
        conn.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut w = conn.try_clone().expect("clone");
        let mut r = BufReader::new(conn);
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let mut line = String::new();
            let sent = w.write_all(format!("ping {n}\n").as_bytes());
            match sent.and_then(|_| r.read_line(&mut line)) {
                Ok(0) => {
                    errors.push(format!("closed after {n} round trips"));
                    break;
                }
                Ok(_) if line.trim() == format!("ping {n}") => n += 1,
                Ok(_) => errors.push(format!("wrong echo {line:?}")),
                Err(e) => {
                    errors.push(format!("after {n} round trips: {e}"));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        (n, errors)
    });
    Stream { stop, client }
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
    let pins = PathBuf::from(format!("/sys/fs/bpf/palisade-test-{}", std::process::id()));
    let _cleanup = Cleanup {
        lab: name.clone(),
        dir: dir.clone(),
        pins: pins.clone(),
    };
    let (socket, state, policies) = (
        dir.join("agent.sock"),
        dir.join("state"),
        dir.join("policies"),
    );
    std::fs::create_dir_all(&policies).expect("dirs");
    std::fs::write(policies.join("p2.yaml"), ALLOW_P1_TO_P2).expect("policy");

    let mut lab = Lab::up(&LabSpec::new(&name, 1, 3, BIN)).expect("lab up");
    let pid = spawn_agent(&mut lab, &socket, &state, &policies, &pins);

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
    let mut identities = BTreeMap::new();
    for pod in lab.state().pods.clone() {
        let spec = EndpointSpec {
            container_id: format!("c-{}", pod.name),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{}", pod.netns),
            host_iface: pod.host_iface.clone(),
            pod_namespace: "default".into(),
            pod_name: pod.name.clone(),
            labels: BTreeMap::from([("app".to_string(), pod.name.clone())]).into(),
            service_account: None,
            ips: vec![pod.ip],
            ports: vec![],
            from_pod_record: false,
            pod_uid: None,
        };
        match agent::request(&socket, &AgentRequest::EndpointAdd(spec)).expect("endpoint add") {
            AgentResponse::EndpointAdded { identity, .. } => {
                assert!(identity > 255, "a cluster identity");
                identities.insert(pod.name.clone(), identity);
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

    // A long-lived TCP connection p1 -> p2:9100 runs across the agent's death and restart.
    let p1 = lab.state().pod("n1-p1").expect("p1").netns.clone();
    let p2 = lab.state().pod("n1-p2").expect("p2").clone();
    let stream = long_lived_stream(&p1, &p2.netns, p2.ip);

    // The agent dies: the pinned programs and maps keep enforcing (never fail open).
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !reachable(&lab, "n1-p3", "n1-p2"),
        "still denied with the agent down"
    );
    assert!(
        reachable(&lab, "n1-p1", "n1-p2"),
        "still allowed with the agent down"
    );

    // Restart: the registry and the pins are adopted, nothing is re-registered by hand.
    spawn_agent(&mut lab, &socket, &state, &policies, &pins);
    assert_eq!(
        status(&socket)["endpoints"].as_array().map(Vec::len),
        Some(3),
        "endpoints restored"
    );
    assert!(
        !reachable(&lab, "n1-p3", "n1-p2"),
        "p2 isolated after restart"
    );
    assert!(reachable(&lab, "n1-p1", "n1-p2"), "and p1 still allowed");
    let (round_trips, errors) = stream.finish();
    assert_eq!(
        errors,
        Vec::<String>::new(),
        "the established connection saw no error"
    );
    assert!(
        round_trips >= 20,
        "the connection kept carrying data: {round_trips} round trips"
    );

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

    let p2_identity = identities["n1-p2"];
    // The pod comes back with a new address (re-created): same labels, so the same identity and
    // the same policy, at the new address.
    let p2 = lab.state().pod("n1-p2").expect("p2").clone();
    let node = lab.state().nodes[0].clone();
    let new_ip: std::net::IpAddr = "10.200.1.99".parse().expect("ip");
    let sh = |args: &[&str]| {
        assert!(
            Command::new("ip")
                .args(args)
                .status()
                .expect("ip")
                .success(),
            "ip {args:?}"
        )
    };
    // New address first: removing an interface's last address would flush its routes.
    sh(&[
        "-n",
        &p2.netns,
        "addr",
        "add",
        "10.200.1.99/32",
        "dev",
        "eth0",
    ]);
    sh(&[
        "-n",
        &p2.netns,
        "addr",
        "del",
        &format!("{}/32", p2.ip),
        "dev",
        "eth0",
    ]);
    sh(&["-n", &node.netns, "route", "del", &format!("{}/32", p2.ip)]);
    sh(&[
        "-n",
        &node.netns,
        "route",
        "add",
        "10.200.1.99/32",
        "dev",
        &p2.host_iface,
    ]);
    let spec = EndpointSpec {
        container_id: "c-n1-p2-new".into(),
        ifname: "eth0".into(),
        netns: format!("/run/netns/{}", p2.netns),
        host_iface: p2.host_iface.clone(),
        pod_namespace: "default".into(),
        pod_name: "n1-p2".into(),
        labels: BTreeMap::from([("app".to_string(), "n1-p2".to_string())]).into(),
        service_account: None,
        ips: vec![new_ip],
        ports: vec![],
        from_pod_record: false,
        pod_uid: None,
    };
    let AgentResponse::EndpointAdded {
        identity: again, ..
    } = agent::request(&socket, &AgentRequest::EndpointAdd(spec)).expect("re-add")
    else {
        panic!("re-add refused")
    };
    assert_eq!(again, p2_identity, "same labels, same identity");
    let probe = |from: &str| {
        lab.probe(from, new_ip, 80, Protocol::Tcp, Duration::from_millis(600))
            .expect("probe")
            .reachable
    };
    assert!(
        probe("n1-p1"),
        "p1 still allowed at the new address: {}",
        status(&socket)
    );
    assert!(!probe("n1-p3"), "p3 still denied at the new address");
}

/// `agent run`'s gossip flags: every mistake is refused before anything starts, with an error
/// naming the flag (and never echoing the key).
#[test]
fn gossip_flags_are_validated_with_errors_naming_the_flag() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("pal-gossip-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("gossip.key");
    let secret = "0123456789abcdef".repeat(4);
    std::fs::write(&key, format!("{secret}\n")).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let bad = dir.join("bad.key");
    std::fs::write(&bad, "not a key\n").expect("bad key");
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let open = dir.join("open.key");
    std::fs::write(&open, format!("{secret}\n")).expect("open key");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let state = dir.join("state");
    // A node certificate of the cluster CA, but for another node: it cannot sign n1's gossip.
    let (ca, n9) = (dir.join("ca"), dir.join("n9"));
    palisade_control_plane::tls::init_ca(&ca, 30).expect("CA");
    palisade_control_plane::tls::issue(
        &ca,
        "n9",
        palisade_control_plane::tls::CertRole::Node,
        &n9,
        &[],
        30,
    )
    .expect("n9's certificate");
    let base = [
        "agent",
        "run",
        "--node",
        "n1",
        "--pod-cidr",
        "10.200.1.0/24",
        "--node-ip",
        "10.98.0.11",
        "--socket",
        "/nonexistent/agent.sock",
        "--state-dir",
        state.to_str().expect("utf8"),
    ];
    let cp = ["--control-plane", "https://127.0.0.1:1"];
    let (k, b, o) = (
        key.to_str().expect("utf8"),
        bad.to_str().expect("utf8"),
        open.to_str().expect("utf8"),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--gossip-key-file", k], "need --gossip enabled"),
        (
            vec!["--gossip", "enabled", "--gossip-key-file", k],
            "needs --control-plane",
        ),
        (
            [&cp[..], &["--gossip", "enabled"]].concat(),
            "needs --gossip-key-file",
        ),
        (
            [&cp[..], &["--gossip", "enabled", "--gossip-key-file", o]].concat(),
            "mode 644",
        ),
        (
            [&cp[..], &["--gossip", "enabled", "--gossip-key-file", b]].concat(),
            "64 hex digits",
        ),
        (
            [
                &cp[..],
                &[
                    "--gossip",
                    "enabled",
                    "--gossip-key-file",
                    k,
                    "--gossip-peers",
                    "10.98.0.12,nonsense",
                ],
            ]
            .concat(),
            "--gossip-peers `nonsense`",
        ),
        (
            [
                &cp[..],
                &[
                    "--gossip",
                    "enabled",
                    "--gossip-key-file",
                    k,
                    "--gossip-interval",
                    "5ms",
                ],
            ]
            .concat(),
            "--gossip-interval",
        ),
        (
            [&cp[..], &["--gossip", "enabled", "--gossip-key-file", k]].concat(),
            "needs --control-plane-tls-dir",
        ),
        (
            [
                &cp[..],
                &[
                    "--gossip",
                    "enabled",
                    "--gossip-key-file",
                    k,
                    "--control-plane-tls-dir",
                    n9.to_str().expect("utf8"),
                ],
            ]
            .concat(),
            "does not name node `n1`",
        ),
    ];
    for (extra, want) in cases {
        let out = Command::new(BIN)
            .args(base)
            .args(&extra)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(
            stderr.contains(want),
            "{extra:?}: expected `{want}` in: {stderr}"
        );
        assert!(!stderr.contains(&secret), "the key leaked: {stderr}");
        assert!(
            !state.exists(),
            "{extra:?}: the agent started before refusing"
        );
    }
    let help = Command::new(BIN)
        .args(["agent", "run", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--gossip <GOSSIP>",
        "--gossip-key-file",
        "--gossip-listen",
        "--gossip-peers",
        "--gossip-interval",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
