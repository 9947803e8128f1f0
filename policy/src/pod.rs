//! Kubernetes `v1/Pod` records as identities need them: the pod's labels, its service account
//! (Cilium's `io.cilium.k8s.policy.serviceaccount` label), its named container ports (what a
//! policy's `port: http` resolves to), the node it runs on and its addresses.
//!
//! A kubelet hands the CNI plugin only `K8S_POD_NAMESPACE`/`K8S_POD_NAME`, never labels; so on a
//! Kubernetes node the agent takes them from the Pod record that `palisade mirror` copied into the
//! control plane (same store, revisions and watch as the policies and Namespaces). This module is
//! the one reader the control plane (refusing what agents could not read), the mirror (which
//! stores [`Pod::projection`], the trimmed record) and the agents use.
//!
//! Everything else a Pod carries (images, volumes, conditions, …) is ignored: a record written
//! in full through the Kubernetes-compatible API is read the same way as the mirror's projection.

use std::collections::BTreeMap;
use std::net::IpAddr;

use palisade_api::agent::ContainerPort;
use serde_json::{Map, Value, json};

use crate::namespace::{dns1123_label, envelope, metadata_labels};

/// The kind of the object.
pub const KIND: &str = "Pod";
/// Its `apiVersion` (the core group).
pub const API_VERSION: &str = "v1";

/// Label key prefixes the agent sets itself (the pod's namespace, Cilium's policy labels such as
/// the service account): a pod label under one of them is not taken into its identity, so no pod
/// can claim another namespace or service account through its labels.
pub const RESERVED_LABEL_PREFIXES: [&str; 2] =
    ["io.kubernetes.pod.namespace", "io.cilium.k8s.policy."];

/// What a Pod record says about a pod's identity and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when the object names it (a stored record's key always does).
    pub namespace: Option<String>,
    /// `metadata.uid`, when set (tells a pod from an earlier one of the same name).
    pub uid: Option<String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (Kubernetes defaults it to `default`).
    pub service_account: Option<String>,
    /// `spec.nodeName` (empty until the pod is scheduled).
    pub node: Option<String>,
    /// The named ports of `spec.containers[].ports`, in order (unnamed ones mean nothing to
    /// policy and are left out).
    pub ports: Vec<ContainerPort>,
    /// `status.podIPs[].ip` (or `status.podIP` alone, as older API servers report it).
    pub ips: Vec<IpAddr>,
}

/// Why a Pod object was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct PodError {
    /// The offending field, e.g. `spec.containers[0].ports[1].name`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> PodError {
    PodError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Why `s` is not a DNS-1123 subdomain (dot-separated DNS labels, at most 253 characters).
fn dns1123_subdomain(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some(format!("`{s}` must be 1 to 253 characters"));
    }
    s.split('.')
        .find_map(dns1123_label)
        .map(|r| format!("must be a DNS-1123 subdomain: {r}"))
}

/// An optional string field of `obj`, checked by `check` when present.
fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
    check: fn(&str) -> Option<String>,
) -> Result<Option<&'a str>, PodError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => match check(s) {
            Some(reason) => Err(err(field, reason)),
            None => Ok(Some(s)),
        },
        Some(_) => Err(err(field, "must be a string")),
    }
}

/// An optional list field of `obj`.
fn opt_list<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a [Value], PodError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(err(field, "must be a list")),
    }
}

/// An optional object field of `obj`.
fn opt_object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, PodError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(err(field, "must be an object")),
    }
}

/// Reads a `v1/Pod` object (JSON, as stored or as sent). Only the fields [`Pod`] holds are
/// read, and each is checked as Kubernetes would (names, labels, named ports, addresses); the
/// error names the field. Never panics, whatever the input.
pub fn parse(object: &Value) -> Result<Pod, PodError> {
    let (obj, meta, name) = envelope(object, KIND, API_VERSION).map_err(|(f, r)| err(f, r))?;
    if let Some(reason) = dns1123_subdomain(name) {
        return Err(err("metadata.name", reason));
    }
    let namespace = opt_str(meta, "namespace", "metadata.namespace", dns1123_label)?;
    let uid = opt_str(meta, "uid", "metadata.uid", |_| None)?;
    let labels = metadata_labels(meta).map_err(|(f, r)| err(f, r))?;
    let spec = opt_object(obj, "spec", "spec")?;
    let empty = Map::new();
    let spec = spec.unwrap_or(&empty);
    let service_account = opt_str(
        spec,
        "serviceAccountName",
        "spec.serviceAccountName",
        dns1123_subdomain,
    )?;
    let node = opt_str(spec, "nodeName", "spec.nodeName", dns1123_subdomain)?;
    let ports = ports(spec)?;
    let status = opt_object(obj, "status", "status")?.unwrap_or(&empty);
    let ips = ips(status)?;
    Ok(Pod {
        name: name.to_owned(),
        namespace: namespace.map(str::to_owned),
        uid: uid.map(str::to_owned),
        labels,
        service_account: service_account.map(str::to_owned),
        node: node.map(str::to_owned),
        ports,
        ips,
    })
}

