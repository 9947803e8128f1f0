//! The enforcement programs on crafted packets through `BPF_PROG_TEST_RUN`: every verdict the
//! datapath can reach, checked against the tc action the kernel returned and the verdict counters.
//!
//! The kernel runs test packets on the loopback device, so the endpoint under test is registered
//! at ifindex 1. Each test loads its own copy of the object, so maps start empty.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_datapath_common::{
    endpoint::{EndpointInfo, FLAG_HAS_IPV4, FLAG_HAS_IPV6},
    policy::{
        DIRECTION_EGRESS, DIRECTION_INGRESS, FLAG_AUDIT, PolicyValue, VERDICT_ALLOW, VERDICT_DENY,
    },
    proto, verdict,
};
use palisade_node_agent::datapath::{
    Datapath, DatapathConfig, Hook, PolicyMatch, port_range_prefixes,
};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

const EP_ID: u32 = 42;
const EP_IDENTITY: u32 = 1000;
const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 11);
const PEER_B: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 12);
const PEER_B_ID: u32 = 2000;
const PEER_C: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 11);
const PEER_C_ID: u32 = 3000;
const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const IDENTITY_WORLD: u32 = 2;

/// A datapath with one endpoint (ifindex 1) and two known peers in the ipcache.
fn datapath() -> Datapath {
    let mut dp = Datapath::load_with(&DatapathConfig::for_test()).expect("load (root, bpffs)");
    let mut info = EndpointInfo {
        endpoint_id: EP_ID,
        identity: EP_IDENTITY,
        flags: FLAG_HAS_IPV4,
        ..Default::default()
    };
    info.ipv4 = POD.octets();
    dp.upsert_endpoint(1, info).expect("endpoint");
    dp.upsert_ipcache(IpAddr::V4(POD), 32, EP_IDENTITY)
        .expect("ipcache pod");
    dp.upsert_ipcache(IpAddr::V4(PEER_B), 32, PEER_B_ID)
        .expect("ipcache b");
    dp.upsert_ipcache(IpAddr::V4(PEER_C), 32, PEER_C_ID)
        .expect("ipcache c");
    dp
}

fn allow(rule_id: u32) -> PolicyValue {
    PolicyValue {
        verdict: VERDICT_ALLOW,
        rule_id,
        ..Default::default()
    }
}

fn deny(rule_id: u32) -> PolicyValue {
    PolicyValue {
        verdict: VERDICT_DENY,
        rule_id,
        ..Default::default()
    }
}

fn rule(identity: u32, direction: u8, protocol: u8, port: u16, port_prefix: u8) -> PolicyMatch {
    PolicyMatch {
        endpoint_id: EP_ID,
        identity,
        direction,
        protocol,
        port,
        port_prefix,
    }
}

/// Ethernet + IPv4 + L4 header (TCP with SYN, UDP, or ICMP echo with id 0x1234).
fn frame_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
    let l4: Vec<u8> = match protocol {
        proto::TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = 0x02; // SYN
            h
        }
        proto::UDP | proto::SCTP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        }
        // ICMP: `dport` is the type; echo id 0x1234.
        _ => vec![dport as u8, 0, 0, 0, 0x12, 0x34, 0, 1],
    };
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let total = 20 + l4.len() as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

fn frame_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0, 0, 8, proto::UDP, 64];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    f.extend_from_slice(&ip);
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

fn run(dp: &mut Datapath, hook: Hook, frame: &[u8]) -> i32 {
    dp.test_run(hook, frame, 1).expect("test run").0
}

fn counted(dp: &Datapath, reason: u32, direction: u8) -> u64 {
    dp.verdict_counts()
        .expect("counts")
        .get(&(reason, direction))
        .copied()
        .unwrap_or(0)
}

#[test]
fn unmanaged_interface_passes_untouched() {
    let mut dp = Datapath::load_with(&DatapathConfig::for_test()).expect("load");
    let f = frame_v4(POD, PEER_B, proto::TCP, 40000, 80);
    assert_eq!(run(&mut dp, Hook::Egress, &f), TC_ACT_OK);
    assert!(
        dp.verdict_counts().expect("counts").is_empty(),
        "nothing counted for a non-endpoint"
    );
}

