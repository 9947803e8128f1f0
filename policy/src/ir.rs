//! The normalized rule model every policy kind is turned into, and the normalization itself
//! (with the semantic checks serde cannot express, each reported with its field path).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use palisade_api::crd::cilium::{CidrRule, EgressRule, IngressRule, L7Rules, PortRule, Rule};
use palisade_api::crd::meta::{IntOrString, LabelSelector, Operator};
use palisade_api::crd::networkpolicy::{NetworkPolicyPeer, NetworkPolicyPort, PolicyType};
use palisade_api::crd::{CiliumNetworkPolicy, NetworkPolicy};
use regex::Regex;

use crate::labels::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, Source, split_source};
use crate::selector::{Entity, FqdnMatch, Op, Requirement, Selector};

/// Annotation that puts a policy in audit mode: its would-be denials are reported, not enforced.
pub const AUDIT_ANNOTATION: &str = "policy.palisade.io/audit";

/// IANA protocol numbers used in keys.
pub mod proto {
    /// Any protocol (wildcard).
    pub const ANY: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;

    /// Name of a protocol number.
    pub fn name(p: u8) -> &'static str {
        match p {
            ANY => "ANY",
            ICMP => "ICMP",
            TCP => "TCP",
            UDP => "UDP",
            ICMPV6 => "ICMPv6",
            SCTP => "SCTP",
            _ => "?",
        }
    }

    /// Parses a protocol name as written in suites and the CLI.
    pub fn parse(s: &str) -> Option<u8> {
        Some(match s.to_ascii_uppercase().as_str() {
            "TCP" => TCP,
            "UDP" => UDP,
            "SCTP" => SCTP,
            "ICMP" => ICMP,
            "ICMPV6" => ICMPV6,
            _ => return None,
        })
    }
}

/// Traffic direction, seen from the subject endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the endpoint.
    Ingress,
    /// Out of the endpoint.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The kind of a policy object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `cilium.io/v2` CiliumNetworkPolicy.
    CiliumNetworkPolicy,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
}

/// Identifies a policy object: kind, namespace (none when cluster-wide) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// Kind.
    pub kind: PolicyKind,
    /// Namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{:?} {ns}/{}", self.kind, self.name),
            None => write!(f, "{:?} {}", self.kind, self.name),
        }
    }
}

/// A section of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// `ingress`.
    Ingress,
    /// `ingressDeny`.
    IngressDeny,
    /// `egress`.
    Egress,
    /// `egressDeny`.
    EgressDeny,
}

impl Section {
    fn as_str(self) -> &'static str {
        match self {
            Section::Ingress => "ingress",
            Section::IngressDeny => "ingressDeny",
            Section::Egress => "egress",
            Section::EgressDeny => "egressDeny",
        }
    }
}

/// Where a rule comes from: for explanations and audit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The policy object.
    pub resource: ResourceKey,
    /// Index in `specs` (None for `spec` or a NetworkPolicy).
    pub spec: Option<usize>,
    /// Section.
    pub section: Section,
    /// Rule index in the section (None: the section as a whole, e.g. for default deny).
    pub rule: Option<usize>,
    /// Whether the policy is in audit mode.
    pub audit: bool,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.resource)?;
        let mut path = String::new();
        match self.spec {
            Some(i) => path.push_str(&format!("specs[{i}].")),
            None if self.resource.kind != PolicyKind::NetworkPolicy => path.push_str("spec."),
            None => path.push_str("spec."),
        }
        path.push_str(self.section.as_str());
        if let Some(r) = self.rule {
            path.push_str(&format!("[{r}]"));
        }
        write!(f, " {path}")?;
        if self.audit {
            f.write_str(" (audit)")?;
        }
        Ok(())
    }
}

/// Ports of a port match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// Inclusive range (`0..=65535` means every port; ICMP uses the type as the port).
    Range(u16, u16),
    /// A named container port, resolved per destination endpoint.
    Named(String),
}

/// A protocol and ports, with the L7 rules enforced on them (allow rules only).
#[derive(Debug, Clone)]
pub struct PortMatch {
    /// Protocol number (never 0 here: `ANY` is expanded).
    pub proto: u8,
    /// Ports.
    pub port: PortSpec,
    /// L7 rules: traffic is redirected to a proxy that enforces them.
    pub l7: Option<Arc<L7>>,
}

/// L7 rules of one port rule.
#[derive(Debug, Clone, Default)]
pub struct L7 {
    /// HTTP rules, ORed.
    pub http: Vec<HttpMatch>,
    /// DNS rules, ORed.
    pub dns: Vec<FqdnMatch>,
}

