use serde_json::json;

use super::*;
use crate::agent::AgentError;
use crate::test_util::{FakeRunner, ScriptedAgent, attachment, refused};

#[test]
fn del_removes_endpoint_veth_and_address() {
    let h = host_iface_name("c1", "eth0");
    let links = json!([{"ifname": "lo"}, {"ifname": h}]).to_string();
    let r = FakeRunner::default().answer("ip -j link show", &links);
    let agent = ScriptedAgent::healthy();
    del(&attachment("/run/netns/p", ""), &r, &agent).unwrap();
    assert_eq!(
        r.commands(),
        ["ip -j link show".to_string(), format!("ip link del {h}")]
    );
    assert_eq!(agent.ops(), ["endpointDel", "ipamRelease"]);
}

#[test]
fn del_of_nothing_succeeds() {
    let r = FakeRunner::default();
    let agent = ScriptedAgent::healthy();
    let mut att = attachment("/run/netns/gone", "");
    att.netns = None;
    del(&att, &r, &agent).unwrap();
    del(&att, &r, &agent).unwrap();
    assert_eq!(r.commands(), ["ip -j link show", "ip -j link show"]);
    assert_eq!(
        agent.ops(),
        ["endpointDel", "ipamRelease", "endpointDel", "ipamRelease"]
    );
}

#[test]
fn del_cleans_locally_when_the_agent_is_down_then_reports_it() {
    let h = host_iface_name("c1", "eth0");
    let r = FakeRunner::default().answer("ip -j link show", &json!([{"ifname": h}]).to_string());
    let agent = ScriptedAgent::with(|_| {
        Err(AgentError::Unreachable {
            socket: "/x.sock".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        })
    });
    let e = del(&attachment("/run/netns/p", ""), &r, &agent).unwrap_err();
    assert_eq!(e.code(), 11);
    assert!(r.commands().contains(&format!("ip link del {h}")));
    // An agent error on release is reported too.
    let agent = ScriptedAgent::with(|req| match req {
        AgentRequest::IpamRelease { .. } => Err(refused(req, 5, "disk full")),
        _ => Ok(AgentResponse::Done),
    });
    let e = del(
        &attachment("/run/netns/p", ""),
        &FakeRunner::default(),
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 5);
}
