//! The web UI's view of a flow: the Hubble record flattened into what the table and the service
//! map show (workload names, a protocol word, an L7/DNS summary), serialized as JSON. Pure.

use palisade_api::flow::{self, layer4, layer7};
use serde::Serialize;

/// Label keys that name a workload (the first one present wins), as the Hubble UI groups pods.
const WORKLOAD_LABELS: [&str; 4] = ["app.kubernetes.io/name", "k8s-app", "app", "name"];

/// One side of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    /// The workload this side belongs to (see [`workload_of`]).
    pub workload: String,
    /// Pod namespace (empty outside the cluster).
    pub namespace: String,
    /// Pod name (empty when the observing node does not host it).
    pub pod: String,
    /// Security identity.
    pub identity: u32,
    /// Address.
    pub ip: String,
    /// Transport port (0 for ICMP or unknown).
    pub port: u32,
}

/// An HTTP request or response seen by the L7 proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Http {
    /// Method.
    pub method: String,
    /// Path (and query) of the URL.
    pub path: String,
    /// Status code (0 on a request record).
    pub status: u32,
}

/// A DNS record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dns {
    /// The query name.
    pub query: String,
    /// Response code (0 NOERROR, 3 NXDOMAIN, ...).
    pub rcode: u32,
    /// Query types (`A`, `AAAA`, ...).
    pub qtypes: Vec<String>,
    /// Addresses in the answer.
    pub ips: Vec<String>,
}

/// One flow as the UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowView {
    /// Unique id (node and sequence number).
    pub uuid: String,
    /// Nanoseconds since the epoch (the UI's polling cursor); a string in JSON, whose numbers
    /// lose precision past 2^53.
    #[serde(serialize_with = "as_string")]
    pub time_ns: i128,
    /// RFC 3339 time.
    pub time: String,
    /// The node that observed it.
    pub node: String,
    /// FORWARDED, DROPPED, ...
    pub verdict: String,
    /// Hubble's drop reason name (empty unless dropped).
    pub drop_reason: String,
    /// INGRESS, EGRESS or TRAFFIC_DIRECTION_UNKNOWN.
    pub direction: String,
    /// Whether it is a reply packet of a connection.
    pub is_reply: bool,
    /// TCP, UDP, ICMPv4, ICMPv6, SCTP, HTTP or DNS (the L7 protocol when there is one).
    pub protocol: String,
    /// Source.
    pub source: Side,
    /// Destination.
    pub destination: Side,
    /// HTTP details (L7 flows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    /// DNS details (L7 flows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// One line for the table: flags, or the L7 request and answer.
    pub summary: String,
}

