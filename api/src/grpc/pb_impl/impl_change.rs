use crate::controlplane::Change;
use crate::grpc::v1;

impl From<Change> for v1::Change {
    fn from(c: Change) -> Self {
        v1::Change {
            revision: c.revision,
            policy_revision: c.policy_revision,
            at_ms: c.at_ms,
            kind: c.kind,
            key: c.key,
            value_json: c.value.map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_deleted_value_is_empty_and_the_encoding_is_exact() {
        let c = Change {
            revision: 3,
            policy_revision: 2,
            at_ms: 1,
            kind: "policy".into(),
            key: "K/ns/n".into(),
            value: None,
        };
        let m: v1::Change = c.into();
        assert_eq!(m.value_json, "");
        // 3 varints (tag + 1 byte each) and 2 strings (tag + len + bytes).
        assert_eq!(m.encoded_len(), 2 + 2 + 2 + (2 + 6) + (2 + 6));
        assert_eq!(
            v1::Change::decode(m.encode_to_vec().as_slice()).ok(),
            Some(m)
        );
        let c = Change {
            revision: 4,
            policy_revision: 2,
            at_ms: 1,
            kind: "identity".into(),
            key: "300".into(),
            value: Some(serde_json::json!({"id": 300})),
        };
        assert_eq!(v1::Change::from(c).value_json, r#"{"id":300}"#);
    }
}
