//! Policy map keys from user space: what a compiled policy entry becomes in the kernel's LPM trie.

use palisade_datapath_common::policy::{self, PolicyKey};

/// What one policy entry matches. `protocol == 0` means any protocol (and then any port);
/// otherwise the port's top `port_prefix` bits are matched (16 = one port, 0 = any port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyMatch {
    /// Node-local endpoint id of the subject.
    pub endpoint_id: u32,
    /// Peer identity, 0 for any peer.
    pub identity: u32,
    /// `policy::DIRECTION_EGRESS` or `DIRECTION_INGRESS`.
    pub direction: u8,
    /// IP protocol, 0 for any.
    pub protocol: u8,
    /// Destination port (ICMP type for ICMP).
    pub port: u16,
    /// How many leading bits of `port` are matched, 0..=16.
    pub port_prefix: u8,
}

impl PolicyMatch {
    /// The LPM prefix length and key data.
    pub fn to_key(self) -> (u32, PolicyKey) {
        let port_prefix = self.port_prefix.min(16);
        let prefix_len = if self.protocol == 0 {
            policy::KEY_FIXED_BITS
        } else {
            policy::KEY_FIXED_BITS + 8 + u32::from(port_prefix)
        };
        let mask = if port_prefix == 0 {
            0
        } else {
            u16::MAX << (16 - port_prefix)
        };
        let key = PolicyKey {
            endpoint_id: self.endpoint_id.to_be_bytes(),
            identity: self.identity.to_be_bytes(),
            direction: self.direction,
            protocol: self.protocol,
            dport: (self.port & mask).to_be_bytes(),
        };
        (prefix_len, key)
    }
}

impl PolicyMatch {
    /// The datapath write for one of the engine's pod-address entries
    /// (`palisade_policy::mapstate::PodIpEntry`) of endpoint `endpoint_id`: match, peer, value.
    pub fn from_pod_ip_entry(
        endpoint_id: u32,
        e: &palisade_policy::mapstate::PodIpEntry,
    ) -> (
        PolicyMatch,
        std::net::IpAddr,
        palisade_datapath_common::policy::PolicyValue,
    ) {
        let m = PolicyMatch {
            endpoint_id,
            identity: 0,
            direction: e.direction,
            protocol: e.l4.protocol,
            port: e.l4.port,
            port_prefix: e.l4.prefix_len,
        };
        let v = palisade_datapath_common::policy::PolicyValue {
            verdict: palisade_datapath_common::policy::VERDICT_ALLOW,
            rule_id: e.rule,
            ..Default::default()
        };
        (m, e.peer, v)
    }
}

/// Splits the inclusive port range `lo..=hi` into the fewest prefix-aligned blocks
/// `(base, prefix_len)`, the way Cilium's policy map expresses ranges.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    let (mut cur, end) = (u32::from(lo), u32::from(hi));
    while cur <= end {
        // The largest aligned block starting at `cur` that stays within `end`.
        let mut size = if cur == 0 {
            1 << 16
        } else {
            1u32 << cur.trailing_zeros().min(16)
        };
        while cur + size - 1 > end {
            size >>= 1;
        }
        out.push((cur as u16, 16 - size.trailing_zeros() as u8));
        cur += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[(u16, u8)]) -> Vec<u16> {
        let mut v: Vec<u16> = blocks
            .iter()
            .flat_map(|&(base, p)| {
                let n = 1u32 << (16 - p);
                (0..n).map(move |i| (u32::from(base) + i) as u16)
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn single_port_is_one_full_prefix() {
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn whole_range_is_one_empty_prefix() {
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
    }

    #[test]
    fn ranges_are_covered_exactly_and_minimally() {
        for (lo, hi) in [
            (1, 1023),
            (5000, 5010),
            (32768, 65535),
            (8080, 8090),
            (0, 1),
            (65535, 65535),
        ] {
            let blocks = port_range_prefixes(lo, hi);
            assert_eq!(covered(&blocks), (lo..=hi).collect::<Vec<_>>(), "{lo}-{hi}");
            for &(base, p) in &blocks {
                let size = 1u32 << (16 - p);
                assert_eq!(u32::from(base) % size, 0, "block {base}/{p} is aligned");
            }
        }
        assert_eq!(port_range_prefixes(5000, 5010).len(), 3); // 5000-5007, 5008-5009, 5010
    }

    #[test]
    fn key_masks_port_to_prefix_and_any_protocol_ignores_port() {
        let m = PolicyMatch {
            endpoint_id: 7,
            identity: 300,
            direction: 1,
            protocol: 6,
            port: 8081,
            port_prefix: 13,
        };
        let (len, key) = m.to_key();
        assert_eq!(len, policy::KEY_FIXED_BITS + 8 + 13);
        assert_eq!(u16::from_be_bytes(key.dport), 8080);
        let any = PolicyMatch { protocol: 0, ..m };
        assert_eq!(any.to_key().0, policy::KEY_FIXED_BITS);
    }
}
