//! What the proxy knows of the node: the local endpoints with their compiled policy, and who
//! each address is. The run loop builds a new view after every sync and swaps it in whole;
//! connection tasks only read it, per request, so a policy change applies to the next request
//! of a kept-alive connection.

use crate::agent::sorted::SortedTable;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use palisade_datapath_common::endpoint::IDENTITY_HOST;
use palisade_policy::identity::Identity;
use palisade_policy::ir::{Direction, HttpRequest, L7};
use palisade_policy::mapstate::{
    MapState, PolicyKey, VERDICT_DENY, VERDICT_REDIRECT, dir_byte, mask,
};

/// Reserved identity of addresses nobody registered (Cilium's numbering).
pub const IDENTITY_WORLD: u32 = 2;

/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;

/// Which proxy a redirect entry belongs to (the kind of its L7 rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Kind {
    /// `rules.http`: the HTTP proxy (TCP).
    Http,
    /// `rules.dns`: the DNS proxy (UDP and TCP).
    Dns,
}

/// A local endpoint.
#[derive(Debug, Clone)]
pub struct Local {
    /// Host-side interface of its veth (egress redirects match it).
    pub iface: String,
    /// Its compiled policy.
    pub policy: Arc<MapState>,
}

/// Who an address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Identity.
    pub identity: u32,
    /// Endpoint name when the endpoint is local (remote endpoints are known by identity only).
    pub name: Option<Arc<str>>,
}

/// The node as the proxy sees it.
#[derive(Debug, Clone, Default)]
pub struct ProxyView {
    /// Local endpoints by address.
    pub locals: HashMap<IpAddr, Local>,
    /// Every known address: local and remote endpoints, this node's own addresses (host).
    pub peers: SortedTable<IpAddr, PeerInfo>,
}

/// The L4 verdict of a connection the proxy received.
#[derive(Debug, Clone)]
pub enum L4Verdict {
    /// No rule lets the peer in: the proxy refuses the connection.
    Deny,
    /// A plain L4 rule allows the peer on this port: L7 rules do not apply (Cilium's semantics).
    Allow,
    /// Allowed at L4, requests must satisfy any of these L7 rule sets.
    Redirect(Vec<Arc<L7>>),
}

/// The L7 verdict of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestVerdict {
    /// Forward to the original destination.
    Forward,
    /// Answer 403.
    Deny,
}

/// One redirect the node's packet filter must perform. Ingress: connections from `peers`
/// to `endpoint` on `ports`. Egress: connections from `endpoint` (entering from its veth
/// `iface`) to `peers` on `ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Redirect {
    /// Transport protocol ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub protocol: u8,
    /// Whose policy: the local endpoint's ingress or egress.
    pub direction: RedirectDirection,
    /// The local endpoint's address.
    pub endpoint: IpAddr,
    /// Its host-side veth.
    pub iface: String,
    /// Inclusive destination port range.
    pub ports: (u16, u16),
    /// The peers: sources (ingress) or destinations (egress).
    pub peers: PeerSet,
}

/// Direction of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RedirectDirection {
    /// The endpoint's ingress policy.
    Ingress,
    /// The endpoint's egress policy.
    Egress,
}

/// Sources of a redirect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerSet {
    /// Only these addresses.
    Only(BTreeSet<IpAddr>),
    /// Every address except these (the rule covers unknown addresses, i.e. `world`).
    AllBut(BTreeSet<IpAddr>),
}

// === impl ProxyView ===

impl ProxyView {
    /// The identity of an address (`world` when nobody registered it).
    pub fn identity_of(&self, ip: IpAddr) -> u32 {
        self.peers.get(&ip).map_or(IDENTITY_WORLD, |p| p.identity)
    }

    /// The address as an ipBlock lookup sees it: pods only (as the datapath's pod-address map).
    fn pod_ip(&self, ip: IpAddr) -> Option<IpAddr> {
        self.peers
            .get(&ip)
            .filter(|p| p.identity != IDENTITY_HOST)
            .map(|_| ip)
    }

