//! Node-to-node encryption: the node's WireGuard keys (keymgr's `KeyStore`, born here, never sent
//! anywhere), the tunnel backend, the peers taken from the control plane's node records, and the
//! routes that send other nodes' pod CIDRs through the tunnel.
//!
//! ```text
//!   KeyStore (state/wireguard, 0600) ── current public key + epoch ──▶ node registration
//!   ClusterView nodes ── PeerConfig per other node (key, underlay:port, pod CIDR) ──▶ Reconciler
//!        ──▶ AddPeer / AddPeerKey / RemovePeer / RemovePeerKey ──▶ tunnel
//!        ──▶ `ip route replace <pod CIDR> dev <interface>` per peer (removed with the peer)
//!        ──▶ with `--encrypt-node`: `ip route replace <peer address>/32 dev <interface> src
//!            <underlay> table 2405` per peer, and `ip rule not fwmark 0x8000000/0x8000000
//!            lookup 2405`: the tunnel's own socket carries the mark, everything else from
//!            this host to a peer node goes through the tunnel
//! ```
//!
//! Rotation is make-before-break (keymgr/README.md): the new key joins the tunnel beside the old
//! one, is published, and the old one is wiped only after the grace period. Rotations happen on a
//! schedule (the current key's age), and on demand (`palisade encrypt rotate`).
//!
//! Until a peer's routes exist its pods are unreachable from here: traffic to another node's pods
//! never leaves in clear text (no fallback route).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net};
use palisade_api::controlplane::NodeRecord;
use palisade_keymgr::{
    KeyStore, PeerConfig, PublicKey, Reconciler, TunnelConfig, TunnelStatus, UserspaceTunnel,
};

/// The WireGuard port every node listens on.
pub const DEFAULT_PORT: u16 = 51820;
/// The tunnel interface.
pub const DEFAULT_INTERFACE: &str = "palisade_wg0";
/// How long a rotated-out key (ours or a peer's) keeps decrypting.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);
/// How often the node rotates its key.
pub const DEFAULT_ROTATION: Duration = Duration::from_secs(24 * 3600);
/// The routing table of the peers' underlay addresses (`--encrypt-node`).
pub const NODE_ROUTE_TABLE: u32 = 2405;
/// The priority of the rule that sends unmarked traffic to [`NODE_ROUTE_TABLE`]: after the L7
/// proxy's (90), before `main` (32766).
const NODE_RULE_PREF: u32 = 95;
/// The mark of the tunnel's underlay socket (a bit no other rule or mark uses; the proxies use
/// 0x2000000 and 0x4000000): its datagrams skip [`NODE_ROUTE_TABLE`] and leave on the underlay.
pub const TUNNEL_MARK: u32 = 0x0800_0000;
/// Where the kernel shows a loaded WireGuard module.
const KERNEL_MODULE: &str = "/sys/module/wireguard";

/// Which WireGuard implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The kernel's where its module is loaded, else userspace.
    Auto,
    /// The kernel module (through defguard_wireguard_rs).
    Kernel,
    /// WireGuard inside the agent (boringtun's state machine over TUN).
    Userspace,
}

/// Encryption settings.
#[derive(Debug, Clone)]
pub struct EncryptionConfig {
    /// Backend selection.
    pub backend: BackendChoice,
    /// Tunnel interface name.
    pub interface: String,
    /// UDP port on the underlay.
    pub port: u16,
    /// The key directory (mode 0700, keys 0600).
    pub key_dir: PathBuf,
    /// Scheduled rotation interval.
    pub rotation_interval: Duration,
    /// Grace period of superseded keys.
    pub grace: Duration,
    /// Host-to-host traffic too (Cilium's node encryption): the peers' underlay addresses are
    /// routed through the tunnel and accepted from it. Every node must agree: a node that
    /// does not encrypt its host traffic drops what arrives tunnelled from a peer's address.
    pub encrypt_node: bool,
}

impl EncryptionConfig {
    /// Defaults, with keys under `state_dir/wireguard`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            backend: BackendChoice::Auto,
            interface: DEFAULT_INTERFACE.into(),
            port: DEFAULT_PORT,
            key_dir: state_dir.join("wireguard"),
            rotation_interval: DEFAULT_ROTATION,
            grace: DEFAULT_GRACE,
            encrypt_node: false,
        }
    }
}

