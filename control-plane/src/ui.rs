//! The web UI (`--ui-listen`, Hubble UI's port 12000): a namespace picker, a service map built
//! from flows and a live flow table, served as static assets compiled into the binary (no CDN,
//! no network at run time) plus JSON endpoints answered from the flow relay
//! ([`crate::grpc::relay::Relay::flows`]), i.e. from every node's agent.
//!
//! ```text
//!  browser ──GET /, /app.js, /style.css──▶ embedded assets
//!          ──GET /api/v1/namespaces───────▶ identities in use (their namespace label)
//!          ──GET /api/v1/flows?…──────────▶ relay ─▶ agents ─▶ view::FlowView list + cursor
//!          ──GET /api/v1/map?…────────────▶ relay ─▶ agents ─▶ service_map::build
//! ```
//!
//! The page polls: each `/api/v1/flows` answer carries a `cursor`; asking again with
//! `since=<cursor>` returns the flows from then on (the page drops the ones it already has by
//! `uuid`), which is the follow mode.
//!
//! Who may call: the UI shows every flow of the cluster, so it is plain HTTP meant for a
//! loopback address (the default `127.0.0.1:12000`) reached through an SSH tunnel or
//! `palisade ui --lab`'s forwarder, as the Hubble UI is through a port-forward. When the member
//! has token files, every `/api` call needs a bearer token of the read role (the page asks for
//! it, or takes it from the URL fragment `#token=…`, which never reaches a server or a log);
//! the assets carry no data and are public. Without token files anyone who can reach the
//! address sees the flows; then only requests whose `Host` is an IP address or `localhost` are
//! answered, so a web page cannot read the API through DNS rebinding.

pub mod service_map;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use palisade_api::flow::{self, FlowFilter};
use palisade_api::observer::GetFlowsRequest;
use palisade_api::observer::get_flows_response::ResponseTypes;
use palisade_api::relay::NodeState;
use serde::Serialize;
use serde_json::json;

use crate::auth::{self, Denial, Role, Tokens};
use crate::grpc::relay::Relay;
use crate::ops::{Consistency, Ops};

/// The UI's default listen address: Hubble UI's port, on loopback only (see the module docs).
pub const DEFAULT_UI_LISTEN: &str = "127.0.0.1:12000";

/// Flows the table asks for when the page gives no `limit`.
const DEFAULT_FLOW_LIMIT: u64 = 500;
/// Flows the map is built from when the page gives no `limit`.
const DEFAULT_MAP_LIMIT: u64 = 2_000;
/// The most flows one answer carries.
const MAX_LIMIT: u64 = 20_000;
/// With a pod filter, this many times `limit` flows are asked for (the pod is matched here).
const POD_OVERFETCH: u64 = 4;
/// How long one answer may wait for the agents behind the relay.
const RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// The label carrying a pod's namespace in identities.
const NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace=";

const INDEX_HTML: &str = include_str!("ui/assets/index.html");
const APP_JS: &str = include_str!("ui/assets/app.js");
const STYLE_CSS: &str = include_str!("ui/assets/style.css");

/// The protocols the agents' filter knows (`FlowFilter.protocol`).
const PROTOCOLS: [&str; 8] = [
    "tcp", "udp", "icmp", "icmpv4", "icmpv6", "sctp", "http", "dns",
];

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Ui {
    relay: Relay,
    ops: Ops,
    tokens: Arc<Tokens>,
}

impl Ui {
    /// The UI over `relay` (flows) and `ops` (namespaces), authenticating with `tokens`.
    pub fn new(relay: Relay, ops: Ops, tokens: Arc<Tokens>) -> Self {
        Ui { relay, ops, tokens }
    }
}

/// An error answer: status plus `{"error", "field"}` (the query parameter at fault).
#[derive(Debug)]
struct UiError {
    status: StatusCode,
    error: String,
    field: Option<&'static str>,
}

impl UiError {
    fn bad(field: &'static str, reason: impl std::fmt::Display) -> Self {
        UiError {
            status: StatusCode::BAD_REQUEST,
            error: format!("`{field}`: {reason}"),
            field: Some(field),
        }
    }

