//! Agent configuration: plain data, validated once, then shared read-only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use palisade_cp_client::ClientConfig;

use super::dns::DnsConfig;
use super::encryption::EncryptionConfig;
use super::gossip::GossipConfig;
use super::proxy::ProxyConfig;
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
    /// The control plane to follow; `None`: a standalone agent (identities allocated locally,
    /// policy from `policy_dir` only).
    pub control_plane: Option<ControlPlaneConfig>,
    /// Where to serve Prometheus `/metrics` (plain HTTP); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// WireGuard between nodes; `None`: pod traffic to other nodes leaves unencrypted.
    pub encryption: Option<EncryptionConfig>,
    /// Where to serve the flow observer (`observer.Observer` gRPC, plaintext); `None`: flows
    /// are still read and counted, but not served.
    pub hubble_listen: Option<SocketAddr>,
    /// With a TLS directory (`ca.pem`, `cert.pem`, `key.pem`: the node's control-plane
    /// credentials), the observer serves mutual TLS: clients need a certificate of the cluster
    /// CA. `None`: plaintext.
    pub hubble_tls_dir: Option<PathBuf>,
    /// How many flows the agent keeps (the newest; older ones are overwritten and counted lost).
    pub flow_ring_size: usize,
    /// The L7 proxy enforcing HTTP rules; `None`: HTTP rules are enforced at L4 only (a
    /// redirect passes as an allow).
    pub l7_proxy: Option<ProxyConfig>,
    /// Gossip with the other agents (needs a control plane: it is the authority gossip fills
    /// in for); `None`: peers learn this node's changes only through the control plane.
    pub gossip: Option<GossipConfig>,
    /// The DNS proxy enforcing DNS rules and learning `toFQDNs` addresses; `None`: DNS rules
    /// pass at L4 only and `toFQDNs` rules allow nothing.
    pub dns_proxy: Option<DnsConfig>,
}

/// Default of `flow_ring_size` (Hubble's default ring holds 4095).
pub const DEFAULT_FLOW_RING_SIZE: usize = 4096;

/// How the agent reaches the control plane and presents its node.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Members to talk to (any member serves; writes are forwarded to the leader).
    pub client: ClientConfig,
    /// The members' gRPC URLs (`--grpc-listen` of each): the change feed is then followed as
    /// the `WatchService.Watch` stream, with the same credentials as `client`. Empty: the
    /// agent long-polls the REST feed instead.
    pub grpc: Vec<String>,
    /// This node's underlay address, as registered (other nodes route its pods through it).
    pub node_address: IpAddr,
    /// The WireGuard public key (base64) and epoch registered when the agent runs without
    /// encryption (with it, the key store's current key is registered instead).
    pub wireguard_public_key: String,
    /// Epoch of that key.
    pub wireguard_epoch: u64,
}
