//! The automation gRPC API (`palisade.controlplane.v1`, feature `grpc`): policy, identity,
//! node, endpoint and cluster services and the change stream, generated from
//! `proto/palisade/controlplane/v1/controlplane.proto`. The proto file documents the
//! services, who may call them and their errors; [`pb_impl`] converts the records of
//! [`crate::controlplane`] to their messages.

pub mod pb_impl;

/// Code generated from `controlplane.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("palisade.controlplane.v1");
}

/// Binary metadata key of the [`v1::WaitFailure`] sent with a failed `PolicyService.Wait`.
pub const WAIT_FAILURE_METADATA: &str = "palisade-wait-failure-bin";