/// The named ports of every container, names unique across the pod (a named port must
/// resolve to one number).
fn ports(spec: &Map<String, Value>) -> Result<Vec<ContainerPort>, PodError> {
    let mut out: Vec<ContainerPort> = Vec::new();
    for (i, c) in opt_list(spec, "containers", "spec.containers")?
        .iter()
        .enumerate()
    {
        let at = format!("spec.containers[{i}]");
        let Some(c) = c.as_object() else {
            return Err(err(at, "must be an object"));
        };
        for (j, p) in opt_list(c, "ports", &format!("{at}.ports"))?
            .iter()
            .enumerate()
        {
            let at = format!("{at}.ports[{j}]");
            let Some(p) = p.as_object() else {
                return Err(err(at, "must be an object"));
            };
            let number = match p.get("containerPort") {
                Some(Value::Number(n)) => n.as_u64().filter(|n| (1..=65535).contains(n)),
                _ => None,
            };
            let Some(number) = number else {
                return Err(err(
                    format!("{at}.containerPort"),
                    "must be a number from 1 to 65535",
                ));
            };
            let protocol = match p.get("protocol") {
                None | Some(Value::Null) => "TCP",
                Some(Value::String(s)) if ["TCP", "UDP", "SCTP"].contains(&s.as_str()) => s,
                Some(_) => return Err(err(format!("{at}.protocol"), "must be TCP, UDP or SCTP")),
            };
            let name = match p.get("name") {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) if s.is_empty() => continue,
                Some(Value::String(s)) => s,
                Some(_) => return Err(err(format!("{at}.name"), "must be a string")),
            };
            ContainerPort::check_name(name).map_err(|r| err(format!("{at}.name"), r))?;
            if out.iter().any(|q| q.name == *name) {
                return Err(err(
                    format!("{at}.name"),
                    format!("`{name}` names another port of the pod already"),
                ));
            }
            out.push(ContainerPort {
                name: name.clone(),
                container_port: number as u16,
                protocol: protocol.to_owned(),
            });
        }
    }
    if out.len() > palisade_api::agent::MAX_CONTAINER_PORTS {
        return Err(err(
            "spec.containers",
            format!(
                "more than {} named ports",
                palisade_api::agent::MAX_CONTAINER_PORTS
            ),
        ));
    }
    Ok(out)
}

fn ips(status: &Map<String, Value>) -> Result<Vec<IpAddr>, PodError> {
    let mut out = Vec::new();
    for (i, item) in opt_list(status, "podIPs", "status.podIPs")?
        .iter()
        .enumerate()
    {
        let field = format!("status.podIPs[{i}].ip");
        let ip = item
            .get("ip")
            .and_then(Value::as_str)
            .ok_or_else(|| err(&field, "must be a string"))?;
        out.push(
            ip.parse()
                .map_err(|_| err(&field, format!("`{ip}` is not an IP address")))?,
        );
    }
    if out.is_empty()
        && let Some(ip) = opt_str(status, "podIP", "status.podIP", |_| None)?
    {
        out.push(
            ip.parse()
                .map_err(|_| err("status.podIP", format!("`{ip}` is not an IP address")))?,
        );
    }
    Ok(out)
}

// === impl Pod ===

