//! A write storm while the leader is SIGKILLed: every acknowledged write survives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use crate::fixture::{TestCluster, policy};

#[derive(Default)]
struct Acked {
    identities: BTreeMap<String, u64>,
    policies: Vec<String>,
    after_kill: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_sigkill() -> anyhow::Result<()> {
    let mut c = TestCluster::start(3, &[]).await?;
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let urls: Vec<String> = [1, 2, 3].iter().map(|i| c.url(*i, "")).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));

    let mut writers = Vec::new();
    for w in 0..6usize {
        let (urls, http, stop, killed, acked) = (
            urls.clone(),
            http.clone(),
            stop.clone(),
            killed.clone(),
            acked.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut target = w % 3;
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let base = &urls[target];
                let ok = if k.is_multiple_of(2) {
                    let label = format!("storm=w{w}-{k}");
                    let r = http
                        .post(format!("{base}/v1/identities"))
                        .json(&json!({ "labels": [label.clone()] }))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let v: serde_json::Value = r.json().await.unwrap_or_default();
                            let mut a = acked.lock().await;
                            a.identities.insert(label, v["id"].as_u64().unwrap_or(0));
                            true
                        }
                        _ => false,
                    }
                } else {
                    let name = format!("w{w}-{k}");
                    let r = http
                        .put(format!(
                            "{base}/v1/policies/CiliumNetworkPolicy/default/{name}"
                        ))
                        .json(&policy(&name, 80))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            acked.lock().await.policies.push(name);
                            true
                        }
                        _ => false,
                    }
                };
                if ok {
                    if killed.load(Ordering::Relaxed) {
                        acked.lock().await.after_kill += 1;
                    }
                } else {
                    // Try another member; the killed one refuses connections.
                    target = (target + 1) % 3;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill(leader);
    killed.store(true, Ordering::Relaxed);
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }

    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let new_leader = c.wait_leader(&survivors, Duration::from_secs(10)).await?;
    assert_ne!(new_leader, leader);
    let acked = acked.lock().await;
    eprintln!(
        "acknowledged: {} identities, {} policies, {} after the kill; new leader {new_leader}",
        acked.identities.len(),
        acked.policies.len(),
        acked.after_kill
    );
    assert!(
        acked.identities.len() + acked.policies.len() > 20,
        "too few acknowledged writes: {} identities, {} policies",
        acked.identities.len(),
        acked.policies.len()
    );
    assert!(
        acked.after_kill > 0,
        "no write was acknowledged in the {:?} after the leader died",
        killed_at.elapsed()
    );

    for id in survivors {
        let (code, ids) = c.get(id, "/v1/identities").await?;
        assert_eq!(code, 200, "{ids}");
        let present: BTreeMap<String, u64> = ids["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["labels"][0].as_str().unwrap_or_default().to_owned(),
                    i["id"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        for (label, want) in &acked.identities {
            assert_eq!(
                present.get(label),
                Some(want),
                "member {id} lost identity {label}"
            );
        }
        let (code, pols) = c.get(id, "/v1/policies").await?;
        assert_eq!(code, 200, "{pols}");
        let names: Vec<&str> = pols["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["key"]["name"].as_str())
            .collect();
        for name in &acked.policies {
            assert!(
                names.contains(&name.as_str()),
                "member {id} lost policy {name}"
            );
        }
    }
    Ok(())
}
