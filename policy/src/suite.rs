//! Verdict suites: a small world (namespaces, endpoints, externals), policies and expected
//! verdicts, as YAML. Pure: the caller reads the suite file and any `policiesFrom` files.
//!
//! ```yaml
//! namespaces: {x: {team: blue}}
//! endpoints:
//!   - {name: x/a, labels: {pod: a}, serviceAccount: default, ip: 10.10.0.1, node: node1,
//!      ports: [{name: serve-80-tcp, port: 80, protocol: TCP}]}
//! externals: [{name: internet, ip: 203.0.113.10}]
//! policies: [ ...objects as kubectl would apply them... ]
//! policiesFrom: [relative/path.yaml]
//! cases:
//!   - {from: x/b, to: x/a, port: 80, protocol: TCP, expect: deny}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::engine::{EndpointSpec, Engine, EngineConfig, NamedPort};
use crate::error::{DocRef, InputError};
use crate::ir::{HttpRequest, NormalizedPolicy, proto};
use crate::load;
use crate::verdict::{Connection, ConnectionVerdict, Verdict};

/// A suite file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SuiteFile {
    /// Labels per namespace (`kubernetes.io/metadata.name` is implied).
    #[serde(default)]
    pub namespaces: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// Pods.
    #[serde(default)]
    pub endpoints: Vec<EndpointDef>,
    /// Peers outside the cluster.
    #[serde(default)]
    pub externals: Vec<ExternalDef>,
    /// Policy objects.
    #[serde(default)]
    pub policies: Vec<Value>,
    /// Policy files, relative to the suite file.
    #[serde(default)]
    pub policies_from: Vec<String>,
    /// Expected verdicts.
    #[serde(default)]
    pub cases: Vec<CaseDef>,
}

/// An endpoint of a suite.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointDef {
    /// `<namespace>/<pod>`.
    pub name: String,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Service account (`default` when absent).
    #[serde(default)]
    pub service_account: Option<String>,
    /// IP (assigned from 10.244.0.0/16 when absent).
    #[serde(default)]
    pub ip: Option<String>,
    /// Node (`node1` when absent).
    #[serde(default)]
    pub node: Option<String>,
    /// Named container ports.
    #[serde(default)]
    pub ports: Vec<PortDef>,
}

/// A named container port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDef {
    /// Name.
    pub name: String,
    /// Number.
    pub port: i64,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// An external peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalDef {
    /// Name (also a DNS name for `toFQDNs`).
    pub name: String,
    /// Address.
    pub ip: String,
}

/// One expected verdict.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaseDef {
    /// Optional label for the table.
    #[serde(default)]
    pub name: Option<String>,
    /// Source: `ns/pod`, an external, or `host`.
    pub from: String,
    /// Destination: `ns/pod`, an external, or `host`.
    pub to: String,
    /// Destination port (not for ICMP).
    #[serde(default)]
    pub port: Option<i64>,
    /// `TCP` (default), `UDP`, `SCTP`, `ICMP`, `ICMPv6`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// ICMP type (8, echo request, when absent).
    #[serde(default)]
    pub icmp_type: Option<i64>,
    /// HTTP request, for L7 rules.
    #[serde(default)]
    pub http: Option<HttpRequest>,
    /// Expected verdict.
    pub expect: Verdict,
}

/// A parsed suite with its world built.
#[derive(Debug, Clone)]
pub struct Suite {
    /// File name, for messages.
    pub file: String,
    /// The suite as written.
    pub def: SuiteFile,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Suite file.
    pub suite: String,
    /// Case label.
    pub case: String,
    /// Expected verdict.
    pub expected: Verdict,
    /// Actual verdict.
    pub actual: Verdict,
    /// Rule that decided.
    pub rule: String,
    /// Whether they agree.
    pub ok: bool,
}

fn suite_err(file: &str, path: impl Into<String>, reason: impl Into<String>) -> InputError {
    InputError::new(file, DocRef::Suite, path, reason)
}

