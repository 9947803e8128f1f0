//! `palisade lab up` encrypts pod traffic between nodes (WireGuard between the agents, keys born
//! on each node, peers from the control plane): a capture on the underlay between two nodes
//! holds only WireGuard UDP (and the agents' sealed gossip) and never the payload pods
//! exchange; ten on-demand rotations (`palisade encrypt rotate`, alternating nodes) during a
//! 1,000 packets/s UDP stream and a TCP
//! transfer lose no packet and reset no connection; `palisade encrypt status` reports it all.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use palisade_lab::Lab;

use crate::util::{lab_up, ok, palisade};

const WG_PORT: u16 = 51820;
const GOSSIP_PORT: u16 = palisade_lab::state::ClusterState::GOSSIP_PORT;
const UDP_PORT: u16 = 9301;
const TCP_PORT: u16 = 9302;

/// Runs `f` on a thread inside network namespace `ns` (sockets it makes stay there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

fn status(lab: &str) -> Vec<serde_json::Value> {
    let out = ok(&["encrypt", "status", "--lab", lab, "-o", "json"]);
    serde_json::from_str(&out).expect("json")
}

/// Every packet of a pcap file (Ethernet): ARP, IPv4 UDP from and to the WireGuard port, or the
/// agents' gossip (UDP from and to its port, every datagram sealed: it starts with the seal's
/// magic). Returns the number of WireGuard datagrams; panics on anything else.
fn only_wireguard(pcap: &[u8]) -> usize {
    assert!(pcap.len() >= 24, "pcap too short: {} bytes", pcap.len());
    let mut at = 24;
    let mut wireguard = 0;
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        match ethertype {
            0x0806 => continue,
            0x0800 => {
                let ip = &frame[14..];
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                assert_eq!(
                    ip[9], 17,
                    "a non-UDP IPv4 packet on the underlay: {ip:02x?}"
                );
                let sport = u16::from_be_bytes([ip[ihl], ip[ihl + 1]]);
                let dport = u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]);
                if sport == GOSSIP_PORT && dport == GOSSIP_PORT {
                    assert_eq!(
                        ip.get(ihl + 8..ihl + 12),
                        Some(&b"PLG\x01"[..]),
                        "a gossip datagram that is not sealed"
                    );
                    continue;
                }
                assert!(
                    sport == WG_PORT && dport == WG_PORT,
                    "UDP {sport} -> {dport} on the underlay is not WireGuard"
                );
                wireguard += 1;
            }
            other => panic!("ethertype {other:#06x} on the underlay"),
        }
    }
    wireguard
}