    /// The L4 verdict of a TCP connection from `peer` to the local endpoint at `dst`, by its
    /// ingress policy; `None` when `dst` is no local endpoint with L7 rules.
    pub fn ingress(&self, dst: SocketAddr, peer: IpAddr) -> Option<(&Local, L4Verdict)> {
        self.side(Direction::Ingress, dst.ip(), peer, PROTO_TCP, dst.port())
    }

    /// The L4 verdict of a TCP connection from the local endpoint at `src` to `dst`, by its
    /// egress policy; `None` when `src` is no local endpoint with L7 rules.
    pub fn egress(&self, src: IpAddr, dst: SocketAddr) -> Option<(&Local, L4Verdict)> {
        self.side(Direction::Egress, src, dst.ip(), PROTO_TCP, dst.port())
    }

    /// The L4 verdict of traffic of `protocol` from the local endpoint at `src` to `dst`, by its
    /// egress policy (the DNS proxy: UDP or TCP); `None` when `src` is no local endpoint with
    /// L7 rules.
    pub fn egress_proto(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        protocol: u8,
    ) -> Option<(&Local, L4Verdict)> {
        self.side(Direction::Egress, src, dst.ip(), protocol, dst.port())
    }

    fn side(
        &self,
        direction: Direction,
        local_ip: IpAddr,
        peer: IpAddr,
        protocol: u8,
        port: u16,
    ) -> Option<(&Local, L4Verdict)> {
        let local = self.locals.get(&local_ip)?;
        let m = &local.policy;
        let l = m.lookup(
            direction,
            Identity(self.identity_of(peer)),
            self.pod_ip(peer),
            protocol,
            port,
        );
        let verdict = match l.value {
            None => L4Verdict::Deny,
            Some(v) if v.verdict == VERDICT_DENY => L4Verdict::Deny,
            Some(v) if v.verdict == VERDICT_REDIRECT => {
                let sets = l
                    .key
                    .and_then(|k| m.l7.get(&k))
                    .cloned()
                    .unwrap_or_default();
                L4Verdict::Redirect(sets)
            }
            Some(_) => L4Verdict::Allow,
        };
        Some((local, verdict))
    }

    /// The redirects the packet filter must hold: for every redirect entry with HTTP rules of a
    /// local endpoint, the known addresses whose lookup lands on that very entry.
    /// When `world` lands on it too, the rule covers every address except the known ones that
    /// do not, so the packet filter and the datapath's lookup agree on every source.
    pub fn redirects(&self) -> Vec<Redirect> {
        self.redirects_of(L7Kind::Http)
    }

    /// The redirects of one proxy: HTTP rules on TCP; DNS rules on UDP and TCP (a key for any
    /// protocol yields both).
    pub fn redirects_of(&self, kind: L7Kind) -> Vec<Redirect> {
        let mut out = Vec::new();
        for (ep_ip, local) in &self.locals {
            let m = &local.policy;
            for (k, v) in &m.entries {
                let (direction, rdir) = if k.direction == dir_byte(Direction::Ingress) {
                    (Direction::Ingress, RedirectDirection::Ingress)
                } else {
                    (Direction::Egress, RedirectDirection::Egress)
                };
                let has_rules = |l: &L7| match kind {
                    L7Kind::Http => !l.http.is_empty(),
                    L7Kind::Dns => l.http.is_empty() && !l.dns.is_empty(),
                };
                // The DNS proxy answers a pod's own queries: egress only (the policy engine
                // refuses DNS rules on ingress, as Cilium does).
                if v.verdict != VERDICT_REDIRECT
                    || (kind == L7Kind::Dns && direction == Direction::Ingress)
                    || !m.l7.get(k).is_some_and(|s| s.iter().any(|l| has_rules(l)))
                {
                    continue;
                }
                let protocols: &[u8] = match (kind, k.protocol) {
                    (L7Kind::Http, PROTO_TCP) => &[PROTO_TCP],
                    (L7Kind::Dns, PROTO_TCP) => &[PROTO_TCP],
                    (L7Kind::Dns, PROTO_UDP) => &[PROTO_UDP],
                    (L7Kind::Dns, 0) => &[PROTO_UDP, PROTO_TCP],
                    _ => &[],
                };
                for &protocol in protocols {
                    let lands = |id: u32, ip: Option<IpAddr>| {
                        m.lookup(direction, Identity(id), ip, protocol, k.dport).key == Some(*k)
                    };
                    let mut yes = BTreeSet::new();
                    let mut no = BTreeSet::new();
                    for (ip, p) in self.peers.iter() {
                        if ip == ep_ip || ip.is_ipv4() != ep_ip.is_ipv4() {
                            continue;
                        }
                        if lands(p.identity, self.pod_ip(*ip)) {
                            yes.insert(*ip);
                        } else {
                            no.insert(*ip);
                        }
                    }
                    let peers = if lands(IDENTITY_WORLD, None) {
                        PeerSet::AllBut(no)
                    } else if yes.is_empty() {
                        continue;
                    } else {
                        PeerSet::Only(yes)
                    };
                    out.push(Redirect {
                        protocol,
                        direction: rdir,
                        endpoint: *ep_ip,
                        iface: local.iface.clone(),
                        ports: port_range(k),
                        peers,
                    });
                }
            }
        }
        out.sort();
        out
    }
}

