//! `palisade workload`: serve or probe TCP/UDP ports from inside a pod. The logic lives in the
//! `palisade-workload` crate; this module only parses arguments and prints.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use palisade_workload::{LoadSpec, ProbeSpec, Protocol, ServeConfig, Server};

/// `println!` that ignores a closed stdout (`palisade ... | head` must not panic).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Arguments of `palisade workload`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve TCP and UDP ports in the foreground; every connection or datagram gets one reply line.
    ///
    /// TCP: reads what the client sends (until a newline or 1 s), replies
    /// `palisade-workload <name> tcp <port>` and closes. UDP: answers every datagram with
    /// `palisade-workload <name> udp <port>`. Binds 0.0.0.0 (and [::] where that does not
    /// conflict). Logs one line to stderr when it starts.
    Serve(ServeArgs),
    /// Probe one port and print one JSON object; exit 0 reachable, 1 not reachable, 2 bad input.
    ///
    /// TCP connects, sends `probe\n` and requires the server's reply line, so the return path is
    /// proven. UDP sends a datagram and waits for the reply, retrying within the timeout. Output:
    /// {"to","port","protocol","reachable","result":"ok|timeout|refused|unreachable|error",
    /// "detail","rtt_us"}.
    Probe(ProbeArgs),
    /// HTTP/1.1 load: GET PATH over kept-alive connections at a fixed total rate (latency from
    /// each request's scheduled time) or, with `--rate 0`, as fast as answers come; prints one
    /// JSON object {requests, errors, statuses, seconds, rps, p50_us, p90_us, p99_us, max_us}.
    Load(LoadArgs),
    /// Ask a DNS server for a name's A (or AAAA) records over UDP (or TCP) and print one JSON
    /// object {name, rcode, ips, ttl, detail, p50_us, p99_us, qps}; exit 0 when an answer came
    /// (whatever its rcode), 1 when none did. `--count N` repeats the query and reports the
    /// latency percentiles.
    Resolve(ResolveArgs),
}

#[derive(Debug, clap::Args)]
struct ResolveArgs {
    /// The name to look up.
    name: String,
    /// DNS server address.
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    server: IpAddr,
    /// DNS server port.
    #[arg(long, default_value = "53", value_parser = parse_port)]
    port: u16,
    /// Ask for AAAA records instead of A.
    #[arg(long)]
    aaaa: bool,
    /// Over TCP instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// How long to wait for an answer, e.g. `3s`.
    #[arg(long, default_value = "3s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Queries to send one after the other.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Server address.
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    to: IpAddr,
    /// Server port.
    #[arg(long, value_parser = parse_port)]
    port: u16,
    /// Request target.
    #[arg(long, default_value = "/")]
    path: String,
    /// Total requests per second; 0 = saturation.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    duration: Duration,
    /// Parallel kept-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TCP ports to serve, comma-separated (e.g. `80,81`).
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    tcp: Option<PortList>,
    /// UDP ports to serve, comma-separated (e.g. `80,81`).
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    udp: Option<PortList>,
    /// HTTP/1.1 ports to serve, comma-separated: every request gets `200` with the body
    /// `palisade-workload <name> http <METHOD> <target> from <client IP>` (keep-alive; malformed
    /// input gets 400).
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    http: Option<PortList>,
    /// HTTP/1.1 ports serving a small httpbin-like REST API: `GET /get`, `POST /post`,
    /// `GET /headers`, `GET /ip` answer 200 with JSON; a known path with the wrong method 405,
    /// anything else 404 (the tutorial's `api` tier).
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    api: Option<PortList>,
    /// Name put in every reply (the lab passes the pod name).
    #[arg(long, default_value = "workload")]
    name: String,
    /// Listen on this address only [default: every IPv4 address, and IPv6 where possible].
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    address: Option<std::net::IpAddr>,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Destination IP address, IPv4 or IPv6 (required).
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    to: Option<IpAddr>,
    /// Destination port, 1..=65535 (required).
    #[arg(long, value_parser = parse_port)]
    port: Option<u16>,
    /// Protocol: tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Total time allowed, e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_parser = parse_timeout)]
    timeout: Duration,
}

