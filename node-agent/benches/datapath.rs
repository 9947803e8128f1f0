//! Per-packet cost of the enforcement program, measured in the kernel with `BPF_PROG_TEST_RUN`
//! (the kernel times the program runs themselves, not the syscall), at 0, 1k, 10k and 100k
//! policy entries. Needs root. Run: `cargo bench -p palisade-node-agent --bench datapath`.
//!
//! Three paths:
//! - `established`: a packet of a tracked flow (one conntrack hash lookup), the path almost every
//!   packet takes; repeated 1,000,000 times in one run.
//! - `new flow`: the first packet of a flow (conntrack miss, ipcache LPM, two policy LPM lookups,
//!   conntrack insert, a ring-buffer event); 20,000 distinct flows, one run each.
//! - `counter only`: the plain per-direction counter program, as the floor of any tc program.
//!
//! Then the DNS proxy's conntrack pass (`Datapath::egress_flows`, what decides whether open
//! connections hold an expired `toFQDNs` address), timed in user space over a full IPv4
//! conntrack map of the production size: on the calling thread (how the run loop did it
//! before), and through the proxy's reader thread (`agent::dns::ctread`), where what the run
//! loop spends is the ask and the polls for the result. `-- conntrack` runs only this part.

use std::{net::Ipv4Addr, time::Duration};

use palisade_datapath_common::{
    endpoint::{EndpointInfo, FLAG_HAS_IPV4},
    policy::{DIRECTION_EGRESS, PolicyValue, VERDICT_ALLOW},
    proto,
};
use palisade_node_agent::agent::dns::ctread::{CtReader, Interest};
use palisade_node_agent::datapath::{Datapath, Hook, PolicyMatch};

const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 11);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 11);
const PEER_ID: u32 = 5000;

fn frame(sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto::TCP, 0, 0]);
    f.extend_from_slice(&POD.octets());
    f.extend_from_slice(&PEER.octets());
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    f.extend_from_slice(&tcp);
    f
}

fn setup(entries: u32) -> Datapath {
    let mut dp = Datapath::load().expect("load the datapath (root, bpffs)");
    let mut info = EndpointInfo {
        endpoint_id: 1,
        identity: 1000,
        flags: FLAG_HAS_IPV4,
        ..Default::default()
    };
    info.ipv4 = POD.octets();
    dp.upsert_endpoint(1, info).expect("endpoint");
    dp.upsert_ipcache(PEER.into(), 32, PEER_ID)
        .expect("ipcache");
    let allow = PolicyValue {
        verdict: VERDICT_ALLOW,
        rule_id: 1,
        ..Default::default()
    };
    // The allow the measured flows hit, plus `entries` others (other identities, ports 1..=100).
    let hit = PolicyMatch {
        endpoint_id: 1,
        identity: PEER_ID,
        direction: DIRECTION_EGRESS,
        protocol: proto::TCP,
        port: 80,
        port_prefix: 16,
    };
    dp.upsert_policy(hit, allow).expect("policy");
    for i in 0..entries {
        let m = PolicyMatch {
            identity: 10_000 + i / 100,
            port: (i % 100 + 1) as u16,
            ..hit
        };
        dp.upsert_policy(m, allow).expect("policy");
    }
    dp
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn main() {
    if std::env::args().any(|a| a == "conntrack") {
        conntrack_pass();
        return;
    }
    println!(
        "{:>9} {:>16} {:>16} {:>16}",
        "entries", "established ns", "new flow ns", "counter only ns"
    );
    for entries in [0u32, 1_000, 10_000, 100_000] {
        let mut dp = setup(entries);
        // Established: the first run inserts the flow, the rest hit conntrack.
        let (action, established) = dp
            .test_run(Hook::Egress, &frame(40000, 80), 1_000_000)
            .expect("run");
        assert_eq!(action, 0, "the measured flow is allowed");
        // New flows: distinct source ports, each the first packet of its flow.
        let flows = 20_000u32;
        let mut total = 0f64;
        for i in 0..flows {
            let (action, d) = dp
                .test_run(Hook::Egress, &frame(1024 + i as u16, 80), 1)
                .expect("run");
            assert_eq!(action, 0);
            total += ns(d);
        }
        let counter = dp
            .test_run_counter(&frame(40000, 80), 1_000_000)
            .expect("counter run");
        println!(
            "{:>9} {:>16.1} {:>16.1} {:>16.1}",
            entries,
            ns(established),
            total / f64::from(flows),
            ns(counter)
        );
    }
    conntrack_pass();
}

/// Fills the IPv4 conntrack map with distinct flows (an any-port allow, so every 5-tuple is
/// admitted and tracked), then times full passes over it.
fn conntrack_pass() {
    let mut dp = setup(0);
    let any_port = PolicyMatch {
        endpoint_id: 1,
        identity: PEER_ID,
        direction: DIRECTION_EGRESS,
        protocol: proto::TCP,
        port: 0,
        port_prefix: 0,
    };
    let allow = PolicyValue {
        verdict: VERDICT_ALLOW,
        rule_id: 2,
        ..Default::default()
    };
    dp.upsert_policy(any_port, allow).expect("policy");
    let size = palisade_datapath_common::conntrack::MAP_MAX_ENTRIES;
    for i in 0..size {
        let (sport, dport) = (1024 + (i % 60_000) as u16, 1 + (i / 60_000) as u16);
        dp.test_run(Hook::Egress, &frame(sport, dport), 1)
            .expect("run");
    }
    let mut best = Duration::MAX;
    let mut found = 0;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        // The filter the proxy uses rejects nearly everything; accepting all is the worst case.
        found = dp.egress_flows(|_, _| true).expect("conntrack").len();
        best = best.min(t0.elapsed());
    }
    println!(
        "conntrack pass (egress_flows): {found} entries in {:.1} ms (best of 3)",
        best.as_secs_f64() * 1e3
    );
    // The same pass through the reader thread, polled every millisecond as a busy run loop
    // would: the longest single call and the sum of all calls are what the loop is held up.
    let maps = dp.conntrack_maps().expect("conntrack maps");
    let reader = CtReader::start(
        Box::new(move |want| maps.egress_flows(want).map_err(|e| e.to_string())),
        || {},
    )
    .expect("reader");
    let all = || {
        let mut i = Interest::new();
        i.entry(PEER.into()).or_default().insert(POD.into());
        i
    };
    for _ in 0..3 {
        let (mut longest, mut spent, mut polls) = (Duration::ZERO, Duration::ZERO, 0u32);
        let t0 = std::time::Instant::now();
        reader.ask(all());
        let asked = t0.elapsed();
        (longest, spent) = (longest.max(asked), spent + asked);
        let read = loop {
            let t = std::time::Instant::now();
            let r = reader.take();
            let d = t.elapsed();
            (longest, spent, polls) = (longest.max(d), spent + d, polls + 1);
            if let Some(r) = r {
                break r;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let n = read.flows.expect("conntrack").len();
        println!(
            "conntrack pass on the reader thread: {n} entries in {:.1} ms; the caller spent \
             {:.3} ms in {} calls (longest {:.3} ms)",
            t0.elapsed().as_secs_f64() * 1e3,
            spent.as_secs_f64() * 1e3,
            polls + 1,
            longest.as_secs_f64() * 1e3
        );
    }
}
