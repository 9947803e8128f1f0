//! Recording histories of control-plane operations for the linearizability checker: when each
//! operation was invoked and answered, what it answered, and which ones are indeterminate.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::api::CallError;

use crate::linearizability::{Model, Operation, Verdict, check};

/// What became of one call.
#[derive(Debug)]
pub enum Outcome<T> {
    /// Answered.
    Done(T),
    /// Certainly without effect: never sent (the connection was refused) or refused by the
    /// server with a 4xx. Not recorded.
    Refused(String),
    /// Unknown: it may have taken effect (a timeout, a reset, a 5xx). Recorded as indeterminate.
    Indeterminate(String),
}

impl<T> Outcome<T> {
    /// The answer, if any.
    pub fn done(self) -> Option<T> {
        match self {
            Outcome::Done(t) => Some(t),
            _ => None,
        }
    }
}

/// Whether a failed call certainly had no effect.
pub fn certainly_without_effect(e: &CallError) -> bool {
    matches!(e, CallError::NotSent(_) | CallError::Refused(..))
}

/// A concurrent history of operations on one object (one [`Model`]).
pub struct History<M: Model> {
    start: Instant,
    ops: Mutex<Vec<Operation<M::Op, M::Ret>>>,
    refused: AtomicUsize,
}

/// Counts of a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Operations answered.
    pub completed: usize,
    /// Operations whose effect is unknown.
    pub indeterminate: usize,
    /// Calls certainly without effect (not in the history).
    pub refused: usize,
}

impl<M: Model> History<M> {
    /// An empty history whose clock starts at `start`.
    pub fn new(start: Instant) -> Self {
        History {
            start,
            ops: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs `call` as operation `op` of `client`, records it with the answer `answer` makes of
    /// its result, and returns what became of it. `read_only` operations that fail are not
    /// recorded (whether they happened cannot matter).
    pub fn record<T>(
        &self,
        client: usize,
        op: M::Op,
        read_only: bool,
        call: impl FnOnce() -> Result<T, CallError>,
        answer: impl FnOnce(&T) -> M::Ret,
    ) -> Outcome<T> {
        let invoked = self.now();
        let result = call();
        let answered = self.now();
        let (ret, outcome) = match result {
            Ok(t) => (Some((answered, answer(&t))), Outcome::Done(t)),
            Err(e) if read_only || certainly_without_effect(&e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Outcome::Refused(e.to_string());
            }
            Err(e) => (None, Outcome::Indeterminate(e.to_string())),
        };
        self.lock().push(Operation {
            client,
            call: invoked,
            ret,
            op,
        });
        outcome
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation<M::Op, M::Ret>>> {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many operations completed, are indeterminate, were refused.
    pub fn counts(&self) -> Counts {
        let ops = self.lock();
        let completed = ops.iter().filter(|o| o.ret.is_some()).count();
        Counts {
            completed,
            indeterminate: ops.len() - completed,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Checks the history from `init`, exploring at most `budget` configurations.
    pub fn check(&self, init: &M, budget: u64) -> Verdict {
        check(init, &self.lock(), budget)
    }

    /// The recorded operations.
    pub fn operations(&self) -> Vec<Operation<M::Op, M::Ret>>
    where
        M::Op: Clone,
        M::Ret: Clone,
    {
        self.lock().clone()
    }

    /// The operations at `indices`, for failure messages.
    pub fn describe(&self, indices: &[usize]) -> String {
        let ops = self.lock();
        indices
            .iter()
            .filter_map(|&i| ops.get(i).map(|o| format!("#{i} {o:?}")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes every operation, one per line with its index, to a file in the temp dir, for
    /// studying a failed check after the lab is gone; the file's path, or why there is none.
    pub fn dump(&self, what: &str) -> String {
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "palisade-chaos-{name}-{}-{}.txt",
            std::process::id(),
            self.now()
        ));
        let text: String = self
            .lock()
            .iter()
            .enumerate()
            .map(|(i, o)| format!("#{i} {o:?}\n"))
            .collect();
        match std::fs::write(&path, text) {
            Ok(()) => format!("the whole history is in {}", path.display()),
            Err(e) => format!(
                "the history could not be written to {}: {e}",
                path.display()
            ),
        }
    }

    /// Asserts the history is linearizable (within `budget`), with a message that shows the
    /// operations that could not be ordered.
    pub fn assert_linearizable(&self, what: &str, init: &M, budget: u64) -> Counts {
        self.assert_verdict(what, self.check(init, budget))
    }

    /// Asserts `verdict` (of this history) is [`Verdict::Linearizable`], with the message of
    /// [`History::assert_linearizable`].
    pub fn assert_verdict(&self, what: &str, verdict: Verdict) -> Counts {
        let counts = self.counts();
        match verdict {
            Verdict::Linearizable { .. } => counts,
            Verdict::NotLinearizable {
                longest_prefix,
                stuck,
            } => {
                let tail: Vec<usize> = longest_prefix
                    .iter()
                    .rev()
                    .take(10)
                    .rev()
                    .copied()
                    .collect();
                panic!(
                    "{what}: history of {counts:?} is NOT linearizable. Longest legal prefix has {} operations, ending with:\n{}\nnone of these can come next:\n{}\n{}",
                    longest_prefix.len(),
                    self.describe(&tail),
                    self.describe(&stuck),
                    self.dump(what)
                )
            }
            Verdict::Inconclusive { explored } => panic!(
                "{what}: linearizability check of {counts:?} inconclusive after {explored} configurations; {}",
                self.dump(what)
            ),
        }
    }
}
