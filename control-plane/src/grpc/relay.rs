//! The flow relay: `observer.Observer` on the control plane's `--grpc-listen`, answering from
//! every registered node's agent observer (the node's address, `--hubble-port`) and merging
//! their flows by time, as Hubble Relay does.
//!
//! ```text
//!  client ──GetFlows──▶ relay ──GetFlows──▶ agent n1 observer ─┐
//!                          │   ──GetFlows──▶ agent n2 observer ─┤ flows (each in time order)
//!                          ◀── merged by time (history) / as they come (follow) ─┘
//! ```
//!
//! Who may call: the same callers as the automation API's read methods (a bearer token with
//! the read role, or a node certificate). With TLS the relay presents this member's
//! certificate to the agents (their observers require one of the cluster CA).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use palisade_api::flow_merge;
use palisade_api::observer::observer_client::ObserverClient;
use palisade_api::observer::observer_server::Observer;
use palisade_api::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse, Node,
    ServerStatusRequest, ServerStatusResponse, Tls, get_flows_response::ResponseTypes,
};
use palisade_api::relay::{NodeState, NodeStatusEvent};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::automation::Automation;
use crate::auth::Role;
use crate::ops::{Consistency, Ops};
use crate::tls::agent_client::AgentClientTls;

/// Default port of the agents' observers (Hubble's).
pub const DEFAULT_HUBBLE_PORT: u16 = 4244;
/// How long connecting to one agent may take before it is reported unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The version string of the relay.
const VERSION: &str = concat!("palisade-relay-", env!("CARGO_PKG_VERSION"));

/// The relay.
#[derive(Clone)]
pub struct Relay {
    ops: Ops,
    auth: Automation,
    port: u16,
    tls: Option<AgentClientTls>,
}

/// One agent to ask.
#[derive(Debug, Clone)]
struct Target {
    node: String,
    address: String,
}

impl Relay {
    /// The relay over the nodes `ops` lists, authorizing like `auth`, reaching agents on `port`
    /// (with `tls`: this member's client credentials).
    pub fn new(ops: Ops, auth: Automation, port: u16, tls: Option<AgentClientTls>) -> Self {
        Self {
            ops,
            auth,
            port,
            tls,
        }
    }

    async fn targets(&self) -> Result<Vec<Target>, Status> {
        let nodes = self.ops.list_nodes(Consistency::Local).await?;
        Ok(nodes
            .into_iter()
            .map(|n| Target {
                node: n.node.name.clone(),
                address: std::net::SocketAddr::new(n.node.address, self.port).to_string(),
            })
            .collect())
    }

    async fn connect(&self, t: &Target) -> Result<ObserverClient<Channel>, String> {
        // The URI only frames HTTP/2; the connector below makes the connection (TLS or not).
        let ep = Endpoint::from_shared(format!("http://{}", t.address))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = match &self.tls {
            None => ep.connect().await,
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.for_node(&t.node)?);
                let addr = t.address.clone();
                ep.connect_with_connector(tower::service_fn(move |_uri| {
                    let (connector, addr) = (connector.clone(), addr.clone());
                    async move {
                        let tcp = tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            tokio::net::TcpStream::connect(&addr),
                        )
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                        // The verifier checks the node's identity, not this name.
                        let name = rustls::pki_types::ServerName::try_from("agent.palisade")
                            .map_err(std::io::Error::other)?;
                        let tls = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                    }
                }))
                .await
            }
        };
        channel
            .map(ObserverClient::new)
            .map_err(|e| format!("{e}: {}", source_chain(&e)))
    }

    /// The merged flows of every registered node's agent for `req`, as GetFlows answers them
    /// (a node status first, then flows; a node that fails adds a node status naming it).
    /// Does not authorize: the gRPC method and the web UI ([`crate::ui`]) check their callers.
    pub async fn flows(&self, req: GetFlowsRequest) -> Result<FlowStream, Status> {
        let targets = self.targets().await?;
        // Open every agent's stream first: a request the agents refuse as invalid (a bad filter)
        // is answered with their INVALID_ARGUMENT, naming the field, not as node failures.
        let opened =
            futures::future::join_all(targets.iter().map(|t| open(self, t, req.clone()))).await;
        if let Some((status, _)) = opened.iter().find_map(|o| {
            o.as_ref()
                .err()
                .filter(|(s, _)| s.code() == tonic::Code::InvalidArgument)
        }) {
            return Err(Status::invalid_argument(status.message().to_string()));
        }
        let (tx, mut rx) = mpsc::channel::<GetFlowsResponse>(1024);
        for (t, o) in targets.iter().zip(opened) {
            tokio::spawn(forward(t.clone(), o, tx.clone()));
        }
        drop(tx);
        let (out_tx, out_rx) = mpsc::channel(1024);
        let names: Vec<String> = targets.iter().map(|t| t.node.clone()).collect();
        tokio::spawn(async move {
            let _ = out_tx
                .send(Ok(node_status(
                    NodeState::NodeConnected,
                    names,
                    String::new(),
                )))
                .await;
            if req.follow {
                // Each agent's stream is in time order; across agents, as they arrive.
                while let Some(r) = rx.recv().await {
                    if out_tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                return;
            }
            let mut all = Vec::new();
            while let Some(r) = rx.recv().await {
                all.push(r);
            }
            for r in flow_merge::by_time(all, req.number, req.first) {
                if out_tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            out_rx,
        )))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn node_status(state: NodeState, nodes: Vec<String>, message: String) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: String::new(),
        time: None,
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: nodes,
            message,
        })),
    }
}

