//! Palisade control plane: the Raft-replicated authority for security identities, nodes (underlay
//! address, pod CIDR, WireGuard public key and epoch), endpoints and policy objects.
//!
//! ```text
//!   automation / agents                     other voters
//!          │ REST (axum, --api-listen)             │ Raft RPCs (tonic, --raft-listen, trusted-only)
//!          │ gRPC (grpc::automation, --grpc-listen)│
//!          ▼                                       ▼
//!   http_api ──client_write──▶ openraft::Raft ◀── grpc::raft_service
//!      │  ▲ forward to leader      │    │ network (tonic client) ──▶ peers
//!      │  └── follower             │    ▼
//!      │                    store::log_store      store::state_machine ──▶ app::State (pure)
//!      └── reads (linearizable) ───────────────────────▲       RocksDB column families
//! ```
//!
//! `app` holds the replicated state and its pure `apply` (no I/O); `store` persists the Raft log
//! and the applied state in RocksDB; `network` and `grpc::raft_service` carry Raft between
//! members; `http_api` (REST) and `grpc::automation` (gRPC) are the client APIs, both calling
//! `ops`; `node` wires them into one running member; `tls` holds the cluster CA, the
//! certificates and the rustls configs of the ports; `ui` serves the web UI (service map, flow
//! table) from the flow relay; `daemon` is the daemon's command line (the
//! binary and the `palisade` CLI both run it).
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod errors;
pub mod grpc;
pub mod http_api;
pub mod kube_api;
pub mod metrics;
pub mod network;
pub mod node;
pub mod openapi;
pub mod ops;
pub mod proposer;
pub mod store;
pub mod tls;
pub mod ui;
pub mod validate;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Raft node id of a control-plane member.
pub type NodeId = u64;

/// The addresses of one control-plane member, replicated in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of the member's Raft peer service (trusted-only).
    pub raft_addr: String,
    /// `host:port` of the member's client API (REST).
    pub api_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of the Palisade control plane.
    pub TypeConfig:
        D = app::Request,
        R = app::Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of this control plane.
pub type Raft = openraft::Raft<TypeConfig>;

pub use node::{ControlPlane, start};
