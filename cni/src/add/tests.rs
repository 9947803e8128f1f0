use serde_json::json;

use super::*;
use crate::test_util::{FakeRunner, ScriptedAgent, attachment, conf, fake_netns, refused};

const HOST_MAC: &str = "02:00:00:00:00:01";
const POD_MAC: &str = "02:00:00:00:00:02";

fn links_json(name: &str, mac: &str) -> String {
    json!([{"ifname": name, "address": mac, "flags": ["BROADCAST", "UP"]}]).to_string()
}

/// A runner whose MAC queries answer.
fn runner(ns: &str) -> FakeRunner {
    let h = host_iface_name("c1", "eth0");
    FakeRunner::default()
        .answer(
            &format!("ip -j link show dev {h}"),
            &links_json(&h, HOST_MAC),
        )
        .answer(
            &format!("nsenter --net={ns} ip -j link show dev eth0"),
            &links_json("eth0", POD_MAC),
        )
}

fn expected_commands(ns: &str, ip: &str) -> Vec<String> {
    let h = host_iface_name("c1", "eth0");
    vec![
        "ip -j link show".to_string(),
        format!("nsenter --net={ns} ip -j link show"),
        format!("ip link add {h} mtu 1500 type veth peer name eth0 mtu 1500 netns {ns}"),
        format!("ip -j link show dev {h}"),
        format!("ip -batch - <<< link set {h} up; route add {ip}/32 dev {h}"),
        format!(
            "nsenter --net={ns} ip -batch - <<< addr add {ip}/32 dev eth0; link set eth0 up; \
             route add 169.254.1.1 dev eth0 scope link; route add default via 169.254.1.1 dev eth0; \
             neigh replace 169.254.1.1 lladdr {HOST_MAC} dev eth0 nud permanent"
        ),
        format!("nsenter --net={ns} ip -j link show dev eth0"),
    ]
}

