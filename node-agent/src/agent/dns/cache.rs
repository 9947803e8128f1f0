//! What the DNS proxy learned: per name, the addresses its answers gave, each with the time its
//! TTL runs out and the endpoints that asked. Pure (time is a parameter) so the TTL rules are
//! unit-tested.
//!
//! - A TTL is clamped into `[min_ttl, max_ttl]` (a zero TTL would otherwise make an answer
//!   useless before the pod connects; a huge one would keep a stale address forever).
//! - An address past its TTL stays while a connection that an endpoint which learned it opened
//!   to it *before the TTL ran out* is still open and saw a packet within `connection_idle`
//!   (Cilium keeps such addresses while connections use them: connection pools open new
//!   connections to addresses they already hold), and then `grace` more, for a pod that
//!   resolved just before the TTL ran out and is still connecting. Connections opened later
//!   hold nothing: a pod retrying an old address cannot keep it allowed by retrying. The run
//!   loop reads the datapath's conntrack: [`FqdnCache::watch`] when the TTL runs out (which
//!   connections hold the address), [`FqdnCache::saw_flow`] for their last packets.
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
    /// How long an expired address stays allowed once no flow holds it.
    pub grace: Duration,
    /// How recent a flow's last packet must be for the flow to hold an expired address.
    pub connection_idle: Duration,
    /// Addresses kept per name.
    pub max_ips_per_name: usize,
}

/// One address of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the TTL of the newest answer giving it runs out.
    pub until: Instant,
    /// The last packet of a flow to it from an endpoint that learned it (as far as known).
    pub active: Option<Instant>,
    /// The endpoints (their addresses) whose queries' answers gave it.
    pub learners: BTreeSet<IpAddr>,
    /// The open connections from learners when the TTL ran out (`None`: not looked at yet).
    pub holders: Option<BTreeSet<FlowKey>>,
}

/// A connection by its conntrack key: (endpoint address, port, peer address, port, protocol).
pub type FlowKey = (IpAddr, u16, IpAddr, u16, u8);

/// Learned addresses per name.
#[derive(Debug, Clone)]
pub struct FqdnCache {
    limits: CacheLimits,
    names: BTreeMap<String, BTreeMap<IpAddr, Entry>>,
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

    /// The limits.
    pub fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    /// Records an answer to `client`: `name` resolves to `ip` for `ttl` seconds from `now`. An
    /// address already known keeps the later of its two expiries. Returns whether the pair or
    /// the learner is new (what must be saved before the answer goes out; a longer TTL alone
    /// may be saved later).
    pub fn learn(
        &mut self,
        now: Instant,
        name: &str,
        ip: IpAddr,
        ttl: u32,
        client: IpAddr,
    ) -> bool {
        let ttl =
            Duration::from_secs(u64::from(ttl)).clamp(self.limits.min_ttl, self.limits.max_ttl);
        let name = normalize(name);
        let new = self.insert(name.clone(), ip, now + ttl, None, [client].into());
        // A renewed address starts over: who holds it is asked again when this TTL runs out.
        if let Some(e) = self.names.get_mut(&name).and_then(|ips| ips.get_mut(&ip))
            && e.until > now
        {
            e.holders = None;
            e.active = None;
        }
        new
    }

    /// Puts back an entry saved by a previous run (expiries already converted to this run's
    /// clock). Returns whether it is new.
    pub fn restore(
        &mut self,
        name: &str,
        ip: IpAddr,
        until: Instant,
        active: Option<Instant>,
        learners: BTreeSet<IpAddr>,
    ) -> bool {
        self.insert(normalize(name), ip, until, active, learners)
    }

