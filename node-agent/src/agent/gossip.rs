//! Gossip between node agents over the underlay (issue 10): chitchat's scuttlebutt
//! reconciliation (versioned key-values per node, phi-accrual liveness) on a UDP transport whose
//! every datagram is sealed with the cluster gossip key. It keeps peers learning each other's
//! endpoints and block-made identities while the control plane is unreachable; the control
//! plane stays the authority (see `ClusterView::merge_gossip` for what gossip may change).
//! The key only admits a node to gossip: each node signs its own state with its node
//! certificate's key ([`sign`]), and a peer's state reaches the view only once verified.
//!
//! ```text
//!   run loop ── NodeGossip (own endpoints, identities, node record) ──▶ desired keys ─┐
//!                                                                                   ▼
//!   gossip thread (tokio): chitchat ◀── SealedUdp (seal / open, drops counted) ──▶ peers
//!        │ every round: own keys set/deleted, then `cert` and `sig` (signed with the node key)
//!        │ peers' states: verified once per version (drops counted), decoded, bounded
//!        └──▶ GossipView (peers: liveness + last verified NodeGossip) ── wake pipe ──▶ merge
//! ```

mod seal;
mod sign;
mod state;
mod transport;
mod trust;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use chitchat::transport::Transport;
use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig};

pub use seal::{DropReason, GossipKey, KeyError, Sealer};
pub use sign::{NodeSigner, StateVerifier};
pub use state::{NodeGossip, NodeInfo};
use transport::{Drops, SealedUdp};
use trust::Trust;

/// Default gossip port (memberlist's, as Consul and Serf use).
pub const DEFAULT_PORT: u16 = 7946;
/// Default gossip round interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(300);
/// The chitchat cluster id every agent uses (membership is decided by the key, not by this).
const CLUSTER_ID: &str = "palisade";
/// How often addresses the control plane lists but gossip has not met are contacted.
const SEED_EVERY: Duration = Duration::from_secs(2);

/// Gossip settings.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Where to listen (UDP), e.g. the node's underlay address and [`DEFAULT_PORT`].
    pub listen: SocketAddr,
    /// Peers to contact first (any member will do); the control plane's node list adds the
    /// others at run time.
    pub seeds: Vec<SocketAddr>,
    /// The cluster gossip key.
    pub key: GossipKey,
    /// Round interval.
    pub interval: Duration,
    /// Signs this node's state: its node certificate and key.
    pub signer: Arc<NodeSigner>,
    /// Verifies peers' states: the cluster CA.
    pub verifier: StateVerifier,
    /// The address peers are told to reach this node at [default: `listen`].
    pub advertise: Option<SocketAddr>,
}

/// What gossip currently says about the other nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GossipView {
    /// By node name.
    pub peers: BTreeMap<String, Peer>,
}

/// One other node as gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Whether the failure detector holds it alive.
    pub live: bool,
    /// Its gossip address.
    pub address: SocketAddr,
    /// Its incarnation (start time, ms): a restarted agent is a new generation.
    pub generation: u64,
    /// The chitchat version of the state shown (the last one verified).
    pub version: u64,
    /// The sequence number that state was signed with.
    pub seq: u64,
    /// Its keys, decoded.
    pub state: NodeGossip,
    /// Keys of it that were ignored (out of bounds, unparsable).
    pub ignored: usize,
}

/// The run loop's handle on the gossip thread.
pub struct Gossip {
    config: GossipConfig,
    desired: Arc<Mutex<BTreeMap<String, String>>>,
    seeds: Arc<Mutex<BTreeSet<SocketAddr>>>,
    view: Arc<Mutex<Arc<GossipView>>>,
    drops: Arc<Drops>,
    wake: UnixStream,
}