/// One HTTP rule, compiled.
#[derive(Debug, Clone)]
pub struct HttpMatch {
    /// Method regex (whole value).
    pub method: Option<Regex>,
    /// Path regex (whole value).
    pub path: Option<Regex>,
    /// Host regex (whole value).
    pub host: Option<Regex>,
    /// Required headers: name and optional exact value.
    pub headers: Vec<(String, Option<String>)>,
}

/// An HTTP request, for offline L7 verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
    /// Path.
    #[serde(default)]
    pub path: Option<String>,
    /// Host header.
    #[serde(default)]
    pub host: Option<String>,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl HttpMatch {
    /// Whether the request satisfies this rule.
    pub fn matches(&self, req: &HttpRequest) -> bool {
        let re = |r: &Option<Regex>, v: &Option<String>| match r {
            None => true,
            Some(r) => r.is_match(v.as_deref().unwrap_or("")),
        };
        re(&self.method, &req.method)
            && re(&self.path, &req.path)
            && re(&self.host, &req.host)
            && self.headers.iter().all(|(n, v)| {
                req.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .is_some_and(|(_, hv)| v.as_ref().is_none_or(|v| v == hv))
            })
    }
}

impl L7 {
    /// Whether an HTTP request passes (a set without HTTP rules lets HTTP through).
    pub fn allows_http(&self, req: &HttpRequest) -> bool {
        self.http.is_empty() || self.http.iter().any(|r| r.matches(req))
    }
}

/// Peers of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// Any peer (no L3 restriction): compiled to the wildcard identity 0.
    Any,
    /// Peers matched by any of these selectors.
    Selectors(Vec<Selector>),
}

/// One normalized rule: subject, direction, allow/deny, peers, L4 (and L7), origin.
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    /// Endpoints the rule applies to.
    pub subject: Selector,
    /// Direction.
    pub direction: Direction,
    /// Deny rule.
    pub deny: bool,
    /// Peers.
    pub peers: Peers,
    /// Kubernetes `ipBlock`s: also match pods whose IP is inside (and outside every except).
    pub pod_ip_blocks: Vec<(IpNet, Vec<IpNet>)>,
    /// L4; `None` means every protocol and port (an L3-only rule).
    pub l4: Option<Vec<PortMatch>>,
    /// Where it comes from.
    pub origin: Origin,
}

/// A statement that a policy puts its subjects in default deny for a direction.
#[derive(Debug, Clone)]
pub struct DefaultDeny {
    /// Endpoints concerned.
    pub subject: Selector,
    /// Direction.
    pub direction: Direction,
    /// The policy section responsible.
    pub origin: Origin,
}

/// A policy object turned into rules.
#[derive(Debug, Clone)]
pub struct NormalizedPolicy {
    /// The object.
    pub key: ResourceKey,
    /// Audit mode.
    pub audit: bool,
    /// Rules.
    pub entries: Vec<PolicyEntry>,
    /// Default-deny statements.
    pub default_deny: Vec<DefaultDeny>,
}

/// A semantic error: field path and reason (the loader adds file and document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path.
    pub path: String,
    /// Reason.
    pub reason: String,
}

fn err<T>(path: impl Into<String>, reason: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError {
        path: path.into(),
        reason: reason.into(),
    })
}

type R<T> = Result<T, FieldError>;

/// A CIDR and its exceptions.
type Block = (IpNet, Vec<IpNet>);

fn audit_of(annotations: &BTreeMap<String, String>) -> R<bool> {
    match annotations.get(AUDIT_ANNOTATION).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => err(
            format!("metadata.annotations.{AUDIT_ANNOTATION}"),
            format!("must be \"true\" or \"false\", not `{v}`"),
        ),
    }
}

fn name_of(meta: &palisade_api::crd::ObjectMeta) -> R<String> {
    match &meta.name {
        Some(n) if !n.is_empty() => Ok(n.clone()),
        _ => err("metadata.name", "a name is required"),
    }
}

// === selectors ===

/// Converts a label selector. `keys_have_source`: Cilium keys may carry `k8s:`/`reserved:`/`any:`.
fn label_reqs(sel: &LabelSelector, path: &str, keys_have_source: bool) -> R<Vec<Requirement>> {
    let split = |k: &str| -> (Option<Source>, String) {
        if keys_have_source {
            let (s, k) = split_source(k);
            (s, k.to_string())
        } else {
            (Some(Source::K8s), k.to_string())
        }
    };
    let mut out = Vec::new();
    for (k, v) in &sel.match_labels {
        if k.is_empty() {
            return err(
                format!("{path}.matchLabels"),
                "label keys must not be empty",
            );
        }
        let (source, key) = split(k);
        out.push(Requirement {
            source,
            key,
            op: Op::In(vec![v.clone()]),
        });
    }
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let (source, key) = split(&e.key);
        let op = match e.operator {
            Operator::In | Operator::NotIn if e.values.is_empty() => {
                return err(
                    format!("{p}.values"),
                    format!("operator `{:?}` needs at least one value", e.operator),
                );
            }
            Operator::Exists | Operator::DoesNotExist if !e.values.is_empty() => {
                return err(
                    format!("{p}.values"),
                    format!("operator `{:?}` takes no values", e.operator),
                );
            }
            Operator::In => Op::In(e.values.clone()),
            Operator::NotIn => Op::NotIn(e.values.clone()),
            Operator::Exists => Op::Exists,
            Operator::DoesNotExist => Op::DoesNotExist,
        };
        out.push(Requirement { source, key, op });
    }
    out.sort();
    Ok(out)
}

