//! L7 flow records: one per HTTP request the proxy handled, kept in a bounded in-memory buffer
//! (oldest dropped first) with a running total. Self-contained on purpose: the flow pipeline
//! (Hubble's `flow.Flow` with its `l7.http` field) takes these over as they are.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;

use serde::Serialize;

/// Records kept by default.
pub const DEFAULT_CAPACITY: usize = 4096;

/// What the proxy did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum L7Verdict {
    /// Allowed and forwarded to the original destination (whatever it answered).
    Forwarded,
    /// No L7 rule allowed it: answered 403 `Access denied`.
    Denied,
    /// Allowed, but the destination could not be reached: answered 502.
    Error,
}

impl L7Verdict {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            L7Verdict::Forwarded => "forwarded",
            L7Verdict::Denied => "denied",
            L7Verdict::Error => "error",
        }
    }
}

/// One side of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowPeer {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
    /// Security identity (`world` = 2 when unknown).
    pub identity: u32,
    /// Endpoint name when it is local to this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// One HTTP request through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Flow {
    /// When the request arrived (ms since the Unix epoch).
    pub time_ms: u64,
    /// `ingress` (policy of the destination endpoint).
    pub direction: &'static str,
    /// The client.
    pub source: FlowPeer,
    /// The original destination.
    pub destination: FlowPeer,
    /// `HTTP/1.1`, `HTTP/2.0`, ….
    pub protocol: String,
    /// Method.
    pub method: String,
    /// URL as `http://<host><path?query>`.
    pub url: String,
    /// Status code answered to the client.
    pub status: u16,
    /// What the proxy did.
    pub verdict: L7Verdict,
    /// From request arrival to response headers (µs).
    pub latency_us: u64,
}

/// Where each record goes besides the buffer (the agent's Hubble flow ring). A sink also counts
/// the record in Hubble's metrics, from the flow it builds for the ring: one conversion per
/// request, not two.
pub type FlowSink<T = L7Flow> = Box<dyn Fn(&T) + Send + Sync>;

/// The bounded buffer (of HTTP records by default; the DNS proxy keeps its own of DNS records).
pub struct FlowLog<T = L7Flow> {
    inner: Mutex<Inner<T>>,
    sink: std::sync::OnceLock<FlowSink<T>>,
}

impl<T: Clone> std::fmt::Debug for FlowLog<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowLog")
            .field("total", &self.total())
            .field("sink", &self.sink.get().is_some())
            .finish()
    }
}

#[derive(Debug)]
struct Inner<T> {
    flows: VecDeque<T>,
    capacity: usize,
    total: u64,
}

// === impl FlowLog ===

impl<T: Clone> FlowLog<T> {
    /// A buffer holding at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        FlowLog {
            inner: Mutex::new(Inner {
                flows: VecDeque::with_capacity(capacity.min(1024)),
                capacity: capacity.max(1),
                total: 0,
            }),
            sink: std::sync::OnceLock::new(),
        }
    }

    /// Hands every later record to `sink` too (set once; the flow pipeline's ring).
    pub fn set_sink(&self, sink: FlowSink<T>) {
        let _ = self.sink.set(sink);
    }

    /// Appends a record, dropping the oldest when full. Without a sink, `count` gets the
    /// record (the metrics), as a sink would have.
    pub fn push(&self, flow: T, count: impl FnOnce(&T)) {
        match self.sink.get() {
            Some(sink) => sink(&flow),
            None => count(&flow),
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.flows.len() == g.capacity {
            g.flows.pop_front();
        }
        g.flows.push_back(flow);
        g.total += 1;
    }

    /// Records pushed since start (including dropped ones).
    pub fn total(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// The newest `n` records, oldest first.
    pub fn recent(&self, n: usize) -> Vec<T> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = g.flows.len().saturating_sub(n);
        g.flows.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(status: u16) -> L7Flow {
        let peer = FlowPeer {
            ip: "10.0.0.1".parse().unwrap(),
            port: 1,
            identity: 2,
            pod: None,
        };
        L7Flow {
            time_ms: 0,
            direction: "ingress",
            source: peer.clone(),
            destination: peer,
            protocol: "HTTP/1.1".into(),
            method: "GET".into(),
            url: "http://x/".into(),
            status,
            verdict: L7Verdict::Forwarded,
            latency_us: 1,
        }
    }

    #[test]
    fn the_buffer_is_bounded_and_counts_everything() {
        let log: FlowLog = FlowLog::new(3);
        let mut counted = 0;
        for s in 0..5 {
            log.push(flow(200 + s), |_| counted += 1);
        }
        assert_eq!(
            counted, 5,
            "without a sink every record is counted by the caller"
        );
        let sunk = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s2 = sunk.clone();
        log.set_sink(Box::new(move |_| {
            s2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }));
        log.push(flow(205), |_| panic!("the sink counts, not the caller"));
        assert_eq!(sunk.load(std::sync::atomic::Ordering::Relaxed), 1);
        log.push(flow(206), |_| panic!("the sink counts, not the caller"));
        assert_eq!(log.total(), 7);
        let r: Vec<u16> = log.recent(10).iter().map(|f| f.status).collect();
        assert_eq!(r, vec![204, 205, 206]);
        assert_eq!(log.recent(1)[0].status, 206);
    }
}
