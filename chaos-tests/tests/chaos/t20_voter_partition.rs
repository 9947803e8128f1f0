//! A minority of the voters partitioned from the rest: first a follower whose link goes down
//! (writes keep being acknowledged by the majority; after the link is back it catches up), then
//! the leader itself cut off by nftables drops (the majority elects a new leader and goes on; the
//! old leader rejoins as a follower), then a bad link for the leader (netem delay and loss;
//! where the kernel has no netem, random loss by nftables and the delay in user space through
//! NFQUEUE). Every
//! acknowledged write is present on every voter afterwards; both histories are linearizable.

use std::time::{Duration, Instant};

use palisade_chaos_tests::api::Api;
use palisade_chaos_tests::faults;
use palisade_chaos_tests::storm::Storm;
use palisade_chaos_tests::voters::VoterLab;

use crate::util::{
    bin, form, full, lab_name, on_client, pause, policy_revision, verify, voter_turn,
};

/// How long voter `k` took to apply everything the leader had committed when the fault healed.
fn catch_up(lab: &VoterLab, k: usize, leader: usize) -> anyhow::Result<Duration> {
    on_client(lab, || {
        let healed = Instant::now();
        let target = Api::new(&lab.api(leader), Duration::from_secs(2))?.status()?["commit_index"]
            .as_u64()
            .unwrap_or(0);
        let api = Api::new(&lab.api(k), Duration::from_millis(500))?;
        loop {
            let applied = api
                .status()
                .ok()
                .and_then(|s| s["last_applied"].as_u64())
                .unwrap_or(0);
            if applied >= target {
                return Ok(healed.elapsed());
            }
            anyhow::ensure!(
                healed.elapsed() < Duration::from_secs(30),
                "voter {k} applied {applied} < {target} 30 s after the heal"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn a_minority_of_voters_partitioned_then_healed() -> anyhow::Result<()> {
    let phase = if full() {
        Duration::from_secs(10)
    } else {
        // Long enough that writers stuck in a 2 s call to the cut-off member come back.
        Duration::from_secs(3)
    };
    let _turn = voter_turn();
    let lab = VoterLab::up(&lab_name("chp"), 3, &bin())?;
    println!(
        "chaos voter-partition ({} form, lab {}): 3 voters on their own hosts, 4 writers",
        form(),
        lab.name()
    );
    let rev0 = policy_revision(&lab)?;
    let storm = Storm::start(&lab.client_netns(), &lab.apis(), 4, Duration::from_secs(2));
    pause(phase / 2);

    // 1. A follower's link down (its port on the fabric bridge).
    let (leader, _) = lab.wait_leader(&[1, 2, 3], Duration::from_secs(20))?;
    let cut = if leader == 1 { 2 } else { 1 };
    let (fabric, port) = lab.fabric_port(&format!("v{cut}"));
    let before = storm.acked();
    faults::set_link(&fabric, &port, false)?;
    pause(phase);
    let during = storm.acked() - before;
    faults::set_link(&fabric, &port, true)?;
    let caught_up = catch_up(&lab, cut, leader)?;
    println!(
        "  link of follower {cut} down for {phase:?}: {during} writes acknowledged by the majority meanwhile; link up, it applied the leader's commit index {caught_up:?} later"
    );
    assert!(
        during > 0,
        "the majority acknowledged nothing while a follower was cut off"
    );

    // 2. The leader cut off by nftables drops (everything but loopback, both ways).
    let (leader, term) = lab.wait_leader(&[1, 2, 3], Duration::from_secs(20))?;
    let ns = lab.netns(&format!("v{leader}"));
    let rest: Vec<usize> = (1..=3).filter(|k| *k != leader).collect();
    let before = storm.acked();
    faults::nft_drop(&ns, "!= 127.0.0.0/8")?;
    let cut_at = Instant::now();
    let new = lab.wait_leader(&rest, Duration::from_secs(20));
    let elected = cut_at.elapsed();
    pause(phase);
    let during = storm.acked() - before;
    let dropped = faults::nft_dropped(&ns)?;
    faults::nft_heal(&ns);
    let (new, new_term) = new?;
    let caught_up = catch_up(&lab, leader, new)?;
    println!(
        "  leader {leader} (term {term}) cut off by nftables: voters {rest:?} agreed on leader {new} (term {new_term}) after {elected:?}; {during} writes acknowledged; {dropped} packets dropped; healed, old leader applied the commit index {caught_up:?} later"
    );
    assert!(new != leader && new_term > term);
    assert!(
        during > 0,
        "the majority acknowledged nothing while the old leader was cut off"
    );
    let (after, _) = lab.wait_leader(&[1, 2, 3], Duration::from_secs(20))?;
    println!("  after the heal all three agree on leader {after}");

    // 3. A bad link for the leader: slower, but writes keep being acknowledged.
    let ns = lab.netns(&format!("v{after}"));
    let before = storm.acked();
    let how = faults::degrade(&ns, "eth0", Duration::from_millis(30), 5)?;
    // The delay is real: one status call (a new connection: its SYN-ACK and the answer both
    // leave the degraded link) takes at least the delay.
    let slow = on_client(&lab, || {
        let started = Instant::now();
        Api::new(&lab.api(after), Duration::from_secs(5))?.status()?;
        Ok(started.elapsed())
    })?;
    assert!(
        slow >= Duration::from_millis(30),
        "a call to the degraded leader took {slow:?}: the delay is not in effect"
    );
    pause(phase);
    let during = storm.acked() - before;
    let dropped = faults::nft_dropped_in(&ns, faults::NFT_LOSS_TABLE).unwrap_or(0);
    let netem = matches!(how, faults::Degraded::Netem);
    let delayed = faults::restore(&ns, "eth0", how)?;
    let how = if netem {
        "netem 30 ms delay + 5 % loss".to_owned()
    } else {
        assert!(delayed > 0, "the delay held no packet");
        format!(
            "5 % random loss by nftables ({dropped} packets dropped) + 30 ms delay in user space \
             ({delayed} packets delayed through NFQUEUE; this kernel has no netem)"
        )
    };
    println!(
        "  {how} on leader {after}'s link for {phase:?}: {during} writes acknowledged; a status call took {slow:?}"
    );
    assert!(during > 0, "nothing acknowledged on a bad link");

    let rec = storm.stop()?;
    let (leader, _) = lab.wait_leader(&[1, 2, 3], Duration::from_secs(20))?;
    verify(&lab, &rec, rev0, leader, &[1, 2, 3])
}
