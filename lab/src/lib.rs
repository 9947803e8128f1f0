//! Palisade lab: a multi-node cluster made of network namespaces on one host, with real veths,
//! routes and sockets, torn down without a trace.
//!
//! # Address plan
//!
//! ```text
//!                       pal-<lab>-fabric:  br0 (bridge, no address)
//!                        │ n1                    │ n2          (fabric side of each node's eth0)
//!   pal-<lab>-n1: eth0 10.98.0.11/24     pal-<lab>-n2: eth0 10.98.0.12/24      underlay 10.98.0.0/24
//!     route 10.200.2.0/24 via 10.98.0.12   route 10.200.1.0/24 via 10.98.0.11
//!     lxc1 ─ route 10.200.1.11/32          lxc1 ─ route 10.200.2.11/32         pods 10.200.0.0/16,
//!     lxc2 ─ route 10.200.1.12/32          ...                                  node i: 10.200.i.0/24
//!      │                                    │
//!   pal-<lab>-n1-p1 (pod `n1-p1`):       pal-<lab>-n2-p1 (pod `n2-p1`):
//!     eth0 10.200.1.11/32                  eth0 10.200.2.11/32
//!     169.254.1.1 dev eth0 scope link; default via 169.254.1.1;
//!     neighbour 169.254.1.1 = MAC of the node's lxc<j> (permanent)
//! ```
//!
//! * Node i (1-based): namespace `pal-<lab>-n<i>`, underlay `eth0` = host `10 + i` of the
//!   underlay CIDR (default 10.98.0.0/24, so 10.98.0.(10+i) and at most 244 nodes), pod CIDR
//!   10.200.i.0/24; `ip_forward=1`, `rp_filter=0`; a route to every other node's pod /24 via that
//!   node's underlay address.
//! * Pod j on node i: namespace `pal-<lab>-n<i>-p<j>`, name `n<i>-p<j>`, k8s-ish namespace
//!   `default`, `eth0` = 10.200.i.(10+j)/32, host side `lxc<j>` (no address) in the node.
//!   Routing as in Calico/Cilium: everything goes to the link-local gateway 169.254.1.1, whose
//!   MAC is pinned to the host veth.
//! * `lo` is up everywhere. IPv6 is disabled (sysctl) in every lab namespace for now, so counters
//!   and tests see no stray neighbour discovery; dual-stack pods are planned.
//! * Veth pairs are created directly across namespaces; nothing is ever created in the root
//!   namespace.
//!
//! # Processes and state
//!
//! Each pod runs `palisade workload serve --tcp 80 --udp 80 --name <pod>` (detached, own process
//! group, log in `logs/<pod>.log`). State lives in `/run/palisade/labs/<lab>/state.json`, written
//! before the first creation step; `down` kills every process inside `pal-<lab>-*` namespaces,
//! deletes them and the state directory, so it cleans up after a crashed `up` too.
#![forbid(unsafe_code)]

mod cidr;
pub mod cluster;
pub mod dns;
pub mod down;
mod error;
pub mod exec;
mod lab;
pub mod matrix;
mod parallel;
pub mod plan;
pub mod procs;
mod spec;
pub mod state;
mod up;

pub use cidr::{CidrError, Ipv4Cidr};
pub use down::DownReport;
pub use error::LabError;
pub use lab::{Lab, MATRIX_PARALLELISM, probe_in_netns};
pub use matrix::{Matrix, PairResult};
pub use palisade_workload::{Outcome, ProbeResult, Protocol};
pub use spec::{
    CP_HOST, CP_HOST_IP, ClusterPlan, DEFAULT_LAB, DEFAULT_POD_CIDR, DEFAULT_POD_NAMESPACE,
    DEFAULT_UNDERLAY_CIDR, ExternalPlan, LabSpec, MAX_NAME_LEN, MAX_NODES, MAX_PODS_PER_NODE,
    PodPlan, validate_name,
};
pub use state::{
    ClusterState, ExternalState, FabricState, LabState, NodeState, Phase, PodState, ProcessRecord,
    ProcessRole,
};
pub use up::READY_TIMEOUT;
