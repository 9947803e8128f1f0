//! `palisade policy apply|get|list|delete|wait`: the policy objects stored in the control plane.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use palisade_api::controlplane::PolicyRecord;
use palisade_cp_client::{ApplyOutcome, WaitOutcome};
use serde_json::json;

use super::objects::{self, Object};
use crate::cmd::connect::ConnectArgs;
use crate::cmd::{Output, emit, table};

/// The longest wait the server allows (its `timeout_ms` cap).
const MAX_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
pub(super) struct ApplyArgs {
    /// A policy file, a directory (its *.yaml, *.yml and *.json files, sorted) or `-` for
    /// standard input. Repeatable; files may hold several YAML documents and `kind: List`.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    files: Vec<PathBuf>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct GetArgs {
    /// The object: KIND/NAMESPACE/NAME, or KIND/NAME for the `default` namespace (and for
    /// cluster-scoped kinds). KIND: CiliumNetworkPolicy (cnp), CiliumClusterwideNetworkPolicy
    /// (ccnp), NetworkPolicy (netpol).
    #[arg(value_name = "KIND/NAMESPACE/NAME")]
    key: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format: a summary row, or the stored record (`key`, `object`, `revision`).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, clap::Args)]
pub(super) struct ListArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format: a table, or `{revision, items: [{key, object, revision}]}`.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, clap::Args)]
pub(super) struct DeleteArgs {
    /// Objects to delete: KIND/NAMESPACE/NAME or KIND/NAME (see `policy get --help`).
    #[arg(value_name = "KIND/NAMESPACE/NAME", required_unless_present = "files")]
    keys: Vec<String>,
    /// Delete the objects these files define (FILE, DIR or `-`, as for `apply`; only kind,
    /// namespace and name are read).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    files: Vec<PathBuf>,
    /// Exit 0 even when some object did not exist.
    #[arg(long)]
    ignore_not_found: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct WaitArgs {
    /// The policy revision to wait for [default: the current one].
    #[arg(long)]
    revision: Option<u64>,
    /// Give up after this long (e.g. `30s`, `2m`; at most 10m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub(super) fn apply(a: &ApplyArgs) -> Result<ExitCode> {
    let sources = objects::read_sources(&a.files)?;
    // Everything is validated before anything is sent: an invalid set applies nothing.
    let objs = objects::parse_all(&sources)?;
    let client = a.connect.client()?;
    // Only to say `created` rather than `configured`; the writes themselves are idempotent.
    let (_, existing) = client.list_policies()?;
    let existing: BTreeSet<String> = existing.iter().map(|p| p.key.storage_key()).collect();
    let mut revision = None;
    for o in &objs {
        let ApplyOutcome {
            revision: r,
            changed,
        } = client
            .apply_policy(&o.key, &o.object)
            .map_err(|e| anyhow!("{}: {}: {e}", o.origin, o.display_name()))?;
        let what = match (changed, existing.contains(&o.key.storage_key())) {
            (false, _) => "unchanged",
            (true, true) => "configured",
            (true, false) => "created",
        };
        emit(&format!("{} {what}\n", o.display_name()));
        revision = Some(r);
    }
    if let Some(r) = revision {
        emit(&format!("policy revision {r}\n"));
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(records: &[PolicyRecord]) -> String {
    let mut rows = vec![
        ["KIND", "NAMESPACE", "NAME", "REVISION"]
            .map(str::to_owned)
            .to_vec(),
    ];
    rows.extend(records.iter().map(|p| {
        vec![
            p.key.kind.clone(),
            p.key.namespace.clone(),
            p.key.name.clone(),
            p.revision.to_string(),
        ]
    }));
    table(&rows)
}

pub(super) fn get(a: &GetArgs) -> Result<ExitCode> {
    let key = objects::parse_key(&a.key)?;
    let rec = a
        .connect
        .client()?
        .get_policy(&key)?
        .ok_or_else(|| anyhow!("policy `{}` not found", key.storage_key()))?;
    match a.output {
        Output::Table => emit(&summary(std::slice::from_ref(&rec))),
        o => emit(&o.render(&rec)?),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn list(a: &ListArgs) -> Result<ExitCode> {
    let (revision, items) = a.connect.client()?.list_policies()?;
    match a.output {
        Output::Table => {
            emit(&summary(&items));
            emit(&format!("policy revision {revision}\n"));
        }
        o => emit(&o.render(&json!({ "revision": revision, "items": items }))?),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn delete(a: &DeleteArgs) -> Result<ExitCode> {
    let mut objs: Vec<Object> = Vec::new();
    for k in &a.keys {
        let key = objects::parse_key(k)?;
        objs.push(Object {
            origin: k.clone(),
            object: json!({}),
            key,
        });
    }
    for (name, text) in objects::read_sources(&a.files)? {
        objs.extend(objects::parse(&name, &text, false)?);
    }
    let client = a.connect.client()?;
    let mut missing = 0;
    let mut revision = None;
    for o in &objs {
        let out = client
            .delete_policy(&o.key)
            .map_err(|e| anyhow!("{}: {e}", o.key.storage_key()))?;
        if out.changed {
            emit(&format!("{} deleted\n", o.key.storage_key()));
        } else {
            missing += 1;
            emit(&format!("{} not found\n", o.key.storage_key()));
        }
        revision = Some(out.revision);
    }
    if let Some(r) = revision {
        emit(&format!("policy revision {r}\n"));
    }
    Ok(if missing > 0 && !a.ignore_not_found {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(super) fn wait(a: &WaitArgs) -> Result<ExitCode> {
    if a.timeout > MAX_WAIT {
        return Err(anyhow!("--timeout: at most 10m (the server's limit)"));
    }
    let outcome = a.connect.client()?.wait_policies(a.revision, a.timeout)?;
    let (doc, code) = match &outcome {
        WaitOutcome::Done { revision, nodes } => (
            json!({"revision": revision, "nodes": nodes, "done": true}),
            ExitCode::SUCCESS,
        ),
        WaitOutcome::TimedOut { revision, laggards } => (
            json!({"revision": revision, "done": false, "laggards": laggards
                .iter()
                .map(|(n, r)| json!({"node": n, "acked_revision": r}))
                .collect::<Vec<_>>()}),
            ExitCode::from(1),
        ),
    };
    if a.output != Output::Table {
        emit(&a.output.render(&doc)?);
        return Ok(code);
    }
    match outcome {
        WaitOutcome::Done { revision, nodes } => emit(&format!(
            "policy revision {revision} acknowledged by every live node ({nodes} live)\n"
        )),
        WaitOutcome::TimedOut { revision, laggards } => {
            let mut rows = vec![vec!["NODE".to_owned(), "ACKED REVISION".to_owned()]];
            rows.extend(laggards.iter().map(|(n, r)| vec![n.clone(), r.to_string()]));
            emit(&format!(
                "timed out after {}: {} live node(s) have not acknowledged policy revision {revision}\n{}",
                humantime::format_duration(a.timeout),
                laggards.len(),
                table(&rows)
            ));
        }
    }
    Ok(code)
}
