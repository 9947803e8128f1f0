//! The eBPF datapath as user space sees it: the object built by `build.rs`, loaded once, with its
//! programs attached to pod veths and its maps read back.
//!
//! All attachment happens in the network namespace of the calling thread (aya resolves interface
//! names there), so callers that manage several node namespaces enter the right one first.

mod policy_map;

use std::{collections::BTreeMap, net::IpAddr, os::fd::AsFd, path::PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::Key,
    },
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use palisade_datapath_common::{
    conntrack,
    counters::{self, CounterKey, PacketCount},
    endpoint::{self, EndpointInfo},
    events, family,
    ipcache::{self, IpcacheKey, IpcacheValue},
    policy::{self, PodIpPolicyKey, PolicyKey, PolicyValue},
    verdict,
};

pub use policy_map::{PolicyMatch, port_range_prefixes};

/// The compiled eBPF object (bpfel), embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-datapath"));

/// Program attached at tc ingress of the host-side veth (traffic leaving the pod).
const PROG_FROM_POD: &str = "count_from_pod";
/// Program attached at tc egress of the host-side veth (traffic entering the pod).
const PROG_TO_POD: &str = "count_to_pod";
/// Enforcement of the endpoint's egress policy: tc ingress of the host-side veth.
const PROG_EGRESS: &str = "endpoint_egress";
/// Enforcement of the endpoint's ingress policy: tc egress of the host-side veth.
const PROG_INGRESS: &str = "endpoint_ingress";

/// Which enforcement program a test packet runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The endpoint's egress path (packets leaving the pod).
    Egress,
    /// The endpoint's ingress path (packets entering the pod).
    Ingress,
}

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Hook::Egress => PROG_EGRESS,
            Hook::Ingress => PROG_INGRESS,
        }
    }
}

/// Errors from loading, attaching or reading the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The kernel refused the object (verifier, BTF, permissions).
    #[error("failed to load the eBPF object")]
    Load(#[source] EbpfError),
    /// The object lacks a program the agent expects: the build is inconsistent.
    #[error("eBPF program `{0}` is missing from the object")]
    MissingProgram(&'static str),
    /// The object lacks a map the agent expects: the build is inconsistent.
    #[error("eBPF map `{0}` is missing from the object")]
    MissingMap(&'static str),
    /// Loading or attaching one program failed.
    #[error("eBPF program `{program}` on `{iface}`")]
    Program {
        /// Program name.
        program: &'static str,
        /// Interface name (empty while loading).
        iface: String,
        /// The kernel's or aya's error.
        #[source]
        source: ProgramError,
    },
    /// A pin on bpffs could not be created, read or removed.
    #[error("bpffs pin `{path}`")]
    Pin {
        /// The pin's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a map failed.
    #[error("reading eBPF map `{map}`")]
    Map {
        /// Map name.
        map: &'static str,
        /// The kernel's or aya's error.
        #[source]
        source: MapError,
    },
    /// CLOCK_MONOTONIC_COARSE (the conntrack's clock) could not be read.
    #[error("reading CLOCK_MONOTONIC_COARSE")]
    Clock(#[source] std::io::Error),
}

/// Map sizes. The defaults are production sizes; [`DatapathConfig::for_test`] keeps tests that
/// load many copies at once small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Endpoints on the node.
    pub endpoints: u32,
    /// ipcache prefixes.
    pub ipcache: u32,
    /// Policy entries for the whole node.
    pub policy: u32,
    /// Tracked flows (LRU beyond).
    pub conntrack: u32,
    /// Flow-event ring buffer, bytes (a power of two, multiple of the page size).
    pub event_ring_bytes: u32,
    /// Where maps and program links are pinned on bpffs (e.g. `/sys/fs/bpf/palisade/<node>`).
    /// With a pin directory the datapath outlives the process: programs stay attached and maps
    /// (conntrack included) keep their contents while the agent is down, and a restarted agent
    /// re-adopts both, so it never fails open and never drops established flows. `None`: the
    /// datapath lives and dies with this process (tests, `lab test`).
    pub pin_dir: Option<PathBuf>,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            endpoints: endpoint::MAP_MAX_ENTRIES,
            ipcache: ipcache::MAP_MAX_ENTRIES,
            policy: policy::MAP_MAX_ENTRIES,
            conntrack: conntrack::MAP_MAX_ENTRIES,
            event_ring_bytes: events::RING_BYTES,
            pin_dir: None,
        }
    }
}

impl DatapathConfig {
    /// Small maps for tests (a few hundred KiB of kernel memory per copy).
    pub fn for_test() -> Self {
        Self {
            endpoints: 256,
            ipcache: 4_096,
            policy: 16_384,
            conntrack: 4_096,
            event_ring_bytes: 1 << 16,
            pin_dir: None,
        }
    }
}

/// A flow an endpoint opened, as the conntrack holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtFlow {
    /// The endpoint's address.
    pub src: IpAddr,
    /// The peer's.
    pub dst: IpAddr,
    /// Source port (ICMP: echo id), host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// IP protocol.
    pub protocol: u8,
    /// Since its last packet (to the datapath's 1 s refresh granularity).
    pub idle: std::time::Duration,
    /// TCP: a FIN or RST went by.
    pub closing: bool,
}

