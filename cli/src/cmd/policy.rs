//! `palisade policy`: offline verdict suites (`test`) and explanations (`trace`), and the policy
//! objects stored in the control plane (`apply`, `get`, `list`, `delete`, `wait`; `remote.rs`,
//! with file parsing in `objects.rs`).
//!
//! File reading lives here; the engine (`palisade-policy`) is pure.

pub(crate) mod objects;
mod remote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use palisade_policy::engine::Engine;
use palisade_policy::ir::{Direction, HttpRequest, NormalizedPolicy, proto};
use palisade_policy::load;
use palisade_policy::suite::{CaseResult, Suite, table};
use palisade_policy::verdict::{Connection, ConnectionVerdict, SideVerdict};

use super::{Output, emit};

/// Arguments of `palisade policy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run verdict suites: exit 0 when every case matches, 1 when any differs, 2 on invalid input.
    Test(TestArgs),
    /// Explain the verdict of one connection in a suite's world.
    Trace(TraceArgs),
    /// Store policy objects in the control plane (CiliumNetworkPolicy,
    /// CiliumClusterwideNetworkPolicy, NetworkPolicy: the YAML used with kubectl), and v1
    /// Namespaces, whose labels become part of their pods' identities (what a
    /// `namespaceSelector` matches; relabelling one moves its pods to new identities), and v1
    /// Pod records, where agents take the labels, service account and named ports of a pod
    /// whose CNI ADD names it without labels (as a kubelet's does; `palisade mirror` copies them
    /// from a cluster).
    ///
    /// Every document is first validated locally by the policy engine; if any is invalid the
    /// error names its file, document and field, nothing is sent, and the exit code is 2. Each
    /// object is stored under KIND/NAMESPACE/NAME (namespace `default` when omitted, `-` for
    /// CiliumClusterwideNetworkPolicy and Namespace). Prints one `kind.group/name created|configured|unchanged`
    /// line per object and the resulting policy revision. Re-applying the same objects changes
    /// nothing and keeps the revision.
    Apply(remote::ApplyArgs),
    /// Show one stored policy object.
    Get(remote::GetArgs),
    /// List the stored policy objects and the current policy revision.
    List(remote::ListArgs),
    /// Delete stored policy objects, named or as defined in files. Exit 1 when some did not
    /// exist (unless --ignore-not-found).
    Delete(remote::DeleteArgs),
    /// Wait until every live node acknowledged a policy revision: exit 0 when all did, 1 on
    /// timeout (the nodes behind are listed with the revision each acknowledged).
    Wait(remote::WaitArgs),
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// Suite files, or directories searched recursively for `*.yaml`/`*.yml`.
    #[arg(required = true)]
    suites: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct TraceArgs {
    /// Suite file providing namespaces, endpoints, externals and policies.
    #[arg(long)]
    suite: PathBuf,
    /// Source: `ns/pod`, an external, or `host`.
    #[arg(long)]
    from: String,
    /// Destination: `ns/pod`, an external, or `host`.
    #[arg(long)]
    to: String,
    /// Destination port.
    #[arg(long)]
    port: Option<u16>,
    /// Protocol: TCP, UDP, SCTP, ICMP, ICMPv6.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// ICMP type (default 8 for ICMP, 128 for ICMPv6).
    #[arg(long)]
    icmp_type: Option<u8>,
    /// HTTP method, for L7 rules.
    #[arg(long)]
    http_method: Option<String>,
    /// HTTP path, for L7 rules.
    #[arg(long)]
    http_path: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Runs `palisade policy`.
pub fn run(args: Args) -> ExitCode {
    let r = match args.command {
        Command::Test(a) => test(a),
        Command::Trace(a) => trace(a),
        Command::Apply(a) => remote::apply(&a),
        Command::Get(a) => remote::get(&a),
        Command::List(a) => remote::list(&a),
        Command::Delete(a) => remote::delete(&a),
        Command::Wait(a) => remote::wait(&a),
    };
    match r {
        Ok(code) => code,
        Err(e) => super::fail(&e),
    }
}

fn verdict_name(v: u8) -> &'static str {
    match v {
        palisade_policy::mapstate::VERDICT_ALLOW => "allow",
        palisade_policy::mapstate::VERDICT_DENY => "deny",
        palisade_policy::mapstate::VERDICT_REDIRECT => "redirect",
        _ => "?",
    }
}

