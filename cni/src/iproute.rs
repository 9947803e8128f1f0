//! The `ip` commands the plugin runs, through a [`Runner`]: in the plugin's own (the node's)
//! namespace directly, in the pod's through `nsenter --net=CNI_NETNS` (a path works whatever
//! created the namespace, unlike `ip -n NAME`).
//!
//! ```text
//!  node namespace                         pod namespace (CNI_NETNS)
//!   lxc<hash> ──────── veth ──────────────  CNI_IFNAME   <ip>/32
//!   route <ip>/32 dev lxc<hash>             route <gw> dev CNI_IFNAME scope link
//!                                           route default via <gw>
//!                                           neigh <gw> lladdr <lxc MAC> permanent
//! ```
//!
//! The gateway is a link-local address nobody owns: the permanent neighbour entry sends the
//! pod's traffic to the host-side veth, as Cilium and Calico do.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::runner::{Cmd, CommandError, Runner, run_ok};

/// A link as `ip -j link show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Link {
    /// Name.
    pub ifname: String,
    /// MAC address.
    #[serde(default)]
    pub address: Option<String>,
    /// Flags (`UP`, `LOWER_UP`, …).
    #[serde(default)]
    pub flags: Vec<String>,
    /// MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
}

// === impl Link ===

impl Link {
    /// Administratively up.
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

/// A route as `ip -j route show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RouteEntry {
    /// `default`, an address, or a prefix.
    pub dst: String,
    /// Next hop.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Scope (`link` for on-link routes).
    #[serde(default)]
    pub scope: Option<String>,
}

// === impl RouteEntry ===

impl RouteEntry {
    /// The destination as a prefix (`default` is 0.0.0.0/0 or ::/0 for `family`).
    pub fn dst_net(&self, v6: bool) -> Option<IpNet> {
        match self.dst.as_str() {
            "default" if v6 => Some(IpNet::V6(ipnet::Ipv6Net::default())),
            "default" => Some(IpNet::V4(ipnet::Ipv4Net::default())),
            s => s
                .parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from)),
        }
    }
}

/// A neighbour entry as `ip -j neigh show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Neighbour {
    /// The address.
    pub dst: IpAddr,
    /// Its MAC.
    #[serde(default)]
    pub lladdr: Option<String>,
    /// States (`PERMANENT`, `REACHABLE`, …).
    #[serde(default)]
    pub state: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    local: IpAddr,
    prefixlen: u8,
}

#[derive(Debug, Deserialize)]
struct LinkAddrs {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

/// What to configure for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet<'a> {
    /// `CNI_NETNS`.
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// The host-side veth.
    pub host_iface: &'a str,
    /// The pod's address with its prefix length.
    pub address: IpNet,
    /// The link-local gateway.
    pub gateway: IpAddr,
    /// MTU of both ends.
    pub mtu: u32,
}

/// The `ip` commands, through a runner.
pub struct IpRoute<'r, R> {
    runner: &'r R,
}

fn parse_json<T: serde::de::DeserializeOwned>(cmd: &Cmd, out: &str) -> Result<T, CommandError> {
    serde_json::from_str(out).map_err(|e| CommandError {
        command: cmd.to_string(),
        stderr: format!("unparsable output: {e}"),
    })
}

/// The host route's prefix length: the whole address (32 or 128).
pub fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

// === impl IpRoute ===

impl<'r, R: Runner> IpRoute<'r, R> {
    /// Commands through `runner`.
    pub fn new(runner: &'r R) -> Self {
        IpRoute { runner }
    }

    /// `ip ARGS` in the node's namespace, or `nsenter --net=NETNS ip ARGS` in a pod's.
    pub fn ip(netns: Option<&str>, args: &[&str]) -> Cmd {
        match netns {
            None => Cmd::new("ip", args),
            Some(ns) => {
                let mut full = vec![format!("--net={ns}"), "ip".to_string()];
                full.extend(args.iter().map(|a| a.to_string()));
                Cmd::new("nsenter", &full)
            }
        }
    }

    fn run(&self, cmd: &Cmd) -> Result<String, CommandError> {
        run_ok(self.runner, cmd)
    }

    /// Every link in a namespace (`None`: the node's).
    pub fn links(&self, netns: Option<&str>) -> Result<Vec<Link>, CommandError> {
        let cmd = Self::ip(netns, &["-j", "link", "show"]);
        let out = self.run(&cmd)?;
        parse_json(&cmd, &out)
    }

