//! `palisade lab`: build, inspect, probe and tear down a multi-node lab made of network
//! namespaces. The logic lives in the `palisade-lab` crate; this module parses and prints.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use palisade_lab::{DEFAULT_LAB, Ipv4Cidr, Lab, LabSpec, Matrix, ProbeResult, Protocol};
use serde_json::json;

use super::workload::{PortList, parse_port, parse_ports, parse_protocol, parse_timeout};
use super::{Output, table};

/// `println!` that ignores a closed stdout (`palisade ... | head` must not panic).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

const UP_HELP: &str = "\
Builds a cluster out of network namespaces, starts a workload server in every pod, and waits until
every server answers. Fails (and removes whatever it created) if anything goes wrong; fails without
touching anything if the lab already exists.

Address plan (lab name L, node i and pod j are 1-based):
  fabric      namespace pal-L-fabric, bridge br0 (no address)
  node i      namespace pal-L-n<i>, eth0 = 10.98.0.(10+i)/24 plugged into br0 (underlay
              10.98.0.0/24 by default, see --underlay-cidr), pod CIDR 10.200.i.0/24,
              ip_forward=1, rp_filter=0, a route to every other node's pod /24 via its eth0 IP
  pod j       namespace pal-L-n<i>-p<j>, name n<i>-p<j>, eth0 = 10.200.i.(10+j)/32,
              default route via 169.254.1.1 (a permanent neighbour entry holding the MAC of
              the node-side veth lxc<j>); the node routes 10.200.i.(10+j)/32 dev lxc<j>
  cp host     namespace pal-L-cp, eth0 = 10.97.0.1/32 on br0: control-plane voter k runs
              `palisade controlplane` with Raft on :700k and its API on :800k (3 voters by
              default, see --control-plane-voters; 0 runs no Palisade at all)
  agents      node i runs `palisade agent run --netns pal-L-n<i>` following the control plane,
              socket /run/palisade/labs/L/agents/n<i>/agent.sock, metrics on 10.98.0.(10+i):9962,
              pins under /sys/fs/bpf/palisade-lab-L/
  pods        made by `palisade-cni ADD` run in the node as a runtime would (CNI_* variables,
              the config on stdin, the planned address asked for with CNI_ARGS IP=); labels
              app=n<i>-p<j>, node=n<i>, namespace default; the node-side veth is the plugin's
              lxc<hash>
  processes   every pod runs `palisade workload serve --tcp 80 --udp 80 --name n<i>-p<j>`
              (see --serve-tcp, --serve-udp); logs in /run/palisade/labs/L/logs/
  state       /run/palisade/labs/L/state.json
IPv6 is disabled in the lab namespaces for now (planned). Tear down with `palisade lab down`.";

const LAB_EXAMPLES: &str = "\
Examples:
  palisade lab up --nodes 2 --pods-per-node 3   # 2 nodes, pods n1-p1..n2-p3, all serving tcp/udp 80
  palisade policy apply --lab palisade -f deny.yaml && palisade policy wait --lab palisade
  palisade lab matrix --protocol udp            # every pod to every other pod
  palisade lab probe n1-p1 n2-p3 --port 80      # one probe, exit 0/1
  palisade lab status -o json
  palisade lab down
Every subcommand takes --name (default `palisade`, or $PALISADE_LAB); several labs can coexist.
The address plan is explained in `palisade lab up --help`.";

