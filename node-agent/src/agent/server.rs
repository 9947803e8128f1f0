//! The agent's run loop: the local socket (one request per connection, handled in order, so the
//! agent's state needs no locks) and the policy directory, polled for changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use palisade_api::agent::{AgentRequest, AgentResponse, EndpointSpec};
use palisade_datapath_common::endpoint::{FLAG_ALLOW_LOCALHOST, FLAG_L7_PROXY, IDENTITY_HOST};
use palisade_policy::engine::{EndpointSpec as EngineEndpoint, Engine, EngineConfig};
use palisade_policy::ir::{NormalizedPolicy, ResourceKey};

use palisade_api::controlplane::{Endpoint as CpEndpoint, NodeRecord, NodeRegistration};

use super::cidr_ipcache::CidrIpcache;
use super::cluster_view::{Applied, ClusterView};
use super::config::AgentConfig;
use super::control_plane::{Link, Publish, Update};
use super::dns::DnsProxy;
use super::encryption::{Encryption, EncryptionError};
use super::flows::{
    self, EndpointMeta, Enrichment, FlowRing, LocalEndpoint, PolicyNames, SharedEnrichment,
};
use super::gossip::{Gossip, NodeGossip, NodeInfo};
use super::ipam::{Ipam, IpamError};
use super::metrics;
use super::observer::{self, AgentObserver};
use super::proxy::{L7Proxy, Local, PeerInfo, ProxyError, ProxyView};
use super::registry::{RegisteredEndpoint, Registry};
use super::sync::{MapSync, SyncStats};
use crate::datapath::{Datapath, DatapathError, endpoint_info};

/// How often the policy directory is checked for changes.
const POLICY_POLL: Duration = Duration::from_millis(500);
/// The largest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// The largest response line a client reads (a status lists every endpoint).
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// CNI error code for an invalid argument.
const CODE_INVALID: u32 = 7;
/// CNI error code for "try again later".
const CODE_TRY_AGAIN: u32 = 11;
/// Palisade: the datapath refused an operation.
const CODE_DATAPATH: u32 = 100;

