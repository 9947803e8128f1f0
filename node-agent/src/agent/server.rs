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
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use palisade_api::agent::{AgentRequest, AgentResponse, EndpointSpec};
use palisade_datapath_common::endpoint::{FLAG_ALLOW_LOCALHOST, IDENTITY_HOST};
use palisade_policy::engine::{EndpointSpec as EngineEndpoint, Engine, EngineConfig};
use palisade_policy::ir::{NormalizedPolicy, ResourceKey};

use super::config::AgentConfig;
use super::ipam::{Ipam, IpamError};
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

    let mut agent = Agent::start(config)?;
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
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, timeout);
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
    /// Policies currently applied (by object), and the fingerprint of the files they came from.
    policies: BTreeSet<ResourceKey>,
    policy_fingerprint: Vec<(PathBuf, u64, u128)>,
    last_sync: SyncStats,
    policy_error: Option<String>,
}

impl Agent {
    fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let dp = Datapath::load_with(&config.datapath)?;
        let ipam = Ipam::open(config.pod_cidr, &config.state_dir)?;
        let registry = Registry::open(&config.state_dir)
            .map_err(io("open the endpoint registry in", &config.state_dir))?;
        let mut agent = Agent {
            dp,
            // A pod re-created with the same labels keeps its identity (no policy churn).
            engine: Engine::new(EngineConfig {
                retain_unreferenced_identities: true,
                ..EngineConfig::default()
            }),
            ipam,
            registry,
            sync: MapSync::default(),
            policies: BTreeSet::new(),
            policy_fingerprint: Vec::new(),
            last_sync: SyncStats::default(),
            policy_error: None,
            config,
        };
        let adopted = agent.sync.adopt(&agent.dp)?;
        for ip in agent.config.node_ips.clone() {
            agent.dp.upsert_ipcache(IpAddr::V4(ip), 32, IDENTITY_HOST)?;
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
                Ok(()) => AgentResponse::Done,
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
        }
    }

    fn add_endpoint(&mut self, spec: EndpointSpec) -> Result<RegisteredEndpoint, (u32, String)> {
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
        Ok(r.endpoint)
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
        let name = format!("{}/{}", spec.pod_namespace, spec.pod_name);
        let identity = self
            .engine
            .add_endpoint(EngineEndpoint {
                name: name.clone(),
                namespace: spec.pod_namespace.clone(),
                labels: spec.labels.clone(),
                service_account: spec
                    .service_account
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                ip,
                node: self.config.node.clone(),
                ports: Vec::new(),
            })
            .map_err(|e| invalid(format!("endpoint `{name}`: {e}")))?;
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

    /// Writes a registered endpoint's ipcache and endpoint entries and attaches its programs.
    fn enforce(&mut self, r: &Registered) -> Result<(), (u32, String)> {
        let e = &r.endpoint;
        let info = endpoint_info(e.endpoint_id, e.identity, r.ip, FLAG_ALLOW_LOCALHOST);
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
        }
        self.resync().map_err(dp_err)
    }

    fn resync(&mut self) -> Result<(), DatapathError> {
        self.last_sync = self.sync.sync(&mut self.dp, &self.engine, &self.registry)?;
        Ok(())
    }

    /// Re-reads the policy directory when its files changed and programs the result.
    fn poll_policies(&mut self) {
        if !self.load_policies() {
            return;
        }
        match self.resync() {
            Ok(()) => eprintln!(
                "palisade agent: {} policies applied (revision {}): {} entries written, {} removed",
                self.policies.len(),
                self.engine.revision(),
                self.last_sync.written,
                self.last_sync.removed
            ),
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
            "policyEntriesByEndpoint": self
                .sync
                .entries_by_endpoint()
                .into_iter()
                .map(|(id, (identity, pod_ip))| (id.to_string(), serde_json::json!({"identity": identity, "podAddress": pod_ip})))
                .collect::<serde_json::Map<_, _>>(),
            "verdicts": verdicts,
        })
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

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