    fn insert(
        &mut self,
        name: String,
        ip: IpAddr,
        until: Instant,
        active: Option<Instant>,
        learners: BTreeSet<IpAddr>,
    ) -> bool {
        let ips = self.names.entry(name).or_default();
        let mut new = false;
        let e = ips.entry(ip).or_insert_with(|| {
            new = true;
            Entry {
                until,
                active,
                learners: BTreeSet::new(),
                holders: None,
            }
        });
        e.until = e.until.max(until);
        e.active = e.active.max(active);
        for l in learners {
            new |= e.learners.insert(l);
        }
        let cap = self.limits.max_ips_per_name.max(1);
        while ips.len() > cap {
            // The address expiring soonest goes (ties: the lowest address, deterministic).
            let Some(victim) = ips
                .iter()
                .filter(|(a, _)| **a != ip)
                .min_by_key(|(a, e)| (e.until, **a))
                .map(|(a, _)| *a)
            else {
                break;
            };
            ips.remove(&victim);
        }
        new
    }

    /// Records, for every entry whose TTL has run out at `now` and that was not looked at yet,
    /// which of `open` (the open connections to the addresses of [`FqdnCache::lapsed`]) are
    /// its learners': those, and only those, may hold it.
    pub fn watch(&mut self, now: Instant, open: &[FlowKey]) {
        for ips in self.names.values_mut() {
            for (ip, e) in ips.iter_mut() {
                if e.until <= now && e.holders.is_none() {
                    let held = open
                        .iter()
                        .filter(|k| k.2 == *ip && e.learners.contains(&k.0))
                        .copied()
                        .collect();
                    e.holders = Some(held);
                }
            }
        }
    }

    /// The open connection `key` saw a packet at `at`: every entry it holds stays until
    /// `connection_idle` (and the grace) after that. Returns whether anything was extended.
    pub fn saw_flow(&mut self, key: FlowKey, at: Instant) -> bool {
        let mut changed = false;
        for ips in self.names.values_mut() {
            if let Some(e) = ips.get_mut(&key.2)
                && e.holders.as_ref().is_some_and(|h| h.contains(&key))
                && e.active.is_none_or(|a| a < at)
            {
                e.active = Some(at);
                changed = true;
            }
        }
        changed
    }

    /// Addresses whose TTL ran out and whose holders were not looked at yet, with their
    /// learners: the connections to record with [`FqdnCache::watch`].
    pub fn lapsed(&self, now: Instant) -> BTreeMap<IpAddr, BTreeSet<IpAddr>> {
        self.select(|e| e.until <= now && e.holders.is_none())
    }

    /// The addresses due to leave at `now` with their learners: the connections to look at
    /// before [`FqdnCache::expire`] removes them.
    pub fn due(&self, now: Instant) -> BTreeMap<IpAddr, BTreeSet<IpAddr>> {
        let limits = self.limits;
        self.select(|e| leaves(&limits, e) <= now)
    }

    fn select(&self, pick: impl Fn(&Entry) -> bool) -> BTreeMap<IpAddr, BTreeSet<IpAddr>> {
        let mut out: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
        for ips in self.names.values() {
            for (ip, e) in ips {
                if pick(e) {
                    out.entry(*ip)
                        .or_default()
                        .extend(e.learners.iter().copied());
                }
            }
        }
        out
    }

