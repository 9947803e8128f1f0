//! Every voter restarted in turn (SIGTERM, start) while pods talk across nodes and an operator
//! keeps writing: the agents' data plane forwards throughout (no connection error, bytes intact),
//! writes resume after each restart (the longest outage is measured), and a policy written after
//! the last restart is acknowledged by every node and enforced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use palisade_chaos_tests::agents::{AgentLab, allow_only};
use palisade_chaos_tests::tcp::{Stream, retransmits};

use crate::util::{bin, form, full, lab_name, pause};

#[test]
fn rolling_restart_of_all_voters_under_traffic() -> anyhow::Result<()> {
    let (rounds, hard) = if full() { (3, true) } else { (1, false) };
    let mut lab = AgentLab::up(&lab_name("chr"), 2, 2, &bin())?;
    println!(
        "chaos rolling-restart ({} form, lab {}): 2 nodes × 2 pods, 3 voters",
        form(),
        lab.lab().name()
    );
    let client = lab.client()?;
    let rev = lab.apply(
        &client,
        "chaos-r",
        &allow_only("chaos-r", "n2-p1", "n1-p1", &[80, 9100]),
    )?;
    lab.wait_acked(&client, rev, Duration::from_secs(30))?;

    let from = lab.pod_netns("n2-p1")?;
    let to = lab.pod_netns("n1-p1")?;
    let to_ip = lab.lab().resolve("n1-p1")?;
    let retrans0 = retransmits(&from) + retransmits(&to);
    let stream = Stream::start(&from, &to, to_ip, 9100)?;

    // An operator writing every 50 ms (with failover between voters); the longest gap between
    // two acknowledged writes is the write outage.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let client = lab.client()?;
        let key = palisade_api::controlplane::PolicyKey {
            kind: "CiliumNetworkPolicy".into(),
            namespace: "default".into(),
            name: "chaos-writes".into(),
        };
        std::thread::spawn(move || {
            let (mut acked, mut failed, mut worst) = (0u64, 0u64, Duration::ZERO);
            let mut last = Instant::now();
            let mut port = 1000u64;
            while !stop.load(Ordering::Relaxed) {
                port = if port >= 60000 { 1000 } else { port + 1 };
                let obj = palisade_chaos_tests::api::policy_object("chaos-writes", port);
                match client.apply_policy(&key, &obj) {
                    Ok(_) => {
                        acked += 1;
                        worst = worst.max(last.elapsed());
                        last = Instant::now();
                    }
                    Err(_) => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (acked, failed, worst.max(last.elapsed()))
        })
    };

    pause(Duration::from_secs(1));
    for round in 1..=rounds {
        for k in 1..=3 {
            let t0 = Instant::now();
            lab.restart_voter(k, hard && k == 2)?;
            let back = lab.wait_member_caught_up(k, Duration::from_secs(30))?;
            let leader = lab.wait_leader(&client, Duration::from_secs(30))?;
            println!(
                "  round {round}: voter {k} {} and started; it followed leader {leader} and caught up {back:?} after the restart ({:?} in all)",
                if hard && k == 2 {
                    "SIGKILLed"
                } else {
                    "SIGTERMed"
                },
                t0.elapsed()
            );
            pause(Duration::from_millis(300));
        }
    }
    pause(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (acked, failed, worst) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    let report = stream.finish()?;
    let retrans = retransmits(&from) + retransmits(&to) - retrans0;
    println!(
        "  measured: {acked} writes acknowledged, {failed} failed, longest write outage {worst:?}; data plane: {} bytes verified, {} errors, worst round trip {:?}, {retrans} segments retransmitted",
        report.verified_bytes,
        report.errors.len(),
        report.worst_round_trip
    );
    assert_eq!(
        report.errors,
        Vec::<String>::new(),
        "the data plane dropped the connection"
    );
    assert!(acked > 10, "writes did not resume: {acked} acknowledged");

    // After the rolling restart the agents follow the new leader: a change is acked and enforced.
    let rev = lab.apply(
        &client,
        "chaos-r",
        &allow_only("chaos-r", "n2-p2", "n1-p1", &[80]),
    )?;
    lab.wait_acked(&client, rev, Duration::from_secs(30))?;
    let flipped = lab.until_reachable("n2-p2", "n1-p1", 80, true, Duration::from_secs(10))?;
    let closed = lab.until_reachable("n2-p1", "n1-p1", 80, false, Duration::from_secs(10))?;
    println!(
        "  checked: a policy change after the restarts acknowledged by every node and enforced ({flipped:?}, {closed:?})"
    );
    assert!(
        flipped.is_some() && closed.is_some(),
        "agents do not enforce new policy after the rolling restart"
    );
    Ok(())
}