#[test]
fn add_runs_the_exact_sequence_and_registers_the_endpoint() {
    let ns_file = fake_netns();
    let ns = ns_file.path().to_str().unwrap();
    let r = runner(ns);
    let agent = ScriptedAgent::healthy();
    let c = conf(
        json!({"args": {"cni": {"labels": [{"key": "app", "value": "api"}], "serviceAccount": "api"}}}),
    );
    let result = add(&c, &attachment(ns, ""), &r, &agent).unwrap();
    assert_eq!(r.commands(), expected_commands(ns, "10.200.1.20"));
    assert_eq!(agent.ops(), ["ipamAllocate", "endpointAdd"]);
    let h = host_iface_name("c1", "eth0");
    let log = agent.log.borrow();
    let AgentRequest::EndpointAdd(spec) = &log[1] else {
        panic!("{log:?}")
    };
    assert_eq!(spec.host_iface, h);
    assert_eq!(
        (spec.pod_namespace.as_str(), spec.pod_name.as_str()),
        ("prod", "api-0")
    );
    assert_eq!(spec.labels.get("app").map(String::as_str), Some("api"));
    assert_eq!(spec.service_account.as_deref(), Some("api"));
    assert!(
        !spec.from_pod_record,
        "labels given: the Pod record is not consulted"
    );
    assert_eq!(spec.netns, ns);
    assert_eq!(spec.ips, vec!["10.200.1.20".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        serde_json::to_value(&result).unwrap(),
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": h, "mac": HOST_MAC}, {"name": "eth0", "mac": POD_MAC, "sandbox": ns}],
            "ips": [{"address": "10.200.1.20/32", "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {}
        })
    );
}

#[test]
fn without_labels_the_agent_is_told_to_read_the_pod_record() {
    // A kubelet's ADD: no `args.cni` at all, the pod named in CNI_ARGS only.
    let ns_file = fake_netns();
    let ns = ns_file.path().to_str().unwrap();
    let (r, agent) = (runner(ns), ScriptedAgent::healthy());
    add(
        &conf(json!({})),
        &attachment(ns, "K8S_POD_UID=7f0c-uid"),
        &r,
        &agent,
    )
    .unwrap();
    let log = agent.log.borrow();
    let AgentRequest::EndpointAdd(spec) = &log[1] else {
        panic!("{log:?}")
    };
    assert!(spec.from_pod_record && spec.labels.is_empty(), "{spec:?}");
    assert_eq!(
        spec.pod_uid.as_deref(),
        Some("7f0c-uid"),
        "the record's uid is checked"
    );
    assert_eq!(
        (spec.pod_namespace.as_str(), spec.pod_name.as_str()),
        ("prod", "api-0")
    );
}

#[test]
fn requested_address_comes_from_cni_args_or_args_cni_ips() {
    let ns_file = fake_netns();
    let ns = ns_file.path().to_str().unwrap();
    for (cni_args, ips) in [
        ("IP=10.200.1.99", json!([])),
        ("", json!(["10.200.1.99"])),
        ("IP=10.200.1.99", json!(["10.200.1.99"])),
    ] {
        let (r, agent) = (runner(ns), ScriptedAgent::healthy());
        add(
            &conf(json!({"args": {"cni": {"ips": ips}}})),
            &attachment(ns, cni_args),
            &r,
            &agent,
        )
        .unwrap();
        let log = agent.log.borrow();
        assert!(
            matches!(&log[0], AgentRequest::IpamAllocate { requested: Some(ip), .. } if ip.to_string() == "10.200.1.99"),
            "{log:?}"
        );
        assert_eq!(r.commands(), expected_commands(ns, "10.200.1.99"));
    }
    // Two different addresses: refused before anything happens.
    let (r, agent) = (runner(ns), ScriptedAgent::healthy());
    let e = add(
        &conf(json!({"args": {"cni": {"ips": ["10.200.1.98"]}}})),
        &attachment(ns, "IP=10.200.1.99"),
        &r,
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 7);
    assert!(e.to_string().contains("`args.cni.ips`"), "{e}");
    assert!(r.commands().is_empty() && agent.ops().is_empty());
    // The agent gives another address than asked: released, nothing built.
    let (r, agent) = (
        runner(ns),
        ScriptedAgent::with(|req| match req {
            AgentRequest::IpamAllocate { .. } => Ok(AgentResponse::IpamAllocated {
                ip: "10.200.1.5".parse().unwrap(),
                prefix: 32,
                gateway: "169.254.1.1".parse().unwrap(),
            }),
            other => crate::test_util::healthy(other),
        }),
    );
    let e = add(
        &conf(json!({})),
        &attachment(ns, "IP=10.200.1.99"),
        &r,
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 101, "{e}");
    assert_eq!(agent.ops(), ["ipamAllocate", "ipamRelease"]);
    assert_eq!(r.commands().len(), 2, "only the two existence checks ran");
}

#[test]
fn endpoint_add_refused_undoes_the_veth_and_releases_the_address() {
    let ns_file = fake_netns();
    let ns = ns_file.path().to_str().unwrap();
    let r = runner(ns);
    let agent = ScriptedAgent::with(|req| match req {
        AgentRequest::EndpointAdd(_) => Err(refused(req, 104, "identity allocation failed")),
        other => crate::test_util::healthy(other),
    });
    let e = add(&conf(json!({})), &attachment(ns, ""), &r, &agent).unwrap_err();
    assert_eq!(e.code(), 104);
    assert!(e.to_string().contains("identity allocation failed"), "{e}");
    let mut want = expected_commands(ns, "10.200.1.20");
    want.push(format!("ip link del {}", host_iface_name("c1", "eth0")));
    assert_eq!(r.commands(), want);
    assert_eq!(
        agent.ops(),
        ["ipamAllocate", "endpointAdd", "endpointDel", "ipamRelease"]
    );
}

#[test]
fn a_failed_command_undoes_the_veth_and_releases_the_address() {
    let ns_file = fake_netns();
    let ns = ns_file.path().to_str().unwrap();
    let r = runner(ns).fail(
        &format!("nsenter --net={ns} ip -batch -"),
        "RTNETLINK answers: File exists",
    );
    let agent = ScriptedAgent::healthy();
    let e = add(&conf(json!({})), &attachment(ns, ""), &r, &agent).unwrap_err();
    assert_eq!(e.code(), 100);
    assert!(
        e.to_string().contains("RTNETLINK answers: File exists"),
        "{e}"
    );
    let cmds = r.commands();
    assert_eq!(
        cmds.last().unwrap(),
        &format!("ip link del {}", host_iface_name("c1", "eth0"))
    );
    assert_eq!(agent.ops(), ["ipamAllocate", "ipamRelease"]);
    // A failed veth creation deletes nothing (it made nothing), but releases.
    let h = host_iface_name("c1", "eth0");
    let r = runner(ns).fail(
        &format!("ip link add {h} mtu 1500 type veth peer name eth0 mtu 1500 netns {ns}"),
        "boom",
    );
    let agent = ScriptedAgent::healthy();
    assert_eq!(
        add(&conf(json!({})), &attachment(ns, ""), &r, &agent)
            .unwrap_err()
            .code(),
        100
    );
    assert!(!r.commands().iter().any(|c| c.contains("link del")));
    assert_eq!(agent.ops(), ["ipamAllocate", "ipamRelease"]);
}

#[test]
fn refusals_before_allocation_touch_nothing() {
    let ns_file = fake_netns();
    let ns = ns_file.path().to_str().unwrap();
    let h = host_iface_name("c1", "eth0");
    // Host side exists already.
    let r = runner(ns).answer("ip -j link show", &links_json(&h, HOST_MAC));
    let agent = ScriptedAgent::healthy();
    let e = add(&conf(json!({})), &attachment(ns, ""), &r, &agent).unwrap_err();
    assert_eq!(e.code(), 103);
    assert!(e.to_string().contains(&h), "{e}");
    assert!(agent.ops().is_empty());
    // CNI_IFNAME exists in the pod.
    let r = runner(ns).answer(
        &format!("nsenter --net={ns} ip -j link show"),
        &links_json("eth0", POD_MAC),
    );
    let e = add(&conf(json!({})), &attachment(ns, ""), &r, &agent).unwrap_err();
    assert_eq!(e.code(), 103);
    assert!(e.to_string().contains("`eth0`"), "{e}");
    assert_eq!(r.commands().len(), 2);
    // No such netns.
    let r = runner(ns);
    let e = add(
        &conf(json!({})),
        &attachment("/run/netns/does-not-exist-pcni", ""),
        &r,
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 3);
    assert!(e.to_string().contains("`CNI_NETNS`"), "{e}");
    // No pod namespace / name.
    let mut att = attachment(ns, "");
    att.args.pod_namespace = None;
    let e = add(&conf(json!({})), &att, &r, &agent).unwrap_err();
    assert_eq!(e.code(), 4);
    assert!(e.to_string().contains("`K8S_POD_NAMESPACE`"), "{e}");
    // ADD after another plugin.
    let e = add(
        &conf(json!({"prevResult": {"cniVersion": "1.0.0"}})),
        &attachment(ns, ""),
        &r,
        &agent,
    )
    .unwrap_err();
    assert_eq!(e.code(), 2);
    assert!(e.to_string().contains("`prevResult`"), "{e}");
    assert!(r.commands().is_empty() && agent.ops().is_empty());
    // The agent is down: code 11, nothing built.
    let down = ScriptedAgent::with(|_| {
        Err(crate::agent::AgentError::Unreachable {
            socket: "/run/palisade/agent.sock".into(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    });
    let e = add(&conf(json!({})), &attachment(ns, ""), &r, &down).unwrap_err();
    assert_eq!(e.code(), 11);
    assert!(e.to_string().contains("`agentSocket`"), "{e}");
    assert_eq!(r.commands().len(), 2);
    assert_eq!(down.ops(), ["ipamAllocate"]);
}

#[test]
fn run_wires_env_stdin_and_version() {
    use std::ffi::OsString;

    use crate::env::CniEnv;

    let env = |cmd: &str| {
        CniEnv::from_lookup(|k| match k {
            "CNI_COMMAND" => Some(OsString::from(cmd)),
            _ => None,
        })
    };
    let agent_at = |_: &std::path::Path| ScriptedAgent::healthy();
    let out = crate::run(
        env("VERSION"),
        Ok(b"{}".to_vec()),
        &FakeRunner::default(),
        agent_at,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
    );
    let e = crate::run(
        env("ADD"),
        Ok(br#"{"cniVersion":"0.4.0"}"#.to_vec()),
        &FakeRunner::default(),
        agent_at,
    )
    .unwrap_err();
    assert_eq!((e.code, e.cni_version.as_str()), (4, "0.4.0"));
    assert!(e.msg.contains("`CNI_CONTAINERID`"), "{}", e.msg);
    let e = crate::run(
        env("ADD"),
        Err(std::io::Error::other("eof")),
        &FakeRunner::default(),
        agent_at,
    )
    .unwrap_err();
    assert_eq!(e.code, 4, "env errors come first");
    let e = crate::run(
        env("bogus"),
        Ok(Vec::new()),
        &FakeRunner::default(),
        agent_at,
    )
    .unwrap_err();
    assert_eq!((e.code, e.cni_version.as_str()), (4, "1.0.0"));
}

#[test]
fn nonsense_allocations_are_released_and_refused() {
    let ns_file = fake_netns();
    let ns = ns_file.path().to_str().unwrap();
    let answers: Vec<(AgentResponse, &str)> = vec![
        (
            AgentResponse::IpamAllocated {
                ip: "10.200.1.5".parse().unwrap(),
                prefix: 24,
                gateway: "169.254.1.1".parse().unwrap(),
            },
            "prefix /24",
        ),
        (
            AgentResponse::IpamAllocated {
                ip: "10.200.1.5".parse().unwrap(),
                prefix: 32,
                gateway: "fe80::1".parse().unwrap(),
            },
            "different families",
        ),
        (AgentResponse::Done, "expected ipamAllocated"),
    ];
    for (answer, want) in answers {
        let r = runner(ns);
        let agent = ScriptedAgent::with(move |req| match req {
            AgentRequest::IpamAllocate { .. } => Ok(answer.clone()),
            other => crate::test_util::healthy(other),
        });
        let e = add(&conf(json!({})), &attachment(ns, ""), &r, &agent).unwrap_err();
        assert_eq!(e.code(), 101, "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(agent.ops(), ["ipamAllocate", "ipamRelease"]);
        assert_eq!(r.commands().len(), 2);
    }
}

#[test]
fn ipv6_allocations_use_the_same_plumbing() {
    let ns_file = fake_netns();
    let ns = ns_file.path().to_str().unwrap();
    let r = runner(ns);
    let agent = ScriptedAgent::with(|req| match req {
        AgentRequest::IpamAllocate { .. } => Ok(AgentResponse::IpamAllocated {
            ip: "fd00:200:1::14".parse().unwrap(),
            prefix: 128,
            gateway: "fe80::1".parse().unwrap(),
        }),
        other => crate::test_util::healthy(other),
    });
    let result = add(&conf(json!({})), &attachment(ns, ""), &r, &agent).unwrap();
    let h = host_iface_name("c1", "eth0");
    let cmds = r.commands();
    assert_eq!(
        cmds[4],
        format!("ip -batch - <<< link set {h} up; route add fd00:200:1::14/128 dev {h}")
    );
    assert_eq!(
        cmds[5],
        format!(
            "nsenter --net={ns} ip -batch - <<< addr add fd00:200:1::14/128 dev eth0; link set eth0 up; \
             route add fe80::1 dev eth0 scope link; route add default via fe80::1 dev eth0; \
             neigh replace fe80::1 lladdr {HOST_MAC} dev eth0 nud permanent"
        )
    );
    let v = serde_json::to_value(&result).unwrap();
    assert_eq!(v["ips"][0]["address"], "fd00:200:1::14/128");
    assert_eq!(v["routes"], json!([{"dst": "::/0", "gw": "fe80::1"}]));
}
