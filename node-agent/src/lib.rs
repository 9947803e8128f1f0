//! Palisade node agent: `datapath` loads the eBPF programs built by `build.rs`, attaches them to
//! pod veths and writes their maps; `agent` is the daemon (CNI socket, policy engine, control
//! plane link, proxies, flows, gossip, WireGuard) that decides what the maps hold. See
//! docs/ARCHITECTURE.md.
pub mod agent;
pub mod datapath;
pub mod heap;
