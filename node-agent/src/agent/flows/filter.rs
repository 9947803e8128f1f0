//! Hubble `FlowFilter`s, compiled once per request and evaluated per flow. Pure: no IO.
//!
//! A request's flows are those matched by any whitelist filter (all flows when there is none)
//! and by no blacklist filter. Within one filter every field set must match; a field's list
//! matches when any of its entries does (Hubble's semantics). Values are checked when the
//! filter is compiled: a bad one is an error naming the filter and the field.

use std::net::IpAddr;

use ipnet::IpNet;
use palisade_api::flow::{
    self, DropReason, EventTypeFilter, Flow, FlowFilter, IpVersion, TcpFlags, TrafficDirection,
    Verdict, layer4::Protocol as L4, layer7::Record,
};
use regex::Regex;

/// A filter value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct FilterError {
    /// Where: `whitelist[0].source_ip`.
    pub field: String,
    /// What is wrong, with the value.
    pub reason: String,
}

/// The compiled whitelist and blacklist of one request.
#[derive(Debug, Default)]
pub struct FlowFilters {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl FlowFilters {
    /// Compiles both lists.
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        let compile = |name: &str, list: &[FlowFilter]| {
            list.iter()
                .enumerate()
                .map(|(i, f)| Compiled::new(f, &format!("{name}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            whitelist: compile("whitelist", whitelist)?,
            blacklist: compile("blacklist", blacklist)?,
        })
    }

    /// Whether `flow` is selected.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

/// `namespace/pod-prefix`: either part may be empty.
#[derive(Debug)]
struct PodSel {
    namespace: Option<String>,
    prefix: String,
}

/// One label requirement: `[source:]key`, with `=value`, `!=value`, or existence (`!` negates).
#[derive(Debug)]
struct LabelReq {
    source: Option<String>,
    key: String,
    op: LabelOp,
}

#[derive(Debug)]
enum LabelOp {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
}

/// `404` (exact) or `4+` (class).
#[derive(Debug)]
enum StatusSel {
    Exact(u32),
    Class(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmpv4,
    Icmpv6,
    Sctp,
    Http,
    Dns,
}

#[derive(Debug, Default)]
struct Compiled {
    uuid: Vec<String>,
    source_ip: Vec<IpNet>,
    destination_ip: Vec<IpNet>,
    source_pod: Vec<PodSel>,
    destination_pod: Vec<PodSel>,
    source_label: Vec<Vec<LabelReq>>,
    destination_label: Vec<Vec<LabelReq>>,
    source_identity: Vec<u32>,
    destination_identity: Vec<u32>,
    /// FQDN, service and workload filters: Palisade's flows carry none of these yet, so such a
    /// filter matches no flow (rather than being ignored and matching all).
    never: bool,
    traffic_direction: Vec<i32>,
    verdict: Vec<i32>,
    drop_reason: Vec<i32>,
    event_type: Vec<EventTypeFilter>,
    http_status: Vec<StatusSel>,
    protocol: Vec<Proto>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    reply: Vec<bool>,
    dns_query: Vec<Regex>,
    http_method: Vec<String>,
    http_path: Vec<Regex>,
    tcp_flags: Vec<TcpFlags>,
    node_name: Vec<Regex>,
    ip_version: Vec<i32>,
}

fn err(at: &str, field: &str, reason: String) -> FilterError {
    FilterError {
        field: format!("{at}.{field}"),
        reason,
    }
}

fn ip_net(at: &str, field: &str, s: &str) -> Result<IpNet, FilterError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    s.parse::<IpNet>().map_err(|_| {
        err(
            at,
            field,
            format!("`{s}` is neither an IP address nor a CIDR"),
        )
    })
}

fn pod_sel(at: &str, field: &str, s: &str) -> Result<PodSel, FilterError> {
    if s.is_empty() {
        return Err(err(at, field, "empty pod selector".into()));
    }
    Ok(match s.split_once('/') {
        Some(("", _)) => {
            return Err(err(
                at,
                field,
                format!("`{s}`: the namespace before `/` is empty"),
            ));
        }
        Some((ns, prefix)) => PodSel {
            namespace: Some(ns.to_string()),
            prefix: prefix.to_string(),
        },
        None => PodSel {
            namespace: None,
            prefix: s.to_string(),
        },
    })
}

fn label_key(at: &str, field: &str, raw: &str) -> Result<(Option<String>, String), FilterError> {
    let raw = raw.trim();
    let (source, key) = match raw.split_once(':') {
        Some((s, k)) => (Some(s.to_string()), k),
        None => (None, raw),
    };
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if !ok {
        return Err(err(at, field, format!("`{raw}` is not a label key")));
    }
    Ok((source, key.to_string()))
}

/// Parses `k8s:app=web,env!=prod,tier,!debug` (comma-separated requirements, all must hold).
fn label_selector(at: &str, field: &str, s: &str) -> Result<Vec<LabelReq>, FilterError> {
    if s.trim().is_empty() {
        return Err(err(at, field, "empty label selector".into()));
    }
    s.split(',')
        .map(|part| {
            let part = part.trim();
            let (key, op) = if let Some((k, v)) = part.split_once("!=") {
                (k, LabelOp::NotEq(v.trim().to_string()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, LabelOp::Eq(v.trim().to_string()))
            } else if let Some(k) = part.strip_prefix('!') {
                (k, LabelOp::NotExists)
            } else {
                (part, LabelOp::Exists)
            };
            let (source, key) = label_key(at, field, key)?;
            Ok(LabelReq { source, key, op })
        })
        .collect()
}

fn status_sel(at: &str, s: &str) -> Result<StatusSel, FilterError> {
    let bad = || {
        err(
            at,
            "http_status_code",
            format!("`{s}`: expected a status such as `404` or a class such as `4+`"),
        )
    };
    if let Some(class) = s.strip_suffix('+') {
        let c: u32 = class.parse().map_err(|_| bad())?;
        if !(1..=5).contains(&c) {
            return Err(bad());
        }
        return Ok(StatusSel::Class(c));
    }
    let code: u32 = s.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&code) {
        return Err(bad());
    }
    Ok(StatusSel::Exact(code))
}

fn protocol(at: &str, s: &str) -> Result<Proto, FilterError> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" | "icmpv4" => Proto::Icmpv4,
        "icmpv6" => Proto::Icmpv6,
        "sctp" => Proto::Sctp,
        "http" => Proto::Http,
        "dns" => Proto::Dns,
        _ => {
            return Err(err(
                at,
                "protocol",
                format!("`{s}`: expected one of tcp, udp, icmp, icmpv4, icmpv6, sctp, http, dns"),
            ));
        }
    })
}

