//! The host-side veth's name: `lxc` + 11 hex digits of a hash of the container id and
//! `CNI_IFNAME`, so ADD, CHECK and DEL find the same name without stored state, and names stay
//! within Linux's 15 bytes.

/// The prefix of every host-side veth (as in Cilium).
pub const HOST_IFACE_PREFIX: &str = "lxc";

/// FNV-1a, 64 bits: specified, stable across releases and platforms (a DEL run by a newer
/// plugin must find what an older one created), and collisions are rare enough for 44 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `lxc` + the low 44 bits of FNV-1a over `container_id/ifname` as 11 lowercase hex digits.
/// `/` cannot appear in either part, so different pairs never hash the same input.
pub fn host_iface_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(format!("{container_id}/{ifname}").as_bytes()) & ((1 << 44) - 1);
    format!("{HOST_IFACE_PREFIX}{h:011x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_distinct_and_short() {
        // Pinned: changing the hash would orphan every veth on an upgraded node.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let n = host_iface_name("c1", "eth0");
        assert_eq!(n, host_iface_name("c1", "eth0"));
        assert_eq!(n.len(), 14);
        assert!(n.starts_with("lxc") && n[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(n, host_iface_name("c1", "eth1"));
        assert_ne!(n, host_iface_name("c2", "eth0"));
        assert_ne!(host_iface_name("a", "bc"), host_iface_name("ab", "c"));
        let all: std::collections::HashSet<String> = (0..10_000)
            .map(|i| host_iface_name(&format!("ctr{i}"), "eth0"))
            .collect();
        assert_eq!(all.len(), 10_000);
    }
}
