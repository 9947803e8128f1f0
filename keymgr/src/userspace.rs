//! The userspace WireGuard backend: an interface implemented inside the process, for machines
//! without the kernel module.
//!
//! ```text
//!   kernel routes pod CIDRs ──► TUN (MTU 1420) ──tx thread──► PeerTable::outbound ──► UDP socket
//!   UDP socket ──rx thread──► PeerTable::inbound ──(source ∈ peer's allowed IPs?)──► TUN
//!                 └─ every 250 ms: PeerTable::tick (boringtun timers, handshake retries)
//! ```
//!
//! Only boringtun's `noise::Tunn` state machine is used, not its device layer: that layer installs
//! signal handlers that race the host's, names its control socket after the interface (global
//! across namespaces) and asserts when a peer is modified (DESIGN §6). Here peers and keys are only
//! ever added or removed, never modified; see [`UserspaceTunnel`] for the rotation protocol.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::keys::{NodeKey, PublicKey};
use offload::VNET_HDR_LEN;
use table::{Out, PeerTable};

mod offload;
mod table;

/// The interface MTU: 1500 on the underlay minus WireGuard's 80 bytes of worst-case (IPv6)
/// overhead, as wg-quick and DESIGN §6 use.
pub const DEFAULT_MTU: u16 = 1420;

/// The default WireGuard UDP port.
pub const DEFAULT_PORT: u16 = 51820;

/// Room for one packet: the TUN MTU is 1420, but a peer may send up to a full UDP datagram's
/// worth before we notice it is wrong.
const PACKET_BUF: usize = 65_536 + 64;

/// Socket buffer size asked for: a throughput burst from a TCP sender must not overflow the
/// default (~200 KiB) while the other thread holds the lock.
const SOCKET_BUFFER: usize = 4 << 20;

/// How often the timers run.
const TICK: Duration = Duration::from_millis(250);

/// How long a blocked read waits before the loop checks for shutdown and timers.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Errors of the userspace backend. None carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The TUN device could not be created or configured.
    #[error("cannot create tun device `{ifname}`")]
    Tun {
        /// The interface name.
        ifname: String,
        /// The underlying error.
        #[source]
        source: tun::Error,
    },
    /// The UDP socket could not be bound or configured.
    #[error("cannot bind wireguard udp socket `{addr}`")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start tunnel thread `{name}`")]
    Thread {
        /// The thread name.
        name: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A peer of that name exists already (remove it first: peers are never modified).
    #[error("peer `{peer}` exists already")]
    PeerExists {
        /// The peer.
        peer: String,
    },
    /// No peer of that name.
    #[error("no peer `{peer}`")]
    NoPeer {
        /// The peer.
        peer: String,
    },
    /// The public key belongs to a peer already.
    #[error("public key is already used by peer `{peer}`")]
    KeyInUse {
        /// The peer that has it.
        peer: String,
    },
    /// The peer already has a key of that epoch.
    #[error("peer `{peer}` already has a key of epoch {epoch}")]
    PeerKeyExists {
        /// The peer.
        peer: String,
        /// The epoch.
        epoch: u64,
    },
    /// The peer has no key of that epoch.
    #[error("peer `{peer}` has no key of epoch {epoch}")]
    NoPeerKey {
        /// The peer.
        peer: String,
        /// The epoch.
        epoch: u64,
    },
    /// The tunnel already has a local key of that epoch.
    #[error("local key of epoch {epoch} exists already")]
    LocalKeyExists {
        /// The epoch.
        epoch: u64,
    },
    /// The tunnel has no local key of that epoch.
    #[error("no local key of epoch {epoch}")]
    NoLocalKey {
        /// The epoch.
        epoch: u64,
    },
    /// Removing the key would leave the tunnel or the peer without one.
    #[error("refusing to remove the last key")]
    LastKey,
    /// The peer's allowed IPs overlap another peer's.
    #[error("allowed ips of peer `{peer}` overlap `{range}` of peer `{other}`")]
    AllowedIpsOverlap {
        /// The peer being added.
        peer: String,
        /// The peer that has the range.
        other: String,
        /// The overlapping range.
        range: IpNet,
    },
    /// All 2^24 tunnel indices are in use.
    #[error("too many tunnels")]
    TooManyTunnels,
}

