//! The eBPF pipeline end to end: the object built by aya-build loads into the kernel (verifier),
//! attaches to lab pods' host-side veths, and counts real packets per direction, exactly.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN) and bpffs; `make test` runs it as root.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::mpsc,
    thread,
    time::Duration,
};

use palisade_datapath_common::counters::{DIRECTION_FROM_POD, DIRECTION_TO_POD, FAMILY_IPV4};
use palisade_lab::exec::spawn_in_netns;
use palisade_lab::{Lab, LabSpec};
use palisade_node_agent::datapath::{CounterKeyOrd, Datapath, DatapathConfig};

/// Datagrams pod A sends to pod B; B echoes each one.
const DATAGRAMS: u64 = 50;
const PAYLOAD: &[u8] = b"palisade-counter-test";
const UDP_PORT: u16 = 9_999;
/// Ethernet + IPv4 + UDP headers: tc sees the frame from the Ethernet header on.
const FRAME_LEN: u64 = 14 + 20 + 8 + PAYLOAD.len() as u64;

#[test]
fn object_loads_and_passes_the_verifier() {
    // Production map sizes: the defaults an agent uses must load.
    Datapath::load().expect("the datapath object must load (run as root with bpffs mounted)");
}

/// Tears the lab down even when the test fails.
struct LabGuard(String);
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}

#[test]
fn counters_see_every_packet_in_each_direction() {
    let name = format!("ctr{}", std::process::id() % 100_000);
    let _guard = LabGuard(name.clone());
    // No servers and no probes: this test makes its own traffic, so the lab never runs the
    // palisade binary; it only wants an existing file there.
    let me = std::env::current_exe().expect("test binary path");
    let mut spec = LabSpec::new(&name, 1, 2, me);
    spec.serve_tcp.clear();
    spec.serve_udp.clear();
    let lab = Lab::up(&spec).expect("lab up");
    let state = lab.state();
    let (a, b) = (&state.pods[0], &state.pods[1]);
    let node_netns = state.nodes[0].netns.clone();
    let (a_iface, b_iface) = (a.host_iface.clone(), b.host_iface.clone());
    let b_ip = b.ip;

    // The datapath lives on a thread inside the node namespace for the whole exchange.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let datapath = spawn_in_netns(&node_netns, move || {
        let mut dp = Datapath::load_with(&DatapathConfig::for_test()).expect("load");
        dp.attach_counters(&a_iface).expect("attach to pod a");
        dp.attach_counters(&b_iface).expect("attach to pod b");
        let ifindex = |i: &str| nix::net::if_::if_nametoindex(i).expect("ifindex");
        let ids = (ifindex(&a_iface), ifindex(&b_iface));
        ready_tx.send(()).expect("ready");
        done_rx.recv().expect("done");
        (ids, dp.counters().expect("read counters"))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("datapath attached");

    let server = spawn_in_netns(&b.netns, move || {
        let sock =
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, UDP_PORT)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 1500];
        for _ in 0..DATAGRAMS {
            let (n, peer) = sock.recv_from(&mut buf).expect("server recv");
            sock.send_to(&buf[..n], peer).expect("server send");
        }
    });
    thread::sleep(Duration::from_millis(200)); // let the server bind
    let client = spawn_in_netns(&a.netns, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 1500];
        for _ in 0..DATAGRAMS {
            sock.send_to(PAYLOAD, std::net::SocketAddr::new(b_ip, UDP_PORT))
                .expect("client send");
            let n = sock.recv(&mut buf).expect("client recv: echo lost");
            assert_eq!(&buf[..n], PAYLOAD);
        }
    });
    client.join().expect("client").expect("netns");
    server.join().expect("server").expect("netns");
    done_tx.send(()).expect("done");
    let ((a_idx, b_idx), counts) = datapath.join().expect("datapath thread").expect("netns");

    let get = |ifindex, direction| {
        counts
            .get(&CounterKeyOrd {
                ifindex,
                direction,
                family: FAMILY_IPV4,
            })
            .copied()
            .unwrap_or_default()
    };
    for (who, idx) in [("pod a", a_idx), ("pod b", b_idx)] {
        for (dir_name, dir) in [("from", DIRECTION_FROM_POD), ("to", DIRECTION_TO_POD)] {
            let c = get(idx, dir);
            assert_eq!(
                c.packets, DATAGRAMS,
                "{who}: IPv4 packets {dir_name} the pod (all: {counts:?})"
            );
            assert_eq!(
                c.bytes,
                DATAGRAMS * FRAME_LEN,
                "{who}: IPv4 bytes {dir_name} the pod"
            );
        }
    }
}
