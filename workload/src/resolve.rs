//! A DNS client for pods: one query over UDP or TCP to a given server, the answer as a report
//! (rcode, addresses, TTL), so lab tests see exactly what a pod's resolver would. It also
//! measures, with `count`, the latency of repeated queries (the DNS proxy benchmark).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Serialize;

/// What to ask.
#[derive(Debug, Clone)]
pub struct ResolveSpec {
    /// The DNS server.
    pub server: SocketAddr,
    /// The name.
    pub name: String,
    /// `A` or `AAAA`.
    pub aaaa: bool,
    /// Over TCP instead of UDP.
    pub tcp: bool,
    /// How long to wait for the answer (UDP retries within it).
    pub timeout: Duration,
    /// Queries to send one after the other (latency percentiles over them).
    pub count: u32,
}

/// The answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResolveReport {
    /// The name asked.
    pub name: String,
    /// `NOERROR`, `REFUSED`, `NXDOMAIN`, … or `TIMEOUT` / `ERROR` when none came.
    pub rcode: String,
    /// Addresses in the answer section.
    pub ips: Vec<IpAddr>,
    /// Smallest TTL among them.
    pub ttl: Option<u32>,
    /// What went wrong when there was no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Latency of the queries (µs): median and 99th percentile (one query: both the same).
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Queries answered per second, one in flight at a time (`count` over the whole run).
    pub qps: u64,
}

/// Sends the query (`count` times) and reports the last answer.
pub fn resolve(spec: &ResolveSpec) -> ResolveReport {
    let mut report = ResolveReport {
        name: spec.name.clone(),
        rcode: "ERROR".into(),
        ips: vec![],
        ttl: None,
        detail: None,
        p50_us: 0,
        p99_us: 0,
        qps: 0,
    };
    let query = match build(&spec.name, spec.aaaa) {
        Ok(q) => q,
        Err(e) => {
            report.detail = Some(e);
            return report;
        }
    };
    let mut lat = Vec::new();
    let began = Instant::now();
    for _ in 0..spec.count.max(1) {
        let start = Instant::now();
        let r = if spec.tcp {
            ask_tcp(spec, &query)
        } else {
            ask_udp(spec, &query)
        };
        lat.push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
        match r.and_then(|b| Message::from_vec(&b).map_err(|e| format!("bad answer: {e}"))) {
            Ok(m) => {
                report.rcode = rcode_name(u16::from(m.metadata.response_code));
                report.ips = m
                    .answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                report.ttl = m.answers.iter().map(|r| r.ttl).min();
                report.detail = None;
            }
            Err(e) => {
                report.rcode = if e.contains("timed out") || e.contains("would block") {
                    "TIMEOUT".into()
                } else {
                    "ERROR".into()
                };
                report.detail = Some(e);
                break;
            }
        }
    }
    let secs = began.elapsed().as_secs_f64();
    if report.detail.is_none() && secs > 0.0 {
        report.qps = (lat.len() as f64 / secs).round() as u64;
    }
    lat.sort_unstable();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
    report.p50_us = pct(50);
    report.p99_us = pct(99);
    report
}

/// The mnemonic of a response code (RFC 1035, 6895).
fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn build(name: &str, aaaa: bool) -> Result<Vec<u8>, String> {
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let n = Name::from_ascii(&fqdn).map_err(|e| format!("`{name}` is not a DNS name: {e}"))?;
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        n,
        if aaaa {
            RecordType::AAAA
        } else {
            RecordType::A
        },
    ));
    m.to_vec().map_err(|e| e.to_string())
}

fn ask_udp(spec: &ResolveSpec, query: &[u8]) -> Result<Vec<u8>, String> {
    let bind: SocketAddr = if spec.server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.connect(spec.server).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + spec.timeout;
    let mut buf = vec![0u8; 65_535];
    // Resend every second within the timeout, as stub resolvers do.
    loop {
        s.send(query).map_err(|e| e.to_string())?;
        let resend = Instant::now() + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err("timed out".into());
            }
            let wait = resend.min(deadline).saturating_duration_since(now);
            if wait.is_zero() {
                break;
            }
            s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
            match s.recv(&mut buf) {
                Ok(n) if n >= 2 && buf[..2] == query[..2] => return Ok(buf[..n].to_vec()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

fn ask_tcp(spec: &ResolveSpec, query: &[u8]) -> Result<Vec<u8>, String> {
    let mut s =
        TcpStream::connect_timeout(&spec.server, spec.timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(spec.timeout))
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(query);
    s.write_all(&out).map_err(|e| e.to_string())?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l).map_err(|e| e.to_string())?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP server on loopback answering every query with itself, response bit set (NOERROR,
    /// no records): the repeated-query rate and percentiles come out, and a server that never
    /// answers gives no rate.
    #[test]
    fn repeated_queries_report_their_rate() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                if n > 2 {
                    buf[2] |= 0x80;
                    let _ = server.send_to(&buf[..n], from);
                }
            }
        });
        let spec = ResolveSpec {
            server: addr,
            name: "api.example.test".into(),
            aaaa: false,
            tcp: false,
            timeout: Duration::from_secs(2),
            count: 200,
        };
        let r = resolve(&spec);
        assert_eq!(r.rcode, "NOERROR", "{r:?}");
        assert!(r.qps > 0 && r.p50_us <= r.p99_us, "{r:?}");
        // Nobody answers at this address (bound, never read).
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = resolve(&ResolveSpec {
            server: silent.local_addr().unwrap(),
            timeout: Duration::from_millis(200),
            ..spec
        });
        assert_eq!((r.rcode.as_str(), r.qps), ("TIMEOUT", 0), "{r:?}");
    }
}