fn port(at: &str, field: &str, s: &str) -> Result<u16, FilterError> {
    s.parse()
        .map_err(|_| err(at, field, format!("`{s}` is not a port number (0-65535)")))
}

fn regex(at: &str, field: &str, s: &str) -> Result<Regex, FilterError> {
    Regex::new(s).map_err(|e| err(at, field, format!("`{s}`: {e}")))
}

/// `*` matches any run of characters; everything else is literal; the whole name must match.
fn glob(at: &str, s: &str) -> Result<Regex, FilterError> {
    if s.is_empty() {
        return Err(err(at, "node_name", "empty node name pattern".into()));
    }
    let body: Vec<String> = s.split('*').map(regex::escape).collect();
    regex(at, "node_name", &format!("^{}$", body.join(".*")))
}

fn enum_values<E: TryFrom<i32>>(
    at: &str,
    field: &str,
    values: &[i32],
) -> Result<Vec<i32>, FilterError> {
    values
        .iter()
        .map(|v| {
            E::try_from(*v)
                .map(|_| *v)
                .map_err(|_| err(at, field, format!("unknown value {v}")))
        })
        .collect()
}

fn all<T>(
    at: &str,
    field: &str,
    values: &[String],
    f: impl Fn(&str, &str, &str) -> Result<T, FilterError>,
) -> Result<Vec<T>, FilterError> {
    values.iter().map(|v| f(at, field, v)).collect()
}

