//! Flow events: one per new connection, per dropped packet and per TCP SYN/FIN/RST of an admitted
//! connection (never for its other packets), written to a ring buffer the agent reads.

/// Name of the ring buffer.
pub const MAP_NAME: &str = "PAL_EVENTS";
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 1 << 22;

/// A new connection was allowed.
pub const KIND_NEW: u8 = 1;
/// A packet was dropped.
pub const KIND_DROP: u8 = 2;
/// A denial was reported in audit mode and not enforced.
pub const KIND_AUDIT: u8 = 3;
/// A packet of an admitted connection that changes its state (TCP SYN, FIN or RST; Hubble's
/// trace events, reported once per such packet as Cilium's default monitor aggregation does,
/// never for every packet).
pub const KIND_TRACE: u8 = 4;

/// No policy entry decided (default deny, or a verdict taken before the policy lookup).
pub const MATCH_NONE: u8 = 0;
/// An entry for the peer's identity (or address), any protocol and port (Hubble's `L3_ONLY`).
pub const MATCH_L3_ONLY: u8 = 1;
/// An entry for the peer's identity (or address) and a protocol/port (Hubble's `L3_L4`).
pub const MATCH_L3_L4: u8 = 2;
/// An entry for any peer and a protocol/port (Hubble's `L4_ONLY`).
pub const MATCH_L4_ONLY: u8 = 3;
/// An entry for any peer, any protocol and port (Hubble's `ALL`).
pub const MATCH_ALL: u8 = 4;

/// TCP flag bits as they sit in the TCP header's flags byte.
pub const TCP_FIN: u8 = 0x01;
/// SYN.
pub const TCP_SYN: u8 = 0x02;
/// RST.
pub const TCP_RST: u8 = 0x04;
/// PSH.
pub const TCP_PSH: u8 = 0x08;
/// ACK.
pub const TCP_ACK: u8 = 0x10;
/// URG.
pub const TCP_URG: u8 = 0x20;
/// ECE.
pub const TCP_ECE: u8 = 0x40;
/// CWR.
pub const TCP_CWR: u8 = 0x80;

/// One flow event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns`.
    pub ts_ns: u64,
    /// `KIND_*`.
    pub kind: u8,
    /// `crate::policy::DIRECTION_*` from the endpoint's point of view.
    pub direction: u8,
    /// IP protocol.
    pub protocol: u8,
    /// Address family.
    pub family: u8,
    /// `crate::verdict` reason.
    pub reason: u32,
    /// Host-side veth ifindex of the endpoint.
    pub ifindex: u32,
    /// Source identity (0 when unknown).
    pub src_identity: u32,
    /// Destination identity (0 when unknown).
    pub dst_identity: u32,
    /// Deciding rule id (0 when none matched).
    pub rule_id: u32,
    /// Source address (network order).
    pub saddr: [u8; 16],
    /// Destination address (network order).
    pub daddr: [u8; 16],
    /// Source port (network order), ICMP echo id.
    pub sport: [u8; 2],
    /// Destination port (network order), ICMP type.
    pub dport: [u8; 2],
    /// Packet length in bytes.
    pub len: u32,
    /// The packet's TCP flags (`TCP_*`, the flags byte of the TCP header); 0 for other protocols.
    pub tcp_flags: u8,
    /// How specific the policy entry that decided was (`MATCH_*`); [`MATCH_NONE`] when none did.
    pub match_type: u8,
    /// 1 when the packet goes against its connection's direction (a reply), 0 otherwise.
    pub is_reply: u8,
    /// Reserved, zero (keeps the size a multiple of 8 with no implicit padding).
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 80);

crate::user_pod!(FlowEvent);
