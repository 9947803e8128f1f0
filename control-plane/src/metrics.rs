//! Prometheus metrics of the control plane, rendered at `GET /metrics` on the client API.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `palisade_cp_term` | gauge | current Raft term |
//! | `palisade_cp_is_leader` | gauge | 1 on the leader |
//! | `palisade_cp_last_log_index` | gauge | last log index on this member |
//! | `palisade_cp_commit_index` | gauge | committed index this member knows |
//! | `palisade_cp_applied_index` | gauge | last applied index |
//! | `palisade_cp_leader_changes_total` | counter | leader changes seen by this member |
//! | `palisade_cp_proposal_duration_seconds` | histogram | propose → applied, on the leader |
//! | `palisade_cp_proposal_batch_size` | summary | requests per proposed log entry |
//! | `palisade_cp_identities_in_use` | gauge | allocated identities |
//! | `palisade_cp_policy_revision` | gauge | policy revision |
//! | `palisade_cp_policies` / `palisade_cp_nodes` | gauge | stored policies / nodes |
//! | `palisade_cp_node_ack_lag{node}` | gauge | policy revision minus the node's acknowledged one |

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use openraft::ServerState;
use tokio::sync::watch;

use crate::cluster::Cluster;

/// Name of the proposal latency histogram.
pub const PROPOSAL_SECONDS: &str = "palisade_cp_proposal_duration_seconds";
/// Name of the histogram of requests per proposed log entry (group commit).
pub const BATCH_SIZE: &str = "palisade_cp_proposal_batch_size";

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the process-wide Prometheus recorder. `None` when one is already installed (the
/// `/metrics` route then answers 503).
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PROPOSAL_SECONDS.to_owned()), BUCKETS)
        .ok()?;
    match builder.install_recorder() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "prometheus recorder not installed");
            None
        }
    }
}

/// Keeps the gauges current until `shutdown` flips to true.
pub async fn run(
    cluster: Cluster,
    handle: Option<PrometheusHandle>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rx = cluster.raft().metrics();
    let mut last_leader = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // Leader changes are counted as they happen; the gauges are refreshed once a second
        // (metrics change on every commit, which is too often to recompute them).
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let leader = rx.borrow().current_leader;
                if leader != last_leader {
                    if leader.is_some() {
                        metrics::counter!("palisade_cp_leader_changes_total").increment(1);
                    }
                    last_leader = leader;
                }
                continue;
            }
            _ = tick.tick() => {
                if let Some(h) = &handle { h.run_upkeep(); }
            }
        }
        let m = rx.borrow().clone();
        let status = cluster.status();
        let gauge = |name: &'static str, v: Option<u64>| {
            if let Some(v) = v {
                metrics::gauge!(name).set(v as f64);
            }
        };
        gauge("palisade_cp_term", Some(m.current_term));
        gauge(
            "palisade_cp_is_leader",
            Some(u64::from(m.state == ServerState::Leader)),
        );
        gauge("palisade_cp_last_log_index", m.last_log_index);
        gauge("palisade_cp_commit_index", status.commit_index);
        gauge("palisade_cp_applied_index", m.last_applied.map(|l| l.index));
        let counts = cluster.read(|s| {
            let lag: Vec<(String, u64)> = s
                .acks
                .iter()
                .map(|(n, a)| (n.clone(), s.counters.revision.saturating_sub(*a)))
                .collect();
            (
                s.identities.len() as u64,
                s.counters.revision,
                s.policies.len() as u64,
                s.nodes.len() as u64,
                lag,
            )
        });
        if let Ok((ids, rev, pols, nodes, lag)) = counts {
            gauge("palisade_cp_identities_in_use", Some(ids));
            gauge("palisade_cp_policy_revision", Some(rev));
            gauge("palisade_cp_policies", Some(pols));
            gauge("palisade_cp_nodes", Some(nodes));
            for (node, l) in lag {
                metrics::gauge!("palisade_cp_node_ack_lag", "node" => node).set(l as f64);
            }
        }
    }
}
