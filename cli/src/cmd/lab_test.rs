//! `palisade lab test SUITE...`: a `palisade policy test` suite on real packets.
//!
//! For each suite: the engine builds the suite's world and compiles its policies (exactly as
//! `policy test` does); a lab is built whose pods match the suite's endpoints (names, namespaces,
//! labels, addresses, nodes) and whose externals are hosts on the fabric; every node's eBPF
//! datapath is loaded and programmed from the engine's compiled map states; then every case is
//! probed with real traffic and three verdicts are compared: expected, offline (the engine's) and
//! kernel (did the reply come back). The lab is torn down afterwards.
//!
//! Until the control plane and the agent program the maps (issue 5), this command programs them
//! itself, from the same compiled entries the agent will receive.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use palisade_datapath_common::endpoint::FLAG_ALLOW_LOCALHOST;
use palisade_datapath_common::policy::PolicyValue;
use palisade_lab::{ExternalPlan, Lab, LabSpec, LabState, PodPlan, Protocol};
use palisade_node_agent::datapath::{Datapath, DatapathConfig, PolicyMatch, endpoint_info};
use palisade_policy::engine::Engine;
use palisade_policy::identity::Identity;
use palisade_policy::ir::proto;
use palisade_policy::suite::Suite;
use palisade_policy::verdict::{Peer, Verdict};
use serde::Serialize;

use super::Output;
use super::policy::{build_suite, collect};

/// Arguments of `palisade lab test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Suite files or directories (searched recursively for suites), as for `policy test`.
    #[arg(required = true, value_name = "SUITE")]
    suites: Vec<PathBuf>,
    /// Nodes in each suite's lab; endpoints without a `node` are spread over them.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
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
    // Every suite is parsed and compiled before any lab is built: bad input touches nothing.
    let mut built = Vec::new();
    for f in &files {
        built.push((f.clone(), build_suite(f)?));
    }
    let bin = std::env::current_exe().context("locating the palisade binary")?;
    let mut results = Vec::new();
    for (k, (file, (suite, engine))) in built.iter().enumerate() {
        if a.output == Output::Table {
            eprintln!("[{}/{}] {}", k + 1, built.len(), file.display());
        }
        results.extend(run_suite(
            &bin,
            k,
            suite,
            engine,
            usize::from(a.nodes),
            a.timeout,
        )?);
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

#[derive(Clone, Copy)]
enum ProbeProto {
    L4(Protocol),
    Ping,
}

fn run_suite(
    bin: &Path,
    k: usize,
    suite: &Suite,
    engine: &Engine,
    nodes: usize,
    timeout: Duration,
) -> Result<Vec<RealCase>> {
    let lab_name = format!("lt{}x{k}", std::process::id() % 100_000);
    let spec = lab_spec(bin, &lab_name, suite, engine, nodes)?;
    let _guard = LabGuard(lab_name.clone());
    let lab = Lab::up(&spec).with_context(|| format!("building the lab for `{}`", suite.file))?;
    let state = lab.state().clone();

    let (stop, datapaths) = program_nodes(&state, engine)?;
    let mut rows = Vec::new();
    let mut probes = Vec::new();
    for (i, c) in suite.def.cases.iter().enumerate() {
        let conn = suite.connection(engine, i)?;
        let offline = engine.check(&conn).verdict;
        let probe = plan_probe(&state, engine, &conn, c.http.is_some(), c.icmp_type);
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
            (Probe::Real { .. }, Ok(reachable)) => {
                let kernel = if reachable {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
                row.kernel = Some(kernel);
                row.ok = passes(row.expected) == reachable && passes(row.offline) == reachable;
                if !row.ok {
                    row.note = format!("kernel {}, offline {}", kernel, row.offline);
                }
            }
            (Probe::Real { .. }, Err(e)) => {
                row.note = format!("probe failed: {e}");
                row.ok = false;
            }
        }
    }
    drop(stop);
    for t in datapaths {
        t.join()
            .map_err(|_| anyhow!("a node's datapath thread panicked"))??;
    }
    Ok(rows)
}

/// Tears the lab down even when the suite fails half-way.
struct LabGuard(String);
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}

