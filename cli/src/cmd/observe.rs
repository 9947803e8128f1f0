//! `palisade observe`: flows from agents' observers (or the control plane's relay), with
//! Hubble's `hubble observe` flags and output formats.
//!
//! With several servers (`--server` repeated, or `--lab` naming every node's agent) the flows
//! are fetched from each and merged by time: history sorted as a whole (`--last`/`--first`
//! then apply to the merged list), followed flows printed as they arrive.

mod filters;
mod print;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{ArgMatches, CommandFactory};
use palisade_api::observer::observer_client::ObserverClient;
use palisade_api::observer::{
    GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes,
};
use tokio::sync::mpsc;

use filters::{FILTER_FLAGS, FilterFlag};
pub use print::Format;

/// Hubble's observer port on agents.
pub const AGENT_PORT: u16 = 4244;

/// Arguments of `palisade observe`. Filter flags may repeat; `--not` negates the next one.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Filters")]
pub struct Args {
    /// Observer to ask: an agent's `--hubble-listen` address or the control plane's relay
    /// (`HOST:PORT` or `http://HOST:PORT`; repeatable or comma-separated: flows are merged).
    #[arg(
        long = "server",
        value_name = "ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:4244",
        help_heading = "Connection"
    )]
    servers: Vec<String>,
    /// TLS directory for `https://` servers: `ca.pem` (the cluster CA, the only root trusted)
    /// and optionally `cert.pem` + `key.pem` (a client certificate; agents serving TLS require
    /// one of the cluster CA).
    #[arg(
        long,
        value_name = "DIR",
        env = "PALISADE_TLS_DIR",
        help_heading = "Connection"
    )]
    tls_dir: Option<std::path::PathBuf>,
    /// Bearer token file for the control plane's relay (its first line).
    #[arg(
        long,
        value_name = "FILE",
        env = "PALISADE_TOKEN_FILE",
        help_heading = "Connection"
    )]
    token_file: Option<std::path::PathBuf>,
    /// Observe a local lab (`palisade lab up`) from inside it: through its control plane's relay
    /// (every node) when it runs one, otherwise every node agent directly.
    #[arg(long, value_name = "NAME", help_heading = "Connection")]
    lab: Option<String>,
    /// Flows in these namespaces (either side).
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Vec<String>,
    /// Flows in every namespace (the default when no -n is given).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Source pod (`[namespace/]name-prefix`; a bare name is in -n's namespace or `default`).
    #[arg(long, value_name = "POD")]
    from_pod: Vec<String>,
    /// Destination pod.
    #[arg(long, value_name = "POD")]
    to_pod: Vec<String>,
    /// Pod on either side.
    #[arg(long, value_name = "POD")]
    pod: Vec<String>,
    /// Source IP or CIDR.
    #[arg(long, value_name = "IP")]
    from_ip: Vec<String>,
    /// Destination IP or CIDR.
    #[arg(long, value_name = "IP")]
    to_ip: Vec<String>,
    /// IP or CIDR on either side.
    #[arg(long, value_name = "IP")]
    ip: Vec<String>,
    /// Source label selector (`app=web`, `k8s:app=web,tier!=db`).
    #[arg(long, value_name = "SELECTOR")]
    from_label: Vec<String>,
    /// Destination label selector.
    #[arg(long, value_name = "SELECTOR")]
    to_label: Vec<String>,
    /// Label selector on either side.
    #[arg(long, value_name = "SELECTOR")]
    label: Vec<String>,
    /// Source namespace.
    #[arg(long, value_name = "NS")]
    from_namespace: Vec<String>,
    /// Destination namespace.
    #[arg(long, value_name = "NS")]
    to_namespace: Vec<String>,
    /// Source security identity.
    #[arg(long, value_name = "ID")]
    from_identity: Vec<String>,
    /// Destination security identity.
    #[arg(long, value_name = "ID")]
    to_identity: Vec<String>,
    /// Security identity on either side.
    #[arg(long, value_name = "ID")]
    identity: Vec<String>,
    /// Source port.
    #[arg(long, value_name = "PORT")]
    from_port: Vec<String>,
    /// Destination port.
    #[arg(long, value_name = "PORT")]
    to_port: Vec<String>,
    /// Port on either side.
    #[arg(long, value_name = "PORT")]
    port: Vec<String>,
    /// FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED.
    #[arg(long, value_name = "VERDICT")]
    verdict: Vec<String>,
    /// tcp, udp, icmp, icmpv4, icmpv6, sctp, http, dns.
    #[arg(long, value_name = "PROTO")]
    protocol: Vec<String>,
    /// HTTP method (L7 flows).
    #[arg(long, value_name = "METHOD")]
    http_method: Vec<String>,
    /// HTTP path, a regular expression (L7 flows).
    #[arg(long, value_name = "REGEX")]
    http_path: Vec<String>,
    /// HTTP status: `404` or a class, `5+` (L7 flows).
    #[arg(long, value_name = "CODE")]
    http_status: Vec<String>,
    /// Event type: l7, drop, trace, policy-verdict.
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    r#type: Vec<String>,
    /// Node name pattern (`*` wildcards).
    #[arg(long, value_name = "PATTERN")]
    node_name: Vec<String>,
    /// ingress or egress.
    #[arg(long, value_name = "DIR")]
    traffic_direction: Vec<String>,
    /// Hubble drop reason, e.g. POLICY_DENIED (default deny), POLICY_DENY (deny rule).
    #[arg(long, value_name = "REASON")]
    drop_reason_desc: Vec<String>,
    /// ipv4 or ipv6.
    #[arg(long, value_name = "VERSION")]
    ip_version: Vec<String>,
    /// Flow id.
    #[arg(long, value_name = "UUID")]
    uuid: Vec<String>,
    /// Negate the next filter flag (it goes into the blacklist).
    #[arg(long, action = clap::ArgAction::Count)]
    not: u8,
    /// The last N matching flows (default 20 unless following or --since is given).
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "first",
        help_heading = "Selection"
    )]
    last: Option<u64>,
    /// The first N matching flows still stored.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "follow",
        help_heading = "Selection"
    )]
    first: Option<u64>,
    /// Keep streaming new flows.
    #[arg(short = 'f', long, help_heading = "Selection")]
    follow: bool,
    /// Flows since: a duration ago (`5m`, `1h30m`) or an RFC 3339 time.
    #[arg(long, value_name = "TIME", help_heading = "Selection")]
    since: Option<String>,
    /// Flows until: a duration ago or an RFC 3339 time.
    #[arg(long, value_name = "TIME", help_heading = "Selection")]
    until: Option<String>,
    /// compact, json (the flow), jsonpb (the whole response), table.
    #[arg(short, long, value_enum, default_value_t, help_heading = "Output")]
    output: Format,
}

