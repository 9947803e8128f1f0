//! Palisade itself in a lab: the control-plane voters on their host, one agent per node, and
//! every pod created through the CNI plugin exactly as a container runtime creates it.
//!
//! ```text
//!  cp host (pal-<lab>-cp, 10.97.0.1): voters 1..N, Raft on :700k, API on :800k
//!        ▲ register, identities, endpoints, watch, acks
//!  node n<i> (pal-<lab>-n<i>): `palisade agent run --netns …` ◀── unix socket ── palisade-cni ADD
//!                                                                  (`ip netns exec <node>`, CNI_*)
//! ```
//!
//! Every process is recorded in the state before the next step, so `down` removes whatever a
//! failed `up` left.

use std::fs;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::exec::{run_output, spawn_in_netns};
use crate::procs::is_alive;
use crate::state::{
    ClusterState, LabState, PodState, ProcessRole, agent_dir, agent_socket, log_dir, pin_root,
};
use crate::{LabError, spec};

/// How long the control plane may take to elect a leader, and an agent to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The pods' MTU when the nodes encrypt: the WireGuard interface's (keymgr's default).
const TUNNEL_MTU: u32 = 1420;

/// Starts the control plane and the agents, then creates every pod through the CNI plugin.
pub(crate) fn start(state: &mut LabState) -> Result<(), LabError> {
    let Some(cluster) = state.cluster.clone() else {
        return Ok(());
    };
    make_credentials(state, &cluster)?;
    start_control_plane(state, &cluster)?;
    for i in 0..state.nodes.len() {
        start_agent(state, &cluster, i)?;
    }
    for i in 0..state.pods.len() {
        let host_iface = add_pod(state, &cluster, &state.pods[i])?;
        state.pods[i].host_iface = host_iface;
        state.save()?;
    }
    wait_published(state, &cluster)?;
    wait_peered(state, &cluster)
}

