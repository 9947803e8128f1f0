//! The compiled, datapath-shaped policy of one endpoint, and the lookup the datapath performs.
//!
//! Keys mirror an LPM policy map: `{identity (0 = any peer), direction, protocol (0 = any),
//! port prefix length (0 = any port), port}`; port ranges are split into prefix-aligned blocks.
//! Values: `{verdict allow/deny/redirect, audit flag, proxy port, rule id}`.
//!
//! Lookup order (DESIGN §3.5), most specific first: for each port prefix length from 16 down to
//! 1, the peer's identity then identity 0; then protocol-only with the identity then 0; then
//! protocol-any with the identity then 0. The first key present decides. Deny precedence and the
//! combination of overlapping rules are resolved when the map is built (see `compile`), so the
//! first hit is always the complete answer; no hit means default deny.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::identity::Identity;
use crate::ir::{Direction, L7};

use palisade_datapath_common::policy as dp;

/// Direction as stored in a key (the datapath's value).
pub const DIR_INGRESS: u8 = dp::DIRECTION_INGRESS;
/// Direction as stored in a key (the datapath's value).
pub const DIR_EGRESS: u8 = dp::DIRECTION_EGRESS;

/// Verdict: drop.
pub const VERDICT_DENY: u8 = dp::VERDICT_DENY;
/// Verdict: pass.
pub const VERDICT_ALLOW: u8 = dp::VERDICT_ALLOW;
/// Verdict: pass through the L7 proxy at `proxy_port`.
pub const VERDICT_REDIRECT: u8 = dp::VERDICT_REDIRECT;

/// Flag: a policy in audit mode would have denied; report AUDIT and let the packet pass.
pub const FLAG_AUDIT: u8 = dp::FLAG_AUDIT;
/// Flag: no rule decided; the entry is the direction's fallback (default allow when no policy
/// enforces the direction, or the audit default when only audit-mode policies do).
pub const FLAG_FALLBACK: u8 = dp::FLAG_FALLBACK;

/// Rule id of entries that exist because no policy enforces the direction.
pub const RULE_DEFAULT_ALLOW: u32 = 0;

/// Key of one policy entry (12 bytes, `#[repr(C)]`, no implicit padding).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyKey {
    /// Peer identity; 0 = any peer.
    pub identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IP protocol; 0 = any (then the port prefix length is 0 too).
    pub protocol: u8,
    /// Number of leading port bits that must match (0 = any port, 16 = exactly `dport`).
    pub port_prefix_len: u8,
    /// Padding, always 0.
    pub pad: u8,
    /// Destination port (ICMP: type), host order, masked to the prefix.
    pub dport: u16,
    /// Padding, always 0.
    pub pad2: u16,
}
const _: () = assert!(std::mem::size_of::<PolicyKey>() == 12);

/// Value of one policy entry (8 bytes, `#[repr(C)]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PolicyValue {
    /// [`VERDICT_DENY`], [`VERDICT_ALLOW`] or [`VERDICT_REDIRECT`].
    pub verdict: u8,
    /// [`FLAG_AUDIT`] | [`FLAG_FALLBACK`].
    pub flags: u8,
    /// L7 proxy port for redirects, else 0.
    pub proxy_port: u16,
    /// Rule that decided (index into the rule table; [`RULE_DEFAULT_ALLOW`] for default allow).
    pub rule: u32,
}
const _: () = assert!(std::mem::size_of::<PolicyValue>() == 8);

/// An L4 match of a key: protocol and port block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L4Key {
    /// Protocol (0 any).
    pub protocol: u8,
    /// Prefix length (0–16).
    pub prefix_len: u8,
    /// Port, masked.
    pub port: u16,
}

impl L4Key {
    /// Every protocol and port.
    pub const ANY: L4Key = L4Key {
        protocol: 0,
        prefix_len: 0,
        port: 0,
    };

    /// Whether `self` covers `other` (every packet matching `other` matches `self`).
    pub fn covers(&self, other: &L4Key) -> bool {
        if self.protocol == 0 {
            return true;
        }
        self.protocol == other.protocol
            && self.prefix_len <= other.prefix_len
            && mask(other.port, self.prefix_len) == self.port
    }

    /// Whether the key matches a packet's protocol and port.
    pub fn matches(&self, protocol: u8, port: u16) -> bool {
        self.covers(&L4Key {
            protocol,
            prefix_len: 16,
            port,
        })
    }