/// Runs `palisade observe`.
pub fn run(args: Args) -> ExitCode {
    match observe(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

/// `5m` ago, or an RFC 3339 time.
fn parse_time(flag: &str, v: &str, now: SystemTime) -> Result<prost_types::Timestamp> {
    let t = match humantime::parse_duration(v) {
        Ok(d) => now
            .checked_sub(d)
            .ok_or_else(|| anyhow!("--{flag} `{v}`: before the epoch"))?,
        Err(_) => humantime::parse_rfc3339_weak(v).map_err(|_| {
            anyhow!("--{flag} `{v}`: expected a duration ago (`5m`, `1h`) or an RFC 3339 time (`2026-11-26T17:00:00Z`)")
        })?,
    };
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

/// The filter flags in command-line order, with `--not` applied to the flag after it. Reads
/// the matches clap made of this process's arguments (the derive struct loses the order).
fn ordered_flags(matches: &ArgMatches) -> Vec<FilterFlag> {
    let id = |name: &str| name.replace('-', "_");
    let mut items: Vec<(usize, FilterFlag)> = Vec::new();
    for name in FILTER_FLAGS {
        let key = id(name);
        let (Ok(Some(values)), Some(idx)) = (
            matches.try_get_many::<String>(&key),
            matches.indices_of(&key),
        ) else {
            continue;
        };
        for (v, i) in values.zip(idx) {
            items.push((
                i,
                FilterFlag {
                    name,
                    value: v.clone(),
                    negated: false,
                },
            ));
        }
    }
    items.sort_by_key(|(i, _)| *i);
    if let Some(nots) = matches.indices_of("not") {
        for n in nots {
            if let Some((_, f)) = items.iter_mut().find(|(i, _)| *i > n) {
                f.negated = true;
            }
        }
    }
    items.into_iter().map(|(_, f)| f).collect()
}

/// The `observe` subcommand's matches, re-parsed from this process's arguments.
fn observe_matches() -> Result<ArgMatches> {
    let m = crate::Cli::command()
        .try_get_matches_from(std::env::args_os())
        .map_err(|e| anyhow!("{e}"))?;
    m.subcommand_matches("observe")
        .cloned()
        .ok_or_else(|| anyhow!("not the observe subcommand"))
}

fn request(args: &Args, flags: &[FilterFlag]) -> Result<GetFlowsRequest> {
    let f = filters::build(flags)?;
    let now = SystemTime::now();
    let since = args
        .since
        .as_deref()
        .map(|v| parse_time("since", v, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|v| parse_time("until", v, now))
        .transpose()?;
    let (number, first) = match (args.first, args.last) {
        (Some(n), _) => (n, true),
        (None, Some(n)) => (n, false),
        // Hubble's default: the last 20, unless following or reading from a time.
        (None, None) if !args.follow && since.is_none() => (20, false),
        (None, None) => (0, false),
    };
    Ok(GetFlowsRequest {
        number,
        first,
        follow: args.follow,
        blacklist: f.blacklist,
        whitelist: f.whitelist,
        since,
        until,
    })
}

fn endpoint_url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// How to reach the servers.
#[derive(Clone, Default)]
struct Connection {
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<String>,
}

impl Connection {
    fn from_flags(
        tls_dir: Option<&std::path::Path>,
        token_file: Option<&std::path::Path>,
    ) -> Result<Self> {
        let tls = match tls_dir {
            None => None,
            Some(dir) => {
                let read = |name: &str| {
                    let p = dir.join(name);
                    std::fs::read(&p)
                        .with_context(|| format!("--tls-dir: reading `{}`", p.display()))
                };
                let mut tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")?));
                if dir.join("cert.pem").exists() {
                    tls = tls.identity(tonic::transport::Identity::from_pem(
                        read("cert.pem")?,
                        read("key.pem")?,
                    ));
                }
                Some(tls)
            }
        };
        let token = match token_file {
            None => None,
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("--token-file: reading `{}`", f.display()))?;
                let line = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .ok_or_else(|| anyhow!("--token-file `{}`: no token in it", f.display()))?;
                Some(line.to_string())
            }
        };
        Ok(Self { tls, token })
    }
}

/// Streams one server's responses into `tx`; errors name the server.
async fn stream_from(
    server: String,
    conn: Connection,
    req: GetFlowsRequest,
    tx: mpsc::Sender<Result<GetFlowsResponse>>,
) {
    let result = async {
        let mut endpoint = tonic::transport::Endpoint::from_shared(endpoint_url(&server))
            .map_err(|e| anyhow!("--server `{server}`: {e}"))?
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = conn.tls.clone() {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| anyhow!("--tls-dir: {e}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to the observer at `{server}`"))?;
        let mut client = ObserverClient::new(channel);
        let mut request = tonic::Request::new(req);
        if let Some(token) = &conn.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| anyhow!("--token-file: the token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut stream = client
            .get_flows(request)
            .await
            .map_err(|s| anyhow!("observer at `{server}`: {}", s.message()))?
            .into_inner();
        while let Some(r) = stream
            .message()
            .await
            .map_err(|s| anyhow!("observer at `{server}`: {}", s.message()))?
        {
            if tx.send(Ok(r)).await.is_err() {
                break;
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

struct Printer {
    format: Format,
    header_done: bool,
}

impl Printer {
    fn print(&mut self, r: &GetFlowsResponse) {
        match self.format {
            Format::Jsonpb => println!("{}", print::response_json(r)),
            // Flows only on stdout (one object each); the rest is news for people, on stderr.
            Format::Json => match &r.response_types {
                Some(ResponseTypes::Flow(f)) => println!("{}", print::flow_json(f)),
                _ => eprintln!("{}", print::response_json(r)),
            },
            Format::Compact | Format::Table => match &r.response_types {
                Some(ResponseTypes::Flow(f)) => {
                    if self.format == Format::Compact {
                        println!("{}", print::compact(f));
                    } else {
                        if !self.header_done {
                            println!("{}", print::TABLE_HEADER.join("\t"));
                            self.header_done = true;
                        }
                        println!("{}", print::table_row(f).join("\t"));
                    }
                }
                Some(ResponseTypes::LostEvents(l)) => eprintln!(
                    "EVENTS LOST: {} flow(s) overwritten on {} before they were read",
                    l.num_events_lost, r.node_name
                ),
                Some(ResponseTypes::NodeStatus(n)) => eprintln!(
                    "NODE STATUS: {} {}: {}",
                    palisade_api::relay::NodeState::try_from(n.state_change)
                        .map(|s| s.as_str_name())
                        .unwrap_or("UNKNOWN"),
                    n.node_names.join(","),
                    n.message
                ),
                None => {}
            },
        }
    }
}

fn observe(args: Args) -> Result<()> {
    let matches = observe_matches()?;
    let flags = ordered_flags(&matches);
    let req = request(&args, &flags)?;
    let (mut servers, conn, relays) = match &args.lab {
        None => (
            args.servers.clone(),
            Connection::from_flags(args.tls_dir.as_deref(), args.token_file.as_deref())?,
            false,
        ),
        Some(name) => lab_servers(name)?,
    };
    if servers.is_empty() {
        bail!("--server: no observer given");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    let mut printer = Printer {
        format: args.output,
        header_done: false,
    };
    rt.block_on(async {
        if relays {
            // Every relay serves every agent's flows: one is enough, the first that answers.
            servers = vec![first_reachable(&servers, std::time::Duration::from_secs(5)).await?];
        }
        let (tx, mut rx) = mpsc::channel(1024);
        for s in &servers {
            tokio::spawn(stream_from(
                s.clone(),
                conn.clone(),
                req.clone(),
                tx.clone(),
            ));
        }
        drop(tx);
        if req.follow {
            // Following: print as flows arrive (each server's stream is in time order).
            while let Some(r) = rx.recv().await {
                printer.print(&r?);
            }
            return Ok(());
        }
        let mut all = Vec::new();
        while let Some(r) = rx.recv().await {
            all.push(r?);
        }
        // One list in time order; --last/--first apply to the merged list.
        let all = palisade_api::flow_merge::by_time(all, req.number, req.first);
        for r in &all {
            printer.print(r);
        }
        Ok(())
    })
}

/// The first of `relays` (`https://HOST:PORT`) that accepts a connection, trying them in turn
/// for up to `patience`: a voter that is down, restarting or still binding its port does not
/// fail the command.
async fn first_reachable(relays: &[String], patience: std::time::Duration) -> Result<String> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let mut tried = Vec::new();
        for r in relays {
            let addr = r
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            match tokio::time::timeout(
                std::time::Duration::from_secs(1),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(_)) => return Ok(r.clone()),
                Ok(Err(e)) => tried.push(format!("{r}: {e}")),
                Err(_) => tried.push(format!("{r}: no answer within 1s")),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no flow relay reachable: {}", tried.join("; "));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A lab's observers, entering the lab so its addresses are reachable: its control plane's
/// relays (with the lab's operator CA and admin token; `true`: any one of them will do) when it
/// runs one, otherwise every node agent (plaintext, from the first node's namespace).
fn lab_servers(name: &str) -> Result<(Vec<String>, Connection, bool)> {
    let lab = palisade_lab::Lab::load(name)?;
    let state = lab.state();
    match &state.cluster {
        Some(c) => {
            palisade_lab::exec::enter_netns(&c.cp_netns)
                .map_err(|e| anyhow!("--lab {name}: {e}"))?;
            let conn = Connection::from_flags(
                Some(&c.operator_tls_dir(name)),
                Some(&c.admin_token_file(name)),
            )?;
            let relays = (1..=c.voters)
                .map(|k| {
                    format!(
                        "https://{}",
                        palisade_lab::state::ClusterState::voter_grpc_addr(k)
                    )
                })
                .collect();
            Ok((relays, conn, true))
        }
        None => {
            let netns = state
                .nodes
                .first()
                .map(|n| n.netns.clone())
                .ok_or_else(|| anyhow!("--lab {name}: the lab has no nodes"))?;
            palisade_lab::exec::enter_netns(&netns).map_err(|e| anyhow!("--lab {name}: {e}"))?;
            let servers = state
                .nodes
                .iter()
                .map(|n| format!("{}:{AGENT_PORT}", n.underlay_ip))
                .collect();
            Ok((servers, Connection::default(), false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_that_refuses_is_skipped_for_the_next() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let up = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let down = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let (up, down_addr) = (
                format!("https://{}", up.local_addr().expect("addr")),
                format!("https://{}", down.local_addr().expect("addr")),
            );
            drop(down);
            let none = std::time::Duration::ZERO;
            let relays = [down_addr.clone(), up.clone()];
            assert_eq!(first_reachable(&relays, none).await.expect("one is up"), up);
            let err = first_reachable(std::slice::from_ref(&down_addr), none)
                .await
                .expect_err("none is up")
                .to_string();
            assert!(err.contains(&down_addr) && err.contains("refused"), "{err}");
        });
    }

    fn matches(args: &[&str]) -> ArgMatches {
        let mut argv = vec!["palisade", "observe"];
        argv.extend_from_slice(args);
        crate::Cli::command()
            .try_get_matches_from(argv)
            .expect("parses")
            .subcommand_matches("observe")
            .expect("observe")
            .clone()
    }

    #[test]
    fn not_negates_only_the_next_filter_flag() {
        let flags = ordered_flags(&matches(&[
            "--to-port",
            "80",
            "--not",
            "--from-ip",
            "10.0.0.1",
            "--verdict",
            "DROPPED",
        ]));
        let got: Vec<(&str, &str, bool)> = flags
            .iter()
            .map(|f| (f.name, f.value.as_str(), f.negated))
            .collect();
        assert_eq!(
            got,
            vec![
                ("to-port", "80", false),
                ("from-ip", "10.0.0.1", true),
                ("verdict", "DROPPED", false)
            ]
        );
    }

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_time("since", "5m", now).expect("5m").seconds,
            1_000_000 - 300
        );
        assert_eq!(
            parse_time("until", "2026-11-26T17:01:02Z", now)
                .expect("rfc3339")
                .seconds,
            1_795_712_462
        );
        let e = parse_time("since", "yesterday-ish", now).expect_err("bad");
        assert!(e.to_string().starts_with("--since `yesterday-ish`"), "{e}");
    }
}
