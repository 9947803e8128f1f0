//! The network config on stdin, validated into a [`NetConf`]. Every refusal names its field
//! (`mtu`, `args.cni.labels[1].key`, …).
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "palisade", "type": "palisade-cni",
//!  "agentSocket": "/run/palisade/agent.sock",          // optional, this default
//!  "mtu": 1500,                                         // optional, this default
//!  "dns": {"nameservers": ["10.96.0.10"]},              // optional, copied to the result
//!  "args": {"cni": {
//!     "labels": [{"key": "app", "value": "api"}],       // the pod's labels (CNI convention)
//!     "ips": ["10.200.1.20"],                           // a requested address (CNI convention)
//!     "serviceAccount": "api",                          // Palisade extension
//!     "ports": [{"name": "http", "containerPort": 8080, // Palisade extension: named ports
//!                "protocol": "TCP"}]                    //   (Kubernetes' ContainerPort)
//!  }}}
//! ```
//!
//! Keys the runtime adds (`prevResult`, `runtimeConfig`, `capabilities`, `cni.dev/…`) are
//! accepted; any other key is refused with code 2, so a typo (`agentsocket`) or a setting this
//! plugin would silently ignore (`ipam`, `ipMasq`) is caught. Unknown keys under `args` are
//! ignored, as the conventions ask.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use palisade_api::agent::ContainerPort;
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::result::{CniResult, Dns};
use crate::validate;
use crate::version::{CniVersion, SUPPORTED_VERSIONS};

/// Where the agent listens unless `agentSocket` says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/palisade/agent.sock";
/// The MTU of both veth ends unless `mtu` says otherwise.
pub const DEFAULT_MTU: u32 = 1500;
/// The smallest MTU IPv4 allows.
pub const MIN_MTU: u32 = 68;
/// The largest MTU a veth takes.
pub const MAX_MTU: u32 = 65535;

/// Label keys a pod must not set itself: the agent derives them (namespace, service account),
/// and a pod claiming them could take another namespace's identity.
pub const RESERVED_LABEL_PREFIXES: [&str; 2] =
    ["io.kubernetes.pod.namespace", "io.cilium.k8s.policy."];

/// Keys accepted at the top level besides the plugin's own.
const RUNTIME_KEYS: [&str; 4] = ["prevResult", "runtimeConfig", "capabilities", "args"];

/// An invalid field (CNI error code 7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network config: `{field}`{shown}: {reason}", shown = value.as_ref().map(|v| format!(" = {v}")).unwrap_or_default())]
pub struct ConfigError {
    /// The field's path (`args.cni.ips[0]`).
    pub field: String,
    /// Its value as JSON, when present.
    pub value: Option<String>,
    /// Why it is refused.
    pub reason: String,
}

/// The validated network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: CniVersion,
    /// `name`.
    pub name: String,
    /// `type`.
    pub plugin_type: String,
    /// `agentSocket`.
    pub agent_socket: PathBuf,
    /// `mtu`.
    pub mtu: u32,
    /// `dns`.
    pub dns: Dns,
    /// `args.cni.labels`; `None` when absent (a kubelet passes none: the agent then takes the
    /// pod's labels from the control plane's Pod record).
    pub labels: Option<BTreeMap<String, String>>,
    /// `args.cni.serviceAccount`.
    pub service_account: Option<String>,
    /// `args.cni.ips`.
    pub ips: Vec<IpAddr>,
    /// `args.cni.ports` (named ones).
    pub ports: Vec<ContainerPort>,
    /// `prevResult`.
    pub prev_result: Option<CniResult>,
}

fn bad(field: impl Into<String>, value: Option<&Value>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        value: value.map(Value::to_string),
        reason: reason.into(),
    }
}

fn string<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(path, Some(v), "must be a string")),
    }
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, ConfigError> {
    string(obj, key, key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(key, None, "is required"))
}

fn strings(v: Option<&Value>, path: &str) -> Result<Vec<String>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("{path}[{i}]"), Some(item), "must be a string"))
            })
            .collect(),
        Some(v) => Err(bad(path, Some(v), "must be a list of strings")),
    }
}

