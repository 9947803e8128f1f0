//! The flow reader thread: waits on the ring buffer's fd, drains it, decodes each event, counts
//! it in the Hubble metrics and stores it in the flow ring (named lazily, see `ring`). Once a
//! second it also reads the kernel's count of events the ring buffer had no room for.
//!
//! What one event costs is kept small (issue 7's budget: 50,000 flows/s in a tenth of a core):
//! the reader wakes at most once per [`COALESCE`] under load rather than once per event, the
//! metric handles are looked up once per kind of event rather than by labels per event, and no
//! `Flow` is built until a client reads one.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use metrics::Counter;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::time::{ClockId, clock_gettime};
use palisade_datapath_common::events::{self, FlowEvent};
use palisade_datapath_common::{policy, verdict};

use super::decode::{decode_event, to_flow};
use super::enrich::{Enrichment, SharedEnrichment};
use super::metrics::{Series, series};
use super::ring::{FlowRing, RawEvent};

/// How often the kernel's loss counter is read.
const LOSS_POLL: Duration = Duration::from_secs(1);
/// The most events decoded per batch (bounds the time the ring's lock is held).
const BATCH: usize = 1024;
/// After draining, the reader sleeps this long before waiting again, so that a busy datapath's
/// events are read in bursts: the kernel wakes a waiting reader for (nearly) every event it
/// writes, and a wake-up per event cost more than the event. Flows reach the ring at most this
/// much later; the 4 MiB ring buffer holds ~47,000 events, ample for 10 ms at any rate the
/// datapath emits.
const COALESCE: Duration = Duration::from_millis(10);

/// Starts the reader. The metrics recorder must be installed before (handles are taken here).
pub fn spawn(
    mut events: RingBuf<MapData>,
    verdicts: PerCpuArray<MapData, u64>,
    ring: Arc<FlowRing>,
    enrichment: SharedEnrichment,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name("flows".into()).spawn(move || {
        // Losses counted before this agent started belong to an earlier run.
        let baseline = kernel_lost(&verdicts);
        let mut next_loss_poll = Instant::now();
        let mut batch = Vec::with_capacity(BATCH);
        let mut counters = FlowCounters::default();
        let lost = LostCounters::new();
        loop {
            {
                let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(500u16));
            }
            // bpf_ktime_get_ns is CLOCK_MONOTONIC: the offset to the wall clock, per wake-up.
            let offset = wall_minus_monotonic_ns();
            let ctx = Arc::clone(&enrichment.read().unwrap_or_else(|e| e.into_inner()));
            let mut read = 0;
            loop {
                while batch.len() < BATCH {
                    let Some(item) = events.next() else { break };
                    match decode_event(&item) {
                        Ok(ev) => {
                            counters.count(&ev);
                            batch.push(RawEvent {
                                ev,
                                time_ns: (ev.ts_ns as i128 + offset).max(0) as u64,
                                ctx: Arc::clone(&ctx),
                            });
                        }
                        Err(e) => eprintln!("palisade agent: flow event: {e}"),
                    }
                }
                if batch.is_empty() {
                    break;
                }
                read += batch.len();
                ring.push_events(batch.drain(..));
            }
            let now = Instant::now();
            let loss_polled = now >= next_loss_poll;
            if loss_polled {
                ring.set_kernel_lost(kernel_lost(&verdicts).saturating_sub(baseline));
                next_loss_poll = now + LOSS_POLL;
            }
            if read > 0 || loss_polled {
                lost.export(&ring);
            }
            if read > 0 {
                thread::sleep(COALESCE);
            }
        }
    })
}

/// `palisade_agent_flows_lost_total` by where the flows were lost: `kernel` (the datapath's ring
/// buffer was full: the reader fell behind) or `ring` (overwritten in the agent's flow ring).
struct LostCounters {
    kernel: Counter,
    ring: Counter,
}

impl LostCounters {
    fn new() -> Self {
        Self {
            kernel: metrics::counter!("palisade_agent_flows_lost_total", "source" => "kernel"),
            ring: metrics::counter!("palisade_agent_flows_lost_total", "source" => "ring"),
        }
    }

    fn export(&self, ring: &FlowRing) {
        let s = ring.stats();
        self.kernel.absolute(s.kernel_lost);
        self.ring.absolute(s.overwritten);
    }
}

fn kernel_lost(verdicts: &PerCpuArray<MapData, u64>) -> u64 {
    [policy::DIRECTION_EGRESS, policy::DIRECTION_INGRESS]
        .iter()
        .filter_map(|d| {
            verdicts
                .get(&verdict::slot(verdict::EVENTS_LOST, *d), 0)
                .ok()
        })
        .map(|per_cpu| per_cpu.iter().sum::<u64>())
        .sum()
}

fn wall_minus_monotonic_ns() -> i128 {
    let ns = |id| {
        clock_gettime(id)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0)
    };
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

