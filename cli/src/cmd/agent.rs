//! `palisade agent` and `palisade endpoint`: run the node agent, and ask it what it enforces.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use palisade_api::agent::{AgentRequest, AgentResponse};
use palisade_cp_client::{ClientConfig, TlsConfig};
use palisade_node_agent::agent::dns::{CacheLimits, DnsConfig};
use palisade_node_agent::agent::{
    self, AgentConfig, BackendChoice, ControlPlaneConfig, EncryptionConfig, GossipConfig,
    GossipKey, GossipSigner as NodeSigner, GossipVerifier as StateVerifier, ProxyConfig,
};
use palisade_node_agent::datapath::DatapathConfig;

use super::Output;

/// The all-zero key (base64 of 32 zero bytes): registered until keymgr gives the node a real one.
const PLACEHOLDER_WIREGUARD_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// Default socket of the agent.
pub const DEFAULT_SOCKET: &str = "/run/palisade/agent.sock";

/// Arguments of `palisade agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the node agent in this network namespace (foreground; needs root).
    ///
    /// It loads the eBPF datapath, serves the CNI plugin on --socket (IPAM from --pod-cidr and
    /// endpoint registration), compiles the policies found in --policy-dir for the endpoints
    /// registered here, and keeps the maps equal to that compiled state. IPAM and the endpoint
    /// registry persist in --state-dir, so a restarted agent re-attaches its endpoints.
    Run(Box<RunArgs>),
    /// Show what the agent enforces: node, endpoints, policies, verdict counters.
    Status(ClientArgs),
}

/// Arguments of `palisade endpoint`.
#[derive(Debug, clap::Args)]
pub struct EndpointArgs {
    #[command(subcommand)]
    command: EndpointCmd,
}

