//! `palisade tutorial`: the zero-trust tutorial Cilium users know, end to end on one host.
//!
//! It builds a lab (3 control-plane voters, 2 nodes, WireGuard on), deploys a three-tier app in
//! namespace `demo` plus the cluster DNS, then applies the policies of
//! `deploy/examples/zero-trust/` one at a time with `palisade policy apply` and `policy wait`,
//! probing with real clients after each and printing every result beside its expectation. It ends
//! with the tutorial's checklist. `make demo` runs it; `cli/tests/lab/t70_tutorial.rs` runs the same
//! scenario in `make test`. Exit status: 0 every check passed, 1 a check failed, 2 the tutorial
//! could not run.

mod app;
mod probe;
mod steps;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use palisade_lab::Lab;
use serde_json::Value;

use probe::{Observed, Outcome, ProbeId};

/// Arguments of `palisade tutorial`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
What it shows, step by step (policies in deploy/examples/zero-trust/):
  0  the app with no policy: everything reaches everything
  1  default deny for namespace demo          6  L7: only GET /get and POST /post on the api
  2  DNS egress to kube-dns                   7  cluster-wide default deny (CCNP)
  3  frontend -> api on 5000                  8  the database bound to a service account
  4  api -> db (Redis) on 6379                9  FQDN egress to partner.example.test
  5  frontend ingress from its namespace
then the checklist: default deny, identity after a pod restart (new IP), L7 denials in flows,
encryption, only expected flows. The lab keeps running unless --down is given; tear it down with
`palisade lab down --name LAB` (or `make demo-down`).")]
pub struct Args {
    /// Lab to build (an existing lab of that name is replaced).
    #[arg(long, env = "PALISADE_LAB", default_value = palisade_lab::DEFAULT_LAB, value_parser = super::lab::parse_lab_name)]
    lab: String,
    /// Tear the lab down at the end (by default it keeps running, for exploring).
    #[arg(long)]
    down: bool,
    /// Do not print each policy's YAML before applying it.
    #[arg(long)]
    quiet: bool,
}

