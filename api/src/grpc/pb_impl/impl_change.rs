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

impl TryFrom<v1::Change> for Change {
    type Error = String;

    /// A change as a watcher receives it: `value_json` empty is a deletion, anything else must
    /// be a JSON value (the error names the field and the change).
    fn try_from(c: v1::Change) -> Result<Self, Self::Error> {
        let value = if c.value_json.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&c.value_json).map_err(|e| {
                format!(
                    "change {} ({} `{}`): `value_json` is not JSON: {e}",
                    c.revision, c.kind, c.key
                )
            })?)
        };
        Ok(Change {
            revision: c.revision,
            policy_revision: c.policy_revision,
            at_ms: c.at_ms,
            kind: c.kind,
            key: c.key,
            value,
        })
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
        assert_eq!(v1::Change::from(c.clone()).value_json, r#"{"id":300}"#);
        assert_eq!(Change::try_from(v1::Change::from(c.clone())), Ok(c));
    }

    #[test]
    fn a_received_change_round_trips_and_bad_json_names_the_field() {
        let deleted = v1::Change {
            revision: 9,
            kind: "endpoint".into(),
            key: "10.0.0.1".into(),
            ..Default::default()
        };
        assert_eq!(Change::try_from(deleted).map(|c| c.value), Ok(None));
        let bad = v1::Change {
            revision: 10,
            kind: "policy".into(),
            key: "K/ns/n".into(),
            value_json: "{not json".into(),
            ..Default::default()
        };
        let e = Change::try_from(bad).expect_err("not JSON");
        assert!(e.contains("`value_json`") && e.contains("change 10"), "{e}");
    }
}
