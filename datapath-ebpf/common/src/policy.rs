//! The policy map: (endpoint, peer identity, direction, protocol, port prefix) → verdict.
//!
//! One LPM trie for all endpoints of the node. The first [`KEY_FIXED_BITS`] bits (endpoint id,
//! peer identity, direction) always match exactly; then the protocol (8 bits, or 0 bits for "any
//! protocol") and the destination port (0–16 bits: port ranges are split into prefix-aligned
//! blocks, as Cilium's policy map does). ICMP entries carry the ICMP type in the port field.
//!
//! A new flow does two lookups — the peer's identity, then identity 0 (any peer) — and the more
//! specific hit decides: the one whose key matched more protocol/port bits, the peer's own on a
//! tie; nothing found means drop. This is the policy engine's lookup order (`MapState::lookup`,
//! Cilium's order: L3+L4, then L4-only, then L3-only, then allow-all), so offline verdicts are the
//! kernel's. Deny precedence is resolved when the map is built: the compiler never leaves an allow
//! where a deny must win. See docs/policy.md.

/// Name of the LPM trie `Key<PolicyKey>` → [`PolicyValue`].
pub const MAP_NAME: &str = "PAL_POLICY";
/// Maximum entries for the whole node.
pub const MAP_MAX_ENTRIES: u32 = 1024 * 1024;
/// Bits always matched: endpoint id (32) + identity (32) + direction (8).
pub const KEY_FIXED_BITS: u32 = 72;
/// Prefix length of a key matching one exact protocol and port.
pub const KEY_FULL_BITS: u32 = KEY_FIXED_BITS + 8 + 16;

/// Traffic leaving the endpoint.
pub const DIRECTION_EGRESS: u8 = 0;
/// Traffic entering the endpoint.
pub const DIRECTION_INGRESS: u8 = 1;

/// LPM key data (after the kernel's `u32` prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyKey {
    /// Node-local endpoint id (big-endian so the trie compares it byte-wise).
    pub endpoint_id: [u8; 4],
    /// Peer security identity, 0 = any peer (big-endian).
    pub identity: [u8; 4],
    /// [`DIRECTION_EGRESS`] or [`DIRECTION_INGRESS`].
    pub direction: u8,
    /// IP protocol (`crate::proto`); ignored past the prefix when the entry is for any protocol.
    pub protocol: u8,
    /// Destination port (or ICMP type), big-endian; matched up to the prefix.
    pub dport: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// The verdict of one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyValue {
    /// [`VERDICT_ALLOW`], [`VERDICT_DENY`] or [`VERDICT_REDIRECT`].
    pub verdict: u8,
    /// Bit set of `FLAG_*`.
    pub flags: u8,
    /// Local proxy port for [`VERDICT_REDIRECT`], host order; zero otherwise.
    pub proxy_port: u16,
    /// Id of the rule that produced this entry (for flow events and `policy trace`).
    pub rule_id: u32,
    /// How many key bits past [`KEY_FIXED_BITS`] this entry matches (protocol + port prefix,
    /// 0..=24): lets the program compare the specificity of its two lookups. User space fills it
    /// from the key when writing.
    pub key_bits: u8,
    /// Reserved, zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 12);

/// Allow the flow.
pub const VERDICT_ALLOW: u8 = 1;
/// Deny the flow; takes precedence over any allow.
pub const VERDICT_DENY: u8 = 2;
/// Allow the flow through the L7 proxy at `proxy_port`.
pub const VERDICT_REDIRECT: u8 = 3;

/// Audit: a deny from this entry is reported and not enforced.
pub const FLAG_AUDIT: u8 = 1 << 0;
/// Fallback: no rule decided (default allow of an unenforced direction, or the audit default);
/// the pod-address rules below are consulted before this entry applies.
pub const FLAG_FALLBACK: u8 = 1 << 1;

/// Name of the LPM trie `Key<PodIpPolicyKey>` → [`PolicyValue`]: Kubernetes `ipBlock` peers that
/// also match pods by address (upstream conformance requires it; Cilium does not do it). User
/// space expands each such rule over the pod addresses inside its block (minus `except`); the
/// program consults it only when the identity lookup found no rule (nothing, or a fallback).
pub const POD_IP_MAP_NAME: &str = "PAL_POD_IP_POLICY";
/// Maximum pod-address entries for the node.
pub const POD_IP_MAP_MAX_ENTRIES: u32 = 256 * 1024;
/// Bits always matched: endpoint id, direction, family, padding and the full peer address.
pub const POD_IP_KEY_FIXED_BITS: u32 = (4 + 1 + 1 + 2 + 16) * 8;

/// LPM key data of the pod-address map (after the kernel's `u32` prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodIpPolicyKey {
    /// Node-local endpoint id (big-endian).
    pub endpoint_id: [u8; 4],
    /// [`DIRECTION_EGRESS`] or [`DIRECTION_INGRESS`].
    pub direction: u8,
    /// `crate::family::IPV4` or `IPV6`.
    pub family: u8,
    /// Reserved, zero.
    pub _pad: [u8; 2],
    /// The peer pod's address (network order).
    pub peer: [u8; 16],
    /// IP protocol; ignored past the prefix for "any protocol".
    pub protocol: u8,
    /// Destination port (ICMP type), big-endian, matched up to the prefix.
    pub dport: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PodIpPolicyKey>() == 27);

crate::user_pod!(PolicyKey, PolicyValue, PodIpPolicyKey);
