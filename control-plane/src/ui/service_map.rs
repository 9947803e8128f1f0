//! The service map: flows folded into workloads (nodes) and who talks to whom (edges), with the
//! verdict, ports and L7/DNS details of each edge. Pure; deterministic order (`BTreeMap`) so the
//! UI's layout and the tests are stable.
//!
//! ```text
//!  flows ──▶ skip replies ──▶ node per workload (namespace/app, world, host, ...)
//!                        └──▶ edge per (source, destination, dropped?) with counts, ports,
//!                             HTTP (method path status) and DNS (query rcode) seen on it
//! ```
//!
//! Forwarded and dropped traffic between the same two workloads are two edges, so a denied
//! port never hides behind an allowed one. A connection is observed on both nodes (leaving the
//! source, arriving at the destination): when either observation dropped it, the whole
//! connection (its 5-tuple) counts as dropped, so a packet forwarded by the source's node and
//! denied at the destination draws one red edge, not a red and a green one.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::view::FlowView;

/// A workload on the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapNode {
    /// Its id ([`super::view::workload_of`]): `namespace/app`, `world`, `host`, ...
    pub id: String,
    /// Its namespace (empty outside the cluster).
    pub namespace: String,
    /// Pods of it seen in the flows (names known to the observing nodes).
    pub pods: BTreeSet<String>,
    /// Whether it is in the namespace the map was asked for (others are drawn as peers).
    pub in_namespace: bool,
}

/// One HTTP request kind seen on an edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct HttpSeen {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Status (0: the request record, before an answer).
    pub status: u32,
}

/// One DNS query kind seen on an edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DnsSeen {
    /// Query name.
    pub query: String,
    /// Response code.
    pub rcode: u32,
}

/// Traffic from one workload to another with one verdict class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEdge {
    /// Source workload id.
    pub source: String,
    /// Destination workload id.
    pub destination: String,
    /// `forwarded` or `dropped` (any verdict other than DROPPED counts as forwarded).
    pub verdict: &'static str,
    /// Flows folded into it.
    pub flows: u64,
    /// `PROTO/port` of the destination, e.g. `TCP/80`.
    pub ports: BTreeSet<String>,
    /// Drop reasons seen (dropped edges).
    pub drop_reasons: BTreeSet<String>,
    /// HTTP requests and answers seen, with counts.
    pub http: BTreeMap<String, u64>,
    /// DNS queries seen, with counts.
    pub dns: BTreeMap<String, u64>,
}

/// The map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceMap {
    /// Workloads, by id.
    pub nodes: Vec<MapNode>,
    /// Edges, by (source, destination, verdict).
    pub edges: Vec<MapEdge>,
}

/// A connection: protocol, source address and port, destination address and port.
type Tuple<'a> = (&'a str, &'a str, u32, &'a str, u32);

fn tuple(f: &FlowView) -> Tuple<'_> {
    (
        &f.protocol,
        &f.source.ip,
        f.source.port,
        &f.destination.ip,
        f.destination.port,
    )
}

