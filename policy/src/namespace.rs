//! Kubernetes `v1/Namespace` objects as the policy engine reads them: a name and the labels
//! that every pod of the namespace carries in its identity (`k8s:io.cilium.k8s.namespace.labels.*`,
//! what a `namespaceSelector` matches). The control plane stores Namespace objects next to the
//! policies (same store, same revisions, same watch); this module is the one validator both it and
//! the agents use, so an object the control plane accepted is one every agent can read.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The kind of the object.
pub const KIND: &str = "Namespace";
/// Its `apiVersion` (the core group).
pub const API_VERSION: &str = "v1";

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels` (without `kubernetes.io/metadata.name`, which is implied).
    pub labels: BTreeMap<String, String>,
}

/// Why a Namespace object was refused: the field and the reason, Kubernetes' wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct NamespaceError {
    /// The offending field, e.g. `metadata.labels.team`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> NamespaceError {
    NamespaceError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The label Kubernetes sets on every namespace (immutable, equal to the name).
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Reads a `v1/Namespace` object (JSON, as stored or as sent): the name must be a DNS-1123
/// label and the labels valid Kubernetes labels. `spec` and `status` are ignored (the
/// finalizers and phase mean nothing to policy).
pub fn parse(object: &Value) -> Result<Namespace, NamespaceError> {
    let (_, meta, name) = envelope(object, KIND, API_VERSION).map_err(|(f, r)| err(f, r))?;
    if let Some(reason) = dns1123_label(name) {
        return Err(err("metadata.name", reason));
    }
    if meta.contains_key("namespace") {
        return Err(err(
            "metadata.namespace",
            "a Namespace is cluster-scoped: it has no namespace",
        ));
    }
    let mut labels = metadata_labels(meta).map_err(|(f, r)| err(f, r))?;
    // Kubernetes sets it, equal to the name; it says nothing the name does not.
    if let Some(v) = labels.remove(NAME_LABEL)
        && v != name
    {
        return Err(err(
            format!("metadata.labels.{NAME_LABEL}"),
            format!("must be the namespace's name `{name}`"),
        ));
    }
    Ok(Namespace {
        name: name.to_owned(),
        labels,
    })
}

/// What every core v1 object read here shares: a JSON object with `apiVersion`
/// `api_version`, `kind` `kind`, and a `metadata` object holding a string `name`. Returns the
/// object, its metadata and its name, or the field at fault and why.
#[allow(clippy::type_complexity)]
pub(crate) fn envelope<'a>(
    object: &'a Value,
    kind: &str,
    api_version: &str,
) -> Result<(&'a Map<String, Value>, &'a Map<String, Value>, &'a str), (String, String)> {
    let fail = |field: &str, reason: String| Err((field.to_owned(), reason));
    let Some(obj) = object.as_object() else {
        return fail("", "must be a JSON object".into());
    };
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v == api_version => {}
        Some(other) => {
            return fail(
                "apiVersion",
                format!("`{kind}` needs apiVersion `{api_version}`, not `{other}`"),
            );
        }
        None => return fail("apiVersion", "must be a string".into()),
    }
    if obj.get("kind").and_then(Value::as_str) != Some(kind) {
        return fail("kind", format!("must be `{kind}`"));
    }
    let Some(meta) = obj.get("metadata").and_then(Value::as_object) else {
        return fail("metadata", "must be an object".into());
    };
    let Some(name) = meta.get("name").and_then(Value::as_str) else {
        return fail("metadata.name", "must be a string".into());
    };
    Ok((obj, meta, name))
}

/// `metadata.labels` as valid Kubernetes labels (absent or null: none), or the field at fault
/// (`metadata.labels.KEY`) and why.
pub(crate) fn metadata_labels(
    meta: &Map<String, Value>,
) -> Result<BTreeMap<String, String>, (String, String)> {
    let mut labels = BTreeMap::new();
    match meta.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let field = format!("metadata.labels.{k}");
                let Some(v) = v.as_str() else {
                    return Err((field, "a label value must be a string".into()));
                };
                if let Some(reason) = label_key(k).or_else(|| label_value(v)) {
                    return Err((field, reason));
                }
                labels.insert(k.clone(), v.to_owned());
            }
        }
        Some(_) => {
            return Err(("metadata.labels".into(), "must be a map of strings".into()));
        }
    }
    Ok(labels)
}

/// Why `s` is not a DNS-1123 label (lower-case alphanumerics and `-`, 1–63 characters,
/// starting and ending with an alphanumeric), or `None`.
pub fn dns1123_label(s: &str) -> Option<String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if s.is_empty() || s.len() > 63 {
        return Some(format!("`{s}` must be 1 to 63 characters"));
    }
    if !s.chars().all(|c| ok_char(c) || c == '-')
        || !s.starts_with(ok_char)
        || !s.ends_with(ok_char)
    {
        return Some(format!(
            "`{s}` must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (a DNS-1123 label)"
        ));
    }
    None
}

/// Why `s` is not a label name part (1–63 characters of alphanumerics, `-`, `_`, `.`, starting
/// and ending with an alphanumeric), or `None`.
fn name_part(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 63 {
        return Some(format!("name part `{s}` must be 1 to 63 characters"));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        || !s.starts_with(alnum)
        || !s.ends_with(alnum)
    {
        return Some(format!(
            "name part `{s}` must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

/// Why `k` is not a label key (an optional DNS-1123 subdomain prefix and `/`, then a name
/// part), or `None`.
pub fn label_key(k: &str) -> Option<String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Some(format!("prefix `{p}` must be 1 to 253 characters"));
        }
        if let Some(bad) = p.split('.').find_map(dns1123_label) {
            return Some(format!("prefix `{p}` must be a DNS-1123 subdomain: {bad}"));
        }
    }
    name_part(name)
}

/// Why `v` is not a label value (empty, or a name part), or `None`.
pub fn label_value(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    name_part(v).map(|r| r.replacen("name part", "value", 1))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_name_and_labels_and_drops_the_implied_name_label() {
        let ns = parse(&json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team-a", "labels": {"env": "prod",
                "example.com/tier": "", "kubernetes.io/metadata.name": "team-a"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}))
        .unwrap();
        assert_eq!(ns.name, "team-a");
        assert_eq!(
            ns.labels,
            BTreeMap::from([
                ("env".to_owned(), "prod".to_owned()),
                ("example.com/tier".to_owned(), String::new()),
            ])
        );
    }

    #[test]
    fn errors_name_the_field() {
        let base = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}});
        let cases = [
            ("/apiVersion", json!("v2"), "apiVersion"),
            ("/kind", json!("Pod"), "kind"),
            ("/metadata/name", json!("Team_A"), "metadata.name"),
            ("/metadata/name", json!("-a"), "metadata.name"),
            ("/metadata/namespace", json!("x"), "metadata.namespace"),
            ("/metadata/labels", json!({"env": 3}), "metadata.labels.env"),
            (
                "/metadata/labels",
                json!({"bad key": "x"}),
                "metadata.labels.bad key",
            ),
            (
                "/metadata/labels",
                json!({"Ex.com/a": "x"}),
                "metadata.labels.Ex.com/a",
            ),
            ("/metadata/labels", json!({"a": "-x"}), "metadata.labels.a"),
            (
                "/metadata/labels",
                json!({"a": "x".repeat(64)}),
                "metadata.labels.a",
            ),
            (
                "/metadata/labels",
                json!({"kubernetes.io/metadata.name": "b"}),
                "metadata.labels.kubernetes.io/metadata.name",
            ),
            ("/metadata/labels", json!(["a"]), "metadata.labels"),
        ];
        for (path, value, field) in cases {
            let mut o = base.clone();
            let (parent, leaf) = path.rsplit_once('/').unwrap();
            o.pointer_mut(if parent.is_empty() { "" } else { parent })
                .unwrap()[leaf] = value.clone();
            let e = parse(&o).expect_err(&format!("{path} = {value} must be refused"));
            assert_eq!(e.field, field, "{path} = {value}: {e}");
        }
        assert_eq!(parse(&json!([])).unwrap_err().field, "");
    }
}
