//! The node agent's local API: what the CNI plugin (and `palisade agent status`) say to the agent
//! over its unix socket.
//!
//! Framing: one JSON [`AgentRequest`] per connection, terminated by a newline; the agent answers
//! with one JSON [`AgentResponse`] and a newline, then closes. The socket is root-only (mode
//! 0600): anyone who can write to it can change what the node enforces.
//!
//! The CNI ADD flow, as Cilium's plugin does it:
//!
//! ```text
//!  plugin                                   agent
//!    │ IpamAllocate{container, ifname, requested?} ─▶ address from the node's pod CIDR (persisted)
//!    │ ◀─ IpamAllocated{ip, prefix, gateway}
//!    │ create veth, address, routes, neighbour
//!    │ EndpointAdd{container, ifname, host_iface, pod, labels, ip} ─▶ identity, maps, programs
//!    │   (no labels from the runtime: fromPodRecord ─▶ labels from the pod's Pod record, or
//!    │    code 11 while the control plane has none)
//!    │ ◀─ EndpointAdded{endpoint_id, identity}
//!    │ (on any failure after IpamAllocate: IpamRelease, and undo the veth)
//! ```
//!
//! DEL sends `EndpointDel` then `IpamRelease`; both succeed when there is nothing to remove.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A request to the agent.
// One request per connection on a local socket, parsed once: the size of the largest variant (a
// registration) costs nothing worth a `Box` (as for `AgentResponse`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "op",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum AgentRequest {
    /// Reserve an address for a container's interface (idempotent per container + ifname).
    IpamAllocate {
        /// CNI_CONTAINERID.
        container_id: String,
        /// CNI_IFNAME.
        ifname: String,
        /// A specific address (CNI_ARGS `IP=` or `args.cni.ips`), when the runtime asks for one.
        requested: Option<IpAddr>,
    },
    /// Release the address of a container's interface (succeeds when none is held).
    IpamRelease {
        /// CNI_CONTAINERID.
        container_id: String,
        /// CNI_IFNAME.
        ifname: String,
    },
    /// Register an endpoint whose veth is in place: the agent resolves its identity, programs the
    /// maps and attaches the datapath to `host_iface`.
    EndpointAdd(EndpointSpec),
    /// Forget an endpoint (succeeds when it is unknown).
    EndpointDel {
        /// CNI_CONTAINERID.
        container_id: String,
        /// CNI_IFNAME.
        ifname: String,
    },
    /// Is this endpoint registered and enforced? (CNI CHECK.)
    EndpointGet {
        /// CNI_CONTAINERID.
        container_id: String,
        /// CNI_IFNAME.
        ifname: String,
    },
    /// The agent's state: node, pod CIDR, endpoints, policy revision.
    Status {},
    /// Node-to-node encryption: backend, interface, key fingerprint and epoch, peers
    /// (`palisade encrypt status`); answered with `Status`.
    EncryptStatus {},
    /// Rotate this node's WireGuard key now, make-before-break (`palisade encrypt rotate`);
    /// answered with `Status` holding the encryption status after the rotation.
    EncryptRotate {},
}

/// Everything the agent needs to enforce policy for a new endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME (the interface inside the pod).
    pub ifname: String,
    /// CNI_NETNS (path of the pod's network namespace).
    pub netns: String,
    /// The host-side veth, in the agent's network namespace.
    pub host_iface: String,
    /// Kubernetes namespace of the pod (K8S_POD_NAMESPACE).
    pub pod_namespace: String,
    /// Pod name (K8S_POD_NAME).
    pub pod_name: String,
    /// Pod labels (from `args.cni.labels`), without the namespace label, which the agent adds.
    /// Shared (`Arc`): the agent keeps one copy per identity for all its endpoints, in its
    /// registry and its policy engine alike; the wire format is a plain map.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Service account, when known.
    pub service_account: Option<String>,
    /// Addresses assigned by `IpamAllocate`.
    pub ips: Vec<IpAddr>,
    /// The pod's named container ports (from `args.cni.ports`): what a policy's named port
    /// (`port: http`) resolves to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// The runtime named the pod but passed no labels (no `args.cni.labels`), as a kubelet
    /// does: the agent takes the labels, service account and named ports from the control
    /// plane's Pod record `podNamespace/podName` (which `palisade mirror` copies from the
    /// cluster), answers code 11 (try again later) while that record has not reached it, and
    /// moves the endpoint to a new identity when the record's labels change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_pod_record: bool,
    /// The pod's uid (`K8S_POD_UID`), when the runtime passed it: with [`Self::from_pod_record`],
    /// a Pod record of another uid is an earlier pod of the same name (a StatefulSet member
    /// recreated), not this one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// A named container port, as Kubernetes' `ContainerPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    /// The port's name (an IANA service name: 1–15 lower-case letters, digits and `-`).
    pub name: String,
    /// The port number.
    pub container_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// Most named ports a pod may declare (Kubernetes sets no limit; this bounds what one