fn ns_req(ns: &str) -> Requirement {
    Requirement {
        source: Some(Source::K8s),
        key: NAMESPACE_LABEL.to_string(),
        op: Op::In(vec![ns.to_string()]),
    }
}

/// A Cilium peer selector; in a namespaced policy it is confined to the policy's namespace unless
/// it names the namespace label or a reserved label.
fn cilium_peer_selector(sel: &LabelSelector, path: &str, namespace: Option<&str>) -> R<Selector> {
    let mut reqs = label_reqs(sel, path, true)?;
    if let Some(ns) = namespace {
        let names_ns = reqs.iter().any(|r| r.key == NAMESPACE_LABEL);
        let reserved = reqs.iter().any(|r| r.source == Some(Source::Reserved));
        if !names_ns && !reserved {
            reqs.push(ns_req(ns));
            reqs.sort();
        }
    }
    Ok(Selector::Labels(reqs))
}

fn parse_cidr(s: &str, path: &str, allow_bare_ip: bool) -> R<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if allow_bare_ip && let Ok(a) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(a));
    }
    err(path, format!("invalid CIDR `{s}`"))
}

fn cidr_with_except(
    cidr: &str,
    except: &[String],
    path: &str,
    allow_bare_ip: bool,
) -> R<(IpNet, Vec<IpNet>)> {
    let net = parse_cidr(cidr, &format!("{path}.cidr"), allow_bare_ip)?;
    let mut ex = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let p = format!("{path}.except[{i}]");
        let en = parse_cidr(e, &p, allow_bare_ip)?;
        if !net.contains(&en) {
            return err(p, format!("except `{e}` is not inside `{cidr}`"));
        }
        ex.push(en);
    }
    Ok((net, ex))
}

// === ports ===

fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Port number or name; `min` is 0 for Cilium (0 = every port) and 1 for Kubernetes.
fn port_value(v: &IntOrString, path: &str, min: i64) -> R<PortSpec> {
    let n = match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                if valid_port_name(s) {
                    return Ok(PortSpec::Named(s.clone()));
                }
                return err(
                    path,
                    format!(
                        "`{s}` is neither a port number nor a valid port name (1-15 lowercase letters, digits, `-`)"
                    ),
                );
            }
        },
    };
    if !(min..=65535).contains(&n) {
        return err(path, format!("port {n} is out of range {min}-65535"));
    }
    if n == 0 {
        return Ok(PortSpec::Range(0, 65535));
    }
    Ok(PortSpec::Range(n as u16, n as u16))
}

fn with_end_port(spec: PortSpec, end: Option<i64>, path: &str) -> R<PortSpec> {
    match (spec, end) {
        (s, None) => Ok(s),
        (PortSpec::Named(n), Some(_)) => err(
            path,
            format!("endPort cannot be used with the named port `{n}`"),
        ),
        (PortSpec::Range(0, 65535), Some(_)) => err(path, "endPort needs a non-zero port"),
        (PortSpec::Range(lo, _), Some(e)) => {
            if !(1..=65535).contains(&e) {
                return err(path, format!("endPort {e} is out of range 1-65535"));
            }
            if e < i64::from(lo) {
                return err(path, format!("endPort {e} is lower than port {lo}"));
            }
            Ok(PortSpec::Range(lo, e as u16))
        }
    }
}

fn cilium_protocols(p: Option<&str>, path: &str) -> R<Vec<u8>> {
    Ok(match p.unwrap_or("ANY") {
        "TCP" => vec![proto::TCP],
        "UDP" => vec![proto::UDP],
        "SCTP" => vec![proto::SCTP],
        "ANY" => vec![proto::TCP, proto::UDP, proto::SCTP],
        other => {
            return err(
                path,
                format!("unknown protocol `{other}` (expected TCP, UDP, SCTP or ANY)"),
            );
        }
    })
}

fn compile_regex(s: &str, path: &str) -> R<Option<Regex>> {
    if s.is_empty() {
        return Ok(None);
    }
    match Regex::new(&format!("^(?:{s})$")) {
        Ok(r) => Ok(Some(r)),
        Err(e) => err(
            path,
            format!(
                "invalid regular expression `{s}`: {}",
                e.to_string().lines().last().unwrap_or("")
            ),
        ),
    }
}

