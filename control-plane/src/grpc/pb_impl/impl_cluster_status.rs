use palisade_api::grpc::v1;

use crate::cluster::{ClusterStatus, MemberStatus};

/// A member as the leader (`leader_last` = its last log index) or a follower (`None`) sees it.
fn member(m: MemberStatus, leader_last: Option<u64>) -> v1::MemberStatus {
    v1::MemberStatus {
        id: m.id,
        raft_addr: m.raft_addr,
        api_addr: m.api_addr,
        matched_index: m.matched_index,
        lag: leader_last
            .zip(m.matched_index)
            .map(|(last, matched)| last.saturating_sub(matched)),
    }
}

impl From<ClusterStatus> for v1::ClusterStatus {
    fn from(s: ClusterStatus) -> Self {
        let leader_last = (s.state == "leader").then_some(s.last_log_index).flatten();
        v1::ClusterStatus {
            id: s.id,
            state: s.state,
            leader: s.leader,
            leader_api_addr: s.leader_api_addr,
            term: s.term,
            last_log_index: s.last_log_index,
            commit_index: s.commit_index,
            last_applied: s.last_applied,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            voters: s
                .voters
                .into_iter()
                .map(|m| member(m, leader_last))
                .collect(),
            learners: s
                .learners
                .into_iter()
                .map(|m| member(m, leader_last))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_reports_lag() {
        let m = |id, matched| MemberStatus {
            id,
            raft_addr: String::new(),
            api_addr: String::new(),
            matched_index: matched,
        };
        let s = ClusterStatus {
            id: 1,
            state: "leader".into(),
            leader: Some(1),
            leader_api_addr: None,
            term: 2,
            last_log_index: Some(10),
            commit_index: Some(10),
            last_applied: Some(10),
            snapshot_index: None,
            purged_index: None,
            voters: vec![m(1, Some(10)), m(2, Some(7)), m(3, None)],
            learners: vec![],
        };
        let p: v1::ClusterStatus = s.into();
        let lags: Vec<Option<u64>> = p.voters.iter().map(|v| v.lag).collect();
        assert_eq!(lags, vec![Some(0), Some(3), None]);
    }
}