#[test]
fn pod_traffic_between_nodes_is_encrypted_and_survives_ten_rotations() {
    let (name, _cleanup, st) = lab_up("wg", 2, 1, &[]);
    assert!(
        st.cluster.as_ref().is_some_and(|c| c.encryption),
        "encryption is the default"
    );
    let (n1, n2) = (&st.nodes[0], &st.nodes[1]);
    let (p1, p2) = (&st.pods[0], &st.pods[1]);
    assert_eq!((p1.node.as_str(), p2.node.as_str()), ("n1", "n2"));

    // The status: userspace (no kernel module here), each node the other's peer.
    let s = status(&name);
    assert_eq!(s.len(), 2);
    for (node, peer) in [(&s[0], "n2"), (&s[1], "n1")] {
        assert_eq!(node["enabled"], true, "{node}");
        assert_eq!(node["backend"], "userspace", "{node}");
        assert_eq!(node["epoch"], 1, "{node}");
        assert_eq!(node["peers"][0]["name"], peer, "{node}");
        assert_eq!(
            node["fingerprint"].as_str().map(str::len),
            Some(16),
            "{node}"
        );
    }

    // 1. A marker from a pod on n1 to a pod on n2, captured on n1's underlay.
    let datagrams = marker_crosses_sealed(
        &name,
        (n1, n2),
        &p1.netns,
        &p2.netns,
        SocketAddr::new(p2.ip, UDP_PORT),
    );
    println!(
        "underlay capture: {datagrams} WireGuard datagrams, sealed gossip, no marker, nothing else"
    );

    // 2. Ten rotations during a 1,000 packets/s UDP stream and a TCP transfer.
    let stop = Arc::new(AtomicBool::new(false));
    let udp_dst = SocketAddr::new(p2.ip, UDP_PORT);
    let tcp_dst = SocketAddr::new(p2.ip, TCP_PORT);
    let finish_udp = udp_stream(p1.netns.clone(), p2.netns.clone(), udp_dst, stop.clone());
    let tcp_server = in_netns(&p2.netns, move || {
        let l = TcpListener::bind(tcp_dst).expect("bind");
        let (mut c, _) = l.accept().expect("accept");
        let mut total = 0u64;
        let mut buf = vec![0u8; 65536];
        let mut expect = 0u8;
        loop {
            match c.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    for &b in &buf[..n] {
                        assert_eq!(b, expect, "TCP stream corrupted at byte {total}");
                        expect = expect.wrapping_add(1);
                        total += 1;
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    let st3 = stop.clone();
    let tcp_client = in_netns(&p1.netns, move || -> Result<u64, String> {
        let mut c = TcpStream::connect_timeout(&tcp_dst, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let mut chunk = vec![0u8; 16 * 1024];
        let mut next = 0u8;
        let mut total = 0u64;
        while !st3.load(Ordering::Relaxed) {
            for b in chunk.iter_mut() {
                *b = next;
                next = next.wrapping_add(1);
            }
            c.write_all(&chunk)
                .map_err(|e| format!("after {total} bytes: {e}"))?;
            total += chunk.len() as u64;
            thread::sleep(Duration::from_millis(5));
        }
        c.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        Ok(total)
    });
    thread::sleep(Duration::from_millis(500));
    for i in 0..10u64 {
        let (node, peer_idx) = if i % 2 == 0 { ("n1", 1) } else { ("n2", 0) };
        ok(&["encrypt", "rotate", "--lab", &name, "--node", node]);
        let want_epoch = i / 2 + 2;
        // Make-before-break: wait until the peer sends on the new key before the next rotation.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = status(&name);
            let sending = &s[peer_idx]["peers"][0]["sending"];
            if sending["peerEpoch"].as_u64() == Some(want_epoch) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rotation {i} of {node}: peer status {}",
                s[peer_idx]
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (sent, lost) = finish_udp();
    let sent_bytes = tcp_client
        .join()
        .unwrap()
        .expect("the TCP transfer was not reset");
    let received = tcp_server
        .join()
        .unwrap()
        .expect("the TCP receiver saw no error");
    println!(
        "10 rotations: {sent} UDP datagrams sent, {} lost; TCP {sent_bytes} bytes sent, {received} received",
        lost.len()
    );
    assert!(
        sent > 1_000,
        "the stream ran through the rotations ({sent} datagrams)"
    );
    assert_eq!(lost, Vec::<u64>::new(), "datagrams lost during rotations");
    assert_eq!(received, sent_bytes, "TCP bytes lost");

    let s = status(&name);
    assert_eq!(s[0]["epoch"], 6, "{}", s[0]);
    assert_eq!(s[1]["epoch"], 6, "{}", s[1]);
    // Each node's status lists the peer's key the control plane published.
    let text = ok(&["encrypt", "status", "--lab", &name, "--node", "n1"]);
    assert!(
        text.contains("Number of peers: 1") && text.contains("epoch 6"),
        "{text}"
    );
}

/// Sends a marker over UDP from `from_netns` to `dst` (received in `to_netns`) while capturing
/// on the underlay between `n1` and `n2`; asserts it arrived, never crossed in clear text, and
/// that the capture holds only WireGuard (and sealed gossip). Returns the WireGuard datagrams.
fn marker_crosses_sealed(
    lab: &str,
    (n1, n2): (
        &palisade_lab::state::NodeState,
        &palisade_lab::state::NodeState,
    ),
    from_netns: &str,
    to_netns: &str,
    dst: SocketAddr,
) -> usize {
    let pcap = std::env::temp_dir().join(format!("{lab}-underlay.pcap"));
    let filter = format!("host {} and host {}", n1.underlay_ip, n2.underlay_ip);
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", &n1.netns, "tcpdump", "-U", "-n", "-i"])
        .arg(&n1.underlay_iface)
        .arg("-w")
        .arg(&pcap)
        .arg(&filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    thread::sleep(Duration::from_millis(1500));
    let marker = format!("PALISADE-MARKER-{}", std::process::id());
    let server = in_netns(to_netns, move || {
        let s = UdpSocket::bind(dst).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = s
            .recv(&mut buf)
            .expect("the marker arrives through the tunnel");
        buf[..n].to_vec()
    });
    thread::sleep(Duration::from_millis(200));
    let m = marker.clone();
    in_netns(from_netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..5 {
            s.send_to(m.as_bytes(), dst).unwrap();
            thread::sleep(Duration::from_millis(50));
        }
    })
    .join()
    .unwrap();
    assert_eq!(server.join().unwrap(), marker.as_bytes());
    thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = tcpdump.wait();
    let bytes = std::fs::read(&pcap).expect("pcap");
    let _ = std::fs::remove_file(&pcap);
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the marker crossed the underlay in clear text"
    );
    let datagrams = only_wireguard(&bytes);
    assert!(
        datagrams >= 5,
        "only {datagrams} WireGuard datagrams captured"
    );
    datagrams
}

#[test]
fn with_encrypt_node_host_traffic_between_nodes_goes_through_the_tunnel() {
    let (name, _cleanup, st) = lab_up("wgnode", 2, 1, &["--encrypt-node"]);
    let (n1, n2) = (&st.nodes[0], &st.nodes[1]);
    // Each node accepts the other's own address from its tunnel, and says so.
    let s = status(&name);
    for (node, peer) in [(&s[0], n2), (&s[1], n1)] {
        assert_eq!(node["nodeEncryption"], true, "{node}");
        let allowed = node["peers"][0]["allowedIps"].to_string();
        assert!(
            allowed.contains(&format!("{}/32", peer.underlay_ip)),
            "{node}"
        );
    }
    // A marker from n1's host to n2's host address never crosses the underlay in clear text.
    let datagrams = marker_crosses_sealed(
        &name,
        (n1, n2),
        &n1.netns,
        &n2.netns,
        SocketAddr::new(std::net::IpAddr::V4(n2.underlay_ip), UDP_PORT),
    );
    // And pods still reach each other.
    let probe = palisade(&[
        "lab", "probe", "--name", &name, "n1-p1", "n2-p1", "--port", "80",
    ]);
    assert_eq!(probe.status.code(), Some(0), "n1-p1 -> n2-p1: {probe:?}");
    println!("host to host: {datagrams} WireGuard datagrams, no marker in clear text");
}

/// A UDP stream at 1,000 packets/s from `from` to `to` until `stop`; returns (sent, lost).
fn udp_stream(
    from: String,
    to: String,
    dst: SocketAddr,
    stop: Arc<AtomicBool>,
) -> impl FnOnce() -> (u64, Vec<u64>) {
    let receiver = in_netns(&to, move || {
        let s = UdpSocket::bind(dst).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.recv(&mut buf) {
            if n == 8 {
                seen.push(u64::from_be_bytes(buf[..8].try_into().unwrap()));
            }
        }
        seen
    });
    thread::sleep(Duration::from_millis(200));
    let sender = in_netns(&from, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let start = Instant::now();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            s.send_to(&seq.to_be_bytes(), dst).unwrap();
            seq += 1;
            let due = start + Duration::from_millis(seq);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                thread::sleep(d);
            }
        }
        seq
    });
    move || {
        let sent = sender.join().unwrap();
        let mut seen = receiver.join().unwrap();
        seen.sort_unstable();
        seen.dedup();
        let lost = (0..sent)
            .filter(|s| seen.binary_search(s).is_err())
            .collect();
        (sent, lost)
    }
}

#[test]
fn keys_rotate_on_schedule_without_loss_and_a_restarted_agent_rotates_cleanly() {
    let (name, _cleanup, st) = lab_up("wgs", 2, 1, &["--wireguard-rotation-interval", "4s"]);
    let (p1, p2) = (st.pods[0].clone(), st.pods[1].clone());

    // Both nodes rotate on their own schedule (at nearly the same moments) under a stream.
    let stop = Arc::new(AtomicBool::new(false));
    let finish = udp_stream(
        p1.netns.clone(),
        p2.netns.clone(),
        SocketAddr::new(p2.ip, UDP_PORT),
        stop.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&name);
        if s.iter().all(|n| n["epoch"].as_u64() >= Some(4)) {
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled rotations: {s:?}");
        thread::sleep(Duration::from_millis(250));
    }
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (sent, lost) = finish();
    println!(
        "scheduled rotations (3+ per node): {sent} datagrams, {} lost",
        lost.len()
    );
    assert_eq!(
        lost,
        Vec::<u64>::new(),
        "datagrams lost during scheduled rotations"
    );

    // SIGKILL n1's agent and start it again with the same arguments, as a supervisor would.
    let before = status(&name)[0].clone();
    let agent = st
        .processes
        .iter()
        .find(|p| p.name == "agent-n1")
        .expect("agent-n1")
        .clone();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid)).expect("cmdline");
    let mut argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = std::path::PathBuf::from(argv.remove(0));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    thread::sleep(Duration::from_millis(300));
    let mut lab = Lab::load(&name).expect("state").state().clone();
    lab.spawn_process(agent.role, "agent-n1", None, &program, &argv)
        .expect("restart the agent");
    lab.save().expect("save");
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let out = palisade(&[
            "encrypt", "status", "--lab", &name, "--node", "n1", "-o", "json",
        ]);
        if out.status.success() {
            let s: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
            if s[0]["peers"][0]["sending"].is_object() {
                break s[0].clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted agent never peered: {out:?}"
        );
        thread::sleep(Duration::from_millis(250));
    };
    // The key store survived: the same key, or (its age being past the 4 s schedule) its
    // successor — never a reset to epoch 1.
    let (e0, e1) = (
        before["epoch"].as_u64().unwrap(),
        after["epoch"].as_u64().unwrap(),
    );
    assert!(
        e1 == e0 && after["publicKey"] == before["publicKey"] || e1 > e0,
        "before {before}\nafter {after}"
    );
    // Traffic flows both ways through the restarted node's tunnel.
    for (a, b) in [(&p1, &p2), (&p2, &p1)] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = palisade(&[
                "lab", "probe", "--name", &name, &a.name, &b.name, "--port", "80",
            ]);
            if out.status.code() == Some(0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} -> {} after restart: {out:?}",
                a.name,
                b.name
            );
            thread::sleep(Duration::from_millis(250));
        }
    }

    // A node that leaves the cluster stops being a peer, and its pods' route goes with it.
    let agent2 = st
        .processes
        .iter()
        .find(|p| p.name == "agent-n2")
        .expect("agent-n2");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent2.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    ok(&["node", "delete", "n2", "--lab", &name]);
    let n2_cidr = st.nodes[1].pod_cidr.to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ok(&[
            "encrypt", "status", "--lab", &name, "--node", "n1", "-o", "json",
        ]);
        let s = &serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")[0];
        let routes = Command::new("ip")
            .args(["-n", &st.nodes[0].netns, "route", "show", &n2_cidr])
            .output()
            .expect("ip route");
        if s["peers"].as_array().is_some_and(Vec::is_empty) && routes.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 is still n1's peer or routed: {s}\n{}",
            String::from_utf8_lossy(&routes.stdout)
        );
        thread::sleep(Duration::from_millis(250));
    }
}