impl Suite {
    /// Parses a suite file's contents.
    pub fn parse(file: &str, text: &str) -> Result<Suite, InputError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let def: SuiteFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let p = e.path().to_string();
            suite_err(
                file,
                if p == "." { String::new() } else { p },
                e.into_inner().to_string(),
            )
        })?;
        Ok(Suite {
            file: file.to_string(),
            def,
        })
    }

    /// Paths listed in `policiesFrom` (relative to the suite file).
    pub fn policies_from(&self) -> &[String] {
        &self.def.policies_from
    }

    /// Normalizes the suite's own policies.
    pub fn inline_policies(&self) -> Result<Vec<NormalizedPolicy>, InputError> {
        let mut out = Vec::new();
        for (i, v) in self.def.policies.iter().enumerate() {
            load::load_value(&self.file, DocRef::SuitePolicy(i), "", v.clone(), &mut out)?;
        }
        Ok(out)
    }

    /// Builds the world: namespaces, endpoints, externals and every policy (`extra` are the
    /// policies loaded from `policiesFrom`).
    pub fn build(&self, extra: Vec<NormalizedPolicy>) -> Result<Engine, InputError> {
        let f = &self.file;
        let mut engine = Engine::new(EngineConfig::default());
        for (ns, labels) in &self.def.namespaces {
            engine.set_namespace(ns, labels.clone().unwrap_or_default());
        }
        let mut used: BTreeSet<IpAddr> = BTreeSet::new();
        let mut ips = Vec::new();
        for (i, e) in self.def.endpoints.iter().enumerate() {
            let ip = match &e.ip {
                Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                    suite_err(
                        f,
                        format!("endpoints[{i}].ip"),
                        format!("invalid IP address `{s}`"),
                    )
                })?),
                None => None,
            };
            if let Some(ip) = ip
                && !used.insert(ip)
            {
                return Err(suite_err(
                    f,
                    format!("endpoints[{i}].ip"),
                    format!("IP address `{ip}` is used twice"),
                ));
            }
            ips.push(ip);
        }
        let mut next: u32 = 1;
        for (i, e) in self.def.endpoints.iter().enumerate() {
            let path = format!("endpoints[{i}]");
            let Some((ns, pod)) = e.name.split_once('/') else {
                return Err(suite_err(
                    f,
                    format!("{path}.name"),
                    format!("`{}` is not `<namespace>/<pod>`", e.name),
                ));
            };
            if ns.is_empty() || pod.is_empty() || pod.contains('/') {
                return Err(suite_err(
                    f,
                    format!("{path}.name"),
                    format!("`{}` is not `<namespace>/<pod>`", e.name),
                ));
            }
            let ip = match ips[i] {
                Some(ip) => ip,
                None => loop {
                    if next > 0xFFFF {
                        return Err(suite_err(
                            f,
                            format!("{path}.ip"),
                            "no free address left in 10.244.0.0/16; give one",
                        ));
                    }
                    let cand = IpAddr::V4(Ipv4Addr::new(
                        10,
                        244,
                        (next >> 8) as u8,
                        (next & 0xff) as u8,
                    ));
                    next += 1;
                    if used.insert(cand) {
                        break cand;
                    }
                },
            };
            let mut ports = Vec::new();
            for (j, p) in e.ports.iter().enumerate() {
                let pp = format!("{path}.ports[{j}]");
                if !(1..=65535).contains(&p.port) {
                    return Err(suite_err(
                        f,
                        format!("{pp}.port"),
                        format!("port {} is out of range 1-65535", p.port),
                    ));
                }
                let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => proto::TCP,
                    "UDP" => proto::UDP,
                    "SCTP" => proto::SCTP,
                    other => {
                        return Err(suite_err(
                            f,
                            format!("{pp}.protocol"),
                            format!("unknown protocol `{other}`"),
                        ));
                    }
                };
                ports.push(NamedPort {
                    name: p.name.clone(),
                    port: p.port as u16,
                    protocol,
                });
            }
            let spec = EndpointSpec {
                name: e.name.as_str().into(),
                namespace: ns.into(),
                labels: Arc::new(e.labels.clone()),
                service_account: e.service_account.as_deref().unwrap_or("default").into(),
                ip,
                ports,
            };
            engine
                .add_endpoint(spec)
                .map_err(|err| suite_err(f, format!("{path}.name"), err.to_string()))?;
        }
        for (i, x) in self.def.externals.iter().enumerate() {
            let ip = x.ip.parse::<IpAddr>().map_err(|_| {
                suite_err(
                    f,
                    format!("externals[{i}].ip"),
                    format!("invalid IP address `{}`", x.ip),
                )
            })?;
            if x.name == "host" {
                return Err(suite_err(
                    f,
                    format!("externals[{i}].name"),
                    "`host` is reserved",
                ));
            }
            engine
                .add_external(&x.name, ip)
                .map_err(|err| suite_err(f, format!("externals[{i}].name"), err.to_string()))?;
        }
        let mut seen = BTreeSet::new();
        for p in self.inline_policies()?.into_iter().chain(extra) {
            if !seen.insert(p.key.clone()) {
                return Err(suite_err(
                    f,
                    "policies",
                    format!("{} is defined twice", p.key),
                ));
            }
            let key = p.key.clone();
            engine.replace_policy(&key, Some(p));
        }
        Ok(engine)
    }

    /// Turns case `i` into a connection.
    pub fn connection(&self, engine: &Engine, i: usize) -> Result<Connection, InputError> {
        let f = &self.file;
        let c = &self.def.cases[i];
        let path = format!("cases[{i}]");
        let from = engine
            .peer(&c.from)
            .map_err(|e| suite_err(f, format!("{path}.from"), e.to_string()))?;
        let to = engine
            .peer(&c.to)
            .map_err(|e| suite_err(f, format!("{path}.to"), e.to_string()))?;
        let protocol = match &c.protocol {
            None => proto::TCP,
            Some(p) => proto::parse(p).ok_or_else(|| {
                suite_err(
                    f,
                    format!("{path}.protocol"),
                    format!("unknown protocol `{p}` (expected TCP, UDP, SCTP, ICMP or ICMPv6)"),
                )
            })?,
        };
        let icmp = protocol == proto::ICMP || protocol == proto::ICMPV6;
        let port = if icmp {
            if c.port.is_some() {
                return Err(suite_err(
                    f,
                    format!("{path}.port"),
                    "ICMP has no port; use icmpType",
                ));
            }
            let t = c
                .icmp_type
                .unwrap_or(if protocol == proto::ICMP { 8 } else { 128 });
            if !(0..=255).contains(&t) {
                return Err(suite_err(
                    f,
                    format!("{path}.icmpType"),
                    format!("ICMP type {t} is out of range 0-255"),
                ));
            }
            t as u16
        } else {
            if c.icmp_type.is_some() {
                return Err(suite_err(
                    f,
                    format!("{path}.icmpType"),
                    "icmpType needs protocol ICMP or ICMPv6",
                ));
            }
            match c.port {
                Some(p) if (1..=65535).contains(&p) => p as u16,
                Some(p) => {
                    return Err(suite_err(
                        f,
                        format!("{path}.port"),
                        format!("port {p} is out of range 1-65535"),
                    ));
                }
                None => {
                    return Err(suite_err(
                        f,
                        format!("{path}.port"),
                        "a port is required for TCP, UDP and SCTP",
                    ));
                }
            }
        };
        Ok(Connection {
            from,
            to,
            protocol,
            port,
            http: c.http.clone(),
        })
    }

    /// A short label of case `i`.
    pub fn case_label(&self, i: usize) -> String {
        let c = &self.def.cases[i];
        if let Some(n) = &c.name {
            return n.clone();
        }
        let proto = c.protocol.clone().unwrap_or_else(|| "TCP".into());
        let l4 = match (c.port, c.icmp_type) {
            (Some(p), _) => format!("{p}/{proto}"),
            (None, Some(t)) => format!("{proto} type {t}"),
            (None, None) => proto,
        };
        let http = c
            .http
            .as_ref()
            .map(|h| {
                format!(
                    " {} {}",
                    h.method.as_deref().unwrap_or("*"),
                    h.path.as_deref().unwrap_or("*")
                )
            })
            .unwrap_or_default();
        format!("#{i} {} -> {} {l4}{http}", c.from, c.to)
    }

    /// Runs every case.
    pub fn run(&self, engine: &Engine) -> Result<Vec<(CaseResult, ConnectionVerdict)>, InputError> {
        let mut out = Vec::new();
        for i in 0..self.def.cases.len() {
            let conn = self.connection(engine, i)?;
            let v = engine.check(&conn);
            let expected = self.def.cases[i].expect;
            out.push((
                CaseResult {
                    suite: self.file.clone(),
                    case: self.case_label(i),
                    expected,
                    actual: v.verdict,
                    rule: engine.deciding_rule(&v),
                    ok: expected == v.verdict,
                },
                v,
            ));
        }
        Ok(out)
    }
}

