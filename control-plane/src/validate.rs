//! The seam where policy objects are validated before they are proposed: an invalid policy never
//! enters the Raft log, and the caller gets the validator's message.
//!
//! [`EngineValidator`] is the real one: the envelope must match the storage key, then the policy
//! engine (`palisade-policy`) must accept the object exactly as `palisade policy test` would, and
//! its error (field path and reason) is what the caller sees. [`PlaceholderShapeValidator`] checks
//! the envelope only; it is kept for tests of the store that do not want the engine.

use palisade_policy::{namespace, pod};
use serde_json::Value;

use crate::app::PolicyKey;

/// Why a policy object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct PolicyRejected {
    /// Path of the offending field, e.g. `metadata.name`.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl PolicyRejected {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        PolicyRejected {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Validates a policy object stored under `key` before it is committed.
pub trait PolicyValidator: Send + Sync + 'static {
    /// `Ok` when the object may be stored under `key`.
    fn validate(&self, key: &PolicyKey, object: &Value) -> Result<(), PolicyRejected>;
}

/// The policy engine as validator: the envelope check, then the engine's parser and semantic
/// checks (unknown fields, port ranges, regular expressions, CIDRs, incompatible fields, …).
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineValidator;

impl PolicyValidator for EngineValidator {
    fn validate(&self, key: &PolicyKey, object: &Value) -> Result<(), PolicyRejected> {
        if key.kind == namespace::KIND {
            return validate_namespace(key, object);
        }
        if key.kind == pod::KIND {
            return validate_pod(key, object);
        }
        PlaceholderShapeValidator.validate(key, object)?;
        // JSON is YAML: the engine's loader reads the object as one document.
        let text =
            serde_json::to_string(object).map_err(|e| PolicyRejected::new("", e.to_string()))?;
        match palisade_policy::load::load_file(&key.storage_key(), &text) {
            Ok(policies) if policies.len() == 1 => Ok(()),
            Ok(policies) => Err(PolicyRejected::new(
                "",
                format!("must hold exactly one policy, not {}", policies.len()),
            )),
            Err(e) => Err(PolicyRejected::new(
                if e.path == "." { "" } else { &e.path },
                e.reason,
            )),
        }
    }
}

/// A `v1/Namespace` (stored beside the policies: its labels are part of its pods' identities):
/// cluster-scoped, named as its key, valid name and labels.
fn validate_namespace(key: &PolicyKey, object: &Value) -> Result<(), PolicyRejected> {
    if key.namespace != "-" {
        return Err(PolicyRejected::new(
            "metadata.namespace",
            "a Namespace is cluster-scoped: store it under namespace `-`",
        ));
    }
    let ns = namespace::parse(object).map_err(|e| PolicyRejected::new(&e.field, e.reason))?;
    if ns.name != key.name {
        return Err(PolicyRejected::new(
            "metadata.name",
            format!("is `{}` but the path says `{}`", ns.name, key.name),
        ));
    }
    Ok(())
}

/// A `v1/Pod` record (stored beside the policies: agents take a pod's labels, service account
/// and named ports from it when the CNI runtime passes none, as a kubelet does): namespaced,
/// named as its key, and readable by [`pod::parse`], the agents' reader.
fn validate_pod(key: &PolicyKey, object: &Value) -> Result<(), PolicyRejected> {
    if key.namespace == "-" {
        return Err(PolicyRejected::new(
            "metadata.namespace",
            "a Pod is namespaced: store it under its namespace, not `-`",
        ));
    }
    PlaceholderShapeValidator.validate(key, object)?;
    pod::parse(object).map_err(|e| PolicyRejected::new(&e.field, e.reason))?;
    Ok(())
}

/// The envelope only: checks that the object is a JSON object
/// with a string `apiVersion`, a `kind` equal to the key's, and a `metadata.name` (and
/// `metadata.namespace`, when present) equal to the key's. It does not look at `spec` at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlaceholderShapeValidator;

