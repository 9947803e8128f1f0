//! The three policy resources the Kubernetes-compatible API serves, and the mapping between a
//! stored [`PolicyRecord`] and the Kubernetes object a client sees: `metadata.resourceVersion` is
//! the record's policy revision (never stored in the object); `uid`, `creationTimestamp` and
//! `generation` are set when the object is written and stored with it, through Raft, so every
//! member answers the same.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::app::{PolicyKey, PolicyRecord};

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// API group (`""` would be core; none of ours is).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name (the URL segment).
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Short names kubectl accepts.
    pub short_names: &'static [&'static str],
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether the resource has a `status` subresource (the CRDs in `deploy/crds/` declare
    /// one; NetworkPolicy has none since Kubernetes 1.28 dropped its alpha status).
    pub status: bool,
}

/// Every served resource: the three policy kinds and the core group's `Namespace` and `Pod`,
/// stored beside them: a namespace's labels are part of every pod's identity in it (what
/// `namespaceSelector` matches), and a Pod record is where an agent on a Kubernetes node finds
/// the labels, service account and named ports of a pod the kubelet names without them.
pub const RESOURCES: [Resource; 5] = [
    Resource {
        group: "cilium.io",
        version: "v2",
        kind: "CiliumNetworkPolicy",
        plural: "ciliumnetworkpolicies",
        singular: "ciliumnetworkpolicy",
        short_names: &["cnp", "ciliumnp"],
        namespaced: true,
        status: true,
    },
    Resource {
        group: "cilium.io",
        version: "v2",
        kind: "CiliumClusterwideNetworkPolicy",
        plural: "ciliumclusterwidenetworkpolicies",
        singular: "ciliumclusterwidenetworkpolicy",
        short_names: &["ccnp"],
        namespaced: false,
        status: true,
    },
    Resource {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        singular: "networkpolicy",
        short_names: &["netpol"],
        namespaced: true,
        status: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        short_names: &["ns"],
        namespaced: false,
        status: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        namespaced: true,
        // As on Kubernetes, a pod's addresses (`status.podIPs`) are written through `…/status`.
        status: true,
    },
];

/// The URL prefix of a group version: `/api/v1` for the core group, else `/apis/GROUP/VERSION`.
pub fn group_version_prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// The namespace part of the storage key of cluster-scoped objects.
pub const CLUSTER_SCOPE: &str = "-";

/// The served API groups' versions (`/apis`), in discovery order; the core group (`/api`) is
/// not one of them.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    all_group_versions()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .collect()
}

/// Every served group version, the core group's (`""`) included.
pub fn all_group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in &RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

impl Resource {
    /// The resource at `group/version/plural`.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The resource of a stored policy kind.
    pub fn of_kind(kind: &str) -> Option<&'static Resource> {
        RESOURCES.iter().find(|r| r.kind == kind)
    }

    /// `group/version` (`version` alone for the core group).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The URL prefix of the group version: `/api/v1` for the core group, else
    /// `/apis/GROUP/VERSION`.
    pub fn prefix(&self) -> String {
        group_version_prefix(self.group, self.version)
    }

    /// `plural.group`, as Kubernetes names a resource in messages.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// The group, or `core` for the empty one (messages only).
    pub fn group_or_core(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }

    /// The storage key of the object `name` in `namespace` (ignored when cluster-scoped).
    pub fn key(&self, namespace: Option<&str>, name: &str) -> PolicyKey {
        PolicyKey {
            kind: self.kind.to_owned(),
            namespace: if self.namespaced {
                namespace.unwrap_or("default").to_owned()
            } else {
                CLUSTER_SCOPE.to_owned()
            },
            name: name.to_owned(),
        }
    }

    /// The object a client sees for `record`.
    pub fn render(&self, record: &PolicyRecord) -> Value {
        let mut o = record.object.clone();
        if !o.is_object() {
            o = json!({});
        }
        o["apiVersion"] = json!(self.api_version());
        o["kind"] = json!(self.kind);
        if let Some(meta) = metadata_mut(&mut o) {
            meta.insert("name".into(), json!(record.key.name));
            if self.namespaced {
                meta.insert("namespace".into(), json!(record.key.namespace));
            }
            meta.insert("resourceVersion".into(), json!(record.revision.to_string()));
            // Objects written through the REST API carry none of these: derive stable ones.
            meta.entry("uid")
                .or_insert_with(|| json!(derived_uid(record)));
            meta.entry("generation").or_insert_with(|| json!(1));
            if self.kind == "Namespace" {
                // What every Kubernetes namespace carries (the engine implies it as well).
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if labels.is_object() {
                    labels[palisade_policy::namespace::NAME_LABEL] = json!(record.key.name);
                }
            }
        }
        if self.kind == "Namespace" {
            o["status"] = json!({"phase": "Active"});
        }
        o
    }

    /// The stand-in for a deleted object in a watch event: its name and the revision of the
    /// deletion (the feed keeps no copy of the last state).
    pub fn tombstone(&self, key: &PolicyKey, revision: u64) -> Value {
        let mut meta = json!({"name": key.name, "resourceVersion": revision.to_string()});
        if self.namespaced {
            meta["namespace"] = json!(key.namespace);
        }
        json!({"apiVersion": self.api_version(), "kind": self.kind, "metadata": meta})
    }
}

