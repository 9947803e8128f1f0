//! Per-endpoint packet counters: how many IP packets crossed a pod's host-side veth, and which way.

/// Name of the per-CPU hash map holding [`CounterKey`] → [`PacketCount`].
pub const MAP_NAME: &str = "PAL_COUNTERS";
/// Maximum number of counter slots (endpoints × directions × address families).
pub const MAP_MAX_ENTRIES: u32 = 16_384;

/// Traffic leaving the pod (seen at tc ingress of the host-side veth).
pub const DIRECTION_FROM_POD: u32 = 0;
/// Traffic entering the pod (seen at tc egress of the host-side veth).
pub const DIRECTION_TO_POD: u32 = 1;

/// IPv4 (the value of `CounterKey::family`).
pub const FAMILY_IPV4: u32 = 4;
/// IPv6 (the value of `CounterKey::family`).
pub const FAMILY_IPV6: u32 = 6;

/// Key of one counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CounterKey {
    /// Interface index of the host-side veth, in the node's network namespace.
    pub ifindex: u32,
    /// [`DIRECTION_FROM_POD`] or [`DIRECTION_TO_POD`].
    pub direction: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`]; frames that are not IP (ARP, …) are not counted.
    pub family: u32,
}
const _: () = assert!(core::mem::size_of::<CounterKey>() == 12);

/// Value of one counter slot (per CPU; user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PacketCount {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen, counting from the Ethernet header.
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<PacketCount>() == 16);

crate::user_pod!(CounterKey, PacketCount);
