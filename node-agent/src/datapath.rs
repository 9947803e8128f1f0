//! The eBPF datapath as user space sees it: the object built by `build.rs`, loaded once, with its
//! programs attached to pod veths and its maps read back.
//!
//! All attachment happens in the network namespace of the calling thread (aya resolves interface
//! names there), so callers that manage several node namespaces enter the right one first.

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfError,
    maps::{MapError, PerCpuHashMap},
    programs::{ProgramError, SchedClassifier, TcAttachType},
};
use palisade_datapath_common::counters::{self, CounterKey, PacketCount};

/// The compiled eBPF object (bpfel), embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-datapath"));

/// Program attached at tc ingress of the host-side veth (traffic leaving the pod).
const PROG_FROM_POD: &str = "count_from_pod";
/// Program attached at tc egress of the host-side veth (traffic entering the pod).
const PROG_TO_POD: &str = "count_to_pod";

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
    /// Reading a map failed.
    #[error("reading eBPF map `{map}`")]
    Map {
        /// Map name.
        map: &'static str,
        /// The kernel's or aya's error.
        #[source]
        source: MapError,
    },
}

/// The loaded datapath. Dropping it detaches every program it attached.
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the object and verifies its programs. Requires CAP_BPF / root.
    pub fn load() -> Result<Self, DatapathError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(DatapathError::Load)?;
        for name in [PROG_FROM_POD, PROG_TO_POD] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    iface: String::new(),
                    source,
                })?;
        }
        Ok(Self { ebpf })
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