#[derive(Debug, Subcommand)]
enum EndpointCmd {
    /// List the endpoints the local agent enforces for.
    List(ClientArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Node name.
    #[arg(long)]
    node: String,
    /// This node's pod CIDR (addresses are handed out from host .10 upwards).
    #[arg(long, value_name = "CIDR")]
    pod_cidr: ipnet::Ipv4Net,
    /// This node's own addresses, mapped to the `host` identity (repeatable).
    #[arg(long = "node-ip", value_name = "IP")]
    node_ips: Vec<Ipv4Addr>,
    /// Unix socket for the CNI plugin and the CLI (mode 0600).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Directory for IPAM and endpoint state.
    #[arg(long, default_value = "/var/lib/palisade/agent")]
    state_dir: PathBuf,
    /// Directory of policy objects (YAML/JSON) to enforce; re-read when it changes.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Small eBPF maps (tests and labs with many agents on one host).
    #[arg(long)]
    small_maps: bool,
    /// Where maps and program links are pinned on bpffs, so enforcement continues while the
    /// agent is down and a restarted agent adopts it [default: /sys/fs/bpf/palisade/<node>].
    #[arg(long, value_name = "DIR", conflicts_with = "no_bpf_pin")]
    bpf_pin_dir: Option<PathBuf>,
    /// Do not pin: the datapath lives and dies with this process (enforcement stops with it).
    #[arg(long)]
    no_bpf_pin: bool,
    /// Follow this control plane (a member's API URL; repeatable, any member serves): register
    /// the node, take cluster-wide identities and policy from it, publish endpoints and
    /// acknowledge the policy revision enforced. Without it the agent is standalone.
    #[arg(long = "control-plane", value_name = "URL")]
    control_plane: Vec<String>,
    /// Follow the change feed as a gRPC stream from these members (each one's --grpc-listen,
    /// e.g. `https://10.0.0.2:9001`; repeatable): changes arrive as soon as a member applies
    /// them, over one connection. Same credentials as --control-plane. Without it the agent
    /// long-polls the REST feed. Lists and writes always use --control-plane.
    #[arg(
        long = "control-plane-grpc",
        value_name = "URL",
        requires = "control_plane"
    )]
    control_plane_grpc: Vec<String>,
    /// Bearer token file for the control plane (first non-comment line).
    #[arg(long, value_name = "FILE", requires = "control_plane")]
    control_plane_token_file: Option<PathBuf>,
    /// TLS directory for `https://` members: `ca.pem` (the cluster CA) and this node's
    /// certificate `cert.pem` + `key.pem` (role node, name = --node): the agent authenticates
    /// with it and may then act for this node only.
    #[arg(long, value_name = "DIR", requires = "control_plane")]
    control_plane_tls_dir: Option<PathBuf>,
    /// This node's underlay address as registered with the control plane
    /// [default: the first --node-ip].
    #[arg(long, value_name = "IP", requires = "control_plane")]
    node_address: Option<std::net::IpAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Encrypt pod traffic to other nodes with WireGuard (needs --control-plane: the node's
    /// public key is published there and the other nodes' records become the peers). The
    /// private key is generated here, stored under --state-dir/wireguard (0600) and never sent.
    #[arg(long, value_enum, default_value_t = EncryptionMode::Disabled, requires = "control_plane")]
    encryption: EncryptionMode,
    /// WireGuard implementation: `auto` takes the kernel's where its module is loaded, else
    /// the userspace one inside the agent; `palisade encrypt status` shows which and why.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    wireguard_backend: Backend,
    /// WireGuard UDP port on the underlay (every node uses the same).
    #[arg(long, default_value_t = agent::encryption_defaults::PORT)]
    wireguard_port: u16,
    /// WireGuard interface name.
    #[arg(long, default_value = agent::encryption_defaults::INTERFACE)]
    wireguard_interface: String,
    /// Rotate the node's key this often (make-before-break; `palisade encrypt rotate` rotates
    /// on demand).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    wireguard_rotation_interval: std::time::Duration,
    /// Keep a superseded key (ours, or a peer's) working this long after a rotation; then it
    /// is wiped.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    wireguard_key_grace: std::time::Duration,
    /// With --encryption wireguard: encrypt host-to-host traffic between nodes too (Cilium's
    /// node encryption). The other nodes' underlay addresses are routed through the tunnel
    /// (policy routing: table 2405, the tunnel's own datagrams carry mark 0x8000000). Every
    /// node must use the same setting.
    #[arg(long)]
    encrypt_node: bool,
    /// Serve the flow observer (Hubble's `observer.Observer` gRPC, plus grpc.health.v1) on ADDR,
    /// e.g. `10.0.0.1:4244` (Hubble's port). Off by default. With --control-plane-tls-dir it
    /// serves mutual TLS with the node's certificate (clients need a certificate of the cluster
    /// CA, as the control plane's relay has); otherwise plaintext: bind it to an address only
    /// trusted clients reach. Read-only (`palisade observe --server ADDR`).
    #[arg(long, value_name = "ADDR")]
    hubble_listen: Option<std::net::SocketAddr>,
    /// How many flows the agent keeps in memory (older ones are overwritten and counted lost).
    #[arg(long, value_name = "N", default_value_t = palisade_node_agent::agent::DEFAULT_FLOW_RING_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    flow_ring_size: usize,
    /// Port of the L7 proxy that enforces HTTP rules (connections are steered to it with
    /// TPROXY rules in the agent's network namespace).
    #[arg(long, default_value_t = agent::proxy_defaults::PORT)]
    l7_proxy_port: u16,
    /// Run no L7 proxy: HTTP rules then pass at L4 only (redirects act as allows).
    #[arg(long)]
    no_l7_proxy: bool,
    /// Threads of the L7 proxy, each an event loop owning its connections (default: one per
    /// two CPUs, at most four).
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    l7_proxy_workers: Option<usize>,
    /// Port of the DNS proxy (UDP and TCP) that enforces `rules.dns` of egress policy and
    /// learns the addresses `toFQDNs` rules allow (queries are steered to it with TPROXY
    /// rules in the agent's network namespace).
    #[arg(long, default_value_t = agent::dns_defaults::PORT)]
    dns_proxy_port: u16,
    /// Run no DNS proxy: DNS rules then pass at L4 only and `toFQDNs` rules allow nothing.
    #[arg(long)]
    no_dns_proxy: bool,
    /// Shortest TTL honoured for addresses learned from DNS answers (shorter TTLs are raised
    /// to it), e.g. `1s`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    dns_min_ttl: std::time::Duration,
    /// Longest TTL honoured for learned addresses (longer TTLs are cut to it).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    dns_max_ttl: std::time::Duration,
    /// How long a learned address stays allowed after its TTL ran out and no connection holds
    /// it any more (connections opened just before expiry), then its ipcache entry and
    /// identity are removed.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    dns_grace: std::time::Duration,
    /// A learned address past its TTL stays allowed while a pod that resolved it has a
    /// connection it opened before the TTL ran out still open (no FIN/RST) with a last packet
    /// (datapath conntrack) at most this old; then the --dns-grace. `0s`: connections hold
    /// nothing (they keep working: established flows pass without a policy lookup; only new
    /// connections need a fresh answer).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    dns_connection_idle: std::time::Duration,
    /// Addresses kept per name (the ones expiring soonest go first).
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    dns_max_ips_per_name: usize,
    /// How long the DNS server asked has to answer a forwarded query (then SERVFAIL).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    dns_upstream_timeout: std::time::Duration,
    /// Enter this named network namespace (/run/netns/NAME) before starting, staying in the host's
    /// mount namespace so bpffs pins are shared (`ip netns exec` would hide /sys/fs/bpf).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Gossip with the other agents over the underlay (chitchat scuttlebutt, UDP): liveness,
    /// this node's endpoints and the identities they use (block-made ones included), its
    /// WireGuard key epoch. While the control plane is unreachable peers keep learning new pods
    /// through it; the control plane's data always wins. `enabled` needs --control-plane,
    /// --gossip-key-file and --control-plane-tls-dir: this node's certificate signs what it
    /// gossips, and peers merge a node's state only when signed by that node's certificate.
    #[arg(long, value_enum, default_value_t = GossipMode::Disabled)]
    gossip: GossipMode,
    /// The cluster gossip key: 64 hex digits (32 bytes) on the first line, mode 0600. Every
    /// datagram is sealed with it (ChaCha20-Poly1305); datagrams that do not open are dropped
    /// and counted. Every node of the cluster has the same key (the lab writes one).
    #[arg(long, value_name = "FILE")]
    gossip_key_file: Option<PathBuf>,
    /// Gossip UDP address [default: the node address, port 7946].
    #[arg(long, value_name = "ADDR")]
    gossip_listen: Option<std::net::SocketAddr>,
    /// Peers to contact first, `IP` or `IP:PORT` (repeatable or comma-separated); the nodes the
    /// control plane lists are contacted too, so none are needed once it has been reached.
    #[arg(long = "gossip-peers", value_name = "ADDR", value_delimiter = ',')]
    gossip_peers: Vec<String>,
    /// Gossip round interval.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    gossip_interval: std::time::Duration,
}

