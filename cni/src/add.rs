//! ADD: everything is validated before anything is touched; once the agent has allocated an
//! address, any failure undoes what was made and releases it.
//!
//! ```text
//!  validate config + env ─▶ netns exists? ─▶ lxc<hash> free? CNI_IFNAME free in the pod?
//!   ─▶ IpamAllocate ─▶ veth ─▶ host side up + route ─▶ pod address, routes, neighbour
//!   ─▶ EndpointAdd ─▶ result
//!          any error after IpamAllocate ─▶ EndpointDel (if sent) ─▶ delete veth (if made)
//!                                         ─▶ IpamRelease ─▶ the first error
//! ```

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use palisade_api::agent::{AgentRequest, AgentResponse, EndpointSpec};

use crate::agent::{Agent, AgentError};
use crate::config::NetConf;
use crate::env::{Attachment, EnvError};
use crate::error::CniError;
use crate::iproute::{IpRoute, PodNet, host_prefix};
use crate::names::host_iface_name;
use crate::result::{Built, CniResult};
use crate::runner::Runner;

/// The one requested address, from `CNI_ARGS` `IP=` and `args.cni.ips` (host-local reads both;
/// the same address in both is one request). More than one distinct address is refused: the
/// agent allocates one address per interface for now.
pub fn requested_ip(conf: &NetConf, att: &Attachment) -> Result<Option<IpAddr>, CniError> {
    let mut all: Vec<IpAddr> = att
        .args
        .ip
        .into_iter()
        .chain(conf.ips.iter().copied())
        .collect();
    all.sort();
    all.dedup();
    match all.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(crate::config::ConfigError {
            field: "args.cni.ips".into(),
            value: Some(format!("{all:?}")),
            reason: "one requested address per interface (CNI_ARGS IP= and args.cni.ips together)"
                .into(),
        }
        .into()),
    }
}

fn required_arg(value: &Option<String>, key: &'static str) -> Result<String, CniError> {
    value.clone().ok_or_else(|| {
        EnvError::InvalidArg {
            key: key.into(),
            value: String::new(),
            reason: "is required for ADD".into(),
        }
        .into()
    })
}

/// Everything ADD needs, checked.
struct Plan {
    netns: String,
    host_iface: String,
    pod_namespace: String,
    pod_name: String,
    requested: Option<IpAddr>,
}

fn plan(conf: &NetConf, att: &Attachment) -> Result<Plan, CniError> {
    if conf.prev_result.is_some() {
        return Err(CniError::UnsupportedField {
            field: "prevResult".into(),
            value: "{…}".into(),
            reason:
                "palisade-cni creates the interface, so it must be the first plugin of the chain"
                    .into(),
        });
    }
    let netns = att.netns.clone().ok_or(EnvError::Missing {
        var: crate::env::ENV_NETNS,
        command: "ADD",
    })?;
    Ok(Plan {
        pod_namespace: required_arg(&att.args.pod_namespace, "K8S_POD_NAMESPACE")?,
        pod_name: required_arg(&att.args.pod_name, "K8S_POD_NAME")?,
        requested: requested_ip(conf, att)?,
        host_iface: host_iface_name(&att.container_id, &att.ifname),
        netns,
    })
}

/// Runs ADD and returns the result to print.
pub fn add(
    conf: &NetConf,
    att: &Attachment,
    runner: &impl Runner,
    agent: &impl Agent,
) -> Result<CniResult, CniError> {
    let plan = plan(conf, att)?;
    if !Path::new(&plan.netns).exists() {
        return Err(CniError::NoNetns { netns: plan.netns });
    }
    let ip = IpRoute::new(runner);
    if ip.link(None, &plan.host_iface)?.is_some() {
        return Err(CniError::InterfaceExists {
            iface: plan.host_iface,
            place: "the node's namespace (is a DEL missing?)".into(),
        });
    }
    if ip.link(Some(&plan.netns), &att.ifname)?.is_some() {
        return Err(CniError::InterfaceExists {
            iface: att.ifname.clone(),
            place: format!("CNI_NETNS `{}`", plan.netns),
        });
    }
    let lease = allocate(att, plan.requested, agent)?;
    let mut undo = Undo::default();
    match build(conf, att, &plan, lease, &ip, agent, &mut undo) {
        Ok(built) => Ok(CniResult::for_add(
            conf.cni_version,
            &built,
            conf.dns.clone(),
        )),
        Err(e) => {
            undo.run(att, &plan.host_iface, &ip, agent);
            Err(e)
        }
    }
}

/// An address the agent reserved.
struct Lease {
    address: IpNet,
    gateway: IpAddr,
}

