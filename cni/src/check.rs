//! CHECK: the attachment still looks as ADD left it, judged against `prevResult`:
//!
//! - the pod interface (`CNI_IFNAME` in `CNI_NETNS`) exists, is up, has the MAC and every
//!   address `prevResult` lists for it, the on-link route to each gateway, every listed route,
//!   and the gateway's permanent neighbour entry on the host side's MAC;
//! - the host side (`lxc<hash>`) exists, is up, has its listed MAC and a route to each address;
//! - the agent knows the endpoint (`EndpointGet`) with this host interface and these addresses.
//!
//! Extra routes or addresses (a later chained plugin's) are allowed.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use palisade_api::agent::{AgentRequest, AgentResponse};

use crate::agent::Agent;
use crate::config::{ConfigError, NetConf};
use crate::env::{Attachment, ENV_NETNS, EnvError};
use crate::error::CniError;
use crate::iproute::{IpRoute, host_prefix};
use crate::names::host_iface_name;
use crate::result::{CniResult, Interface};
use crate::runner::Runner;

fn same_mac(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn find(prev: &CniResult, pred: impl Fn(&Interface) -> bool) -> Option<(usize, &Interface)> {
    prev.interfaces.iter().enumerate().find(|(_, i)| pred(i))
}

/// Runs CHECK.
pub fn check(
    conf: &NetConf,
    att: &Attachment,
    runner: &impl Runner,
    agent: &impl Agent,
) -> Result<(), CniError> {
    if !conf.cni_version.has_check() {
        return Err(CniError::CheckNeedsNewerVersion {
            version: conf.cni_version.as_str().to_string(),
        });
    }
    let prev = conf.prev_result.as_ref().ok_or_else(|| ConfigError {
        field: "prevResult".into(),
        value: None,
        reason: "is required for CHECK".into(),
    })?;
    let netns = att.netns.as_deref().ok_or(EnvError::Missing {
        var: ENV_NETNS,
        command: "CHECK",
    })?;
    if !Path::new(netns).exists() {
        return Err(CniError::NoNetns {
            netns: netns.into(),
        });
    }
    let host_iface = host_iface_name(&att.container_id, &att.ifname);
    let (pod_index, pod_entry) = find(prev, |i| {
        i.name == att.ifname && i.sandbox.as_deref() == Some(netns)
    })
    .ok_or_else(|| {
        CniError::check(format!(
            "prevResult lists no interface `{}` in `{netns}`",
            att.ifname
        ))
    })?;
    let host_entry = find(prev, |i| {
        i.name == host_iface && i.sandbox.as_deref().is_none_or(str::is_empty)
    })
    .map(|(_, i)| i)
    .ok_or_else(|| CniError::check(format!("prevResult lists no host interface `{host_iface}`")))?;
    let ips: Vec<(IpNet, Option<IpAddr>)> = prev
        .ips
        .iter()
        .filter(|c| c.interface == Some(pod_index))
        .map(|c| (c.address, c.gateway))
        .collect();
    if ips.is_empty() {
        return Err(CniError::check(format!(
            "prevResult lists no address for `{}`",
            att.ifname
        )));
    }

    let ip = IpRoute::new(runner);
    // The pod side first: it is what a runtime asks about.
    let pod = ip.link(Some(netns), &att.ifname)?.ok_or_else(|| {
        CniError::check(format!(
            "interface `{}` is missing from `{netns}`",
            att.ifname
        ))
    })?;
    if !pod.is_up() {
        return Err(CniError::check(format!(
            "interface `{}` in `{netns}` is down",
            att.ifname
        )));
    }
    let pod_mac = pod.address.unwrap_or_default();
    if let Some(want) = &pod_entry.mac
        && !same_mac(want, &pod_mac)
    {
        return Err(CniError::check(format!(
            "interface `{}` has MAC {pod_mac}, prevResult says {want}",
            att.ifname
        )));
    }
    // The host side.
    let host = ip
        .link(None, &host_iface)?
        .ok_or_else(|| CniError::check(format!("host interface `{host_iface}` is missing")))?;
    if !host.is_up() {
        return Err(CniError::check(format!(
            "host interface `{host_iface}` is down"
        )));
    }
    let host_mac = host.address.unwrap_or_default();
    if let Some(want) = &host_entry.mac
        && !same_mac(want, &host_mac)
    {
        return Err(CniError::check(format!(
            "host interface `{host_iface}` has MAC {host_mac}, prevResult says {want}"
        )));
    }
    let addrs = ip.addresses(Some(netns), &att.ifname)?;
    for (want, gateway) in &ips {
        if !addrs.contains(want) {
            return Err(CniError::check(format!(
                "address {want} is missing from `{}`",
                att.ifname
            )));
        }
        let v6 = want.addr().is_ipv6();
        let pod_routes = ip.routes(Some(netns), &att.ifname, v6)?;
        let has = |dst: IpNet, gw: Option<IpAddr>| {
            pod_routes
                .iter()
                .any(|r| r.dst_net(v6).map(|d| d.trunc()) == Some(dst.trunc()) && r.gateway == gw)
        };
        if let Some(gw) = gateway {
            if !has(IpNet::from(*gw), None) {
                return Err(CniError::check(format!(
                    "on-link route to gateway {gw} is missing from `{}`",
                    att.ifname
                )));
            }
            let neigh = ip.neighbours(Some(netns), &att.ifname)?;
            let ok = neigh.iter().any(|n| {
                n.dst == *gw
                    && n.state.iter().any(|s| s == "PERMANENT")
                    && n.lladdr.as_deref().is_some_and(|m| same_mac(m, &host_mac))
            });
            if !ok {
                return Err(CniError::check(format!(
                    "permanent neighbour {gw} lladdr {host_mac} is missing from `{}`",
                    att.ifname
                )));
            }
        }
        for r in prev.routes.iter().filter(|r| r.dst.addr().is_ipv6() == v6) {
            let gw = r.gw.or(*gateway);
            if !has(r.dst, gw) {
                let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(CniError::check(format!(
                    "route {}{via} is missing from `{}`",
                    r.dst, att.ifname
                )));
            }
        }
        let host_routes = ip.routes(None, &host_iface, v6)?;
        let host_dst = IpNet::new(want.addr(), host_prefix(want.addr()))
            .map_err(|_| CniError::check("bad address"))?;
        if !host_routes.iter().any(|r| r.dst_net(v6) == Some(host_dst)) {
            return Err(CniError::check(format!(
                "node route {host_dst} dev {host_iface} is missing"
            )));
        }
    }
    // The agent.
    let req = AgentRequest::EndpointGet {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
    };
    match agent.call(&req)? {
        AgentResponse::Endpoint { spec, .. } => {
            if spec.host_iface != host_iface {
                return Err(CniError::check(format!(
                    "the agent has the endpoint on `{}`, not `{host_iface}`",
                    spec.host_iface
                )));
            }
            for (want, _) in &ips {
                if !spec.ips.contains(&want.addr()) {
                    return Err(CniError::check(format!(
                        "the agent's endpoint lacks address {}",
                        want.addr()
                    )));
                }
            }
            Ok(())
        }
        other => Err(CniError::AgentProtocol {
            request: "endpointGet",
            reason: format!("expected endpoint, got {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests;
