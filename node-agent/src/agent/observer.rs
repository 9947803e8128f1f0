//! The agent's Hubble-compatible `observer.Observer` gRPC service (plus `grpc.health.v1`),
//! served on `--hubble-listen` from a thread of its own running a tokio runtime: the agent's
//! run loop stays synchronous and never waits on a client.
//!
//! Who may call: with a TLS directory (the agent's control-plane credentials), any client with
//! a certificate of the cluster CA (the control plane's relay presents its member certificate);
//! without one, whoever reaches the listen address, so bind it to an address only trusted
//! clients reach. The service only reads the flow ring; it changes nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use palisade_api::flow::{Flow, LostEvent, LostEventSource};
use palisade_api::observer::observer_server::{Observer, ObserverServer};
use palisade_api::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse, Node,
    ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
};
use palisade_api::relay::NodeState;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::flows::{FlowFilters, FlowRing, StoredFlow};

/// The version string reported in `ServerStatus` and `GetNodes`.
pub const VERSION: &str = concat!("palisade-", env!("CARGO_PKG_VERSION"));

/// How many responses a stream buffers before the sender waits for the client.
const STREAM_BUFFER: usize = 256;

/// The service over one agent's flow ring.
#[derive(Clone)]
pub struct AgentObserver {
    ring: Arc<FlowRing>,
    node: String,
    address: String,
}

impl AgentObserver {
    /// The service for `node`, whose observer listens on `address`.
    pub fn new(ring: Arc<FlowRing>, node: String, address: String) -> Self {
        Self {
            ring,
            node,
            address,
        }
    }
}

/// The server TLS of a TLS directory: its certificate, client certificates required and
/// chained to its CA. Errors name the file.
pub fn server_tls(dir: &Path) -> Result<tonic::transport::ServerTlsConfig, String> {
    let read = |name: &str| {
        let path: PathBuf = dir.join(name);
        std::fs::read(&path).map_err(|e| format!("observer TLS: `{}`: {e}", path.display()))
    };
    let (ca, cert, key) = (read("ca.pem")?, read("cert.pem")?, read("key.pem")?);
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca)))
}

/// Starts the observer thread, bound to `addr` before this returns (so a bad address or TLS
/// directory fails the agent's start with its name).
pub fn serve(
    addr: SocketAddr,
    tls_dir: Option<&Path>,
    service: AgentObserver,
) -> Result<(), String> {
    let tls = tls_dir.map(server_tls).transpose()?;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("--hubble-listen {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("--hubble-listen {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("observer".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("palisade agent: observer runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("palisade agent: observer listener: {e}");
                        return;
                    }
                };
                let (reporter, health) = tonic_health::server::health_reporter();
                reporter
                    .set_serving::<ObserverServer<AgentObserver>>()
                    .await;
                let mut server = tonic::transport::Server::builder();
                if let Some(tls) = tls {
                    server = match server.tls_config(tls) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("palisade agent: observer TLS: {e}");
                            return;
                        }
                    };
                }
                let r = server
                    .add_service(health)
                    .add_service(ObserverServer::new(service))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await;
                if let Err(e) = r {
                    eprintln!("palisade agent: observer: {e}");
                }
            });
        })
        .map_err(|e| format!("observer thread: {e}"))?;
    Ok(())
}

fn ns_of(t: &prost_types::Timestamp) -> i128 {
    t.seconds as i128 * 1_000_000_000 + t.nanos as i128
}

fn flow_ns(f: &Flow) -> i128 {
    f.time.as_ref().map_or(0, ns_of)
}

/// The request's time window and history selection, checked.
struct Window {
    since: Option<i128>,
    until: Option<i128>,
    number: u64,
    first: bool,
    follow: bool,
}

impl Window {
    fn new(r: &GetFlowsRequest) -> Result<Self, Status> {
        let since = r.since.as_ref().map(ns_of);
        let until = r.until.as_ref().map(ns_of);
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(Status::invalid_argument("`since` is after `until`"));
        }
        if r.first && r.follow {
            return Err(Status::invalid_argument(
                "`first` and `follow` cannot be combined",
            ));
        }
        Ok(Self {
            since,
            until,
            number: r.number,
            first: r.first,
            follow: r.follow,
        })
    }

    fn in_time(&self, f: &Flow) -> bool {
        let t = flow_ns(f);
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    /// Following with neither a number nor `since` streams new flows only (as Hubble does).
    fn wants_history(&self) -> bool {
        !(self.follow && self.number == 0 && self.since.is_none())
    }
}

