//! The Kubernetes-compatible policy API on a three-member cluster, over raw HTTP: every member
//! answers the same object (uid, creation time, resource version: stored through Raft), writes
//! on followers keep their preconditions (create → 409 AlreadyExists, a stale update → 409
//! Conflict), an invalid object is a 422 `Status` naming the engine's field and writes
//! nothing, patches merge, unknown patch types are 415, and a watch on a follower streams a
//! write made on another member.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fixture::TestCluster;

const CNPS: &str = "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies";

fn cnp(name: &str, port: &str) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "labels": {"team": "a"}},
        "spec": {"endpointSelector": {"matchLabels": {"app": name}},
                 "ingress": [{"toPorts": [{"ports": [{"port": port, "protocol": "TCP"}]}]}]}})
}

async fn send(
    c: &TestCluster,
    method: reqwest::Method,
    id: u64,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = c.http.request(method, c.url(id, path));
    if let Some(b) = body {
        req = req.header("content-type", content_type).body(b.to_string());
    }
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_serves_the_same_objects_and_keeps_preconditions() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap_or(2);
    let json_ct = "application/json";

    // Create on a follower (forwarded to the leader).
    let (code, created) = send(
        &c,
        reqwest::Method::POST,
        follower,
        CNPS,
        json_ct,
        Some(&cnp("web", "80")),
    )
    .await?;
    assert_eq!(code, 201, "{created}");
    let uid = created["metadata"]["uid"].clone();
    let rv = created["metadata"]["resourceVersion"].clone();
    assert!(uid.is_string() && rv.is_string(), "{created}");
    for id in [1, 2, 3] {
        let (code, o) = send(
            &c,
            reqwest::Method::GET,
            id,
            &format!("{CNPS}/web"),
            json_ct,
            None,
        )
        .await?;
        assert_eq!(code, 200, "member {id}: {o}");
        assert_eq!(o["metadata"]["uid"], uid, "member {id}");
        assert_eq!(o["metadata"]["resourceVersion"], rv, "member {id}");
        assert_eq!(
            o["metadata"]["creationTimestamp"], created["metadata"]["creationTimestamp"],
            "member {id}"
        );
    }

    // A namespaced object has no cluster-scoped path.
    let (code, s) = send(
        &c,
        reqwest::Method::GET,
        leader,
        "/apis/cilium.io/v2/ciliumnetworkpolicies/web",
        json_ct,
        None,
    )
    .await?;
    assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")), "{s}");

    // Create again: AlreadyExists.
    let (code, s) = send(
        &c,
        reqwest::Method::POST,
        leader,
        CNPS,
        json_ct,
        Some(&cnp("web", "80")),
    )
    .await?;
    assert_eq!(
        (code, s["kind"].as_str(), s["reason"].as_str()),
        (409, Some("Status"), Some("AlreadyExists")),
        "{s}"
    );

    // Update with the current resource version, then with the stale one: Conflict.
    let mut update = created.clone();
    update["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!("81");
    let (code, u) = send(
        &c,
        reqwest::Method::PUT,
        follower,
        &format!("{CNPS}/web"),
        json_ct,
        Some(&update),
    )
    .await?;
    assert_eq!(code, 200, "{u}");
    assert_eq!(u["metadata"]["generation"], 2, "{u}");
    assert_ne!(u["metadata"]["resourceVersion"], rv);
    let (code, s) = send(
        &c,
        reqwest::Method::PUT,
        leader,
        &format!("{CNPS}/web"),
        json_ct,
        Some(&update),
    )
    .await?;
    assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")), "{s}");

    // Invalid: 422 naming the engine's field; nothing written.
    let (code, s) = send(
        &c,
        reqwest::Method::POST,
        follower,
        CNPS,
        json_ct,
        Some(&cnp("bad", "70000")),
    )
    .await?;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")), "{s}");
    assert_eq!(
        s["details"]["causes"][0]["field"], "spec.ingress[0].toPorts[0].ports[0].port",
        "{s}"
    );
    let (code, s) = send(
        &c,
        reqwest::Method::GET,
        leader,
        &format!("{CNPS}/bad"),
        json_ct,
        None,
    )
    .await?;
    assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")), "{s}");

    // Merge patch; strategic merge patch is refused for a CRD, as Kubernetes does.
    let patch = json!({"metadata": {"labels": {"team": null, "tier": "front"}}});
    let (code, p) = send(
        &c,
        reqwest::Method::PATCH,
        follower,
        &format!("{CNPS}/web"),
        "application/merge-patch+json",
        Some(&patch),
    )
    .await?;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["metadata"]["labels"], json!({"tier": "front"}));
    assert_eq!(
        p["metadata"]["generation"], 2,
        "labels do not bump the generation: {p}"
    );
    let (code, s) = send(
        &c,
        reqwest::Method::PATCH,
        leader,
        &format!("{CNPS}/web"),
        "application/strategic-merge-patch+json",
        Some(&patch),
    )
    .await?;
    assert_eq!(
        (code, s["reason"].as_str()),
        (415, Some("UnsupportedMediaType")),
        "{s}"
    );

    // A watch on a follower from the current version sees a write made on the leader.
    let (_, list) = send(&c, reqwest::Method::GET, follower, CNPS, json_ct, None).await?;
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let url = c.url(
        follower,
        &format!("{CNPS}?watch=1&resourceVersion={from}&timeoutSeconds=5"),
    );
    let watch = tokio::spawn(c.http.get(url).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _) = send(
        &c,
        reqwest::Method::POST,
        leader,
        CNPS,
        json_ct,
        Some(&cnp("late", "90")),
    )
    .await?;
    assert_eq!(code, 201);
    let text = watch.await??.text().await?;
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(events.len(), 1, "{text}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "late");

    // Delete; then every member answers NotFound.
    let (code, d) = send(
        &c,
        reqwest::Method::DELETE,
        follower,
        &format!("{CNPS}/web"),
        json_ct,
        None,
    )
    .await?;
    assert_eq!(code, 200, "{d}");
    for id in [1, 2, 3] {
        let (code, _) = send(
            &c,
            reqwest::Method::GET,
            id,
            &format!("{CNPS}/web"),
            json_ct,
            None,
        )
        .await?;
        assert_eq!(code, 404, "member {id}");
    }
    Ok(())
}
