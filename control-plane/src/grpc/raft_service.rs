//! The Raft peer service: receives AppendEntries, Vote and InstallSnapshot from other members.
//!
//! **Trusted-only.** Who may call it: other voters and learners of this control plane, nothing
//! else. A caller of this service can rewrite the replicated log, so it must never be reachable
//! by agents, automation or workloads. With `--tls-dir` it requires mutual TLS: the client's
//! certificate must chain to the cluster CA (checked in the handshake) and carry the member role
//! ([`require_member`], checked on every call: a node certificate gets `PERMISSION_DENIED`).
//! Without `--tls-dir` it has no authentication: bind `--raft-listen` to an address only the
//! other members can reach. It listens apart from the client API for that reason.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::pb::RaftPayload;
use super::pb::raft_service_server::RaftService;
use crate::Raft;
use crate::tls::{self, CertRole};

/// The interceptor of the peer service: with `tls` on, refuses every call whose client
/// certificate does not carry the member role. Off: lets everything through (plain transport).
pub fn require_member(tls: bool) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        if !tls {
            return Ok(req);
        }
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a member certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a member certificate is required"))?;
        match tls::identity_of(leaf) {
            Ok(id) if id.role == CertRole::Member => Ok(req),
            Ok(id) => Err(Status::permission_denied(format!(
                "the {id} may not call the raft peer service: it needs the member role"
            ))),
            Err(reason) => Err(Status::permission_denied(format!(
                "client certificate without a member role: {reason}"
            ))),
        }
    }
}

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
