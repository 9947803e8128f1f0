//! What the DNS proxy learned: per name, the addresses its answers gave, each with the time it
//! stops being valid. Pure (time is a parameter) so the TTL rules are unit-tested.
//!
//! - A TTL is clamped into `[min_ttl, max_ttl]` (a zero TTL would otherwise make an answer
//!   useless before the pod connects; a huge one would keep a stale address forever).
//! - An address stays allowed `grace` past its expiry: a pod that resolved just before the TTL
//!   ran out may still be connecting (Cilium keeps such addresses while connections use them).
//! - A name keeps at most `max_ips_per_name` addresses; when an answer brings more, the ones
//!   expiring soonest go first (a name rotating through a large pool cannot grow without bound).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// TTL and size limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Shortest TTL honoured.
    pub min_ttl: Duration,
    /// Longest TTL honoured.
    pub max_ttl: Duration,
    /// How long an expired address stays allowed.
    pub grace: Duration,
    /// Addresses kept per name.
    pub max_ips_per_name: usize,
}

/// Learned addresses per name.
#[derive(Debug, Clone)]
pub struct FqdnCache {
    limits: CacheLimits,
    names: BTreeMap<String, BTreeMap<IpAddr, Instant>>,
}

// === impl FqdnCache ===

impl FqdnCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits) -> Self {
        FqdnCache {
            limits,
            names: BTreeMap::new(),
        }
    }

    /// Records an answer: `name` resolves to `ip` for `ttl` seconds from `now`. An address
    /// already known keeps the later of its two expiries.
    pub fn learn(&mut self, now: Instant, name: &str, ip: IpAddr, ttl: u32) {
        let ttl =
            Duration::from_secs(u64::from(ttl)).clamp(self.limits.min_ttl, self.limits.max_ttl);
        let until = now + ttl;
        let ips = self.names.entry(normalize(name)).or_default();
        let e = ips.entry(ip).or_insert(until);
        *e = (*e).max(until);
        let cap = self.limits.max_ips_per_name.max(1);
        while ips.len() > cap {
            // The address expiring soonest goes (ties: the lowest address, deterministic).
            let Some(victim) = ips
                .iter()
                .filter(|(a, _)| **a != ip)
                .min_by_key(|(a, t)| (**t, **a))
                .map(|(a, _)| *a)
            else {
                break;
            };
            ips.remove(&victim);
        }
    }

    /// Forgets addresses whose expiry plus the grace period has passed. Returns whether any went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let grace = self.limits.grace;
        let mut changed = false;
        self.names.retain(|_, ips| {
            let before = ips.len();
            ips.retain(|_, until| *until + grace > now);
            changed |= ips.len() != before;
            !ips.is_empty()
        });
        changed
    }

    /// When the next address leaves (its expiry plus the grace period), if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.names
            .values()
            .flat_map(|ips| ips.values())
            .min()
            .map(|t| *t + self.limits.grace)
    }

    /// Every (name, address) pair with the moment it leaves (expiry plus grace).
    pub fn deadlines(&self) -> impl Iterator<Item = (&str, IpAddr, Instant)> + '_ {
        self.names.iter().flat_map(move |(n, ips)| {
            ips.iter()
                .map(move |(ip, t)| (n.as_str(), *ip, *t + self.limits.grace))
        })
    }

    /// Every address still allowed, with the names that resolved to it.
    pub fn by_ip(&self) -> BTreeMap<IpAddr, BTreeSet<String>> {
        let mut out: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
        for (name, ips) in &self.names {
            for ip in ips.keys() {
                out.entry(*ip).or_default().insert(name.clone());
            }
        }
        out
    }

    /// Names with their addresses and the seconds each has left before expiry (0 while in the
    /// grace period), for status.
    pub fn entries(&self, now: Instant) -> BTreeMap<String, BTreeMap<IpAddr, u64>> {
        self.names
            .iter()
            .map(|(n, ips)| {
                let left = ips
                    .iter()
                    .map(|(ip, t)| (*ip, t.saturating_duration_since(now).as_secs()))
                    .collect();
                (n.clone(), left)
            })
            .collect()
    }
}

