//! A read-mostly map kept as one sorted vector. The agent's snapshots (flow enrichment, the
//! proxies' view) are rebuilt whole on every endpoint change and then only read, by key: a
//! vector sized to its entries and searched by bisection serves that with no spare capacity,
//! where a hash table keeps up to half its buckets empty at some sizes, which at a thousand
//! endpoints costs more than the entries themselves.

/// Entries sorted by key, one per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortedTable<K, V>(Vec<(K, V)>);

impl<K, V> Default for SortedTable<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord + Copy, V> SortedTable<K, V> {
    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Of equal keys the last one given wins, as a map's inserts would.
impl<K: Ord + Copy, V> From<Vec<(K, V)>> for SortedTable<K, V> {
    fn from(mut v: Vec<(K, V)>) -> Self {
        // Reversed, then a stable sort: the newest of equal keys comes first, and `dedup` keeps it.
        v.reverse();
        v.sort_by_key(|(k, _)| *k);
        v.dedup_by_key(|(k, _)| *k);
        v.shrink_to_fit();
        Self(v)
    }
}

impl<K: Ord + Copy, V> FromIterator<(K, V)> for SortedTable<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_found_once_and_the_last_of_equal_keys_wins() {
        let t: SortedTable<u32, &str> =
            vec![(5, "a"), (1, "b"), (5, "c"), (3, "d"), (1, "e")].into();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(&1), Some(&"e"));
        assert_eq!(t.get(&3), Some(&"d"));
        assert_eq!(t.get(&5), Some(&"c"));
        assert_eq!(t.get(&2), None);
        assert_eq!(t.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 3, 5]);
        assert!(SortedTable::<u32, ()>::default().get(&0).is_none());
    }
}
