//! (d) Restarting a node with the same key directory keeps its key and epoch, and the peer, which
//! was not told anything, accepts it again.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use palisade_keymgr::KeyStore;

use crate::fixture::{POD_A, POD_B, Pair, send_until_received};

#[test]
fn restart_keeps_key() -> Result<()> {
    let mut pair = Pair::new()?;
    let dst = SocketAddr::from((POD_B, 7200));
    let rx = pair.b.udp(dst)?;
    let tx = pair.a.udp(SocketAddr::from((POD_A, 0)))?;
    send_until_received(&tx, &rx, dst, b"before", Duration::from_secs(10))?;
    let before = pair.a.keys.current().public_key();

    // "Restart" node A: the tunnel goes away (its TUN device with it) and the key store is
    // reopened from disk.
    pair.a.tunnel = None;
    pair.a.keys = KeyStore::open(pair.key_dir_a())?;
    ensure!(
        pair.a.keys.current().public_key() == before,
        "key changed across restart"
    );
    ensure!(
        pair.a.keys.current().epoch() == 1,
        "epoch changed across restart"
    );
    pair.a.start_tunnel()?;
    let b_config = pair.b.peer_config();
    pair.a.tunnel().add_peer(b_config)?;

    let tx = pair.a.udp(SocketAddr::from((POD_A, 0)))?;
    let got = send_until_received(&tx, &rx, dst, b"after", Duration::from_secs(10))?;
    ensure!(got == b"after");
    Ok(())
}
