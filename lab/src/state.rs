//! [`LabState`]: the lab as recorded on disk in `/run/palisade/labs/<lab>/state.json`.
//!
//! The state is written before anything is created (phase `creating`, the whole plan) and again
//! after every process start, so `down` can always find what a crashed `up` left behind.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Ipv4Cidr, LabError};

/// Where every lab keeps its state directory.
pub const STATE_ROOT: &str = "/run/palisade/labs";
/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// Where `ip netns exec` looks for per-namespace files (`<ns>/resolv.conf` replaces the
/// namespace's /etc/resolv.conf for the command it runs).
pub const NETNS_ETC: &str = "/etc/netns";

/// The state directory of a lab.
pub fn state_dir(lab: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(lab)
}

/// The state file of a lab.
pub fn state_file(lab: &str) -> PathBuf {
    state_dir(lab).join("state.json")
}

/// The log directory of a lab.
pub fn log_dir(lab: &str) -> PathBuf {
    state_dir(lab).join("logs")
}

/// Prefix of every network namespace of a lab: `pal-<lab>-`.
pub fn netns_prefix(lab: &str) -> String {
    format!("pal-{lab}-")
}

/// Life-cycle phase recorded in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `up` is (or was, if it crashed) creating the lab.
    Creating,
    /// `up` finished; every server answered.
    Ready,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Creating => "creating",
            Phase::Ready => "ready",
        })
    }
}

/// The whole lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// State format version.
    pub version: u32,
    /// Lab name.
    pub name: String,
    /// Life-cycle phase.
    pub phase: Phase,
    /// The palisade binary used for servers and probes.
    pub palisade_bin: PathBuf,
    /// Underlay network of the fabric bridge.
    pub underlay_cidr: Ipv4Cidr,
    /// Cluster pod network.
    pub pod_cidr: Ipv4Cidr,
    /// The fabric namespace holding the underlay bridge.
    pub fabric: FabricState,
    /// Nodes, in order.
    pub nodes: Vec<NodeState>,
    /// Pods of every node, in order (node 1's pods first).
    pub pods: Vec<PodState>,
    /// Processes started for the lab (servers now; agents and voters later).
    pub processes: Vec<ProcessRecord>,
    /// TCP ports every lab pod serves.
    pub serve_tcp: Vec<u16>,
    /// UDP ports every lab pod serves.
    pub serve_udp: Vec<u16>,
    /// HTTP ports every pod serves (older states have none).
    #[serde(default)]
    pub serve_http: Vec<u16>,
    /// Hosts outside the cluster on the fabric.
    #[serde(default)]
    pub externals: Vec<ExternalState>,
    /// Whether node namespaces run workload servers too.
    #[serde(default)]
    pub serve_nodes: bool,
    /// The Palisade cluster running in the lab (control plane, agents, CNI-made pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterState>,
}

/// The Palisade cluster of a lab: where its control plane listens and where each node's agent
/// keeps its socket, state and pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Control-plane voters.
    pub voters: usize,
    /// The `palisade-cni` plugin.
    pub cni_bin: PathBuf,
    /// The control plane's host namespace.
    pub cp_netns: String,
    /// WireGuard between the nodes.
    #[serde(default)]
    pub encryption: bool,
    /// Host-to-host traffic between the nodes through the tunnel too (`--encrypt-node`).
    #[serde(default)]
    pub node_encryption: bool,
    /// The agents' scheduled key rotation in seconds (`None`: the agent's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_rotation_secs: Option<u64>,
    /// The agents' L7 proxy threads (`None`: the agent's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7_proxy_workers: Option<usize>,
    /// Each voter's client API URL.
    pub api_urls: Vec<String>,
}

impl ClusterState {
    /// The lab's certificates: `ca/` (the cluster CA), `cp<k>/` (members), `<node>/` (agents),
    /// `operator/` (just `ca.pem`, for the CLI).
    pub fn pki_dir(lab: &str) -> PathBuf {
        state_dir(lab).join("pki")
    }

