//! `palisade status`: the whole fabric at a glance, in the spirit of `cilium status` — the
//! control plane (leader, voters), the nodes (live, acknowledged policy revision), and every
//! agent it can reach (connected, endpoints, enforced revision, encryption). Exit 0 when all is
//! well, 1 when something is degraded (it says what), 2 when the control plane cannot be asked.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use palisade_api::agent::{AgentRequest, AgentResponse};
use palisade_node_agent::agent;
use serde_json::{Value, json};

use super::cluster::num;
use super::connect::ConnectArgs;
use super::{Output, emit, table};

/// Arguments of `palisade status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Agent sockets to ask as well (repeatable). With --lab, every node's agent is asked;
    /// otherwise the local agent's socket when it exists.
    #[arg(long, value_name = "PATH")]
    socket: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Runs `palisade status`.
pub fn run(args: Args) -> ExitCode {
    status(&args).unwrap_or_else(|e| super::fail(&e))
}

fn status(a: &Args) -> Result<ExitCode> {
    // The agents' sockets are files: known before the client enters the lab's namespace.
    let mut sockets: Vec<(String, PathBuf)> = a
        .socket
        .iter()
        .map(|s| (s.display().to_string(), s.clone()))
        .collect();
    if let Some(lab) = &a.connect.lab {
        let lab = palisade_lab::Lab::load(lab)?;
        sockets.extend(lab.state().nodes.iter().map(|n| {
            (
                n.name.clone(),
                palisade_lab::state::agent_socket(lab.name(), &n.name),
            )
        }));
    } else if sockets.is_empty() {
        let local = PathBuf::from(super::agent::DEFAULT_SOCKET);
        if local.exists() {
            sockets.push(("local".into(), local));
        }
    }
    let client = a.connect.client()?;
    let leader = client.leader_status()?;
    let nodes = client.list_nodes()?;
    let (revision, policies) = client.list_policies()?;
    let identities = client.list_identities()?.len();
    let endpoints = client.list_endpoints()?.len();
    let agents: Vec<Value> = sockets
        .iter()
        .map(
            |(name, socket)| match agent::request(socket, &AgentRequest::Status {}) {
                Ok(AgentResponse::Status { status }) => status,
                Ok(AgentResponse::Error { message, .. }) => json!({"node": name, "error": message}),
                Ok(other) => json!({"node": name, "error": format!("unexpected answer {other:?}")}),
                Err(e) => json!({"node": name, "error": e.to_string()}),
            },
        )
        .collect();

    let mut problems = Vec::new();
    if leader["leader"].is_null() {
        problems.push("the control plane has no leader".to_string());
    }
    for n in &nodes {
        if n["live"] == false {
            problems.push(format!("node {} missed its heartbeats", text(&n["name"])));
        }
        if n["acked_revision"].as_u64().is_some_and(|r| r < revision) {
            problems.push(format!(
                "node {} enforces revision {} of {revision}",
                text(&n["name"]),
                num(&n["acked_revision"])
            ));
        }
    }
    for ag in &agents {
        if let Some(e) = ag["error"].as_str() {
            problems.push(format!("agent {}: {e}", text(&ag["node"])));
        } else if ag["controlPlane"]["connected"] == false {
            problems.push(format!(
                "agent {} is not connected to the control plane",
                text(&ag["node"])
            ));
        }
    }

    if a.output != Output::Table {
        let doc = json!({
            "controlPlane": leader,
            "nodes": nodes,
            "policy": {"revision": revision, "objects": policies.len()},
            "identities": identities,
            "endpoints": endpoints,
            "agents": agents,
            "problems": problems,
        });
        emit(&a.output.render(&doc)?);
        return Ok(exit(&problems));
    }
    let voters = leader["voters"].as_array().map_or(0, Vec::len);
    let live = nodes.iter().filter(|n| n["live"] == true).count();
    let encrypted = agents
        .iter()
        .filter(|ag| ag["encryption"]["enabled"] == true)
        .count();
    let mut out = table(&[
        vec![
            "Control plane:".into(),
            match leader["leader"].as_u64() {
                Some(l) => format!(
                    "Ok   leader {l}, term {}, {voters} voter(s), commit index {}",
                    num(&leader["term"]),
                    num(&leader["commit_index"])
                ),
                None => "Degraded   no leader".into(),
            },
        ],
        vec![
            "Nodes:".into(),
            format!("{} registered, {live} live", nodes.len()),
        ],
        vec![
            "Policy:".into(),
            format!("revision {revision}, {} object(s)", policies.len()),
        ],
        vec!["Identities:".into(), identities.to_string()],
        vec!["Endpoints:".into(), format!("{endpoints} cluster-wide")],
        vec![
            "Encryption:".into(),
            if agents.is_empty() {
                "- (no agent asked)".into()
            } else {
                format!("Wireguard on {encrypted}/{} agent(s)", agents.len())
            },
        ],
    ]);
    if !agents.is_empty() {
        let mut rows = vec![
            [
                "AGENT",
                "CONTROL PLANE",
                "ENDPOINTS",
                "REVISION",
                "ENCRYPTION",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for ag in &agents {
            if let Some(e) = ag["error"].as_str() {
                rows.push(vec![
                    text(&ag["node"]),
                    format!("unreachable: {e}"),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                continue;
            }
            let cp = &ag["controlPlane"];
            rows.push(vec![
                text(&ag["node"]),
                match cp["connected"].as_bool() {
                    Some(true) => "connected".into(),
                    Some(false) => "disconnected".into(),
                    None => "none (static)".into(),
                },
                ag["endpoints"].as_array().map_or(0, Vec::len).to_string(),
                num(&cp["policyRevision"]),
                if ag["encryption"]["enabled"] == true {
                    format!(
                        "wireguard, {} peer(s)",
                        ag["encryption"]["peers"].as_array().map_or(0, Vec::len)
                    )
                } else {
                    "disabled".into()
                },
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    if !problems.is_empty() {
        out.push_str("\nProblems:\n");
        for p in &problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    emit(&out);
    Ok(exit(&problems))
}

fn exit(problems: &[String]) -> ExitCode {
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}
