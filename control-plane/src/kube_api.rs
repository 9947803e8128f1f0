//! A Kubernetes-compatible API for the policy objects, so `kubectl` (and client-go) can drive
//! the control plane as if it were an API server holding the policy CRDs: discovery, OpenAPI,
//! and list/watch/get/create/update/patch/delete (and `status`) of `ciliumnetworkpolicies`,
//! `ciliumclusterwidenetworkpolicies` (cilium.io/v2) and `networkpolicies`
//! (networking.k8s.io/v1).
//!
//! Who may call it: the same callers as the REST API — it is mounted on the API listener behind
//! the same authentication (read tokens for GETs and watches, admin tokens for writes, see
//! [`crate::http_api`]).
//!
//! ```text
//!  kubectl ──▶ kube_api ──▶ ops (validate with the engine, write through Raft with a
//!                 │              precondition: create = absent, update = the revision read)
//!                 └── resources (record ⇄ object), patch (merge / strategic / apply),
//!                     subresource (`…/status`: writes `.status` only), status (errors as
//!                     `Status`), discovery, openapi
//! ```
//!
//! `metadata.resourceVersion` is the policy revision: a list's is the current policy revision,
//! an object's the revision it was last written at, and a watch from N streams every policy
//! change after N (this member's change feed; `410 Expired` once it no longer reaches back).
//! Every write is validated by the policy engine first; a refused object is a `422 Invalid`
//! naming the engine's field, and nothing is written. (A member started with
//! `--policy-validation envelope`, standing in for a cluster's API server in the mirror's tests,
//! checks the envelope only, as an API server holding the CRDs would.)
//!
//! The CRD kinds serve the `status` subresource (`…/{name}/status`, see [`subresource`]): only
//! a status write changes `.status`, and it changes nothing else.

mod discovery;
mod openapi;
pub mod patch;
pub mod resources;
pub mod status;
mod subresource;
mod watch;

use std::collections::{BTreeSet, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::app::{PolicyPrecondition, PolicyRecord};
use crate::ops::{Consistency, OpError, Ops};
use patch::Applied;
use resources::{Resource, engine_view, metadata_mut, new_uid, now_rfc3339};
use status::KubeError;

type KubeResult<T = Response> = Result<T, KubeError>;
type Params = Query<HashMap<String, String>>;

/// How many times a patch is recomputed when the object changed between its read and its write.
const PATCH_ATTEMPTS: usize = 5;

/// Builds the routes (to be merged into the API router, under its authentication).
pub fn router<S: Clone + Send + Sync + 'static>(ops: Ops) -> Router<S> {
    Router::new()
        .route("/version", get(|| async { json_ok(&discovery::version()) }))
        .route(
            "/api",
            get(|| async { json_ok(&discovery::core_versions()) }),
        )
        .route(
            "/api/v1",
            get(|| async { json_ok(&discovery::core_resources()) }),
        )
        .route(
            "/api/v1/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/api/v1/namespaces/{name}",
            get(get_namespace)
                .put(put_namespace)
                .patch(patch_namespace)
                .delete(delete_namespace),
        )
        .route("/api/v1/pods", get(list_pods_all))
        .route(
            "/api/v1/namespaces/{namespace}/pods",
            get(list_pods).post(create_pod),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}",
            get(get_pod)
                .put(put_pod)
                .patch(patch_pod)
                .delete(delete_pod),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/status",
            get(subresource::get_pod)
                .put(subresource::put_pod)
                .patch(subresource::patch_pod),
        )
        .route("/apis", get(|| async { json_ok(&discovery::groups()) }))
        .route("/apis/{group}", get(api_group))
        .route("/apis/{group}/{version}", get(api_resources))
        .route("/openapi/v2", get(openapi_v2))
        .route(
            "/openapi/v3",
            get(|| async { json_ok(&openapi::v3_index()) }),
        )
        .route("/openapi/v3/apis/{group}/{version}", get(openapi_v3))
        .route(
            "/openapi/v3/api/{version}",
            get(|Path(version): Path<String>| async move {
                openapi::v3_group_version("", &version)
                    .map(|v| json_ok(&v))
                    .ok_or_else(|| KubeError::no_such_path(&format!("/openapi/v3/api/{version}")))
            }),
        )
        .route(
            "/apis/{group}/{version}/{plural}",
            get(list_cluster).post(create_cluster),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}",
            get(list_namespaced).post(create_namespaced),
        )
        .route(
            "/apis/{group}/{version}/{plural}/{name}",
            get(get_cluster)
                .put(put_cluster)
                .patch(patch_cluster)
                .delete(delete_cluster),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}",
            get(get_namespaced)
                .put(put_namespaced)
                .patch(patch_namespaced)
                .delete(delete_namespaced),
        )
        .route(
            "/apis/{group}/{version}/{plural}/{name}/status",
            get(subresource::get_cluster)
                .put(subresource::put_cluster)
                .patch(subresource::patch_cluster),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status",
            get(subresource::get_namespaced)
                .put(subresource::put_namespaced)
                .patch(subresource::patch_namespaced),
        )
        .with_state(ops)
}

