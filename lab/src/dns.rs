//! A real DNS server for lab tests and demos: Debian's `dnsmasq` in a namespace (a pod, as
//! kube-dns would be, or an external host), authoritative for a test zone from a hosts file,
//! with a fixed TTL. Records can be changed while it runs (the file is rewritten and dnsmasq
//! re-reads it on SIGHUP), so tests can move a name to another address.
//!
//! ```text
//!  Dnsmasq::start(netns, dir, records, ttl)
//!    dir/hosts      "<ip> <name>" per record (re-written by set_records, then SIGHUP)
//!    ip netns exec <netns> dnsmasq --keep-in-foreground --no-resolv --no-hosts
//!        --addn-hosts=dir/hosts --local-ttl=<ttl> --port=53 (UDP and TCP)
//! ```
//! Names outside the records are answered REFUSED by dnsmasq itself (it has no upstream), so a
//! REFUSED that must come from the Palisade proxy is only proven for a name the zone holds.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;

/// How long `start` waits for dnsmasq to answer.
const READY: Duration = Duration::from_secs(5);

/// One A/AAAA record of the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Name (without trailing dot).
    pub name: String,
    /// Address.
    pub ip: IpAddr,
}

impl DnsRecord {
    /// A record.
    pub fn new(name: &str, ip: IpAddr) -> Self {
        DnsRecord {
            name: name.trim_end_matches('.').to_string(),
            ip,
        }
    }
}

/// Parses `NAME=IP`.
pub fn parse_record(s: &str) -> Result<DnsRecord, String> {
    let (name, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=IP"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{s}`: `{ip}` is not an IP address"))?;
    let name = name.trim_end_matches('.');
    if name.is_empty()
        || name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!("`{s}`: `{name}` is not a DNS name"));
    }
    Ok(DnsRecord::new(name, ip))
}

/// A running dnsmasq; killed when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    hosts: PathBuf,
    netns: String,
}

// === impl Dnsmasq ===

impl Dnsmasq {
    /// Starts dnsmasq in `netns` serving `records` with `ttl` seconds, its files in `dir`
    /// (created), and waits until it answers on the namespace's loopback.
    pub fn start(
        netns: &str,
        dir: &Path,
        records: &[DnsRecord],
        ttl: u32,
    ) -> Result<Self, LabError> {
        fs::create_dir_all(dir).map_err(|source| LabError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let hosts = dir.join("hosts");
        write_hosts(&hosts, records)?;
        let log = dir.join("dnsmasq.log");
        let log_file = fs::File::create(&log).map_err(|source| LabError::Io {
            action: "create",
            path: log.clone(),
            source,
        })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--user=root",
                "--pid-file=",
                "--port=53",
                "--log-facility=-",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--local-ttl={ttl}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().map_err(|e| LabError::Command {
            command: format!("ip netns exec {netns} dnsmasq"),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
        let mut d = Dnsmasq {
            child,
            hosts,
            netns: netns.to_string(),
        };
        d.wait_ready(&log)?;
        Ok(d)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the zone's records; dnsmasq serves the new ones from its next answer.
    pub fn set_records(&self, records: &[DnsRecord]) -> Result<(), LabError> {
        write_hosts(&self.hosts, records)?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).map_err(|e| {
            LabError::Command {
                command: format!("kill -HUP {pid}"),
                status: "failed".into(),
                stderr: e.to_string(),
            }
        })
    }

    /// Waits until dnsmasq has read its zone: it opens its sockets first, so from then on it
    /// answers (a pod's loopback may be down, so no probe from inside is relied on).
    fn wait_ready(&mut self, log: &Path) -> Result<(), LabError> {
        let deadline = Instant::now() + READY;
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LabError::Command {
                    command: format!("ip netns exec {} dnsmasq", self.netns),
                    status: status.to_string(),
                    stderr: text.trim().to_string(),
                });
            }
            if text.contains(&format!("read {}", self.hosts.display())) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Command {
                    command: format!("ip netns exec {} dnsmasq", self.netns),
                    status: "did not read its zone".into(),
                    stderr: text.trim().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_hosts(path: &Path, records: &[DnsRecord]) -> Result<(), LabError> {
    let mut text = String::new();
    for r in records {
        text.push_str(&format!("{} {}\n", r.ip, r.name));
    }
    // Written aside and renamed: dnsmasq never reads half a file.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(|source| LabError::Io {
        action: "write",
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, path).map_err(|source| LabError::Io {
        action: "replace",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_as_name_equals_ip() {
        let r = parse_record("api.example.test.=10.96.0.11").unwrap();
        assert_eq!(r.name, "api.example.test");
        assert_eq!(r.ip.to_string(), "10.96.0.11");
        assert!(
            parse_record("api.example.test")
                .unwrap_err()
                .contains("NAME=IP")
        );
        assert!(
            parse_record("a b=10.0.0.1")
                .unwrap_err()
                .contains("not a DNS name")
        );
        assert!(parse_record("a=10.0.0").unwrap_err().contains("not an IP"));
    }
}
