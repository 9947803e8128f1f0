//! The client API: REST/JSON over axum on its own listener (`--api-listen`).
//!
//! Who may call it: automation and agents holding a bearer token ([`crate::auth`]): admin
//! tokens for everything under `/v1`, read tokens for GETs; the `/internal/v1/*` endpoints only
//! with the members' token or a member certificate. With `--tls-dir` it serves HTTPS and
//! accepts optional client certificates: a node certificate authenticates that node's agent for
//! the agent's calls only (see [`authenticate`]).
//!
//! Writes go through Raft; on a follower they are forwarded to the leader (one hop, see
//! [`crate::cluster`]), so any member accepts any request. Reads are linearizable by default;
//! `?consistency=local` serves this member's applied state without a leader round trip (may be
//! stale by the replication lag). Errors are JSON `{"error": "...", "field": "..."}` with a 4xx
//! for bad requests (the field names the offending part of the body or path), 409 when the state
//! machine refused a write (nothing changed), 503 while no leader is known (retry: every
//! operation is idempotent), 504 on timeout.
//!
//! `/internal/v1/*` serve member-to-member forwarding (propose, read index, membership).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::{
    Endpoint, NodeRecord, NodeRegistration, PolicyKey, Request, Response, normalize_labels,
};
use crate::auth::{self, AgentCheck, Tokens};
use crate::cluster::{Cluster, MembershipChange};
use crate::errors::ClusterError;
use crate::tls::{CertRole, ClientCert, PeerIdentity};
use crate::validate::PolicyValidator;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Api {
    cluster: Cluster,
    node_lease: Duration,
    tokens: Arc<Tokens>,
    validator: Arc<dyn PolicyValidator>,
    prometheus: Option<PrometheusHandle>,
}

/// An error answer: status plus `{"error", "field"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl ApiError {
    fn bad(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        let field = field.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: format!("`{field}`: {reason}"),
            field: Some(field),
        }
    }

    fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: format!("{what} not found"),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        let body = match self.field {
            Some(f) => json!({"error": self.error, "field": f}),
            None => json!({"error": self.error}),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let status = match &e {
            ClusterError::NoLeader | ClusterError::MembershipBusy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ClusterError::Forward { .. } => StatusCode::BAD_GATEWAY,
            ClusterError::Leader { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ClusterError::Rejected { .. } | ClusterError::Membership { .. } => StatusCode::CONFLICT,
            ClusterError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ClusterError::Fatal { .. } | ClusterError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        // Rejections name their field as "`field`: reason"; surface it.
        let error = e.to_string();
        let field = match &e {
            ClusterError::Rejected { reason } => reason
                .strip_prefix('`')
                .and_then(|r| r.split_once('`'))
                .map(|(f, _)| f.to_owned()),
            _ => None,
        };
        ApiError {
            status,
            error,
            field,
        }
    }
}

type ApiResult<T = HttpResponse> = Result<T, ApiError>;

/// Parses a JSON body; errors name the field path.
fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::bad(field, inner)
    })
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Consistency {
    #[default]
    Linearizable,
    Local,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    #[serde(default)]
    consistency: Consistency,
}

impl Api {
    async fn before_read(&self, q: Result<Query<ReadParams>, QueryRejection>) -> ApiResult<()> {
        let Query(q) = q.map_err(|e| ApiError::bad("consistency", e.body_text()))?;
        if q.consistency == Consistency::Linearizable {
            self.cluster.linearize().await?;
        }
        Ok(())
    }
}

