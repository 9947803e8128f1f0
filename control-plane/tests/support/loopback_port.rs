//! Loopback ports for test processes to listen on. Shared by the control plane's cluster tests
//! and the CLI's control-plane tests (`cli/tests/controlplane/fixture.rs` includes this file).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};

/// A loopback port free for a member to listen on, below the kernel's ephemeral port range.
///
/// Not one the kernel picks for a bind to port 0: such a port is free only until the member
/// binds it, and meanwhile any outgoing connection on the machine (the members' Raft clients,
/// the tests' HTTP clients) may take it as its source port. A bootstrapping member that lost
/// its port that way leaves a cluster with no leader at all, which failed CI once. Ports below
/// the ephemeral range are never given out as source ports, so only another listener can take
/// one; each test process starts at its own offset and checks that the port is free.
pub fn loopback_port() -> std::io::Result<u16> {
    const FIRST: u64 = 10_000;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let end = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32_768)
        .min(32_768);
    if end < FIRST + 1_000 {
        // An unusual ephemeral range: no room below it, take what the kernel gives.
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let span = end - FIRST;
    let offset = u64::from(std::process::id()) * 7_919 % span;
    (0..span)
        .map(|_| FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span)
        .filter_map(|p| u16::try_from(p).ok())
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .ok_or_else(|| std::io::Error::other(format!("no free loopback port in {FIRST}..{end}")))
}
