//! `palisade encrypt status|rotate`: node-to-node encryption as each node's agent runs it (the
//! counterpart of `cilium encrypt status`). Keys live only on their node, so these talk to the
//! agents themselves: the local one by its socket, or every node of a lab with `--lab`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use palisade_api::agent::{AgentRequest, AgentResponse};
use palisade_node_agent::agent;
use serde_json::Value;

use super::Output;

/// Arguments of `palisade encrypt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Per node: backend (and why), interface, public-key fingerprint and epoch, next scheduled
    /// rotation, and per peer its endpoint, allowed IPs, keys, last handshake and bytes.
    Status(Target),
    /// Rotate WireGuard keys now, make-before-break: the node adds a new key beside the old one
    /// and publishes it; peers switch once they handshake on it; the old key is wiped after the
    /// grace period (`--wireguard-key-grace` of the agent). Without --node, every selected node
    /// rotates, one after the other.
    Rotate(Target),
}

/// Which agents to ask.
#[derive(Debug, clap::Args)]
struct Target {
    /// The local agent's socket.
    #[arg(long, default_value = super::agent::DEFAULT_SOCKET, conflicts_with = "lab")]
    socket: PathBuf,
    /// Every node agent of this local lab (`palisade lab up`).
    #[arg(long, value_name = "NAME")]
    lab: Option<String>,
    /// Only this node (with --lab; without it, the local agent must be this node).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Runs `palisade encrypt`.
pub fn run(args: Args) -> ExitCode {
    let r = match args.command {
        Cmd::Status(t) => each(&t, &AgentRequest::EncryptStatus {}),
        Cmd::Rotate(t) => each(&t, &AgentRequest::EncryptRotate {}),
    };
    r.unwrap_or_else(|e| super::fail(&e))
}

/// Sends `req` to every selected agent, prints their answers.
fn each(t: &Target, req: &AgentRequest) -> Result<ExitCode> {
    let sockets: Vec<(Option<String>, PathBuf)> = match &t.lab {
        None => vec![(None, t.socket.clone())],
        Some(lab) => {
            let state =
                palisade_lab::LabState::load(lab).with_context(|| format!("--lab `{lab}`"))?;
            if state.cluster.is_none() {
                bail!(
                    "--lab `{lab}`: this lab runs no Palisade agents (started with --control-plane-voters 0)"
                );
            }
            let nodes: Vec<(Option<String>, PathBuf)> = state
                .nodes
                .iter()
                .filter(|n| t.node.as_deref().is_none_or(|want| want == n.name))
                .map(|n| {
                    (
                        Some(n.name.clone()),
                        palisade_lab::state::agent_socket(lab, &n.name),
                    )
                })
                .collect();
            if nodes.is_empty() {
                bail!(
                    "--node `{}`: no such node in lab `{lab}` (nodes: {})",
                    t.node.as_deref().unwrap_or(""),
                    state
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            nodes
        }
    };
    let mut docs = Vec::new();
    let mut failed = false;
    for (name, socket) in sockets {
        let who = name.clone().unwrap_or_else(|| socket.display().to_string());
        match agent::request(&socket, req) {
            Ok(AgentResponse::Status { status }) => {
                if t.lab.is_none()
                    && let Some(want) = &t.node
                    && status["node"].as_str() != Some(want.as_str())
                {
                    bail!(
                        "--node `{want}`: the local agent is node `{}`; use --lab, or run this on that node",
                        status["node"].as_str().unwrap_or("?")
                    );
                }
                docs.push(status);
            }
            Ok(AgentResponse::Error { message, .. }) => {
                eprintln!("error: node {who}: {message}");
                failed = true;
            }
            Ok(other) => {
                eprintln!("error: node {who}: unexpected answer {other:?}");
                failed = true;
            }
            Err(e) => {
                eprintln!("error: node {who}: {}", anyhow!(e));
                failed = true;
            }
        }
    }
    if t.output == Output::Table {
        for d in &docs {
            super::emit(&render(d));
        }
    } else {
        super::emit(&t.output.render(&docs)?);
    }
    Ok(if failed {
        ExitCode::from(super::EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    })
}

/// The table view of one node's status, in the spirit of `cilium encrypt status`.
fn render(s: &Value) -> String {
    let node = s["node"].as_str().unwrap_or("?");
    if s["enabled"].as_bool() != Some(true) {
        return format!("Node {node}\n  Encryption: Disabled\n");
    }
    let mut out = format!("Node {node}\n");
    out.push_str(&format!(
        "  Encryption:      Wireguard ({} backend; {})\n",
        s["backend"].as_str().unwrap_or("?"),
        s["backendReason"].as_str().unwrap_or("")
    ));
    out.push_str(&format!(
        "  Interface:       {} (UDP {})\n",
        s["interface"].as_str().unwrap_or("?"),
        s["listen"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!(
        "  Public key:      {} (epoch {}, fingerprint {})\n",
        s["publicKey"].as_str().unwrap_or("?"),
        s["epoch"],
        s["fingerprint"].as_str().unwrap_or("?")
    ));
    let next = s["nextRotationMs"].as_u64().map_or("-".to_string(), until);
    out.push_str(&format!(
        "  Rotation:        every {}, next {next}; {} rotation(s) since start; keys in use: epochs {}\n",
        humantime::format_duration(Duration::from_secs(s["rotationIntervalSeconds"].as_u64().unwrap_or(0))),
        s["rotations"],
        list(&s["localEpochs"])
    ));
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("  Number of peers: {}\n", peers.len()));
    for p in &peers {
        let sending = match &p["sending"] {
            Value::Object(o) => format!("sending on epochs {}→{}", o["localEpoch"], o["peerEpoch"]),
            _ => "no confirmed session yet".to_string(),
        };
        let keys: Vec<String> = p["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| {
                format!(
                    "{}:{}",
                    k["epoch"],
                    k["fingerprint"].as_str().unwrap_or("?")
                )
            })
            .collect();
        out.push_str(&format!(
            "    {}  endpoint {}  allowed IPs {}\n      keys {}; {sending}; last handshake {}; rx {} B, tx {} B, spoofed dropped {}\n",
            p["name"].as_str().unwrap_or("?"),
            p["endpoint"].as_str().unwrap_or("?"),
            list(&p["allowedIps"]),
            keys.join(", "),
            p["lastHandshakeMs"]
                .as_u64()
                .map_or("never".to_string(), super::node::age),
            p["rxBytes"],
            p["txBytes"],
            p["rxSpoofed"],
        ));
    }
    if let Some(skipped) = s["skippedPeers"].as_object()
        && !skipped.is_empty()
    {
        for (name, why) in skipped {
            out.push_str(&format!(
                "    {name}  not a peer: {}\n",
                why.as_str().unwrap_or("?")
            ));
        }
    }
    out.push_str(&format!(
        "  Dropped:         {} no route, {} unknown sender, {} invalid\n",
        s["dropsNoRoute"], s["dropsUnknownSender"], s["dropsInvalid"]
    ));
    out
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
        .collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn until(ms: u64) -> String {
    let secs = ms.saturating_sub(now_ms()) / 1000;
    format!(
        "in {}",
        humantime::format_duration(Duration::from_secs(secs))
    )
}
