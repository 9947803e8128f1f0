//! A write storm: worker threads on the client host calling the voters in turn — identity
//! allocations (new label sets and a few shared by every worker) and policy applies, deletes and
//! reads on a few shared keys — every call recorded for the linearizability checker.
//!
//! A write whose outcome is unknown (a timeout, a reset, a 5xx) is retried on the other members
//! with the same `Idempotency-Key` until one answers, as a client with failover does: the
//! control plane must make it take effect once and answer as the attempt that did. The history
//! records one operation from the first attempt to the answer; only a write no retry got an
//! answer for stays indeterminate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use palisade_lab::exec::enter_netns;

use crate::api::{Api, CallError};
use crate::history::{History, Outcome};
use crate::models::{Allocate, Identities, Policies, PolicyOp, PolicyRet};

/// Policy keys the workers share.
pub const POLICY_KEYS: usize = 4;
/// Label sets every worker allocates (same labels must get the same id under any fault).
pub const SHARED_LABEL_SETS: usize = 8;

/// What the storm recorded, shared with the test while it runs.
pub struct Recorded {
    /// Identity allocations.
    pub identities: History<Identities>,
    /// Policy operations.
    pub policies: History<Policies>,
    /// Acknowledged allocations: label → id.
    pub acked_ids: Mutex<BTreeMap<String, u64>>,
    /// Acknowledged writes (allocations and policy writes) so far.
    pub acked_writes: AtomicUsize,
    /// Wall clock at the start (ns), making this storm's idempotency keys its own.
    storm_id: u128,
}

/// A running storm.
pub struct Storm {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<anyhow::Result<()>>>,
    /// What it recorded.
    pub recorded: Arc<Recorded>,
}

