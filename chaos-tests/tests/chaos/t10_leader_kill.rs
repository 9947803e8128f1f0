//! The leader SIGKILLed during a write storm (a new leader within 2 s, writes acknowledged again,
//! the old leader rejoins), then a follower frozen with SIGSTOP: every acknowledged write is
//! present on every voter afterwards and both histories are linearizable.

use std::time::Duration;

use nix::sys::signal::Signal;
use palisade_chaos_tests::faults;
use palisade_chaos_tests::storm::Storm;
use palisade_chaos_tests::voters::VoterLab;

use crate::util::{bin, form, full, lab_name, pause, policy_revision, verify, voter_turn};

/// The longest a new leader may take to be agreed on after the old one died.
const ELECTION_LIMIT: Duration = Duration::from_secs(2);

#[test]
fn leader_killed_during_a_write_storm() -> anyhow::Result<()> {
    let (rounds, phase) = if full() {
        (5, Duration::from_secs(4))
    } else {
        (2, Duration::from_millis(1500))
    };
    let _turn = voter_turn();
    let mut lab = VoterLab::up(&lab_name("chk"), 3, &bin())?;
    println!(
        "chaos leader-kill ({} form, lab {}): 3 voters on their own hosts, 4 writers",
        form(),
        lab.name()
    );
    let rev0 = policy_revision(&lab)?;
    let storm = Storm::start(&lab.client_netns(), &lab.apis(), 4, Duration::from_secs(2));
    let mut elections = Vec::new();
    let mut agreed = Vec::new();
    for round in 1..=rounds {
        pause(phase);
        let (leader, term) = lab.wait_leader(&[1, 2, 3], Duration::from_secs(20))?;
        let acked = storm.acked();
        let f = lab.kill_leader_and_measure(leader, term, Duration::from_secs(20))?;
        let first_ack = storm.wait_ack_after(storm.acked().max(acked), Duration::from_secs(20));
        println!(
            "  round {round}: SIGKILL leader {leader} (term {term}) after {acked} acknowledged writes; voter {} led at term {} {:?} after the kill, named by both survivors after {:?}; next write acknowledged {first_ack:?} later",
            f.new_leader, f.term, f.elected, f.agreed
        );
        assert!(f.new_leader != leader && f.term > term);
        assert!(
            first_ack.is_some(),
            "no write acknowledged within 20 s of the new leader"
        );
        let elected = f.elected;
        agreed.push(f.agreed);
        elections.push(elected);
        lab.start(leader, false)?;
        lab.wait_leader(&[1, 2, 3], Duration::from_secs(30))?;
    }

    // A follower frozen (SIGSTOP) keeps the majority writing; thawed, it catches up.
    let (leader, _) = lab.wait_leader(&[1, 2, 3], Duration::from_secs(20))?;
    let frozen = if leader == 3 { 2 } else { 3 };
    let before = storm.acked();
    faults::signal(lab.process(frozen)?, Signal::SIGSTOP)?;
    // At least 3 s: writers stuck in a 2 s call to the frozen member must come back to count.
    let frozen_for = phase.max(Duration::from_secs(3));
    pause(frozen_for);
    let during = storm.acked() - before;
    faults::signal(lab.process(frozen)?, Signal::SIGCONT)?;
    println!(
        "  SIGSTOP follower {frozen} for {frozen_for:?}: {during} writes acknowledged meanwhile; SIGCONT"
    );
    assert!(
        during > 0,
        "no write acknowledged while one follower was frozen"
    );
    pause(phase / 2);

    let rec = storm.stop()?;
    let (leader, _) = lab.wait_leader(&[1, 2, 3], Duration::from_secs(20))?;
    verify(&lab, &rec, rev0, leader, &[1, 2, 3])?;
    let worst = elections.iter().max().copied().unwrap_or_default();
    println!(
        "  measured: time to a new leader over {} kill(s): worst {worst:?}, all {elections:?}; until both survivors named it: {agreed:?}",
        elections.len()
    );
    assert!(
        worst < ELECTION_LIMIT,
        "a new leader took {worst:?} (limit {ELECTION_LIMIT:?})"
    );
    Ok(())
}
