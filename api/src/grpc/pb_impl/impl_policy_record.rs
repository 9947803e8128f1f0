use crate::controlplane::{PolicyKey, PolicyRecord};
use crate::grpc::v1;

impl From<PolicyKey> for v1::PolicyKey {
    fn from(k: PolicyKey) -> Self {
        v1::PolicyKey {
            kind: k.kind,
            namespace: k.namespace,
            name: k.name,
        }
    }
}

/// Unchecked: the server validates keys (lengths, no `/`) before using them.
impl From<v1::PolicyKey> for PolicyKey {
    fn from(k: v1::PolicyKey) -> Self {
        PolicyKey {
            kind: k.kind,
            namespace: k.namespace,
            name: k.name,
        }
    }
}

impl From<PolicyRecord> for v1::Policy {
    fn from(p: PolicyRecord) -> Self {
        v1::Policy {
            key: Some(p.key.into()),
            object_json: p.object.to_string(),
            revision: p.revision,
        }
    }
}
