//! Pure translation between a Kubernetes object and the control plane's stored policy object,
//! and from the control plane's answer to the status written back on the Kubernetes object.

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
    /// Whether the kind has a `status` subresource the mirror writes its outcome to (the
    /// Cilium CRDs do; NetworkPolicy has had none since Kubernetes 1.28).
    pub status: bool,
}

/// The mirrored kinds: the three policy kinds, `v1/Namespace` (its labels are part of its
/// pods' identities, what a `namespaceSelector` matches) and `v1/Pod` (a kubelet's CNI ADD names
/// a pod without its labels: agents take its labels, service account and named ports from the
/// copy). ServiceAccounts are not mirrored: a pod's identity carries the name of its service
/// account (`spec.serviceAccountName`), never the ServiceAccount object's labels, as in Cilium.
pub const KINDS: [Kind; 5] = [
    Kind {
        group: "cilium.io",
        version: "v2",
        kind: "CiliumNetworkPolicy",
        plural: "ciliumnetworkpolicies",
        namespaced: true,
        status: true,
    },
    Kind {
        group: "cilium.io",
        version: "v2",
        kind: "CiliumClusterwideNetworkPolicy",
        plural: "ciliumclusterwidenetworkpolicies",
        namespaced: false,
        status: true,
    },
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        namespaced: true,
        status: false,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        status: false,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        status: false,
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
    /// `group/version`, or `version` alone for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

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
    ///
    /// A Pod is copied as [`palisade_policy::pod::Pod::projection`] (labels, service account, node,
    /// named ports, addresses, uid) and [`MIRRORED_FROM`]: its status churn (conditions, container
    /// states, restarts) leaves the copy as it is, so it makes no write.
    pub fn to_policy(&self, o: &Value, source: &str) -> Result<(PolicyKey, Value), TranslateError> {
        let meta = &o["metadata"];
        let name = meta["name"].as_str().ok_or_else(|| TranslateError {
            field: "metadata.name".into(),
            reason: "missing".into(),
        })?;
        let namespace = meta["namespace"].as_str();
        let key = self.key(namespace, name);
        if self.group.is_empty() && self.kind == palisade_policy::pod::KIND {
            let pod = palisade_policy::pod::parse(o).map_err(|e| TranslateError {
                field: e.field,
                reason: e.reason,
            })?;
            let mut copy = pod.projection(&key.namespace);
            copy["metadata"]["annotations"] = json!({MIRRORED_FROM: source});
            return Ok((key, copy));
        }
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
        let mut out = json!({"apiVersion": self.api_version(), "kind": self.kind, "metadata": m});
        // A Namespace's spec (finalizers) and status (phase) mean nothing to policy.
        let fields: &[&str] = if self.group.is_empty() {
            &[]
        } else {
            &["spec", "specs"]
        };
        for field in fields {
            if let Some(v) = o.get(*field).filter(|v| !v.is_null()) {
                out[*field] = v.clone();
            }
        }
        Ok((key, out))
    }
}

impl Kind {
    /// Whether the translated object `copy` needs to be stored: a Namespace only when it has
    /// labels besides `kubernetes.io/metadata.name` (a namespace without labels adds nothing
    /// to its pods' identities; a cluster's `default`, `kube-system`, … need no copy), every
    /// policy always.
    pub fn needs_copy(&self, copy: &Value) -> bool {
        if !self.group.is_empty() || self.kind != "Namespace" {
            return true;
        }
        copy["metadata"]["labels"]
            .as_object()
            .is_some_and(|l| l.keys().any(|k| k != NAMESPACE_NAME_LABEL))
    }
}

/// The label Kubernetes sets on every namespace, equal to its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether the stored object is a copy this mirror (`source`) made.
pub fn mirrored_from(object: &Value, source: &str) -> bool {
    object["metadata"]["annotations"][MIRRORED_FROM].as_str() == Some(source)
}

/// The type of the condition the mirror writes on each source object.
pub const ACCEPTED: &str = "Accepted";

/// What the control plane made of one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored; `revision` is the policy revision the copy was last written at.
    Accepted {
        /// The control plane's revision of the copy.
        revision: u64,
    },
    /// Refused by the control plane's policy engine; `message` names the field.
    Rejected {
        /// The engine's error, e.g. ``"`spec.ingress[0]…port`: …"``.
        message: String,
    },
}