fn fqdn_matcher(name: &Option<String>, pattern: &Option<String>, path: &str) -> R<FqdnMatch> {
    let valid = |s: &str, wild: bool| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || b == b'.'
                    || b == b'-'
                    || b == b'_'
                    || (wild && b == b'*')
            })
    };
    match (name, pattern) {
        (Some(n), None) => {
            if !valid(n, false) {
                return err(
                    format!("{path}.matchName"),
                    format!("`{n}` is not a valid DNS name"),
                );
            }
            Ok(FqdnMatch::Name(
                n.trim_end_matches('.').to_ascii_lowercase(),
            ))
        }
        (None, Some(p)) => {
            if !valid(p, true) {
                return err(
                    format!("{path}.matchPattern"),
                    format!("`{p}` is not a valid DNS pattern (a-z, 0-9, `.`, `-`, `*`)"),
                );
            }
            Ok(FqdnMatch::Pattern(
                p.trim_end_matches('.').to_ascii_lowercase(),
            ))
        }
        (Some(_), Some(_)) => err(path, "set either matchName or matchPattern, not both"),
        (None, None) => err(path, "one of matchName or matchPattern is required"),
    }
}

fn l7_rules(rules: &L7Rules, path: &str) -> R<Arc<L7>> {
    let mut l7 = L7::default();
    let http = rules.http.as_deref().unwrap_or(&[]);
    let dns = rules.dns.as_deref().unwrap_or(&[]);
    if !http.is_empty() && !dns.is_empty() {
        return err(
            path,
            "a port rule takes one kind of L7 rules: http or dns, not both",
        );
    }
    for (i, h) in http.iter().enumerate() {
        let p = format!("{path}.http[{i}]");
        let mut headers = Vec::new();
        for (j, hd) in h.headers.as_deref().unwrap_or(&[]).iter().enumerate() {
            let (n, v) = match hd.split_once(':') {
                Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
                None => (hd.trim().to_string(), None),
            };
            if n.is_empty() {
                return err(format!("{p}.headers[{j}]"), "empty header name");
            }
            headers.push((n, v));
        }
        l7.http.push(HttpMatch {
            method: compile_regex(h.method.as_deref().unwrap_or(""), &format!("{p}.method"))?,
            path: compile_regex(h.path.as_deref().unwrap_or(""), &format!("{p}.path"))?,
            host: compile_regex(h.host.as_deref().unwrap_or(""), &format!("{p}.host"))?,
            headers,
        });
    }
    for (i, d) in dns.iter().enumerate() {
        l7.dns.push(fqdn_matcher(
            &d.match_name,
            &d.match_pattern,
            &format!("{path}.dns[{i}]"),
        )?);
    }
    Ok(Arc::new(l7))
}

fn cilium_ports(
    to_ports: &[PortRule],
    path: &str,
    deny: bool,
    direction: Direction,
    out: &mut Vec<PortMatch>,
) -> R<()> {
    for (i, pr) in to_ports.iter().enumerate() {
        let p = format!("{path}.toPorts[{i}]");
        let l7 = match &pr.rules {
            // The DNS proxy sees a pod's own queries: Cilium refuses DNS rules on ingress.
            Some(r)
                if direction == Direction::Ingress
                    && r.dns.as_ref().is_some_and(|d| !d.is_empty()) =>
            {
                return err(
                    format!("{p}.rules.dns"),
                    "DNS rules are only allowed in egress rules",
                );
            }
            Some(_) if deny => {
                return err(
                    format!("{p}.rules"),
                    "L7 rules are not allowed in deny rules",
                );
            }
            Some(r) => {
                let l7 = l7_rules(r, &format!("{p}.rules"))?;
                if l7.dns.is_empty() && l7.http.is_empty() {
                    None
                } else {
                    Some(l7)
                }
            }
            None => None,
        };
        if pr.ports.is_empty() {
            // No ports: every port, every protocol Cilium's ANY covers.
            for proto in cilium_protocols(None, &p)? {
                out.push(PortMatch {
                    proto,
                    port: PortSpec::Range(0, 65535),
                    l7: l7.clone(),
                });
            }
        }
        for (j, pp) in pr.ports.iter().enumerate() {
            let pj = format!("{p}.ports[{j}]");
            let spec = port_value(&pp.port, &format!("{pj}.port"), 0)?;
            let spec = with_end_port(spec, pp.end_port, &format!("{pj}.endPort"))?;
            if let (Some(l), PortSpec::Range(lo, hi)) = (&l7, &spec)
                && !l.dns.is_empty()
                && lo != hi
            {
                return err(
                    format!("{pj}.endPort"),
                    "DNS rules do not support port ranges",
                );
            }
            for proto in cilium_protocols(pp.protocol.as_deref(), &format!("{pj}.protocol"))? {
                out.push(PortMatch {
                    proto,
                    port: spec.clone(),
                    l7: l7.clone(),
                });
            }
        }
    }
    Ok(())
}

