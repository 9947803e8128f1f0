//! OpenAPI documents of the served resources: `/openapi/v3` (the index of group versions),
//! `/openapi/v3/apis/<group>/<version>` (OpenAPI 3.0) and `/openapi/v2` (Swagger 2.0). kubectl
//! reads them to learn that the server validates fields itself (`fieldValidation` is listed on
//! every write), for `kubectl explain`, and to find the kinds' schemas. The schemas are loose
//! (`spec` preserves unknown fields): the policy engine is the validator, and its error is what
//! the client sees.

use serde_json::{Map, Value, json};

use super::resources::{RESOURCES, Resource, all_group_versions, group_version_prefix};

/// The schema name of a kind, in the reverse-domain style Kubernetes uses.
fn schema_name(r: &Resource) -> String {
    if r.group.is_empty() {
        return format!("io.k8s.api.core.{}.{}", r.version, r.kind);
    }
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
    }
    if r.status {
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
        let prefix = r.prefix();
        let base = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
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
    for (g, v) in all_group_versions() {
        let at = group_version_prefix(g, v);
        paths.insert(
            at.trim_start_matches('/').to_owned(),
            json!({"serverRelativeURL": format!("/openapi/v3{at}")}),
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
    for (g, v) in all_group_versions() {
        all_paths.extend(paths(g, v, false));
    }
    json!({"swagger": "2.0", "info": {"title": "Palisade", "version": env!("CARGO_PKG_VERSION")},
           "paths": all_paths, "definitions": definitions})
}

/// The media type of the protobuf form of the Swagger 2.0 document.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// `/openapi/v2` in protobuf (gnostic's `openapi.v2.Document`), which kubectl releases before
/// OpenAPI v3 ask for (they cannot read JSON there). It carries `swagger`, `info` and, per
/// resource, the item path's `patch` operation with its group-version-kind and its query
/// parameters (how such a kubectl learns that `dryRun` — `kubectl diff` — is supported); no
/// definitions: it then finds no schema for the served kinds and skips its client-side
/// validation, and the server validates with the policy engine, as for every client. Encoded by
/// hand: a handful of fields do not justify generated code.
pub fn v2_protobuf() -> Vec<u8> {
    let mut info = Vec::new();
    pb_field(&mut info, 1, b"Palisade");
    pb_field(&mut info, 2, env!("CARGO_PKG_VERSION").as_bytes());
    let mut paths = Vec::new();
    for r in &RESOURCES {
        let prefix = r.prefix();
        let base = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let mut op = Vec::new();
        for name in ["dryRun", "fieldManager", "fieldValidation"] {
            // QueryParameterSubSchema{in, name, type} in NonBodyParameter in Parameter in
            // ParametersItem.
            let mut query = Vec::new();
            pb_field(&mut query, 2, b"query");
            pb_field(&mut query, 4, name.as_bytes());
            pb_field(&mut query, 6, b"string");
            let non_body = pb_message(3, &query);
            let parameter = pb_message(2, &non_body);
            let item = pb_message(1, &parameter);
            pb_field(&mut op, 8, &item);
        }
        // NamedAny{name, Any{yaml}}: the group-version-kind extension.
        let gvk = format!(
            "group: {}\nkind: {}\nversion: {}\n",
            r.group, r.kind, r.version
        );
        let mut any = Vec::new();
        pb_field(&mut any, 2, gvk.as_bytes());
        let mut ext = Vec::new();
        pb_field(&mut ext, 1, b"x-kubernetes-group-version-kind");
        pb_field(&mut ext, 2, &any);
        pb_field(&mut op, 13, &ext);
        let path_item = pb_message(8, &op);
        let mut named = Vec::new();
        pb_field(&mut named, 1, base.as_bytes());
        pb_field(&mut named, 2, &path_item);
        pb_field(&mut paths, 2, &named);
    }
    let mut doc = Vec::new();
    pb_field(&mut doc, 1, b"2.0");
    pb_field(&mut doc, 2, &info);
    pb_field(&mut doc, 8, &paths);
    doc
}

/// Appends field `number` with wire type 2 (length-delimited) holding `bytes`.
fn pb_field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    out.push((number << 3) | 2);
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push(u8::try_from(len & 0x7f).unwrap_or(0) | 0x80);
        len >>= 7;
    }
    out.push(u8::try_from(len).unwrap_or(0));
    out.extend_from_slice(bytes);
}

/// A message holding only field `number` = `bytes`.
fn pb_message(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    pb_field(&mut out, number, bytes);
    out
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
        // The two policy groups and the core group (Namespaces).
        assert_eq!(v3_index()["paths"].as_object().map(Map::len), Some(3));
        let core = v3_group_version("", "v1").expect("core v1");
        assert!(
            core["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object(),
            "{core}"
        );
        assert!(core["components"]["schemas"]["io.k8s.api.core.v1.Namespace"].is_object());
        let pod = &core["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert!(pod["properties"]["status"].is_object(), "{pod}");
        assert!(
            core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"].is_object(),
            "{core}"
        );
        assert!(v3_index()["paths"]["api/v1"]["serverRelativeURL"] == "/openapi/v3/api/v1");
    }

    #[test]
    fn protobuf_fields_and_lengths() {
        let mut out = Vec::new();
        pb_field(&mut out, 1, b"2.0");
        assert_eq!(out, [0x0a, 3, b'2', b'.', b'0']);
        // A 300-byte field: the length is a two-byte varint (0xac 0x02).
        let long = vec![0u8; 300];
        let m = pb_message(8, &long);
        assert_eq!(&m[..3], &[0x42, 0xac, 0x02]);
        assert_eq!(m.len(), 303);
        let doc = v2_protobuf();
        assert_eq!(&doc[..5], &[0x0a, 3, b'2', b'.', b'0']);
        let text = String::from_utf8_lossy(&doc);
        for r in &RESOURCES {
            assert!(text.contains(&format!("kind: {}\n", r.kind)), "{}", r.kind);
        }
        assert_eq!(text.matches("dryRun").count(), RESOURCES.len());
    }
}
