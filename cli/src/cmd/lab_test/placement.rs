//! Where `palisade lab test` puts a suite's pods: which node, which address, and each node's
//! pod /24 (pure; unit tested here).
//!
//! The pods are made by the CNI plugin and get their addresses from their node agent's IPAM,
//! which hands out only addresses of its node's pod CIDR. A suite's own addresses (`ip:`) are
//! part of its policies (`ipBlock`), so they are kept, and the nodes' /24s are chosen to hold
//! them: the pods of one /24 share a node. Pods without an address get the next free one of
//! their node's /24; the suite is then compiled offline with exactly these addresses, so both
//! verdicts judge the same world.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, anyhow, bail};
use palisade_lab::Ipv4Cidr;
use palisade_policy::suite::EndpointDef;

/// The /16 of suites that give no addresses (where `policy test` assigns them).
const DEFAULT_BASE: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
/// First host offset used for pods without an address (the agent's dynamic range).
const FIRST_FREE_HOST: u8 = 10;

/// The lab layout of one suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The cluster's pod CIDR, a /16 holding every node's /24.
    pub pod_cidr: Ipv4Cidr,
    /// Node i's pod /24 (node 1 first).
    pub node_cidrs: Vec<Ipv4Cidr>,
    /// Per endpoint of the suite, in order: its node (1-based) and address.
    pub pods: Vec<(usize, Ipv4Addr)>,
}

/// A node being planned: the suite's name for it, and the third octet of its /24.
#[derive(Default)]
struct Slot {
    suite_name: Option<String>,
    octet: Option<u8>,
}

