//! Direct evaluation of the rules, without selector cache, slices or map keys: the reference the
//! compiled entries are tested against (property tests), and a readable statement of semantics.

use std::net::IpAddr;

use crate::compile::{Contribution, Kind, combine};
use crate::engine::{Endpoint, Engine};
use crate::identity::Identity;
use crate::ir::{Direction, Peers, PortSpec};
use crate::mapstate::{FLAG_FALLBACK, PolicyValue, VERDICT_ALLOW};

impl Engine {
    /// Evaluates the rules selecting `subject` for one packet directly: every matching rule's
    /// contribution, combined with the same precedence as the compiler; then `ipBlock` rules
    /// against a pod peer's IP when no rule decided. `None` means default deny.
    pub fn evaluate_direct(
        &self,
        subject: &Endpoint,
        direction: Direction,
        peer: Identity,
        peer_pod_ip: Option<IpAddr>,
        protocol: u8,
        port: u16,
    ) -> Option<PolicyValue> {
        let ctx = self.selector_cache().context().clone();
        let empty = crate::labels::LabelSet::new();
        let peer_labels = self.labels(peer).unwrap_or(&empty);
        let sp = self.selector_policy(subject.identity);
        let d = direction as usize;
        let mut cs: Vec<Contribution> = Vec::new();
        if sp.default_deny[d].is_empty() {
            cs.push(Contribution {
                kind: Kind::DefaultAllow,
                audit: false,
                rule: 0,
            });
        } else if sp.default_deny[d]
            .iter()
            .all(|x| self.origin(*x).is_some_and(|o| o.audit))
        {
            cs.push(Contribution {
                kind: Kind::AuditDefault,
                audit: true,
                rule: sp.default_deny[d][0],
            });
        }
        let mut ip_allow: Option<u32> = None;
        for rid in &sp.rules[d] {
            let Some(r) = self.rule(*rid) else { continue };
            let peer_ok = match &r.peers {
                Peers::Any => true,
                Peers::Selectors(s) => s.iter().any(|s| s.matches(peer, peer_labels, &ctx)),
            };
            // Named ports resolve on the destination: for identity-keyed matching, the endpoints
            // of the peer identity (the map is keyed by identity); for an `ipBlock` matching a
            // pod by address, that pod itself.
            let by_ip_dest: Vec<&Endpoint> = match (direction, peer_pod_ip) {
                (Direction::Egress, Some(ip)) => self.endpoint_by_ip(ip).into_iter().collect(),
                _ => vec![subject],
            };
            let l4_match = |dest: &[&Endpoint]| -> Vec<Option<&std::sync::Arc<crate::ir::L7>>> {
                let mut hits = Vec::new();
                match &r.l4 {
                    None => hits.push(None),
                    Some(ms) => {
                        for m in ms {
                            if m.proto != protocol {
                                continue;
                            }
                            let hit = match &m.port {
                                PortSpec::Range(lo, hi) => (*lo..=*hi).contains(&port),
                                PortSpec::Named(n) => dest.iter().any(|e| {
                                    e.spec.ports.iter().any(|p| {
                                        p.name == *n && p.protocol == protocol && p.port == port
                                    })
                                }),
                            };
                            if hit {
                                hits.push(m.l7.as_ref());
                            }
                        }
                    }
                }
                hits
            };
            let by_identity_dest: Vec<&Endpoint> = match direction {
                Direction::Ingress => vec![subject],
                Direction::Egress => self
                    .endpoints()
                    .values()
                    .filter(|e| e.identity == peer)
                    .collect(),
            };
            let l4_hits = l4_match(&by_identity_dest);
            let ip_hits = l4_match(&by_ip_dest);
            if !peer_ok && !ip_hits.is_empty() {
                if !r.deny
                    && let Some(ip) = peer_pod_ip
                {
                    let ipn = ipnet::IpNet::from(ip);
                    if r.pod_ip_blocks
                        .iter()
                        .any(|(n, ex)| n.contains(&ipn) && !ex.iter().any(|e| e.contains(&ipn)))
                    {
                        ip_allow = Some(ip_allow.map_or(*rid, |x| x.min(*rid)));
                    }
                }
                continue;
            }
            if l4_hits.is_empty() || !peer_ok {
                continue;
            }
            for l7 in l4_hits {
                let kind = if r.deny {
                    Kind::Deny
                } else {
                    match l7 {
                        Some(l) => Kind::Redirect(l.clone()),
                        None => Kind::Allow,
                    }
                };
                cs.push(Contribution {
                    kind,
                    audit: r.origin.audit,
                    rule: *rid,
                });
            }
        }
        let v = combine(cs.iter(), ProxyPortsOf::of(self)).map(|x| x.0);
        match (v, ip_allow) {
            (Some(v), _) if v.flags & FLAG_FALLBACK == 0 => Some(v),
            (_, Some(rule)) => Some(PolicyValue {
                verdict: VERDICT_ALLOW,
                flags: 0,
                proxy_port: 0,
                rule,
            }),
            (v, None) => v,
        }
    }
}

struct ProxyPortsOf;
impl ProxyPortsOf {
    fn of(e: &Engine) -> crate::compile::ProxyPorts {
        e.proxy_ports()
    }
}
