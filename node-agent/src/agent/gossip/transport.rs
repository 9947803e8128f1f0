//! chitchat's `Transport` over UDP with every datagram sealed ([`super::seal`]): what chitchat
//! sends is sealed here, and what arrives reaches chitchat only if it opens and decodes. Every
//! dropped datagram is counted by reason (status and `palisade_agent_gossip_dropped_total`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};

use super::seal::{DropReason, MAX_DATAGRAM, Sealer};

/// Drop counters, shared with status.
#[derive(Debug, Default)]
pub struct Drops {
    counts: [AtomicU64; DropReason::ALL.len()],
    /// Envelopes chitchat asked to send that would not fit one sealed datagram.
    pub send_oversize: AtomicU64,
    /// Datagrams accepted.
    pub accepted: AtomicU64,
}

impl Drops {
    /// Counts a dropped datagram.
    pub fn count(&self, r: DropReason) {
        self.counts[r as usize].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("palisade_agent_gossip_dropped_total", "reason" => r.as_str())
            .increment(1);
    }

    /// Drops so far, by reason.
    pub fn get(&self, r: DropReason) -> u64 {
        self.counts[r as usize].load(Ordering::Relaxed)
    }
}

/// Opens sealed UDP sockets.
pub struct SealedUdp {
    /// The sealer (one key for the cluster).
    pub sealer: Arc<Sealer>,
    /// Where drops are counted.
    pub drops: Arc<Drops>,
}

#[async_trait]
impl Transport for SealedUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("gossip: binding {listen_addr}/udp"))?;
        Ok(Box::new(SealedSocket {
            socket,
            sealer: self.sealer.clone(),
            drops: self.drops.clone(),
            // One byte more than the largest datagram accepted: a longer one shows as oversize.
            buf: vec![0u8; MAX_DATAGRAM + 1],
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    sealer: Arc<Sealer>,
    drops: Arc<Drops>,
    buf: Vec<u8>,
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let plain = msg.serialize_to_vec();
        let Some(datagram) = self.sealer.seal(&plain, super::now_ms()) else {
            // Chitchat bounds its deltas by the UDP limit, not by ours minus the seal: such an
            // envelope is not sent (counted), the next round sends a smaller delta.
            self.drops.send_oversize.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("palisade_agent_gossip_dropped_total", "reason" => "send_oversize")
                .increment(1);
            return Ok(());
        };
        // An unreachable peer is ordinary while the network is cut: not a transport failure
        // (which would stop chitchat's server).
        let _ = self.socket.send_to(&datagram, to).await;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::OutOfMemory
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("gossip: receiving"),
            };
            match open_message(&self.sealer, &self.buf[..n]) {
                Ok(msg) => {
                    self.drops.accepted.fetch_add(1, Ordering::Relaxed);
                    return Ok((from, msg));
                }
                Err(reason) => self.drops.count(reason),
            }
        }
    }
}

/// Opens a datagram and decodes the chitchat message inside (all of it: trailing bytes are
/// malformed too).
pub fn open_message(sealer: &Sealer, datagram: &[u8]) -> Result<ChitchatMessage, DropReason> {
    let plain = sealer.open(datagram, super::now_ms())?;
    let mut buf = plain.as_slice();
    let msg = ChitchatMessage::deserialize(&mut buf).map_err(|_| DropReason::Malformed)?;
    if !buf.is_empty() {
        return Err(DropReason::Malformed);
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::gossip::seal::GossipKey;

    #[test]
    fn a_sealed_payload_that_is_not_an_envelope_is_malformed() {
        let s = Sealer::new(&GossipKey::from_bytes([3; 32]));
        let d = s
            .seal(b"\xff\xff not chitchat", super::super::now_ms())
            .expect("fits");
        assert_eq!(open_message(&s, &d).map(|_| ()), Err(DropReason::Malformed));
    }

    #[test]
    fn a_chitchat_message_round_trips_sealed_with_its_exact_length() {
        let s = Sealer::new(&GossipKey::from_bytes([3; 32]));
        let plain = ChitchatMessage::BadCluster.serialize_to_vec();
        assert_eq!(plain.len(), 4, "magic (2), version (1), BadCluster tag (1)");
        let d = s.seal(&plain, super::super::now_ms()).expect("fits");
        assert_eq!(d.len(), 4 + super::super::seal::OVERHEAD);
        assert_eq!(open_message(&s, &d), Ok(ChitchatMessage::BadCluster));
        // One byte too many after a valid message: malformed, not silently accepted.
        let mut longer = plain.clone();
        longer.push(0);
        let d = s.seal(&longer, super::super::now_ms()).expect("fits");
        assert_eq!(open_message(&s, &d).map(|_| ()), Err(DropReason::Malformed));
    }
}