    fn status(status: StatusCode, error: impl Into<String>) -> Self {
        UiError {
            status,
            error: error.into(),
            field: None,
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(f) => json!({"error": self.error, "field": f}),
            None => json!({"error": self.error}),
        };
        (self.status, Json(body)).into_response()
    }
}

/// Builds the router.
pub fn router(ui: Ui) -> Router {
    let api = Router::new()
        .route("/api/v1/namespaces", get(namespaces))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/map", get(map))
        .route_layer(middleware::from_fn_with_state(ui.clone(), authorize))
        .with_state(ui);
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .merge(api)
        .layer(middleware::from_fn(security_headers))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Headers on every answer: the page runs only its own script and style, talks only to this
/// origin, cannot be framed, and sends no referrer; API answers are not cached.
async fn security_headers(req: Request<axum::body::Body>, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// Whether `host` (a `Host` header) names an IP address or `localhost`, with or without a port.
fn host_is_address(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// The API's access check (see the module docs).
async fn authorize(
    State(ui): State<Ui>,
    headers: HeaderMap,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    if !ui.tokens.enabled() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !host_is_address(host) {
            return UiError::status(
                StatusCode::FORBIDDEN,
                format!(
                    "host `{host}` refused: without token files the UI answers only requests \
                     addressed to an IP address or localhost"
                ),
            )
            .into_response();
        }
        return next.run(req).await;
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth::check_bearer(&ui.tokens, authorization, Role::Read) {
        Ok(()) => next.run(req).await,
        Err(Denial::Unauthenticated(why)) => {
            let mut res = UiError::status(StatusCode::UNAUTHORIZED, why).into_response();
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            res
        }
        Err(Denial::WrongRole(have)) => UiError::status(
            StatusCode::FORBIDDEN,
            format!("a {} token may not read flows", have.name()),
        )
        .into_response(),
    }
}

// === query parameters ===

/// The filters and window of a flows or map request, validated.
#[derive(Debug, Default, PartialEq)]
struct FlowQuery {
    namespace: Option<String>,
    verdict: Option<flow::Verdict>,
    pod: Option<String>,
    protocol: Option<String>,
    since: Option<prost_types::Timestamp>,
    limit: Option<u64>,
}

/// A Kubernetes-style name: lowercase letters, digits, `-` and `.`, 1–253 characters.
fn check_name(field: &'static str, v: &str) -> Result<String, UiError> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(v.to_string())
    } else {
        Err(UiError::bad(
            field,
            format!("`{v}` is not a name (lowercase letters, digits, `-`, `.`)"),
        ))
    }
}

/// `since`: nanoseconds since the epoch (a `cursor` of an earlier answer) or an RFC 3339 time.
fn parse_since(v: &str) -> Result<prost_types::Timestamp, UiError> {
    let ns: u128 = match v.parse::<u128>() {
        Ok(ns) => ns,
        Err(_) => humantime::parse_rfc3339_weak(v)
            .map_err(|_| {
                UiError::bad(
                    "since",
                    format!("`{v}`: expected nanoseconds since the epoch or an RFC 3339 time"),
                )
            })?
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    };
    let seconds = i64::try_from(ns / 1_000_000_000)
        .map_err(|_| UiError::bad("since", format!("`{v}` is out of range")))?;
    Ok(prost_types::Timestamp {
        seconds,
        nanos: (ns % 1_000_000_000) as i32,
    })
}

impl FlowQuery {
    /// Parses the query string's pairs; empty values mean "no filter" (the page sends its
    /// whole form), unknown parameters are refused.
    fn parse(pairs: &[(String, String)]) -> Result<FlowQuery, UiError> {
        let mut q = FlowQuery::default();
        for (k, v) in pairs {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match k.as_str() {
                "namespace" => q.namespace = Some(check_name("namespace", v)?),
                "pod" => q.pod = Some(check_name("pod", v)?),
                "verdict" => {
                    let verdict = flow::Verdict::from_str_name(&v.to_ascii_uppercase())
                        .filter(|v| *v != flow::Verdict::Unknown)
                        .ok_or_else(|| {
                            UiError::bad(
                                "verdict",
                                format!(
                                    "`{v}`: expected FORWARDED, DROPPED, AUDIT, REDIRECTED, \
                                     ERROR, TRACED or TRANSLATED"
                                ),
                            )
                        })?;
                    q.verdict = Some(verdict);
                }
                "protocol" => {
                    let p = v.to_ascii_lowercase();
                    if !PROTOCOLS.contains(&p.as_str()) {
                        return Err(UiError::bad(
                            "protocol",
                            format!("`{v}`: expected one of {}", PROTOCOLS.join(", ")),
                        ));
                    }
                    q.protocol = Some(p);
                }
                "since" => q.since = Some(parse_since(v)?),
                "limit" => {
                    let n = v
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            UiError::bad("limit", format!("`{v}`: expected 1 to {MAX_LIMIT}"))
                        })?;
                    q.limit = Some(n);
                }
                _ => {
                    return Err(UiError::status(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown parameter `{k}` (namespace, pod, verdict, protocol, since, \
                             limit)"
                        ),
                    ));
                }
            }
        }
        Ok(q)
    }

    /// The relay request: the last `limit` flows (since `since`) where either side is in the
    /// namespace, with the verdict and protocol. The pod is matched here ([`Self::keeps`]), not
    /// by the agents: an agent knows only its own pods' names, so a flow it saw from a pod of
    /// another node would never match a pod selector there; over-fetch for it.
    fn request(&self, default_limit: u64) -> GetFlowsRequest {
        let base = FlowFilter {
            verdict: self.verdict.map(|v| v as i32).into_iter().collect(),
            protocol: self.protocol.clone().into_iter().collect(),
            ..FlowFilter::default()
        };
        let whitelist = match self.namespace.as_ref().map(|ns| format!("{ns}/")) {
            // Either side: two filters, OR-ed by the whitelist.
            Some(sel) => vec![
                FlowFilter {
                    source_pod: vec![sel.clone()],
                    ..base.clone()
                },
                FlowFilter {
                    destination_pod: vec![sel],
                    ..base
                },
            ],
            None if base == FlowFilter::default() => Vec::new(),
            None => vec![base],
        };
        let limit = self.limit.unwrap_or(default_limit);
        GetFlowsRequest {
            number: if self.pod.is_some() {
                (limit * POD_OVERFETCH).min(MAX_LIMIT)
            } else {
                limit
            },
            first: false,
            follow: false,
            blacklist: Vec::new(),
            whitelist,
            since: self.since,
            until: None,
        }
    }

    /// Whether `f` passes the pod filter: either side (in the namespace, when one is given)
    /// whose pod name or workload name starts with it.
    fn keeps(&self, f: &view::FlowView) -> bool {
        let Some(pod) = &self.pod else {
            return true;
        };
        [&f.source, &f.destination].into_iter().any(|s| {
            let name = s
                .workload
                .rsplit_once('/')
                .map_or(s.workload.as_str(), |(_, n)| n);
            self.namespace.as_ref().is_none_or(|ns| *ns == s.namespace)
                && (s.pod.starts_with(pod.as_str()) || name.starts_with(pod.as_str()))
        })
    }

    /// The flows (oldest first) that pass [`Self::keeps`], the last `limit` of them.
    fn select(&self, mut flows: Vec<view::FlowView>, default_limit: u64) -> Vec<view::FlowView> {
        flows.retain(|f| self.keeps(f));
        let limit = usize::try_from(self.limit.unwrap_or(default_limit)).unwrap_or(usize::MAX);
        let skip = flows.len().saturating_sub(limit);
        flows.split_off(skip)
    }
}

