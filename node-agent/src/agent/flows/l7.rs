//! The L7 proxy's request records as Hubble flows (`Type` L7, event type 129, `l7.http`), so
//! `palisade observe --protocol http` and Hubble's tooling see them beside the datapath's flows.
//! Pure: the proxy hands each record over as it logs it.

use palisade_api::flow::{
    self, CiliumEventType, Flow, FlowType, IpVersion, L7FlowType, Layer4, Layer7, TrafficDirection,
    Verdict, layer4::Protocol as L4, layer7::Record,
};

use super::decode::event_type;
use super::enrich::Enrichment;
use crate::agent::dns::{DnsFlow, DnsVerdict};
use crate::agent::proxy::{L7Flow, L7Verdict};

fn timestamp(time_ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(time_ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((time_ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// One query the DNS proxy handled as a Hubble flow (`Type` L7, event type 129, `l7.dns` with
/// query, addresses, TTL, CNAMEs, rcode and types). A query the rules refused is `DROPPED`, as
/// Hubble reports DNS policy denials; one the server could not answer is `ERROR`.
pub fn dns_flow(f: &DnsFlow, ctx: &Enrichment) -> Flow {
    let verdict = match f.verdict {
        DnsVerdict::Forwarded => Verdict::Forwarded,
        DnsVerdict::Refused => Verdict::Dropped,
        DnsVerdict::Malformed | DnsVerdict::Error => Verdict::Error,
    };
    let ports = (u32::from(f.source.port), u32::from(f.destination.port));
    let l4 = if f.transport == "tcp" {
        L4::Tcp(flow::Tcp {
            source_port: ports.0,
            destination_port: ports.1,
            flags: None,
        })
    } else {
        L4::Udp(flow::Udp {
            source_port: ports.0,
            destination_port: ports.1,
        })
    };
    Flow {
        time: Some(timestamp(f.time_ms)),
        verdict: verdict as i32,
        ip: Some(flow::Ip {
            source: f.source.ip.to_string(),
            destination: f.destination.ip.to_string(),
            ip_version: if f.source.ip.is_ipv6() {
                IpVersion::IPv6
            } else {
                IpVersion::IPv4
            } as i32,
            encrypted: false,
        }),
        l4: Some(Layer4 { protocol: Some(l4) }),
        source: Some(ctx.endpoint(f.source.ip, f.source.identity)),
        destination: Some(ctx.endpoint(f.destination.ip, f.destination.identity)),
        r#type: FlowType::L7 as i32,
        node_name: ctx.node.clone(),
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: f.latency_us.saturating_mul(1000),
            record: Some(Record::Dns(flow::Dns {
                query: f.query.clone(),
                ips: f.ips.iter().map(ToString::to_string).collect(),
                ttl: f.ttl,
                cnames: f.cnames.clone(),
                observation_source: "proxy".into(),
                rcode: u32::from(f.rcode),
                qtypes: f.qtypes.clone(),
                rrtypes: Vec::new(),
            })),
        }),
        event_type: Some(CiliumEventType {
            r#type: event_type::L7,
            sub_type: 0,
        }),
        traffic_direction: TrafficDirection::Egress as i32,
        is_reply: Some(false),
        ..Flow::default()
    }
}

/// One proxied HTTP request as a Hubble flow. A request the L7 rules denied (answered 403) is
/// `DROPPED`, as Hubble reports L7 policy denials; one the destination could not serve is
/// `ERROR`.
pub fn l7_flow(f: &L7Flow, ctx: &Enrichment) -> Flow {
    let verdict = match f.verdict {
        L7Verdict::Forwarded => Verdict::Forwarded,
        L7Verdict::Denied => Verdict::Dropped,
        L7Verdict::Error => Verdict::Error,
    };
    let direction = if f.direction == "egress" {
        TrafficDirection::Egress
    } else {
        TrafficDirection::Ingress
    };
    Flow {
        time: Some(prost_types::Timestamp {
            seconds: i64::try_from(f.time_ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((f.time_ms % 1000) * 1_000_000).unwrap_or(0),
        }),
        verdict: verdict as i32,
        ip: Some(flow::Ip {
            source: f.source.ip.to_string(),
            destination: f.destination.ip.to_string(),
            ip_version: if f.source.ip.is_ipv6() {
                IpVersion::IPv6
            } else {
                IpVersion::IPv4
            } as i32,
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(L4::Tcp(flow::Tcp {
                source_port: u32::from(f.source.port),
                destination_port: u32::from(f.destination.port),
                flags: None,
            })),
        }),
        source: Some(ctx.endpoint(f.source.ip, f.source.identity)),
        destination: Some(ctx.endpoint(f.destination.ip, f.destination.identity)),
        r#type: FlowType::L7 as i32,
        node_name: ctx.node.clone(),
        l7: Some(Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: f.latency_us.saturating_mul(1000),
            record: Some(Record::Http(flow::Http {
                code: u32::from(f.status),
                method: f.method.clone(),
                url: f.url.clone(),
                protocol: f.protocol.clone(),
                headers: Vec::new(),
            })),
        }),
        event_type: Some(CiliumEventType {
            r#type: event_type::L7,
            sub_type: 0,
        }),
        traffic_direction: direction as i32,
        is_reply: Some(false),
        ..Flow::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_query_is_a_dropped_l7_dns_flow() {
        let peer = |ip: &str, port, identity| FlowPeer {
            ip: ip.parse().unwrap(),
            port,
            identity,
            pod: None,
        };
        let f = DnsFlow {
            time_ms: 1_700_000_000_500,
            source: peer("10.200.1.11", 40000, 300),
            destination: peer("10.200.1.12", 53, 301),
            transport: "udp",
            query: "other.test.".into(),
            qtypes: vec!["A".into()],
            rcode: 5,
            ips: vec![],
            ttl: 0,
            cnames: vec![],
            verdict: DnsVerdict::Refused,
            latency_us: 40,
        };
        let flow = dns_flow(&f, &Enrichment::default());
        assert_eq!(flow.verdict, Verdict::Dropped as i32);
        assert_eq!(flow.traffic_direction, TrafficDirection::Egress as i32);
        assert!(matches!(
            flow.l4.and_then(|l| l.protocol),
            Some(L4::Udp(flow::Udp {
                destination_port: 53,
                ..
            }))
        ));
        let Some(Record::Dns(d)) = flow.l7.and_then(|l| l.record) else {
            panic!("dns record")
        };
        assert_eq!((d.query.as_str(), d.rcode), ("other.test.", 5));
        assert_eq!(d.qtypes, vec!["A".to_string()]);
    }
    use crate::agent::proxy::FlowPeer;

    #[test]
    fn a_denied_request_is_a_dropped_l7_flow_with_its_http_fields() {
        let f = L7Flow {
            time_ms: 1_700_000_000_123,
            direction: "ingress",
            source: FlowPeer {
                ip: "10.200.1.11".parse().unwrap(),
                port: 40000,
                identity: 300,
                pod: None,
            },
            destination: FlowPeer {
                ip: "10.200.2.11".parse().unwrap(),
                port: 8080,
                identity: 301,
                pod: Some("default/n2-p1".into()),
            },
            protocol: "HTTP/1.1".into(),
            method: "DELETE".into(),
            url: "http://10.200.2.11:8080/get".into(),
            status: 403,
            verdict: L7Verdict::Denied,
            latency_us: 250,
        };
        let flow = l7_flow(&f, &Enrichment::default());
        assert_eq!(flow.verdict, Verdict::Dropped as i32);
        assert_eq!(flow.r#type, FlowType::L7 as i32);
        assert_eq!(flow.event_type.map(|e| e.r#type), Some(event_type::L7));
        assert_eq!(flow.traffic_direction, TrafficDirection::Ingress as i32);
        assert_eq!(
            flow.time.map(|t| (t.seconds, t.nanos)),
            Some((1_700_000_000, 123_000_000))
        );
        let l7 = flow.l7.expect("l7");
        assert_eq!(l7.latency_ns, 250_000);
        let Some(Record::Http(h)) = l7.record else {
            panic!("http record")
        };
        assert_eq!((h.code, h.method.as_str()), (403, "DELETE"));
        assert_eq!(h.url, "http://10.200.2.11:8080/get");
        assert_eq!(flow.source.map(|s| s.identity), Some(300));
        assert_eq!(flow.destination.map(|d| d.identity), Some(301));
    }
}
