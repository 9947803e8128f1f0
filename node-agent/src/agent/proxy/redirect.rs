//! Steering redirected connections to the proxy: an nftables table with TPROXY rules in the
//! node's network namespace, plus the policy route that delivers marked packets locally.
//!
//! TPROXY rather than `redirect`/DNAT: the packet keeps its destination, so the proxy's accepted
//! socket's local address *is* the original destination (no `SO_ORIGINAL_DST`, no NAT state),
//! and it works whatever interface the packet came in on (a pod's veth has no address for
//! `redirect` to rewrite to; WireGuard's does, but only by accident).
//!
//! ```text
//!  prerouting (mangle): socket transparent 1      → mark, accept  (packets of proxied flows)
//!                       ip daddr <ep> tcp dport P
//!                       ip saddr {peers}          → mark, tproxy to :<proxy port>
//!  ip rule fwmark MARK lookup TABLE;  TABLE: local default dev lo
//! ```
//! Only sources whose policy lookup is the redirect are steered; every other packet goes on to
//! the endpoint's veth, where the eBPF program decides at L4 as before (allow or drop).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::ProxyError;
use super::view::{PeerSet, Redirect, RedirectDirection};

/// The nftables table the agent owns.
pub const TABLE: &str = "palisade_proxy";
/// Firewall mark of packets steered to the proxy.
pub const MARK: u32 = 0x0200_0000;
/// Routing table delivering marked packets locally.
pub const ROUTE_TABLE: u32 = 2004;
/// Priority of the `ip rule`.
const RULE_PREF: u32 = 90;

/// The whole table for these redirects, as one `nft -f` transaction: the old table goes and the
/// new one comes in at once (no moment without rules). No redirects: the table is removed.
pub fn ruleset(redirects: &[Redirect], proxy_port: u16) -> String {
    ruleset_for(TABLE, redirects, proxy_port, "tcp")
}

/// The table `table` for these redirects; packets of `transparent` protocols (`tcp`, or a set
/// such as `{ tcp, udp }`) belonging to the proxy's own transparent sockets (its upstream
/// connections) are delivered locally.
pub fn ruleset_for(
    table: &str,
    redirects: &[Redirect],
    proxy_port: u16,
    transparent: &str,
) -> String {
    let mut s = format!("table inet {table}\ndelete table inet {table}\n");
    if redirects.is_empty() {
        return s;
    }
    let _ = writeln!(s, "table inet {table} {{");
    let _ = writeln!(s, "  chain prerouting {{");
    let _ = writeln!(
        s,
        "    type filter hook prerouting priority mangle; policy accept;"
    );
    let _ = writeln!(
        s,
        "    meta l4proto {transparent} socket transparent 1 meta mark set {MARK:#x} accept"
    );
    for r in redirects {
        let fam = if r.endpoint.is_ipv4() { "ip" } else { "ip6" };
        let to = if r.endpoint.is_ipv4() {
            format!("ip to :{proxy_port}")
        } else {
            format!("ip6 to :{proxy_port}")
        };
        let ports = if r.ports.0 == r.ports.1 {
            r.ports.0.to_string()
        } else {
            format!("{}-{}", r.ports.0, r.ports.1)
        };
        let (ours, theirs) = match r.direction {
            RedirectDirection::Ingress => (format!("{fam} daddr {}", r.endpoint), "saddr"),
            RedirectDirection::Egress => (
                format!("iifname \"{}\" {fam} saddr {}", r.iface, r.endpoint),
                "daddr",
            ),
        };
        let peers = match &r.peers {
            PeerSet::Only(s) => format!("{fam} {theirs} {} ", set(s)),
            PeerSet::AllBut(s) if s.is_empty() => String::new(),
            PeerSet::AllBut(s) => format!("{fam} {theirs} != {} ", set(s)),
        };
        let proto = if r.protocol == super::view::PROTO_UDP {
            "udp"
        } else {
            "tcp"
        };
        let _ = writeln!(
            s,
            "    {ours} {proto} dport {ports} {peers}meta mark set {MARK:#x} tproxy {to} accept"
        );
    }
    let _ = writeln!(s, "  }}\n}}");
    s
}

fn set(s: &BTreeSet<IpAddr>) -> String {
    let items: Vec<String> = s.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// Applies a ruleset with `nft -f -`.
pub fn apply(ruleset: &str) -> Result<(), ProxyError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProxyError::Command {
            command: "nft -f -".into(),
            detail: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(ruleset.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| ProxyError::Command {
        command: "nft -f -".into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ProxyError::Command {
            command: "nft -f -".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Installs the policy route for marked packets (idempotent: replaces what a previous run left).
/// IPv4 must work; IPv6 is best effort (a namespace may have it disabled).
pub fn install_route() -> Result<(), ProxyError> {
    for fam in ["-4", "-6"] {
        if let Err(e) = install_route_family(fam) {
            if fam == "-4" {
                return Err(e);
            }
            eprintln!("palisade agent: l7 proxy: no IPv6 redirects: {e}");
        }
    }
    Ok(())
}

fn install_route_family(fam: &str) -> Result<(), ProxyError> {
    let mark = format!("{MARK:#x}/{MARK:#x}");
    let table = ROUTE_TABLE.to_string();
    let pref = RULE_PREF.to_string();
    // Delete first so a restart does not stack duplicate rules; absence is fine.
    let _ = run(&["ip", fam, "rule", "del", "pref", &pref]);
    run(&[
        "ip", fam, "rule", "add", "pref", &pref, "fwmark", &mark, "lookup", &table,
    ])?;
    let default = if fam == "-4" { "0.0.0.0/0" } else { "::/0" };
    run(&[
        "ip", fam, "route", "replace", "local", default, "dev", "lo", "table", &table,
    ])
}

fn run(args: &[&str]) -> Result<(), ProxyError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| ProxyError::Command {
            command: args.join(" "),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProxyError::Command {
            command: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &[&str]) -> BTreeSet<IpAddr> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ruleset_replaces_the_table_in_one_transaction() {
        let r = vec![
            Redirect {
                protocol: 6,
                direction: RedirectDirection::Ingress,
                endpoint: "10.200.2.11".parse().unwrap(),
                iface: "lxc1".into(),
                ports: (8080, 8080),
                peers: PeerSet::Only(ips(&["10.200.1.11", "10.200.2.12"])),
            },
            Redirect {
                protocol: 6,
                direction: RedirectDirection::Egress,
                endpoint: "10.200.2.12".parse().unwrap(),
                iface: "lxc2".into(),
                ports: (8080, 8083),
                peers: PeerSet::AllBut(ips(&["10.200.1.12"])),
            },
        ];
        let s = ruleset(&r, 15001);
        assert!(s.starts_with(
            "table inet palisade_proxy\ndelete table inet palisade_proxy\ntable inet palisade_proxy {"
        ));
        assert!(s.contains(
            "ip daddr 10.200.2.11 tcp dport 8080 ip saddr { 10.200.1.11, 10.200.2.12 } meta mark set 0x2000000 tproxy ip to :15001 accept"
        ), "{s}");
        assert!(
            s.contains(
                "iifname \"lxc2\" ip saddr 10.200.2.12 tcp dport 8080-8083 ip daddr != { 10.200.1.12 } meta mark"
            ),
            "{s}"
        );
        assert_eq!(
            ruleset(&[], 15001),
            "table inet palisade_proxy\ndelete table inet palisade_proxy\n"
        );
    }
}
