//! The leader collects identities no endpoint has used for the grace period, on its own (no
//! call to `/v1/identities/gc`), through Raft so every member drops them; identities in use stay.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixture::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_collects_unused_identities_after_the_grace_period() -> anyhow::Result<()> {
    let c = TestCluster::start(
        3,
        &[
            "--identity-gc-grace-ms",
            "1500",
            "--identity-gc-interval-ms",
            "200",
        ],
    )
    .await?;
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let (_, unused) = c
        .post(
            leader,
            "/v1/identities",
            &json!({"labels": ["k8s:app=gone"]}),
        )
        .await?;
    let (_, used) = c
        .post(
            leader,
            "/v1/identities",
            &json!({"labels": ["k8s:app=kept"]}),
        )
        .await?;
    let (unused, used) = (
        unused["id"].as_u64().unwrap_or(0),
        used["id"].as_u64().unwrap_or(0),
    );
    let (code, n) = c
        .post(
            leader,
            "/v1/nodes",
            &json!({"name": "n1", "address": "192.0.2.1",
                    "wireguard_public_key": "YJ6Zl2CQxkVa9X8YpX6Hx2bX0pQb1V8B3Qm5cS0xHh0=",
                    "wireguard_epoch": 1}),
        )
        .await?;
    assert_eq!(code, 200, "{n}");
    let (code, e) = c
        .put(
            leader,
            "/v1/endpoints/10.200.0.10",
            &json!({"identity": used, "node": "n1"}),
        )
        .await?;
    assert_eq!(code, 200, "{e}");

    // Still there well inside the grace period.
    let (code, _) = c.get(leader, &format!("/v1/identities/{unused}")).await?;
    assert_eq!(code, 200, "kept during the grace period");

    let deadline = Instant::now() + Duration::from_secs(15);
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap_or(1);
    loop {
        let (code, _) = c.get(follower, &format!("/v1/identities/{unused}")).await?;
        if code == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "identity {unused} not collected; leader log:\n{}",
            c.log_tail(leader)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, _) = c.get(follower, &format!("/v1/identities/{used}")).await?;
    assert_eq!(code, 200, "an identity an endpoint uses is never collected");
    Ok(())
}