/// A stream of GetFlows answers.
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

/// One agent's opened GetFlows stream, or why it could not be opened.
type Opened = Result<tonic::Streaming<GetFlowsResponse>, (Status, String)>;

/// Opens one agent's GetFlows stream; the error keeps the agent's status (a request the agents
/// refuse is the caller's error, not the node's) and a message naming the agent.
async fn open(relay: &Relay, t: &Target, req: GetFlowsRequest) -> Opened {
    let mut client = relay.connect(t).await.map_err(|e| {
        (
            Status::unavailable(e.clone()),
            format!("{}: {e}", t.address),
        )
    })?;
    client
        .get_flows(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| {
            let msg = format!("{}: {}", t.address, s.message());
            (s, msg)
        })
}

/// One agent's answer into `tx`: its flows, then a node status when it failed.
async fn forward(t: Target, opened: Opened, tx: mpsc::Sender<GetFlowsResponse>) {
    let failed = |msg: String| node_status(NodeState::NodeUnavailable, vec![t.node.clone()], msg);
    let mut stream = match opened {
        Ok(s) => s,
        Err((_, msg)) => {
            let _ = tx.send(failed(msg)).await;
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(r)) => {
                if tx.send(r).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(s) => {
                let _ = tx
                    .send(failed(format!("{}: {}", t.address, s.message())))
                    .await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Observer for Relay {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        self.auth
            .authorize(&request, Role::Read, "observer.Observer/GetFlows")?;
        Ok(Response::new(self.flows(request.into_inner()).await?))
    }

    async fn get_nodes(
        &self,
        request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        self.auth
            .authorize(&request, Role::Read, "observer.Observer/GetNodes")?;
        let mut nodes = Vec::new();
        for t in self.targets().await? {
            let mut node = Node {
                name: t.node.clone(),
                address: t.address.clone(),
                state: NodeState::NodeUnavailable as i32,
                tls: Some(Tls {
                    enabled: self.tls.is_some(),
                    server_name: String::new(),
                }),
                ..Node::default()
            };
            if let Ok(mut c) = self.connect(&t).await
                && let Ok(s) = c.server_status(ServerStatusRequest {}).await
            {
                let s = s.into_inner();
                node.state = NodeState::NodeConnected as i32;
                node.version = s.version;
                node.uptime_ns = s.uptime_ns;
                node.num_flows = s.num_flows;
                node.max_flows = s.max_flows;
                node.seen_flows = s.seen_flows;
            }
            nodes.push(node);
        }
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn server_status(
        &self,
        request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        self.auth
            .authorize(&request, Role::Read, "observer.Observer/ServerStatus")?;
        let mut out = ServerStatusResponse {
            version: VERSION.into(),
            ..ServerStatusResponse::default()
        };
        let (mut connected, mut unavailable) = (0u32, 0u32);
        for t in self.targets().await? {
            let status = match self.connect(&t).await {
                Ok(mut c) => c.server_status(ServerStatusRequest {}).await.ok(),
                Err(_) => None,
            };
            match status {
                Some(s) => {
                    let s = s.into_inner();
                    connected += 1;
                    out.num_flows += s.num_flows;
                    out.max_flows += s.max_flows;
                    out.seen_flows += s.seen_flows;
                    out.lost_events += s.lost_events;
                    out.uptime_ns = out.uptime_ns.max(s.uptime_ns);
                }
                None => {
                    unavailable += 1;
                    out.unavailable_nodes.push(t.node);
                }
            }
        }
        out.num_connected_nodes = Some(connected);
        out.num_unavailable_nodes = Some(unavailable);
        Ok(Response::new(out))
    }
}
