//! The sequential specifications the chaos histories are checked against: identity allocation
//! and policy objects with the cluster's policy revision (see docs/RELIABILITY.md).

use std::collections::BTreeMap;

use crate::linearizability::{Model, Operation, Verdict};

/// Identity allocation: a map from label set to numeric id.
///
/// `allocate(labels)` answers `(id, created)`: the id the set already has (`created = false`), or
/// a fresh id no other label set has (`created = true`). So the same labels always get the same
/// id and distinct label sets distinct ids. An indeterminate allocation of an unknown set binds
/// it to an id the history never saw (`None`), settled by the first later answer for that set;
/// settling checks the id against every other set's.
///
/// `created` is checked only by [`Identities::strict`], which the suite asserts. The default
/// model checks the ids and not the flag: it is for histories of a control plane without
/// exactly-once writes, where a forwarded allocation retried on a new leader answered "existing"
/// (200) for the set its first attempt had created (the suite found this; docs/RELIABILITY.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Identities {
    ids: BTreeMap<String, Option<u64>>,
    check_created: bool,
}

/// An identity operation: allocate the id of a (normalized) label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocate(pub String);

/// An allocation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The id.
    pub id: u64,
    /// Whether this allocation created it.
    pub created: bool,
}

impl Identities {
    /// The model that also checks `created` (exactly one allocation creates a set).
    pub fn strict() -> Self {
        Identities {
            ids: BTreeMap::new(),
            check_created: true,
        }
    }

    fn taken_by_other(&self, labels: &str, id: u64) -> bool {
        self.ids.iter().any(|(l, v)| l != labels && *v == Some(id))
    }
}

impl Model for Identities {
    type Op = Allocate;
    type Ret = Allocated;

    fn step(&self, Allocate(labels): &Allocate, ret: Option<&Allocated>) -> Vec<Self> {
        let bound = self.ids.get(labels);
        let relaxed = ret.map(|a| Allocated {
            id: a.id,
            created: if self.check_created {
                a.created
            } else {
                bound.is_none()
            },
        });
        let ret = relaxed.as_ref();
        match (bound, ret) {
            // Unknown answer: no change if bound; else bound to an id nobody saw yet.
            (Some(_), None) => vec![self.clone()],
            (None, None) => {
                let mut next = self.clone();
                next.ids.insert(labels.clone(), None);
                vec![next]
            }
            (Some(Some(id)), Some(a)) if a.id == *id && !a.created => vec![self.clone()],
            (Some(None), Some(a)) if !a.created && !self.taken_by_other(labels, a.id) => {
                let mut next = self.clone();
                next.ids.insert(labels.clone(), Some(a.id));
                vec![next]
            }
            (None, Some(a)) if a.created && !self.taken_by_other(labels, a.id) => {
                let mut next = self.clone();
                next.ids.insert(labels.clone(), Some(a.id));
                vec![next]
            }
            _ => Vec::new(),
        }
    }
}

/// Checks an identity history object by object: the history of each label set on its own (is
/// there an order in which its allocations agree on one id, created once), then the ids across
/// sets (no id answered for two label sets). The tests never release an id, so uniqueness does
/// not depend on the order, and by locality (Herlihy & Wing) the whole history is linearizable
/// exactly when every label set's is and no id is shared. Much cheaper than one search over all
/// sets at once, whose states would carry every binding. The witness order is per label set.
pub fn check_identities(
    history: &[Operation<Allocate, Allocated>],
    strict: bool,
    budget: u64,
) -> Verdict {
    let mut owner: BTreeMap<u64, (usize, &str)> = BTreeMap::new();
    for (i, o) in history.iter().enumerate() {
        if let Some((_, a)) = &o.ret {
            match owner.get(&a.id) {
                Some((j, labels)) if *labels != o.op.0 => {
                    return Verdict::NotLinearizable {
                        longest_prefix: Vec::new(),
                        stuck: vec![*j, i],
                    };
                }
                Some(_) => {}
                None => {
                    owner.insert(a.id, (i, &o.op.0));
                }
            }
        }
    }
    let mut by_set: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, o) in history.iter().enumerate() {
        by_set.entry(o.op.0.as_str()).or_default().push(i);
    }
    let init = if strict {
        Identities::strict()
    } else {
        Identities::default()
    };
    let mut order = Vec::new();
    for indices in by_set.values() {
        let sub: Vec<_> = indices.iter().map(|&i| history[i].clone()).collect();
        match crate::linearizability::check(&init, &sub, budget) {
            Verdict::Linearizable { order: o } => order.extend(o.into_iter().map(|k| indices[k])),
            Verdict::NotLinearizable {
                longest_prefix,
                stuck,
            } => {
                return Verdict::NotLinearizable {
                    longest_prefix: longest_prefix.into_iter().map(|k| indices[k]).collect(),
                    stuck: stuck.into_iter().map(|k| indices[k]).collect(),
                };
            }
            v @ Verdict::Inconclusive { .. } => return v,
        }
    }
    Verdict::Linearizable { order }
}

