//! The address plan (pure): names and addresses of every namespace, interface and pod, computed
//! from a [`LabSpec`] into a [`LabState`] before anything is created.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::state::{
    ClusterState, ExternalState, FabricState, LabState, NodeState, Phase, PodState, STATE_VERSION,
    netns_prefix,
};
use crate::{Ipv4Cidr, LabSpec, spec};

/// The link-local gateway every pod routes through (answered by a permanent neighbour entry
/// holding the host-side veth's MAC, as Calico and Cilium do).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Offset of node i's underlay address in the underlay CIDR (`10 + i`).
pub const NODE_HOST_OFFSET: u64 = 10;
/// Offset of pod j's address in its node's /24 (`10 + j`).
pub const POD_HOST_OFFSET: u64 = 10;
/// Bridge in the fabric namespace.
pub const FABRIC_BRIDGE: &str = "br0";
/// Interface name of a node's underlay and of a pod's veth.
pub const ETH0: &str = "eth0";

/// `pal-<lab>-fabric`.
pub fn fabric_netns(lab: &str) -> String {
    format!("{}fabric", netns_prefix(lab))
}

/// `n<i>`.
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// `pal-<lab>-n<i>`.
pub fn node_netns(lab: &str, i: usize) -> String {
    format!("{}n{i}", netns_prefix(lab))
}

/// `n<i>-p<j>`.
pub fn pod_name(i: usize, j: usize) -> String {
    format!("n{i}-p{j}")
}

/// `pal-<lab>-n<i>-p<j>`.
pub fn pod_netns(lab: &str, i: usize, j: usize) -> String {
    format!("{}n{i}-p{j}", netns_prefix(lab))
}

/// `lxc<j>`: the host-side veth of pod j in its node.
pub fn host_iface(j: usize) -> String {
    format!("lxc{j}")
}

/// How many nodes fit an underlay CIDR (node i is host `10 + i`), capped at [`spec::MAX_NODES`].
pub fn max_nodes(underlay: Ipv4Cidr) -> usize {
    let fit = underlay.size().saturating_sub(2 + NODE_HOST_OFFSET);
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .min(spec::MAX_NODES)
}

/// Node i's underlay address.
pub fn underlay_ip(underlay: Ipv4Cidr, i: usize) -> Option<Ipv4Addr> {
    underlay.host(NODE_HOST_OFFSET + i as u64)
}

/// Node i's pod /24 inside the cluster pod /16.
pub fn node_pod_cidr(pod_cidr: Ipv4Cidr, i: usize) -> Option<Ipv4Cidr> {
    let i = u32::try_from(i).ok().filter(|i| *i <= 255)?;
    Ipv4Cidr::new(Ipv4Addr::from(u32::from(pod_cidr.addr()) + (i << 8)), 24)
}

/// Pod j's address in its node's /24.
pub fn pod_ip(node_cidr: Ipv4Cidr, j: usize) -> Option<Ipv4Addr> {
    node_cidr.host(POD_HOST_OFFSET + j as u64)
}