fn icmp_type_of(v: &IntOrString, v6: bool, path: &str) -> R<u16> {
    let n = match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                let t = match (v6, s.as_str()) {
                    (false, "EchoReply") => 0,
                    (false, "DestinationUnreachable") => 3,
                    (false, "Redirect") => 5,
                    (false, "EchoRequest") => 8,
                    (false, "TimeExceeded") => 11,
                    (false, "ParameterProblem") => 12,
                    (false, "Timestamp") => 13,
                    (false, "TimestampReply") => 14,
                    (true, "DestinationUnreachable") => 1,
                    (true, "PacketTooBig") => 2,
                    (true, "TimeExceeded") => 3,
                    (true, "ParameterProblem") => 4,
                    (true, "EchoRequest") => 128,
                    (true, "EchoReply") => 129,
                    (true, "NeighborSolicitation") => 135,
                    (true, "NeighborAdvertisement") => 136,
                    _ => return err(path, format!("unknown ICMP type name `{s}`")),
                };
                return Ok(t);
            }
        },
    };
    if !(0..=255).contains(&n) {
        return err(path, format!("ICMP type {n} is out of range 0-255"));
    }
    Ok(n as u16)
}

fn cilium_icmps(
    icmps: &[palisade_api::crd::cilium::IcmpRule],
    path: &str,
    out: &mut Vec<PortMatch>,
) -> R<()> {
    for (i, r) in icmps.iter().enumerate() {
        for (j, f) in r.fields.iter().enumerate() {
            let p = format!("{path}.icmps[{i}].fields[{j}]");
            let v6 = match f.family.as_deref().unwrap_or("IPv4") {
                "IPv4" => false,
                "IPv6" => true,
                other => {
                    return err(
                        format!("{p}.family"),
                        format!("unknown family `{other}` (expected IPv4 or IPv6)"),
                    );
                }
            };
            let t = icmp_type_of(&f.icmp_type, v6, &format!("{p}.type"))?;
            out.push(PortMatch {
                proto: if v6 { proto::ICMPV6 } else { proto::ICMP },
                port: PortSpec::Range(t, t),
                l7: None,
            });
        }
    }
    Ok(())
}

// === Cilium ===

struct PeerParts<'a> {
    endpoints: Option<&'a Vec<LabelSelector>>,
    entities: Option<&'a Vec<String>>,
    cidr: Option<&'a Vec<String>>,
    cidr_set: Option<&'a Vec<CidrRule>>,
    fqdns: Option<&'a Vec<palisade_api::crd::cilium::FqdnSelector>>,
    to_ports: Option<&'a Vec<PortRule>>,
    icmps: Option<&'a Vec<palisade_api::crd::cilium::IcmpRule>>,
}

fn nonempty<T>(v: Option<&Vec<T>>) -> Option<&Vec<T>> {
    v.filter(|v| !v.is_empty())
}