pub(crate) fn collect(path: &Path, out: &mut Vec<PathBuf>, exts: &[&str]) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list `{}`", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir()
                || e.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| exts.contains(&x))
            {
                collect(&e, out, exts)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

/// Parses a suite and builds its world, loading `policiesFrom` relative to the suite.
pub(crate) fn build_suite(path: &Path) -> Result<(Suite, Engine)> {
    let suite = parse_suite(path)?;
    let engine = build_world(path, &suite)?;
    Ok((suite, engine))
}

/// Parses a suite file.
pub(crate) fn parse_suite(path: &Path) -> Result<Suite> {
    Ok(Suite::parse(&path.display().to_string(), &read(path)?)?)
}

/// Builds the world of `suite` (read from `path`): its own policies and its `policiesFrom`.
pub(crate) fn build_world(path: &Path, suite: &Suite) -> Result<Engine> {
    let mut extra: Vec<NormalizedPolicy> = Vec::new();
    for f in policy_files(path, suite)? {
        extra.extend(load::load_file(&f.display().to_string(), &read(&f)?)?);
    }
    Ok(suite.build(extra)?)
}

/// The files a suite's `policiesFrom` names, relative to the suite file.
pub(crate) fn policy_files(path: &Path, suite: &Suite) -> Result<Vec<PathBuf>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for rel in suite.policies_from() {
        collect(&base.join(rel), &mut files, &["yaml", "yml", "json"])?;
    }
    Ok(files)
}

/// The objects `palisade policy apply` would send for `suite`'s policies (its own, then those
/// of its `policiesFrom` files), each validated and keyed.
pub(crate) fn suite_objects(path: &Path, suite: &Suite) -> Result<Vec<objects::Object>> {
    let mut out = Vec::new();
    for (i, p) in suite.def.policies.iter().enumerate() {
        out.push(objects::suite_policy(&suite.file, i, p.clone())?);
    }
    for f in policy_files(path, suite)? {
        out.extend(objects::parse(&f.display().to_string(), &read(&f)?, true)?);
    }
    Ok(out)
}