/// Computes the whole lab from a validated spec (phase `creating`, no processes yet).
pub fn plan(s: &LabSpec) -> Option<LabState> {
    let mut nodes = Vec::with_capacity(s.nodes);
    let mut pods = Vec::with_capacity(s.nodes * s.pods_per_node);
    for i in 1..=s.nodes {
        let pod_cidr = match s.node_pod_cidrs.get(i - 1) {
            Some(c) => *c,
            None => node_pod_cidr(s.pod_cidr, i)?,
        };
        let node = node_name(i);
        let grid = if s.pods.is_empty() {
            s.pods_per_node
        } else {
            0
        };
        for j in 1..=grid {
            let name = pod_name(i, j);
            let labels = BTreeMap::from([
                ("app".to_string(), name.clone()),
                ("node".to_string(), node.clone()),
            ]);
            pods.push(PodState {
                netns: pod_netns(&s.name, i, j),
                namespace: s.pod_namespace.clone(),
                labels,
                node: node.clone(),
                iface: ETH0.to_string(),
                host_iface: host_iface(j),
                ip: pod_ip(pod_cidr, j)?.into(),
                name,
                service_account: None,
                ports: Vec::new(),
            });
        }
        nodes.push(NodeState {
            netns: node_netns(&s.name, i),
            index: i,
            underlay_iface: ETH0.to_string(),
            fabric_iface: node.clone(),
            underlay_ip: underlay_ip(s.underlay_cidr, i)?,
            underlay_prefix: s.underlay_cidr.prefix(),
            pod_cidr,
            name: node,
        });
    }
    // Explicitly placed pods: the j-th pod of node i gets the grid's names for namespaces and
    // interfaces, and its own address when it asked for one.
    let mut per_node = vec![0usize; s.nodes + 1];
    let mut taken: std::collections::BTreeSet<Ipv4Addr> =
        s.pods.iter().filter_map(|p| p.ip).collect();
    for p in &s.pods {
        per_node[p.node] += 1;
        let j = per_node[p.node];
        let ip = match p.ip {
            Some(ip) => ip,
            None => {
                let cidr = nodes.get(p.node.checked_sub(1)?)?.pod_cidr;
                let ip = (1..=spec::MAX_PODS_PER_NODE)
                    .filter_map(|k| pod_ip(cidr, k))
                    .find(|ip| !taken.contains(ip))?;
                taken.insert(ip);
                ip
            }
        };
        pods.push(PodState {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            node: node_name(p.node),
            netns: pod_netns(&s.name, p.node, j),
            iface: ETH0.to_string(),
            host_iface: host_iface(j),
            ip: ip.into(),
            service_account: p.service_account.clone(),
            ports: p.ports.clone(),
        });
    }
    let mut externals: Vec<ExternalState> = s
        .externals
        .iter()
        .enumerate()
        .map(|(k, x)| ExternalState {
            name: x.name.clone(),
            netns: format!("pal-{}-x{}", s.name, k + 1),
            fabric_iface: format!("x{}", k + 1),
            ip: x.ip,
        })
        .collect();
    let cluster = s.cluster.as_ref().map(|c| {
        externals.push(ExternalState {
            name: spec::CP_HOST.to_string(),
            netns: format!("{}cp", netns_prefix(&s.name)),
            fabric_iface: "cp".to_string(),
            ip: spec::CP_HOST_IP,
        });
        ClusterState {
            voters: c.voters,
            cni_bin: c.cni_bin.clone(),
            encryption: c.encryption,
            node_encryption: c.encryption && c.node_encryption,
            wireguard_rotation_secs: c.wireguard_rotation.map(|d| d.as_secs().max(1)),
            l7_proxy_workers: c.l7_proxy_workers,
            cp_netns: format!("{}cp", netns_prefix(&s.name)),
            api_urls: (1..=c.voters)
                .map(|k| format!("https://{}", ClusterState::voter_addrs(k).1))
                .collect(),
        }
    });
    Some(LabState {
        version: STATE_VERSION,
        name: s.name.clone(),
        phase: Phase::Creating,
        palisade_bin: s.palisade_bin.clone(),
        underlay_cidr: s.underlay_cidr,
        pod_cidr: s.pod_cidr,
        fabric: FabricState {
            netns: fabric_netns(&s.name),
            bridge: FABRIC_BRIDGE.to_string(),
        },
        nodes,
        pods,
        processes: Vec::new(),
        serve_tcp: s.serve_tcp.clone(),
        serve_udp: s.serve_udp.clone(),
        serve_http: s.serve_http.clone(),
        externals,
        serve_nodes: s.serve_nodes,
        cluster,
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn documented_address_plan() {
        let st = plan(&LabSpec::new("demo", 2, 3, "/bin/true")).unwrap();
        assert_eq!(st.fabric.netns, "pal-demo-fabric");
        assert_eq!(st.nodes.len(), 2);
        let n2 = &st.nodes[1];
        assert_eq!((n2.name.as_str(), n2.netns.as_str()), ("n2", "pal-demo-n2"));
        assert_eq!(n2.underlay_ip, Ipv4Addr::new(10, 98, 0, 12));
        assert_eq!(n2.pod_cidr.to_string(), "10.200.2.0/24");
        assert_eq!(st.pods.len(), 6);
        let p = st.pod("n2-p3").unwrap();
        assert_eq!(p.netns, "pal-demo-n2-p3");
        assert_eq!(p.ip, IpAddr::V4(Ipv4Addr::new(10, 200, 2, 13)));
        assert_eq!(p.host_iface, "lxc3");
        assert_eq!(p.node, "n2");
        assert_eq!(p.namespace, "default");
        assert_eq!(st.pods_on("n1").count(), 3);
        assert!(st.namespaces().iter().all(|n| n.starts_with("pal-demo-")));
        assert_eq!(st.namespaces().len(), 6 + 2 + 1);
    }

    #[test]
    fn chosen_node_cidrs_hold_the_nodes_pods() {
        let mut s = LabSpec::new("lt", 2, 1, "/bin/true");
        s.pod_cidr = "10.10.0.0/16".parse().unwrap();
        s.node_pod_cidrs = vec![
            "10.10.7.0/24".parse().unwrap(),
            "10.10.0.0/24".parse().unwrap(),
        ];
        s.pods = vec![crate::PodPlan {
            name: "x/a".into(),
            namespace: "x".into(),
            labels: BTreeMap::new(),
            node: 2,
            ip: None,
            service_account: None,
            ports: Vec::new(),
        }];
        assert!(s.validate().is_ok());
        let st = plan(&s).unwrap();
        assert_eq!(st.nodes[0].pod_cidr.to_string(), "10.10.7.0/24");
        assert_eq!(st.nodes[1].pod_cidr.to_string(), "10.10.0.0/24");
        assert_eq!(st.pods[0].ip, IpAddr::V4(Ipv4Addr::new(10, 10, 0, 11)));
        // One CIDR per node, each a /24 of the pod CIDR, none twice.
        s.node_pod_cidrs.pop();
        assert!(s.validate().is_err());
        s.node_pod_cidrs = vec!["10.10.7.0/24".parse().unwrap(); 2];
        assert!(s.validate().is_err());
        s.node_pod_cidrs = vec![
            "10.10.7.0/24".parse().unwrap(),
            "10.11.0.0/24".parse().unwrap(),
        ];
        assert!(s.validate().is_err());
    }

    #[test]
    fn limits() {
        let c24: Ipv4Cidr = "10.98.0.0/24".parse().unwrap();
        assert_eq!(max_nodes(c24), 244);
        assert_eq!(underlay_ip(c24, 244), Some(Ipv4Addr::new(10, 98, 0, 254)));
        assert_eq!(underlay_ip(c24, 245), None);
        assert_eq!(max_nodes("10.98.0.0/16".parse().unwrap()), 250);
        assert_eq!(max_nodes("10.98.0.0/30".parse().unwrap()), 0);
        let pods: Ipv4Cidr = "10.200.0.0/16".parse().unwrap();
        assert_eq!(
            node_pod_cidr(pods, 250).unwrap().to_string(),
            "10.200.250.0/24"
        );
        assert_eq!(node_pod_cidr(pods, 256), None);
        let n1 = node_pod_cidr(pods, 1).unwrap();
        assert_eq!(pod_ip(n1, 200), Some(Ipv4Addr::new(10, 200, 1, 210)));
        // Largest lab: every name and address is distinct.
        let mut s = LabSpec::new("big", 250, 200, "/bin/true");
        s.underlay_cidr = "10.98.0.0/23".parse().unwrap();
        let st = plan(&s).unwrap();
        let ips: std::collections::HashSet<_> = st.pods.iter().map(|p| p.ip).collect();
        assert_eq!(ips.len(), 50_000);
        assert_eq!(st.nodes[249].underlay_ip, Ipv4Addr::new(10, 98, 1, 4));
    }
}