/// `metadata` of the object `o` as a map (created when absent or not a map); `None` when `o`
/// is not an object.
pub fn metadata_mut(o: &mut Value) -> Option<&mut Map<String, Value>> {
    let m = o
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut()
}

/// The object as the policy engine reads it: metadata reduced to what the engine knows (name,
/// namespace, labels, annotations), no status.
///
/// A Pod keeps its `status` and `uid`: agents read its addresses and uid, so they are validated
/// with the rest (a record agents could not read must never be stored).
pub fn engine_view(o: &Value) -> Value {
    let pod = o["kind"] == palisade_policy::pod::KIND;
    let mut v = o.clone();
    if let Some(m) = v.as_object_mut() {
        if !pod {
            m.remove("status");
        }
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            meta.retain(|k, _| {
                matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations")
                    || (pod && k == "uid")
            });
        }
    }
    v
}

/// A UUID-shaped id for objects stored without one, stable across members.
fn derived_uid(record: &PolicyRecord) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in record
        .key
        .storage_key()
        .bytes()
        .chain(record.created_revision.to_le_bytes())
    {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    uuid_text(h)
}

/// A new random UUID (v4 layout) for a created object.
pub fn new_uid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut halves = [0u64; 2];
    for half in &mut halves {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(now_nanos());
        *half = h.finish();
    }
    let mut v = (u128::from(halves[0]) << 64) | u128::from(halves[1]);
    v = (v & !(0xf000u128 << 64)) | (0x4000u128 << 64);
    v = (v & !(0xc000u128 << 48)) | (0x8000u128 << 48);
    uuid_text(v)
}

fn uuid_text(v: u128) -> String {
    let hex = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Now as RFC 3339 UTC with seconds, the format of `metav1.Time`.
pub fn now_rfc3339() -> String {
    let secs = i64::try_from(now_nanos() / 1_000_000_000).unwrap_or_default();
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_objects_load_with_the_engine_as_agents_load_them() {
        // What a server-side apply stores: agents parse it with the engine's loader.
        let object = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "default", "uid": new_uid(),
                "creationTimestamp": now_rfc3339(), "generation": 2,
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"endpointSelector": {"matchLabels": {"app": "p"}}}});
        let r = PolicyRecord {
            key: RESOURCES[0].key(Some("default"), "p"),
            object,
            revision: 4,
            created_revision: 1,
        };
        let text = RESOURCES[0].render(&r).to_string();
        let loaded = palisade_policy::load::load_file("p", &text);
        assert_eq!(loaded.map(|p| p.len()).map_err(|e| e.to_string()), Ok(1));
    }

    #[test]
    fn uids_are_uuid_shaped_and_timestamps_rfc3339() {
        let u = new_uid();
        assert_eq!(u.len(), 36, "{u}");
        assert_eq!(&u[14..15], "4", "{u}");
        assert_ne!(new_uid(), u);
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }

    #[test]
    fn render_sets_the_revision_and_the_engine_view_drops_server_fields() {
        let r = PolicyRecord {
            key: RESOURCES[0].key(Some("default"), "p"),
            object: json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "p", "managedFields": [], "uid": "u"}, "spec": {}}),
            revision: 7,
            created_revision: 3,
        };
        let o = RESOURCES[0].render(&r);
        assert_eq!(o["metadata"]["resourceVersion"], "7");
        assert_eq!(o["metadata"]["namespace"], "default");
        assert_eq!(o["metadata"]["uid"], "u");
        let v = engine_view(&o);
        assert_eq!(v["metadata"], json!({"name": "p", "namespace": "default"}));
    }
}