#[test]
fn no_entry_means_default_deny_in_both_directions() {
    let mut dp = datapath();
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::TCP, 40000, 80)
        ),
        TC_ACT_SHOT
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40000, 80)
        ),
        TC_ACT_SHOT
    );
    assert_eq!(
        counted(&dp, verdict::DROP_POLICY_DEFAULT, DIRECTION_EGRESS),
        1
    );
    assert_eq!(
        counted(&dp, verdict::DROP_POLICY_DEFAULT, DIRECTION_INGRESS),
        1
    );
}

#[test]
fn allow_by_identity_protocol_and_port() {
    let mut dp = datapath();
    dp.upsert_policy(
        rule(PEER_B_ID, DIRECTION_EGRESS, proto::TCP, 80, 16),
        allow(7),
    )
    .expect("policy");
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::TCP, 40000, 80)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::TCP, 40000, 81)
        ),
        TC_ACT_SHOT,
        "other port"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::UDP, 40000, 80)
        ),
        TC_ACT_SHOT,
        "other protocol"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_C, proto::TCP, 40000, 80)
        ),
        TC_ACT_SHOT,
        "other peer"
    );
    assert_eq!(counted(&dp, verdict::FORWARDED_NEW, DIRECTION_EGRESS), 1);
    assert_eq!(
        counted(&dp, verdict::DROP_POLICY_DEFAULT, DIRECTION_EGRESS),
        3
    );
}

#[test]
fn replies_and_established_packets_pass_through_conntrack() {
    let mut dp = datapath();
    dp.upsert_policy(
        rule(PEER_B_ID, DIRECTION_EGRESS, proto::TCP, 80, 16),
        allow(7),
    )
    .expect("policy");
    // Ingress has no entry at all (default deny) ...
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 80, 40001)
        ),
        TC_ACT_SHOT
    );
    // ... but once the pod opened the connection, its replies come back in.
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::TCP, 40000, 80)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 80, 40000)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::TCP, 40000, 80)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        counted(&dp, verdict::FORWARDED_ESTABLISHED, DIRECTION_INGRESS),
        1
    );
    assert_eq!(
        counted(&dp, verdict::FORWARDED_ESTABLISHED, DIRECTION_EGRESS),
        1
    );
    // A different source port from the peer is a new, unrelated flow.
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 81, 40000)
        ),
        TC_ACT_SHOT
    );
}

#[test]
fn conntrack_entries_carry_their_last_packet_and_whether_the_connection_is_closing() {
    use std::time::Duration;
    let mut dp = datapath();
    dp.upsert_policy(
        rule(PEER_B_ID, DIRECTION_EGRESS, proto::TCP, 80, 16),
        allow(7),
    )
    .expect("policy");
    dp.upsert_policy(
        rule(PEER_B_ID, DIRECTION_INGRESS, proto::TCP, 5000, 16),
        allow(8),
    )
    .expect("policy");
    let flows = |dp: &Datapath| dp.egress_flows(|_, _| true).expect("conntrack");
    // The pod's connection, and one the peer opened to the pod (not the pod's own).
    let out = frame_v4(POD, PEER_B, proto::TCP, 40000, 80);
    assert_eq!(run(&mut dp, Hook::Egress, &out), TC_ACT_OK);
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40100, 5000)
        ),
        TC_ACT_OK
    );
    let f = flows(&dp);
    assert_eq!(f.len(), 1, "only the egress-created flow: {f:?}");
    assert_eq!(
        (f[0].src, f[0].sport, f[0].dst, f[0].dport, f[0].protocol),
        (IpAddr::V4(POD), 40000, IpAddr::V4(PEER_B), 80, proto::TCP)
    );
    assert!(f[0].idle < Duration::from_millis(500), "{f:?}");
    assert!(!f[0].closing);
    // Quiet for 1.5 s: the age grows.
    std::thread::sleep(Duration::from_millis(1_500));
    let quiet = flows(&dp)[0].idle;
    assert!(quiet >= Duration::from_millis(1_500), "{quiet:?}");
    // A reply (the reverse key) refreshes it: older than the 1 s granularity.
    let mut reply = frame_v4(PEER_B, POD, proto::TCP, 80, 40000);
    reply[47] = 0x10; // ACK
    assert_eq!(run(&mut dp, Hook::Ingress, &reply), TC_ACT_OK);
    let fresh = flows(&dp)[0].idle;
    assert!(fresh < Duration::from_millis(500), "{fresh:?}");
    // Within the granularity, a packet leaves it alone (no store per packet).
    std::thread::sleep(Duration::from_millis(300));
    let mut ack = out.clone();
    ack[47] = 0x10;
    assert_eq!(run(&mut dp, Hook::Egress, &ack), TC_ACT_OK);
    let same = flows(&dp)[0].idle;
    assert!(same >= Duration::from_millis(300), "{same:?}");
    assert!(!flows(&dp)[0].closing, "data is not closing");
    // The peer's FIN marks it closing (still established: the rest of the close passes).
    let mut fin = reply.clone();
    fin[47] = 0x11; // FIN, ACK
    assert_eq!(run(&mut dp, Hook::Ingress, &fin), TC_ACT_OK);
    assert!(flows(&dp)[0].closing, "FIN seen");
    assert_eq!(run(&mut dp, Hook::Egress, &ack), TC_ACT_OK);
    assert!(
        flows(&dp)[0].closing,
        "an ACK after the FIN does not reopen it"
    );
    // The same ports reused by a new connection (SYN without ACK): open again.
    assert_eq!(run(&mut dp, Hook::Egress, &out), TC_ACT_OK);
    assert!(!flows(&dp)[0].closing, "reused 5-tuple");
    // RST closes too.
    let mut rst = ack.clone();
    rst[47] = 0x04;
    assert_eq!(run(&mut dp, Hook::Egress, &rst), TC_ACT_OK);
    assert!(flows(&dp)[0].closing, "RST seen");
}

