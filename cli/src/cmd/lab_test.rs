//! `palisade lab test SUITE...`: a `palisade policy test` suite on real packets, through the
//! whole product.
//!
//! For each suite a lab is built whose pods match the suite's endpoints: a control plane, an
//! agent per node, every pod made by the CNI plugin with the suite's namespace, labels, service
//! account, named ports and address (see [`placement`] for nodes and addresses), externals as
//! hosts on the fabric. The suite's Namespaces (with their labels) and policies are applied to
//! the control plane exactly as `palisade policy apply` sends them, `policy wait` confirms every
//! agent enforces them, and every case is probed with real traffic. Three verdicts are compared:
//! expected, offline (the engine's, compiled with the lab's addresses) and kernel (did the reply
//! come back). The lab is torn down afterwards.

mod placement;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use palisade_api::controlplane::PolicyKey;
use palisade_cp_client::{Client, WaitOutcome};
use palisade_lab::{ClusterPlan, ExternalPlan, Lab, LabSpec, LabState, PodPlan, Protocol};
use palisade_policy::engine::Engine;
use palisade_policy::ir::HttpRequest;
use palisade_policy::ir::proto;
use palisade_policy::mapstate::VERDICT_REDIRECT;
use palisade_policy::namespace;
use palisade_policy::suite::{CaseDef, Suite};
use palisade_policy::verdict::{Peer, Verdict};
use serde::Serialize;

use super::Output;
use super::policy::objects::{CLUSTER_SCOPED, Object};
use super::policy::{build_world, collect, parse_suite, suite_objects};
use placement::Placement;

/// How long the agents may take to enforce a suite's policies.
const POLICY_WAIT: Duration = Duration::from_secs(60);

/// Arguments of `palisade lab test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Suite files or directories (searched recursively for suites), as for `policy test`.
    #[arg(required = true, value_name = "SUITE")]
    suites: Vec<PathBuf>,
    /// Nodes in each suite's lab; endpoints without a `node` are spread over them.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
    /// Control-plane voters in each suite's lab (1, 3 or 5).
    #[arg(long, default_value_t = 1, value_parser = parse_voters)]
    voters: usize,
    /// How long a probe waits for the reply before the case counts as denied.
    #[arg(long, default_value = "800ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// One case on real packets.
#[derive(Debug, Clone, Serialize)]
struct RealCase {
    suite: String,
    case: String,
    expected: Verdict,
    offline: Verdict,
    /// `None` when the case could not be probed here (see `note`).
    kernel: Option<Verdict>,
    note: String,
    ok: bool,
}