    /// Forgets addresses whose time to leave has come. Returns whether any went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let (limits, mut changed) = (self.limits, false);
        self.names.retain(|_, ips| {
            let before = ips.len();
            ips.retain(|_, e| leaves(&limits, e) > now);
            changed |= ips.len() != before;
            !ips.is_empty()
        });
        changed
    }

    /// When the next address leaves, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.names
            .values()
            .flat_map(|ips| ips.values())
            .map(|e| leaves(&self.limits, e))
            .min()
    }

    /// Every (name, address) pair with the moment it leaves.
    pub fn deadlines(&self) -> impl Iterator<Item = (&str, IpAddr, Instant)> + '_ {
        self.names.iter().flat_map(move |(n, ips)| {
            ips.iter()
                .map(move |(ip, e)| (n.as_str(), *ip, leaves(&self.limits, e)))
        })
    }

    /// Every entry, by name and address.
    pub fn iter(&self) -> impl Iterator<Item = (&str, IpAddr, &Entry)> + '_ {
        self.names
            .iter()
            .flat_map(|(n, ips)| ips.iter().map(move |(ip, e)| (n.as_str(), *ip, e)))
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

    /// Names with their addresses and the seconds each has left before its TTL runs out (0
    /// while a flow or the grace period holds it), for status.
    pub fn entries(&self, now: Instant) -> BTreeMap<String, BTreeMap<IpAddr, u64>> {
        self.names
            .iter()
            .map(|(n, ips)| {
                let left = ips
                    .iter()
                    .map(|(ip, e)| (*ip, e.until.saturating_duration_since(now).as_secs()))
                    .collect();
                (n.clone(), left)
            })
            .collect()
    }

    /// Pairs still here at `now` only because a flow held them (past TTL and grace), with the
    /// seconds since that flow's last packet seen, for status. (The conntrack is read when an
    /// address is due to leave, so the last packet is as of that reading.)
    pub fn held(&self, now: Instant) -> Vec<(String, IpAddr, u64)> {
        self.iter()
            .filter(|(_, _, e)| e.until + self.limits.grace <= now && leaves(&self.limits, e) > now)
            .map(|(n, ip, e)| {
                let ago = e
                    .active
                    .map_or(0, |a| now.saturating_duration_since(a).as_secs());
                (n.to_string(), ip, ago)
            })
            .collect()
    }
}

