//! The selector cache: each distinct selector once, with the identities it matches, kept up to
//! date incrementally as identities appear and go.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::{Identity, IdentityAllocator};
use crate::labels::LabelSet;
use crate::labels::Source;
use crate::selector::{MatchContext, Op, Selector};

/// Handle of a cached selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SelectorId(pub u32);

#[derive(Debug, Clone)]
struct Cached {
    selector: Selector,
    users: usize,
    ids: BTreeSet<Identity>,
}

/// Identities a selector gained or lost in one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorDelta {
    /// The selector.
    pub selector: SelectorId,
    /// Identities it now matches and did not before.
    pub added: Vec<Identity>,
    /// Identities it matched and no longer does.
    pub removed: Vec<Identity>,
}

/// Shared selectors with their matching identities.
#[derive(Debug, Clone)]
pub struct SelectorCache {
    ctx: MatchContext,
    by_selector: BTreeMap<Selector, SelectorId>,
    entries: BTreeMap<SelectorId, Cached>,
    next: u32,
    /// `(key, value)` → identities carrying it (any source), for identities given to
    /// [`SelectorCache::update_identities`]: lets a new label selector with an `In` requirement
    /// look at its candidates only instead of every identity.
    index: BTreeMap<(String, String), BTreeSet<Identity>>,
}

impl SelectorCache {
    /// An empty cache.
    pub fn new(ctx: MatchContext) -> Self {
        SelectorCache {
            ctx,
            by_selector: BTreeMap::new(),
            entries: BTreeMap::new(),
            next: 0,
            index: BTreeMap::new(),
        }
    }

    /// Match context.
    pub fn context(&self) -> &MatchContext {
        &self.ctx
    }

    /// Adds a user of `selector`, computing its matches over `identities` when it is new.
    pub fn add_user(&mut self, selector: &Selector, identities: &IdentityAllocator) -> SelectorId {
        if let Some(id) = self.by_selector.get(selector) {
            if let Some(c) = self.entries.get_mut(id) {
                c.users += 1;
            }
            return *id;
        }
        let id = SelectorId(self.next);
        self.next += 1;
        let ids = match self.candidates(selector) {
            // Candidates from the index; confirm each against its labels.
            Some(cands) => cands
                .into_iter()
                .filter(|i| {
                    identities
                        .labels(*i)
                        .is_some_and(|l| selector.matches(*i, l, &self.ctx))
                })
                .collect(),
            None => identities
                .iter()
                .filter(|(i, l)| selector.matches(*i, l, &self.ctx))
                .map(|(i, _)| i)
                .collect(),
        };
        self.by_selector.insert(selector.clone(), id);
        self.entries.insert(
            id,
            Cached {
                selector: selector.clone(),
                users: 1,
                ids,
            },
        );
        id
    }

    /// Identities that may match a label selector with an `In` requirement (pods only: a
    /// selector naming a `reserved:` key is not indexed), or `None` to scan everything.
    fn candidates(&self, selector: &Selector) -> Option<BTreeSet<Identity>> {
        let Selector::Labels(reqs) = selector else {
            return None;
        };
        if reqs.iter().any(|r| r.source == Some(Source::Reserved)) {
            return None;
        }
        let mut best: Option<BTreeSet<Identity>> = None;
        for r in reqs {
            if let Op::In(values) = &r.op {
                let mut set = BTreeSet::new();
                for v in values {
                    if let Some(ids) = self.index.get(&(r.key.clone(), v.clone())) {
                        set.extend(ids.iter().copied());
                    }
                }
                if best.as_ref().is_none_or(|b| set.len() < b.len()) {
                    best = Some(set);
                }
            }
        }
        best
    }

    /// Drops a user; the selector is forgotten with its last user.
    pub fn remove_user(&mut self, id: SelectorId) {
        let gone = match self.entries.get_mut(&id) {
            Some(c) => {
                c.users = c.users.saturating_sub(1);
                c.users == 0
            }
            None => false,
        };
        if gone && let Some(c) = self.entries.remove(&id) {
            self.by_selector.remove(&c.selector);
        }
    }

    /// Identities matched by a selector (empty for an unknown handle).
    pub fn matches(&self, id: SelectorId) -> &BTreeSet<Identity> {
        static EMPTY: BTreeSet<Identity> = BTreeSet::new();
        self.entries.get(&id).map_or(&EMPTY, |c| &c.ids)
    }

    /// Every prefix a CIDR selector in use names: its block and its exceptions.
    pub fn cidr_prefixes(&self) -> BTreeSet<ipnet::IpNet> {
        let mut out = BTreeSet::new();
        for sel in self.by_selector.keys() {
            if let Selector::Cidr { net, except } = sel {
                out.insert(*net);
                out.extend(except.iter().copied());
            }
        }
        out
    }

    /// The selector behind a handle.
    pub fn selector(&self, id: SelectorId) -> Option<&Selector> {
        self.entries.get(&id).map(|c| &c.selector)
    }

    /// Updates every selector for identities that appeared (`added`) or went (`removed`) and
    /// returns the non-empty deltas, in selector order.
    pub fn update_identities(
        &mut self,
        added: &[(Identity, &LabelSet)],
        removed: &[Identity],
    ) -> Vec<SelectorDelta> {
        for (id, labels) in added {
            for (_, k, v) in labels.iter() {
                self.index
                    .entry((k.to_string(), v.to_string()))
                    .or_default()
                    .insert(*id);
            }
        }
        for id in removed {
            self.index.retain(|_, ids| {
                ids.remove(id);
                !ids.is_empty()
            });
        }
        let mut out = Vec::new();
        for (sid, c) in self.entries.iter_mut() {
            let mut d = SelectorDelta {
                selector: *sid,
                added: Vec::new(),
                removed: Vec::new(),
            };
            for (id, labels) in added {
                if c.selector.matches(*id, labels, &self.ctx) && c.ids.insert(*id) {
                    d.added.push(*id);
                }
            }
            for id in removed {
                if c.ids.remove(id) {
                    d.removed.push(*id);
                }
            }
            if !d.added.is_empty() || !d.removed.is_empty() {
                out.push(d);
            }
        }
        out
    }

    /// Number of distinct selectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Source;
    use crate::selector::{Op, Requirement};

    #[test]
    fn shared_selectors_and_deltas() {
        let mut cache = SelectorCache::new(MatchContext {
            cluster_name: "default".into(),
        });
        let sel = Selector::Labels(vec![Requirement {
            source: None,
            key: "app".into(),
            op: Op::In(vec!["a".into()]),
        }]);
        let a = cache.add_user(&sel, &IdentityAllocator::new(0));
        let b = cache.add_user(&sel, &IdentityAllocator::new(0));
        assert_eq!(a, b);
        assert_eq!(cache.len(), 1);
        let mut l = LabelSet::new();
        l.insert(Source::K8s, "app", "a");
        let d = cache.update_identities(&[(Identity(300), &l)], &[]);
        assert_eq!(
            d,
            vec![SelectorDelta {
                selector: a,
                added: vec![Identity(300)],
                removed: vec![]
            }]
        );
        assert!(cache.matches(a).contains(&Identity(300)));
        let d = cache.update_identities(&[], &[Identity(300)]);
        assert_eq!(d[0].removed, vec![Identity(300)]);
        cache.remove_user(a);
        assert_eq!(cache.len(), 1);
        cache.remove_user(a);
        assert!(cache.is_empty());
    }
}
