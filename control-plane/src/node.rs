//! Wiring of one control-plane member: store, Raft, the peer service, the client APIs (REST and,
//! with `grpc_listen`, the automation gRPC API and the flow relay), the web UI (with
//! `ui_listen`) and the metrics task, with a handle to shut them
//! down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::app::Request;
use crate::auth::{AuthError, Tokens};
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::grpc::automation::Automation;
use crate::grpc::pb::raft_service_server::RaftServiceServer;
use crate::grpc::raft_service::{RaftPeerService, require_member};
use crate::grpc::relay::Relay;
use crate::network::Network;
use crate::ops::Ops;
use crate::store::{self, StoreError};
use crate::tls::{CertRole, ClientCert, TlsError, TlsListener, TlsMaterial};
use crate::validate::PolicyValidator;
use crate::{Raft, http_api};
use palisade_api::observer::observer_server::ObserverServer;

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// A token file is unusable.
    #[error("cannot load the api tokens")]
    Auth(#[from] AuthError),
    /// The TLS dir is unusable.
    #[error("cannot load the tls dir")]
    Tls(#[from] TlsError),
    /// The TLS dir's certificate is not a member's.
    #[error(
        "`{path}`: the {identity} cannot run a control-plane member (it needs the member role)"
    )]
    NotMember {
        /// The certificate file.
        path: std::path::PathBuf,
        /// Who it names.
        identity: crate::tls::PeerIdentity,
    },
    /// The Raft peer service's TLS could not be set up.
    #[error("cannot set up tls on the raft peer service")]
    RaftTls(#[source] tonic::transport::Error),
    /// The automation gRPC API's TLS could not be set up.
    #[error("cannot set up tls on the automation grpc api")]
    GrpcTls(#[source] tonic::transport::Error),
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on `{addr}`")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Raft refused to start or to initialize.
    #[error("raft failed to {what}: {message}")]
    Raft {
        /// What was attempted.
        what: &'static str,
        /// openraft's message.
        message: String,
    },
}

/// A running member.
pub struct ControlPlane {
    /// Client operations on this member.
    pub cluster: Cluster,
    /// Bound address of the Raft peer service.
    pub raft_addr: SocketAddr,
    /// Bound address of the client API.
    pub api_addr: SocketAddr,
    /// Bound address of the automation gRPC API, when served.
    pub grpc_addr: Option<SocketAddr>,
    /// Bound address of the web UI, when served.
    pub ui_addr: Option<SocketAddr>,
    raft: Raft,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts a member: opens its store, starts Raft, binds both listeners and, with `init` on an
/// empty log, bootstraps the membership from `peers` and writes the cluster config.
pub async fn start(
    config: Arc<Config>,
    validator: Arc<dyn PolicyValidator>,
    prometheus: Option<PrometheusHandle>,
) -> Result<ControlPlane, StartError> {
    config.validate()?;
    let raft_config = Arc::new(config.raft_config()?);
    let (log_store, state_machine) = store::open(&config.data_dir).await?;
    let tokens = Tokens::load(
        config.admin_token_file.as_deref(),
        config.read_token_file.as_deref(),
        config.member_token_file.as_deref(),
        config.node_token_file.as_deref(),
    )?;
    if !tokens.enabled() {
        tracing::warn!("no admin token file: the client API accepts unauthenticated requests");
    }
    let tokens = Arc::new(tokens);
    let tls = match &config.tls_dir {
        Some(dir) => {
            let m = TlsMaterial::load(dir)?;
            if m.identity.role != CertRole::Member {
                return Err(StartError::NotMember {
                    path: dir.join(crate::tls::CERT_FILE),
                    identity: m.identity,
                });
            }
            tracing::info!(identity = %m.identity, dir = %dir.display(), "tls on the raft peer service and the client api");
            Some(m)
        }
        None => {
            tracing::warn!(
                "no tls dir: the raft peer service and the client API are plain (unauthenticated raft)"
            );
            None
        }
    };
    let api_client_tls = tls.as_ref().map(TlsMaterial::api_client).transpose()?;
    let network = Network::new(tls.as_ref().map(TlsMaterial::raft_client));
    let committed = log_store.committed_index();
    let applied = state_machine.applied();
    let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| StartError::Raft {
            what: "start",
            message: e.to_string(),
        })?;
    let cluster = Cluster::new(
        config.id,
        raft.clone(),
        applied,
        committed,
        config.request_timeout(),
        tokens.member_token().map(str::to_owned),
        api_client_tls,
    )
    .map_err(|e| StartError::Raft {
        what: "start",
        message: e.to_string(),
    })?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Raft peer service (trusted-only, see grpc::raft_service).
    let raft_listener = bind(config.raft_listen).await?;
    let raft_addr = local_addr(&raft_listener, config.raft_listen)?;
    let svc = RaftServiceServer::new(RaftPeerService::new(raft.clone()))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let svc = InterceptedService::new(svc, require_member(tls.is_some()));
    let mut server = tonic::transport::Server::builder();
    if let Some(m) = &tls {
        server = server
            .tls_config(m.raft_server())
            .map_err(StartError::RaftTls)?;
    }
    let api_server_tls = tls.as_ref().map(TlsMaterial::api_server).transpose()?;
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let res = server
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpIncoming::from(raft_listener), async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "raft peer service stopped");
        }
    }));

    // Client API.
    let api_listener = bind(config.api_listen).await?;
    let api_addr = local_addr(&api_listener, config.api_listen)?;
    let ops = Ops::new(
        cluster.clone(),
        Duration::from_millis(config.node_lease_ms),
        validator,
    );
    let router = http_api::router(ops.clone(), prometheus.clone(), tokens.clone());
    let app = router.into_make_service_with_connect_info::<ClientCert>();
    let mut rx = shutdown_rx.clone();
    let stopped = async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tasks.push(match api_server_tls {
        Some(cfg) => {
            let listener =
                TlsListener::new(api_listener, cfg).map_err(|source| StartError::Listen {
                    addr: api_addr,
                    source,
                })?;
            tokio::spawn(async move {
                let res = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "client api stopped");
                }
            })
        }
        None => tokio::spawn(async move {
            let res = axum::serve(api_listener, app)
                .with_graceful_shutdown(stopped)
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "client api stopped");
            }
        }),
    });

    // The flow relay answers both the gRPC observer and the web UI.
    let automation = Automation::new(ops.clone(), tokens.clone(), shutdown_rx.clone());
    let relay = Relay::new(
        ops.clone(),
        automation.clone(),
        config.hubble_port,
        tls.as_ref().map(TlsMaterial::agent_client),
    );

    // Web UI (optional, plain HTTP; see crate::ui for who may reach it).
    let ui_addr = match config.ui_listen {
        Some(addr) => {
            let listener = bind(addr).await?;
            let bound = local_addr(&listener, addr)?;
            if !bound.ip().is_loopback() && !tokens.enabled() {
                tracing::warn!(%bound, "the web UI shows every flow to whoever reaches this non-loopback address (no token files)");
            }
            let app = crate::ui::router(crate::ui::Ui::new(
                relay.clone(),
                ops.clone(),
                tokens.clone(),
            ));
            let mut rx = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let res = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "web ui stopped");
                }
            }));
            Some(bound)
        }
        None => None,
    };

    // Automation gRPC API (optional).
    let grpc_addr = match config.grpc_listen {
        Some(addr) => {
            let listener = bind(addr).await?;
            let bound = local_addr(&listener, addr)?;
            let mut server = tonic::transport::Server::builder();
            if let Some(m) = &tls {
                server = server
                    .tls_config(m.grpc_api_server())
                    .map_err(StartError::GrpcTls)?;
            }
            // Health as Hubble Relay reports it: `observer.Observer` (and the automation
            // services) SERVING while this server runs.
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter.set_serving::<ObserverServer<Relay>>().await;
            reporter
                .set_serving::<palisade_api::grpc::v1::watch_service_server::WatchServiceServer<
                    Automation,
                >>()
                .await;
            let routes = automation
                .routes()
                .add_service(ObserverServer::new(relay))
                .add_service(health);
            let mut rx = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let res = server
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "automation grpc api stopped");
                }
            }));
            Some(bound)
        }
        None => None,
    };

    if config.identity_gc_interval_ms > 0 {
        tasks.push(tokio::spawn(collect_identities(
            cluster.clone(),
            config.id,
            Duration::from_millis(config.identity_gc_interval_ms),
            config.identity_gc_grace_ms,
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::metrics::run(
        cluster.clone(),
        prometheus,
        shutdown_rx.clone(),
    )));

    if config.init {
        let initialized = raft.is_initialized().await.map_err(|e| StartError::Raft {
            what: "read its state",
            message: e.to_string(),
        })?;
        if !initialized {
            let mut members = config.peers.clone();
            members.insert(config.id, config.me());
            tracing::info!(members = members.len(), "bootstrapping the membership");
            match raft.initialize(members).await {
                Ok(()) => {
                    let c = cluster.clone();
                    let cfg = config.cluster.clone();
                    tasks.push(tokio::spawn(async move {
                        write_cluster_config(c, cfg).await;
                    }));
                }
                // Every member of a new cluster may be started with `init`: a peer that got
                // there first has already asked for this member's vote (and has it), so its
                // membership is the one being bootstrapped, and it writes the cluster config.
                // Exiting here would leave a voter out of the cluster it is meant to form.
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(e),
                )) => {
                    tracing::info!(
                        reason = %e,
                        "a peer bootstrapped the membership first: joining it"
                    );
                }
                Err(e) => {
                    return Err(StartError::Raft {
                        what: "initialize",
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    tracing::info!(id = config.id, %raft_addr, %api_addr, grpc_addr = ?grpc_addr, ui_addr = ?ui_addr, "control-plane member started");
    Ok(ControlPlane {
        cluster,
        raft_addr,
        api_addr,
        grpc_addr,
        ui_addr,
        raft,
        shutdown,
        tasks,
    })
}

/// Writes the cluster config after bootstrap, retrying until a leader accepts it.
async fn write_cluster_config(cluster: Cluster, cfg: crate::app::ClusterConfig) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match cluster.write(Request::SetClusterConfig(cfg.clone())).await {
            Ok(_) => return,
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                tracing::error!(error = %e, "cluster config not written");
                return;
            }
        }
    }
    tracing::error!("cluster config not written: no leader within 60 s");
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

fn local_addr(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Listen { addr, source })
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Stops serving, stops Raft and waits for the servers to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // Servers finish the requests in flight, but a long poll (an agent's watch) or an idle
        // keep-alive connection would hold a graceful shutdown for its whole length: past the
        // grace, what is left is aborted (clients fail over to another member).
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut aborted = 0;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                aborted += 1;
            }
        }
        tracing::info!(aborted, "control-plane member stopped");
    }
}

/// How long a stopping member waits for its servers to finish the requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Identities collected per log entry (one proposal stays small; the loop takes the rest).
const GC_BATCH: u32 = 20_000;

/// The leader's periodic garbage collection of identities no endpoint has used for `grace_ms`
/// (DESIGN §2: in bulk, through Raft, so every member drops the same ids). Followers skip it.
async fn collect_identities(
    cluster: Cluster,
    id: crate::NodeId,
    every: Duration,
    grace_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if cluster.raft().metrics().borrow().current_leader != Some(id) {
            continue;
        }
        loop {
            match cluster
                .write(Request::CollectIdentities {
                    grace_ms,
                    max: GC_BATCH,
                })
                .await
            {
                Ok(crate::app::Response::Collected {
                    collected,
                    remaining,
                }) => {
                    if collected > 0 {
                        tracing::info!(collected, remaining, "collected unused identities");
                    }
                    if remaining == 0 {
                        break;
                    }
                }
                Ok(other) => {
                    tracing::warn!(answer = ?other, "identity collection");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "identity collection");
                    break;
                }
            }
        }
    }
}
