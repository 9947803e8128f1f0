//! Connection tracking: established flows and their replies pass without a policy lookup.
//!
//! Each entry carries when it last saw a packet (refreshed at most once per
//! [`SEEN_REFRESH_NS`]) and, for TCP, whether the connection is closing ([`FLAG_CLOSING`]), so
//! the agent can tell an open connection in use from one that went quiet or ended: the DNS
//! proxy keeps an expired `toFQDNs` address while an endpoint that resolved it still has an
//! open connection to it.
//!
//! Entries are scoped to the endpoint that created them (its ifindex is part of the key), so a
//! flow between two pods on one node is checked by the source's egress policy and again by the
//! destination's ingress policy, each with its own entry.

/// Name of the LRU hash `CtKey` → [`CtValue`] (IPv6 flows).
pub const MAP_NAME: &str = "PAL_CT";
/// Name of the LRU hash `CtKey4` → [`CtValue`] (IPv4 flows: a 20-byte key instead of 44, hashed
/// on every packet).
pub const MAP_NAME_V4: &str = "PAL_CT4";
/// Maximum tracked flows per node (LRU eviction beyond).
pub const MAP_MAX_ENTRIES: u32 = 256 * 1024;

/// A flow as seen in the direction that created it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct CtKey {
    /// Source address (network order).
    pub saddr: [u8; 16],
    /// Destination address (network order).
    pub daddr: [u8; 16],
    /// Source port (or ICMP echo id for requests), network order.
    pub sport: [u8; 2],
    /// Destination port (or ICMP echo id for replies), network order.
    pub dport: [u8; 2],
    /// IP protocol.
    pub protocol: u8,
    /// Address family.
    pub family: u8,
    /// Reserved, zero.
    pub _pad: [u8; 2],
    /// Host-side veth ifindex of the endpoint this entry belongs to.
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

/// An IPv4 flow as seen in the direction that created it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct CtKey4 {
    /// Source address (network order).
    pub saddr: [u8; 4],
    /// Destination address (network order).
    pub daddr: [u8; 4],
    /// Source port (or ICMP echo id for requests), network order.
    pub sport: [u8; 2],
    /// Destination port (or ICMP echo id for replies), network order.
    pub dport: [u8; 2],
    /// IP protocol.
    pub protocol: u8,
    /// Reserved, zero.
    pub _pad: [u8; 3],
    /// Host-side veth ifindex of the endpoint this entry belongs to.
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<CtKey4>() == 20);

/// State of one tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the flow's last packet, in either
    /// direction:
    /// set when the flow is created, refreshed by established packets at most once per
    /// [`SEEN_REFRESH_NS`] (one store per second per flow, not one per packet).
    pub last_seen_ns: u64,
    /// Policy rule that admitted the flow.
    pub rule_id: u32,
    /// Bit set of `FLAG_*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 16);

/// Granularity of [`CtValue::last_seen_ns`]: an established packet rewrites it only when it is
/// older than this.
pub const SEEN_REFRESH_NS: u64 = 1_000_000_000;

/// Created by the endpoint's egress (outbound) path; otherwise by its ingress path.
pub const FLAG_EGRESS: u32 = 1 << 0;
/// TCP: a FIN or RST went by in either direction (a SYN without ACK on the same key clears
/// it: the 5-tuple was reused). The agent does not count a closing flow as an open connection.
pub const FLAG_CLOSING: u32 = 1 << 1;

crate::user_pod!(CtKey, CtKey4, CtValue);
