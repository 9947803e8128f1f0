//! Two peer tables wired back to back in memory: handshakes, cryptokey routing, rotation.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;
use crate::keys::NodeKey;

#[derive(Default)]
struct Collect {
    network: Vec<(SocketAddr, Vec<u8>)>,
    tunnel: Vec<Vec<u8>>,
}

impl Sink for Collect {
    fn emit(&mut self, out: Out<'_>) {
        match out {
            Out::Network(a, b) => self.network.push((a, b.to_vec())),
            Out::Tunnel(b) => self.tunnel.push(b.to_vec()),
        }
    }
}

const A_UNDERLAY: &str = "192.0.2.1:51820";
const B_UNDERLAY: &str = "192.0.2.2:51820";

struct Node {
    table: PeerTable,
    addr: SocketAddr,
    out: Collect,
}

fn node(key: &NodeKey, addr: &str) -> Node {
    Node {
        table: PeerTable::new(key.epoch(), key.secret().clone()),
        addr: addr.parse().unwrap(),
        out: Collect::default(),
    }
}

fn peer(name: &str, key: &NodeKey, endpoint: &str, cidr: &str) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        public_key: key.public_key(),
        epoch: key.epoch(),
        endpoint: endpoint.parse().unwrap(),
        allowed_ips: vec![cidr.parse().unwrap()],
    }
}

/// Delivers every pending datagram until both sides are quiet; returns the packets each side
/// wrote to its TUN device.
fn pump(a: &mut Node, b: &mut Node) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut to_a = Vec::new();
    let mut to_b = Vec::new();
    for _ in 0..20 {
        let from_a: Vec<_> = a.out.network.drain(..).collect();
        let from_b: Vec<_> = b.out.network.drain(..).collect();
        if from_a.is_empty() && from_b.is_empty() {
            break;
        }
        for (dst, d) in from_a {
            assert_eq!(dst, b.addr);
            b.table.inbound(a.addr, &d, &mut b.out);
        }
        for (dst, d) in from_b {
            assert_eq!(dst, a.addr);
            a.table.inbound(b.addr, &d, &mut a.out);
        }
    }
    to_a.append(&mut a.out.tunnel);
    to_b.append(&mut b.out.tunnel);
    (to_a, to_b)
}

/// A minimal IPv4/UDP packet (checksums are not checked by the table).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);

fn pair() -> (Node, Node, NodeKey, NodeKey) {
    let ka = NodeKey::generate(1);
    let kb = NodeKey::generate(1);
    let mut a = node(&ka, A_UNDERLAY);
    let mut b = node(&kb, B_UNDERLAY);
    a.table
        .add_peer(peer("b", &kb, B_UNDERLAY, "10.2.0.0/16"), &mut a.out)
        .unwrap();
    b.table
        .add_peer(peer("a", &ka, A_UNDERLAY, "10.1.0.0/16"), &mut b.out)
        .unwrap();
    pump(&mut a, &mut b);
    (a, b, ka, kb)
}

fn send(from: &mut Node, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) {
    let packet = ipv4(src, dst, payload);
    from.table.outbound(&packet, &mut from.out);
}

#[test]
fn packets_cross_after_handshake() {
    let (mut a, mut b, _, _) = pair();
    send(&mut a, POD_A, POD_B, b"hello");
    let (_, at_b) = pump(&mut a, &mut b);
    assert_eq!(at_b.len(), 1);
    assert_eq!(&at_b[0][28..], b"hello");
    let status = b.table.peer_status();
    assert_eq!(status[0].rx_bytes, at_b[0].len() as u64);
    assert!(status[0].last_handshake.is_some());
}

#[test]
fn source_outside_allowed_ips_is_dropped() {
    let (mut a, mut b, _, _) = pair();
    // A's tunnel encrypts anything routed to B; B must refuse a source A may not use.
    send(&mut a, Ipv4Addr::new(10, 3, 0, 9), POD_B, b"forged");
    let (_, at_b) = pump(&mut a, &mut b);
    assert!(at_b.is_empty());
    assert_eq!(b.table.peer_status()[0].rx_spoofed, 1);
}