impl Pod {
    /// The trimmed record the mirror stores: the fields above and nothing else, so a pod's
    /// status churn (conditions, container states) makes no new revision, and every agent holds
    /// only what identities need. `namespace` is the one the record is stored under.
    pub fn projection(&self, namespace: &str) -> Value {
        let mut meta = json!({"name": self.name, "namespace": namespace});
        if let Some(uid) = &self.uid {
            meta["uid"] = json!(uid);
        }
        if !self.labels.is_empty() {
            meta["labels"] = json!(self.labels);
        }
        let mut spec = json!({});
        if let Some(sa) = &self.service_account {
            spec["serviceAccountName"] = json!(sa);
        }
        if let Some(node) = &self.node {
            spec["nodeName"] = json!(node);
        }
        if !self.ports.is_empty() {
            // One container holds them all: which container declared a port means nothing to
            // policy, and names are unique across the pod.
            let ports: Vec<Value> = self
                .ports
                .iter()
                .map(|p| json!({"name": p.name, "containerPort": p.container_port, "protocol": p.protocol}))
                .collect();
            spec["containers"] = json!([{"name": "ports", "ports": ports}]);
        }
        let mut out =
            json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec});
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self.ips.iter().map(|ip| json!({"ip": ip})).collect();
            out["status"] = json!({"podIPs": ips});
        }
        out
    }

    /// The labels that go into the pod's identity: its labels less the reserved ones
    /// ([`RESERVED_LABEL_PREFIXES`]; Kubernetes lets a pod carry them, the agent sets them).
    pub fn identity_labels(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .filter(|(k, _)| !RESERVED_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The service account identities use: `spec.serviceAccountName`, else `default` (what
    /// Kubernetes sets when a pod names none).
    pub fn service_account_or_default(&self) -> &str {
        self.service_account.as_deref().unwrap_or("default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-7d9f-x2", "namespace": "shop", "uid": "u-1",
                "resourceVersion": "42", "labels": {"app": "api", "example.com/tier": ""},
                "annotations": {"a": "b"}},
            "spec": {"serviceAccountName": "api-sa", "nodeName": "node-1",
                "containers": [
                    {"name": "main", "image": "api:1", "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"containerPort": 9090}]},
                    {"name": "side", "image": "dns:1", "ports": [
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}],
                "volumes": [{"name": "v"}]},
            "status": {"phase": "Running", "podIP": "10.0.1.5",
                "podIPs": [{"ip": "10.0.1.5"}, {"ip": "fd00::5"}],
                "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[test]
    fn reads_identity_fields_and_ignores_the_rest() {
        let pod = parse(&full()).unwrap();
        assert_eq!(pod.name, "api-7d9f-x2");
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.uid.as_deref(), Some("u-1"));
        assert_eq!(pod.labels.len(), 2);
        assert_eq!(pod.service_account_or_default(), "api-sa");
        assert_eq!(pod.node.as_deref(), Some("node-1"));
        let names: Vec<&str> = pod.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["http", "dns"], "unnamed ports are left out");
        assert_eq!(pod.ports[1].protocol, "UDP");
        assert_eq!(pod.ips.len(), 2);
        let mut spoof = full();
        spoof["metadata"]["labels"]["io.kubernetes.pod.namespace"] = json!("kube-system");
        spoof["metadata"]["labels"]["io.cilium.k8s.policy.serviceaccount"] = json!("admin");
        let spoof = parse(&spoof).unwrap();
        assert_eq!(spoof.labels.len(), 4, "Kubernetes allows them");
        assert_eq!(spoof.identity_labels(), pod.labels, "the agent sets them");
        // A bare pod: no labels, service account `default`, nothing scheduled yet.
        let bare =
            parse(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})).unwrap();
        assert_eq!(bare.service_account_or_default(), "default");
        assert!(bare.labels.is_empty() && bare.ports.is_empty() && bare.ips.is_empty());
    }

    #[test]
    fn the_projection_reads_back_the_same_and_drops_status_churn() {
        let pod = parse(&full()).unwrap();
        let p = pod.projection("shop");
        assert_eq!(parse(&p).unwrap(), pod);
        assert!(p["spec"].get("volumes").is_none(), "{p}");
        assert!(p["status"].get("conditions").is_none(), "{p}");
        assert!(p["metadata"].get("resourceVersion").is_none(), "{p}");
        let mut churned = full();
        churned["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        churned["status"]["phase"] = json!("Pending");
        churned["metadata"]["resourceVersion"] = json!("43");
        assert_eq!(parse(&churned).unwrap().projection("shop"), p);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("/apiVersion", json!("apps/v1"), "apiVersion"),
            ("/kind", json!("Namespace"), "kind"),
            ("/metadata", json!("x"), "metadata"),
            ("/metadata/name", json!("Api_1"), "metadata.name"),
            ("/metadata/name", json!(7), "metadata.name"),
            ("/metadata/namespace", json!("a.b"), "metadata.namespace"),
            ("/metadata/labels", json!({"app": 1}), "metadata.labels.app"),
            (
                "/metadata/labels",
                json!({"app": "-x"}),
                "metadata.labels.app",
            ),
            (
                "/metadata/labels",
                json!({"bad key": "x"}),
                "metadata.labels.bad key",
            ),
            ("/metadata/labels", json!("app=x"), "metadata.labels"),
            ("/spec", json!([]), "spec"),
            (
                "/spec/serviceAccountName",
                json!("Bad SA"),
                "spec.serviceAccountName",
            ),
            ("/spec/nodeName", json!(3), "spec.nodeName"),
            ("/spec/containers", json!({}), "spec.containers"),
            ("/spec/containers/1", json!("x"), "spec.containers[1]"),
            (
                "/spec/containers/0/ports",
                json!(1),
                "spec.containers[0].ports",
            ),
            (
                "/spec/containers/0/ports/1",
                json!(null),
                "spec.containers[0].ports[1]",
            ),
            (
                "/spec/containers/0/ports/1/containerPort",
                json!(0),
                "spec.containers[0].ports[1].containerPort",
            ),
            (
                "/spec/containers/0/ports/1/containerPort",
                json!(70000),
                "spec.containers[0].ports[1].containerPort",
            ),
            (
                "/spec/containers/0/ports/1/containerPort",
                json!("80"),
                "spec.containers[0].ports[1].containerPort",
            ),
            (
                "/spec/containers/0/ports/1/name",
                json!("HTTP"),
                "spec.containers[0].ports[1].name",
            ),
            (
                "/spec/containers/0/ports/1/name",
                json!("a-very-long-port-name"),
                "spec.containers[0].ports[1].name",
            ),
            (
                "/spec/containers/1/ports/0/name",
                json!("http"),
                "spec.containers[1].ports[0].name",
            ),
            (
                "/spec/containers/1/ports/0/protocol",
                json!("ICMP"),
                "spec.containers[1].ports[0].protocol",
            ),
            ("/status", json!(1), "status"),
            ("/status/podIPs", json!("10.0.0.1"), "status.podIPs"),
            (
                "/status/podIPs/1",
                json!({"ip": "10.0.0.300"}),
                "status.podIPs[1].ip",
            ),
            ("/status/podIPs/0", json!({}), "status.podIPs[0].ip"),
        ];
        for (path, value, field) in cases {
            let mut o = full();
            let (parent, leaf) = path.rsplit_once('/').unwrap();
            let parent = o.pointer_mut(parent).unwrap();
            match parent {
                Value::Array(items) => items[leaf.parse::<usize>().unwrap()] = value.clone(),
                _ => parent[leaf] = value.clone(),
            }
            let e = parse(&o).expect_err(&format!("{path} = {value} must be refused"));
            assert_eq!(e.field, field, "{path} = {value}: {e}");
        }
        assert_eq!(parse(&json!([])).unwrap_err().field, "");
        assert_eq!(parse(&json!("x")).unwrap_err().field, "");
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        // Every JSON shape at every field the reader looks at.
        let shapes = [
            json!(null),
            json!(true),
            json!(-1),
            json!(1.5),
            json!(""),
            json!([]),
            json!([null, 1, "x", {}]),
            json!({}),
        ];
        let paths = [
            "/metadata/labels",
            "/metadata/uid",
            "/spec/containers",
            "/spec/containers/0",
            "/spec/containers/0/ports/0",
            "/spec/containers/0/ports/0/containerPort",
            "/spec/containers/0/ports/0/name",
            "/status/podIPs",
            "/status/podIPs/0",
            "/status/podIP",
        ];
        for path in paths {
            for shape in &shapes {
                let mut o = full();
                let (parent, leaf) = path.rsplit_once('/').unwrap();
                match o.pointer_mut(parent).unwrap() {
                    Value::Array(items) => items[leaf.parse::<usize>().unwrap()] = shape.clone(),
                    p => p[leaf] = shape.clone(),
                }
                let _ = parse(&o);
            }
        }
    }
}
