//! Flow events as the eBPF program writes them, decoded and turned into Hubble `flow.Flow`
//! records. Pure: no syscalls, so every mapping is unit tested.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_api::flow::{
    self, CiliumEventType, DropReason, Flow, FlowType, IpVersion, Layer4, NetworkInterface,
    TrafficDirection, Verdict, layer4::Protocol as L4,
};
use palisade_datapath_common::{events, events::FlowEvent, family, policy, proto, verdict};

use super::enrich::Enrichment;

/// Hubble's monitor message types (`CiliumEventType.type`), as `--type` names them.
pub mod event_type {
    /// A drop notification.
    pub const DROP: i32 = 1;
    /// A trace notification (packet seen at an observation point).
    pub const TRACE: i32 = 4;
    /// Trace sub-type (observation point, Cilium's `TraceToLxc`): delivered to the endpoint.
    pub const TRACE_TO_ENDPOINT: i32 = 0;
    /// Trace sub-type (Cilium's `TraceFromLxc`): sent by the endpoint.
    pub const TRACE_FROM_ENDPOINT: i32 = 5;
    /// A policy verdict notification (a new connection's policy decision).
    pub const POLICY_VERDICT: i32 = 9;
    /// An L7 access log record.
    pub const L7: i32 = 129;
}

/// A ring-buffer record that is not a flow event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record's length is not `size_of::<FlowEvent>()`.
    #[error("flow event of {got} bytes, expected {expected}")]
    Length {
        /// Bytes received.
        got: usize,
        /// Bytes a `FlowEvent` has.
        expected: usize,
    },
    /// An event kind this agent does not know (an eBPF object newer than the agent).
    #[error("flow event of unknown kind {0}")]
    Kind(u8),
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// Decodes one ring-buffer record (native byte order, the layout of `#[repr(C)] FlowEvent`).
pub fn decode_event(bytes: &[u8]) -> Result<FlowEvent, DecodeError> {
    if bytes.len() != size_of::<FlowEvent>() {
        return Err(DecodeError::Length {
            got: bytes.len(),
            expected: size_of::<FlowEvent>(),
        });
    }
    let u32_at = |at| u32::from_ne_bytes(field(bytes, at));
    let ev = FlowEvent {
        ts_ns: u64::from_ne_bytes(field(bytes, offset_of!(FlowEvent, ts_ns))),
        kind: bytes[offset_of!(FlowEvent, kind)],
        direction: bytes[offset_of!(FlowEvent, direction)],
        protocol: bytes[offset_of!(FlowEvent, protocol)],
        family: bytes[offset_of!(FlowEvent, family)],
        reason: u32_at(offset_of!(FlowEvent, reason)),
        ifindex: u32_at(offset_of!(FlowEvent, ifindex)),
        src_identity: u32_at(offset_of!(FlowEvent, src_identity)),
        dst_identity: u32_at(offset_of!(FlowEvent, dst_identity)),
        rule_id: u32_at(offset_of!(FlowEvent, rule_id)),
        saddr: field(bytes, offset_of!(FlowEvent, saddr)),
        daddr: field(bytes, offset_of!(FlowEvent, daddr)),
        sport: field(bytes, offset_of!(FlowEvent, sport)),
        dport: field(bytes, offset_of!(FlowEvent, dport)),
        len: u32_at(offset_of!(FlowEvent, len)),
        tcp_flags: bytes[offset_of!(FlowEvent, tcp_flags)],
        match_type: bytes[offset_of!(FlowEvent, match_type)],
        is_reply: bytes[offset_of!(FlowEvent, is_reply)],
        _pad: 0,
    };
    match ev.kind {
        events::KIND_NEW | events::KIND_DROP | events::KIND_AUDIT | events::KIND_TRACE => Ok(ev),
        k => Err(DecodeError::Kind(k)),
    }
}