/// Whether `path` belongs to this API (the REST API's authentication answers its refusals as
/// `Status` objects, see [`deny`]).
pub fn serves(path: &str) -> bool {
    ["/api", "/apis", "/openapi", "/version"].iter().any(|p| {
        path == *p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// A 401 (with `WWW-Authenticate: Bearer`) or 403 as a `Status` object.
pub fn deny(status: StatusCode, message: String) -> Response {
    let mut r = KubeError::denied(status.as_u16(), message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// A JSON answer with `status`.
pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn json_ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

async fn api_group(Path(group): Path<String>) -> KubeResult {
    discovery::api_group(&group)
        .map(|v| json_ok(&v))
        .ok_or_else(|| KubeError::no_such_path(&format!("/apis/{group}")))
}

async fn api_resources(Path((group, version)): Path<(String, String)>) -> KubeResult {
    discovery::resources(&group, &version)
        .map(|v| json_ok(&v))
        .ok_or_else(|| KubeError::no_such_path(&format!("/apis/{group}/{version}")))
}

/// JSON, or the protobuf form for clients that ask for it (older kubectl).
async fn openapi_v2(headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains(openapi::V2_PROTOBUF) {
        return (
            StatusCode::OK,
            // What the API server answers too: Go's MIME parser refuses the `@` of the
            // requested type.
            [(header::CONTENT_TYPE, "application/octet-stream")],
            openapi::v2_protobuf(),
        )
            .into_response();
    }
    json_ok(&openapi::v2())
}

async fn openapi_v3(Path((group, version)): Path<(String, String)>) -> KubeResult {
    openapi::v3_group_version(&group, &version)
        .map(|v| json_ok(&v))
        .ok_or_else(|| KubeError::no_such_path(&format!("/openapi/v3/apis/{group}/{version}")))
}

// === core v1 Namespaces ===
//
// Stored beside the policies (kind `Namespace`, cluster scope) and served by the same handlers;
// only the paths differ (`/api/v1/...`). A namespace that holds policies, and `default`, exist
// even when nobody stored a Namespace object for them (no labels then, no watch events), as a
// cluster's namespaces exist before policies are written into them.

fn namespaces_target() -> Target {
    Target {
        res: &resources::RESOURCES[3],
        namespace: None,
    }
}

/// The namespaces that exist without a stored object: those policies live in, and `default`.
fn implied_namespaces(records: &[PolicyRecord]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.key.kind != resources::RESOURCES[3].kind)
        .filter(|r| r.key.namespace != resources::CLUSTER_SCOPE)
        .map(|r| r.key.namespace.clone())
        .chain(["default".to_owned()])
        .collect()
}

async fn list_namespaces(State(ops): State<Ops>, Query(q): Params) -> KubeResult {
    list_or_watch(ops, namespaces_target(), q).await
}

async fn get_namespace(State(ops): State<Ops>, Path(name): Path<String>) -> KubeResult {
    let ns = namespace_view(&ops, &name).await?;
    Ok(json_ok(&ns))
}

/// Namespace `name` as the API shows it: its stored object, or the one it implies (objects
/// live in it, or it is `default`); `NotFound` otherwise.
async fn namespace_view(ops: &Ops, name: &str) -> KubeResult<Value> {
    let t = namespaces_target();
    if let Some(r) = t.read(ops, name).await? {
        return Ok(t.res.render(&r));
    }
    let (_, records) = ops
        .list_policies(Consistency::Linearizable)
        .await
        .map_err(|e| KubeError::from_op(t.res, "", e))?;
    if implied_namespaces(&records).contains(name) {
        Ok(discovery::namespace(name))
    } else {
        Err(KubeError::not_found(t.res, name))
    }
}

async fn create_namespace(State(ops): State<Ops>, Query(q): Params, body: Bytes) -> KubeResult {
    create(ops, namespaces_target(), q, body).await
}

async fn put_namespace(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    update(ops, namespaces_target(), name, q, body).await
}

async fn patch_namespace(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult {
    patch(ops, namespaces_target(), name, q, &headers, body).await
}

/// Deleting a namespace deletes what it holds, as on Kubernetes: its policies and Pod records
/// go with it (one Raft entry). A namespace that exists only because objects name it is
/// deleted the same way.
async fn delete_namespace(
    State(ops): State<Ops>,
    Path(name): Path<String>,
    Query(q): Params,
) -> KubeResult {
    let t = namespaces_target();
    let dry = dry_run(&q)?;
    let existing = namespace_view(&ops, &name).await?;
    if !dry {
        let w = ops
            .delete_namespace(name.clone())
            .await
            .map_err(|e| KubeError::from_op(t.res, &name, e))?;
        if !w.changed {
            return Err(KubeError::not_found(t.res, &name));
        }
    }
    Ok(json_ok(&existing))
}

// === core v1 Pods ===
//
// Stored beside the policies (kind `Pod`, in its namespace) and served by the same handlers; only
// the paths differ (`/api/v1/...`, and `/api/v1/pods` for every namespace). What agents read of
// them is `palisade_policy::pod`'s: the labels, service account and named ports of a pod the
// kubelet names without them, and its node and addresses.

/// The `pods` target in `namespace` (every namespace when `None`: lists and watches only).
fn pods_target(namespace: Option<String>) -> Target {
    Target {
        res: &resources::RESOURCES[4],
        namespace,
    }
}

async fn list_pods_all(State(ops): State<Ops>, Query(q): Params) -> KubeResult {
    list_or_watch(ops, pods_target(None), q).await
}

async fn list_pods(
    State(ops): State<Ops>,
    Path(namespace): Path<String>,
    Query(q): Params,
) -> KubeResult {
    list_or_watch(ops, pods_target(Some(namespace)), q).await
}

async fn get_pod(
    State(ops): State<Ops>,
    Path((namespace, name)): Path<(String, String)>,
) -> KubeResult {
    get_object(ops, pods_target(Some(namespace)), name).await
}

async fn create_pod(
    State(ops): State<Ops>,
    Path(namespace): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    create(ops, pods_target(Some(namespace)), q, body).await
}

async fn put_pod(
    State(ops): State<Ops>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    update(ops, pods_target(Some(namespace)), name, q, body).await
}

async fn patch_pod(
    State(ops): State<Ops>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult {
    patch(ops, pods_target(Some(namespace)), name, q, &headers, body).await
}

async fn delete_pod(
    State(ops): State<Ops>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Params,
) -> KubeResult {
    delete(ops, pods_target(Some(namespace)), name, q).await
}

// === targets ===

/// What a request addresses: a resource, in a namespace (namespaced paths), maybe one object.
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
}

impl Target {
    fn new(
        group: &str,
        version: &str,
        plural: &str,
        namespace: Option<String>,
    ) -> KubeResult<Self> {
        let res = Resource::find(group, version, plural)
            .ok_or_else(|| KubeError::no_such_path(&format!("/apis/{group}/{version}/{plural}")))?;
        if namespace.is_some() != res.namespaced {
            let scope = if res.namespaced {
                "namespaced: use /apis/GROUP/VERSION/namespaces/NAMESPACE/PLURAL"
            } else {
                "cluster-scoped: use /apis/GROUP/VERSION/PLURAL"
            };
            return Err(KubeError::no_such_path(&format!(
                "/apis/{group}/{version}/{plural}: {} is {scope}",
                res.plural
            )));
        }
        Ok(Target { res, namespace })
    }

    fn key(&self, name: &str) -> crate::app::PolicyKey {
        self.res.key(self.namespace.as_deref(), name)
    }

    async fn read(&self, ops: &Ops, name: &str) -> KubeResult<Option<PolicyRecord>> {
        match ops
            .get_policy(&self.key(name), Consistency::Linearizable)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(OpError::NotFound { .. }) => Ok(None),
            Err(e) => Err(KubeError::from_op(self.res, name, e)),
        }
    }
}

/// Whether the request asks for a dry run (`dryRun=All`); other values are refused.
fn dry_run(q: &HashMap<String, String>) -> KubeResult<bool> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(KubeError::bad_request(format!(
            "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
        ))),
    }
}

/// Parses a JSON (or, for apply patches, YAML) request body into an object.
fn parse_body(body: &Bytes, yaml: bool) -> KubeResult<Value> {
    let v: Value = if yaml {
        serde_yaml::from_slice(body)
            .map_err(|e| KubeError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| KubeError::bad_request(format!("error decoding JSON: {e}")))?
    };
    if !v.is_object() {
        return Err(KubeError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

// === list and watch ===

async fn list_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural)): Path<(String, String, String)>,
    Query(q): Params,
) -> KubeResult {
    let res = Resource::find(&group, &version, &plural)
        .ok_or_else(|| KubeError::no_such_path(&format!("/apis/{group}/{version}/{plural}")))?;
    list_or_watch(
        ops,
        Target {
            res,
            namespace: None,
        },
        q,
    )
    .await
}

async fn list_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural)): Path<(String, String, String, String)>,
    Query(q): Params,
) -> KubeResult {
    list_or_watch(
        ops,
        Target::new(&group, &version, &plural, Some(namespace))?,
        q,
    )
    .await
}

