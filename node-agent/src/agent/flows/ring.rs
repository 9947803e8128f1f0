//! The agent's flow history: a bounded ring of the newest flows. Each flow gets a sequence
//! number; readers (observer streams) keep a cursor and learn how many flows were overwritten
//! before they got to them. A `watch` channel tells followers that new flows arrived; the
//! writer is a plain thread, so it only ever calls `send_replace` (no runtime needed).
//!
//! Datapath flows are stored as the decoded event plus a reference to the naming snapshot of
//! the moment it was read ([`RawEvent`]), and built into a Hubble `Flow` only when a reader
//! first asks for one ([`StoredFlow::flow`]): most flows are overwritten unread, and building a
//! `Flow` (address strings, label copies, a uuid) cost more than everything else per event.
//! The result is the same `Flow` an eager build would give: same event, same snapshot.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use palisade_api::flow::Flow;
use palisade_datapath_common::events::FlowEvent;
use tokio::sync::watch;

use super::decode::to_flow;
use super::enrich::Enrichment;

/// A datapath event as read: built into a `Flow` on demand.
#[derive(Debug, Clone)]
pub struct RawEvent {
    /// The decoded event.
    pub ev: FlowEvent,
    /// When it was observed, Unix nanoseconds.
    pub time_ns: u64,
    /// The names of endpoints and identities when it was read.
    pub ctx: Arc<Enrichment>,
}

/// One flow in the ring; dereferences to its Hubble `Flow`.
#[derive(Debug)]
pub struct StoredFlow {
    seq: u64,
    raw: Option<RawEvent>,
    /// Boxed: an unread flow costs a pointer here, not a whole `Flow`.
    flow: OnceLock<Box<Flow>>,
}

impl StoredFlow {
    /// The sequence number the ring gave this flow.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The Hubble flow, built on first use (`uuid` is `<node>/<seq>` unless the producer set
    /// one).
    pub fn flow(&self) -> &Flow {
        self.flow.get_or_init(|| {
            // Every entry has either a raw event or a flow set at push time.
            let f = match &self.raw {
                Some(r) => to_flow(&r.ev, &r.ctx, r.time_ns),
                None => Flow::default(),
            };
            Box::new(with_uuid(f, self.seq))
        })
    }
}

impl Deref for StoredFlow {
    type Target = Flow;
    fn deref(&self) -> &Flow {
        self.flow()
    }
}

fn with_uuid(mut f: Flow, seq: u64) -> Flow {
    if f.uuid.is_empty() {
        f.uuid = format!("{}/{}", f.node_name, seq);
    }
    f
}

/// Ring occupancy and counters, as `ServerStatus` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Flows held.
    pub num_flows: u64,
    /// Capacity.
    pub max_flows: u64,
    /// Flows ever stored.
    pub seen_flows: u64,
    /// Flows overwritten (the ring was full).
    pub overwritten: u64,
    /// Events the kernel's ring buffer had no room for.
    pub kernel_lost: u64,
    /// Since the ring was made.
    pub uptime_ns: u64,
}

impl RingStats {
    /// All events lost: overwritten here plus lost in the kernel.
    pub fn lost(&self) -> u64 {
        self.overwritten + self.kernel_lost
    }
}

struct Inner {
    flows: VecDeque<Arc<StoredFlow>>,
    /// Sequence number the next flow gets (= flows ever stored).
    next_seq: u64,
    overwritten: u64,
    kernel_lost: u64,
}

/// The ring.
pub struct FlowRing {
    inner: Mutex<Inner>,
    capacity: usize,
    started: Instant,
    notify: watch::Sender<u64>,
}

/// What a reader gets from [`FlowRing::read_from`].
#[derive(Debug, Default)]
pub struct Batch {
    /// Flows with their sequence numbers, oldest first.
    pub flows: Vec<(u64, Arc<StoredFlow>)>,
    /// Flows between the cursor and the oldest one held (overwritten before this read).
    pub missed: u64,
    /// The cursor for the next read.
    pub next: u64,
}

