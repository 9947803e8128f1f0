//! Types shared by Palisade's eBPF programs and user space.
//!
//! Every struct here crosses the kernel/user boundary inside a BPF map or a ring-buffer event, so
//! each is `#[repr(C)]`, has no implicit padding (flags are `u32`/`u8`, never `bool`) and carries a
//! compile-time size assertion. Map names and sizes live here too, grouped by feature, so the
//! kernel program, the user-space loader and the tests agree on them.
//!
//! Addresses are stored as 16 bytes in network order; IPv4 uses the first 4 bytes and the rest
//! zero, with `family` telling which.
//!
//! The `user` feature adds `aya::Pod` impls for user space; the eBPF side never depends on aya.
#![no_std]
#![deny(missing_docs)]
#![cfg_attr(feature = "user", allow(unsafe_code))]

pub mod conntrack;
pub mod counters;
pub mod endpoint;
pub mod events;
pub mod ipcache;
pub mod policy;
pub mod verdict;

/// Address family values used in keys and events.
pub mod family {
    /// IPv4.
    pub const IPV4: u8 = 4;
    /// IPv6.
    pub const IPV6: u8 = 6;
}

/// IP protocol numbers the datapath understands.
pub mod proto {
    /// Any protocol (a wildcard in policy keys).
    pub const ANY: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Implements `aya::Pod` for plain-old-data types when the `user` feature is on.
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: `#[repr(C)]`, integers and byte arrays only, no padding (asserted by size).
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;
