//! (b) A sender with a key B does not know, and a known peer using a source address outside its
//! allowed IPs, both fail to deliver.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, ensure};
use palisade_keymgr::{NodeKey, PeerConfig, TunnelConfig, UserspaceTunnel};

use crate::fixture::{
    POD_A, POD_B, Pair, UNDERLAY_A, UNDERLAY_B, WG_PORT, assert_silent, send_until_received,
};

#[test]
fn wrong_key_cannot_deliver() -> Result<()> {
    let pair = Pair::new()?;
    // Baseline: the real peer gets through.
    let rx = pair.b.udp(SocketAddr::from((POD_B, 7001)))?;
    let tx = pair.a.udp(SocketAddr::from((POD_A, 0)))?;
    send_until_received(
        &tx,
        &rx,
        SocketAddr::from((POD_B, 7001)),
        b"real",
        Duration::from_secs(10),
    )?;

    // A forger on node A's underlay with its own key, claiming node A's pod range, aimed at B.
    let victim = Ipv4Addr::new(10, 251, 2, 200);
    pair.b
        .ns
        .ip(&["addr", "add", &format!("{victim}/32"), "dev", "lo"])?;
    let forger_if = format!("wf{}", pair.id);
    let forger_key = NodeKey::generate(1);
    let config = TunnelConfig::new(
        forger_if.clone(),
        SocketAddr::from((UNDERLAY_A, WG_PORT + 1)),
    );
    let forger = pair
        .a
        .ns
        .enter(move || Ok(UserspaceTunnel::start(config, &forger_key)?))?;
    forger.add_peer(PeerConfig {
        name: "node-b".into(),
        public_key: pair.b.keys.current().public_key(),
        epoch: 1,
        endpoint: SocketAddr::from((UNDERLAY_B, WG_PORT)),
        allowed_ips: vec!["10.251.2.128/25".parse()?],
    })?;
    pair.a.ns.ip(&[
        "route",
        "add",
        "10.251.2.128/25",
        "dev",
        &forger_if,
        "src",
        &POD_A.to_string(),
    ])?;

    let rx_victim = pair.b.udp(SocketAddr::from((victim, 7002)))?;
    for _ in 0..30 {
        tx.send_to(b"forged", SocketAddr::from((victim, 7002)))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_silent(&rx_victim, Duration::from_millis(1500))?;
    let status = pair.b.tunnel().status();
    ensure!(
        status.drops_unknown_sender > 0,
        "forger's handshakes were not seen: {status:?}"
    );
    let forger_peer = forger.peer_status("node-b").expect("peer");
    ensure!(
        forger_peer.last_handshake.is_none(),
        "forger completed a handshake"
    );
    Ok(())
}

#[test]
fn source_outside_allowed_ips_is_dropped() -> Result<()> {
    let pair = Pair::new()?;
    let rx = pair.b.udp(SocketAddr::from((POD_B, 7003)))?;
    let tx = pair.a.udp(SocketAddr::from((POD_A, 0)))?;
    send_until_received(
        &tx,
        &rx,
        SocketAddr::from((POD_B, 7003)),
        b"real",
        Duration::from_secs(10),
    )?;

    // Node A (a real, authenticated peer) sends from an address of another node's pod range.
    let stolen = Ipv4Addr::new(10, 251, 9, 1);
    pair.a
        .ns
        .ip(&["addr", "add", &format!("{stolen}/32"), "dev", "lo"])?;
    let spoofer = pair.a.udp(SocketAddr::from((stolen, 0)))?;
    for _ in 0..30 {
        spoofer.send_to(b"spoofed", SocketAddr::from((POD_B, 7003)))?;
    }
    assert_silent(&rx, Duration::from_millis(1000))?;
    let peer = pair.b.tunnel().peer_status("node-a").expect("peer");
    ensure!(
        peer.rx_spoofed >= 30,
        "spoofed packets not counted: {peer:?}"
    );
    Ok(())
}