/// `--gossip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GossipMode {
    /// No gossip: peers learn this node's changes through the control plane only.
    Disabled,
    /// Gossip with the other agents.
    Enabled,
}

/// `--encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EncryptionMode {
    /// No encryption: pod traffic to other nodes is routed in clear on the underlay.
    Disabled,
    /// WireGuard between nodes.
    Wireguard,
}

/// `--wireguard-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// Kernel where the module is loaded, else userspace.
    Auto,
    /// The kernel module.
    Kernel,
    /// Userspace WireGuard inside the agent.
    Userspace,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// The agent's socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Runs `palisade agent`.
pub fn run(args: Args) -> ExitCode {
    let r = match args.command {
        Cmd::Run(a) => run_agent(*a),
        Cmd::Status(a) => status(a, false),
    };
    r.unwrap_or_else(|e| super::fail(&e))
}

/// Runs `palisade endpoint`.
pub fn run_endpoint(args: EndpointArgs) -> ExitCode {
    let r = match args.command {
        EndpointCmd::List(a) => status(a, true),
    };
    r.unwrap_or_else(|e| super::fail(&e))
}

fn run_agent(a: RunArgs) -> Result<ExitCode> {
    if a.dns_min_ttl > a.dns_max_ttl {
        return Err(anyhow!(
            "--dns-min-ttl ({}) is longer than --dns-max-ttl ({})",
            humantime::format_duration(a.dns_min_ttl),
            humantime::format_duration(a.dns_max_ttl)
        ));
    }
    if !a.no_dns_proxy && !a.no_l7_proxy && a.dns_proxy_port == a.l7_proxy_port {
        return Err(anyhow!(
            "--dns-proxy-port {} is also the --l7-proxy-port",
            a.dns_proxy_port
        ));
    }
    if let Some(ns) = &a.netns {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path)
            .map_err(|e| anyhow!("--netns `{ns}`: cannot open {path}: {e}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| anyhow!("--netns `{ns}`: setns: {e}"))?;
    }
    let pin_dir = if a.no_bpf_pin {
        None
    } else {
        Some(
            a.bpf_pin_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/palisade").join(&a.node)),
        )
    };
    let mut datapath = if a.small_maps {
        DatapathConfig::for_test()
    } else {
        DatapathConfig::default()
    };
    datapath.pin_dir = pin_dir;
    let control_plane = if a.control_plane.is_empty() {
        None
    } else {
        let node_address = a
            .node_address
            .or_else(|| a.node_ips.first().copied().map(std::net::IpAddr::V4))
            .ok_or_else(|| anyhow!("--control-plane needs --node-address or a --node-ip"))?;
        let mut client =
            ClientConfig::from_flags(&a.control_plane, a.control_plane_token_file.as_deref())
                .map_err(|e| anyhow!("--control-plane: {e}"))?;
        if let Some(dir) = &a.control_plane_tls_dir {
            client = client.with_tls(
                TlsConfig::from_dir(dir).map_err(|e| anyhow!("--control-plane-tls-dir: {e}"))?,
            );
        }
        Some(ControlPlaneConfig {
            client,
            grpc: a.control_plane_grpc.clone(),
            node_address,
            // Until keymgr (issue 6) generates the node's key: a placeholder of the right shape,
            // epoch 0, so the registration is well-formed and a real key (epoch ≥ 1) replaces it.
            wireguard_public_key: PLACEHOLDER_WIREGUARD_KEY.into(),
            wireguard_epoch: 0,
        })
    };
    let encryption = (a.encryption == EncryptionMode::Wireguard).then(|| {
        let mut e = EncryptionConfig::new(&a.state_dir);
        e.backend = match a.wireguard_backend {
            Backend::Auto => BackendChoice::Auto,
            Backend::Kernel => BackendChoice::Kernel,
            Backend::Userspace => BackendChoice::Userspace,
        };
        e.port = a.wireguard_port;
        e.interface = a.wireguard_interface.clone();
        e.rotation_interval = a.wireguard_rotation_interval;
        e.grace = a.wireguard_key_grace;
        e.encrypt_node = a.encrypt_node;
        e
    });
    if a.encrypt_node && encryption.is_none() {
        anyhow::bail!("--encrypt-node: needs --encryption wireguard");
    }
    let gossip = gossip_config(&a, control_plane.as_ref().map(|c| c.node_address))?;
    let config = AgentConfig {
        gossip,
        encryption,
        node: a.node,
        pod_cidr: a.pod_cidr,
        node_ips: a.node_ips,
        socket: a.socket,
        state_dir: a.state_dir,
        policy_dir: a.policy_dir,
        datapath,
        control_plane,
        metrics_listen: a.metrics_listen,
        hubble_listen: a.hubble_listen,
        hubble_tls_dir: a.control_plane_tls_dir.clone(),
        flow_ring_size: a.flow_ring_size,
        dns_proxy: (!a.no_dns_proxy).then(|| DnsConfig {
            port: a.dns_proxy_port,
            upstream_timeout: a.dns_upstream_timeout,
            limits: CacheLimits {
                min_ttl: a.dns_min_ttl,
                max_ttl: a.dns_max_ttl,
                grace: a.dns_grace,
                connection_idle: a.dns_connection_idle,
                max_ips_per_name: a.dns_max_ips_per_name,
            },
            ..DnsConfig::default()
        }),
        l7_proxy: (!a.no_l7_proxy).then(|| ProxyConfig {
            port: a.l7_proxy_port,
            workers: a
                .l7_proxy_workers
                .unwrap_or_else(agent::proxy_defaults::workers),
            ..ProxyConfig::default()
        }),
    };
    agent::run(config)?;
    Ok(ExitCode::SUCCESS)
}

/// The gossip settings from the flags; every error names its flag.
fn gossip_config(
    a: &RunArgs,
    node_address: Option<std::net::IpAddr>,
) -> Result<Option<GossipConfig>> {
    if a.gossip == GossipMode::Disabled {
        if a.gossip_key_file.is_some() || !a.gossip_peers.is_empty() || a.gossip_listen.is_some() {
            return Err(anyhow!(
                "--gossip-key-file, --gossip-peers and --gossip-listen need --gossip enabled"
            ));
        }
        return Ok(None);
    }
    let node_address = node_address
        .ok_or_else(|| anyhow!("--gossip enabled needs --control-plane (and a node address)"))?;
    let file = a
        .gossip_key_file
        .as_ref()
        .ok_or_else(|| anyhow!("--gossip enabled needs --gossip-key-file"))?;
    let key = GossipKey::from_file(file).map_err(|e| anyhow!("--gossip-key-file: {e}"))?;
    let port = agent::gossip_defaults::PORT;
    let listen = a
        .gossip_listen
        .unwrap_or_else(|| std::net::SocketAddr::new(node_address, port));
    let seeds = a
        .gossip_peers
        .iter()
        .map(|p| {
            p.parse::<std::net::SocketAddr>()
                .or_else(|_| {
                    p.parse::<std::net::IpAddr>()
                        .map(|ip| std::net::SocketAddr::new(ip, listen.port()))
                })
                .map_err(|_| anyhow!("--gossip-peers `{p}`: expected IP or IP:PORT"))
        })
        .collect::<Result<Vec<_>>>()?;
    if a.gossip_interval < std::time::Duration::from_millis(10)
        || a.gossip_interval > std::time::Duration::from_secs(60)
    {
        return Err(anyhow!("--gossip-interval: must be between 10ms and 60s"));
    }
    // The node certificate signs what this node gossips; peers drop unsigned state.
    let tls = a.control_plane_tls_dir.as_ref().ok_or_else(|| {
        anyhow!("--gossip enabled needs --control-plane-tls-dir (the node certificate signs gossiped state)")
    })?;
    let signer = NodeSigner::from_dir(tls).map_err(|e| anyhow!("--control-plane-tls-dir: {e}"))?;
    signer
        .check_names(&a.node)
        .map_err(|e| anyhow!("--control-plane-tls-dir: {e}"))?;
    let verifier =
        StateVerifier::from_dir(tls).map_err(|e| anyhow!("--control-plane-tls-dir: {e}"))?;
    Ok(Some(GossipConfig {
        listen,
        seeds,
        key,
        interval: a.gossip_interval,
        signer: std::sync::Arc::new(signer),
        verifier,
        advertise: None,
    }))
}

fn status(a: ClientArgs, endpoints_only: bool) -> Result<ExitCode> {
    let status = match agent::request(&a.socket, &AgentRequest::Status {})? {
        AgentResponse::Status { status } => status,
        AgentResponse::Error { message, .. } => return Err(anyhow!("agent: {message}")),
        other => return Err(anyhow!("agent answered {other:?}")),
    };
    if a.output != Output::Table {
        let doc = if endpoints_only {
            status["endpoints"].clone()
        } else {
            status
        };
        print!("{}", a.output.render(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !endpoints_only {
        println!(
            "Node:            {}",
            status["node"].as_str().unwrap_or("?")
        );
        println!(
            "Pod CIDR:        {}",
            status["podCidr"].as_str().unwrap_or("?")
        );
        println!("Policy revision: {}", status["policyRevision"]);
        println!("Policy entries:  {}", status["policyEntries"]);
        if let Some(e) = status["policyError"].as_str() {
            println!("Policy error:    {e} (previous policies stay in force)");
        }
        println!("Local policies:  {}", names(&status["policies"]));
        let cp = &status["controlPlane"];
        if cp.is_object() {
            let state = if cp["connected"].as_bool() == Some(true) {
                "connected".to_string()
            } else {
                format!(
                    "UNREACHABLE ({}); enforcing the last-known-good state",
                    cp["lastError"].as_str().unwrap_or("not contacted yet")
                )
            };
            println!("Control plane:   {state}");
            println!(
                "  enforces policy revision {}, {} identities, {} remote endpoints, last propagation {}",
                cp["policyRevision"],
                cp["identities"],
                cp["remoteEndpoints"],
                cp["lastPropagationMs"]
                    .as_u64()
                    .map_or("-".to_string(), |ms| format!("{ms} ms"))
            );
            println!("  policies: {}", names(&cp["policies"]));
            if let Some(e) = cp["updateError"].as_str() {
                println!("  update not applied: {e} (previous state stays in force)");
            }
        }
        let g = &status["gossip"];
        if g["enabled"].as_bool() == Some(true) {
            println!(
                "Gossip:          on {}, {} live member(s); {} endpoint(s) and {} identit(ies) known only through gossip",
                g["listen"].as_str().unwrap_or("?"),
                g["liveMembers"],
                g["gossipOnlyEndpoints"],
                g["gossipOnlyIdentities"]
            );
            for m in g["members"].as_array().into_iter().flatten() {
                println!(
                    "  {:<12} {:<22} {:<5} {} endpoint(s), {} identit(ies), WireGuard epoch {}{}",
                    m["node"].as_str().unwrap_or("?"),
                    m["address"].as_str().unwrap_or("?"),
                    if m["live"].as_bool() == Some(true) {
                        "live"
                    } else {
                        "DOWN"
                    },
                    m["endpoints"],
                    m["identities"],
                    m["wireguardEpoch"],
                    if m["wireguardEpochAhead"].as_bool() == Some(true) {
                        " (ahead of the control plane's record; not applied)"
                    } else {
                        ""
                    }
                );
            }
            let dropped: Vec<String> = g["dropped"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!(
                "  datagrams accepted {}; dropped datagrams and node states: {}",
                g["accepted"],
                dropped.join(", ")
            );
        }
        println!("Verdicts:");
        for (k, v) in status["verdicts"].as_object().into_iter().flatten() {
            println!("  {k:<34} {v}");
        }
        println!("Endpoints:");
    }
    println!(
        "{:<28} {:>6} {:>9} {:<16} {:<14}",
        "NAME", "ID", "IDENTITY", "IP", "HOST IFACE"
    );
    for e in status["endpoints"].as_array().into_iter().flatten() {
        let ip = e["ips"]
            .as_array()
            .and_then(|v| v.first())
            .and_then(|v| v.as_str())
            .unwrap_or("-");
        println!(
            "{:<28} {:>6} {:>9} {:<16} {:<14}",
            e["name"].as_str().unwrap_or("?"),
            e["endpointId"],
            e["identity"],
            ip,
            e["hostIface"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON list of names, comma-separated, or `none`.
fn names(list: &serde_json::Value) -> String {
    let names: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str())
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
