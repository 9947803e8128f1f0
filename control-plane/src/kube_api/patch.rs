//! The patch formats of `PATCH` requests, applied to the object a client would `GET`:
//!
//! - `application/merge-patch+json`: RFC 7386 (maps merge, `null` deletes, lists replace);
//! - `application/strategic-merge-patch+json` (built-in kinds only, as Kubernetes): a merge
//!   patch plus its directives (`$patch: replace|delete`, `$retainKeys`; `$setElementOrder/…`
//!   ignored). `NetworkPolicy` declares no merge keys, so every list is replaced, as upstream;
//! - `application/apply-patch+yaml`: server-side apply with field ownership per manager
//!   ([`server_side_apply`]): lists are atomic, as for a CRD without list-type markers.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field path, one map key per element.
pub type FieldPath = Vec<String>;

/// Applies an RFC 7386 merge patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Applies a strategic merge patch to `target`; an unknown `$` directive is an error naming it.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        None => {}
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = strip_directives(Value::Object(m));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("`$patch`: unknown directive `{other}`")),
    }
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(t) = target else {
        return Ok(());
    };
    for (k, v) in p {
        if k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if k.starts_with('$') {
            return Err(format!("`{k}`: unknown strategic merge patch directive"));
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let slot = t.entry(k.clone()).or_insert(Value::Null);
        strategic_merge_patch(slot, v)?;
        if slot.is_null() {
            t.remove(k);
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: BTreeSet<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(k.as_str()));
    }
    Ok(())
}

fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        other => other,
    }
}

// === server-side apply ===

/// The fields an applied configuration sets, as leaf paths: every map key down to a non-map
/// value or an empty map (lists are atomic). `apiVersion`, `kind` and `metadata.name` /
/// `metadata.namespace` identify the object and are nobody's.
pub fn applied_fields(config: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    leaves(config, &mut Vec::new(), &mut out);
    out.retain(|p| {
        !matches!(
            p.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
            ["apiVersion"] | ["kind"] | ["metadata", "name" | "namespace"]
        )
    });
    out
}

fn leaves(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(k.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

/// `fieldsV1` of a set of leaf paths (`{"f:spec": {"f:ingress": {}}}`).
pub fn to_fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut node = &mut root;
        for k in p {
            let next = node.entry(format!("f:{k}")).or_insert_with(|| json!({}));
            if !next.is_object() {
                *next = json!({});
            }
            let Value::Object(m) = next else { break };
            node = m;
        }
    }
    Value::Object(root)
}

/// The leaf paths of a `fieldsV1` value (keys other than `f:` ones, e.g. `.` or `k:`, end a path).
pub fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(k[2..].to_owned());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The value at `path`.
pub fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Removes the value at `path`, and maps left empty on the way up.
pub fn remove_path(v: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(m) = v.as_object_mut() else { return };
    if rest.is_empty() {
        m.remove(first);
        return;
    }
    if let Some(child) = m.get_mut(first) {
        remove_path(child, rest);
        if child.as_object().is_some_and(Map::is_empty) {
            m.remove(first);
        }
    }
}

