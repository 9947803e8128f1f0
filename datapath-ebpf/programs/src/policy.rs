//! Policy enforcement on the host side of each pod veth.
//!
//! ```text
//!  packet ─▶ parse (IPv4/IPv6; TCP, UDP, SCTP, ICMP) ──bad──▶ drop MALFORMED (if ours)
//!              ▼
//!            conntrack (keyed by this veth): this flow, in the direction it was admitted,
//!            or its reply? ──yes──▶ pass ESTABLISHED
//!              ▼
//!            endpoint? ──no──▶ pass (not ours)
//!              ▼
//!            egress only: source == endpoint address? ──no──▶ drop SPOOFED_SOURCE
//!              ▼
//!            peer identity = ipcache LPM(peer address), world if none
//!              ▼
//!            policy LPM (peer id) + policy LPM (any peer): more specific hit
//!              │ allow / redirect          deny ─▶ drop (or pass if audit); none ─▶ drop DEFAULT
//!              ▼
//!            conntrack insert, event NEW, pass
//! ```
//!
//! Events are emitted for new flows and drops only; established packets cost one conntrack hash
//! lookup and no endpoint lookup. Skipping the source check for them is safe: an entry is keyed
//! by the veth and the exact 5-tuple, and only a packet that passed the check (or its reply)
//! created it; a hit must also match the direction the entry was admitted in (`ct_state`), so
//! a pod cannot replay a peer's address from an entry its ingress created.
//! Redirects to the L7 proxy: egress, and ingress on nodes without a proxy, pass as an allow
//! (the node's packet filter steers redirected peers to the proxy before they get here); on
//! ingress to an endpoint of a node with a proxy (`FLAG_L7_PROXY`) only packets carrying the
//! proxy's mark pass, so a peer the filter missed is dropped rather than let past the L7 rules.

use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use palisade_datapath_common::{
    conntrack::{self, CtKey, CtKey4, CtValue},
    endpoint::{self, EndpointInfo},
    events::{self, FlowEvent},
    family,
    ipcache::{self, IpcacheKey, IpcacheValue},
    policy::{self, PodIpPolicyKey, PolicyKey, PolicyValue},
    proto, verdict,
};

#[map(name = "PAL_ENDPOINTS")]
static PAL_ENDPOINTS: HashMap<u32, EndpointInfo> =
    HashMap::with_max_entries(endpoint::MAP_MAX_ENTRIES, 0);

#[map(name = "PAL_IPCACHE")]
static PAL_IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> =
    LpmTrie::with_max_entries(ipcache::MAP_MAX_ENTRIES, 0);

#[map(name = "PAL_POLICY")]
static PAL_POLICY: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(policy::MAP_MAX_ENTRIES, 0);

#[map(name = "PAL_POD_IP_POLICY")]
static PAL_POD_IP_POLICY: LpmTrie<PodIpPolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(policy::POD_IP_MAP_MAX_ENTRIES, 0);

#[map(name = "PAL_CT4")]
static PAL_CT4: LruHashMap<CtKey4, CtValue> =
    LruHashMap::with_max_entries(conntrack::MAP_MAX_ENTRIES, 0);

#[map(name = "PAL_CT")]
static PAL_CT: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(conntrack::MAP_MAX_ENTRIES, 0);

#[map(name = "PAL_VERDICTS")]
static PAL_VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(verdict::REASONS * 2, 0);

#[map(name = "PAL_EVENTS")]
static PAL_EVENTS: RingBuf = RingBuf::with_byte_size(events::RING_BYTES, 0);

/// The verdict of a zeroed [`PolicyValue`]: no entry matched.
const NO_ENTRY: u8 = 0;

/// Reserved identity of peers outside the cluster (Cilium's numbering).
const IDENTITY_WORLD: u32 = 2;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// Bytes pulled into the linear area when headers are not there: Ethernet + IPv6 + an L4 header.
const PULL_BYTES: u32 = 14 + 40 + 20;

