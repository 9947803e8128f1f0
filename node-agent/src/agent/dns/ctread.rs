//! The DNS proxy's conntrack reads, on a thread of their own: a pass over a full conntrack map
//! takes hundreds of milliseconds (392 ms for 262,016 entries, docs/BENCHMARKS.md), and on the
//! run loop it held up every CNI request, control-plane update and DNS answer behind it.
//!
//! ```text
//!  run loop: DnsProxy::expire ── ask(interest) ──▶ reader thread: one pass over the maps
//!                 (returns at once)                       │
//!  run loop: wake fd readable ◀── wake ── result (read at, flows) ──┘
//!            DnsProxy::expire ── take() ──▶ holders, last packets, expiry as of the ask
//! ```
//! One read at a time: the run loop asks again only once it has taken the previous result.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::Instant;

use crate::datapath::CtFlow;

/// Per expired address, the endpoints whose open connections to it are of interest.
pub type Interest = BTreeMap<IpAddr, BTreeSet<IpAddr>>;

/// One pass over the conntrack: the flows whose (source, destination) the filter accepts.
pub type ReadFn =
    Box<dyn FnMut(&dyn Fn(IpAddr, IpAddr) -> bool) -> Result<Vec<CtFlow>, String> + Send>;

/// What one read found.
#[derive(Debug)]
pub struct Read {
    /// When the pass started: a flow's `idle` counts back from here.
    pub at: Instant,
    /// The flows, or why the maps could not be read.
    pub flows: Result<Vec<CtFlow>, String>,
}

/// The reader thread, as the run loop holds it.
pub struct CtReader {
    jobs: Sender<Interest>,
    results: Receiver<Read>,
}

impl CtReader {
    /// Starts the thread; `wake` is called after each result is sent (the run loop polls the
    /// DNS proxy's wake fd).
    pub fn start(mut read: ReadFn, wake: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Interest>();
        let (result_tx, results) = mpsc::channel();
        std::thread::Builder::new()
            .name("dns-conntrack".into())
            .spawn(move || {
                // Ends when the proxy (the sender) is dropped.
                for interest in job_rx {
                    let at = Instant::now();
                    let filter = |src: IpAddr, dst: IpAddr| {
                        interest.get(&dst).is_some_and(|l| l.contains(&src))
                    };
                    let flows = read(&filter);
                    if result_tx.send(Read { at, flows }).is_err() {
                        return;
                    }
                    wake();
                }
            })?;
        Ok(CtReader { jobs, results })
    }

    /// Asks for one pass; returns at once.
    pub fn ask(&self, interest: Interest) {
        // A send fails only when the thread is gone; `take` reports that.
        let _ = self.jobs.send(interest);
    }

    /// The result of the pass asked for, if it is done (`None`: still reading). A thread that
    /// died answers with an error: nothing holds (fail closed).
    pub fn take(&self) -> Option<Read> {
        match self.results.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Read {
                at: Instant::now(),
                flows: Err("the conntrack reader thread stopped".into()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn flow(src: &str, dst: &str) -> CtFlow {
        CtFlow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40000,
            dport: 80,
            protocol: 6,
            idle: Duration::from_millis(300),
            closing: false,
        }
    }

    /// A slow pass (as over a full map) does not hold up the caller: asking returns at once,
    /// the result comes later with the filter applied, and the wake hook fires.
    #[test]
    fn a_slow_pass_runs_beside_the_caller() {
        let table = [
            flow("10.200.1.11", "10.96.0.12"),
            flow("10.200.1.12", "10.96.0.12"),
            flow("10.200.1.11", "10.96.0.13"),
        ];
        let read: ReadFn = Box::new(move |want| {
            std::thread::sleep(Duration::from_millis(400));
            Ok(table
                .iter()
                .filter(|f| want(f.src, f.dst))
                .copied()
                .collect())
        });
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let reader = CtReader::start(read, move || {
            w.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let mut interest = Interest::new();
        interest
            .entry("10.96.0.12".parse().unwrap())
            .or_default()
            .insert("10.200.1.11".parse().unwrap());
        let t0 = Instant::now();
        reader.ask(interest);
        assert!(reader.take().is_none(), "still reading");
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "the caller waited {:?}",
            t0.elapsed()
        );
        let deadline = t0 + Duration::from_secs(10);
        let r = loop {
            if let Some(r) = reader.take() {
                break r;
            }
            assert!(Instant::now() < deadline, "no result");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(r.at >= t0);
        assert_eq!(r.flows.unwrap(), vec![flow("10.200.1.11", "10.96.0.12")]);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    }

    /// A reader whose thread died reports it (the proxy then lets nothing hold).
    #[test]
    fn a_dead_reader_is_an_error() {
        let read: ReadFn = Box::new(|_| panic!("the maps are gone"));
        let reader = CtReader::start(read, || {}).unwrap();
        reader.ask(Interest::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = loop {
            if let Some(r) = reader.take() {
                break r;
            }
            assert!(Instant::now() < deadline, "no answer");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(r.flows.unwrap_err().contains("stopped"));
    }
}