// === handlers ===

/// A node the relay could not ask, and why.
#[derive(Debug, Serialize)]
struct Unavailable {
    node: String,
    message: String,
}

/// What the relay answered.
#[derive(Debug, Default, Serialize)]
struct Collected {
    flows: Vec<view::FlowView>,
    connected: Vec<String>,
    unavailable: Vec<Unavailable>,
    lost_events: u64,
}

impl Ui {
    /// Every answer of the relay for `req`, within [`RELAY_TIMEOUT`].
    async fn collect(&self, req: GetFlowsRequest) -> Result<Collected, UiError> {
        let relayed = async {
            let mut stream = self.relay.flows(req).await.map_err(relay_error)?;
            let mut out = Collected::default();
            while let Some(r) = stream.next().await {
                let r = r.map_err(relay_error)?;
                match r.response_types {
                    Some(ResponseTypes::Flow(f)) => out.flows.push(view::FlowView::of(&f)),
                    Some(ResponseTypes::NodeStatus(s)) => {
                        if s.state_change == NodeState::NodeConnected as i32 {
                            out.connected.extend(s.node_names);
                        } else {
                            for node in s.node_names {
                                out.connected.retain(|n| *n != node);
                                out.unavailable.push(Unavailable {
                                    node,
                                    message: s.message.clone(),
                                });
                            }
                        }
                    }
                    Some(ResponseTypes::LostEvents(l)) => out.lost_events += l.num_events_lost,
                    None => {}
                }
            }
            Ok(out)
        };
        tokio::time::timeout(RELAY_TIMEOUT, relayed)
            .await
            .map_err(|_| {
                UiError::status(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the agents did not answer within {RELAY_TIMEOUT:?}"),
                )
            })?
    }
}

