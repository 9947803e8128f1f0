//! [`LabSpec`]: what `up` builds, with defaults and validation (pure, no IO except checking that
//! the palisade binary exists).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use palisade_workload::PortError;

use crate::{Ipv4Cidr, LabError, plan};

/// Default lab name (also the default of `--name` / `PALISADE_LAB`).
pub const DEFAULT_LAB: &str = "palisade";
/// Longest lab name accepted (keeps namespace names short and readable).
pub const MAX_NAME_LEN: usize = 24;
/// Node count bounds.
pub const MAX_NODES: usize = 250;
/// Pods-per-node bounds.
pub const MAX_PODS_PER_NODE: usize = 200;
/// Default underlay network.
pub const DEFAULT_UNDERLAY_CIDR: &str = "10.98.0.0/24";
/// Default cluster pod network (node i gets `10.200.i.0/24`).
pub const DEFAULT_POD_CIDR: &str = "10.200.0.0/16";
/// Default k8s-ish namespace of lab pods.
pub const DEFAULT_POD_NAMESPACE: &str = "default";

/// What `Lab::up` builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Lab name: lowercase letters, digits and `-`, at most [`MAX_NAME_LEN`].
    pub name: String,
    /// Number of nodes, 1..=250 (and within the underlay CIDR).
    pub nodes: usize,
    /// Pods per node, 1..=200.
    pub pods_per_node: usize,
    /// The `palisade` binary started inside pods (`workload serve`) and used for probes.
    pub palisade_bin: PathBuf,
    /// Underlay network; node i is host `10 + i` of it.
    pub underlay_cidr: Ipv4Cidr,
    /// Cluster pod network, a /16; node i gets the i-th /24 unless `node_pod_cidrs` says
    /// otherwise.
    pub pod_cidr: Ipv4Cidr,
    /// Each node's pod /24 inside `pod_cidr`, node 1 first; empty: node i gets the i-th /24.
    /// `lab test` places a suite's pods at the suite's own addresses, so it picks the /24s
    /// that hold them (the agent's IPAM hands out only addresses of its node's CIDR).
    pub node_pod_cidrs: Vec<Ipv4Cidr>,
    /// TCP ports every pod serves (may be empty).
    pub serve_tcp: Vec<u16>,
    /// UDP ports every pod serves (may be empty).
    pub serve_udp: Vec<u16>,
    /// TCP ports every pod serves HTTP/1.1 on (`workload serve --http`: every request gets
    /// `200` and an echo line), for L7 policy; none of `serve_tcp`.
    pub serve_http: Vec<u16>,
    /// k8s-ish namespace recorded for every pod.
    pub pod_namespace: String,
    /// Pods placed one by one (names, namespaces, labels, nodes, addresses), for `lab test`;
    /// when non-empty it replaces the `nodes × pods_per_node` grid.
    pub pods: Vec<PodPlan>,
    /// Hosts outside the cluster, plugged into the fabric at their own address (peers seen as
    /// `world`).
    pub externals: Vec<ExternalPlan>,
    /// Also run the workload servers in every node namespace (so pods can reach their node).
    pub serve_nodes: bool,
    /// Run Palisade itself: a control plane, an agent per node, pods made by the CNI plugin.
    /// `None`: bare namespaces and veths (what the datapath tests and `lab test` program
    /// directly).
    pub cluster: Option<ClusterPlan>,
}

/// The Palisade cluster a lab runs: control-plane voters (`palisade controlplane`) on their own host on the fabric (the
/// `cp` external, [`CP_HOST_IP`]), one agent per node following them, and every pod created
/// through the CNI plugin exactly as a container runtime would (`CNI_*` variables, the network
/// config on stdin, the planned address requested with `CNI_ARGS` `IP=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    /// Control-plane voters: 1, 3 or 5.
    pub voters: usize,
    /// The `palisade-cni` plugin.
    pub cni_bin: PathBuf,
    /// WireGuard between the nodes (agents run with `--encryption wireguard`; pod traffic
    /// between nodes is routed only through the tunnel, and pods get the tunnel's MTU).
    pub encryption: bool,
    /// The agents' scheduled key rotation (`None`: the agent's default, 24 h).
    pub wireguard_rotation: Option<std::time::Duration>,
    /// With `encryption`: the nodes' host-to-host traffic goes through the tunnel too (agents
    /// run with `--encrypt-node`).
    pub node_encryption: bool,
    /// The agents' L7 proxy threads (`None`: the agent's default for the machine).
    pub l7_proxy_workers: Option<usize>,
}

/// Address of the control plane's host (outside the underlay and the pod CIDR).
pub const CP_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
/// Name of the control plane's host.
pub const CP_HOST: &str = "cp";

