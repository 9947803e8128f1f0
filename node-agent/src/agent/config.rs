//! Agent configuration: plain data, validated once, then shared read-only.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::datapath::DatapathConfig;

/// Everything the agent needs to start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name (appears in endpoint names and status).
    pub node: String,
    /// This node's pod CIDR: IPAM allocates from it.
    pub pod_cidr: Ipv4Net,
    /// This node's own address(es): mapped to the `host` identity so allow-localhost applies.
    pub node_ips: Vec<Ipv4Addr>,
    /// The unix socket the CNI plugin and the CLI talk to (created with mode 0600).
    pub socket: PathBuf,
    /// Where IPAM and the endpoint registry persist (survive restarts).
    pub state_dir: PathBuf,
    /// Policy objects (YAML/JSON, any of the three kinds) applied by this agent; re-read when the
    /// directory changes. `None`: no policy (everything allowed).
    pub policy_dir: Option<PathBuf>,
    /// eBPF map sizes.
    pub datapath: DatapathConfig,
}