/// Traffic leaving the pod: tc ingress on the host-side veth; the endpoint's egress policy.
#[classifier]
pub fn endpoint_egress(ctx: TcContext) -> i32 {
    enforce(&ctx, policy::DIRECTION_EGRESS)
}

/// Traffic entering the pod: tc egress on the host-side veth; the endpoint's ingress policy.
#[classifier]
pub fn endpoint_ingress(ctx: TcContext) -> i32 {
    enforce(&ctx, policy::DIRECTION_INGRESS)
}

/// The parsed headers of one packet.
struct Flow {
    family: u8,
    protocol: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    /// Conntrack ports (network order): L4 ports, or the ICMP echo id on one side.
    sport: [u8; 2],
    dport: [u8; 2],
    /// Port the policy matches (network order): destination port, or the ICMP type.
    policy_port: [u8; 2],
    /// The packet is an ICMP/ICMPv6 message the datapath does not police (neighbour discovery).
    unmanaged: bool,
    /// TCP flags (`events::TCP_*`); 0 for other protocols or a header cut short.
    tcp_flags: u8,
}

#[inline(always)]
fn enforce(ctx: &TcContext, direction: u8) -> i32 {
    // SAFETY: `skb` points at the kernel's `__sk_buff` context for this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        if is_endpoint(ifindex) {
            count(verdict::FORWARDED_UNMANAGED, direction);
        }
        return TC_ACT_OK;
    }
    let mut flow = parse(ctx, ethertype);
    if flow.is_none() {
        // Headers may sit outside the linear area: pull them in and parse once more before
        // calling the packet malformed.
        let want = if ctx.len() < PULL_BYTES {
            ctx.len()
        } else {
            PULL_BYTES
        };
        if ctx.skb.pull_data(want).is_ok() {
            flow = parse(ctx, ethertype);
        }
    }
    let Some(flow) = flow else {
        if !is_endpoint(ifindex) {
            return TC_ACT_OK;
        }
        count(verdict::DROP_MALFORMED, direction);
        return TC_ACT_SHOT;
    };
    if flow.unmanaged {
        if is_endpoint(ifindex) {
            count(verdict::FORWARDED_UNMANAGED, direction);
        }
        return TC_ACT_OK;
    }

    // The path nearly every packet takes: conntrack first, the endpoint only when needed.
    let ct = ct_state(&flow, ifindex, direction);
    if ct != CT_NONE {
        count(verdict::FORWARDED_ESTABLISHED, direction);
        // Connection state changes only: an event per packet would cost the datapath and the
        // agent as much as the traffic itself.
        if flow.tcp_flags & (events::TCP_SYN | events::TCP_FIN | events::TCP_RST) != 0
            // SAFETY: the value is only read, and the map is only written from user space.
            && let Some(ep) = unsafe { PAL_ENDPOINTS.get(&ifindex) }
        {
            let (peer_addr, ep_is_src) = if direction == policy::DIRECTION_EGRESS {
                (flow.daddr, true)
            } else {
                (flow.saddr, false)
            };
            let peer = peer_identity(flow.family, peer_addr);
            let (src_id, dst_id) = if ep_is_src {
                (ep.identity, peer)
            } else {
                (peer, ep.identity)
            };
            emit(
                ctx,
                &flow,
                events::KIND_TRACE,
                direction,
                verdict::FORWARDED_ESTABLISHED,
                ifindex,
                src_id,
                dst_id,
                0,
                events::MATCH_NONE,
                u8::from(ct == CT_REPLY),
            );
        }
        return TC_ACT_OK;
    }

    // SAFETY: the value is only read, and the map is only written from user space.
    let Some(ep) = (unsafe { PAL_ENDPOINTS.get(&ifindex) }) else {
        return TC_ACT_OK;
    };
    if direction == policy::DIRECTION_EGRESS && !source_is_endpoint(&flow, ep) {
        count(verdict::DROP_SPOOFED_SOURCE, direction);
        emit(
            ctx,
            &flow,
            events::KIND_DROP,
            direction,
            verdict::DROP_SPOOFED_SOURCE,
            ifindex,
            ep.identity,
            0,
            0,
            events::MATCH_NONE,
            0,
        );
        return TC_ACT_SHOT;
    }

    let peer_addr = if direction == policy::DIRECTION_EGRESS {
        flow.daddr
    } else {
        flow.saddr
    };
    let peer = peer_identity(flow.family, peer_addr);
    let (src_id, dst_id) = if direction == policy::DIRECTION_EGRESS {
        (ep.identity, peer)
    } else {
        (peer, ep.identity)
    };

    // A zeroed value (verdict 0) means "no entry" throughout: `Option` payloads left undefined
    // on the `None` path are rejected by the verifier as uninitialised registers.
    let (v, match_type) = if direction == policy::DIRECTION_INGRESS
        && peer == endpoint::IDENTITY_HOST
        && ep.flags & endpoint::FLAG_ALLOW_LOCALHOST != 0
    {
        // The host by its identity, any port.
        (
            PolicyValue {
                verdict: policy::VERDICT_ALLOW,
                ..PolicyValue::default()
            },
            events::MATCH_L3_ONLY,
        )
    } else {
        let (by_identity, by_identity_match) = lookup_policy(
            ep.endpoint_id,
            peer,
            direction,
            flow.protocol,
            flow.policy_port,
        );
        if by_identity.verdict == NO_ENTRY || by_identity.flags & policy::FLAG_FALLBACK != 0 {
            let by_pod_ip = lookup_pod_ip(
                ep.endpoint_id,
                direction,
                flow.family,
                peer_addr,
                flow.protocol,
                flow.policy_port,
            );
            if by_pod_ip.verdict != NO_ENTRY {
                (by_pod_ip, l3_match(&by_pod_ip))
            } else {
                (by_identity, by_identity_match)
            }
        } else {
            (by_identity, by_identity_match)
        }
    };
    match v.verdict {
        policy::VERDICT_DENY => {
            if v.flags & policy::FLAG_AUDIT != 0 {
                count(verdict::FORWARDED_AUDIT, direction);
                emit(
                    ctx,
                    &flow,
                    events::KIND_AUDIT,
                    direction,
                    verdict::DROP_POLICY_DENY,
                    ifindex,
                    src_id,
                    dst_id,
                    v.rule_id,
                    match_type,
                    0,
                );
                return TC_ACT_OK;
            }
            count(verdict::DROP_POLICY_DENY, direction);
            emit(
                ctx,
                &flow,
                events::KIND_DROP,
                direction,
                verdict::DROP_POLICY_DENY,
                ifindex,
                src_id,
                dst_id,
                v.rule_id,
                match_type,
                0,
            );
            TC_ACT_SHOT
        }
        policy::VERDICT_REDIRECT
            if direction == policy::DIRECTION_INGRESS
                && ep.flags & endpoint::FLAG_L7_PROXY != 0
                // SAFETY: reading a field of the context's `__sk_buff`, always valid in tc.
                && unsafe { (*ctx.skb.skb).mark } & endpoint::PROXY_MARK == 0 =>
        {
            count(verdict::DROP_PROXY_BYPASS, direction);
            emit(
                ctx,
                &flow,
                events::KIND_DROP,
                direction,
                verdict::DROP_PROXY_BYPASS,
                ifindex,
                src_id,
                dst_id,
                v.rule_id,
                match_type,
                0,
            );
            TC_ACT_SHOT
        }
        policy::VERDICT_ALLOW | policy::VERDICT_REDIRECT => {
            let value = CtValue {
                // SAFETY: helper without preconditions.
                last_seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
                rule_id: v.rule_id,
                flags: if direction == policy::DIRECTION_EGRESS {
                    conntrack::FLAG_EGRESS
                } else {
                    0
                },
            };
            ct_insert(&flow, ifindex, &value);
            count(verdict::FORWARDED_NEW, direction);
            emit(
                ctx,
                &flow,
                events::KIND_NEW,
                direction,
                verdict::FORWARDED_NEW,
                ifindex,
                src_id,
                dst_id,
                v.rule_id,
                match_type,
                0,
            );
            TC_ACT_OK
        }
        _ => {
            count(verdict::DROP_POLICY_DEFAULT, direction);
            emit(
                ctx,
                &flow,
                events::KIND_DROP,
                direction,
                verdict::DROP_POLICY_DEFAULT,
                ifindex,
                src_id,
                dst_id,
                0,
                events::MATCH_NONE,
                0,
            );
            TC_ACT_SHOT
        }
    }
}

