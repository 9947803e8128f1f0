//! Errors of the Kubernetes-compatible API as `Status` objects (`meta.k8s.io/v1`): the code,
//! the machine-readable reason kubectl and client-go switch on, and a message naming the object
//! (and, for `Invalid`, the offending field).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resources::Resource;
use crate::ops::OpError;

/// An error answer of the Kubernetes-compatible API.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeError {
    /// HTTP status.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Expired`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the error is about one object.
    pub details: Option<Value>,
}

impl KubeError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        KubeError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, res: &Resource, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
        self
    }

    /// 400 `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 `NotFound` for the object `name`.
    pub fn not_found(res: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .about(res, name)
    }

    /// 404 `NotFound` for a path this server does not serve.
    pub fn no_such_path(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409 `AlreadyExists`.
    pub fn already_exists(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .about(res, name)
    }

    /// 409 `Conflict`: the object changed since the writer read it.
    pub fn conflict(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                res.qualified()
            ),
        )
        .about(res, name)
    }

    /// 409 `Conflict` of a server-side apply with fields another manager owns.
    pub fn apply_conflict(res: &Resource, name: &str, conflicts: &[(String, String)]) -> Self {
        let list: Vec<String> = conflicts
            .iter()
            .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
            .collect();
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflict{}: {}",
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" },
                list.join("; ")
            ),
        )
        .about(res, name);
        if let Some(d) = e.details.as_mut() {
            d["causes"] = conflicts
                .iter()
                .map(|(manager, field)| {
                    json!({"reason": "FieldManagerConflict",
                           "message": format!("conflict with \"{manager}\""), "field": field})
                })
                .collect();
        }
        e
    }

    /// 422 `Invalid`: `field` of the object `name` is refused for `reason`.
    pub fn invalid(res: &Resource, name: &str, field: &str, reason: &str) -> Self {
        let field = if field.is_empty() { "<object>" } else { field };
        let mut e = Self::new(
            422,
            "Invalid",
            format!(
                "{}.{} \"{name}\" is invalid: {field}: Invalid value: {reason}",
                res.kind,
                res.group_or_core()
            ),
        );
        e.details = Some(json!({
            "name": name, "group": res.group, "kind": res.kind,
            "causes": [{"reason": "FieldValueInvalid",
                        "message": format!("Invalid value: {reason}"), "field": field}],
        }));
        e
    }

    /// 410 `Expired`: the resource version is older than what this member still knows.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 415 `UnsupportedMediaType`.
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 401 `Unauthorized` or 403 `Forbidden` (the authentication's refusal).
    pub fn denied(code: u16, message: impl Into<String>) -> Self {
        let reason = if code == 401 {
            "Unauthorized"
        } else {
            "Forbidden"
        };
        Self::new(code, reason, message)
    }

    /// 405 `MethodNotAllowed`.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// The error of an operation on the object `name` of `res`.
    pub fn from_op(res: &Resource, name: &str, e: OpError) -> Self {
        match e {
            OpError::Invalid { field, reason } => Self::invalid(res, name, &field, &reason),
            OpError::Policy(p) => Self::invalid(res, name, &p.field, &p.reason),
            OpError::NotFound { .. } => Self::not_found(res, name),
            OpError::PreconditionFailed { current: None, .. } => Self::not_found(res, name),
            OpError::PreconditionFailed { .. } => Self::conflict(res, name),
            e @ OpError::Gone { .. } => Self::expired(e.to_string()),
            OpError::Cluster(c) => {
                let code = crate::http_api::cluster_status_code(&c);
                let reason = match code {
                    503 => "ServiceUnavailable",
                    504 => "Timeout",
                    409 => "Conflict",
                    400 | 422 => "BadRequest",
                    _ => "InternalError",
                };
                Self::new(code, reason, c.to_string())
            }
            e @ OpError::Unexpected(_) => Self::new(500, "InternalError", e.to_string()),
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for KubeError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        super::json_response(code, &self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_api::resources::RESOURCES;

    #[test]
    fn invalid_names_the_field_and_kind() {
        let s = KubeError::invalid(&RESOURCES[0], "p", "spec.ingress[0]", "bad port").status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(
            s["message"],
            "CiliumNetworkPolicy.cilium.io \"p\" is invalid: spec.ingress[0]: Invalid value: bad port"
        );
        assert_eq!(s["details"]["causes"][0]["field"], "spec.ingress[0]");
    }
}