/// Arguments of `palisade lab`.
#[derive(Debug, clap::Args)]
#[command(after_help = LAB_EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a lab: N nodes with M pods each, every pod serving TCP/UDP ports.
    #[command(long_about = UP_HELP)]
    Up(UpArgs),
    /// Show a lab's nodes and pods, and whether each pod's server is alive.
    Status(StatusArgs),
    /// Remove a lab: kill its processes, delete its namespaces and state (idempotent).
    ///
    /// Works after a crash too: every namespace named `pal-<lab>-*` is swept (except those of
    /// another lab with state whose longer name shares the prefix, e.g. lab `a-b` for lab `a`),
    /// every process inside one is killed, and so is every process recorded in the state.
    /// Exits 0 when there is nothing to remove, and says so.
    Down(DownArgs),
    /// Probe from one pod to a pod or an IP; exit 0 reachable, 1 not reachable, 2 bad input.
    ///
    /// Runs `palisade workload probe` inside FROM's namespace, so the packet takes the real path
    /// (pod veth, node routing, underlay bridge) and the reply must come back.
    Probe(ProbeArgs),
    /// Probe every ordered pair of distinct pods and print a grid; exit 0 iff all reachable.
    ///
    /// Rows are sources, columns destinations. `-o json` prints
    /// {"port","protocol","all_reachable","pairs":[{"from","to","to_ip","reachable","result","rtt_us","detail"}]}.
    Matrix(MatrixArgs),
    /// Run `policy test` suites on real packets through Palisade itself: per suite, a lab with
    /// a control plane, an agent per node and pods made by the CNI plugin with the suite's
    /// namespaces, labels, service accounts, named ports and addresses; the suite's Namespaces
    /// and policies applied to the control plane and acknowledged by every agent; every case
    /// probed (TCP, UDP, ICMP echo; `http` cases as real requests through the agents' L7 proxy).
    ///
    /// Prints SUITE, CASE, EXPECTED, OFFLINE (the engine's verdict), KERNEL (did the reply come
    /// back) and a NOTE per case; exit 0 when every probed case's kernel verdict equals both, 1
    /// when any differs, 2 on invalid input (nothing is built then). SCTP, non-echo ICMP, cases
    /// through the DNS proxy and externals only a `toFQDNs` rule admits are listed as not
    /// probed, with why.
    Test(super::lab_test::TestArgs),
    /// Run a real DNS server (Debian's dnsmasq) in a pod or external host of a lab, serving a
    /// test zone, in the foreground until interrupted.
    ///
    /// The zone is the `--record NAME=IP` entries (A/AAAA), answered with `--ttl`; other names
    /// get REFUSED from dnsmasq itself (it has no upstream). Files and log live in
    /// /run/palisade/labs/<lab>/dns/<host>/. Pods reach it on UDP and TCP port 53 of the
    /// host's address, e.g. `palisade lab dns --host n1-p2 --record api.example.test=10.96.0.11`
    /// and, in a pod, `palisade workload resolve api.example.test --server 10.200.1.12`.
    Dns(DnsArgs),
}

#[derive(Debug, clap::Args)]
struct DnsArgs {
    #[command(flatten)]
    lab: LabName,
    /// The pod (e.g. `n1-p2`) or external host (`--external` name) that runs the server.
    #[arg(long)]
    host: String,
    /// A record of the zone, `NAME=IP` (repeatable).
    #[arg(long = "record", value_name = "NAME=IP", required = true, value_parser = palisade_lab::dns::parse_record)]
    records: Vec<palisade_lab::dns::DnsRecord>,
    /// TTL of the answers, in seconds.
    #[arg(long, default_value_t = 30)]
    ttl: u32,
}

#[derive(Debug, clap::Args)]
struct LabName {
    /// Lab name: lowercase letters, digits and '-', at most 24 characters.
    #[arg(long = "name", env = "PALISADE_LAB", default_value = DEFAULT_LAB, value_parser = parse_lab_name)]
    name: String,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    lab: LabName,
    /// Number of nodes (1..=250; at most 244 with the default /24 underlay).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=250))]
    nodes: u16,
    /// Pods per node (1..=200).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=200))]
    pods_per_node: u16,
    /// TCP ports every pod serves, comma-separated.
    #[arg(long, value_name = "PORTS", default_value = "80", value_parser = parse_ports)]
    serve_tcp: PortList,
    /// UDP ports every pod serves, comma-separated.
    #[arg(long, value_name = "PORTS", default_value = "80", value_parser = parse_ports)]
    serve_udp: PortList,
    /// Underlay network of the fabric bridge (node i is host 10+i of it).
    #[arg(long, value_name = "CIDR", default_value = palisade_lab::DEFAULT_UNDERLAY_CIDR, value_parser = parse_cidr)]
    underlay_cidr: Ipv4Cidr,
    /// Control-plane voters (1, 3 or 5); 0: bare namespaces, no control plane, agents or CNI
    /// (pods plugged in by the lab itself, nothing enforced).
    #[arg(long, default_value_t = 3, value_parser = parse_voters)]
    control_plane_voters: usize,
    /// The CNI plugin the lab's runtime calls [default: palisade-cni next to this binary].
    #[arg(long, value_name = "PATH")]
    cni_bin: Option<std::path::PathBuf>,
    /// Node-to-node encryption of pod traffic (with a control plane): `wireguard` runs every
    /// agent with `--encryption wireguard` (see `palisade encrypt status --lab NAME`).
    #[arg(long, value_enum, default_value_t = LabEncryption::Wireguard)]
    encryption: LabEncryption,
    /// With `--encryption wireguard`: the nodes' host-to-host traffic goes through the tunnel
    /// too (every agent runs with `--encrypt-node`, like Cilium's node encryption).
    #[arg(long)]
    encrypt_node: bool,
    /// Every agent rotates its WireGuard key this often [default: the agent's, 24h].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    wireguard_rotation_interval: Option<std::time::Duration>,
    /// Every agent's L7 proxy runs this many threads [default: the agent's, one per two CPUs].
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    l7_proxy_workers: Option<usize>,
    /// A host outside the cluster, `NAME=IPv4` (repeatable): namespace pal-L-x<k> on the
    /// fabric bridge at that address (outside the underlay, the pod CIDR and 10.97.0.1),
    /// serving the lab's ports like a pod; pods see it as `world` (or as what `toCIDR` /
    /// `toFQDNs` rules make of it).
    #[arg(long = "external", value_name = "NAME=IP", value_parser = parse_external)]
    externals: Vec<palisade_lab::ExternalPlan>,
}

