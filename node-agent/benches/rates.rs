//! Pod-to-pod request/response and connection rates through a node, side by side in one run:
//! no filter; Palisade's eBPF datapath; iptables with one linear chain and the usual conntrack
//! ESTABLISHED shortcut (how iptables-based NetworkPolicy implementations work); an nftables set
//! lookup (`ip saddr . tcp dport`). Each filter holds N allow rules of which one matches the
//! measured flow (the last one, for the linear chain). Needs root.
//!
//! Run: `cargo bench -p palisade-node-agent --bench rates` (RATES_SECONDS=3 per measurement).
//!
//! - rr: 1-byte request/response on one TCP connection, transactions per second.
//! - crr: connect, 1-byte request/response, close, connections per second.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use palisade_datapath_common::{
    endpoint::{EndpointInfo, FLAG_HAS_IPV4},
    policy::{DIRECTION_EGRESS, DIRECTION_INGRESS, PolicyValue, VERDICT_ALLOW},
    proto,
};
use palisade_lab::exec::spawn_in_netns;
use palisade_lab::{Lab, LabSpec, PodState};
use palisade_node_agent::datapath::{Datapath, DatapathConfig, PolicyMatch};

const PORT: u16 = 5001;

fn sh(netns: &str, program: &str, args: &[&str], stdin: Option<&str>) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{program} {args:?} failed in {netns}");
}

/// A 1-byte echo server inside `netns`, one thread per connection, for the whole run.
fn start_server(netns: &str) {
    let (tx, rx) = mpsc::channel();
    spawn_in_netns(netns, move || {
        let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("bind");
        tx.send(()).expect("ready");
        for conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut b = [0u8; 1];
                while conn.read_exact(&mut b).is_ok() && conn.write_all(&b).is_ok() {}
            });
        }
    });
    rx.recv().expect("server up");
}

fn measure(client_netns: &str, server: IpAddr, secs: f64, crr: bool) -> f64 {
    let addr = SocketAddr::new(server, PORT);
    spawn_in_netns(client_netns, move || {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut n = 0u64;
        let mut b = [1u8; 1];
        if crr {
            while Instant::now() < deadline {
                let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                    continue;
                };
                let _ = c.set_nodelay(true);
                if c.write_all(&b).is_ok() && c.read_exact(&mut b).is_ok() {
                    n += 1;
                }
            }
        } else {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
            c.set_nodelay(true).expect("nodelay");
            while Instant::now() < deadline {
                c.write_all(&b).expect("write");
                c.read_exact(&mut b).expect("read");
                n += 1;
            }
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .join()
    .expect("client")
    .expect("netns")
}

fn bogus_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a63_0000 + i) // 10.99.x.y: never a lab address
}

fn iptables_rules(n: u32, client: Ipv4Addr, server: Ipv4Addr) -> String {
    let mut s = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:PAL - [0:0]\n",
    );
    s.push_str(
        "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A FORWARD -j PAL\n",
    );
    for i in 0..n - 1 {
        s.push_str(&format!(
            "-A PAL -s {}/32 -d {server}/32 -p tcp --dport {PORT} -j ACCEPT\n",
            bogus_source(i)
        ));
    }
    s.push_str(&format!(
        "-A PAL -s {client}/32 -d {server}/32 -p tcp --dport {PORT} -j ACCEPT\nCOMMIT\n"
    ));
    s
}

fn nft_rules(n: u32, client: Ipv4Addr) -> String {
    let mut elems: Vec<String> = (0..n - 1)
        .map(|i| format!("{} . {PORT}", bogus_source(i)))
        .collect();
    elems.push(format!("{client} . {PORT}"));
    format!(
        "table inet pal {{\n set allow {{ type ipv4_addr . inet_service; elements = {{ {} }} }}\n \
         chain pal_forward {{ type filter hook forward priority 0; policy drop;\n  ct state established,related accept\n  \
         ip saddr . tcp dport @allow accept\n }}\n}}\n",
        elems.join(", ")
    )
}

