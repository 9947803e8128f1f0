//! `palisade identity`: the security identities the control plane allocated.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use palisade_api::controlplane::Identity;

use super::connect::ConnectArgs;
use super::{Output, emit, table};

/// Arguments of `palisade identity`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List every identity and the labels it stands for.
    List(ReadArgs),
    /// Show one identity (exit 2 when it does not exist).
    Get(GetArgs),
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
    /// The numeric identity.
    id: u32,
    #[command(flatten)]
    read: ReadArgs,
}

/// Runs `palisade identity`.
pub fn run(args: Args) -> ExitCode {
    let r = match args.command {
        Command::List(a) => a
            .connect
            .client()
            .and_then(|c| Ok(c.list_identities()?))
            .and_then(|ids| print(a.output, &ids, true)),
        Command::Get(a) => a
            .read
            .connect
            .client()
            .and_then(|c| Ok(c.get_identity(a.id)?))
            .and_then(|found| found.ok_or_else(|| anyhow!("identity {} not found", a.id)))
            .and_then(|id| print(a.read.output, std::slice::from_ref(&id), false)),
    };
    r.map_or_else(|e| super::fail(&e), |()| ExitCode::SUCCESS)
}

fn print(output: Output, ids: &[Identity], list: bool) -> Result<()> {
    match output {
        Output::Table => {
            let mut rows = vec![vec![
                "ID".to_owned(),
                "LABELS".to_owned(),
                "UNUSED SINCE".to_owned(),
            ]];
            rows.extend(ids.iter().map(|i| {
                vec![
                    i.id.to_string(),
                    i.labels.join(","),
                    i.unreferenced_since_ms
                        .map_or_else(|| "-".to_owned(), super::node::age),
                ]
            }));
            emit(&table(&rows));
        }
        _ if list => emit(&output.render(&serde_json::json!({ "items": ids }))?),
        _ => emit(&output.render(&ids.first())?),
    }
    Ok(())
}
