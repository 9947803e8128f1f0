//! The agent's DNS proxy: enforces `toPorts[].rules.dns` of local endpoints' egress policy and
//! learns, from the answers it releases, the addresses `toFQDNs` rules allow.
//!
//! ```text
//!  run loop ──after every sync──▶ DnsProxy::update(ProxyView)
//!                                   │ swap the shared view
//!                                   └ redirects changed? ──▶ nft -f (table inet palisade_dns):
//!                                       iifname <lxc> ip saddr <pod> udp|tcp dport 53
//!                                       ip daddr {servers} → tproxy :<dns port>
//!
//!  pod ─query─▶ (pod's egress eBPF: redirect = allow) ─▶ node prerouting ─▶ proxy socket
//!    proxy thread (tokio, server.rs): name allowed? ── no ──▶ REFUSED
//!                                        │ yes: forwarded to the server the pod asked
//!                                        ▼
//!    answer's addresses ──Learner (channel + wake pipe)──▶ run loop: FqdnCache (TTL clamped,
//!      capped per name) ─▶ Engine::set_fqdn_names (identity cidr:<ip>/32 + fqdn:<name>…,
//!      toFQDNs selectors match it) ─▶ policy maps synced ─▶ ipcache <ip> → identity ─▶ done
//!    ◀── only then is the answer released to the pod: its first connection is allowed
//!  run loop, every pass: TTL ran out ─▶ conntrack (read on its own thread, ctread.rs; the
//!    loop goes on and settles when the result wakes it): open connections from endpoints that
//!    learned the address = its holders; due to leave (TTL + grace) ─▶ a holder still open
//!    with a packet within --dns-connection-idle? ── yes ─▶ kept
//!                                 └ no ─▶ ipcache entry and identity removed
//!  cache changed ─▶ <state-dir>/fqdn-cache.json (saved.rs), restored by the next agent before
//!    its first policy sync (new pairs saved before their answer is released)
//! ```
//! Addresses nobody resolved stay `world` in the ipcache, which a `toFQDNs` rule does not
//! allow: a connection to them is dropped by the datapath.

mod cache;
pub mod ctread;
mod decide;
mod flow;
pub mod saved;
mod server;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

pub use cache::{CacheLimits, FqdnCache};
pub use ctread::ReadFn;
pub use flow::{DnsFlow, DnsVerdict};

use crate::agent::proxy::redirect;
use crate::agent::proxy::view::{L7Kind, Redirect};
use crate::agent::proxy::{FlowLog, ProxyError, ProxyView};
use crate::datapath::CtFlow;
use ctread::{CtReader, Read};

/// Default port of the DNS proxy (also the engine's DNS proxy port).
pub const DEFAULT_PORT: u16 = 15053;
/// The nftables table the DNS proxy owns (beside the HTTP proxy's, which it never touches).
pub const TABLE: &str = "palisade_dns";

/// DNS proxy settings.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The port the proxy listens on, UDP and TCP (TPROXY target).
    pub port: u16,
    /// How long the upstream server has to answer (then SERVFAIL).
    pub upstream_timeout: Duration,
    /// TTL clamping, grace period and per-name cap of learned addresses.
    pub limits: CacheLimits,
    /// Query records kept in memory.
    pub flow_capacity: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            port: DEFAULT_PORT,
            upstream_timeout: Duration::from_secs(5),
            limits: CacheLimits {
                min_ttl: Duration::from_secs(1),
                max_ttl: Duration::from_secs(86_400),
                grace: Duration::from_secs(5),
                connection_idle: Duration::from_secs(60),
                max_ips_per_name: 50,
            },
            flow_capacity: 4096,
        }
    }
}

/// One address an answer gave a name, with its TTL (s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// Name (lowercase, trailing dot optional).
    pub name: String,
    /// Address.
    pub ip: IpAddr,
    /// TTL of the record.
    pub ttl: u32,
    /// The endpoint that asked.
    pub client: IpAddr,
}

