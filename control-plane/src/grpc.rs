//! gRPC services of the control plane: the Raft peer service (trusted-only, `--raft-listen`)
//! and the automation API (`palisade.controlplane.v1` from `api/proto`, `--grpc-listen`), with
//! the flow relay (`observer.Observer`) beside it.

pub mod automation;
pub mod pb_impl;
pub mod raft_service;
pub mod relay;

/// Code generated from `proto/raft.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("palisade.raft.v1");
}