/// What of an event decides its metric labels: events alike in these count in the same series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MetricKey {
    kind: u8,
    direction: u8,
    protocol: u8,
    match_type: u8,
    /// The verdict reason, for drops only (other events' labels do not depend on it).
    reason: u32,
}

impl MetricKey {
    fn of(ev: &FlowEvent) -> Self {
        Self {
            kind: ev.kind,
            direction: ev.direction,
            protocol: ev.protocol,
            match_type: ev.match_type,
            reason: if ev.kind == events::KIND_DROP {
                ev.reason
            } else {
                0
            },
        }
    }
}

/// Hubble's metrics for datapath events, with each label set's handles looked up once (a
/// labelled lookup hashes and compares every label; a handle is one atomic add).
#[derive(Default)]
struct FlowCounters {
    series: HashMap<MetricKey, Series>,
}

impl FlowCounters {
    fn count(&mut self, ev: &FlowEvent) {
        let s = self.series.entry(MetricKey::of(ev)).or_insert_with(|| {
            // The labels come from the flow the event becomes, so they are exactly those a
            // reader of that flow sees (naming does not enter them: an empty snapshot will do).
            series(&to_flow(ev, &Enrichment::default(), 0))
        });
        s.processed.increment(1);
        if let Some(d) = &s.drop {
            d.increment(1);
        }
        if let Some(v) = &s.verdicts {
            v.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use palisade_datapath_common::proto;

    fn event(kind: u8, protocol: u8, direction: u8, reason: u32) -> FlowEvent {
        FlowEvent {
            kind,
            protocol,
            direction,
            reason,
            family: palisade_datapath_common::family::IPV4,
            ..FlowEvent::default()
        }
    }

    /// The series and values a Prometheus scrape shows, sorted, for the flow metrics.
    fn scrape(events: &[FlowEvent]) -> Vec<String> {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut c = FlowCounters::default();
            for ev in events {
                c.count(ev);
            }
        });
        let mut lines: Vec<String> = handle
            .render()
            .lines()
            .filter(|l| l.starts_with("hubble_"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn cached_series_carry_hubbles_labels_and_count_every_event() {
        let drop = event(
            events::KIND_DROP,
            proto::TCP,
            policy::DIRECTION_INGRESS,
            verdict::DROP_POLICY_DEFAULT,
        );
        let new = event(
            events::KIND_NEW,
            proto::UDP,
            policy::DIRECTION_EGRESS,
            verdict::FORWARDED_NEW,
        );
        // A second kind of drop, and a new connection whose reason differs: its own series for
        // the drop, the same series for the new connection.
        let denylisted = event(
            events::KIND_DROP,
            proto::TCP,
            policy::DIRECTION_INGRESS,
            verdict::DROP_POLICY_DENY,
        );
        let mut new2 = new;
        new2.reason = verdict::FORWARDED_NEW + 1;
        // Decided by an entry naming the peer and a port: its own policy-verdict series.
        // A trace: counted as processed, not as a policy verdict.
        let trace = event(
            events::KIND_TRACE,
            proto::TCP,
            policy::DIRECTION_INGRESS,
            verdict::FORWARDED_ESTABLISHED,
        );
        let mut l3l4 = new;
        l3l4.match_type = events::MATCH_L3_L4;
        let audit = event(
            events::KIND_AUDIT,
            proto::ICMP,
            policy::DIRECTION_EGRESS,
            verdict::DROP_POLICY_DENY,
        );
        assert_eq!(
            scrape(&[drop, drop, new, denylisted, new2, audit, drop, l3l4, trace]),
            vec![
                r#"hubble_drop_total{traffic_direction="ingress",reason="POLICY_DENIED",protocol="TCP"} 3"#,
                r#"hubble_drop_total{traffic_direction="ingress",reason="POLICY_DENY",protocol="TCP"} 1"#,
                r#"hubble_flows_processed_total{protocol="ICMPv4",type="PolicyVerdict",subtype="",verdict="AUDIT"} 1"#,
                r#"hubble_flows_processed_total{protocol="TCP",type="Drop",subtype="",verdict="DROPPED"} 4"#,
                r#"hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="to-endpoint",verdict="FORWARDED"} 1"#,
                r#"hubble_flows_processed_total{protocol="UDP",type="PolicyVerdict",subtype="",verdict="FORWARDED"} 3"#,
                r#"hubble_policy_verdicts_total{direction="egress",match="l3-l4",action="forwarded"} 1"#,
                r#"hubble_policy_verdicts_total{direction="egress",match="none",action="audit"} 1"#,
                r#"hubble_policy_verdicts_total{direction="egress",match="none",action="forwarded"} 2"#,
                r#"hubble_policy_verdicts_total{direction="ingress",match="none",action="dropped"} 4"#,
            ]
        );
    }
}
