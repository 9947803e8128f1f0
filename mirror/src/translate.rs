//! Pure translation between a Kubernetes object and the control plane's stored policy object.

use palisade_api::controlplane::PolicyKey;
use serde_json::{Map, Value, json};

/// Annotation on every copy: the source cluster's name.
pub const MIRRORED_FROM: &str = "policy.palisade.io/mirrored-from";

/// kubectl's copy of the applied configuration: large and meaningless to the control plane.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One mirrored kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API group.
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

/// The mirrored kinds.
pub const KINDS: [Kind; 3] = [
    Kind {
        group: "cilium.io",
        version: "v2",
        kind: "CiliumNetworkPolicy",
        plural: "ciliumnetworkpolicies",
        namespaced: true,
    },
    Kind {
        group: "cilium.io",
        version: "v2",
        kind: "CiliumClusterwideNetworkPolicy",
        plural: "ciliumclusterwidenetworkpolicies",
        namespaced: false,
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        namespaced: true,
    },
];

/// Why an object cannot be mirrored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct TranslateError {
    /// The offending field.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl Kind {
    /// The storage key of the object named `name` in `namespace`.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> PolicyKey {
        PolicyKey {
            kind: self.kind.to_owned(),
            namespace: if self.namespaced {
                namespace.unwrap_or("default").to_owned()
            } else {
                "-".to_owned()
            },
            name: name.to_owned(),
        }
    }

    /// The key and the object to store for the cluster's object `o`: its identity, labels,
    /// annotations (plus [`MIRRORED_FROM`]) and rules; no server-populated metadata or status.
    pub fn to_policy(&self, o: &Value, source: &str) -> Result<(PolicyKey, Value), TranslateError> {
        let meta = &o["metadata"];
        let name = meta["name"].as_str().ok_or_else(|| TranslateError {
            field: "metadata.name".into(),
            reason: "missing".into(),
        })?;
        let namespace = meta["namespace"].as_str();
        let key = self.key(namespace, name);
        let mut annotations: Map<String, Value> =
            meta["annotations"].as_object().cloned().unwrap_or_default();
        annotations.remove(LAST_APPLIED);
        annotations.insert(MIRRORED_FROM.into(), json!(source));
        let mut m = json!({"name": name, "annotations": annotations});
        if self.namespaced {
            m["namespace"] = json!(key.namespace);
        }
        if let Some(l) = meta["labels"].as_object().filter(|l| !l.is_empty()) {
            m["labels"] = Value::Object(l.clone());
        }
        let mut out = json!({"apiVersion": format!("{}/{}", self.group, self.version),
                             "kind": self.kind, "metadata": m});
        for field in ["spec", "specs"] {
            if let Some(v) = o.get(field).filter(|v| !v.is_null()) {
                out[field] = v.clone();
            }
        }
        Ok((key, out))
    }
}

/// Whether the stored object is a copy this mirror (`source`) made.
pub fn mirrored_from(object: &Value, source: &str) -> bool {
    object["metadata"]["annotations"][MIRRORED_FROM].as_str() == Some(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_identity_labels_annotations_and_rules_only() {
        let o = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "prod", "uid": "u", "resourceVersion": "9",
                         "labels": {"a": "1"}, "managedFields": [],
                         "annotations": {LAST_APPLIED: "{}", "x": "y"}},
            "spec": {"endpointSelector": {}}, "status": {"ok": true}});
        let (key, p) = KINDS[0].to_policy(&o, "east").expect("translate");
        assert_eq!(key.storage_key(), "CiliumNetworkPolicy/prod/p");
        assert_eq!(
            p,
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "p", "namespace": "prod", "labels": {"a": "1"},
                             "annotations": {"x": "y", MIRRORED_FROM: "east"}},
                "spec": {"endpointSelector": {}}})
        );
        assert!(mirrored_from(&p, "east"));
        assert!(!mirrored_from(&p, "west"));
        let (key, p) = KINDS[1]
            .to_policy(&json!({"metadata": {"name": "c"}, "spec": {}}), "east")
            .expect("cluster-scoped");
        assert_eq!(key.namespace, "-");
        assert!(p["metadata"].get("namespace").is_none());
        let e = KINDS[0].to_policy(&json!({"metadata": {}}), "east");
        assert_eq!(e.map_err(|e| e.field), Err("metadata.name".to_owned()));
    }
}