/// Runs `palisade tutorial`.
pub fn run(args: Args) -> ExitCode {
    match tutorial(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("palisade tutorial: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn heading(text: &str) {
    println!("\n\x1b[1m== {text} ==\x1b[0m");
}

/// `true` when every check passed.
fn tutorial(args: &Args) -> Result<bool> {
    let bin = std::env::current_exe().context("locating the palisade binary")?;
    let t0 = Instant::now();
    heading(&format!(
        "Lab `{}`: 3 control-plane voters, 2 nodes, WireGuard between them",
        args.lab
    ));
    Lab::down(&args.lab).context("removing an earlier lab of that name")?;
    let mut lab = Lab::up(&app::lab_spec(&args.lab, &bin))?;
    app::start(&mut lab)?;
    print_app(&lab);
    println!("(ready in {:.0?})", t0.elapsed());

    let mut all_ok = true;
    let mut expected = steps::initial();
    heading("Step 0: no policy yet — every probe succeeds");
    all_ok &= probe_and_print(&lab, &expected)?;
    let mut default_deny_ok = true;
    let dir = palisade_lab::state::state_dir(&args.lab).join("tutorial");
    for (i, step) in steps::steps().iter().enumerate() {
        heading(&format!("Step {}: {}", i + 1, step.title));
        let file = dir.join(step.file);
        std::fs::write(&file, step.yaml).with_context(|| format!("writing {}", file.display()))?;
        if !args.quiet {
            for line in step.yaml.lines() {
                println!("    {line}");
            }
        }
        println!(
            "$ palisade policy apply -f deploy/examples/zero-trust/{}",
            step.file
        );
        palisade(
            &bin,
            &["policy", "apply", "--lab", &args.lab, "-f", &path(&file)],
        )?;
        println!("$ palisade policy wait");
        palisade(
            &bin,
            &["policy", "wait", "--lab", &args.lab, "--timeout", "30s"],
        )?;
        expected.extend(step.changes.iter().copied());
        let ok = probe_and_print(&lab, &expected)?;
        if i == 0 {
            default_deny_ok = ok;
        }
        all_ok &= ok;
    }

    heading("Checklist");
    let final_round = SystemTime::now();
    let last = probe::run_all(&lab, &probe::ALL)?;
    // The last round feeds the flow check; its results must still be the step 9 ones.
    for r in last.iter().filter(|r| expected[&r.id] != r.outcome) {
        all_ok = false;
        println!(
            "  ✗ last round: {} expected {}, got {} ({})",
            r.id.describe(),
            expected[&r.id],
            r.outcome,
            r.detail
        );
    }
    let mut checks: Vec<(&str, bool, String)> = Vec::new();
    checks.push((
        "Default deny enforced (step 1: nothing in demo gets through)",
        default_deny_ok,
        if default_deny_ok {
            "every probe from or to a demo pod dropped".into()
        } else {
            "see step 1".into()
        },
    ));
    let flows_ok = only_expected_flows(&bin, &lab, final_round, &last)?;
    let restart = restart_keeps_policy(&mut lab)?;
    checks.push((
        "Identity policy survives a pod restart (new IP)",
        restart.0,
        restart.1,
    ));
    let l7 = l7_denials_in_flows(&bin, &args.lab)?;
    checks.push(("L7 denials visible in flows", l7.0, l7.1));
    let enc = encryption_enabled(&bin, &lab)?;
    checks.push(("Encryption enabled (WireGuard between nodes)", enc.0, enc.1));
    checks.push(("Only expected flows present", flows_ok.0, flows_ok.1));
    println!("  {:<58} {:<6} DETAIL", "CHECK", "RESULT");
    for (name, ok, detail) in &checks {
        println!(
            "  {:<58} {:<6} {detail}",
            name,
            if *ok { "PASS" } else { "FAIL" }
        );
        all_ok &= ok;
    }

    heading(if all_ok {
        "Every step matched its expectation"
    } else {
        "Some results did not match their expectation (marked ✗ above)"
    });
    let lab_name = &args.lab;
    let frontend_ns = lab
        .state()
        .pod("frontend")
        .map(|p| p.netns.clone())
        .unwrap_or_default();
    println!(
        "\
Explore the running cluster:
  palisade ui --lab {lab_name}                                         the web UI: service map and flows (prints the URL
                                                                       to open, http://127.0.0.1:12000/#token=…)
  palisade observe --lab {lab_name} -n demo --verdict DROPPED          the denied flows (hubble observe)
  palisade observe --lab {lab_name} -n demo --protocol http -o json    the L7 requests
  palisade encrypt status --lab {lab_name}                             (cilium encrypt status)
  palisade policy list --lab {lab_name}
  palisade identity list --lab {lab_name}
  ip netns exec {frontend_ns} curl -s http://api.demo.svc.cluster.local:5000/get
                                                  (a request from the frontend pod, as kubectl exec would)
Tear it down: make demo-down   (or: palisade lab down --name {lab_name})"
    );
    if args.down {
        Lab::down(&args.lab)?;
        println!("lab `{lab_name}` removed");
    }
    Ok(all_ok)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs this binary with `args`, failing with its output when it fails.
fn palisade(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running palisade {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`palisade {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn print_app(lab: &Lab) {
    println!(
        "  {:<10} {:<12} {:<5} {:<12} {:<10} LABELS",
        "POD", "NAMESPACE", "NODE", "IP", "SA"
    );
    for p in &lab.state().pods {
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {:<10} {:<12} {:<5} {:<12} {:<10} {}",
            p.name,
            p.namespace,
            p.node,
            p.ip.to_string(),
            p.service_account.as_deref().unwrap_or("-"),
            labels.join(",")
        );
    }
    for x in &lab.state().externals {
        println!(
            "  {:<10} {:<12} {:<5} {:<12} (outside the cluster: world)",
            x.name,
            "-",
            "-",
            x.ip.to_string()
        );
    }
    println!(
        "  servers: frontend HTTP :8080, api httpbin-like REST :5000 (/get, /post), db redis-server :6379,\n  \
         kube-dns dnsmasq :53 (cluster.local, {}), partner and elsewhere HTTP :80",
        app::PARTNER_NAME
    );
}

/// Probes everything, prints the table, returns whether every result matched.
fn probe_and_print(lab: &Lab, expected: &BTreeMap<ProbeId, Outcome>) -> Result<bool> {
    let results = probe::run_all(lab, &probe::ALL)?;
    Ok(print_results(&results, expected))
}

fn print_results(results: &[Observed], expected: &BTreeMap<ProbeId, Outcome>) -> bool {
    println!("  {:<56} {:<11} {:<30}", "PROBE", "EXPECTED", "GOT");
    let mut ok = true;
    for r in results {
        let want = expected[&r.id];
        let matched = want == r.outcome;
        ok &= matched;
        println!(
            "  {:<56} {:<11} {:<30} {}",
            r.id.describe(),
            want.to_string(),
            format!("{} ({})", r.outcome, r.detail),
            if matched { "✓" } else { "✗" }
        );
    }
    ok
}

/// Restarts the api pod (CNI DEL, new namespace, CNI ADD: a new address) and shows the policy
/// follows its identity: the frontend's allowed and denied requests and the api's database access
/// are unchanged once the new address is known cluster-wide.
fn restart_keeps_policy(lab: &mut Lab) -> Result<(bool, String)> {
    let old = app::pod_ip(lab, "api")?;
    let started = Instant::now();
    let new = lab.restart_pod("api")?;
    app::start_pod_server(lab, "api")?;
    app::reload_zone(lab)?;
    let netns = lab
        .state()
        .pod("api")
        .map(|p| p.netns.clone())
        .unwrap_or_default();
    app::wait_listening_in(&netns, "tcp", &format!("sport = :{}", app::API_PORT))?;
    let ids = [
        ProbeId::FrontendGetApi,
        ProbeId::FrontendHeadersApi,
        ProbeId::ApiDb,
        ProbeId::FrontendDb,
    ];
    let expected = steps::expected_after_all();
    // The new address reaches the other node through the control plane: allow it a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let results = probe::run_all(lab, &ids)?;
        if results.iter().all(|r| expected[&r.id] == r.outcome) {
            println!("  api restarted: {old} → {new}");
            print_results(&results, &expected);
            return Ok((
                true,
                format!(
                    "api {old} → {new}; same verdicts {:.1} s after the restart",
                    started.elapsed().as_secs_f64()
                ),
            ));
        }
        if Instant::now() >= deadline {
            println!("  api restarted: {old} → {new}");
            print_results(&results, &expected);
            return Ok((
                false,
                format!("api {old} → {new}; verdicts differ after 30 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The flows through the control plane's relay, as `palisade observe -o json` prints them.
fn flows(bin: &Path, lab: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec!["observe", "--lab", lab, "-o", "json"];
    args.extend_from_slice(extra);
    let out = palisade(bin, &args)?;
    out.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("observe printed `{l}`")))
        .collect()
}

/// The L7 denials of the tutorial (GET /headers answered 403) are in the flows.
fn l7_denials_in_flows(bin: &Path, lab: &str) -> Result<(bool, String)> {
    let denied = flows(
        bin,
        lab,
        &[
            "-n",
            "demo",
            "--protocol",
            "http",
            "--verdict",
            "DROPPED",
            "--last",
            "1000",
        ],
    )?;
    let headers: Vec<&Value> = denied
        .iter()
        .filter(|f| {
            f["l7"]["http"]["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/headers"))
                && f["l7"]["http"]["code"] == 403
        })
        .collect();
    Ok((
        !headers.is_empty(),
        format!(
            "{} DROPPED HTTP flow(s), {} for GET /headers (403)",
            denied.len(),
            headers.len()
        ),
    ))
}

/// Every node has every other node as a WireGuard peer, with a handshake.
fn encryption_enabled(bin: &Path, lab: &Lab) -> Result<(bool, String)> {
    let out = palisade(
        bin,
        &["encrypt", "status", "--lab", lab.name(), "-o", "json"],
    )?;
    let status: Value = serde_json::from_str(&out).context("encrypt status -o json")?;
    let nodes: Vec<&Value> = match &status {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        _ => Vec::new(),
    };
    let want = lab.state().nodes.len() - 1;
    let peered = nodes
        .iter()
        .filter(|n| n["enabled"] == true)
        .filter(|n| n["peers"].as_array().is_some_and(|p| p.len() == want))
        .count();
    Ok((
        !nodes.is_empty() && peered == lab.state().nodes.len(),
        format!(
            "{peered}/{} nodes with {want} WireGuard peer(s)",
            lab.state().nodes.len()
        ),
    ))
}

/// The flows of the final round of probes: every one is a pair some probe makes, every pair the
/// tutorial allows is forwarded (no drop), and every pair it denies shows a drop.
fn only_expected_flows(
    bin: &Path,
    lab: &Lab,
    since: SystemTime,
    results: &[Observed],
) -> Result<(bool, String)> {
    // The agents' flows reach the relay asynchronously.
    std::thread::sleep(Duration::from_secs(2));
    let since = humantime::format_rfc3339(since).to_string();
    let all = flows(bin, lab.name(), &["--since", &since])?;
    let names = app::names_by_ip(lab);
    let expected = steps::expected_after_all();
    // (from, to, port, protocol) → must be allowed?
    let mut pairs: BTreeMap<(String, String, u16, String), bool> = BTreeMap::new();
    for r in results {
        let allowed = expected[&r.id] != Outcome::Dropped;
        for (to, port, proto) in r.id.flows() {
            // A lookup that ends in a dropped connection is still an allowed DNS query, except
            // where DNS itself is what is denied.
            let pair_allowed = if to == "kube-dns" && r.id != ProbeId::FrontendDns {
                true
            } else {
                allowed
            };
            pairs.insert(
                (r.id.from().into(), to.into(), port, proto.into()),
                pair_allowed,
            );
        }
    }
    let mut unexpected = Vec::new();
    let mut seen: BTreeMap<(String, String, u16, String), BTreeSet<String>> = BTreeMap::new();
    for f in &all {
        // L7 records are checked elsewhere; a reply (a trace flow of a connection's FIN or RST
        // going back) belongs to the connection its probe opened.
        if f["Type"] == "L7" || f["is_reply"] == true {
            continue;
        }
        let ip = |k: &str| f["IP"][k].as_str().and_then(|s| s.parse().ok());
        let (Some(src), Some(dst)) = (ip("source"), ip("destination")) else {
            continue;
        };
        let (proto, port) = if let Some(p) = f["l4"]["TCP"]["destination_port"].as_u64() {
            ("TCP", p)
        } else if let Some(p) = f["l4"]["UDP"]["destination_port"].as_u64() {
            ("UDP", p)
        } else {
            continue;
        };
        let name = |ip| names.get(&ip).cloned().unwrap_or_else(|| ip.to_string());
        let key = (name(src), name(dst), port as u16, proto.to_string());
        let verdict = f["verdict"].as_str().unwrap_or("?").to_string();
        if !pairs.contains_key(&key) {
            unexpected.push(format!(
                "{} → {}:{} {} {verdict}",
                key.0, key.1, key.2, key.3
            ));
        }
        seen.entry(key).or_default().insert(verdict);
    }
    let mut wrong = Vec::new();
    for (key, allowed) in &pairs {
        let v = seen.get(key);
        let dropped = v.is_some_and(|v| v.contains("DROPPED"));
        if *allowed && dropped {
            wrong.push(format!(
                "{} → {}:{} allowed but DROPPED",
                key.0, key.1, key.2
            ));
        }
        if !*allowed && !dropped {
            wrong.push(format!(
                "{} → {}:{} denied but no DROPPED flow",
                key.0, key.1, key.2
            ));
        }
    }
    for line in unexpected.iter().chain(&wrong) {
        println!("  ✗ {line}");
    }
    Ok((
        unexpected.is_empty() && wrong.is_empty() && !all.is_empty(),
        format!(
            "{} flows from the last round: {} unexpected, {} with the wrong verdict",
            all.len(),
            unexpected.len(),
            wrong.len()
        ),
    ))
}