/// Builds the router.
pub fn router(
    cluster: Cluster,
    validator: Arc<dyn PolicyValidator>,
    prometheus: Option<PrometheusHandle>,
    node_lease: Duration,
    tokens: Tokens,
) -> Router {
    let api = Api {
        cluster,
        node_lease,
        tokens: Arc::new(tokens),
        validator,
        prometheus,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/cluster/members", post(cluster_members))
        .route("/v1/cluster/snapshot", post(cluster_snapshot))
        .route(
            "/v1/identities",
            post(allocate_identity).get(list_identities),
        )
        .route("/v1/identities/gc", post(collect_identities))
        .route(
            "/v1/identities/{id}",
            get(get_identity).delete(release_identity),
        )
        .route("/v1/policies", get(list_policies))
        .route("/v1/policies/wait", get(wait_policies))
        .route(
            "/v1/policies/{kind}/{namespace}/{name}",
            put(apply_policy).get(get_policy).delete(delete_policy),
        )
        .route("/v1/nodes", post(register_node).get(list_nodes))
        .route("/v1/nodes/{name}", get(get_node).delete(remove_node))
        .route("/v1/nodes/{name}/ack", post(ack_revision))
        .route("/v1/nodes/{name}/heartbeat", post(heartbeat))
        .route("/v1/endpoints", get(list_endpoints))
        .route("/v1/watch", get(watch))
        .route("/v1/watch/revision", get(watch_revision))
        .route(
            "/v1/endpoints/{ip}",
            put(upsert_endpoint)
                .get(get_endpoint)
                .delete(remove_endpoint),
        )
        .route("/internal/v1/propose", post(internal_propose))
        .route("/internal/v1/read-index", get(internal_read_index))
        .route("/internal/v1/members", post(internal_members))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api)
}

/// Refuses requests without the credentials their method and path need.
///
/// A client certificate (HTTPS with `--tls-dir`, chained to the cluster CA) comes first: a
/// `node` certificate makes the request its agent's, allowed only what [`auth::agent_check`]
/// allows, whatever token it carries; a `member` certificate may call `/internal/v1/*`. Then
/// bearer tokens: 401 without a valid token, 403 with a token of the wrong role.
async fn authenticate(
    State(api): State<Api>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> HttpResponse {
    let Some(need) = auth::required_role(req.method().as_str(), req.uri().path()) else {
        return next.run(req).await;
    };
    let cert = req
        .extensions()
        .get::<ConnectInfo<ClientCert>>()
        .and_then(|c| c.0.0.clone());
    match cert {
        Some(PeerIdentity {
            role: CertRole::Node,
            name,
        }) => return authorize_agent(&api, &name, req, next).await,
        Some(PeerIdentity {
            role: CertRole::Member,
            ..
        }) if need == auth::Role::Member => return next.run(req).await,
        _ => {}
    }
    if !api.tokens.enabled() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = presented else {
        return deny(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (`Authorization: Bearer TOKEN`)".to_owned(),
        );
    };
    match api.tokens.role_of(token) {
        None => deny(StatusCode::UNAUTHORIZED, "invalid bearer token".to_owned()),
        Some(have) if auth::allows(have, need) => next.run(req).await,
        Some(have) => deny(
            StatusCode::FORBIDDEN,
            format!(
                "a {} token may not call `{} {}` (it needs the {} role)",
                have.name(),
                req.method(),
                req.uri().path(),
                need.name()
            ),
        ),
    }
}

/// A 401 (with `WWW-Authenticate: Bearer`) or 403 answer.
fn deny(status: StatusCode, error: String) -> HttpResponse {
    let mut r = ApiError {
        status,
        error,
        field: None,
    }
    .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// Largest body an agent's register or endpoint call may carry (read before the handler).
const AGENT_BODY_LIMIT: usize = 64 << 10;

/// Lets the agent of `node` (its node certificate) through to what [`auth::agent_check`]
/// allows: its own node's calls, its own endpoints (checked against this member's applied
/// state), identity allocation and reads.
async fn authorize_agent(
    api: &Api,
    node: &str,
    req: axum::extract::Request,
    next: middleware::Next,
) -> HttpResponse {
    let (field, endpoint) = match auth::agent_check(node, req.method().as_str(), req.uri().path()) {
        AgentCheck::Allow => return next.run(req).await,
        AgentCheck::Deny(why) => return deny(StatusCode::FORBIDDEN, why),
        AgentCheck::Owned { field, endpoint } => (field, endpoint),
    };
    if let Some(ip) = endpoint.and_then(|ip| ip.parse::<IpAddr>().ok()) {
        let owner = api
            .cluster
            .read(|s| s.endpoints.get(&ip).map(|e| e.node.clone()))
            .ok()
            .flatten();
        if let Some(owner) = owner
            && owner != node
        {
            return deny(
                StatusCode::FORBIDDEN,
                format!(
                    "the node certificate of `{node}` may not change endpoint `{ip}` of node `{owner}`"
                ),
            );
        }
    }
    let Some(field) = field else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, AGENT_BODY_LIMIT).await else {
        return ApiError::bad("body", "unreadable or larger than 64 KiB").into_response();
    };
    let named = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get(field).and_then(Value::as_str).map(str::to_owned));
    if named.as_deref() != Some(node) {
        return deny(
            StatusCode::FORBIDDEN,
            format!(
                "the node certificate of `{node}` may only send `{field}` = `{node}` to `{} {}`",
                parts.method,
                parts.uri.path()
            ),
        );
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

// === cluster ===

async fn metrics(State(api): State<Api>) -> HttpResponse {
    match &api.prometheus {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response(),
    }
}

async fn cluster_status(State(api): State<Api>) -> HttpResponse {
    Json(api.cluster.status()).into_response()
}

/// Asks this member to build a snapshot now (and purge its log behind it).
async fn cluster_snapshot(State(api): State<Api>) -> ApiResult {
    api.cluster
        .raft()
        .trigger()
        .snapshot()
        .await
        .map_err(|_| ClusterError::Fatal {
            id: api.cluster.id(),
        })?;
    Ok(Json(json!({ "triggered": true })).into_response())
}

async fn cluster_members(State(api): State<Api>, body: Bytes) -> ApiResult {
    let change: MembershipChange = parse(&body)?;
    api.cluster.change_members(change).await?;
    Ok(Json(api.cluster.status()).into_response())
}

// === identities ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocateBody {
    labels: Vec<String>,
}

#[derive(Debug, Serialize)]
struct IdentityBody {
    id: u32,
    labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
    /// Milliseconds since the epoch (replicated clock) since no endpoint uses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    unreferenced_since_ms: Option<u64>,
}

async fn allocate_identity(State(api): State<Api>, body: Bytes) -> ApiResult {
    let b: AllocateBody = parse(&body)?;
    let labels = normalize_labels(&b.labels).map_err(|reason| {
        let field = reason
            .strip_prefix('`')
            .and_then(|r| r.split_once('`'))
            .map_or("labels", |(f, _)| f)
            .to_owned();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: reason,
            field: Some(field),
        }
    })?;
    match api
        .cluster
        .write(Request::AllocateIdentity { labels })
        .await?
    {
        Response::Identity { identity, created } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = IdentityBody {
                id: identity.id,
                labels: identity.labels,
                created: Some(created),
                unreferenced_since_ms: identity.unreferenced_since_ms,
            };
            Ok((status, Json(body)).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Response) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error: format!("unexpected state machine response: {r:?}"),
        field: None,
    }
}