/// Not part of an admitted flow.
const CT_NONE: u8 = 0;
/// Part of an admitted flow, in the direction it was admitted.
const CT_FORWARD: u8 = 1;
/// Part of an admitted flow, against the direction it was admitted (a reply).
const CT_REPLY: u8 = 2;

/// Is this packet part of a flow this endpoint admitted, and in which direction (`CT_*`)? (IPv4
/// flows live in a map with a 20-byte key; the IPv6 map's is 44 bytes.) A hit refreshes the
/// entry's `last_seen_ns` when it is older than `SEEN_REFRESH_NS`: the agent reads it to tell
/// flows in use from quiet ones; the coarse refresh adds a coarse clock read and a load per
/// packet, and a store into the shared entry at most once a second. TCP FIN/RST mark the entry
/// closing (a new SYN clears the mark).
#[inline(always)]
fn ct_state(flow: &Flow, ifindex: u32, direction: u8) -> u8 {
    // An entry admitted on this hook matches forward, one admitted on the other hook matches
    // as a reply; anything else is no match (and goes through the source check and policy).
    let hook_flag = if direction == policy::DIRECTION_EGRESS {
        conntrack::FLAG_EGRESS
    } else {
        0
    };
    let (state, hit) = if flow.family == family::IPV4 {
        let fwd = ct_key4(flow, ifindex);
        let rev = CtKey4 {
            saddr: fwd.daddr,
            daddr: fwd.saddr,
            sport: fwd.dport,
            dport: fwd.sport,
            ..fwd
        };
        // SAFETY (both): the pointers are the map's values for these keys, valid for this run.
        match PAL_CT4.get_ptr_mut(&fwd) {
            Some(v) if unsafe { (*v).flags } & conntrack::FLAG_EGRESS == hook_flag => {
                (CT_FORWARD, Some(v))
            }
            _ => match PAL_CT4.get_ptr_mut(&rev) {
                Some(v) if unsafe { (*v).flags } & conntrack::FLAG_EGRESS != hook_flag => {
                    (CT_REPLY, Some(v))
                }
                _ => (CT_NONE, None),
            },
        }
    } else {
        let fwd = ct_key6(flow, ifindex);
        let rev = CtKey {
            saddr: fwd.daddr,
            daddr: fwd.saddr,
            sport: fwd.dport,
            dport: fwd.sport,
            ..fwd
        };
        // SAFETY: as above.
        match PAL_CT.get_ptr_mut(&fwd) {
            Some(v) if unsafe { (*v).flags } & conntrack::FLAG_EGRESS == hook_flag => {
                (CT_FORWARD, Some(v))
            }
            _ => match PAL_CT.get_ptr_mut(&rev) {
                Some(v) if unsafe { (*v).flags } & conntrack::FLAG_EGRESS != hook_flag => {
                    (CT_REPLY, Some(v))
                }
                _ => (CT_NONE, None),
            },
        }
    };
    let Some(value) = hit else {
        return CT_NONE;
    };
    // SAFETY: helper without preconditions. The coarse clock (one jiffy's resolution, far finer
    // than the 1 s refresh) reads a cached value: the precise one costs more than the whole
    // established path did without it.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: the pointer is the map's value for this key, valid for this program run; a racing
    // writer on another CPU stores a time just as good (a plain store, no read-modify-write).
    unsafe {
        if now.wrapping_sub((*value).last_seen_ns) > conntrack::SEEN_REFRESH_NS {
            (*value).last_seen_ns = now;
        }
    }
    if flow.protocol == proto::TCP {
        // SAFETY: as above; the two marks are a handful of stores per connection. A lost race
        // between CPUs leaves the mark of the later packet, which is the connection's state.
        unsafe {
            let flags = (*value).flags;
            if flow.tcp_flags & (events::TCP_FIN | events::TCP_RST) != 0 {
                if flags & conntrack::FLAG_CLOSING == 0 {
                    (*value).flags = flags | conntrack::FLAG_CLOSING;
                }
            } else if flow.tcp_flags & (events::TCP_SYN | events::TCP_ACK) == events::TCP_SYN
                && flags & conntrack::FLAG_CLOSING != 0
            {
                (*value).flags = flags & !conntrack::FLAG_CLOSING;
            }
        }
    }
    state
}

