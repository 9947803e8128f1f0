//! `load`: an HTTP/1.1 load generator for benchmarks. `connections` kept-alive connections, one
//! thread each, send `GET <path>` either at a fixed total rate (open loop: each request has a
//! scheduled time and its latency counts from that time, so a stalled server is not hidden by
//! the generator waiting for it) or as fast as the server answers (rate 0, closed loop).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Server.
    pub to: SocketAddr,
    /// Request target.
    pub path: String,
    /// Total requests per second; 0: as fast as possible.
    pub rate: u32,
    /// How long.
    pub duration: Duration,
    /// Parallel connections.
    pub connections: usize,
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Responses received.
    pub requests: u64,
    /// Connection or parse failures.
    pub errors: u64,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Seconds measured.
    pub seconds: f64,
    /// Responses per second.
    pub rps: f64,
    /// Latency percentiles (µs).
    pub p50_us: u64,
    /// 90th percentile (µs).
    pub p90_us: u64,
    /// 99th percentile (µs).
    pub p99_us: u64,
    /// Maximum (µs).
    pub max_us: u64,
}

/// Runs the load and reports.
pub fn load(spec: &LoadSpec) -> LoadReport {
    let conns = spec.connections.max(1);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + spec.duration;
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let spec = spec.clone();
            thread::spawn(move || worker(&spec, i, conns, start, end))
        })
        .collect();
    let mut lat: Vec<u64> = Vec::new();
    let mut report = LoadReport::default();
    for h in handles {
        if let Ok((l, statuses, errors)) = h.join() {
            lat.extend(l);
            for (s, n) in statuses {
                *report.statuses.entry(s).or_default() += n;
            }
            report.errors += errors;
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
        }
    };
    report.requests = lat.len() as u64;
    report.seconds = spec.duration.as_secs_f64();
    report.rps = report.requests as f64 / report.seconds.max(1e-9);
    report.p50_us = pct(0.50);
    report.p90_us = pct(0.90);
    report.p99_us = pct(0.99);
    report.max_us = lat.last().copied().unwrap_or(0);
    report
}

type WorkerResult = (Vec<u64>, BTreeMap<u16, u64>, u64);

fn worker(spec: &LoadSpec, i: usize, conns: usize, start: Instant, end: Instant) -> WorkerResult {
    let mut lat = Vec::new();
    let mut statuses = BTreeMap::new();
    let mut errors = 0u64;
    let interval =
        (spec.rate > 0).then(|| Duration::from_secs_f64(conns as f64 / f64::from(spec.rate)));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: palisade-workload-load\r\n\r\n",
        spec.path, spec.to
    );
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut k: u32 = 0;
    loop {
        let scheduled = match interval {
            Some(iv) => start + iv.mul_f64(f64::from(k) + i as f64 / conns as f64),
            None => Instant::now().max(start),
        };
        if scheduled >= end {
            break;
        }
        k += 1;
        let now = Instant::now();
        if scheduled > now {
            thread::sleep(scheduled - now);
        }
        if conn.is_none() {
            match connect(spec.to) {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    errors += 1;
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let Some((w, r)) = conn.as_mut() else {
            continue;
        };
        let sent = if interval.is_some() {
            scheduled
        } else {
            Instant::now()
        };
        match w
            .write_all(request.as_bytes())
            .and_then(|()| read_response(r))
        {
            Ok((status, keep)) => {
                if Instant::now() <= end + Duration::from_secs(1) {
                    lat.push(sent.elapsed().as_micros() as u64);
                    *statuses.entry(status).or_default() += 1;
                }
                if !keep {
                    conn = None;
                }
            }
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
    }
    (lat, statuses, errors)
}

fn connect(to: SocketAddr) -> io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let r = BufReader::new(s.try_clone()?);
    Ok((s, r))
}

/// Reads one response; returns its status and whether the connection stays open.
fn read_response(r: &mut BufReader<TcpStream>) -> io::Result<(u16, bool)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut length = 0u64;
    let mut keep = true;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(bad("closed in headers"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| bad("content-length"))?;
            } else if n.eq_ignore_ascii_case("connection") {
                keep = !v.trim().eq_ignore_ascii_case("close");
            }
        }
    }
    io::copy(&mut r.by_ref().take(length), &mut io::sink())?;
    Ok((status, keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn fixed_rate_and_saturation_against_the_http_server() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let to = l.local_addr().unwrap();
        thread::spawn(move || crate::http::http_loop("srv", &l, crate::http::Style::Echo));
        let mut spec = LoadSpec {
            to,
            path: "/get".into(),
            rate: 200,
            duration: Duration::from_millis(500),
            connections: 2,
        };
        let r = load(&spec);
        assert_eq!(r.errors, 0, "{r:?}");
        // 200/s for 0.5 s: 100 scheduled requests.
        assert!((95..=100).contains(&r.requests), "{r:?}");
        assert_eq!(r.statuses.get(&200), Some(&r.requests));
        spec.rate = 0;
        let r = load(&spec);
        assert!(r.requests > 100 && r.p50_us <= r.p99_us, "{r:?}");
    }
}