impl Gossip {
    /// Starts gossiping as `node` (the chitchat node id is the node name).
    pub fn start(node: &str, config: GossipConfig) -> Result<Gossip, String> {
        let (wake, wake_tx) = UnixStream::pair().map_err(|e| format!("gossip wake pipe: {e}"))?;
        wake.set_nonblocking(true)
            .map_err(|e| format!("gossip wake pipe: {e}"))?;
        wake_tx
            .set_nonblocking(true)
            .map_err(|e| format!("gossip wake pipe: {e}"))?;
        let g = Gossip {
            desired: Arc::default(),
            seeds: Arc::new(Mutex::new(config.seeds.iter().copied().collect())),
            view: Arc::default(),
            drops: Arc::default(),
            wake,
            config,
        };
        let sealer = Arc::new(Sealer::new(&g.config.key));
        let transport = SealedUdp {
            sealer,
            drops: g.drops.clone(),
        };
        let generation = now_ms();
        let chitchat_id = ChitchatId::new(
            node.to_string(),
            generation,
            g.config.advertise.unwrap_or(g.config.listen),
        );
        let cc = ChitchatConfig {
            chitchat_id,
            cluster_id: CLUSTER_ID.to_string(),
            gossip_interval: g.config.interval,
            listen_addr: g.config.listen,
            seed_nodes: g.config.seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                // A peer silent for a few rounds is suspected; its last state stays (it may be
                // cut off, not gone) until the grace period ends.
                initial_interval: g.config.interval,
                max_interval: g.config.interval * 10,
                dead_node_grace_period: Duration::from_secs(3600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let worker = Worker {
            desired: g.desired.clone(),
            seeds: g.seeds.clone(),
            view: g.view.clone(),
            wake: wake_tx,
            interval: g.config.interval,
            node: node.to_string(),
            generation,
            signer: g.config.signer.clone(),
            trust: Trust::new(g.config.verifier.clone(), g.drops.clone()),
        };
        thread::Builder::new()
            .name("gossip".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(format!("gossip runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let handle = match chitchat::spawn_chitchat(
                        cc,
                        Vec::new(),
                        &transport as &dyn Transport,
                    )
                    .await
                    {
                        Ok(h) => h,
                        Err(e) => {
                            let _ = started_tx.send(Err(format!("gossip: {e:#}")));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    worker.run(handle).await;
                });
            })
            .map_err(|e| format!("starting the gossip thread: {e}"))?;
        started_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "gossip did not start within 10 s".to_string())??;
        Ok(g)
    }

    /// Readable when the view changed.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The current view (clears the wake pipe).
    pub fn view(&self) -> Arc<GossipView> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What this node gossips from now on (applied at the next round).
    pub fn publish(&self, own: &NodeGossip) {
        *self.desired.lock().unwrap_or_else(PoisonError::into_inner) = own.to_kv();
    }

    /// Addresses of nodes the control plane lists: contacted until gossip has met them.
    pub fn add_seeds(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut s = self.seeds.lock().unwrap_or_else(PoisonError::into_inner);
        s.extend(addrs.into_iter().filter(|a| *a != self.config.listen));
    }

    /// The gossip port (peers listen on the same one).
    pub fn port(&self) -> u16 {
        self.config.listen.port()
    }

    /// For `palisade agent status`: members, liveness, what each gossips, drops by reason.
    pub fn status(&self) -> serde_json::Value {
        let view = self
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let members: Vec<serde_json::Value> = view
            .peers
            .iter()
            .map(|(name, p)| {
                serde_json::json!({
                    "node": name,
                    "address": p.address.to_string(),
                    "live": p.live,
                    "generation": p.generation,
                    "version": p.version,
                    "seq": p.seq,
                    "endpoints": p.state.endpoints.len(),
                    "identities": p.state.identities.len(),
                    "wireguardEpoch": p.state.node.as_ref().map(|n| n.wireguard_epoch),
                    "ignoredKeys": p.ignored,
                })
            })
            .collect();
        let dropped: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), self.drops.get(*r).into()))
            .chain([(
                "send_oversize".to_string(),
                self.drops.send_oversize.load(Ordering::Relaxed).into(),
            )])
            .collect();
        serde_json::json!({
            "enabled": true,
            "listen": self.config.listen.to_string(),
            "members": members,
            "liveMembers": view.peers.values().filter(|p| p.live).count(),
            "accepted": self.drops.accepted.load(Ordering::Relaxed),
            "dropped": dropped,
        })
    }
}