/// Why encryption could not start or a change could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// The key store.
    #[error("wireguard keys in `{dir}`")]
    Keys {
        /// Key directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: palisade_keymgr::KeyError,
    },
    /// The tunnel.
    #[error("wireguard interface `{interface}`")]
    Tunnel {
        /// Interface.
        interface: String,
        /// Cause.
        #[source]
        source: palisade_keymgr::TunnelError,
    },
    /// The requested backend cannot run here.
    #[error("wireguard backend `{backend}`: {reason}")]
    Backend {
        /// Backend asked for.
        backend: &'static str,
        /// Why not.
        reason: String,
    },
    /// A route could not be changed.
    #[error("route {cidr} via `{interface}`: {detail}")]
    Route {
        /// Destination.
        cidr: Ipv4Net,
        /// Interface.
        interface: String,
        /// `ip`'s complaint.
        detail: String,
    },
    /// Host-to-host routing (`--encrypt-node`) could not be set up.
    #[error("host-to-host encryption: {0}")]
    NodeRouting(String),
}

/// The node's encryption: keys, tunnel, peers, routes.
pub struct Encryption {
    config: EncryptionConfig,
    keys: KeyStore,
    tunnel: UserspaceTunnel,
    peers: Reconciler,
    /// Peer name → its pod CIDR routed into the tunnel.
    routes: BTreeMap<String, Ipv4Net>,
    /// Peer name → its underlay address routed into the tunnel (`encrypt_node`).
    node_routes: BTreeMap<String, IpAddr>,
    /// This node's underlay address (the source of host traffic into the tunnel).
    underlay: IpAddr,
    /// Why this backend (for status).
    backend_reason: String,
    /// Peers the last update skipped, with why (status shows them).
    skipped: BTreeMap<String, String>,
    rotations: u64,
}

impl Encryption {
    /// Opens (or creates) the node's key and starts the tunnel on `underlay:port` in the calling
    /// thread's network namespace. Keys still in their grace period are installed too, so peers
    /// that have not switched yet keep working across a restart.
    pub fn start(config: EncryptionConfig, underlay: IpAddr) -> Result<Self, EncryptionError> {
        let kernel_loaded = Path::new(KERNEL_MODULE).exists();
        let backend_reason = match (config.backend, kernel_loaded) {
            (BackendChoice::Kernel, _) => {
                return Err(EncryptionError::Backend {
                    backend: "kernel",
                    reason: format!(
                        "not built into this agent yet (module {}); use `--wireguard-backend userspace` or `auto`",
                        if kernel_loaded {
                            "loaded"
                        } else {
                            "not loaded"
                        }
                    ),
                });
            }
            (BackendChoice::Userspace, _) => "chosen with --wireguard-backend userspace".to_owned(),
            (BackendChoice::Auto, false) => format!(
                "auto: the kernel WireGuard module is not loaded ({KERNEL_MODULE} is absent)"
            ),
            (BackendChoice::Auto, true) => {
                "auto: the kernel module is loaded but the kernel backend is not built yet"
                    .to_owned()
            }
        };
        let keys_err = |source| EncryptionError::Keys {
            dir: config.key_dir.clone(),
            source,
        };
        let keys = KeyStore::open(&config.key_dir)
            .map_err(keys_err)?
            .with_grace(config.grace);
        let tunnel_err = |source| EncryptionError::Tunnel {
            interface: config.interface.clone(),
            source,
        };
        let mut tunnel_config = TunnelConfig::new(
            config.interface.clone(),
            SocketAddr::new(underlay, config.port),
        );
        if config.encrypt_node {
            tunnel_config.fwmark = Some(TUNNEL_MARK);
            node_rule()?;
        }
        let tunnel = UserspaceTunnel::start(tunnel_config, keys.current()).map_err(tunnel_err)?;
        let current = keys.current().epoch();
        for old in keys.keys().filter(|k| k.epoch() != current) {
            tunnel.add_local_key(old).map_err(tunnel_err)?;
        }
        Ok(Self {
            peers: Reconciler::new(config.grace),
            config,
            keys,
            tunnel,
            routes: BTreeMap::new(),
            node_routes: BTreeMap::new(),
            underlay,
            backend_reason,
            skipped: BTreeMap::new(),
            rotations: 0,
        })
    }

