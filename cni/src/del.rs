//! DEL: idempotent. A missing netns, interface or endpoint is success; the local veth is
//! removed even when the agent cannot be reached, and then the agent's error is returned so
//! the runtime retries (the address stays held until a DEL reaches the agent).
//!
//! ```text
//!  EndpointDel ─▶ delete lxc<hash> if present ─▶ IpamRelease ─▶ first error, or success
//! ```

use palisade_api::agent::{AgentRequest, AgentResponse};

use crate::agent::Agent;
use crate::env::Attachment;
use crate::error::CniError;
use crate::iproute::IpRoute;
use crate::names::host_iface_name;
use crate::runner::Runner;

fn expect_done(agent: &impl Agent, req: &AgentRequest, op: &'static str) -> Result<(), CniError> {
    match agent.call(req)? {
        AgentResponse::Done => Ok(()),
        other => Err(CniError::AgentProtocol {
            request: op,
            reason: format!("expected done, got {other:?}"),
        }),
    }
}

/// Runs DEL.
pub fn del(att: &Attachment, runner: &impl Runner, agent: &impl Agent) -> Result<(), CniError> {
    let container_id = att.container_id.clone();
    let ifname = att.ifname.clone();
    let endpoint = expect_done(
        agent,
        &AgentRequest::EndpointDel {
            container_id: container_id.clone(),
            ifname: ifname.clone(),
        },
        "endpointDel",
    );
    let ip = IpRoute::new(runner);
    let host_iface = host_iface_name(&att.container_id, &att.ifname);
    let link = match ip.link(None, &host_iface) {
        Ok(Some(_)) => ip.delete_link(&host_iface).map_err(CniError::from),
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    };
    let ipam = expect_done(
        agent,
        &AgentRequest::IpamRelease {
            container_id,
            ifname,
        },
        "ipamRelease",
    );
    endpoint.and(link).and(ipam)
}

#[cfg(test)]
mod tests;
