//! The HTTP side of the proxy: one hyper server connection per redirected TCP connection
//! (HTTP/1.1 with keep-alive, or HTTP/2 with prior knowledge, detected from the first bytes),
//! each request checked against the L7 rules of the endpoints involved (the destination's
//! ingress, the client's egress, both when both are local with rules), then forwarded to the
//! original destination or answered `403 Access denied`. Bodies stream both ways.
//!
//! Upstream, each client connection gets its own HTTP/1.1 connection, opened *from the client's
//! address* (IP_TRANSPARENT): the destination's datapath sees the real peer identity (its L4
//! policy still applies) and the server sees the real client; the replies come back to the
//! proxy through the `socket transparent` rule of the packet filter.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use palisade_policy::ir::HttpRequest;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Mutex;

use super::flow::{FlowLog, FlowPeer, L7Flow, L7Verdict};
use super::view::{L4Verdict, ProxyView, RequestVerdict, http_verdict};
use crate::agent::flows::{self, Enrichment};

/// Body of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Body of a denied request, as Cilium's proxy answers it.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// A client that sends no complete request header within this time is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting upstream gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection task shares.
pub struct Shared {
    /// The node as the run loop last published it.
    pub view: Arc<RwLock<Arc<ProxyView>>>,
    /// Flow records.
    pub flows: Arc<FlowLog>,
}

/// Accepts redirected connections forever and hands them to the workers in turn. The
/// accepted socket's local address is the connection's original destination (TPROXY keeps it).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, workers: Vec<Handle>) {
    let mut next = 0usize;
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
        // A socket belongs to the event loop that registered it: move it as a plain socket.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let shared = shared.clone();
        workers[next % workers.len()].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => connection(stream, client, dst, shared).await,
                Err(e) => eprintln!("palisade agent: l7 proxy: {client} -> {dst}: {e}"),
            }
        });
        next = next.wrapping_add(1);
    }
}

/// The verdict of one request over both sides, and what the flow record says of them.
struct Decision {
    verdict: RequestVerdict,
    /// `ingress` when the destination's rules applied, else `egress`.
    direction: &'static str,
    source: FlowPeer,
    destination: FlowPeer,
}

/// Decides on `req` (`None`: the connection-level L4 check, every side must let it in).
fn decide(
    v: &ProxyView,
    client: SocketAddr,
    dst: SocketAddr,
    req: Option<&HttpRequest>,
) -> Decision {
    let ingress = v.ingress(dst, client.ip());
    let egress = v.egress(client.ip(), dst);
    let side = |l4: &L4Verdict| match (l4, req) {
        (L4Verdict::Deny, _) => RequestVerdict::Deny,
        (L4Verdict::Allow, _) | (L4Verdict::Redirect(_), None) => RequestVerdict::Forward,
        (L4Verdict::Redirect(sets), Some(r)) => http_verdict(sets, r),
    };
    let sides: Vec<RequestVerdict> = [&ingress, &egress]
        .iter()
        .filter_map(|s| s.as_ref().map(|(_, l4)| side(l4)))
        .collect();
    // Nobody's rules cover the connection (policy changed under it): fail closed.
    let verdict = if !sides.is_empty() && sides.iter().all(|s| *s == RequestVerdict::Forward) {
        RequestVerdict::Forward
    } else {
        RequestVerdict::Deny
    };
    let peer = |ip: std::net::IpAddr, port: u16| FlowPeer {
        ip,
        port,
        identity: v.identity_of(ip),
        pod: v
            .peers
            .get(&ip)
            .and_then(|p| p.name.as_deref().map(str::to_owned)),
    };
    let direction = match &ingress {
        Some((_, L4Verdict::Redirect(_))) => "ingress",
        _ if egress.is_some() => "egress",
        _ => "ingress",
    };
    Decision {
        verdict,
        direction,
        source: peer(client.ip(), client.port()),
        destination: peer(dst.ip(), dst.port()),
    }
}

async fn connection(stream: TcpStream, client: SocketAddr, dst: SocketAddr, shared: Arc<Shared>) {
    let l4 = {
        let v = shared.view.read().unwrap_or_else(|p| p.into_inner());
        decide(&v, client, dst, None).verdict
    };
    if l4 != RequestVerdict::Forward {
        // The packet filter only steers peers the policy redirects; this is a race with a
        // policy change. Closing is what a drop would have become.
        eprintln!(
            "palisade agent: l7 proxy: {client} -> {dst}: not allowed at L4 (policy changed), closed"
        );
        return;
    }
    let _ = stream.set_nodelay(true);
    let upstream = Arc::new(Mutex::new(None::<SendRequest<Incoming>>));
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let upstream = upstream.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &upstream, client, dst, req).await) }
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

/// Opens the upstream connection from the client's address.
async fn connect_upstream(
    client: SocketAddr,
    dst: SocketAddr,
) -> Result<SendRequest<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if dst.is_ipv4() {
        s.set_ip_transparent_v4(true)?;
    } else {
        s.set_ip_transparent_v6(true)?;
    }
    // The mark tells the destination's datapath this connection went through the proxy.
    s.set_mark(palisade_datapath_common::endpoint::PROXY_MARK)?;
    s.bind(&SocketAddr::new(client.ip(), 0).into())?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(s));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst)).await??;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("palisade agent: l7 proxy: upstream {client} -> {dst}: {e}");
        }
    });
    Ok(sender)
}

/// Sends `req` on the connection's upstream, (re)connecting when there is none or it closed.
async fn forward(
    upstream: &Mutex<Option<SendRequest<Incoming>>>,
    client: SocketAddr,
    dst: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let fut = {
        let mut slot = upstream.lock().await;
        let reusable = match slot.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *slot = Some(connect_upstream(client, dst).await?);
        }
        let sender = slot.as_mut().ok_or("no upstream connection")?;
        // Held only until the request is handed over: a second stream (HTTP/2) waits in
        // `ready` for this response's body, not for this lock.
        sender.send_request(req)
    };
    Ok(fut.await?)
}

/// One request: verdict, then forward or deny, then the flow record.
async fn handle(
    shared: &Shared,
    upstream: &Mutex<Option<SendRequest<Incoming>>>,
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
    let d = {
        let v = shared.view.read().unwrap_or_else(|p| p.into_inner());
        decide(&v, client, dst, Some(&hreq))
    };

    let (response, l7_verdict) = match d.verdict {
        RequestVerdict::Deny => (denied(), L7Verdict::Denied),
        RequestVerdict::Forward => {
            strip_hop_by_hop(req.headers_mut());
            if !req.headers().contains_key(header::HOST)
                && let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok())
            {
                req.headers_mut().insert(header::HOST, h);
            }
            // Origin form upstream (HTTP/1.1 to the server itself).
            match Uri::builder().path_and_query(path.as_str()).build() {
                Ok(uri) => {
                    *req.uri_mut() = uri;
                    *req.version_mut() = Version::HTTP_11;
                    match forward(upstream, client, dst, req).await {
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
    let record = L7Flow {
        time_ms,
        direction: d.direction,
        source: d.source,
        destination: d.destination,
        protocol,
        url: format!("http://{}{}", host.as_deref().unwrap_or(""), path),
        method,
        status,
        verdict: l7_verdict,
        latency_us: start.elapsed().as_micros() as u64,
    };
    // Hubble's metrics count the flow the record becomes (naming does not enter the labels);
    // the agent's sink does it when it builds that flow for the ring.
    shared.flows.push(record, |r| {
        flows::count_l7(&flows::l7_flow(r, &Enrichment::default()));
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
    }
}
