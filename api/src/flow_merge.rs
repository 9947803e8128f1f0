//! Merging the answers of several observers (the control plane's relay, and the CLI when it
//! asks several agents): one list in time order, with `number`/`first` applied to the merged
//! list as one observer would apply it to its own.

use crate::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

/// The time of a response: its flow's, otherwise its own.
pub fn time_ns(r: &GetFlowsResponse) -> i128 {
    let t = match &r.response_types {
        Some(ResponseTypes::Flow(f)) => f.time.as_ref(),
        _ => r.time.as_ref(),
    };
    t.map_or(0, |t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
}

/// Sorts by time (stable: one observer's order is kept for equal times) and keeps the last
/// `number` flows (the first with `first`); zero keeps all. Responses that are not flows (lost
/// events, node status) are all kept.
pub fn by_time(mut all: Vec<GetFlowsResponse>, number: u64, first: bool) -> Vec<GetFlowsResponse> {
    all.sort_by_key(time_ns);
    if number == 0 {
        return all;
    }
    let is_flow = |r: &GetFlowsResponse| matches!(r.response_types, Some(ResponseTypes::Flow(_)));
    let flows = all.iter().filter(|r| is_flow(r)).count();
    let keep = (number as usize).min(flows);
    // Index (among flows) of the first flow kept and one past the last.
    let (from, to) = if first {
        (0, keep)
    } else {
        (flows - keep, flows)
    };
    let mut i = 0;
    all.retain(|r| {
        if !is_flow(r) {
            return true;
        }
        let k = (from..to).contains(&i);
        i += 1;
        k
    });
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Flow, LostEvent};

    fn flow(node: &str, secs: i64) -> GetFlowsResponse {
        let time = Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        });
        GetFlowsResponse {
            node_name: node.into(),
            time,
            response_types: Some(ResponseTypes::Flow(Flow {
                time,
                node_name: node.into(),
                ..Flow::default()
            })),
        }
    }

    fn names(v: &[GetFlowsResponse]) -> Vec<(String, i128)> {
        v.iter()
            .map(|r| (r.node_name.clone(), time_ns(r) / 1_000_000_000))
            .collect()
    }

    #[test]
    fn two_observers_merge_in_time_order_and_number_applies_to_the_merge() {
        let all = vec![
            flow("a", 1),
            flow("a", 4),
            flow("b", 2),
            flow("b", 3),
            flow("a", 5),
        ];
        let merged = by_time(all.clone(), 0, false);
        assert_eq!(
            names(&merged),
            vec![
                ("a".into(), 1),
                ("b".into(), 2),
                ("b".into(), 3),
                ("a".into(), 4),
                ("a".into(), 5)
            ]
        );
        assert_eq!(
            names(&by_time(all.clone(), 2, false)),
            vec![("a".into(), 4), ("a".into(), 5)]
        );
        assert_eq!(
            names(&by_time(all, 2, true)),
            vec![("a".into(), 1), ("b".into(), 2)]
        );
    }

    #[test]
    fn other_responses_are_kept() {
        let lost = GetFlowsResponse {
            node_name: "b".into(),
            time: None,
            response_types: Some(ResponseTypes::LostEvents(LostEvent::default())),
        };
        let out = by_time(vec![flow("a", 1), flow("a", 2), lost], 1, false);
        assert_eq!(out.len(), 2);
    }
}
