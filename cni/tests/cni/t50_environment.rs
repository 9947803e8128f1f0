//! Bad `CNI_*` environments: code 4 naming the variable (3 for a missing netns, 11 for a
//! missing agent socket), and nothing created.

use serde_json::json;

use crate::util::{Invocation, Netns, Node};

#[test]
fn bad_environments_are_refused_by_name() {
    let node = Node::new(6);
    let pod = Netns::new("env");
    let conf = node.conf(json!({}));
    let base = || Invocation::new("ADD", "ctr-env", &pod, &conf);

    let mut cases: Vec<(Invocation<'_>, u64, &str)> = Vec::new();
    let mut i = base();
    i.command = "";
    cases.push((i, 4, "`CNI_COMMAND`"));
    let mut i = base();
    i.command = "DESTROY";
    cases.push((i, 4, "`CNI_COMMAND` = `DESTROY`"));
    let mut i = base();
    i.container = None;
    cases.push((i, 4, "`CNI_CONTAINERID` is required"));
    let mut i = base();
    i.container = Some("bad id");
    cases.push((i, 4, "`CNI_CONTAINERID` = `bad id`"));
    let mut i = base();
    i.netns = None;
    cases.push((i, 4, "`CNI_NETNS` is required"));
    let mut i = base();
    i.ifname = None;
    cases.push((i, 4, "`CNI_IFNAME` is required"));
    let mut i = base();
    i.ifname = Some("much-too-long-name");
    cases.push((i, 4, "`CNI_IFNAME` = `much-too-long-name`"));
    let mut i = base();
    i.args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;FOO=bar";
    cases.push((i, 4, "`FOO`"));
    let mut i = base();
    i.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;IP=10.200.6.300";
    cases.push((i, 4, "`IP` = `10.200.6.300`"));
    let mut i = base();
    i.args = "IgnoreUnknown=1;K8S_POD_NAME=a";
    cases.push((i, 4, "`K8S_POD_NAMESPACE`"));
    let mut i = base();
    i.netns = Some("/run/netns/pcni-does-not-exist".into());
    cases.push((i, 3, "`CNI_NETNS` = `/run/netns/pcni-does-not-exist`"));
    let missing = node.conf(json!({"agentSocket": "/run/palisade/pcni-no-such-agent.sock"}));
    let mut i = base();
    i.stdin = missing.to_string();
    cases.push((
        i,
        11,
        "`agentSocket` = `/run/palisade/pcni-no-such-agent.sock`",
    ));

    for (inv, want_code, want_msg) in &cases {
        let (code, msg) = node.cni(inv).failure();
        assert_eq!(code, *want_code, "{msg}");
        assert!(
            msg.contains(want_msg),
            "{msg:?} should contain {want_msg:?}"
        );
        assert!(node.veths().is_empty(), "{msg}: left {:?}", node.ns.links());
        assert_eq!(pod.links(), ["lo"], "{msg}");
    }
    // Unknown keys are fine with IgnoreUnknown=1, as kubelet sends them.
    let mut i = base();
    i.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;K8S_POD_UID=u;FOO=bar";
    node.cni(&i).success();
    assert!(node.cni(&Invocation::new("DEL", "ctr-env", &pod, &conf)).ok);
    assert!(node.agent.state().allocations.is_empty());
}

#[test]
fn add_on_an_existing_interface_is_refused_and_keeps_it() {
    let node = Node::new(7);
    let pod = Netns::new("dup");
    let conf = node.conf(json!({}));
    node.cni(&Invocation::new("ADD", "ctr-dup", &pod, &conf))
        .success();
    // A second ADD of another container into the same pod and ifname.
    let (code, msg) = node
        .cni(&Invocation::new("ADD", "ctr-dup2", &pod, &conf))
        .failure();
    assert_eq!(code, 103, "{msg}");
    assert!(msg.contains("`eth0`"), "{msg}");
    assert_eq!(node.veths().len(), 1);
    assert_eq!(
        node.agent.state().allocations.len(),
        1,
        "nothing allocated for the refused ADD"
    );
    assert!(node.cni(&Invocation::new("DEL", "ctr-dup", &pod, &conf)).ok);
}
