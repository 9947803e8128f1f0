//! The client library's contract against the real daemon, beyond what the CLI exercises: the
//! calls a node agent makes (register, heartbeat, endpoints, watch, ack), a long poll longer
//! than the client's own timeout, and 410 after a restart as `ClientError::Compacted`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use palisade_api::controlplane::{Endpoint, NodeRegistration, PolicyKey};
use palisade_cp_client::{Client, ClientConfig, ClientError, WaitOutcome};
use serde_json::json;

use crate::fixture::ControlPlane;

const WG_KEY: &str = "YJ6Zl2CQxkVa9X8YpX6Hx2bX0pQb1V8B3Qm5cS0xHh0=";

#[test]
fn an_agents_calls_and_the_change_feed() {
    let mut cp = ControlPlane::start("client");
    // A short client timeout: long polls must still wait their own timeout on top of it.
    let client =
        Client::new(ClientConfig::new([cp.url.clone()]).with_timeout(Duration::from_millis(500)))
            .expect("client");
    let from = client.watch_revision().expect("revision");

    let node = client
        .register_node(&NodeRegistration {
            name: "node-b".into(),
            address: "192.0.2.11".parse().expect("ip"),
            wireguard_public_key: WG_KEY.into(),
            wireguard_epoch: 1,
            pod_cidr: None,
        })
        .expect("register");
    client.heartbeat("node-b").expect("heartbeat");
    let web = client
        .allocate_identity(&["k8s:app=web".into()])
        .expect("identity");
    let ip: IpAddr = "10.200.0.10".parse().expect("ip");
    let ep = Endpoint {
        ip,
        identity: web.id,
        node: node.name.clone(),
        ports: vec![palisade_api::agent::ContainerPort {
            name: "http".into(),
            container_port: 8080,
            protocol: "TCP".into(),
        }],
    };
    // Named ports are checked, the field named; nothing is stored.
    let mut bad = ep.clone();
    bad.ports[0].name = "HTTP".into();
    let err = client.put_endpoint(&bad).expect_err("a bad port name");
    assert!(err.to_string().contains("ports[0].name"), "{err}");
    assert_eq!(client.list_endpoints().expect("list"), vec![]);
    assert_eq!(client.put_endpoint(&ep).expect("endpoint"), ep);
    assert_eq!(client.list_endpoints().expect("list"), vec![ep.clone()]);
    assert_eq!(client.get_endpoint(ip).expect("get"), Some(ep));
    let out = cp.palisade(&["cluster", "endpoints"]);
    let row: Vec<&str> = out
        .ok()
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        row,
        ["10.200.0.10", web.id.to_string().as_str(), "node-b"],
        "{out:?}"
    );
    let key = PolicyKey {
        kind: "NetworkPolicy".into(),
        namespace: "default".into(),
        name: "deny".into(),
    };
    let object = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "default"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let applied = client.apply_policy(&key, &object).expect("apply");
    assert!(applied.changed);
    assert_eq!(
        client.get_policy(&key).expect("get").map(|p| p.object),
        Some(object)
    );

    // The feed has every change, in order (the endpoint also touches its identity, which is
    // no longer unreferenced); the last one carries the policy revision.
    let batch = client
        .watch(from, Duration::from_secs(5), 100)
        .expect("watch");
    let kinds: Vec<&str> = batch.changes.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["node", "node", "identity", "identity", "endpoint", "policy"],
        "{batch:?}"
    );
    assert_eq!(batch.policy_revision, applied.revision);
    assert_eq!(
        client.ack("node-b", batch.policy_revision).expect("ack"),
        applied.revision
    );
    assert_eq!(
        client
            .wait_policies(None, Duration::from_secs(5))
            .expect("wait"),
        WaitOutcome::Done {
            revision: applied.revision,
            nodes: 1
        }
    );

    // Nothing new: the long poll waits 1.5 s (three times the client timeout) and answers empty.
    let start = Instant::now();
    let empty = client
        .watch(batch.revision, Duration::from_millis(1500), 100)
        .expect("long poll");
    assert!(empty.changes.is_empty(), "{empty:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );

    // Removals answer whether something existed; absent records are `None`.
    assert!(client.delete_endpoint(ip).expect("delete"));
    assert!(!client.delete_endpoint(ip).expect("delete again"));
    assert_eq!(client.get_identity(4_000_000).expect("get"), None);
    assert!(client.delete_node("node-b").expect("delete node"));
    assert_eq!(client.get_node("node-b").expect("get node"), None);
    let gone = client.delete_policy(&key).expect("delete policy");
    assert!(gone.changed && gone.revision > applied.revision);
    assert_eq!(client.get_policy(&key).expect("get"), None);
    // A refusal is an Api error with the server's field.
    match client.allocate_identity(&["".into()]) {
        Err(ClientError::Api {
            status: 400, field, ..
        }) => {
            assert!(field.is_some_and(|f| f.starts_with("labels")));
        }
        other => panic!("{other:?}"),
    }

    // After a restart the member's feed starts afresh: older revisions are gone (410).
    cp.restart();
    match client.watch(from, Duration::from_millis(100), 10) {
        Err(ClientError::Compacted { from: f }) => assert_eq!(f, from),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // The resync recipe works: current revision, then watch from it.
    let now = client.watch_revision().expect("revision");
    assert!(client.watch(now, Duration::from_millis(100), 10).is_ok());
}