#[test]
fn the_more_specific_entry_decides_peer_first_on_a_tie() {
    let mut dp = datapath();
    // L3-only allow for B, L4-only deny of TCP 80 for any peer: the L4 entry is more specific
    // (Cilium's order), so B is denied on 80 and allowed elsewhere.
    dp.upsert_policy(rule(PEER_B_ID, DIRECTION_INGRESS, 0, 0, 0), allow(1))
        .expect("allow b");
    dp.upsert_policy(rule(0, DIRECTION_INGRESS, proto::TCP, 80, 16), deny(2))
        .expect("deny 80");
    let got = run(
        &mut dp,
        Hook::Ingress,
        &frame_v4(PEER_B, POD, proto::TCP, 40000, 80),
    );
    assert_eq!(got, TC_ACT_SHOT, "B on 80: {:?}", dp.verdict_counts());
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40000, 81)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        counted(&dp, verdict::DROP_POLICY_DENY, DIRECTION_INGRESS),
        1
    );
    // At equal specificity the peer's own entry wins over the any-peer one.
    dp.upsert_policy(
        rule(PEER_C_ID, DIRECTION_INGRESS, proto::TCP, 80, 16),
        allow(3),
    )
    .expect("allow c 80");
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_C, POD, proto::TCP, 40000, 80)
        ),
        TC_ACT_OK
    );
}

#[test]
fn any_peer_entry_applies_to_every_identity_and_to_world() {
    let mut dp = datapath();
    dp.upsert_policy(rule(0, DIRECTION_EGRESS, proto::UDP, 53, 16), allow(3))
        .expect("policy");
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_C, proto::UDP, 5353, 53)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, INTERNET, proto::UDP, 5353, 53)
        ),
        TC_ACT_OK
    );
}

#[test]
fn unknown_addresses_are_world() {
    let mut dp = datapath();
    dp.upsert_policy(
        rule(IDENTITY_WORLD, DIRECTION_EGRESS, proto::TCP, 443, 16),
        allow(4),
    )
    .expect("policy");
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, INTERNET, proto::TCP, 40000, 443)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::TCP, 40000, 443)
        ),
        TC_ACT_SHOT,
        "B is not world"
    );
}

#[test]
fn port_ranges_match_exactly_their_bounds() {
    let mut dp = datapath();
    for (base, prefix) in port_range_prefixes(5000, 5010) {
        dp.upsert_policy(
            rule(PEER_B_ID, DIRECTION_INGRESS, proto::TCP, base, prefix),
            allow(5),
        )
        .expect("policy");
    }
    for (port, want) in [
        (4999, TC_ACT_SHOT),
        (5000, TC_ACT_OK),
        (5007, TC_ACT_OK),
        (5010, TC_ACT_OK),
        (5011, TC_ACT_SHOT),
    ] {
        assert_eq!(
            run(
                &mut dp,
                Hook::Ingress,
                &frame_v4(PEER_B, POD, proto::TCP, 30000 + port, port)
            ),
            want,
            "port {port}"
        );
    }
}

