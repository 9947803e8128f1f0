//! `deploy/crds/`: both CRDs parse, are `apiextensions.k8s.io/v1` for `cilium.io/v2` with a
//! status subresource and a structural schema (every node typed, or int-or-string, or
//! preserving unknown fields), and every field of every CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy in the policy suites (the seed's examples) is in the schema
//! with a compatible type.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde_yaml::with::singleton_map_recursive::deserialize(d)
                .unwrap_or_else(|e: serde_yaml::Error| panic!("{}: {e}", path.display()))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn crd(file: &str) -> Value {
    let docs = yaml_docs(&root().join("deploy/crds").join(file));
    assert_eq!(docs.len(), 1, "{file}");
    docs.into_iter().next().unwrap_or_default()
}

fn preserves(s: &Value) -> bool {
    s["x-kubernetes-preserve-unknown-fields"] == true
}

/// Structural: every schema node says its type (or is int-or-string / preserves unknown
/// fields); collects the paths that do not.
fn check_structural(s: &Value, path: &str, errors: &mut Vec<String>) {
    let typed = s["type"].is_string() || s["x-kubernetes-int-or-string"] == true || preserves(s);
    if !typed {
        errors.push(format!("{path}: no type"));
    }
    if let Some(props) = s["properties"].as_object() {
        for (k, v) in props {
            check_structural(v, &format!("{path}.{k}"), errors);
        }
    }
    if s["items"].is_object() {
        check_structural(&s["items"], &format!("{path}[]"), errors);
    }
    if s["additionalProperties"].is_object() {
        check_structural(&s["additionalProperties"], &format!("{path}.*"), errors);
    }
}

/// Whether `v` fits schema `s` (fields present, types compatible); collects what does not.
fn check_value(v: &Value, s: &Value, path: &str, errors: &mut Vec<String>) {
    // The API server validates `metadata` itself; CRD schemas leave it a bare object.
    if preserves(s) || path == ".metadata" {
        return;
    }
    if s["x-kubernetes-int-or-string"] == true {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            errors.push(format!("{path}: not an integer or a string"));
        }
        return;
    }
    match (s["type"].as_str(), v) {
        (Some("object"), Value::Object(m)) => {
            for (k, child) in m {
                let sub = s["properties"]
                    .get(k)
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
                match sub {
                    Some(sub) => check_value(child, sub, &format!("{path}.{k}"), errors),
                    None => errors.push(format!("{path}.{k}: not in the schema")),
                }
            }
        }
        (Some("array"), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_value(item, &s["items"], &format!("{path}[{i}]"), errors);
            }
        }
        (Some("string"), Value::String(x)) => {
            if let Some(allowed) = s["enum"].as_array()
                && !allowed.iter().any(|a| a == x)
            {
                errors.push(format!("{path}: `{x}` is not one of {allowed:?}"));
            }
        }
        (Some("integer"), v) if v.is_i64() || v.is_u64() => {}
        (Some("boolean"), Value::Bool(_)) => {}
        (t, v) => errors.push(format!("{path}: {v} is not of type {t:?}")),
    }
}

/// The policy objects of the CiliumNetworkPolicy kinds in the policy suites.
fn seed_policies() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let dir = root().join("policy/tests/suites/cilium");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in files {
        for doc in yaml_docs(&f) {
            for (i, p) in doc["policies"].as_array().into_iter().flatten().enumerate() {
                out.push((format!("{}: policies[{i}]", f.display()), p.clone()));
            }
        }
    }
    out
}

#[test]
fn the_crds_are_structural_and_cover_the_examples() {
    let mut schemas = Vec::new();
    for (file, kind, scope) in [
        (
            "ciliumnetworkpolicies.yaml",
            "CiliumNetworkPolicy",
            "Namespaced",
        ),
        (
            "ciliumclusterwidenetworkpolicies.yaml",
            "CiliumClusterwideNetworkPolicy",
            "Cluster",
        ),
    ] {
        let c = crd(file);
        assert_eq!(c["apiVersion"], "apiextensions.k8s.io/v1", "{file}");
        assert_eq!(c["kind"], "CustomResourceDefinition", "{file}");
        assert_eq!(c["spec"]["group"], "cilium.io", "{file}");
        assert_eq!(c["spec"]["names"]["kind"], kind, "{file}");
        assert_eq!(c["spec"]["scope"], scope, "{file}");
        let plural = c["spec"]["names"]["plural"].as_str().unwrap_or_default();
        assert_eq!(
            c["metadata"]["name"],
            format!("{plural}.cilium.io"),
            "{file}"
        );
        let v2 = &c["spec"]["versions"][0];
        assert_eq!(
            (&v2["name"], &v2["served"], &v2["storage"]),
            (&Value::from("v2"), &Value::from(true), &Value::from(true)),
            "{file}"
        );
        assert!(v2["subresources"]["status"].is_object(), "{file}");
        let schema = v2["schema"]["openAPIV3Schema"].clone();
        let mut errors = Vec::new();
        check_structural(&schema, kind, &mut errors);
        assert!(errors.is_empty(), "{file} is not structural: {errors:#?}");
        schemas.push((kind, schema));
    }

    let seeds = seed_policies();
    let mut checked = 0;
    for (origin, p) in &seeds {
        let Some((_, schema)) = schemas.iter().find(|(k, _)| p["kind"] == *k) else {
            continue;
        };
        let mut errors = Vec::new();
        check_value(p, schema, "", &mut errors);
        assert!(errors.is_empty(), "{origin}: {errors:#?}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} example policies found");

    // The checker does catch what the schema lacks.
    let (_, schema) = &schemas[0];
    let mut bad = seeds
        .iter()
        .find(|(_, p)| p["kind"] == "CiliumNetworkPolicy")
        .map(|(_, p)| p.clone())
        .unwrap_or_default();
    bad["spec"]["ingres"] = Value::Array(Vec::new());
    bad["spec"]["endpointSelector"]["matchExpressions"] =
        serde_json::json!([{"key": "a", "operator": "Maybe"}]);
    let mut errors = Vec::new();
    check_value(&bad, schema, "", &mut errors);
    assert_eq!(
        errors,
        [
            ".spec.endpointSelector.matchExpressions[0].operator: `Maybe` is not one of [String(\"In\"), String(\"NotIn\"), String(\"Exists\"), String(\"DoesNotExist\")]",
            ".spec.ingres: not in the schema"
        ]
    );
}