/// Renders results as a table.
pub fn table(results: &[CaseResult]) -> String {
    let mut rows = vec![
        ["SUITE", "CASE", "EXPECTED", "ACTUAL", "DECIDING RULE"]
            .map(String::from)
            .to_vec(),
    ];
    for r in results {
        let mark = if r.ok {
            String::new()
        } else {
            " ✗".to_string()
        };
        rows.push(vec![
            r.suite.clone(),
            r.case.clone(),
            r.expected.to_string(),
            format!("{}{mark}", r.actual),
            r.rule.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            if c < 4 {
                s.push_str(cell);
                s.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            } else {
                s.push_str(cell);
            }
        }
        s.push('\n');
    }
    s
}

/// Whether a file found while walking a directory is a suite (and not a policy file kept beside
/// suites for `policiesFrom`): its first document is a mapping without `kind`.
pub fn looks_like_suite(text: &str) -> bool {
    let Some(doc) = serde_yaml::Deserializer::from_str(text).next() else {
        return false;
    };
    match Value::deserialize(doc) {
        Ok(Value::Mapping(m)) => {
            !m.contains_key(Value::String("kind".into()))
                && !m.contains_key(Value::String("apiVersion".into()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_suite_keys_and_peers_are_errors_with_paths() {
        let e = Suite::parse("s.yaml", "endpoints: [{name: x/a, lables: {}}]\n").unwrap_err();
        assert_eq!(e.path, "endpoints[0].lables");
        assert!(e.reason.contains("unknown field"), "{e}");
        let s = Suite::parse(
            "s.yaml",
            "endpoints: [{name: x/a}]\ncases: [{from: x/a, to: x/zz, port: 80, expect: allow}]\n",
        )
        .unwrap();
        let engine = s.build(vec![]).unwrap();
        let e = s.run(&engine).unwrap_err();
        assert_eq!(e.path, "cases[0].to");
        let s = Suite::parse(
            "s.yaml",
            "endpoints: [{name: x/a}, {name: x/b}]\ncases: [{from: x/a, to: x/b, expect: allow}]\n",
        )
        .unwrap();
        let e = s.run(&s.build(vec![]).unwrap()).unwrap_err();
        assert_eq!(e.path, "cases[0].port");
    }

    #[test]
    fn inline_policy_errors_name_the_list_index() {
        let text = "policies:\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {name: a}\n    spec: {podSelector: {}}\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {name: b}\n    spec: {podSelector: {}, policyTypes: [Sideways]}\n";
        let e = Suite::parse("s.yaml", text)
            .unwrap()
            .build(vec![])
            .unwrap_err();
        assert_eq!(e.document, DocRef::SuitePolicy(1));
        assert_eq!(e.path, "spec.policyTypes[0]");
        assert!(
            e.to_string()
                .starts_with("s.yaml: policies[1]: `spec.policyTypes[0]`"),
            "{e}"
        );
    }

    #[test]
    fn ips_are_assigned_around_explicit_ones_and_results_tabulate() {
        let s = Suite::parse("s.yaml", "endpoints: [{name: x/a, ip: 10.244.0.1}, {name: x/b}]\ncases: [{name: c1, from: x/a, to: x/b, port: 80, expect: allow}]\n").unwrap();
        let engine = s.build(vec![]).unwrap();
        assert_eq!(engine.endpoints()["x/b"].spec.ip.to_string(), "10.244.0.2");
        let r: Vec<CaseResult> = s
            .run(&engine)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert!(r[0].ok);
        assert!(table(&r).contains("c1"));
        assert!(looks_like_suite("cases: []\n"));
        assert!(!looks_like_suite("apiVersion: v1\nkind: List\n"));
    }
}
