//! Every voter restarted in turn (SIGTERM, start) while pods talk across nodes and an operator
//! keeps writing: the agents' data plane forwards throughout (no connection error, bytes intact),
//! writes resume after each restart (the longest outage is measured), the operator's writes and
//! reads — through `palisade-cp-client` over mTLS, with its failover and idempotency keys — form
//! a linearizable history with exact `changed` flags, and a policy written after the last restart
//! is acknowledged by every node and enforced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use palisade_chaos_tests::agents::{AgentLab, allow_only};
use palisade_chaos_tests::api::{CallError, policy_value};
use palisade_chaos_tests::history::History;
use palisade_chaos_tests::models::{Policies, PolicyOp, PolicyRet};
use palisade_chaos_tests::tcp::{Stream, retransmits};
use palisade_cp_client::ClientError;

use crate::util::{BUDGET, bin, form, full, lab_name, pause};

/// What a failed client call means for the history: a 4xx was not applied; anything else
/// (every member failed or timed out, an unexpected answer) may have been.
fn call_error(e: ClientError) -> CallError {
    match e {
        ClientError::Api {
            status, message, ..
        } if (400..500).contains(&status) => CallError::Refused(status, message),
        e => CallError::Unknown(e.to_string()),
    }
}

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
    // From here until the writer stops, it is the only policy writer.
    let rev0 = rev;
    let history = Arc::new(History::<Policies>::new(Instant::now()));

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
        let history = history.clone();
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
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                // Every fourth call reads the object back (a linearizable read).
                if k.is_multiple_of(4) {
                    history.record(
                        0,
                        PolicyOp::Get {
                            key: key.name.clone(),
                        },
                        true,
                        || {
                            let got = client.get_policy(&key).map_err(call_error)?;
                            got.map(|r| {
                                policy_value(&r.object)
                                    .map(|v| (v, r.revision))
                                    .ok_or_else(|| CallError::Unknown(format!("no value in {r:?}")))
                            })
                            .transpose()
                        },
                        |r| PolicyRet::Read(*r),
                    );
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                port = if port >= 60000 { 1000 } else { port + 1 };
                let obj = palisade_chaos_tests::api::policy_object("chaos-writes", port);
                let out = history.record(
                    0,
                    PolicyOp::Apply {
                        key: key.name.clone(),
                        value: port,
                    },
                    false,
                    || client.apply_policy(&key, &obj).map_err(call_error),
                    |o| PolicyRet::Written {
                        revision: o.revision,
                        changed: o.changed,
                    },
                );
                match out.done() {
                    Some(_) => {
                        acked += 1;
                        worst = worst.max(last.elapsed());
                        last = Instant::now();
                    }
                    None => failed += 1,
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
    let counts = history.assert_linearizable(
        "the operator's policy writes and reads",
        &Policies::strict_at(rev0),
        BUDGET,
    );
    println!(
        "  checked: the operator's calls are linearizable with exact `changed` flags — {} completed + {} indeterminate, {} refused or unanswered reads left out",
        counts.completed, counts.indeterminate, counts.refused
    );

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
