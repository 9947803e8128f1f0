//! The mirror's Prometheus metrics, served at `GET /metrics` on `--metrics-listen`:
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `palisade_mirror_objects` | gauge | objects of a `kind` whose copy this mirror keeps in the control plane |
//! | `palisade_mirror_applies_total` | counter | copies written to the control plane, by `kind` and `outcome`: `accepted`, `rejected` (the policy engine refused the object; its status says why), `error` (the control plane was unreachable or refused the call; the next event or resync retries) |
//! | `palisade_mirror_deletes_total` | counter | copies deleted (the object left the cluster or lost its labels), by `kind` |
//! | `palisade_mirror_watch_restarts_total` | counter | re-lists of a `kind`: its watch could not resume (the resource version expired, `410`), so the mirror listed again (the first list is not counted) |
//! | `palisade_mirror_watch_errors_total` | counter | watch errors of a `kind` (retried with backoff) |
//! | `palisade_mirror_status_writes_total` | counter | `Accepted` conditions written back on source objects, by `kind` and `result` (`written`, `failed`) |

use std::net::SocketAddr;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("--metrics-listen `{addr}`: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The process already has a metrics recorder.
    #[error("metrics recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
}

/// Installs the process's recorder and serves it on `addr` from a task of the current runtime.
pub async fn serve(addr: SocketAddr) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let handle = PrometheusBuilder::new().install_recorder()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(answer(stream, handle));
        }
    });
    Ok(())
}

/// One request per connection: `GET /metrics` gets the text format, anything else 404.
async fn answer(stream: TcpStream, handle: PrometheusHandle) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        reader.read_line(&mut line).await?;
        // Drain the headers (up to the empty line).
        let mut h = String::new();
        while reader.read_line(&mut h).await? > 2 {
            h.clear();
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let mut parts = line.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", handle.render()),
        _ => (
            "404 Not Found",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = reader.into_inner();
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Counts one write of a copy.
pub(crate) fn applied(kind: &'static str, outcome: &'static str) {
    metrics::counter!("palisade_mirror_applies_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// Counts one deleted copy.
pub(crate) fn deleted(kind: &'static str) {
    metrics::counter!("palisade_mirror_deletes_total", "kind" => kind).increment(1);
}

/// Counts one re-list after a watch ended.
pub(crate) fn watch_restarted(kind: &'static str) {
    metrics::counter!("palisade_mirror_watch_restarts_total", "kind" => kind).increment(1);
}

/// Counts one watch error.
pub(crate) fn watch_error(kind: &'static str) {
    metrics::counter!("palisade_mirror_watch_errors_total", "kind" => kind).increment(1);
}

/// Counts one status write.
pub(crate) fn status_write(kind: &'static str, result: &'static str) {
    metrics::counter!("palisade_mirror_status_writes_total", "kind" => kind, "result" => result)
        .increment(1);
}

/// Sets how many objects of `kind` this mirror keeps a copy of.
pub(crate) fn held(kind: &'static str, n: usize) {
    metrics::gauge!("palisade_mirror_objects", "kind" => kind).set(n as f64);
}
