//! The automation gRPC API (`palisade.controlplane.v1`, `api/proto`) on `--grpc-listen`:
//! policies, identities, nodes, endpoints, the cluster status and the change stream.
//!
//! Who may call it: the holders of the client API's bearer tokens (`authorization: Bearer
//! TOKEN` metadata), with the same roles: a read token the reads, `PolicyService.Wait` and
//! `WatchService` (`Watch`, `Revision`); an admin token everything (`PolicyService.Apply` and
//! `Delete` are the only writes). With `--tls-dir` it serves TLS like the REST port: client
//! certificates are optional and verified against the cluster CA; a node certificate may call the
//! reads and the watch only, whatever token it carries. No token or an unknown one:
//! `UNAUTHENTICATED`; the wrong role: `PERMISSION_DENIED`. Without an admin token file
//! everything is open (a warning is logged at start).
//!
//! Every operation is [`crate::ops`]: the same checks, consistency, forwarding to the leader and
//! errors as the REST API, mapped to gRPC codes by `From<OpError> for Status`.
//!
//! ```text
//!  Watch(from) ──▶ ops::next_changes(from) ──▶ pending ──▶ stream of Change
//!                       ▲  (long poll of this member's feed)  │
//!                       └──────── from = last sent ◀──────────┘
//!  Gone ──▶ OUT_OF_RANGE (re-list); shutdown ──▶ UNAVAILABLE (resume elsewhere)
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use palisade_api::grpc::WAIT_FAILURE_METADATA;
use palisade_api::grpc::v1;
use palisade_api::grpc::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use palisade_api::grpc::v1::endpoint_service_server::{EndpointService, EndpointServiceServer};
use palisade_api::grpc::v1::identity_service_server::{IdentityService, IdentityServiceServer};
use palisade_api::grpc::v1::node_service_server::{NodeService, NodeServiceServer};
use palisade_api::grpc::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use palisade_api::grpc::v1::watch_service_server::{WatchService, WatchServiceServer};
use prost::Message;
use tokio::sync::watch;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

use crate::app::{Change, PolicyKey};
use crate::auth::{self, Denial, Role, Tokens};
use crate::errors::ClusterError;
use crate::ops::{self, Consistency, OpError, Ops};
use crate::tls::{self, CertRole};

/// Changes read from the feed per batch of a watch stream.
const WATCH_BATCH: usize = 1_000;
/// How long one long poll of a watch stream waits before polling again.
const WATCH_POLL: Duration = Duration::from_secs(30);
/// `Wait` without a timeout waits this long; no wait is longer than [`MAX_WAIT`].
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The automation API of this member: every service of `palisade.controlplane.v1`.
#[derive(Clone)]
pub struct Automation {
    ops: Ops,
    tokens: Arc<Tokens>,
    shutdown: watch::Receiver<bool>,
}

// === impl Automation ===

impl Automation {
    /// The API over `ops`, authenticating with `tokens`; watch streams end (`UNAVAILABLE`) once
    /// `shutdown` turns true.
    pub fn new(ops: Ops, tokens: Arc<Tokens>, shutdown: watch::Receiver<bool>) -> Self {
        Automation {
            ops,
            tokens,
            shutdown,
        }
    }

    /// Every service, ready for `tonic::transport::Server::add_routes`.
    pub fn routes(self) -> Routes {
        Routes::new(PolicyServiceServer::new(self.clone()))
            .add_service(IdentityServiceServer::new(self.clone()))
            .add_service(NodeServiceServer::new(self.clone()))
            .add_service(EndpointServiceServer::new(self.clone()))
            .add_service(ClusterServiceServer::new(self.clone()))
            .add_service(WatchServiceServer::new(self))
    }