/// The inclusive port range of a key's prefix-aligned block.
fn port_range(k: &PolicyKey) -> (u16, u16) {
    let lo = mask(k.dport, k.port_prefix_len);
    let span = if k.port_prefix_len >= 16 {
        0
    } else {
        u16::MAX >> k.port_prefix_len
    };
    (lo, lo | span)
}

/// Whether any rule set allows the request (Cilium ORs the rules of every matching policy).
pub fn http_verdict(sets: &[Arc<L7>], req: &HttpRequest) -> RequestVerdict {
    if sets.iter().any(|s| s.allows_http(req)) {
        RequestVerdict::Forward
    } else {
        RequestVerdict::Deny
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::mapstate::{DIR_INGRESS, PolicyValue, VERDICT_ALLOW};

    fn key(identity: u32, port: u16) -> PolicyKey {
        PolicyKey {
            identity,
            direction: DIR_INGRESS,
            protocol: PROTO_TCP,
            port_prefix_len: 16,
            pad: 0,
            dport: port,
            pad2: 0,
        }
    }

    fn value(verdict: u8) -> PolicyValue {
        PolicyValue {
            verdict,
            flags: 0,
            proxy_port: if verdict == VERDICT_REDIRECT {
                15001
            } else {
                0
            },
            rule: 1,
        }
    }

    fn l7_get_only() -> Arc<L7> {
        Arc::new(L7 {
            http: vec![palisade_policy::ir::HttpMatch {
                method: Some(regex::Regex::new("^(?:GET)$").unwrap()),
                path: Some(regex::Regex::new("^(?:/get)$").unwrap()),
                host: None,
                headers: vec![],
            }],
            dns: vec![],
        })
    }

    /// Endpoint 10.0.0.5: identity 300 redirected on 8080, identity 301 allowed at L4 on 8080,
    /// identity 302 unknown to its policy.
    fn view() -> ProxyView {
        let mut m = MapState::default();
        m.entries.insert(key(300, 8080), value(VERDICT_REDIRECT));
        m.l7.insert(key(300, 8080), vec![l7_get_only()]);
        m.entries.insert(key(301, 8080), value(VERDICT_ALLOW));
        let ep: IpAddr = "10.0.0.5".parse().unwrap();
        let mut v = ProxyView::default();
        v.locals.insert(
            ep,
            Local {
                iface: "lxcserver".into(),
                policy: Arc::new(m),
            },
        );
        v.peers = [
            ("10.0.0.5", 400),
            ("10.0.0.6", 300),
            ("10.0.1.6", 300),
            ("10.0.0.7", 301),
            ("10.0.0.8", 302),
        ]
        .into_iter()
        .map(|(ip, id)| {
            let info = PeerInfo {
                identity: id,
                name: None,
            };
            (ip.parse().unwrap(), info)
        })
        .collect();
        v
    }

    #[test]
    fn redirects_cover_exactly_the_peers_whose_lookup_is_the_redirect() {
        let r = view().redirects();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].endpoint, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(r[0].ports, (8080, 8080));
        let want: BTreeSet<IpAddr> = ["10.0.0.6", "10.0.1.6"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(r[0].peers, PeerSet::Only(want));
    }

    #[test]
    fn a_wildcard_redirect_covers_the_world_except_peers_with_another_verdict() {
        let mut v = view();
        let local = v.locals.values_mut().next().unwrap();
        let mut m = (*local.policy).clone();
        m.entries.insert(key(0, 8080), value(VERDICT_REDIRECT));
        m.l7.insert(key(0, 8080), vec![l7_get_only()]);
        local.policy = Arc::new(m);
        let r = v.redirects();
        // One rule for identity 300's own entry, one for the wildcard entry.
        assert_eq!(r.len(), 2, "{r:?}");
        let all_but: Vec<_> = r
            .iter()
            .filter_map(|r| match &r.peers {
                PeerSet::AllBut(s) => Some(s.clone()),
                PeerSet::Only(_) => None,
            })
            .collect();
        let want: BTreeSet<IpAddr> = ["10.0.0.6", "10.0.1.6", "10.0.0.7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            all_but,
            vec![want],
            "300 has its own entry, 301 is L4-allowed"
        );
    }

    #[test]
    fn ingress_verdicts_follow_the_datapath_lookup() {
        let v = view();
        let dst: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let get = HttpRequest {
            method: Some("GET".into()),
            path: Some("/get".into()),
            ..HttpRequest::default()
        };
        let post = HttpRequest {
            method: Some("POST".into()),
            ..get.clone()
        };
        match v.ingress(dst, "10.0.0.6".parse().unwrap()).unwrap().1 {
            L4Verdict::Redirect(sets) => {
                assert_eq!(http_verdict(&sets, &get), RequestVerdict::Forward);
                assert_eq!(http_verdict(&sets, &post), RequestVerdict::Deny);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            v.ingress(dst, "10.0.0.7".parse().unwrap()).unwrap().1,
            L4Verdict::Allow
        ));
        assert!(matches!(
            v.ingress(dst, "10.0.0.8".parse().unwrap()).unwrap().1,
            L4Verdict::Deny
        ));
        assert!(
            v.ingress("10.0.0.9:80".parse().unwrap(), "10.0.0.6".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn dns_redirects_are_egress_udp_and_tcp_and_leave_http_alone() {
        let mut v = view();
        let local = v.locals.values_mut().next().unwrap();
        let mut m = (*local.policy).clone();
        let dns = Arc::new(L7 {
            http: vec![],
            dns: vec![palisade_policy::selector::FqdnMatch::Pattern("*".into())],
        });
        // Egress to identity 301 on port 53, UDP and TCP (what `protocol: ANY` compiles to).
        for protocol in [PROTO_UDP, PROTO_TCP] {
            let k = PolicyKey {
                direction: palisade_policy::mapstate::DIR_EGRESS,
                protocol,
                ..key(301, 53)
            };
            m.entries.insert(k, value(VERDICT_REDIRECT));
            m.l7.insert(k, vec![dns.clone()]);
        }
        local.policy = Arc::new(m);
        let d = v.redirects_of(L7Kind::Dns);
        let got: Vec<(u8, RedirectDirection, (u16, u16))> = d
            .iter()
            .map(|r| (r.protocol, r.direction, r.ports))
            .collect();
        assert_eq!(
            got,
            vec![
                (PROTO_TCP, RedirectDirection::Egress, (53, 53)),
                (PROTO_UDP, RedirectDirection::Egress, (53, 53)),
            ]
        );
        let only_301: BTreeSet<IpAddr> = ["10.0.0.7".parse().unwrap()].into();
        assert!(
            d.iter().all(|r| r.peers == PeerSet::Only(only_301.clone())),
            "{d:?}"
        );
        // The HTTP proxy's redirects are unchanged by the DNS entry.
        assert_eq!(v.redirects().len(), 1);
        assert!(v.redirects().iter().all(|r| r.protocol == PROTO_TCP));
    }

    #[test]
    fn port_ranges_of_prefix_blocks() {
        let mut k = key(0, 8080);
        assert_eq!(port_range(&k), (8080, 8080));
        k.port_prefix_len = 14;
        assert_eq!(port_range(&k), (8080, 8083));
        k.port_prefix_len = 0;
        k.dport = 0;
        assert_eq!(port_range(&k), (0, 65535));
    }
}
