//! `palisade cluster`: the control plane's own state (members, leader, replication) and its
//! cluster-wide tables.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::Value;

use super::connect::ConnectArgs;
use super::{Output, emit, table};

/// Arguments of `palisade cluster`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The control plane as its leader sees it: leader, term, log and commit indexes, and every
    /// voter and learner with its replication lag (the leader's last log index minus the index
    /// it knows the member matched). Asked of the leader directly when another member answers
    /// first; without a leader, the answering member's view.
    Status(ReadArgs),
    /// Every endpoint registered in the control plane (IP, identity, node), cluster-wide. The
    /// endpoints the local agent enforces for are `palisade endpoint list`.
    Endpoints(ReadArgs),
}

#[derive(Debug, clap::Args)]
struct ReadArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Runs `palisade cluster`.
pub fn run(args: Args) -> ExitCode {
    let r = match args.command {
        Command::Status(a) => status(&a),
        Command::Endpoints(a) => endpoints(&a),
    };
    r.unwrap_or_else(|e| super::fail(&e))
}

/// A JSON number or `-`.
pub(crate) fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn status(a: &ReadArgs) -> Result<ExitCode> {
    let s = a.connect.client()?.leader_status()?;
    if a.output != Output::Table {
        emit(&a.output.render(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let leader = match (s["leader"].as_u64(), s["leader_api_addr"].as_str()) {
        (Some(l), Some(addr)) => format!("{l} (API {addr})"),
        (Some(l), None) => l.to_string(),
        _ => "none known".to_owned(),
    };
    let mut out = table(&[
        vec![
            "Member:".into(),
            format!("{} ({})", num(&s["id"]), s["state"].as_str().unwrap_or("?")),
        ],
        vec!["Leader:".into(), leader],
        vec!["Term:".into(), num(&s["term"])],
        vec!["Last log index:".into(), num(&s["last_log_index"])],
        vec!["Commit index:".into(), num(&s["commit_index"])],
        vec!["Last applied:".into(), num(&s["last_applied"])],
        vec!["Snapshot index:".into(), num(&s["snapshot_index"])],
    ]);
    // Lags are meaningful only on the leader, which tracks what each member matched.
    let last = s["last_log_index"].as_u64();
    let is_leader = s["state"] == "leader";
    let mut rows = vec![vec![
        "ROLE".to_owned(),
        "ID".to_owned(),
        "RAFT".to_owned(),
        "API".to_owned(),
        "MATCHED".to_owned(),
        "LAG".to_owned(),
    ]];
    for (role, list) in [("voter", &s["voters"]), ("learner", &s["learners"])] {
        for m in list.as_array().into_iter().flatten() {
            let matched = m["matched_index"].as_u64();
            let lag = match (is_leader, last, matched) {
                (true, Some(l), Some(mi)) => l.saturating_sub(mi).to_string(),
                _ => "-".to_owned(),
            };
            rows.push(vec![
                role.to_owned(),
                num(&m["id"]),
                m["raft_addr"].as_str().unwrap_or("-").to_owned(),
                m["api_addr"].as_str().unwrap_or("-").to_owned(),
                matched.map_or_else(|| "-".to_owned(), |x| x.to_string()),
                lag,
            ]);
        }
    }
    out.push('\n');
    out.push_str(&table(&rows));
    emit(&out);
    Ok(ExitCode::SUCCESS)
}

fn endpoints(a: &ReadArgs) -> Result<ExitCode> {
    let eps = a.connect.client()?.list_endpoints()?;
    if a.output != Output::Table {
        emit(&a.output.render(&serde_json::json!({ "items": eps }))?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![vec![
        "IP".to_owned(),
        "IDENTITY".to_owned(),
        "NODE".to_owned(),
    ]];
    rows.extend(
        eps.iter()
            .map(|e| vec![e.ip.to_string(), e.identity.to_string(), e.node.clone()]),
    );
    emit(&table(&rows));
    Ok(ExitCode::SUCCESS)
}