async fn list_or_watch(ops: Ops, t: Target, q: HashMap<String, String>) -> KubeResult {
    let filter = watch::Filter::new(t.res, t.namespace.clone(), &q)?;
    if matches!(q.get("watch").map(String::as_str), Some("1" | "true")) {
        return watch::watch(ops, filter, &q).await;
    }
    let (revision, records) = ops
        .list_policies(Consistency::Linearizable)
        .await
        .map_err(|e| KubeError::from_op(t.res, "", e))?;
    let mut items: Vec<Value> = records
        .iter()
        .filter(|r| filter.matches_key(&r.key))
        .map(|r| t.res.render(r))
        .collect();
    if t.res.kind == resources::RESOURCES[3].kind {
        // Namespaces that exist without a stored object are listed too (never watched).
        for n in implied_namespaces(&records) {
            if !items.iter().any(|o| o["metadata"]["name"] == n.as_str()) {
                items.push(discovery::namespace(&n));
            }
        }
        items.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
    }
    items.retain(|o| filter.matches_object(o));
    Ok(json_ok(&json!({
        "apiVersion": t.res.api_version(), "kind": format!("{}List", t.res.kind),
        "metadata": {"resourceVersion": revision.to_string()}, "items": items,
    })))
}

// === get ===

async fn get_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural, name)): Path<(String, String, String, String)>,
) -> KubeResult {
    get_object(ops, Target::new(&group, &version, &plural, None)?, name).await
}

