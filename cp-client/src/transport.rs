//! One request, tried on each server in turn: the failover policy lives here and only here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Url;
use reqwest::blocking::Client as Http;
use serde_json::Value;

use crate::config::ClientConfig;
use crate::error::ClientError;

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// A request: method, path segments (encoded here), query pairs, JSON body, and how long the
/// server may legitimately hold it (a long poll's own timeout) on top of the client's timeout.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub path: &'a [&'a str],
    pub query: Vec<(&'static str, String)>,
    pub body: Option<&'a Value>,
    pub hold: Duration,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, path: &'a [&'a str]) -> Self {
        Call {
            method,
            path,
            query: Vec::new(),
            body: None,
            hold: Duration::ZERO,
        }
    }

    /// `METHOD /a/b`, for messages.
    pub fn describe(&self) -> String {
        format!("{} /{}", self.method.name(), self.path.join("/"))
    }
}

/// A server's answer: status and body (JSON, a JSON string for a non-JSON body, `Null` if empty).
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
}

/// The HTTP client and the servers, with the index of the last one that answered.
pub(crate) struct Transport {
    http: Http,
    servers: Vec<Url>,
    token: Option<String>,
    timeout: Duration,
    /// Where the next call starts: the last server that answered, so a healthy cluster costs one
    /// attempt per call and a dead member is skipped once, not on every call.
    preferred: AtomicUsize,
}

/// A key unique to one call of this process: process id, start time and a counter.
fn idempotency_key() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("palisade-{:x}-{start:x}-{n:x}", std::process::id())
}

/// Parses a base URL; `host:port` alone means `http://host:port`.
fn parse_server(s: &str, tls: bool) -> Result<Url, ClientError> {
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let bad = |why: String| ClientError::Config {
        reason: format!("server `{s}`: {why}"),
    };
    let url = Url::parse(&with_scheme).map_err(|e| bad(e.to_string()))?;
    match (url.scheme(), tls) {
        ("http", false) | ("https", true) => {}
        // Trusting whatever certificate a server shows would defeat the point of TLS.
        ("https", false) => {
            return Err(bad(
                "https needs the cluster CA to trust (a TLS directory with ca.pem)".to_owned(),
            ));
        }
        // With TLS configured, a plain-HTTP member would receive the token in clear.
        ("http", true) => {
            return Err(bad(
                "plain http while TLS is configured; use https://".to_owned()
            ));
        }
        (other, _) => return Err(bad(format!("unsupported scheme `{other}`"))),
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(bad("needs a host, e.g. http://127.0.0.1:8001".to_owned()));
    }
    Ok(url)
}

/// An error and its causes on one line (reqwest's own message hides the root cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Why a request to `server` got no answer, short: reqwest's own message repeats the URL and
/// wraps the cause in layers (`error sending request for url (..): client error (Connect): ..`).
fn failure(server: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("{server}: timed out");
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    if e.is_connect() {
        format!("{server}: cannot connect: {root}")
    } else {
        format!("{server}: {}", chain(e))
    }
}

impl Transport {
    pub fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
        if cfg.servers.is_empty() {
            return Err(ClientError::Config {
                reason: "no server given".to_owned(),
            });
        }
        if cfg.timeout.is_zero() {
            return Err(ClientError::Config {
                reason: "the timeout must be positive".to_owned(),
            });
        }
        if let Some(t) = &cfg.token
            && (t.is_empty() || t.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(ClientError::Config {
                reason: "the token must be non-empty, without spaces or control characters"
                    .to_owned(),
            });
        }
        let servers = cfg
            .servers
            .iter()
            .map(|s| parse_server(s, cfg.tls.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = Http::builder()
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout);
        if let Some(tls) = &cfg.tls {
            let bad = |what: &str, e: reqwest::Error| ClientError::Config {
                reason: format!("TLS: {what}: {}", chain(&e)),
            };
            let ca = reqwest::Certificate::from_pem(&tls.ca_pem)
                .map_err(|e| bad("the CA is not a PEM certificate", e))?;
            builder = builder
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca)
                .https_only(true);
            if let Some(pem) = &tls.identity_pem {
                let id = reqwest::Identity::from_pem(pem)
                    .map_err(|e| bad("the client certificate or key is unusable", e))?;
                builder = builder.identity(id);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Config {
            reason: format!("cannot build the HTTP client: {}", chain(&e)),
        })?;
        Ok(Transport {
            http,
            servers,
            token: cfg.token.clone(),
            timeout: cfg.timeout,
            preferred: AtomicUsize::new(0),
        })
    }