    /// One link, if it exists.
    pub fn link(&self, netns: Option<&str>, name: &str) -> Result<Option<Link>, CommandError> {
        Ok(self.links(netns)?.into_iter().find(|l| l.ifname == name))
    }

    /// The MAC of a link that must exist.
    pub fn mac(&self, netns: Option<&str>, name: &str) -> Result<String, CommandError> {
        let cmd = Self::ip(netns, &["-j", "link", "show", "dev", name]);
        let out = self.run(&cmd)?;
        let links: Vec<Link> = parse_json(&cmd, &out)?;
        links
            .into_iter()
            .find(|l| l.ifname == name)
            .and_then(|l| l.address)
            .ok_or_else(|| CommandError {
                command: cmd.to_string(),
                stderr: format!("no MAC address for `{name}` in the output"),
            })
    }

    /// Creates the veth: the host end in the node's namespace, the peer straight inside the
    /// pod's namespace under `CNI_IFNAME` (never in the node's, so no name clash there).
    pub fn create_veth(&self, p: &PodNet<'_>) -> Result<(), CommandError> {
        let mtu = p.mtu.to_string();
        let cmd = Self::ip(
            None,
            &[
                "link",
                "add",
                p.host_iface,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                p.ifname,
                "mtu",
                &mtu,
                "netns",
                p.netns,
            ],
        );
        self.run(&cmd).map(drop)
    }

    /// Host side: up, and the pod's address routed to it.
    pub fn configure_host(&self, p: &PodNet<'_>) -> Result<(), CommandError> {
        let script = format!(
            "link set {h} up\nroute add {ip}/{len} dev {h}\n",
            h = p.host_iface,
            ip = p.address.addr(),
            len = host_prefix(p.address.addr()),
        );
        self.run(&Self::ip(None, &["-batch", "-"]).stdin(script))
            .map(drop)
    }

    /// Pod side: address, up, the gateway on-link, the default route, and the gateway's
    /// permanent neighbour entry holding the host side's MAC.
    pub fn configure_pod(&self, p: &PodNet<'_>, host_mac: &str) -> Result<(), CommandError> {
        let script = format!(
            "addr add {addr} dev {d}\nlink set {d} up\nroute add {gw} dev {d} scope link\n\
             route add default via {gw} dev {d}\nneigh replace {gw} lladdr {host_mac} dev {d} nud permanent\n",
            addr = p.address,
            d = p.ifname,
            gw = p.gateway,
        );
        self.run(&Self::ip(Some(p.netns), &["-batch", "-"]).stdin(script))
            .map(drop)
    }

    /// Deletes a link in the node's namespace (a veth takes its peer with it).
    pub fn delete_link(&self, name: &str) -> Result<(), CommandError> {
        self.run(&Self::ip(None, &["link", "del", name])).map(drop)
    }

    /// The addresses on a link.
    pub fn addresses(&self, netns: Option<&str>, dev: &str) -> Result<Vec<IpNet>, CommandError> {
        let cmd = Self::ip(netns, &["-j", "addr", "show", "dev", dev]);
        let out = self.run(&cmd)?;
        let links: Vec<LinkAddrs> = parse_json(&cmd, &out)?;
        Ok(links
            .into_iter()
            .flat_map(|l| l.addr_info)
            .filter_map(|a| IpNet::new(a.local, a.prefixlen).ok())
            .collect())
    }

    /// The routes through a link (main table), IPv4 or IPv6.
    pub fn routes(
        &self,
        netns: Option<&str>,
        dev: &str,
        v6: bool,
    ) -> Result<Vec<RouteEntry>, CommandError> {
        let family = if v6 { "-6" } else { "-4" };
        let cmd = Self::ip(netns, &[family, "-j", "route", "show", "dev", dev]);
        let out = self.run(&cmd)?;
        parse_json(&cmd, &out)
    }

    /// The neighbour entries on a link.
    pub fn neighbours(
        &self,
        netns: Option<&str>,
        dev: &str,
    ) -> Result<Vec<Neighbour>, CommandError> {
        let cmd = Self::ip(netns, &["-j", "neigh", "show", "dev", dev]);
        let out = self.run(&cmd)?;
        parse_json(&cmd, &out)
    }
}
