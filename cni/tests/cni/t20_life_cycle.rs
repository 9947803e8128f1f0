//! DEL is idempotent; CHECK verifies; a failed ADD leaves nothing behind.

use serde_json::json;

use crate::util::{Invocation, Netns, Node};

#[test]
fn del_twice_succeeds_and_removes_everything() {
    let node = Node::new(3);
    let pod = Netns::new("del");
    let conf = node.conf(json!({}));
    let r = node
        .cni(&Invocation::new("ADD", "ctr-del", &pod, &conf))
        .success();
    assert_eq!(node.veths().len(), 1);
    let mut del_conf = conf.clone();
    del_conf["prevResult"] = r;
    for _ in 0..2 {
        let reply = node.cni(&Invocation::new("DEL", "ctr-del", &pod, &del_conf));
        assert!(reply.ok, "{reply:?}");
        assert_eq!(reply.stdout, "", "DEL prints nothing on success");
    }
    assert!(node.veths().is_empty());
    assert_eq!(pod.links(), ["lo"]);
    let st = node.agent.state();
    assert!(
        st.allocations.is_empty() && st.endpoints.is_empty(),
        "{st:?}"
    );
    drop(st);
    // The pod's namespace gone and CNI_NETNS unset: still success.
    let path = pod.path();
    drop(pod);
    let mut inv = Invocation::new("DEL", "ctr-del", &Netns::new("tmp"), &conf);
    inv.netns = None;
    assert!(node.cni(&inv).ok);
    inv.netns = Some(path);
    assert!(node.cni(&inv).ok);
}

#[test]
fn check_passes_after_add_and_fails_after_the_pod_interface_is_deleted() {
    let node = Node::new(4);
    let pod = Netns::new("check");
    let conf = node.conf(json!({}));
    let r = node
        .cni(&Invocation::new("ADD", "ctr-chk", &pod, &conf))
        .success();
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r;
    let ok = node.cni(&Invocation::new("CHECK", "ctr-chk", &pod, &check_conf));
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.stdout, "");

    pod.ip(&["link", "del", "eth0"]);
    let (code, msg) = node
        .cni(&Invocation::new("CHECK", "ctr-chk", &pod, &check_conf))
        .failure();
    assert_eq!(code, 102, "{msg}");
    assert!(
        msg.contains(&format!(
            "interface `eth0` is missing from `{}`",
            pod.path()
        )),
        "{msg}"
    );

    // The agent forgetting the endpoint also fails CHECK (fresh attachment).
    let pod2 = Netns::new("check2");
    let r2 = node
        .cni(&Invocation::new("ADD", "ctr-chk2", &pod2, &conf))
        .success();
    node.agent.state().endpoints.clear();
    let mut c2 = conf.clone();
    c2["prevResult"] = r2;
    let (code, msg) = node
        .cni(&Invocation::new("CHECK", "ctr-chk2", &pod2, &c2))
        .failure();
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("unknown endpoint"), "{msg}");
    assert!(
        node.cni(&Invocation::new("DEL", "ctr-chk2", &pod2, &conf))
            .ok
    );
}

#[test]
fn add_failing_at_endpoint_add_leaves_no_veth_and_releases_the_ip() {
    let node = Node::new(5);
    node.agent.state().refuse_endpoint_add = Some((110, "policy store unavailable".into()));
    let pod = Netns::new("fail");
    let conf = node.conf(json!({}));
    let (code, msg) = node
        .cni(&Invocation::new("ADD", "ctr-fail", &pod, &conf))
        .failure();
    assert_eq!(code, 110, "{msg}");
    assert!(msg.contains("policy store unavailable"), "{msg}");
    assert!(node.veths().is_empty(), "{:?}", node.ns.links());
    assert_eq!(pod.links(), ["lo"]);
    assert_eq!(
        node.agent.ops(),
        ["ipamAllocate", "endpointAdd", "endpointDel", "ipamRelease"]
    );
    assert!(node.agent.state().allocations.is_empty());
    // The runtime's DEL after a failed ADD succeeds.
    assert!(
        node.cni(&Invocation::new("DEL", "ctr-fail", &pod, &conf))
            .ok
    );
}