/// Both conntrack maps, through descriptors of their own: `Send`, so the DNS proxy's pass over
/// them runs on its own thread ([`Datapath::conntrack_maps`]).
pub struct CtMaps {
    v4: HashMap<MapData, conntrack::CtKey4, conntrack::CtValue>,
    v6: HashMap<MapData, conntrack::CtKey, conntrack::CtValue>,
}

impl CtMaps {
    /// Flows an endpoint opened (conntrack entries created on its egress path) whose
    /// (source, destination) `want` accepts, each with how long ago it last saw a packet and
    /// whether it is closing. The DNS proxy asks this about expired `toFQDNs` addresses: one
    /// pass over both conntrack maps.
    pub fn egress_flows(
        &self,
        mut want: impl FnMut(IpAddr, IpAddr) -> bool,
    ) -> Result<Vec<CtFlow>, DatapathError> {
        // `last_seen_ns` is bpf_ktime_get_coarse_ns: CLOCK_MONOTONIC_COARSE.
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
            .map(|t| std::time::Duration::from(t).as_nanos())
            .map_err(|e| DatapathError::Clock(e.into()))?;
        let flow =
            |src, dst, sport: [u8; 2], dport: [u8; 2], protocol, v: conntrack::CtValue| CtFlow {
                src,
                dst,
                sport: u16::from_be_bytes(sport),
                dport: u16::from_be_bytes(dport),
                protocol,
                idle: std::time::Duration::from_nanos(
                    u64::try_from(now.saturating_sub(u128::from(v.last_seen_ns)))
                        .unwrap_or(u64::MAX),
                ),
                closing: v.flags & conntrack::FLAG_CLOSING != 0,
            };
        let mut out = Vec::new();
        for r in self.v4.iter() {
            // An entry evicted between listing and lookup is simply gone: skip it.
            let Ok((k, v)) = r else { continue };
            let (s, d) = (IpAddr::from(k.saddr), IpAddr::from(k.daddr));
            if v.flags & conntrack::FLAG_EGRESS != 0 && want(s, d) {
                out.push(flow(s, d, k.sport, k.dport, k.protocol, v));
            }
        }
        for r in self.v6.iter() {
            let Ok((k, v)) = r else { continue };
            let (s, d) = if k.family == family::IPV4 {
                (
                    IpAddr::from([k.saddr[0], k.saddr[1], k.saddr[2], k.saddr[3]]),
                    IpAddr::from([k.daddr[0], k.daddr[1], k.daddr[2], k.daddr[3]]),
                )
            } else {
                (IpAddr::from(k.saddr), IpAddr::from(k.daddr))
            };
            if v.flags & conntrack::FLAG_EGRESS != 0 && want(s, d) {
                out.push(flow(s, d, k.sport, k.dport, k.protocol, v));
            }
        }
        Ok(out)
    }
}