/// Policy objects under keys, and the cluster's policy revision: every change (an apply that
/// changes the stored object, a delete of a present one) increments it by one and stamps the
/// object; an apply of the identical object or a delete of an absent one changes nothing and
/// answers the current revision. A get answers the stored object and the revision it was last
/// changed at, or "absent". The test writes objects that differ in one integer (`value`).
///
/// Exact revision arithmetic holds because the history contains every policy write made to the
/// cluster while it was recorded (the chaos lab has no other writer).
///
/// A write answered "nothing changed" is, by default, also allowed to have taken effect as a
/// change at an unknown revision: without exactly-once writes, a write retried on a new leader
/// after its first attempt committed found the object already there and answered
/// `changed: false` (the suite found this, docs/RELIABILITY.md). [`Policies::strict_at`], which
/// the suite asserts, does not allow it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policies {
    revision: u64,
    objects: BTreeMap<String, (u64, u64)>,
    strict: bool,
}

impl Policies {
    /// The state before the history: the revision at its start and no object under its keys.
    pub fn at(revision: u64) -> Self {
        Policies {
            revision,
            objects: BTreeMap::new(),
            strict: false,
        }
    }

    /// As [`Policies::at`], where "nothing changed" means exactly that.
    pub fn strict_at(revision: u64) -> Self {
        Policies {
            strict: true,
            ..Policies::at(revision)
        }
    }
}

/// A policy operation on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOp {
    /// Store the object whose distinguishing integer is `value`.
    Apply {
        /// The key.
        key: String,
        /// The object's value.
        value: u64,
    },
    /// Delete the object.
    Delete {
        /// The key.
        key: String,
    },
    /// Read the object.
    Get {
        /// The key.
        key: String,
    },
}

/// A policy operation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyRet {
    /// A write's revision and whether it changed anything.
    Written {
        /// The revision after the write.
        revision: u64,
        /// Whether anything changed.
        changed: bool,
    },
    /// A read's answer: `(value, revision)` of the stored object, or `None`.
    Read(Option<(u64, u64)>),
}

impl Model for Policies {
    type Op = PolicyOp;
    type Ret = PolicyRet;

