//! Hubble's flow metrics, named and labelled as Hubble's metric handlers name them, computed
//! from the [`Flow`] an event becomes, so a metric's labels are exactly what a reader of that
//! flow sees:
//!
//! | metric | labels | counted for |
//! |---|---|---|
//! | `hubble_flows_processed_total` | `protocol`, `type`, `subtype`, `verdict` | every flow (datapath and L7) |
//! | `hubble_drop_total` | `traffic_direction`, `reason`, `protocol` | every `DROPPED` flow |
//! | `hubble_policy_verdicts_total` | `direction`, `match`, `action` | datapath policy decisions |
//! | `hubble_http_requests_total` | `method`, `protocol`, `status`, `reporter` | HTTP requests through the L7 proxy (Hubble's `httpV2`) |
//! | `hubble_http_request_duration_seconds` | `method`, `reporter` | the same requests' latency |
//! | `hubble_dns_queries_total` | `rcode`, `qtypes`, `ips_returned` | queries through the DNS proxy |
//! | `hubble_dns_responses_total` | `rcode`, `qtypes`, `ips_returned` | answers the DNS proxy gave |
//!
//! `traffic_direction` on drops is the label Hubble adds with its `labelsContext=traffic_direction`
//! option: Hubble's own drop metric has no direction otherwise, and issue 7 asks for drops by
//! direction.

use metrics::Counter;
use palisade_api::flow::{
    DropReason, Flow, TrafficDirection, Verdict, layer4::Protocol as L4, layer7::Record,
};

use super::decode::event_type;

/// The counter handles of one kind of datapath event (looked up once, see the reader).
pub(super) struct Series {
    pub processed: Counter,
    pub drop: Option<Counter>,
    pub verdicts: Option<Counter>,
}

/// Hubble's `FlowProtocol`: the L7 protocol of an L7 flow, else the L4 protocol.
pub fn protocol(f: &Flow) -> &'static str {
    if f.event_type.as_ref().map(|e| e.r#type) == Some(event_type::L7) {
        return match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(Record::Dns(_)) => "DNS",
            Some(Record::Http(_)) => "HTTP",
            None => "Unknown L7",
        };
    }
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(L4::Tcp(_)) => "TCP",
        Some(L4::Udp(_)) => "UDP",
        Some(L4::IcmPv4(_)) => "ICMPv4",
        Some(L4::IcmPv6(_)) => "ICMPv6",
        Some(L4::Sctp(_)) => "SCTP",
        None => "Unknown L4",
    }
}

fn direction(f: &Flow) -> &'static str {
    match TrafficDirection::try_from(f.traffic_direction) {
        Ok(TrafficDirection::Egress) => "egress",
        Ok(TrafficDirection::Ingress) => "ingress",
        _ => "unknown",
    }
}

fn verdict(f: &Flow) -> Verdict {
    Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown)
}

/// `hubble_flows_processed_total` and, for a drop, `hubble_drop_total` of one flow.
fn processed_and_drop(f: &Flow) -> (Counter, Option<Counter>) {
    let (kind, subtype) = match f.event_type.as_ref().map(|e| (e.r#type, e.sub_type)) {
        Some((event_type::DROP, _)) => ("Drop", ""),
        Some((event_type::POLICY_VERDICT, _)) => ("PolicyVerdict", ""),
        // Hubble names a trace's observation point here.
        Some((event_type::TRACE, event_type::TRACE_TO_ENDPOINT)) => ("Trace", "to-endpoint"),
        Some((event_type::TRACE, event_type::TRACE_FROM_ENDPOINT)) => ("Trace", "from-endpoint"),
        Some((event_type::TRACE, _)) => ("Trace", ""),
        // ... and an L7 flow's protocol.
        Some((event_type::L7, _)) => match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(Record::Dns(_)) => ("L7", "DNS"),
            Some(Record::Http(_)) => ("L7", "HTTP"),
            _ => ("L7", ""),
        },
        _ => ("Unknown", ""),
    };
    let protocol = protocol(f);
    let v = verdict(f);
    let processed = metrics::counter!(
        "hubble_flows_processed_total",
        "protocol" => protocol,
        "type" => kind,
        "subtype" => subtype,
        "verdict" => v.as_str_name()
    );
    let drop = (v == Verdict::Dropped).then(|| {
        let reason = DropReason::try_from(f.drop_reason_desc).unwrap_or(DropReason::Unknown);
        metrics::counter!(
            "hubble_drop_total",
            "traffic_direction" => direction(f),
            "reason" => reason.as_str_name(),
            "protocol" => protocol
        )
    });
    (processed, drop)
}

