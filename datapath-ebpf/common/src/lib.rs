//! Types shared by Palisade's eBPF programs and user space.
//!
//! Every struct here crosses the kernel/user boundary inside a BPF map or a ring-buffer event, so
//! each is `#[repr(C)]`, has no implicit padding (flags are `u32`, never `bool`) and carries a
//! compile-time size assertion. Map names and sizes live here too, grouped by feature, so the
//! kernel program, the user-space loader and the tests agree on them.
//!
//! The `user` feature adds `aya::Pod` impls for user space; the eBPF side never depends on aya.
#![no_std]
#![deny(missing_docs)]
#![cfg_attr(feature = "user", allow(unsafe_code))]

pub mod counters;