fn test(a: TestArgs) -> Result<ExitCode> {
    let mut files = Vec::new();
    for s in &a.suites {
        if s.is_dir() {
            let mut found = Vec::new();
            collect(s, &mut found, &["yaml", "yml"])?;
            for f in found {
                if palisade_policy::suite::looks_like_suite(&read(&f)?) {
                    files.push(f);
                }
            }
        } else {
            files.push(s.clone());
        }
    }
    if files.is_empty() {
        return Err(anyhow!("no suite files found"));
    }
    let mut results: Vec<CaseResult> = Vec::new();
    for f in &files {
        let (suite, engine) = build_suite(f)?;
        results.extend(suite.run(&engine)?.into_iter().map(|(r, _)| r));
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    match a.output {
        Output::Json | Output::Yaml => {
            let doc = serde_json::json!({"cases": results, "passed": results.len() - failed, "failed": failed});
            emit(&a.output.render(&doc)?);
        }
        Output::Table => {
            emit(&table(&results));
            emit(&format!(
                "{} passed, {} failed\n",
                results.len() - failed,
                failed
            ));
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn side_lines(engine: &Engine, s: &SideVerdict, out: &mut Vec<String>) {
    let ep = &engine.endpoints()[s.endpoint.as_str()];
    let sp = engine.selector_policy(ep.identity);
    let d = s.direction as usize;
    out.push(format!(
        "{} at {} (identity {}):",
        s.direction, s.endpoint, ep.identity
    ));
    let mut policies: Vec<String> = sp.rules[d]
        .iter()
        .chain(sp.default_deny[d].iter())
        .filter_map(|r| engine.origin(*r))
        .map(|o| o.resource.to_string())
        .collect();
    policies.sort();
    policies.dedup();
    if policies.is_empty() {
        out.push(format!("  selected by: no policy for {}", s.direction));
    } else {
        out.push(format!("  selected by: {}", policies.join(", ")));
    }
    if sp.default_deny[d].is_empty() {
        out.push("  default deny: off (no policy enforces this direction)".to_string());
    } else {
        let by: Vec<String> = sp.default_deny[d]
            .iter()
            .filter_map(|r| engine.origin(*r))
            .map(|o| o.to_string())
            .collect();
        out.push(format!("  default deny: on, from {}", by.join(", ")));
    }
    match (&s.lookup.key, &s.lookup.value) {
        (Some(k), Some(v)) => out.push(format!(
            "  entry: {{identity {}, {}, proto {}, port {}/{}}} -> {{{}{}{}, proxy port {}, rule {}}}",
            k.identity,
            if k.direction == palisade_policy::mapstate::DIR_EGRESS { "egress" } else { "ingress" },
            proto::name(k.protocol),
            k.dport,
            k.port_prefix_len,
            verdict_name(v.verdict),
            if v.audit() { ", audit" } else { "" },
            if palisade_policy::mapstate::is_fallback(v) { ", fallback" } else { "" },
            v.proxy_port,
            v.rule
        )),
        (None, Some(v)) => out.push(format!("  ipBlock rule {} matched the peer's IP", v.rule)),
        _ => out.push("  entry: none".to_string()),
    }
    out.push(format!("  verdict: {} ({})", s.verdict, s.reason));
    let rule = if s.lookup.value.is_none() && s.verdict == palisade_policy::verdict::Verdict::Allow
    {
        "allow-localhost".to_string()
    } else {
        engine.describe_rule(s.rule, s.direction, &s.endpoint)
    };
    out.push(format!("  rule: {rule}"));
}

fn trace(a: TraceArgs) -> Result<ExitCode> {
    let (_suite, engine) = build_suite(&a.suite)?;
    let from = engine.peer(&a.from)?;
    let to = engine.peer(&a.to)?;
    let protocol =
        proto::parse(&a.protocol).ok_or_else(|| anyhow!("unknown protocol `{}`", a.protocol))?;
    let icmp = protocol == proto::ICMP || protocol == proto::ICMPV6;
    let port = if icmp {
        u16::from(
            a.icmp_type
                .unwrap_or(if protocol == proto::ICMP { 8 } else { 128 }),
        )
    } else {
        a.port
            .ok_or_else(|| anyhow!("--port is required for {}", a.protocol))?
    };
    let http = if a.http_method.is_some() || a.http_path.is_some() {
        Some(HttpRequest {
            method: a.http_method.clone(),
            path: a.http_path.clone(),
            ..Default::default()
        })
    } else {
        None
    };
    let conn = Connection {
        from,
        to,
        protocol,
        port,
        http,
    };
    let v: ConnectionVerdict = engine.check(&conn);
    match a.output {
        Output::Json | Output::Yaml => {
            let doc = serde_json::json!({"verdict": v.verdict, "rule": engine.deciding_rule(&v), "egress": v.egress, "ingress": v.ingress});
            emit(&a.output.render(&doc)?);
        }
        Output::Table => {
            let mut lines = vec![format!(
                "{} -> {} {} {}: {}",
                a.from,
                a.to,
                proto::name(protocol),
                port,
                v.verdict.to_string().to_uppercase()
            )];
            match &v.egress {
                Some(s) => side_lines(&engine, s, &mut lines),
                None => lines.push(format!(
                    "{}: source `{}` is not an endpoint: no egress policy",
                    Direction::Egress,
                    a.from
                )),
            }
            match &v.ingress {
                Some(s) => side_lines(&engine, s, &mut lines),
                None => lines.push(format!(
                    "{}: destination `{}` is not an endpoint: no ingress policy",
                    Direction::Ingress,
                    a.to
                )),
            }
            lines.push(format!("decided by: {}", engine.deciding_rule(&v)));
            emit(&format!("{}\n", lines.join("\n")));
        }
    }
    Ok(match v.verdict {
        palisade_policy::verdict::Verdict::Deny => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("palisade-policy-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("policies")).expect("mkdir");
        d
    }

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

    fn suite(expect: &str) -> String {
        format!(
            "endpoints:\n  - {{name: x/a, labels: {{pod: a}}}}\n  - {{name: y/b, labels: {{pod: b}}}}\npoliciesFrom: [policies]\ncases:\n  - {{from: y/b, to: x/a, port: 80, expect: {expect}}}\n"
        )
    }

    fn test_args(paths: Vec<PathBuf>) -> TestArgs {
        TestArgs {
            suites: paths,
            output: Output::Json,
        }
    }

    #[test]
    fn exit_codes_follow_the_convention() {
        let d = dir("codes");
        std::fs::write(d.join("policies/deny.yaml"), POLICY).expect("write");
        std::fs::write(d.join("ok.yaml"), suite("deny")).expect("write");
        // Directory walk: the policy file beside the suite is skipped, the suite runs.
        assert_eq!(
            test(test_args(vec![d.clone()])).expect("runs"),
            ExitCode::SUCCESS
        );
        std::fs::write(d.join("bad.yaml"), suite("allow")).expect("write");
        assert_eq!(
            test(test_args(vec![d.join("bad.yaml")])).expect("runs"),
            ExitCode::from(1)
        );
        std::fs::write(d.join("invalid.yaml"), "endpoints: []\ncasez: []\n").expect("write");
        let err = test(test_args(vec![d.join("invalid.yaml")])).expect_err("invalid");
        assert!(
            format!("{err:#}").contains("unknown field `casez`"),
            "{err:#}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn trace_explains_a_denial() {
        let d = dir("trace");
        std::fs::write(d.join("policies/deny.yaml"), POLICY).expect("write");
        std::fs::write(d.join("s.yaml"), suite("deny")).expect("write");
        let a = TraceArgs {
            suite: d.join("s.yaml"),
            from: "y/b".into(),
            to: "x/a".into(),
            port: Some(80),
            protocol: "TCP".into(),
            icmp_type: None,
            http_method: None,
            http_path: None,
            output: Output::Table,
        };
        assert_eq!(trace(a).expect("runs"), ExitCode::from(1));
        let _ = std::fs::remove_dir_all(&d);
    }
}