#[allow(clippy::too_many_arguments)]
fn cilium_rule(
    parts: PeerParts<'_>,
    names: (&str, &str, &str, &str, &str),
    path: &str,
    deny: bool,
    namespace: Option<&str>,
    subject: &Selector,
    direction: Direction,
    origin: Origin,
) -> R<Option<PolicyEntry>> {
    let (f_ep, f_ent, f_cidr, f_set, _f_fqdn) = names;
    let mut sels = Vec::new();
    let mut any_l3 = false;
    if let Some(eps) = nonempty(parts.endpoints) {
        any_l3 = true;
        for (i, s) in eps.iter().enumerate() {
            sels.push(cilium_peer_selector(
                s,
                &format!("{path}.{f_ep}[{i}]"),
                namespace,
            )?);
        }
    }
    let mut wildcard = false;
    if let Some(ents) = nonempty(parts.entities) {
        any_l3 = true;
        for (i, e) in ents.iter().enumerate() {
            match Entity::parse(e) {
                Some(Entity::All) => wildcard = true,
                Some(ent) => sels.push(Selector::Entity(ent)),
                None => {
                    return err(
                        format!("{path}.{f_ent}[{i}]"),
                        format!(
                            "unknown entity `{e}` (expected world, world-ipv4, world-ipv6, cluster, host, remote-node, kube-apiserver, ingress, init, health, unmanaged, all or none)"
                        ),
                    );
                }
            }
        }
    }
    if let Some(cs) = nonempty(parts.cidr) {
        any_l3 = true;
        for (i, c) in cs.iter().enumerate() {
            let net = parse_cidr(c, &format!("{path}.{f_cidr}[{i}]"), true)?;
            sels.push(Selector::Cidr {
                net,
                except: vec![],
            });
        }
    }
    if let Some(cs) = nonempty(parts.cidr_set) {
        any_l3 = true;
        for (i, c) in cs.iter().enumerate() {
            let (net, except) =
                cidr_with_except(&c.cidr, &c.except, &format!("{path}.{f_set}[{i}]"), true)?;
            sels.push(Selector::Cidr { net, except });
        }
    }
    if let Some(fq) = nonempty(parts.fqdns) {
        if deny {
            return err(
                format!("{path}.toFQDNs"),
                "toFQDNs is not allowed in deny rules",
            );
        }
        if any_l3 {
            return err(
                format!("{path}.toFQDNs"),
                "toFQDNs cannot be combined with other L3 peers (toEndpoints, toEntities, toCIDR, toCIDRSet)",
            );
        }
        any_l3 = true;
        let mut ms = Vec::new();
        for (i, f) in fq.iter().enumerate() {
            ms.push(fqdn_matcher(
                &f.match_name,
                &f.match_pattern,
                &format!("{path}.toFQDNs[{i}]"),
            )?);
        }
        sels.push(Selector::Fqdn(ms));
    }
    let mut l4 = Vec::new();
    let has_ports = nonempty(parts.to_ports).is_some();
    let has_icmps = nonempty(parts.icmps).is_some();
    if let Some(tp) = nonempty(parts.to_ports) {
        cilium_ports(tp, path, deny, direction, &mut l4)?;
    }
    if let Some(ic) = nonempty(parts.icmps) {
        cilium_icmps(ic, path, &mut l4)?;
    }
    if !any_l3 && !has_ports && !has_icmps {
        // An empty rule (`- {}`) selects no peer: it only puts the subject in default deny.
        return Ok(None);
    }
    let peers = if wildcard || !any_l3 {
        Peers::Any
    } else {
        Peers::Selectors(sels)
    };
    Ok(Some(PolicyEntry {
        subject: subject.clone(),
        direction,
        deny,
        peers,
        pod_ip_blocks: vec![],
        l4: if has_ports || has_icmps {
            Some(l4)
        } else {
            None
        },
        origin,
    }))
}

