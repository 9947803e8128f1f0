//! OpenAPI documents of the served resources: `/openapi/v3` (the index of group versions),
//! `/openapi/v3/apis/<group>/<version>` (OpenAPI 3.0) and `/openapi/v2` (Swagger 2.0). kubectl
//! reads them to learn that the server validates fields itself (`fieldValidation` is listed on
//! every write), for `kubectl explain`, and to find the kinds' schemas. The schemas are loose
//! (`spec` preserves unknown fields): the policy engine is the validator, and its error is what
//! the client sees.

use serde_json::{Map, Value, json};

use super::resources::{RESOURCES, Resource, group_versions};

/// The schema name of a kind, in the reverse-domain style Kubernetes uses.
fn schema_name(r: &Resource) -> String {
    let mut parts: Vec<&str> = r.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), r.version, r.kind)
}

fn gvk(r: &Resource) -> Value {
    json!([{"group": r.group, "version": r.version, "kind": r.kind}])
}

fn schema(r: &Resource, list: bool, reference: &str) -> Value {
    if list {
        return json!({"type": "object", "required": ["items"],
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "items": {"type": "array", "items": {"$ref": format!("{reference}{}", schema_name(r))}}},
            "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": format!("{}List", r.kind)}]});
    }
    let loose = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let mut props = json!({
        "apiVersion": {"type": "string", "description": "APIVersion of this object."},
        "kind": {"type": "string", "description": "Kind of this object."},
        "metadata": {"type": "object", "description": "Standard object metadata.",
                     "x-kubernetes-preserve-unknown-fields": true},
        "spec": loose,
    });
    if r.group == "cilium.io" {
        props["specs"] = json!({"type": "array", "items": loose});
        props["status"] = loose.clone();
    }
    json!({"type": "object", "description": format!("{} (validated by the Palisade policy engine).", r.kind),
           "properties": props, "x-kubernetes-group-version-kind": gvk(r)})
}

fn parameters(v3: bool) -> Value {
    let p = |name: &str| {
        if v3 {
            json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
        } else {
            json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
        }
    };
    json!([p("dryRun"), p("fieldManager"), p("fieldValidation")])
}

fn operation(r: &Resource, action: &str, id: &str, v3: bool) -> Value {
    json!({"operationId": format!("{id}{}", r.kind), "tags": [r.group],
           "parameters": if matches!(action, "post" | "put" | "patch") { parameters(v3) } else { json!([]) },
           "responses": {"200": {"description": "OK"}},
           "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk(r)[0]})
}

fn paths(group: &str, version: &str, v3: bool) -> Map<String, Value> {
    let mut paths = Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = if r.namespaced {
            format!(
                "/apis/{group}/{version}/namespaces/{{namespace}}/{}",
                r.plural
            )
        } else {
            format!("/apis/{group}/{version}/{}", r.plural)
        };
        paths.insert(
            base.clone(),
            json!({"get": operation(r, "list", "list", v3), "post": operation(r, "post", "create", v3)}),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": operation(r, "get", "read", v3), "put": operation(r, "put", "replace", v3),
                   "patch": operation(r, "patch", "patch", v3), "delete": operation(r, "delete", "delete", v3)}),
        );
    }
    paths
}

/// `/openapi/v3`: where each group version's document is.
pub fn v3_index() -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions() {
        paths.insert(
            format!("apis/{g}/{v}"),
            json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}")}),
        );
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/apis/<group>/<version>`.
pub fn v3_group_version(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut schemas = Map::new();
    for r in served {
        schemas.insert(schema_name(r), schema(r, false, "#/components/schemas/"));
        schemas.insert(
            format!("{}List", schema_name(r)),
            schema(r, true, "#/components/schemas/"),
        );
    }
    Some(json!({"openapi": "3.0.0",
        "info": {"title": "Palisade", "version": format!("{group}/{version}")},
        "paths": paths(group, version, true),
        "components": {"schemas": schemas}}))
}

/// `/openapi/v2`: every served kind in one Swagger 2.0 document.
pub fn v2() -> Value {
    let mut definitions = Map::new();
    let mut all_paths = Map::new();
    for r in &RESOURCES {
        definitions.insert(schema_name(r), schema(r, false, "#/definitions/"));
        definitions.insert(
            format!("{}List", schema_name(r)),
            schema(r, true, "#/definitions/"),
        );
    }
    for (g, v) in group_versions() {
        all_paths.extend(paths(g, v, false));
    }
    json!({"swagger": "2.0", "info": {"title": "Palisade", "version": env!("CARGO_PKG_VERSION")},
           "paths": all_paths, "definitions": definitions})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_name_every_kind_and_the_field_validation_parameter() {
        let d = v3_group_version("cilium.io", "v2").expect("cilium.io/v2");
        assert!(d["components"]["schemas"]["io.cilium.v2.CiliumNetworkPolicy"].is_object());
        let patch = &d["paths"]["/apis/cilium.io/v2/namespaces/{namespace}/ciliumnetworkpolicies/{name}"]
            ["patch"];
        assert!(
            patch["parameters"].to_string().contains("fieldValidation"),
            "{patch}"
        );
        assert!(v2()["definitions"]["io.k8s.networking.v1.NetworkPolicy"].is_object());
        assert!(v3_group_version("x", "v1").is_none());
        assert_eq!(v3_index()["paths"].as_object().map(Map::len), Some(2));
    }
}
