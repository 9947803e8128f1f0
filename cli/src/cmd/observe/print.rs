//! How flows are printed: Hubble's compact line, JSON (the flow, or the whole response as
//! `jsonpb`), and a table. JSON uses the proto field names and enum value names, as Hubble's
//! output does (`IP`, `l4`, `Type`, `node_name`, `traffic_direction`, `drop_reason_desc`, ...).

use palisade_api::flow::{
    self, DropReason, Endpoint, Flow, TrafficDirection, Verdict, layer4::Protocol as L4,
    layer7::Record,
};
use palisade_api::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};
use serde_json::{Map, Value, json};

/// Output formats of `palisade observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// One line per flow, as `hubble observe` prints it.
    #[default]
    Compact,
    /// One JSON object per line: the flow.
    Json,
    /// One JSON object per line: the whole response (`flow`, `node_name`, `time`).
    Jsonpb,
    /// Aligned columns.
    Table,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn system_time(t: &prost_types::Timestamp) -> std::time::SystemTime {
    let d = std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    std::time::UNIX_EPOCH + d
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(t: &prost_types::Timestamp) -> String {
    humantime::format_rfc3339_nanos(system_time(t)).to_string()
}

/// `Nov 26 17:01:02.123` (UTC).
pub fn short_time(t: &prost_types::Timestamp) -> String {
    let s = humantime::format_rfc3339_millis(system_time(t)).to_string();
    // 2026-11-26T17:01:02.123Z
    let month = s[5..7].parse::<usize>().unwrap_or(1);
    format!(
        "{} {} {}",
        MONTHS[(month.max(1) - 1).min(11)],
        &s[8..10],
        s[11..23].trim_end_matches('Z')
    )
}

fn ports(f: &Flow) -> (Option<u32>, Option<u32>) {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(L4::Tcp(t)) => (Some(t.source_port), Some(t.destination_port)),
        Some(L4::Udp(u)) => (Some(u.source_port), Some(u.destination_port)),
        Some(L4::Sctp(s)) => (Some(s.source_port), Some(s.destination_port)),
        _ => (None, None),
    }
}

/// `demo/frontend-1:41234 (ID:1234)`, `10.0.0.9:80 (world)`.
fn endpoint(ep: Option<&Endpoint>, ip: &str, port: Option<u32>) -> String {
    let empty = Endpoint::default();
    let ep = ep.unwrap_or(&empty);
    let name = if ep.pod_name.is_empty() {
        ip.to_string()
    } else {
        format!("{}/{}", ep.namespace, ep.pod_name)
    };
    let name = match port {
        Some(p) => format!("{name}:{p}"),
        None => name,
    };
    match ep.labels.iter().find_map(|l| l.strip_prefix("reserved:")) {
        Some(r) if ep.pod_name.is_empty() => format!("{name} ({r})"),
        _ => format!("{name} (ID:{})", ep.identity),
    }
}

fn tcp_flags(f: &Flow) -> Option<String> {
    let Some(L4::Tcp(t)) = f.l4.as_ref().and_then(|l| l.protocol.as_ref()) else {
        return None;
    };
    let fl = t.flags.as_ref()?;
    let names: Vec<&str> = [
        (fl.syn, "SYN"),
        (fl.ack, "ACK"),
        (fl.fin, "FIN"),
        (fl.rst, "RST"),
        (fl.psh, "PSH"),
        (fl.urg, "URG"),
        (fl.ece, "ECE"),
        (fl.cwr, "CWR"),
        (fl.ns, "NS"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn direction(f: &Flow) -> &'static str {
    match TrafficDirection::try_from(f.traffic_direction) {
        Ok(TrafficDirection::Ingress) => "INGRESS",
        Ok(TrafficDirection::Egress) => "EGRESS",
        _ => "UNKNOWN",
    }
}

fn verdict_name(v: i32) -> &'static str {
    Verdict::try_from(v).map_or("UNKNOWN", |v| match v {
        Verdict::Unknown => "UNKNOWN",
        other => other.as_str_name(),
    })
}

fn match_name(t: u32) -> &'static str {
    match t {
        1 => "L3-Only",
        2 => "L3-L4",
        3 => "L4-Only",
        4 => "all",
        _ => "none",
    }
}

