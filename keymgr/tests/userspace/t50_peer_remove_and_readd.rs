//! Peers change at run time by removal and re-addition, never by modification: removing node A
//! from B stops A's traffic at B; adding it back restores it. The changes go through the
//! `Reconciler`, as the agent will apply the control plane's peer list.

use std::net::SocketAddr;
use std::time::Duration;

use std::time::Instant;

use anyhow::{Result, ensure};
use palisade_keymgr::{PeerCommand, Reconciler};

use crate::fixture::{POD_A, POD_B, Pair, assert_silent, send_until_received};

#[test]
fn remove_and_readd_peer_at_run_time() -> Result<()> {
    let pair = Pair::new()?;
    let dst = SocketAddr::from((POD_B, 7300));
    let rx = pair.b.udp(dst)?;
    let tx = pair.a.udp(SocketAddr::from((POD_A, 0)))?;
    send_until_received(&tx, &rx, dst, b"before", Duration::from_secs(10))?;

    // B's reconciler knows node A (as if applied from the first peer list), then A leaves.
    let mut peers = Reconciler::new(Duration::from_secs(60));
    peers.update(std::slice::from_ref(&pair.a.peer_config()), Instant::now());
    let leave = peers.update(&[], Instant::now());
    ensure!(
        leave == vec![PeerCommand::RemovePeer("node-a".into())],
        "{leave:?}"
    );
    Reconciler::apply(&leave, pair.b.tunnel())?;
    ensure!(!pair.b.tunnel().remove_peer("node-a"), "peer still there");
    ensure!(pair.b.tunnel().status().peers.is_empty());
    for _ in 0..20 {
        tx.send_to(b"while-removed", dst)?;
    }
    assert_silent(&rx, Duration::from_millis(800))?;

    // Node A comes back.
    let join = peers.update(std::slice::from_ref(&pair.a.peer_config()), Instant::now());
    Reconciler::apply(&join, pair.b.tunnel())?;
    // A second add with the same name is refused while the peer exists: no modification.
    ensure!(
        pair.b.tunnel().add_peer(pair.a.peer_config()).is_err(),
        "adding an existing peer must fail"
    );
    let got = send_until_received(&tx, &rx, dst, b"after", Duration::from_secs(10))?;
    ensure!(got == b"after");
    Ok(())
}
