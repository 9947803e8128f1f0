//! The peer table of the userspace backend: sans-IO. It owns boringtun's `Tunn` state machines
//! and decides, per packet, which tunnel encrypts it, which peer a datagram came from, and whether
//! the decrypted packet's source address belongs to that peer. Every packet it wants written goes
//! through a [`Sink`]; the IO loop in `userspace.rs` is the only caller that touches sockets.
//!
//! One `Tunnel` exists per (local key epoch, peer key epoch) pair of a peer, so during a rotation
//! both generations are alive at once:
//!
//! ```text
//!  peer "b":  local epoch 1 × remote 1  confirmed ── sends until the newer pair is confirmed
//!             local epoch 2 × remote 1  handshaking ─ accepts as soon as it completes
//! ```
//!
//! Outbound packets go through the newest *confirmed* tunnel (a session whose handshake completed
//! and, for the responder, whose first data packet arrived), so a new key is used only once the
//! peer has proven it holds the matching state; every tunnel keeps accepting inbound packets until
//! the caller removes its key, which is what makes rotation lose nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnet::IpNet;
use x25519_dalek::StaticSecret;

use super::{PeerConfig, PeerStatus, TunnelError, TunnelKeyStatus};
use crate::keys::PublicKey;

/// How often an unconfirmed newest tunnel re-sends its handshake initiation. boringtun's own
/// timer waits 5 s (REKEY_TIMEOUT); during a rotation the first initiation is usually dropped
/// because the peer has not learnt the new key yet, and 5 s per rotation is needlessly slow.
pub(crate) const HANDSHAKE_RETRY: Duration = Duration::from_secs(1);

/// Handshake initiations per second per local key before cookies are demanded (boringtun's
/// device uses the same figure).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// How often the rate limiter's count resets.
const RATE_LIMIT_WINDOW: Duration = Duration::from_secs(1);

/// Largest tunnel index: boringtun shifts it left by 8 bits into a u32.
const MAX_INDEX: u32 = (1 << 24) - 1;

