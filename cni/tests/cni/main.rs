//! The real `palisade-cni` binary, run exactly as a container runtime runs it (`CNI_*`
//! variables, config on stdin, inside the node's network namespace), against real network
//! namespaces these tests create and a [`fake_agent::FakeAgent`] standing in for the node
//! agent. Needs root; namespaces are always deleted, even when a test fails.
//!
//! t10: ADD and traffic; t20: DEL, CHECK, rollback; t30: against the real node agent (its IPAM,
//! registry and eBPF enforcement); t50: bad environment; t60: config and VERSION.

mod fake_agent;
mod t10_add;
mod t20_life_cycle;
mod t30_real_agent;
mod t50_environment;
mod t60_config;
mod util;
