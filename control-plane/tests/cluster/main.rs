//! Control-plane cluster tests with real `palisade-controlplane` processes on loopback: each test
//! starts its own members on fresh ports and temporary data directories, and kills them all when
//! it ends, pass or fail.

mod fixture;
mod t10_basic;
mod t20_leader_killed_under_writes;
mod t30_restart;
mod t40_snapshot_catch_up;
mod t50_membership;
mod t60_auth;
mod t70_watch;
mod t80_tls;
mod t90_grpc;
mod t92_ui;
mod t95_identity_gc;
mod t97_kube_api;