impl Compiled {
    fn new(f: &FlowFilter, at: &str) -> Result<Self, FilterError> {
        Ok(Self {
            uuid: f.uuid.clone(),
            source_ip: all(at, "source_ip", &f.source_ip, ip_net)?,
            destination_ip: all(at, "destination_ip", &f.destination_ip, ip_net)?,
            source_pod: all(at, "source_pod", &f.source_pod, pod_sel)?,
            destination_pod: all(at, "destination_pod", &f.destination_pod, pod_sel)?,
            source_label: all(at, "source_label", &f.source_label, label_selector)?,
            destination_label: all(
                at,
                "destination_label",
                &f.destination_label,
                label_selector,
            )?,
            source_identity: f.source_identity.clone(),
            destination_identity: f.destination_identity.clone(),
            never: !f.source_fqdn.is_empty()
                || !f.destination_fqdn.is_empty()
                || !f.source_service.is_empty()
                || !f.destination_service.is_empty()
                || !f.source_workload.is_empty()
                || !f.destination_workload.is_empty(),
            traffic_direction: enum_values::<TrafficDirection>(
                at,
                "traffic_direction",
                &f.traffic_direction,
            )?,
            verdict: enum_values::<Verdict>(at, "verdict", &f.verdict)?,
            drop_reason: enum_values::<DropReason>(at, "drop_reason_desc", &f.drop_reason_desc)?,
            event_type: f.event_type.clone(),
            http_status: f
                .http_status_code
                .iter()
                .map(|s| status_sel(at, s))
                .collect::<Result<_, _>>()?,
            protocol: f
                .protocol
                .iter()
                .map(|s| protocol(at, s))
                .collect::<Result<_, _>>()?,
            source_port: all(at, "source_port", &f.source_port, port)?,
            destination_port: all(at, "destination_port", &f.destination_port, port)?,
            reply: f.reply.clone(),
            dns_query: all(at, "dns_query", &f.dns_query, regex)?,
            http_method: f
                .http_method
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            http_path: all(at, "http_path", &f.http_path, regex)?,
            tcp_flags: f.tcp_flags.clone(),
            node_name: f
                .node_name
                .iter()
                .map(|s| glob(at, s))
                .collect::<Result<_, _>>()?,
            ip_version: enum_values::<IpVersion>(at, "ip_version", &f.ip_version)?,
        })
    }

    fn matches(&self, flow: &Flow) -> bool {
        if self.never {
            return false;
        }
        let ip = flow.ip.as_ref();
        let src_ip = ip.and_then(|i| i.source.parse::<IpAddr>().ok());
        let dst_ip = ip.and_then(|i| i.destination.parse::<IpAddr>().ok());
        let empty = flow::Endpoint::default();
        let src = flow.source.as_ref().unwrap_or(&empty);
        let dst = flow.destination.as_ref().unwrap_or(&empty);
        let (sport, dport) = ports(flow);
        let http = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(Record::Http(h)) => Some(h),
            _ => None,
        };
        let dns = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(Record::Dns(d)) => Some(d),
            _ => None,
        };
        any(&self.uuid, |u| *u == flow.uuid)
            && any(&self.source_ip, |n| src_ip.is_some_and(|a| n.contains(&a)))
            && any(&self.destination_ip, |n| {
                dst_ip.is_some_and(|a| n.contains(&a))
            })
            && any(&self.source_pod, |p| pod_matches(p, src))
            && any(&self.destination_pod, |p| pod_matches(p, dst))
            && any(&self.source_label, |s| labels_match(s, &src.labels))
            && any(&self.destination_label, |s| labels_match(s, &dst.labels))
            && any(&self.source_identity, |i| *i == src.identity)
            && any(&self.destination_identity, |i| *i == dst.identity)
            && any(&self.traffic_direction, |d| *d == flow.traffic_direction)
            && any(&self.verdict, |v| *v == flow.verdict)
            && any(&self.drop_reason, |r| *r == flow.drop_reason_desc)
            && any(&self.event_type, |e| {
                flow.event_type.as_ref().is_some_and(|t| {
                    t.r#type == e.r#type && (!e.match_sub_type || t.sub_type == e.sub_type)
                })
            })
            && any(&self.http_status, |s| {
                http.is_some_and(|h| match s {
                    StatusSel::Exact(c) => h.code == *c,
                    StatusSel::Class(c) => h.code / 100 == *c,
                })
            })
            && any(&self.protocol, |p| protocol_matches(*p, flow))
            && any(&self.source_port, |p| sport == Some(*p))
            && any(&self.destination_port, |p| dport == Some(*p))
            && any(&self.reply, |r| flow.is_reply == Some(*r))
            && any(&self.dns_query, |re| {
                dns.is_some_and(|d| re.is_match(&d.query))
            })
            && any(&self.http_method, |m| {
                http.is_some_and(|h| h.method.eq_ignore_ascii_case(m))
            })
            && any(&self.http_path, |re| {
                http.is_some_and(|h| re.is_match(url_path(&h.url)))
            })
            && any(&self.tcp_flags, |want| tcp_flags_match(want, flow))
            && any(&self.node_name, |re| re.is_match(&flow.node_name))
            && any(&self.ip_version, |v| ip.is_some_and(|i| i.ip_version == *v))
    }
}