impl Outcome {
    /// A refusal with the server's `message`, prefixed by its `field` unless it names it.
    pub fn rejected(field: Option<&str>, message: &str) -> Self {
        let message = match field {
            Some(f) if !f.is_empty() && !message.contains(&format!("`{f}`")) => {
                format!("`{f}`: {message}")
            }
            _ => message.to_owned(),
        };
        Outcome::Rejected { message }
    }

    /// The condition's `status`, `reason` and `message`.
    fn condition(&self) -> (&'static str, &'static str, String) {
        match self {
            Outcome::Accepted { revision } => (
                "True",
                "Stored",
                format!("stored by the Palisade control plane at policy revision {revision}"),
            ),
            Outcome::Rejected { message } => (
                "False",
                "Invalid",
                format!("refused by the Palisade policy engine: {message}"),
            ),
        }
    }
}

/// The JSON merge patch of `.status` that records `outcome` on the source object `o`, or `None`
/// when `o`'s status already records it — a status write is itself a watch event, and writing
/// again for it would never end. Other conditions are kept; the `Accepted` condition's
/// `lastTransitionTime` becomes `now` only when its `status` flips (Kubernetes' convention).
/// `policyRevision` is the copy's revision while accepted, and absent otherwise.
pub fn status_patch(o: &Value, outcome: &Outcome, now: &str) -> Option<Value> {
    let generation = o["metadata"]["generation"].as_i64().unwrap_or(0);
    let (status, reason, message) = outcome.condition();
    let conditions: Vec<Value> = o["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let old = conditions.iter().find(|c| c["type"] == ACCEPTED);
    let revision = match outcome {
        Outcome::Accepted { revision } => json!(revision),
        Outcome::Rejected { .. } => Value::Null,
    };
    if let Some(c) = old
        && c["status"] == status
        && c["reason"] == reason
        && c["message"] == message.as_str()
        && c["observedGeneration"].as_i64() == Some(generation)
        && o["status"].get("policyRevision").unwrap_or(&Value::Null) == &revision
    {
        return None;
    }
    let since = match old {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut next: Vec<Value> = conditions
        .iter()
        .filter(|c| c["type"] != ACCEPTED)
        .cloned()
        .collect();
    next.push(
        json!({"type": ACCEPTED, "status": status, "reason": reason, "message": message,
                     "observedGeneration": generation, "lastTransitionTime": since}),
    );
    Some(json!({"status": {"conditions": next, "policyRevision": revision}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_copied_with_their_labels_only_when_they_have_some() {
        let ns = KINDS[3];
        let o = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team-a", "uid": "u", "resourceVersion": "9",
                         "labels": {"env": "prod", "kubernetes.io/metadata.name": "team-a"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let (key, copy) = ns.to_policy(&o, "east").unwrap();
        assert_eq!(key.storage_key(), "Namespace/-/team-a");
        assert_eq!(copy["apiVersion"], "v1");
        assert_eq!(copy["metadata"]["labels"]["env"], "prod");
        assert!(
            copy.get("spec").is_none() && copy.get("status").is_none(),
            "{copy}"
        );
        assert!(copy["metadata"].get("uid").is_none(), "{copy}");
        assert!(ns.needs_copy(&copy));
        let bare = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}});
        assert!(!ns.needs_copy(&ns.to_policy(&bare, "east").unwrap().1));
        assert!(KINDS[0].needs_copy(&json!({})));
    }

    #[test]
    fn pods_are_copied_as_their_projection_and_status_churn_changes_nothing() {
        let pod = KINDS[4];
        let o = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-0", "namespace": "shop", "uid": "u-1", "resourceVersion": "9",
                "labels": {"app": "api"}, "annotations": {"kubectl.kubernetes.io/restartedAt": "x"}},
            "spec": {"serviceAccountName": "api-sa", "nodeName": "n1", "containers": [
                {"name": "main", "image": "api:1", "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "True"}]}});
        let (key, copy) = pod.to_policy(&o, "east").unwrap();
        assert_eq!(key.storage_key(), "Pod/shop/api-0");
        assert_eq!(
            copy["metadata"]["annotations"],
            json!({MIRRORED_FROM: "east"})
        );
        assert_eq!(copy["metadata"]["uid"], "u-1");
        assert_eq!(copy["spec"]["serviceAccountName"], "api-sa");
        assert_eq!(copy["spec"]["containers"][0]["ports"][0]["name"], "http");
        assert!(
            copy["spec"]["containers"][0].get("image").is_none(),
            "{copy}"
        );
        assert_eq!(copy["status"], json!({"podIPs": [{"ip": "10.0.0.5"}]}));
        assert!(pod.needs_copy(&copy), "a pod without labels is copied too");
        let mut churn = o.clone();
        churn["status"]["conditions"][0]["status"] = json!("False");
        churn["metadata"]["resourceVersion"] = json!("10");
        assert_eq!(pod.to_policy(&churn, "east").unwrap().1, copy);
        let mut relabelled = o.clone();
        relabelled["metadata"]["labels"]["app"] = json!("api-v2");
        assert_ne!(pod.to_policy(&relabelled, "east").unwrap().1, copy);
        let mut bad = o.clone();
        bad["spec"]["containers"][0]["ports"][0]["name"] = json!("HTTP");
        assert_eq!(
            pod.to_policy(&bad, "east").unwrap_err().field,
            "spec.containers[0].ports[0].name"
        );
    }

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

    /// Applies a merge patch of `status` the way the API server does (enough for these tests:
    /// `status` is replaced key by key, a null removes the key).
    fn merged(o: &Value, patch: &Value) -> Value {
        let mut o = o.clone();
        for (k, v) in patch["status"].as_object().into_iter().flatten() {
            if v.is_null() {
                if let Some(s) = o["status"].as_object_mut() {
                    s.remove(k);
                }
            } else {
                o["status"][k] = v.clone();
            }
        }
        o
    }

    #[test]
    fn status_is_written_once_per_outcome_and_flips_with_it() {
        let o = json!({"metadata": {"name": "p", "generation": 2},
            "status": {"conditions": [{"type": "Other", "status": "True"}]}});
        let ok = Outcome::Accepted { revision: 7 };
        let p = status_patch(&o, &ok, "T1").expect("first write");
        assert_eq!(
            p,
            json!({"status": {"policyRevision": 7, "conditions": [
                {"type": "Other", "status": "True"},
                {"type": "Accepted", "status": "True", "reason": "Stored",
                 "message": "stored by the Palisade control plane at policy revision 7",
                 "observedGeneration": 2, "lastTransitionTime": "T1"}]}})
        );
        // The watch event of that write changes nothing more: no second write.
        let o = merged(&o, &p);
        assert_eq!(status_patch(&o, &ok, "T2"), None);
        // A new revision rewrites the message but keeps the transition time.
        let p = status_patch(&o, &Outcome::Accepted { revision: 9 }, "T3").expect("revision");
        assert_eq!(p["status"]["conditions"][1]["lastTransitionTime"], "T1");
        assert_eq!(p["status"]["policyRevision"], 9);
        // A refusal flips the condition, names the field and drops the revision.
        let bad = Outcome::rejected(Some("spec.x"), "must be a port");
        assert_eq!(
            bad,
            Outcome::Rejected {
                message: "`spec.x`: must be a port".into()
            }
        );
        let p = status_patch(&o, &bad, "T4").expect("rejected");
        let c = &p["status"]["conditions"][1];
        assert_eq!(
            (&c["status"], &c["reason"]),
            (&json!("False"), &json!("Invalid"))
        );
        assert_eq!(
            c["message"],
            "refused by the Palisade policy engine: `spec.x`: must be a port"
        );
        assert_eq!(c["lastTransitionTime"], "T4");
        assert_eq!(p["status"]["policyRevision"], Value::Null);
        let o = merged(&o, &p);
        assert!(o["status"].get("policyRevision").is_none());
        assert_eq!(status_patch(&o, &bad, "T5"), None);
        // A spec change (new generation) is recorded even with the same outcome.
        let mut o2 = o.clone();
        o2["metadata"]["generation"] = json!(3);
        assert!(status_patch(&o2, &bad, "T6").is_some());
        // A message that already names its field is kept as it is.
        assert_eq!(
            Outcome::rejected(Some("spec.x"), "`spec.x`: bad"),
            Outcome::Rejected {
                message: "`spec.x`: bad".into()
            }
        );
    }
}
