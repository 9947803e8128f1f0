//! The Raft network: openraft's `RaftNetworkFactory`/`RaftNetwork` over the tonic peer service
//! ([`crate::grpc::raft_service`]). One lazily connected channel per target member.
//!
//! With TLS ([`crate::tls`]) the channel is `https://RAFT_ADDR`: it presents this member's
//! certificate and verifies the peer's against the cluster CA and the peer's address (an IP SAN).
//!
//! Payloads are openraft's own request/response types, serde_json encoded in a `RaftPayload`
//! (see `proto/raft.proto`). Snapshots travel as openraft's chunked InstallSnapshot RPCs, the
//! chunk bytes raw beside the JSON request.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::grpc::pb::RaftPayload;
use crate::grpc::pb::raft_service_client::RaftServiceClient;
use crate::{Member, NodeId, TypeConfig};

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Creates a [`PeerClient`] per target member.
#[derive(Debug, Clone, Default)]
pub struct Network {
    tls: Option<ClientTlsConfig>,
}

impl Network {
    /// Plain (`None`) or mutual TLS with this member's certificate.
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Network { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            addr: node.raft_addr.clone(),
            tls: self.tls.clone(),
            client: None,
        }
    }
}

/// A connection to one peer's Raft service.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    tls: Option<ClientTlsConfig>,
    client: Option<RaftServiceClient<Channel>>,
}

/// The ways an RPC can fail before the remote Raft answered.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("invalid raft address `{addr}`")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("raft rpc to `{addr}` failed")]
    Status {
        addr: String,
        #[source]
        source: tonic::Status,
    },
    #[error("raft payload for `{addr}` does not encode or decode")]
    Codec {
        addr: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

// === impl PeerClient ===

impl PeerClient {
    fn client(&mut self) -> Result<RaftServiceClient<Channel>, TransportError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let address = |source| TransportError::Address {
            addr: self.addr.clone(),
            source,
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.addr))
            .map_err(address)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(address)?;
        }
        let client = RaftServiceClient::new(endpoint.connect_lazy());
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        chunk: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error,
        RaftError<NodeId, E>: DeserializeOwned,
    {
        let data = serde_json::to_vec(req).map_err(|source| {
            RPCError::Network(NetworkError::new(&TransportError::Codec {
                addr: self.addr.clone(),
                source,
            }))
        })?;
        self.send(rpc, RaftPayload { data, chunk }, option).await
    }

    async fn send<Resp, E>(
        &mut self,
        rpc: Rpc,
        payload: RaftPayload,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error,
        RaftError<NodeId, E>: DeserializeOwned,
    {
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let result = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match result {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let unreachable = status.code() == tonic::Code::Unavailable;
                let e = TransportError::Status {
                    addr: self.addr.clone(),
                    source: status,
                };
                if unreachable {
                    // Drop the channel so the next attempt reconnects (the peer may have moved).
                    self.client = None;
                    return Err(RPCError::Unreachable(Unreachable::new(&e)));
                }
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let answer: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.data)
            .map_err(|source| {
                RPCError::Network(NetworkError::new(&TransportError::Codec {
                    addr: self.addr.clone(),
                    source,
                }))
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, Vec::new(), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let mut rpc = rpc;
        let chunk = std::mem::take(&mut rpc.data);
        self.call(Rpc::Snapshot, &rpc, chunk, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, Vec::new(), &option).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};
    use prost::Message;

    use super::*;

    #[test]
    fn a_vote_request_round_trips_through_the_envelope() -> Result<(), Box<dyn std::error::Error>> {
        let req = VoteRequest::<NodeId>::new(
            Vote::new(3, 1),
            Some(LogId::new(CommittedLeaderId::new(2, 1), 7)),
        );
        let data = serde_json::to_vec(&req)?;
        let payload = RaftPayload {
            data: data.clone(),
            chunk: Vec::new(),
        };
        let wire = payload.encode_to_vec();
        // Field 1 (tag 0x0a), a varint length, then the JSON bytes; an empty `chunk` is omitted.
        let varint_len = if data.len() < 128 { 1 } else { 2 };
        assert_eq!(wire.len(), 1 + varint_len + data.len());
        let back: VoteRequest<NodeId> =
            serde_json::from_slice(&RaftPayload::decode(wire.as_slice())?.data)?;
        assert_eq!(back, req);
        Ok(())
    }
}
