//! The HTTP side of the proxy: one hyper server connection per redirected TCP connection
//! (HTTP/1.1 with keep-alive, or HTTP/2 with prior knowledge, detected from the first bytes),
//! each request checked against the destination endpoint's L7 rules, then forwarded to the
//! original destination over a pooled HTTP/1.1 client, or answered `403 Access denied`.
//! Bodies stream both ways; nothing is buffered whole.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use palisade_policy::ir::HttpRequest;
use tokio::net::{TcpListener, TcpStream};

use super::flow::{FlowLog, FlowPeer, L7Flow, L7Verdict};
use super::view::{L4Verdict, ProxyView, RequestVerdict, http_verdict};

/// Body of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Body of a denied request, as Cilium's proxy answers it.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// A client that sends no complete request header within this time is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle upstream connections are closed after this.
const UPSTREAM_IDLE: Duration = Duration::from_secs(30);

/// What every connection task shares.
pub struct Shared {
    /// The node as the run loop last published it.
    pub view: Arc<RwLock<ProxyView>>,
    /// Flow records.
    pub flows: Arc<FlowLog>,
    client: Client<HttpConnector, Incoming>,
}

// === impl Shared ===

impl Shared {
    /// Shares the view and flow log with a new upstream client pool.
    pub fn new(view: Arc<RwLock<ProxyView>>, flows: Arc<FlowLog>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(UPSTREAM_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Shared {
            view,
            flows,
            client,
        }
    }
}

/// Accepts redirected connections forever. The accepted socket's local address is the
/// connection's original destination (TPROXY keeps it).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("palisade agent: l7 proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(dst) = stream.local_addr() else {
            continue;
        };
        tokio::spawn(connection(stream, client, dst, shared.clone()));
    }
}

async fn connection(stream: TcpStream, client: SocketAddr, dst: SocketAddr, shared: Arc<Shared>) {
    let l4_ok = {
        let v = shared.view.read().unwrap_or_else(|p| p.into_inner());
        matches!(
            v.ingress(dst, client.ip()),
            Some((_, L4Verdict::Allow | L4Verdict::Redirect(_)))
        )
    };
    if !l4_ok {
        // The packet filter only steers peers the policy redirects; this is a race with a
        // policy change. Closing is what a drop would have become.
        eprintln!(
            "palisade agent: l7 proxy: {client} -> {dst}: not allowed at L4 (policy changed), closed"
        );
        return;
    }
    let _ = stream.set_nodelay(true);
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, client, dst, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
        // Malformed requests end here (hyper answered 400 where it could): one line, no more.
        eprintln!("palisade agent: l7 proxy: connection {client} -> {dst}: {e}");
    }
}

/// One request: verdict, then forward or deny, then the flow record.
async fn handle(
    shared: &Shared,
    client: SocketAddr,
    dst: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let time_ms = super::super::metrics::now_ms();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(ToString::to_string));
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let protocol = format!("{:?}", req.version());
    let hreq = HttpRequest {
        method: Some(method.clone()),
        path: Some(path.clone()),
        host: host.clone(),
        headers: header_map(req.headers()),
    };
    let (verdict, source, destination) = {
        let v = shared.view.read().unwrap_or_else(|p| p.into_inner());
        let source = FlowPeer {
            ip: client.ip(),
            port: client.port(),
            identity: v.identity_of(client.ip()),
            pod: v.peers.get(&client.ip()).and_then(|p| p.name.clone()),
        };
        let (verdict, destination) = match v.ingress(dst, client.ip()) {
            Some((local, l4)) => {
                let verdict = match l4 {
                    L4Verdict::Redirect(sets) => http_verdict(&sets, &hreq),
                    L4Verdict::Allow => RequestVerdict::Forward,
                    L4Verdict::Deny => RequestVerdict::Deny,
                };
                let d = FlowPeer {
                    ip: dst.ip(),
                    port: dst.port(),
                    identity: local.identity,
                    pod: Some(local.name.clone()),
                };
                (verdict, d)
            }
            None => (
                RequestVerdict::Deny,
                FlowPeer {
                    ip: dst.ip(),
                    port: dst.port(),
                    identity: v.identity_of(dst.ip()),
                    pod: None,
                },
            ),
        };
        (verdict, source, destination)
    };

    let (response, l7_verdict) = match verdict {
        RequestVerdict::Deny => (denied(), L7Verdict::Denied),
        RequestVerdict::Forward => {
            strip_hop_by_hop(req.headers_mut());
            if !req.headers().contains_key(header::HOST)
                && let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok())
            {
                req.headers_mut().insert(header::HOST, h);
            }
            match Uri::builder()
                .scheme("http")
                .authority(dst.to_string())
                .path_and_query(path.as_str())
                .build()
            {
                Ok(uri) => {
                    *req.uri_mut() = uri;
                    *req.version_mut() = Version::HTTP_11;
                    match shared.client.request(req).await {
                        Ok(resp) => {
                            let (mut parts, body) = resp.into_parts();
                            strip_hop_by_hop(&mut parts.headers);
                            (
                                Response::from_parts(parts, body.boxed()),
                                L7Verdict::Forwarded,
                            )
                        }
                        Err(e) => {
                            eprintln!("palisade agent: l7 proxy: {client} -> {dst}: upstream: {e}");
                            (
                                plain(StatusCode::BAD_GATEWAY, "upstream unreachable\r\n"),
                                L7Verdict::Error,
                            )
                        }
                    }
                }
                Err(e) => {
                    eprintln!(
                        "palisade agent: l7 proxy: {client} -> {dst}: bad target `{path}`: {e}"
                    );
                    (
                        plain(StatusCode::BAD_REQUEST, "bad request target\r\n"),
                        L7Verdict::Error,
                    )
                }
            }
        }
    };
    let status = response.status().as_u16();
    metrics::counter!(
        "palisade_agent_http_requests_total",
        "method" => method_label(&method),
        "status" => status.to_string(),
        "verdict" => l7_verdict.as_str()
    )
    .increment(1);
    shared.flows.push(L7Flow {
        time_ms,
        direction: "ingress",
        source,
        destination,
        protocol,
        url: format!("http://{}{}", host.as_deref().unwrap_or(""), path),
        method,
        status,
        verdict: l7_verdict,
        latency_us: start.elapsed().as_micros() as u64,
    });
    response
}

/// Headers as the rules see them: lowercase names, repeated headers joined with `,`.
fn header_map(h: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (n, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes());
        out.entry(n.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    out
}

/// Removes the hop-by-hop headers (RFC 9110 §7.6.1), including those `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
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

fn denied() -> Response<ProxyBody> {
    plain(StatusCode::FORBIDDEN, ACCESS_DENIED)
}

fn plain(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn repeated_headers_are_joined_for_matching() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("X-B", HeaderValue::from_static("3"));
        let m = header_map(&h);
        assert_eq!(m["x-a"], "1,2");
        assert_eq!(m["x-b"], "3");
        assert_eq!(method_label("BREW"), "other");
    }
}