#[test]
fn unknown_key_cannot_deliver() {
    let (_, mut b, _, kb) = pair();
    let forger_key = NodeKey::generate(1);
    let mut forger = node(&forger_key, A_UNDERLAY);
    forger
        .table
        .add_peer(peer("b", &kb, B_UNDERLAY, "10.2.0.0/16"), &mut forger.out)
        .unwrap();
    send(&mut forger, POD_A, POD_B, b"forged");
    let (_, at_b) = pump(&mut forger, &mut b);
    assert!(at_b.is_empty());
    assert!(b.table.drops.unknown_sender > 0);
}

#[test]
fn no_route_is_counted() {
    let (mut a, _, _, _) = pair();
    send(&mut a, POD_A, Ipv4Addr::new(10, 9, 0, 1), b"x");
    assert_eq!(a.table.drops.no_route, 1);
    assert!(a.out.network.is_empty());
}

#[test]
fn overlapping_allowed_ips_are_refused() {
    let (mut a, _, _, _) = pair();
    let other = NodeKey::generate(1);
    let err = a
        .table
        .add_peer(
            peer("c", &other, "192.0.2.3:51820", "10.2.5.0/24"),
            &mut a.out,
        )
        .unwrap_err();
    assert!(matches!(err, TunnelError::AllowedIpsOverlap { .. }));
}

#[test]
fn rotation_switches_only_after_confirmation_and_loses_nothing() {
    let (mut a, mut b, ka, _) = pair();
    let mut seq = 0u32;
    let mut received = Vec::new();
    let mut step = |a: &mut Node, b: &mut Node| {
        seq += 1;
        send(a, POD_A, POD_B, &seq.to_be_bytes());
        let (_, at_b) = pump(a, b);
        received.extend(at_b);
    };
    step(&mut a, &mut b);
    for round in 0..3u64 {
        // A rotates; B has not heard of the new key: A keeps sending on the old pair.
        let new = NodeKey::generate(ka.epoch() + 1 + round);
        a.table
            .add_local_key(new.epoch(), new.secret().clone(), &mut a.out)
            .unwrap();
        step(&mut a, &mut b);
        assert_eq!(a.table.peer_status()[0].sending, Some((new.epoch() - 1, 1)));
        // The control plane tells B; the new pair's handshake completes and both switch.
        b.table
            .add_peer_key("a", new.public_key(), new.epoch(), &mut b.out)
            .unwrap();
        step(&mut a, &mut b);
        step(&mut a, &mut b);
        assert_eq!(a.table.peer_status()[0].sending, Some((new.epoch(), 1)));
        // After the grace period the old key goes on both sides.
        a.table.remove_local_key(new.epoch() - 1).unwrap();
        b.table.remove_peer_key("a", new.epoch() - 1).unwrap();
        step(&mut a, &mut b);
    }
    let seqs: Vec<u32> = received
        .iter()
        .map(|p| u32::from_be_bytes(p[28..32].try_into().unwrap()))
        .collect();
    assert_eq!(seqs, (1..=seq).collect::<Vec<_>>());
}

#[test]
fn garbage_initiation_is_dropped_before_any_key_work() {
    let (_, mut b, _, _) = pair();
    // A handshake initiation is type 1 and 148 bytes long; random contents fail mac1.
    let mut init = vec![0x5au8; 148];
    init[..4].copy_from_slice(&[1, 0, 0, 0]);
    let before = b.table.drops.unknown_sender;
    b.table
        .inbound(A_UNDERLAY.parse().unwrap(), &init, &mut b.out);
    assert_eq!(b.table.drops.unknown_sender, before + 1);
    assert!(b.out.network.is_empty() && b.out.tunnel.is_empty());
}
