//! Real packets through the userspace tunnel between two network namespaces (root only; the
//! tests fail, never skip, without root). Each test builds its own pair of namespaces.
//!
//! Run: `cargo test -p palisade-keymgr --test userspace`.

mod fixture;

mod t10_marker_never_on_underlay;
mod t20_forged_sender_cannot_deliver;
mod t30_rotation_loses_nothing;
mod t40_restart_keeps_key;
mod t50_peer_remove_and_readd;
