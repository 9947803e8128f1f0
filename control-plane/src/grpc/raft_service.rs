//! The Raft peer service: receives AppendEntries, Vote and InstallSnapshot from other members.
//!
//! **Trusted-only.** Who may call it: other voters and learners of this control plane, nothing
//! else. A caller of this service can rewrite the replicated log, so it must never be reachable
//! by agents, automation or workloads. It has no authentication yet: mutual TLS with a cluster CA
//! issued at `--init` is planned (issue 4, "Security"); until then bind `--raft-listen` to an
//! address only the other members can reach. It listens apart from the client API for that
//! reason.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::pb::RaftPayload;
use super::pb::raft_service_server::RaftService;
use crate::Raft;

/// Serves Raft RPCs into the local [`Raft`].
#[derive(Clone)]
pub struct RaftPeerService {
    raft: Raft,
}

impl RaftPeerService {
    /// Wraps the local Raft handle.
    pub fn new(raft: Raft) -> Self {
        RaftPeerService { raft }
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(v)
        .map_err(|e| Status::internal(format!("unencodable raft payload: {e}")))?;
    Ok(Response::new(RaftPayload {
        data,
        chunk: Vec::new(),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftPeerService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let payload = request.into_inner();
        let mut rpc: openraft::raft::InstallSnapshotRequest<crate::TypeConfig> =
            serde_json::from_slice(&payload.data)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))?;
        rpc.data = payload.chunk;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
