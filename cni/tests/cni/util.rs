//! Test plumbing: network namespaces that delete themselves ([`Netns`]), a node namespace set
//! up as a node would be ([`Node`]), running the real `palisade-cni` binary the way a runtime
//! does ([`Invocation`]), and probes that enter a namespace on their own thread (ICMP echo over
//! a raw socket, UDP echo).

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
use serde_json::Value;

use crate::fake_agent::FakeAgent;

/// The plugin under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_palisade-cni");
/// The node's own address (on its loopback), what pods reach as "the node side".
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// Prefix of every namespace these tests create.
const PREFIX: &str = "pcni-";

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces left by test processes that died (their pid is in the name).
fn sweep_dead() {
    for line in ip(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A network namespace, deleted when dropped (also when the test panics).
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

// === impl Netns ===

impl Netns {
    /// `pcni-<pid>-<n>-<tag>`: unique across parallel tests and test processes.
    pub fn new(tag: &str) -> Netns {
        SWEEP.call_once(sweep_dead);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    /// `/run/netns/<name>`, what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The link names in this namespace.
    pub fn links(&self) -> Vec<String> {
        let out = ip(&["-n", &self.name, "-j", "link", "show"]);
        let v: Value = serde_json::from_str(&out).expect("ip -j link");
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// `ip -n <name> ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A node: its namespace (where the plugin runs), its address on `lo`, forwarding on (the
/// agent's job on a real node), and a fake agent.
pub struct Node {
    /// The node's namespace.
    pub ns: Netns,
    /// Its agent.
    pub agent: FakeAgent,
}

// === impl Node ===

impl Node {
    /// A node whose agent allocates from `10.200.<pool>.0/24`.
    pub fn new(pool: u8) -> Node {
        let ns = Netns::new("node");
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Node {
            ns,
            agent: FakeAgent::start([10, 200, pool]),
        }
    }

    /// The network config pointing at this node's agent, with `extra` merged in.
    pub fn conf(&self, extra: Value) -> Value {
        let mut v = serde_json::json!({
            "cniVersion": "1.0.0", "name": "palisade", "type": "palisade-cni",
            "agentSocket": self.agent.socket, "mtu": 1500,
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    }

    /// The host-side veths (`lxc…`) in the node's namespace.
    pub fn veths(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("lxc"))
            .collect()
    }

    /// Runs the plugin in this node's namespace.
    pub fn cni(&self, inv: &Invocation<'_>) -> Reply {
        inv.run(Some(&self.ns.name))
    }
}

/// One plugin run, as a runtime makes it: `CNI_*` variables and the config on stdin.
pub struct Invocation<'a> {
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID` (None: unset).
    pub container: Option<&'a str>,
    /// `CNI_NETNS` (None: unset).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (None: unset).
    pub ifname: Option<&'a str>,
    /// `CNI_ARGS`.
    pub args: &'a str,
    /// stdin.
    pub stdin: String,
}

/// What the plugin printed and how it exited.
#[derive(Debug)]
pub struct Reply {
    /// Exit status 0.
    pub ok: bool,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

// === impl Reply ===

impl Reply {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns stdout as JSON.
    pub fn success(&self) -> Value {
        assert!(self.ok, "plugin failed: {} {}", self.stdout, self.stderr);
        self.json()
    }

    /// Asserts a failure and returns (code, msg).
    pub fn failure(&self) -> (u64, String) {
        assert!(!self.ok, "plugin succeeded: {}", self.stdout);
        let v = self.json();
        let code = v["code"].as_u64().unwrap_or_else(|| panic!("no code: {v}"));
        assert!(v["cniVersion"].is_string(), "{v}");
        (code, v["msg"].as_str().unwrap_or_default().to_string())
    }
}

// === impl Invocation ===

impl<'a> Invocation<'a> {
    /// An ADD/DEL/CHECK of `container` (`eth0`) in `pod` for pod `default/<container>`.
    pub fn new(command: &'a str, container: &'a str, pod: &Netns, stdin: &Value) -> Self {
        Invocation {
            command,
            container: Some(container),
            netns: Some(pod.path()),
            ifname: Some("eth0"),
            args: "",
            stdin: stdin.to_string(),
        }
    }

    /// Runs the plugin, in `node`'s namespace when given (`ip netns exec`).
    pub fn run(&self, node: Option<&str>) -> Reply {
        let mut cmd = match node {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, PLUGIN]);
                c
            }
            None => Command::new(PLUGIN),
        };
        for var in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CNI_COMMAND", self.command)
            .env("CNI_PATH", "/opt/cni/bin");
        if let Some(c) = self.container {
            cmd.env("CNI_CONTAINERID", c);
        }
        if let Some(n) = &self.netns {
            cmd.env("CNI_NETNS", n);
        }
        if let Some(i) = self.ifname {
            cmd.env("CNI_IFNAME", i);
        }
        let args = if self.args.is_empty() {
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                self.container.unwrap_or("x"),
                self.container.unwrap_or("x")
            )
        } else {
            self.args.to_string()
        };
        cmd.env("CNI_ARGS", args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the plugin");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(self.stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("plugin output");
        Reply {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `f` on a fresh thread inside the namespace at `path`.
pub fn spawn_in<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends ICMP echo requests from inside `from` (a namespace path) to `to`; true once a reply
/// comes back (up to 3 tries, 1 s each).
pub fn ping(from: &str, to: Ipv4Addr) -> bool {
    spawn_in(from, move || {
        let fd: OwnedFd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Icmp,
        )
        .expect("raw ICMP socket");
        let sock = UdpSocket::from(fd);
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let id = (std::process::id() & 0xffff) as u16;
        for seq in 1..=3u16 {
            let mut pkt = vec![8, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(b"palisade-cni");
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            if sock.send_to(&pkt, SocketAddr::new(to.into(), 0)).is_err() {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut buf = [0u8; 1500];
            while Instant::now() < deadline {
                let Ok((n, src)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                if src.ip() == IpAddr::V4(to)
                    && n >= ihl + 8
                    && buf[ihl] == 0
                    && buf[ihl + 4..ihl + 6] == id.to_be_bytes()
                    && buf[ihl + 6..ihl + 8] == seq.to_be_bytes()
                {
                    return true;
                }
            }
        }
        false
    })
    .join()
    .unwrap_or(false)
}

/// A UDP echo server inside the namespace at `path`, on `addr`; serves until 5 s pass without a
/// datagram. Returns once it is bound.
pub fn udp_echo(path: &str, addr: SocketAddr) -> thread::JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let h = spawn_in(path, move || {
        let sock = UdpSocket::bind(addr).expect("bind the UDP echo server");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = tx.send(());
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], peer);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("UDP echo server bound");
    h
}

/// Sends a datagram from inside `from` to `to` and waits for the echo (up to 5 tries).
pub fn udp_roundtrip(from: &str, to: SocketAddr) -> bool {
    spawn_in(from, move || {
        let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
        let sock = UdpSocket::bind(bind).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            if sock.send_to(b"hello", to).is_err() {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            if let Ok((n, peer)) = sock.recv_from(&mut buf)
                && peer == to
                && &buf[..n] == b"hello"
            {
                return true;
            }
        }
        false
    })
    .join()
    .unwrap_or(false)
}

/// The pod's address from an ADD result (`ips[0].address` without the prefix).
pub fn result_ip(result: &Value) -> Ipv4Addr {
    let a = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {result}"));
    a.split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad address {a}"))
}