#[inline(always)]
fn ct_insert(flow: &Flow, ifindex: u32, value: &CtValue) {
    if flow.family == family::IPV4 {
        let _ = PAL_CT4.insert(&ct_key4(flow, ifindex), value, u64::from(BPF_ANY));
    } else {
        let _ = PAL_CT.insert(&ct_key6(flow, ifindex), value, u64::from(BPF_ANY));
    }
}

#[inline(always)]
fn ct_key4(flow: &Flow, ifindex: u32) -> CtKey4 {
    CtKey4 {
        saddr: [flow.saddr[0], flow.saddr[1], flow.saddr[2], flow.saddr[3]],
        daddr: [flow.daddr[0], flow.daddr[1], flow.daddr[2], flow.daddr[3]],
        sport: flow.sport,
        dport: flow.dport,
        protocol: flow.protocol,
        _pad: [0; 3],
        ifindex,
    }
}

#[inline(always)]
fn ct_key6(flow: &Flow, ifindex: u32) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        protocol: flow.protocol,
        family: flow.family,
        _pad: [0; 2],
        ifindex,
    }
}

/// Two LPM lookups (the peer's identity, then any peer); the more specific hit decides, the
/// peer's own on a tie (see `palisade_datapath_common::policy`). Also says how the deciding
/// entry matched (`events::MATCH_*`, for flow events).
#[inline(always)]
fn lookup_policy(
    endpoint_id: u32,
    peer: u32,
    direction: u8,
    protocol: u8,
    port: [u8; 2],
) -> (PolicyValue, u8) {
    let data = PolicyKey {
        endpoint_id: endpoint_id.to_be_bytes(),
        identity: peer.to_be_bytes(),
        direction,
        protocol,
        dport: port,
    };
    let specific = PAL_POLICY
        .get(Key::new(policy::KEY_FULL_BITS, data))
        .copied()
        .unwrap_or_default();
    let any = PAL_POLICY
        .get(Key::new(
            policy::KEY_FULL_BITS,
            PolicyKey {
                identity: [0; 4],
                ..data
            },
        ))
        .copied()
        .unwrap_or_default();
    if specific.verdict == NO_ENTRY || (any.verdict != NO_ENTRY && any.key_bits > specific.key_bits)
    {
        let m = match (any.verdict, any.key_bits) {
            (NO_ENTRY, _) => events::MATCH_NONE,
            (_, 0) => events::MATCH_ALL,
            _ => events::MATCH_L4_ONLY,
        };
        (any, m)
    } else {
        (specific, l3_match(&specific))
    }
}