/// What happened, Hubble-style: `policy-verdict:none INGRESS ALLOWED`,
/// `drop INGRESS DROPPED (Policy denied)`, `to-endpoint FORWARDED`, `http-request FORWARDED`.
fn summary(f: &Flow) -> String {
    let ty = f.event_type.as_ref().map_or(0, |e| e.r#type);
    let v = Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown);
    let mut s = match ty {
        1 => format!(
            "drop {} DROPPED ({})",
            direction(f),
            drop_reason_text(f.drop_reason_desc)
        ),
        9 => format!(
            "policy-verdict:{} {} {}",
            match_name(f.policy_match_type),
            direction(f),
            match v {
                Verdict::Forwarded => "ALLOWED",
                Verdict::Audit => "AUDITED",
                Verdict::Dropped => "DENIED",
                _ => "UNKNOWN",
            }
        ),
        129 => match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(Record::Http(h)) => format!(
                "http-{} {} ({} {} {})",
                if h.code == 0 { "request" } else { "response" },
                verdict_name(f.verdict),
                h.method,
                h.url,
                h.code
            ),
            Some(Record::Dns(d)) => format!("dns {} ({})", verdict_name(f.verdict), d.query),
            None => format!("l7 {}", verdict_name(f.verdict)),
        },
        // A trace: the sub-type is the observation point (Cilium's TraceFromLxc is 5).
        _ => format!(
            "{} {}",
            match f.event_type.as_ref().map(|e| e.sub_type) {
                Some(5) => "from-endpoint",
                _ => "to-endpoint",
            },
            verdict_name(f.verdict)
        ),
    };
    if let Some(fl) = tcp_flags(f) {
        s.push_str(&format!(" (TCP Flags: {fl})"));
    }
    s
}

/// Hubble's text for a drop reason.
fn drop_reason_text(r: i32) -> &'static str {
    match DropReason::try_from(r) {
        Ok(DropReason::PolicyDenied) => "Policy denied",
        Ok(DropReason::PolicyDeny) => "Policy denied by denylist",
        Ok(DropReason::InvalidSourceIp) => "Invalid source ip",
        Ok(DropReason::InvalidPacketDropped) => "Invalid packet",
        _ => "Unknown reason",
    }
}

/// The compact line for one flow.
pub fn compact(f: &Flow) -> String {
    let (sport, dport) = ports(f);
    let ip = f.ip.clone().unwrap_or_default();
    let time = f.time.as_ref().map(short_time).unwrap_or_default();
    format!(
        "{time}: {} -> {} {}",
        endpoint(f.source.as_ref(), &ip.source, sport),
        endpoint(f.destination.as_ref(), &ip.destination, dport),
        summary(f)
    )
}

/// Table header.
pub const TABLE_HEADER: [&str; 5] = ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "SUMMARY"];

/// Table cells for one flow.
pub fn table_row(f: &Flow) -> [String; 5] {
    let (sport, dport) = ports(f);
    let ip = f.ip.clone().unwrap_or_default();
    [
        f.time.as_ref().map(short_time).unwrap_or_default(),
        f.node_name.clone(),
        endpoint(f.source.as_ref(), &ip.source, sport),
        endpoint(f.destination.as_ref(), &ip.destination, dport),
        summary(f),
    ]
}

fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Number(n) => n.as_u64() == Some(0) || n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        Value::Object(o) => o.is_empty(),
    };
    if !empty {
        m.insert(k.to_string(), v);
    }
}

fn endpoint_json(ep: &Endpoint) -> Value {
    let mut m = Map::new();
    put(&mut m, "ID", json!(ep.id));
    put(&mut m, "identity", json!(ep.identity));
    put(&mut m, "namespace", json!(ep.namespace));
    put(&mut m, "labels", json!(ep.labels));
    put(&mut m, "pod_name", json!(ep.pod_name));
    Value::Object(m)
}