#[test]
fn any_protocol_entry_allows_every_protocol() {
    let mut dp = datapath();
    dp.upsert_policy(rule(PEER_B_ID, DIRECTION_INGRESS, 0, 0, 0), allow(6))
        .expect("policy");
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::UDP, 1, 9999)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::SCTP, 1, 9999)
        ),
        TC_ACT_OK
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::ICMP, 0, 8)
        ),
        TC_ACT_OK
    );
}

#[test]
fn icmp_is_matched_by_type_and_echo_replies_return() {
    let mut dp = datapath();
    dp.upsert_policy(
        rule(PEER_B_ID, DIRECTION_EGRESS, proto::ICMP, 8, 16),
        allow(8),
    )
    .expect("policy");
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::ICMP, 0, 13)
        ),
        TC_ACT_SHOT,
        "timestamp request"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::ICMP, 0, 8)
        ),
        TC_ACT_OK,
        "echo request"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::ICMP, 0, 0)
        ),
        TC_ACT_OK,
        "its echo reply"
    );
}

#[test]
fn allow_localhost_admits_the_node_only_when_flagged() {
    use palisade_datapath_common::endpoint::{FLAG_ALLOW_LOCALHOST, IDENTITY_HOST};
    let node = Ipv4Addr::new(10, 98, 0, 11);
    let mut dp = datapath();
    dp.upsert_ipcache(IpAddr::V4(node), 32, IDENTITY_HOST)
        .expect("ipcache");
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(node, POD, proto::TCP, 40000, 80)
        ),
        TC_ACT_SHOT,
        "not flagged"
    );
    let mut info = EndpointInfo {
        endpoint_id: EP_ID,
        identity: EP_IDENTITY,
        flags: FLAG_HAS_IPV4 | FLAG_ALLOW_LOCALHOST,
        ..Default::default()
    };
    info.ipv4 = POD.octets();
    dp.upsert_endpoint(1, info).expect("endpoint");
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(node, POD, proto::TCP, 40001, 80)
        ),
        TC_ACT_OK,
        "flagged"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40002, 80)
        ),
        TC_ACT_SHOT,
        "others still policed"
    );
}

#[test]
fn pod_address_rules_apply_only_when_no_identity_rule_decides() {
    use palisade_datapath_common::policy::FLAG_FALLBACK;
    let mut dp = datapath();
    // An ipBlock that contains B's address allows TCP 80 from it.
    let ip_rule = rule(0, DIRECTION_INGRESS, proto::TCP, 80, 16);
    dp.upsert_pod_ip_policy(ip_rule, IpAddr::V4(PEER_B), allow(20))
        .expect("pod ip");
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40000, 80)
        ),
        TC_ACT_OK,
        "B by address"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40000, 81)
        ),
        TC_ACT_SHOT,
        "other port"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_C, POD, proto::TCP, 40000, 80)
        ),
        TC_ACT_SHOT,
        "C is outside"
    );
    // A fallback entry (no rule decided) still lets the address rule apply ...
    let fallback = PolicyValue {
        verdict: VERDICT_DENY,
        flags: FLAG_FALLBACK,
        rule_id: 0,
        ..Default::default()
    };
    dp.upsert_policy(rule(0, DIRECTION_INGRESS, 0, 0, 0), fallback)
        .expect("fallback");
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40001, 80)
        ),
        TC_ACT_OK,
        "under a fallback"
    );
    // ... but a rule that decides (a deny for B's identity) wins over it.
    dp.upsert_policy(
        rule(PEER_B_ID, DIRECTION_INGRESS, proto::TCP, 80, 16),
        deny(21),
    )
    .expect("deny b");
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40002, 80)
        ),
        TC_ACT_SHOT,
        "identity rule decides"
    );
}

#[test]
fn spoofed_source_is_dropped_even_when_policy_allows_everything() {
    let mut dp = datapath();
    dp.upsert_policy(rule(0, DIRECTION_EGRESS, 0, 0, 0), allow(9))
        .expect("policy");
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(PEER_C, PEER_B, proto::TCP, 40000, 80)
        ),
        TC_ACT_SHOT
    );
    assert_eq!(
        counted(&dp, verdict::DROP_SPOOFED_SOURCE, DIRECTION_EGRESS),
        1
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::Egress,
            &frame_v4(POD, PEER_B, proto::TCP, 40000, 80)
        ),
        TC_ACT_OK
    );
}

