//! Bad network configs (codes 1, 2, 6, 7 naming the field) and VERSION.

use serde_json::json;

use crate::util::{Invocation, Netns, Node};

#[test]
fn version_reports_the_supported_versions() {
    let node = Node::new(8);
    let pod = Netns::new("ver");
    let mut inv = Invocation::new("VERSION", "x", &pod, &json!({"cniVersion": "1.0.0"}));
    inv.container = None;
    inv.netns = None;
    inv.ifname = None;
    let r = node.cni(&inv);
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.stdout.trim(),
        r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
    );
}

#[test]
fn bad_configs_are_refused_by_field_and_touch_nothing() {
    let node = Node::new(9);
    let pod = Netns::new("conf");
    let conf = |extra| node.conf(extra);
    let cases: Vec<(String, u64, &str)> = vec![
        ("not json".into(), 6, "cannot decode"),
        (String::new(), 6, "cannot decode"),
        (
            conf(json!({"cniVersion": "0.2.0"})).to_string(),
            1,
            "`cniVersion` = `0.2.0`",
        ),
        (
            conf(json!({"cniVersion": "2.0.0"})).to_string(),
            1,
            "`cniVersion` = `2.0.0`",
        ),
        (
            conf(json!({"ipam": {"type": "host-local"}})).to_string(),
            2,
            "`ipam`",
        ),
        (conf(json!({"mtu": 10})).to_string(), 7, "`mtu` = 10"),
        (conf(json!({"name": "bad name"})).to_string(), 7, "`name`"),
        (
            conf(json!({"agentSocket": "agent.sock"})).to_string(),
            7,
            "`agentSocket`",
        ),
        (
            conf(json!({"args": {"cni": {"ips": ["10.200.9.999"]}}})).to_string(),
            7,
            "`args.cni.ips[0]`",
        ),
        (
            conf(json!({"args": {"cni": {"labels": [{"key": "a b", "value": "x"}]}}})).to_string(),
            7,
            "`args.cni.labels[0].key`",
        ),
        (
            conf(json!({"args": {"cni": {"serviceAccount": "Not_Valid"}}})).to_string(),
            7,
            "`args.cni.serviceAccount`",
        ),
    ];
    for (stdin, want_code, want_msg) in &cases {
        let mut inv = Invocation::new("ADD", "ctr-conf", &pod, &json!({}));
        inv.stdin = stdin.clone();
        let (code, msg) = node.cni(&inv).failure();
        assert_eq!(code, *want_code, "{stdin}: {msg}");
        assert!(
            msg.contains(want_msg),
            "{msg:?} should contain {want_msg:?}"
        );
    }
    assert!(node.veths().is_empty());
    assert_eq!(pod.links(), ["lo"]);
    assert!(
        node.agent.ops().is_empty(),
        "no agent call for a bad config"
    );
    // CHECK in a version without CHECK.
    let mut inv = Invocation::new(
        "CHECK",
        "ctr-conf",
        &pod,
        &conf(json!({"cniVersion": "0.3.1", "prevResult": {}})),
    );
    inv.args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a";
    let (code, msg) = node.cni(&inv).failure();
    assert_eq!(code, 1, "{msg}");
    // An older version gets its result shape.
    let r = node
        .cni(&Invocation::new(
            "ADD",
            "ctr-old",
            &pod,
            &conf(json!({"cniVersion": "0.4.0"})),
        ))
        .success();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    assert!(
        node.cni(&Invocation::new(
            "DEL",
            "ctr-old",
            &pod,
            &conf(json!({"cniVersion": "0.4.0"}))
        ))
        .ok
    );
}