    /// The public key to publish and its epoch.
    pub fn published_key(&self) -> (String, u64) {
        let k = self.keys.current();
        (k.public_key().to_base64(), k.epoch())
    }

    /// Brings peers and routes in line with the nodes the control plane knows (every node but
    /// `me` that has a pod CIDR and a real key). A node that left loses its peer and route.
    pub fn set_nodes<'a>(
        &mut self,
        nodes: impl Iterator<Item = &'a NodeRecord>,
        me: &str,
    ) -> Result<(), EncryptionError> {
        let (desired, skipped) =
            desired_peers(nodes, me, self.config.port, self.config.encrypt_node);
        self.skipped = skipped;
        let commands = self.peers.update(&desired, Instant::now());
        Reconciler::apply(&commands, &self.tunnel).map_err(|source| EncryptionError::Tunnel {
            interface: self.config.interface.clone(),
            source,
        })?;
        let want: BTreeMap<String, Ipv4Net> = desired
            .iter()
            .filter_map(|p| match p.allowed_ips.first() {
                Some(IpNet::V4(net)) => Some((p.name.clone(), *net)),
                _ => None,
            })
            .collect();
        let gone: Vec<(String, Ipv4Net)> = self
            .routes
            .iter()
            .filter(|(name, cidr)| want.get(*name) != Some(cidr))
            .map(|(n, c)| (n.clone(), *c))
            .collect();
        for (name, cidr) in gone {
            // Best effort: the peer (and so its allowed IPs) is gone already, so a route left
            // behind only black-holes; report and forget it.
            if let Err(e) = self.route("del", cidr) {
                eprintln!("palisade agent: {e}");
            }
            self.routes.remove(&name);
        }
        for (name, cidr) in want {
            if self.routes.get(&name) != Some(&cidr) {
                self.route("replace", cidr)?;
                self.routes.insert(name, cidr);
            }
        }
        if self.config.encrypt_node {
            let want: BTreeMap<String, IpAddr> = desired
                .iter()
                .map(|p| (p.name.clone(), p.endpoint.ip()))
                .collect();
            let gone: Vec<(String, IpAddr)> = self
                .node_routes
                .iter()
                .filter(|(name, ip)| want.get(*name) != Some(ip))
                .map(|(n, ip)| (n.clone(), *ip))
                .collect();
            for (name, ip) in gone {
                if let Err(e) = self.node_route("del", ip) {
                    eprintln!("palisade agent: {e}");
                }
                self.node_routes.remove(&name);
            }
            for (name, ip) in want {
                if self.node_routes.get(&name) != Some(&ip) {
                    self.node_route("replace", ip)?;
                    self.node_routes.insert(name, ip);
                }
            }
        }
        Ok(())
    }

    /// Routes (or, `del`, unroutes) a peer's underlay address through the tunnel in
    /// [`NODE_ROUTE_TABLE`], from this node's underlay address.
    fn node_route(&self, op: &str, peer: IpAddr) -> Result<(), EncryptionError> {
        let dst = IpNet::from(peer).to_string();
        let table = NODE_ROUTE_TABLE.to_string();
        let src = self.underlay.to_string();
        let mut args = vec!["route", op, &dst, "dev", &self.config.interface];
        if op != "del" {
            args.extend(["src", &src]);
        }
        args.extend(["table", &table]);
        ip(&args).map_err(|detail| {
            EncryptionError::NodeRouting(format!(
                "route {dst} via `{}`: {detail}",
                self.config.interface
            ))
        })
    }

    /// Time-driven work: the scheduled rotation (returns the new key to publish), wiping our
    /// superseded keys after their grace period, and dropping peers' superseded keys.
    pub fn tick(&mut self) -> Result<Option<(String, u64)>, EncryptionError> {
        let mut rotated = None;
        let age = SystemTime::now()
            .duration_since(self.keys.current().created())
            .unwrap_or_default();
        if age >= self.config.rotation_interval {
            rotated = Some(self.rotate()?);
        }
        let destroyed = self
            .keys
            .destroy_expired(SystemTime::now())
            .map_err(|source| EncryptionError::Keys {
                dir: self.config.key_dir.clone(),
                source,
            })?;
        for epoch in destroyed {
            // NoLocalKey when it was never installed (destroyed right after a restart): fine.
            let _ = self.tunnel.remove_local_key(epoch);
        }
        let commands = self.peers.expire(Instant::now());
        Reconciler::apply(&commands, &self.tunnel).map_err(|source| EncryptionError::Tunnel {
            interface: self.config.interface.clone(),
            source,
        })?;
        Ok(rotated)
    }

    /// Rotates now: a new key beside the old one (make-before-break). Returns what to publish.
    pub fn rotate(&mut self) -> Result<(String, u64), EncryptionError> {
        let new = self
            .keys
            .rotate()
            .map_err(|source| EncryptionError::Keys {
                dir: self.config.key_dir.clone(),
                source,
            })?
            .clone();
        self.tunnel
            .add_local_key(&new)
            .map_err(|source| EncryptionError::Tunnel {
                interface: self.config.interface.clone(),
                source,
            })?;
        self.rotations += 1;
        eprintln!(
            "palisade agent: wireguard key rotated to epoch {} ({})",
            new.epoch(),
            new.public_key().fingerprint()
        );
        Ok((new.public_key().to_base64(), new.epoch()))
    }

    /// `palisade encrypt status` for this node (JSON, camelCase like the rest of the status).
    pub fn status(&self) -> serde_json::Value {
        let t: TunnelStatus = self.tunnel.status();
        let current = self.keys.current();
        let next_rotation = current
            .created()
            .checked_add(self.config.rotation_interval)
            .map(ms);
        serde_json::json!({
            "enabled": true,
            "type": "wireguard",
            "backend": t.backend,
            "backendReason": self.backend_reason,
            "interface": t.interface,
            "listen": t.listen.to_string(),
            "publicKey": current.public_key().to_base64(),
            "fingerprint": current.public_key().fingerprint(),
            "epoch": current.epoch(),
            "keyCreatedMs": ms(current.created()),
            "nextRotationMs": next_rotation,
            "rotationIntervalSeconds": self.config.rotation_interval.as_secs(),
            "graceSeconds": self.config.grace.as_secs(),
            "nodeEncryption": self.config.encrypt_node,
            "rotations": self.rotations,
            "localEpochs": t.local_epochs,
            "dropsNoRoute": t.drops_no_route,
            "dropsUnknownSender": t.drops_unknown_sender,
            "dropsInvalid": t.drops_invalid,
            "skippedPeers": self.skipped,
            "peers": t.peers.iter().map(|p| serde_json::json!({
                "name": p.name,
                "endpoint": p.endpoint.to_string(),
                "allowedIps": p.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "keys": p.keys.iter().map(|(epoch, fp)| serde_json::json!({"epoch": epoch, "fingerprint": fp})).collect::<Vec<_>>(),
                "sending": p.sending.map(|(l, r)| serde_json::json!({"localEpoch": l, "peerEpoch": r})),
                "lastHandshakeMs": p.last_handshake.map(ms),
                "txBytes": p.tx_bytes,
                "rxBytes": p.rx_bytes,
                "rxSpoofed": p.rx_spoofed,
            })).collect::<Vec<_>>(),
        })
    }

    fn route(&self, op: &str, cidr: Ipv4Net) -> Result<(), EncryptionError> {
        let cidr_s = cidr.to_string();
        let mut args = vec!["route", op, &cidr_s, "dev", &self.config.interface];
        if op == "del" {
            args.truncate(3);
        }
        let out = Command::new("ip").args(&args).output();
        let detail = match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => format!("running `ip`: {e}"),
        };
        Err(EncryptionError::Route {
            cidr,
            interface: self.config.interface.clone(),
            detail,
        })
    }
}