/// The match type of an entry for the peer itself (identity or address): L3 only when it
/// leaves protocol and port open.
#[inline(always)]
fn l3_match(v: &PolicyValue) -> u8 {
    if v.key_bits == 0 {
        events::MATCH_L3_ONLY
    } else {
        events::MATCH_L3_L4
    }
}

/// The pod-address rules (Kubernetes `ipBlock` peers that are pods).
#[inline(always)]
fn lookup_pod_ip(
    endpoint_id: u32,
    direction: u8,
    fam: u8,
    peer: [u8; 16],
    protocol: u8,
    port: [u8; 2],
) -> PolicyValue {
    let key = PodIpPolicyKey {
        endpoint_id: endpoint_id.to_be_bytes(),
        direction,
        family: fam,
        _pad: [0; 2],
        peer,
        protocol,
        dport: port,
    };
    PAL_POD_IP_POLICY
        .get(Key::new(policy::POD_IP_KEY_FIXED_BITS + 24, key))
        .copied()
        .unwrap_or_default()
}

#[inline(always)]
fn peer_identity(fam: u8, addr: [u8; 16]) -> u32 {
    let bits = if fam == family::IPV4 { 32 } else { 128 };
    let key = Key::new(
        ipcache::KEY_FIXED_BITS + bits,
        IpcacheKey {
            family: fam,
            _pad: [0; 3],
            addr,
        },
    );
    match PAL_IPCACHE.get(key) {
        Some(v) => v.identity,
        None => IDENTITY_WORLD,
    }
}