    /// Sends `call` to one member given by its `host:port` (same scheme, credentials and trust as
    /// the configured servers), without failover: for questions only that member can answer.
    pub fn call_member(&self, host_port: &str, call: &Call<'_>) -> Result<Reply, ClientError> {
        let scheme = self.servers.first().map_or("http", Url::scheme);
        let base = parse_server(&format!("{scheme}://{host_port}"), scheme == "https")?;
        let key = (call.method != Method::Get).then(idempotency_key);
        self.send(&base, call, key.as_deref())
            .map_err(|last| ClientError::Unreachable {
                tried: vec![base.as_str().trim_end_matches('/').to_owned()],
                last,
            })
    }

    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(Url::as_str)
    }

    fn url(&self, base: &Url, call: &Call<'_>) -> Url {
        let mut url = base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(call.path);
        }
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        url
    }

    /// Sends `call` to the servers in turn, starting from the preferred one. A transport error
    /// (refused, reset, timed out) or a 503 (no leader known there right now) moves on to the
    /// next server. A write carries one `Idempotency-Key` on every attempt, so if an earlier
    /// attempt took effect the retry gets its answer instead of applying it again. Any other
    /// answer is final and returned as is.
    pub fn call(&self, call: &Call<'_>) -> Result<Reply, ClientError> {
        let key = (call.method != Method::Get).then(idempotency_key);
        let n = self.servers.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut tried = Vec::with_capacity(n);
        let mut last = String::new();
        let mut unavailable: Option<Reply> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let base = &self.servers[i];
            tried.push(base.as_str().trim_end_matches('/').to_owned());
            match self.send(base, call, key.as_deref()) {
                // 503: no leader known there; 502: a follower could not reach the leader. Both
                // may be fine on another member.
                Ok(reply) if reply.status == 503 || reply.status == 502 => {
                    last = format!("{} answered {}", tried[k], reply.status);
                    unavailable = Some(reply);
                }
                Ok(reply) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(e) => last = e,
            }
        }
        // Some member answered but had no leader: its message says more than "unreachable".
        if let Some(reply) = unavailable {
            return Err(ClientError::from_answer(reply.status, reply.body));
        }
        Err(ClientError::Unreachable { tried, last })
    }

    fn send(&self, base: &Url, call: &Call<'_>, key: Option<&str>) -> Result<Reply, String> {
        let url = self.url(base, call);
        let mut req = match call.method {
            Method::Get => self.http.get(url),
            Method::Post => self.http.post(url),
            Method::Put => self.http.put(url),
            Method::Delete => self.http.delete(url),
        };
        // The server may hold a long poll for `hold`; the client must wait longer than that.
        req = req.timeout(self.timeout + call.hold);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = call.body {
            req = req.json(b);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let server = base.as_str().trim_end_matches('/');
        let resp = req.send().map_err(|e| failure(server, &e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().map_err(|e| failure(server, &e))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&bytes).trim().to_owned())
            })
        };
        Ok(Reply { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            parse_server("127.0.0.1:8001", false)
                .map(|u| u.to_string())
                .ok(),
            Some("http://127.0.0.1:8001/".to_owned())
        );
        assert!(parse_server("https://a:1", true).is_ok());
        // https without a CA to trust, http while TLS is configured: both refused.
        assert!(parse_server("https://a:1", false).is_err());
        assert!(parse_server("http://a:1", true).is_err());
        assert!(parse_server("ftp://a:1", false).is_err());
        assert!(parse_server("http://", false).is_err());
    }

    #[test]
    fn paths_are_encoded_per_segment() {
        let t = Transport::new(&ClientConfig::new(["http://h:1/base/"])).expect("config");
        let path = ["v1", "policies", "CiliumNetworkPolicy", "-", "a b?"];
        let mut call = Call::new(Method::Get, &path);
        call.query.push(("from", "3".to_owned()));
        assert_eq!(
            t.url(&t.servers[0], &call).as_str(),
            "http://h:1/base/v1/policies/CiliumNetworkPolicy/-/a%20b%3F?from=3"
        );
    }

    /// A one-route HTTP server answering every request with `status` and `body`, counting them.
    fn fake(status: u16, body: &'static str) -> (String, std::sync::Arc<AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut sink = vec![0; len];
                let _ = reader.read_exact(&mut sink);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, hits)
    }

    #[test]
    fn moves_on_at_503_and_stays_with_the_server_that_answered() {
        let (busy, busy_hits) = fake(503, r#"{"error":"no leader"}"#);
        let (good, good_hits) = fake(200, r#"{"ok":true}"#);
        let t = Transport::new(&ClientConfig::new([busy.clone(), good.clone()])).expect("config");
        let call = Call::new(Method::Get, &["v1", "x"]);
        let r = t.call(&call).expect("answer");
        assert_eq!((r.status, r.body["ok"].as_bool()), (200, Some(true)));
        assert_eq!(busy_hits.load(Ordering::SeqCst), 1);
        // The next call starts at the server that answered.
        t.call(&call).expect("answer");
        assert_eq!(busy_hits.load(Ordering::SeqCst), 1);
        assert_eq!(good_hits.load(Ordering::SeqCst), 2);
        // Only 503s: the server's own message, not "unreachable".
        let t = Transport::new(&ClientConfig::new([busy])).expect("config");
        let e = t.call(&call).expect_err("503");
        assert_eq!(e.status(), Some(503), "{e}");
        assert!(e.to_string().contains("no leader"), "{e}");
    }

    #[test]
    fn other_statuses_are_final() {
        let (bad, _) = fake(400, r#"{"error":"`labels[0]`: bad","field":"labels[0]"}"#);
        let (good, good_hits) = fake(200, "{}");
        let t = Transport::new(&ClientConfig::new([bad, good])).expect("config");
        let r = t
            .call(&Call::new(Method::Get, &["v1", "x"]))
            .expect("answer");
        assert_eq!(r.status, 400);
        assert_eq!(good_hits.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn nothing_listening_is_unreachable_naming_every_server() {
        // Ports bound then released: nothing listens there.
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .expect("bind")
            })
            .collect();
        let cfg = ClientConfig::new(ports.iter().map(|p| format!("http://127.0.0.1:{p}")));
        let t = Transport::new(&cfg).expect("config");
        match t.call(&Call::new(Method::Get, &["healthz"])) {
            Err(ClientError::Unreachable { tried, last }) => {
                assert_eq!(tried.len(), 2);
                assert!(tried[0].ends_with(&ports[0].to_string()), "{tried:?}");
                assert!(!last.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}