/// Runs `palisade lab test`.
pub fn run(a: TestArgs) -> Result<ExitCode> {
    let mut files = Vec::new();
    for s in &a.suites {
        if s.is_dir() {
            let mut found = Vec::new();
            collect(s, &mut found, &["yaml", "yml"])?;
            for f in found {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read `{}`", f.display()))?;
                if palisade_policy::suite::looks_like_suite(&text) {
                    files.push(f);
                }
            }
        } else {
            files.push(s.clone());
        }
    }
    if files.is_empty() {
        bail!("no suite files found");
    }
    // Every suite is parsed, placed and compiled before any lab is built: bad input touches
    // nothing.
    let mut prepared = Vec::new();
    for f in &files {
        prepared.push(prepare(f, usize::from(a.nodes))?);
    }
    let bin = std::env::current_exe().context("locating the palisade binary")?;
    let mut results = Vec::new();
    for (k, p) in prepared.iter().enumerate() {
        if a.output == Output::Table {
            eprintln!("[{}/{}] {}", k + 1, prepared.len(), p.file.display());
        }
        results.extend(run_suite(&bin, k, p, a.voters, a.timeout)?);
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    let skipped = results.iter().filter(|r| r.kernel.is_none()).count();
    let passed = results.len() - failed - skipped;
    match a.output {
        Output::Json | Output::Yaml => {
            let doc = serde_json::json!({"cases": results, "passed": passed, "failed": failed, "notProbed": skipped});
            print!("{}", a.output.render(&doc)?);
        }
        Output::Table => {
            print!("{}", table(&results));
            println!("{passed} passed, {failed} failed");
            if skipped > 0 {
                println!("({skipped} cases not probed on real packets; see the note column)");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn table(rows: &[RealCase]) -> String {
    let mut out = String::new();
    let w_suite = rows.iter().map(|r| r.suite.len()).max().unwrap_or(5).max(5);
    let w_case = rows.iter().map(|r| r.case.len()).max().unwrap_or(4).max(4);
    out.push_str(&format!(
        "{:<w_suite$}  {:<w_case$}  {:<8}  {:<8}  {:<8}  {:<4}  NOTE\n",
        "SUITE", "CASE", "EXPECTED", "OFFLINE", "KERNEL", "OK"
    ));
    for r in rows {
        let kernel = r
            .kernel
            .map(|k| k.to_string())
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<w_suite$}  {:<w_case$}  {:<8}  {:<8}  {:<8}  {:<4}  {}\n",
            r.suite,
            r.case,
            r.expected.to_string(),
            r.offline.to_string(),
            kernel,
            if r.ok { "ok" } else { "FAIL" },
            r.note
        ));
    }
    out
}

/// How one case is probed, or why it cannot be.
enum Probe {
    Real {
        from_netns: String,
        to_ip: IpAddr,
        protocol: ProbeProto,
        port: u16,
    },
    NotProbed(String),
}

enum ProbeProto {
    L4(Protocol),
    Ping,
    /// One HTTP/1.1 request; the pods serve HTTP on the suite's `http` ports.
    Http(HttpRequest),
    /// One DNS query (the pods' servers answer DNS on any port they serve), through the agent's
    /// DNS proxy when the case's port is redirected to it.
    Dns {
        /// The name asked.
        name: String,
        /// Over TCP instead of UDP.
        tcp: bool,
    },
}

/// A suite ready for its lab.
struct Prepared {
    file: PathBuf,
    /// The suite with every endpoint at its lab address.
    suite: Suite,
    /// Its world, compiled with those addresses.
    engine: Engine,
    placement: Placement,
    /// What is applied to the lab's control plane: the suite's labelled Namespaces, then its
    /// policies.
    objects: Vec<Object>,
    /// Whether a policy has a `toFQDNs` rule.
    uses_fqdn: bool,
    /// Ports with `http` cases: the pods serve HTTP there, and every TCP case to them is an
    /// HTTP request.
    http_ports: BTreeSet<u16>,
    /// The name DNS cases ask for: one the policies' `rules.dns` allow.
    dns_name: String,
}

/// A name the `rules.dns` of `objects` allow: the first `matchName`, else the first
/// `matchPattern` with each `*` standing for one label (`probe`), else `probe.palisade.test`.
fn dns_probe_name(objects: &[Object]) -> String {
    fn find(v: &serde_json::Value, key: &str) -> Option<String> {
        match v {
            serde_json::Value::Object(m) => m.iter().find_map(|(k, v)| match (k == key, v) {
                (true, serde_json::Value::String(s)) => Some(s.clone()),
                _ => find(v, key),
            }),
            serde_json::Value::Array(a) => a.iter().find_map(|v| find(v, key)),
            _ => None,
        }
    }
    let dns_rules: Vec<&serde_json::Value> = objects.iter().map(|o| &o.object).collect();
    let named = dns_rules.iter().find_map(|o| find(o, "matchName"));
    let pattern = || {
        dns_rules
            .iter()
            .find_map(|o| find(o, "matchPattern"))
            .map(|p| match p.as_str() {
                "*" => "probe.palisade.test".to_owned(),
                p => p.replace('*', "probe"),
            })
    };
    named
        .or_else(pattern)
        .unwrap_or_else(|| "probe.palisade.test".to_owned())
}

/// Whether `v` has the key `key` anywhere.
fn has_key(v: &serde_json::Value, key: &str) -> bool {
    match v {
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k == key || has_key(v, key)),
        serde_json::Value::Array(a) => a.iter().any(|v| has_key(v, key)),
        _ => false,
    }
}

/// Parses, checks, places and compiles one suite.
fn prepare(file: &Path, nodes: usize) -> Result<Prepared> {
    let mut suite = parse_suite(file)?;
    // The suite as written must be valid first, so errors name its own fields.
    build_world(file, &suite)?;
    let placement = placement::place(&suite.def.endpoints, nodes)
        .with_context(|| format!("{}: placing the pods in a lab", suite.file))?;
    for (e, (_, ip)) in suite.def.endpoints.iter_mut().zip(&placement.pods) {
        e.ip = Some(ip.to_string());
    }
    let engine = build_world(file, &suite)?;
    let mut objects = namespace_objects(&suite)?;
    objects.extend(suite_objects(file, &suite)?);
    let uses_fqdn = objects.iter().any(|o| has_key(&o.object, "toFQDNs"));
    let http_ports = suite
        .def
        .cases
        .iter()
        .filter(|c| c.http.is_some())
        .filter_map(|c| c.port.and_then(|p| u16::try_from(p).ok()))
        .collect();
    let dns_name = dns_probe_name(&objects);
    Ok(Prepared {
        uses_fqdn,
        http_ports,
        dns_name,
        file: file.to_path_buf(),
        suite,
        engine,
        placement,
        objects,
    })
}

/// The suite's namespaces that carry labels, as `v1/Namespace` objects: their labels are part
/// of their pods' identities (what a `namespaceSelector` matches).
fn namespace_objects(suite: &Suite) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for (name, labels) in &suite.def.namespaces {
        let Some(labels) = labels.as_ref().filter(|l| !l.is_empty()) else {
            continue;
        };
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": namespace::KIND,
            "metadata": {"name": name, "labels": labels},
        });
        namespace::parse(&object).map_err(|e| {
            anyhow!(
                "{}: namespaces.{name}: {}: {}",
                suite.file,
                e.field,
                e.reason
            )
        })?;
        out.push(Object {
            key: PolicyKey {
                kind: namespace::KIND.to_owned(),
                namespace: CLUSTER_SCOPED.to_owned(),
                name: name.clone(),
            },
            object,
            origin: format!("{}: namespaces.{name}", suite.file),
        });
    }
    Ok(out)
}

