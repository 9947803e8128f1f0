//! Palisade's eBPF programs. Built only for `bpfel-unknown-none` (see node-agent/build.rs).
//!
//! Attachment points, all on the host side of a pod's veth:
//!
//! ```text
//!   pod netns            node netns
//!   eth0  <==== veth ====>  lxcXXXX
//!                           tc ingress: count_from_pod  (pod egress traffic)
//!                           tc egress:  count_to_pod    (pod ingress traffic)
//! ```
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod policy;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called at run time.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
