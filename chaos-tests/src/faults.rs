//! The faults the suite injects, each a real operation on the system: an interface taken down,
//! netem loss and delay, nftables drops, and signals to processes.

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

/// Adds netem to `iface` in `netns`: `delay` each way and `loss_pct` % loss.
pub fn netem(netns: &str, iface: &str, delay: Duration, loss_pct: u32) -> anyhow::Result<()> {
    let delay = format!("{}ms", delay.as_millis());
    let loss = format!("{loss_pct}%");
    exec_in(
        netns,
        "tc",
        &[
            "qdisc", "replace", "dev", iface, "root", "netem", "delay", &delay, "loss", &loss,
        ],
    )
    .with_context(|| format!("tc netem on {iface} in {netns}"))?;
    Ok(())
}

/// Removes netem from `iface` in `netns` (a missing qdisc is fine).
pub fn clear_netem(netns: &str, iface: &str) {
    let _ = exec_in(netns, "tc", &["qdisc", "del", "dev", iface, "root"]);
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
    let path = std::env::temp_dir().join(format!("{NFT_TABLE}-{netns}.nft"));
    std::fs::write(&path, script)?;
    let res = exec_in(netns, "nft", &["-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    res.with_context(|| format!("nft drop {peer} in {netns}"))?;
    Ok(())
}

/// Packets the drop in `netns` discarded so far (in + out).
pub fn nft_dropped(netns: &str) -> anyhow::Result<u64> {
    let out = exec_in(netns, "nft", &["list", "table", "inet", NFT_TABLE])?;
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
        bail!("{} (pid {}) is not running", p.name, p.pid);
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