    /// Specificity rank: higher is more specific.
    pub fn rank(&self) -> u8 {
        if self.protocol == 0 {
            0
        } else {
            1 + self.prefix_len
        }
    }
}

/// Masks a port to its leading `len` bits.
pub fn mask(port: u16, len: u8) -> u16 {
    if len == 0 {
        0
    } else if len >= 16 {
        port
    } else {
        port & !(u16::MAX >> len)
    }
}

/// Splits an inclusive port range into prefix-aligned blocks `(port, prefix_len)`.
pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut cur = u32::from(lo);
    let end = u32::from(hi);
    while cur <= end {
        let mut size: u32 = 1;
        // Grow the block while it stays aligned and inside the range.
        while size < 65536 && cur.is_multiple_of(size * 2) && cur + size * 2 - 1 <= end {
            size *= 2;
        }
        let len = 16 - size.trailing_zeros() as u8;
        out.push((cur as u16, len));
        cur += size;
    }
    out
}

/// Key direction byte.
pub fn dir_byte(d: Direction) -> u8 {
    match d {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

/// A Kubernetes `ipBlock` rule that also applies to pods by IP (beside the identity map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    /// Direction.
    pub direction: Direction,
    /// Block.
    pub net: IpNet,
    /// Excluded sub-blocks.
    pub except: Vec<IpNet>,
    /// L4 matches (empty: every protocol and port).
    pub l4: Vec<L4Key>,
    /// Rule id.
    pub rule: u32,
}

/// The compiled policy of one endpoint. Endpoints of one identity nearly always compile to equal
/// states, so the engine shares one (`Arc`) between them (see [`MapState::eq`]).
#[derive(Debug, Clone, Default)]
pub struct MapState {
    /// Identity-keyed entries.
    pub entries: BTreeMap<PolicyKey, PolicyValue>,
    /// L7 rules of redirect entries.
    pub l7: BTreeMap<PolicyKey, Vec<Arc<L7>>>,
    /// `ipBlock` rules matched against pod peers' IPs when the identity lookup has no rule
    /// verdict.
    pub ip_rules: Vec<IpRule>,
}

/// Equal when a datapath and an L7 proxy could not tell the two apart. L7 rules compare by
/// pointer: they are compiled once per policy rule and shared by every state built from it
/// (regexes have no equality), so states compiled from the same rules compare equal and states
/// compiled from different rule objects never do, even if the rules read alike.
impl PartialEq for MapState {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
            && self.ip_rules == other.ip_rules
            && self.l7.len() == other.l7.len()
            && self.l7.iter().zip(&other.l7).all(|((ka, a), (kb, b))| {
                ka == kb && a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
            })
    }
}

impl Eq for MapState {}

/// The result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lookup {
    /// The key that matched (None: no entry, default deny).
    pub key: Option<PolicyKey>,
    /// Its value (None: default deny).
    pub value: Option<PolicyValue>,
    /// Whether the verdict came from an `ipBlock` rule matching the peer's IP.
    pub by_ip: bool,
}

impl Lookup {
    /// Whether the packet passes (allow or redirect, audited or not).
    pub fn passes(&self) -> bool {
        self.value.is_some_and(|v| v.verdict != VERDICT_DENY)
    }
}

impl MapState {
    /// The identity entries as the datapath's LPM trie holds them for endpoint `endpoint_id`:
    /// `(prefix length in bits, key, value)`. The prefix covers endpoint id, identity and
    /// direction always, then the protocol when it is not 0, then `port_prefix_len` port bits.
    pub fn datapath_entries(&self, endpoint_id: u32) -> Vec<(u32, dp::PolicyKey, dp::PolicyValue)> {
        self.entries
            .iter()
            .map(|(k, v)| {
                let bits = dp::KEY_FIXED_BITS
                    + if k.protocol == 0 {
                        0
                    } else {
                        8 + u32::from(k.port_prefix_len)
                    };
                let key = dp::PolicyKey {
                    endpoint_id: endpoint_id.to_be_bytes(),
                    identity: k.identity.to_be_bytes(),
                    direction: k.direction,
                    protocol: k.protocol,
                    dport: k.dport.to_be_bytes(),
                };
                let value = dp::PolicyValue {
                    verdict: v.verdict,
                    flags: v.flags,
                    proxy_port: v.proxy_port,
                    rule_id: v.rule,
                    key_bits: (bits - dp::KEY_FIXED_BITS) as u8,
                    _pad: [0; 3],
                };
                (bits, key, value)
            })
            .collect()
    }