/// Hubble's metric series for one datapath flow.
pub(super) fn series(f: &Flow) -> Series {
    let (processed, drop) = processed_and_drop(f);
    let action = match verdict(f) {
        Verdict::Forwarded => "forwarded",
        Verdict::Dropped => "dropped",
        Verdict::Audit => "audit",
        _ => "unknown",
    };
    // Every datapath event but a trace is a policy decision (a new connection allowed or
    // audited, or a denial).
    let is_trace = f.event_type.as_ref().map(|e| e.r#type) == Some(event_type::TRACE);
    let verdicts = (!is_trace).then(|| {
        metrics::counter!(
            "hubble_policy_verdicts_total",
            "direction" => direction(f),
            "match" => match_name(f.policy_match_type),
            "action" => action
        )
    });
    Series {
        processed,
        drop,
        verdicts,
    }
}

/// Hubble's name for a policy match type.
pub fn match_name(t: u32) -> &'static str {
    match t {
        1 => "l3-only",
        2 => "l3-l4",
        3 => "l4-only",
        4 => "all",
        _ => "none",
    }
}

/// Counts one L7 flow (an HTTP request through the L7 proxy or a query through the DNS proxy)
/// in the flow, drop, HTTP and DNS metrics. The proxies' rates are far below the datapath's,
/// so the handles are looked up per flow.
pub fn count_l7(f: &Flow) {
    let (processed, drop) = processed_and_drop(f);
    processed.increment(1);
    if let Some(d) = drop {
        d.increment(1);
    }
    let Some(l7) = &f.l7 else { return };
    match &l7.record {
        Some(Record::Http(h)) => count_http(f, h, l7.latency_ns),
        Some(Record::Dns(d)) => count_dns(f, d),
        _ => {}
    }
}

/// Hubble's `httpV2` metrics: one count per answered request (the flow is the response).
fn count_http(f: &Flow, h: &palisade_api::flow::Http, latency_ns: u64) {
    // Hubble reports the side the proxy stood for: the client on egress, the server on ingress.
    let reporter = match direction(f) {
        "egress" => "client",
        "ingress" => "server",
        _ => "unknown",
    };
    // The method is bounded (any token is a valid HTTP method, and every value is a series).
    let method = method_label(&h.method);
    let protocol = match h.protocol.as_str() {
        "HTTP/1.0" => "HTTP/1.0",
        "HTTP/1.1" => "HTTP/1.1",
        "HTTP/2.0" => "HTTP/2.0",
        "HTTP/3.0" => "HTTP/3.0",
        _ => "other",
    };
    metrics::counter!(
        "hubble_http_requests_total",
        "method" => method,
        "protocol" => protocol,
        "status" => h.code.to_string(),
        "reporter" => reporter
    )
    .increment(1);
    metrics::histogram!(
        "hubble_http_request_duration_seconds",
        "method" => method,
        "reporter" => reporter
    )
    .record(latency_ns as f64 / 1e9);
}

