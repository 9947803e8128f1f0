//! The agent's Prometheus metrics, served at `GET /metrics` on `--metrics-listen` by a small
//! thread (the agent's run loop has no async runtime and needs none for one read-only page).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `palisade_agent_policy_revision` | gauge | the control plane's policy revision this node enforces |
//! | `palisade_agent_policy_propagation_seconds` | histogram | from a policy change's commit on the control plane to its enforcement in this node's maps |
//! | `palisade_agent_control_plane_connected` | gauge | 1 while the control plane answers, 0 while it is unreachable (the last-known-good state is enforced) |
//! | `palisade_agent_endpoints` | gauge | endpoints enforced on this node |
//! | `palisade_agent_identities` | gauge | cluster identities known |
//! | `palisade_agent_remote_endpoints` | gauge | endpoints of other nodes in the ipcache |
//! | `palisade_agent_policy_entries` | gauge | policy map entries written |
//! | `palisade_agent_updates_total` | counter | control-plane updates applied, by `result` (`applied`, `rejected`) |
//! | `hubble_flows_processed_total` | counter | flows, datapath and L7, by `protocol` (`TCP`, `UDP`, `ICMPv4`, `ICMPv6`, or an L7 flow's `HTTP`/`DNS`), `type` (`PolicyVerdict`, `Drop`, `Trace`, `L7`), `subtype` (a trace's `to-endpoint`/`from-endpoint`, an L7 flow's `HTTP`/`DNS`), `verdict` |
//! | `hubble_drop_total` | counter | dropped flows (datapath drops and L7 denials), by `traffic_direction` (`ingress`, `egress`), Hubble drop `reason` and `protocol` |
//! | `hubble_policy_verdicts_total` | counter | policy decisions on new flows, by `direction`, `match`, `action` |
//! | `hubble_http_requests_total` | counter | HTTP requests through the L7 proxy (Hubble's `httpV2`), by `method`, `protocol` (`HTTP/1.1`...), `status` and `reporter` (`server` for ingress rules, `client` for egress) |
//! | `hubble_http_request_duration_seconds` | histogram | those requests' time to the response headers, by `method`, `reporter` |
//! | `hubble_dns_queries_total` | counter | queries through the DNS proxy, by `rcode` (empty, or `Policy denied` for a refused query), `qtypes`, `ips_returned` |
//! | `hubble_dns_responses_total` | counter | answers the DNS proxy gave (all but refusals), by `rcode` (`No Error`, `Non-Existent Domain`...), `qtypes`, `ips_returned` |
//! | `palisade_agent_flows_lost_total` | counter | flows lost, by `source`: `kernel` (the datapath's ring buffer was full), `ring` (overwritten in the agent's flow ring) |
//! | `palisade_agent_gossip_dropped_total` | counter | gossip datagrams dropped, by `reason` (`malformed`, `unauthenticated`, `oversize`, `stale`, `send_oversize`) |
//! | `palisade_agent_dns_fqdn_addresses` | gauge | addresses learned from DNS answers and programmed in the ipcache |
//! | `palisade_agent_dns_fqdn_held` | gauge | (name, address) pairs kept past TTL and grace only because an open connection held them |

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Propagation buckets (seconds): a change is normally enforced within tens of milliseconds.
const PROPAGATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Hubble's HTTP duration buckets (seconds): Prometheus's default ones, which Hubble uses.
const HTTP_DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The agent's exporter, with each histogram's buckets (without them the exporter would render
/// a summary, not the histogram Hubble's dashboards query).
pub fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("palisade_agent_policy_propagation_seconds".into()),
            &PROPAGATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("hubble_http_request_duration_seconds".into()),
            &HTTP_DURATION_BUCKETS,
        )
}

/// Installs the recorder and serves it on `addr`. Errors name the address.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    let handle = builder()
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &handle);
            }
        })
        .map_err(|e| format!("metrics thread: {e}"))?;
    Ok(())
}

/// One request per connection: `GET /metrics` gets the text format, anything else 404.
fn answer(mut stream: std::net::TcpStream, handle: &PrometheusHandle) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Drain the headers.
    let mut h = String::new();
    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", handle.render()),
        _ => (
            "404 Not Found",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Records the enforcement of policy changes committed at `changed_at_ms` (replicated clock).
pub fn propagated(changed_at_ms: &[u64]) {
    let now = now_ms();
    for at in changed_at_ms {
        let secs = now.saturating_sub(*at) as f64 / 1000.0;
        metrics::histogram!("palisade_agent_policy_propagation_seconds").record(secs);
    }
}

/// Milliseconds since the Unix epoch on this host's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sets a gauge.
pub fn gauge(name: &'static str, value: f64) {
    metrics::gauge!(name).set(value);
}

/// Counts one event with a `result` label.
pub fn counter(name: &'static str, result: &'static str) {
    metrics::counter!(name, "result" => result).increment(1);
}
