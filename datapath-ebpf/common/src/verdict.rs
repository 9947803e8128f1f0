//! Verdict and drop-reason counters: a per-CPU array indexed by `reason * 2 + direction`.

/// Name of the per-CPU array of `u64` packet counts.
pub const MAP_NAME: &str = "PAL_VERDICTS";
/// Number of reasons (array size is twice this: one slot per direction).
pub const REASONS: u32 = 16;

/// Forwarded: a new flow allowed by policy.
pub const FORWARDED_NEW: u32 = 0;
/// Forwarded: a packet of an established flow or its reply.
pub const FORWARDED_ESTABLISHED: u32 = 1;
/// Forwarded: a denial not enforced because the deciding entry is in audit mode.
pub const FORWARDED_AUDIT: u32 = 2;
/// Forwarded: not an IP packet, or a packet the datapath does not police (IPv6 ND).
pub const FORWARDED_UNMANAGED: u32 = 3;
/// Dropped: policy denied (an explicit deny entry).
pub const DROP_POLICY_DENY: u32 = 8;
/// Dropped: no policy entry allowed the flow (default deny).
pub const DROP_POLICY_DEFAULT: u32 = 9;
/// Dropped: source address is not the endpoint's (anti-spoofing).
pub const DROP_SPOOFED_SOURCE: u32 = 10;
/// Dropped: the packet's headers could not be parsed.
pub const DROP_MALFORMED: u32 = 11;
/// Dropped: the verdict is a redirect to the node's L7 proxy, but the packet did not come from
/// the proxy (a peer the proxy's packet filter did not steer yet): L7 rules are never bypassed.
pub const DROP_PROXY_BYPASS: u32 = 12;

/// Not a packet verdict: a flow event the ring buffer had no room for (the agent's reader fell
/// behind). Counted so the agent can report kernel-side event losses.
pub const EVENTS_LOST: u32 = 15;

/// Index of a reason/direction pair in the array.
pub const fn slot(reason: u32, direction: u8) -> u32 {
    reason * 2 + direction as u32
}

/// A short name for a reason, as flows and metrics show it.
pub const fn reason_name(reason: u32) -> &'static str {
    match reason {
        FORWARDED_NEW => "forwarded_new",
        FORWARDED_ESTABLISHED => "forwarded_established",
        FORWARDED_AUDIT => "forwarded_audit",
        FORWARDED_UNMANAGED => "forwarded_unmanaged",
        DROP_POLICY_DENY => "policy_denied",
        DROP_POLICY_DEFAULT => "policy_default_deny",
        DROP_SPOOFED_SOURCE => "spoofed_source",
        DROP_MALFORMED => "malformed",
        EVENTS_LOST => "events_lost",
        DROP_PROXY_BYPASS => "proxy_bypass",
        _ => "unknown",
    }
}