async fn get_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
) -> KubeResult {
    get_object(
        ops,
        Target::new(&group, &version, &plural, Some(namespace))?,
        name,
    )
    .await
}

async fn get_object(ops: Ops, t: Target, name: String) -> KubeResult {
    match t.read(&ops, &name).await? {
        Some(r) => Ok(json_ok(&t.res.render(&r))),
        None => Err(KubeError::not_found(t.res, &name)),
    }
}

// === writes ===

/// Checks the identity of a written object against the request and fills in the namespace.
fn check_identity(t: &Target, o: &mut Value, name: Option<&str>) -> KubeResult<String> {
    let res = t.res;
    match o["apiVersion"].as_str() {
        Some(v) if v == res.api_version() => {}
        other => {
            return Err(KubeError::bad_request(format!(
                "apiVersion: the object's `{}` is not the request's `{}`",
                other.unwrap_or(""),
                res.api_version()
            )));
        }
    }
    if o["kind"].as_str() != Some(res.kind) {
        return Err(KubeError::bad_request(format!(
            "kind: the object's `{}` is not the request's `{}`",
            o["kind"].as_str().unwrap_or(""),
            res.kind
        )));
    }
    let Some(meta) = metadata_mut(o) else {
        return Err(KubeError::bad_request("the body must be a JSON object"));
    };
    let body_name = meta.get("name").and_then(Value::as_str).map(str::to_owned);
    let name = match (name, body_name) {
        (Some(n), Some(b)) if n != b => {
            return Err(KubeError::bad_request(format!(
                "metadata.name: the object's `{b}` does not match the request's `{n}`"
            )));
        }
        (Some(n), _) => n.to_owned(),
        (None, Some(b)) => b,
        (None, None) => {
            return Err(KubeError::invalid(
                res,
                "",
                "metadata.name",
                "name or generateName is required",
            ));
        }
    };
    if res.namespaced {
        let ns = t.namespace.clone().unwrap_or_else(|| "default".to_owned());
        match meta.get("namespace").and_then(Value::as_str) {
            Some(b) if b != ns => {
                return Err(KubeError::bad_request(format!(
                    "the namespace of the provided object `{b}` does not match the namespace sent on the request `{ns}`"
                )));
            }
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    meta.insert("name".into(), json!(name));
    Ok(name)
}

/// The server-populated metadata of `o`: kept from `existing` on an update (the generation
/// bumped when the spec changed), fresh on a create. Status is not writable through the main
/// resource.
fn set_server_fields(o: &mut Value, existing: Option<&Value>) {
    let spec_changed = existing.is_none_or(|e| e["spec"] != o["spec"] || e["specs"] != o["specs"]);
    let status = existing.and_then(|e| e.get("status")).cloned();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
        if let Some(s) = status {
            m.insert("status".into(), s);
        }
    }
    let Some(meta) = metadata_mut(o) else { return };
    meta.remove("resourceVersion");
    meta.remove("selfLink");
    match existing {
        Some(e) => {
            for k in ["uid", "creationTimestamp"] {
                match e["metadata"].get(k) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            let generation = e["metadata"]["generation"].as_i64().unwrap_or(1);
            meta.insert(
                "generation".into(),
                json!(generation + i64::from(spec_changed)),
            );
        }
        None => {
            meta.insert("uid".into(), json!(new_uid()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
        }
    }
}

/// Validates `o` with the policy engine and (unless a dry run) writes it under `precondition`.
/// Returns the object as stored.
async fn commit(
    ops: &Ops,
    t: &Target,
    name: &str,
    o: Value,
    existing: Option<&PolicyRecord>,
    dry_run: bool,
) -> KubeResult<Value> {
    let key = t.key(name);
    if let Some(e) = existing
        && t.res.kind == palisade_policy::pod::KIND
        && e.object["spec"] != o["spec"]
    {
        // As on Kubernetes, a pod's spec is fixed once created. It also keeps kubectl's apply
        // patches of pods honest: they merge `containers` by name, which this API's strategic
        // merge (lists replaced) does not, so a changed spec here would be a mangled one.
        return Err(KubeError::invalid(
            t.res,
            name,
            "spec",
            "Forbidden: a pod's spec cannot change once created (delete and create the pod)",
        ));
    }
    let checked = engine_view(&o);
    let precondition = match existing {
        Some(r) => PolicyPrecondition::Revision(r.revision),
        None => PolicyPrecondition::Absent,
    };
    let record = |revision: u64| PolicyRecord {
        key: key.clone(),
        object: o.clone(),
        revision,
        created_revision: existing.map_or(revision, |r| r.created_revision),
    };
    if dry_run {
        ops.validator()
            .validate(&key, &checked)
            .map_err(|e| KubeError::from_op(t.res, name, e.into()))?;
        let mut out = t.res.render(&record(existing.map_or(0, |r| r.revision)));
        if existing.is_none()
            && let Some(m) = metadata_mut(&mut out)
        {
            m.remove("resourceVersion");
        }
        return Ok(out);
    }
    let written = ops
        .apply_policy_if(key.clone(), o.clone(), &checked, Some(precondition))
        .await;
    match written {
        Ok(w) => {
            let revision = match (w.changed, existing) {
                (false, Some(r)) => r.revision,
                _ => w.revision,
            };
            Ok(t.res.render(&record(revision)))
        }
        Err(OpError::PreconditionFailed { current, .. }) => Err(match (existing, current) {
            (None, Some(_)) => KubeError::already_exists(t.res, name),
            (Some(_), None) => KubeError::not_found(t.res, name),
            _ => KubeError::conflict(t.res, name),
        }),
        Err(e) => Err(KubeError::from_op(t.res, name, e)),
    }
}

async fn create_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural)): Path<(String, String, String)>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    let res = Resource::find(&group, &version, &plural)
        .ok_or_else(|| KubeError::no_such_path(&format!("/apis/{group}/{version}/{plural}")))?;
    if res.namespaced {
        return Err(KubeError::method_not_allowed(format!(
            "{} is namespaced: create it under /apis/{group}/{version}/namespaces/NAMESPACE/{plural}",
            res.plural
        )));
    }
    create(
        ops,
        Target {
            res,
            namespace: None,
        },
        q,
        body,
    )
    .await
}

async fn create_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural)): Path<(String, String, String, String)>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    create(
        ops,
        Target::new(&group, &version, &plural, Some(namespace))?,
        q,
        body,
    )
    .await
}

