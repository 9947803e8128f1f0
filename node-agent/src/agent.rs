//! The node agent daemon: one per node, in the node's network namespace.
//!
//! ```text
//!  CNI plugin ──unix socket──▶ server ──▶ Ipam (pod CIDR, persisted)
//!                                   └──▶ Registry (endpoints, persisted) ──▶ Engine (identities,
//!  policy directory (polled) ──────────────────────────────────────────────▶  compiled policy)
//!                                                                                 │
//!                                   MapSync: diff desired vs written entries ◀────┘
//!                                                                                 │
//!                                   Datapath: endpoints, ipcache, policy maps, programs on veths
//! ```
//!
//! With a control plane (`control_plane` in the config), `control_plane::Link` registers the node,
//! follows the change feed (identities, endpoints of other nodes, policy objects) into
//! `cluster_view::ClusterView`, which binds the identities in the engine, writes remote
//! endpoints into the ipcache and applies the policy objects; the agent publishes its endpoints
//! and acknowledges the policy revision it enforces. Without one, identities are allocated by
//! the agent's own engine and policy comes from the policy directory alone.
//!
//! With encryption (`encryption` in the config), `encryption::Encryption` holds the node's
//! WireGuard keys and tunnel: its public key is what the node registers, the other nodes'
//! records become its peers, and their pod CIDRs are routed through it.
//!
//! With gossip (`gossip` in the config), `gossip::Gossip` exchanges with the other agents, over
//! the underlay and sealed with the cluster gossip key, each node's endpoints, the identities
//! they use (block-made ones included), its liveness and WireGuard key epoch; the run loop merges
//! what peers say into the view, under the control plane's data (`ClusterView::merge_gossip`).
//!
//! With the L7 proxy (`l7_proxy` in the config), `proxy::L7Proxy` enforces the HTTP rules of
//! local endpoints' ingress policy: after every sync the run loop publishes a `ProxyView`, the
//! proxy steers redirected peers to itself with TPROXY rules and judges each request.
//!
//! With the DNS proxy (`dns_proxy`), `dns::DnsProxy` enforces `rules.dns` of egress policy the
//! same way and hands the addresses in the answers it allows back to the run loop, which gives
//! them `toFQDNs` identities in the engine, maps and ipcache before the answer is released.

mod cidr_ipcache;
mod cluster_view;
mod config;
mod control_plane;
pub mod dns;
mod encryption;
pub mod flows;
mod gossip;
mod ipam;
mod metrics;
pub mod observer;
mod proxy;
mod registry;
mod server;
mod sorted;
mod sync;

pub use cluster_view::ClusterView;
pub use config::{AgentConfig, ControlPlaneConfig, DEFAULT_FLOW_RING_SIZE};
pub use encryption::{BackendChoice, EncryptionConfig, EncryptionError};
pub use gossip::{
    Gossip, GossipConfig, GossipKey, KeyError as GossipKeyError, NodeGossip,
    NodeSigner as GossipSigner, Sealer as GossipSealer, StateVerifier as GossipVerifier,
};

/// Defaults of the gossip settings, for flags.
pub mod gossip_defaults {
    /// Gossip UDP port.
    pub const PORT: u16 = super::gossip::DEFAULT_PORT;
    /// Round interval.
    pub const INTERVAL: std::time::Duration = super::gossip::DEFAULT_INTERVAL;
}

/// Defaults of the encryption settings, for flags.
pub mod encryption_defaults {
    /// WireGuard UDP port.
    pub const PORT: u16 = super::encryption::DEFAULT_PORT;
    /// Interface name.
    pub const INTERFACE: &str = super::encryption::DEFAULT_INTERFACE;
}
/// Defaults of the DNS proxy settings, for flags.
pub mod dns_defaults {
    /// Proxy port.
    pub const PORT: u16 = super::dns::DEFAULT_PORT;
}
/// Defaults of the L7 proxy settings, for flags.
pub mod proxy_defaults {
    /// Proxy port.
    pub const PORT: u16 = super::proxy::DEFAULT_PORT;
    pub use super::proxy::default_workers as workers;
}
pub use ipam::{Ipam, IpamError};
pub use proxy::{FlowLog, FlowPeer, L7Flow, L7Verdict, ProxyConfig, ProxyError};
pub use registry::{RegisteredEndpoint, Registry};
pub use server::{AgentError, request, run};