fn as_string<S: serde::Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The value of a label `source:key=value` (or `key=value`) whose key is `key`.
fn label_value<'a>(labels: &'a [String], key: &str) -> Option<&'a str> {
    labels.iter().find_map(|l| {
        let kv = l.split_once(':').map_or(l.as_str(), |(_, kv)| kv);
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// The workload an endpoint belongs to, the service map's node: `namespace/app` from the first
/// workload label present (pods of one deployment share it), else `namespace/pod`; outside the
/// cluster the reserved identity's name (`world`, `host`, `remote-node`, ...); else
/// `identity-N` (an identity this node has not learned the labels of yet).
pub fn workload_of(ep: &flow::Endpoint) -> String {
    if let Some(name) = WORKLOAD_LABELS
        .iter()
        .find_map(|k| label_value(&ep.labels, k))
    {
        return format!("{}/{name}", ep.namespace);
    }
    if !ep.pod_name.is_empty() {
        return format!("{}/{}", ep.namespace, ep.pod_name);
    }
    if let Some(reserved) = ep.labels.iter().find_map(|l| l.strip_prefix("reserved:")) {
        return reserved.to_string();
    }
    format!("identity-{}", ep.identity)
}

fn side(ep: Option<&flow::Endpoint>, ip: String, port: u32) -> Side {
    let default = flow::Endpoint::default();
    let ep = ep.unwrap_or(&default);
    Side {
        workload: workload_of(ep),
        namespace: ep.namespace.clone(),
        pod: ep.pod_name.clone(),
        identity: ep.identity,
        ip,
        port,
    }
}

/// RFC 3339 with nanoseconds, UTC; empty for a time before the epoch or out of range.
fn rfc3339(ns: i128) -> String {
    u64::try_from(ns)
        .ok()
        .and_then(|ns| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_nanos(ns)))
        .map(|t| humantime::format_rfc3339_nanos(t).to_string())
        .unwrap_or_default()
}

fn tcp_flags(f: &flow::TcpFlags) -> String {
    let names = [
        (f.syn, "SYN"),
        (f.ack, "ACK"),
        (f.fin, "FIN"),
        (f.rst, "RST"),
        (f.psh, "PSH"),
    ];
    names
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The path (and query) of an HTTP URL, or the URL when it has no scheme.
fn url_path(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map_or("/".to_string(), |i| rest[i..].to_string()),
        None => url.to_string(),
    }
}

impl FlowView {
    /// The view of `f`.
    pub fn of(f: &flow::Flow) -> FlowView {
        let time_ns = f.time.as_ref().map_or(0, |t| {
            i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
        });
        let (src_ip, dst_ip) =
            f.ip.as_ref()
                .map(|ip| (ip.source.clone(), ip.destination.clone()))
                .unwrap_or_default();
        let (mut protocol, src_port, dst_port, mut summary) =
            match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
                Some(layer4::Protocol::Tcp(t)) => (
                    "TCP",
                    t.source_port,
                    t.destination_port,
                    t.flags.as_ref().map(tcp_flags).unwrap_or_default(),
                ),
                Some(layer4::Protocol::Udp(u)) => {
                    ("UDP", u.source_port, u.destination_port, String::new())
                }
                Some(layer4::Protocol::Sctp(u)) => {
                    ("SCTP", u.source_port, u.destination_port, String::new())
                }
                Some(layer4::Protocol::IcmPv4(i)) => {
                    ("ICMPv4", 0, 0, format!("type {} code {}", i.r#type, i.code))
                }
                Some(layer4::Protocol::IcmPv6(i)) => {
                    ("ICMPv6", 0, 0, format!("type {} code {}", i.r#type, i.code))
                }
                None => ("", 0, 0, String::new()),
            };
        let (mut http, mut dns) = (None, None);
        match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(layer7::Record::Http(h)) => {
                protocol = "HTTP";
                let v = Http {
                    method: h.method.clone(),
                    path: url_path(&h.url),
                    status: h.code,
                };
                summary = if v.status == 0 {
                    format!("{} {}", v.method, v.path)
                } else {
                    format!("{} {} {}", v.method, v.path, v.status)
                };
                http = Some(v);
            }
            Some(layer7::Record::Dns(d)) => {
                protocol = "DNS";
                let v = Dns {
                    query: d.query.clone(),
                    rcode: d.rcode,
                    qtypes: d.qtypes.clone(),
                    ips: d.ips.clone(),
                };
                summary = format!("{} {} rcode {}", v.qtypes.join(","), v.query, v.rcode)
                    .trim()
                    .to_string();
                dns = Some(v);
            }
            None => {}
        }
        let verdict = flow::Verdict::try_from(f.verdict)
            .map(|v| v.as_str_name())
            .unwrap_or("VERDICT_UNKNOWN");
        // Unknown (0) says nothing: an L7 denial carries its status (403) instead.
        let drop_reason = if f.verdict == flow::Verdict::Dropped as i32 && f.drop_reason_desc != 0 {
            flow::DropReason::try_from(f.drop_reason_desc)
                .map(|r| r.as_str_name().to_string())
                .unwrap_or_else(|_| f.drop_reason_desc.to_string())
        } else {
            String::new()
        };
        FlowView {
            uuid: f.uuid.clone(),
            time_ns,
            time: rfc3339(time_ns),
            node: f.node_name.clone(),
            verdict: verdict.to_string(),
            drop_reason,
            direction: flow::TrafficDirection::try_from(f.traffic_direction)
                .map(|d| d.as_str_name())
                .unwrap_or("TRAFFIC_DIRECTION_UNKNOWN")
                .to_string(),
            is_reply: f.is_reply.unwrap_or(false),
            protocol: protocol.to_string(),
            source: side(f.source.as_ref(), src_ip, src_port),
            destination: side(f.destination.as_ref(), dst_ip, dst_port),
            http,
            dns,
            summary,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A distinct address per (namespace, pod, labels).
    fn fake_ip((ns, pod, labels): (&str, &str, &[&str])) -> String {
        let sum: u32 = ns
            .bytes()
            .chain(pod.bytes())
            .chain(labels.concat().bytes())
            .map(u32::from)
            .sum();
        format!("10.{}.{}.{}", sum >> 16, (sum >> 8) & 0xff, sum & 0xff)
    }

    /// A TCP flow between two endpoints, for this module's and the map's tests.
    pub(crate) fn tcp_flow(
        src: (&str, &str, &[&str]),
        dst: (&str, &str, &[&str]),
        verdict: flow::Verdict,
        port: u32,
    ) -> flow::Flow {
        let ep = |(ns, pod, labels): (&str, &str, &[&str])| flow::Endpoint {
            namespace: ns.to_string(),
            pod_name: pod.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            identity: 1000,
            ..Default::default()
        };
        flow::Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1_795_712_462,
                nanos: 5,
            }),
            uuid: "n1-7".to_string(),
            verdict: verdict as i32,
            drop_reason_desc: if verdict == flow::Verdict::Dropped {
                flow::DropReason::PolicyDenied as i32
            } else {
                0
            },
            ip: Some(flow::Ip {
                source: fake_ip(src),
                destination: fake_ip(dst),
                ..Default::default()
            }),
            l4: Some(flow::Layer4 {
                protocol: Some(layer4::Protocol::Tcp(flow::Tcp {
                    source_port: 40000,
                    destination_port: port,
                    flags: Some(flow::TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            }),
            source: Some(ep(src)),
            destination: Some(ep(dst)),
            node_name: "n1".to_string(),
            traffic_direction: flow::TrafficDirection::Egress as i32,
            ..Default::default()
        }
    }

    #[test]
    fn workloads_come_from_app_labels_then_pods_then_reserved_names() {
        let ep = |ns: &str, pod: &str, labels: &[&str], identity| flow::Endpoint {
            namespace: ns.to_string(),
            pod_name: pod.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            identity,
            ..Default::default()
        };
        // Two pods of one app are one workload; the remote side has no pod name but its labels.
        assert_eq!(
            workload_of(&ep("demo", "web-1", &["k8s:app=web", "k8s:tier=fe"], 5)),
            "demo/web"
        );
        assert_eq!(
            workload_of(&ep("demo", "", &["k8s:app=web"], 5)),
            "demo/web"
        );
        assert_eq!(
            workload_of(&ep("kube-system", "", &["k8s:k8s-app=kube-dns"], 6)),
            "kube-system/kube-dns"
        );
        assert_eq!(
            workload_of(&ep("demo", "solo", &["k8s:tier=x"], 7)),
            "demo/solo"
        );
        assert_eq!(workload_of(&ep("", "", &["reserved:world"], 2)), "world");
        assert_eq!(workload_of(&ep("", "", &[], 70_000)), "identity-70000");
    }

    #[test]
    fn a_dropped_tcp_flow_reads_like_the_table_row() {
        let f = tcp_flow(
            ("default", "n1-p2", &["k8s:app=n1-p2"]),
            ("default", "", &["k8s:app=n2-p1"]),
            flow::Verdict::Dropped,
            80,
        );
        let v = FlowView::of(&f);
        assert_eq!(v.verdict, "DROPPED");
        assert_eq!(v.drop_reason, "POLICY_DENIED");
        assert_eq!(v.protocol, "TCP");
        assert_eq!(v.summary, "SYN");
        assert_eq!(v.direction, "EGRESS");
        assert_eq!(v.source.workload, "default/n1-p2");
        assert_eq!(v.destination.workload, "default/n2-p1");
        assert_eq!((v.source.port, v.destination.port), (40000, 80));
        assert_eq!(v.time_ns, 1_795_712_462_000_000_005);
        assert_eq!(v.time, "2026-11-26T17:01:02.000000005Z");
        let json = serde_json::to_value(&v).expect("json");
        assert!(json.get("http").is_none(), "{json}");
        assert_eq!(json["destination"]["ip"], v.destination.ip.as_str());
        assert_eq!(
            json["time_ns"], "1795712462000000005",
            "a string: JS numbers are f64"
        );
    }

    #[test]
    fn l7_records_name_the_protocol_and_summarize() {
        let mut f = tcp_flow(
            ("default", "a", &["k8s:app=a"]),
            ("default", "b", &["k8s:app=b"]),
            flow::Verdict::Dropped,
            8080,
        );
        f.l7 = Some(flow::Layer7 {
            r#type: flow::L7FlowType::Response as i32,
            latency_ns: 0,
            record: Some(layer7::Record::Http(flow::Http {
                code: 403,
                method: "GET".to_string(),
                url: "http://10.200.2.11:8080/admin?x=1".to_string(),
                ..Default::default()
            })),
        });
        let v = FlowView::of(&f);
        assert_eq!(v.protocol, "HTTP");
        assert_eq!(v.summary, "GET /admin?x=1 403");
        assert_eq!(v.http.as_ref().map(|h| h.status), Some(403));
        f.l7 = Some(flow::Layer7 {
            record: Some(layer7::Record::Dns(flow::Dns {
                query: "example.test.".to_string(),
                rcode: 3,
                qtypes: vec!["A".to_string()],
                ..Default::default()
            })),
            ..Default::default()
        });
        let v = FlowView::of(&f);
        assert_eq!(v.protocol, "DNS");
        assert_eq!(v.summary, "A example.test. rcode 3");
    }
}