    /// Refuses a call of `method` that needs `need` without the credentials for it: a node
    /// certificate may read (and watch) only; otherwise the bearer token decides.
    pub(crate) fn authorize<T>(
        &self,
        req: &Request<T>,
        need: Role,
        method: &str,
    ) -> Result<(), Status> {
        let cert = req
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| tls::identity_of(c).ok()));
        match cert {
            // An operator's admin certificate: the admin token's rights.
            Some(id) if id.role == CertRole::Admin => return Ok(()),
            Some(id) if matches!(id.role, CertRole::Node | CertRole::Read) => {
                return if need == Role::Read {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!(
                        "the {} certificate of `{}` may not call `{method}`: {} certificates may \
                         only read and watch",
                        id.role, id.name, id.role
                    )))
                };
            }
            _ => {}
        }
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match auth::check_bearer(&self.tokens, authorization, need) {
            Ok(()) => Ok(()),
            Err(Denial::Unauthenticated(why)) => Err(Status::unauthenticated(why)),
            Err(Denial::WrongRole(have)) => Err(Status::permission_denied(format!(
                "a {} token may not call `{method}` (it needs the {} role)",
                have.name(),
                need.name()
            ))),
        }
    }
}

impl From<OpError> for Status {
    fn from(e: OpError) -> Self {
        let msg = e.to_string();
        match e {
            OpError::Invalid { .. } => Status::invalid_argument(msg),
            OpError::Policy(_) => Status::invalid_argument(format!(
                "`object_json` refused by the policy engine: {msg}"
            )),
            OpError::NotFound { .. } => Status::not_found(msg),
            OpError::Gone { .. } => Status::out_of_range(msg),
            OpError::PreconditionFailed { .. } => Status::failed_precondition(msg),
            OpError::Cluster(e) => cluster_status(&e, msg),
            OpError::Unexpected(_) => Status::internal(msg),
        }
    }
}

/// The gRPC code of a cluster error (a forwarded write's leader answer keeps its meaning).
fn cluster_status(e: &ClusterError, msg: String) -> Status {
    let code = match e {
        ClusterError::NoLeader
        | ClusterError::MembershipBusy { .. }
        | ClusterError::Forward { .. } => Code::Unavailable,
        ClusterError::Leader { status, .. } => match status {
            400 | 422 => Code::InvalidArgument,
            404 => Code::NotFound,
            409 => Code::FailedPrecondition,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Unknown,
        },
        ClusterError::Rejected { .. } | ClusterError::Membership { .. } => Code::FailedPrecondition,
        ClusterError::Timeout { .. } => Code::DeadlineExceeded,
        ClusterError::Fatal { .. } | ClusterError::Internal(_) => Code::Internal,
    };
    Status::new(code, msg)
}

fn consistency(c: v1::Consistency) -> Consistency {
    match c {
        v1::Consistency::Linearizable => Consistency::Linearizable,
        v1::Consistency::Local => Consistency::Local,
    }
}

/// The checked policy key of a request (`key` is required).
fn policy_key(key: Option<v1::PolicyKey>) -> Result<PolicyKey, Status> {
    let k: PolicyKey = key
        .ok_or_else(|| OpError::invalid("key", "is required"))?
        .into();
    Ok(ops::policy_key(k.kind, k.namespace, k.name)?)
}

// === policies ===

