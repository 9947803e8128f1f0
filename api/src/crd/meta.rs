//! Object metadata and label selectors (`metav1.ObjectMeta`, `metav1.LabelSelector`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The parts of `metadata` a policy object may carry. Server-populated fields are accepted (so
/// objects exported with `kubectl get -o yaml` load) and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name (required).
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace; `default` when omitted for namespaced kinds (as `kubectl apply` would).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Object labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Object annotations (`policy.palisade.io/audit: "true"` puts a policy in audit mode).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Server-populated, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Server-populated, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Server-populated, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Server-populated, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Server-populated (server-side apply's field ownership), ignored. The control plane's
    /// Kubernetes-compatible API stores it with the object, and agents load stored objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_fields: Option<serde_json::Value>,
}

/// A Kubernetes label selector. An empty selector selects everything in its scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Exact key/value requirements, ANDed.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, ANDed with `matchLabels` and each other.
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based requirement of a [`LabelSelector`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// Label key.
    pub key: String,
    /// How the key relates to the values.
    pub operator: Operator,
    /// Values for `In`/`NotIn`; must be empty for `Exists`/`DoesNotExist`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// Operator of a [`LabelSelectorRequirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// A value that YAML writers give either as a number or as a string (`port: 80`, `port: "80"`,
/// `port: http`), like Kubernetes' `IntOrString`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A string (which may still hold digits).
    String(String),
}

impl std::fmt::Display for IntOrString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}
