//! `probe`: one TCP connection or UDP exchange with a workload server, classified into an
//! [`Outcome`] and reported as a [`ProbeResult`] (printed as one JSON object by the CLI).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Protocol, REPLY_PREFIX};

/// The line a TCP probe sends before reading the reply.
pub const PROBE_LINE: &[u8] = b"probe\n";

/// What to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Destination address.
    pub to: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Total time allowed, connection and reply included.
    pub timeout: Duration,
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The server's reply came back.
    Ok,
    /// No answer within the timeout (typically a drop).
    Timeout,
    /// The destination refused (TCP RST or ICMP port unreachable).
    Refused,
    /// No route, or ICMP host/net unreachable.
    Unreachable,
    /// Anything else (wrong reply, reset after connect, local error).
    Error,
}

impl Outcome {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
            Outcome::Error => "error",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one probe, in the JSON shape the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Destination address.
    pub to: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// True iff the server's reply came back.
    pub reachable: bool,
    /// How the probe ended.
    pub result: Outcome,
    /// The reply line when reachable, otherwise what went wrong.
    pub detail: String,
    /// Round-trip time in microseconds (connect to reply for TCP, last send to reply for UDP);
    /// `null` when not reachable.
    pub rtt_us: Option<u64>,
}

// === impl ProbeResult ===

impl ProbeResult {
    fn new(
        spec: &ProbeSpec,
        result: Outcome,
        detail: impl Into<String>,
        rtt: Option<Duration>,
    ) -> Self {
        ProbeResult {
            to: spec.to,
            port: spec.port,
            protocol: spec.protocol,
            reachable: result == Outcome::Ok,
            result,
            detail: detail.into(),
            rtt_us: rtt.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        }
    }
}

/// Runs one probe. Never panics and never returns an error: failures are outcomes.
pub fn probe(spec: &ProbeSpec) -> ProbeResult {
    match spec.protocol {
        Protocol::Tcp => probe_tcp(spec),
        Protocol::Udp => probe_udp(spec),
    }
}

/// Maps an OS error to an outcome.
pub fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Outcome::Unreachable,
        _ => Outcome::Error,
    }
}

fn at_least_1ms(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

fn reply_ok(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    line.starts_with(REPLY_PREFIX).then_some(line)
}

fn probe_tcp(spec: &ProbeSpec) -> ProbeResult {
    let addr = SocketAddr::new(spec.to, spec.port);
    let start = Instant::now();
    let deadline = start + spec.timeout;
    let mut stream = match TcpStream::connect_timeout(&addr, spec.timeout) {
        Ok(s) => s,
        Err(e) => return ProbeResult::new(spec, classify(&e), format!("connect: {e}"), None),
    };
    let left = || at_least_1ms(deadline.saturating_duration_since(Instant::now()));
    let sent = stream
        .set_write_timeout(Some(left()))
        .and_then(|()| stream.write_all(PROBE_LINE));
    if let Err(e) = sent {
        return ProbeResult::new(spec, classify(&e), format!("send: {e}"), None);
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if Instant::now() >= deadline {
            return ProbeResult::new(
                spec,
                Outcome::Timeout,
                "connected, but no reply in time",
                None,
            );
        }
        if let Err(e) = stream.set_read_timeout(Some(left())) {
            return ProbeResult::new(spec, Outcome::Error, format!("socket: {e}"), None);
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let outcome = match classify(&e) {
                    Outcome::Timeout => Outcome::Timeout,
                    _ => Outcome::Error,
                };
                return ProbeResult::new(spec, outcome, format!("connected, then read: {e}"), None);
            }
        }
    }
    match reply_ok(&got) {
        Some(line) => ProbeResult::new(spec, Outcome::Ok, line, Some(start.elapsed())),
        None if got.is_empty() => ProbeResult::new(
            spec,
            Outcome::Error,
            "connection closed without a reply",
            None,
        ),
        None => ProbeResult::new(
            spec,
            Outcome::Error,
            format!(
                "unexpected reply `{}`",
                String::from_utf8_lossy(&got).trim()
            ),
            None,
        ),
    }
}

/// Interval between UDP retries: a quarter of the timeout, within 50..=500 ms.
pub fn udp_retry_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

