//! `palisade-controlplane`: one member of the Palisade control plane.
//!
//! ```text
//! palisade-controlplane --id 1 --data-dir /var/lib/palisade/cp1 \
//!     --raft-listen 127.0.0.1:7001 --api-listen 127.0.0.1:8001 \
//!     --peer 1=127.0.0.1:7001=127.0.0.1:8001 --peer 2=... --peer 3=... --init
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use ipnet::Ipv4Net;
use palisade_control_plane::app::ClusterConfig;
use palisade_control_plane::config::Config;
use palisade_control_plane::validate::EngineValidator;
use palisade_control_plane::{Member, NodeId};

/// One member of the Palisade control plane (Raft over tonic, RocksDB, REST client API).
#[derive(Debug, Parser)]
#[command(name = "palisade-controlplane", version)]
struct Args {
    /// Read the whole configuration from this JSON file (the fields of `Config`) instead of
    /// the flags below.
    #[arg(long, conflicts_with_all = ["id", "data_dir", "raft_listen", "api_listen", "peer", "init"])]
    config: Option<PathBuf>,
    /// Raft id of this member (≥ 1).
    #[arg(long)]
    id: Option<NodeId>,
    /// RocksDB directory (created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address of the Raft peer service. Trusted-only: reachable by members alone.
    #[arg(long)]
    raft_listen: Option<SocketAddr>,
    /// Listen address of the REST client API and /metrics.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// A member as ID=RAFT_ADDR=API_ADDR; repeat for each (this one included).
    #[arg(long, value_name = "ID=RAFT_ADDR=API_ADDR")]
    peer: Vec<String>,
    /// Bootstrap the membership from the --peer list (this member alone without --peer) if this
    /// member's log is empty.
    #[arg(long)]
    init: bool,
    /// Build a snapshot every N applied log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, default_value_t = 1_000)]
    keep_logs: u64,
    /// Raft heartbeat interval in milliseconds (elections after 3–6 heartbeats).
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// A node is live while its last heartbeat is at most this old (ms).
    #[arg(long, default_value_t = 20_000)]
    node_lease_ms: u64,
    /// File of admin bearer tokens (one a line); without it the client API is unauthenticated.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// File of read-only bearer tokens.
    #[arg(long)]
    read_token_file: Option<PathBuf>,
    /// File with the token members present to each other (the same file on every member).
    #[arg(long)]
    member_token_file: Option<PathBuf>,
    /// Cluster id (0–255): the high 8 bits of every identity. Applied at --init.
    #[arg(long, default_value_t = 0)]
    cluster_id: u8,
    /// CIDR that node pod CIDRs are carved from. Applied at --init.
    #[arg(long, default_value = "10.200.0.0/16")]
    cluster_cidr: Ipv4Net,
    /// Prefix length of each node's pod CIDR. Applied at --init.
    #[arg(long, default_value_t = 24)]
    node_prefix_len: u8,
}

fn parse_peer(s: &str) -> anyhow::Result<(NodeId, Member)> {
    let mut parts = s.splitn(3, '=');
    let (Some(id), Some(raft_addr), Some(api_addr)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("--peer `{s}`: expected ID=RAFT_ADDR=API_ADDR");
    };
    let id: NodeId = id
        .parse()
        .with_context(|| format!("--peer `{s}`: the id is not a number"))?;
    for a in [raft_addr, api_addr] {
        a.parse::<SocketAddr>()
            .with_context(|| format!("--peer `{s}`: `{a}` is not HOST:PORT"))?;
    }
    Ok((
        id,
        Member {
            raft_addr: raft_addr.to_owned(),
            api_addr: api_addr.to_owned(),
        },
    ))
}

fn config_from(args: Args) -> anyhow::Result<Config> {
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("invalid config file `{}`", path.display()));
    }
    let peers = args
        .peer
        .iter()
        .map(|p| parse_peer(p))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    Ok(Config {
        id: args.id.context("--id is required")?,
        data_dir: args.data_dir.context("--data-dir is required")?,
        raft_listen: args.raft_listen.context("--raft-listen is required")?,
        api_listen: args.api_listen.context("--api-listen is required")?,
        peers,
        init: args.init,
        snapshot_logs: args.snapshot_logs,
        keep_logs: args.keep_logs,
        heartbeat_ms: args.heartbeat_ms,
        node_lease_ms: args.node_lease_ms,
        admin_token_file: args.admin_token_file,
        read_token_file: args.read_token_file,
        member_token_file: args.member_token_file,
        cluster: ClusterConfig {
            cluster_id: args.cluster_id,
            cluster_cidr: args.cluster_cidr,
            node_prefix_len: args.node_prefix_len,
        },
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = config_from(Args::parse())?;
    config.validate().context("invalid configuration")?;
    let prometheus = palisade_control_plane::metrics::install();
    let cp = palisade_control_plane::start(Arc::new(config), Arc::new(EngineValidator), prometheus)
        .await
        .context("cannot start the control-plane member")?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => {
            r.context("cannot wait for SIGINT")?;
            tracing::info!("SIGINT: shutting down");
        }
    }
    cp.shutdown().await;
    Ok(())
}
