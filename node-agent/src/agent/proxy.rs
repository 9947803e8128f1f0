//! The agent's L7 (HTTP) proxy: enforces `rules.http` of local endpoints' ingress and egress
//! policy.
//!
//! ```text
//!  run loop ──after every sync──▶ L7Proxy::update(ProxyView)
//!                                   │ swap the shared view (Arc<RwLock>)
//!                                   └ redirects() changed? ──▶ nft -f (table inet palisade_proxy)
//!
//!  client ─SYN─▶ node prerouting: tproxy (peers whose lookup is the redirect) ─▶ proxy socket
//!                 acceptor ─round robin─▶ worker k (its own single-threaded runtime):
//!                 hyper server per connection, its upstream connection on the same worker
//!                   per request: view.ingress(dst, client), view.egress(client, dst),
//!                                the L7 rules of each side that has them
//!                     allowed ─▶ hyper client, one connection per client connection, bound
//!                                to the client's address (IP_TRANSPARENT) ─▶ original destination
//!                     denied  ─▶ 403 "Access denied"
//!                   L7Flow ─▶ FlowLog (bounded) + hubble_http_requests_total
//! ```
//! The L4 part of the decision stays the eBPF programs' (packets the filter does not steer reach
//! the veth and are judged there); the L7 part is the proxy's. On ingress the programs drop a
//! redirect-verdict packet that does not carry the proxy's mark (`FLAG_L7_PROXY`), so a peer the
//! filter missed is dropped rather than let past the L7 rules.

mod flow;
mod http;
pub(crate) mod redirect;
pub(crate) mod view;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

pub use flow::{FlowLog, FlowPeer, FlowSink, L7Flow, L7Verdict};
pub use view::{Local, PeerInfo, ProxyView};

use view::Redirect;

/// Default port of the proxy (also the engine's HTTP proxy port).
pub const DEFAULT_PORT: u16 = 15001;

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The port the proxy listens on (TPROXY target).
    pub port: u16,
    /// Flow records kept in memory.
    pub flow_capacity: usize,
    /// Worker threads, each running its own single-threaded event loop (see [`L7Proxy::start`]).
    pub workers: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            port: DEFAULT_PORT,
            flow_capacity: flow::DEFAULT_CAPACITY,
            workers: default_workers(),
        }
    }
}

/// Why the proxy could not start or steer traffic.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket.
    #[error("cannot listen on `{addr}`")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A command (`nft`, `ip`) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Its error output.
        detail: String,
    },
    /// The proxy's thread or runtime.
    #[error("cannot start the proxy runtime")]
    Runtime(#[source] std::io::Error),
}

/// Workers by default: one per two CPUs, at most four. A proxied request is mostly kernel work
/// (the TCP stack twice as often as a direct one) done on the proxy's threads and on the
/// client's and server's; on a two-CPU node one event loop leaves the other CPU to them
/// (measured in docs/BENCHMARKS.md, "L7 proxy").
pub fn default_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpus / 2).clamp(1, 4)
}

/// The running proxy, as the run loop holds it.
pub struct L7Proxy {
    config: ProxyConfig,
    view: Arc<RwLock<Arc<ProxyView>>>,
    flows: Arc<FlowLog>,
    /// Redirects the packet filter holds (`None`: unknown, apply on the next update).
    applied: Option<Vec<Redirect>>,
    last_error: Option<String>,
}

// === impl L7Proxy ===

impl L7Proxy {
    /// The request records (the agent connects them to its flow ring).
    pub fn flows(&self) -> &Arc<FlowLog> {
        &self.flows
    }

    /// Binds the transparent listener, installs the local-delivery route and starts the proxy
    /// thread. Must run in the node's network namespace (the thread inherits it).
    pub fn start(mut config: ProxyConfig) -> Result<Self, ProxyError> {
        config.workers = config.workers.max(1);
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
        let listener = listen(addr).map_err(|source| ProxyError::Listen { addr, source })?;
        redirect::install_route()?;
        let view = Arc::new(RwLock::new(Arc::new(ProxyView::default())));
        let flows = Arc::new(FlowLog::new(config.flow_capacity));
        let shared = Arc::new(http::Shared {
            view: view.clone(),
            flows: flows.clone(),
        });
        // Envoy's model: every connection lives on one worker's single-threaded event loop with
        // its upstream connection, so a request never wakes another thread inside the proxy
        // (a multi-threaded runtime's cross-worker wakeups cost more than they gave here).
        let mut workers = Vec::with_capacity(config.workers);
        for k in 0..config.workers {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ProxyError::Runtime)?;
            workers.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("l7-proxy-{k}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .map_err(ProxyError::Runtime)?;
        }
        let acceptor = workers[0].clone();
        acceptor.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => http::serve(l, shared, workers).await,
                Err(e) => eprintln!("palisade agent: l7 proxy: listener: {e}"),
            }
        });
        Ok(L7Proxy {
            config,
            view,
            flows,
            applied: None,
            last_error: None,
        })
    }

    /// Publishes a new view and brings the packet filter in line with it. The view goes first:
    /// a connection steered by a new rule finds its endpoint.
    pub fn update(&mut self, view: Arc<ProxyView>) -> Result<(), ProxyError> {
        let redirects = view.redirects();
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        if self.applied.as_ref() == Some(&redirects) {
            return Ok(());
        }
        match redirect::apply(&redirect::ruleset(&redirects, self.config.port)) {
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

    /// For `palisade agent status`: port, redirects, request total, the newest flows.
    pub fn status(&self) -> serde_json::Value {
        let redirects: Vec<String> = self
            .applied
            .iter()
            .flatten()
            .map(|r| {
                let d = match r.direction {
                    view::RedirectDirection::Ingress => "ingress",
                    view::RedirectDirection::Egress => "egress",
                };
                format!("{d} {}:{}-{}", r.endpoint, r.ports.0, r.ports.1)
            })
            .collect();
        serde_json::json!({
            "port": self.config.port,
            "workers": self.config.workers,
            "redirects": redirects,
            "requestsTotal": self.flows.total(),
            "recentFlows": self.flows.recent(32),
            "lastError": self.last_error,
        })
    }
}

/// A listening socket that accepts connections for any destination (IP_TRANSPARENT).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent_v4(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}