/// Errors that stop the agent or a client call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory or socket could not be prepared.
    #[error("{action} `{path}`")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The datapath could not be loaded or programmed.
    #[error("datapath")]
    Datapath(#[from] DatapathError),
    /// IPAM state could not be opened.
    #[error("ipam")]
    Ipam(#[from] IpamError),
    /// The control plane link or the saved view of it could not be set up.
    #[error("control plane: {0}")]
    ControlPlane(String),
    /// Node-to-node encryption could not start.
    #[error("encryption")]
    Encryption(#[from] EncryptionError),
    /// The L7 proxy could not start.
    #[error("l7 proxy")]
    Proxy(#[from] ProxyError),
    /// The agent's answer was not a response.
    #[error("agent at `{socket}` answered something that is not a response: {detail}")]
    BadResponse {
        /// Socket.
        socket: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Sends one request to the agent at `socket` and returns its response (the CLI's and the CNI
/// plugin's side of the protocol).
pub fn request(socket: &Path, req: &AgentRequest) -> Result<AgentResponse, AgentError> {
    let mut stream = UnixStream::connect(socket).map_err(io("connect to", socket))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io("configure", socket))?;
    let mut line = serde_json::to_string(req).unwrap_or_default();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(io("write to", socket))?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_RESPONSE))
        .read_line(&mut answer)
        .map_err(io("read from", socket))?;
    serde_json::from_str(&answer).map_err(|e| AgentError::BadResponse {
        socket: socket.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Runs the agent until the process is killed.
pub fn run(config: AgentConfig) -> Result<(), AgentError> {
    crate::heap::fix_mmap_threshold();
    fs::create_dir_all(&config.state_dir).map_err(io("create", &config.state_dir))?;
    fs::set_permissions(&config.state_dir, fs::Permissions::from_mode(0o700))
        .map_err(io("restrict", &config.state_dir))?;
    if let Some(parent) = config.socket.parent() {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let _ = fs::remove_file(&config.socket);
    let listener = UnixListener::bind(&config.socket).map_err(io("listen on", &config.socket))?;
    // Whoever can write to this socket decides what the node enforces: root only.
    fs::set_permissions(&config.socket, fs::Permissions::from_mode(0o600))
        .map_err(io("restrict", &config.socket))?;
    listener
        .set_nonblocking(true)
        .map_err(io("configure", &config.socket))?;

    if let Some(addr) = config.metrics_listen {
        metrics::serve(addr).map_err(AgentError::ControlPlane)?;
    }
    let mut agent = Agent::start(config)?;
    agent.start_flows()?;
    eprintln!(
        "palisade agent: node `{}`, pod CIDR {}, {} endpoint(s) restored, listening on {}",
        agent.config.node,
        agent.config.pod_cidr,
        agent.registry.iter().count(),
        agent.config.socket.display()
    );
    let mut next_poll = Instant::now();
    loop {
        // Sleep in poll(2) until a client connects or the policy directory is due a look.
        let wait = next_poll.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::from(wait.as_millis().min(1_000) as u16);
        {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            if let Some(link) = &agent.link {
                fds.push(PollFd::new(link.wake_fd(), PollFlags::POLLIN));
            }
            if let Some(g) = &agent.gossip {
                fds.push(PollFd::new(g.wake_fd(), PollFlags::POLLIN));
            }
            if let Some(dns) = &agent.dns {
                fds.push(PollFd::new(dns.wake_fd(), PollFlags::POLLIN));
            }
            let _ = poll(&mut fds, timeout);
        }
        // Answers waiting on the DNS proxy first: a pod is blocked until they are programmed.
        agent.tick_dns();
        // Control-plane updates first: a CNI request served next sees the newest identities.
        let updates = agent.link.as_ref().map(Link::drain).unwrap_or_default();
        for u in updates {
            agent.on_update(u);
        }
        // Then what peers gossip, under what the control plane just said.
        agent.merge_gossip();
        loop {
            match listener.accept() {
                Ok((stream, _)) => agent.serve(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    eprintln!("palisade agent: accept: {e}");
                    break;
                }
            }
        }
        agent.tick_encryption();
        if Instant::now() >= next_poll {
            agent.poll_policies();
            next_poll = Instant::now() + POLICY_POLL;
        }
    }
}

/// An endpoint recorded in the engine and registry, with what enforcing it needs.
struct Registered {
    endpoint: RegisteredEndpoint,
    ifindex: u32,
    ip: IpAddr,
}

/// The agent's state.
struct Agent {
    config: AgentConfig,
    dp: Datapath,
    engine: Engine,
    ipam: Ipam,
    registry: Registry,
    sync: MapSync,
    /// The ipcache's entries for the prefixes policies name.
    cidr_ipcache: CidrIpcache,
    /// Policies currently applied (by object), and the fingerprint of the files they came from.
    policies: BTreeSet<ResourceKey>,
    policy_fingerprint: Vec<(PathBuf, u64, u128)>,
    last_sync: SyncStats,
    /// The next sync diffs every endpoint (at start, and after a failed sync).
    sync_all: bool,
    policy_error: Option<String>,
    /// The control plane link (`None`: standalone agent).
    link: Option<Link>,
    /// The control plane's state as applied here (the last-known-good state).
    view: ClusterView,
    /// How the link is doing, for status.
    cp: CpState,
    /// WireGuard to the other nodes (`None`: not configured).
    encryption: Option<Encryption>,
    /// What the flow reader names addresses and identities with (rebuilt on every change).
    enrichment: SharedEnrichment,
    /// The L7 proxy (`None`: not configured).
    proxy: Option<L7Proxy>,
    /// Gossip with the other agents (`None`: not configured).
    gossip: Option<Gossip>,
    /// What the last gossip merge refused, for status.
    gossip_refused: (usize, usize),
    /// Members not merged: unknown to the control plane, or not at the address it registered.
    gossip_impostors: usize,
    /// The DNS proxy (`None`: not configured).
    dns: Option<DnsProxy>,
    /// Addresses learned by the DNS proxy as programmed: names per address (the engine holds
    /// their identities, the ipcache maps them).
    fqdn_programmed: BTreeMap<IpAddr, (BTreeSet<String>, u32)>,
}

/// The control plane link's health, as `palisade agent status` shows it.
#[derive(Debug, Default)]
struct CpState {
    /// This node as registered.
    registered: Option<NodeRecord>,
    /// Whether the last exchange succeeded.
    connected: bool,
    /// The last failure (cleared by the next success).
    last_error: Option<String>,
    /// The last update that could not be applied (the previous state stays in force).
    update_error: Option<String>,
    /// Propagation latency of the last policy change applied (ms).
    last_propagation_ms: Option<u64>,
}

impl Agent {
    fn start(config: AgentConfig) -> Result<Self, AgentError> {
        // The tunnel first: its key is what the node registers, and a node that cannot encrypt
        // must not start sending its pods' traffic in the clear.
        let encryption = match &config.encryption {
            None => None,
            Some(ec) => {
                let underlay = config
                    .control_plane
                    .as_ref()
                    .map(|c| c.node_address)
                    .ok_or_else(|| {
                        AgentError::ControlPlane(
                            "encryption needs a control plane (peers are the other nodes it lists)"
                                .into(),
                        )
                    })?;
                Some(Encryption::start(ec.clone(), underlay)?)
            }
        };
        let dp = Datapath::load_with(&config.datapath)?;
        let proxy = config.l7_proxy.clone().map(L7Proxy::start).transpose()?;
        let mut dns = config.dns_proxy.clone().map(DnsProxy::start).transpose()?;
        if let Some(d) = &mut dns {
            // The conntrack pass runs on the proxy's reader thread, through handles of its own.
            let maps = dp.conntrack_maps()?;
            d.read_conntrack_with(Box::new(move |want| {
                maps.egress_flows(want).map_err(|e| chain(&e))
            }))?;
        }
        let mut proxy_ports = EngineConfig::default().proxy_ports;
        if let Some(p) = &config.l7_proxy {
            proxy_ports.http = p.port;
        }
        if let Some(d) = &config.dns_proxy {
            proxy_ports.dns = d.port;
        }
        let ipam = Ipam::open(config.pod_cidr, &config.state_dir)?;
        let registry = Registry::open(&config.state_dir)
            .map_err(io("open the endpoint registry in", &config.state_dir))?;
        let mut agent = Agent {
            dp,
            // A pod re-created with the same labels keeps its identity (no policy churn).
            engine: Engine::new(EngineConfig {
                retain_unreferenced_identities: true,
                proxy_ports,
                ..EngineConfig::default()
            }),
            ipam,
            registry,
            sync: MapSync::default(),
            cidr_ipcache: CidrIpcache::default(),
            policies: BTreeSet::new(),
            policy_fingerprint: Vec::new(),
            last_sync: SyncStats::default(),
            sync_all: true,
            policy_error: None,
            link: None,
            view: ClusterView::default(),
            cp: CpState::default(),
            encryption,
            enrichment: Arc::new(RwLock::new(Arc::new(Enrichment::default()))),
            proxy,
            gossip: None,
            gossip_refused: (0, 0),
            gossip_impostors: 0,
            dns,
            fqdn_programmed: BTreeMap::new(),
            config,
        };
        let adopted = agent.sync.adopt(&agent.dp)?;
        // Addresses a previous run learned from DNS come back with the identities they had
        // (before any other node-local identity is allocated, so none can take their ids): their
        // ipcache entries and the policy entries naming them stay as the datapath kept them.
        let kept = agent.restore_fqdn();
        // Any other node-local identity in the ipcache is a previous run's that this run's
        // engine may hand out for other label sets: it goes.
        for (ip, prefix, id) in agent.dp.ipcache_entries()? {
            if palisade_policy::identity::Identity(id).is_local_scope()
                && !(prefix == host_prefix(ip) && kept.get(&ip) == Some(&id))
            {
                agent.dp.remove_ipcache(ip, prefix)?;
            }
        }
        for ip in agent.config.node_ips.clone() {
            agent.dp.upsert_ipcache(IpAddr::V4(ip), 32, IDENTITY_HOST)?;
        }
        if agent.config.control_plane.is_some() {
            // The last-known-good view goes in before the endpoints: they get their cluster
            // identities back, and the first sync already holds the cluster's policy (a restart
            // never passes through an unpoliced state).
            let mut view =
                ClusterView::load(&agent.config.state_dir).map_err(AgentError::ControlPlane)?;
            view.restore(&mut agent.engine, &mut agent.dp)
                .map_err(|e| AgentError::ControlPlane(chain(&e)))?;
            agent.view = view;
            // Peers from the last-known-good view too: other nodes stay reachable while the
            // control plane is not.
            agent.refresh_peers();
        }
        // Restart order: every known endpoint and every policy into the engine first, then one
        // sync, then the programs: the maps go from the old state to the new in one diff, with
        // no moment where a restored endpoint's entries are missing.
        let known: Vec<RegisteredEndpoint> = agent.registry.iter().cloned().collect();
        let mut restored = Vec::new();
        for e in known {
            match agent.register(e.spec.clone()) {
                Ok(r) => restored.push(r),
                Err(err) => eprintln!(
                    "palisade agent: restoring endpoint `{}`: {}",
                    e.name(),
                    err.1
                ),
            }
        }
        agent.load_policies();
        // Restored DNS addresses: the first sync writes their policy entries (the same the
        // maps already hold when their ids were kept), then their ipcache entries.
        agent.program_fqdn();
        agent.resync()?;
        for r in restored {
            if let Err(err) = agent.enforce(&r) {
                eprintln!(
                    "palisade agent: re-attaching endpoint `{}`: {}",
                    r.endpoint.name(),
                    err.1
                );
            }
        }
        if adopted > 0 {
            eprintln!(
                "palisade agent: adopted {adopted} pinned policy entries; {} after restore",
                agent.last_sync.total
            );
        }
        if let Some(cp) = agent.config.control_plane.clone() {
            let (wireguard_public_key, wireguard_epoch) = match &agent.encryption {
                Some(enc) => enc.published_key(),
                None => (cp.wireguard_public_key.clone(), cp.wireguard_epoch),
            };
            let registration = NodeRegistration {
                name: agent.config.node.clone(),
                address: cp.node_address,
                wireguard_public_key,
                wireguard_epoch,
                pod_cidr: Some(agent.config.pod_cidr),
            };
            let link =
                Link::start(cp.client, &cp.grpc, registration).map_err(AgentError::ControlPlane)?;
            // Bindings from the block not confirmed before the restart: commit them now.
            for (id, labels) in agent.view.pending_bindings() {
                link.publish(Publish::Bind {
                    id,
                    labels: labels.clone(),
                });
            }
            agent.link = Some(link);
        }
        if let Some(gc) = agent.config.gossip.clone() {
            if agent.config.control_plane.is_none() {
                return Err(AgentError::ControlPlane(
                    "gossip needs a control plane (it fills in for it, and the node records it lists decide which pod addresses a peer may claim)".into(),
                ));
            }
            let g = Gossip::start(&agent.config.node, gc).map_err(AgentError::ControlPlane)?;
            agent.gossip = Some(g);
            agent.seed_gossip();
        }
        agent.update_gauges();
        Ok(agent)
    }

    fn serve(&mut self, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
        let response = match read {
            Err(e) => AgentResponse::Error {
                code: CODE_INVALID,
                message: format!("reading the request: {e}"),
            },
            Ok(_) => match serde_json::from_str::<AgentRequest>(&line) {
                Err(e) => AgentResponse::Error {
                    code: CODE_INVALID,
                    message: format!("invalid request: {e}"),
                },
                Ok(req) => self.handle(req),
            },
        };
        let mut out = serde_json::to_string(&response).unwrap_or_default();
        out.push('\n');
        let mut stream = stream;
        let _ = stream.write_all(out.as_bytes());
    }

    fn handle(&mut self, req: AgentRequest) -> AgentResponse {
        let fail = |(code, message): (u32, String)| AgentResponse::Error { code, message };
        match req {
            AgentRequest::IpamAllocate {
                container_id,
                ifname,
                requested,
            } => {
                let requested = match requested {
                    None => None,
                    Some(IpAddr::V4(a)) => Some(a),
                    Some(IpAddr::V6(a)) => {
                        return fail((
                            CODE_INVALID,
                            format!(
                                "requested address `{a}`: IPv6 pod addresses are not supported yet"
                            ),
                        ));
                    }
                };
                match self.ipam.allocate(&container_id, &ifname, requested) {
                    Ok(ip) => AgentResponse::IpamAllocated {
                        ip: IpAddr::V4(ip),
                        prefix: 32,
                        gateway: IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)),
                    },
                    Err(e @ IpamError::Exhausted(_)) => fail((CODE_TRY_AGAIN, e.to_string())),
                    Err(e) => fail((CODE_INVALID, e.to_string())),
                }
            }
            AgentRequest::IpamRelease {
                container_id,
                ifname,
            } => match self.ipam.release(&container_id, &ifname) {
                Ok(()) => AgentResponse::Done,
                Err(e) => fail((CODE_TRY_AGAIN, e.to_string())),
            },
            AgentRequest::EndpointAdd(spec) => match self.add_endpoint(spec) {
                Ok(e) => AgentResponse::EndpointAdded {
                    endpoint_id: e.endpoint_id,
                    identity: e.identity,
                },
                Err(e) => fail(e),
            },
            AgentRequest::EndpointDel {
                container_id,
                ifname,
            } => match self.del_endpoint(&container_id, &ifname) {
                Ok(()) => {
                    self.publish_enrichment();
                    AgentResponse::Done
                }
                Err(e) => fail(e),
            },
            AgentRequest::EndpointGet {
                container_id,
                ifname,
            } => match self.registry.get(&container_id, &ifname) {
                Some(e) => AgentResponse::Endpoint {
                    spec: e.spec.clone(),
                    endpoint_id: e.endpoint_id,
                    identity: e.identity,
                },
                None => fail((
                    3,
                    format!("no endpoint for container `{container_id}` interface `{ifname}`"),
                )),
            },
            AgentRequest::Status {} => AgentResponse::Status {
                status: self.status(),
            },
            AgentRequest::EncryptStatus {} => AgentResponse::Status {
                status: self.encryption_status(),
            },
            AgentRequest::EncryptRotate {} => match self.rotate_key() {
                Ok(()) => AgentResponse::Status {
                    status: self.encryption_status(),
                },
                Err(e) => fail(e),
            },
        }
    }

    fn add_endpoint(
        &mut self,
        mut spec: EndpointSpec,
    ) -> Result<RegisteredEndpoint, (u32, String)> {
        if spec.from_pod_record {
            self.fill_from_pod_record(&mut spec)?;
        }
        let r = self.register(spec)?;
        // Policy first, then the endpoint entry, then the programs: the first policed packet
        // already sees the endpoint's complete policy.
        self.resync().map_err(|e| {
            (
                CODE_DATAPATH,
                format!("endpoint `{}`: {}", r.endpoint.name(), chain(&e)),
            )
        })?;
        self.enforce(&r)?;
        if let Some(link) = &self.link {
            link.publish(Publish::Endpoint(CpEndpoint {
                ip: r.ip,
                identity: r.endpoint.identity,
                node: self.config.node.clone(),
                ports: r.endpoint.spec.ports.clone(),
            }));
        }
        self.update_gauges();
        Ok(r.endpoint)
    }

    /// A pod the runtime named without labels (a kubelet's ADD passes only the pod's namespace
    /// and name): its labels, service account and named ports come from its Pod record in the
    /// control plane's view. Without one — the mirror has not copied the pod yet, or this agent
    /// has not caught up — the answer is code 11 (try again later): the kubelet retries the ADD,
    /// and the pod never runs under the identity of an empty label set, which policy written for
    /// its real labels would not select. A record naming another node, or of another uid than the
    /// runtime's `K8S_POD_UID`, is an earlier pod of the same name (a recreated StatefulSet
    /// member): also try again later.
    fn fill_from_pod_record(&self, spec: &mut EndpointSpec) -> Result<(), (u32, String)> {
        let name = format!("{}/{}", spec.pod_namespace, spec.pod_name);
        let Some(pod) = self.view.pod(&spec.pod_namespace, &spec.pod_name) else {
            return Err((
                CODE_TRY_AGAIN,
                format!(
                    "pod `{name}`: no Pod record in the control plane yet (the runtime passed no labels, so they come from it); try again later"
                ),
            ));
        };
        if let (Some(want), Some(have)) = (&spec.pod_uid, &pod.uid)
            && want != have
        {
            return Err((
                CODE_TRY_AGAIN,
                format!(
                    "pod `{name}`: its Pod record is of uid `{have}`, the runtime's pod is `{want}` (an earlier pod of that name); try again later"
                ),
            ));
        }
        if let Some(node) = pod.node.as_deref().filter(|n| *n != self.config.node) {
            return Err((
                CODE_TRY_AGAIN,
                format!(
                    "pod `{name}`: its Pod record says node `{node}`, this is `{}` (an earlier pod of that name?); try again later",
                    self.config.node
                ),
            ));
        }
        take_pod_record(spec, &pod);
        Ok(())
    }

    /// Validates an endpoint and records it in the engine and the registry (no map writes).
    fn register(&mut self, spec: EndpointSpec) -> Result<Registered, (u32, String)> {
        let invalid = |m: String| (CODE_INVALID, m);
        let ip = match spec.ips.as_slice() {
            [ip] => *ip,
            [] => return Err(invalid("endpoint has no address (ips is empty)".into())),
            _ => {
                return Err(invalid(
                    "only one address per endpoint is supported yet (ips)".into(),
                ));
            }
        };
        if spec.pod_namespace.is_empty() || spec.pod_name.is_empty() {
            return Err(invalid("podNamespace and podName are required".into()));
        }
        let ifindex = nix::net::if_::if_nametoindex(spec.host_iface.as_str())
            .map_err(|e| invalid(format!("hostIface `{}`: {e}", spec.host_iface)))?;
        let name: Arc<str> = format!("{}/{}", spec.pod_namespace, spec.pod_name).into();
        let engine_spec = EngineEndpoint {
            name: Arc::clone(&name),
            namespace: spec.pod_namespace.as_str().into(),
            labels: Arc::clone(&spec.labels),
            service_account: spec.service_account.as_deref().unwrap_or("default").into(),
            ip,
            ports: super::cluster_view::named_ports(&spec.ports),
        };
        self.cluster_identity(&engine_spec)?;
        let identity = self
            .engine
            .add_endpoint(engine_spec)
            .map_err(|e| invalid(format!("endpoint `{name}`: {e}")))?;
        // The registry keeps the engine's copy of the labels, shared by every endpoint of the
        // identity, not one map per endpoint.
        let mut spec = spec;
        if let Some(e) = self.engine.endpoints().get(&name) {
            spec.labels = Arc::clone(&e.spec.labels);
        }
        let endpoint = self
            .registry
            .insert(spec, identity.0)
            .map_err(|e| (CODE_TRY_AGAIN, format!("saving the endpoint registry: {e}")))?;
        Ok(Registered {
            endpoint,
            ifindex,
            ip,
        })
    }

    /// With a control plane, makes sure the endpoint's label set is bound to its cluster
    /// identity before the engine sees the endpoint. Known label sets resolve locally (also
    /// while the control plane is unreachable). A new one is asked of the control plane within a
    /// short budget (`ALLOCATE_BUDGET`), so the same labels keep one id cluster-wide in the common
    /// case; when the control plane does not answer in time, the next id of the node's leased
    /// block is bound at once and committed by the publisher afterwards (the pod starts; if the
    /// set got another id elsewhere meanwhile, the endpoints move to it when the commit answers).
    fn cluster_identity(&mut self, spec: &EngineEndpoint) -> Result<(), (u32, String)> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let labels = self.engine.endpoint_labels(spec);
        // A set known only through a peer's gossip is not this node's to publish (the control
        // plane has not committed that id): allocate or take from the block as for a new set;
        // if both commit, the control plane picks the canonical id and the nodes converge.
        if let Some(id) = self.engine.identities().lookup(&labels)
            && !self.view.is_gossip_only(id.0)
        {
            return Ok(());
        }
        let strings = labels.to_strings();
        let asked = match link.allocate_quickly(&strings) {
            Ok(id) => return self.bind_allocated(&spec.name, id.id, labels, strings),
            Err(e) => e,
        };
        let Some((id, left)) = self.view.bind_from_block(&mut self.engine, labels.clone()) else {
            // No block yet (the lease follows registration) or it is used up: wait for the
            // control plane with the ordinary timeout, as before blocks existed.
            let id = link.allocate(&strings).map_err(|e| {
                (
                    CODE_TRY_AGAIN,
                    format!(
                        "endpoint `{}`: its labels are new, the control plane could not allocate their identity ({e}; within {} ms: {asked}) and this node holds no free id of a leased block",
                        spec.name,
                        super::control_plane::ALLOCATE_BUDGET.as_millis()
                    ),
                )
            })?;
            return self.bind_allocated(&spec.name, id.id, labels, strings);
        };
        let Some(link) = &self.link else {
            return Ok(());
        };
        eprintln!(
            "palisade agent: endpoint `{}`: identity {id} from this node's block ({asked}); committing it when the control plane answers",
            spec.name
        );
        link.publish(Publish::Bind {
            id,
            labels: strings,
        });
        if left < super::control_plane::ID_BLOCK / 4 {
            link.publish(Publish::Lease { replace: true });
        }
        Ok(())
    }

    /// Binds an identity the control plane allocated for a local endpoint's label set.
    fn bind_allocated(
        &mut self,
        endpoint: &str,
        id: u32,
        labels: palisade_policy::labels::LabelSet,
        strings: Vec<String>,
    ) -> Result<(), (u32, String)> {
        self.engine
            .bind_identity(palisade_policy::identity::Identity(id), labels)
            .map_err(|e| {
                (
                    CODE_TRY_AGAIN,
                    format!("endpoint `{endpoint}`: {}", chain(&e)),
                )
            })?;
        // The control plane's answer is the set's identity here too (a gossiped id of the same
        // set stays bound as an alias).
        self.engine
            .set_canonical_identity(palisade_policy::identity::Identity(id));
        self.view.note_identity(id, strings);
        Ok(())
    }

    /// Applies one update from the control plane and acknowledges what is then enforced.
    fn on_update(&mut self, u: Update) {
        let node = self.config.node.clone();
        let result = match u {
            Update::Unreachable(e) => {
                if self.cp.connected || self.cp.last_error.is_none() {
                    eprintln!(
                        "palisade agent: control plane: {e} (enforcing the last-known-good state)"
                    );
                }
                self.cp.connected = false;
                self.cp.last_error = Some(e);
                metrics::gauge("palisade_agent_control_plane_connected", 0.0);
                return;
            }
            Update::IdBlock(block) => {
                if self.view.id_block() != Some(block) {
                    eprintln!(
                        "palisade agent: leased identities {}..{} for new label sets",
                        block.first,
                        block.first.saturating_add(block.count)
                    );
                    self.view.set_id_block(block);
                    self.save_view();
                }
                return;
            }
            Update::Bound { id, canonical } => {
                if self.view.confirm(&mut self.engine, id, &canonical) {
                    eprintln!(
                        "palisade agent: identity {id} is an alias of {} (the label set got that id elsewhere first); moving endpoints",
                        canonical.id
                    );
                    self.converge(id);
                }
                self.save_view();
                return;
            }
            Update::BindRefused { id, labels, reason } => {
                eprintln!(
                    "palisade agent: the control plane refused identity {id} from this node's block: {reason}; allocating the labels instead"
                );
                self.view.refuse(id);
                match self.link.as_ref().map(|l| l.allocate(&labels)) {
                    Some(Ok(canonical)) => {
                        self.view.confirm(&mut self.engine, id, &canonical);
                        self.converge(id);
                    }
                    Some(Err(e)) => {
                        eprintln!("palisade agent: allocating identity for {labels:?}: {e}")
                    }
                    None => {}
                }
                self.save_view();
                return;
            }
            Update::Registered(rec) => {
                if self.view.id_block().is_none()
                    && let Some(link) = &self.link
                {
                    link.publish(Publish::Lease { replace: false });
                }
                if rec.pod_cidr != self.config.pod_cidr {
                    eprintln!(
                        "palisade agent: the control plane keeps pod CIDR {} for node `{node}`, this agent runs with {}: pods here will not be routed",
                        rec.pod_cidr, self.config.pod_cidr
                    );
                }
                self.cp.registered = Some(rec);
                self.mark_connected();
                return;
            }
            Update::Snapshot(snap) => {
                let r = self
                    .view
                    .apply_snapshot(&snap, &node, &mut self.engine, &mut self.dp);
                if r.is_ok()
                    && let Some(link) = &self.link
                {
                    // The control plane's record of this node's endpoints follows the registry:
                    // publish every local one (idempotent), withdraw what is no longer here.
                    let local: BTreeSet<IpAddr> = self
                        .registry
                        .iter()
                        .flat_map(|e| e.spec.ips.clone())
                        .collect();
                    for e in snap.endpoints.iter().filter(|e| e.node == node) {
                        if !local.contains(&e.ip) {
                            link.publish(Publish::EndpointGone(e.ip));
                        }
                    }
                    for e in self.registry.iter() {
                        for ip in &e.spec.ips {
                            link.publish(Publish::Endpoint(CpEndpoint {
                                ip: *ip,
                                identity: e.identity,
                                node: node.clone(),
                                ports: e.spec.ports.clone(),
                            }));
                        }
                    }
                }
                r
            }
            Update::Changes(batch) => {
                let caught_up = batch
                    .changes
                    .last()
                    .is_none_or(|c| c.revision >= batch.revision);
                let rev = match batch.changes.last() {
                    Some(c) if !caught_up => c.policy_revision,
                    _ => batch.policy_revision,
                };
                self.view
                    .apply_changes(&batch.changes, rev, &node, &mut self.engine, &mut self.dp)
            }
        };
        self.mark_connected();
        match result {
            Ok(applied) => self.enforce_update(applied),
            Err(e) => {
                let msg = chain(&e);
                eprintln!("palisade agent: control-plane update not applied: {msg}");
                self.cp.update_error = Some(msg);
                metrics::counter("palisade_agent_updates_total", "rejected");
            }
        }
    }

    fn mark_connected(&mut self) {
        if !self.cp.connected && self.cp.last_error.is_some() {
            eprintln!("palisade agent: control plane reachable again");
        }
        self.cp.connected = true;
        self.cp.last_error = None;
        metrics::gauge("palisade_agent_control_plane_connected", 1.0);
    }

    /// Programs the maps after an applied update, saves the view, acknowledges.
    fn enforce_update(&mut self, applied: Applied) {
        let relabelled = self.view.take_changed_namespaces();
        if !relabelled.is_empty() {
            self.relabel_namespaces(&relabelled);
        }
        let pods = self.view.take_changed_pods();
        if !pods.is_empty() {
            self.relabel_pods(&pods);
        }
        if applied.engine_changed()
            && let Err(e) = self.resync()
        {
            // Not acknowledged: `policy wait` keeps waiting for this node, as it should.
            let msg = chain(&e);
            eprintln!("palisade agent: programming control-plane policy: {msg}");
            self.cp.update_error = Some(msg);
            return;
        }
        self.cp.update_error = None;
        self.refresh_peers();
        // Remote endpoints can change without the engine changing: the proxy's peers (and the
        // redirect sets built from them) follow every update.
        self.refresh_proxy();
        if let Err(e) = self.view.save(&self.config.state_dir) {
            eprintln!("palisade agent: saving the control-plane view: {e}");
        }
        if !applied.policy_changed_at_ms.is_empty() {
            metrics::propagated(&applied.policy_changed_at_ms);
            let latest = applied
                .policy_changed_at_ms
                .iter()
                .max()
                .copied()
                .unwrap_or(0);
            self.cp.last_propagation_ms = Some(metrics::now_ms().saturating_sub(latest));
        }
        metrics::counter("palisade_agent_updates_total", "applied");
        self.update_gauges();
        if let Some(link) = &self.link {
            link.publish(Publish::Ack(self.view.policy_revision));
        }
    }

    /// Moves the local endpoints of identity `from` (an alias, or a binding the control plane
    /// refused) to what their label set resolves to now, the canonical id: re-added to the
    /// engine, maps and ipcache rewritten, the new identity published. Both ids match the same
    /// selectors, so policy has no gap while this happens.
    fn converge(&mut self, from: u32) {
        let moving: Vec<RegisteredEndpoint> = self
            .registry
            .iter()
            .filter(|e| e.identity == from)
            .cloned()
            .collect();
        self.move_endpoints(moving, &format!("off identity {from}"));
    }

    /// A namespace's labels changed (or it was created or deleted): its local endpoints whose
    /// label set is no longer their identity's move to the identity of their new set, as
    /// Kubernetes pods get a new Cilium identity when their namespace is relabelled. Policy
    /// selecting the old labels stops applying to them, policy selecting the new ones starts.
    fn relabel_namespaces(&mut self, namespaces: &BTreeSet<String>) {
        let moving: Vec<RegisteredEndpoint> = self
            .registry
            .iter()
            .filter(|e| namespaces.contains(&e.spec.pod_namespace))
            .filter(|e| {
                let spec = self
                    .engine
                    .endpoints()
                    .get(e.name().as_str())
                    .map(|x| &x.spec);
                spec.is_some_and(|spec| {
                    let want = self.engine.endpoint_labels(spec);
                    self.engine
                        .labels(palisade_policy::identity::Identity(e.identity))
                        .is_none_or(|have| *have != want)
                })
            })
            .cloned()
            .collect();
        if moving.is_empty() {
            return;
        }
        eprintln!(
            "palisade agent: namespace labels changed ({}): moving {} endpoint(s) to their new identities",
            namespaces.iter().cloned().collect::<Vec<_>>().join(", "),
            moving.len()
        );
        self.move_endpoints(moving, "to its namespace's new labels");
    }

    /// Pod records changed: the local endpoints that follow them (registered without labels from
    /// the runtime) take the records' labels, service account and named ports, and those whose
    /// set changed move to its identity — as a Kubernetes pod gets a new Cilium identity when it
    /// is relabelled. A deleted record changes nothing (the endpoint keeps its labels until its
    /// CNI DEL).
    fn relabel_pods(&mut self, pods: &BTreeSet<(String, String)>) {
        let moving: Vec<RegisteredEndpoint> = self
            .registry
            .iter()
            .filter(|e| e.spec.from_pod_record)
            .filter(|e| pods.contains(&(e.spec.pod_namespace.clone(), e.spec.pod_name.clone())))
            .filter_map(|e| {
                let pod = self.view.pod(&e.spec.pod_namespace, &e.spec.pod_name)?;
                let mut moved = e.clone();
                take_pod_record(&mut moved.spec, &pod);
                (moved.spec != e.spec).then_some(moved)
            })
            .collect();
        if moving.is_empty() {
            return;
        }
        eprintln!(
            "palisade agent: Pod records changed: moving {} endpoint(s) to their new labels' identities",
            moving.len()
        );
        self.move_endpoints(moving, "to its Pod record's new labels");
    }

    /// Re-adds endpoints so that they take the identity their label set resolves to now.
    fn move_endpoints(&mut self, moving: Vec<RegisteredEndpoint>, why: &str) {
        let mut moved = Vec::new();
        for e in moving {
            let name = e.name();
            self.engine.remove_endpoint(&name);
            match self.register(e.spec.clone()) {
                Ok(r) => moved.push(r),
                Err((_, msg)) => {
                    eprintln!("palisade agent: moving endpoint `{name}` {why}: {msg}")
                }
            }
        }
        // One map sync for all of them; then, as for a new endpoint, policy is in place before
        // the endpoint entries name the new identity.
        if let Err(err) = self.resync() {
            eprintln!("palisade agent: moving endpoints {why}: {}", chain(&err));
        }
        for r in moved {
            let name = r.endpoint.name();
            if let Err((_, msg)) = self.enforce(&r) {
                eprintln!("palisade agent: moving endpoint `{name}`: {msg}");
            }
            if let Some(link) = &self.link {
                link.publish(Publish::Endpoint(CpEndpoint {
                    ip: r.ip,
                    identity: r.endpoint.identity,
                    node: self.config.node.clone(),
                    ports: r.endpoint.spec.ports.clone(),
                }));
            }
        }
        self.update_gauges();
    }

    fn save_view(&self) {
        if let Err(e) = self.view.save(&self.config.state_dir) {
            eprintln!("palisade agent: saving the control-plane view: {e}");
        }
    }

    /// Tunnel peers and routes follow the node records in the view (so do gossip's seeds).
    fn refresh_peers(&mut self) {
        self.seed_gossip();
        if let Some(enc) = &mut self.encryption
            && let Err(e) = enc.set_nodes(self.view.nodes(), &self.config.node)
        {
            eprintln!("palisade agent: wireguard peers: {}", chain(&e));
        }
    }

    /// Scheduled rotation and grace-period expiry; a new key is published at once.
    fn tick_encryption(&mut self) {
        let Some(enc) = &mut self.encryption else {
            return;
        };
        match enc.tick() {
            Ok(Some((key, epoch))) => {
                if let Some(link) = &self.link {
                    link.set_wireguard_key(key, epoch);
                }
                self.publish_gossip();
            }
            Ok(None) => {}
            Err(e) => eprintln!("palisade agent: wireguard: {}", chain(&e)),
        }
    }

    /// `palisade encrypt rotate`: a new key now, published at once.
    fn rotate_key(&mut self) -> Result<(), (u32, String)> {
        let Some(enc) = &mut self.encryption else {
            return Err((
                CODE_INVALID,
                "encryption is not enabled on this node (agent started without --encryption wireguard)".into(),
            ));
        };
        let (key, epoch) = enc.rotate().map_err(|e| (CODE_DATAPATH, chain(&e)))?;
        if let Some(link) = &self.link {
            link.set_wireguard_key(key, epoch);
        }
        self.publish_gossip();
        Ok(())
    }

    /// Starts the flow reader and, with `hubble_listen`, the observer.
    fn start_flows(&mut self) -> Result<(), AgentError> {
        let (events, verdicts) = self.dp.take_flow_maps()?;
        let ring = FlowRing::new(self.config.flow_ring_size);
        flows::spawn_reader(
            events,
            verdicts,
            Arc::clone(&ring),
            Arc::clone(&self.enrichment),
        )
        .map_err(io("start the flow reader for", &self.config.state_dir))?;
        if let Some(proxy) = &self.proxy {
            // The proxy's HTTP records join the datapath's flows (Hubble's L7 flows).
            proxy
                .flows()
                .set_sink(l7_sink(&ring, &self.enrichment, flows::l7_flow));
        }
        if let Some(dns) = &self.dns {
            // So do the DNS proxy's queries (Hubble's `l7.dns` flows).
            dns.flows()
                .set_sink(l7_sink(&ring, &self.enrichment, flows::dns_flow));
        }
        if let Some(addr) = self.config.hubble_listen {
            let service = AgentObserver::new(ring, self.config.node.clone(), addr.to_string());
            observer::serve(addr, self.config.hubble_tls_dir.as_deref(), service)
                .map_err(AgentError::ControlPlane)?;
        }
        Ok(())
    }

    fn encryption_status(&self) -> serde_json::Value {
        let mut s = match &self.encryption {
            Some(enc) => enc.status(),
            None => serde_json::json!({"enabled": false, "type": "disabled"}),
        };
        s["node"] = serde_json::Value::String(self.config.node.clone());
        s
    }

    /// Rebuilds the flow reader's snapshot of endpoints, identities and policy rules.
    fn publish_enrichment(&self) {
        let mut e = Enrichment {
            node: self.config.node.clone(),
            ..Enrichment::default()
        };
        let prev = Arc::clone(&self.enrichment.read().unwrap_or_else(|p| p.into_inner()));
        // Flows report the revision `agent status` shows: the control plane's policy revision
        // this node enforces, or the engine's own for policies from `--policy-dir`. The rule
        // table is rebuilt only when either moved (endpoint churn reuses it).
        let engine_revision = self.engine.revision();
        let revision = if self.config.control_plane.is_some() {
            self.view.policy_revision
        } else {
            engine_revision
        };
        e.policies = if prev.policies.is_current(engine_revision, revision) {
            Arc::clone(&prev.policies)
        } else {
            let uids = self.view.policy_uids();
            Arc::new(PolicyNames::build(
                engine_revision,
                revision,
                self.engine.rule_origins(),
                |k| uids.get(k).cloned(),
            ))
        };
        let ids = self.engine.identities();
        for (id, labels) in ids.iter() {
            let labels = Enrichment::share_labels(&prev, id.0, labels.to_strings());
            e.identities.insert(id.0, labels);
        }
        let mut locals = Vec::new();
        for r in self.registry.iter() {
            let Some(ip) = r.spec.ips.first() else {
                continue;
            };
            let ifindex = nix::net::if_::if_nametoindex(r.spec.host_iface.as_str()).unwrap_or(0);
            // The identity's list, filled above: one copy per identity, not per endpoint.
            let labels = e
                .identities
                .get(&r.identity)
                .cloned()
                .unwrap_or_else(|| Arc::from(Vec::new()));
            // The policy engine's string for the name, not a copy per endpoint and snapshot.
            let name = self.endpoint_name(r);
            let iface = match prev.iface(ifindex) {
                Some(name) if **name == *r.spec.host_iface => Arc::clone(name),
                _ => Arc::from(r.spec.host_iface.as_str()),
            };
            locals.push(LocalEndpoint {
                ifindex,
                iface,
                ip: *ip,
                meta: EndpointMeta {
                    endpoint_id: r.endpoint_id,
                    identity: r.identity,
                    name,
                    labels,
                },
            });
        }
        e.set_locals(locals);
        *self.enrichment.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(e);
    }

    /// What this node gossips: its record, its endpoints, the identities they use and the
    /// bindings from its block not yet committed.
    fn publish_gossip(&self) {
        let (Some(g), Some(cp)) = (&self.gossip, &self.config.control_plane) else {
            return;
        };
        let (wireguard_key, wireguard_epoch) = match &self.encryption {
            Some(enc) => enc.published_key(),
            None => (cp.wireguard_public_key.clone(), cp.wireguard_epoch),
        };
        let mut own = NodeGossip {
            node: Some(NodeInfo {
                address: cp.node_address,
                pod_cidr: self.config.pod_cidr,
                wireguard_key,
                wireguard_epoch,
            }),
            ..NodeGossip::default()
        };
        for e in self.registry.iter() {
            for ip in &e.spec.ips {
                own.endpoints.insert(*ip, e.identity);
            }
            if let Some(l) = self
                .engine
                .labels(palisade_policy::identity::Identity(e.identity))
            {
                own.identities.insert(e.identity, l.to_strings());
            }
        }
        for (id, labels) in self.view.pending_bindings() {
            own.identities.insert(id, labels.clone());
        }
        g.publish(&own);
    }

    /// Nodes the control plane lists are contacted by gossip until met (seeds beyond the
    /// configured ones).
    fn seed_gossip(&self) {
        if let Some(g) = &self.gossip {
            let me = &self.config.node;
            g.add_seeds(
                self.view
                    .nodes()
                    .filter(|n| &n.name != me)
                    .map(|n| std::net::SocketAddr::new(n.address, g.port())),
            );
        }
    }

    /// Merges the peers' gossip into the view and programs what changed.
    fn merge_gossip(&mut self) {
        let Some(g) = &self.gossip else {
            return;
        };
        let gv = g.view();
        let node = self.config.node.clone();
        // A member is taken as node N only from the underlay address the control plane
        // registered for N (a key holder elsewhere cannot stand in for N); the others' state is
        // not merged, and counted.
        let registered: BTreeMap<&str, IpAddr> = self
            .view
            .nodes()
            .map(|n| (n.name.as_str(), n.address))
            .collect();
        let (trusted, impostors): (Vec<_>, Vec<_>) = gv
            .peers
            .iter()
            .partition(|(n, p)| registered.get(n.as_str()) == Some(&p.address.ip()));
        self.gossip_impostors = impostors.len();
        let trusted: Vec<(&str, &super::gossip::NodeGossip)> = trusted
            .iter()
            .map(|(n, p)| (n.as_str(), &p.state))
            .collect();
        let peers = trusted.iter().copied();
        match self
            .view
            .merge_gossip(peers, &node, &mut self.engine, &mut self.dp)
        {
            Ok(a) => {
                self.gossip_refused = (a.refused_endpoints, a.refused_identities);
                if a.identities == 0 && a.ipcache == 0 {
                    return;
                }
                // Gossiped pods change the addresses `ipBlock` rules expand over.
                if (a.identities > 0 || a.ipcache > 0)
                    && let Err(e) = self.resync()
                {
                    eprintln!(
                        "palisade agent: programming gossiped identities: {}",
                        chain(&e)
                    );
                }
                self.refresh_proxy();
                self.save_view();
                self.update_gauges();
            }
            Err(e) => eprintln!("palisade agent: merging gossip: {}", chain(&e)),
        }
    }

    fn update_gauges(&self) {
        self.publish_gossip();
        self.publish_enrichment();
        let (identities, remote, _) = self.view.counts();
        metrics::gauge(
            "palisade_agent_policy_revision",
            self.view.policy_revision as f64,
        );
        metrics::gauge(
            "palisade_agent_endpoints",
            self.registry.iter().count() as f64,
        );
        metrics::gauge("palisade_agent_identities", identities as f64);
        metrics::gauge("palisade_agent_remote_endpoints", remote as f64);
        metrics::gauge("palisade_agent_policy_entries", self.last_sync.total as f64);
    }

    /// Writes a registered endpoint's ipcache and endpoint entries and attaches its programs.
    fn enforce(&mut self, r: &Registered) -> Result<(), (u32, String)> {
        let e = &r.endpoint;
        // With a proxy, redirected traffic must come from it (see FLAG_L7_PROXY).
        let flags = FLAG_ALLOW_LOCALHOST
            | if self.proxy.is_some() {
                FLAG_L7_PROXY
            } else {
                0
            };
        let info = endpoint_info(e.endpoint_id, e.identity, r.ip, flags);
        let dp_err = |err: DatapathError| {
            (
                CODE_DATAPATH,
                format!("endpoint `{}`: {}", e.name(), chain(&err)),
            )
        };
        self.dp
            .upsert_ipcache(r.ip, if r.ip.is_ipv4() { 32 } else { 128 }, e.identity)
            .map_err(dp_err)?;
        self.dp.upsert_endpoint(r.ifindex, info).map_err(dp_err)?;
        self.dp
            .attach_enforcement(&e.spec.host_iface)
            .map_err(dp_err)
    }

    fn del_endpoint(&mut self, container: &str, ifname: &str) -> Result<(), (u32, String)> {
        let Some(e) = self
            .registry
            .remove(container, ifname)
            .map_err(|e| (CODE_TRY_AGAIN, format!("saving the endpoint registry: {e}")))?
        else {
            return Ok(());
        };
        let dp_err = |err: DatapathError| {
            (
                CODE_DATAPATH,
                format!("endpoint `{}`: {}", e.name(), chain(&err)),
            )
        };
        self.engine.remove_endpoint(&e.name());
        if let Ok(ifindex) = nix::net::if_::if_nametoindex(e.spec.host_iface.as_str()) {
            self.dp.remove_endpoint(ifindex).map_err(dp_err)?;
        }
        self.dp
            .detach_enforcement(&e.spec.host_iface)
            .map_err(dp_err)?;
        for ip in &e.spec.ips {
            self.dp
                .remove_ipcache(*ip, if ip.is_ipv4() { 32 } else { 128 })
                .map_err(dp_err)?;
            if let Some(link) = &self.link {
                link.publish(Publish::EndpointGone(*ip));
            }
        }
        self.resync().map_err(dp_err)
    }

    /// Programs what the engine changed since the last sync (everything after a failed one).
    fn resync(&mut self) -> Result<(), DatapathError> {
        // Policy prefixes first: their identities are part of what the endpoints compile to.
        match self.engine.sync_cidr_identities() {
            Ok(want) => {
                let want = want.clone();
                self.cidr_ipcache
                    .sync(&mut self.dp, &want, self.engine.fqdn_ips())?;
            }
            // Only when the node-local id space is exhausted; addresses stay `world`.
            Err(e) => eprintln!("palisade agent: CIDR identities: {e}"),
        }
        let changed = self.engine.take_changed();
        let r = if self.sync_all {
            self.sync.sync(&mut self.dp, &self.engine, &self.registry)
        } else {
            self.sync
                .sync_changed(&mut self.dp, &self.engine, &self.registry, &changed)
        };
        match r {
            Ok(stats) => {
                self.last_sync = stats;
                self.sync_all = false;
                self.refresh_proxy();
                Ok(())
            }
            Err(e) => {
                // What the maps hold is no longer known: read them back and diff every endpoint
                // next time, so nothing stale survives a partial write.
                self.sync = MapSync::default();
                let _ = self.sync.adopt(&self.dp);
                self.sync_all = true;
                Err(e)
            }
        }
    }

    /// Publishes the node's endpoints, addresses and compiled policy to the L7 proxy, which
    /// brings its redirects in line. Runs after every sync (the maps and the proxy agree).
    fn refresh_proxy(&mut self) {
        if self.proxy.is_none() && self.dns.is_none() {
            return;
        }
        // One view, shared by both proxies.
        let v = Arc::new(self.proxy_view());
        if let Some(dns) = &mut self.dns
            && let Err(e) = dns.update(Arc::clone(&v))
        {
            eprintln!("palisade agent: dns proxy redirects: {}", chain(&e));
        }
        if let Some(proxy) = &mut self.proxy
            && let Err(e) = proxy.update(v)
        {
            eprintln!("palisade agent: l7 proxy redirects: {}", chain(&e));
        }
    }

    /// The policy engine's name (`<namespace>/<pod>`) of a registered endpoint, shared with the
    /// engine: the snapshots rebuilt on every endpoint change (flow enrichment, proxy view)
    /// hold this one string rather than a copy each.
    fn endpoint_name(&self, e: &RegisteredEndpoint) -> Arc<str> {
        let name = e.name();
        match self.engine.endpoints().get_key_value(name.as_str()) {
            Some((k, _)) => Arc::clone(k),
            None => name.into(),
        }
    }

    /// The node's endpoints with L7 rules, and every address the agent knows, for the proxies.
    fn proxy_view(&self) -> ProxyView {
        let mut v = ProxyView::default();
        // Later entries win: a local endpoint over a remote record of the same address.
        let mut peers = Vec::new();
        for (ip, id) in self.view.remote_endpoints() {
            let info = PeerInfo {
                identity: id,
                name: None,
            };
            peers.push((ip, info));
        }
        for ip in &self.config.node_ips {
            let info = PeerInfo {
                identity: IDENTITY_HOST,
                name: None,
            };
            peers.push((IpAddr::V4(*ip), info));
        }
        for e in self.registry.iter() {
            // The policy engine's string for the name, not a copy per endpoint and snapshot.
            let name = self.endpoint_name(e);
            // Only endpoints with L7 rules: the others' traffic never reaches the proxy. The
            // engine's state is shared as it is (it is never changed in place), not copied.
            let policy = self
                .engine
                .shared_map_state(&name)
                .filter(|m| !m.l7.is_empty())
                .cloned();
            for ip in &e.spec.ips {
                let info = PeerInfo {
                    identity: e.identity,
                    name: Some(name.clone()),
                };
                peers.push((*ip, info));
                if let Some(p) = &policy {
                    v.locals.insert(
                        *ip,
                        Local {
                            iface: e.spec.host_iface.clone(),
                            policy: p.clone(),
                        },
                    );
                }
            }
        }
        v.peers = peers.into();
        v
    }

    /// Records the answers the DNS proxy is waiting on, forgets expired addresses, programs
    /// the difference (engine, policy maps, ipcache) and only then lets the answers go.
    fn tick_dns(&mut self) {
        let Some(dns) = &mut self.dns else {
            return;
        };
        let now = Instant::now();
        let done = dns.take_requests(now);
        let expired = dns.expire(now);
        if !done.is_empty() || expired {
            self.program_fqdn();
        }
        if let Some(dns) = &mut self.dns {
            // Saved before the answers go out: a pod never uses an address a restarted agent
            // would not know.
            let programmed = &self.fqdn_programmed;
            dns.save_if_due(now, |ip| programmed.get(&ip).map(|(_, id)| *id));
            // Every pass: holding starts when a TTL runs out, with nothing else changing.
            metrics::gauge(
                "palisade_agent_dns_fqdn_held",
                dns.cache().held(now).len() as f64,
            );
        }
        for d in done {
            let _ = d.send(());
        }
    }

    /// Puts what the previous run's DNS proxy saved back into the cache and the engine, each
    /// address with its old identity where it can have it. Returns the addresses whose
    /// identity was kept (their ipcache entries stay).
    fn restore_fqdn(&mut self) -> BTreeMap<IpAddr, u32> {
        let Some(dns) = &mut self.dns else {
            return BTreeMap::new();
        };
        let entries = dns.restore(&self.config.state_dir);
        if entries.is_empty() {
            return BTreeMap::new();
        }
        let mut names: BTreeMap<IpAddr, (BTreeSet<String>, Option<u32>)> = BTreeMap::new();
        for e in &entries {
            let n = names.entry(e.ip).or_default();
            n.0.insert(e.name.clone());
            n.1 = n.1.or(e.identity);
        }
        let mut kept = BTreeMap::new();
        for (ip, (ns, id)) in names {
            let r = match id {
                Some(id) => {
                    self.engine
                        .restore_fqdn_names(ip, &ns, palisade_policy::identity::Identity(id))
                }
                None => self.engine.set_fqdn_names(ip, &ns),
            };
            match r {
                Ok(Some(got)) if Some(got.0) == id => {
                    kept.insert(ip, got.0);
                }
                Ok(_) => {}
                Err(e) => eprintln!("palisade agent: dns: restoring {ip}: {e}"),
            }
        }
        eprintln!(
            "palisade agent: dns: restored {} learned address(es), {} with their identity",
            entries.len(),
            kept.len()
        );
        kept
    }

    /// Brings identities, policy entries and ipcache entries of learned addresses in line with
    /// the DNS proxy's cache. Order: policy entries for an address's new identity are written
    /// before its ipcache entry points at it; a departing address leaves the ipcache first.
    /// Addresses of pods and of this node keep their own identities (never relabelled by DNS).
    fn program_fqdn(&mut self) {
        let Some(dns) = &self.dns else {
            return;
        };
        let mut known: BTreeSet<IpAddr> = self.view.remote_endpoints().map(|(ip, _)| ip).collect();
        known.extend(
            self.registry
                .iter()
                .flat_map(|e| e.spec.ips.iter().copied()),
        );
        known.extend(self.config.node_ips.iter().map(|ip| IpAddr::V4(*ip)));
        let mut want = dns.cache().by_ip();
        want.retain(|ip, _| !known.contains(ip));
        // Restored addresses are in the engine before they are programmed: they go the same
        // way when unwanted (e.g. the address became a pod's).
        let gone: BTreeSet<IpAddr> = self
            .fqdn_programmed
            .keys()
            .chain(self.engine.fqdn_ips().keys())
            .filter(|ip| !want.contains_key(ip))
            .copied()
            .collect();
        for ip in &gone {
            if self.fqdn_programmed.contains_key(ip)
                && let Err(e) = self.dp.remove_ipcache(*ip, host_prefix(*ip))
            {
                eprintln!("palisade agent: dns: removing {ip} from the ipcache: {e}");
            }
            let _ = self.engine.set_fqdn_names(*ip, &BTreeSet::new());
            self.fqdn_programmed.remove(ip);
        }
        let mut write = Vec::new();
        for (ip, names) in want {
            if self
                .fqdn_programmed
                .get(&ip)
                .is_some_and(|(n, _)| *n == names)
            {
                continue;
            }
            match self.engine.set_fqdn_names(ip, &names) {
                Ok(Some(id)) => write.push((ip, names, id.0)),
                Ok(None) => {}
                Err(e) => eprintln!("palisade agent: dns: identity for {ip}: {e}"),
            }
        }
        if !gone.is_empty() || !write.is_empty() {
            if let Err(e) = self.resync() {
                eprintln!("palisade agent: dns: policy sync: {e}");
            }
            for (ip, names, id) in write {
                match self.dp.upsert_ipcache(ip, host_prefix(ip), id) {
                    Ok(()) => {
                        self.fqdn_programmed.insert(ip, (names, id));
                    }
                    Err(e) => eprintln!("palisade agent: dns: ipcache {ip}: {e}"),
                }
            }
        }
        metrics::gauge(
            "palisade_agent_dns_fqdn_addresses",
            self.fqdn_programmed.len() as f64,
        );
        if let Some(dns) = &self.dns {
            let programmed = &self.fqdn_programmed;
            dns.publish_programmed(|name, ip| {
                known.contains(&ip) || programmed.get(&ip).is_some_and(|(n, _)| n.contains(name))
            });
        }
    }

    /// Re-reads the policy directory when its files changed and programs the result.
    fn poll_policies(&mut self) {
        if !self.load_policies() {
            return;
        }
        match self.resync() {
            Ok(()) => {
                // Flows name the new rules from here on.
                self.publish_enrichment();
                eprintln!(
                    "palisade agent: {} policies applied (revision {}): {} entries written, {} removed",
                    self.policies.len(),
                    self.engine.revision(),
                    self.last_sync.written,
                    self.last_sync.removed
                )
            }
            Err(e) => eprintln!("palisade agent: programming policy: {}", chain(&e)),
        }
    }

    /// Loads the policy directory into the engine when it changed; true when the engine changed.
    /// A directory with any invalid file is not applied at all (the previous policies stay in
    /// force) and the error is reported.
    fn load_policies(&mut self) -> bool {
        let Some(dir) = self.config.policy_dir.clone() else {
            return false;
        };
        let files = policy_files(&dir);
        let fingerprint: Vec<(PathBuf, u64, u128)> = files
            .iter()
            .filter_map(|f| {
                let m = fs::metadata(f).ok()?;
                let t = m
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_nanos();
                Some((f.clone(), m.len(), t))
            })
            .collect();
        if fingerprint == self.policy_fingerprint {
            return false;
        }
        self.policy_fingerprint = fingerprint;
        let mut loaded: BTreeMap<ResourceKey, NormalizedPolicy> = BTreeMap::new();
        for f in &files {
            let name = f.display().to_string();
            let parsed = fs::read_to_string(f)
                .map_err(|e| format!("cannot read `{name}`: {e}"))
                .and_then(|text| {
                    palisade_policy::load::load_file(&name, &text).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(ps) => loaded.extend(ps.into_iter().map(|p| (p.key.clone(), p))),
                Err(e) => {
                    eprintln!("palisade agent: policy not applied: {e}");
                    self.policy_error = Some(e);
                    return false;
                }
            }
        }
        self.policy_error = None;
        let gone: Vec<ResourceKey> = self
            .policies
            .iter()
            .filter(|k| !loaded.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.engine.replace_policy(&k, None);
        }
        self.policies = loaded.keys().cloned().collect();
        for (k, p) in loaded {
            self.engine.replace_policy(&k, Some(p));
        }
        true
    }

    fn status(&self) -> serde_json::Value {
        let endpoints: Vec<serde_json::Value> = self
            .registry
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name(),
                    "containerId": e.spec.container_id,
                    "endpointId": e.endpoint_id,
                    "identity": e.identity,
                    "ips": e.spec.ips,
                    "hostIface": e.spec.host_iface,
                    "labels": e.spec.labels,
                })
            })
            .collect();
        let verdicts: BTreeMap<String, u64> = self
            .dp
            .verdict_counts()
            .unwrap_or_default()
            .into_iter()
            .map(|((reason, dir), n)| {
                let d = if dir == 0 { "egress" } else { "ingress" };
                (
                    format!(
                        "{}/{d}",
                        palisade_datapath_common::verdict::reason_name(reason)
                    ),
                    n,
                )
            })
            .collect();
        serde_json::json!({
            "node": self.config.node,
            "podCidr": self.config.pod_cidr.to_string(),
            "addressesInUse": self.ipam.in_use(),
            "endpoints": endpoints,
            "policies": self.policies.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            "policyRevision": self.engine.revision(),
            "policyError": self.policy_error,
            "policyEntries": self.last_sync.total,
            // Ipcache prefix entries for the CIDRs policies name.
            "cidrPrefixes": self.cidr_ipcache.len(),
            "policyEntriesByEndpoint": self
                .sync
                .entries_by_endpoint()
                .into_iter()
                .map(|(id, (identity, pod_ip))| (id.to_string(), serde_json::json!({"identity": identity, "podAddress": pod_ip})))
                .collect::<serde_json::Map<_, _>>(),
            "verdicts": verdicts,
            "encryption": self.encryption_status(),
            "l7Proxy": self.proxy.as_ref().map(L7Proxy::status),
            "gossip": self.gossip_status(),
            "dnsProxy": self.dns.as_ref().map(|d| d.status(Instant::now())),
            "controlPlane": self.config.control_plane.as_ref().map(|cp| {
                let (identities, remote, policies) = self.view.counts();
                // How the change feed is followed: the members' gRPC stream, or the REST long poll.
                let feed = if cp.grpc.is_empty() {
                    serde_json::json!({"kind": "rest", "members": cp.client.servers})
                } else {
                    serde_json::json!({"kind": "grpc", "members": cp.grpc})
                };
                serde_json::json!({
                    "connected": self.cp.connected,
                    "feed": feed,
                    "lastError": self.cp.last_error,
                    "updateError": self.cp.update_error,
                    "podCidr": self.cp.registered.as_ref().map(|r| r.pod_cidr.to_string()),
                    "policyRevision": self.view.policy_revision,
                    "policies": self.view.policy_keys().collect::<Vec<_>>(),
                    "identities": identities,
                    "remoteEndpoints": remote,
                    "objects": policies,
                    "nodes": self.view.nodes().map(|n| n.name.clone()).collect::<Vec<_>>(),
                    "lastPropagationMs": self.cp.last_propagation_ms,
                    "idBlock": self.view.id_block(),
                    "pendingBindings": self.view.pending_bindings().map(|(id, _)| id).collect::<Vec<_>>(),
                })
            }),
        })
    }
}

impl Agent {
    /// Gossip's part of status: members and liveness, drops by reason, what is known only
    /// through gossip, and peers whose gossiped WireGuard epoch is ahead of the control plane's
    /// record (shown, never applied: see `docs/ARCHITECTURE.md`, gossip).
    fn gossip_status(&self) -> serde_json::Value {
        let Some(g) = &self.gossip else {
            return serde_json::json!({"enabled": false});
        };
        let mut s = g.status();
        let (ipcache, identities) = self.view.gossip_only();
        s["gossipOnlyEndpoints"] = ipcache.into();
        s["gossipOnlyIdentities"] = identities.into();
        s["refusedEndpoints"] = self.gossip_refused.0.into();
        s["refusedIdentities"] = self.gossip_refused.1.into();
        s["unmergedMembers"] = self.gossip_impostors.into();
        let records: BTreeMap<&str, u64> = self
            .view
            .nodes()
            .map(|n| (n.name.as_str(), n.wireguard_epoch))
            .collect();
        if let Some(members) = s["members"].as_array_mut() {
            for m in members {
                let cp = m["node"].as_str().and_then(|n| records.get(n)).copied();
                m["controlPlaneWireguardEpoch"] = cp.into();
                m["wireguardEpochAhead"] = match (m["wireguardEpoch"].as_u64(), cp) {
                    (Some(g), Some(c)) => (g > c).into(),
                    _ => false.into(),
                };
            }
        }
        s
    }
}

fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// What a Pod record sets of an endpoint: labels (less the reserved ones the agent sets),
/// service account and named ports.
fn take_pod_record(spec: &mut EndpointSpec, pod: &palisade_policy::pod::Pod) {
    spec.labels = Arc::new(pod.identity_labels());
    spec.service_account = Some(pod.service_account_or_default().to_owned());
    spec.ports = pod.ports.clone();
}

/// The host prefix length of an address (/32 or /128).
fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// An error and its causes on one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A proxy's flow sink: each record becomes one Hubble flow, enriched with the current names,
/// counted in Hubble's metrics and pushed to the agent's ring.
fn l7_sink<T: 'static>(
    ring: &Arc<FlowRing>,
    enrichment: &SharedEnrichment,
    to_flow: fn(&T, &Enrichment) -> palisade_api::flow::Flow,
) -> super::proxy::FlowSink<T> {
    let (ring, enrichment) = (Arc::clone(ring), Arc::clone(enrichment));
    Box::new(move |record| {
        let ctx = Arc::clone(&enrichment.read().unwrap_or_else(|p| p.into_inner()));
        let flow = to_flow(record, &ctx);
        flows::count_l7(&flow);
        ring.push_batch([flow]);
    })
}
