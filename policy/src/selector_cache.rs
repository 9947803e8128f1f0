//! The selector cache: each distinct selector once, with the identities it matches, kept up to
//! date incrementally as identities appear and go.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::Identity;
use crate::labels::LabelSet;
use crate::selector::{MatchContext, Selector};

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
}

impl SelectorCache {
    /// An empty cache.
    pub fn new(ctx: MatchContext) -> Self {
        SelectorCache {
            ctx,
            by_selector: BTreeMap::new(),
            entries: BTreeMap::new(),
            next: 0,
        }
    }

    /// Match context.
    pub fn context(&self) -> &MatchContext {
        &self.ctx
    }

    /// Adds a user of `selector`, computing its matches over `identities` when it is new.
    pub fn add_user<'a>(
        &mut self,
        selector: &Selector,
        identities: impl Iterator<Item = (Identity, &'a LabelSet)>,
    ) -> SelectorId {
        if let Some(id) = self.by_selector.get(selector) {
            if let Some(c) = self.entries.get_mut(id) {
                c.users += 1;
            }
            return *id;
        }
        let id = SelectorId(self.next);
        self.next += 1;
        let ids = identities
            .filter(|(i, l)| selector.matches(*i, l, &self.ctx))
            .map(|(i, _)| i)
            .collect();
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
        let a = cache.add_user(&sel, std::iter::empty());
        let b = cache.add_user(&sel, std::iter::empty());
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