/// When an entry leaves: its TTL, or the last packet of a flow holding it plus
/// `connection_idle`, whichever is later, plus the grace period.
fn leaves(limits: &CacheLimits, e: &Entry) -> Instant {
    let held = e.active.map(|a| a + limits.connection_idle);
    e.until.max(held.unwrap_or(e.until)) + limits.grace
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
            connection_idle: Duration::from_secs(10),
            max_ips_per_name: 3,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod() -> IpAddr {
        ip("10.200.1.11")
    }

    #[test]
    fn ttls_are_clamped_and_addresses_leave_after_the_grace_period() {
        let t0 = Instant::now();
        let mut c = FqdnCache::new(limits());
        c.learn(t0, "API.example.test.", ip("192.0.2.1"), 0, pod());
        c.learn(t0, "long.example.test", ip("192.0.2.2"), 1_000_000, pod());
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
        c.learn(t0, "api.example.test", ip("192.0.2.1"), 10, pod());
        c.learn(
            t0 + Duration::from_secs(8),
            "api.example.test",
            ip("192.0.2.1"),
            10,
            pod(),
        );
        // The later expiry wins: 18 s + 5 s grace.
        assert!(!c.expire(t0 + Duration::from_secs(22)));
        // The name moves to another address: both are allowed until the old one expires.
        c.learn(
            t0 + Duration::from_secs(22),
            "api.example.test",
            ip("192.0.2.9"),
            10,
            pod(),
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
            c.learn(
                t0,
                "pool.example.test",
                ip(&format!("192.0.2.{i}")),
                ttl,
                pod(),
            );
        }
        let left: Vec<IpAddr> = c.by_ip().into_keys().collect();
        assert_eq!(
            left,
            vec![ip("192.0.2.1"), ip("192.0.2.3"), ip("192.0.2.4")]
        );
        // The address just learned stays even when it expires soonest.
        c.learn(t0, "pool.example.test", ip("192.0.2.5"), 2, pod());
        assert!(c.by_ip().contains_key(&ip("192.0.2.5")));
        assert_eq!(c.by_ip().len(), 3);
    }

    #[test]
    fn one_address_of_several_names_carries_them_all() {
        let t0 = Instant::now();
        let mut c = FqdnCache::new(limits());
        c.learn(t0, "a.example.test", ip("192.0.2.1"), 10, pod());
        c.learn(t0, "b.example.test", ip("192.0.2.1"), 60, pod());
        assert_eq!(c.by_ip()[&ip("192.0.2.1")].len(), 2);
        c.expire(t0 + Duration::from_secs(16));
        assert_eq!(
            c.by_ip()[&ip("192.0.2.1")],
            BTreeSet::from(["b.example.test".to_string()])
        );
        let e = c.entries(t0 + Duration::from_secs(16));
        assert_eq!(e["b.example.test"][&ip("192.0.2.1")], 44);
    }

    #[test]
    fn a_connection_opened_before_the_ttl_ran_out_holds_the_address_until_it_goes_quiet() {
        let t0 = Instant::now();
        let mut c = FqdnCache::new(limits());
        let other = ip("10.200.1.12");
        let a = ip("192.0.2.1");
        assert!(c.learn(t0, "api.example.test", a, 2, pod()));
        assert!(!c.learn(t0, "api.example.test", a, 2, pod()));
        assert!(c.learn(t0, "api.example.test", a, 2, other), "new learner");
        assert!(c.lapsed(t0 + Duration::from_secs(1)).is_empty());
        // The TTL runs out at 2 s: the open connections then are recorded, the learners' only.
        let lapsed = c.lapsed(t0 + Duration::from_secs(2));
        assert_eq!(lapsed[&a], BTreeSet::from([pod(), other]));
        let conn: FlowKey = (pod(), 40000, a, 80, 6);
        let stranger: FlowKey = (ip("10.200.1.99"), 40001, a, 80, 6);
        c.watch(t0 + Duration::from_secs(2), &[conn, stranger]);
        assert!(
            c.lapsed(t0 + Duration::from_secs(2)).is_empty(),
            "looked at once"
        );
        // A connection opened later (or a stranger's) holds nothing.
        let later: FlowKey = (pod(), 40002, a, 80, 6);
        assert!(!c.saw_flow(later, t0 + Duration::from_secs(6)));
        assert!(!c.saw_flow(stranger, t0 + Duration::from_secs(6)));
        // TTL 2 s + grace 5 s: due at 7 s, unless the connection holds it.
        assert_eq!(c.due(t0 + Duration::from_secs(7))[&a].len(), 2);
        // Its last packet at 6 s: held until 6 + 10 (idle) + 5 (grace) = 21 s.
        assert!(c.saw_flow(conn, t0 + Duration::from_secs(6)));
        assert!(!c.expire(t0 + Duration::from_secs(7)));
        assert!(c.due(t0 + Duration::from_secs(7)).is_empty());
        // Within TTL and grace nothing is "held"; past them, this one is.
        assert!(c.held(t0 + Duration::from_secs(6)).is_empty());
        let held = c.held(t0 + Duration::from_secs(8));
        assert_eq!(held, vec![("api.example.test".into(), a, 2)]);
        assert_eq!(c.next_expiry(), Some(t0 + Duration::from_secs(21)));
        // An older packet never moves it back.
        assert!(!c.saw_flow(conn, t0 + Duration::from_secs(3)));
        assert!(!c.expire(t0 + Duration::from_millis(20_900)));
        // No packet since: it leaves.
        assert!(c.expire(t0 + Duration::from_secs(21)));
        assert!(c.by_ip().is_empty());
    }

    #[test]
    fn a_renewed_address_is_looked_at_again_when_its_new_ttl_runs_out() {
        let t0 = Instant::now();
        let mut c = FqdnCache::new(limits());
        let a = ip("192.0.2.1");
        c.learn(t0, "api.example.test", a, 2, pod());
        c.watch(t0 + Duration::from_secs(3), &[]);
        assert!(c.lapsed(t0 + Duration::from_secs(3)).is_empty());
        c.learn(t0 + Duration::from_secs(4), "api.example.test", a, 2, pod());
        assert!(c.lapsed(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(c.lapsed(t0 + Duration::from_secs(6)).len(), 1);
    }
}