/// Where the table's output goes.
pub(crate) enum Out<'a> {
    /// A datagram for the underlay.
    Network(SocketAddr, &'a [u8]),
    /// A decrypted IP packet for the TUN device.
    Tunnel(&'a [u8]),
}

/// Receives the table's output.
pub(crate) trait Sink {
    /// Writes one packet.
    fn emit(&mut self, out: Out<'_>);
}

/// Counters for packets that belong to no peer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Drops {
    pub(crate) no_route: u64,
    pub(crate) unknown_sender: u64,
    pub(crate) invalid: u64,
}

struct LocalKey {
    secret: StaticSecret,
    public: x25519_dalek::PublicKey,
    /// Checks mac1 (and, under load, cookies) of initiations to this key before any
    /// Diffie-Hellman is spent on them; shared with every tunnel of this key.
    limiter: Arc<RateLimiter>,
}

impl LocalKey {
    fn new(secret: StaticSecret) -> Self {
        let public = x25519_dalek::PublicKey::from(&secret);
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Self {
            secret,
            public,
            limiter,
        }
    }
}

struct Peer {
    config: PeerConfig,
    /// The peer's public keys by epoch (several during a rotation).
    keys: BTreeMap<u64, PublicKey>,
    /// Tunnel indices of this peer.
    tunnels: Vec<u32>,
    tx_bytes: u64,
    rx_bytes: u64,
    rx_spoofed: u64,
    last_handshake: Option<SystemTime>,
}

struct Tunnel {
    peer: String,
    local_epoch: u64,
    remote_epoch: u64,
    tunn: Box<Tunn>,
    /// A session exists that the peer has proven it shares.
    confirmed: bool,
    last_handshake: Option<SystemTime>,
    last_init: Option<Instant>,
}

impl Tunnel {
    fn generation(&self) -> (u64, u64) {
        (self.local_epoch, self.remote_epoch)
    }
}

/// All peers and their tunnels.
pub(crate) struct PeerTable {
    local: BTreeMap<u64, LocalKey>,
    peers: BTreeMap<String, Peer>,
    tunnels: HashMap<u32, Tunnel>,
    next_index: u32,
    pub(crate) drops: Drops,
    buf: Vec<u8>,
    last_limiter_reset: Option<Instant>,
}

/// Room for the largest datagram plus WireGuard's overhead.
const BUF_LEN: usize = 65_536 + 256;

// === impl PeerTable ===

impl PeerTable {
    pub(crate) fn new(epoch: u64, secret: StaticSecret) -> Self {
        Self {
            local: BTreeMap::from([(epoch, LocalKey::new(secret))]),
            peers: BTreeMap::new(),
            tunnels: HashMap::new(),
            next_index: 1,
            drops: Drops::default(),
            buf: vec![0; BUF_LEN],
            last_limiter_reset: None,
        }
    }

    /// Local key epochs, oldest first.
    pub(crate) fn local_epochs(&self) -> Vec<u64> {
        self.local.keys().copied().collect()
    }

    /// Adds a local key; each peer gets tunnels for it and a handshake on the newest one.
    pub(crate) fn add_local_key(
        &mut self,
        epoch: u64,
        secret: StaticSecret,
        sink: &mut dyn Sink,
    ) -> Result<(), TunnelError> {
        if self.local.contains_key(&epoch) {
            return Err(TunnelError::LocalKeyExists { epoch });
        }
        self.local.insert(epoch, LocalKey::new(secret));
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            let remote: Vec<u64> = self.peer_key_epochs(&name);
            for r in remote {
                self.create_tunnel(&name, epoch, r)?;
            }
            self.initiate_newest(&name, Instant::now(), sink);
        }
        Ok(())
    }

    /// Removes a local key and every tunnel that uses it. The last key cannot be removed.
    pub(crate) fn remove_local_key(&mut self, epoch: u64) -> Result<(), TunnelError> {
        if !self.local.contains_key(&epoch) {
            return Err(TunnelError::NoLocalKey { epoch });
        }
        if self.local.len() == 1 {
            return Err(TunnelError::LastKey);
        }
        self.local.remove(&epoch);
        self.drop_tunnels(|t| t.local_epoch == epoch);
        Ok(())
    }

    pub(crate) fn add_peer(
        &mut self,
        config: PeerConfig,
        sink: &mut dyn Sink,
    ) -> Result<(), TunnelError> {
        if self.peers.contains_key(&config.name) {
            return Err(TunnelError::PeerExists {
                peer: config.name.clone(),
            });
        }
        // Overlapping allowed IPs would let one node receive (and source) another node's pod
        // addresses; WireGuard would silently move the range, Palisade refuses.
        for other in self.peers.values() {
            for a in &config.allowed_ips {
                if let Some(b) = other.config.allowed_ips.iter().find(|b| overlaps(a, b)) {
                    return Err(TunnelError::AllowedIpsOverlap {
                        peer: config.name.clone(),
                        other: other.config.name.clone(),
                        range: *b,
                    });
                }
            }
        }
        if self.key_owner(&config.public_key).is_some() {
            return Err(TunnelError::KeyInUse {
                peer: config.name.clone(),
            });
        }
        let name = config.name.clone();
        let (epoch, key) = (config.epoch, config.public_key);
        self.peers.insert(
            name.clone(),
            Peer {
                config,
                keys: BTreeMap::from([(epoch, key)]),
                tunnels: Vec::new(),
                tx_bytes: 0,
                rx_bytes: 0,
                rx_spoofed: 0,
                last_handshake: None,
            },
        );
        let locals: Vec<u64> = self.local.keys().copied().collect();
        for l in locals {
            self.create_tunnel(&name, l, epoch)?;
        }
        self.initiate_newest(&name, Instant::now(), sink);
        Ok(())
    }

    pub(crate) fn remove_peer(&mut self, name: &str) -> bool {
        if self.peers.remove(name).is_none() {
            return false;
        }
        self.drop_tunnels(|t| t.peer == name);
        true
    }

    /// Adds a newer (or older) key of an existing peer, alongside the ones it has.
    pub(crate) fn add_peer_key(
        &mut self,
        name: &str,
        key: PublicKey,
        epoch: u64,
        sink: &mut dyn Sink,
    ) -> Result<(), TunnelError> {
        if let Some(owner) = self.key_owner(&key) {
            return Err(TunnelError::KeyInUse { peer: owner });
        }
        let peer = self.peer_mut(name)?;
        if peer.keys.contains_key(&epoch) {
            return Err(TunnelError::PeerKeyExists {
                peer: name.to_string(),
                epoch,
            });
        }
        peer.keys.insert(epoch, key);
        let locals: Vec<u64> = self.local.keys().copied().collect();
        for l in locals {
            self.create_tunnel(name, l, epoch)?;
        }
        self.initiate_newest(name, Instant::now(), sink);
        Ok(())
    }

    /// Removes one key of a peer and its tunnels; the peer's last key cannot be removed (remove
    /// the peer instead).
    pub(crate) fn remove_peer_key(&mut self, name: &str, epoch: u64) -> Result<(), TunnelError> {
        let peer = self.peer_mut(name)?;
        if !peer.keys.contains_key(&epoch) {
            return Err(TunnelError::NoPeerKey {
                peer: name.to_string(),
                epoch,
            });
        }
        if peer.keys.len() == 1 {
            return Err(TunnelError::LastKey);
        }
        peer.keys.remove(&epoch);
        self.drop_tunnels(|t| t.peer == name && t.remote_epoch == epoch);
        Ok(())
    }

    /// Encrypts one packet read from the TUN device for the peer whose allowed IPs contain its
    /// destination (longest prefix wins).
    pub(crate) fn outbound(&mut self, packet: &[u8], sink: &mut dyn Sink) {
        let Some(dst) = Tunn::dst_address(packet) else {
            self.drops.invalid += 1;
            return;
        };
        let Some(position) = self.route(dst) else {
            self.drops.no_route += 1;
            return;
        };
        let Some(peer) = self.peers.values_mut().nth(position) else {
            return;
        };
        let Some(index) = send_tunnel(peer, &self.tunnels) else {
            return;
        };
        let endpoint = peer.config.endpoint;
        peer.tx_bytes += packet.len() as u64;
        let Some(tunnel) = self.tunnels.get_mut(&index) else {
            return;
        };
        match tunnel.tunn.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(bytes) => sink.emit(Out::Network(endpoint, bytes)),
            TunnResult::Err(e) => {
                tracing::debug!(peer = %tunnel.peer, error = ?e, "encapsulate failed")
            }
            _ => {}
        }
    }

    /// Handles one datagram from the underlay.
    pub(crate) fn inbound(&mut self, from: SocketAddr, datagram: &[u8], sink: &mut dyn Sink) {
        let parsed = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.drops.invalid += 1;
                return;
            }
        };
        let (index, kind) = match parsed {
            Packet::HandshakeInit(ref init) => match self.handshake_sender(from, datagram, init) {
                Sender::Tunnel(index) => (index, Kind::Init),
                Sender::Cookie(len) => {
                    sink.emit(Out::Network(from, &self.buf[..len]));
                    return;
                }
                Sender::Unknown => {
                    self.drops.unknown_sender += 1;
                    return;
                }
            },
            Packet::HandshakeResponse(ref p) => (p.receiver_idx >> 8, Kind::Response),
            Packet::PacketCookieReply(ref p) => (p.receiver_idx >> 8, Kind::Cookie),
            Packet::PacketData(ref p) => (p.receiver_idx >> 8, Kind::Data),
        };
        let Some(tunnel) = self.tunnels.get_mut(&index) else {
            self.drops.unknown_sender += 1;
            return;
        };
        let Some(peer) = self.peers.get_mut(&tunnel.peer) else {
            return;
        };
        let endpoint = peer.config.endpoint;
        let result = tunnel
            .tunn
            .decapsulate(Some(from.ip()), datagram, &mut self.buf);
        let ok = !matches!(result, TunnResult::Err(_));
        let mut flush = false;
        match result {
            TunnResult::WriteToNetwork(bytes) => {
                sink.emit(Out::Network(endpoint, bytes));
                flush = true;
            }
            TunnResult::WriteToTunnelV4(bytes, src) => {
                deliver(peer, IpAddr::V4(src), bytes, sink);
            }
            TunnResult::WriteToTunnelV6(bytes, src) => {
                deliver(peer, IpAddr::V6(src), bytes, sink);
            }
            TunnResult::Err(e) => {
                self.drops.invalid += 1;
                tracing::trace!(peer = %tunnel.peer, error = ?e, "decapsulate failed");
            }
            TunnResult::Done => {}
        }
        if ok {
            match kind {
                Kind::Init | Kind::Response => {
                    let now = SystemTime::now();
                    tunnel.last_handshake = Some(now);
                    peer.last_handshake = Some(now);
                    // The initiator's session is usable once the response is processed; the
                    // responder's only after the initiator's first data packet (below).
                    if kind == Kind::Response {
                        tunnel.confirmed = true;
                    }
                }
                Kind::Data => tunnel.confirmed = true,
                Kind::Cookie => {}
            }
        }
        // Packets queued while the handshake ran go out now (boringtun's contract: repeat with
        // an empty datagram until it reports Done).
        while flush {
            match tunnel.tunn.decapsulate(None, &[], &mut self.buf) {
                TunnResult::WriteToNetwork(bytes) => sink.emit(Out::Network(endpoint, bytes)),
                _ => flush = false,
            }
        }
    }

    /// Runs boringtun's timers (rekey, keepalive, expiry) and re-sends handshakes of newest
    /// tunnels that are not confirmed yet. Call every ~250 ms.
    pub(crate) fn tick(&mut self, now: Instant, sink: &mut dyn Sink) {
        // The limiters are shared, so no tunnel resets them (boringtun resets only its own).
        if self
            .last_limiter_reset
            .is_none_or(|at| now.duration_since(at) >= RATE_LIMIT_WINDOW)
        {
            self.last_limiter_reset = Some(now);
            for key in self.local.values() {
                key.limiter.reset_count();
            }
        }
        for tunnel in self.tunnels.values_mut() {
            let Some(peer) = self.peers.get(&tunnel.peer) else {
                continue;
            };
            if let TunnResult::WriteToNetwork(bytes) = tunnel.tunn.update_timers(&mut self.buf) {
                sink.emit(Out::Network(peer.config.endpoint, bytes));
            }
        }
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            self.initiate_newest(&name, now, sink);
        }
    }

    pub(crate) fn peer_status(&self) -> Vec<PeerStatus> {
        self.peers
            .values()
            .map(|peer| {
                let sending = send_tunnel(peer, &self.tunnels)
                    .and_then(|i| self.tunnels.get(&i))
                    .filter(|t| t.confirmed)
                    .map(Tunnel::generation);
                let mut keys: Vec<TunnelKeyStatus> = peer
                    .tunnels
                    .iter()
                    .filter_map(|i| self.tunnels.get(i))
                    .map(|t| TunnelKeyStatus {
                        local_epoch: t.local_epoch,
                        remote_epoch: t.remote_epoch,
                        confirmed: t.confirmed,
                        last_handshake: t.last_handshake,
                    })
                    .collect();
                keys.sort_by_key(|k| (k.local_epoch, k.remote_epoch));
                PeerStatus {
                    name: peer.config.name.clone(),
                    endpoint: peer.config.endpoint,
                    allowed_ips: peer.config.allowed_ips.clone(),
                    keys: peer
                        .keys
                        .iter()
                        .map(|(e, k)| (*e, k.fingerprint()))
                        .collect(),
                    sending,
                    tunnels: keys,
                    last_handshake: peer.last_handshake,
                    tx_bytes: peer.tx_bytes,
                    rx_bytes: peer.rx_bytes,
                    rx_spoofed: peer.rx_spoofed,
                }
            })
            .collect()
    }

    // --- helpers ---

    fn peer_mut(&mut self, name: &str) -> Result<&mut Peer, TunnelError> {
        self.peers.get_mut(name).ok_or_else(|| TunnelError::NoPeer {
            peer: name.to_string(),
        })
    }

    fn peer_key_epochs(&self, name: &str) -> Vec<u64> {
        self.peers
            .get(name)
            .map(|p| p.keys.keys().copied().collect())
            .unwrap_or_default()
    }

    fn key_owner(&self, key: &PublicKey) -> Option<String> {
        self.peers
            .values()
            .find(|p| p.keys.values().any(|k| k == key))
            .map(|p| p.config.name.clone())
    }

    /// The position (in name order) of the peer whose allowed IPs contain `dst` most
    /// specifically. A position, not a name, so the hot path allocates nothing.
    fn route(&self, dst: IpAddr) -> Option<usize> {
        self.peers
            .values()
            .enumerate()
            .flat_map(|(i, p)| p.config.allowed_ips.iter().map(move |net| (net, i)))
            .filter(|(net, _)| net.contains(&dst))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, i)| i)
    }

    fn allocate_index(&mut self) -> Result<u32, TunnelError> {
        for _ in 0..=MAX_INDEX {
            let index = self.next_index;
            self.next_index = if index >= MAX_INDEX { 1 } else { index + 1 };
            if !self.tunnels.contains_key(&index) {
                return Ok(index);
            }
        }
        Err(TunnelError::TooManyTunnels)
    }

    fn create_tunnel(
        &mut self,
        name: &str,
        local_epoch: u64,
        remote_epoch: u64,
    ) -> Result<(), TunnelError> {
        let index = self.allocate_index()?;
        let (Some(local), Some(peer)) = (self.local.get(&local_epoch), self.peers.get_mut(name))
        else {
            return Ok(());
        };
        let Some(remote) = peer.keys.get(&remote_epoch) else {
            return Ok(());
        };
        // A new Tunn for every key pair: boringtun asserts when an existing peer's key changes
        // (DESIGN §6), and a fresh state machine per generation is what keeps the old one alive.
        let tunn = Tunn::new(
            local.secret.clone(),
            remote.to_dalek(),
            None,
            None,
            index,
            Some(Arc::clone(&local.limiter)),
        );
        peer.tunnels.push(index);
        self.tunnels.insert(
            index,
            Tunnel {
                peer: name.to_string(),
                local_epoch,
                remote_epoch,
                tunn: Box::new(tunn),
                confirmed: false,
                last_handshake: None,
                last_init: None,
            },
        );
        Ok(())
    }

    fn drop_tunnels(&mut self, doomed: impl Fn(&Tunnel) -> bool) {
        let gone: Vec<u32> = self
            .tunnels
            .iter()
            .filter(|(_, t)| doomed(t))
            .map(|(i, _)| *i)
            .collect();
        for index in gone {
            if let Some(t) = self.tunnels.remove(&index)
                && let Some(peer) = self.peers.get_mut(&t.peer)
            {
                peer.tunnels.retain(|i| *i != index);
            }
        }
    }

    /// Sends a handshake initiation on the peer's newest tunnel unless it is confirmed or one was
    /// sent less than [`HANDSHAKE_RETRY`] ago.
    fn initiate_newest(&mut self, name: &str, now: Instant, sink: &mut dyn Sink) {
        let Some(peer) = self.peers.get(name) else {
            return;
        };
        let endpoint = peer.config.endpoint;
        let Some(index) = peer
            .tunnels
            .iter()
            .filter_map(|i| self.tunnels.get(i).map(|t| (t.generation(), *i)))
            .max()
            .map(|(_, i)| i)
        else {
            return;
        };
        let Some(tunnel) = self.tunnels.get_mut(&index) else {
            return;
        };
        if tunnel.confirmed
            || tunnel
                .last_init
                .is_some_and(|at| now.duration_since(at) < HANDSHAKE_RETRY)
        {
            return;
        }
        tunnel.last_init = Some(now);
        if let TunnResult::WriteToNetwork(bytes) =
            tunnel.tunn.format_handshake_initiation(&mut self.buf, true)
        {
            sink.emit(Out::Network(endpoint, bytes));
        }
    }

    /// The tunnel a handshake initiation is addressed to: the one whose local key it was made for
    /// (mac1, checked before any Diffie-Hellman so garbage costs a hash, not a scalar
    /// multiplication) and whose peer key is the static key inside it. Under a flood the rate
    /// limiter answers with a cookie reply instead, written to `self.buf`.
    fn handshake_sender(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        init: &boringtun::noise::HandshakeInit<'_>,
    ) -> Sender {
        for (epoch, local) in self.local.iter().rev() {
            match local
                .limiter
                .verify_packet(Some(from.ip()), datagram, &mut self.buf)
            {
                Ok(_) => {}
                Err(TunnResult::WriteToNetwork(cookie)) => return Sender::Cookie(cookie.len()),
                Err(_) => continue,
            }
            let Ok(half) = parse_handshake_anon(&local.secret, &local.public, init) else {
                return Sender::Unknown;
            };
            let sender = PublicKey::from_bytes(half.peer_static_public);
            let Some(peer) = self
                .peers
                .values()
                .find(|p| p.keys.values().any(|k| *k == sender))
            else {
                return Sender::Unknown;
            };
            let Some(remote_epoch) = peer
                .keys
                .iter()
                .find(|(_, k)| **k == sender)
                .map(|(e, _)| *e)
            else {
                return Sender::Unknown;
            };
            return peer
                .tunnels
                .iter()
                .copied()
                .find(|i| {
                    self.tunnels
                        .get(i)
                        .is_some_and(|t| t.local_epoch == *epoch && t.remote_epoch == remote_epoch)
                })
                .map_or(Sender::Unknown, Sender::Tunnel);
        }
        Sender::Unknown
    }
}