fn relay_error(s: tonic::Status) -> UiError {
    let status = match s.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    UiError::status(status, format!("flow relay: {}", s.message()))
}

fn now_ns() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

/// `GET /api/v1/namespaces`: the namespaces of the identities in use, sorted.
async fn namespaces(State(ui): State<Ui>) -> Result<Json<serde_json::Value>, UiError> {
    let ids = ui
        .ops
        .list_identities(Consistency::Local)
        .await
        .map_err(|e| UiError::status(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let names: std::collections::BTreeSet<&str> = ids
        .iter()
        .filter(|i| i.unreferenced_since_ms.is_none())
        .flat_map(|i| i.labels.iter())
        .filter_map(|l| l.strip_prefix(NAMESPACE_LABEL))
        .collect();
    Ok(Json(json!({ "namespaces": names })))
}

/// `GET /api/v1/flows?namespace&pod&verdict&protocol&since&limit`: the last flows matching,
/// oldest first, and the `cursor` to poll from. `pod` matches a pod or workload name prefix on
/// either side.
async fn flows(
    State(ui): State<Ui>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, UiError> {
    let q = FlowQuery::parse(&pairs)?;
    let mut c = ui.collect(q.request(DEFAULT_FLOW_LIMIT)).await?;
    // The newest flow the agents returned, kept or not (nothing new: the same point again).
    let cursor = c
        .flows
        .iter()
        .map(|f| f.time_ns)
        .max()
        .map(|t| t.to_string())
        .or_else(|| {
            q.since
                .map(|s| (i128::from(s.seconds) * 1_000_000_000 + i128::from(s.nanos)).to_string())
        })
        .unwrap_or_else(now_ns);
    c.flows = q.select(c.flows, DEFAULT_FLOW_LIMIT);
    Ok(Json(json!({
        "flows": c.flows,
        "cursor": cursor,
        "nodes": { "connected": c.connected, "unavailable": c.unavailable },
        "lost_events": c.lost_events,
    })))
}

/// `GET /api/v1/map?namespace&pod&verdict&protocol&since&limit`: the service map of the last
/// flows matching.
async fn map(
    State(ui): State<Ui>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, UiError> {
    let q = FlowQuery::parse(&pairs)?;
    let mut c = ui.collect(q.request(DEFAULT_MAP_LIMIT)).await?;
    c.flows = q.select(c.flows, DEFAULT_MAP_LIMIT);
    let map = service_map::build(&c.flows, q.namespace.as_deref());
    Ok(Json(json!({
        "namespace": q.namespace,
        "flows": c.flows.len(),
        "nodes": map.nodes,
        "edges": map.edges,
        "relay": { "connected": c.connected, "unavailable": c.unavailable },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_become_an_either_side_whitelist() {
        let q = FlowQuery::parse(&pairs(&[
            ("namespace", "demo"),
            ("pod", "web"),
            ("verdict", "dropped"),
            ("protocol", "TCP"),
            ("since", "1795712462000000005"),
            ("limit", "50"),
        ]))
        .expect("valid");
        let r = q.request(DEFAULT_FLOW_LIMIT);
        // The pod is matched by the UI, so more flows are asked for.
        assert_eq!(r.number, 50 * POD_OVERFETCH);
        assert_eq!(
            r.since,
            Some(prost_types::Timestamp {
                seconds: 1_795_712_462,
                nanos: 5
            })
        );
        assert_eq!(r.whitelist.len(), 2);
        assert_eq!(r.whitelist[0].source_pod, ["demo/"]);
        assert_eq!(r.whitelist[1].destination_pod, ["demo/"]);
        for f in &r.whitelist {
            assert_eq!(f.verdict, [flow::Verdict::Dropped as i32]);
            assert_eq!(f.protocol, ["tcp"]);
        }
        // The page sends its whole form: empty values are no filter at all.
        let q = FlowQuery::parse(&pairs(&[("namespace", ""), ("verdict", "")])).expect("valid");
        let r = q.request(DEFAULT_MAP_LIMIT);
        assert!(r.whitelist.is_empty());
        assert_eq!(r.number, DEFAULT_MAP_LIMIT);
        let q = FlowQuery::parse(&pairs(&[("namespace", "demo")])).expect("valid");
        assert_eq!(q.request(1).whitelist[0].source_pod, ["demo/"]);
        let q = FlowQuery::parse(&pairs(&[("since", "2026-11-26T17:01:02Z")])).expect("rfc3339");
        assert_eq!(q.since.map(|s| s.seconds), Some(1_795_712_462));
    }

    #[test]
    fn the_pod_filter_matches_pod_or_workload_names_on_either_side() {
        use palisade_api::flow::Verdict;

        use crate::ui::view::tests::tcp_flow;
        let q = FlowQuery::parse(&pairs(&[
            ("namespace", "demo"),
            ("pod", "web"),
            ("limit", "1"),
        ]))
        .expect("valid");
        // Seen on the server's node: the client has no pod name there, only its app label.
        let remote_client = view::FlowView::of(&tcp_flow(
            ("demo", "", &["k8s:app=web"]),
            ("demo", "api-1", &["k8s:app=api"]),
            Verdict::Forwarded,
            80,
        ));
        let local_client = view::FlowView::of(&tcp_flow(
            ("demo", "web-7f9c", &["k8s:app=frontend"]),
            ("demo", "", &["k8s:app=api"]),
            Verdict::Forwarded,
            80,
        ));
        let other_ns = view::FlowView::of(&tcp_flow(
            ("prod", "web-1", &["k8s:app=web"]),
            ("demo", "api-1", &["k8s:app=api"]),
            Verdict::Dropped,
            80,
        ));
        let unrelated = view::FlowView::of(&tcp_flow(
            ("demo", "db-0", &["k8s:app=db"]),
            ("demo", "api-1", &["k8s:app=api"]),
            Verdict::Forwarded,
            5432,
        ));
        assert!(q.keeps(&remote_client));
        assert!(q.keeps(&local_client));
        assert!(!q.keeps(&other_ns));
        assert!(!q.keeps(&unrelated));
        // The last `limit` of those kept.
        let kept = q.select(
            vec![remote_client.clone(), unrelated, local_client.clone()],
            DEFAULT_FLOW_LIMIT,
        );
        assert_eq!(kept, vec![local_client]);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let field = |q: &[(&str, &str)]| {
            FlowQuery::parse(&pairs(q))
                .err()
                .map(|e| (e.status, e.field, e.error))
        };
        for (q, want) in [
            (("verdict", "MAYBE"), "verdict"),
            (("protocol", "quic"), "protocol"),
            (("namespace", "Demo"), "namespace"),
            (("pod", "a b"), "pod"),
            (("since", "yesterday"), "since"),
            (("limit", "0"), "limit"),
            (("limit", "99999999"), "limit"),
        ] {
            let (status, f, msg) = field(&[q]).expect("refused");
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(f, Some(want), "{msg}");
            assert!(msg.starts_with(&format!("`{want}`")), "{msg}");
        }
        let (status, f, msg) = field(&[("colour", "red")]).expect("refused");
        assert_eq!((status, f), (StatusCode::BAD_REQUEST, None));
        assert!(msg.contains("unknown parameter `colour`"), "{msg}");
    }

    #[test]
    fn only_address_hosts_pass_without_tokens() {
        for ok in [
            "127.0.0.1:12000",
            "10.97.0.1",
            "localhost:12000",
            "[::1]:12000",
        ] {
            assert!(host_is_address(ok), "{ok}");
        }
        for bad in ["evil.example:12000", "", "127.0.0.1.nip.io", "[evil]:1"] {
            assert!(!host_is_address(bad), "{bad}");
        }
    }
}