fn l4_json(p: &L4) -> Value {
    let ports = |s: u32, d: u32| {
        let mut m = Map::new();
        put(&mut m, "source_port", json!(s));
        put(&mut m, "destination_port", json!(d));
        m
    };
    match p {
        L4::Tcp(t) => {
            let mut m = ports(t.source_port, t.destination_port);
            if let Some(fl) = &t.flags {
                let mut fm = Map::new();
                for (on, n) in [
                    (fl.fin, "FIN"),
                    (fl.syn, "SYN"),
                    (fl.rst, "RST"),
                    (fl.psh, "PSH"),
                    (fl.ack, "ACK"),
                    (fl.urg, "URG"),
                    (fl.ece, "ECE"),
                    (fl.cwr, "CWR"),
                    (fl.ns, "NS"),
                ] {
                    put(&mut fm, n, json!(on));
                }
                put(&mut m, "flags", Value::Object(fm));
            }
            json!({ "TCP": m })
        }
        L4::Udp(u) => json!({ "UDP": ports(u.source_port, u.destination_port) }),
        L4::Sctp(s) => json!({ "SCTP": ports(s.source_port, s.destination_port) }),
        L4::IcmPv4(i) => json!({ "ICMPv4": { "type": i.r#type, "code": i.code } }),
        L4::IcmPv6(i) => json!({ "ICMPv6": { "type": i.r#type, "code": i.code } }),
    }
}

fn enum_name<E: TryFrom<i32>>(v: i32, name: fn(E) -> &'static str) -> Value {
    E::try_from(v).map_or(json!(v), |e| json!(name(e)))
}

/// The flow as Hubble's JSON.
pub fn flow_json(f: &Flow) -> Value {
    let mut m = Map::new();
    if let Some(t) = &f.time {
        m.insert("time".into(), json!(rfc3339(t)));
    }
    put(&mut m, "uuid", json!(f.uuid));
    m.insert(
        "verdict".into(),
        enum_name::<Verdict>(f.verdict, |v| v.as_str_name()),
    );
    put(&mut m, "drop_reason", json!(f.drop_reason));
    if let Some(ip) = &f.ip {
        let mut im = Map::new();
        put(&mut im, "source", json!(ip.source));
        put(&mut im, "destination", json!(ip.destination));
        im.insert(
            "ipVersion".into(),
            enum_name::<flow::IpVersion>(ip.ip_version, |v| v.as_str_name()),
        );
        put(&mut im, "encrypted", json!(ip.encrypted));
        m.insert("IP".into(), Value::Object(im));
    }
    if let Some(p) = f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        m.insert("l4".into(), l4_json(p));
    }
    if let Some(s) = &f.source {
        m.insert("source".into(), endpoint_json(s));
    }
    if let Some(d) = &f.destination {
        m.insert("destination".into(), endpoint_json(d));
    }
    m.insert(
        "Type".into(),
        enum_name::<flow::FlowType>(f.r#type, |v| v.as_str_name()),
    );
    put(&mut m, "node_name", json!(f.node_name));
    if let Some(e) = &f.event_type {
        let mut em = Map::new();
        put(&mut em, "type", json!(e.r#type));
        put(&mut em, "sub_type", json!(e.sub_type));
        m.insert("event_type".into(), Value::Object(em));
    }
    m.insert(
        "traffic_direction".into(),
        enum_name::<TrafficDirection>(f.traffic_direction, |v| v.as_str_name()),
    );
    put(&mut m, "policy_match_type", json!(f.policy_match_type));
    if f.drop_reason_desc != 0 {
        m.insert(
            "drop_reason_desc".into(),
            enum_name::<DropReason>(f.drop_reason_desc, |v| v.as_str_name()),
        );
    }
    if let Some(r) = f.is_reply {
        m.insert("is_reply".into(), json!(r));
    }
    if let Some(i) = &f.interface {
        let mut im = Map::new();
        put(&mut im, "index", json!(i.index));
        put(&mut im, "name", json!(i.name));
        m.insert("interface".into(), Value::Object(im));
    }
    if let Some(l7) = &f.l7 {
        let mut lm = Map::new();
        lm.insert(
            "type".into(),
            enum_name::<flow::L7FlowType>(l7.r#type, |v| v.as_str_name()),
        );
        put(&mut lm, "latency_ns", json!(l7.latency_ns));
        match &l7.record {
            Some(Record::Http(h)) => {
                lm.insert(
                    "http".into(),
                    json!({"code": h.code, "method": h.method, "url": h.url, "protocol": h.protocol}),
                );
            }
            Some(Record::Dns(d)) => {
                lm.insert(
                    "dns".into(),
                    json!({"query": d.query, "ips": d.ips, "ttl": d.ttl, "rcode": d.rcode}),
                );
            }
            None => {}
        }
        m.insert("l7".into(), Value::Object(lm));
    }
    for (name, policies) in [
        ("egress_allowed_by", &f.egress_allowed_by),
        ("ingress_allowed_by", &f.ingress_allowed_by),
        ("egress_denied_by", &f.egress_denied_by),
        ("ingress_denied_by", &f.ingress_denied_by),
    ] {
        let list: Vec<Value> = policies.iter().map(policy_json).collect();
        put(&mut m, name, Value::Array(list));
    }
    Value::Object(m)
}

/// One `flow.Policy` as protojson prints it: empty fields left out, the 64-bit revision as a
/// string.
fn policy_json(p: &flow::Policy) -> Value {
    let mut m = Map::new();
    put(&mut m, "name", json!(p.name));
    put(&mut m, "namespace", json!(p.namespace));
    put(&mut m, "labels", json!(p.labels));
    if p.revision != 0 {
        m.insert("revision".into(), json!(p.revision.to_string()));
    }
    put(&mut m, "kind", json!(p.kind));
    Value::Object(m)
}

/// The whole response as Hubble's `jsonpb` output.
pub fn response_json(r: &GetFlowsResponse) -> Value {
    let mut m = Map::new();
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            m.insert("flow".into(), flow_json(f));
        }
        Some(ResponseTypes::LostEvents(l)) => {
            m.insert(
                "lost_events".into(),
                json!({
                    "source": enum_name::<flow::LostEventSource>(l.source, |v| v.as_str_name()),
                    "num_events_lost": l.num_events_lost,
                }),
            );
        }
        Some(ResponseTypes::NodeStatus(n)) => {
            m.insert(
                "node_status".into(),
                json!({
                    "state_change": enum_name::<palisade_api::relay::NodeState>(n.state_change, |v| v.as_str_name()),
                    "node_names": n.node_names,
                    "message": n.message,
                }),
            );
        }
        None => {}
    }
    put(&mut m, "node_name", json!(r.node_name));
    if let Some(t) = &r.time {
        m.insert("time".into(), json!(rfc3339(t)));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_api::flow::{CiliumEventType, Layer4};

    fn flow() -> Flow {
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1_795_712_462,
                nanos: 123_456_789,
            }),
            verdict: Verdict::Dropped as i32,
            drop_reason: 133,
            drop_reason_desc: DropReason::PolicyDenied as i32,
            ip: Some(flow::Ip {
                source: "10.0.1.2".into(),
                destination: "10.0.1.3".into(),
                ip_version: 1,
                encrypted: false,
            }),
            l4: Some(Layer4 {
                protocol: Some(L4::Tcp(flow::Tcp {
                    source_port: 41234,
                    destination_port: 5000,
                    flags: None,
                })),
            }),
            source: Some(Endpoint {
                identity: 1234,
                namespace: "demo".into(),
                pod_name: "frontend-1".into(),
                labels: vec!["k8s:app=frontend".into()],
                ..Endpoint::default()
            }),
            destination: Some(Endpoint {
                identity: 5678,
                namespace: "demo".into(),
                pod_name: "api-1".into(),
                ..Endpoint::default()
            }),
            r#type: 1,
            node_name: "lab-n1".into(),
            event_type: Some(CiliumEventType {
                r#type: 1,
                sub_type: 133,
            }),
            traffic_direction: TrafficDirection::Ingress as i32,
            ..Flow::default()
        }
    }

    #[test]
    fn compact_reads_like_hubble() {
        // 1_795_712_462 s = 2026-11-26T17:01:02Z.
        assert_eq!(
            compact(&flow()),
            "Nov 26 17:01:02.123: demo/frontend-1:41234 (ID:1234) -> demo/api-1:5000 (ID:5678) drop INGRESS DROPPED (Policy denied)"
        );
        let mut f = flow();
        f.verdict = Verdict::Forwarded as i32;
        f.drop_reason_desc = 0;
        f.event_type = Some(CiliumEventType {
            r#type: 9,
            sub_type: 0,
        });
        f.destination = Some(Endpoint {
            identity: 2,
            labels: vec!["reserved:world".into()],
            ..Endpoint::default()
        });
        assert!(
            compact(&f).ends_with("-> 10.0.1.3:5000 (world) policy-verdict:none INGRESS ALLOWED"),
            "{}",
            compact(&f)
        );
    }

    #[test]
    fn json_has_hubbles_field_names() {
        let v = flow_json(&flow());
        assert_eq!(v["time"], "2026-11-26T17:01:02.123456789Z");
        assert_eq!(v["verdict"], "DROPPED");
        assert_eq!(v["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(v["IP"]["source"], "10.0.1.2");
        assert_eq!(v["IP"]["ipVersion"], "IPv4");
        assert_eq!(v["l4"]["TCP"]["destination_port"], 5000);
        assert_eq!(v["source"]["pod_name"], "frontend-1");
        assert_eq!(v["source"]["identity"], 1234);
        assert_eq!(v["Type"], "L3_L4");
        assert_eq!(v["node_name"], "lab-n1");
        assert_eq!(v["traffic_direction"], "INGRESS");
        let r = GetFlowsResponse {
            node_name: "lab-n1".into(),
            time: flow().time,
            response_types: Some(ResponseTypes::Flow(flow())),
        };
        let v = response_json(&r);
        assert_eq!(v["flow"]["verdict"], "DROPPED");
        assert_eq!(v["node_name"], "lab-n1");
        // No deciding policy: none of the four fields.
        let v = flow_json(&flow());
        for k in [
            "egress_allowed_by",
            "ingress_allowed_by",
            "egress_denied_by",
            "ingress_denied_by",
        ] {
            assert!(v.get(k).is_none(), "{k}: {v}");
        }
    }

    #[test]
    fn deciding_policies_print_as_hubbles_protojson_and_not_in_compact() {
        let mut f = flow();
        f.verdict = Verdict::Forwarded as i32;
        f.drop_reason_desc = 0;
        f.ingress_allowed_by = vec![flow::Policy {
            name: "api-in".into(),
            namespace: "demo".into(),
            labels: vec!["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy".into()],
            revision: 12,
            kind: "CiliumNetworkPolicy".into(),
        }];
        f.egress_denied_by = vec![flow::Policy {
            name: "lockdown".into(),
            kind: "CiliumClusterwideNetworkPolicy".into(),
            ..flow::Policy::default()
        }];
        let v = flow_json(&f);
        assert_eq!(
            v["ingress_allowed_by"],
            json!([{
                "name": "api-in",
                "namespace": "demo",
                "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy"],
                "revision": "12",
                "kind": "CiliumNetworkPolicy",
            }])
        );
        // Empty fields are left out, as protojson does.
        assert_eq!(
            v["egress_denied_by"],
            json!([{"name": "lockdown", "kind": "CiliumClusterwideNetworkPolicy"}])
        );
        assert!(v.get("egress_allowed_by").is_none() && v.get("ingress_denied_by").is_none());
        // Hubble's compact output does not print them.
        let line = compact(&f);
        assert!(
            !line.contains("api-in") && !line.contains("lockdown"),
            "{line}"
        );
    }
}
