//! Gossip between node agents over the underlay (issue 10): chitchat's scuttlebutt
//! reconciliation (versioned key-values per node, phi-accrual liveness) on a UDP transport whose
//! every datagram is sealed with the cluster gossip key. It keeps peers learning each other's
//! endpoints and block-made identities while the control plane is unreachable; the control
//! plane stays the authority (see `ClusterView::merge_gossip` for what gossip may change).
//!
//! ```text
//!   run loop ── NodeGossip (own endpoints, identities, node record) ──▶ desired keys ─┐
//!                                                                                   ▼
//!   gossip thread (tokio): chitchat ◀── SealedUdp (seal / open, drops counted) ──▶ peers
//!        │ every round: own keys set/deleted; peers' keys decoded, bounded
//!        └──▶ GossipView (peers: liveness + NodeGossip) ── wake pipe ──▶ run loop merges it
//! ```

mod seal;
mod state;
mod transport;

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
pub use state::{NodeGossip, NodeInfo};
use transport::{Drops, SealedUdp};

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
    /// The highest version of its state seen.
    pub version: u64,
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
        let chitchat_id = ChitchatId::new(node.to_string(), now_ms(), g.config.listen);
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

/// The async side: applies the desired keys, contacts seeds, rebuilds the view.
struct Worker {
    desired: Arc<Mutex<BTreeMap<String, String>>>,
    seeds: Arc<Mutex<BTreeSet<SocketAddr>>>,
    view: Arc<Mutex<Arc<GossipView>>>,
    wake: UnixStream,
    interval: Duration,
}

impl Worker {
    async fn run(self, handle: chitchat::ChitchatHandle) {
        let chitchat = handle.chitchat();
        let mut published: BTreeMap<String, String> = BTreeMap::new();
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
                if desired != published {
                    let own = cc.self_node_state();
                    for k in published.keys().filter(|k| !desired.contains_key(*k)) {
                        own.delete(k);
                    }
                    for (k, v) in &desired {
                        if published.get(k) != Some(v) {
                            own.set(k, v);
                        }
                    }
                    published = desired;
                }
                let view = build_view(&cc);
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

/// The other nodes' latest generations, decoded.
fn build_view(cc: &chitchat::Chitchat) -> GossipView {
    let me = cc.self_chitchat_id().node_id.to_string();
    let live: BTreeSet<&ChitchatId> = cc.live_nodes().collect();
    let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
    for (id, ns) in cc.node_states() {
        if *id.node_id == *me {
            continue;
        }
        if peers
            .get(&*id.node_id)
            .is_some_and(|p| p.generation > id.generation_id)
        {
            continue;
        }
        let (state, ignored) = NodeGossip::from_kv(ns.key_values());
        peers.insert(
            id.node_id.to_string(),
            Peer {
                live: live.contains(id),
                address: id.gossip_advertise_addr,
                generation: id.generation_id,
                version: ns.max_version(),
                state,
                ignored,
            },
        );
    }
    GossipView { peers }
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
        let (a_addr, b_addr, c_addr) = (free_port(), free_port(), free_port());
        let cfg = |listen, seeds: Vec<SocketAddr>, key: GossipKey| GossipConfig {
            listen,
            seeds,
            key,
            interval: Duration::from_millis(100),
        };
        let a = Gossip::start("n1", cfg(a_addr, vec![b_addr], key.clone())).expect("a");
        let b = Gossip::start("n2", cfg(b_addr, vec![a_addr], key)).expect("b");
        let c = Gossip::start(
            "intruder",
            cfg(c_addr, vec![a_addr], GossipKey::from_bytes([1; 32])),
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
}