/// Established packets skip the endpoint lookup and the source check: a conntrack entry only
/// counts in the direction it was admitted (or as its reply), so a pod cannot reuse an entry
/// its ingress created to send from the peer's address.
#[test]
fn a_pod_cannot_send_from_a_peer_address_through_an_ingress_conntrack_entry() {
    let mut dp = datapath();
    dp.upsert_policy(rule(0, DIRECTION_INGRESS, 0, 0, 0), allow(9))
        .expect("policy");
    dp.upsert_policy(rule(0, DIRECTION_EGRESS, 0, 0, 0), allow(9))
        .expect("policy");
    // PEER_B -> POD admitted on ingress: the entry is (PEER_B, POD, 40000, 80).
    let inbound = frame_v4(PEER_B, POD, proto::TCP, 40000, 80);
    assert_eq!(run(&mut dp, Hook::Ingress, &inbound), TC_ACT_OK);
    // The same 5-tuple sent by the pod (source PEER_B) is a spoof, entry or not.
    assert_eq!(run(&mut dp, Hook::Egress, &inbound), TC_ACT_SHOT);
    assert_eq!(
        counted(&dp, verdict::DROP_SPOOFED_SOURCE, DIRECTION_EGRESS),
        1
    );
    // The pod's reply is the entry's reverse and passes as established.
    let reply = frame_v4(POD, PEER_B, proto::TCP, 80, 40000);
    let before = counted(&dp, verdict::FORWARDED_ESTABLISHED, DIRECTION_EGRESS);
    assert_eq!(run(&mut dp, Hook::Egress, &reply), TC_ACT_OK);
    assert_eq!(
        counted(&dp, verdict::FORWARDED_ESTABLISHED, DIRECTION_EGRESS),
        before + 1
    );
}

#[test]
fn audit_mode_denials_are_counted_but_not_enforced() {
    let mut dp = datapath();
    let audited = PolicyValue {
        verdict: VERDICT_DENY,
        flags: FLAG_AUDIT,
        rule_id: 10,
        ..Default::default()
    };
    dp.upsert_policy(
        rule(PEER_B_ID, DIRECTION_INGRESS, proto::TCP, 80, 16),
        audited,
    )
    .expect("policy");
    assert_eq!(
        run(
            &mut dp,
            Hook::Ingress,
            &frame_v4(PEER_B, POD, proto::TCP, 40000, 80)
        ),
        TC_ACT_OK
    );
    assert_eq!(counted(&dp, verdict::FORWARDED_AUDIT, DIRECTION_INGRESS), 1);
}

#[test]
fn truncated_headers_are_dropped_as_malformed() {
    let mut dp = datapath();
    dp.upsert_policy(rule(0, DIRECTION_EGRESS, 0, 0, 0), allow(11))
        .expect("policy");
    let mut f = frame_v4(POD, PEER_B, proto::TCP, 40000, 80);
    f.truncate(14 + 20 + 2); // the TCP destination port is cut off
    assert_eq!(run(&mut dp, Hook::Egress, &f), TC_ACT_SHOT);
    assert_eq!(counted(&dp, verdict::DROP_MALFORMED, DIRECTION_EGRESS), 1);
}

#[test]
fn ipv6_is_policed_like_ipv4() {
    let mut dp = Datapath::load_with(&DatapathConfig::for_test()).expect("load");
    let pod6: Ipv6Addr = "fd00:200:1::11".parse().expect("addr");
    let peer6: Ipv6Addr = "fd00:200:1::12".parse().expect("addr");
    let mut info = EndpointInfo {
        endpoint_id: EP_ID,
        identity: EP_IDENTITY,
        flags: FLAG_HAS_IPV6,
        ..Default::default()
    };
    info.ipv6 = pod6.octets();
    dp.upsert_endpoint(1, info).expect("endpoint");
    dp.upsert_ipcache(IpAddr::V6(peer6), 128, PEER_B_ID)
        .expect("ipcache");
    assert_eq!(
        run(&mut dp, Hook::Egress, &frame_v6(pod6, peer6, 40000, 53)),
        TC_ACT_SHOT
    );
    dp.upsert_policy(
        rule(PEER_B_ID, DIRECTION_EGRESS, proto::UDP, 53, 16),
        allow(12),
    )
    .expect("policy");
    assert_eq!(
        run(&mut dp, Hook::Egress, &frame_v6(pod6, peer6, 40000, 53)),
        TC_ACT_OK
    );
    assert_eq!(
        run(&mut dp, Hook::Egress, &frame_v6(peer6, pod6, 40000, 53)),
        TC_ACT_SHOT,
        "spoofed v6 source"
    );
}