fn lab_spec(
    bin: &Path,
    name: &str,
    suite: &Suite,
    engine: &Engine,
    nodes: usize,
) -> Result<LabSpec> {
    let mut spec = LabSpec::new(name, nodes, 1, bin);
    // Named nodes keep their grouping; the rest are spread round-robin.
    let named: BTreeSet<&str> = suite
        .def
        .endpoints
        .iter()
        .filter_map(|e| e.node.as_deref())
        .collect();
    let node_index: BTreeMap<&str, usize> = named
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, i % nodes + 1))
        .collect();
    for (i, e) in suite.def.endpoints.iter().enumerate() {
        let ep = &engine.endpoints()[&e.name];
        let IpAddr::V4(ip) = ep.spec.ip else {
            bail!(
                "{}: endpoint `{}` has an IPv6 address; the lab is IPv4-only for now",
                suite.file,
                e.name
            );
        };
        spec.pods.push(PodPlan {
            name: e.name.clone(),
            namespace: ep.spec.namespace.clone(),
            labels: ep.spec.labels.clone(),
            node: e.node.as_deref().map_or(i % nodes + 1, |n| node_index[n]),
            ip: Some(ip),
            service_account: Some(ep.spec.service_account.clone()),
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
    spec.serve_tcp = tcp.into_iter().collect();
    spec.serve_udp = udp.into_iter().collect();
    spec.serve_nodes = true;
    Ok(spec)
}

/// Loads and programs one datapath per node, each on a thread inside its node's namespace; they
/// stay attached until the returned sender is dropped.
#[allow(clippy::type_complexity)]
fn program_nodes(
    state: &LabState,
    engine: &Engine,
) -> Result<(mpsc::Sender<()>, Vec<thread::JoinHandle<Result<()>>>)> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    // Everything a node needs, computed here (the engine is not Send-shared across threads).
    let mut ipcache: Vec<(IpAddr, u32)> = Vec::new();
    for pod in &state.pods {
        ipcache.push((pod.ip, engine.endpoints()[&pod.name].identity.0));
    }
    for x in engine.externals().values() {
        ipcache.push((x.ip, x.identity.0));
    }
    let mut threads = Vec::new();
    for node in &state.nodes {
        let mut node_cache = ipcache.clone();
        for other in &state.nodes {
            let id = if other.name == node.name {
                Identity::HOST
            } else {
                Identity::REMOTE_NODE
            };
            node_cache.push((IpAddr::V4(other.underlay_ip), id.0));
        }
        let pod_ips: Vec<IpAddr> = engine.endpoints().values().map(|e| e.spec.ip).collect();
        let mut endpoints = Vec::new();
        for (i, pod) in state
            .pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.node == node.name)
        {
            let endpoint_id = i as u32 + 1;
            let ep = &engine.endpoints()[&pod.name];
            let entries = engine
                .map_state(&pod.name)
                .map(|m| m.datapath_entries(endpoint_id))
                .unwrap_or_default();
            // Kubernetes ipBlock peers that are pods, expanded per pod address.
            let pod_ip_entries: Vec<(PolicyMatch, IpAddr, PolicyValue)> = engine
                .map_state(&pod.name)
                .map(|m| m.pod_ip_entries(&pod_ips))
                .unwrap_or_default()
                .iter()
                .map(|e| PolicyMatch::from_pod_ip_entry(endpoint_id, e))
                .collect();
            let IpAddr::V4(v4) = pod.ip else {
                bail!("pod `{}` is not IPv4", pod.name)
            };
            let info = endpoint_info(
                endpoint_id,
                ep.identity.0,
                IpAddr::V4(v4),
                FLAG_ALLOW_LOCALHOST,
            );
            endpoints.push((pod.host_iface.clone(), info, entries, pod_ip_entries));
        }
        let netns = node.netns.clone();
        let ready = ready_tx.clone();
        let stop = stop_rx.clone();
        threads.push(thread::spawn(move || -> Result<()> {
            let programmed = (|| -> Result<Datapath> {
                palisade_lab::exec::enter_netns(&netns)?;
                let mut dp = Datapath::load_with(&DatapathConfig::for_test())?;
                for (ip, id) in &node_cache {
                    dp.upsert_ipcache(*ip, if ip.is_ipv4() { 32 } else { 128 }, *id)?;
                }
                for (iface, info, entries, pod_ip_entries) in &endpoints {
                    let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
                        .with_context(|| format!("interface `{iface}` in `{netns}`"))?;
                    dp.upsert_endpoint(ifindex, *info)?;
                    for (bits, key, value) in entries {
                        dp.upsert_policy_entry(*bits, *key, *value)?;
                    }
                    for (m, peer, value) in pod_ip_entries {
                        dp.upsert_pod_ip_policy(*m, *peer, *value)?;
                    }
                    dp.attach_enforcement(iface)?;
                }
                Ok(dp)
            })();
            match programmed {
                Ok(dp) => {
                    let _ = ready.send(Ok(()));
                    let _ = stop.lock().map(|rx| rx.recv());
                    drop(dp);
                    Ok(())
                }
                Err(e) => {
                    let _ = ready.send(Err(anyhow!("{e:#}")));
                    Err(e)
                }
            }
        }));
    }
    for _ in &state.nodes {
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .context("waiting for the datapaths")??;
    }
    Ok((stop_tx, threads))
}

fn plan_probe(
    state: &LabState,
    engine: &Engine,
    conn: &palisade_policy::verdict::Connection,
    http: bool,
    icmp_type: Option<i64>,
) -> Probe {
    if http {
        return Probe::NotProbed("HTTP case: needs the L7 proxy (issue 8)".into());
    }
    let protocol = match conn.protocol {
        proto::TCP => ProbeProto::L4(Protocol::Tcp),
        proto::UDP => ProbeProto::L4(Protocol::Udp),
        proto::ICMP if icmp_type.unwrap_or(8) == 8 => ProbeProto::Ping,
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
            Peer::Endpoint(n) => engine.endpoints().get(n).map(|e| e.spec.ip),
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

/// Probes every case, a few at a time (denied probes wait for their timeout).
fn probe_all(bin: &Path, probes: &[Probe], timeout: Duration) -> Vec<Result<bool>> {
    const PARALLEL: usize = 12;
    let mut out: Vec<Option<Result<bool>>> = (0..probes.len()).map(|_| None).collect();
    for chunk in (0..probes.len()).collect::<Vec<_>>().chunks(PARALLEL) {
        let results: Vec<(usize, Result<bool>)> = thread::scope(|s| {
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

fn probe_one(bin: &Path, probe: &Probe, timeout: Duration) -> Result<bool> {
    let Probe::Real {
        from_netns,
        to_ip,
        protocol,
        port,
    } = probe
    else {
        return Ok(false);
    };
    match protocol {
        ProbeProto::L4(p) => {
            let r = palisade_lab::probe_in_netns(bin, from_netns, *to_ip, *port, *p, timeout)
                .map_err(|e| anyhow!(e))?;
            Ok(r.reachable)
        }
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
            Ok(out.status.success())
        }
    }
}
