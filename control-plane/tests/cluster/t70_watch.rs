//! The change feed: a watch resumes from its revision on another member after the one serving
//! it dies; a restarted member serves what it applied since it started and asks watchers
//! older than that to re-list.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixture::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_member_after_its_server_dies() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3, &[]).await?;
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let (served_by, other) = (followers[0], followers[1]);

    let (_, r) = c.get(served_by, "/v1/watch/revision").await?;
    let r0 = r["revision"].as_u64().unwrap_or(0);
    let (code, a) = c
        .post(leader, "/v1/identities", &json!({"labels": ["watch=a"]}))
        .await?;
    assert_eq!(code, 201, "{a}");
    let (code, w) = c
        .get(served_by, &format!("/v1/watch?from={r0}&timeout_ms=5000"))
        .await?;
    assert_eq!(code, 200, "{w}");
    let changes = w["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 1, "{w}");
    assert_eq!(changes[0]["kind"], "identity");
    assert_eq!(changes[0]["value"]["labels"][0], "watch=a");
    let r1 = changes[0]["revision"].as_u64().unwrap_or(0);

    // The member serving the watch dies; writes go on; the watch resumes elsewhere from r1.
    c.kill(served_by);
    let (code, b) = c
        .post(leader, "/v1/identities", &json!({"labels": ["watch=b"]}))
        .await?;
    assert_eq!(code, 201, "{b}");
    let (code, w) = c
        .get(other, &format!("/v1/watch?from={r1}&timeout_ms=5000"))
        .await?;
    assert_eq!(code, 200, "{w}");
    let labels: Vec<&str> = w["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["value"]["labels"][0].as_str())
        .collect();
    assert_eq!(labels, vec!["watch=b"], "{w}");
    let r2 = w["revision"].as_u64().unwrap_or(0);

    // A long poll returns as soon as a change lands.
    let url = c.url(other, &format!("/v1/watch?from={r2}&timeout_ms=10000"));
    let http = c.http.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        http.get(url)
            .send()
            .await?
            .json::<serde_json::Value>()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _) = c
        .http
        .delete(c.url(leader, &format!("/v1/identities/{}", a["id"])))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))?;
    assert_eq!(code, 200);
    let w = poll.await??;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the long poll did not wake up"
    );
    assert_eq!(w["changes"][0]["value"], serde_json::Value::Null, "{w}");

    // A restarted member's feed starts empty: older revisions get 410 and must re-list.
    c.spawn(served_by, false)?;
    c.wait_leader(&[1, 2, 3], Duration::from_secs(15)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, s) = c.get(served_by, "/v1/watch/revision").await?;
        if s["revision"].as_u64() >= Some(r2 + 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It applied the changes after r1 since it restarted, so it serves them...
    let (code, w) = c
        .get(served_by, &format!("/v1/watch?from={r1}&timeout_ms=100"))
        .await?;
    assert_eq!(
        (code, w["changes"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{w}"
    );
    // ...but not r1 itself, applied before it died.
    let (code, e) = c
        .get(served_by, &format!("/v1/watch?from={r0}&timeout_ms=100"))
        .await?;
    assert_eq!((code, e["field"].as_str()), (410, Some("from")), "{e}");
    Ok(())
}
