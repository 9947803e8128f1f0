//! The success result of ADD (and the `prevResult` CHECK verifies against), in the shape of the
//! spec's section 5: `interfaces`, `ips`, `routes`, `dns`.
//!
//! ```json
//! {"cniVersion":"1.0.0",
//!  "interfaces":[{"name":"lxc0123456789a","mac":"…"},
//!                {"name":"eth0","mac":"…","sandbox":"/run/netns/pod"}],
//!  "ips":[{"address":"10.200.1.20/32","gateway":"169.254.1.1","interface":1}],
//!  "routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
//!  "dns":{}}
//! ```
//!
//! Before 1.0.0 each `ips` entry also carries `"version":"4"` (or `"6"`).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::version::CniVersion;

/// A result (ADD's output, CHECK's `prevResult`). Unknown keys are ignored on input, as a later
/// chained plugin may have added some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version the result is written in.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces created by the attachment.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes created.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings (from the network config's `dns`).
    #[serde(default)]
    pub dns: Dns,
}

/// An interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The netns path, for interfaces inside the container; absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`, before 1.0.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with prefix length.
    pub address: IpNet,
    /// The default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop (absent: the `gateway` of the matching `ips` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings, passed through from the network config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// What ADD built, the input of [`CniResult::for_add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Host-side veth name.
    pub host_iface: String,
    /// Its MAC.
    pub host_mac: String,
    /// Pod-side interface name (`CNI_IFNAME`).
    pub pod_iface: String,
    /// Its MAC.
    pub pod_mac: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// The pod's address with its prefix length.
    pub address: IpNet,
    /// The pod's gateway.
    pub gateway: IpAddr,
}

/// Index of the pod interface in [`CniResult::interfaces`] (the host veth comes first).
pub const POD_INTERFACE_INDEX: usize = 1;

// === impl CniResult ===

impl CniResult {
    /// ADD's result in `version`.
    pub fn for_add(version: CniVersion, b: &Built, dns: Dns) -> CniResult {
        let default_dst = match b.address {
            IpNet::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
            IpNet::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
        };
        let family = if b.address.addr().is_ipv4() { "4" } else { "6" };
        CniResult {
            cni_version: version.as_str().to_string(),
            interfaces: vec![
                Interface {
                    name: b.host_iface.clone(),
                    mac: Some(b.host_mac.clone()),
                    sandbox: None,
                },
                Interface {
                    name: b.pod_iface.clone(),
                    mac: Some(b.pod_mac.clone()),
                    sandbox: Some(b.netns.clone()),
                },
            ],
            ips: vec![IpConfig {
                version: version.ips_carry_version().then(|| family.to_string()),
                address: b.address,
                gateway: Some(b.gateway),
                interface: Some(POD_INTERFACE_INDEX),
            }],
            routes: vec![Route {
                dst: default_dst,
                gw: Some(b.gateway),
            }],
            dns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> Built {
        Built {
            host_iface: "lxc0123456789a".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_iface: "eth0".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            netns: "/run/netns/p".into(),
            address: "10.200.1.20/32".parse().unwrap(),
            gateway: "169.254.1.1".parse().unwrap(),
        }
    }

    #[test]
    fn add_result_shape_1_0_0() {
        let r = CniResult::for_add(CniVersion::V1_0_0, &built(), Dns::default());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "lxc0123456789a", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/p"}
                ],
                "ips": [{"address": "10.200.1.20/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
        // It reads back as a prevResult.
        let back: CniResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn add_result_before_1_0_0_carries_ip_version_and_dns() {
        let dns = Dns {
            nameservers: vec!["10.96.0.10".into()],
            search: vec!["svc.cluster.local".into()],
            ..Dns::default()
        };
        let r = CniResult::for_add(CniVersion::V0_4_0, &built(), dns);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(
            v["dns"],
            serde_json::json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]})
        );
        let mut b = built();
        b.address = "fd00::14/128".parse().unwrap();
        b.gateway = "fe80::1".parse().unwrap();
        let v = serde_json::to_value(CniResult::for_add(CniVersion::V0_3_1, &b, Dns::default()))
            .unwrap();
        assert_eq!(v["ips"][0]["version"], "6");
        assert_eq!(v["routes"][0]["dst"], "::/0");
    }

    #[test]
    fn prev_result_tolerates_extra_keys() {
        let r: CniResult = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x","extra":1}],
                "ips":[{"version":"4","address":"10.0.0.2/24"}],"other":true}"#,
        )
        .unwrap();
        assert_eq!(r.interfaces[0].name, "eth0");
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/24");
        assert!(r.routes.is_empty());
    }
}
