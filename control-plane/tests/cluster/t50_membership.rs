//! Membership 3 → 5 → 3 under writes, through a follower.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::fixture::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_three_to_five_to_three_under_writes() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3, &[]).await?;
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let follower = if leader == 1 { 2 } else { 1 };
    let new_ids = [c.add_slot()?, c.add_slot()?];
    for id in new_ids {
        c.spawn(id, false)?;
    }

    // A writer runs throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let url = c.url(follower, "/v1/identities");
    let http = c.http.clone();
    let s = stop.clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut k = 0;
        while !s.load(Ordering::Relaxed) {
            k += 1;
            let label = format!("m=k{k}");
            let r = http
                .post(&url)
                .json(&json!({ "labels": [label.clone()] }))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                acked.push(label);
            }
        }
        acked
    });

    for id in new_ids {
        let body = json!({"action": "add_learner", "id": id,
            "raft_addr": c.raft(id), "api_addr": c.api(id)});
        let (code, v) = c.post(follower, "/v1/cluster/members", &body).await?;
        assert_eq!(code, 200, "{v}");
    }
    let (code, v) = c
        .post(
            follower,
            "/v1/cluster/members",
            &json!({"action": "change_membership", "voters": [1, 2, 3, 4, 5]}),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    let s = c.status(leader).await?;
    assert_eq!(s["voters"].as_array().map(Vec::len), Some(5), "{s}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Back to 3 voters, keeping 4 and 5 as learners, then removing them.
    let (code, v) = c
        .post(
            4,
            "/v1/cluster/members",
            &json!({"action": "change_membership", "voters": [1, 2, 3], "retain": true}),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    let s = c.status(leader).await?;
    assert_eq!(s["learners"].as_array().map(Vec::len), Some(2), "{s}");
    let (code, v) = c
        .post(
            follower,
            "/v1/cluster/members",
            &json!({"action": "remove_learners", "ids": [4, 5]}),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await?;
    assert!(!acked.is_empty());

    let s = c.status(leader).await?;
    assert_eq!(s["voters"].as_array().map(Vec::len), Some(3), "{s}");
    assert_eq!(s["learners"].as_array().map(Vec::len), Some(0), "{s}");
    let (_, ids) = c.get(leader, "/v1/identities").await?;
    let labels: Vec<&str> = ids["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["labels"][0].as_str())
        .collect();
    for l in &acked {
        assert!(labels.contains(&l.as_str()), "lost {l}");
    }
    Ok(())
}
