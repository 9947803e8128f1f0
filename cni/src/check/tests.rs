use serde_json::json;

use super::*;
use crate::test_util::{FakeRunner, ScriptedAgent, attachment, conf, fake_netns, refused};

const HOST_MAC: &str = "02:00:00:00:00:01";
const POD_MAC: &str = "02:00:00:00:00:02";

fn prev(ns: &str) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": host_iface_name("c1", "eth0"), "mac": HOST_MAC}, {"name": "eth0", "mac": POD_MAC, "sandbox": ns}],
        "ips": [{"address": "10.200.1.20/32", "gateway": "169.254.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {}
    })
}

/// What `ip` reports for an intact attachment.
fn intact(ns: &str) -> FakeRunner {
    let h = host_iface_name("c1", "eth0");
    let p = format!("nsenter --net={ns} ip");
    FakeRunner::default()
        .answer("ip -j link show", &json!([{"ifname": h, "address": HOST_MAC, "flags": ["UP"]}]).to_string())
        .answer(&format!("{p} -j link show"), &json!([{"ifname": "eth0", "address": POD_MAC, "flags": ["UP"]}]).to_string())
        .answer(
            &format!("{p} -j addr show dev eth0"),
            &json!([{"ifname": "eth0", "addr_info": [{"family": "inet", "local": "10.200.1.20", "prefixlen": 32}]}]).to_string(),
        )
        .answer(
            &format!("{p} -4 -j route show dev eth0"),
            &json!([{"dst": "default", "gateway": "169.254.1.1", "flags": []}, {"dst": "169.254.1.1", "scope": "link", "flags": []}]).to_string(),
        )
        .answer(
            &format!("{p} -j neigh show dev eth0"),
            &json!([{"dst": "169.254.1.1", "lladdr": HOST_MAC, "state": ["PERMANENT"]}]).to_string(),
        )
        .answer(&format!("ip -4 -j route show dev {h}"), &json!([{"dst": "10.200.1.20", "scope": "link"}]).to_string())
}

fn known_endpoint(req: &AgentRequest) -> Result<AgentResponse, crate::agent::AgentError> {
    match req {
        AgentRequest::EndpointGet {
            container_id,
            ifname,
        } => Ok(AgentResponse::Endpoint {
            spec: palisade_api::agent::EndpointSpec {
                container_id: container_id.clone(),
                ifname: ifname.clone(),
                netns: String::new(),
                host_iface: host_iface_name(container_id, ifname),
                pod_namespace: "prod".into(),
                pod_name: "api-0".into(),
                labels: Default::default(),
                service_account: None,
                ips: vec!["10.200.1.20".parse().unwrap()],
                ports: vec![],
                from_pod_record: false,
                pod_uid: None,
            },
            endpoint_id: 1,
            identity: 1000,
        }),
        other => crate::test_util::healthy(other),
    }
}

#[test]
fn check_passes_on_an_intact_attachment() {
    let f = fake_netns();
    let ns = f.path().to_str().unwrap();
    let agent = ScriptedAgent::with(known_endpoint);
    check(
        &conf(json!({"prevResult": prev(ns)})),
        &attachment(ns, ""),
        &intact(ns),
        &agent,
    )
    .unwrap();
    assert_eq!(agent.ops(), ["endpointGet"]);
}

#[test]
fn check_names_what_differs() {
    let f = fake_netns();
    let ns = f.path().to_str().unwrap();
    let h = host_iface_name("c1", "eth0");
    let p = format!("nsenter --net={ns} ip");
    let cases: Vec<(FakeRunner, &str)> = vec![
        (
            intact(ns).answer(&format!("{p} -j link show"), "[]"),
            "interface `eth0` is missing",
        ),
        (intact(ns).answer("ip -j link show", "[]"), "host interface"),
        (
            intact(ns).answer(&format!("{p} -j addr show dev eth0"), "[]"),
            "address 10.200.1.20/32 is missing",
        ),
        (
            intact(ns).answer(
                &format!("{p} -4 -j route show dev eth0"),
                &json!([{"dst": "169.254.1.1", "scope": "link"}]).to_string(),
            ),
            "route 0.0.0.0/0 via 169.254.1.1",
        ),
        (
            intact(ns).answer(&format!("{p} -j neigh show dev eth0"), "[]"),
            "permanent neighbour 169.254.1.1",
        ),
        (
            intact(ns).answer(&format!("ip -4 -j route show dev {h}"), "[]"),
            "node route 10.200.1.20/32",
        ),
        (
            intact(ns).answer(
                &format!("{p} -j link show"),
                &json!([{"ifname": "eth0", "address": POD_MAC, "flags": []}]).to_string(),
            ),
            "is down",
        ),
    ];
    for (r, want) in cases {
        let e = check(
            &conf(json!({"prevResult": prev(ns)})),
            &attachment(ns, ""),
            &r,
            &ScriptedAgent::with(known_endpoint),
        )
        .unwrap_err();
        assert_eq!(e.code(), 102, "{e}");
        assert!(e.to_string().contains(want), "{e} / {want}");
    }
    // The agent does not know the endpoint: its code.
    let agent = ScriptedAgent::with(|req| Err(refused(req, 3, "unknown endpoint")));
    let e = check(
        &conf(json!({"prevResult": prev(ns)})),
        &attachment(ns, ""),
        &intact(ns),
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 3);
}

#[test]
fn check_needs_0_4_0_a_prev_result_and_the_netns() {
    let f = fake_netns();
    let ns = f.path().to_str().unwrap();
    let agent = ScriptedAgent::with(known_endpoint);
    let e = check(
        &conf(json!({"cniVersion": "0.3.1", "prevResult": prev(ns)})),
        &attachment(ns, ""),
        &intact(ns),
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 1);
    let e = check(&conf(json!({})), &attachment(ns, ""), &intact(ns), &agent).unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.to_string().contains("`prevResult`"), "{e}");
    let e = check(
        &conf(json!({"prevResult": prev(ns)})),
        &attachment("/run/netns/nope-pcni", ""),
        &intact(ns),
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 3);
    let mut other = prev(ns);
    other["interfaces"][1]["sandbox"] = json!("/elsewhere");
    let e = check(
        &conf(json!({"prevResult": other})),
        &attachment(ns, ""),
        &intact(ns),
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 102);
    assert!(agent.ops().is_empty());
}
