//! DNS flow records: one per query the proxy handled (answered, refused or failed), kept in a
//! bounded buffer ([`FlowLog`]) and handed to the agent's flow ring as Hubble L7 flows
//! (`l7.dns`, see `flows/l7.rs`).

use std::net::IpAddr;

use serde::Serialize;

use crate::agent::proxy::FlowPeer;

pub use crate::agent::proxy::FlowLog;

/// What the proxy did with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsVerdict {
    /// Allowed: forwarded to the original destination and its answer released.
    Forwarded,
    /// No rule allows the name: answered REFUSED.
    Refused,
    /// Not a readable DNS query (answered FORMERR when it had an id).
    Malformed,
    /// Allowed, but the upstream did not answer usably: answered SERVFAIL.
    Error,
}

impl DnsVerdict {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DnsVerdict::Forwarded => "forwarded",
            DnsVerdict::Refused => "refused",
            DnsVerdict::Malformed => "malformed",
            DnsVerdict::Error => "error",
        }
    }
}

/// One DNS query through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsFlow {
    /// When the query arrived (ms since the Unix epoch).
    pub time_ms: u64,
    /// The client (a local endpoint).
    pub source: FlowPeer,
    /// The DNS server it asked.
    pub destination: FlowPeer,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// Query name, lowercase, with the trailing dot (as Hubble shows it); empty when malformed.
    pub query: String,
    /// Query types (`A`, `AAAA`, …).
    pub qtypes: Vec<String>,
    /// Response code answered to the client (0 NOERROR, 2 SERVFAIL, 5 REFUSED, …).
    pub rcode: u16,
    /// Addresses in the answer (learned for `toFQDNs`).
    pub ips: Vec<IpAddr>,
    /// Smallest TTL of those addresses (s).
    pub ttl: u32,
    /// CNAME targets in the answer.
    pub cnames: Vec<String>,
    /// What the proxy did.
    pub verdict: DnsVerdict,
    /// From query arrival to the answer's release, including programming the datapath (µs).
    pub latency_us: u64,
}