/// Who sent a handshake initiation.
enum Sender {
    /// The tunnel it belongs to.
    Tunnel(u32),
    /// Under load: a cookie reply of this length is in the buffer.
    Cookie(usize),
    /// No local key or known peer matches.
    Unknown,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Response,
    Cookie,
    Data,
}

/// The tunnel that encrypts outbound packets for `peer`: the newest confirmed one, or, before any
/// is confirmed, the newest one (boringtun queues the packet and starts a handshake).
fn send_tunnel(peer: &Peer, tunnels: &HashMap<u32, Tunnel>) -> Option<u32> {
    let candidates = || {
        peer.tunnels
            .iter()
            .filter_map(|i| tunnels.get(i).map(|t| (t, *i)))
    };
    candidates()
        .filter(|(t, _)| t.confirmed)
        .max_by_key(|(t, _)| t.generation())
        .or_else(|| candidates().max_by_key(|(t, _)| t.generation()))
        .map(|(_, i)| i)
}

/// Writes a decrypted packet to the TUN device only if its source address is one the sending
/// peer may use: WireGuard's cryptokey routing, which stops a node from forging another node's pod
/// addresses.
fn deliver(peer: &mut Peer, src: IpAddr, packet: &[u8], sink: &mut dyn Sink) {
    if peer.config.allowed_ips.iter().any(|net| net.contains(&src)) {
        peer.rx_bytes += packet.len() as u64;
        sink.emit(Out::Tunnel(packet));
    } else {
        peer.rx_spoofed += 1;
        tracing::debug!(peer = %peer.config.name, %src, "dropped packet from outside the peer's allowed ips");
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests;