/// Sets every value of `config` into `target`: maps merge key by key, anything else replaces.
pub fn deep_merge(target: &mut Value, config: &Value) {
    match (target.as_object_mut(), config) {
        (Some(t), Value::Object(c)) => {
            for (k, v) in c {
                deep_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = config.clone(),
    }
}

/// One manager's entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    /// The field manager.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The fields it owns.
    pub fields: BTreeSet<FieldPath>,
}

/// The `Apply` entries of `metadata.managedFields` of `object`.
pub fn managed_fields(object: &Value) -> Vec<Managed> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| Managed {
                    manager: e["manager"].as_str().unwrap_or_default().to_owned(),
                    operation: e["operation"].as_str().unwrap_or_default().to_owned(),
                    fields: from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a server-side apply resolved to.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The new object (with its `managedFields`).
    Object(Value),
    /// Fields the configuration changes that other managers own: `(manager, .field.path)`.
    Conflicts(Vec<(String, String)>),
}

/// Server-side apply of `config` by `manager` onto `current` (the stored object, if any): the
/// configuration's fields are set; fields this manager applied before and no longer sets are
/// removed unless another manager also owns them; a field another manager owns and the
/// configuration changes is a conflict unless `force` (which takes it over).
pub fn server_side_apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
    now: &str,
) -> Applied {
    let owned = applied_fields(config);
    let mut managers = current.map(managed_fields).unwrap_or_default();
    let mut object = current.cloned().unwrap_or_else(|| json!({}));
    let conflicts: Vec<(String, String)> = managers
        .iter()
        .filter(|m| m.manager != manager)
        .flat_map(|m| {
            m.fields
                .iter()
                .filter(|f| owned.contains(*f) && get_path(&object, f) != get_path(config, f))
                .map(|f| (m.manager.clone(), format!(".{}", f.join("."))))
                .collect::<Vec<_>>()
        })
        .collect();
    if !conflicts.is_empty() && !force {
        return Applied::Conflicts(conflicts);
    }
    for m in managers.iter_mut().filter(|m| m.manager != manager) {
        m.fields.retain(|f| !owned.contains(f));
    }
    let previous = managers
        .iter()
        .find(|m| m.manager == manager && m.operation == "Apply")
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    for f in previous.difference(&owned) {
        let shared = managers
            .iter()
            .any(|m| m.manager != manager && m.fields.contains(f));
        if !shared {
            remove_path(&mut object, f);
        }
    }
    deep_merge(&mut object, config);
    managers.retain(|m| m.manager != manager && !m.fields.is_empty());
    managers.push(Managed {
        manager: manager.to_owned(),
        operation: "Apply".to_owned(),
        fields: owned,
    });
    let entries: Vec<Value> = managers
        .iter()
        .map(|m| {
            json!({"manager": m.manager, "operation": m.operation, "apiVersion": api_version,
                   "time": now, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&m.fields)})
        })
        .collect();
    object["metadata"]["managedFields"] = Value::Array(entries);
    Applied::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_merges_maps_deletes_nulls_replaces_lists() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1});
        merge_patch(
            &mut t,
            &json!({"a": {"b": null, "d": 3}, "l": [3], "x": null}),
        );
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_patch_directives() {
        let mut t = json!({"spec": {"podSelector": {"matchLabels": {"a": "1"}}, "policyTypes": ["Ingress"]}});
        strategic_merge_patch(
            &mut t,
            &json!({"$setElementOrder/x": [], "spec": {"podSelector": {"$patch": "replace", "matchLabels": {"b": "2"}},
                    "policyTypes": ["Egress"]}}),
        )
        .expect("patch");
        assert_eq!(
            t,
            json!({"spec": {"podSelector": {"matchLabels": {"b": "2"}}, "policyTypes": ["Egress"]}})
        );
        let err = strategic_merge_patch(&mut t, &json!({"$bogus": 1})).expect_err("unknown");
        assert!(err.contains("$bogus"), "{err}");
        strategic_merge_patch(&mut t, &json!({"spec": {"$retainKeys": ["policyTypes"]}}))
            .expect("retain");
        assert_eq!(t, json!({"spec": {"policyTypes": ["Egress"]}}));
    }

    #[test]
    fn fields_v1_round_trips() {
        let f = applied_fields(&json!({"apiVersion": "v", "kind": "K",
            "metadata": {"name": "n", "labels": {"a": "1"}}, "spec": {"x": [1], "e": {}}}));
        let v = to_fields_v1(&f);
        assert_eq!(
            v,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:e": {}, "f:x": {}}})
        );
        assert_eq!(from_fields_v1(&v), f);
    }

    #[test]
    fn apply_removes_what_the_manager_dropped_and_detects_conflicts() {
        let c1 =
            json!({"metadata": {"name": "n", "labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        let Applied::Object(o1) = server_side_apply(None, &c1, "m1", "v", false, "t") else {
            panic!("first apply conflicts")
        };
        let c2 = json!({"metadata": {"name": "n", "labels": {"a": "1"}}, "spec": {"x": 2}});
        let Applied::Object(o2) = server_side_apply(Some(&o1), &c2, "m1", "v", false, "t") else {
            panic!("re-apply conflicts")
        };
        assert_eq!(o2["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(o2["spec"]["x"], 2);
        let c3 = json!({"metadata": {"name": "n"}, "spec": {"x": 3}});
        assert_eq!(
            server_side_apply(Some(&o2), &c3, "m2", "v", false, "t"),
            Applied::Conflicts(vec![("m1".into(), ".spec.x".into())])
        );
        let Applied::Object(o3) = server_side_apply(Some(&o2), &c3, "m2", "v", true, "t") else {
            panic!("force conflicts")
        };
        assert_eq!(o3["spec"]["x"], 3);
        assert_eq!(managed_fields(&o3).len(), 2);
    }
}