/// The Hubble drop reason for one of our verdict reasons, and the text Hubble prints for it.
pub fn drop_reason(reason: u32) -> (DropReason, &'static str) {
    match reason {
        // No entry allowed the flow: Hubble's "Policy denied" (default deny).
        verdict::DROP_POLICY_DEFAULT => (DropReason::PolicyDenied, "Policy denied"),
        // An explicit deny entry: Hubble's "Policy denied by denylist".
        verdict::DROP_POLICY_DENY => (DropReason::PolicyDeny, "Policy denied by denylist"),
        verdict::DROP_SPOOFED_SOURCE => (DropReason::InvalidSourceIp, "Invalid source ip"),
        verdict::DROP_MALFORMED => (DropReason::InvalidPacketDropped, "Invalid packet"),
        _ => (DropReason::Unknown, "Unknown reason"),
    }
}

/// The text for a Hubble drop reason value (for flows decoded from the wire).
pub fn drop_reason_text(reason: i32) -> &'static str {
    match DropReason::try_from(reason) {
        Ok(DropReason::PolicyDenied) => "Policy denied",
        Ok(DropReason::PolicyDeny) => "Policy denied by denylist",
        Ok(DropReason::InvalidSourceIp) => "Invalid source ip",
        Ok(DropReason::InvalidPacketDropped) => "Invalid packet",
        _ => "Unknown reason",
    }
}