fn flow_response(f: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: f.node_name.clone(),
        time: f.time,
        response_types: Some(ResponseTypes::Flow(f)),
    }
}

fn lost_response(node: &str, n: u64) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: node.to_string(),
        time: None,
        response_types: Some(ResponseTypes::LostEvents(LostEvent {
            source: LostEventSource::HubbleRingBuffer as i32,
            num_events_lost: n,
            cpu: None,
        })),
    }
}

type FlowStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Observer for AgentObserver {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let r = request.into_inner();
        let filters = FlowFilters::new(&r.whitelist, &r.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let window = Window::new(&r)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let ring = Arc::clone(&self.ring);
        let node = self.node.clone();
        // Subscribe before reading the history: nothing stored in between is missed.
        let mut wake = ring.subscribe();
        let batch = ring.read_from(0);
        let mut cursor = batch.next;
        let history: Vec<Flow> = if window.wants_history() {
            let selected = batch
                .flows
                .iter()
                .filter(|(_, f)| window.in_time(f) && filters.matches(f));
            let selected: Vec<&Arc<StoredFlow>> = selected.map(|(_, f)| f).collect();
            let n = if window.number == 0 {
                selected.len()
            } else {
                (window.number as usize).min(selected.len())
            };
            let chosen = if window.first {
                &selected[..n]
            } else {
                &selected[selected.len() - n..]
            };
            chosen.iter().map(|f| f.flow().clone()).collect()
        } else {
            Vec::new()
        };
        tokio::spawn(async move {
            for f in history {
                if tx.send(Ok(flow_response(f))).await.is_err() {
                    return;
                }
            }
            if !window.follow {
                return;
            }
            loop {
                tokio::select! {
                    changed = wake.changed() => if changed.is_err() { return },
                    // The client went away: stop following.
                    _ = tx.closed() => return,
                }
                let b = ring.read_from(cursor);
                cursor = b.next;
                if b.missed > 0 && tx.send(Ok(lost_response(&node, b.missed))).await.is_err() {
                    return;
                }
                for (_, f) in b.flows {
                    if window.until.is_some_and(|u| flow_ns(&f) > u) {
                        return;
                    }
                    if window.in_time(&f)
                        && filters.matches(&f)
                        && tx.send(Ok(flow_response(f.flow().clone()))).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let s = self.ring.stats();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.node.clone(),
                version: VERSION.into(),
                address: self.address.clone(),
                state: NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: s.uptime_ns,
                num_flows: s.num_flows,
                max_flows: s.max_flows,
                seen_flows: s.seen_flows,
            }],
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let s = self.ring.stats();
        Ok(Response::new(ServerStatusResponse {
            num_flows: s.num_flows,
            max_flows: s.max_flows,
            seen_flows: s.seen_flows,
            uptime_ns: s.uptime_ns,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: VERSION.into(),
            lost_events: s.lost(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_api::flow::{FlowFilter, Verdict};
    use tokio_stream::StreamExt;

    fn flow(secs: i64, verdict: Verdict) -> Flow {
        Flow {
            time: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            verdict: verdict as i32,
            node_name: "n1".into(),
            ..Flow::default()
        }
    }

    fn service(
        capacity: usize,
        secs: impl IntoIterator<Item = i64>,
    ) -> (AgentObserver, Arc<FlowRing>) {
        let ring = FlowRing::new(capacity);
        ring.push_batch(secs.into_iter().map(|s| {
            flow(
                s,
                if s % 2 == 0 {
                    Verdict::Dropped
                } else {
                    Verdict::Forwarded
                },
            )
        }));
        (
            AgentObserver::new(Arc::clone(&ring), "n1".into(), "127.0.0.1:4244".into()),
            ring,
        )
    }

    fn at(secs: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        })
    }

    async fn times(svc: &AgentObserver, req: GetFlowsRequest) -> Vec<i64> {
        let mut s = svc
            .get_flows(Request::new(req))
            .await
            .expect("ok")
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            if let Some(ResponseTypes::Flow(f)) = r.expect("item").response_types {
                out.push(f.time.map_or(0, |t| t.seconds));
            }
        }
        out
    }

    #[tokio::test]
    async fn history_selection_number_first_since_until_and_filters() {
        let (svc, _) = service(100, 1..=10);
        let req = |number, first| GetFlowsRequest {
            number,
            first,
            ..GetFlowsRequest::default()
        };
        assert_eq!(times(&svc, req(3, false)).await, vec![8, 9, 10]);
        assert_eq!(times(&svc, req(3, true)).await, vec![1, 2, 3]);
        assert_eq!(times(&svc, req(0, false)).await.len(), 10);
        let window = GetFlowsRequest {
            since: at(4),
            until: at(6),
            ..GetFlowsRequest::default()
        };
        assert_eq!(times(&svc, window).await, vec![4, 5, 6]);
        let dropped = GetFlowsRequest {
            number: 2,
            whitelist: vec![FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                ..FlowFilter::default()
            }],
            ..GetFlowsRequest::default()
        };
        assert_eq!(times(&svc, dropped).await, vec![8, 10]);
    }

    #[tokio::test]
    async fn bad_requests_are_invalid_arguments_naming_the_field() {
        let (svc, _) = service(10, 1..=2);
        let bad = |req| async {
            match svc.get_flows(Request::new(req)).await {
                Ok(_) => panic!("accepted"),
                Err(s) => (s.code(), s.message().to_string()),
            }
        };
        let (code, msg) = bad(GetFlowsRequest {
            blacklist: vec![FlowFilter {
                destination_port: vec!["http".into()],
                ..FlowFilter::default()
            }],
            ..GetFlowsRequest::default()
        })
        .await;
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(msg.contains("blacklist[0].destination_port"), "{msg}");
        let (code, _) = bad(GetFlowsRequest {
            first: true,
            follow: true,
            ..GetFlowsRequest::default()
        })
        .await;
        assert_eq!(code, tonic::Code::InvalidArgument);
        let (_, msg) = bad(GetFlowsRequest {
            since: at(5),
            until: at(1),
            ..GetFlowsRequest::default()
        })
        .await;
        assert!(msg.contains("since"), "{msg}");
    }

    #[tokio::test]
    async fn follow_streams_new_flows_and_reports_what_it_missed() {
        let (svc, ring) = service(4, 1..=2);
        let req = GetFlowsRequest {
            follow: true,
            ..GetFlowsRequest::default()
        };
        let mut s = svc
            .get_flows(Request::new(req))
            .await
            .expect("ok")
            .into_inner();
        // Following without a number streams new flows only.
        ring.push_batch([flow(3, Verdict::Forwarded)]);
        let first = s.next().await.expect("item").expect("ok");
        assert!(matches!(first.response_types, Some(ResponseTypes::Flow(f)) if f.time == at(3)));
        // Six flows into a ring of four before the stream reads again: two are gone.
        ring.push_batch((4..=9).map(|t| flow(t, Verdict::Forwarded)));
        let next = s.next().await.expect("item").expect("ok");
        match next.response_types {
            Some(ResponseTypes::LostEvents(l)) => {
                assert_eq!(l.num_events_lost, 2);
                assert_eq!(l.source, LostEventSource::HubbleRingBuffer as i32);
            }
            other => panic!("expected lost events, got {other:?}"),
        }
        let mut rest = Vec::new();
        for _ in 0..4 {
            if let Some(ResponseTypes::Flow(f)) =
                s.next().await.expect("item").expect("ok").response_types
            {
                rest.push(f.time.map_or(0, |t| t.seconds));
            }
        }
        assert_eq!(rest, vec![6, 7, 8, 9]);
        let st = svc
            .server_status(Request::new(ServerStatusRequest {}))
            .await
            .expect("ok")
            .into_inner();
        assert_eq!(
            (st.num_flows, st.max_flows, st.seen_flows, st.lost_events),
            (4, 4, 9, 5)
        );
    }
}
