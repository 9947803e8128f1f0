//! `palisade`: one binary for operators, automation and the lab.
//!
//! Each subcommand lives in its own module under `cmd/` and returns an [`ExitCode`]; this file only
//! parses arguments and dispatches. Exit codes follow one convention across subcommands:
//! 0 success, 1 a negative result the caller asked about (unreachable pair, policy mismatch),
//! 2 invalid input or a failure to carry out the command.
#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Palisade: a zero-trust network fabric (identity-based policy enforced by eBPF).
#[derive(Debug, Parser)]
#[command(name = "palisade", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The fabric at a glance (like `cilium status`): control plane, nodes, policy revision,
    /// identities, and every reachable agent's connection, endpoints and encryption.
    Status(cmd::status::Args),
    /// Build, inspect, probe and tear down a local multi-node lab made of network namespaces.
    Lab(cmd::lab::Args),
    /// Serve or probe TCP/UDP ports from inside a pod (in the spirit of Kubernetes' agnhost).
    Workload(cmd::workload::Args),
    /// Policy: check it offline (verdict suites, traces), and apply, list, delete and wait for
    /// the policy objects stored in the control plane.
    Policy(cmd::policy::Args),
    /// Run the node agent, or ask the local one what it enforces.
    Agent(cmd::agent::Args),
    /// Endpoints the local agent enforces for.
    Endpoint(cmd::agent::EndpointArgs),
    /// The control plane itself: leader, members and replication lag; cluster-wide endpoints.
    Cluster(cmd::cluster::Args),
    /// Security identities allocated by the control plane.
    Identity(cmd::identity::Args),
    /// Nodes registered in the control plane.
    Node(cmd::node::Args),
    /// Node-to-node WireGuard encryption: status per node, and key rotation on demand.
    Encrypt(cmd::encrypt::Args),
    /// Write a kubeconfig for the control plane's Kubernetes-compatible policy API (kubectl
    /// apply/get/diff/edit/delete/watch of CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
    /// NetworkPolicy).
    Kubeconfig(cmd::kubeconfig::Args),
    /// Mirror the policy objects of a Kubernetes cluster (CiliumNetworkPolicy,
    /// CiliumClusterwideNetworkPolicy, NetworkPolicy) into the control plane, in the foreground.
    Mirror(cmd::mirror::Args),
    /// Flows seen by agents (or the control plane's relay), filtered as `hubble observe` does.
    Observe(Box<cmd::observe::Args>),
    /// The zero-trust tutorial end to end: a lab, a three-tier app, nine policies applied one at
    /// a time, real traffic checked against expectations after each (what `make demo` runs).
    Tutorial(cmd::tutorial::Args),
    /// Open a lab's web UI (service map, flow table) from this host: forwards a local port to
    /// the lab's control plane and prints the URL.
    Ui(cmd::ui::Args),
    /// Run a control-plane member (Raft voter or learner serving the API), or manage the
    /// cluster CA and certificates (`palisade controlplane certs ...`).
    Controlplane(Box<palisade_control_plane::daemon::Args>),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cmd::clap_error(e),
    };
    match cli.command {
        Command::Status(args) => cmd::status::run(args),
        Command::Lab(args) => cmd::lab::run(args),
        Command::Workload(args) => cmd::workload::run(args),
        Command::Policy(args) => cmd::policy::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Endpoint(args) => cmd::agent::run_endpoint(args),
        Command::Cluster(args) => cmd::cluster::run(args),
        Command::Identity(args) => cmd::identity::run(args),
        Command::Node(args) => cmd::node::run(args),
        Command::Encrypt(args) => cmd::encrypt::run(args),
        Command::Kubeconfig(args) => cmd::kubeconfig::run(args),
        Command::Mirror(args) => cmd::mirror::run(args),
        Command::Observe(args) => cmd::observe::run(*args),
        Command::Tutorial(args) => cmd::tutorial::run(args),
        Command::Ui(args) => cmd::ui::run(args),
        Command::Controlplane(args) => palisade_control_plane::daemon::main_with(*args),
    }
}
