//! (a) A marker payload crosses the tunnel; the underlay capture shows only WireGuard UDP.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::fixture::{Capture, POD_A, POD_B, Pair, WG_PORT, run, send_until_received};

const MARKER: &[u8] = b"PALISADE-MARKER-7f3a9c1e-plaintext-must-not-leak";

#[test]
fn marker_crosses_encrypted() -> Result<()> {
    let pair = Pair::new()?;
    let pcap = pair.dir.path().join("underlay.pcap");
    let capture = Capture::start(&pair.b.ns, &pair.underlay_if_b(), &pcap)?;

    let rx = pair.b.udp(SocketAddr::from((POD_B, 7000)))?;
    let tx = pair.a.udp(SocketAddr::from((POD_A, 0)))?;
    let got = send_until_received(
        &tx,
        &rx,
        SocketAddr::from((POD_B, 7000)),
        MARKER,
        Duration::from_secs(10),
    )?;
    ensure!(got == MARKER, "payload changed in transit");
    for _ in 0..20 {
        tx.send_to(MARKER, SocketAddr::from((POD_B, 7000)))?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let bytes = capture.stop()?;

    ensure!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER),
        "the marker appeared in clear on the underlay"
    );
    let path = pcap.to_string_lossy().into_owned();
    let port = WG_PORT.to_string();
    let wireguard = run("tcpdump", &["-r", &path, "-n", "udp", "port", &port])?;
    ensure!(
        // UDP GSO sends a train of datagrams as one capture record, so count records, not
        // packets: at least one, and (below) nothing that is not WireGuard.
        wireguard.lines().count() >= 1,
        "too few wireguard packets ({} capture bytes):\n{}",
        bytes.len(),
        run("tcpdump", &["-r", &path, "-n"])?
    );
    let other = run(
        "tcpdump",
        &[
            "-r", &path, "-n", "not", "arp", "and", "not", "(", "udp", "port", &port, ")",
        ],
    )?;
    ensure!(
        other.trim().is_empty(),
        "non-wireguard traffic on the underlay:\n{other}"
    );

    let status = pair.b.tunnel().peer_status("node-a").expect("peer");
    ensure!(
        status.rx_bytes > 0 && status.last_handshake.is_some(),
        "{status:?}"
    );
    Ok(())
}
