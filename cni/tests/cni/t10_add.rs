//! ADD builds a pod that reaches the node and other pods, with the result the spec asks for.

use std::net::SocketAddr;

use serde_json::json;

use crate::util::{Invocation, NODE_IP, Netns, Node, ping, result_ip, udp_echo, udp_roundtrip};

#[test]
fn add_gives_pods_that_reach_the_node_and_each_other() {
    let node = Node::new(1);
    let (p1, p2) = (Netns::new("p1"), Netns::new("p2"));
    let conf = node.conf(json!({
        "args": {"cni": {"labels": [{"key": "app", "value": "api"}], "serviceAccount": "api"}}
    }));
    let r1 = node
        .cni(&Invocation::new("ADD", "ctr1", &p1, &conf))
        .success();
    let r2 = node
        .cni(&Invocation::new("ADD", "ctr2", &p2, &conf))
        .success();

    // The result: host veth then pod interface with the real MACs, /32, gateway, route.
    let host1 = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(host1.starts_with("lxc") && host1.len() == 14, "{r1}");
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["interfaces"][1]["sandbox"], p1.path());
    assert!(r1["interfaces"][0].get("sandbox").is_none(), "{r1}");
    let pod_link: serde_json::Value =
        serde_json::from_str(&p1.ip(&["-j", "link", "show", "dev", "eth0"])).unwrap();
    assert_eq!(r1["interfaces"][1]["mac"], pod_link[0]["address"]);
    assert_eq!(pod_link[0]["mtu"], 1500);
    let host_link: serde_json::Value =
        serde_json::from_str(&node.ns.ip(&["-j", "link", "show", "dev", &host1])).unwrap();
    assert_eq!(r1["interfaces"][0]["mac"], host_link[0]["address"]);
    assert_eq!(r1["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert!(r1["ips"][0]["address"].as_str().unwrap().ends_with("/32"));
    assert_eq!(
        r1["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    assert_eq!(r1["dns"], json!({}));
    let (ip1, ip2) = (result_ip(&r1), result_ip(&r2));
    assert_ne!(ip1, ip2);
    assert_eq!(node.veths().len(), 2);

    // The agent saw the endpoint with its pod, labels and service account.
    {
        let st = node.agent.state();
        let ep = st
            .endpoints
            .get(&("ctr1".to_string(), "eth0".to_string()))
            .expect("endpoint");
        assert_eq!(
            (ep.pod_namespace.as_str(), ep.pod_name.as_str()),
            ("default", "ctr1")
        );
        assert_eq!(ep.labels.get("app").map(String::as_str), Some("api"));
        assert_eq!(ep.service_account.as_deref(), Some("api"));
        assert_eq!(ep.host_iface, host1);
        assert_eq!(ep.netns, p1.path());
        assert_eq!(ep.ips, vec![std::net::IpAddr::V4(ip1)]);
    }

    // Pod -> node: ICMP and UDP.
    assert!(ping(&p1.path(), NODE_IP), "pod 1 cannot ping the node");
    let node_udp = SocketAddr::from((NODE_IP, 7001));
    let server = udp_echo(&node.ns.path(), node_udp);
    assert!(udp_roundtrip(&p1.path(), node_udp), "pod 1 -> node UDP");
    drop(server);

    // Pod -> pod, through the node's namespace: ICMP both ways, UDP.
    assert!(ping(&p1.path(), ip2), "pod 1 cannot ping pod 2");
    assert!(ping(&p2.path(), ip1), "pod 2 cannot ping pod 1");
    let pod_udp = SocketAddr::from((ip1, 7002));
    let server = udp_echo(&p1.path(), pod_udp);
    assert!(udp_roundtrip(&p2.path(), pod_udp), "pod 2 -> pod 1 UDP");
    drop(server);

    // Negative controls: the probes do fail when there is no path. After pod 2's DEL, pod 1
    // can no longer reach it, and nothing answers UDP where no server listens.
    assert!(node.cni(&Invocation::new("DEL", "ctr2", &p2, &conf)).ok);
    assert!(!ping(&p1.path(), ip2), "pod 2 still answers after DEL");
    assert!(!udp_roundtrip(
        &p1.path(),
        SocketAddr::from((NODE_IP, 7003))
    ));
    assert!(node.cni(&Invocation::new("DEL", "ctr1", &p1, &conf)).ok);
    assert!(node.veths().is_empty());
}

#[test]
fn add_with_ip_arg_gets_that_address() {
    let node = Node::new(2);
    let pod = Netns::new("ip");
    let conf = node.conf(json!({}));
    let mut inv = Invocation::new("ADD", "ctr-ip", &pod, &conf);
    inv.args = "IgnoreUnknown=1;IP=10.200.2.77;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0";
    let r = node.cni(&inv).success();
    assert_eq!(r["ips"][0]["address"], "10.200.2.77/32");
    let addrs = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("10.200.2.77/32"), "{addrs}");
    let routes = pod.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    let neigh = pod.ip(&["neigh", "show", "dev", "eth0"]);
    assert!(
        neigh.contains("169.254.1.1") && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let host_routes = node.ns.ip(&["route", "show"]);
    assert!(
        host_routes.contains(&format!(
            "10.200.2.77 dev {}",
            r["interfaces"][0]["name"].as_str().unwrap()
        )),
        "{host_routes}"
    );
    assert!(ping(&pod.path(), crate::util::NODE_IP));

    // The same address from args.cni.ips, for a second pod: the agent refuses (in use), and
    // nothing is left behind.
    let pod2 = Netns::new("ip2");
    let conf2 = node.conf(json!({"args": {"cni": {"ips": ["10.200.2.77"]}}}));
    let (code, msg) = node
        .cni(&Invocation::new("ADD", "ctr-ip2", &pod2, &conf2))
        .failure();
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("in use"), "{msg}");
    assert_eq!(node.veths().len(), 1);
    assert_eq!(pod2.links(), ["lo"]);
}

#[test]
fn add_accepts_a_proc_pid_netns_path() {
    use std::os::unix::fs::MetadataExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    // Some runtimes pass the namespace of the sandbox's process, not a bind mount.
    let node = Node::new(10);
    let pod = Netns::new("proc");
    /// Kills and reaps the process when dropped, also when the test panics.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Reaped(
        Command::new("ip")
            .args(["netns", "exec", &pod.name, "sleep", "30"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep in the pod"),
    );
    let proc_path = format!("/proc/{}/ns/net", child.0.id());
    let want = std::fs::metadata(pod.path()).expect("netns").ino();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&proc_path).map(|m| m.ino()).ok() != Some(want) {
        assert!(Instant::now() < deadline, "the child never entered the pod");
        std::thread::sleep(Duration::from_millis(20));
    }
    let conf = node.conf(json!({}));
    let mut inv = Invocation::new("ADD", "ctr-proc", &pod, &conf);
    inv.netns = Some(proc_path.clone());
    let r = node.cni(&inv).success();
    assert_eq!(r["interfaces"][1]["sandbox"], proc_path);
    assert!(ping(&pod.path(), NODE_IP));
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r;
    let mut check = Invocation::new("CHECK", "ctr-proc", &pod, &check_conf);
    check.netns = Some(proc_path.clone());
    assert!(node.cni(&check).ok);
    inv.command = "DEL";
    assert!(node.cni(&inv).ok);
    assert!(node.veths().is_empty());
    drop(child);
}
