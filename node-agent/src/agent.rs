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
//! Today identities are allocated by the agent's own engine and policies come from a directory;
//! the control-plane stream (cluster-wide identities, compiled policy per node, acknowledgements)
//! replaces both in issue 5.

mod config;
mod ipam;
mod registry;
mod server;
mod sync;

pub use config::AgentConfig;
pub use ipam::{Ipam, IpamError};
pub use registry::{RegisteredEndpoint, Registry};
pub use server::{AgentError, request, run};