/// The loaded datapath. Dropping it detaches every program it attached.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

/// Maps pinned when a pin directory is configured (everything the agent writes or that holds
/// per-flow state; the ring buffer and counters too, so counts survive restarts).
const PINNED_MAPS: [&str; 9] = [
    endpoint::MAP_NAME,
    ipcache::MAP_NAME,
    policy::MAP_NAME,
    policy::POD_IP_MAP_NAME,
    conntrack::MAP_NAME,
    conntrack::MAP_NAME_V4,
    verdict::MAP_NAME,
    events::MAP_NAME,
    counters::MAP_NAME,
];
/// Subdirectory of the pin directory holding one pinned TCX link per (interface, hook).
const LINKS_DIR: &str = "links";

/// The pin name of one link: bpffs refuses names containing `.` (EPERM), which interface names
/// may contain; they never contain `:`, so `.` becomes `:` and no two interfaces collide.
fn link_pin_name(iface: &str, hook: &str) -> String {
    format!("{}_{hook}", iface.replace('.', ":"))
}

impl Datapath {
    /// Loads the object with production map sizes and verifies its programs. Requires CAP_BPF /
    /// root.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(&DatapathConfig::default())
    }

    /// Loads the object with the map sizes in `config`.
    pub fn load_with(config: &DatapathConfig) -> Result<Self, DatapathError> {
        let pins: Vec<(&'static str, PathBuf)> = match &config.pin_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir.join(LINKS_DIR)).map_err(|source| {
                    DatapathError::Pin {
                        path: dir.clone(),
                        source,
                    }
                })?;
                PINNED_MAPS.iter().map(|m| (*m, dir.join(m))).collect()
            }
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(endpoint::MAP_NAME, config.endpoints)
            .map_max_entries(ipcache::MAP_NAME, config.ipcache)
            .map_max_entries(policy::MAP_NAME, config.policy)
            .map_max_entries(policy::POD_IP_MAP_NAME, config.policy)
            .map_max_entries(conntrack::MAP_NAME, config.conntrack)
            .map_max_entries(conntrack::MAP_NAME_V4, config.conntrack)
            .map_max_entries(events::MAP_NAME, config.event_ring_bytes);
        for (name, path) in &pins {
            // An existing pin is reused as it is (contents and sizes): that is the restart path.
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(DatapathError::Load)?;
        for name in [PROG_FROM_POD, PROG_TO_POD, PROG_EGRESS, PROG_INGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    iface: String::new(),
                    source,
                })?;
        }
        drop(loader);
        crate::heap::release_freed();
        Ok(Self {
            ebpf,
            pin_dir: config.pin_dir.clone(),
        })
    }

    /// Attaches the packet counters to a pod's host-side veth, `iface`, in the calling thread's
    /// network namespace: tc ingress counts traffic from the pod, tc egress traffic to it.
    pub fn attach_counters(&mut self, iface: &str) -> Result<(), DatapathError> {
        for (name, hook) in [
            (PROG_FROM_POD, TcAttachType::Ingress),
            (PROG_TO_POD, TcAttachType::Egress),
        ] {
            classifier(&mut self.ebpf, name)?
                .attach(iface, hook)
                .map_err(|source| DatapathError::Program {
                    program: name,
                    iface: iface.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Attaches policy enforcement to a pod's host-side veth, `iface`, in the calling thread's
    /// network namespace. The endpoint must be registered with [`Datapath::upsert_endpoint`]
    /// (keyed by this interface's index) for its traffic to be policed; until then it passes.
    pub fn attach_enforcement(&mut self, iface: &str) -> Result<(), DatapathError> {
        for (name, hook, pin_name) in [
            (PROG_EGRESS, TcAttachType::Ingress, "egress"),
            (PROG_INGRESS, TcAttachType::Egress, "ingress"),
        ] {
            let prog_err = |source| DatapathError::Program {
                program: name,
                iface: iface.to_owned(),
                source,
            };
            let prog = classifier(&mut self.ebpf, name)?;
            let Some(dir) = &self.pin_dir else {
                prog.attach(iface, hook).map_err(prog_err)?;
                continue;
            };
            let pin = dir.join(LINKS_DIR).join(link_pin_name(iface, pin_name));
            // A pinned link from an earlier run: swap this program in atomically (no packet sees
            // the hook empty). A stale pin (the interface was re-created) is dropped and replaced.
            if let Ok(old) = PinnedLink::from_pin(&pin) {
                let replaced = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(|e| ProgramError::IOError(std::io::Error::other(e)))
                    .and_then(|link| prog.attach_to_link(link));
                match replaced {
                    Ok(id) => {
                        // The pin owns the link from here on; dropping our handle only closes a fd.
                        drop(prog.take_link(id).map_err(prog_err)?);
                        continue;
                    }
                    Err(_) => {
                        let _ = std::fs::remove_file(&pin);
                    }
                }
            }
            let id = prog
                .attach_with_options(iface, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(prog_err)?;
            let link = prog.take_link(id).map_err(prog_err)?;
            let fd_link: FdLink = link
                .try_into()
                .map_err(|e| prog_err(ProgramError::IOError(std::io::Error::other(e))))?;
            fd_link.pin(&pin).map_err(|e| DatapathError::Pin {
                path: pin.clone(),
                source: std::io::Error::other(e),
            })?;
        }
        Ok(())
    }

    /// Detaches enforcement from `iface` when links are pinned (removing the pins releases them);
    /// without a pin directory the links live as long as this process and go with it.
    pub fn detach_enforcement(&mut self, iface: &str) -> Result<(), DatapathError> {
        if let Some(dir) = &self.pin_dir {
            for pin_name in ["egress", "ingress"] {
                let pin = dir.join(LINKS_DIR).join(link_pin_name(iface, pin_name));
                match std::fs::remove_file(&pin) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(DatapathError::Pin { path: pin, source }),
                }
            }
        }
        Ok(())
    }

    /// Every identity-map entry currently in the kernel (prefix length, key, value): what a
    /// restarted agent adopts before it syncs, so entries gone stale while it was down go too.
    pub fn policy_entries(&self) -> Result<Vec<(u32, PolicyKey, PolicyValue)>, DatapathError> {
        let map = self
            .ebpf
            .map(policy::MAP_NAME)
            .ok_or(DatapathError::MissingMap(policy::MAP_NAME))?;
        let map: LpmTrie<_, PolicyKey, PolicyValue> =
            LpmTrie::try_from(map).map_err(|source| map_err(policy::MAP_NAME, source))?;
        map.iter()
            .map(|r| {
                r.map(|(k, v)| (k.prefix_len(), k.data(), v))
                    .map_err(|source| map_err(policy::MAP_NAME, source))
            })
            .collect()
    }

    /// Every pod-address entry currently in the kernel, as (match, peer, value).
    pub fn pod_ip_entries(&self) -> Result<Vec<(PolicyMatch, IpAddr, PolicyValue)>, DatapathError> {
        let map = self
            .ebpf
            .map(policy::POD_IP_MAP_NAME)
            .ok_or(DatapathError::MissingMap(policy::POD_IP_MAP_NAME))?;
        let map: LpmTrie<_, PodIpPolicyKey, PolicyValue> =
            LpmTrie::try_from(map).map_err(|source| map_err(policy::POD_IP_MAP_NAME, source))?;
        let mut out = Vec::new();
        for r in map.iter() {
            let (k, v) = r.map_err(|source| map_err(policy::POD_IP_MAP_NAME, source))?;
            let d = k.data();
            let l4_bits = k.prefix_len().saturating_sub(policy::POD_IP_KEY_FIXED_BITS);
            let peer = if d.family == family::IPV4 {
                IpAddr::from([d.peer[0], d.peer[1], d.peer[2], d.peer[3]])
            } else {
                IpAddr::from(d.peer)
            };
            let m = PolicyMatch {
                endpoint_id: u32::from_be_bytes(d.endpoint_id),
                identity: 0,
                direction: d.direction,
                protocol: d.protocol,
                port: u16::from_be_bytes(d.dport),
                port_prefix: l4_bits.saturating_sub(8) as u8,
            };
            out.push((m, peer, v));
        }
        Ok(out)
    }

    /// Registers (or updates) the endpoint behind the host-side veth with index `ifindex`.
    pub fn upsert_endpoint(
        &mut self,
        ifindex: u32,
        info: EndpointInfo,
    ) -> Result<(), DatapathError> {
        let mut map: HashMap<_, u32, EndpointInfo> = self.map_mut(endpoint::MAP_NAME)?;
        map.insert(ifindex, info, 0)
            .map_err(|source| map_err(endpoint::MAP_NAME, source))
    }

    /// Flows an endpoint opened (conntrack entries created on its egress path) whose
    /// (source, destination) `want` accepts, each with how long ago it last saw a packet and
    /// whether it is closing: one pass over both conntrack maps (see [`CtMaps::egress_flows`]).
    pub fn egress_flows(
        &self,
        want: impl FnMut(IpAddr, IpAddr) -> bool,
    ) -> Result<Vec<CtFlow>, DatapathError> {
        self.conntrack_maps()?.egress_flows(want)
    }

    /// Handles of their own on both conntrack maps (duplicated descriptors), for a thread that
    /// reads them while the agent's run loop goes on: a pass over a full map takes hundreds of
    /// milliseconds.
    pub fn conntrack_maps(&self) -> Result<CtMaps, DatapathError> {
        Ok(CtMaps {
            v4: HashMap::try_from(self.dup_map(conntrack::MAP_NAME_V4)?)
                .map_err(|source| map_err(conntrack::MAP_NAME_V4, source))?,
            v6: HashMap::try_from(self.dup_map(conntrack::MAP_NAME)?)
                .map_err(|source| map_err(conntrack::MAP_NAME, source))?,
        })
    }

    /// A second handle on a hash map of the loaded object (the same kernel map).
    fn dup_map(&self, name: &'static str) -> Result<Map, DatapathError> {
        let map = self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
        let (data, lru) = match map {
            Map::HashMap(d) => (d, false),
            Map::LruHashMap(d) => (d, true),
            other => {
                // Not a hash map: the conversion's error names the type found.
                return Err(match HashMap::<_, [u8; 1], [u8; 1]>::try_from(other) {
                    Err(source) => map_err(name, source),
                    Ok(_) => DatapathError::MissingMap(name),
                });
            }
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
            map_err(
                name,
                MapError::SyscallError(aya::sys::SyscallError {
                    call: "dup",
                    io_error,
                }),
            )
        })?;
        let data = MapData::from_fd(fd).map_err(|source| map_err(name, source))?;
        Ok(if lru {
            Map::LruHashMap(data)
        } else {
            Map::HashMap(data)
        })
    }

    /// Every ipcache entry currently in the kernel, as (address, prefix length, identity).
    pub fn ipcache_entries(&self) -> Result<Vec<(IpAddr, u8, u32)>, DatapathError> {
        let map = self
            .ebpf
            .map(ipcache::MAP_NAME)
            .ok_or(DatapathError::MissingMap(ipcache::MAP_NAME))?;
        let map: LpmTrie<_, IpcacheKey, IpcacheValue> =
            LpmTrie::try_from(map).map_err(|source| map_err(ipcache::MAP_NAME, source))?;
        let mut out = Vec::new();
        for r in map.iter() {
            let (k, v) = r.map_err(|source| map_err(ipcache::MAP_NAME, source))?;
            let d = k.data();
            let prefix = k.prefix_len().saturating_sub(ipcache::KEY_FIXED_BITS) as u8;
            let addr = if d.family == family::IPV4 {
                IpAddr::from([d.addr[0], d.addr[1], d.addr[2], d.addr[3]])
            } else {
                IpAddr::from(d.addr)
            };
            out.push((addr, prefix, v.identity));
        }
        Ok(out)
    }

    /// Maps every address in `addr/prefix` to `identity` (longest prefix wins).
    pub fn upsert_ipcache(
        &mut self,
        addr: IpAddr,
        prefix: u8,
        identity: u32,
    ) -> Result<(), DatapathError> {
        let (key, _) = ipcache_key(addr, prefix);
        let mut map: LpmTrie<_, IpcacheKey, IpcacheValue> = self.map_mut(ipcache::MAP_NAME)?;
        map.insert(&key, IpcacheValue { identity, flags: 0 }, 0)
            .map_err(|source| map_err(ipcache::MAP_NAME, source))
    }

    /// Writes one policy entry; its `key_bits` are set here from the key.
    pub fn upsert_policy(
        &mut self,
        m: PolicyMatch,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        let (prefix_len, data) = m.to_key();
        // The program compares the specificity of its two hits through `key_bits`.
        let value = PolicyValue {
            key_bits: (prefix_len - policy::KEY_FIXED_BITS) as u8,
            ..value
        };
        self.upsert_policy_entry(prefix_len, data, value)
    }

    /// Writes one entry exactly as the policy engine produced it
    /// (`palisade_policy::mapstate::MapState::datapath_entries`: prefix length, key, value with
    /// its `key_bits`).
    pub fn upsert_policy_entry(
        &mut self,
        prefix_len: u32,
        key: PolicyKey,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        let mut map: LpmTrie<_, PolicyKey, PolicyValue> = self.map_mut(policy::MAP_NAME)?;
        map.insert(&Key::new(prefix_len, key), value, 0)
            .map_err(|source| map_err(policy::MAP_NAME, source))
    }

    /// Allows `peer` (a pod's address) for endpoint `m.endpoint_id` on `m`'s protocol and port
    /// prefix, when no identity rule decides: a Kubernetes `ipBlock` peer that is a pod
    /// (`m.identity` is ignored).
    pub fn upsert_pod_ip_policy(
        &mut self,
        m: PolicyMatch,
        peer: IpAddr,
        value: PolicyValue,
    ) -> Result<(), DatapathError> {
        let (prefix_len, key) = pod_ip_key(m, peer);
        let value = PolicyValue {
            key_bits: (prefix_len - policy::POD_IP_KEY_FIXED_BITS) as u8,
            ..value
        };
        let mut map: LpmTrie<_, PodIpPolicyKey, PolicyValue> =
            self.map_mut(policy::POD_IP_MAP_NAME)?;
        map.insert(&Key::new(prefix_len, key), value, 0)
            .map_err(|source| map_err(policy::POD_IP_MAP_NAME, source))
    }

    /// Removes a pod-address entry written by [`Datapath::upsert_pod_ip_policy`].
    pub fn remove_pod_ip_policy(
        &mut self,
        m: PolicyMatch,
        peer: IpAddr,
    ) -> Result<(), DatapathError> {
        let (prefix_len, key) = pod_ip_key(m, peer);
        let mut map: LpmTrie<_, PodIpPolicyKey, PolicyValue> =
            self.map_mut(policy::POD_IP_MAP_NAME)?;
        ignore_missing(map.remove(&Key::new(prefix_len, key)))
            .map_err(|source| map_err(policy::POD_IP_MAP_NAME, source))
    }

    /// Removes an entry written by [`Datapath::upsert_policy_entry`].
    pub fn remove_policy_entry(
        &mut self,
        prefix_len: u32,
        key: PolicyKey,
    ) -> Result<(), DatapathError> {
        let mut map: LpmTrie<_, PolicyKey, PolicyValue> = self.map_mut(policy::MAP_NAME)?;
        ignore_missing(map.remove(&Key::new(prefix_len, key)))
            .map_err(|source| map_err(policy::MAP_NAME, source))
    }

    /// Forgets the endpoint behind `ifindex` (its traffic then passes unpoliced, as any
    /// interface that is not an endpoint's).
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut map: HashMap<_, u32, EndpointInfo> = self.map_mut(endpoint::MAP_NAME)?;
        ignore_missing(map.remove(&ifindex)).map_err(|source| map_err(endpoint::MAP_NAME, source))
    }

    /// Removes an ipcache prefix written by [`Datapath::upsert_ipcache`].
    pub fn remove_ipcache(&mut self, addr: IpAddr, prefix: u8) -> Result<(), DatapathError> {
        let (key, _) = ipcache_key(addr, prefix);
        let mut map: LpmTrie<_, IpcacheKey, IpcacheValue> = self.map_mut(ipcache::MAP_NAME)?;
        ignore_missing(map.remove(&key)).map_err(|source| map_err(ipcache::MAP_NAME, source))
    }

    /// The flow-event ring buffer and a second handle on the verdict counters (for the kernel's
    /// count of events the ring had no room for), for the flow reader thread. The ring can be
    /// taken once: a second call answers `MissingMap`.
    pub fn take_flow_maps(
        &mut self,
    ) -> Result<(RingBuf<MapData>, PerCpuArray<MapData, u64>), DatapathError> {
        let verdicts = self
            .ebpf
            .map(verdict::MAP_NAME)
            .ok_or(DatapathError::MissingMap(verdict::MAP_NAME))?;
        let fd = match verdicts {
            aya::maps::Map::PerCpuArray(data) => {
                data.fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|source| DatapathError::Pin {
                        path: PathBuf::from(verdict::MAP_NAME),
                        source,
                    })?
            }
            _ => return Err(DatapathError::MissingMap(verdict::MAP_NAME)),
        };
        let verdicts = MapData::from_fd(fd).map_err(|source| map_err(verdict::MAP_NAME, source))?;
        let verdicts = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(verdicts))
            .map_err(|source| map_err(verdict::MAP_NAME, source))?;
        let ring = self
            .ebpf
            .take_map(events::MAP_NAME)
            .ok_or(DatapathError::MissingMap(events::MAP_NAME))?;
        let ring = RingBuf::try_from(ring).map_err(|source| map_err(events::MAP_NAME, source))?;
        Ok((ring, verdicts))
    }

    /// Packets counted per (reason, direction), summed over CPUs; zero slots are left out.
    pub fn verdict_counts(&self) -> Result<BTreeMap<(u32, u8), u64>, DatapathError> {
        let map = self
            .ebpf
            .map(verdict::MAP_NAME)
            .ok_or(DatapathError::MissingMap(verdict::MAP_NAME))?;
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| map_err(verdict::MAP_NAME, source))?;
        let mut out = BTreeMap::new();
        for reason in 0..verdict::REASONS {
            for direction in [policy::DIRECTION_EGRESS, policy::DIRECTION_INGRESS] {
                let per_cpu = map
                    .get(&verdict::slot(reason, direction), 0)
                    .map_err(|source| map_err(verdict::MAP_NAME, source))?;
                let total: u64 = per_cpu.iter().sum();
                if total > 0 {
                    out.insert((reason, direction), total);
                }
            }
        }
        Ok(out)
    }

    /// Runs one packet (an Ethernet frame) through an enforcement program with
    /// `BPF_PROG_TEST_RUN`, `repeat` times, and returns the tc action and the mean run time.
    /// The kernel runs it on the loopback device, so the endpoint under test is ifindex 1.
    pub fn test_run(
        &mut self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(i32, std::time::Duration), DatapathError> {
        let r = self.run_program(hook.program(), frame, repeat)?;
        Ok((r.return_value as i32, r.duration))
    }

    /// Runs one frame through the plain counter program (the floor any tc program costs), `repeat`
    /// times, and returns the mean run time.
    pub fn test_run_counter(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<std::time::Duration, DatapathError> {
        Ok(self.run_program(PROG_FROM_POD, frame, repeat)?.duration)
    }

    fn run_program(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult, DatapathError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        classifier(&mut self.ebpf, name)?
            .test_run(opts)
            .map_err(|source| DatapathError::Program {
                program: name,
                iface: "test-run".into(),
                source,
            })
    }

    fn map_mut<'a, T: TryFrom<&'a mut aya::maps::Map, Error = MapError>>(
        &'a mut self,
        name: &'static str,
    ) -> Result<T, DatapathError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        T::try_from(map).map_err(|source| map_err(name, source))
    }

    /// Reads every counter slot, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<CounterKeyOrd, PacketCount>, DatapathError> {
        let map = self
            .ebpf
            .map(counters::MAP_NAME)
            .ok_or(DatapathError::MissingMap(counters::MAP_NAME))?;
        let map: PerCpuHashMap<_, CounterKey, PacketCount> =
            PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map {
                map: counters::MAP_NAME,
                source,
            })?;
        let mut out = BTreeMap::new();
        for entry in map.iter() {
            let (key, per_cpu) = entry.map_err(|source| DatapathError::Map {
                map: counters::MAP_NAME,
                source,
            })?;
            let total = per_cpu
                .iter()
                .fold(PacketCount::default(), |acc, c| PacketCount {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
            out.insert(CounterKeyOrd::from(key), total);
        }
        Ok(out)
    }
}