/// The peers the node records describe: every other node with a pod CIDR and a usable key.
/// Nodes without one (epoch 0: an agent that runs without encryption) are skipped, with why.
fn desired_peers<'a>(
    nodes: impl Iterator<Item = &'a NodeRecord>,
    me: &str,
    port: u16,
    encrypt_node: bool,
) -> (Vec<PeerConfig>, BTreeMap<String, String>) {
    let mut peers = Vec::new();
    let mut skipped = BTreeMap::new();
    let mut cidrs = BTreeSet::new();
    for n in nodes.filter(|n| n.name != me) {
        if n.wireguard_epoch == 0 {
            skipped.insert(n.name.clone(), "no WireGuard key published".to_owned());
            continue;
        }
        let key = match PublicKey::from_base64(&n.wireguard_public_key) {
            Ok(k) => k,
            Err(e) => {
                skipped.insert(n.name.clone(), format!("`wireguard_public_key`: {e}"));
                continue;
            }
        };
        if !cidrs.insert(n.pod_cidr) {
            skipped.insert(
                n.name.clone(),
                format!("pod CIDR {} claimed by another node", n.pod_cidr),
            );
            continue;
        }
        peers.push(PeerConfig {
            name: n.name.clone(),
            public_key: key,
            epoch: n.wireguard_epoch,
            endpoint: SocketAddr::new(n.address, port),
            // The pod CIDR first: its route follows `allowed_ips[0]`.
            allowed_ips: if encrypt_node {
                vec![IpNet::V4(n.pod_cidr), IpNet::from(n.address)]
            } else {
                vec![IpNet::V4(n.pod_cidr)]
            },
        });
    }
    (peers, skipped)
}