/// Normalizes a CiliumNetworkPolicy (`cluster_wide` false) or CiliumClusterwideNetworkPolicy.
pub fn normalize_cilium(p: &CiliumNetworkPolicy, cluster_wide: bool) -> R<NormalizedPolicy> {
    let name = name_of(&p.metadata)?;
    let audit = audit_of(&p.metadata.annotations)?;
    let namespace = if cluster_wide {
        None
    } else {
        Some(
            p.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
        )
    };
    let key = ResourceKey {
        kind: if cluster_wide {
            PolicyKind::CiliumClusterwideNetworkPolicy
        } else {
            PolicyKind::CiliumNetworkPolicy
        },
        namespace: namespace.clone(),
        name,
    };
    let mut rules: Vec<(Option<usize>, &Rule)> = Vec::new();
    if let Some(s) = &p.spec {
        rules.push((None, s));
    }
    for (i, s) in p.specs.iter().flatten().enumerate() {
        rules.push((Some(i), s));
    }
    if rules.is_empty() {
        return err("spec", "a policy needs `spec` or `specs`");
    }
    let mut out = NormalizedPolicy {
        key: key.clone(),
        audit,
        entries: vec![],
        default_deny: vec![],
    };
    for (spec_idx, rule) in rules {
        let sp = match spec_idx {
            Some(i) => format!("specs[{i}]"),
            None => "spec".to_string(),
        };
        let subject = match (&rule.endpoint_selector, &rule.node_selector) {
            (Some(_), Some(_)) => {
                return err(sp, "set either endpointSelector or nodeSelector, not both");
            }
            (None, None) => {
                return err(
                    format!("{sp}.endpointSelector"),
                    "endpointSelector (or nodeSelector) is required",
                );
            }
            (None, Some(ns)) => {
                if !cluster_wide {
                    return err(
                        format!("{sp}.nodeSelector"),
                        "nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy",
                    );
                }
                label_reqs(ns, &format!("{sp}.nodeSelector"), true)?;
                // Host policies select nodes, not endpoints: there is no host firewall yet.
                Selector::Entity(Entity::None)
            }
            (Some(es), None) => {
                let mut reqs = label_reqs(es, &format!("{sp}.endpointSelector"), true)?;
                if let Some(ns) = &namespace {
                    reqs.retain(|r| r.key != NAMESPACE_LABEL);
                    reqs.push(ns_req(ns));
                    reqs.sort();
                }
                Selector::Labels(reqs)
            }
        };
        let origin = |section, rule| Origin {
            resource: key.clone(),
            spec: spec_idx,
            section,
            rule,
            audit,
        };
        let dd = rule.enable_default_deny.unwrap_or_default();
        let has_in = rule.ingress.as_ref().is_some_and(|v| !v.is_empty())
            || rule.ingress_deny.as_ref().is_some_and(|v| !v.is_empty());
        let has_eg = rule.egress.as_ref().is_some_and(|v| !v.is_empty())
            || rule.egress_deny.as_ref().is_some_and(|v| !v.is_empty());
        if dd.ingress.unwrap_or(has_in) {
            let section = if rule.ingress.as_ref().is_some_and(|v| !v.is_empty()) {
                Section::Ingress
            } else {
                Section::IngressDeny
            };
            out.default_deny.push(DefaultDeny {
                subject: subject.clone(),
                direction: Direction::Ingress,
                origin: origin(section, None),
            });
        }
        if dd.egress.unwrap_or(has_eg) {
            let section = if rule.egress.as_ref().is_some_and(|v| !v.is_empty()) {
                Section::Egress
            } else {
                Section::EgressDeny
            };
            out.default_deny.push(DefaultDeny {
                subject: subject.clone(),
                direction: Direction::Egress,
                origin: origin(section, None),
            });
        }
        let ins: [(Section, &Option<Vec<IngressRule>>); 2] = [
            (Section::Ingress, &rule.ingress),
            (Section::IngressDeny, &rule.ingress_deny),
        ];
        for (section, list) in ins {
            let deny = section == Section::IngressDeny;
            for (i, r) in list.iter().flatten().enumerate() {
                let path = format!("{sp}.{}[{i}]", section.as_str());
                let parts = PeerParts {
                    endpoints: r.from_endpoints.as_ref(),
                    entities: r.from_entities.as_ref(),
                    cidr: r.from_cidr.as_ref(),
                    cidr_set: r.from_cidr_set.as_ref(),
                    fqdns: None,
                    to_ports: r.to_ports.as_ref(),
                    icmps: r.icmps.as_ref(),
                };
                let names = (
                    "fromEndpoints",
                    "fromEntities",
                    "fromCIDR",
                    "fromCIDRSet",
                    "",
                );
                if let Some(e) = cilium_rule(
                    parts,
                    names,
                    &path,
                    deny,
                    namespace.as_deref(),
                    &subject,
                    Direction::Ingress,
                    origin(section, Some(i)),
                )? {
                    out.entries.push(e);
                }
            }
        }
        let egs: [(Section, &Option<Vec<EgressRule>>); 2] = [
            (Section::Egress, &rule.egress),
            (Section::EgressDeny, &rule.egress_deny),
        ];
        for (section, list) in egs {
            let deny = section == Section::EgressDeny;
            for (i, r) in list.iter().flatten().enumerate() {
                let path = format!("{sp}.{}[{i}]", section.as_str());
                let parts = PeerParts {
                    endpoints: r.to_endpoints.as_ref(),
                    entities: r.to_entities.as_ref(),
                    cidr: r.to_cidr.as_ref(),
                    cidr_set: r.to_cidr_set.as_ref(),
                    fqdns: r.to_fqdns.as_ref(),
                    to_ports: r.to_ports.as_ref(),
                    icmps: r.icmps.as_ref(),
                };
                let names = (
                    "toEndpoints",
                    "toEntities",
                    "toCIDR",
                    "toCIDRSet",
                    "toFQDNs",
                );
                if let Some(e) = cilium_rule(
                    parts,
                    names,
                    &path,
                    deny,
                    namespace.as_deref(),
                    &subject,
                    Direction::Egress,
                    origin(section, Some(i)),
                )? {
                    out.entries.push(e);
                }
            }
        }
    }
    Ok(out)
}

// === Kubernetes ===

fn k8s_peer(
    peer: &NetworkPolicyPeer,
    path: &str,
    namespace: &str,
) -> R<(Option<Selector>, Option<Block>)> {
    if let Some(ib) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return err(
                path,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            );
        }
        let (net, except) =
            cidr_with_except(&ib.cidr, &ib.except, &format!("{path}.ipBlock"), false)?;
        return Ok((
            Some(Selector::Cidr {
                net,
                except: except.clone(),
            }),
            Some((net, except)),
        ));
    }
    let mut reqs = Vec::new();
    match &peer.namespace_selector {
        Some(ns) => {
            for mut r in label_reqs(ns, &format!("{path}.namespaceSelector"), false)? {
                r.key = format!("{NAMESPACE_LABELS_PREFIX}{}", r.key);
                reqs.push(r);
            }
        }
        None => {
            if peer.pod_selector.is_none() {
                return err(
                    path,
                    "a peer needs podSelector, namespaceSelector or ipBlock",
                );
            }
            reqs.push(ns_req(namespace));
        }
    }
    if let Some(ps) = &peer.pod_selector {
        reqs.extend(label_reqs(ps, &format!("{path}.podSelector"), false)?);
    }
    reqs.sort();
    Ok((Some(Selector::Labels(reqs)), None))
}