/// Palisade: both pods are endpoints; the client may send anything; the server admits N
/// identities on TCP 5001, one of them the client's.
fn palisade(
    node_netns: &str,
    client: &PodState,
    server: &PodState,
    n: u32,
) -> (
    mpsc::Sender<()>,
    thread::JoinHandle<Result<(), palisade_lab::LabError>>,
) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (c, s) = (client.clone(), server.clone());
    let h = spawn_in_netns(node_netns, move || {
        let mut dp = Datapath::load_with(&DatapathConfig::default()).expect("load");
        for (i, pod) in [&c, &s].into_iter().enumerate() {
            let IpAddr::V4(v4) = pod.ip else {
                panic!("ipv4")
            };
            let mut info = EndpointInfo {
                endpoint_id: i as u32 + 1,
                identity: 1001 + i as u32,
                flags: FLAG_HAS_IPV4,
                ..Default::default()
            };
            info.ipv4 = v4.octets();
            let ifindex = nix::net::if_::if_nametoindex(pod.host_iface.as_str()).expect("ifindex");
            dp.upsert_endpoint(ifindex, info).expect("endpoint");
            dp.upsert_ipcache(pod.ip, 32, 1001 + i as u32)
                .expect("ipcache");
        }
        let allow = PolicyValue {
            verdict: VERDICT_ALLOW,
            rule_id: 1,
            ..Default::default()
        };
        let any = PolicyMatch {
            endpoint_id: 1,
            identity: 0,
            direction: DIRECTION_EGRESS,
            protocol: 0,
            port: 0,
            port_prefix: 0,
        };
        dp.upsert_policy(any, allow).expect("client egress");
        dp.upsert_policy(
            PolicyMatch {
                endpoint_id: 2,
                direction: DIRECTION_EGRESS,
                ..any
            },
            allow,
        )
        .expect("server egress");
        for i in 0..n {
            let identity = if i == n - 1 { 1001 } else { 100_000 + i };
            let m = PolicyMatch {
                endpoint_id: 2,
                identity,
                direction: DIRECTION_INGRESS,
                protocol: proto::TCP,
                port: PORT,
                port_prefix: 16,
            };
            dp.upsert_policy(m, allow).expect("server ingress");
        }
        dp.attach_enforcement(&c.host_iface).expect("attach client");
        dp.attach_enforcement(&s.host_iface).expect("attach server");
        ready_tx.send(()).expect("ready");
        let _ = stop_rx.recv();
    });
    ready_rx.recv().expect("palisade programmed");
    (stop_tx, h)
}

fn main() {
    let secs: f64 = std::env::var("RATES_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let name = format!("rate{}", std::process::id() % 100_000);
    let me = std::env::current_exe().expect("exe");
    let mut spec = LabSpec::new(&name, 1, 2, me);
    spec.serve_tcp.clear();
    spec.serve_udp.clear();
    let lab = Lab::up(&spec).expect("lab up");
    let _guard = LabGuard(name.clone());
    let st = lab.state().clone();
    let node = st.nodes[0].netns.clone();
    let (client, server) = (st.pods[0].clone(), st.pods[1].clone());
    let (IpAddr::V4(cip), IpAddr::V4(sip)) = (client.ip, server.ip) else {
        panic!("ipv4")
    };
    sh(
        &client.netns,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65000",
        ],
        None,
    );
    start_server(&server.netns);

    println!(
        "{:>8}  {:<10}  {:>12}  {:>10}  {:>12}  {:>10}",
        "rules", "filter", "rr trans/s", "rr ratio", "crr conn/s", "crr ratio"
    );
    for n in [10_000u32, 100_000] {
        let base_rr = measure(&client.netns, server.ip, secs, false);
        let base_crr = measure(&client.netns, server.ip, secs, true);
        let row = |filter: &str, rr: f64, crr: f64| {
            println!(
                "{n:>8}  {filter:<10}  {rr:>12.0}  {:>10.2}  {crr:>12.0}  {:>10.2}",
                rr / base_rr,
                crr / base_crr
            );
        };
        row("none", base_rr, base_crr);

        let (stop, h) = palisade(&node, &client, &server, n);
        row(
            "palisade",
            measure(&client.netns, server.ip, secs, false),
            measure(&client.netns, server.ip, secs, true),
        );
        drop(stop);
        h.join().expect("palisade thread").expect("netns");

        sh(
            &node,
            "iptables-restore",
            &[],
            Some(&iptables_rules(n, cip, sip)),
        );
        row(
            "iptables",
            measure(&client.netns, server.ip, secs, false),
            measure(&client.netns, server.ip, secs, true),
        );
        sh(
            &node,
            "iptables-restore",
            &[],
            Some(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
            ),
        );
        sh(&node, "iptables", &["-X"], None);

        sh(&node, "nft", &["-f", "-"], Some(&nft_rules(n, cip)));
        row(
            "nft set",
            measure(&client.netns, server.ip, secs, false),
            measure(&client.netns, server.ip, secs, true),
        );
        sh(&node, "nft", &["flush", "ruleset"], None);
    }
}

/// Tears the lab down (and with it the filters, which live in its node namespace), also on panic.
struct LabGuard(String);
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}