/// Settings of one userspace interface.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// The TUN interface name (at most 15 bytes). It is created in the network namespace of the
    /// calling thread.
    pub ifname: String,
    /// The UDP address to listen on for WireGuard (the underlay side).
    pub listen: SocketAddr,
    /// The interface MTU.
    pub mtu: u16,
    /// Use UDP segmentation offload for sends and UDP GRO for receives on the underlay socket
    /// (one syscall and one stack traversal per batch instead of per packet). On by default;
    /// sends fall back by themselves where the kernel refuses.
    pub udp_offload: bool,
    /// TUN offloads (`IFF_VNET_HDR`, `TUNSETOFFLOAD`): the kernel hands over TCP super-packets
    /// (TSO) with partial checksums, which the tunnel segments itself, and the tunnel merges
    /// received bursts of one TCP flow into one write (GRO). On by default.
    pub tun_offload: bool,
    /// Socket mark of the underlay socket (`SO_MARK`), so policy routing can keep the tunnel's
    /// own datagrams out of routes that lead into the tunnel (host-to-host encryption routes
    /// the peers' underlay addresses through it). `None`: unmarked.
    pub fwmark: Option<u32>,
}

impl TunnelConfig {
    /// A config with the default MTU.
    pub fn new(ifname: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            ifname: ifname.into(),
            listen,
            mtu: DEFAULT_MTU,
            udp_offload: true,
            tun_offload: true,
            fwmark: None,
        }
    }
}

/// A peer node as the control plane describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's stable name (the node name); keys change, the name does not.
    pub name: String,
    /// The peer's current public key.
    pub public_key: PublicKey,
    /// That key's epoch.
    pub epoch: u64,
    /// The peer's underlay address and WireGuard port.
    pub endpoint: SocketAddr,
    /// The addresses the peer may send from and that are routed to it (its pod CIDR).
    pub allowed_ips: Vec<IpNet>,
}

/// The state of one (local key, peer key) tunnel of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelKeyStatus {
    /// Local key epoch.
    pub local_epoch: u64,
    /// Peer key epoch.
    pub remote_epoch: u64,
    /// Whether a session exists that the peer has proven it shares.
    pub confirmed: bool,
    /// The last completed handshake on this tunnel.
    pub last_handshake: Option<SystemTime>,
}

/// Status of one peer, for `palisade encrypt status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer name.
    pub name: String,
    /// Its endpoint.
    pub endpoint: SocketAddr,
    /// Its allowed IPs.
    pub allowed_ips: Vec<IpNet>,
    /// Its known keys: (epoch, public-key fingerprint).
    pub keys: Vec<(u64, String)>,
    /// The (local epoch, peer epoch) outbound packets use, once a session is confirmed.
    pub sending: Option<(u64, u64)>,
    /// Every tunnel of the peer.
    pub tunnels: Vec<TunnelKeyStatus>,
    /// The last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Plaintext bytes sent to the peer.
    pub tx_bytes: u64,
    /// Plaintext bytes received from the peer and delivered.
    pub rx_bytes: u64,
    /// Packets from the peer dropped because their source was outside its allowed IPs.
    pub rx_spoofed: u64,
}

/// Status of the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    /// Always `"userspace"`; the kernel backend will report `"kernel"`.
    pub backend: &'static str,
    /// The interface name.
    pub interface: String,
    /// The UDP address it listens on.
    pub listen: SocketAddr,
    /// Epochs of the local keys in use, oldest first.
    pub local_epochs: Vec<u64>,
    /// Outbound packets whose destination no peer's allowed IPs contain.
    pub drops_no_route: u64,
    /// Datagrams from no known peer or key (a wrong-key sender lands here).
    pub drops_unknown_sender: u64,
    /// Datagrams that failed to parse or authenticate.
    pub drops_invalid: u64,
    /// The peers.
    pub peers: Vec<PeerStatus>,
}

struct Shared {
    table: Mutex<PeerTable>,
    udp: UdpSocket,
    tun: tun::Device,
    stop: AtomicBool,
    /// Whether UDP GSO sends work here (cleared on the first refusal).
    gso: AtomicBool,
    /// Whether TUN reads and writes carry a `virtio_net_hdr`.
    vnet: bool,
}

impl Shared {
    /// Locks the table. A panic in another thread while it held the lock leaves boringtun state
    /// that is still memory-safe; continuing beats taking the node's encryption down.
    fn table(&self) -> MutexGuard<'_, PeerTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, out: Out<'_>) {
        let result = match out {
            Out::Network(addr, bytes) => self.udp.send_to(bytes, addr).map(drop),
            Out::Tunnel(bytes) => self.tun.send(bytes).map(drop),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "tunnel write failed");
        }
    }
}

