//! A node's agent cut off from the control plane (nftables drops in the node, both ways) while a
//! pod starts on another node (through the CNI plugin) and policies change and identities are
//! allocated elsewhere: it keeps enforcing its last-known-good policy (and so does not let in the
//! new pod it cannot know of), the other node enforces the new one, and after the heal the cut-off
//! node converges with no manual step (the time it takes is measured). No gossip here: this is
//! today's behaviour, agents learn only from the control plane.

use std::time::{Duration, Instant};

use anyhow::Context;

use palisade_chaos_tests::agents::{AgentLab, allow_only};
use palisade_chaos_tests::faults;
use palisade_lab::CP_HOST_IP;

use crate::util::{bin, form, full, lab_name, pause};

/// Node `node`'s acknowledged revision as the control plane sees it.
fn acked(client: &palisade_cp_client::Client, node: &str) -> anyhow::Result<u64> {
    Ok(client
        .list_nodes()?
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["acked_revision"].as_u64())
        .unwrap_or(0))
}

#[test]
fn agent_partitioned_from_the_control_plane_keeps_last_known_good_then_converges()
-> anyhow::Result<()> {
    let phase = if full() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(3)
    };
    let mut lab = AgentLab::up(&lab_name("chn"), 2, 2, &bin())?;
    println!(
        "chaos agent-partition ({} form, lab {}): 2 nodes × 2 pods, 3 voters",
        form(),
        lab.lab().name()
    );
    let client = lab.client()?;
    // v1: n1-p1 accepts TCP 80 from n2-p1 only.
    let rev = lab.apply(
        &client,
        "chaos-n1",
        &allow_only("chaos-n1", "n2-p1", "n1-p1", &[80]),
    )?;
    lab.wait_acked(&client, rev, Duration::from_secs(30))?;
    assert!(lab.reachable("n2-p1", "n1-p1", 80)? && !lab.reachable("n2-p2", "n1-p1", 80)?);

    let n1 = lab.node_netns("n1")?;
    faults::nft_drop(&n1, &CP_HOST_IP.to_string())?;
    let cut = Instant::now();
    // Elsewhere, while n1 is cut off: a pod of a new label set starts on n2 (CNI ADD through
    // n2's agent), v2 lets n2-p2 and that pod (instead of n2-p1) reach n1-p1, a policy for n2-p1
    // appears, and one more label set gets an identity.
    let new_ip = lab.start_pod("n2-new", 2, "chaos-new")?;
    let mut v2 = allow_only("chaos-n1", "n2-p2", "n1-p1", &[80]);
    v2["spec"]["ingress"][0]["fromEndpoints"]
        .as_array_mut()
        .context("fromEndpoints")?
        .push(serde_json::json!({"matchLabels": {"app": "chaos-new"}}));
    let rev2 = lab.apply(&client, "chaos-n1", &v2)?;
    let rev3 = lab.apply(
        &client,
        "chaos-n2",
        &allow_only("chaos-n2", "n1-p2", "n2-p1", &[80]),
    )?;
    let id = client.allocate_identity(&["app=chaos-new-pod".to_string()])?;
    let t0 = Instant::now();
    while acked(&client, "n2")? < rev3 {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "n2 did not acknowledge {rev3}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let n2_enforces = lab.until_reachable("n1-p1", "n2-p1", 80, false, Duration::from_secs(10))?;
    assert!(n2_enforces.is_some(), "n2 does not enforce the new policy");
    assert!(
        lab.reachable("n1-p2", "n2-p1", 80)?,
        "n2 lets the allowed peer in"
    );
    let t0 = Instant::now();
    while !client.list_endpoints()?.iter().any(|e| e.ip == new_ip) {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "the pod started on n2 is not registered with the control plane"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  n1 cut off from the control plane ({CP_HOST_IP}); pod n2-new ({new_ip}, app=chaos-new) started on n2 and registered; revisions {rev2} and {rev3} and identity {} written; n2 acknowledged and enforces them",
        id.id
    );

    // n1 keeps its last-known-good policy for the rest of the partition (at least `phase`).
    let mut checks = 0;
    let watched = Instant::now();
    while watched.elapsed() < phase || checks < 3 {
        assert!(
            lab.reachable("n2-p1", "n1-p1", 80)?,
            "n1 dropped its last-known-good allow"
        );
        assert!(
            !lab.reachable("n2-p2", "n1-p1", 80)?,
            "n1 opened up while cut off"
        );
        assert!(
            !lab.reachable("n2-new", "n1-p1", 80)?,
            "n1 let in a pod it cannot know of while cut off"
        );
        checks += 1;
        pause(Duration::from_millis(200));
    }
    let n1_acked = acked(&client, "n1")?;
    let dropped = faults::nft_dropped(&n1)?;
    println!(
        "  checked {checks} times over the last {:?} of a {:?} partition: n1 enforces last-known-good (revision {n1_acked} acknowledged, {dropped} packets to/from the control plane dropped)",
        watched.elapsed(),
        cut.elapsed()
    );
    assert!(
        n1_acked < rev2,
        "n1 acknowledged {n1_acked} through the partition"
    );

    faults::nft_heal(&n1);
    let healed = Instant::now();
    let enforced = lab.until_reachable("n2-p2", "n1-p1", 80, true, Duration::from_secs(60))?;
    let closed = lab.until_reachable("n2-p1", "n1-p1", 80, false, Duration::from_secs(60))?;
    let to_enforce = healed.elapsed();
    let new_pod = lab.until_reachable("n2-new", "n1-p1", 80, true, Duration::from_secs(60))?;
    let to_learn = healed.elapsed();
    while acked(&client, "n1")? < rev3 {
        anyhow::ensure!(
            healed.elapsed() < Duration::from_secs(60),
            "n1 did not acknowledge {rev3} within 60 s of the heal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_ack = healed.elapsed();
    println!(
        "  measured: after the heal n1 enforced the new policy in {to_enforce:?}, let the new pod in (learned its identity) in {to_learn:?}, acknowledged revision {rev3} in {to_ack:?}"
    );
    assert!(
        enforced.is_some() && closed.is_some() && new_pod.is_some(),
        "n1 did not converge after the heal"
    );
    lab.wait_acked(&client, rev3, Duration::from_secs(30))?;
    Ok(())
}
