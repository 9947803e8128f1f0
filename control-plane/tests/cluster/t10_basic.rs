//! Election, follower forwarding, validation errors.

use std::time::Duration;

use serde_json::json;

use crate::fixture::{TestCluster, policy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_a_leader_and_followers_forward_writes() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let status = c.status(leader).await?;
    assert_eq!(
        status["voters"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert!(status["term"].as_u64() >= Some(1));
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();

    // A write on a follower is forwarded; the same label set in another order gets the same id.
    let labels = json!({"labels": ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=default"]});
    let (code, a) = c.post(followers[0], "/v1/identities", &labels).await?;
    assert_eq!(code, 201, "{a}");
    let id = a["id"].as_u64().unwrap_or(0);
    assert!(id >= 256, "{a}");
    let again = json!({"labels": ["k8s:io.kubernetes.pod.namespace=default", "k8s:app=web"]});
    let (code, b) = c.post(followers[1], "/v1/identities", &again).await?;
    assert_eq!((code, b["id"].as_u64()), (200, Some(id)), "{b}");

    // Policies: apply on a follower, read linearizably on the other.
    let (code, p) = c
        .put(
            followers[0],
            "/v1/policies/CiliumNetworkPolicy/default/web",
            &policy("web", 80),
        )
        .await?;
    assert_eq!((code, p["revision"].as_u64()), (200, Some(1)), "{p}");
    let (code, got) = c
        .get(followers[1], "/v1/policies/CiliumNetworkPolicy/default/web")
        .await?;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["object"], policy("web", 80));
    let (_, id_get) = c.get(followers[1], &format!("/v1/identities/{id}")).await?;
    assert_eq!(id_get["labels"][0], "k8s:app=web");

    // Bad bodies are 4xx naming the field; an invalid policy commits nothing.
    let (code, e) = c
        .post(leader, "/v1/identities", &json!({"labels": ["ok", 5]}))
        .await?;
    assert_eq!((code, e["field"].as_str()), (400, Some("labels[1]")), "{e}");
    let (code, e) = c
        .post(
            followers[0],
            "/v1/identities",
            &json!({"labels": ["has space"]}),
        )
        .await?;
    assert_eq!((code, e["field"].as_str()), (400, Some("labels[0]")), "{e}");
    let mut wrong = policy("web", 81);
    wrong["kind"] = json!("NetworkPolicy");
    let (code, e) = c
        .put(
            followers[0],
            "/v1/policies/CiliumNetworkPolicy/default/web",
            &wrong,
        )
        .await?;
    assert_eq!((code, e["field"].as_str()), (422, Some("kind")), "{e}");
    // The policy engine validates the spec: the caller gets its field path and reason.
    let mut bad_port = policy("web", 81);
    bad_port["spec"]["ingress"] =
        json!([{"toPorts": [{"ports": [{"port": "70000", "protocol": "TCP"}]}]}]);
    let (code, e) = c
        .put(
            followers[1],
            "/v1/policies/CiliumNetworkPolicy/default/web",
            &bad_port,
        )
        .await?;
    assert_eq!(code, 422, "{e}");
    assert_eq!(
        e["field"].as_str(),
        Some("spec.ingress[0].toPorts[0].ports[0].port"),
        "{e}"
    );
    let (_, list) = c.get(leader, "/v1/policies").await?;
    assert_eq!(list["revision"].as_u64(), Some(1), "{list}");
    let (code, e) = c
        .post(
            followers[1],
            "/v1/nodes",
            &json!({"name": "n1", "address": "not-an-ip"}),
        )
        .await?;
    assert_eq!((code, e["field"].as_str()), (400, Some("address")), "{e}");

    // Nodes get pod CIDRs from the cluster CIDR.
    let node = json!({"name": "node-a", "address": "192.0.2.10",
        "wireguard_public_key": "YJ6Zl2CQxkVa9X8YpX6Hx2bX0pQb1V8B3Qm5cS0xHh0=", "wireguard_epoch": 1});
    let (code, n) = c.post(followers[1], "/v1/nodes", &node).await?;
    assert_eq!(
        (code, n["pod_cidr"].as_str()),
        (200, Some("10.200.0.0/24")),
        "{n}"
    );

    // Heartbeats renew a node's lease; registered nodes start live.
    let (code, hb) = c
        .post(followers[0], "/v1/nodes/node-a/heartbeat", &json!({}))
        .await?;
    assert_eq!(code, 200, "{hb}");
    assert!(hb["at_ms"].as_u64() > Some(0), "{hb}");
    let (code, n) = c.get(followers[1], "/v1/nodes/node-a").await?;
    assert_eq!((code, n["live"].as_bool()), (200, Some(true)), "{n}");
    let (code, e) = c
        .post(leader, "/v1/nodes/nobody/heartbeat", &json!({}))
        .await?;
    assert_eq!((code, e["field"].as_str()), (409, Some("node")), "{e}");

    // policy wait: node-a has not acknowledged revision 1, then does.
    let (code, w) = c
        .get(followers[0], "/v1/policies/wait?timeout_ms=300")
        .await?;
    assert_eq!(code, 504, "{w}");
    assert_eq!(w["laggards"][0]["node"], "node-a", "{w}");
    let (code, a) = c
        .post(
            followers[1],
            "/v1/nodes/node-a/ack",
            &json!({"revision": 1}),
        )
        .await?;
    assert_eq!((code, a["revision"].as_u64()), (200, Some(1)), "{a}");
    let (code, w) = c
        .get(followers[0], "/v1/policies/wait?revision=1&timeout_ms=5000")
        .await?;
    assert_eq!((code, w["nodes"].as_u64()), (200, Some(1)), "{w}");

    // Endpoints reference identities; GC removes only unreferenced ones.
    let (code, web2) = c
        .post(
            leader,
            "/v1/identities",
            &json!({"labels": ["k8s:app=web2"]}),
        )
        .await?;
    assert_eq!(code, 201, "{web2}");
    let (code, e) = c
        .put(
            followers[0],
            "/v1/endpoints/10.200.0.7",
            &json!({"identity": id, "node": "node-a"}),
        )
        .await?;
    assert_eq!(code, 200, "{e}");
    let code = c
        .http
        .delete(c.url(followers[0], &format!("/v1/identities/{id}")))
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(code, 409, "a referenced identity was released");
    let (code, gc) = c
        .post(
            followers[1],
            "/v1/identities/gc",
            &json!({"grace_seconds": 0}),
        )
        .await?;
    assert_eq!((code, gc["collected"].as_u64()), (200, Some(1)), "{gc}");
    let (code, _) = c
        .get(leader, &format!("/v1/identities/{}", web2["id"]))
        .await?;
    assert_eq!(code, 404);
    let (code, _) = c.get(leader, &format!("/v1/identities/{id}")).await?;
    assert_eq!(code, 200);

    // Metrics are served.
    let text = c
        .http
        .get(c.url(leader, "/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(text.contains("palisade_cp_term"), "{text}");
    assert!(
        text.contains("palisade_cp_proposal_duration_seconds_bucket"),
        "{text}"
    );
    Ok(())
}

/// A client that retries a write with the same `Idempotency-Key` (on the member it first asked or
/// another) gets the first attempt's answer, and the write takes effect once — even when another
/// client wrote the same object in between (no v1, v2, v1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_takes_effect_once() -> anyhow::Result<()> {
    let c = TestCluster::start(3, &[]).await?;
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let path = "/v1/policies/CiliumNetworkPolicy/default/web";
    let put_keyed = |id: u64, body: serde_json::Value, key: &'static str| {
        let req = c
            .http
            .put(c.url(id, path))
            .header("Idempotency-Key", key)
            .json(&body);
        async move {
            let r = req.send().await?;
            let code = r.status().as_u16();
            anyhow::Ok((code, r.json::<serde_json::Value>().await?))
        }
    };

    let (code, first) = put_keyed(followers[0], policy("web", 80), "retry-1").await?;
    assert_eq!(
        (code, first["changed"].as_bool()),
        (200, Some(true)),
        "{first}"
    );
    let (code, other) = c.put(leader, path, &policy("web", 81)).await?;
    assert_eq!(
        (code, other["changed"].as_bool()),
        (200, Some(true)),
        "{other}"
    );
    // The retry, on another member: the first answer, and the object stays as the other client
    // left it.
    let (code, retry) = put_keyed(followers[1], policy("web", 80), "retry-1").await?;
    assert_eq!((code, &retry), (200, &first));
    let (_, got) = c.get(followers[1], path).await?;
    assert_eq!(got["object"], policy("web", 81), "{got}");
    assert_eq!(got["revision"], other["revision"], "{got}");

    // An identity's `created` answer is the first attempt's on every retry.
    let labels = json!({"labels": ["k8s:app=once"]});
    let post_keyed = |id: u64| {
        let req = c
            .http
            .post(c.url(id, "/v1/identities"))
            .header("Idempotency-Key", "alloc-1")
            .json(&labels);
        async move {
            let r = req.send().await?;
            let code = r.status().as_u16();
            anyhow::Ok((code, r.json::<serde_json::Value>().await?))
        }
    };
    let (code, a) = post_keyed(leader).await?;
    let (code2, b) = post_keyed(followers[0]).await?;
    assert_eq!((code, code2), (201, 201), "{a} {b}");
    assert_eq!(a, b);

    // A malformed key is refused, naming the header, and nothing is written.
    let r = c
        .http
        .put(c.url(leader, path))
        .header("Idempotency-Key", "has space")
        .json(&policy("web", 99))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let e: serde_json::Value = r.json().await?;
    assert_eq!(e["field"], "Idempotency-Key", "{e}");
    let (_, got) = c.get(leader, path).await?;
    assert_eq!(got["object"], policy("web", 81), "{got}");
    Ok(())
}