    /// Looks up the identity map only, in the datapath's order.
    pub fn lookup_identity(
        &self,
        direction: Direction,
        peer: Identity,
        protocol: u8,
        port: u16,
    ) -> Option<(PolicyKey, PolicyValue)> {
        let d = dir_byte(direction);
        let ids = [peer.0, 0];
        let mut candidates: Vec<(u8, u8, u16)> = Vec::with_capacity(18);
        if protocol != 0 {
            for len in (1..=16u8).rev() {
                candidates.push((protocol, len, mask(port, len)));
            }
            candidates.push((protocol, 0, 0));
        }
        candidates.push((0, 0, 0));
        for (p, len, dport) in candidates {
            for id in ids {
                let key = PolicyKey {
                    identity: id,
                    direction: d,
                    protocol: p,
                    port_prefix_len: len,
                    pad: 0,
                    dport,
                    pad2: 0,
                };
                if let Some(v) = self.entries.get(&key) {
                    return Some((key, *v));
                }
            }
        }
        None
    }

    /// The full lookup: identity map; a rule deny or allow there decides; otherwise an
    /// `ipBlock` rule matching the peer's IP (pods only) allows; otherwise the identity map's
    /// fallback entry (default allow / audit) or default deny.
    pub fn lookup(
        &self,
        direction: Direction,
        peer: Identity,
        peer_pod_ip: Option<std::net::IpAddr>,
        protocol: u8,
        port: u16,
    ) -> Lookup {
        let hit = self.lookup_identity(direction, peer, protocol, port);
        if let Some((k, v)) = hit
            && !is_fallback(&v)
        {
            return Lookup {
                key: Some(k),
                value: Some(v),
                by_ip: false,
            };
        }
        if let Some(ip) = peer_pod_ip {
            let ipn = IpNet::from(ip);
            let mut best: Option<u32> = None;
            for r in &self.ip_rules {
                if r.direction == direction
                    && r.net.contains(&ipn)
                    && !r.except.iter().any(|e| e.contains(&ipn))
                    && (r.l4.is_empty() || r.l4.iter().any(|k| k.matches(protocol, port)))
                {
                    best = Some(best.map_or(r.rule, |b| b.min(r.rule)));
                }
            }
            if let Some(rule) = best {
                return Lookup {
                    key: None,
                    value: Some(PolicyValue {
                        verdict: VERDICT_ALLOW,
                        flags: 0,
                        proxy_port: 0,
                        rule,
                    }),
                    by_ip: true,
                };
            }
        }
        Lookup {
            key: hit.map(|h| h.0),
            value: hit.map(|h| h.1),
            by_ip: false,
        }
    }
}

/// One pod-address entry: a Kubernetes `ipBlock` rule that matches a pod by its address, for the
/// datapath's pod-address map (`palisade_datapath_common::policy::POD_IP_MAP_NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodIpEntry {
    /// The peer pod's address.
    pub peer: std::net::IpAddr,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// The L4 match.
    pub l4: L4Key,
    /// The rule (the lowest id when several match).
    pub rule: u32,
}

impl MapState {
    /// Expands the `ipBlock` rules over the cluster's pod addresses: every (pod address inside a
    /// block and outside its `except`, L4 key) pair the rule allows. The datapath consults these
    /// only when no identity rule decides, as [`MapState::lookup`] does.
    pub fn pod_ip_entries(&self, pod_ips: &[std::net::IpAddr]) -> Vec<PodIpEntry> {
        let mut best: BTreeMap<(std::net::IpAddr, u8, L4Key), u32> = BTreeMap::new();
        for r in &self.ip_rules {
            let l4s: Vec<L4Key> = if r.l4.is_empty() {
                vec![L4Key::ANY]
            } else {
                r.l4.clone()
            };
            for ip in pod_ips {
                let n = IpNet::from(*ip);
                if !r.net.contains(&n) || r.except.iter().any(|e| e.contains(&n)) {
                    continue;
                }
                for l4 in &l4s {
                    let slot = best
                        .entry((*ip, dir_byte(r.direction), *l4))
                        .or_insert(r.rule);
                    *slot = (*slot).min(r.rule);
                }
            }
        }
        best.into_iter()
            .map(|((peer, direction, l4), rule)| PodIpEntry {
                peer,
                direction,
                l4,
                rule,
            })
            .collect()
    }
}