/// endpoint record costs every agent).
pub const MAX_CONTAINER_PORTS: usize = 64;

impl ContainerPort {
    /// Why `s` is not an IANA service name, as Kubernetes requires of a named port: 1–15
    /// characters, lower-case letters, digits and `-`, at least one letter, no `-` at either end
    /// or twice in a row.
    pub fn check_name(s: &str) -> Result<(), String> {
        if s.is_empty() || s.len() > 15 {
            return Err("must be 1 to 15 characters".into());
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err("must consist of lower case letters, digits and '-'".into());
        }
        if !s.chars().any(|c| c.is_ascii_lowercase()) {
            return Err("must contain at least one letter".into());
        }
        if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
            return Err("must not begin or end with '-' nor contain '--'".into());
        }
        Ok(())
    }

    /// Checks a pod's named ports; the error is the offending field under `path`
    /// (`ports[1].name`) and why.
    pub fn check_all(ports: &[ContainerPort], path: &str) -> Result<(), (String, String)> {
        if ports.len() > MAX_CONTAINER_PORTS {
            return Err((
                path.to_owned(),
                format!("more than {MAX_CONTAINER_PORTS} named ports"),
            ));
        }
        for (i, p) in ports.iter().enumerate() {
            let at = |f: &str| format!("{path}[{i}].{f}");
            Self::check_name(&p.name).map_err(|r| (at("name"), r))?;
            if p.container_port == 0 {
                return Err((at("containerPort"), "must be 1 to 65535".into()));
            }
            if !["TCP", "UDP", "SCTP"].contains(&p.protocol.as_str()) {
                return Err((at("protocol"), "must be TCP, UDP or SCTP".into()));
            }
            if ports[..i].iter().any(|q| q.name == p.name) {
                return Err((at("name"), format!("`{}` appears twice", p.name)));
            }
        }
        Ok(())
    }
}

/// The agent's answer.
// One answer per request on a local socket, built once and serialized: the size of the
// largest variant (a registration with its named ports) costs nothing worth a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "result",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum AgentResponse {
    /// An address was reserved.
    IpamAllocated {
        /// The address.
        ip: IpAddr,
        /// Prefix length to configure on the pod interface (32 / 128: routes go via the gateway).
        prefix: u8,
        /// The pod's default gateway (a link-local address answered by the host side).
        gateway: IpAddr,
    },
    /// The endpoint is registered and enforced.
    EndpointAdded {
        /// Node-local endpoint id.
        endpoint_id: u32,
        /// Its security identity.
        identity: u32,
    },
    /// The endpoint as the agent knows it (answer to `EndpointGet`).
    Endpoint {
        /// The registration.
        spec: EndpointSpec,
        /// Node-local endpoint id.
        endpoint_id: u32,
        /// Its security identity.
        identity: u32,
    },
    /// The agent's state (answer to `Status`), free-form for display.
    Status {
        /// Status fields.
        status: serde_json::Value,
    },
    /// The request was carried out and has nothing to return.
    Done,
    /// The request failed. `code` follows CNI's error codes where one fits (7 invalid network
    /// config / argument, 11 try again later), 100+ for Palisade's own.
    Error {
        /// Error code.
        code: u32,
        /// One-line message naming the problem.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_as_tagged_json() {
        let req = AgentRequest::IpamAllocate {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            requested: Some("10.200.1.20".parse().expect("ip")),
        };
        let line = serde_json::to_string(&req).expect("encode");
        assert_eq!(
            line,
            r#"{"op":"ipamAllocate","containerId":"c1","ifname":"eth0","requested":"10.200.1.20"}"#
        );
        assert_eq!(
            serde_json::from_str::<AgentRequest>(&line).expect("decode"),
            req
        );
        let resp: AgentResponse =
            serde_json::from_str(r#"{"result":"error","code":7,"message":"bad"}"#).expect("decode");
        assert_eq!(
            resp,
            AgentResponse::Error {
                code: 7,
                message: "bad".into()
            }
        );
    }

    #[test]
    fn unknown_ops_and_fields_are_rejected() {
        assert!(serde_json::from_str::<AgentRequest>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<AgentRequest>(r#"{"op":"status","extra":1}"#).is_err());
        assert!(serde_json::from_str::<AgentRequest>(r#"{"op":"status"}"#).is_ok());
        let add = r#"{"op":"endpointAdd","containerId":"c","ifname":"eth0","netns":"/run/netns/p","hostIface":"lxc1","podNamespace":"x","podName":"a","labels":{},"serviceAccount":null,"ips":[]}"#;
        assert!(
            serde_json::from_str::<AgentRequest>(add).is_ok(),
            "newtype variant accepts its fields"
        );
        let bad = add.replace(r#""ips":[]"#, r#""ips":[],"bogus":1"#);
        assert!(
            serde_json::from_str::<AgentRequest>(&bad).is_err(),
            "and rejects unknown ones"
        );
    }
}