fn object<'a>(
    v: Option<&'a Value>,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(v) => Err(bad(path, Some(v), "must be an object")),
    }
}

// === impl NetConf ===

impl NetConf {
    /// Decodes and validates stdin: code 6 if it is not a JSON object, 1 for an unsupported
    /// `cniVersion`, 2 for an unknown key, 7 for a bad value.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value =
            serde_json::from_slice(stdin).map_err(|source| CniError::Decode { source })?;
        let Value::Object(obj) = value else {
            return Err(bad("(top level)", Some(&value), "must be a JSON object").into());
        };
        let version = required(&obj, "cniVersion")?;
        let cni_version =
            CniVersion::parse(version).ok_or_else(|| CniError::IncompatibleVersion {
                version: version.to_string(),
                supported: SUPPORTED_VERSIONS.join(", "),
            })?;
        for (key, v) in &obj {
            let known = matches!(
                key.as_str(),
                "cniVersion" | "name" | "type" | "agentSocket" | "mtu" | "dns"
            ) || RUNTIME_KEYS.contains(&key.as_str())
                || key.starts_with("cni.dev/");
            if !known {
                return Err(CniError::UnsupportedField {
                    field: key.clone(),
                    value: v.to_string(),
                    reason: "not a palisade-cni setting".into(),
                });
            }
        }
        let name = required(&obj, "name")?;
        validate::cni_id(name).map_err(|r| bad("name", obj.get("name"), r))?;
        let plugin_type = required(&obj, "type")?;
        if plugin_type.contains('/') || plugin_type.contains('\\') {
            return Err(bad("type", obj.get("type"), "must be a file name, not a path").into());
        }
        let agent_socket = match string(&obj, "agentSocket", "agentSocket")? {
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(s) if s.starts_with('/') && !s.contains('\0') => PathBuf::from(s),
            Some(_) => {
                return Err(bad(
                    "agentSocket",
                    obj.get("agentSocket"),
                    "must be an absolute path",
                )
                .into());
            }
        };
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => DEFAULT_MTU,
            Some(v) => v
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
                .ok_or_else(|| {
                    bad(
                        "mtu",
                        Some(v),
                        format!("must be an integer from {MIN_MTU} to {MAX_MTU}"),
                    )
                })?,
        };
        let dns = parse_dns(obj.get("dns"))?;
        let (labels, service_account, ips, ports) = parse_args(obj.get("args"))?;
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<CniResult>(v.clone())
                    .map_err(|e| bad("prevResult", None, format!("not a CNI result: {e}")))?,
            ),
        };
        Ok(NetConf {
            cni_version,
            name: name.to_string(),
            plugin_type: plugin_type.to_string(),
            agent_socket,
            mtu,
            dns,
            labels,
            service_account,
            ips,
            ports,
            prev_result,
        })
    }
}

fn parse_dns(v: Option<&Value>) -> Result<Dns, ConfigError> {
    let Some(dns) = object(v, "dns")? else {
        return Ok(Dns::default());
    };
    let nameservers = strings(dns.get("nameservers"), "dns.nameservers")?;
    for (i, ns) in nameservers.iter().enumerate() {
        ns.parse::<IpAddr>().map_err(|_| {
            bad(
                format!("dns.nameservers[{i}]"),
                dns.get("nameservers").and_then(|l| l.get(i)),
                "not an IP address",
            )
        })?;
    }
    Ok(Dns {
        nameservers,
        domain: string(dns, "domain", "dns.domain")?.map(str::to_string),
        search: strings(dns.get("search"), "dns.search")?,
        options: strings(dns.get("options"), "dns.options")?,
    })
}

/// What `args.cni` carries: labels, service account, requested addresses, named ports.
type Args = (
    Option<BTreeMap<String, String>>,
    Option<String>,
    Vec<IpAddr>,
    Vec<ContainerPort>,
);