/// A batch of learned addresses waiting for the run loop; `done` fires once the datapath
/// holds them.
#[derive(Debug)]
pub struct LearnRequest {
    /// What the answer gave.
    pub answers: Vec<Learned>,
    /// Answered by the run loop after programming.
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// The (name, address) pairs the datapath holds, with when each leaves: an answer whose pairs
/// are all there, well before leaving, is released without waiting for the run loop (the new
/// TTL is recorded asynchronously; the address is already allowed).
pub type Programmed = Arc<RwLock<HashMap<(String, IpAddr), Instant>>>;

/// The proxy's side of the channel to the run loop.
#[derive(Debug, Clone)]
pub struct Learner {
    tx: mpsc::Sender<LearnRequest>,
    wake: Arc<UnixStream>,
}

impl Learner {
    /// Hands answers to the run loop and waits until it programmed them.
    pub async fn learn(&self, answers: Vec<Learned>) -> Result<(), String> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(LearnRequest { answers, done })
            .map_err(|_| "the agent's run loop is gone".to_string())?;
        // A full pipe already wakes the loop: a failed write loses nothing.
        let _ = (&*self.wake).write(&[1]);
        rx.await
            .map_err(|_| "the agent dropped the request".to_string())
    }
}

/// The running DNS proxy, as the run loop holds it.
pub struct DnsProxy {
    config: DnsConfig,
    view: Arc<RwLock<Arc<ProxyView>>>,
    flows: Arc<FlowLog<DnsFlow>>,
    requests: mpsc::Receiver<LearnRequest>,
    wake: UnixStream,
    /// Learned addresses (owned by the run loop).
    cache: FqdnCache,
    /// What the datapath holds, as the query tasks see it.
    programmed: Programmed,
    applied: Option<Vec<Redirect>>,
    last_error: Option<String>,
    /// The saved state (`saved.rs`).
    persist: Persist,
    /// When the conntrack was last asked about addresses due to leave.
    flows_read: Option<Instant>,
    /// Reads the conntrack off the run loop (`None`: nothing can hold an expired address).
    ct: Option<CtReader>,
    /// When the read in flight was asked (its interest computed).
    ct_asked: Option<Instant>,
    /// The write end of `wake`, for the conntrack reader.
    wake_tx: Arc<UnixStream>,
}

/// Saving the cache: new pairs are saved before their answer goes out (a restarted agent must
/// know every address a pod may be using); longer TTLs alone at most once a second.
#[derive(Debug, Default)]
struct Persist {
    dir: Option<PathBuf>,
    /// Something not saved yet is new (pair or learner), not just a later expiry.
    dirty_new: bool,
    /// Anything not saved yet.
    dirty: bool,
    saved_at: Option<Instant>,
    last_error: Option<String>,
    /// What the start restored (entries, dropped as expired), or why it restored nothing.
    restored: Option<Result<(usize, usize), String>>,
}

// === impl DnsProxy ===