/// Places `endpoints` on at least `min_nodes` nodes (see the module docs). Endpoints without a
/// node and an address are spread round-robin, as `lab test` always did.
pub fn place(endpoints: &[EndpointDef], min_nodes: usize) -> Result<Placement> {
    let mut given: Vec<Option<Ipv4Addr>> = Vec::with_capacity(endpoints.len());
    for (i, e) in endpoints.iter().enumerate() {
        given.push(match e.ip.as_deref().map(str::parse::<IpAddr>) {
            None => None,
            Some(Ok(IpAddr::V4(ip))) => Some(ip),
            Some(Ok(IpAddr::V6(_))) => bail!(
                "endpoints[{i}] `{}`: an IPv6 address; the lab is IPv4-only for now",
                e.name
            ),
            Some(Err(_)) => bail!("endpoints[{i}].ip: not an IP address"),
        });
    }
    let base = match given.iter().flatten().next() {
        Some(ip) => {
            let [a, b, ..] = ip.octets();
            Ipv4Addr::new(a, b, 0, 0)
        }
        None => DEFAULT_BASE,
    };
    let pod_cidr = cidr(base, 16)?;
    for (i, ip) in given.iter().enumerate() {
        if let Some(ip) = ip {
            if !pod_cidr.contains(*ip) {
                bail!(
                    "endpoints[{i}] `{}`: {ip} is outside {pod_cidr}; the lab needs every given \
                     address in one /16 (its cluster pod CIDR)",
                    endpoints[i].name
                );
            }
            let last = ip.octets()[3];
            if last == 0 || last == 255 {
                bail!(
                    "endpoints[{i}] `{}`: {ip} is the network or broadcast address of its /24, \
                     which the lab gives to a node",
                    endpoints[i].name
                );
            }
        }
    }

    let mut slots: Vec<Slot> = Vec::new();
    let slot_named = |slots: &mut Vec<Slot>, name: &str| -> usize {
        match slots
            .iter()
            .position(|s| s.suite_name.as_deref() == Some(name))
        {
            Some(k) => k,
            None => {
                slots.push(Slot {
                    suite_name: Some(name.to_owned()),
                    octet: None,
                });
                slots.len() - 1
            }
        }
    };
    // Named nodes first, in name order: the suite's `node1` is the lab's `n1`.
    let named: BTreeSet<&str> = endpoints.iter().filter_map(|e| e.node.as_deref()).collect();
    for n in named {
        slot_named(&mut slots, n);
    }
    // Addresses claim /24s for nodes: a named node takes its pods' /24, an unnamed pod joins the
    // node of its /24 (or a new node).
    for (i, e) in endpoints.iter().enumerate() {
        let Some(ip) = given[i] else { continue };
        let octet = ip.octets()[2];
        let owner = slots.iter().position(|s| s.octet == Some(octet));
        match &e.node {
            Some(n) => {
                let k = slot_named(&mut slots, n);
                match (slots[k].octet, owner) {
                    (Some(o), _) if o != octet => bail!(
                        "endpoints[{i}] `{}`: {ip} is not in the /24 of the other pods of node \
                         `{n}`; a lab node holds one pod /24",
                        e.name
                    ),
                    (_, Some(other)) if other != k => bail!(
                        "endpoints[{i}] `{}`: {ip} shares a /24 with pods of another node; a pod \
                         /24 belongs to one lab node",
                        e.name
                    ),
                    _ => slots[k].octet = Some(octet),
                }
            }
            None if owner.is_none() => slots.push(Slot {
                suite_name: None,
                octet: Some(octet),
            }),
            None => {}
        }
    }
    while slots.len() < min_nodes.max(1) {
        slots.push(Slot::default());
    }
    if slots.len() > usize::from(u8::MAX) {
        bail!(
            "the suite needs {} nodes; the lab has at most 255",
            slots.len()
        );
    }
    // The other nodes take free /24s of the same /16.
    let mut free = (1..=u8::MAX)
        .chain([0])
        .filter(|o| given.iter().flatten().all(|ip| ip.octets()[2] != *o));
    let mut used: Vec<u8> = slots.iter().filter_map(|s| s.octet).collect();
    for s in slots.iter_mut().filter(|s| s.octet.is_none()) {
        let o = free
            .by_ref()
            .find(|o| !used.contains(o))
            .ok_or_else(|| anyhow::anyhow!("no free /24 left in {pod_cidr}"))?;
        used.push(o);
        s.octet = Some(o);
    }
    let [a, b, ..] = base.octets();
    let node_cidrs = slots
        .iter()
        .map(|s| cidr(Ipv4Addr::new(a, b, s.octet.unwrap_or_default(), 0), 24))
        .collect::<Result<Vec<_>>>()?;

    let mut taken: BTreeSet<Ipv4Addr> = given.iter().flatten().copied().collect();
    let mut pods = Vec::with_capacity(endpoints.len());
    for (i, e) in endpoints.iter().enumerate() {
        let k = match (&e.node, given[i]) {
            (Some(n), _) => slots
                .iter()
                .position(|s| s.suite_name.as_deref() == Some(n.as_str()))
                .unwrap_or_default(),
            (None, Some(ip)) => slots
                .iter()
                .position(|s| s.octet == Some(ip.octets()[2]))
                .unwrap_or_default(),
            (None, None) => i % slots.len(),
        };
        let ip = match given[i] {
            Some(ip) => ip,
            None => {
                let [a, b, c, _] = node_cidrs[k].addr().octets();
                let Some(ip) = (FIRST_FREE_HOST..u8::MAX)
                    .map(|d| Ipv4Addr::new(a, b, c, d))
                    .find(|ip| !taken.contains(ip))
                else {
                    bail!(
                        "node {} has no free address left in {}",
                        k + 1,
                        node_cidrs[k]
                    );
                };
                taken.insert(ip);
                ip
            }
        };
        pods.push((k + 1, ip));
    }
    Ok(Placement {
        pod_cidr,
        node_cidrs,
        pods,
    })
}

