//! The flow reader thread: waits on the ring buffer's fd, drains it, decodes and names each
//! event, counts it in the Hubble metrics and stores it in the flow ring. Once a second it also
//! reads the kernel's count of events the ring buffer had no room for.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::time::{ClockId, clock_gettime};
use palisade_api::flow::{DropReason, Flow, TrafficDirection, Verdict};
use palisade_datapath_common::{policy, verdict};

use super::decode::{decode_event, event_type, to_flow};
use super::enrich::SharedEnrichment;
use super::ring::FlowRing;

/// How often the kernel's loss counter is read.
const LOSS_POLL: Duration = Duration::from_secs(1);
/// The most events decoded per batch (bounds the time the ring's lock is held).
const BATCH: usize = 1024;

/// Starts the reader.
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
        loop {
            {
                let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(500u16));
            }
            // bpf_ktime_get_ns is CLOCK_MONOTONIC: the offset to the wall clock, per wake-up.
            let offset = wall_minus_monotonic_ns();
            let ctx = Arc::clone(&enrichment.read().unwrap_or_else(|e| e.into_inner()));
            loop {
                while batch.len() < BATCH {
                    let Some(item) = events.next() else { break };
                    match decode_event(&item) {
                        Ok(ev) => {
                            let time = (ev.ts_ns as i128 + offset).max(0) as u64;
                            let f = to_flow(&ev, &ctx, time);
                            count(&f);
                            batch.push(f);
                        }
                        Err(e) => eprintln!("palisade agent: flow event: {e}"),
                    }
                }
                if batch.is_empty() {
                    break;
                }
                ring.push_batch(batch.drain(..));
                export_lost(&ring);
            }
            if Instant::now() >= next_loss_poll {
                ring.set_kernel_lost(kernel_lost(&verdicts).saturating_sub(baseline));
                export_lost(&ring);
                next_loss_poll = Instant::now() + LOSS_POLL;
            }
        }
    })
}

/// `palisade_agent_flows_lost_total` by where the flows were lost: `kernel` (the datapath's ring
/// buffer was full: the reader fell behind) or `ring` (overwritten in the agent's flow ring).
fn export_lost(ring: &FlowRing) {
    let s = ring.stats();
    metrics::counter!("palisade_agent_flows_lost_total", "source" => "kernel")
        .absolute(s.kernel_lost);
    metrics::counter!("palisade_agent_flows_lost_total", "source" => "ring")
        .absolute(s.overwritten);
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

/// Hubble's metrics for one flow.
fn count(f: &Flow) {
    let verdict_ = Verdict::try_from(f.verdict).unwrap_or(Verdict::Unknown);
    let kind = match f.event_type.as_ref().map(|e| e.r#type) {
        Some(event_type::DROP) => "Drop",
        Some(event_type::POLICY_VERDICT) => "PolicyVerdict",
        Some(event_type::TRACE) => "Trace",
        Some(event_type::L7) => "L7",
        _ => "Unknown",
    };
    let protocol = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(palisade_api::flow::layer4::Protocol::Tcp(_)) => "TCP",
        Some(palisade_api::flow::layer4::Protocol::Udp(_)) => "UDP",
        Some(palisade_api::flow::layer4::Protocol::IcmPv4(_)) => "ICMPv4",
        Some(palisade_api::flow::layer4::Protocol::IcmPv6(_)) => "ICMPv6",
        Some(palisade_api::flow::layer4::Protocol::Sctp(_)) => "SCTP",
        None => "Unknown",
    };
    metrics::counter!(
        "hubble_flows_processed_total",
        "type" => kind,
        "subtype" => "",
        "verdict" => verdict_.as_str_name()
    )
    .increment(1);
    if verdict_ == Verdict::Dropped {
        let reason = DropReason::try_from(f.drop_reason_desc).unwrap_or(DropReason::Unknown);
        metrics::counter!(
            "hubble_drop_total",
            "reason" => reason.as_str_name(),
            "protocol" => protocol
        )
        .increment(1);
    }
    // Every event is a policy decision (a new connection allowed or audited, or a denial).
    let direction = match TrafficDirection::try_from(f.traffic_direction) {
        Ok(TrafficDirection::Egress) => "egress",
        Ok(TrafficDirection::Ingress) => "ingress",
        _ => "unknown",
    };
    let action = match verdict_ {
        Verdict::Forwarded => "forwarded",
        Verdict::Dropped => "dropped",
        Verdict::Audit => "audit",
        _ => "unknown",
    };
    metrics::counter!(
        "hubble_policy_verdicts_total",
        "direction" => direction,
        "match" => match_name(f.policy_match_type),
        "action" => action
    )
    .increment(1);
}

/// Hubble's name for a policy match type.
pub fn match_name(t: u32) -> &'static str {
    match t {
        1 => "l3-only",
        2 => "l3-l4",
        3 => "l4-only",
        4 => "all",
        _ => "none",
    }
}