/// A removal of something absent is not an error: removals are idempotent.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

fn pod_ip_key(m: PolicyMatch, peer: IpAddr) -> (u32, PodIpPolicyKey) {
    let (prefix_len, k) = m.to_key();
    let l4_bits = prefix_len - policy::KEY_FIXED_BITS;
    let (fam, addr, _) = addr_bytes(peer);
    let key = PodIpPolicyKey {
        endpoint_id: k.endpoint_id,
        direction: k.direction,
        family: fam,
        _pad: [0; 2],
        peer: addr,
        protocol: k.protocol,
        dport: k.dport,
    };
    (policy::POD_IP_KEY_FIXED_BITS + l4_bits, key)
}

/// An address as the maps store it: family, 16 bytes in network order (IPv4 in the first 4),
/// and the family's full prefix length.
fn addr_bytes(addr: IpAddr) -> (u8, [u8; 16], u8) {
    match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (family::IPV4, b, 32)
        }
        IpAddr::V6(a) => (family::IPV6, a.octets(), 128),
    }
}

/// The endpoint-map entry of an endpoint at `addr` (anti-spoofing takes its address from here).
pub fn endpoint_info(endpoint_id: u32, identity: u32, addr: IpAddr, flags: u32) -> EndpointInfo {
    let mut info = EndpointInfo {
        endpoint_id,
        identity,
        flags,
        ..Default::default()
    };
    match addr {
        IpAddr::V4(a) => {
            info.flags |= endpoint::FLAG_HAS_IPV4;
            info.ipv4 = a.octets();
        }
        IpAddr::V6(a) => {
            info.flags |= endpoint::FLAG_HAS_IPV6;
            info.ipv6 = a.octets();
        }
    }
    info
}

fn ipcache_key(addr: IpAddr, prefix: u8) -> (Key<IpcacheKey>, u8) {
    let (fam, bytes, max) = addr_bytes(addr);
    let prefix = prefix.min(max);
    (
        Key::new(
            ipcache::KEY_FIXED_BITS + u32::from(prefix),
            IpcacheKey {
                family: fam,
                _pad: [0; 3],
                addr: bytes,
            },
        ),
        prefix,
    )
}

fn map_err(map: &'static str, source: MapError) -> DatapathError {
    DatapathError::Map { map, source }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name,
            iface: String::new(),
            source,
        })
}

/// A counter key in a form that sorts (interface, direction, family), for stable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CounterKeyOrd {
    /// Interface index of the host-side veth.
    pub ifindex: u32,
    /// `counters::DIRECTION_FROM_POD` or `counters::DIRECTION_TO_POD`.
    pub direction: u32,
    /// 4 or 6.
    pub family: u32,
}

impl From<CounterKey> for CounterKeyOrd {
    fn from(k: CounterKey) -> Self {
        Self {
            ifindex: k.ifindex,
            direction: k.direction,
            family: k.family,
        }
    }
}