#[tonic::async_trait]
impl PolicyService for Automation {
    async fn apply(
        &self,
        req: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::PolicyWriteResponse>, Status> {
        self.authorize(&req, Role::Admin, "PolicyService.Apply")?;
        let r = req.into_inner();
        let key = policy_key(r.key)?;
        let object: serde_json::Value = serde_json::from_str(&r.object_json)
            .map_err(|e| OpError::invalid("object_json", format!("not JSON: {e}")))?;
        let w = self.ops.apply_policy(key, object).await?;
        Ok(Response::new(v1::PolicyWriteResponse {
            revision: w.revision,
            changed: w.changed,
        }))
    }

    async fn get(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        self.authorize(&req, Role::Read, "PolicyService.Get")?;
        let r = req.into_inner();
        let c = consistency(r.consistency());
        let key = policy_key(r.key)?;
        Ok(Response::new(self.ops.get_policy(&key, c).await?.into()))
    }

    async fn list(
        &self,
        req: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesResponse>, Status> {
        self.authorize(&req, Role::Read, "PolicyService.List")?;
        let c = consistency(req.get_ref().consistency());
        let (revision, items) = self.ops.list_policies(c).await?;
        Ok(Response::new(v1::ListPoliciesResponse {
            revision,
            items: items.into_iter().map(Into::into).collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<v1::DeletePolicyRequest>,
    ) -> Result<Response<v1::PolicyWriteResponse>, Status> {
        self.authorize(&req, Role::Admin, "PolicyService.Delete")?;
        let key = policy_key(req.into_inner().key)?;
        let w = self.ops.delete_policy(key).await?;
        Ok(Response::new(v1::PolicyWriteResponse {
            revision: w.revision,
            changed: w.changed,
        }))
    }

    async fn wait(
        &self,
        req: Request<v1::WaitPoliciesRequest>,
    ) -> Result<Response<v1::WaitPoliciesResponse>, Status> {
        self.authorize(&req, Role::Read, "PolicyService.Wait")?;
        let r = req.into_inner();
        let timeout = match r.timeout_ms {
            0 => DEFAULT_WAIT,
            ms => Duration::from_millis(ms).min(MAX_WAIT),
        };
        let report = self.ops.wait_policies(r.revision, timeout).await?;
        if report.laggards.is_empty() {
            return Ok(Response::new(v1::WaitPoliciesResponse {
                revision: report.revision,
                nodes: u64::try_from(report.nodes).unwrap_or(u64::MAX),
            }));
        }
        let message = report.failure_message();
        let failure: v1::WaitFailure = report.into();
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(
            WAIT_FAILURE_METADATA,
            MetadataValue::from_bytes(&failure.encode_to_vec()),
        );
        Err(Status::with_metadata(
            Code::DeadlineExceeded,
            message,
            metadata,
        ))
    }
}

// === identities, nodes, endpoints, cluster ===

#[tonic::async_trait]
impl IdentityService for Automation {
    async fn list(
        &self,
        req: Request<v1::ListIdentitiesRequest>,
    ) -> Result<Response<v1::ListIdentitiesResponse>, Status> {
        self.authorize(&req, Role::Read, "IdentityService.List")?;
        let c = consistency(req.get_ref().consistency());
        let items = self.ops.list_identities(c).await?;
        Ok(Response::new(v1::ListIdentitiesResponse {
            items: items.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get(
        &self,
        req: Request<v1::GetIdentityRequest>,
    ) -> Result<Response<v1::Identity>, Status> {
        self.authorize(&req, Role::Read, "IdentityService.Get")?;
        let r = req.get_ref();
        let i = self
            .ops
            .get_identity(r.id, consistency(r.consistency()))
            .await?;
        Ok(Response::new(i.into()))
    }
}

#[tonic::async_trait]
impl NodeService for Automation {
    async fn list(
        &self,
        req: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.authorize(&req, Role::Read, "NodeService.List")?;
        let c = consistency(req.get_ref().consistency());
        let items = self.ops.list_nodes(c).await?;
        Ok(Response::new(v1::ListNodesResponse {
            items: items.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get(&self, req: Request<v1::GetNodeRequest>) -> Result<Response<v1::Node>, Status> {
        self.authorize(&req, Role::Read, "NodeService.Get")?;
        let r = req.get_ref();
        let n = self
            .ops
            .get_node(&r.name, consistency(r.consistency()))
            .await?;
        Ok(Response::new(n.into()))
    }
}

#[tonic::async_trait]
impl EndpointService for Automation {
    async fn list(
        &self,
        req: Request<v1::ListEndpointsRequest>,
    ) -> Result<Response<v1::ListEndpointsResponse>, Status> {
        self.authorize(&req, Role::Read, "EndpointService.List")?;
        let c = consistency(req.get_ref().consistency());
        let items = self.ops.list_endpoints(c).await?;
        Ok(Response::new(v1::ListEndpointsResponse {
            items: items.into_iter().map(Into::into).collect(),
        }))
    }
}

#[tonic::async_trait]
impl ClusterService for Automation {
    async fn status(
        &self,
        req: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        self.authorize(&req, Role::Read, "ClusterService.Status")?;
        Ok(Response::new(self.ops.cluster().status().into()))
    }
}

// === change stream ===

/// A running watch: what it has read from the feed but not sent yet, and where it stands.
struct WatchState {
    ops: Ops,
    /// The revision of the last change read from the feed.
    from: u64,
    pending: VecDeque<Change>,
    shutdown: watch::Receiver<bool>,
    done: bool,
}

impl WatchState {
    /// The next item of the stream: a pending change, else the next batch of the feed (long
    /// poll), else the error that ends the stream.
    async fn next(mut self) -> Option<(Result<v1::Change, Status>, WatchState)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Some((Ok(c.into()), self));
            }
            let batch = tokio::select! {
                r = self.ops.next_changes(self.from, WATCH_BATCH, WATCH_POLL) => Some(r),
                _ = self.shutdown.wait_for(|s| *s) => None,
            };
            let Some(batch) = batch else {
                self.done = true;
                let e = Status::unavailable(
                    "this member is shutting down; resume the watch on another member",
                );
                return Some((Err(e), self));
            };
            match batch {
                Ok(feed) => {
                    if let Some(last) = feed.changes.last() {
                        self.from = last.revision;
                    }
                    self.pending.extend(feed.changes);
                }
                Err(e) => {
                    self.done = true;
                    return Some((Err(e.into()), self));
                }
            }
        }
    }
}

/// The stream of a `Watch`.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<v1::Change, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl WatchService for Automation {
    type WatchStream = ChangeStream;

    async fn watch(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.authorize(&req, Role::Read, "WatchService.Watch")?;
        let from = req.get_ref().from_revision;
        // What the feed holds now, so a watch from a revision this member no longer holds fails
        // the call itself with OUT_OF_RANGE.
        let first = self
            .ops
            .next_changes(from, WATCH_BATCH, Duration::ZERO)
            .await?;
        let state = WatchState {
            ops: self.ops.clone(),
            from: first.changes.last().map_or(from, |c| c.revision),
            pending: first.changes.into(),
            shutdown: self.shutdown.clone(),
            done: false,
        };
        let stream = futures::stream::unfold(state, WatchState::next);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn revision(
        &self,
        req: Request<v1::RevisionRequest>,
    ) -> Result<Response<v1::RevisionResponse>, Status> {
        self.authorize(&req, Role::Read, "WatchService.Revision")?;
        let c = consistency(req.get_ref().consistency());
        let revision = self.ops.change_revision(c).await?;
        Ok(Response::new(v1::RevisionResponse { revision }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::PolicyRejected;

    #[test]
    fn errors_map_to_grpc_codes() {
        let s: Status = OpError::invalid("key", "is required").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "`key`: is required");
        let s: Status = OpError::Policy(PolicyRejected {
            field: "spec.ingress[0]".into(),
            reason: "bad".into(),
        })
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("`spec.ingress[0]`: bad"), "{s:?}");
        let s: Status = OpError::Gone { from: 3 }.into();
        assert_eq!(s.code(), Code::OutOfRange);
        let s: Status = OpError::Cluster(ClusterError::NoLeader).into();
        assert_eq!(s.code(), Code::Unavailable);
        let s: Status = OpError::Cluster(ClusterError::Rejected {
            reason: "`wireguard_epoch`: older".into(),
        })
        .into();
        assert_eq!(s.code(), Code::FailedPrecondition);
    }
}