/// Collects the table's output while the lock is held, so the write syscalls happen after it is
/// released and the other thread is not kept waiting on them. Buffers are reused.
struct Outbox {
    items: Vec<(Option<SocketAddr>, Vec<u8>)>,
    used: usize,
    /// Prefix packets for the TUN device with a `virtio_net_hdr`.
    vnet: bool,
    /// Where bursts of one TCP flow are merged into one TUN write.
    merged: Vec<u8>,
}

impl table::Sink for Outbox {
    fn emit(&mut self, out: Out<'_>) {
        let (dst, bytes) = match out {
            Out::Network(addr, bytes) => (Some(addr), bytes),
            Out::Tunnel(bytes) => (None, bytes),
        };
        if self.used == self.items.len() {
            self.items
                .push((dst, Vec::with_capacity(bytes.len() + VNET_HDR_LEN)));
        }
        let slot = &mut self.items[self.used];
        slot.0 = dst;
        slot.1.clear();
        if dst.is_none() && self.vnet {
            slot.1.extend_from_slice(&offload::WRITE_HDR);
        }
        slot.1.extend_from_slice(bytes);
        self.used += 1;
    }
}

impl Outbox {
    fn new(shared: &Shared) -> Self {
        Self {
            items: Vec::new(),
            used: 0,
            vnet: shared.vnet,
            merged: Vec::new(),
        }
    }

    /// Writes everything collected; call without the table lock.
    fn flush(&mut self, shared: &Shared) {
        let items = &self.items[..self.used];
        let mut i = 0;
        while i < items.len() {
            match items[i].0 {
                None => {
                    let run = if self.vnet {
                        merge_tcp(&items[i..], &mut self.merged)
                    } else {
                        0
                    };
                    if run > 1 {
                        shared.emit(Out::Tunnel(&self.merged));
                        i += run;
                    } else {
                        shared.emit(Out::Tunnel(&items[i].1));
                        i += 1;
                    }
                }
                Some(addr) => {
                    let run = gso_run(&items[i..], addr);
                    if run > 1 && shared.gso.load(Ordering::Relaxed) {
                        send_gso(shared, addr, &items[i..i + run]);
                    } else {
                        for (_, bytes) in &items[i..i + run] {
                            shared.emit(Out::Network(addr, bytes));
                        }
                    }
                    i += run;
                }
            }
        }
        self.used = 0;
    }
}

/// GRO for the TUN write: merges the burst of one TCP flow at the head of `items` (packets for
/// the TUN device, each behind a `virtio_net_hdr`) into `out`, so the kernel's stack sees one
/// packet instead of dozens. Returns how many were merged (0 or 1: nothing was).
fn merge_tcp(items: &[(Option<SocketAddr>, Vec<u8>)], out: &mut Vec<u8>) -> usize {
    let packets = items
        .iter()
        .take_while(|(dst, b)| dst.is_none() && b.len() > VNET_HDR_LEN)
        .map(|(_, b)| &b[VNET_HDR_LEN..]);
    let run = offload::tcp_run(packets.clone());
    if run < 2 {
        return run;
    }
    let burst: Vec<&[u8]> = packets.take(run).collect();
    match offload::coalesce(&burst, out) {
        Some(()) => run,
        None => 0,
    }
}

/// Most segments the kernel accepts in one UDP GSO send (`UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;

/// Length of the run of datagrams at the head of `items` that one UDP GSO send can carry: same
/// destination, all the size of the first except possibly a shorter last one, under 64 KiB.
fn gso_run(items: &[(Option<SocketAddr>, Vec<u8>)], addr: SocketAddr) -> usize {
    let size = items[0].1.len();
    let mut total = 0;
    let mut run = 0;
    for (dst, bytes) in items.iter().take(GSO_MAX_SEGMENTS) {
        if *dst != Some(addr) || bytes.len() > size || total + bytes.len() > 65_000 {
            break;
        }
        total += bytes.len();
        run += 1;
        if bytes.len() < size {
            break;
        }
    }
    run.max(1)
}

