//! The `status` subresource of the resources that declare one ([`super::resources::Resource::status`], as the
//! CRDs in `deploy/crds/` do): `GET …/{name}/status` answers the object; `PUT` (a whole object)
//! and `PATCH` (JSON merge patch) change `.status` and nothing else — whatever else the body
//! or the patched object says is ignored, as an API server ignores it for a custom resource
//! with the subresource — so `metadata.generation` stays. A `metadata.resourceVersion` in the
//! body (or left in the patched object) must be the stored revision, else `409 Conflict`. The
//! main resource, in turn, never changes `.status` (see `set_server_fields`).
//!
//! Who calls it: status writers such as the Kubernetes mirror (`palisade mirror`), with admin
//! tokens like every write of this API.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use serde_json::Value;

use super::status::KubeError;
use super::{
    KubeResult, PATCH_ATTEMPTS, Params, Target, check_identity, commit, dry_run, json_ok,
    parse_body, pods_target,
};
use crate::ops::Ops;

/// The target of a status request; `404` for resources without the subresource.
fn target(
    group: &str,
    version: &str,
    plural: &str,
    namespace: Option<String>,
) -> KubeResult<Target> {
    let t = Target::new(group, version, plural, namespace)?;
    if !t.res.status {
        return Err(KubeError::no_such_path(&format!(
            "/apis/{group}/{version}/{plural}/NAME/status: {} has no status subresource",
            t.res.plural
        )));
    }
    Ok(t)
}

/// The stored object `stored` with its `.status` replaced by `status` (removed when `None` or
/// `null`): the only change a status write makes.
pub fn with_status(stored: &Value, status: Option<&Value>) -> Value {
    let mut o = stored.clone();
    if let Some(m) = o.as_object_mut() {
        match status.filter(|s| !s.is_null()) {
            Some(s) => {
                m.insert("status".into(), s.clone());
            }
            None => {
                m.remove("status");
            }
        }
    }
    o
}

/// Whether the resource version the client sent (if any) is not `revision`.
fn stale(o: &Value, revision: u64) -> bool {
    o["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| rv != revision.to_string())
}

pub(super) async fn get_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural, name)): Path<(String, String, String, String)>,
) -> KubeResult {
    get(ops, target(&group, &version, &plural, None)?, name).await
}

pub(super) async fn get_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
) -> KubeResult {
    let t = target(&group, &version, &plural, Some(namespace))?;
    get(ops, t, name).await
}

// The core group's Pods (`/api/v1/namespaces/{namespace}/pods/{name}/status`): the kubelet
// writes a pod's addresses there, as the mirror's stand-in cluster does in its tests.

pub(super) async fn get_pod(
    State(ops): State<Ops>,
    Path((namespace, name)): Path<(String, String)>,
) -> KubeResult {
    get(ops, pods_target(Some(namespace)), name).await
}

pub(super) async fn put_pod(
    State(ops): State<Ops>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    update(ops, pods_target(Some(namespace)), name, q, body).await
}

pub(super) async fn patch_pod(
    State(ops): State<Ops>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult {
    patch(ops, pods_target(Some(namespace)), name, q, &headers, body).await
}

async fn get(ops: Ops, t: Target, name: String) -> KubeResult {
    match t.read(&ops, &name).await? {
        Some(r) => Ok(json_ok(&t.res.render(&r))),
        None => Err(KubeError::not_found(t.res, &name)),
    }
}

pub(super) async fn put_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural, name)): Path<(String, String, String, String)>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    update(ops, target(&group, &version, &plural, None)?, name, q, body).await
}

pub(super) async fn put_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    Query(q): Params,
    body: Bytes,
) -> KubeResult {
    let t = target(&group, &version, &plural, Some(namespace))?;
    update(ops, t, name, q, body).await
}

/// `PUT …/status`: the body's `.status` replaces the stored one.
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
    if stale(&o, existing.revision) {
        return Err(KubeError::conflict(t.res, &name));
    }
    let new = with_status(&existing.object, o.get("status"));
    let out = commit(&ops, &t, &name, new, Some(&existing), dry).await?;
    Ok(json_ok(&out))
}

pub(super) async fn patch_cluster(
    State(ops): State<Ops>,
    Path((group, version, plural, name)): Path<(String, String, String, String)>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult {
    let t = target(&group, &version, &plural, None)?;
    patch(ops, t, name, q, &headers, body).await
}

pub(super) async fn patch_namespaced(
    State(ops): State<Ops>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> KubeResult {
    let t = target(&group, &version, &plural, Some(namespace))?;
    patch(ops, t, name, q, &headers, body).await
}

/// `PATCH …/status` (JSON merge patch): the patch applies to the object as served, and the
/// result's `.status` replaces the stored one; recomputed when another write came in between.
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
        .trim();
    if content_type != "application/merge-patch+json" {
        return Err(KubeError::unsupported_media(format!(
            "the status subresource accepts application/merge-patch+json patches only (got `{content_type}`)"
        )));
    }
    let body = parse_body(&body, false)?;
    for _ in 0..PATCH_ATTEMPTS {
        let existing = t
            .read(&ops, &name)
            .await?
            .ok_or_else(|| KubeError::not_found(t.res, &name))?;
        let mut o = t.res.render(&existing);
        super::patch::merge_patch(&mut o, &body);
        if stale(&o, existing.revision) {
            return Err(KubeError::conflict(t.res, &name));
        }
        let new = with_status(&existing.object, o.get("status"));
        match commit(&ops, &t, &name, new, Some(&existing), dry).await {
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => return Err(e),
            Ok(out) => return Ok(json_ok(&out)),
        }
    }
    Err(KubeError::conflict(t.res, &name))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_status_write_changes_the_status_only() {
        let stored = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "generation": 3, "uid": "u"},
            "spec": {"endpointSelector": {}}, "status": {"old": true}});
        let o = with_status(&stored, Some(&json!({"conditions": []})));
        assert_eq!(o["status"], json!({"conditions": []}));
        assert_eq!(o["spec"], stored["spec"]);
        assert_eq!(o["metadata"], stored["metadata"]);
        assert!(with_status(&stored, None).get("status").is_none());
        assert!(
            with_status(&stored, Some(&Value::Null))
                .get("status")
                .is_none()
        );
        assert!(stale(&json!({"metadata": {"resourceVersion": "4"}}), 5));
        assert!(!stale(&json!({"metadata": {"resourceVersion": "5"}}), 5));
        assert!(!stale(&json!({"metadata": {}}), 5));
    }
}