fn run_suite(
    bin: &Path,
    k: usize,
    p: &Prepared,
    voters: usize,
    timeout: Duration,
) -> Result<Vec<RealCase>> {
    let (suite, engine) = (&p.suite, &p.engine);
    let lab_name = format!("lt{}x{k}", std::process::id() % 100_000);
    let spec = lab_spec(bin, &lab_name, p, voters)?;
    let _guard = LabGuard(lab_name.clone());
    let lab = Lab::up(&spec).with_context(|| format!("building the lab for `{}`", suite.file))?;
    let state = lab.state().clone();
    apply_and_wait(&state, &p.objects)
        .with_context(|| format!("enforcing the policies of `{}`", suite.file))?;

    let mut rows = Vec::new();
    let mut probes = Vec::new();
    for (i, c) in suite.def.cases.iter().enumerate() {
        let conn = suite.connection(engine, i)?;
        let offline = engine.check(&conn).verdict;
        let probe =
            if p.uses_fqdn && matches!(conn.to, Peer::External(_)) && offline != Verdict::Deny {
                // Offline, an external's name stands for the DNS name a pod resolved; on real
                // packets a toFQDNs rule admits an address only after a DNS answer through the
                // agent's proxy, which the suites do not model. A denial needs no answer: it is
                // probed.
                Probe::NotProbed(
                    "allowed by toFQDNs: needs a DNS answer through the proxy first".into(),
                )
            } else {
                plan_probe(&state, engine, &conn, c, &p.http_ports, &p.dns_name)
            };
        rows.push(RealCase {
            suite: suite.file.clone(),
            case: suite.case_label(i),
            expected: c.expect,
            offline,
            kernel: None,
            note: String::new(),
            ok: false,
        });
        probes.push(probe);
    }
    let outcomes = probe_all(&state.palisade_bin, &probes, timeout);
    for (row, (probe, outcome)) in rows.iter_mut().zip(probes.iter().zip(outcomes)) {
        let passes = |v: Verdict| v != Verdict::Deny;
        match (probe, outcome) {
            (Probe::NotProbed(why), _) => {
                row.note = why.clone();
                row.ok = passes(row.offline) == passes(row.expected);
            }
            (Probe::Real { .. }, Ok((reachable, detail))) => {
                let kernel = if reachable {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
                row.kernel = Some(kernel);
                row.ok = passes(row.expected) == reachable && passes(row.offline) == reachable;
                row.note = if row.ok {
                    detail
                } else {
                    format!("kernel {}, offline {} {detail}", kernel, row.offline)
                        .trim_end()
                        .to_owned()
                };
            }
            (Probe::Real { .. }, Err(e)) => {
                row.note = format!("probe failed: {e}");
                row.ok = false;
            }
        }
    }
    Ok(rows)
}

/// Applies `objects` to the lab's control plane, as `palisade policy apply` does, and waits
/// until every agent acknowledged the resulting revision (`palisade policy wait`). Runs on a
/// thread of its own inside the control plane's host namespace, where the lab's addresses are.
fn apply_and_wait(state: &LabState, objects: &[Object]) -> Result<u64> {
    let cluster = state
        .cluster
        .clone()
        .context("the lab runs no control plane")?;
    let cfg = palisade_lab::cluster::operator_client_config(state, &cluster)?;
    let objects = objects.to_vec();
    thread::spawn(move || -> Result<u64> {
        palisade_lab::exec::enter_netns(&cluster.cp_netns)?;
        let client = Client::new(cfg)?;
        for o in &objects {
            client
                .apply_policy(&o.key, &o.object)
                .map_err(|e| anyhow!("{}: {}: {e}", o.origin, o.display_name()))?;
        }
        match client.wait_policies(None, POLICY_WAIT)? {
            WaitOutcome::Done { revision, .. } => Ok(revision),
            WaitOutcome::TimedOut { revision, laggards } => bail!(
                "policy revision {revision} not acknowledged within {}s by {}",
                POLICY_WAIT.as_secs(),
                laggards
                    .iter()
                    .map(|(n, r)| format!("{n} (at {r})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    })
    .join()
    .map_err(|_| anyhow!("the control-plane client thread panicked"))?
}

/// Tears the lab down even when the suite fails half-way.
struct LabGuard(String);
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}

fn lab_spec(bin: &Path, name: &str, p: &Prepared, voters: usize) -> Result<LabSpec> {
    let (suite, engine) = (&p.suite, &p.engine);
    let mut spec = LabSpec::new(name, p.placement.node_cidrs.len(), 1, bin);
    spec.pod_cidr = p.placement.pod_cidr;
    spec.node_pod_cidrs = p.placement.node_cidrs.clone();
    spec.cluster = Some(ClusterPlan {
        voters,
        cni_bin: bin.with_file_name("palisade-cni"),
        encryption: false,
        wireguard_rotation: None,
        l7_proxy_workers: None,
        node_encryption: false,
    });
    for (e, (node, ip)) in suite.def.endpoints.iter().zip(&p.placement.pods) {
        let ep = &engine.endpoints()[e.name.as_str()];
        spec.pods.push(PodPlan {
            name: e.name.clone(),
            namespace: ep.spec.namespace.to_string(),
            labels: ep.spec.labels.as_ref().clone(),
            node: *node,
            ip: Some(*ip),
            service_account: Some(ep.spec.service_account.to_string()),
            ports: ep
                .spec
                .ports
                .iter()
                .map(|p| palisade_api::agent::ContainerPort {
                    name: p.name.clone(),
                    container_port: p.port,
                    protocol: proto::name(p.protocol).to_owned(),
                })
                .collect(),
        });
    }
    for x in engine.externals().values() {
        let IpAddr::V4(ip) = x.ip else {
            bail!(
                "{}: external `{}` has an IPv6 address; the lab is IPv4-only for now",
                suite.file,
                x.name
            );
        };
        spec.externals.push(ExternalPlan {
            name: x.name.clone(),
            ip,
        });
    }
    let mut tcp = BTreeSet::from([80u16]);
    let mut udp = BTreeSet::from([80u16]);
    for c in &suite.def.cases {
        let Some(port) = c
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        match c
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("TCP") => tcp.insert(port),
            Some("UDP") => udp.insert(port),
            _ => false,
        };
    }
    spec.serve_tcp = tcp.difference(&p.http_ports).copied().collect();
    spec.serve_udp = udp.into_iter().collect();
    spec.serve_http = p.http_ports.iter().copied().collect();
    spec.serve_nodes = true;
    Ok(spec)
}

fn parse_voters(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!("`{s}`: a control plane has 1, 3 or 5 voters")),
    }
}

fn plan_probe(
    state: &LabState,
    engine: &Engine,
    conn: &palisade_policy::verdict::Connection,
    case: &CaseDef,
    http_ports: &BTreeSet<u16>,
    dns_name: &str,
) -> Probe {
    // A redirected connection reaches the agent's HTTP or DNS proxy, which answers its own
    // protocol only: the L4 prober's line would be refused there whatever the policy says.
    let checked = engine.check(conn);
    let redirected = [&checked.egress, &checked.ingress]
        .into_iter()
        .flatten()
        .any(|side| {
            side.lookup
                .value
                .is_some_and(|v| v.verdict == VERDICT_REDIRECT)
        });
    let http = conn.protocol == proto::TCP && http_ports.contains(&conn.port);
    let dns = redirected && conn.port == 53;
    if redirected && !dns && case.http.is_none() {
        return Probe::NotProbed(
            "goes through the HTTP proxy without an `http` request to judge".into(),
        );
    }
    let protocol = match conn.protocol {
        proto::TCP | proto::UDP if dns => ProbeProto::Dns {
            name: dns_name.to_owned(),
            tcp: conn.protocol == proto::TCP,
        },
        proto::TCP if http => ProbeProto::Http(case.http.clone().unwrap_or_default()),
        proto::TCP => ProbeProto::L4(Protocol::Tcp),
        proto::UDP => ProbeProto::L4(Protocol::Udp),
        proto::ICMP if case.icmp_type.unwrap_or(8) == 8 => ProbeProto::Ping,
        proto::ICMP => return Probe::NotProbed("ICMP other than echo request: no prober".into()),
        p => {
            return Probe::NotProbed(format!(
                "protocol {p}: no prober on this machine (SCTP needs the sctp module)"
            ));
        }
    };
    let node_of = |pod: &str| state.pod(pod).and_then(|p| state.node(&p.node));
    let netns_of = |peer: &Peer, other: &Peer| -> Option<String> {
        match peer {
            Peer::Endpoint(n) => state.pod(n).map(|p| p.netns.clone()),
            Peer::External(n) => state
                .externals
                .iter()
                .find(|x| &x.name == n)
                .map(|x| x.netns.clone()),
            Peer::Host => match other {
                Peer::Endpoint(o) => node_of(o).map(|n| n.netns.clone()),
                _ => None,
            },
        }
    };
    let ip_of = |peer: &Peer, other: &Peer| -> Option<IpAddr> {
        match peer {
            Peer::Endpoint(n) => engine.endpoints().get(n.as_str()).map(|e| e.spec.ip),
            Peer::External(n) => engine.externals().get(n).map(|x| x.ip),
            Peer::Host => match other {
                Peer::Endpoint(o) => node_of(o).map(|n| IpAddr::V4(n.underlay_ip)),
                _ => None,
            },
        }
    };
    let (Some(from_netns), Some(to_ip)) =
        (netns_of(&conn.from, &conn.to), ip_of(&conn.to, &conn.from))
    else {
        return Probe::NotProbed("no lab host for this pair".into());
    };
    Probe::Real {
        from_netns,
        to_ip,
        protocol,
        port: conn.port,
    }
}

/// Whether the reply came back, and what a reader may want to know about it.
type Outcome = (bool, String);

/// Probes every case, a few at a time (denied probes wait for their timeout).
fn probe_all(bin: &Path, probes: &[Probe], timeout: Duration) -> Vec<Result<Outcome>> {
    const PARALLEL: usize = 12;
    let mut out: Vec<Option<Result<Outcome>>> = (0..probes.len()).map(|_| None).collect();
    for chunk in (0..probes.len()).collect::<Vec<_>>().chunks(PARALLEL) {
        let results: Vec<(usize, Result<Outcome>)> = thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| s.spawn(move || (i, probe_one(bin, &probes[i], timeout))))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or((usize::MAX, Err(anyhow!("probe thread panicked"))))
                })
                .collect()
        });
        for (i, r) in results {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(r);
            }
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow!("probe result lost"))))
        .collect()
}

