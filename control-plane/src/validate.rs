//! The seam where policy objects are validated before they are proposed: an invalid policy never
//! enters the Raft log, and the caller gets the validator's message.
//!
//! The real validator is the policy engine (`palisade-policy`), wired in once it lands. Until
//! then [`PlaceholderShapeValidator`] checks only the object's envelope.

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

/// PLACEHOLDER until `palisade-policy` is wired in: checks only that the object is a JSON object
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
