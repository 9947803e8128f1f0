//! Palisade node agent.
//!
//! Today: loads the eBPF datapath built by `build.rs` and attaches its packet counters to a pod's
//! host-side veth. Planned (issue 5): follow the control-plane stream, program the ipcache and
//! policy maps, and enforce last-known-good policy when the control plane is unreachable.
pub mod agent;
pub mod datapath;