    /// The TLS directory the CLI uses for this lab (trusts the lab's CA, no client certificate).
    pub fn operator_tls_dir(&self, lab: &str) -> PathBuf {
        Self::pki_dir(lab).join("operator")
    }

    /// The lab's admin bearer token (mode 0600).
    pub fn admin_token_file(&self, lab: &str) -> PathBuf {
        state_dir(lab).join("admin.token")
    }

    /// The agents' gossip port.
    pub const GOSSIP_PORT: u16 = 7946;

    /// The cluster gossip key every agent gets (64 hex digits, mode 0600).
    pub fn gossip_key_file(lab: &str) -> PathBuf {
        Self::pki_dir(lab).join("gossip.key")
    }

    /// Voter `k`'s (1-based) Raft and API listen addresses on the control plane's host.
    pub fn voter_addrs(k: usize) -> (String, String) {
        let ip = crate::spec::CP_HOST_IP;
        (format!("{ip}:{}", 7000 + k), format!("{ip}:{}", 8000 + k))
    }

    /// Voter `k`'s gRPC listen address (automation API and the flow relay).
    pub fn voter_grpc_addr(k: usize) -> String {
        format!("{}:{}", crate::spec::CP_HOST_IP, 9000 + k)
    }

    /// Voter `k`'s web UI address: Hubble UI's port 12000 for the first voter, 12001 for the
    /// second, ...
    pub fn voter_ui_addr(k: usize) -> String {
        format!("{}:{}", crate::spec::CP_HOST_IP, 11_999 + k)
    }

    /// The lab's read-only bearer token (mode 0600): what the web UI's link carries.
    pub fn read_token_file(lab: &str) -> PathBuf {
        state_dir(lab).join("read.token")
    }
}

/// The directory of node `node`'s agent (socket, state) in lab `lab`.
pub fn agent_dir(lab: &str, node: &str) -> PathBuf {
    state_dir(lab).join("agents").join(node)
}

/// The unix socket of node `node`'s agent in lab `lab`.
pub fn agent_socket(lab: &str, node: &str) -> PathBuf {
    agent_dir(lab, node).join("agent.sock")
}

/// The bpffs directory holding the pins of every agent of lab `lab` (removed by `down`).
pub fn pin_root(lab: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("palisade-lab-{lab}"))
}

/// A host outside the cluster: a namespace whose `eth0` plugs into the fabric bridge, holding
/// one address outside the underlay; nodes reach it on the bridge, it reaches pods via their node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalState {
    /// Name.
    pub name: String,
    /// `pal-<lab>-x<k>`.
    pub netns: String,
    /// Its port on the bridge (`x<k>`).
    pub fabric_iface: String,
    /// Its address (a /32 on `eth0`).
    pub ip: Ipv4Addr,
}

/// The fabric: one namespace with one bridge that every node's underlay veth plugs into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricState {
    /// `pal-<lab>-fabric`.
    pub netns: String,
    /// `br0`.
    pub bridge: String,
}

/// A node: a namespace with an underlay veth and one veth per pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// `n<i>`.
    pub name: String,
    /// 1-based index.
    pub index: usize,
    /// `pal-<lab>-n<i>`.
    pub netns: String,
    /// Underlay interface inside the node (`eth0`).
    pub underlay_iface: String,
    /// The peer of `eth0` in the fabric namespace (`n<i>`, enslaved to `br0`).
    pub fabric_iface: String,
    /// `10.98.0.(10+i)` by default.
    pub underlay_ip: Ipv4Addr,
    /// Prefix length of the underlay address.
    pub underlay_prefix: u8,
    /// `10.200.i.0/24`.
    pub pod_cidr: Ipv4Cidr,
}

