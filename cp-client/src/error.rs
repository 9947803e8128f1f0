//! The client's errors. None of them carries the bearer token.

use serde_json::Value;

/// What went wrong with a call to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot work (no server, a malformed URL, an unreadable token file).
    #[error("invalid client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// No server answered: every one failed to connect, timed out or answered 503.
    #[error("no control-plane server answered (tried {}): {last}", tried.join(", "))]
    Unreachable {
        /// The servers tried, in order.
        tried: Vec<String>,
        /// The last failure.
        last: String,
    },
    /// The server answered with an error status and its JSON `{"error", "field"}`.
    #[error("{}", api_message(*status, message, field.as_deref()))]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's `error` (or the body's text when it is not the usual JSON).
        message: String,
        /// The server's `field`: the offending part of the request, when it names one.
        field: Option<String>,
        /// The whole answer body (`Null` when it was not JSON).
        body: Value,
    },
    /// The watched member's change feed no longer reaches back to `from` (410 Gone): list
    /// again, then watch from the current revision.
    #[error(
        "changes after revision {from} are no longer kept by the server; list again and watch from the current revision"
    )]
    Compacted {
        /// The revision the watch asked to start after.
        from: u64,
    },
    /// A successful answer did not have the documented shape.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was being decoded, e.g. `the answer to GET /v1/nodes`.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

fn api_message(status: u16, message: &str, field: Option<&str>) -> String {
    let hint = match status {
        401 => " (pass a token with --token-file or PALISADE_TOKEN_FILE)",
        403 => " (this token's role does not allow it)",
        _ => "",
    };
    // Most server messages already name their field ("`labels[1]`: ..."); add it otherwise.
    match field {
        Some(f) if !f.is_empty() && !message.contains(&format!("`{f}`")) => {
            format!("server refused ({status}): `{f}`: {message}{hint}")
        }
        _ => format!("server refused ({status}): {message}{hint}"),
    }
}

impl ClientError {
    /// Builds an [`ClientError::Api`] from an error answer's status and body.
    pub fn from_answer(status: u16, body: Value) -> Self {
        let message = match body.get("error").and_then(Value::as_str) {
            Some(m) => m.to_owned(),
            None => match &body {
                Value::Null => format!("HTTP {status} without a body"),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        };
        let field = body.get("field").and_then(Value::as_str).map(str::to_owned);
        ClientError::Api {
            status,
            message,
            field,
            body,
        }
    }

    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (no server reachable, no leader, a timeout);
    /// `false` for refusals that will not change by themselves (bad request, conflict, auth).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => matches!(status, 502..=504),
            ClientError::Config { .. }
            | ClientError::Compacted { .. }
            | ClientError::Decode { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn decodes_the_servers_error_body() {
        let e = ClientError::from_answer(
            400,
            json!({"error": "`labels[1]`: invalid type", "field": "labels[1]"}),
        );
        match &e {
            ClientError::Api {
                status,
                message,
                field,
                ..
            } => {
                assert_eq!(*status, 400);
                assert_eq!(message, "`labels[1]`: invalid type");
                assert_eq!(field.as_deref(), Some("labels[1]"));
            }
            other => panic!("{other:?}"),
        }
        // The field is already in the message: not repeated.
        assert_eq!(
            e.to_string(),
            "server refused (400): `labels[1]`: invalid type"
        );
        let e = ClientError::from_answer(
            422,
            json!({"error": "out of range", "field": "spec.ingress[0]"}),
        );
        assert_eq!(
            e.to_string(),
            "server refused (422): `spec.ingress[0]`: out of range"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn non_json_bodies_and_auth_hints() {
        let e = ClientError::from_answer(404, Value::Null);
        assert_eq!(
            e.to_string(),
            "server refused (404): HTTP 404 without a body"
        );
        let e = ClientError::from_answer(401, json!({"error": "missing bearer token"}));
        assert!(e.to_string().contains("--token-file"), "{e}");
        assert_eq!(e.status(), Some(401));
        assert!(ClientError::from_answer(503, json!({"error": "no leader"})).is_retryable());
    }

    #[test]
    fn unreachable_names_every_server_on_one_line() {
        let e = ClientError::Unreachable {
            tried: vec!["http://a:1".into(), "http://b:2".into()],
            last: "connection refused".into(),
        };
        let s = e.to_string();
        assert_eq!(
            s,
            "no control-plane server answered (tried http://a:1, http://b:2): connection refused"
        );
        assert!(!s.contains('\n'));
    }
}
