//! Two "nodes" as network namespaces joined by a veth (the underlay), each running the userspace
//! tunnel with the other as peer and a pod range routed into it. Everything created here is
//! removed by `Drop` (deleting a namespace deletes its veth end and TUN device).
//!
//! ```text
//!   ns a: lo 10.251.1.1/32 (pod)           ns b: lo 10.251.2.1/32 (pod)
//!         wg-a<id> ── route 10.251.2.0/24        wg-b<id> ── route 10.251.1.0/24
//!         ua<id> 10.250.0.1/24  ═══ veth ═══  ub<id> 10.250.0.2/24
//! ```
//! Addresses repeat across tests: each test has its own pair of namespaces.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sched::{CloneFlags, setns};
use palisade_keymgr::{KeyStore, PeerConfig, TunnelConfig, UserspaceTunnel};

pub const WG_PORT: u16 = 51820;
pub const UNDERLAY_A: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const UNDERLAY_B: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 251, 1, 1);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 251, 2, 1);
pub const CIDR_A: &str = "10.251.1.0/24";
pub const CIDR_B: &str = "10.251.2.0/24";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Fails the test when not root: these tests must never be skipped silently.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the userspace tunnel tests need root (network namespaces, TUN); run them as root"
    );
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("spawn {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No IPv6 chatter (router solicitations, MLD) on the underlay capture.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        Ok(ns)
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and TUN devices it creates
    /// stay in the namespace afterwards.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || -> Result<T> {
            let ns = File::open(&path).with_context(|| format!("open {path}"))?;
            setns(&ns, CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// One node: namespace, key store, tunnel.
pub struct Node {
    pub name: &'static str,
    pub keys: KeyStore,
    pub tunnel: Option<UserspaceTunnel>,
    pub ifname: String,
    pub underlay: Ipv4Addr,
    pub pod: Ipv4Addr,
    pub cidr: &'static str,
    pub peer_cidr: &'static str,
    // Declared last: dropped after the tunnel, so the TUN is closed before the namespace goes.
    pub ns: Netns,
}

impl Node {
    pub fn tunnel(&self) -> &UserspaceTunnel {
        self.tunnel.as_ref().expect("tunnel running")
    }

    /// Starts (or restarts) the tunnel with the key store's current key and routes the peer's pod
    /// range into it.
    pub fn start_tunnel(&mut self) -> Result<()> {
        let key = self.keys.current().clone();
        let config = TunnelConfig::new(
            self.ifname.clone(),
            SocketAddr::from((self.underlay, WG_PORT)),
        );
        let tunnel = self
            .ns
            .enter(move || Ok(UserspaceTunnel::start(config, &key)?))?;
        self.tunnel = Some(tunnel);
        self.ns.ip(&[
            "route",
            "add",
            self.peer_cidr,
            "dev",
            &self.ifname,
            "src",
            &self.pod.to_string(),
        ])?;
        Ok(())
    }

    pub fn peer_config(&self) -> PeerConfig {
        let key = self.keys.current();
        PeerConfig {
            name: self.name.to_string(),
            public_key: key.public_key(),
            epoch: key.epoch(),
            endpoint: SocketAddr::from((self.underlay, WG_PORT)),
            allowed_ips: vec![self.cidr.parse().expect("cidr")],
        }
    }

    /// A UDP socket in this node's namespace bound to `addr`.
    pub fn udp(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.ns.enter(move || {
            let s = UdpSocket::bind(addr)?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(s)
        })
    }
}

/// Two nodes joined by a veth, tunnels up and peered.
pub struct Pair {
    pub a: Node,
    pub b: Node,
    pub id: String,
    pub dir: tempfile::TempDir,
}

impl Pair {
    pub fn new() -> Result<Self> {
        require_root();
        let id = format!(
            "{}x{}",
            std::process::id() % 100_000,
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir()?;
        let ns_a = Netns::new(format!("pwg-a-{id}"))?;
        let ns_b = Netns::new(format!("pwg-b-{id}"))?;
        let (ua, ub) = (format!("ua{id}"), format!("ub{id}"));
        run(
            "ip",
            &[
                "link", "add", &ua, "netns", &ns_a.name, "type", "veth", "peer", "name", &ub,
                "netns", &ns_b.name,
            ],
        )?;
        for (ns, dev, addr, pod) in [
            (&ns_a, &ua, UNDERLAY_A, POD_A),
            (&ns_b, &ub, UNDERLAY_B, POD_B),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
            ns.ip(&["addr", "add", &format!("{pod}/32"), "dev", "lo"])?;
        }
        let a = Node {
            name: "node-a",
            keys: KeyStore::open(dir.path().join("a"))?,
            tunnel: None,
            ifname: format!("wa{id}"),
            underlay: UNDERLAY_A,
            pod: POD_A,
            cidr: CIDR_A,
            peer_cidr: CIDR_B,
            ns: ns_a,
        };
        let b = Node {
            name: "node-b",
            keys: KeyStore::open(dir.path().join("b"))?,
            tunnel: None,
            ifname: format!("wb{id}"),
            underlay: UNDERLAY_B,
            pod: POD_B,
            cidr: CIDR_B,
            peer_cidr: CIDR_A,
            ns: ns_b,
        };
        let mut pair = Self { a, b, id, dir };
        pair.a.start_tunnel()?;
        pair.b.start_tunnel()?;
        pair.a.tunnel().add_peer(pair.b.peer_config())?;
        pair.b.tunnel().add_peer(pair.a.peer_config())?;
        Ok(pair)
    }

    pub fn underlay_if_b(&self) -> String {
        format!("ub{}", self.id)
    }

    pub fn key_dir_a(&self) -> PathBuf {
        self.dir.path().join("a")
    }
}

/// Sends `payload` from pod A to pod B until one copy arrives (the first packets wait for the
/// handshake); returns what arrived.
pub fn send_until_received(
    tx: &UdpSocket,
    rx: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        tx.send_to(payload, to)?;
        if let Ok((n, _)) = rx.recv_from(&mut buf) {
            return Ok(buf[..n].to_vec());
        }
    }
    bail!("nothing arrived within {timeout:?}")
}

/// Asserts nothing arrives on `rx` within `wait`.
pub fn assert_silent(rx: &UdpSocket, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, from)) = rx.recv_from(&mut buf) {
            bail!("unexpected {n} bytes from {from}");
        }
    }
    Ok(())
}

/// tcpdump writing a pcap file, stopped (SIGTERM) on drop.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, ifname: &str, file: &Path) -> Result<Self> {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "tcpdump",
                "-i",
                ifname,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn tcpdump")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        ensure!(line.contains("listening on"), "tcpdump: {line}");
        // Keep reading its stderr: a closed pipe would kill tcpdump with SIGPIPE when it writes.
        std::thread::spawn(move || {
            let mut rest = String::new();
            while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {
                eprint!("tcpdump: {rest}");
                rest.clear();
            }
        });
        Ok(Self {
            child,
            file: file.to_path_buf(),
        })
    }

    /// Stops the capture and returns the pcap bytes.
    pub fn stop(mut self) -> Result<Vec<u8>> {
        self.terminate();
        Ok(std::fs::read(&self.file)?)
    }

    fn terminate(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("timed out waiting for {what}")
}