fn addr(family_: u8, raw: &[u8; 16]) -> IpAddr {
    if family_ == family::IPV6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// Hubble's TCP flags from the header's flags byte (`NS` lives in another byte: never set).
fn tcp_flags(b: u8) -> flow::TcpFlags {
    let has = |bit: u8| b & bit != 0;
    flow::TcpFlags {
        fin: has(events::TCP_FIN),
        syn: has(events::TCP_SYN),
        rst: has(events::TCP_RST),
        psh: has(events::TCP_PSH),
        ack: has(events::TCP_ACK),
        urg: has(events::TCP_URG),
        ece: has(events::TCP_ECE),
        cwr: has(events::TCP_CWR),
        ns: false,
    }
}

/// Builds the flow record for one event observed at `time_ns` (Unix nanoseconds), naming its
/// endpoints from `ctx`.
pub fn to_flow(ev: &FlowEvent, ctx: &Enrichment, time_ns: u64) -> Flow {
    let src = addr(ev.family, &ev.saddr);
    let dst = addr(ev.family, &ev.daddr);
    let sport = u16::from_be_bytes(ev.sport) as u32;
    let dport = u16::from_be_bytes(ev.dport) as u32;
    let l4 = match ev.protocol {
        proto::TCP => Some(L4::Tcp(flow::Tcp {
            source_port: sport,
            destination_port: dport,
            flags: Some(tcp_flags(ev.tcp_flags)),
        })),
        proto::UDP => Some(L4::Udp(flow::Udp {
            source_port: sport,
            destination_port: dport,
        })),
        proto::SCTP => Some(L4::Sctp(flow::Sctp {
            source_port: sport,
            destination_port: dport,
        })),
        // For ICMP the datapath's policy port is the message type (in its low byte).
        proto::ICMP => Some(L4::IcmPv4(flow::IcmPv4 {
            r#type: dport & 0xff,
            code: 0,
        })),
        proto::ICMPV6 => Some(L4::IcmPv6(flow::IcmPv6 {
            r#type: dport & 0xff,
            code: 0,
        })),
        _ => None,
    };
    let (verdict_, event) = match ev.kind {
        events::KIND_DROP => (Verdict::Dropped, event_type::DROP),
        events::KIND_AUDIT => (Verdict::Audit, event_type::POLICY_VERDICT),
        events::KIND_TRACE => (Verdict::Forwarded, event_type::TRACE),
        _ => (Verdict::Forwarded, event_type::POLICY_VERDICT),
    };
    let (reason, sub_type) = match ev.kind {
        events::KIND_DROP => {
            let (r, _) = drop_reason(ev.reason);
            (r, r as i32)
        }
        // The hook that saw it: the endpoint's egress is its packets leaving it.
        events::KIND_TRACE if ev.direction == policy::DIRECTION_EGRESS => {
            (DropReason::Unknown, event_type::TRACE_FROM_ENDPOINT)
        }
        events::KIND_TRACE => (DropReason::Unknown, event_type::TRACE_TO_ENDPOINT),
        _ => (DropReason::Unknown, 0),
    };
    let direction = if ev.direction == policy::DIRECTION_EGRESS {
        TrafficDirection::Egress
    } else {
        TrafficDirection::Ingress
    };
    // The policy whose rule decided, in the role it played: an allow for a new connection, a
    // deny rule for its drop or an audited denial (as Hubble reports AUDIT). Default deny and
    // spoofing drops carry rule 0; trace events carry none: they name no policy.
    let (allowed_by, denied_by) = match ev.kind {
        events::KIND_NEW => (ctx.policies.deciding(ev.rule_id, false), Vec::new()),
        events::KIND_AUDIT => (Vec::new(), ctx.policies.deciding(ev.rule_id, true)),
        events::KIND_DROP if ev.reason == verdict::DROP_POLICY_DENY => {
            (Vec::new(), ctx.policies.deciding(ev.rule_id, true))
        }
        _ => (Vec::new(), Vec::new()),
    };
    let (ingress_allowed_by, ingress_denied_by, egress_allowed_by, egress_denied_by) =
        if direction == TrafficDirection::Egress {
            (Vec::new(), Vec::new(), allowed_by, denied_by)
        } else {
            (allowed_by, denied_by, Vec::new(), Vec::new())
        };
    Flow {
        time: Some(prost_types::Timestamp {
            seconds: (time_ns / 1_000_000_000) as i64,
            nanos: (time_ns % 1_000_000_000) as i32,
        }),
        verdict: verdict_ as i32,
        drop_reason: if ev.kind == events::KIND_DROP {
            sub_type as u32
        } else {
            0
        },
        drop_reason_desc: reason as i32,
        ip: Some(flow::Ip {
            source: src.to_string(),
            destination: dst.to_string(),
            ip_version: if src.is_ipv6() {
                IpVersion::IPv6
            } else {
                IpVersion::IPv4
            } as i32,
            encrypted: false,
        }),
        l4: l4.map(|p| Layer4 { protocol: Some(p) }),
        source: Some(ctx.endpoint(src, ev.src_identity)),
        destination: Some(ctx.endpoint(dst, ev.dst_identity)),
        r#type: FlowType::L3L4 as i32,
        node_name: ctx.node.clone(),
        event_type: Some(CiliumEventType {
            r#type: event,
            sub_type,
        }),
        traffic_direction: direction as i32,
        // Hubble's values (`L3_ONLY` 1 … `ALL` 4) are the datapath's `MATCH_*`; 0 when no
        // entry decided (default deny, spoofing).
        policy_match_type: u32::from(ev.match_type),
        // The first packet of a new connection is never a reply; a drop may be either.
        is_reply: match ev.kind {
            events::KIND_DROP => None,
            events::KIND_TRACE => Some(ev.is_reply != 0),
            _ => Some(false),
        },
        interface: Some(NetworkInterface {
            index: ev.ifindex,
            name: ctx.iface_name(ev.ifindex),
        }),
        ingress_allowed_by,
        ingress_denied_by,
        egress_allowed_by,
        egress_denied_by,
        ..Flow::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::flows::enrich::{EndpointMeta, LocalEndpoint, PolicyNames};
    use std::sync::Arc;

    fn encode(ev: &FlowEvent) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<FlowEvent>()];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(offset_of!(FlowEvent, ts_ns), &ev.ts_ns.to_ne_bytes());
        put(offset_of!(FlowEvent, kind), &[ev.kind]);
        put(offset_of!(FlowEvent, direction), &[ev.direction]);
        put(offset_of!(FlowEvent, protocol), &[ev.protocol]);
        put(offset_of!(FlowEvent, family), &[ev.family]);
        put(offset_of!(FlowEvent, reason), &ev.reason.to_ne_bytes());
        put(offset_of!(FlowEvent, ifindex), &ev.ifindex.to_ne_bytes());
        put(
            offset_of!(FlowEvent, src_identity),
            &ev.src_identity.to_ne_bytes(),
        );
        put(
            offset_of!(FlowEvent, dst_identity),
            &ev.dst_identity.to_ne_bytes(),
        );
        put(offset_of!(FlowEvent, rule_id), &ev.rule_id.to_ne_bytes());
        put(offset_of!(FlowEvent, saddr), &ev.saddr);
        put(offset_of!(FlowEvent, daddr), &ev.daddr);
        put(offset_of!(FlowEvent, sport), &ev.sport);
        put(offset_of!(FlowEvent, dport), &ev.dport);
        put(offset_of!(FlowEvent, len), &ev.len.to_ne_bytes());
        put(offset_of!(FlowEvent, tcp_flags), &[ev.tcp_flags]);
        put(offset_of!(FlowEvent, match_type), &[ev.match_type]);
        put(offset_of!(FlowEvent, is_reply), &[ev.is_reply]);
        b
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn tcp_drop() -> FlowEvent {
        FlowEvent {
            ts_ns: 123_456_789,
            kind: events::KIND_DROP,
            direction: policy::DIRECTION_INGRESS,
            protocol: proto::TCP,
            family: family::IPV4,
            reason: verdict::DROP_POLICY_DEFAULT,
            ifindex: 7,
            src_identity: 1234,
            dst_identity: 5678,
            rule_id: 0,
            saddr: v4([10, 0, 1, 2]),
            daddr: v4([10, 0, 1, 3]),
            sport: 41234u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            len: 60,
            tcp_flags: events::TCP_SYN,
            match_type: events::MATCH_NONE,
            is_reply: 0,
            _pad: 0,
        }
    }

    #[test]
    fn round_trip_keeps_every_field_and_the_exact_length() {
        let mut ev = tcp_drop();
        ev.tcp_flags = events::TCP_SYN | events::TCP_ECE | events::TCP_CWR;
        ev.match_type = events::MATCH_L4_ONLY;
        ev.is_reply = 1;
        let bytes = encode(&ev);
        assert_eq!(bytes.len(), 80);
        assert_eq!(decode_event(&bytes), Ok(ev));
    }

    #[test]
    fn wrong_length_and_unknown_kind_are_errors() {
        let bytes = encode(&tcp_drop());
        assert_eq!(
            decode_event(&bytes[..79]),
            Err(DecodeError::Length {
                got: 79,
                expected: 80
            })
        );
        let mut ev = tcp_drop();
        ev.kind = 9;
        assert_eq!(decode_event(&encode(&ev)), Err(DecodeError::Kind(9)));
    }

    fn ctx() -> Enrichment {
        let mut e = Enrichment {
            node: "n1".into(),
            ..Enrichment::default()
        };
        e.set_locals(vec![LocalEndpoint {
            ifindex: 7,
            iface: "veth7".into(),
            ip: "10.0.1.3".parse().expect("ip"),
            meta: EndpointMeta {
                endpoint_id: 3,
                identity: 5678,
                name: "demo/api-1".into(),
                labels: Arc::from(vec!["k8s:app=api".to_string()]),
            },
        }]);
        e.identities.insert(
            1234,
            Arc::from(vec![
                "k8s:app=frontend".to_string(),
                "k8s:io.kubernetes.pod.namespace=demo".to_string(),
            ]),
        );
        e
    }

    #[test]
    fn a_policy_drop_becomes_a_hubble_drop_with_named_endpoints() {
        let f = to_flow(&tcp_drop(), &ctx(), 1_700_000_000_123_000_000);
        assert_eq!(f.verdict, Verdict::Dropped as i32);
        assert_eq!(f.drop_reason_desc, DropReason::PolicyDenied as i32);
        assert_eq!(f.drop_reason, 133);
        assert_eq!(f.event_type.map(|e| (e.r#type, e.sub_type)), Some((1, 133)));
        assert_eq!(f.traffic_direction, TrafficDirection::Ingress as i32);
        let t = f.time.expect("time");
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        let ip = f.ip.expect("ip");
        assert_eq!(
            (ip.source.as_str(), ip.destination.as_str()),
            ("10.0.1.2", "10.0.1.3")
        );
        let Some(Layer4 {
            protocol: Some(L4::Tcp(tcp)),
        }) = f.l4
        else {
            panic!("not TCP: {:?}", f.l4)
        };
        assert_eq!((tcp.source_port, tcp.destination_port), (41234, 80));
        let dst = f.destination.expect("destination");
        assert_eq!(
            (dst.namespace.as_str(), dst.pod_name.as_str()),
            ("demo", "api-1")
        );
        assert_eq!((dst.id, dst.identity), (3, 5678));
        // A peer known only by identity: labels and namespace from the identity, no pod name.
        let src = f.source.expect("source");
        assert_eq!(src.namespace, "demo");
        assert_eq!(src.identity, 1234);
        assert!(src.pod_name.is_empty());
        assert!(src.labels.contains(&"k8s:app=frontend".to_string()));
        assert_eq!(f.node_name, "n1");
        assert_eq!(f.interface.map(|i| i.name), Some("veth7".into()));
        assert_eq!(f.is_reply, None);
    }

    #[test]
    fn new_and_audit_events_are_policy_verdicts() {
        let mut ev = tcp_drop();
        ev.kind = events::KIND_NEW;
        ev.reason = verdict::FORWARDED_NEW;
        ev.direction = policy::DIRECTION_EGRESS;
        let f = to_flow(&ev, &ctx(), 0);
        assert_eq!(f.verdict, Verdict::Forwarded as i32);
        assert_eq!(f.drop_reason_desc, 0);
        assert_eq!(
            f.event_type.map(|e| e.r#type),
            Some(event_type::POLICY_VERDICT)
        );
        assert_eq!(f.traffic_direction, TrafficDirection::Egress as i32);
        assert_eq!(f.is_reply, Some(false));
        ev.kind = events::KIND_AUDIT;
        ev.reason = verdict::DROP_POLICY_DENY;
        assert_eq!(to_flow(&ev, &ctx(), 0).verdict, Verdict::Audit as i32);
    }

    #[test]
    fn icmp_and_ipv6_and_reserved_identities() {
        let mut ev = tcp_drop();
        ev.protocol = proto::ICMPV6;
        ev.family = family::IPV6;
        ev.saddr = "fd00::1".parse::<Ipv6Addr>().expect("v6").octets();
        ev.daddr = "fd00::2".parse::<Ipv6Addr>().expect("v6").octets();
        ev.dport = [0, 128];
        ev.src_identity = 2;
        let f = to_flow(&ev, &ctx(), 0);
        let ip = f.ip.expect("ip");
        assert_eq!(ip.ip_version, IpVersion::IPv6 as i32);
        assert_eq!(ip.source, "fd00::1");
        assert!(matches!(
            f.l4.and_then(|l| l.protocol),
            Some(L4::IcmPv6(flow::IcmPv6 { r#type: 128, .. }))
        ));
        assert_eq!(
            f.source.expect("src").labels,
            vec!["reserved:world".to_string()]
        );
    }

    #[test]
    fn tcp_flags_and_the_policy_match_type_reach_the_flow() {
        let mut ev = tcp_drop();
        ev.kind = events::KIND_NEW;
        ev.tcp_flags = events::TCP_SYN | events::TCP_ACK;
        ev.match_type = events::MATCH_L3_L4;
        let f = to_flow(&ev, &ctx(), 0);
        assert_eq!(f.policy_match_type, 2, "Hubble's L3_L4");
        let Some(L4::Tcp(tcp)) = f.l4.and_then(|l| l.protocol) else {
            panic!("not TCP")
        };
        assert_eq!(
            tcp.flags,
            Some(flow::TcpFlags {
                syn: true,
                ack: true,
                ..flow::TcpFlags::default()
            })
        );
        // Every bit lands in its own field.
        let all = tcp_flags(0xff);
        assert!(
            all.fin && all.syn && all.rst && all.psh && all.ack && all.urg && all.ece && all.cwr
        );
        assert_eq!(tcp_flags(0), flow::TcpFlags::default());
        // Other protocols carry no flags.
        ev.protocol = proto::UDP;
        assert!(matches!(
            to_flow(&ev, &ctx(), 0).l4.and_then(|l| l.protocol),
            Some(L4::Udp(_))
        ));
    }

    #[test]
    fn a_state_change_of_an_admitted_connection_is_a_trace_flow() {
        let mut ev = tcp_drop();
        ev.kind = events::KIND_TRACE;
        ev.reason = verdict::FORWARDED_ESTABLISHED;
        ev.tcp_flags = events::TCP_FIN | events::TCP_ACK;
        ev.is_reply = 1;
        let bytes = encode(&ev);
        assert_eq!(decode_event(&bytes), Ok(ev));
        // Ingress: delivered to the endpoint, a reply of a connection it opened.
        let f = to_flow(&ev, &ctx(), 0);
        assert_eq!(f.verdict, Verdict::Forwarded as i32);
        assert_eq!(
            f.event_type.map(|e| (e.r#type, e.sub_type)),
            Some((event_type::TRACE, event_type::TRACE_TO_ENDPOINT))
        );
        assert_eq!(f.is_reply, Some(true));
        assert_eq!((f.drop_reason, f.drop_reason_desc), (0, 0));
        let Some(L4::Tcp(tcp)) = f.l4.and_then(|l| l.protocol) else {
            panic!("not TCP")
        };
        assert!(tcp.flags.is_some_and(|f| f.fin && f.ack && !f.syn));
        ev.direction = policy::DIRECTION_EGRESS;
        ev.is_reply = 0;
        let f = to_flow(&ev, &ctx(), 0);
        // The observation point is no drop reason.
        assert_eq!(f.drop_reason, 0);
        assert_eq!(
            f.event_type.map(|e| e.sub_type),
            Some(event_type::TRACE_FROM_ENDPOINT)
        );
        assert_eq!(f.is_reply, Some(false));
    }

    /// `ctx()` knowing rule 11 (an ingress allow of CNP demo/api-in), rule 12 (an egress deny
    /// of CCNP no-db) and rule 13 (an ingress deny of NetworkPolicy demo/np).
    fn ctx_with_rules() -> Enrichment {
        use palisade_policy::ir::{Origin, PolicyKind, ResourceKey, Section};
        let o = |kind, ns: Option<&str>, name: &str, section| Origin {
            resource: ResourceKey {
                kind,
                namespace: ns.map(str::to_string),
                name: name.into(),
            },
            spec: None,
            section,
            rule: Some(0),
            audit: false,
        };
        let rules = [
            (
                11,
                o(
                    PolicyKind::CiliumNetworkPolicy,
                    Some("demo"),
                    "api-in",
                    Section::Ingress,
                ),
            ),
            (
                12,
                o(
                    PolicyKind::CiliumClusterwideNetworkPolicy,
                    None,
                    "no-db",
                    Section::EgressDeny,
                ),
            ),
            (
                13,
                o(
                    PolicyKind::NetworkPolicy,
                    Some("demo"),
                    "np",
                    Section::IngressDeny,
                ),
            ),
        ];
        Enrichment {
            policies: Arc::new(PolicyNames::build(
                1,
                42,
                rules.iter().map(|(id, o)| (*id, o)),
                |_| None,
            )),
            ..ctx()
        }
    }

    fn names(ps: &[flow::Policy]) -> Vec<String> {
        ps.iter()
            .map(|p| format!("{}/{}/{}@{}", p.kind, p.namespace, p.name, p.revision))
            .collect()
    }

    #[test]
    fn a_policy_verdict_names_the_policy_that_decided_on_its_side() {
        let ctx = ctx_with_rules();
        // A new connection let in by an ingress allow rule.
        let mut ev = tcp_drop();
        ev.kind = events::KIND_NEW;
        ev.reason = verdict::FORWARDED_NEW;
        ev.rule_id = 11;
        let f = to_flow(&ev, &ctx, 0);
        assert_eq!(
            names(&f.ingress_allowed_by),
            ["CiliumNetworkPolicy/demo/api-in@42"]
        );
        let labels = &f.ingress_allowed_by[0].labels;
        assert!(labels.contains(&"k8s:io.cilium.k8s.policy.name=api-in".to_string()));
        assert!(
            f.egress_allowed_by.is_empty()
                && f.ingress_denied_by.is_empty()
                && f.egress_denied_by.is_empty()
        );
        // The same rule at the egress hook names the egress side.
        ev.direction = policy::DIRECTION_EGRESS;
        let f = to_flow(&ev, &ctx, 0);
        assert_eq!(names(&f.egress_allowed_by).len(), 1);
        assert!(f.ingress_allowed_by.is_empty());

        // A deny rule's drop: `*_denied_by`, cluster-wide policy without a namespace.
        ev.kind = events::KIND_DROP;
        ev.reason = verdict::DROP_POLICY_DENY;
        ev.rule_id = 12;
        let f = to_flow(&ev, &ctx, 0);
        assert_eq!(
            names(&f.egress_denied_by),
            ["CiliumClusterwideNetworkPolicy//no-db@42"]
        );
        assert!(f.egress_allowed_by.is_empty() && f.ingress_denied_by.is_empty());
        // An audited denial names the deny rule's policy too (as Hubble does for AUDIT).
        ev.kind = events::KIND_AUDIT;
        ev.direction = policy::DIRECTION_INGRESS;
        ev.rule_id = 13;
        let f = to_flow(&ev, &ctx, 0);
        assert_eq!(names(&f.ingress_denied_by), ["NetworkPolicy/demo/np@42"]);
    }

    #[test]
    fn flows_no_rule_decided_name_no_policy() {
        let ctx = ctx_with_rules();
        // Default deny: no entry, rule 0.
        let f = to_flow(&tcp_drop(), &ctx, 0);
        assert_eq!(f.drop_reason_desc, DropReason::PolicyDenied as i32);
        let none = |f: &Flow| {
            f.ingress_allowed_by.is_empty()
                && f.ingress_denied_by.is_empty()
                && f.egress_allowed_by.is_empty()
                && f.egress_denied_by.is_empty()
        };
        assert!(none(&f), "{f:?}");
        // Default allow (rule 0) on a new connection.
        let mut ev = tcp_drop();
        ev.kind = events::KIND_NEW;
        ev.reason = verdict::FORWARDED_NEW;
        assert!(none(&to_flow(&ev, &ctx, 0)));
        // An allow whose entry carries an audit-mode deny rule's id: that policy allowed
        // nothing, so no `allowed_by`.
        ev.rule_id = 13;
        assert!(none(&to_flow(&ev, &ctx, 0)));
        // A rule this snapshot does not know.
        ev.rule_id = 77;
        assert!(none(&to_flow(&ev, &ctx, 0)));
        // Trace events and non-policy drops name none, whatever id they carry.
        ev.rule_id = 11;
        ev.kind = events::KIND_TRACE;
        assert!(none(&to_flow(&ev, &ctx, 0)));
        ev.kind = events::KIND_DROP;
        ev.reason = verdict::DROP_SPOOFED_SOURCE;
        assert!(none(&to_flow(&ev, &ctx, 0)));
    }

    #[test]
    fn every_drop_reason_has_a_hubble_value() {
        for r in [
            verdict::DROP_POLICY_DENY,
            verdict::DROP_POLICY_DEFAULT,
            verdict::DROP_SPOOFED_SOURCE,
            verdict::DROP_MALFORMED,
        ] {
            let (d, text) = drop_reason(r);
            assert_ne!(d, DropReason::Unknown, "reason {r}");
            assert_eq!(drop_reason_text(d as i32), text);
        }
    }
}