/// A pod: a namespace whose `eth0` is a veth to the node's `lxc<j>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// `n<i>-p<j>`.
    pub name: String,
    /// k8s-ish namespace (`default`).
    pub namespace: String,
    /// Labels (`app=<name>`, `node=<node>` to start with).
    pub labels: BTreeMap<String, String>,
    /// Name of the node it runs on.
    pub node: String,
    /// `pal-<lab>-n<i>-p<j>`.
    pub netns: String,
    /// Interface inside the pod (`eth0`).
    pub iface: String,
    /// Host-side veth in the node namespace (`lxc<j>`).
    pub host_iface: String,
    /// `10.200.i.(10+j)`, a /32 on `eth0`.
    pub ip: IpAddr,
    /// Kubernetes service account (explicitly placed pods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Named container ports (explicitly placed pods only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<palisade_api::agent::ContainerPort>,
}

/// What a recorded process is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProcessRole {
    /// `palisade workload serve` inside a pod.
    WorkloadServer,
    /// A node agent (planned).
    NodeAgent,
    /// A control-plane voter (planned).
    ControlPlane,
    /// Anything else started by tests.
    Other,
}

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is for.
    pub role: ProcessRole,
    /// What it serves (the pod or node name).
    pub name: String,
    /// Namespace it runs in (`None`: the root namespace).
    pub netns: Option<String>,
    /// Its pid.
    pub pid: u32,
    /// Kernel start time (clock ticks since boot, from `/proc/<pid>/stat`) to tell a reused pid.
    pub start_time: Option<u64>,
    /// Its stdout+stderr log.
    pub log: PathBuf,
}

// === impl LabState ===

impl LabState {
    /// Starts a long-running process detached inside `netns` (the root namespace when `None`),
    /// logging to `logs/<name>.log`, records it and saves the state before returning, so `down`
    /// kills it even if the caller crashes next.
    pub fn spawn_process(
        &mut self,
        role: ProcessRole,
        name: &str,
        netns: Option<&str>,
        program: &Path,
        args: &[String],
    ) -> Result<ProcessRecord, LabError> {
        let log = log_dir(&self.name).join(format!("{}.log", name.replace('/', "_")));
        let pid = crate::procs::spawn_detached(netns, program, args, &log)?;
        let record = ProcessRecord {
            role,
            name: name.to_string(),
            netns: netns.map(str::to_string),
            pid,
            start_time: crate::procs::start_time(pid),
            log,
        };
        self.processes.push(record.clone());
        self.save()?;
        Ok(record)
    }

    /// The pod with this name.
    pub fn pod(&self, name: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The pod with this IP.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodState> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pods of one node.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodState> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// The server process recorded for a pod, if any.
    pub fn server_of(&self, pod: &str) -> Option<&ProcessRecord> {
        self.processes
            .iter()
            .rev()
            .find(|p| p.role == ProcessRole::WorkloadServer && p.name == pod)
    }

    /// Every namespace of the lab: pods, nodes, then the fabric.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pods.iter().map(|p| p.netns.clone()).collect();
        v.extend(self.nodes.iter().map(|n| n.netns.clone()));
        v.extend(self.externals.iter().map(|x| x.netns.clone()));
        v.push(self.fabric.netns.clone());
        v
    }

    /// Comma-separated pod names (for error messages).
    pub fn pod_names(&self) -> String {
        self.pods
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Writes the state file atomically (temp file + rename).
    pub fn save(&self) -> Result<(), LabError> {
        let path = state_file(&self.name);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| LabError::Io {
            action: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        fs::write(&tmp, json).map_err(|source| LabError::Io {
            action: "write",
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| LabError::Io {
            action: "rename into",
            path,
            source,
        })
    }

    /// Reads a lab's state file.
    pub fn load(lab: &str) -> Result<LabState, LabError> {
        let path = state_file(lab);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LabError::NotFound {
                    name: lab.to_string(),
                    path,
                });
            }
            Err(source) => {
                return Err(LabError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let state: LabState =
            serde_json::from_slice(&bytes).map_err(|source| LabError::CorruptState {
                path: path.clone(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(LabError::CorruptState {
                path,
                source: serde::de::Error::custom(format!(
                    "state version {} is not {STATE_VERSION}; tear the lab down with this palisade and build it again",
                    state.version
                )),
            });
        }
        Ok(state)
    }
}