/// A pod placed explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// Pod name, unique in the lab (may contain `/`, e.g. `x/a`).
    pub name: String,
    /// k8s-ish namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// 1-based node index.
    pub node: usize,
    /// Address; the next free one of the node's pod CIDR when `None`.
    pub ip: Option<Ipv4Addr>,
    /// Kubernetes service account, handed to the CNI plugin as `args.cni.serviceAccount` (the
    /// agent turns it into the `io.cilium.k8s.policy.serviceaccount` label, as Cilium does).
    pub service_account: Option<String>,
    /// Named container ports, handed to the CNI plugin as `args.cni.ports` (what a policy's
    /// named port resolves to).
    pub ports: Vec<palisade_api::agent::ContainerPort>,
}

/// A host outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPlan {
    /// Name, unique in the lab.
    pub name: String,
    /// Its address (outside the underlay and every pod address).
    pub ip: Ipv4Addr,
}

// === impl LabSpec ===

impl LabSpec {
    /// A spec with the defaults: underlay 10.98.0.0/24, pods 10.200.0.0/16, every pod serving
    /// TCP 80 and UDP 80, pod namespace `default`.
    pub fn new(
        name: impl Into<String>,
        nodes: usize,
        pods_per_node: usize,
        palisade_bin: impl Into<PathBuf>,
    ) -> Self {
        LabSpec {
            name: name.into(),
            nodes,
            pods_per_node,
            palisade_bin: palisade_bin.into(),
            underlay_cidr: Ipv4Cidr::new_unchecked(Ipv4Addr::new(10, 98, 0, 0), 24),
            pod_cidr: Ipv4Cidr::new_unchecked(Ipv4Addr::new(10, 200, 0, 0), 16),
            node_pod_cidrs: Vec::new(),
            serve_tcp: vec![80],
            serve_udp: vec![80],
            serve_http: Vec::new(),
            pod_namespace: DEFAULT_POD_NAMESPACE.to_string(),
            pods: Vec::new(),
            externals: Vec::new(),
            serve_nodes: false,
            cluster: None,
        }
    }

    /// Checks everything that can be checked before touching the system.
    pub fn validate(&self) -> Result<(), LabError> {
        validate_name(&self.name)?;
        let bad = |reason: String| LabError::InvalidSpec {
            name: self.name.clone(),
            reason,
        };
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(bad(format!(
                "--nodes {} is out of range (1..={MAX_NODES})",
                self.nodes
            )));
        }
        if !(1..=MAX_PODS_PER_NODE).contains(&self.pods_per_node) {
            return Err(bad(format!(
                "--pods-per-node {} is out of range (1..={MAX_PODS_PER_NODE})",
                self.pods_per_node
            )));
        }
        let fit = plan::max_nodes(self.underlay_cidr);
        if self.nodes > fit {
            return Err(bad(format!(
                "--nodes {} does not fit the underlay {} (at most {fit} nodes: node i is host 10+i)",
                self.nodes, self.underlay_cidr
            )));
        }
        if self.pod_cidr.prefix() != 16 {
            return Err(bad(format!(
                "pod CIDR {} must be a /16 (node i gets the i-th /24)",
                self.pod_cidr
            )));
        }
        if self.underlay_cidr.contains(self.pod_cidr.addr())
            || self.pod_cidr.contains(self.underlay_cidr.addr())
        {
            return Err(bad(format!(
                "underlay {} overlaps pod CIDR {}",
                self.underlay_cidr, self.pod_cidr
            )));
        }
        if !self.node_pod_cidrs.is_empty() {
            if self.node_pod_cidrs.len() != self.nodes {
                return Err(bad(format!(
                    "node_pod_cidrs: {} CIDRs for {} nodes",
                    self.node_pod_cidrs.len(),
                    self.nodes
                )));
            }
            for (i, c) in self.node_pod_cidrs.iter().enumerate() {
                if c.prefix() != 24
                    || !self.pod_cidr.contains(c.addr())
                    || self.node_pod_cidrs[..i].contains(c)
                {
                    return Err(bad(format!(
                        "node_pod_cidrs[{i}]: {c} must be a /24 of the pod CIDR {}, used once",
                        self.pod_cidr
                    )));
                }
            }
        }
        if let Some(p) = self.serve_http.iter().find(|p| self.serve_tcp.contains(p)) {
            return Err(bad(format!(
                "http {p}: also a plain tcp port; a port serves one or the other"
            )));
        }
        for (proto, ports) in [
            ("tcp", &self.serve_tcp),
            ("udp", &self.serve_udp),
            ("http", &self.serve_http),
        ] {
            let mut seen = Vec::new();
            for &p in ports {
                if p == 0 {
                    return Err(bad(format!(
                        "{proto} {}",
                        PortError::OutOfRange("0".into())
                    )));
                }
                if seen.contains(&p) {
                    return Err(bad(format!("{proto} {}", PortError::Duplicate(p))));
                }
                seen.push(p);
            }
        }
        if self.pod_namespace.is_empty()
            || !self
                .pod_namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad(format!(
                "pod namespace `{}` must be lowercase alphanumerics and `-`",
                self.pod_namespace
            )));
        }
        let mut names = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for (i, p) in self.pods.iter().enumerate() {
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(bad(format!(
                    "pods[{i}]: name `{}` is empty or used twice",
                    p.name
                )));
            }
            if !(1..=self.nodes).contains(&p.node) {
                return Err(bad(format!(
                    "pods[{i}] `{}`: node {} is not in 1..={}",
                    p.name, p.node, self.nodes
                )));
            }
            if let Some(ip) = p.ip
                && (self.underlay_cidr.contains(ip) || !ips.insert(ip))
            {
                return Err(bad(format!(
                    "pods[{i}] `{}`: address {ip} is in the underlay or used twice",
                    p.name
                )));
            }
        }
        for (i, x) in self.externals.iter().enumerate() {
            if x.name.is_empty() || !names.insert(x.name.as_str()) {
                return Err(bad(format!(
                    "externals[{i}]: name `{}` is empty or used twice",
                    x.name
                )));
            }
            if self.underlay_cidr.contains(x.ip)
                || self.pod_cidr.contains(x.ip)
                || !ips.insert(x.ip)
            {
                return Err(bad(format!(
                    "externals[{i}] `{}`: address {} is in the underlay, the pod CIDR, or used twice",
                    x.name, x.ip
                )));
            }
        }
        if let Some(c) = &self.cluster {
            if ![1, 3, 5].contains(&c.voters) {
                return Err(bad(format!(
                    "cluster.voters: {} (a control plane has 1, 3 or 5 voters)",
                    c.voters
                )));
            }
            if !c.cni_bin.is_file() {
                return Err(bad(format!(
                    "CNI plugin `{}` is not a file (build it: cargo build -p palisade-cni)",
                    c.cni_bin.display()
                )));
            }
            if !names.insert(CP_HOST) || !ips.insert(CP_HOST_IP) {
                return Err(bad(format!(
                    "externals: `{CP_HOST}` ({CP_HOST_IP}) is the control plane's host"
                )));
            }
        }
        if !self.palisade_bin.is_file() {
            return Err(bad(format!(
                "palisade binary `{}` is not a file",
                self.palisade_bin.display()
            )));
        }
        Ok(())
    }
}