fn k8s_ports(ports: &[NetworkPolicyPort], path: &str) -> R<Option<Vec<PortMatch>>> {
    if ports.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => proto::TCP,
            "UDP" => proto::UDP,
            "SCTP" => proto::SCTP,
            other => {
                return err(
                    format!("{pp}.protocol"),
                    format!("unknown protocol `{other}` (expected TCP, UDP or SCTP)"),
                );
            }
        };
        let spec = match &p.port {
            None => {
                if p.end_port.is_some() {
                    return err(format!("{pp}.endPort"), "endPort needs a numeric port");
                }
                PortSpec::Range(0, 65535)
            }
            Some(v) => {
                let s = port_value(v, &format!("{pp}.port"), 1)?;
                if matches!(s, PortSpec::Named(_)) && p.end_port.is_some() {
                    return err(
                        format!("{pp}.endPort"),
                        "endPort needs a numeric port, not a named port",
                    );
                }
                with_end_port(s, p.end_port, &format!("{pp}.endPort"))?
            }
        };
        out.push(PortMatch {
            proto,
            port: spec,
            l7: None,
        });
    }
    Ok(Some(out))
}

/// Normalizes a Kubernetes NetworkPolicy.
pub fn normalize_k8s(p: &NetworkPolicy) -> R<NormalizedPolicy> {
    let name = name_of(&p.metadata)?;
    let audit = audit_of(&p.metadata.annotations)?;
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let key = ResourceKey {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(namespace.clone()),
        name,
    };
    let mut reqs = label_reqs(&p.spec.pod_selector, "spec.podSelector", false)?;
    reqs.push(ns_req(&namespace));
    reqs.sort();
    let subject = Selector::Labels(reqs);
    // An empty list is defaulted like an absent one (the API server checks the length).
    let types: Vec<PolicyType> = match &p.spec.policy_types {
        Some(t) if !t.is_empty() => t.clone(),
        _ => {
            let mut t = vec![PolicyType::Ingress];
            if !p.spec.egress.is_empty() {
                t.push(PolicyType::Egress);
            }
            t
        }
    };
    let origin = |section, rule| Origin {
        resource: key.clone(),
        spec: None,
        section,
        rule,
        audit,
    };
    let mut out = NormalizedPolicy {
        key: key.clone(),
        audit,
        entries: vec![],
        default_deny: vec![],
    };
    let ingress_on = types.contains(&PolicyType::Ingress);
    let egress_on = types.contains(&PolicyType::Egress);
    if ingress_on {
        out.default_deny.push(DefaultDeny {
            subject: subject.clone(),
            direction: Direction::Ingress,
            origin: origin(Section::Ingress, None),
        });
    }
    if egress_on {
        out.default_deny.push(DefaultDeny {
            subject: subject.clone(),
            direction: Direction::Egress,
            origin: origin(Section::Egress, None),
        });
    }
    let sections = [
        (
            Direction::Ingress,
            Section::Ingress,
            ingress_on,
            p.spec
                .ingress
                .iter()
                .map(|r| (&r.from, &r.ports, "from"))
                .collect::<Vec<_>>(),
        ),
        (
            Direction::Egress,
            Section::Egress,
            egress_on,
            p.spec
                .egress
                .iter()
                .map(|r| (&r.to, &r.ports, "to"))
                .collect::<Vec<_>>(),
        ),
    ];
    for (direction, section, on, rules) in sections {
        for (i, (peers, ports, field)) in rules.into_iter().enumerate() {
            let path = format!("spec.{}[{i}]", section.as_str());
            let l4 = k8s_ports(ports, &path)?;
            let mut sels = Vec::new();
            let mut blocks = Vec::new();
            for (j, peer) in peers.iter().enumerate() {
                let (s, b) = k8s_peer(peer, &format!("{path}.{field}[{j}]"), &namespace)?;
                sels.extend(s);
                blocks.extend(b);
            }
            if !on {
                // Rules of a direction the policy does not isolate have no effect (API semantics).
                continue;
            }
            let peers = if peers.is_empty() {
                Peers::Any
            } else {
                Peers::Selectors(sels)
            };
            out.entries.push(PolicyEntry {
                subject: subject.clone(),
                direction,
                deny: false,
                peers,
                pod_ip_blocks: blocks,
                l4,
                origin: origin(section, Some(i)),
            });
        }
    }
    Ok(out)
}