async fn list_identities(
    State(api): State<Api>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.before_read(q).await?;
    let items = api.cluster.read(|s| {
        s.identities
            .values()
            .map(|i| IdentityBody {
                id: i.id,
                labels: i.labels.clone(),
                created: None,
                unreferenced_since_ms: i.unreferenced_since_ms,
            })
            .collect::<Vec<_>>()
    })?;
    Ok(Json(json!({ "items": items })).into_response())
}

fn parse_id(id: &str) -> ApiResult<u32> {
    id.parse::<u32>()
        .map_err(|_| ApiError::bad("id", "must be an unsigned 32-bit integer"))
}

async fn get_identity(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    let id = parse_id(&id)?;
    api.before_read(q).await?;
    let found = api.cluster.read(|s| s.identities.get(&id).cloned())?;
    let i = found.ok_or_else(|| ApiError::not_found(format!("identity {id}")))?;
    Ok(Json(IdentityBody {
        id: i.id,
        labels: i.labels,
        created: None,
        unreferenced_since_ms: i.unreferenced_since_ms,
    })
    .into_response())
}

async fn release_identity(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    removed(api.cluster.write(Request::ReleaseIdentity { id }).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcBody {
    /// Collect identities unreferenced for at least this long.
    grace_seconds: u64,
}

/// Identities removed per log entry by a collection.
const GC_PER_ENTRY: u32 = 20_000;

async fn collect_identities(State(api): State<Api>, body: Bytes) -> ApiResult {
    let b: GcBody = parse(&body)?;
    let grace_ms = b.grace_seconds.saturating_mul(1000);
    let mut total: u64 = 0;
    // Bounded: each entry removes up to GC_PER_ENTRY; stop when nothing eligible remains.
    for _ in 0..1_000 {
        let req = Request::CollectIdentities {
            grace_ms,
            max: GC_PER_ENTRY,
        };
        match api.cluster.write(req).await? {
            Response::Collected {
                collected,
                remaining,
            } => {
                total += u64::from(collected);
                if remaining == 0 || collected == 0 {
                    break;
                }
            }
            other => return Err(unexpected(&other)),
        }
    }
    Ok(Json(json!({ "collected": total })).into_response())
}

fn removed(r: Response) -> ApiResult {
    match r {
        Response::Removed { existed } => Ok(Json(json!({ "existed": existed })).into_response()),
        other => Err(unexpected(&other)),
    }
}

// === policies ===

fn policy_key(kind: String, namespace: String, name: String) -> ApiResult<PolicyKey> {
    for (field, v) in [("kind", &kind), ("namespace", &namespace), ("name", &name)] {
        if v.is_empty() || v.len() > 253 || v.contains('/') || v.chars().any(char::is_control) {
            return Err(ApiError::bad(
                field,
                "must be 1 to 253 characters without `/`",
            ));
        }
    }
    Ok(PolicyKey {
        kind,
        namespace,
        name,
    })
}

async fn apply_policy(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let key = policy_key(kind, namespace, name)?;
    let object: serde_json::Value = parse(&body)?;
    api.validator
        .validate(&key, &object)
        .map_err(|e| ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: e.to_string(),
            field: Some(e.field.clone()),
        })?;
    policy_written(
        api.cluster
            .write(Request::ApplyPolicy { key, object })
            .await?,
    )
}

fn policy_written(r: Response) -> ApiResult {
    match r {
        Response::Policy { revision, changed } => {
            Ok(Json(json!({ "revision": revision, "changed": changed })).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

async fn get_policy(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    let key = policy_key(kind, namespace, name)?;
    api.before_read(q).await?;
    let skey = key.storage_key();
    let found = api.cluster.read(|s| s.policies.get(&skey).cloned())?;
    let p = found.ok_or_else(|| ApiError::not_found(format!("policy `{skey}`")))?;
    Ok(Json(p).into_response())
}

async fn delete_policy(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> ApiResult {
    let key = policy_key(kind, namespace, name)?;
    policy_written(api.cluster.write(Request::DeletePolicy { key }).await?)
}

async fn list_policies(
    State(api): State<Api>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.before_read(q).await?;
    let (revision, items) = api.cluster.read(|s| {
        (
            s.counters.revision,
            s.policies.values().cloned().collect::<Vec<_>>(),
        )
    })?;
    Ok(Json(json!({ "revision": revision, "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    /// Revision to wait for; the current one when absent.
    revision: Option<u64>,
    /// Give up after this long (default 30 s, at most 600 s).
    timeout_ms: Option<u64>,
}

/// Waits until every live node (lease current) acknowledged `revision` (what `palisade policy wait`
/// calls). 200 `{"revision", "nodes"}`; 504 with `laggards` listing the nodes behind.
async fn wait_policies(
    State(api): State<Api>,
    q: Result<Query<WaitParams>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(600_000));
    api.cluster.linearize().await?;
    let revision = match q.revision {
        Some(r) => r,
        None => api.cluster.read(|s| s.counters.revision)?,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let (nodes, laggards) = api.cluster.read(|s| {
            let live: Vec<&NodeRecord> = s.nodes.values().filter(|n| api.is_live(n)).collect();
            let laggards: Vec<Value> = live
                .iter()
                .filter_map(|n| {
                    let acked = s.acks.get(&n.name).copied().unwrap_or(0);
                    (acked < revision).then(|| json!({"node": n.name, "acked_revision": acked}))
                })
                .collect();
            (live.len(), laggards)
        })?;
        if laggards.is_empty() {
            return Ok(Json(json!({ "revision": revision, "nodes": nodes })).into_response());
        }
        if Instant::now() >= deadline {
            let body = json!({
                "error": format!("{} of {nodes} node(s) have not acknowledged revision {revision}", laggards.len()),
                "revision": revision,
                "laggards": laggards,
            });
            return Ok((StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === watch ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchParams {
    /// Return changes after this change revision (0: from the start of this member's feed).
    from: u64,
    /// Wait at most this long for a change (default 30 s, at most 300 s).
    timeout_ms: Option<u64>,
    /// At most this many changes (default 1000).
    limit: Option<usize>,
}

/// Long-polls the change feed of identities, nodes, endpoints and policies. Served from this
/// member's applied state, so a follower serves it too (behind the leader by at most its
/// replication lag). 200 `{"revision", "changes"}` as soon as there is a change after `from`
/// (empty after the timeout); 410 when this member's feed no longer reaches back to `from`
/// (after a restart, a snapshot install, or 100,000 newer changes): resync by reading
/// `GET /v1/watch/revision`, then listing, then watching from that revision (changes between the
/// two are replayed; each carries the whole object, so replays are harmless).
async fn watch(State(api): State<Api>, q: Result<Query<WatchParams>, QueryRejection>) -> ApiResult {
    let Query(q) = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(300_000));
    let limit = q.limit.unwrap_or(1_000).clamp(1, 10_000);
    let deadline = Instant::now() + timeout;
    loop {
        let (revision, policy_revision, changes) = api.cluster.read(|s| {
            (
                s.counters.change_revision,
                s.counters.revision,
                s.changes_since(q.from, limit),
            )
        })?;
        let Some(changes) = changes else {
            return Err(ApiError {
                status: StatusCode::GONE,
                error: format!(
                    "changes after revision {} are no longer kept here; list again and watch from the current revision",
                    q.from
                ),
                field: Some("from".to_owned()),
            });
        };
        if !changes.is_empty() || Instant::now() >= deadline {
            return Ok(Json(json!({
                "revision": revision,
                "policy_revision": policy_revision,
                "changes": changes,
            }))
            .into_response());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The current change revision (after a linearizable read by default): list, then watch from it.
async fn watch_revision(
    State(api): State<Api>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.before_read(q).await?;
    let revision = api.cluster.read(|s| s.counters.change_revision)?;
    Ok(Json(json!({ "revision": revision })).into_response())
}

// === nodes ===

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Api {
    /// Whether a node's lease is current: its last heartbeat (leader clock at commit) is within
    /// the lease of this member's clock. Members' clocks are assumed close (NTP).
    fn is_live(&self, n: &NodeRecord) -> bool {
        let lease = u64::try_from(self.node_lease.as_millis()).unwrap_or(u64::MAX);
        now_ms().saturating_sub(n.last_heartbeat_ms) <= lease
    }

    fn node_json(&self, s: &crate::app::State, n: &NodeRecord) -> Value {
        let mut v = json!(n);
        v["acked_revision"] = json!(s.acks.get(&n.name).copied().unwrap_or(0));
        v["live"] = json!(self.is_live(n));
        v
    }
}

async fn heartbeat(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    check_node_name("name", &name)?;
    match api.cluster.write(Request::Heartbeat { node: name }).await? {
        Response::Heartbeat { at_ms } => Ok(Json(json!({
            "at_ms": at_ms,
            "lease_ms": u64::try_from(api.node_lease.as_millis()).unwrap_or(u64::MAX),
        }))
        .into_response()),
        other => Err(unexpected(&other)),
    }
}

fn check_node_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            "must be 1 to 253 characters of a-z, 0-9, `-` and `.`",
        ))
    }
}

/// Whether `key` looks like a WireGuard public key: base64 of 32 bytes.
fn is_wireguard_key(key: &str) -> bool {
    key.len() == 44
        && key.ends_with('=')
        && key.as_bytes()[..43]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

async fn register_node(State(api): State<Api>, body: Bytes) -> ApiResult {
    let reg: NodeRegistration = parse(&body)?;
    check_node_name("name", &reg.name)?;
    if !is_wireguard_key(&reg.wireguard_public_key) {
        return Err(ApiError::bad(
            "wireguard_public_key",
            "must be the base64 encoding of 32 bytes",
        ));
    }
    match api.cluster.write(Request::RegisterNode(reg)).await? {
        Response::Node(n) => Ok(Json(n).into_response()),
        other => Err(unexpected(&other)),
    }
}

async fn list_nodes(
    State(api): State<Api>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.before_read(q).await?;
    let items = api.cluster.read(|s| {
        s.nodes
            .values()
            .map(|n| api.node_json(s, n))
            .collect::<Vec<_>>()
    })?;
    Ok(Json(json!({ "items": items })).into_response())
}

async fn get_node(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    check_node_name("name", &name)?;
    api.before_read(q).await?;
    let found = api
        .cluster
        .read(|s| s.nodes.get(&name).map(|n| api.node_json(s, n)))?;
    let n = found.ok_or_else(|| ApiError::not_found(format!("node `{name}`")))?;
    Ok(Json(n).into_response())
}

async fn remove_node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    check_node_name("name", &name)?;
    removed(api.cluster.write(Request::RemoveNode { name }).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    revision: u64,
}

async fn ack_revision(State(api): State<Api>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    check_node_name("name", &name)?;
    let b: AckBody = parse(&body)?;
    match api
        .cluster
        .write(Request::AckRevision {
            node: name,
            revision: b.revision,
        })
        .await?
    {
        Response::Acked { revision } => Ok(Json(json!({ "revision": revision })).into_response()),
        other => Err(unexpected(&other)),
    }
}

// === endpoints ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    identity: u32,
    node: String,
}

fn parse_ip(ip: &str) -> ApiResult<IpAddr> {
    ip.parse()
        .map_err(|_| ApiError::bad("ip", "must be an IPv4 or IPv6 address"))
}

async fn upsert_endpoint(State(api): State<Api>, Path(ip): Path<String>, body: Bytes) -> ApiResult {
    let ip = parse_ip(&ip)?;
    let b: EndpointBody = parse(&body)?;
    check_node_name("node", &b.node)?;
    let ep = Endpoint {
        ip,
        identity: b.identity,
        node: b.node,
    };
    match api.cluster.write(Request::UpsertEndpoint(ep)).await? {
        Response::Endpoint(e) => Ok(Json(e).into_response()),
        other => Err(unexpected(&other)),
    }
}

async fn get_endpoint(
    State(api): State<Api>,
    Path(ip): Path<String>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    let ip = parse_ip(&ip)?;
    api.before_read(q).await?;
    let found = api.cluster.read(|s| s.endpoints.get(&ip).cloned())?;
    let e = found.ok_or_else(|| ApiError::not_found(format!("endpoint {ip}")))?;
    Ok(Json(e).into_response())
}

async fn list_endpoints(
    State(api): State<Api>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    api.before_read(q).await?;
    let items = api
        .cluster
        .read(|s| s.endpoints.values().cloned().collect::<Vec<_>>())?;
    Ok(Json(json!({ "items": items })).into_response())
}

async fn remove_endpoint(State(api): State<Api>, Path(ip): Path<String>) -> ApiResult {
    let ip = parse_ip(&ip)?;
    removed(api.cluster.write(Request::RemoveEndpoint { ip }).await?)
}

// === internal (member to member) ===

fn misdirected(leader: Option<crate::Member>) -> ApiError {
    ApiError {
        status: StatusCode::MISDIRECTED_REQUEST,
        error: match leader {
            Some(l) => format!(
                "this member is not the leader; the leader's API is {}",
                l.api_addr
            ),
            None => "this member is not the leader".to_owned(),
        },
        field: None,
    }
}

async fn internal_propose(State(api): State<Api>, body: Bytes) -> ApiResult {
    let req: Request = parse(&body)?;
    match api.cluster.write_local(req).await? {
        Ok(Response::Rejected { reason }) => Err(ClusterError::Rejected { reason }.into()),
        Ok(resp) => Ok(Json(resp).into_response()),
        Err(leader) => Err(misdirected(Some(leader))),
    }
}

async fn internal_read_index(State(api): State<Api>) -> ApiResult {
    match api.cluster.read_index().await? {
        Ok(ri) => Ok(Json(ri).into_response()),
        Err(leader) => Err(misdirected(leader)),
    }
}

async fn internal_members(State(api): State<Api>, body: Bytes) -> ApiResult {
    let change: MembershipChange = parse(&body)?;
    match api.cluster.change_members_local(change).await? {
        Ok(()) => Ok(Json(json!({})).into_response()),
        Err(leader) => Err(misdirected(Some(leader))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field() {
        let body = Bytes::from_static(br#"{"labels": ["a", 3]}"#);
        let e = parse::<AllocateBody>(&body).err();
        assert_eq!(e.and_then(|e| e.field), Some("labels[1]".to_owned()));
        let body = Bytes::from_static(br#"{"labels": ["a"], "extra": 1}"#);
        assert!(parse::<AllocateBody>(&body).is_err());
    }

    #[test]
    fn wireguard_keys() {
        assert!(is_wireguard_key(
            "YJ6Zl2CQxkVa9X8YpX6Hx2bX0pQb1V8B3Qm5cS0xHh0="
        ));
        assert!(!is_wireguard_key("short="));
        // Multi-byte characters must not panic the slice.
        assert!(!is_wireguard_key(&format!("{}é=", "a".repeat(41))));
    }
}