fn allocate(
    att: &Attachment,
    requested: Option<IpAddr>,
    agent: &impl Agent,
) -> Result<Lease, CniError> {
    let req = AgentRequest::IpamAllocate {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        requested,
    };
    let resp = agent.call(&req).map_err(|e| {
        // The agent may have allocated before the exchange broke; a refusal allocated nothing.
        if matches!(e, AgentError::Io { .. } | AgentError::Malformed { .. }) {
            release(att, agent);
        }
        e
    })?;
    let checked = match resp {
        AgentResponse::IpamAllocated {
            ip,
            prefix,
            gateway,
        } => {
            if requested.is_some_and(|r| r != ip) {
                Err(format!("asked for {requested:?}, got {ip}"))
            } else if prefix != host_prefix(ip) {
                Err(format!(
                    "prefix /{prefix} for {ip}: pods get /{} and reach everything via the gateway",
                    host_prefix(ip)
                ))
            } else if ip.is_ipv4() != gateway.is_ipv4() {
                Err(format!(
                    "address {ip} and gateway {gateway} are of different families"
                ))
            } else {
                IpNet::new(ip, prefix)
                    .map(|address| Lease { address, gateway })
                    .map_err(|_| format!("prefix /{prefix} is too long for {ip}"))
            }
        }
        other => Err(format!("expected ipamAllocated, got {other:?}")),
    };
    checked.map_err(|reason| {
        release(att, agent);
        CniError::AgentProtocol {
            request: "ipamAllocate",
            reason,
        }
    })
}

fn release(att: &Attachment, agent: &impl Agent) {
    let req = AgentRequest::IpamRelease {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
    };
    if let Err(e) = agent.call(&req) {
        eprintln!("palisade-cni: rollback: {e} (the address stays held until DEL)");
    }
}

/// What to take back if ADD fails part way.
#[derive(Default)]
struct Undo {
    veth: bool,
    endpoint: bool,
}

// === impl Undo ===

impl Undo {
    fn run<R: Runner>(
        &self,
        att: &Attachment,
        host_iface: &str,
        ip: &IpRoute<'_, R>,
        agent: &impl Agent,
    ) {
        if self.endpoint {
            let req = AgentRequest::EndpointDel {
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            };
            if let Err(e) = agent.call(&req) {
                eprintln!("palisade-cni: rollback: {e}");
            }
        }
        if let Some(Err(e)) = self.veth.then(|| ip.delete_link(host_iface)) {
            eprintln!("palisade-cni: rollback: {e}");
        }
        release(att, agent);
    }
}

fn build<R: Runner>(
    conf: &NetConf,
    att: &Attachment,
    plan: &Plan,
    Lease { address, gateway }: Lease,
    ip: &IpRoute<'_, R>,
    agent: &impl Agent,
    undo: &mut Undo,
) -> Result<Built, CniError> {
    let pod = PodNet {
        netns: &plan.netns,
        ifname: &att.ifname,
        host_iface: &plan.host_iface,
        address,
        gateway,
        mtu: conf.mtu,
    };
    ip.create_veth(&pod)?;
    undo.veth = true;
    let host_mac = ip.mac(None, &plan.host_iface)?;
    ip.configure_host(&pod)?;
    ip.configure_pod(&pod, &host_mac)?;
    let pod_mac = ip.mac(Some(&plan.netns), &att.ifname)?;
    let spec = EndpointSpec {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: plan.netns.clone(),
        host_iface: plan.host_iface.clone(),
        pod_namespace: plan.pod_namespace.clone(),
        pod_name: plan.pod_name.clone(),
        labels: conf.labels.clone().unwrap_or_default().into(),
        service_account: conf.service_account.clone(),
        ips: vec![address.addr()],
        ports: conf.ports.clone(),
        // No labels from the runtime (a kubelet's ADD): the agent reads the pod's Pod record.
        from_pod_record: conf.labels.is_none(),
        pod_uid: att.args.pod_uid.clone(),
    };
    undo.endpoint = true;
    match agent.call(&AgentRequest::EndpointAdd(spec))? {
        AgentResponse::EndpointAdded { .. } => {}
        other => {
            return Err(CniError::AgentProtocol {
                request: "endpointAdd",
                reason: format!("expected endpointAdded, got {other:?}"),
            });
        }
    }
    Ok(Built {
        host_iface: plan.host_iface.clone(),
        host_mac,
        pod_iface: att.ifname.clone(),
        pod_mac,
        netns: plan.netns.clone(),
        address,
        gateway,
    })
}

#[cfg(test)]
mod tests;