impl PolicyValidator for PlaceholderShapeValidator {
    fn validate(&self, key: &PolicyKey, object: &Value) -> Result<(), PolicyRejected> {
        let Some(obj) = object.as_object() else {
            return Err(PolicyRejected::new("", "must be a JSON object"));
        };
        match obj.get("apiVersion") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(PolicyRejected::new(
                    "apiVersion",
                    "must be a non-empty string",
                ));
            }
        }
        match obj.get("kind") {
            Some(Value::String(k)) if *k == key.kind => {}
            Some(Value::String(k)) => {
                return Err(PolicyRejected::new(
                    "kind",
                    format!("is `{k}` but the path says `{}`", key.kind),
                ));
            }
            _ => return Err(PolicyRejected::new("kind", "must be a string")),
        }
        let Some(meta) = obj.get("metadata").and_then(Value::as_object) else {
            return Err(PolicyRejected::new("metadata", "must be an object"));
        };
        match meta.get("name") {
            Some(Value::String(n)) if *n == key.name => {}
            Some(Value::String(n)) => {
                return Err(PolicyRejected::new(
                    "metadata.name",
                    format!("is `{n}` but the path says `{}`", key.name),
                ));
            }
            _ => return Err(PolicyRejected::new("metadata.name", "must be a string")),
        }
        match meta.get("namespace") {
            None => {}
            Some(Value::String(ns)) if *ns == key.namespace => {}
            Some(Value::String(ns)) => {
                return Err(PolicyRejected::new(
                    "metadata.namespace",
                    format!("is `{ns}` but the path says `{}`", key.namespace),
                ));
            }
            Some(_) => {
                return Err(PolicyRejected::new(
                    "metadata.namespace",
                    "must be a string",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key() -> PolicyKey {
        PolicyKey {
            kind: "CiliumNetworkPolicy".into(),
            namespace: "default".into(),
            name: "allow".into(),
        }
    }

    #[test]
    fn namespaces_are_cluster_scoped_named_as_their_key_with_valid_labels() {
        let key = |ns: &str, name: &str| PolicyKey {
            kind: "Namespace".into(),
            namespace: ns.into(),
            name: name.into(),
        };
        let ok = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team-a", "labels": {"env": "prod"}}});
        assert_eq!(EngineValidator.validate(&key("-", "team-a"), &ok), Ok(()));
        let field =
            |k: PolicyKey, o: &Value| EngineValidator.validate(&k, o).expect_err("refused").field;
        assert_eq!(field(key("default", "team-a"), &ok), "metadata.namespace");
        assert_eq!(field(key("-", "team-b"), &ok), "metadata.name");
        let mut bad = ok.clone();
        bad["metadata"]["labels"]["env"] = json!("prod!");
        assert_eq!(field(key("-", "team-a"), &bad), "metadata.labels.env");
    }

    #[test]
    fn pods_are_namespaced_named_as_their_key_and_read_as_agents_read_them() {
        let key = |ns: &str, name: &str| PolicyKey {
            kind: "Pod".into(),
            namespace: ns.into(),
            name: name.into(),
        };
        let ok = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-0", "namespace": "shop", "labels": {"app": "api"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]}});
        assert_eq!(EngineValidator.validate(&key("shop", "api-0"), &ok), Ok(()));
        let field =
            |k: PolicyKey, o: &Value| EngineValidator.validate(&k, o).expect_err("refused").field;
        assert_eq!(field(key("-", "api-0"), &ok), "metadata.namespace");
        assert_eq!(field(key("other", "api-0"), &ok), "metadata.namespace");
        assert_eq!(field(key("shop", "api-1"), &ok), "metadata.name");
        let mut bad = ok.clone();
        bad["spec"]["containers"][0]["ports"][0]["name"] = json!("HTTP");
        assert_eq!(
            field(key("shop", "api-0"), &bad),
            "spec.containers[0].ports[0].name"
        );
    }

    #[test]
    fn the_engine_validates_the_spec_and_names_the_field() {
        let ok = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "allow", "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                     "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}});
        assert_eq!(EngineValidator.validate(&key(), &ok), Ok(()));
        let mut bad = ok.clone();
        bad["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!("70000");
        let err = EngineValidator
            .validate(&key(), &bad)
            .expect_err("port out of range");
        assert_eq!(
            err.field, "spec.ingress[0].toPorts[0].ports[0].port",
            "{err}"
        );
        let mut unknown = ok.clone();
        unknown["spec"]["ingres"] = json!([]);
        let err = EngineValidator
            .validate(&key(), &unknown)
            .expect_err("unknown field");
        assert!(err.to_string().contains("ingres"), "{err}");
        // The envelope is still checked first.
        let mut renamed = ok;
        renamed["metadata"]["name"] = json!("other");
        assert_eq!(
            EngineValidator
                .validate(&key(), &renamed)
                .expect_err("name")
                .field,
            "metadata.name"
        );
    }

    #[test]
    fn accepts_a_matching_envelope() {
        let obj = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "allow", "namespace": "default"}, "spec": {}});
        assert_eq!(PlaceholderShapeValidator.validate(&key(), &obj), Ok(()));
    }

    #[test]
    fn names_the_offending_field() {
        let cases = [
            (json!([]), ""),
            (json!({"kind": "CiliumNetworkPolicy"}), "apiVersion"),
            (json!({"apiVersion": "v1", "kind": "NetworkPolicy"}), "kind"),
            (
                json!({"apiVersion": "v1", "kind": "CiliumNetworkPolicy"}),
                "metadata",
            ),
            (
                json!({"apiVersion": "v1", "kind": "CiliumNetworkPolicy", "metadata": {"name": "x"}}),
                "metadata.name",
            ),
            (
                json!({"apiVersion": "v1", "kind": "CiliumNetworkPolicy",
                    "metadata": {"name": "allow", "namespace": "prod"}}),
                "metadata.namespace",
            ),
        ];
        for (obj, field) in cases {
            let err = PlaceholderShapeValidator.validate(&key(), &obj);
            assert_eq!(err.map_err(|e| e.field), Err(field.to_owned()), "{obj}");
        }
    }
}
