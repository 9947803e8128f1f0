//! A voter whose data directory is wiped catches up by snapshot.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixture::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3, &["--snapshot-logs", "20", "--keep-logs", "5"]).await?;
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let victim = if leader == 3 { 2 } else { 3 };
    for i in 0..60 {
        let (code, v) = c
            .post(
                leader,
                "/v1/identities",
                &json!({ "labels": [format!("snap=a{i}")] }),
            )
            .await?;
        assert_eq!(code, 201, "{v}");
    }
    c.kill(victim);
    std::fs::remove_dir_all(c.data_dir(victim))?;
    for i in 0..40 {
        let (code, v) = c
            .post(
                leader,
                "/v1/identities",
                &json!({ "labels": [format!("snap=b{i}")] }),
            )
            .await?;
        assert_eq!(code, 201, "{v}");
    }
    let s = c.status(leader).await?;
    assert!(
        s["purged_index"].as_u64() > Some(10),
        "the leader did not purge its log: {s}"
    );

    c.spawn(victim, false)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ids) = c
            .get(victim, "/v1/identities?consistency=local")
            .await
            .unwrap_or_default();
        let n = ids["items"].as_array().map_or(0, Vec::len);
        if n == 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "wiped member has {n} of 100 identities"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = c.status(victim).await?;
    assert!(
        s["snapshot_index"].as_u64().is_some(),
        "no snapshot installed: {s}"
    );
    // It is a full voter again: linearizable reads through it work.
    let (code, _) = c.get(victim, "/v1/identities").await?;
    assert_eq!(code, 200);
    Ok(())
}