fn parse_external(s: &str) -> Result<palisade_lab::ExternalPlan, String> {
    let (name, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=IPv4"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("`{s}`: `{ip}` is not an IPv4 address"))?;
    if name.is_empty() {
        return Err(format!("`{s}`: the name is empty"));
    }
    Ok(palisade_lab::ExternalPlan {
        name: name.to_string(),
        ip,
    })
}

/// `lab up --encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LabEncryption {
    /// Pod traffic between nodes is routed in clear on the underlay.
    Disabled,
    /// WireGuard between the nodes.
    Wireguard,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    lab: LabName,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct DownArgs {
    #[command(flatten)]
    lab: LabName,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    #[command(flatten)]
    lab: LabName,
    /// Source pod name, e.g. n1-p1 (required).
    from: Option<String>,
    /// Destination: a pod name (e.g. n2-p3) or an IP address (required).
    to: Option<String>,
    /// Destination port.
    #[arg(long, default_value = "80", value_parser = parse_port)]
    port: u16,
    /// Protocol: tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Total time allowed, e.g. 1s or 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct MatrixArgs {
    #[command(flatten)]
    lab: LabName,
    /// Destination port.
    #[arg(long, default_value = "80", value_parser = parse_port)]
    port: u16,
    /// Protocol: tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Time allowed per probe, e.g. 1s or 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub(crate) fn parse_lab_name(s: &str) -> Result<String, String> {
    palisade_lab::validate_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    s.trim().parse::<Ipv4Cidr>().map_err(|e| e.to_string())
}

/// Runs `palisade lab`.
pub fn run(args: Args) -> ExitCode {
    let result = match args.command {
        Cmd::Up(a) => up(a),
        Cmd::Status(a) => status(a),
        Cmd::Down(a) => down(a),
        Cmd::Probe(a) => probe(a),
        Cmd::Matrix(a) => matrix(a),
        Cmd::Test(a) => super::lab_test::run(a),
        Cmd::Dns(a) => dns(a),
    };
    result.unwrap_or_else(|e| super::fail(&e))
}

fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let bin = std::env::current_exe().context("locating the palisade binary")?;
    let mut spec = LabSpec::new(
        &a.lab.name,
        usize::from(a.nodes),
        usize::from(a.pods_per_node),
        bin,
    );
    spec.serve_tcp = a.serve_tcp.0;
    spec.serve_udp = a.serve_udp.0;
    spec.underlay_cidr = a.underlay_cidr;
    spec.externals = a.externals;
    if a.control_plane_voters > 0 {
        spec.cluster = Some(palisade_lab::ClusterPlan {
            voters: a.control_plane_voters,
            encryption: a.encryption == LabEncryption::Wireguard,
            node_encryption: a.encrypt_node,
            wireguard_rotation: a.wireguard_rotation_interval,
            l7_proxy_workers: a.l7_proxy_workers,
            cni_bin: a
                .cni_bin
                .clone()
                .unwrap_or_else(|| spec.palisade_bin.with_file_name("palisade-cni")),
        });
    }
    let lab = Lab::up(&spec)?;
    let st = lab.state();
    let ports = |proto: &str, p: &[u16]| match p {
        [] => format!("no {proto}"),
        _ => format!(
            "{proto} {}",
            p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
        ),
    };
    outln!(
        "lab `{}` is up: {} nodes x {} pods, underlay {}, pods {}; every pod serves {}, {}",
        st.name,
        st.nodes.len(),
        a.pods_per_node,
        st.underlay_cidr,
        st.pod_cidr,
        ports("tcp", &st.serve_tcp),
        ports("udp", &st.serve_udp)
    );
    for n in &st.nodes {
        let pods: Vec<String> = st
            .pods_on(&n.name)
            .map(|p| format!("{} {}", p.name, p.ip))
            .collect();
        let shown = match pods.as_slice() {
            [first, .., last] if pods.len() > 4 => format!("{first} ... {last}"),
            _ => pods.join(", "),
        };
        outln!(
            "  {} {} ({}, pods {}): {shown}",
            n.name,
            n.underlay_ip,
            n.netns,
            n.pod_cidr
        );
    }
    if let Some(c) = &st.cluster {
        outln!(
            "  control plane: {} voter(s) in {} ({}); an agent per node; pods made by palisade-cni",
            c.voters,
            c.cp_netns,
            c.api_urls.join(", ")
        );
        outln!("policy:    palisade policy apply --lab {} -f FILE", st.name);
    }
    outln!("status:    palisade lab status --name {}", st.name);
    outln!("check:     palisade lab matrix --name {}", st.name);
    outln!("tear down: palisade lab down --name {}", st.name);
    Ok(ExitCode::SUCCESS)
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let lab = match Lab::load(&a.lab.name) {
        Ok(lab) => lab,
        Err(e @ palisade_lab::LabError::NotFound { .. }) => {
            // A crash can leave namespaces without state: say so, `down` removes them.
            let left = palisade_lab::down::lab_namespaces(&a.lab.name).unwrap_or_default();
            if left.is_empty() {
                return Err(e.into());
            }
            return Err(anyhow!(
                "{e}; but {} namespaces named `pal-{}-*` exist (a crashed `up`?): run `palisade lab down --name {}`",
                left.len(),
                a.lab.name,
                a.lab.name
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let st = lab.state();
    let server = |pod: &str| {
        st.server_of(pod)
            .map(|p| (p.pid, lab.server_alive(pod).unwrap_or(false)))
    };
    match a.output {
        Output::Json | Output::Yaml => {
            let pods: Vec<serde_json::Value> = st
                .pods
                .iter()
                .map(|p| {
                    let mut v = serde_json::to_value(p).unwrap_or_default();
                    let (pid, alive) =
                        server(&p.name).map_or((None, false), |(pid, alive)| (Some(pid), alive));
                    v["server_pid"] = json!(pid);
                    v["server_alive"] = json!(alive);
                    v
                })
                .collect();
            let doc = json!({
                "name": st.name,
                "phase": st.phase,
                "underlay_cidr": st.underlay_cidr,
                "pod_cidr": st.pod_cidr,
                "fabric": st.fabric,
                "nodes": st.nodes,
                "pods": pods,
                "processes": st.processes,
            });
            out!("{}", a.output.render(&doc)?);
        }
        Output::Table => {
            outln!(
                "lab `{}` ({}): {} nodes, {} pods; underlay {}, pods {}",
                st.name,
                st.phase,
                st.nodes.len(),
                st.pods.len(),
                st.underlay_cidr,
                st.pod_cidr
            );
            let mut rows = vec![vec![
                "NODE".into(),
                "NETNS".into(),
                "UNDERLAY IP".into(),
                "POD CIDR".into(),
            ]];
            for n in &st.nodes {
                rows.push(vec![
                    n.name.clone(),
                    n.netns.clone(),
                    n.underlay_ip.to_string(),
                    n.pod_cidr.to_string(),
                ]);
            }
            out!("{}", table(&rows));
            outln!();
            let mut rows = vec![
                [
                    "POD",
                    "NODE",
                    "NETNS",
                    "IP",
                    "HOST IFACE",
                    "SERVER PID",
                    "ALIVE",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for p in &st.pods {
                let (pid, alive) = match server(&p.name) {
                    Some((pid, alive)) => (
                        pid.to_string(),
                        if alive { "yes" } else { "no" }.to_string(),
                    ),
                    None => ("-".to_string(), "-".to_string()),
                };
                rows.push(vec![
                    p.name.clone(),
                    p.node.clone(),
                    p.netns.clone(),
                    p.ip.to_string(),
                    p.host_iface.clone(),
                    pid,
                    alive,
                ]);
            }
            out!("{}", table(&rows));
            let others: Vec<_> = st
                .processes
                .iter()
                .filter(|p| p.role != palisade_lab::ProcessRole::WorkloadServer)
                .collect();
            if !others.is_empty() {
                outln!();
                let mut rows = vec![
                    ["PROCESS", "ROLE", "NETNS", "PID", "ALIVE", "LOG"]
                        .map(String::from)
                        .to_vec(),
                ];
                for p in others {
                    rows.push(vec![
                        p.name.clone(),
                        serde_json::to_value(p.role)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default(),
                        p.netns.clone().unwrap_or_else(|| "(root)".to_string()),
                        p.pid.to_string(),
                        if Lab::process_alive(p) { "yes" } else { "no" }.to_string(),
                        p.log.display().to_string(),
                    ]);
                }
                out!("{}", table(&rows));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    let r = Lab::down(&a.lab.name)?;
    if r.nothing_to_remove() {
        outln!("lab `{}`: nothing to remove", r.name);
    } else {
        outln!(
            "lab `{}` removed: {} namespaces deleted, {} processes killed, state directory {}",
            r.name,
            r.namespaces_removed.len(),
            r.processes_killed.len(),
            if r.state_dir_removed {
                "removed"
            } else {
                "was absent"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn probe(a: ProbeArgs) -> anyhow::Result<ExitCode> {
    // Required, but checked here so the one-line error names what is missing.
    let (Some(from), Some(target)) = (a.from, a.to) else {
        return Err(anyhow!(
            "missing FROM and TO: `palisade lab probe FROM TO` (see --help)"
        ));
    };
    let lab = Lab::load(&a.lab.name)?;
    let to: IpAddr = lab.resolve(&target)?;
    let r: ProbeResult = lab.probe(&from, to, a.port, a.protocol, a.timeout)?;
    match a.output {
        Output::Json => outln!("{}", serde_json::to_string(&r)?),
        Output::Yaml => out!("{}", a.output.render(&r)?),
        Output::Table => {
            let rtt = r.rtt_us.map(|us| format!(" in {us}us")).unwrap_or_default();
            outln!(
                "{from} -> {target} ({}) {} {}: {}{rtt} ({})",
                r.to,
                r.protocol,
                r.port,
                r.result,
                r.detail
            );
        }
    }
    Ok(if r.reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn matrix(a: MatrixArgs) -> anyhow::Result<ExitCode> {
    let lab = Lab::load(&a.lab.name)?;
    if lab.state().pods.len() < 2 {
        return Err(anyhow!(
            "lab `{}` has fewer than 2 pods: no pairs to probe",
            lab.name()
        ));
    }
    let m: Matrix = lab.matrix(a.port, a.protocol, a.timeout)?;
    match a.output {
        Output::Json | Output::Yaml => out!("{}", a.output.render(&m)?),
        Output::Table => {
            let pods: Vec<String> = lab.state().pods.iter().map(|p| p.name.clone()).collect();
            outln!(
                "lab `{}`: {} {} from every pod to every other pod (timeout {:?})",
                lab.name(),
                m.protocol,
                m.port,
                a.timeout
            );
            out!("{}", m.grid(&pods));
        }
    }
    Ok(if m.all_reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn parse_voters(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ (0 | 1 | 3 | 5)) => Ok(n),
        _ => Err(format!(
            "`{s}`: a control plane has 1, 3 or 5 voters (0: none)"
        )),
    }
}

/// `palisade lab dns`: dnsmasq in a lab host until SIGINT/SIGTERM.
fn dns(a: DnsArgs) -> anyhow::Result<ExitCode> {
    let lab = Lab::load(&a.lab.name)?;
    let st = lab.state();
    let (netns, ip) = if let Some(p) = st.pods.iter().find(|p| p.name == a.host) {
        (p.netns.clone(), p.ip.to_string())
    } else if let Some(x) = st.externals.iter().find(|x| x.name == a.host) {
        (x.netns.clone(), x.ip.to_string())
    } else {
        return Err(anyhow!(
            "--host `{}`: lab `{}` has no such pod or external host",
            a.host,
            st.name
        ));
    };
    let dir = palisade_lab::state::state_dir(&st.name)
        .join("dns")
        .join(&a.host);
    // Interrupted: return normally so the server is dropped (killed) and nothing is left.
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc_channel(tx)?;
    let server = palisade_lab::dns::Dnsmasq::start(&netns, &dir, &a.records, a.ttl)?;
    outln!(
        "dnsmasq (pid {}) serves {} record(s) with TTL {}s on {ip}:53 (udp, tcp) in `{}`; log {}",
        server.pid(),
        a.records.len(),
        a.ttl,
        a.host,
        dir.join("dnsmasq.log").display()
    );
    let _ = rx.recv();
    drop(server);
    Ok(ExitCode::SUCCESS)
}

/// Sends on `tx` at SIGINT or SIGTERM (a thread waiting on the signals, which are blocked).
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    std::thread::spawn(move || {
        let _ = set.wait();
        let _ = tx.send(());
    });
    Ok(())
}
