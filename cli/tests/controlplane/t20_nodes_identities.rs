//! `policy wait` against node acknowledgements, `node list`, `identity list|get` and
//! `cluster status`, with nodes and identities created through the client library as an agent
//! would.

use palisade_api::controlplane::NodeRegistration;
use serde_json::Value;

use crate::fixture::ControlPlane;
use crate::t10_policy::OTHER;

const WG_KEY: &str = "YJ6Zl2CQxkVa9X8YpX6Hx2bX0pQb1V8B3Qm5cS0xHh0=";

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn wait_follows_the_nodes_acknowledgements() {
    let cp = ControlPlane::start("wait");
    // No node: nothing to wait for.
    let out = cp.palisade(&["policy", "wait", "--timeout", "5s"]);
    assert!(
        out.ok()
            .contains("acknowledged by every live node (0 live)"),
        "{out:?}"
    );
    cp.palisade_stdin(&["policy", "apply", "-f", "-"], Some(OTHER))
        .ok();

    let client = cp.client();
    let node = client
        .register_node(&NodeRegistration {
            name: "node-a".into(),
            address: "192.0.2.10".parse().expect("ip"),
            wireguard_public_key: WG_KEY.into(),
            wireguard_epoch: 7,
            pod_cidr: None,
        })
        .expect("register");
    // A registered node that acknowledged nothing holds the wait up.
    let out = cp.palisade(&["policy", "wait", "--timeout", "1s"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout
            .contains("1 live node(s) have not acknowledged policy revision 1"),
        "{out:?}"
    );
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.starts_with("node-a"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(row, ["node-a", "0"], "{out:?}");
    let doc = json(
        &cp.palisade(&["policy", "wait", "--timeout", "1s", "-o", "json"])
            .stdout,
    );
    assert_eq!(doc["laggards"][0]["node"], "node-a", "{doc}");
    assert_eq!(doc["done"], false, "{doc}");

    assert_eq!(client.ack("node-a", 1).expect("ack"), 1);
    let out = cp.palisade(&["policy", "wait", "--timeout", "5s"]);
    assert!(
        out.ok()
            .contains("policy revision 1 acknowledged by every live node (1 live)"),
        "{out:?}"
    );
    // An explicit revision ahead of the acknowledgement times out again.
    let out = cp.palisade(&["policy", "wait", "--revision", "2", "--timeout", "300ms"]);
    assert_eq!(out.code, Some(1), "{out:?}");

    // node list: table and JSON.
    let out = cp.palisade(&["node", "list"]);
    let lines: Vec<&str> = out.ok().lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out:?}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..6],
        [
            "node-a",
            "192.0.2.10",
            &node.pod_cidr.to_string(),
            "7",
            "1",
            "yes"
        ],
        "{out:?}"
    );
    let list = json(cp.palisade(&["node", "list", "-o", "json"]).ok());
    assert_eq!(list["items"][0]["name"], "node-a");
    assert_eq!(list["items"][0]["acked_revision"], 1);
    assert_eq!(list["items"][0]["live"], true);
    let one = json(cp.palisade(&["node", "get", "node-a", "-o", "json"]).ok());
    assert_eq!(one["wireguard_epoch"], 7);
    assert!(
        cp.palisade(&["node", "get", "nope"])
            .error_line(2)
            .contains("node `nope` not found")
    );
}

#[test]
fn identities_and_cluster_status() {
    let cp = ControlPlane::start("ident");
    let client = cp.client();
    let web = client
        .allocate_identity(&[
            "k8s:app=web".into(),
            "k8s:io.kubernetes.pod.namespace=prod".into(),
        ])
        .expect("allocate");
    // The same labels, in another order, are the same identity.
    let again = client
        .allocate_identity(&[
            "k8s:io.kubernetes.pod.namespace=prod".into(),
            "k8s:app=web".into(),
        ])
        .expect("allocate");
    assert_eq!(again.id, web.id);
    let id = web.id.to_string();

    let out = cp.palisade(&["identity", "list"]);
    let row: Vec<&str> = out
        .ok()
        .lines()
        .find(|l| l.starts_with(&id))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        row[..2],
        [
            id.as_str(),
            "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod"
        ],
        "{out:?}"
    );
    let got = json(cp.palisade(&["identity", "get", &id, "-o", "json"]).ok());
    assert_eq!(got["id"], web.id);
    assert_eq!(got["labels"][0], "k8s:app=web");
    let yaml: Value =
        serde_yaml::from_str(cp.palisade(&["identity", "list", "-o", "yaml"]).ok()).expect("YAML");
    assert_eq!(yaml["items"][0]["id"], web.id);
    assert!(
        cp.palisade(&["identity", "get", "4000000"])
            .error_line(2)
            .contains("identity 4000000 not found")
    );

    // cluster status: this single voter leads, with no lag.
    let out = cp.palisade(&["cluster", "status"]);
    let text = out.ok();
    assert!(text.contains("Member:          1 (leader)"), "{text}");
    let api = cp.url.trim_start_matches("http://");
    assert!(
        text.contains(&format!("Leader:          1 (API {api})")),
        "{text}"
    );
    let voter: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("voter"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!((voter[1], voter[3], voter[5]), ("1", api, "0"), "{text}");
    let s = json(cp.palisade(&["cluster", "status", "-o", "json"]).ok());
    assert_eq!(s["state"], "leader");
    assert_eq!(s["leader"], 1);
}