fn parse_args(v: Option<&Value>) -> Result<Args, ConfigError> {
    let Some(cni) = object(v, "args")?
        .map(|args| object(args.get("cni"), "args.cni"))
        .transpose()?
        .flatten()
    else {
        return Ok((None, None, Vec::new(), Vec::new()));
    };
    let mut labels = BTreeMap::new();
    let given = !matches!(cni.get("labels"), None | Some(Value::Null));
    match cni.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("args.cni.labels[{i}]");
                let Some(pair) = item.as_object() else {
                    return Err(bad(
                        path,
                        Some(item),
                        "must be an object {\"key\": …, \"value\": …}",
                    ));
                };
                let key = string(pair, "key", &format!("{path}.key"))?
                    .ok_or_else(|| bad(format!("{path}.key"), None, "is required"))?;
                let value = string(pair, "value", &format!("{path}.value"))?.unwrap_or("");
                validate::label_key(key)
                    .map_err(|r| bad(format!("{path}.key"), pair.get("key"), r))?;
                if RESERVED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p)) {
                    return Err(bad(
                        format!("{path}.key"),
                        pair.get("key"),
                        "is reserved: the agent sets it",
                    ));
                }
                validate::label_value(value)
                    .map_err(|r| bad(format!("{path}.value"), pair.get("value"), r))?;
                if labels.insert(key.to_string(), value.to_string()).is_some() {
                    return Err(bad(format!("{path}.key"), pair.get("key"), "appears twice"));
                }
            }
        }
        Some(v) => {
            return Err(bad(
                "args.cni.labels",
                Some(v),
                "must be a list of {\"key\", \"value\"} objects",
            ));
        }
    }
    let service_account = string(cni, "serviceAccount", "args.cni.serviceAccount")?;
    if let Some(sa) = service_account {
        validate::dns_subdomain(sa)
            .map_err(|r| bad("args.cni.serviceAccount", cni.get("serviceAccount"), r))?;
    }
    let mut ips = Vec::new();
    for (i, ip) in strings(cni.get("ips"), "args.cni.ips")?.iter().enumerate() {
        let parsed = ip.parse::<IpAddr>().map_err(|_| {
            bad(
                format!("args.cni.ips[{i}]"),
                cni.get("ips").and_then(|l| l.get(i)),
                "not an IP address",
            )
        })?;
        ips.push(parsed);
    }
    let ports = parse_ports(cni.get("ports"))?;
    Ok((
        given.then_some(labels),
        service_account.map(str::to_string),
        ips,
        ports,
    ))
}

/// `args.cni.ports`: the pod's named container ports, Kubernetes' `ContainerPort` shape
/// (`{"name": "http", "containerPort": 8080, "protocol": "TCP"}`; protocol defaults to TCP).
/// Unnamed ports are skipped: only names matter to policy.
fn parse_ports(v: Option<&Value>) -> Result<Vec<ContainerPort>, ConfigError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(bad(
                "args.cni.ports",
                Some(v),
                "must be a list of {\"name\", \"containerPort\", \"protocol\"} objects",
            ));
        }
    };
    let mut out: Vec<ContainerPort> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("args.cni.ports[{i}]");
        let Some(port) = item.as_object() else {
            return Err(bad(path, Some(item), "must be an object"));
        };
        if let Some(k) = port.keys().find(|k| {
            !["name", "containerPort", "protocol", "hostPort", "hostIP"].contains(&k.as_str())
        }) {
            return Err(bad(format!("{path}.{k}"), port.get(k), "unknown field"));
        }
        let number = port
            .get("containerPort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                bad(
                    format!("{path}.containerPort"),
                    port.get("containerPort"),
                    "must be an integer from 1 to 65535",
                )
            })?;
        let protocol = string(port, "protocol", &format!("{path}.protocol"))?.unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&protocol) {
            return Err(bad(
                format!("{path}.protocol"),
                port.get("protocol"),
                "must be TCP, UDP or SCTP",
            ));
        }
        let Some(name) = string(port, "name", &format!("{path}.name"))? else {
            continue;
        };
        validate::port_name(name).map_err(|r| bad(format!("{path}.name"), port.get("name"), r))?;
        if out.iter().any(|p| p.name == name) {
            return Err(bad(
                format!("{path}.name"),
                port.get("name"),
                "appears twice",
            ));
        }
        out.push(ContainerPort {
            name: name.to_string(),
            container_port: number,
            protocol: protocol.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