/// Is this veth a local endpoint's (only the slow paths ask)?
#[inline(always)]
fn is_endpoint(ifindex: u32) -> bool {
    // SAFETY: only the presence of the value is read.
    unsafe { PAL_ENDPOINTS.get(&ifindex) }.is_some()
}

#[inline(always)]
fn source_is_endpoint(flow: &Flow, ep: &EndpointInfo) -> bool {
    if flow.family == family::IPV4 {
        ep.flags & endpoint::FLAG_HAS_IPV4 != 0
            && flow.saddr[0] == ep.ipv4[0]
            && flow.saddr[1] == ep.ipv4[1]
            && flow.saddr[2] == ep.ipv4[2]
            && flow.saddr[3] == ep.ipv4[3]
    } else {
        ep.flags & endpoint::FLAG_HAS_IPV6 != 0 && flow.saddr == ep.ipv6
    }
}

/// Reads a `T` at `off` bytes into the packet by direct packet access, bounds-checked against
/// `data_end` (cheaper than a `bpf_skb_load_bytes` helper call per field).
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range [start + off, start + off + size_of::<T>()) was checked to lie within the
    // packet's linear data; `read_unaligned` makes no alignment assumption.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
fn parse(ctx: &TcContext, ethertype: u16) -> Option<Flow> {
    if ethertype == ETH_P_IP {
        parse_ipv4(ctx)
    } else {
        parse_ipv6(ctx)
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext) -> Option<Flow> {
    let vihl: u8 = read(ctx, ETH_HLEN)?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let frag: [u8; 2] = read(ctx, ETH_HLEN + 6)?;
    let protocol: u8 = read(ctx, ETH_HLEN + 9)?;
    let s: [u8; 4] = read(ctx, ETH_HLEN + 12)?;
    let d: [u8; 4] = read(ctx, ETH_HLEN + 16)?;
    let mut flow = Flow {
        family: family::IPV4,
        protocol,
        saddr: [s[0], s[1], s[2], s[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        daddr: [d[0], d[1], d[2], d[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sport: [0; 2],
        dport: [0; 2],
        policy_port: [0; 2],
        unmanaged: false,
        tcp_flags: 0,
    };
    // A non-first fragment has no L4 header: it is policed by protocol only (port 0).
    let fragment_offset = u16::from_be_bytes(frag) & 0x1fff;
    if fragment_offset == 0 {
        if ihl == 20 {
            // The common case, at a constant offset the verifier can bound for direct access.
            parse_l4(ctx, ETH_HLEN + 20, &mut flow, false, true)?;
        } else {
            // IP options: a variable offset, read through the load helper instead.
            parse_l4(ctx, ETH_HLEN + (ihl & 0x3c), &mut flow, false, false)?;
        }
    }
    Some(flow)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext) -> Option<Flow> {
    let v: u8 = read(ctx, ETH_HLEN)?;
    if v >> 4 != 6 {
        return None;
    }
    let protocol: u8 = read(ctx, ETH_HLEN + 6)?;
    let saddr: [u8; 16] = read(ctx, ETH_HLEN + 8)?;
    let daddr: [u8; 16] = read(ctx, ETH_HLEN + 24)?;
    let mut flow = Flow {
        family: family::IPV6,
        protocol,
        saddr,
        daddr,
        sport: [0; 2],
        dport: [0; 2],
        policy_port: [0; 2],
        unmanaged: false,
        tcp_flags: 0,
    };
    // Extension headers are not walked: such packets are policed by their first next-header value.
    parse_l4(ctx, ETH_HLEN + 40, &mut flow, true, true)?;
    Some(flow)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, flow: &mut Flow, v6: bool, direct: bool) -> Option<()> {
    let read_u16 = |o: usize| -> Option<[u8; 2]> {
        if direct {
            read(ctx, o)
        } else {
            ctx.load(o).ok()
        }
    };
    let read_u8 = |o: usize| -> Option<u8> {
        if direct {
            read(ctx, o)
        } else {
            ctx.load(o).ok()
        }
    };
    match flow.protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            flow.sport = read_u16(off)?;
            flow.dport = read_u16(off + 2)?;
            flow.policy_port = flow.dport;
            if flow.protocol == proto::TCP {
                // Read by conntrack's closing mark and reported in flow events: a header too
                // short for it is not malformed for policy (ports are all policy needs).
                flow.tcp_flags = read_u8(off + 13).unwrap_or(0);
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let ty = read_u8(off)?;
            let id = read_u16(off + 4)?;
            flow.policy_port = [0, ty];
            let (echo_request, echo_reply) = if v6 { (128, 129) } else { (8, 0) };
            if ty == echo_request {
                flow.sport = id;
            } else if ty == echo_reply {
                flow.dport = id;
            }
            // Router/neighbour solicitation and advertisement, redirect: link housekeeping.
            if v6 && (133..=137).contains(&ty) {
                flow.unmanaged = true;
            }
        }
        _ => {}
    }
    Some(())
}

#[inline(always)]
fn count(reason: u32, direction: u8) {
    if let Some(slot) = PAL_VERDICTS.get_ptr_mut(verdict::slot(reason, direction)) {
        // SAFETY: per-CPU slot, never shared with another CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    ctx: &TcContext,
    flow: &Flow,
    kind: u8,
    direction: u8,
    reason: u32,
    ifindex: u32,
    src_identity: u32,
    dst_identity: u32,
    rule_id: u32,
    match_type: u8,
    is_reply: u8,
) {
    if let Some(mut entry) = PAL_EVENTS.reserve::<FlowEvent>(0) {
        entry.write(FlowEvent {
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            kind,
            direction,
            protocol: flow.protocol,
            family: flow.family,
            reason,
            ifindex,
            src_identity,
            dst_identity,
            rule_id,
            saddr: flow.saddr,
            daddr: flow.daddr,
            sport: flow.sport,
            dport: flow.policy_port,
            len: ctx.len(),
            tcp_flags: flow.tcp_flags,
            match_type,
            is_reply,
            _pad: 0,
        });
        entry.submit(0);
    } else {
        // The reader fell behind: the agent reports these as lost events.
        count(verdict::EVENTS_LOST, direction);
    }
}
