//! The `palisade-controlplane` daemon as a library: its flags ([`Args`]), the `certs`
//! subcommands, and [`main_with`], so the daemon binary and the `palisade` CLI
//! (`palisade controlplane ...`) run the same code.
//!
//! ```text
//! palisade-controlplane --id 1 --data-dir /var/lib/palisade/cp1 \
//!     --raft-listen 127.0.0.1:7001 --api-listen 127.0.0.1:8001 \
//!     --peer 1=127.0.0.1:7001=127.0.0.1:8001 --peer 2=... --peer 3=... --init [--tls-dir DIR]
//! palisade-controlplane certs init-ca --dir CA_DIR
//! palisade-controlplane certs issue --ca-dir CA_DIR --name cp-1 --role member --out DIR --san 127.0.0.1
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::app::ClusterConfig;
use crate::config::{Config, ConfigError};
use crate::node::StartError;
use crate::tls::{self, CertRole, TlsError};
use crate::validate::{EngineValidator, PlaceholderShapeValidator, PolicyValidator};
use crate::{Member, NodeId};

/// One member of the Palisade control plane (Raft over tonic, RocksDB, REST client API), or
/// `certs` to manage its certificates.
#[derive(Debug, clap::Parser)]
#[command(
    name = "palisade-controlplane",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Certificate management instead of running a member.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Running a member.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The cluster CA and the member and node certificates it issues.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// `certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca-key.pem (0600). Refuses to overwrite.
    InitCa {
        /// Directory of the CA (created if missing). Keep it off the members if you can.
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a member, node, admin or read certificate into a tls dir: OUT/cert.pem, OUT/key.pem (0600,
    /// generated here) and OUT/ca.pem. The role is recorded as the SAN URI
    /// spiffe://palisade/ROLE/NAME. Refuses to overwrite.
    Issue {
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Member or node name (a-z, 0-9, `-`, `.`); for a node, its node name.
        #[arg(long)]
        name: String,
        /// member (Raft peer service, /internal/v1/*), node (the agent calls of that node),
        /// admin or read (an operator or automation with the rights of the token of that role,
        /// e.g. in a kubeconfig written by `palisade kubeconfig --tls-dir`).
        #[arg(long)]
        role: CertRole,
        /// Output tls dir (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// An IP address or DNS name the holder serves on (repeat); members need the IPs of
        /// their --raft-listen and --api-listen.
        #[arg(long)]
        san: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// The flags of a running member.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Read the whole configuration from this JSON file (the fields of `Config`) instead of
    /// the flags below.
    #[arg(long, conflicts_with_all = ["id", "data_dir", "raft_listen", "api_listen", "grpc_listen", "ui_listen", "peer", "init", "tls_dir"])]
    pub config: Option<PathBuf>,
    /// Raft id of this member (≥ 1).
    #[arg(long)]
    pub id: Option<NodeId>,
    /// RocksDB directory (created if missing).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Listen address of the Raft peer service. Trusted-only: reachable by members alone.
    #[arg(long)]
    pub raft_listen: Option<SocketAddr>,
    /// Listen address of the REST client API and /metrics.
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
    /// Listen address of the automation gRPC API (palisade.controlplane.v1: policies,
    /// identities, nodes, endpoints, cluster status, the change stream). Not served without it.
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// Serve the web UI (service map and flow table from the flow relay) on this address; a
    /// bare `--ui-listen` means 127.0.0.1:12000 (Hubble UI's port, loopback only). Plain HTTP:
    /// keep it on loopback and reach it through a tunnel (`palisade ui --lab` for a lab); with
    /// token files its data needs a read token. Not served without the flag.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = crate::ui::DEFAULT_UI_LISTEN)]
    pub ui_listen: Option<SocketAddr>,
    /// Port of the agents' flow observers (`palisade agent run --hubble-listen`): the flow
    /// relay (`observer.Observer`, served on --grpc-listen) asks each registered node's address
    /// on it, presenting this member's certificate when --tls-dir is given.
    #[arg(long, value_name = "PORT", default_value_t = crate::grpc::relay::DEFAULT_HUBBLE_PORT)]
    pub hubble_port: u16,
    /// A member as ID=RAFT_ADDR=API_ADDR; repeat for each (this one included).
    #[arg(long, value_name = "ID=RAFT_ADDR=API_ADDR")]
    pub peer: Vec<String>,
    /// Bootstrap the membership from the --peer list (this member alone without --peer) if this
    /// member's log is empty. With --tls-dir naming an empty or missing directory, also create
    /// a cluster CA there and this member's certificate (issue the others' with `certs issue
    /// --ca-dir` on that directory).
    #[arg(long)]
    pub init: bool,
    /// TLS dir (ca.pem, cert.pem with the member role, key.pem): mutual TLS on the Raft port,
    /// HTTPS on the client API. Without it both are plain.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Build a snapshot every N applied log entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, default_value_t = 1_000)]
    pub keep_logs: u64,
    /// Raft heartbeat interval in milliseconds; also openraft's timeout for one replication
    /// RPC, so it must cover sending a batch of entries. A follower that knew a leader
    /// campaigns after 6–8 silent heartbeats (openraft's leader lease of 4 plus an election
    /// timeout of 2–4): 600–800 ms at the default.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// A node is live while its last heartbeat is at most this old (ms).
    #[arg(long, default_value_t = 20_000)]
    pub node_lease_ms: u64,
    /// Identities no endpoint has used for this long (ms, replicated clock) are garbage-collected
    /// by the leader (Cilium's default grace is 15 minutes too).
    #[arg(long, default_value_t = 900_000)]
    pub identity_gc_grace_ms: u64,
    /// How often the leader collects unused identities (ms); 0 turns the collection off
    /// (`POST /v1/identities/gc` still works).
    #[arg(long, default_value_t = 60_000)]
    pub identity_gc_interval_ms: u64,
    /// File of admin bearer tokens (one a line); without it the client API is unauthenticated.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// File of read-only bearer tokens.
    #[arg(long)]
    pub read_token_file: Option<PathBuf>,
    /// File with the token members present to each other (the same file on every member).
    #[arg(long)]
    pub member_token_file: Option<PathBuf>,
    /// File of node bearer tokens, for agents without a node certificate (a Kubernetes
    /// DaemonSet): they may read, and make the agents' writes (register, heartbeat, ack, id
    /// blocks, identities, endpoints) for any node, but never write policy or the cluster.
    #[arg(long)]
    pub node_token_file: Option<PathBuf>,
    /// Cluster id (0–255): the high 8 bits of every identity. Applied at --init.
    #[arg(long, default_value_t = 0)]
    pub cluster_id: u8,
    /// CIDR that node pod CIDRs are carved from. Applied at --init.
    #[arg(long, default_value = "10.200.0.0/16")]
    pub cluster_cidr: Ipv4Net,
    /// Prefix length of each node's pod CIDR. Applied at --init.
    #[arg(long, default_value_t = 24)]
    pub node_prefix_len: u8,
    /// What a policy write is checked with before it is proposed: `engine` (the policy
    /// engine) or `envelope` (apiVersion, kind and name only: what a Kubernetes API server
    /// holding the CRDs checks). `envelope` is only for a control plane standing in for a
    /// cluster's API server (the mirror's tests): it stores objects the engine refuses, which
    /// agents cannot load, so never point agents at such a member.
    #[arg(long, value_enum, default_value_t = PolicyValidation::Engine)]
    pub policy_validation: PolicyValidation,
}

/// The `--policy-validation` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyValidation {
    /// The policy engine ([`EngineValidator`]).
    Engine,
    /// The envelope only ([`PlaceholderShapeValidator`]).
    Envelope,
}

impl PolicyValidation {
    fn validator(self) -> Arc<dyn PolicyValidator> {
        match self {
            PolicyValidation::Engine => Arc::new(EngineValidator),
            PolicyValidation::Envelope => Arc::new(PlaceholderShapeValidator),
        }
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A `--peer` value is malformed.
    #[error("--peer `{peer}`: {reason}")]
    Peer {
        /// The value.
        peer: String,
        /// Why.
        reason: &'static str,
    },
    /// A required flag is missing.
    #[error("{flag} is required (or --config)")]
    Missing {
        /// The flag.
        flag: &'static str,
    },
    /// The config file cannot be read.
    #[error("cannot read the config file `{path}`")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a `Config`.
    #[error("invalid config file `{path}`")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration does not validate.
    #[error("invalid configuration")]
    Invalid(#[source] ConfigError),
    /// TLS material could not be created.
    #[error("certificates")]
    Tls(#[from] TlsError),
    /// The member did not start.
    #[error("cannot start the control-plane member")]
    Start(#[source] StartError),
    /// The runtime or a signal handler could not be set up.
    #[error("cannot {what}")]
    Runtime {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn parse_peer(s: &str) -> Result<(NodeId, Member), DaemonError> {
    let bad = |reason| DaemonError::Peer {
        peer: s.to_owned(),
        reason,
    };
    let mut parts = s.splitn(3, '=');
    let (Some(id), Some(raft_addr), Some(api_addr)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected ID=RAFT_ADDR=API_ADDR"));
    };
    let id: NodeId = id.parse().map_err(|_| bad("the id is not a number"))?;
    for a in [raft_addr, api_addr] {
        a.parse::<SocketAddr>()
            .map_err(|_| bad("an address is not IP:PORT"))?;
    }
    Ok((
        id,
        Member {
            raft_addr: raft_addr.to_owned(),
            api_addr: api_addr.to_owned(),
        },
    ))
}

/// The member configuration the flags (or `--config`) describe.
pub fn config_from(args: RunArgs) -> Result<Config, DaemonError> {
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|source| DaemonError::ConfigRead {
            path: path.clone(),
            source,
        })?;
        return serde_json::from_str(&text).map_err(|source| DaemonError::ConfigParse {
            path: path.clone(),
            source,
        });
    }
    let peers = args
        .peer
        .iter()
        .map(|p| parse_peer(p))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let missing = |flag| DaemonError::Missing { flag };
    Ok(Config {
        id: args.id.ok_or_else(|| missing("--id"))?,
        data_dir: args.data_dir.ok_or_else(|| missing("--data-dir"))?,
        raft_listen: args.raft_listen.ok_or_else(|| missing("--raft-listen"))?,
        api_listen: args.api_listen.ok_or_else(|| missing("--api-listen"))?,
        grpc_listen: args.grpc_listen,
        hubble_port: args.hubble_port,
        ui_listen: args.ui_listen,
        peers,
        init: args.init,
        snapshot_logs: args.snapshot_logs,
        keep_logs: args.keep_logs,
        heartbeat_ms: args.heartbeat_ms,
        node_lease_ms: args.node_lease_ms,
        identity_gc_grace_ms: args.identity_gc_grace_ms,
        identity_gc_interval_ms: args.identity_gc_interval_ms,
        admin_token_file: args.admin_token_file,
        read_token_file: args.read_token_file,
        member_token_file: args.member_token_file,
        node_token_file: args.node_token_file,
        tls_dir: args.tls_dir,
        cluster: ClusterConfig {
            cluster_id: args.cluster_id,
            cluster_cidr: args.cluster_cidr,
            node_prefix_len: args.node_prefix_len,
        },
    })
}

/// Runs the daemon (or a `certs` subcommand) on a runtime of its own and returns its exit
/// code; errors are printed to stderr with their causes. Installs the tracing subscriber unless
/// one is installed already. Call it outside any tokio runtime; inside one, await [`run`].
pub fn main_with(args: Args) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Runtime {
            what: "start the tokio runtime",
            source,
        })
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("palisade-controlplane: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT, or a `certs` subcommand.
pub async fn run(args: Args) -> Result<(), DaemonError> {
    match args.command {
        Some(Command::Certs(c)) => certs(c),
        None => serve(args.run).await,
    }
}

fn certs(c: CertsCommand) -> Result<(), DaemonError> {
    match c {
        CertsCommand::InitCa { dir, days } => {
            tls::init_ca(&dir, days)?;
            eprintln!(
                "created the cluster CA in `{}` ({} and {})",
                dir.display(),
                tls::CA_CERT_FILE,
                tls::CA_KEY_FILE
            );
        }
        CertsCommand::Issue {
            ca_dir,
            name,
            role,
            out,
            san,
            days,
        } => {
            tls::issue(&ca_dir, &name, role, &out, &san, days)?;
            eprintln!(
                "issued the {role} certificate of `{name}` into `{}`",
                out.display()
            );
        }
    }
    Ok(())
}

/// With `--init` and a tls dir that is empty or missing: creates the CA there and this member's
/// certificate (`member-ID`, with the IPs of its Raft, API and gRPC addresses as SANs).
fn init_tls_dir(config: &Config, dir: &Path) -> Result<(), DaemonError> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(source) => {
            return Err(DaemonError::Tls(TlsError::Io {
                path: dir.to_owned(),
                source,
            }));
        }
    };
    if !empty {
        return Ok(());
    }
    let me = config.me();
    let mut sans = Vec::new();
    let grpc = config.grpc_listen.map(|a| a.to_string());
    for addr in [Some(&me.raft_addr), Some(&me.api_addr), grpc.as_ref()]
        .into_iter()
        .flatten()
    {
        if let Ok(a) = addr.parse::<SocketAddr>()
            && !sans.contains(&a.ip().to_string())
        {
            sans.push(a.ip().to_string());
        }
    }
    tls::init_ca(dir, 3650)?;
    let name = format!("member-{}", config.id);
    tls::issue(dir, &name, CertRole::Member, dir, &sans, 365)?;
    tracing::info!(dir = %dir.display(), %name, "created a cluster CA and this member's certificate");
    Ok(())
}

async fn serve(args: RunArgs) -> Result<(), DaemonError> {
    let validation = args.policy_validation;
    let config = config_from(args)?;
    config.validate().map_err(DaemonError::Invalid)?;
    if config.init
        && let Some(dir) = &config.tls_dir
    {
        init_tls_dir(&config, dir)?;
    }
    let prometheus = crate::metrics::install();
    if validation == PolicyValidation::Envelope {
        tracing::warn!(
            "--policy-validation envelope: policies the engine refuses are stored (a stand-in for a Kubernetes API server; agents must not use this member)"
        );
    }
    let cp = crate::start(Arc::new(config), validation.validator(), prometheus)
        .await
        .map_err(DaemonError::Start)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Runtime {
            what: "install the SIGTERM handler",
            source,
        })?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => {
            r.map_err(|source| DaemonError::Runtime { what: "wait for SIGINT", source })?;
            tracing::info!("SIGINT: shutting down");
        }
    }
    cp.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn flags_and_subcommands_parse() -> Result<(), Box<dyn std::error::Error>> {
        let a = Args::try_parse_from([
            "palisade-controlplane",
            "--id",
            "1",
            "--data-dir",
            "/tmp/x",
            "--raft-listen",
            "127.0.0.1:7001",
            "--api-listen",
            "127.0.0.1:8001",
            "--peer",
            "1=127.0.0.1:7001=127.0.0.1:8001",
            "--init",
            "--tls-dir",
            "/tmp/tls",
            "--grpc-listen",
            "127.0.0.1:9001",
        ])?;
        assert!(a.command.is_none());
        let c = config_from(a.run)?;
        assert_eq!(c.grpc_listen, "127.0.0.1:9001".parse().ok());
        assert_eq!(c.tls_dir, Some(PathBuf::from("/tmp/tls")));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.ui_listen, None, "the web UI is opt-in");
        // A bare --ui-listen is Hubble UI's port on loopback; an address is taken as given.
        let base = [
            "palisade-controlplane",
            "--id",
            "1",
            "--data-dir",
            "/tmp/x",
            "--raft-listen",
            "127.0.0.1:7001",
            "--api-listen",
            "127.0.0.1:8001",
        ];
        let ui = |extra: &[&str]| {
            let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
            Args::try_parse_from(argv).map(|a| a.run.ui_listen)
        };
        assert_eq!(ui(&["--ui-listen"])?, "127.0.0.1:12000".parse().ok());
        assert_eq!(
            ui(&["--ui-listen", "10.97.0.1:12001"])?,
            "10.97.0.1:12001".parse().ok()
        );
        assert!(ui(&["--ui-listen", "nowhere"]).is_err());
        let a = Args::try_parse_from([
            "palisade-controlplane",
            "certs",
            "issue",
            "--ca-dir",
            "/ca",
            "--name",
            "node-a",
            "--role",
            "node",
            "--out",
            "/o",
            "--san",
            "10.0.0.1",
        ])?;
        assert!(matches!(
            a.command,
            Some(Command::Certs(CertsCommand::Issue {
                role: CertRole::Node,
                ..
            }))
        ));
        let e = config_from(Args::try_parse_from(["palisade-controlplane", "--id", "1"])?.run)
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("--data-dir is required (or --config)"));
        let e = parse_peer("1=127.0.0.1:7001").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.starts_with("--peer `1=127.0.0.1:7001`")));
        Ok(())
    }

    /// The `palisade` CLI embeds the daemon as `palisade controlplane ...`.
    #[test]
    fn the_daemon_embeds_as_a_subcommand() -> Result<(), Box<dyn std::error::Error>> {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: CliCommand,
        }
        #[derive(Debug, clap::Subcommand)]
        enum CliCommand {
            Controlplane(Args),
        }
        let CliCommand::Controlplane(a) = Cli::try_parse_from([
            "palisade",
            "controlplane",
            "certs",
            "init-ca",
            "--dir",
            "/ca",
        ])?
        .command;
        assert!(matches!(
            a.command,
            Some(Command::Certs(CertsCommand::InitCa { days: 3650, .. }))
        ));
        let CliCommand::Controlplane(a) =
            Cli::try_parse_from(["palisade", "controlplane", "--id", "2", "--tls-dir", "/tls"])?
                .command;
        assert_eq!(a.run.id, Some(2));
        assert!(a.command.is_none());
        Ok(())
    }
}