async fn create(ops: Ops, t: Target, q: HashMap<String, String>, body: Bytes) -> KubeResult {
    let dry = dry_run(&q)?;
    let mut o = parse_body(&body, false)?;
    let name = check_identity(&t, &mut o, None)?;
    set_server_fields(&mut o, None);
    let out = commit(&ops, &t, &name, o, None, dry).await?;
    Ok(json_response(StatusCode::CREATED, &out))
}

async fn put_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural, name)): Path<(String, String, String, String)>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    update(
        ops,
        Target::new(&group, &version, &plural, None)?,
        name,
        q,
        body,
    )
    .await
}

async fn put_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    let t = Target::new(&group, &version, &plural, Some(namespace))?;
    update(ops, t, name, q, body).await
}

/// `PUT`: replaces the object; a `metadata.resourceVersion` in the body must be the stored one.
async fn update(
    ops: Ops,
    t: Target,
    name: String,
    q: HashMap<String, String>,
    body: Bytes,
) -> KubeResult {
    let dry = dry_run(&q)?;
    let mut o = parse_body(&body, false)?;
    check_identity(&t, &mut o, Some(&name))?;
    let existing = t
        .read(&ops, &name)
        .await?
        .ok_or_else(|| KubeError::not_found(t.res, &name))?;
    if let Some(rv) = o["metadata"]["resourceVersion"].as_str()
        && rv != existing.revision.to_string()
    {
        return Err(KubeError::conflict(t.res, &name));
    }
    set_server_fields(&mut o, Some(&existing.object));
    let out = commit(&ops, &t, &name, o, Some(&existing), dry).await?;
    Ok(json_ok(&out))
}

