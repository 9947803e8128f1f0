//! `palisade node`: the nodes registered in the control plane.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use serde_json::Value;

use super::cluster::num;
use super::connect::ConnectArgs;
use super::{Output, emit, table};

/// Arguments of `palisade node`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List nodes: address, pod CIDR, WireGuard key epoch, the policy revision each acknowledged,
    /// and whether its lease is current (live nodes are the ones `policy wait` waits for).
    List(ReadArgs),
    /// Show one node (exit 2 when it is not registered).
    Get(GetArgs),
    /// Remove a node from the cluster: its record, pod CIDR lease and endpoints go;
    /// other nodes drop it as a WireGuard peer and stop routing its pods. A node whose agent is
    /// still running registers itself again. Succeeds when the node is already gone.
    Delete(DeleteArgs),
}

#[derive(Debug, clap::Args)]
struct DeleteArgs {
    /// Node name.
    name: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, clap::Args)]
struct ReadArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// Node name.
    name: String,
    #[command(flatten)]
    read: ReadArgs,
}

/// Runs `palisade node`.
pub fn run(args: Args) -> ExitCode {
    let r = match args.command {
        Command::List(a) => a
            .connect
            .client()
            .and_then(|c| Ok(c.list_nodes()?))
            .and_then(|nodes| print(a.output, &nodes, true)),
        Command::Get(a) => a
            .read
            .connect
            .client()
            .and_then(|c| Ok(c.get_node(&a.name)?))
            .and_then(|n| n.ok_or_else(|| anyhow!("node `{}` not found", a.name)))
            .and_then(|n| print(a.read.output, std::slice::from_ref(&n), false)),
        Command::Delete(a) => a
            .connect
            .client()
            .and_then(|c| Ok(c.delete_node(&a.name)?))
            .map(|existed| {
                if existed {
                    println!("node `{}` deleted", a.name);
                } else {
                    println!("node `{}` was not registered", a.name);
                }
            }),
    };
    r.map_or_else(|e| super::fail(&e), |()| ExitCode::SUCCESS)
}

/// How long ago `ms` (milliseconds since the epoch) was, e.g. `3s ago`.
pub(crate) fn age(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let secs = now.saturating_sub(ms) / 1000;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

fn print(output: Output, nodes: &[Value], list: bool) -> Result<()> {
    match output {
        Output::Table => {
            let mut rows = vec![
                [
                    "NAME",
                    "ADDRESS",
                    "POD CIDR",
                    "WG EPOCH",
                    "ACKED REVISION",
                    "LIVE",
                    "LAST HEARTBEAT",
                ]
                .map(str::to_owned)
                .to_vec(),
            ];
            rows.extend(nodes.iter().map(|n| {
                vec![
                    text(&n["name"]),
                    text(&n["address"]),
                    text(&n["pod_cidr"]),
                    num(&n["wireguard_epoch"]),
                    num(&n["acked_revision"]),
                    match n["live"].as_bool() {
                        Some(true) => "yes".to_owned(),
                        Some(false) => "no".to_owned(),
                        None => "-".to_owned(),
                    },
                    n["last_heartbeat_ms"]
                        .as_u64()
                        .map_or_else(|| "-".to_owned(), age),
                ]
            }));
            emit(&table(&rows));
        }
        _ if list => emit(&output.render(&serde_json::json!({ "items": nodes }))?),
        _ => emit(&output.render(&nodes.first())?),
    }
    Ok(())
}
