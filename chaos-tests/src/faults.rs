//! The faults the suite injects, each a real operation on the system: an interface taken down,
//! netem loss and delay (or, on kernels without netem, nftables random loss and a delay in user
//! space: every packet leaving the interface queued with NFQUEUE and released after the delay),
//! nftables drops, and signals to processes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use palisade_lab::ProcessRecord;
use palisade_lab::exec::exec_in;
use palisade_lab::procs::is_alive;

/// The nftables table the suite adds its drops to (one per namespace; removing it heals).
pub const NFT_TABLE: &str = "palisade_chaos";

/// Takes `iface` in `netns` down or up (`ip link set`).
pub fn set_link(netns: &str, iface: &str, up: bool) -> anyhow::Result<()> {
    let state = if up { "up" } else { "down" };
    exec_in(netns, "ip", &["link", "set", iface, state])
        .with_context(|| format!("ip link set {iface} {state} in {netns}"))?;
    Ok(())
}

/// The nftables table of [`degrade`]'s random loss.
pub const NFT_LOSS_TABLE: &str = "palisade_chaos_loss";

/// How [`degrade`] made the link worse (kernels without `sch_netem` get the fallback).
#[derive(Debug)]
pub enum Degraded {
    /// `tc netem delay D loss L%`.
    Netem,
    /// Random loss by nftables (`numgen random mod 100 < L`, both ways) and the delay added in
    /// user space ([`Delayer`]): this kernel has neither netem nor fq.
    LossAndQueueDelay(Delayer),
}

/// The NFQUEUE queue number the suite's delay uses (one per namespace).
const DELAY_QUEUE: u16 = 4242;

/// Delays every packet leaving an interface by a fixed time, in user space: an iptables
/// (legacy, whose NFQUEUE target this kernel has) rule queues them to a thread inside the
/// namespace, which gives each its accept verdict once the delay has passed, in order. With
/// `--queue-bypass`, packets flow undelayed if the thread is gone, never dropped.
#[derive(Debug)]
pub struct Delayer {
    netns: String,
    iface: String,
    /// Set first when healing: held packets go at once, and new ones without delay.
    drain: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    delayed: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<anyhow::Result<()>, palisade_lab::LabError>>>,
}

impl Delayer {
    /// Starts delaying packets that leave `iface` in `netns` by `delay`.
    pub fn start(netns: &str, iface: &str, delay: Duration) -> anyhow::Result<Delayer> {
        let drain = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let delayed = Arc::new(AtomicU64::new(0));
        let (ready, started) = std::sync::mpsc::channel();
        let thread = palisade_lab::exec::spawn_in_netns(netns, {
            let (drain, stop, delayed) = (drain.clone(), stop.clone(), delayed.clone());
            move || delay_loop(delay, &drain, &stop, &delayed, ready)
        });
        // The queue must be bound before the rule sends packets to it.
        started
            .recv_timeout(Duration::from_secs(5))
            .context("the delay thread did not bind its queue")?;
        queue_rule(netns, "-A", iface)
            .with_context(|| format!("iptables NFQUEUE on {iface} in {netns}"))?;
        Ok(Delayer {
            netns: netns.to_owned(),
            iface: iface.to_owned(),
            drain,
            stop,
            delayed,
            thread: Some(thread),
        })
    }

    /// Packets delayed so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Removes the rule, releases what is still held and stops the thread; its error, if any.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.halt()
    }

    fn halt(&mut self) -> anyhow::Result<u64> {
        // Release what is held before the rule goes: removing a hook drops the packets still
        // queued to it.
        self.drain.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        let _ = queue_rule(&self.netns, "-D", &self.iface);
        std::thread::sleep(Duration::from_millis(20));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the delay thread panicked"))??
                .context("the delay thread")?;
        }
        Ok(self.delayed())
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// Adds (`-A`) or deletes (`-D`) the rule that queues packets leaving `iface` to the delay.
fn queue_rule(netns: &str, op: &str, iface: &str) -> anyhow::Result<String> {
    let queue = DELAY_QUEUE.to_string();
    let args = [
        op,
        "OUTPUT",
        "-o",
        iface,
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue,
        "--queue-bypass",
    ];
    Ok(exec_in(netns, "iptables-legacy", &args)?)
}

/// The delay thread's loop: packets in order, each released `delay` after it was queued.
fn delay_loop(
    delay: Duration,
    drain: &AtomicBool,
    stop: &AtomicBool,
    delayed: &AtomicU64,
    ready: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let mut q = nfq::Queue::open().context("open an NFQUEUE socket")?;
    q.bind(DELAY_QUEUE).context("bind the NFQUEUE queue")?;
    // Only the packet's id is needed for the verdict: the kernel keeps the packet.
    q.set_copy_range(DELAY_QUEUE, 0)?;
    q.set_fail_open(DELAY_QUEUE, true)?;
    q.set_nonblocking(true);
    let _ = ready.send(());
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let release = |q: &mut nfq::Queue, mut m: nfq::Message| -> anyhow::Result<()> {
        m.set_verdict(nfq::Verdict::Accept);
        match q.verdict(m) {
            // The kernel no longer holds that packet (its hook went away): nothing to release.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
            r => r.context("NFQUEUE verdict"),
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let draining = drain.load(Ordering::Relaxed);
        while held.front().is_some_and(|(due, _)| draining || *due <= now) {
            if let Some((_, m)) = held.pop_front() {
                release(&mut q, m)?;
            }
        }
        match q.recv() {
            Ok(m) if draining => release(&mut q, m)?,
            Ok(m) => {
                delayed.fetch_add(1, Ordering::Relaxed);
                held.push_back((Instant::now() + delay, m));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200));
            }
            // An error answer to a verdict for a packet the kernel no longer holds.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(e).context("NFQUEUE receive"),
        }
    }
    for (_, m) in held {
        release(&mut q, m)?;
    }
    Ok(())
}

