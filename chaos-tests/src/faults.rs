//! The faults the suite injects, each a real operation on the system: an interface taken down,
//! netem loss and delay (or, on kernels without netem, nftables random loss and a tbf rate
//! limit), nftables drops, and signals to processes.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Degraded {
    /// `tc netem delay D loss L%`.
    Netem,
    /// Random loss by nftables (`numgen random mod 100 < L`, both ways) and a `tbf` rate limit
    /// on the interface (no added delay: this kernel has no netem).
    LossAndRateLimit,
}

/// Makes `iface` in `netns` a bad link: `delay` and `loss_pct` % loss with netem; where the
/// kernel has no netem, `loss_pct` % random loss with nftables and a 4 Mbit/s token bucket.
pub fn degrade(
    netns: &str,
    iface: &str,
    delay: Duration,
    loss_pct: u32,
) -> anyhow::Result<Degraded> {
    let delay = format!("{}ms", delay.as_millis());
    let loss = format!("{loss_pct}%");
    let netem = exec_in(
        netns,
        "tc",
        &[
            "qdisc", "replace", "dev", iface, "root", "netem", "delay", &delay, "loss", &loss,
        ],
    );
    match netem {
        Ok(_) => return Ok(Degraded::Netem),
        Err(e) if e.to_string().contains("qdisc kind is unknown") => {}
        Err(e) => return Err(e).with_context(|| format!("tc netem on {iface} in {netns}")),
    }
    exec_in(
        netns,
        "tc",
        &[
            "qdisc", "replace", "dev", iface, "root", "tbf", "rate", "4mbit", "burst", "32kbit",
            "latency", "200ms",
        ],
    )
    .with_context(|| format!("tc tbf on {iface} in {netns}"))?;
    let script = format!(
        "table inet {NFT_LOSS_TABLE} {{
  chain in {{ type filter hook input priority -300; policy accept; iifname {iface} numgen random mod 100 < {loss_pct} counter drop; }}
  chain out {{ type filter hook output priority -300; policy accept; oifname {iface} numgen random mod 100 < {loss_pct} counter drop; }}
}}
"
    );
    nft_file(netns, &script).with_context(|| format!("nft random loss in {netns}"))?;
    Ok(Degraded::LossAndRateLimit)
}

/// Undoes [`degrade`] (whatever is missing is fine).
pub fn restore(netns: &str, iface: &str) {
    let _ = exec_in(netns, "tc", &["qdisc", "del", "dev", iface, "root"]);
    let _ = exec_in(netns, "nft", &["delete", "table", "inet", NFT_LOSS_TABLE]);
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