/// Runs `palisade workload`.
pub fn run(args: Args) -> ExitCode {
    match args.command {
        Cmd::Serve(a) => serve(a),
        Cmd::Probe(a) => probe(a),
        Cmd::Load(a) => load(a),
        Cmd::Resolve(a) => resolve(a),
    }
}

fn serve(a: ServeArgs) -> ExitCode {
    let cfg = ServeConfig {
        name: a.name,
        tcp: a.tcp.map(|p| p.0).unwrap_or_default(),
        udp: a.udp.map(|p| p.0).unwrap_or_default(),
        http: a.http.map(|p| p.0).unwrap_or_default(),
        api: a.api.map(|p| p.0).unwrap_or_default(),
    };
    let bound = match a.address {
        Some(ip) => Server::bind_on(ip, &cfg, false),
        None => Server::bind(&cfg),
    };
    match bound.context("workload serve") {
        Ok(server) => {
            server.run();
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e),
    }
}

fn load(a: LoadArgs) -> ExitCode {
    let report = palisade_workload::load(&LoadSpec {
        to: std::net::SocketAddr::new(a.to, a.port),
        path: a.path,
        rate: a.rate,
        duration: a.duration,
        connections: a.connections,
    });
    match serde_json::to_string(&report) {
        Ok(json) => outln!("{json}"),
        Err(e) => return super::fail(&anyhow::Error::new(e).context("encoding the report")),
    }
    ExitCode::SUCCESS
}

fn resolve(a: ResolveArgs) -> ExitCode {
    let report = palisade_workload::resolve(&palisade_workload::ResolveSpec {
        server: std::net::SocketAddr::new(a.server, a.port),
        name: a.name,
        aaaa: a.aaaa,
        tcp: a.tcp,
        timeout: a.timeout,
        count: a.count,
    });
    match serde_json::to_string(&report) {
        Ok(json) => outln!("{json}"),
        Err(e) => return super::fail(&anyhow::Error::new(e).context("encoding the answer")),
    }
    if report.rcode == "TIMEOUT" || report.rcode == "ERROR" {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn probe(a: ProbeArgs) -> ExitCode {
    // Required, but checked here so the one-line error names what is missing.
    let (Some(to), Some(port)) = (a.to, a.port) else {
        let missing = if a.to.is_none() {
            "--to IP"
        } else {
            "--port PORT"
        };
        return super::fail(&anyhow::anyhow!("missing {missing} (see --help)"));
    };
    let spec = ProbeSpec {
        to,
        port,
        protocol: a.protocol,
        timeout: a.timeout,
    };
    let result = palisade_workload::probe(&spec);
    match serde_json::to_string(&result) {
        Ok(json) => outln!("{json}"),
        Err(e) => return super::fail(&anyhow::Error::new(e).context("encoding the probe result")),
    }
    if result.reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

// === value parsers (shared with `palisade lab`) ===

/// A comma-separated port list as one argument value (a newtype so clap keeps it one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// Parses a comma-separated port list.
pub fn parse_ports(s: &str) -> Result<PortList, String> {
    palisade_workload::parse_port_list(s)
        .map(PortList)
        .map_err(|e| e.to_string())
}

/// Parses one port.
pub fn parse_port(s: &str) -> Result<u16, String> {
    palisade_workload::parse_port(s).map_err(|e| e.to_string())
}

/// Parses a protocol name.
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse::<Protocol>().map_err(|e| e.to_string())
}

/// Parses an IP address.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("`{s}` is not an IP address"))
}

/// Parses a timeout such as `1s` or `500ms`: positive, at most one hour.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid timeout `{s}` ({e}); use e.g. 1s or 500ms"))?;
    if d.is_zero() {
        return Err(format!("timeout `{s}` must be greater than zero"));
    }
    if d > Duration::from_secs(3600) {
        return Err(format!("timeout `{s}` is longer than 1h"));
    }
    Ok(d)
}