impl Storm {
    /// Starts `workers` threads in `netns` calling the members at `apis` in turn, each call
    /// giving up after `timeout`.
    pub fn start(netns: &str, apis: &[String], workers: usize, timeout: Duration) -> Storm {
        let start = Instant::now();
        let recorded = Arc::new(Recorded {
            identities: History::new(start),
            policies: History::new(start),
            acked_ids: Mutex::new(BTreeMap::new()),
            acked_writes: AtomicUsize::new(0),
            storm_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|w| {
                let (netns, apis, stop, rec) = (
                    netns.to_owned(),
                    apis.to_vec(),
                    stop.clone(),
                    recorded.clone(),
                );
                std::thread::spawn(move || worker(w, &netns, &apis, timeout, &stop, &rec))
            })
            .collect();
        Storm {
            stop,
            workers,
            recorded,
        }
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.recorded.acked_writes.load(Ordering::Relaxed)
    }

    /// Waits until one more write than `before` is acknowledged; returns how long that took
    /// (`None` after `limit`).
    pub fn wait_ack_after(&self, before: usize, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.acked() > before {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Stops the workers and waits for them.
    pub fn stop(self) -> anyhow::Result<Arc<Recorded>> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a storm worker panicked"))??;
        }
        Ok(self.recorded)
    }
}

/// How long a worker keeps retrying a write whose outcome is unknown.
const RETRY_FOR: Duration = Duration::from_secs(8);

/// Runs `call` on member `first`, and while the outcome is unknown on the next members not left
/// alone (the same call: its idempotency key inside), until one answers or [`RETRY_FOR`] passed.
/// A member whose attempt failed is left alone for [`AVOID`]. A first attempt that was never sent
/// or was refused is returned as is (it had no effect); after that, any failure leaves the
/// outcome unknown.
fn with_failover<T>(
    clients: &[Api],
    first: usize,
    avoid_until: &mut [Instant],
    call: impl Fn(&Api) -> Result<T, CallError>,
) -> Result<T, CallError> {
    let deadline = Instant::now() + RETRY_FOR;
    let mut target = first;
    let mut last = match call(&clients[target]) {
        Err(CallError::Unknown(e)) => e,
        Err(e @ CallError::NotSent(_)) => {
            avoid_until[target] = Instant::now() + AVOID;
            return Err(e);
        }
        done => return done,
    };
    while Instant::now() < deadline {
        avoid_until[target] = Instant::now() + AVOID;
        std::thread::sleep(Duration::from_millis(100));
        target = next_target(target, avoid_until);
        match call(&clients[target]) {
            Ok(t) => return Ok(t),
            Err(e) => last = format!("{last}; then {e}"),
        }
    }
    Err(CallError::Unknown(last))
}

fn worker(
    w: usize,
    netns: &str,
    apis: &[String],
    timeout: Duration,
    stop: &AtomicBool,
    rec: &Recorded,
) -> anyhow::Result<()> {
    enter_netns(netns)?;
    let clients = apis
        .iter()
        .map(|a| Api::new(a, timeout))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut k = 0usize;
    let mut target = w % clients.len();
    let mut avoid_until = vec![Instant::now(); clients.len()];
    // Keys unique to this storm: a worker's k-th write.
    let run = std::process::id();
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let api = &clients[target];
        let ikey = format!("chaos-{run}-{:x}-w{w}-k{k}", rec.storm_id);
        let answered = match k % 6 {
            0..=2 => {
                let label = if k % 6 == 2 {
                    format!("chaos-shared=s{}", (k / 6 + w) % SHARED_LABEL_SETS)
                } else {
                    format!("chaos=w{w}-k{k}")
                };
                let labels = vec![label.clone()];
                let out = rec.identities.record(
                    w,
                    Allocate(label.clone()),
                    false,
                    || {
                        with_failover(&clients, target, &mut avoid_until, |a| {
                            a.allocate(&labels, &ikey)
                        })
                    },
                    Clone::clone,
                );
                if let Outcome::Done(a) = &out {
                    rec.acked_ids
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(label, a.id);
                    rec.acked_writes.fetch_add(1, Ordering::Relaxed);
                }
                !matches!(out, Outcome::Indeterminate(_) | Outcome::Refused(_))
            }
            3 | 5 => {
                let key = format!("chaos-p{}", (k / 6 + w) % POLICY_KEYS);
                let delete = k % 6 == 5 && (k / 6).is_multiple_of(2);
                let out = if delete {
                    rec.policies.record(
                        w,
                        PolicyOp::Delete { key: key.clone() },
                        false,
                        || {
                            with_failover(&clients, target, &mut avoid_until, |a| {
                                a.delete(&key, &ikey)
                            })
                        },
                        |&(revision, changed)| PolicyRet::Written { revision, changed },
                    )
                } else {
                    // Values repeat now and then, so identical re-applies happen too.
                    let value = 1000 + ((w * 7 + k) % 50) as u64;
                    rec.policies.record(
                        w,
                        PolicyOp::Apply {
                            key: key.clone(),
                            value,
                        },
                        false,
                        || {
                            with_failover(&clients, target, &mut avoid_until, |a| {
                                a.apply(&key, value, &ikey)
                            })
                        },
                        |&(revision, changed)| PolicyRet::Written { revision, changed },
                    )
                };
                if matches!(out, Outcome::Done(_)) {
                    rec.acked_writes.fetch_add(1, Ordering::Relaxed);
                }
                matches!(out, Outcome::Done(_))
            }
            _ => {
                let key = format!("chaos-p{}", (k / 6 + w + 1) % POLICY_KEYS);
                let out = rec.policies.record(
                    w,
                    PolicyOp::Get { key: key.clone() },
                    true,
                    || api.get(&key),
                    |r| PolicyRet::Read(*r),
                );
                matches!(out, Outcome::Done(_))
            }
        };
        // Every call goes to the next member (followers forward writes to the leader). A member
        // that failed is left alone for a while, as a client with failover would: each call to
        // a cut-off member costs a timeout and leaves one more indeterminate operation.
        if !answered {
            avoid_until[target] = Instant::now() + AVOID;
            std::thread::sleep(Duration::from_millis(50));
        }
        target = next_target(target, &avoid_until);
    }
    Ok(())
}

/// How long a worker leaves a member alone after a call to it failed.
const AVOID: Duration = Duration::from_secs(3);

/// The member after `from` not being left alone (the next one if all are).
fn next_target(from: usize, avoid_until: &[Instant]) -> usize {
    let n = avoid_until.len();
    let now = Instant::now();
    (1..=n)
        .map(|d| (from + d) % n)
        .find(|&t| avoid_until[t] <= now)
        .unwrap_or((from + 1) % n)
}

/// Reads every shared policy key once more through `api` and records the reads (after the
/// storm, so the checker also proves what stayed).
pub fn final_reads(rec: &Recorded, api: &Api) {
    for p in 0..POLICY_KEYS {
        let key = format!("chaos-p{p}");
        rec.policies.record(
            usize::MAX,
            PolicyOp::Get { key: key.clone() },
            true,
            || api.get(&key),
            |r| PolicyRet::Read(*r),
        );
    }
}
