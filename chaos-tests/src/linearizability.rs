//! A Wing–Gong linearizability checker with Lowe's memoisation, over any sequential
//! specification ([`Model`]).
//!
//! A history is a set of operations, each with the time it was invoked and, when the client got
//! an answer, the time of the answer and the answer itself. An operation whose answer never came
//! (a timeout, a connection cut after the request was sent, a 5xx) is *indeterminate*: it may
//! have taken effect at any moment after its invocation, or never; the checker tries both.
//!
//! The history is linearizable when there is a total order of all completed operations and some
//! of the indeterminate ones that (a) respects real time — an operation that was answered before
//! another was invoked comes first — and (b) is a legal run of the model from its initial state
//! producing exactly the recorded answers. The search explores, depth first, which pending
//! operation takes effect next; it remembers every (set of operations applied, model state) pair
//! already explored, so each configuration is visited once (Lowe, "Testing for linearizability",
//! 2017). The search is exponential in the number of operations concurrent at one moment, not in
//! the history's length; a budget bounds it and an exhausted budget is reported as such, never
//! as a verdict.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification: the states of the object and how each operation moves them.
pub trait Model: Clone + Eq + Hash + Debug {
    /// An operation (its input).
    type Op: Debug;
    /// An operation's answer.
    type Ret: Debug + PartialEq;

    /// The states the object can be in after `op` takes effect in this state and answers `ret`
    /// (`None`: the answer is unknown, any answer is acceptable). Empty when this answer is
    /// impossible here. More than one state when the operation is non-deterministic.
    fn step(&self, op: &Self::Op, ret: Option<&Self::Ret>) -> Vec<Self>;
}

/// One recorded operation. Times are in any monotonic unit (the recorder uses nanoseconds since
/// the history began).
#[derive(Debug, Clone, PartialEq)]
pub struct Operation<O, R> {
    /// Which client issued it (for messages only: real-time order is what constrains).
    pub client: usize,
    /// When it was invoked.
    pub call: u64,
    /// When it was answered and the answer; `None` for an indeterminate operation.
    pub ret: Option<(u64, R)>,
    /// The operation.
    pub op: O,
}

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A legal order exists: the indices of the operations in it (indeterminate operations that
    /// never took effect are absent).
    Linearizable {
        /// The witness order.
        order: Vec<usize>,
    },
    /// No legal order exists.
    NotLinearizable {
        /// The longest legal prefix the search found.
        longest_prefix: Vec<usize>,
        /// The completed operations none of which could come next after that prefix.
        stuck: Vec<usize>,
    },
    /// The search gave up after exploring `explored` configurations.
    Inconclusive {
        /// Configurations explored.
        explored: u64,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }
}

/// A fixed-size set of operation indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// One level of the depth-first search: the moves still to try from it.
struct Frame<M> {
    moves: Vec<(usize, M)>,
    next: usize,
}

/// Checks `history` against `init` exploring at most `budget` configurations.
pub fn check<M: Model>(init: &M, history: &[Operation<M::Op, M::Ret>], budget: u64) -> Verdict {
    let required = history.iter().filter(|o| o.ret.is_some()).count();
    if required == 0 {
        return Verdict::Linearizable { order: Vec::new() };
    }
    let mut applied = Bits::new(history.len());
    let mut order: Vec<usize> = Vec::new();
    let mut done = 0usize;
    let mut best: (usize, Vec<usize>, Bits, M) = (0, Vec::new(), applied.clone(), init.clone());
    let mut seen: HashSet<(Bits, M)> = HashSet::new();
    let mut explored = 0u64;
    let mut stack = vec![Frame {
        moves: moves(history, &applied, init),
        next: 0,
    }];
    while let Some(top) = stack.last_mut() {
        if top.next == top.moves.len() {
            stack.pop();
            if let Some(i) = order.pop() {
                applied.clear(i);
                if history[i].ret.is_some() {
                    done -= 1;
                }
            }
            continue;
        }
        let (i, state) = top.moves[top.next].clone();
        top.next += 1;
        applied.set(i);
        if !seen.insert((applied.clone(), state.clone())) {
            applied.clear(i);
            continue;
        }
        explored += 1;
        if explored > budget {
            return Verdict::Inconclusive { explored };
        }
        order.push(i);
        if history[i].ret.is_some() {
            done += 1;
        }
        if done == required {
            return Verdict::Linearizable { order };
        }
        if done > best.0 {
            best = (done, order.clone(), applied.clone(), state.clone());
        }
        let next = moves(history, &applied, &state);
        stack.push(Frame {
            moves: next,
            next: 0,
        });
    }
    // Nothing works: report the completed operations that could not follow the longest prefix.
    let (_, longest_prefix, applied, _) = best;
    let horizon = horizon(history, &applied);
    let stuck = (0..history.len())
        .filter(|&i| !applied.has(i) && history[i].ret.is_some() && history[i].call <= horizon)
        .collect();
    Verdict::NotLinearizable {
        longest_prefix,
        stuck,
    }
}

/// The earliest answer among the operations not applied yet: nothing invoked after it may take
/// effect before that operation does.
fn horizon<O, R>(history: &[Operation<O, R>], applied: &Bits) -> u64 {
    history
        .iter()
        .enumerate()
        .filter(|(i, _)| !applied.has(*i))
        .filter_map(|(_, o)| o.ret.as_ref().map(|(t, _)| *t))
        .min()
        .unwrap_or(u64::MAX)
}

