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
//! The operations themselves are [`crate::ops`], shared with the gRPC API.
//!
//! `/internal/v1/*` serve member-to-member forwarding (propose, read index, membership).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

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

use crate::app::{Endpoint, NodeRegistration, Request, Response, normalize_labels};
use crate::auth::{self, AgentCheck, Denial, Tokens};
use crate::cluster::{Cluster, MembershipChange};
use crate::errors::ClusterError;
use crate::ops::{self, Consistency, OpError, Ops, check_node_name, parse_ip};
use crate::tls::{CertRole, ClientCert, PeerIdentity};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Api {
    cluster: Cluster,
    ops: Ops,
    tokens: Arc<Tokens>,
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

/// The HTTP status of a cluster error (shared with the Kubernetes-compatible API).
pub fn cluster_status_code(e: &ClusterError) -> u16 {
    cluster_error_status(e).as_u16()
}

fn cluster_error_status(e: &ClusterError) -> StatusCode {
    match e {
        ClusterError::NoLeader | ClusterError::MembershipBusy { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ClusterError::Forward { .. } => StatusCode::BAD_GATEWAY,
        ClusterError::Leader { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        ClusterError::Rejected { .. } | ClusterError::Membership { .. } => StatusCode::CONFLICT,
        ClusterError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        ClusterError::Fatal { .. } | ClusterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let status = cluster_error_status(&e);
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

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid { field, reason } => ApiError::bad(field, reason),
            OpError::Policy(e) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                error: e.to_string(),
                field: Some(e.field),
            },
            OpError::NotFound { what } => ApiError::not_found(what),
            e @ OpError::PreconditionFailed { .. } => ApiError {
                status: StatusCode::CONFLICT,
                error: e.to_string(),
                field: None,
            },
            e @ OpError::Gone { .. } => ApiError {
                status: StatusCode::GONE,
                error: e.to_string(),
                field: Some("from".to_owned()),
            },
            OpError::Cluster(e) => e.into(),
            e @ OpError::Unexpected(_) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error: e.to_string(),
                field: None,
            },
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    #[serde(default)]
    consistency: Consistency,
}

/// The consistency a read asks for (`?consistency=`).
fn consistency(q: Result<Query<ReadParams>, QueryRejection>) -> ApiResult<Consistency> {
    let Query(q) = q.map_err(|e| ApiError::bad("consistency", e.body_text()))?;
    Ok(q.consistency)
}

impl Api {
    async fn before_read(&self, q: Result<Query<ReadParams>, QueryRejection>) -> ApiResult<()> {
        Ok(self.ops.before_read(consistency(q)?).await?)
    }
}

/// Builds the router over `ops`, authenticating with `tokens`.
pub fn router(ops: Ops, prometheus: Option<PrometheusHandle>, tokens: Arc<Tokens>) -> Router {
    let api = Api {
        cluster: ops.cluster().clone(),
        ops,
        tokens,
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
        .route("/v1/nodes/{name}/id-block", post(lease_id_block))
        .route("/v1/nodes/{name}/bindings", post(bind_identity))
        .route("/v1/endpoints", get(list_endpoints))
        .route("/v1/watch", get(watch))
        .route("/v1/watch/revision", get(watch_revision))
        .route(
            "/v1/endpoints/{ip}",
            put(upsert_endpoint)
                .get(get_endpoint)
                .delete(remove_endpoint),
        )
        .merge(crate::kube_api::router(api.ops.clone()))
        .route("/internal/v1/propose", post(internal_propose))
        .route("/internal/v1/read-index", get(internal_read_index))
        .route("/internal/v1/members", post(internal_members))
        .layer(middleware::from_fn(idempotency_key))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api)
}

/// Serves a call carrying an `Idempotency-Key` with its writes' request ids taken from the key
/// (see [`crate::cluster::with_idempotency_key`]); a malformed key is refused before anything is
/// done.
async fn idempotency_key(req: axum::extract::Request, next: middleware::Next) -> HttpResponse {
    let Some(value) = req.headers().get(crate::cluster::IDEMPOTENCY_KEY_HEADER) else {
        return next.run(req).await;
    };
    let key = value.to_str().unwrap_or_default().to_owned();
    if let Err(why) = crate::cluster::check_idempotency_key(&key) {
        return if crate::kube_api::serves(req.uri().path()) {
            crate::kube_api::deny(StatusCode::BAD_REQUEST, why)
        } else {
            ApiError {
                status: StatusCode::BAD_REQUEST,
                error: why,
                field: Some("Idempotency-Key".to_owned()),
            }
            .into_response()
        };
    }
    crate::cluster::with_idempotency_key(key, next.run(req)).await
}

/// Refuses requests without the credentials their method and path need.
///
/// A client certificate (HTTPS with `--tls-dir`, chained to the cluster CA) comes first: a
/// `node` certificate makes the request its agent's, allowed only what [`auth::agent_check`]
/// allows, whatever token it carries; a `member` certificate may call `/internal/v1/*`; an
/// `admin` or `read` certificate (an operator's, e.g. kubectl's through `palisade kubeconfig`)
/// has the rights of the token of that role. Then bearer tokens: 401 without a valid token,
/// 403 with a token of the wrong role; a node token may make the agents' writes
/// ([`auth::node_token_check`]).
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
    // kubectl and client-go read refusals of the Kubernetes-compatible API as `Status` objects.
    let deny = if crate::kube_api::serves(req.uri().path()) {
        crate::kube_api::deny
    } else {
        deny
    };
    match cert {
        Some(PeerIdentity {
            role: CertRole::Node,
            name,
        }) => return authorize_agent(&api, &name, req, next).await,
        Some(PeerIdentity {
            role: CertRole::Member,
            ..
        }) if need == auth::Role::Member => return next.run(req).await,
        // Operator certificates carry the rights of the token of the same role.
        Some(PeerIdentity {
            role: CertRole::Admin,
            ..
        }) if need != auth::Role::Member => return next.run(req).await,
        Some(PeerIdentity {
            role: CertRole::Read,
            ..
        }) if need == auth::Role::Read => return next.run(req).await,
        Some(PeerIdentity {
            role: CertRole::Read,
            name,
        }) => {
            return deny(
                StatusCode::FORBIDDEN,
                format!(
                    "the read certificate of `{name}` may not call `{} {}` (it needs the {} role)",
                    req.method(),
                    req.uri().path(),
                    need.name()
                ),
            );
        }
        _ => {}
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth::check_bearer(&api.tokens, authorization, need) {
        Ok(()) => next.run(req).await,
        // A node token: the agents' writes only, for any node.
        Err(Denial::WrongRole(auth::Role::Node)) if need == auth::Role::Admin => {
            match auth::node_token_check(req.method().as_str(), req.uri().path()) {
                Ok(()) => next.run(req).await,
                Err(why) => deny(StatusCode::FORBIDDEN, why),
            }
        }
        Err(Denial::Unauthenticated(why)) => deny(StatusCode::UNAUTHORIZED, why.to_owned()),
        Err(Denial::WrongRole(have)) => deny(
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
    let items = api.ops.list_identities(consistency(q)?).await?;
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
    let i = api.ops.get_identity(id, consistency(q)?).await?;
    Ok(Json(i).into_response())
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

fn policy_key(kind: String, namespace: String, name: String) -> ApiResult<crate::app::PolicyKey> {
    Ok(ops::policy_key(kind, namespace, name)?)
}

async fn apply_policy(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let key = policy_key(kind, namespace, name)?;
    let object: serde_json::Value = parse(&body)?;
    Ok(Json(api.ops.apply_policy(key, object).await?).into_response())
}

async fn get_policy(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    let key = policy_key(kind, namespace, name)?;
    let p = api.ops.get_policy(&key, consistency(q)?).await?;
    Ok(Json(p).into_response())
}

async fn delete_policy(
    State(api): State<Api>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> ApiResult {
    let key = policy_key(kind, namespace, name)?;
    Ok(Json(api.ops.delete_policy(key).await?).into_response())
}

async fn list_policies(
    State(api): State<Api>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    let (revision, items) = api.ops.list_policies(consistency(q)?).await?;
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
    let report = api.ops.wait_policies(q.revision, timeout).await?;
    if report.laggards.is_empty() {
        return Ok(
            Json(json!({ "revision": report.revision, "nodes": report.nodes })).into_response(),
        );
    }
    let body = json!({
        "error": report.failure_message(),
        "revision": report.revision,
        "laggards": report.laggards,
    });
    Ok((StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response())
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
    let feed = api.ops.next_changes(q.from, limit, timeout).await?;
    Ok(Json(feed).into_response())
}

/// The current change revision (after a linearizable read by default): list, then watch from it.
async fn watch_revision(
    State(api): State<Api>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    let revision = api.ops.change_revision(consistency(q)?).await?;
    Ok(Json(json!({ "revision": revision })).into_response())
}

// === nodes ===

async fn heartbeat(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    check_node_name("name", &name)?;
    match api.cluster.write(Request::Heartbeat { node: name }).await? {
        Response::Heartbeat { at_ms } => Ok(Json(json!({
            "at_ms": at_ms,
            "lease_ms": u64::try_from(api.ops.node_lease().as_millis()).unwrap_or(u64::MAX),
        }))
        .into_response()),
        other => Err(unexpected(&other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    count: u32,
    #[serde(default)]
    replace: bool,
}

/// `POST /v1/nodes/{name}/id-block`: the node's leased id block (a new one with `replace`).
async fn lease_id_block(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    check_node_name("name", &name)?;
    let b: LeaseBody = parse(&body)?;
    match api
        .cluster
        .write(Request::LeaseIdBlock {
            node: name,
            count: b.count,
            replace: b.replace,
        })
        .await?
    {
        Response::IdBlock(block) => Ok(Json(block).into_response()),
        other => Err(unexpected(&other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    id: u32,
    labels: Vec<String>,
}

/// `POST /v1/nodes/{name}/bindings`: commits a binding the node made from its block; answers
/// with the label set's canonical identity (another id when the set already had one).
async fn bind_identity(State(api): State<Api>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    check_node_name("name", &name)?;
    let b: BindBody = parse(&body)?;
    match api
        .cluster
        .write(Request::BindIdentity {
            node: name,
            id: b.id,
            labels: b.labels,
        })
        .await?
    {
        Response::Identity { identity, created } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(identity)).into_response())
        }
        other => Err(unexpected(&other)),
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
    let items = api.ops.list_nodes(consistency(q)?).await?;
    Ok(Json(json!({ "items": items })).into_response())
}

async fn get_node(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    check_node_name("name", &name)?;
    let n = api.ops.get_node(&name, consistency(q)?).await?;
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
    #[serde(default)]
    ports: Vec<palisade_api::agent::ContainerPort>,
}

async fn upsert_endpoint(State(api): State<Api>, Path(ip): Path<String>, body: Bytes) -> ApiResult {
    let ip = parse_ip("ip", &ip)?;
    let b: EndpointBody = parse(&body)?;
    check_node_name("node", &b.node)?;
    palisade_api::agent::ContainerPort::check_all(&b.ports, "ports")
        .map_err(|(field, reason)| OpError::invalid(&field, reason))?;
    let ep = Endpoint {
        ip,
        identity: b.identity,
        node: b.node,
        ports: b.ports,
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
    let ip = parse_ip("ip", &ip)?;
    api.before_read(q).await?;
    let found = api.cluster.read(|s| s.endpoints.get(&ip).cloned())?;
    let e = found.ok_or_else(|| ApiError::not_found(format!("endpoint {ip}")))?;
    Ok(Json(e).into_response())
}

async fn list_endpoints(
    State(api): State<Api>,
    q: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult {
    let items = api.ops.list_endpoints(consistency(q)?).await?;
    Ok(Json(json!({ "items": items })).into_response())
}

async fn remove_endpoint(State(api): State<Api>, Path(ip): Path<String>) -> ApiResult {
    let ip = parse_ip("ip", &ip)?;
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