fn probe_udp(spec: &ProbeSpec) -> ProbeResult {
    let local: IpAddr = match spec.to {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = match UdpSocket::bind(SocketAddr::new(local, 0))
        .and_then(|s| s.connect(SocketAddr::new(spec.to, spec.port)).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => return ProbeResult::new(spec, classify(&e), format!("socket: {e}"), None),
    };
    let deadline = Instant::now() + spec.timeout;
    let interval = udp_retry_interval(spec.timeout);
    let mut buf = [0u8; 2048];
    let mut attempts = 0u32;
    while Instant::now() < deadline {
        attempts += 1;
        let sent_at = Instant::now();
        if let Err(e) = sock.send(PROBE_LINE) {
            return ProbeResult::new(spec, classify(&e), format!("send: {e}"), None);
        }
        let wait_until = (sent_at + interval).min(deadline);
        loop {
            let left = wait_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Err(e) = sock.set_read_timeout(Some(at_least_1ms(left))) {
                return ProbeResult::new(spec, Outcome::Error, format!("socket: {e}"), None);
            }
            match sock.recv(&mut buf) {
                Ok(n) => match reply_ok(&buf[..n]) {
                    Some(line) => {
                        return ProbeResult::new(spec, Outcome::Ok, line, Some(sent_at.elapsed()));
                    }
                    // Not our server's answer: keep waiting for the real one.
                    None => continue,
                },
                Err(e) if matches!(classify(&e), Outcome::Timeout) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ProbeResult::new(spec, classify(&e), format!("recv: {e}"), None),
            }
        }
    }
    ProbeResult::new(
        spec,
        Outcome::Timeout,
        format!(
            "no reply to {attempts} datagram(s) within {:?}",
            spec.timeout
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{ServeConfig, Server};

    fn local_server() -> (u16, u16) {
        let cfg = ServeConfig {
            name: "t".into(),
            tcp: vec![0],
            udp: vec![0],
            http: vec![],
            api: vec![],
        };
        let server = Server::bind_on(Ipv4Addr::LOCALHOST.into(), &cfg, false).unwrap();
        let addrs = server.local_addrs();
        let port = |p| addrs.iter().find(|(q, _)| *q == p).unwrap().1.port();
        let ports = (port(Protocol::Tcp), port(Protocol::Udp));
        server.spawn();
        ports
    }

    fn spec(port: u16, protocol: Protocol) -> ProbeSpec {
        ProbeSpec {
            to: Ipv4Addr::LOCALHOST.into(),
            port,
            protocol,
            timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn tcp_and_udp_round_trip_on_loopback() {
        let (tcp, udp) = local_server();
        let r = probe(&spec(tcp, Protocol::Tcp));
        assert!(r.reachable, "{r:?}");
        assert_eq!(r.detail, format!("palisade-workload t tcp {tcp}"));
        assert!(r.rtt_us.is_some());
        let r = probe(&spec(udp, Protocol::Udp));
        assert!(r.reachable, "{r:?}");
        assert_eq!(r.detail, format!("palisade-workload t udp {udp}"));
    }

    #[test]
    fn closed_ports_are_refused() {
        // Bind then drop to find a port that is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = probe(&spec(port, Protocol::Tcp));
        assert_eq!(r.result, Outcome::Refused, "{r:?}");
        assert!(!r.reachable);
        assert_eq!(r.rtt_us, None);
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = probe(&spec(port, Protocol::Udp));
        assert_eq!(r.result, Outcome::Refused, "{r:?}");
    }

    #[test]
    fn json_shape() {
        let r = ProbeResult::new(&spec(80, Protocol::Tcp), Outcome::Timeout, "x", None);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["to"], "127.0.0.1");
        assert_eq!(v["protocol"], "tcp");
        assert_eq!(v["result"], "timeout");
        assert_eq!(v["reachable"], false);
        assert!(v["rtt_us"].is_null());
        let back: ProbeResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn retry_interval_is_bounded() {
        assert_eq!(
            udp_retry_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            udp_retry_interval(Duration::from_millis(10)),
            Duration::from_millis(50)
        );
        assert_eq!(
            udp_retry_interval(Duration::from_secs(60)),
            Duration::from_millis(500)
        );
    }
}