/// Lowercase, without the trailing dot (how policy names are written and compared).
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CacheLimits {
        CacheLimits {
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(100),
            grace: Duration::from_secs(5),
            max_ips_per_name: 3,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ttls_are_clamped_and_addresses_leave_after_the_grace_period() {
        let t0 = Instant::now();
        let mut c = FqdnCache::new(limits());
        c.learn(t0, "API.example.test.", ip("192.0.2.1"), 0);
        c.learn(t0, "long.example.test", ip("192.0.2.2"), 1_000_000);
        assert_eq!(
            c.by_ip().get(&ip("192.0.2.1")),
            Some(&BTreeSet::from(["api.example.test".to_string()]))
        );
        // min TTL 2 s + grace 5 s: still there at 6.9 s, gone at 7 s.
        assert!(!c.expire(t0 + Duration::from_millis(6_900)));
        assert!(c.by_ip().contains_key(&ip("192.0.2.1")));
        assert_eq!(c.next_expiry(), Some(t0 + Duration::from_secs(7)));
        assert!(c.expire(t0 + Duration::from_secs(7)));
        assert!(!c.by_ip().contains_key(&ip("192.0.2.1")));
        // max TTL 100 s + grace.
        assert!(c.by_ip().contains_key(&ip("192.0.2.2")));
        assert!(c.expire(t0 + Duration::from_secs(105)));
        assert!(c.by_ip().is_empty());
        assert_eq!(c.next_expiry(), None);
    }

    #[test]
    fn a_new_answer_extends_an_address_and_an_ip_change_is_followed() {
        let t0 = Instant::now();
        let mut c = FqdnCache::new(limits());
        c.learn(t0, "api.example.test", ip("192.0.2.1"), 10);
        c.learn(
            t0 + Duration::from_secs(8),
            "api.example.test",
            ip("192.0.2.1"),
            10,
        );
        // The later expiry wins: 18 s + 5 s grace.
        assert!(!c.expire(t0 + Duration::from_secs(22)));
        // The name moves to another address: both are allowed until the old one expires.
        c.learn(
            t0 + Duration::from_secs(22),
            "api.example.test",
            ip("192.0.2.9"),
            10,
        );
        assert_eq!(c.by_ip().len(), 2);
        assert!(c.expire(t0 + Duration::from_secs(23)));
        let left: Vec<IpAddr> = c.by_ip().into_keys().collect();
        assert_eq!(left, vec![ip("192.0.2.9")]);
    }

    #[test]
    fn a_name_keeps_at_most_its_cap_dropping_the_soonest_expiring() {
        let t0 = Instant::now();
        let mut c = FqdnCache::new(limits());
        for (i, ttl) in [(1, 50), (2, 10), (3, 30), (4, 40)] {
            c.learn(t0, "pool.example.test", ip(&format!("192.0.2.{i}")), ttl);
        }
        let left: Vec<IpAddr> = c.by_ip().into_keys().collect();
        assert_eq!(
            left,
            vec![ip("192.0.2.1"), ip("192.0.2.3"), ip("192.0.2.4")]
        );
        // The address just learned stays even when it expires soonest.
        c.learn(t0, "pool.example.test", ip("192.0.2.5"), 2);
        assert!(c.by_ip().contains_key(&ip("192.0.2.5")));
        assert_eq!(c.by_ip().len(), 3);
    }

    #[test]
    fn one_address_of_several_names_carries_them_all() {
        let t0 = Instant::now();
        let mut c = FqdnCache::new(limits());
        c.learn(t0, "a.example.test", ip("192.0.2.1"), 10);
        c.learn(t0, "b.example.test", ip("192.0.2.1"), 60);
        assert_eq!(c.by_ip()[&ip("192.0.2.1")].len(), 2);
        c.expire(t0 + Duration::from_secs(16));
        assert_eq!(
            c.by_ip()[&ip("192.0.2.1")],
            BTreeSet::from(["b.example.test".to_string()])
        );
        let e = c.entries(t0 + Duration::from_secs(16));
        assert_eq!(e["b.example.test"][&ip("192.0.2.1")], 44);
    }
}
