//! The change feed as a gRPC server stream (`WatchService.Watch`), the agent's way of following
//! the control plane when the members' gRPC addresses are known (`--control-plane-grpc`).
//!
//! Why a stream rather than the REST long poll: a change reaches the agent as soon as the
//! member it follows has applied it, with no request per batch and no poll interval to wait
//! out, and one connection per agent stays open instead of one request every few seconds (what
//! matters at thousands of agents). Lists (the snapshot an agent starts from) and every write
//! still go over REST: they are one-off, and the REST client already fails over and forwards.
//!
//! The follower thread is synchronous, like the rest of the agent's control loop: the stream
//! runs on a current-thread tokio runtime this feed owns, driven only while the follower waits
//! for the next batch.
//!
//! A member that stops answering without closing the connection (SIGSTOP, a partition) is
//! noticed by HTTP/2 keepalive pings within [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`]: the
//! stream then fails and the follower resumes from the last revision it received, on the next
//! member that answers.

use std::str::FromStr;
use std::time::Duration;

use palisade_api::controlplane::Change;
use palisade_api::grpc::v1;
use palisade_api::grpc::v1::watch_service_client::WatchServiceClient;
use palisade_cp_client::TlsConfig;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How long connecting to one member may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening a stream on one member may take in all (TCP, TLS, the call's headers): a
/// stopped member accepts the TCP connection in its kernel but never completes the handshake.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 ping interval on the stream's connection, idle or not.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection (and the stream) is given up.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the feed could not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    /// The member no longer holds the changes after the revision asked for (`OUT_OF_RANGE`):
    /// list again, then stream from the current revision.
    Compacted,
    /// No member could be reached, or the stream broke (resume from the last revision).
    Failed(String),
}

/// The members' gRPC endpoints and the runtime that drives their streams.
pub struct GrpcFeed {
    rt: tokio::runtime::Runtime,
    members: Vec<(String, Endpoint)>,
    /// `authorization` metadata when the agent authenticates with a token (not a certificate).
    bearer: Option<MetadataValue<Ascii>>,
    /// Where the next `open` starts: the member that served the last stream.
    preferred: usize,
}

/// One open stream and the member serving it.
pub struct ChangeStream {
    inner: tonic::Streaming<v1::Change>,
    member: String,
}

impl GrpcFeed {
    /// The feed over `urls` (`https://host:port` with `tls`, `http://host:port` without), with
    /// the node's certificate from `tls` or `token` as credentials.
    pub fn new(
        urls: &[String],
        tls: Option<&TlsConfig>,
        token: Option<&str>,
    ) -> Result<GrpcFeed, String> {
        if urls.is_empty() {
            return Err("--control-plane-grpc: no member given".into());
        }
        let tls_config = tls.map(|t| {
            let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&t.ca_pem));
            if let Some(id) = &t.identity_pem {
                // The PEM holds the certificate then the key: each reader takes its own kind.
                c = c.identity(Identity::from_pem(id, id));
            }
            c
        });
        let mut members = Vec::new();
        for url in urls {
            let bad = |why: &str| format!("--control-plane-grpc `{url}`: {why}");
            let https = url.starts_with("https://");
            if !https && !url.starts_with("http://") {
                return Err(bad("needs a scheme, e.g. https://10.0.0.2:9001"));
            }
            let mut ep = Endpoint::from_str(url)
                .map_err(|e| bad(&e.to_string()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            match (https, &tls_config) {
                (true, Some(c)) => {
                    ep = ep.tls_config(c.clone()).map_err(|e| bad(&e.to_string()))?;
                }
                // The same rules as the REST members: no unverified TLS, no credentials in clear.
                (true, None) => {
                    return Err(bad(
                        "https needs the cluster CA to trust (--control-plane-tls-dir)",
                    ));
                }
                (false, Some(_)) => {
                    return Err(bad("plain http while TLS is configured; use https://"));
                }
                (false, None) => {}
            }
            members.push((url.clone(), ep));
        }
        let bearer = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "--control-plane-token-file: the token is not valid ASCII")?,
            ),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("the feed's runtime: {e}"))?;
        Ok(GrpcFeed {
            rt,
            members,
            bearer,
            preferred: 0,
        })
    }

    /// Opens a stream of the changes after `from` on the first member that accepts it,
    /// starting with the one that served last.
    pub fn open(&mut self, from: u64) -> Result<ChangeStream, FeedError> {
        let mut errors = Vec::new();
        for i in 0..self.members.len() {
            let k = (self.preferred + i) % self.members.len();
            let (url, ep) = &self.members[k];
            let mut req = tonic::Request::new(v1::WatchRequest {
                from_revision: from,
            });
            if let Some(b) = &self.bearer {
                req.metadata_mut().insert("authorization", b.clone());
            }
            let opened = self.rt.block_on(async {
                let open = async {
                    let channel = ep
                        .connect()
                        .await
                        .map_err(|e| FeedError::Failed(chain(&e)))?;
                    match WatchServiceClient::new(channel).watch(req).await {
                        Ok(r) => Ok(r.into_inner()),
                        Err(s) if s.code() == Code::OutOfRange => Err(FeedError::Compacted),
                        Err(s) => Err(FeedError::Failed(status(&s))),
                    }
                };
                tokio::time::timeout(OPEN_TIMEOUT, open)
                    .await
                    .unwrap_or_else(|_| {
                        Err(FeedError::Failed(format!(
                            "no stream within {}s",
                            OPEN_TIMEOUT.as_secs()
                        )))
                    })
            });
            match opened {
                Ok(inner) => {
                    self.preferred = k;
                    return Ok(ChangeStream {
                        inner,
                        member: url.clone(),
                    });
                }
                Err(FeedError::Compacted) => return Err(FeedError::Compacted),
                Err(FeedError::Failed(e)) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(FeedError::Failed(errors.join("; ")))
    }

    /// Waits for the next change, then takes every change already received behind it, up to
    /// `limit`: one batch for the run loop, never empty.
    pub fn next_batch(
        &self,
        stream: &mut ChangeStream,
        limit: usize,
    ) -> Result<Vec<Change>, FeedError> {
        let member = stream.member.clone();
        let failed = |why: String| FeedError::Failed(format!("{member}: {why}"));
        self.rt.block_on(async {
            let mut out = Vec::new();
            let first = stream.inner.message().await;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Ok(Some(c)) => out.push(Change::try_from(c).map_err(failed)?),
                    Ok(None) if out.is_empty() => {
                        return Err(failed("the member ended the stream".into()));
                    }
                    Ok(None) => break,
                    Err(s) if s.code() == Code::OutOfRange => return Err(FeedError::Compacted),
                    Err(s) if out.is_empty() => {
                        return Err(failed(status(&s)));
                    }
                    // Deliver what arrived; the error shows again on the next call.
                    Err(_) => break,
                }
                if out.len() >= limit {
                    break;
                }
                // Only what is already here: polled once, never waited for.
                next = tokio::time::timeout(Duration::ZERO, stream.inner.message())
                    .await
                    .ok();
            }
            Ok(out)
        })
    }
}

/// An error with its causes (tonic's transport errors say little at the top level).
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// A status for messages: its code's name and its message.
fn status(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
