//! Security labels: source-prefixed, sorted, filtered to what matters for policy.
//!
//! A pod's identity is derived from its label set: its own labels (minus well-known noise), its
//! namespace, service account and cluster, and its namespace's labels, all with source `k8s`.
//! Reserved identities carry one label with source `reserved` (`reserved:host`, ...).

use std::collections::BTreeMap;
use std::fmt;

/// Label key of the pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Label key of the pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// Label key of the pod's cluster.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// Prefix of the namespace's labels copied onto its pods.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Namespace label Kubernetes always sets.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where a label comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Kubernetes (pod, namespace, service account, cluster).
    K8s,
    /// Reserved identities (`host`, `world`, ...).
    Reserved,
    /// CIDR identities (`cidr:10.0.0.0/8`).
    Cidr,
    /// FQDN-derived (`fqdn:name`), for externals named by DNS.
    Fqdn,
}

impl Source {
    /// The prefix written before the key.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::K8s => "k8s",
            Source::Reserved => "reserved",
            Source::Cidr => "cidr",
            Source::Fqdn => "fqdn",
        }
    }
    /// Parses a source prefix (`any` is not a source, see [`split_source`]).
    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "k8s" => Some(Source::K8s),
            "reserved" => Some(Source::Reserved),
            "cidr" => Some(Source::Cidr),
            "fqdn" => Some(Source::Fqdn),
            _ => None,
        }
    }
}

/// Splits a selector key into an optional source and the key (`k8s:app` → (K8s, app); `any:app`
/// and `app` → (None, app)).
pub fn split_source(key: &str) -> (Option<Source>, &str) {
    if let Some((pfx, rest)) = key.split_once(':') {
        if pfx == "any" {
            return (None, rest);
        }
        if let Some(src) = Source::parse(pfx) {
            return (Some(src), rest);
        }
    }
    (None, key)
}

/// A sorted, source-prefixed label set: the key of an identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSet(BTreeMap<(Source, String), String>);

impl LabelSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds (or replaces) a label.
    pub fn insert(&mut self, source: Source, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert((source, key.into()), value.into());
    }
    /// The value of `key` from `source` (any source when `None`).
    pub fn get(&self, source: Option<Source>, key: &str) -> Option<&str> {
        match source {
            // Range from (s, "") walks this source's labels in order without allocating a key.
            Some(s) => self
                .0
                .range((s, String::new())..)
                .take_while(|((src, _), _)| *src == s)
                .find(|((_, k), _)| k == key)
                .map(|(_, v)| v.as_str()),
            None => self
                .0
                .iter()
                .find(|((_, k), _)| k == key)
                .map(|(_, v)| v.as_str()),
        }
    }
    /// Whether any label has this source.
    pub fn has_source(&self, source: Source) -> bool {
        self.0.keys().any(|(s, _)| *s == source)
    }
    /// Iterates `(source, key, value)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (Source, &str, &str)> {
        self.0
            .iter()
            .map(|((s, k), v)| (*s, k.as_str(), v.as_str()))
    }
    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl LabelSet {
    /// The labels as `source:key=value` strings (`source:key` when the value is empty), in
    /// order: the form the control plane stores identities under.
    pub fn to_strings(&self) -> Vec<String> {
        self.iter()
            .map(|(s, k, v)| {
                if v.is_empty() {
                    format!("{}:{k}", s.as_str())
                } else {
                    format!("{}:{k}={v}", s.as_str())
                }
            })
            .collect()
    }

    /// Parses labels written by [`LabelSet::to_strings`]; the error names the label at fault.
    pub fn from_strings<S: AsRef<str>>(labels: &[S]) -> Result<LabelSet, String> {
        let mut set = LabelSet::new();
        for (i, l) in labels.iter().enumerate() {
            let l = l.as_ref();
            let (source, rest) = l
                .split_once(':')
                .ok_or_else(|| format!("labels[{i}] `{l}`: no `source:` prefix"))?;
            let source = Source::parse(source)
                .ok_or_else(|| format!("labels[{i}] `{l}`: unknown source `{source}`"))?;
            // Kubernetes label keys and values never contain `=`; the first one splits.
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            if key.is_empty() {
                return Err(format!("labels[{i}] `{l}`: empty key"));
            }
            set.insert(source, key, value);
        }
        Ok(set)
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (s, k, v) in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if v.is_empty() {
                write!(f, "{}:{k}", s.as_str())?;
            } else {
                write!(f, "{}:{k}={v}", s.as_str())?;
            }
        }
        Ok(())
    }
}

/// Whether a pod label matters for identity. Drops well-known noise that would split identities
/// without ever being used by policy: `pod-template-hash`, `controller-revision-hash`,
/// `pod-template-generation`, `statefulset.kubernetes.io/pod-name`, `io.kubernetes.*` (the
/// namespace label is added separately) and `*.kubernetes.io/*` bookkeeping labels other than
/// `app.kubernetes.io/*`.
pub fn is_security_relevant(key: &str) -> bool {
    const NOISE: &[&str] = &[
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "batch.kubernetes.io/controller-uid",
        "controller-uid",
        "batch.kubernetes.io/job-name",
        "job-name",
    ];
    if NOISE.contains(&key) {
        return false;
    }
    if key.starts_with("io.kubernetes.") {
        return false;
    }
    true
}

/// Builds the security label set of a pod.
pub fn pod_labels(
    pod_labels: &BTreeMap<String, String>,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    service_account: &str,
    cluster: &str,
) -> LabelSet {
    let mut set = LabelSet::new();
    for (k, v) in pod_labels {
        if is_security_relevant(k) {
            set.insert(Source::K8s, k.clone(), v.clone());
        }
    }
    set.insert(Source::K8s, NAMESPACE_LABEL, namespace);
    set.insert(Source::K8s, SERVICE_ACCOUNT_LABEL, service_account);
    set.insert(Source::K8s, CLUSTER_LABEL, cluster);
    for (k, v) in namespace_labels {
        set.insert(
            Source::K8s,
            format!("{NAMESPACE_LABELS_PREFIX}{k}"),
            v.clone(),
        );
    }
    set.insert(
        Source::K8s,
        format!("{NAMESPACE_LABELS_PREFIX}{NAMESPACE_NAME_LABEL}"),
        namespace,
    );
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_filtered_and_namespace_labels_are_added() {
        let labels = BTreeMap::from([
            ("app".to_string(), "api".to_string()),
            ("pod-template-hash".to_string(), "abc".to_string()),
        ]);
        let ns = BTreeMap::from([("team".to_string(), "blue".to_string())]);
        let set = pod_labels(&labels, "x", &ns, "default", "default");
        assert_eq!(set.get(Some(Source::K8s), "app"), Some("api"));
        assert_eq!(set.get(None, "pod-template-hash"), None);
        assert_eq!(set.get(None, NAMESPACE_LABEL), Some("x"));
        assert_eq!(
            set.get(None, "io.cilium.k8s.namespace.labels.team"),
            Some("blue")
        );
        assert_eq!(
            set.get(
                None,
                "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"
            ),
            Some("x")
        );
        assert!(set.to_string().starts_with("k8s:app=api,"));
    }

    #[test]
    fn source_prefixes_split() {
        assert_eq!(split_source("k8s:app"), (Some(Source::K8s), "app"));
        assert_eq!(split_source("any:app"), (None, "app"));
        assert_eq!(
            split_source("reserved:host"),
            (Some(Source::Reserved), "host")
        );
        assert_eq!(
            split_source("app.kubernetes.io/name"),
            (None, "app.kubernetes.io/name")
        );
    }
}