async fn patch_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural, name)): Path<(String, String, String, String)>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult {
    let t = Target::new(&group, &version, &plural, None)?;
    patch(ops, t, name, q, &headers, body).await
}

async fn patch_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult {
    let t = Target::new(&group, &version, &plural, Some(namespace))?;
    patch(ops, t, name, q, &headers, body).await
}

/// The patch formats (see [`patch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Merge,
    Strategic,
    Apply,
}

/// `PATCH`: computes the new object from the stored one and writes it conditionally on the
/// revision it was computed from; recomputed when another write came in between.
async fn patch(
    ops: Ops,
    t: Target,
    name: String,
    q: HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> KubeResult {
    let dry = dry_run(&q)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let kind = match content_type.as_str() {
        "application/merge-patch+json" => PatchType::Merge,
        // Kubernetes serves strategic merge patches for built-in kinds only, never for CRDs.
        "application/strategic-merge-patch+json" if t.res.group != "cilium.io" => {
            PatchType::Strategic
        }
        "application/apply-patch+yaml" => PatchType::Apply,
        other => {
            return Err(KubeError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/merge-patch+json, application/apply-patch+yaml{} (got `{other}`)",
                if t.res.group == "cilium.io" {
                    ""
                } else {
                    ", application/strategic-merge-patch+json"
                }
            )));
        }
    };
    let manager = q.get("fieldManager").cloned().unwrap_or_default();
    if kind == PatchType::Apply && manager.is_empty() {
        return Err(KubeError::invalid(
            t.res,
            &name,
            "fieldManager",
            "Required value: is required for apply patch",
        ));
    }
    let force = matches!(q.get("force").map(String::as_str), Some("true" | "1"));
    let body = parse_body(&body, kind == PatchType::Apply)?;
    for _ in 0..PATCH_ATTEMPTS {
        let existing = t.read(&ops, &name).await?;
        let current = existing.as_ref().map(|r| t.res.render(r));
        let mut o = match (kind, &current) {
            (PatchType::Apply, _) => {
                let mut config = body.clone();
                check_identity(&t, &mut config, Some(&name))?;
                if let Some(m) = metadata_mut(&mut config) {
                    for k in [
                        "managedFields",
                        "resourceVersion",
                        "uid",
                        "creationTimestamp",
                        "generation",
                    ] {
                        m.remove(k);
                    }
                }
                let version = t.res.api_version();
                match patch::server_side_apply(
                    current.as_ref(),
                    &config,
                    &manager,
                    &version,
                    force,
                    &now_rfc3339(),
                ) {
                    Applied::Object(o) => o,
                    Applied::Conflicts(c) => {
                        return Err(KubeError::apply_conflict(t.res, &name, &c));
                    }
                }
            }
            (_, None) => return Err(KubeError::not_found(t.res, &name)),
            (PatchType::Merge, Some(cur)) => {
                let mut o = cur.clone();
                patch::merge_patch(&mut o, &body);
                o
            }
            (PatchType::Strategic, Some(cur)) => {
                let mut o = cur.clone();
                patch::strategic_merge_patch(&mut o, &body)
                    .map_err(|e| KubeError::bad_request(format!("strategic merge patch: {e}")))?;
                o
            }
        };
        if let (Some(rv), Some(r)) = (o["metadata"]["resourceVersion"].as_str(), &existing)
            && kind != PatchType::Apply
            && rv != r.revision.to_string()
        {
            return Err(KubeError::conflict(t.res, &name));
        }
        check_identity(&t, &mut o, Some(&name))?;
        set_server_fields(&mut o, existing.as_ref().map(|r| &r.object));
        match commit(&ops, &t, &name, o, existing.as_ref(), dry).await {
            Err(e) if e.reason == "Conflict" || e.reason == "AlreadyExists" => continue,
            Err(e) => return Err(e),
            Ok(out) if existing.is_none() => return Ok(json_response(StatusCode::CREATED, &out)),
            Ok(out) => return Ok(json_ok(&out)),
        }
    }
    Err(KubeError::conflict(t.res, &name))
}