/// Sends a run of datagrams with one `sendmsg` and UDP GSO (the kernel splits it at the segment
/// size, far down the stack): one UDP/IP traversal instead of one per packet. If the kernel or
/// the route refuses GSO, it is switched off for good and the run goes out one by one.
fn send_gso(shared: &Shared, addr: SocketAddr, run: &[(Option<SocketAddr>, Vec<u8>)]) {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
    let segment = u16::try_from(run[0].1.len()).unwrap_or(u16::MAX);
    let iov: Vec<std::io::IoSlice<'_>> =
        run.iter().map(|(_, b)| std::io::IoSlice::new(b)).collect();
    let dst = SockaddrStorage::from(addr);
    let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
    match sendmsg(
        shared.udp.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::empty(),
        Some(&dst),
    ) {
        Ok(_) => {}
        Err(e) => {
            if matches!(
                e,
                nix::errno::Errno::EIO | nix::errno::Errno::EINVAL | nix::errno::Errno::EOPNOTSUPP
            ) {
                tracing::info!(error = %e, "udp gso unavailable; sending datagrams one by one");
                shared.gso.store(false, Ordering::Relaxed);
            }
            for (_, bytes) in run {
                shared.emit(Out::Network(addr, bytes));
            }
        }
    }
}

// === impl UserspaceTunnel ===

/// A running userspace WireGuard interface.
///
/// Rotation protocol (make-before-break; details in `keymgr/README.md`):
/// 1. the node rotates: [`KeyStore::rotate`](crate::KeyStore::rotate), then
///    [`add_local_key`](Self::add_local_key) with the new key, then publishes its public key;
/// 2. every peer's agent calls [`add_peer_key`](Self::add_peer_key) with it; a handshake on the
///    new pair completes and both sides switch their outbound packets to it, while the old pair
///    keeps accepting what is in flight;
/// 3. after the grace period: [`remove_local_key`](Self::remove_local_key) on the node,
///    [`remove_peer_key`](Self::remove_peer_key) on the peers,
///    [`KeyStore::destroy_expired`](crate::KeyStore::destroy_expired).
///
/// Dropping it stops the threads and deletes the interface.
pub struct UserspaceTunnel {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    ifname: String,
    listen: SocketAddr,
}

impl UserspaceTunnel {
    /// Creates the TUN interface (up, with the configured MTU) in the calling thread's network
    /// namespace, binds the UDP socket and starts the two worker threads. The caller adds routes
    /// for the peers' allowed IPs to the interface.
    pub fn start(config: TunnelConfig, key: &NodeKey) -> Result<Self, TunnelError> {
        let mut tun_config = tun::Configuration::default();
        tun_config.tun_name(&config.ifname).mtu(config.mtu).up();
        if config.tun_offload {
            tun_config.platform_config(|p| {
                p.vnet_hdr(true);
            });
        }
        let tun = tun::create(&tun_config).map_err(|source| TunnelError::Tun {
            ifname: config.ifname.clone(),
            source,
        })?;
        if config.tun_offload
            && let Err(e) = set_tun_offload(&tun)
        {
            // Still framed with virtio headers, just without TSO: correct, only slower.
            tracing::info!(interface = %config.ifname, error = %e, "tun offloads unavailable");
        }
        let socket_err = |source| TunnelError::Socket {
            addr: config.listen,
            source,
        };
        let udp = UdpSocket::bind(config.listen).map_err(socket_err)?;
        if let Some(mark) = config.fwmark {
            socket2::SockRef::from(&udp)
                .set_mark(mark)
                .map_err(socket_err)?;
        }
        // The loops wait in `poll`, then drain a batch: the TUN descriptor is non-blocking, the
        // socket is read with MSG_DONTWAIT but stays blocking for sends, so a full send buffer
        // slows the sender down instead of dropping datagrams.
        tun.set_nonblock().map_err(|e| TunnelError::Tun {
            ifname: config.ifname.clone(),
            source: e.into(),
        })?;
        set_socket_buffers(&udp, config.udp_offload);
        let listen = udp.local_addr().map_err(socket_err)?;
        let shared = Arc::new(Shared {
            table: Mutex::new(PeerTable::new(key.epoch(), key.secret().clone())),
            udp,
            tun,
            stop: AtomicBool::new(false),
            gso: AtomicBool::new(config.udp_offload),
            vnet: config.tun_offload,
        });
        let mut tunnel = Self {
            shared,
            threads: Vec::new(),
            ifname: config.ifname.clone(),
            listen,
        };
        let tx = Arc::clone(&tunnel.shared);
        tunnel
            .threads
            .push(spawn(format!("wg-tx-{}", config.ifname), move || {
                tx_loop(&tx)
            })?);
        let rx = Arc::clone(&tunnel.shared);
        tunnel
            .threads
            .push(spawn(format!("wg-rx-{}", config.ifname), move || {
                rx_loop(&rx)
            })?);
        tracing::info!(interface = %config.ifname, %listen, epoch = key.epoch(), public = %key.public_key().fingerprint(), "userspace wireguard up");
        Ok(tunnel)
    }