fn cidr(net: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr> {
    Ipv4Cidr::new(net, prefix).ok_or_else(|| anyhow!("{net}/{prefix} is not a network"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, ip: Option<&str>, node: Option<&str>) -> EndpointDef {
        EndpointDef {
            name: name.into(),
            ip: ip.map(str::to_owned),
            node: node.map(str::to_owned),
            ..EndpointDef::default()
        }
    }

    fn cidrs(p: &Placement) -> Vec<String> {
        p.node_cidrs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn suites_without_addresses_spread_round_robin_in_the_default_range() {
        let eps = [
            ep("x/a", None, None),
            ep("x/b", None, None),
            ep("y/a", None, None),
        ];
        let p = place(&eps, 2).unwrap();
        assert_eq!(p.pod_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(cidrs(&p), ["10.244.1.0/24", "10.244.2.0/24"]);
        assert_eq!(
            p.pods,
            [
                (1, Ipv4Addr::new(10, 244, 1, 10)),
                (2, Ipv4Addr::new(10, 244, 2, 10)),
                (1, Ipv4Addr::new(10, 244, 1, 11)),
            ]
        );
    }

    #[test]
    fn given_addresses_are_kept_and_each_24_gets_a_node() {
        let eps = [
            ep("x/a", Some("10.10.0.1"), None),
            ep("x/b", Some("10.10.0.2"), None),
            ep("y/a", Some("10.10.1.1"), None),
            ep("z/a", Some("10.10.2.1"), None),
            ep("z/b", None, None),
        ];
        let p = place(&eps, 2).unwrap();
        assert_eq!(p.pod_cidr.to_string(), "10.10.0.0/16");
        assert_eq!(cidrs(&p), ["10.10.0.0/24", "10.10.1.0/24", "10.10.2.0/24"]);
        assert_eq!(p.pods[0], (1, Ipv4Addr::new(10, 10, 0, 1)));
        assert_eq!(p.pods[1], (1, Ipv4Addr::new(10, 10, 0, 2)));
        assert_eq!(p.pods[2], (2, Ipv4Addr::new(10, 10, 1, 1)));
        assert_eq!(p.pods[3], (3, Ipv4Addr::new(10, 10, 2, 1)));
        // The unaddressed pod goes round-robin (index 4 of 3 nodes: node 2) into its node's /24.
        assert_eq!(p.pods[4], (2, Ipv4Addr::new(10, 10, 1, 10)));
        // More nodes than /24s: the extra ones take free /24s of the same /16.
        let p = place(&eps[..2], 3).unwrap();
        assert_eq!(cidrs(&p), ["10.10.0.0/24", "10.10.1.0/24", "10.10.2.0/24"]);
    }

    #[test]
    fn named_nodes_keep_their_pods_together() {
        let eps = [
            ep("x/a", None, Some("node1")),
            ep("x/b", None, Some("node2")),
            ep("y/a", None, Some("node1")),
        ];
        let p = place(&eps, 1).unwrap();
        assert_eq!(p.node_cidrs.len(), 2);
        assert_eq!(
            p.pods.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [1, 2, 1]
        );
        let eps = [
            ep("x/a", Some("10.1.5.7"), Some("node2")),
            ep("x/b", None, Some("node1")),
        ];
        let p = place(&eps, 2).unwrap();
        assert_eq!(cidrs(&p), ["10.1.1.0/24", "10.1.5.0/24"]);
        assert_eq!(
            p.pods,
            [
                (2, Ipv4Addr::new(10, 1, 5, 7)),
                (1, Ipv4Addr::new(10, 1, 1, 10))
            ]
        );
    }

    #[test]
    fn layouts_a_lab_cannot_build_are_refused_with_the_endpoint_named() {
        let err = |eps: &[EndpointDef]| place(eps, 2).unwrap_err().to_string();
        let e = err(&[
            ep("x/a", Some("10.1.0.1"), None),
            ep("x/b", Some("10.2.0.1"), None),
        ]);
        assert!(
            e.contains("endpoints[1] `x/b`") && e.contains("one /16"),
            "{e}"
        );
        let e = err(&[
            ep("x/a", Some("10.1.0.1"), Some("n1")),
            ep("x/b", Some("10.1.1.1"), Some("n1")),
        ]);
        assert!(e.contains("`x/b`") && e.contains("one pod /24"), "{e}");
        let e = err(&[
            ep("x/a", Some("10.1.0.1"), Some("n1")),
            ep("x/b", Some("10.1.0.2"), Some("n2")),
        ]);
        assert!(e.contains("`x/b`") && e.contains("another node"), "{e}");
        let e = err(&[ep("x/a", Some("10.1.0.255"), None)]);
        assert!(e.contains("broadcast"), "{e}");
        let e = err(&[ep("x/a", Some("fd00::1"), None)]);
        assert!(e.contains("IPv6"), "{e}");
    }
}
