//! A node agent SIGKILLed and started again while a TCP connection through its node runs: the
//! connection sees no reset and every byte comes back intact; the policy stays enforced while the
//! agent is down and after it is back.

use std::time::Duration;

use palisade_chaos_tests::agents::{AgentLab, allow_only};
use palisade_chaos_tests::tcp::{Stream, retransmits};

use crate::util::{bin, form, full, lab_name, pause};

#[test]
fn agent_restarted_under_tcp_traffic() -> anyhow::Result<()> {
    let (restarts, phase) = if full() {
        (5, Duration::from_secs(3))
    } else {
        (1, Duration::from_secs(1))
    };
    let mut lab = AgentLab::up(&lab_name("cha"), 2, 2, &bin())?;
    println!(
        "chaos agent-restart ({} form, lab {}): 2 nodes × 2 pods, 3 voters",
        form(),
        lab.lab().name()
    );
    let client = lab.client()?;
    // n1-p1 accepts TCP 80 and 9100 from n2-p1 only.
    let rev = lab.apply(
        &client,
        "chaos-p1",
        &allow_only("chaos-p1", "n2-p1", "n1-p1", &[80, 9100]),
    )?;
    lab.wait_acked(&client, rev, Duration::from_secs(30))?;
    assert!(lab.reachable("n2-p1", "n1-p1", 80)?, "allowed before");
    assert!(!lab.reachable("n2-p2", "n1-p1", 80)?, "denied before");

    let from = lab.pod_netns("n2-p1")?;
    let to = lab.pod_netns("n1-p1")?;
    let to_ip = lab.lab().resolve("n1-p1")?;
    let retrans0 = retransmits(&from) + retransmits(&to);
    let stream = Stream::start(&from, &to, to_ip, 9100)?;
    pause(phase);
    for round in 1..=restarts {
        let up_after = lab.restart_agent(1)?;
        let allowed = lab.reachable("n2-p1", "n1-p1", 80)?;
        let denied = !lab.reachable("n2-p2", "n1-p1", 80)?;
        println!(
            "  round {round}: SIGKILL agent of n1, started again, socket up after {up_after:?}; allowed pair {}, denied pair {}",
            if allowed { "allowed" } else { "BLOCKED" },
            if denied { "denied" } else { "LEAKED" }
        );
        assert!(
            allowed && denied,
            "policy not enforced right across the restart"
        );
        pause(phase);
    }
    let report = stream.finish()?;
    let retrans = retransmits(&from) + retransmits(&to) - retrans0;
    println!(
        "  measured: {} bytes echoed and verified, {} connection errors, worst round trip {:?}, {retrans} TCP segments retransmitted",
        report.verified_bytes,
        report.errors.len(),
        report.worst_round_trip
    );
    assert_eq!(
        report.errors,
        Vec::<String>::new(),
        "the connection saw errors (a reset?)"
    );
    assert!(report.verified_bytes > 0, "no byte went through");
    // After the restarts the agent follows the control plane again: a new revision is acked.
    let rev = lab.apply(
        &client,
        "chaos-p1",
        &allow_only("chaos-p1", "n2-p2", "n1-p1", &[80]),
    )?;
    lab.wait_acked(&client, rev, Duration::from_secs(30))?;
    let flipped = lab.until_reachable("n2-p2", "n1-p1", 80, true, Duration::from_secs(10))?;
    println!(
        "  checked: a policy change after the restarts acknowledged and enforced ({flipped:?} after the ack)"
    );
    assert!(
        flipped.is_some(),
        "the restarted agent does not enforce new policy"
    );
    Ok(())
}