    /// The interface name.
    pub fn interface(&self) -> &str {
        &self.ifname
    }

    /// The UDP address the tunnel listens on (with the port the OS chose if it was 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Adds a peer. Errors if the name or key is known or its allowed IPs overlap another peer's.
    /// To change a peer's endpoint or allowed IPs, remove it and add it again.
    pub fn add_peer(&self, peer: PeerConfig) -> Result<(), TunnelError> {
        let mut outbox = Outbox::new(&self.shared);
        let result = self.shared.table().add_peer(peer, &mut outbox);
        outbox.flush(&self.shared);
        result
    }

    /// Removes a peer and its tunnels. Returns whether it existed.
    pub fn remove_peer(&self, name: &str) -> bool {
        self.shared.table().remove_peer(name)
    }

    /// Adds another key of a peer (after the peer rotated); outbound traffic moves to it once a
    /// handshake with it completes, and the older keys keep working until removed.
    pub fn add_peer_key(&self, name: &str, key: PublicKey, epoch: u64) -> Result<(), TunnelError> {
        let mut outbox = Outbox::new(&self.shared);
        let result = self
            .shared
            .table()
            .add_peer_key(name, key, epoch, &mut outbox);
        outbox.flush(&self.shared);
        result
    }

    /// Removes one key of a peer (after the grace period). The last key cannot be removed.
    pub fn remove_peer_key(&self, name: &str, epoch: u64) -> Result<(), TunnelError> {
        self.shared.table().remove_peer_key(name, epoch)
    }

    /// Adds a local key (after [`KeyStore::rotate`](crate::KeyStore::rotate)); each peer gets a
    /// handshake with it, which completes once the peer knows the new public key.
    pub fn add_local_key(&self, key: &NodeKey) -> Result<(), TunnelError> {
        let mut outbox = Outbox::new(&self.shared);
        let result =
            self.shared
                .table()
                .add_local_key(key.epoch(), key.secret().clone(), &mut outbox);
        outbox.flush(&self.shared);
        result
    }

    /// Removes a local key and its tunnels (after the grace period). The last key cannot be
    /// removed.
    pub fn remove_local_key(&self, epoch: u64) -> Result<(), TunnelError> {
        self.shared.table().remove_local_key(epoch)
    }

    /// The interface's status.
    pub fn status(&self) -> TunnelStatus {
        let table = self.shared.table();
        TunnelStatus {
            backend: "userspace",
            interface: self.ifname.clone(),
            listen: self.listen,
            local_epochs: table.local_epochs(),
            drops_no_route: table.drops.no_route,
            drops_unknown_sender: table.drops.unknown_sender,
            drops_invalid: table.drops.invalid,
            peers: table.peer_status(),
        }
    }

    /// The status of one peer.
    pub fn peer_status(&self, name: &str) -> Option<PeerStatus> {
        self.status().peers.into_iter().find(|p| p.name == name)
    }
}

impl Drop for UserspaceTunnel {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, TunnelError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| TunnelError::Thread { name, source })
}

/// Packets handled per lock acquisition: enough to amortise the lock and wake-ups under load,
/// few enough that the other direction is not starved.
const BATCH: usize = 32;

/// TUN → peers. `poll` with a timeout so the stop flag is seen; then up to [`BATCH`] packets are
/// read (the descriptor is non-blocking) and encrypted under one lock, and sent after it.
fn tx_loop(shared: &Shared) {
    let mut packets = vec![[0u8; PACKET_BUF]; BATCH];
    let mut lens = [0usize; BATCH];
    let mut scratch = Vec::with_capacity(PACKET_BUF);
    let mut outbox = Outbox::new(shared);
    while !shared.stop.load(Ordering::Relaxed) {
        match wait_readable(borrow_tun_fd(&shared.tun), POLL_INTERVAL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "poll on tun failed");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        }
        let mut n = 0;
        while n < BATCH {
            match shared.tun.recv(&mut packets[n]) {
                Ok(len) => {
                    lens[n] = len;
                    n += 1;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tun read failed");
                    std::thread::sleep(POLL_INTERVAL);
                    break;
                }
            }
        }
        if n == 0 {
            continue;
        }
        {
            let mut table = shared.table();
            for (packet, len) in packets.iter_mut().zip(&lens).take(n) {
                let read = &mut packet[..*len];
                if shared.vnet {
                    let split = offload::split(read, &mut scratch, |segment| {
                        table.outbound(segment, &mut outbox)
                    });
                    if let Err(e) = split {
                        tracing::debug!(error = ?e, "dropped a tun read that cannot be split");
                    }
                } else {
                    table.outbound(read, &mut outbox);
                }
            }
        }
        outbox.flush(shared);
    }
}