    fn step(&self, op: &PolicyOp, ret: Option<&PolicyRet>) -> Vec<Self> {
        let (next, answer) = match op {
            PolicyOp::Apply { key, value } => match self.objects.get(key) {
                Some((v, _)) if v == value => (
                    self.clone(),
                    PolicyRet::Written {
                        revision: self.revision,
                        changed: false,
                    },
                ),
                _ => {
                    let mut next = self.clone();
                    next.revision += 1;
                    next.objects.insert(key.clone(), (*value, next.revision));
                    let revision = next.revision;
                    (
                        next,
                        PolicyRet::Written {
                            revision,
                            changed: true,
                        },
                    )
                }
            },
            PolicyOp::Delete { key } => {
                let mut next = self.clone();
                let changed = next.objects.remove(key).is_some();
                if changed {
                    next.revision += 1;
                }
                let revision = next.revision;
                (next, PolicyRet::Written { revision, changed })
            }
            PolicyOp::Get { key } => (
                self.clone(),
                PolicyRet::Read(self.objects.get(key).copied()),
            ),
        };
        match (ret, &answer) {
            (None, _) => vec![next],
            (Some(r), _) if *r == answer => vec![next],
            // Answered "unchanged" but it would change something here: possible only as a
            // retried write whose first attempt took effect (its revision unseen); the retry
            // came later, so it saw at least the revision this change made.
            (
                Some(PolicyRet::Written {
                    changed: false,
                    revision: seen,
                }),
                PolicyRet::Written {
                    changed: true,
                    revision,
                },
            ) if !self.strict && seen >= revision => vec![next],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::check;

    fn alloc(
        c: usize,
        call: u64,
        ret: Option<(u64, u64, bool)>,
        l: &str,
    ) -> Operation<Allocate, Allocated> {
        Operation {
            client: c,
            call,
            ret: ret.map(|(t, id, created)| (t, Allocated { id, created })),
            op: Allocate(l.to_owned()),
        }
    }

    #[test]
    fn same_labels_same_id_distinct_labels_distinct_ids() {
        let ok = vec![
            alloc(0, 0, Some((5, 100, true)), "a"),
            alloc(1, 1, Some((4, 100, false)), "a"), // concurrent: it may come second
            alloc(2, 6, Some((7, 101, true)), "b"),
        ];
        assert!(check(&Identities::default(), &ok, 10_000).is_linearizable());
        let two_ids = vec![
            alloc(0, 0, Some((1, 100, true)), "a"),
            alloc(1, 2, Some((3, 101, false)), "a"),
        ];
        assert!(!check(&Identities::default(), &two_ids, 10_000).is_linearizable());
        let shared = vec![
            alloc(0, 0, Some((1, 100, true)), "a"),
            alloc(1, 0, Some((1, 100, true)), "b"),
        ];
        assert!(!check(&Identities::default(), &shared, 10_000).is_linearizable());
        // Both concurrent allocations of a new set claim to have created it.
        let both_created = vec![
            alloc(0, 0, Some((5, 100, true)), "a"),
            alloc(1, 0, Some((5, 100, true)), "a"),
        ];
        assert!(!check(&Identities::strict(), &both_created, 10_000).is_linearizable());
        // The default model does not check the flag, only the ids.
        assert!(check(&Identities::default(), &both_created, 10_000).is_linearizable());
    }

    #[test]
    fn the_per_label_set_check_agrees_with_the_whole_search() {
        let cases = vec![
            vec![
                alloc(0, 0, Some((5, 100, true)), "a"),
                alloc(1, 1, Some((4, 100, false)), "a"),
                alloc(2, 6, Some((7, 101, true)), "b"),
            ],
            vec![
                alloc(0, 0, Some((1, 100, true)), "a"),
                alloc(1, 2, Some((3, 101, false)), "a"),
            ],
            vec![
                alloc(0, 0, Some((1, 100, true)), "a"),
                alloc(1, 0, Some((1, 100, true)), "b"),
            ],
            vec![
                alloc(0, 0, None, "a"),
                alloc(1, 5, Some((6, 100, true)), "b"),
                alloc(0, 10, Some((11, 100, false)), "a"),
            ],
            vec![
                alloc(0, 0, None, "a"),
                alloc(0, 10, Some((11, 100, true)), "a"),
            ],
        ];
        for h in cases {
            for strict in [false, true] {
                let init = if strict {
                    Identities::strict()
                } else {
                    Identities::default()
                };
                assert_eq!(
                    check_identities(&h, strict, 10_000).is_linearizable(),
                    check(&init, &h, 10_000).is_linearizable(),
                    "{h:?} strict={strict}"
                );
            }
        }
    }

    #[test]
    fn an_indeterminate_allocation_is_settled_by_later_answers() {
        // Timed out, then found already created: it took effect.
        let h = vec![
            alloc(0, 0, None, "a"),
            alloc(0, 10, Some((11, 100, false)), "a"),
        ];
        assert!(check(&Identities::strict(), &h, 10_000).is_linearizable());
        // Timed out, then created by a retry: it never took effect.
        let h = vec![
            alloc(0, 0, None, "a"),
            alloc(0, 10, Some((11, 100, true)), "a"),
        ];
        assert!(check(&Identities::strict(), &h, 10_000).is_linearizable());
        // The unseen id turns out to be one another set holds.
        let h = vec![
            alloc(0, 0, None, "a"),
            alloc(1, 5, Some((6, 100, true)), "b"),
            alloc(0, 10, Some((11, 100, false)), "a"),
        ];
        assert!(!check(&Identities::default(), &h, 10_000).is_linearizable());
    }

    fn pol(
        c: usize,
        call: u64,
        ret: Option<(u64, PolicyRet)>,
        op: PolicyOp,
    ) -> Operation<PolicyOp, PolicyRet> {
        Operation {
            client: c,
            call,
            ret,
            op,
        }
    }

    fn apply(k: &str, v: u64) -> PolicyOp {
        PolicyOp::Apply {
            key: k.into(),
            value: v,
        }
    }

    fn get(k: &str) -> PolicyOp {
        PolicyOp::Get { key: k.into() }
    }

    fn written(revision: u64, changed: bool) -> PolicyRet {
        PolicyRet::Written { revision, changed }
    }

    #[test]
    fn policy_revisions_count_changes_in_one_total_order() {
        let ok = vec![
            pol(0, 0, Some((3, written(11, true))), apply("x", 1)),
            pol(1, 1, Some((4, written(12, true))), apply("y", 1)),
            pol(2, 5, Some((6, PolicyRet::Read(Some((1, 11))))), get("x")),
            pol(0, 7, Some((8, written(12, false))), apply("y", 1)),
            pol(
                1,
                9,
                Some((10, written(13, true))),
                PolicyOp::Delete { key: "x".into() },
            ),
            pol(2, 11, Some((12, PolicyRet::Read(None))), get("x")),
        ];
        assert!(check(&Policies::at(10), &ok, 10_000).is_linearizable());
        // Two changes answered the same revision.
        let dup = vec![
            pol(0, 0, Some((3, written(11, true))), apply("x", 1)),
            pol(1, 1, Some((4, written(11, true))), apply("y", 1)),
        ];
        assert!(!check(&Policies::at(10), &dup, 10_000).is_linearizable());
        // A deleted object read back after the delete was answered.
        let resurrected = vec![
            pol(0, 0, Some((1, written(11, true))), apply("x", 1)),
            pol(
                0,
                2,
                Some((3, written(12, true))),
                PolicyOp::Delete { key: "x".into() },
            ),
            pol(1, 4, Some((5, PolicyRet::Read(Some((1, 11))))), get("x")),
        ];
        assert!(!check(&Policies::at(10), &resurrected, 10_000).is_linearizable());
    }

    #[test]
    fn an_indeterminate_policy_write_explains_a_revision_gap_only_once() {
        // A timed-out apply took effect: the next change is at 12, and x holds value 2.
        let h = vec![
            pol(0, 0, None, apply("x", 2)),
            pol(1, 5, Some((6, written(12, true))), apply("y", 1)),
            pol(2, 7, Some((8, PolicyRet::Read(Some((2, 11))))), get("x")),
        ];
        assert!(check(&Policies::at(10), &h, 10_000).is_linearizable());
        // One indeterminate write cannot explain a gap of two.
        let h = vec![
            pol(0, 0, None, apply("x", 2)),
            pol(1, 5, Some((6, written(13, true))), apply("y", 1)),
        ];
        assert!(!check(&Policies::at(10), &h, 10_000).is_linearizable());
    }

    #[test]
    fn an_unchanged_answer_may_hide_a_retried_change_unless_strict() {
        // x was absent, yet the apply answered "unchanged at 11": its first attempt made 11.
        let h = vec![
            pol(0, 0, Some((5, written(11, false))), apply("x", 1)),
            pol(1, 6, Some((7, PolicyRet::Read(Some((1, 11))))), get("x")),
        ];
        assert!(check(&Policies::at(10), &h, 10_000).is_linearizable());
        assert!(!check(&Policies::strict_at(10), &h, 10_000).is_linearizable());
        // Still, the change it hides takes a revision: the next change cannot also be 11.
        let h = vec![
            pol(0, 0, Some((5, written(11, false))), apply("x", 1)),
            pol(1, 6, Some((7, written(11, true))), apply("y", 1)),
        ];
        assert!(!check(&Policies::at(10), &h, 10_000).is_linearizable());
    }
}
