//! Shared helpers: the binary, the mode, unique lab names, running code on the client host, and
//! the checks every voter test ends with.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_chaos_tests::api::Api;
use palisade_chaos_tests::models::{Policies, check_identities};
use palisade_chaos_tests::storm::{Recorded, final_reads};
use palisade_chaos_tests::voters::VoterLab;

/// The `palisade` binary: next to this test's directory in the target dir (cargo builds every
/// workspace binary before `cargo test` runs tests; `make chaos` builds them explicitly).
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = dir.join("palisade");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p palisade-cli -p palisade-cni`)",
        bin.display()
    );
    bin
}

/// Held by each voter test: two storms and two sets of voters at once on two cores would slow
/// each other's elections, which the leader-kill test times.
static VOTER_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the voter tests' turn (released when the guard drops).
pub fn voter_turn() -> std::sync::MutexGuard<'static, ()> {
    VOTER_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the long form was asked for (`PALISADE_CHAOS=full`).
pub fn full() -> bool {
    std::env::var("PALISADE_CHAOS").is_ok_and(|v| v == "full")
}

/// The form's name, for the reports.
pub fn form() -> &'static str {
    if full() { "full" } else { "short" }
}

/// A lab name unique to this test process and tag (`tag` ≤ 12 chars).
pub fn lab_name(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// Runs `f` on a thread on the lab's client host.
pub fn on_client<T: Send>(
    lab: &VoterLab,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            lab.enter_client()?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    })
}

/// The policy revision before the storm (the model's initial state).
pub fn policy_revision(lab: &VoterLab) -> anyhow::Result<u64> {
    on_client(lab, || {
        Ok(Api::new(&lab.api(1), Duration::from_secs(5))?.policy_revision()?)
    })
}

/// After the storm: reads the shared policies once more through `leader`, waits until every
/// voter holds every acknowledged identity with the id it was acknowledged with, and checks both
/// histories for linearizability. Prints what it verified.
pub fn verify(
    lab: &VoterLab,
    rec: &Recorded,
    rev0: u64,
    leader: usize,
    voters: &[usize],
) -> anyhow::Result<()> {
    on_client(lab, || {
        final_reads(rec, &Api::new(&lab.api(leader), Duration::from_secs(5))?);
        let acked = rec
            .acked_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for &k in voters {
            let api = Api::new(&lab.api(k), Duration::from_secs(5))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                // This member's own applied state, not the leader's.
                let held: std::collections::BTreeMap<String, u64> = api
                    .identities(true)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let missing: Vec<_> = acked
                    .iter()
                    .filter(|(l, id)| held.get(*l) != Some(*id))
                    .take(5)
                    .collect();
                if missing.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "voter {k} lacks acknowledged identities (label → acknowledged id, held: {:?}): {missing:?}",
                    missing
                        .iter()
                        .map(|(l, _)| held.get(*l))
                        .collect::<Vec<_>>()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        println!(
            "  checked: all {} acknowledged identities present, with their acknowledged ids, on voters {voters:?}",
            acked.len()
        );
        Ok(())
    })?;
    // First the ids, the stored objects and the revisions; then the strict models, where
    // `created: true` means this call created the identity and `changed: false` that this call
    // changed nothing: a forwarded write retried across a leader change must still take effect
    // once and answer as its first attempt (the control plane's request ids). A failure of the
    // second only is about the flags.
    let t = Instant::now();
    rec.identities.assert_verdict(
        "identity allocation",
        check_identities(&rec.identities.operations(), false, BUDGET),
    );
    let ids = rec.identities.assert_verdict(
        "identity allocation with strict `created` flags",
        check_identities(&rec.identities.operations(), true, BUDGET),
    );
    let ids_took = t.elapsed();
    let t = Instant::now();
    rec.policies
        .assert_linearizable("policy operations", &Policies::at(rev0), BUDGET);
    let pols = rec.policies.assert_linearizable(
        "policy operations with strict `changed` flags",
        &Policies::strict_at(rev0),
        BUDGET,
    );
    let pols_took = t.elapsed();
    println!(
        "  checked: linearizable, `created` and `changed` flags taken literally — identities {} completed + {} indeterminate (checked in {ids_took:?}), policies {} completed + {} indeterminate (checked in {pols_took:?}); {} calls refused or unanswered reads left out",
        ids.completed,
        ids.indeterminate,
        pols.completed,
        pols.indeterminate,
        ids.refused + pols.refused,
    );
    Ok(())
}

/// Configurations the checker may explore for a verdict the test asserts.
pub const BUDGET: u64 = 2_000_000;

/// Sleeps `d`.
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}
