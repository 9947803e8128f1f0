//! Per-endpoint packet counters (see `palisade_datapath_common::counters`).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK},
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use palisade_datapath_common::counters::{
    CounterKey, DIRECTION_FROM_POD, DIRECTION_TO_POD, FAMILY_IPV4, FAMILY_IPV6, MAP_MAX_ENTRIES,
    PacketCount,
};

#[map(name = "PAL_COUNTERS")]
static PAL_COUNTERS: PerCpuHashMap<CounterKey, PacketCount> =
    PerCpuHashMap::with_max_entries(MAP_MAX_ENTRIES, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Packets leaving the pod: tc ingress on the host-side veth.
#[classifier]
pub fn count_from_pod(ctx: TcContext) -> i32 {
    count(&ctx, DIRECTION_FROM_POD);
    TC_ACT_OK
}

/// Packets entering the pod: tc egress on the host-side veth.
#[classifier]
pub fn count_to_pod(ctx: TcContext) -> i32 {
    count(&ctx, DIRECTION_TO_POD);
    TC_ACT_OK
}

#[inline(always)]
fn count(ctx: &TcContext, direction: u32) {
    // skb->protocol is the Ethernet type in network byte order.
    let family = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => FAMILY_IPV4,
        ETH_P_IPV6 => FAMILY_IPV6,
        _ => return,
    };
    // SAFETY: `skb` points at the kernel's `__sk_buff` context for this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = CounterKey {
        ifindex,
        direction,
        family,
    };
    let len = u64::from(ctx.skb.len());
    if let Some(slot) = PAL_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: the pointer comes from the map and is valid for this CPU's slot; per-CPU values
        // are never touched concurrently.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += len;
        }
    } else {
        let first = PacketCount {
            packets: 1,
            bytes: len,
        };
        // A concurrent first insert on another CPU makes this fail; that CPU's slot then exists and
        // this packet is counted on the next lookup path only if we retry, so retry once.
        if PAL_COUNTERS
            .insert(&key, &first, u64::from(BPF_NOEXIST))
            .is_err()
            && let Some(slot) = PAL_COUNTERS.get_ptr_mut(&key)
        {
            // SAFETY: as above.
            unsafe {
                (*slot).packets += 1;
                (*slot).bytes += len;
            }
        }
    }
}