impl DnsProxy {
    /// Binds the transparent UDP socket and TCP listener, installs the local-delivery route and
    /// starts the proxy thread. Must run in the node's network namespace.
    pub fn start(config: DnsConfig) -> Result<Self, ProxyError> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
        let listen_err = |source| ProxyError::Listen { addr, source };
        let udp = bind_udp(addr).map_err(listen_err)?;
        let tcp = bind_tcp(addr).map_err(listen_err)?;
        redirect::install_route()?;
        let (wake, wake_tx) = UnixStream::pair().map_err(ProxyError::Runtime)?;
        wake.set_nonblocking(true).map_err(ProxyError::Runtime)?;
        wake_tx.set_nonblocking(true).map_err(ProxyError::Runtime)?;
        let (tx, requests) = mpsc::channel();
        let view = Arc::new(RwLock::new(Arc::new(ProxyView::default())));
        let flows = Arc::new(FlowLog::new(config.flow_capacity));
        let programmed: Programmed = Arc::default();
        let wake_tx = Arc::new(wake_tx);
        let shared = Arc::new(server::Shared {
            programmed: programmed.clone(),
            view: view.clone(),
            flows: flows.clone(),
            learner: Learner {
                tx,
                wake: wake_tx.clone(),
            },
            upstream_timeout: config.upstream_timeout,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dns-proxy")
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        std::thread::Builder::new()
            .name("dns-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let udp = tokio::net::UdpSocket::from_std(udp);
                    let tcp = tokio::net::TcpListener::from_std(tcp);
                    match (udp, tcp) {
                        (Ok(u), Ok(t)) => {
                            tokio::join!(
                                server::serve_udp(u, shared.clone()),
                                server::serve_tcp(t, shared)
                            );
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            eprintln!("palisade agent: dns proxy: sockets: {e}");
                        }
                    }
                });
            })
            .map_err(ProxyError::Runtime)?;
        Ok(DnsProxy {
            cache: FqdnCache::new(config.limits),
            programmed,
            config,
            view,
            flows,
            requests,
            wake,
            applied: None,
            last_error: None,
            persist: Persist::default(),
            flows_read: None,
            ct: None,
            ct_asked: None,
            wake_tx,
        })
    }

    /// Restores what a previous run saved in `dir` (entries past their TTL dropped) and saves
    /// there from now on. A file that cannot be used is reported (log and status) and ignored
    /// whole: the pods resolve again, as on a cold node. Returns the restored entries, for the
    /// engine's identities.
    pub fn restore(&mut self, dir: &Path) -> Vec<saved::RestoredEntry> {
        self.persist.dir = Some(dir.to_path_buf());
        let (now, wall) = (Instant::now(), SystemTime::now());
        match saved::load(dir, now, wall) {
            Ok(None) => Vec::new(),
            Ok(Some(r)) => {
                for e in &r.entries {
                    self.cache
                        .restore(&e.name, e.ip, e.until, e.active, e.learners.clone());
                }
                self.persist.restored = Some(Ok((r.entries.len(), r.expired)));
                if r.expired > 0 {
                    // The file still names them: the next save must drop them.
                    self.persist.dirty = true;
                }
                r.entries
            }
            Err(e) => {
                let mut msg = crate::agent::server::chain(&e);
                if !matches!(e, saved::SavedError::Read { .. }) {
                    match saved::quarantine(dir) {
                        Ok(aside) => msg.push_str(&format!(" (kept as {})", aside.display())),
                        Err(q) => msg.push_str(&format!(" (could not move it aside: {q})")),
                    }
                }
                eprintln!(
                    "palisade agent: dns: ignoring the saved DNS cache (pods resolve again): {msg}"
                );
                self.persist.restored = Some(Err(msg));
                Vec::new()
            }
        }
    }

    /// Saves the cache when it is due (see [`Persist`]); `identity` gives each address's
    /// identity in the ipcache.
    pub fn save_if_due(&mut self, now: Instant, identity: impl Fn(IpAddr) -> Option<u32>) {
        let p = &mut self.persist;
        let Some(dir) = &p.dir else {
            return;
        };
        let due = p.dirty_new
            || (p.dirty && p.saved_at.is_none_or(|t| now >= t + Duration::from_secs(1)));
        if !due {
            return;
        }
        let bytes = saved::encode(&self.cache, identity, now, SystemTime::now());
        match saved::save(dir, &bytes) {
            Ok(()) => {
                p.dirty = false;
                p.dirty_new = false;
                p.saved_at = Some(now);
                p.last_error = None;
            }
            Err(e) => {
                // Kept dirty: the next pass tries again. The answers still go out: a pod is
                // not refused its name because the disk is full.
                let msg = format!("saving {}: {e}", dir.join(saved::FILE).display());
                if p.last_error.as_deref() != Some(msg.as_str()) {
                    eprintln!("palisade agent: dns: {msg}");
                }
                p.last_error = Some(msg);
            }
        }
    }

    /// The query records (the agent connects them to its flow ring).
    pub fn flows(&self) -> &Arc<FlowLog<DnsFlow>> {
        &self.flows
    }

    /// Readable when learn requests wait (the run loop polls it).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The learn requests waiting, their answers recorded in the cache (with `now`).
    pub fn take_requests(&mut self, now: Instant) -> Vec<tokio::sync::oneshot::Sender<()>> {
        let mut buf = [0u8; 256];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let mut done = Vec::new();
        while let Ok(r) = self.requests.try_recv() {
            for a in &r.answers {
                self.persist.dirty_new |= self.cache.learn(now, &a.name, a.ip, a.ttl, a.client);
                self.persist.dirty = true;
            }
            done.push(r.done);
        }
        done
    }

    /// The learned addresses.
    pub fn cache(&self) -> &FqdnCache {
        &self.cache
    }

    /// Publishes which learned pairs the datapath holds (`held`: whether an address is
    /// programmed with that name, or is a pod's or the node's and needs nothing).
    pub fn publish_programmed(&self, held: impl Fn(&str, IpAddr) -> bool) {
        let snapshot: HashMap<(String, IpAddr), Instant> = self
            .cache
            .deadlines()
            .filter(|(n, ip, _)| held(n, *ip))
            .map(|(n, ip, t)| ((n.to_string(), ip), t))
            .collect();
        *self.programmed.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }

    /// Reads the conntrack with `read` from now on, on a thread of its own (`ctread.rs`).
    /// Without it nothing holds an expired address (fail closed).
    pub fn read_conntrack_with(&mut self, read: ReadFn) -> Result<(), ProxyError> {
        let wake = self.wake_tx.clone();
        let reader = CtReader::start(read, move || {
            // A full pipe already wakes the loop: a failed write loses nothing.
            let _ = (&*wake).write(&[2]);
        })
        .map_err(ProxyError::Runtime)?;
        self.ct = Some(reader);
        Ok(())
    }

    /// Forgets addresses whose time has come; whether any went. Before that the datapath's
    /// conntrack (connections endpoints opened whose (source, destination) the filter accepts)
    /// is asked twice about each address: when its TTL runs out, which open connections of
    /// endpoints that learned it exist (those may hold it, see `cache.rs`), and when it is due
    /// to leave, whether they are still open and when they last carried a packet.
    ///
    /// The read runs on the reader thread: this call asks and returns; a later call (the
    /// thread wakes the run loop) takes the result and settles the cache as of the ask, so
    /// nothing leaves before its holders are known and the run loop never waits for the pass.
    /// A read is asked at most once a second (an address may leave up to a second and one
    /// pass late); when the conntrack cannot be read, nothing holds (fail closed).
    pub fn expire(&mut self, now: Instant) -> bool {
        if self.config.limits.connection_idle.is_zero() {
            // No holding: nothing to read.
            if self.cache.next_expiry().is_none_or(|t| t > now) {
                return false;
            }
            return self.settle(
                now,
                Read {
                    at: now,
                    flows: Ok(Vec::new()),
                },
            );
        }
        if let Some(asked) = self.ct_asked {
            let Some(read) = self.ct.as_ref().and_then(CtReader::take) else {
                // Still reading.
                return false;
            };
            self.ct_asked = None;
            return self.settle(asked, read);
        }
        let mut interest = self.cache.lapsed(now);
        let due = self.cache.next_expiry().is_some_and(|t| t <= now);
        if interest.is_empty() && !due {
            return false;
        }
        if self
            .flows_read
            .is_some_and(|t| now < t + Duration::from_secs(1))
        {
            return false;
        }
        for (ip, learners) in self.cache.due(now) {
            interest.entry(ip).or_default().extend(learners);
        }
        self.flows_read = Some(now);
        match &self.ct {
            Some(reader) => {
                reader.ask(interest);
                self.ct_asked = Some(now);
                false
            }
            None => self.settle(
                now,
                Read {
                    at: now,
                    flows: Err("no conntrack reader".into()),
                },
            ),
        }
    }

    /// Applies a conntrack read asked at `asked`: holders of the addresses that had lapsed
    /// then, the last packets of open ones, and expiry as of `asked` (an address due later
    /// waits for the next read, which looks at its holders first).
    fn settle(&mut self, asked: Instant, read: Read) -> bool {
        let open: Vec<CtFlow> = match read.flows {
            Ok(f) => f.into_iter().filter(|f| !f.closing).collect(),
            Err(e) => {
                eprintln!(
                    "palisade agent: dns: reading the conntrack (expired addresses not held): {e}"
                );
                Vec::new()
            }
        };
        let key = |f: &CtFlow| (f.src, f.sport, f.dst, f.dport, f.protocol);
        let keys: Vec<_> = open.iter().map(key).collect();
        self.cache.watch(asked, &keys);
        for f in &open {
            if let Some(at) = read.at.checked_sub(f.idle) {
                self.persist.dirty |= self.cache.saw_flow(key(f), at);
            }
        }
        let changed = self.cache.expire(asked);
        self.persist.dirty |= changed;
        changed
    }

    /// Publishes a new view and brings the packet filter in line with it (view first: a query
    /// steered by a new rule finds its endpoint).
    pub fn update(&mut self, view: Arc<ProxyView>) -> Result<(), ProxyError> {
        let redirects = view.redirects_of(L7Kind::Dns);
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        if self.applied.as_ref() == Some(&redirects) {
            return Ok(());
        }
        let rules = redirect::ruleset_for(TABLE, &redirects, self.config.port, "{ tcp, udp }");
        match redirect::apply(&rules) {
            Ok(()) => {
                self.applied = Some(redirects);
                self.last_error = None;
                Ok(())
            }
            Err(e) => {
                self.applied = None;
                self.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// For `palisade agent status`: port, redirects, learned names, the newest queries.
    pub fn status(&self, now: Instant) -> serde_json::Value {
        let redirects: Vec<String> = self
            .applied
            .iter()
            .flatten()
            .map(|r| {
                let p = if r.protocol == crate::agent::proxy::view::PROTO_UDP {
                    "udp"
                } else {
                    "tcp"
                };
                format!("egress {} {p}:{}-{}", r.endpoint, r.ports.0, r.ports.1)
            })
            .collect();
        let held: Vec<serde_json::Value> = self
            .cache
            .held(now)
            .into_iter()
            .map(|(name, ip, ago)| {
                serde_json::json!({"name": name, "ip": ip, "lastPacketSecondsAgo": ago})
            })
            .collect();
        let p = &self.persist;
        let (restored, restore_error) = match &p.restored {
            None => (None, None),
            Some(Ok((n, expired))) => (
                Some(serde_json::json!({"entries": n, "expiredWhileDown": expired})),
                None,
            ),
            Some(Err(e)) => (None, Some(e.clone())),
        };
        serde_json::json!({
            "port": self.config.port,
            "redirects": redirects,
            "queriesTotal": self.flows.total(),
            "names": self.cache.entries(now),
            "heldByConnections": held,
            "recentQueries": self.flows.recent(32),
            "lastError": self.last_error,
            "state": {
                "file": p.dir.as_ref().map(|d| d.join(saved::FILE)),
                "restored": restored,
                "restoreError": restore_error,
                "saveError": p.last_error,
            },
        })
    }
}

/// A UDP socket receiving datagrams for any destination, each with its original destination.
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent_v4(true)?;
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4OrigDstAddr, &true)
        .map_err(std::io::Error::from)?;
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A TCP listener accepting connections for any destination.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent_v4(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}