/// Whether a value is a fallback (no rule decided).
pub fn is_fallback(v: &PolicyValue) -> bool {
    v.flags & FLAG_FALLBACK != 0
}

impl PolicyValue {
    /// Whether the audit flag is set.
    pub fn audit(&self) -> bool {
        self.flags & FLAG_AUDIT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_cover_ranges_exactly() {
        assert_eq!(port_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(8080, 8083), vec![(8080, 14)]);
        let b = port_blocks(1000, 2000);
        let mut covered = 0u32;
        for (p, l) in &b {
            assert_eq!(mask(*p, *l), *p);
            covered += 1 << (16 - u32::from(*l));
        }
        assert_eq!(covered, 1001);
        for port in [999u16, 1000, 1500, 2000, 2001] {
            let inside = b.iter().any(|(p, l)| mask(port, *l) == *p);
            assert_eq!(inside, (1000..=2000).contains(&port), "{port}");
        }
    }

    #[test]
    fn datapath_entries_round_trip_with_prefix_lengths() {
        let mut m = MapState::default();
        let k = PolicyKey {
            identity: 300,
            direction: DIR_INGRESS,
            protocol: 6,
            port_prefix_len: 14,
            pad: 0,
            dport: 8080,
            pad2: 0,
        };
        m.entries.insert(
            k,
            PolicyValue {
                verdict: VERDICT_ALLOW,
                flags: 0,
                proxy_port: 0,
                rule: 7,
            },
        );
        let any = PolicyKey {
            identity: 0,
            direction: DIR_EGRESS,
            protocol: 0,
            port_prefix_len: 0,
            pad: 0,
            dport: 0,
            pad2: 0,
        };
        m.entries.insert(
            any,
            PolicyValue {
                verdict: VERDICT_DENY,
                flags: 0,
                proxy_port: 0,
                rule: 8,
            },
        );
        let e = m.datapath_entries(5);
        assert_eq!(e.len(), 2);
        let (bits, key, value) = e
            .iter()
            .find(|e| e.1.identity == 300u32.to_be_bytes())
            .unwrap();
        assert_eq!(*bits, 72 + 8 + 14);
        assert_eq!(key.endpoint_id, 5u32.to_be_bytes());
        assert_eq!(u16::from_be_bytes(key.dport), 8080);
        assert_eq!((value.verdict, value.rule_id), (VERDICT_ALLOW, 7));
        let (bits, key, _) = e.iter().find(|e| e.1.identity == [0; 4]).unwrap();
        assert_eq!((*bits, key.direction), (72, DIR_EGRESS));
        assert_eq!(std::mem::size_of::<dp::PolicyKey>(), 12);
    }

    #[test]
    fn key_and_value_layout() {
        assert_eq!(std::mem::size_of::<PolicyKey>(), 12);
        assert_eq!(std::mem::size_of::<PolicyValue>(), 8);
    }

    #[test]
    fn lookup_prefers_port_then_identity() {
        let mut m = MapState::default();
        let k = |id, p, len, port| PolicyKey {
            identity: id,
            direction: DIR_INGRESS,
            protocol: p,
            port_prefix_len: len,
            pad: 0,
            dport: port,
            pad2: 0,
        };
        let v = |verdict, rule| PolicyValue {
            verdict,
            flags: 0,
            proxy_port: 0,
            rule,
        };
        m.entries.insert(k(300, 0, 0, 0), v(VERDICT_DENY, 1));
        m.entries.insert(k(0, 6, 16, 80), v(VERDICT_ALLOW, 2));
        let hit = m
            .lookup_identity(Direction::Ingress, Identity(300), 6, 80)
            .unwrap();
        assert_eq!(hit.1.rule, 2, "any+port comes before identity-only");
        let hit = m
            .lookup_identity(Direction::Ingress, Identity(300), 6, 81)
            .unwrap();
        assert_eq!(hit.1.rule, 1);
        assert!(
            m.lookup_identity(Direction::Ingress, Identity(301), 6, 81)
                .is_none()
        );
    }
}