/// An empty list does not constrain; otherwise any entry must match.
fn any<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

fn ports(flow: &Flow) -> (Option<u16>, Option<u16>) {
    match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(L4::Tcp(t)) => (Some(t.source_port as u16), Some(t.destination_port as u16)),
        Some(L4::Udp(u)) => (Some(u.source_port as u16), Some(u.destination_port as u16)),
        Some(L4::Sctp(s)) => (Some(s.source_port as u16), Some(s.destination_port as u16)),
        _ => (None, None),
    }
}

fn pod_matches(sel: &PodSel, ep: &flow::Endpoint) -> bool {
    sel.namespace.as_ref().is_none_or(|ns| *ns == ep.namespace)
        && (sel.prefix.is_empty()
            || (!ep.pod_name.is_empty() && ep.pod_name.starts_with(&sel.prefix)))
}

/// `source:key=value` (or `source:key`) into its parts.
fn split_label(l: &str) -> (&str, &str, &str) {
    let (source, kv) = l.split_once(':').unwrap_or(("", l));
    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
    (source, k, v)
}

fn labels_match(reqs: &[LabelReq], labels: &[String]) -> bool {
    reqs.iter().all(|r| {
        let mut found = labels.iter().map(|l| split_label(l)).filter(|(s, k, _)| {
            *k == r.key
                && r.source
                    .as_deref()
                    .is_none_or(|want| want == "any" || want == *s)
        });
        match &r.op {
            LabelOp::Exists => found.next().is_some(),
            LabelOp::NotExists => found.next().is_none(),
            LabelOp::Eq(v) => found.any(|(_, _, have)| have == v),
            LabelOp::NotEq(v) => found.all(|(_, _, have)| have != v),
        }
    })
}

fn protocol_matches(p: Proto, flow: &Flow) -> bool {
    let l4 = flow.l4.as_ref().and_then(|l| l.protocol.as_ref());
    let l7 = flow.l7.as_ref().and_then(|l| l.record.as_ref());
    match p {
        Proto::Tcp => matches!(l4, Some(L4::Tcp(_))),
        Proto::Udp => matches!(l4, Some(L4::Udp(_))),
        Proto::Icmpv4 => matches!(l4, Some(L4::IcmPv4(_))),
        Proto::Icmpv6 => matches!(l4, Some(L4::IcmPv6(_))),
        Proto::Sctp => matches!(l4, Some(L4::Sctp(_))),
        Proto::Http => matches!(l7, Some(Record::Http(_))),
        Proto::Dns => matches!(l7, Some(Record::Dns(_))),
    }
}

fn url_path(url: &str) -> &str {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, r)| r.find('/').map_or("/", |i| &r[i..]));
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// Every flag set in `want` is set on the flow's TCP header.
fn tcp_flags_match(want: &TcpFlags, flow: &Flow) -> bool {
    let Some(L4::Tcp(t)) = flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) else {
        return false;
    };
    let Some(have) = t.flags.as_ref() else {
        return false;
    };
    let bits = |f: &TcpFlags| [f.fin, f.syn, f.rst, f.psh, f.ack, f.urg, f.ece, f.cwr, f.ns];
    bits(want).iter().zip(bits(have)).all(|(w, h)| !*w || h)
}

#[cfg(test)]
mod tests;