/// Underlay → TUN, plus the timers; batched like [`tx_loop`]. With UDP GRO on, one receive may
/// carry several datagrams of the segment size the kernel reports; they are split here.
fn rx_loop(shared: &Shared) {
    let mut datagrams = vec![[0u8; PACKET_BUF]; BATCH];
    let mut meta = [(0usize, 0usize, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
    let mut outbox = Outbox::new(shared);
    let mut last_tick = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut n = 0;
        if matches!(wait_readable(shared.udp.as_fd(), POLL_INTERVAL), Ok(true)) {
            while n < BATCH {
                match recv_gro(&shared.udp, &mut datagrams[n]) {
                    Ok(Some(received)) => {
                        meta[n] = received;
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // ICMP errors from a peer that is down surface here (ECONNREFUSED).
                        tracing::debug!(error = %e, "udp receive failed");
                        break;
                    }
                }
            }
        }
        let now = Instant::now();
        let tick = now.duration_since(last_tick) >= TICK;
        if n > 0 || tick {
            let mut table = shared.table();
            for (buf, (len, segment, from)) in datagrams.iter().zip(&meta).take(n) {
                for datagram in buf[..*len].chunks(*segment) {
                    table.inbound(*from, datagram, &mut outbox);
                }
            }
            if tick {
                last_tick = now;
                table.tick(now, &mut outbox);
            }
        }
        outbox.flush(shared);
    }
}

/// One non-blocking receive: (length, segment size, sender), or `None` when nothing is queued.
/// The segment size is the length itself unless GRO coalesced several datagrams.
fn recv_gro(
    udp: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<Option<(usize, usize, SocketAddr)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(i32);
    let msg = match recvmsg::<SockaddrStorage>(
        udp.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(msg) => msg,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = msg.bytes;
    let mut segment = len;
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(size) = cmsg {
                segment = usize::try_from(size).unwrap_or(len);
            }
        }
    }
    let from = msg.address.as_ref().and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::V4((*v4).into()))
            .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
    });
    match from {
        Some(from) if segment > 0 => Ok(Some((len, segment, from))),
        _ => Ok(None),
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> std::io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let ready = poll(&mut fds, PollTimeout::from(millis))?;
    Ok(ready > 0)
}

/// Asks the kernel for checksum offload and TSO on the TUN device, so it hands over TCP
/// super-packets instead of MTU-sized ones (the tunnel splits them, see `offload.rs`).
#[allow(unsafe_code)]
fn set_tun_offload(tun: &tun::Device) -> std::io::Result<()> {
    // From <linux/if_tun.h>: TUNSETOFFLOAD = _IOW('T', 208, unsigned int).
    const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
    const TUN_F_CSUM: libc::c_uint = 0x01;
    const TUN_F_TSO4: libc::c_uint = 0x02;
    const TUN_F_TSO6: libc::c_uint = 0x04;
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int of flags); the
    // descriptor is the TUN device's and stays open for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            TUNSETOFFLOAD,
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The tun crate exposes only `AsRawFd`, and nix's `poll` wants a `BorrowedFd`.
#[allow(unsafe_code)]
fn borrow_tun_fd(tun: &tun::Device) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `tun`, which outlives the returned borrow (same
    // lifetime) and closes it only when dropped.
    unsafe { BorrowedFd::borrow_raw(tun.as_raw_fd()) }
}

/// Enlarges the UDP socket's buffers (best effort: the kernel caps them at `rmem_max`/`wmem_max`)
/// and turns on UDP GRO if asked.
fn set_socket_buffers(udp: &UdpSocket, gro: bool) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = setsockopt(udp, sockopt::RcvBuf, &SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot set SO_RCVBUF");
    }
    if let Err(e) = setsockopt(udp, sockopt::SndBuf, &SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot set SO_SNDBUF");
    }
    // Coalesced receives (UDP GRO): the kernel hands over a train of same-size datagrams at once.
    if gro && let Err(e) = setsockopt(udp, sockopt::UdpGroSegment, &true) {
        tracing::debug!(error = %e, "cannot enable UDP GRO");
    }
}