fn probe_one(bin: &Path, probe: &Probe, timeout: Duration) -> Result<Outcome> {
    let Probe::Real {
        from_netns,
        to_ip,
        protocol,
        port,
    } = probe
    else {
        return Ok((false, String::new()));
    };
    match protocol {
        ProbeProto::L4(p) => {
            let r = palisade_lab::probe_in_netns(bin, from_netns, *to_ip, *port, *p, timeout)
                .map_err(|e| anyhow!(e))?;
            Ok((r.reachable, String::new()))
        }
        ProbeProto::Http(req) => http_probe(from_netns, *to_ip, *port, req, timeout),
        ProbeProto::Dns { name, tcp } => dns_probe(from_netns, *to_ip, *port, name, *tcp, timeout),
        ProbeProto::Ping => {
            let wait = timeout.as_secs().max(1).to_string();
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    from_netns,
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    &wait,
                    &to_ip.to_string(),
                ])
                .output()
                .context("running ping (install iputils-ping; the bootstrap does)")?;
            Ok((out.status.success(), String::new()))
        }
    }
}

/// Sends one DNS query from inside `netns` (this probe's own thread enters it) and judges the
/// answer: the workload's NOERROR (or NXDOMAIN) is an allow; the proxy's REFUSED, or no answer,
/// is a deny; anything else (SERVFAIL, a malformed answer) is an error worth reading.
fn dns_probe(
    netns: &str,
    ip: IpAddr,
    port: u16,
    name: &str,
    tcp: bool,
    timeout: Duration,
) -> Result<Outcome> {
    palisade_lab::exec::enter_netns(netns)?;
    let report = palisade_workload::resolve(&palisade_workload::ResolveSpec {
        server: SocketAddr::new(ip, port),
        name: name.to_owned(),
        aaaa: false,
        tcp,
        timeout,
        count: 1,
    });
    let over = if tcp { "TCP" } else { "UDP" };
    match report.rcode.as_str() {
        "NOERROR" | "NXDOMAIN" => {
            Ok((true, format!("DNS {} for {name} over {over}", report.rcode)))
        }
        "REFUSED" => Ok((false, format!("DNS REFUSED for {name} (the proxy)"))),
        "TIMEOUT" => Ok((false, format!("DNS over {over}: no answer"))),
        // A refused or reset TCP connection: nothing got through.
        "ERROR"
            if tcp
                && report
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("refused") || d.contains("reset")) =>
        {
            Ok((
                false,
                format!("DNS over TCP: {}", report.detail.unwrap_or_default()),
            ))
        }
        other => Err(anyhow!(
            "unexpected DNS answer {other} for {name} from {ip}:{port} over {over}: {}",
            report.detail.unwrap_or_default()
        )),
    }
}