/// The async side: applies and signs the desired keys, contacts seeds, rebuilds the view.
struct Worker {
    desired: Arc<Mutex<BTreeMap<String, String>>>,
    seeds: Arc<Mutex<BTreeSet<SocketAddr>>>,
    view: Arc<Mutex<Arc<GossipView>>>,
    wake: UnixStream,
    interval: Duration,
    node: String,
    generation: u64,
    signer: Arc<NodeSigner>,
    trust: Trust,
}

impl Worker {
    async fn run(mut self, handle: chitchat::ChitchatHandle) {
        let chitchat = handle.chitchat();
        // `None` until the first round has signed (an empty state is signed too: it is what
        // tells peers this node says nothing).
        let mut published: Option<BTreeMap<String, String>> = None;
        let mut seq = 0u64;
        let mut next_seed = Instant::now();
        let mut tick = tokio::time::interval(self.interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let desired = self
                .desired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let (view, met) = {
                let mut cc = chitchat.lock().await;
                if published.as_ref() != Some(&desired) {
                    let own = cc.self_node_state();
                    let before = published.take().unwrap_or_default();
                    for k in before.keys().filter(|k| !desired.contains_key(*k)) {
                        own.delete(k);
                    }
                    for (k, v) in &desired {
                        if before.get(k) != Some(v) {
                            own.set(k, v);
                        }
                    }
                    if own.get(sign::CERT_KEY) != Some(self.signer.cert_value()) {
                        own.set(sign::CERT_KEY, self.signer.cert_value());
                    }
                    // Signed last, under the lock: the `sig` key gets the highest version, so a
                    // peer holding it holds every key it covers (chitchat sends keys in version
                    // order). Wall-clock based so a restarted agent keeps counting upwards.
                    seq = (seq + 1).max(now_ms());
                    match self
                        .signer
                        .sign(&self.node, self.generation, seq, own.key_values())
                    {
                        Some(sig) => own.set(sign::SIG_KEY, sig),
                        // ring cannot sign (no randomness): peers keep the last signed state.
                        None => metrics::counter!("palisade_agent_gossip_sign_failures_total")
                            .increment(1),
                    }
                    published = Some(desired);
                }
                let view = self.trust.build_view(&cc);
                let met: BTreeSet<SocketAddr> =
                    cc.live_nodes().map(|id| id.gossip_advertise_addr).collect();
                (view, met)
            };
            let changed = {
                let mut cur = self.view.lock().unwrap_or_else(PoisonError::into_inner);
                if **cur != view {
                    *cur = Arc::new(view);
                    true
                } else {
                    false
                }
            };
            if changed {
                let _ = (&self.wake).write(&[1]);
            }
            if Instant::now() >= next_seed {
                next_seed = Instant::now() + SEED_EVERY;
                let seeds: Vec<SocketAddr> = self
                    .seeds
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|s| !met.contains(s))
                    .copied()
                    .collect();
                for s in seeds {
                    let _ = handle.gossip(s);
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> SocketAddr {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Two agents with the key meet and learn each other's state; a third with another key
    /// never joins, and its datagrams are counted as unauthenticated; junk is malformed.
    #[test]
    fn only_key_holders_take_part_and_everything_else_is_dropped_and_counted() {
        let key = GossipKey::from_bytes([9; 32]);
        let ca = sign::tests::TestCa::new();
        let (a_addr, b_addr, c_addr) = (free_port(), free_port(), free_port());
        let cfg = |listen, seeds: Vec<SocketAddr>, key: GossipKey, node: &str| GossipConfig {
            listen,
            seeds,
            key,
            interval: Duration::from_millis(100),
            signer: Arc::new(ca.signer(node)),
            verifier: ca.verifier(),
            advertise: None,
        };
        let a = Gossip::start("n1", cfg(a_addr, vec![b_addr], key.clone(), "n1")).expect("a");
        let b = Gossip::start("n2", cfg(b_addr, vec![a_addr], key.clone(), "n2")).expect("b");
        let c = Gossip::start(
            "intruder",
            cfg(
                c_addr,
                vec![a_addr],
                GossipKey::from_bytes([1; 32]),
                "intruder",
            ),
        )
        .expect("c");
        let mut own = NodeGossip::default();
        own.endpoints
            .insert("10.200.2.10".parse().expect("ip"), 300);
        own.identities.insert(300, vec!["k8s:app=db".into()]);
        b.publish(&own);
        c.publish(&own);
        wait_until("n1 to learn n2's endpoint", || {
            a.view()
                .peers
                .get("n2")
                .is_some_and(|p| p.live && p.state == own)
        });
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.send_to(b"junk", a_addr).expect("send");
        wait_until(
            "the intruder's and the junk datagrams to be counted",
            || {
                a.drops.get(DropReason::Unauthenticated) > 0
                    && a.drops.get(DropReason::Malformed) > 0
            },
        );
        assert!(!a.view().peers.contains_key("intruder"), "{:?}", a.view());
        assert!(c.view().peers.is_empty(), "the intruder learns nothing");
        let s = a.status();
        assert_eq!(s["liveMembers"], 1, "{s}");
        assert_eq!(s["members"][0]["node"], "n2", "{s}");
        // Withdrawn keys disappear at the peer.
        b.publish(&NodeGossip::default());
        wait_until("n2's endpoint to be withdrawn", || {
            a.view()
                .peers
                .get("n2")
                .is_some_and(|p| p.state.endpoints.is_empty())
        });
    }

    /// A member with the key and a valid certificate of its own (n3) gossips as n2, from a
    /// newer generation advertising n2's address, with an endpoint: n1 never shows it, counts
    /// the wrong name once, and keeps n2's honest state, which still updates.
    #[test]
    fn a_member_cannot_speak_for_another_node() {
        let key = GossipKey::from_bytes([9; 32]);
        let ca = sign::tests::TestCa::new();
        let (a_addr, b_addr, f_addr) = (free_port(), free_port(), free_port());
        let cfg = |listen, seeds: Vec<SocketAddr>, cert_of: &str| GossipConfig {
            listen,
            seeds,
            key: key.clone(),
            interval: Duration::from_millis(100),
            signer: Arc::new(ca.signer(cert_of)),
            verifier: ca.verifier(),
            advertise: None,
        };
        let a = Gossip::start("n1", cfg(a_addr, vec![b_addr], "n1")).expect("a");
        let b = Gossip::start("n2", cfg(b_addr, vec![a_addr], "n2")).expect("b");
        let mut honest = NodeGossip::default();
        honest
            .endpoints
            .insert("10.200.2.10".parse().expect("ip"), 300);
        b.publish(&honest);
        wait_until("n1 to learn n2's endpoint", || {
            a.view().peers.get("n2").is_some_and(|p| p.state == honest)
        });
        let mut forger_cfg = cfg(f_addr, vec![a_addr], "n3");
        forger_cfg.advertise = Some(b_addr);
        let forger = Gossip::start("n2", forger_cfg).expect("forger");
        let mut forged = NodeGossip::default();
        forged
            .endpoints
            .insert("10.200.2.66".parse().expect("ip"), 300);
        forger.publish(&forged);
        wait_until("n1 to drop the forged state", || {
            a.drops.get(DropReason::WrongName) > 0
        });
        honest
            .endpoints
            .insert("10.200.2.11".parse().expect("ip"), 300);
        b.publish(&honest);
        wait_until("n1 to learn n2's second endpoint", || {
            a.view().peers.get("n2").is_some_and(|p| p.state == honest)
        });
        let view = a.view();
        assert_eq!(view.peers.len(), 1, "{view:?}");
        assert!(
            !view.peers["n2"]
                .state
                .endpoints
                .contains_key(&"10.200.2.66".parse().expect("ip")),
            "{view:?}"
        );
        // Decided once per state version, not once per round.
        let dropped = a.drops.get(DropReason::WrongName);
        thread::sleep(Duration::from_millis(500));
        assert_eq!(a.drops.get(DropReason::WrongName), dropped);
        assert!(
            dropped <= 3,
            "one forged state version, relayed at most a few times: {dropped}"
        );
    }
}