/// Hubble's DNS metrics. Each of the proxy's flows is a query and, unless the rules refused
/// it, the answer the proxy gave: the query counts with an empty `rcode` and no addresses (as
/// Hubble counts a request), the answer with its rcode's name and the addresses it returned; a
/// refused query counts once, with `rcode="Policy denied"`, as Hubble counts a DNS denial.
fn count_dns(f: &Flow, d: &palisade_api::flow::Dns) {
    let qtypes = d.qtypes.join(",");
    if verdict(f) == Verdict::Dropped {
        metrics::counter!(
            "hubble_dns_queries_total",
            "rcode" => "Policy denied",
            "qtypes" => qtypes,
            "ips_returned" => "0"
        )
        .increment(1);
        return;
    }
    metrics::counter!(
        "hubble_dns_queries_total",
        "rcode" => "",
        "qtypes" => qtypes.clone(),
        "ips_returned" => "0"
    )
    .increment(1);
    metrics::counter!(
        "hubble_dns_responses_total",
        "rcode" => rcode_name(d.rcode),
        "qtypes" => qtypes,
        "ips_returned" => d.ips.len().to_string()
    )
    .increment(1);
}

/// Method label with bounded cardinality.
fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// The names Hubble's DNS metrics give response codes (the IANA DNS RCODE descriptions).
fn rcode_name(rcode: u32) -> &'static str {
    match rcode {
        0 => "No Error",
        1 => "Format Error",
        2 => "Server Failure",
        3 => "Non-Existent Domain",
        4 => "Not Implemented",
        5 => "Query Refused",
        6 => "Name Exists when it should not",
        7 => "RR Set Exists when it should not",
        8 => "RR Set that should exist does not",
        9 => "Not Authorized",
        10 => "Name not contained in zone",
        11 => "DSO-TYPE Not Implemented",
        16 => "Bad OPT Version",
        17 => "Key not recognized",
        18 => "Signature out of time window",
        19 => "Bad TKEY Mode",
        20 => "Duplicate key name",
        21 => "Algorithm not supported",
        22 => "Bad Truncation",
        23 => "Bad/missing Server Cookie",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::dns::{DnsFlow, DnsVerdict};
    use crate::agent::flows::{Enrichment, dns_flow, l7_flow};
    use crate::agent::proxy::{FlowPeer, L7Flow, L7Verdict};

    fn peer(ip: &str, port: u16) -> FlowPeer {
        FlowPeer {
            ip: ip.parse().expect("ip"),
            port,
            identity: 300,
            pod: None,
        }
    }

    fn scrape(flows: &[Flow]) -> Vec<String> {
        let recorder = crate::agent::metrics::builder()
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || flows.iter().for_each(count_l7));
        let mut lines: Vec<String> = handle
            .render()
            .lines()
            // Of the buckets, the smallest and the last: the rest add nothing here.
            .filter(|l| {
                l.starts_with("hubble_")
                    && (!l.contains("_bucket{")
                        || l.contains(r#"le="0.005""#)
                        || l.contains(r#"le="+Inf""#))
            })
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    fn http(method: &str, status: u16, verdict: L7Verdict) -> Flow {
        l7_flow(
            &L7Flow {
                time_ms: 1_700_000_000_000,
                direction: "ingress",
                source: peer("10.200.1.11", 40000),
                destination: peer("10.200.2.11", 8080),
                protocol: "HTTP/1.1".into(),
                method: method.into(),
                url: "http://10.200.2.11:8080/get".into(),
                status,
                verdict,
                latency_us: 1500,
            },
            &Enrichment::default(),
        )
    }

    fn dns(rcode: u16, ips: &[&str], verdict: DnsVerdict) -> Flow {
        dns_flow(
            &DnsFlow {
                time_ms: 1_700_000_000_000,
                source: peer("10.200.1.11", 40000),
                destination: peer("10.200.1.12", 53),
                transport: "udp",
                query: "db.test.".into(),
                qtypes: vec!["A".into()],
                rcode,
                ips: ips.iter().map(|i| i.parse().expect("ip")).collect(),
                ttl: 30,
                cnames: vec![],
                verdict,
                latency_us: 40,
            },
            &Enrichment::default(),
        )
    }

    #[test]
    fn l7_flows_count_as_hubble_counts_them() {
        let got = scrape(&[
            http("GET", 200, L7Verdict::Forwarded),
            http("GET", 200, L7Verdict::Forwarded),
            http("DELETE", 403, L7Verdict::Denied),
            http("BREW", 502, L7Verdict::Error),
            dns(0, &["10.200.9.1", "10.200.9.2"], DnsVerdict::Forwarded),
            dns(3, &[], DnsVerdict::Forwarded),
            dns(5, &[], DnsVerdict::Refused),
        ]);
        let want = [
            r#"hubble_dns_queries_total{rcode="",qtypes="A",ips_returned="0"} 2"#,
            r#"hubble_dns_queries_total{rcode="Policy denied",qtypes="A",ips_returned="0"} 1"#,
            r#"hubble_dns_responses_total{rcode="No Error",qtypes="A",ips_returned="2"} 1"#,
            r#"hubble_dns_responses_total{rcode="Non-Existent Domain",qtypes="A",ips_returned="0"} 1"#,
            r#"hubble_drop_total{traffic_direction="egress",reason="DROP_REASON_UNKNOWN",protocol="DNS"} 1"#,
            r#"hubble_drop_total{traffic_direction="ingress",reason="DROP_REASON_UNKNOWN",protocol="HTTP"} 1"#,
            r#"hubble_flows_processed_total{protocol="DNS",type="L7",subtype="DNS",verdict="DROPPED"} 1"#,
            r#"hubble_flows_processed_total{protocol="DNS",type="L7",subtype="DNS",verdict="FORWARDED"} 2"#,
            r#"hubble_flows_processed_total{protocol="HTTP",type="L7",subtype="HTTP",verdict="DROPPED"} 1"#,
            r#"hubble_flows_processed_total{protocol="HTTP",type="L7",subtype="HTTP",verdict="ERROR"} 1"#,
            r#"hubble_flows_processed_total{protocol="HTTP",type="L7",subtype="HTTP",verdict="FORWARDED"} 2"#,
            r#"hubble_http_request_duration_seconds_bucket{method="DELETE",reporter="server",le="+Inf"} 1"#,
            r#"hubble_http_request_duration_seconds_bucket{method="DELETE",reporter="server",le="0.005"} 1"#,
            r#"hubble_http_request_duration_seconds_bucket{method="GET",reporter="server",le="+Inf"} 2"#,
            r#"hubble_http_request_duration_seconds_bucket{method="GET",reporter="server",le="0.005"} 2"#,
            r#"hubble_http_request_duration_seconds_bucket{method="other",reporter="server",le="+Inf"} 1"#,
            r#"hubble_http_request_duration_seconds_bucket{method="other",reporter="server",le="0.005"} 1"#,
            r#"hubble_http_request_duration_seconds_count{method="DELETE",reporter="server"} 1"#,
            r#"hubble_http_request_duration_seconds_count{method="GET",reporter="server"} 2"#,
            r#"hubble_http_request_duration_seconds_count{method="other",reporter="server"} 1"#,
            r#"hubble_http_request_duration_seconds_sum{method="DELETE",reporter="server"} 0.0015"#,
            r#"hubble_http_request_duration_seconds_sum{method="GET",reporter="server"} 0.003"#,
            r#"hubble_http_request_duration_seconds_sum{method="other",reporter="server"} 0.0015"#,
            r#"hubble_http_requests_total{method="DELETE",protocol="HTTP/1.1",status="403",reporter="server"} 1"#,
            r#"hubble_http_requests_total{method="GET",protocol="HTTP/1.1",status="200",reporter="server"} 2"#,
            r#"hubble_http_requests_total{method="other",protocol="HTTP/1.1",status="502",reporter="server"} 1"#,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn protocol_is_the_l7_protocol_then_the_l4_one() {
        let h = http("GET", 200, L7Verdict::Forwarded);
        assert_eq!(protocol(&h), "HTTP");
        let mut l4_only = h.clone();
        l4_only.event_type = None;
        assert_eq!(protocol(&l4_only), "TCP");
        assert_eq!(protocol(&Flow::default()), "Unknown L4");
        assert_eq!(rcode_name(3), "Non-Existent Domain");
        assert_eq!(rcode_name(99), "");
    }
}