/// Sends every packet without the tunnel's mark to [`NODE_ROUTE_TABLE`] first (replacing the
/// rule a previous run left), so host traffic to a peer node takes the tunnel once its route
/// exists, while the tunnel's own marked datagrams leave on the underlay.
fn node_rule() -> Result<(), EncryptionError> {
    let pref = NODE_RULE_PREF.to_string();
    let mark = format!("{TUNNEL_MARK:#x}/{TUNNEL_MARK:#x}");
    let table = NODE_ROUTE_TABLE.to_string();
    let _ = ip(&["rule", "del", "pref", &pref]);
    ip(&[
        "rule", "add", "pref", &pref, "not", "fwmark", &mark, "lookup", &table,
    ])
    .map_err(|detail| EncryptionError::NodeRouting(format!("policy rule: {detail}")))
}

/// Runs `ip ARGS`; its complaint on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    match Command::new("ip").args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(format!("running `ip`: {e}")),
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, key: &str, epoch: u64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            address: "10.98.0.11".parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
            wireguard_public_key: key.into(),
            wireguard_epoch: epoch,
            last_heartbeat_ms: 0,
        }
    }

    #[test]
    fn peers_are_the_other_nodes_with_keys_and_distinct_pod_cidrs() {
        let k1 = palisade_keymgr::NodeKey::generate(1)
            .public_key()
            .to_base64();
        let k2 = palisade_keymgr::NodeKey::generate(3)
            .public_key()
            .to_base64();
        let nodes = [
            node("me", "10.200.1.0/24", &k1, 1),
            node("b", "10.200.2.0/24", &k2, 3),
            node(
                "nokey",
                "10.200.3.0/24",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                0,
            ),
            node("garbage", "10.200.4.0/24", "not base64", 2),
            node("thief", "10.200.2.0/24", &k1, 1),
        ];
        let (peers, skipped) = desired_peers(nodes.iter(), "me", 51820, false);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].name, "b");
        assert_eq!(peers[0].epoch, 3);
        assert_eq!(peers[0].endpoint.port(), 51820);
        assert_eq!(
            peers[0].allowed_ips,
            vec!["10.200.2.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            skipped.keys().cloned().collect::<Vec<_>>(),
            ["garbage", "nokey", "thief"]
        );
        assert!(skipped["garbage"].contains("wireguard_public_key"));
        assert!(skipped["thief"].contains("claimed by another node"));
        // With host-to-host encryption the peer's own address is accepted from it too.
        let (peers, _) = desired_peers(nodes.iter(), "me", 51820, true);
        assert_eq!(
            peers[0].allowed_ips,
            ["10.200.2.0/24", "10.98.0.11/32"]
                .map(|n| n.parse::<IpNet>().unwrap())
                .to_vec()
        );
    }
}
