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
    /// Ask every node agent of this local lab (`palisade lab up`), from inside the lab.
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

/// Streams one server's responses into `tx`; errors name the server.
async fn stream_from(
    server: String,
    req: GetFlowsRequest,
    tx: mpsc::Sender<Result<GetFlowsResponse>>,
) {
    let result = async {
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint_url(&server))
            .map_err(|e| anyhow!("--server `{server}`: {e}"))?
            .connect_timeout(Duration::from_secs(5));
        let mut client = ObserverClient::connect(endpoint)
            .await
            .with_context(|| format!("connecting to the observer at `{server}`"))?;
        let mut stream = client
            .get_flows(req)
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

fn time_ns(r: &GetFlowsResponse) -> i128 {
    let t = match &r.response_types {
        Some(ResponseTypes::Flow(f)) => f.time.as_ref(),
        _ => r.time.as_ref(),
    };
    t.map_or(0, |t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
}

struct Printer {
    format: Format,
    header_done: bool,
}

impl Printer {
    fn print(&mut self, r: &GetFlowsResponse) {
        match self.format {
            Format::Jsonpb => println!("{}", print::response_json(r)),
            Format::Json => match &r.response_types {
                Some(ResponseTypes::Flow(f)) => println!("{}", print::flow_json(f)),
                _ => println!("{}", print::response_json(r)),
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
                    "NODE STATUS: {:?} {}: {}",
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
    let servers = match &args.lab {
        None => args.servers.clone(),
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
        let (tx, mut rx) = mpsc::channel(1024);
        for s in &servers {
            tokio::spawn(stream_from(s.clone(), req.clone(), tx.clone()));
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
        all.sort_by_key(time_ns);
        if req.number > 0 && servers.len() > 1 {
            let flows = all
                .iter()
                .filter(|r| matches!(r.response_types, Some(ResponseTypes::Flow(_))))
                .count();
            let excess = flows.saturating_sub(req.number as usize);
            let mut dropped = 0;
            all.retain(|r| {
                let is_flow = matches!(r.response_types, Some(ResponseTypes::Flow(_)));
                // --first keeps the earliest: drop from the end instead.
                let keep = !is_flow || dropped >= excess || req.first;
                if is_flow && !keep {
                    dropped += 1;
                }
                keep
            });
            if req.first {
                let mut seen = 0;
                all.retain(|r| {
                    let is_flow = matches!(r.response_types, Some(ResponseTypes::Flow(_)));
                    if is_flow {
                        seen += 1;
                    }
                    !is_flow || seen <= req.number as usize
                });
            }
        }
        for r in &all {
            printer.print(r);
        }
        Ok(())
    })
}

/// Every node agent's observer in a lab, entering the lab so its addresses are reachable.
fn lab_servers(name: &str) -> Result<Vec<String>> {
    let lab = palisade_lab::Lab::load(name)?;
    let state = lab.state();
    // Node addresses live on the lab's underlay: reachable from its first node's namespace.
    let netns = match &state.cluster {
        Some(c) => c.cp_netns.clone(),
        None => state
            .nodes
            .first()
            .map(|n| n.netns.clone())
            .ok_or_else(|| anyhow!("--lab {name}: the lab has no nodes"))?,
    };
    palisade_lab::exec::enter_netns(&netns).map_err(|e| anyhow!("--lab {name}: {e}"))?;
    Ok(state
        .nodes
        .iter()
        .map(|n| format!("{}:{AGENT_PORT}", n.underlay_ip))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