/// Folds `flows` into the map of `namespace` (every namespace when `None`): flows with either
/// side in it, replies skipped (a reply is the same conversation seen backwards).
pub fn build<'a>(
    flows: impl IntoIterator<Item = &'a FlowView>,
    namespace: Option<&str>,
) -> ServiceMap {
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String, bool), MapEdge> = BTreeMap::new();
    let in_ns = |ns: &str| namespace.is_none_or(|want| want == ns);
    let flows: Vec<&FlowView> = flows
        .into_iter()
        .filter(|f| !f.is_reply && (in_ns(&f.source.namespace) || in_ns(&f.destination.namespace)))
        .collect();
    let dropped_connections: BTreeSet<Tuple> = flows
        .iter()
        .filter(|f| f.verdict == "DROPPED")
        .map(|f| tuple(f))
        .collect();
    for f in flows {
        for s in [&f.source, &f.destination] {
            let node = nodes.entry(s.workload.clone()).or_insert_with(|| MapNode {
                id: s.workload.clone(),
                namespace: s.namespace.clone(),
                pods: BTreeSet::new(),
                in_namespace: !s.namespace.is_empty() && in_ns(&s.namespace),
            });
            if !s.pod.is_empty() {
                node.pods.insert(s.pod.clone());
            }
        }
        let dropped = f.verdict == "DROPPED" || dropped_connections.contains(&tuple(f));
        let key = (
            f.source.workload.clone(),
            f.destination.workload.clone(),
            dropped,
        );
        let e = edges.entry(key).or_insert_with(|| MapEdge {
            source: f.source.workload.clone(),
            destination: f.destination.workload.clone(),
            verdict: if dropped { "dropped" } else { "forwarded" },
            flows: 0,
            ports: BTreeSet::new(),
            drop_reasons: BTreeSet::new(),
            http: BTreeMap::new(),
            dns: BTreeMap::new(),
        });
        e.flows += 1;
        let l4 = match f.protocol.as_str() {
            // L7 records ride on TCP (HTTP) or UDP (DNS) to the same port.
            "HTTP" => "TCP",
            "DNS" => "UDP",
            p => p,
        };
        if f.destination.port != 0 {
            e.ports.insert(format!("{l4}/{}", f.destination.port));
        } else if !l4.is_empty() {
            e.ports.insert(l4.to_string());
        }
        if !f.drop_reason.is_empty() {
            e.drop_reasons.insert(f.drop_reason.clone());
        }
        if let Some(h) = &f.http {
            let line = if h.status == 0 {
                format!("{} {}", h.method, h.path)
            } else {
                format!("{} {} → {}", h.method, h.path, h.status)
            };
            *e.http.entry(line).or_default() += 1;
        }
        if let Some(d) = &f.dns {
            *e.dns
                .entry(format!("{} (rcode {})", d.query, d.rcode))
                .or_default() += 1;
        }
    }
    ServiceMap {
        nodes: nodes.into_values().collect(),
        edges: edges.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use palisade_api::flow::{self, layer7};

    use super::*;
    use crate::ui::view::tests::tcp_flow;

    fn view(f: &flow::Flow) -> FlowView {
        FlowView::of(f)
    }

    #[test]
    fn flows_fold_into_workloads_and_verdict_edges() {
        let web = ("default", "n1-p1", &["k8s:app=web"][..]);
        let web2 = ("default", "n1-p3", &["k8s:app=web"][..]);
        let intruder = ("default", "n1-p2", &["k8s:app=intruder"][..]);
        let api = ("default", "", &["k8s:app=api"][..]);
        let other = ("other", "x", &["k8s:app=x"][..]);
        let mut reply = tcp_flow(api, web, flow::Verdict::Forwarded, 40000);
        reply.is_reply = Some(true);
        let mut l7 = tcp_flow(web, api, flow::Verdict::Dropped, 8080);
        l7.l7 = Some(flow::Layer7 {
            record: Some(layer7::Record::Http(flow::Http {
                code: 403,
                method: "GET".to_string(),
                url: "http://api/admin".to_string(),
                ..Default::default()
            })),
            ..Default::default()
        });
        let flows: Vec<FlowView> = [
            tcp_flow(web, api, flow::Verdict::Forwarded, 80),
            tcp_flow(web2, api, flow::Verdict::Forwarded, 80),
            tcp_flow(intruder, api, flow::Verdict::Dropped, 80),
            // The same connection as the source's node saw it: forwarded there.
            tcp_flow(intruder, api, flow::Verdict::Forwarded, 80),
            l7,
            reply,
            tcp_flow(other, other, flow::Verdict::Forwarded, 53),
        ]
        .iter()
        .map(view)
        .collect();
        let map = build(&flows, Some("default"));
        let ids: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["default/api", "default/intruder", "default/web"]);
        let web_node = &map.nodes[2];
        assert_eq!(web_node.pods.iter().collect::<Vec<_>>(), ["n1-p1", "n1-p3"]);
        let edges: Vec<(&str, &str, &str, u64)> = map
            .edges
            .iter()
            .map(|e| {
                (
                    e.source.as_str(),
                    e.destination.as_str(),
                    e.verdict,
                    e.flows,
                )
            })
            .collect();
        assert_eq!(
            edges,
            [
                ("default/intruder", "default/api", "dropped", 2),
                ("default/web", "default/api", "forwarded", 2),
                ("default/web", "default/api", "dropped", 1),
            ]
        );
        let denied_l7 = &map.edges[2];
        assert_eq!(
            denied_l7.http.keys().collect::<Vec<_>>(),
            ["GET /admin → 403"]
        );
        assert_eq!(denied_l7.ports.iter().collect::<Vec<_>>(), ["TCP/8080"]);
        assert!(denied_l7.drop_reasons.contains("POLICY_DENIED"));
        // Every namespace: the other namespace's workload appears too.
        let all = build(&flows, None);
        assert!(
            all.nodes
                .iter()
                .any(|n| n.id == "other/x" && n.in_namespace)
        );
        assert_eq!(build(&flows, Some("nowhere")), ServiceMap::default());
    }
}