impl FlowRing {
    /// A ring holding up to `capacity` flows (at least one).
    pub fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(Self {
            inner: Mutex::new(Inner {
                flows: VecDeque::with_capacity(capacity.min(1 << 16)),
                next_seq: 0,
                overwritten: 0,
                kernel_lost: 0,
            }),
            capacity,
            started: Instant::now(),
            notify: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores flows (one lock, one wake-up per batch); returns how many older ones were
    /// overwritten. `uuid` is filled with `<node>/<seq>` when empty.
    pub fn push_batch(&self, flows: impl IntoIterator<Item = Flow>) -> u64 {
        self.push(flows.into_iter().map(|f| {
            move |seq| {
                let flow = OnceLock::new();
                let _ = flow.set(Box::new(with_uuid(f, seq)));
                StoredFlow {
                    seq,
                    raw: None,
                    flow,
                }
            }
        }))
    }

    /// Stores datapath events, to be built into flows when read; otherwise as
    /// [`push_batch`](Self::push_batch).
    pub fn push_events(&self, events: impl IntoIterator<Item = RawEvent>) -> u64 {
        self.push(events.into_iter().map(|raw| {
            move |seq| StoredFlow {
                seq,
                raw: Some(raw),
                flow: OnceLock::new(),
            }
        }))
    }

    fn push<F: FnOnce(u64) -> StoredFlow>(&self, entries: impl IntoIterator<Item = F>) -> u64 {
        let mut inner = self.lock();
        let mut overwritten = 0;
        // What the ring lets go of is freed after the lock is released.
        let mut gone = Vec::new();
        for make in entries {
            if inner.flows.len() == self.capacity {
                gone.extend(inner.flows.pop_front());
                overwritten += 1;
            }
            let seq = inner.next_seq;
            inner.flows.push_back(Arc::new(make(seq)));
            inner.next_seq += 1;
        }
        inner.overwritten += overwritten;
        let next = inner.next_seq;
        drop(inner);
        drop(gone);
        self.notify.send_replace(next);
        overwritten
    }

    /// Records the kernel's count of events lost since the agent started.
    pub fn set_kernel_lost(&self, lost: u64) {
        self.lock().kernel_lost = lost;
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        let inner = self.lock();
        RingStats {
            num_flows: inner.flows.len() as u64,
            max_flows: self.capacity as u64,
            seen_flows: inner.next_seq,
            overwritten: inner.overwritten,
            kernel_lost: inner.kernel_lost,
            uptime_ns: self.started.elapsed().as_nanos() as u64,
        }
    }

    /// Flows with sequence number `cursor` or later.
    pub fn read_from(&self, cursor: u64) -> Batch {
        let inner = self.lock();
        let first = inner.next_seq - inner.flows.len() as u64;
        let start = cursor.max(first);
        let skip = (start - first) as usize;
        Batch {
            flows: inner
                .flows
                .iter()
                .skip(skip)
                .enumerate()
                .map(|(i, f)| (start + i as u64, Arc::clone(f)))
                .collect(),
            missed: first.saturating_sub(cursor),
            next: inner.next_seq,
        }
    }

    /// A receiver that changes whenever flows are stored (its value: the next sequence number).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(n: u64) -> Flow {
        Flow {
            node_name: "n".into(),
            policy_match_type: n as u32,
            ..Flow::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_counts_what_it_overwrote() {
        let ring = FlowRing::new(3);
        assert_eq!(ring.push_batch((0..5).map(flow)), 2);
        let s = ring.stats();
        assert_eq!(
            (s.num_flows, s.max_flows, s.seen_flows, s.overwritten),
            (3, 3, 5, 2)
        );
        let b = ring.read_from(0);
        assert_eq!(b.missed, 2);
        assert_eq!(b.next, 5);
        let seqs: Vec<u64> = b.flows.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(b.flows[0].1.policy_match_type, 2);
        assert_eq!(b.flows[0].1.uuid, "n/2");
        let b = ring.read_from(4);
        assert_eq!((b.missed, b.flows.len()), (0, 1));
        ring.set_kernel_lost(7);
        assert_eq!(ring.stats().lost(), 9);
    }

    #[test]
    fn followers_are_woken_with_the_next_sequence() {
        let ring = FlowRing::new(2);
        let rx = ring.subscribe();
        ring.push_batch([flow(0)]);
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(*rx.borrow(), 1);
        assert!(ring.read_from(1).flows.is_empty());
    }
}
