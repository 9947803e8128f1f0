//! All voters restarted (after SIGTERM, then after SIGKILL) keep their state.

use std::time::Duration;

use serde_json::json;

use crate::fixture::{TestCluster, policy};

async fn check_state(c: &TestCluster, ids: &[(String, u64)]) -> anyhow::Result<()> {
    for m in [1, 2, 3] {
        for (label, id) in ids {
            let (code, v) = c.get(m, &format!("/v1/identities/{id}")).await?;
            assert_eq!(code, 200, "member {m}: {v}");
            assert_eq!(v["labels"][0].as_str(), Some(label.as_str()));
        }
        let (_, pols) = c.get(m, "/v1/policies").await?;
        assert_eq!(pols["revision"].as_u64(), Some(6), "member {m}: {pols}");
        let (_, nodes) = c.get(m, "/v1/nodes").await?;
        assert_eq!(nodes["items"].as_array().map(Vec::len), Some(1), "{nodes}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_voters_restarted_keep_state() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3, &[]).await?;
    let mut ids = Vec::new();
    for i in 0..20 {
        let label = format!("app=r{i}");
        let (code, v) = c
            .post(
                1 + i % 3,
                "/v1/identities",
                &json!({ "labels": [label.clone()] }),
            )
            .await?;
        assert_eq!(code, 201, "{v}");
        ids.push((label, v["id"].as_u64().unwrap_or(0)));
    }
    for i in 0..5 {
        let name = format!("p{i}");
        let (code, v) = c
            .put(
                1,
                &format!("/v1/policies/CiliumNetworkPolicy/default/{name}"),
                &policy(&name, 80),
            )
            .await?;
        assert_eq!(code, 200, "{v}");
    }
    let node = json!({"name": "node-a", "address": "192.0.2.10",
        "wireguard_public_key": "YJ6Zl2CQxkVa9X8YpX6Hx2bX0pQb1V8B3Qm5cS0xHh0=", "wireguard_epoch": 1});
    assert_eq!(c.post(2, "/v1/nodes", &node).await?.0, 200);

    // A snapshot on demand; restarts must then combine it with the log after it.
    let (code, v) = c.post(2, "/v1/cluster/snapshot", &json!({})).await?;
    assert_eq!(code, 200, "{v}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.status(2).await?["snapshot_index"].is_null() {
        assert!(std::time::Instant::now() < deadline, "no snapshot built");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, v) = c
        .put(
            3,
            "/v1/policies/CiliumNetworkPolicy/default/p4",
            &policy("p4", 443),
        )
        .await?;
    assert_eq!((code, v["revision"].as_u64()), (200, Some(6)), "{v}");

    // Graceful: SIGTERM exits 0 and a restart without --init keeps everything.
    for m in [1, 2, 3] {
        c.terminate(m)?;
    }
    for m in [1, 2, 3] {
        c.spawn(m, false)?;
    }
    c.wait_leader(&[1, 2, 3], Duration::from_secs(15)).await?;
    check_state(&c, &ids).await?;

    // Hard: SIGKILL every member, restart, same state; ids keep being allocated after the old.
    for m in [1, 2, 3] {
        c.kill(m);
    }
    for m in [1, 2, 3] {
        c.spawn(m, m == 1)?; // --init again on a non-empty log must be a no-op
    }
    c.wait_leader(&[1, 2, 3], Duration::from_secs(15)).await?;
    check_state(&c, &ids).await?;
    let (code, v) = c
        .post(
            3,
            "/v1/identities",
            &json!({"labels": ["app=after-restart"]}),
        )
        .await?;
    assert_eq!(code, 201, "{v}");
    let max_before = ids.iter().map(|(_, id)| *id).max().unwrap_or(0);
    assert!(v["id"].as_u64() > Some(max_before), "{v}");
    Ok(())
}