// === delete ===

async fn delete_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural, name)): Path<(String, String, String, String)>,
    Query(q): Params,
) -> KubeResult {
    delete(ops, Target::new(&group, &version, &plural, None)?, name, q).await
}

async fn delete_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    Query(q): Params,
) -> KubeResult {
    let t = Target::new(&group, &version, &plural, Some(namespace))?;
    delete(ops, t, name, q).await
}

/// `DELETE`: answers the object as it was.
async fn delete(ops: Ops, t: Target, name: String, q: HashMap<String, String>) -> KubeResult {
    let dry = dry_run(&q)?;
    let existing = t
        .read(&ops, &name)
        .await?
        .ok_or_else(|| KubeError::not_found(t.res, &name))?;
    if !dry {
        let w = ops
            .delete_policy(t.key(&name))
            .await
            .map_err(|e| KubeError::from_op(t.res, &name, e))?;
        if !w.changed {
            return Err(KubeError::not_found(t.res, &name));
        }
    }
    Ok(json_ok(&t.res.render(&existing)))
}

#[cfg(test)]
mod tests {
    use super::serves;

    #[test]
    fn serves_only_the_kubernetes_paths() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/cilium.io/v2",
            "/openapi/v2",
            "/version",
        ] {
            assert!(serves(p), "{p}");
        }
        for p in [
            "/apiserver",
            "/openapi.json",
            "/v1/policies",
            "/healthz",
            "/versions",
        ] {
            assert!(!serves(p), "{p}");
        }
    }
}
