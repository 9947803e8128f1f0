//! gRPC services of the control plane. Only the Raft peer service exists so far; the public
//! automation and agent services will be generated from the protos in `api/`.

pub mod raft_service;

/// Code generated from `proto/raft.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("palisade.raft.v1");
}