/// Makes `iface` in `netns` a bad link: `delay` and `loss_pct` % loss with netem; where the
/// kernel has no netem, `loss_pct` % random loss with nftables and the delay in user space
/// ([`Delayer`]).
pub fn degrade(
    netns: &str,
    iface: &str,
    delay: Duration,
    loss_pct: u32,
) -> anyhow::Result<Degraded> {
    let delay_arg = format!("{}ms", delay.as_millis());
    let loss = format!("{loss_pct}%");
    let netem = exec_in(
        netns,
        "tc",
        &[
            "qdisc", "replace", "dev", iface, "root", "netem", "delay", &delay_arg, "loss", &loss,
        ],
    );
    match netem {
        Ok(_) => return Ok(Degraded::Netem),
        Err(e) if e.to_string().contains("qdisc kind is unknown") => {}
        Err(e) => return Err(e).with_context(|| format!("tc netem on {iface} in {netns}")),
    }
    let script = format!(
        "table inet {NFT_LOSS_TABLE} {{
  chain in {{ type filter hook input priority -300; policy accept; iifname {iface} numgen random mod 100 < {loss_pct} counter drop; }}
  chain out {{ type filter hook output priority -300; policy accept; oifname {iface} numgen random mod 100 < {loss_pct} counter drop; }}
}}
"
    );
    nft_file(netns, &script).with_context(|| format!("nft random loss in {netns}"))?;
    match Delayer::start(netns, iface, delay) {
        Ok(d) => Ok(Degraded::LossAndQueueDelay(d)),
        Err(e) => {
            let _ = exec_in(netns, "nft", &["delete", "table", "inet", NFT_LOSS_TABLE]);
            Err(e)
        }
    }
}

/// Undoes [`degrade`]: the netem qdisc, or the loss table and the delay (whose count of
/// delayed packets it returns; 0 with netem).
pub fn restore(netns: &str, iface: &str, how: Degraded) -> anyhow::Result<u64> {
    match how {
        Degraded::Netem => {
            let _ = exec_in(netns, "tc", &["qdisc", "del", "dev", iface, "root"]);
            Ok(0)
        }
        Degraded::LossAndQueueDelay(d) => {
            let _ = exec_in(netns, "nft", &["delete", "table", "inet", NFT_LOSS_TABLE]);
            d.stop()
        }
    }
}

fn nft_file(netns: &str, script: &str) -> anyhow::Result<()> {
    let path =
        std::env::temp_dir().join(format!("palisade-chaos-{netns}-{}.nft", std::process::id()));
    std::fs::write(&path, script)?;
    let res = exec_in(netns, "nft", &["-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    res?;
    Ok(())
}

/// Drops, in `netns`, every IPv4 packet in and out whose peer matches `peer` (an nft expression
/// such as `10.97.0.1` or `!= 127.0.0.0/8`): input and output hooks before anything else, so
/// neither new nor established connections get through.
pub fn nft_drop(netns: &str, peer: &str) -> anyhow::Result<()> {
    let script = format!(
        "table inet {NFT_TABLE} {{
  chain in {{ type filter hook input priority -300; policy accept; ip saddr {peer} counter drop; }}
  chain out {{ type filter hook output priority -300; policy accept; ip daddr {peer} counter drop; }}
}}
"
    );
    nft_file(netns, &script).with_context(|| format!("nft drop {peer} in {netns}"))
}

/// Packets the drop in `netns` discarded so far (in + out).
pub fn nft_dropped(netns: &str) -> anyhow::Result<u64> {
    nft_dropped_in(netns, NFT_TABLE)
}

/// Packets the counters of the suite's nftables `table` in `netns` counted so far.
pub fn nft_dropped_in(netns: &str, table: &str) -> anyhow::Result<u64> {
    let out = exec_in(netns, "nft", &["list", "table", "inet", table])?;
    Ok(out
        .split("packets ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

/// Removes the drop from `netns` (a missing table is fine).
pub fn nft_heal(netns: &str) {
    let _ = exec_in(netns, "nft", &["delete", "table", "inet", NFT_TABLE]);
}

/// Sends `sig` to the recorded process.
pub fn signal(p: &ProcessRecord, sig: Signal) -> anyhow::Result<()> {
    if !is_alive(p.pid, p.start_time) {
        // Gone before the fault: say how it ended (its log's last lines).
        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "{} (pid {}) is not running; its log ends:\n{}",
            p.name,
            p.pid,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    kill(Pid::from_raw(i32::try_from(p.pid)?), sig)
        .with_context(|| format!("{sig} to {} (pid {})", p.name, p.pid))?;
    Ok(())
}

/// SIGKILLs the recorded process and waits until it is gone (it is not our child: the lab
/// detaches its processes, so poll `/proc`).
pub fn sigkill(p: &ProcessRecord) -> anyhow::Result<()> {
    signal(p, Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(p.pid, p.start_time) {
        if Instant::now() > deadline {
            bail!("{} (pid {}) survived SIGKILL for 10 s", p.name, p.pid);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// SIGTERMs the recorded process and waits until it is gone (SIGKILL after 10 s).
pub fn sigterm(p: &ProcessRecord) -> anyhow::Result<()> {
    signal(p, Signal::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(p.pid, p.start_time) {
        if Instant::now() > deadline {
            return sigkill(p);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
