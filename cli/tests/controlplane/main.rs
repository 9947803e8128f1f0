//! The `palisade` CLI against a real single-voter `palisade-controlplane` process: policy
//! apply/get/list/delete/wait, identities, nodes, cluster status, unreachable servers and
//! bearer tokens, driven as an operator would (the binary, its exit codes and its output).
//!
//! The daemon binary comes from the same target directory: `cargo test --workspace` builds it;
//! with `-p palisade-cli` alone, build it first
//! (`cargo build -p palisade-control-plane --bin palisade-controlplane`).

mod fixture;
mod t10_policy;
mod t20_nodes_identities;
mod t50_environment;
mod t60_auth;
mod t70_client;
mod t80_kubectl;
mod t90_mirror;