/// Checks a lab name: 1..=24 chars, lowercase letters, digits and `-`, starting with a letter
/// and not ending with `-`.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let bad = |reason: &str| {
        Err(LabError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 24 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lowercase letters, digits and `-` are allowed");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return bad("it must start with a letter");
    }
    if name.ends_with('-') || name.contains("--") {
        return bad("it must not end with `-` or contain `--`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["palisade", "a", "t-matrix-123", "abcdefghijklmnopqrstuvwx"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Palisade",
            "1abc",
            "a_b",
            "a-",
            "a--b",
            "abcdefghijklmnopqrstuvwxy",
            "a b",
            "a/b",
            "ä",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_match_the_documented_plan() {
        let s = LabSpec::new("t", 1, 1, "/bin/true");
        assert_eq!(s.underlay_cidr.to_string(), DEFAULT_UNDERLAY_CIDR);
        assert_eq!(s.pod_cidr.to_string(), DEFAULT_POD_CIDR);
    }

    #[test]
    fn spec_bounds() {
        let bin = std::env::current_exe().unwrap();
        let ok = LabSpec::new("t", 2, 3, &bin);
        assert!(ok.validate().is_ok());
        for (n, p) in [(0, 1), (251, 1), (1, 0), (1, 201), (245, 1)] {
            let s = LabSpec::new("t", n, p, &bin);
            assert!(s.validate().is_err(), "{n}x{p}");
        }
        assert!(LabSpec::new("t", 244, 1, &bin).validate().is_ok());
        let mut wide = LabSpec::new("t", 250, 200, &bin);
        wide.underlay_cidr = "10.98.0.0/23".parse().unwrap();
        assert!(wide.validate().is_ok());
        let mut dup = LabSpec::new("t", 1, 1, &bin);
        dup.serve_tcp = vec![80, 80];
        assert!(dup.validate().is_err());
        assert!(
            LabSpec::new("t", 1, 1, "/nonexistent/palisade")
                .validate()
                .is_err()
        );
        let mut overlap = LabSpec::new("t", 1, 1, &bin);
        overlap.underlay_cidr = "10.200.5.0/24".parse().unwrap();
        assert!(overlap.validate().is_err());
    }
}