/// With encryption, waits until every agent has every other node as its WireGuard peer (and so
/// a route to its pods): until then pods on different nodes cannot reach each other, by design.
fn wait_peered(state: &LabState, c: &ClusterState) -> Result<(), LabError> {
    if !c.encryption {
        return Ok(());
    }
    let others = state.nodes.len().saturating_sub(1);
    for node in &state.nodes {
        let socket = agent_socket(&state.name, &node.name);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let peers = encrypt_status(&socket).map(|s| s["peers"].as_array().map_or(0, Vec::len));
            match peers {
                Ok(n) if n == others => break,
                last if Instant::now() >= deadline => {
                    return Err(LabError::NotReady {
                        pod: format!("node {}", node.name),
                        reason: match last {
                            Ok(n) => format!("{n} WireGuard peer(s), expected {others}"),
                            Err(e) => e,
                        },
                        log: log_dir(&state.name).join(format!("agent-{}.log", node.name)),
                    });
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    Ok(())
}

/// `EncryptStatus` asked of an agent over its socket (one JSON line each way).
fn encrypt_status(socket: &Path) -> Result<serde_json::Value, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(&palisade_api::agent::AgentRequest::EncryptStatus {})
        .map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    match serde_json::from_str(&answer).map_err(|e| e.to_string())? {
        palisade_api::agent::AgentResponse::Status { status } => Ok(status),
        other => Err(format!("agent answered {other:?}")),
    }
}

/// Waits until the control plane knows every node and every pod: `up` returns a cluster whose
/// state a user can read back at once (`node list`, `identity list`).
fn wait_published(state: &LabState, c: &ClusterState) -> Result<(), LabError> {
    let want = (state.nodes.len(), state.pods.len());
    until_control_plane(state, c, "agent-n1", move |client| {
        let seen = (
            client.list_nodes().map_err(|e| e.to_string())?.len(),
            client.list_endpoints().map_err(|e| e.to_string())?.len(),
        );
        if seen == want {
            Ok(())
        } else {
            Err(format!(
                "expected {} nodes and {} endpoints registered, saw {} and {}",
                want.0, want.1, seen.0, seen.1
            ))
        }
    })
}

/// Asks the control plane, as the operator and from inside its host namespace (one thread, one
/// client), until `ready` answers `Ok`, for at most [`START_TIMEOUT`]; the error carries the last
/// answer and points at the log of process `log_of`.
fn until_control_plane(
    state: &LabState,
    c: &ClusterState,
    log_of: &str,
    ready: impl Fn(&palisade_cp_client::Client) -> Result<(), String> + Send + 'static,
) -> Result<(), LabError> {
    let cfg = operator_client_config(state, c)?;
    let outcome = spawn_in_netns(&c.cp_netns, move || {
        let client = palisade_cp_client::Client::new(cfg).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match ready(&client) {
                Ok(()) => return Ok(()),
                Err(last) if Instant::now() >= deadline => return Err(last),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .join()
    .map_err(|_| "the polling thread panicked".to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    .and_then(|r| r);
    outcome.map_err(|reason| LabError::NotReady {
        pod: "control plane".to_string(),
        reason,
        log: log_dir(&state.name).join(format!("{log_of}.log")),
    })
}

/// Runs `palisade controlplane certs ARGS`.
fn certs(state: &LabState, args: &[&str]) -> Result<(), LabError> {
    let mut cmd = Command::new(&state.palisade_bin);
    cmd.args(["controlplane", "certs"]).args(args);
    crate::exec::run(&mut cmd, None).map(|_| ())
}

/// The lab's cluster CA, a certificate per member (IP SAN of the control plane's host) and per
/// node (role node, so an agent can act for its own node only), the CLI's trust directory, an
/// admin token and a read token (the web UI's). All under the lab's state directory, removed by
/// `down`.
fn make_credentials(state: &LabState, c: &ClusterState) -> Result<(), LabError> {
    let pki = ClusterState::pki_dir(&state.name);
    let ca = pki.join("ca");
    let s = |p: &Path| p.display().to_string();
    certs(state, &["init-ca", "--dir", &s(&ca)])?;
    let san = spec::CP_HOST_IP.to_string();
    let issue = |name: &str, role: &str, sans: &[&str]| {
        let out = s(&pki.join(name));
        let mut args = vec![
            "issue",
            "--ca-dir",
            &s(&ca),
            "--name",
            name,
            "--role",
            role,
            "--out",
            &out,
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        for san in sans {
            args.extend(["--san".to_string(), (*san).to_string()]);
        }
        certs(state, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    for k in 1..=c.voters {
        issue(&format!("cp{k}"), "member", &[&san])?;
    }
    for n in &state.nodes {
        issue(&n.name, "node", &[])?;
    }
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| LabError::Io {
            action,
            path,
            source,
        }
    };
    let operator = c.operator_tls_dir(&state.name);
    fs::create_dir_all(&operator).map_err(io("create", &operator))?;
    fs::copy(ca.join("ca.pem"), operator.join("ca.pem")).map_err(io("write", &operator))?;
    // The cluster gossip key every agent seals its gossip with (0600, like every secret here).
    let mut gossip = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut gossip))
        .map_err(io("read", Path::new("/dev/urandom")))?;
    let gossip_file = ClusterState::gossip_key_file(&state.name);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&gossip_file)
            .map_err(io("create", &gossip_file))?;
        let hex: String = gossip.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(f, "{hex}").map_err(io("write", &gossip_file))?;
    }
    for file in [
        c.admin_token_file(&state.name),
        ClusterState::read_token_file(&state.name),
    ] {
        let mut secret = [0u8; 24];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .map_err(io("read", Path::new("/dev/urandom")))?;
        let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(io("create", &file))?;
        writeln!(f, "{token}").map_err(io("write", &file))?;
    }
    Ok(())
}

fn start_control_plane(state: &mut LabState, c: &ClusterState) -> Result<(), LabError> {
    for k in 1..=c.voters {
        let args = voter_args(state, c, k);
        let bin = state.palisade_bin.clone();
        state.spawn_process(
            ProcessRole::ControlPlane,
            &format!("cp{k}"),
            Some(&c.cp_netns),
            &bin,
            &args,
        )?;
    }
    // A leader is elected when a member's status names one.
    until_control_plane(state, c, "cp1", |client| {
        let status = client.cluster_status().map_err(|e| e.to_string())?;
        if status["leader"].as_u64().is_some() {
            Ok(())
        } else {
            Err(format!("no leader elected within {START_TIMEOUT:?}"))
        }
    })
}

/// The arguments of voter `k` (1-based) of the lab's control plane (`palisade ARGS`, in the
/// control plane's host); chaos tests restart voters with them. `--init` is a no-op on a
/// non-empty log, so a restart may pass it again.
pub fn voter_args(state: &LabState, c: &ClusterState, k: usize) -> Vec<String> {
    let peers: Vec<String> = (1..=c.voters)
        .flat_map(|k| {
            let (raft, api) = ClusterState::voter_addrs(k);
            ["--peer".to_string(), format!("{k}={raft}={api}")]
        })
        .collect();
    {
        let (raft, api) = ClusterState::voter_addrs(k);
        let data = crate::state::state_dir(&state.name).join(format!("cp{k}"));
        let mut args = vec![
            "controlplane".to_string(),
            "--id".to_string(),
            k.to_string(),
            "--data-dir".to_string(),
            data.display().to_string(),
            "--raft-listen".to_string(),
            raft,
            "--api-listen".to_string(),
            api,
            // The automation API and the flow relay (to the agents' observers on :4244).
            "--grpc-listen".to_string(),
            ClusterState::voter_grpc_addr(k),
            "--cluster-cidr".to_string(),
            state.pod_cidr.to_string(),
            "--tls-dir".to_string(),
            ClusterState::pki_dir(&state.name)
                .join(format!("cp{k}"))
                .display()
                .to_string(),
            "--admin-token-file".to_string(),
            c.admin_token_file(&state.name).display().to_string(),
            "--read-token-file".to_string(),
            ClusterState::read_token_file(&state.name)
                .display()
                .to_string(),
            // The web UI, reached from the host through `palisade ui --lab`.
            "--ui-listen".to_string(),
            ClusterState::voter_ui_addr(k),
            "--init".to_string(),
        ];
        args.extend(peers);
        args
    }
}

/// How the operator (the CLI's `--lab`, and the lab itself) reaches the control plane: the
/// lab's CA as the only trusted root, its admin token.
pub fn operator_client_config(
    state: &LabState,
    c: &ClusterState,
) -> Result<palisade_cp_client::ClientConfig, LabError> {
    let bad = |e: palisade_cp_client::ClientError| LabError::InvalidSpec {
        name: state.name.clone(),
        reason: format!("control-plane credentials: {e}"),
    };
    let tls =
        palisade_cp_client::TlsConfig::from_dir(&c.operator_tls_dir(&state.name)).map_err(bad)?;
    Ok(palisade_cp_client::ClientConfig::from_flags(
        &c.api_urls,
        Some(&c.admin_token_file(&state.name)),
    )
    .map_err(bad)?
    .with_tls(tls)
    .with_timeout(Duration::from_secs(2)))
}

fn start_agent(state: &mut LabState, c: &ClusterState, i: usize) -> Result<(), LabError> {
    let node = state.nodes[i].clone();
    let dir = agent_dir(&state.name, &node.name);
    fs::create_dir_all(&dir).map_err(|source| LabError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let socket = agent_socket(&state.name, &node.name);
    let args = agent_args(state, c, i);
    let bin = state.palisade_bin.clone();
    let agent = state.spawn_process(
        ProcessRole::NodeAgent,
        &format!("agent-{}", node.name),
        None,
        &bin,
        &args,
    )?;
    let deadline = Instant::now() + START_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if !is_alive(agent.pid, agent.start_time) || Instant::now() >= deadline {
            return Err(LabError::NotReady {
                pod: format!("agent of {}", node.name),
                reason: "its socket did not open".to_string(),
                log: agent.log,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The arguments of the agent of node `i` (0-based) (`palisade ARGS`, in the root namespace: it
/// enters the node itself); chaos tests restart agents with them.
pub fn agent_args(state: &LabState, c: &ClusterState, i: usize) -> Vec<String> {
    let node = &state.nodes[i];
    let dir = agent_dir(&state.name, &node.name);
    let socket = agent_socket(&state.name, &node.name);
    let mut args = vec![
        "agent".to_string(),
        "run".to_string(),
        "--node".to_string(),
        node.name.clone(),
        "--pod-cidr".to_string(),
        node.pod_cidr.to_string(),
        "--node-ip".to_string(),
        node.underlay_ip.to_string(),
        "--socket".to_string(),
        socket.display().to_string(),
        "--state-dir".to_string(),
        dir.join("state").display().to_string(),
        "--small-maps".to_string(),
        // The agent enters the node itself and stays in the host's mount namespace, where the
        // pins live (`ip netns exec` would hide /sys/fs/bpf).
        "--netns".to_string(),
        node.netns.clone(),
        "--bpf-pin-dir".to_string(),
        pin_root(&state.name).join(&node.name).display().to_string(),
        "--metrics-listen".to_string(),
        format!("{}:9962", node.underlay_ip),
        "--hubble-listen".to_string(),
        format!("{}:4244", node.underlay_ip),
    ];
    if c.encryption {
        args.extend([
            "--encryption".to_string(),
            "wireguard".to_string(),
            // Seconds, not minutes: labs and tests rotate many times in a row.
            "--wireguard-key-grace".to_string(),
            "20s".to_string(),
        ]);
        if c.node_encryption {
            args.push("--encrypt-node".to_string());
        }
        if let Some(secs) = c.wireguard_rotation_secs {
            args.extend([
                "--wireguard-rotation-interval".to_string(),
                format!("{secs}s"),
            ]);
        }
    }
    if let Some(n) = c.l7_proxy_workers {
        args.extend(["--l7-proxy-workers".to_string(), n.to_string()]);
    }
    for url in &c.api_urls {
        args.extend(["--control-plane".to_string(), url.clone()]);
    }
    // The change feed as the members' gRPC stream (lists and writes stay on REST).
    for k in 1..=c.voters {
        args.extend([
            "--control-plane-grpc".to_string(),
            format!("https://{}", ClusterState::voter_grpc_addr(k)),
        ]);
    }
    // Gossip between the agents on the underlay, every other node as a seed.
    args.extend([
        "--gossip".to_string(),
        "enabled".to_string(),
        "--gossip-key-file".to_string(),
        ClusterState::gossip_key_file(&state.name)
            .display()
            .to_string(),
        "--gossip-listen".to_string(),
        format!("{}:{}", node.underlay_ip, ClusterState::GOSSIP_PORT),
    ]);
    for other in state.nodes.iter().filter(|o| o.name != node.name) {
        args.extend([
            "--gossip-peers".to_string(),
            format!("{}:{}", other.underlay_ip, ClusterState::GOSSIP_PORT),
        ]);
    }
    args.extend([
        "--control-plane-tls-dir".to_string(),
        ClusterState::pki_dir(&state.name)
            .join(&node.name)
            .display()
            .to_string(),
    ]);
    args
}

/// Starts one more pod on a running cluster lab, as a runtime would (its namespace, then
/// `palisade-cni ADD` in its node), and records it in the state (so `down` removes it). Chaos
/// tests start pods while a node is cut off. Runs no server in it.
pub fn start_pod(
    state: &mut LabState,
    name: &str,
    node: &str,
    labels: std::collections::BTreeMap<String, String>,
    ip: std::net::Ipv4Addr,
) -> Result<PodState, LabError> {
    let c = state.cluster.clone().ok_or_else(|| LabError::InvalidSpec {
        name: state.name.clone(),
        reason: "the lab runs no cluster".to_string(),
    })?;
    if state.pod(name).is_some() {
        return Err(LabError::InvalidSpec {
            name: state.name.clone(),
            reason: format!("pod `{name}` exists"),
        });
    }
    let mut pod = PodState {
        name: name.to_string(),
        namespace: spec::DEFAULT_POD_NAMESPACE.to_string(),
        labels,
        node: node.to_string(),
        netns: format!("{}{}", crate::state::netns_prefix(&state.name), name),
        iface: "eth0".to_string(),
        host_iface: String::new(),
        ip: IpAddr::V4(ip),
        service_account: None,
        ports: Vec::new(),
    };
    pod.host_iface = add_pod(state, &c, &pod)?;
    state.pods.push(pod.clone());
    state.save()?;
    Ok(pod)
}

/// Creates a pod's namespace and runs `palisade-cni ADD` for it in its node, as a runtime
/// would; returns the host-side interface the plugin made.
fn add_pod(state: &LabState, c: &ClusterState, pod: &PodState) -> Result<String, LabError> {
    let node = state
        .node(&pod.node)
        .ok_or_else(|| LabError::InvalidSpec {
            name: state.name.clone(),
            reason: format!("pod `{}` names unknown node `{}`", pod.name, pod.node),
        })?
        .clone();
    crate::exec::ip(&["netns", "add", &pod.netns])?;
    // As in the rest of the lab (IPv6 pods are not planned yet): no router solicitations that
    // the datapath would count as spoofed.
    crate::exec::Cmds(&crate::exec::System).sysctl(&pod.netns, &crate::up::NO_IPV6)?;
    let labels: Vec<serde_json::Value> = pod
        .labels
        .iter()
        .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
        .collect();
    let mut conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "palisade",
        "type": "palisade-cni",
        "agentSocket": agent_socket(&state.name, &node.name),
        "args": {"cni": {"labels": labels}},
    });
    if let Some(sa) = &pod.service_account {
        conf["args"]["cni"]["serviceAccount"] = serde_json::json!(sa);
    }
    if !pod.ports.is_empty() {
        conf["args"]["cni"]["ports"] = serde_json::json!(pod.ports);
    }
    if state.cluster.as_ref().is_some_and(|c| c.encryption) {
        // The tunnel's MTU (1420), as Cilium lowers pod MTUs when WireGuard is on: a full-size
        // pod packet would not fit the tunnel.
        conf["mtu"] = serde_json::json!(TUNNEL_MTU);
    }
    let IpAddr::V4(ip) = pod.ip else {
        return Err(LabError::InvalidSpec {
            name: state.name.clone(),
            reason: format!("pod `{}`: IPv6 pods are not supported by the lab", pod.name),
        });
    };
    let container = container_id(&state.name, &pod.name);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.netns])
        .arg(&c.cni_bin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &container)
        .env("CNI_NETNS", Path::new("/run/netns").join(&pod.netns))
        .env("CNI_IFNAME", &pod.iface)
        .env(
            "CNI_PATH",
            c.cni_bin.parent().unwrap_or(Path::new("/")).as_os_str(),
        )
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={};IP={ip}",
                pod.namespace,
                pod.name.replace('/', "-")
            ),
        );
    let out = run_output(&mut cmd, Some(&conf.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("palisade-cni ADD for pod `{}`", pod.name),
            status: out.status.to_string(),
            stderr: format!(
                "{} {}",
                result["msg"].as_str().unwrap_or(stdout.trim()),
                result["details"].as_str().unwrap_or("")
            )
            .trim()
            .to_string(),
        });
    }
    // The host side is the interface without a sandbox.
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.get("sandbox").is_none())
        .and_then(|i| i["name"].as_str())
        .map(str::to_string)
        .ok_or_else(|| LabError::Command {
            command: format!("palisade-cni ADD for pod `{}`", pod.name),
            status: "no host interface in the result".to_string(),
            stderr: stdout.into_owned(),
        })
}

/// Restarts a pod the way a runtime replaces a dead sandbox: every process inside it is killed,
/// `palisade-cni DEL` releases it, its namespace is deleted, and a fresh namespace gets the node's
/// next free address through `palisade-cni ADD` (never the old one, so the restart is visible as
/// a new IP, as in Kubernetes). Returns the new address; the pod's processes are the caller's to
/// start again.
pub(crate) fn restart_pod(state: &mut LabState, name: &str) -> Result<IpAddr, LabError> {
    let Some(cluster) = state.cluster.clone() else {
        return Err(LabError::InvalidSpec {
            name: state.name.clone(),
            reason: format!("pod `{name}`: restarting a pod needs a lab with a cluster"),
        });
    };
    let Some(index) = state.pods.iter().position(|p| p.name == name) else {
        return Err(LabError::UnknownPod {
            lab: state.name.clone(),
            pod: name.to_string(),
            known: state.pod_names(),
        });
    };
    let pod = state.pods[index].clone();
    let node = state
        .node(&pod.node)
        .cloned()
        .ok_or_else(|| LabError::InvalidSpec {
            name: state.name.clone(),
            reason: format!("pod `{name}` names unknown node `{}`", pod.node),
        })?;
    // Processes keep a namespace alive: kill them first, and forget their records.
    let pids: Vec<u32> = crate::procs::pids_in_netns(std::slice::from_ref(&pod.netns))
        .into_values()
        .flatten()
        .collect();
    pids.iter().for_each(|p| crate::procs::kill_now(*p));
    crate::procs::wait_gone(&pids, Duration::from_secs(5));
    state
        .processes
        .retain(|r| r.netns.as_deref() != Some(pod.netns.as_str()));
    cni_del(state, &cluster, &pod, &node.netns)?;
    crate::exec::ip(&["netns", "del", &pod.netns])?;
    let taken: Vec<IpAddr> = state.pods.iter().map(|p| p.ip).collect();
    let new_ip = (1..=spec::MAX_PODS_PER_NODE)
        .filter_map(|k| crate::plan::pod_ip(node.pod_cidr, k))
        .map(IpAddr::V4)
        .find(|ip| !taken.contains(ip))
        .ok_or_else(|| LabError::InvalidSpec {
            name: state.name.clone(),
            reason: format!("pod `{name}`: node `{}` has no free address", node.name),
        })?;
    state.pods[index].ip = new_ip;
    state.save()?;
    let host_iface = add_pod(state, &cluster, &state.pods[index])?;
    state.pods[index].host_iface = host_iface;
    state.save()?;
    // Hosts outside the cluster route each pod by /32 via its node (see `up`): move the route.
    for x in &state.externals {
        let _ = crate::exec::ip(&["-n", &x.netns, "route", "del", &format!("{}/32", pod.ip)]);
        crate::exec::ip(&[
            "-n",
            &x.netns,
            "route",
            "replace",
            &format!("{new_ip}/32"),
            "via",
            &node.underlay_ip.to_string(),
            "dev",
            "eth0",
        ])?;
    }
    Ok(new_ip)
}

/// `palisade-cni DEL` for a pod, inside its node, as a runtime calls it when a sandbox goes.
fn cni_del(
    state: &LabState,
    c: &ClusterState,
    pod: &PodState,
    node_netns: &str,
) -> Result<(), LabError> {
    let node_name = &pod.node;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "palisade",
        "type": "palisade-cni",
        "agentSocket": agent_socket(&state.name, node_name),
    });
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node_netns])
        .arg(&c.cni_bin)
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", container_id(&state.name, &pod.name))
        .env("CNI_NETNS", Path::new("/run/netns").join(&pod.netns))
        .env("CNI_IFNAME", &pod.iface)
        .env(
            "CNI_PATH",
            c.cni_bin.parent().unwrap_or(Path::new("/")).as_os_str(),
        )
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.namespace,
                pod.name.replace('/', "-")
            ),
        );
    let out = run_output(&mut cmd, Some(&conf.to_string()))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("palisade-cni DEL for pod `{}`", pod.name),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    Ok(())
}

/// The container id the lab's runtime role uses for a pod (CNI ids are `[A-Za-z0-9_.-]`).
pub fn container_id(lab: &str, pod: &str) -> String {
    format!("{lab}-{}", pod.replace('/', "-"))
}