/// Sends one HTTP/1.1 request from inside `netns` (this probe's own thread enters it) and
/// judges the answer: the workload's `200` is an allow; a timeout, a refused connection or the
/// proxy's `403 Access denied` is a deny; anything else is an error worth reading.
fn http_probe(
    netns: &str,
    ip: IpAddr,
    port: u16,
    req: &HttpRequest,
    timeout: Duration,
) -> Result<Outcome> {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset, TimedOut, WouldBlock};
    palisade_lab::exec::enter_netns(netns)?;
    let addr = SocketAddr::new(ip, port);
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), TimedOut | WouldBlock | ConnectionRefused) => {
            return Ok((false, format!("HTTP: no connection ({e})")));
        }
        Err(e) => return Err(anyhow!("connecting to {addr}: {e}")),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let method = req.method.as_deref().unwrap_or("GET");
    let mut text = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        req.path.as_deref().unwrap_or("/"),
        req.host.clone().unwrap_or_else(|| addr.to_string())
    );
    for (k, v) in &req.headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    stream.write_all(text.as_bytes())?;
    let mut answer = Vec::new();
    match stream.take(64 * 1024).read_to_end(&mut answer) {
        Ok(_) => {}
        // A drop after the handshake (a policy change) or a reset: nothing got through.
        Err(e)
            if answer.is_empty() && matches!(e.kind(), TimedOut | WouldBlock | ConnectionReset) =>
        {
            return Ok((false, "HTTP: no answer".into()));
        }
        Err(e) if answer.is_empty() => return Err(anyhow!("reading from {addr}: {e}")),
        Err(_) => {}
    }
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    match status {
        Some(200) if method == "HEAD" || body.starts_with(palisade_workload::REPLY_PREFIX) => {
            Ok((true, "HTTP 200".into()))
        }
        Some(403) if body.starts_with("Access denied") => {
            Ok((false, "HTTP 403 Access denied (the proxy)".into()))
        }
        None if answer.is_empty() => Ok((false, "HTTP: no answer".into())),
        _ => Err(anyhow!(
            "unexpected answer to {method} from {addr}: {}",
            answer.lines().next().unwrap_or_default()
        )),
    }
}