/// Every (operation, next state) that may come next: operations not applied yet that were
/// invoked no later than the horizon, with each state the model allows. Completed operations
/// come first, earliest answer first, and indeterminate ones last: the search then follows the
/// answers and inserts an indeterminate operation only where nothing else fits, which keeps the
/// search of a linearizable history close to linear.
fn moves<M: Model>(
    history: &[Operation<M::Op, M::Ret>],
    applied: &Bits,
    state: &M,
) -> Vec<(usize, M)> {
    let horizon = horizon(history, applied);
    let mut out = Vec::new();
    for (i, o) in history.iter().enumerate() {
        if applied.has(i) || o.call > horizon {
            continue;
        }
        for next in state.step(&o.op, o.ret.as_ref().map(|(_, r)| r)) {
            out.push((i, next));
        }
    }
    out.sort_by_key(|(i, _)| history[*i].ret.as_ref().map_or(u64::MAX, |(t, _)| *t));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register holding an integer: write(v) answers nothing, read answers the value.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Register(u32);

    #[derive(Debug)]
    enum RegOp {
        Write(u32),
        Read,
    }

    impl Model for Register {
        type Op = RegOp;
        type Ret = Option<u32>;
        fn step(&self, op: &RegOp, ret: Option<&Option<u32>>) -> Vec<Self> {
            match (op, ret) {
                (RegOp::Write(v), None | Some(None)) => vec![Register(*v)],
                (RegOp::Read, None) => vec![self.clone()],
                (RegOp::Read, Some(Some(v))) if *v == self.0 => vec![self.clone()],
                _ => Vec::new(),
            }
        }
    }

    fn w(client: usize, call: u64, ret: Option<u64>, v: u32) -> Operation<RegOp, Option<u32>> {
        Operation {
            client,
            call,
            ret: ret.map(|t| (t, None)),
            op: RegOp::Write(v),
        }
    }

    fn r(client: usize, call: u64, ret: u64, v: u32) -> Operation<RegOp, Option<u32>> {
        Operation {
            client,
            call,
            ret: Some((ret, Some(v))),
            op: RegOp::Read,
        }
    }

    #[test]
    fn a_sequential_legal_history_is_linearizable() {
        let h = vec![
            w(0, 0, Some(1), 1),
            r(1, 2, 3, 1),
            w(0, 4, Some(5), 2),
            r(1, 6, 7, 2),
        ];
        assert_eq!(
            check(&Register(0), &h, 1000),
            Verdict::Linearizable {
                order: vec![0, 1, 2, 3]
            }
        );
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        // The write of 1 was answered before the read began; the read still saw 0.
        let h = vec![w(0, 0, Some(1), 1), r(1, 2, 3, 0)];
        match check(&Register(0), &h, 1000) {
            Verdict::NotLinearizable {
                longest_prefix,
                stuck,
            } => {
                assert_eq!(longest_prefix, vec![0]);
                assert_eq!(stuck, vec![1]);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // Write 1 overlaps both reads: one read sees 0 (before it), the other 1 (after it).
        let h = vec![
            w(0, 0, Some(10), 1),
            r(1, 1, 3, 1),
            r(2, 4, 6, 1),
            r(3, 2, 5, 0),
        ];
        // r3 [2,5] saw 0 and r1 [1,3] saw 1: r3 must precede the write, r1 follow it; r3 can
        // still be placed before r1 because they overlap. Linearizable: r3, w, r1, r2.
        assert!(check(&Register(0), &h, 1000).is_linearizable());
        // But a read that *begins after* another read that saw the new value cannot see the
        // old one (r3 now starts after r1 answered).
        let h = vec![w(0, 0, Some(10), 1), r(1, 1, 3, 1), r(3, 4, 5, 0)];
        assert!(!check(&Register(0), &h, 1000).is_linearizable());
    }

    #[test]
    fn an_indeterminate_write_may_take_effect_late_or_never() {
        // The write timed out. Reads after it may see 0 ...
        let h = vec![w(0, 0, None, 1), r(1, 5, 6, 0)];
        assert!(check(&Register(0), &h, 1000).is_linearizable());
        // ... or 1, even long after the client gave up ...
        let h = vec![w(0, 0, None, 1), r(1, 5, 6, 0), r(1, 7, 8, 1)];
        assert!(check(&Register(0), &h, 1000).is_linearizable());
        // ... but once it is seen it cannot be unseen.
        let h = vec![w(0, 0, None, 1), r(1, 5, 6, 1), r(1, 7, 8, 0)];
        assert!(!check(&Register(0), &h, 1000).is_linearizable());
        // And nothing may take effect before it was invoked.
        let h = vec![r(1, 0, 1, 1), w(0, 2, None, 1)];
        assert!(!check(&Register(0), &h, 1000).is_linearizable());
    }

    #[test]
    fn a_value_nobody_wrote_is_not_linearizable() {
        let h = vec![w(0, 0, Some(5), 1), w(1, 0, Some(5), 2), r(2, 1, 4, 3)];
        assert!(!check(&Register(0), &h, 1000).is_linearizable());
    }

    #[test]
    fn many_concurrent_clients_stay_tractable() {
        // 8 clients × 60 rounds of overlapping writes and reads of the last value.
        let mut h = Vec::new();
        let mut t = 0;
        for round in 0..60u32 {
            for c in 0..8usize {
                h.push(w(
                    c,
                    t + c as u64,
                    Some(t + 20 + c as u64),
                    round * 8 + c as u32,
                ));
            }
            t += 40;
            h.push(r(8, t, t + 1, round * 8 + 7));
            t += 2;
        }
        assert!(check(&Register(0), &h, 5_000_000).is_linearizable());
    }

    #[test]
    fn an_exhausted_budget_is_inconclusive_not_a_verdict() {
        let h = vec![w(0, 0, Some(10), 1), w(1, 0, Some(10), 2), r(2, 11, 12, 1)];
        assert!(matches!(
            check(&Register(0), &h, 1),
            Verdict::Inconclusive { .. }
        ));
    }
}
