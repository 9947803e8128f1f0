//! Which names a query may ask: the DNS rules (`toPorts[].rules.dns`, `matchName` and
//! `matchPattern`) of the L7 rule sets the client's egress lookup lands on. Pure.
//!
//! Patterns follow Cilium's documentation: `*` alone matches every name; elsewhere `*` matches
//! any characters within one label (`*.example.test` matches `api.example.test`, not
//! `example.test` nor `a.b.example.test`); a leading `**.` matches one or more labels. Names
//! compare case-insensitively, with or without the trailing dot.

use std::sync::Arc;

use palisade_policy::ir::L7;

/// What the proxy does with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryVerdict {
    /// Forward to the original destination.
    Forward,
    /// Answer REFUSED.
    Refuse,
}

/// Whether any rule set allows `name` (Cilium ORs the rules of every matching policy). Sets
/// without DNS rules allow nothing: the proxy fails closed.
pub fn name_verdict(sets: &[Arc<L7>], name: &str) -> QueryVerdict {
    if sets.iter().any(|s| s.dns.iter().any(|m| m.matches(name))) {
        QueryVerdict::Forward
    } else {
        QueryVerdict::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::selector::FqdnMatch;

    fn set(ms: Vec<FqdnMatch>) -> Arc<L7> {
        Arc::new(L7 {
            http: vec![],
            dns: ms,
        })
    }

    fn name(n: &str) -> FqdnMatch {
        FqdnMatch::Name(n.into())
    }

    fn pattern(p: &str) -> FqdnMatch {
        FqdnMatch::Pattern(p.into())
    }

    #[test]
    fn match_name_is_exact_and_case_insensitive() {
        let s = [set(vec![name("api.example.test")])];
        assert_eq!(name_verdict(&s, "api.example.test"), QueryVerdict::Forward);
        assert_eq!(name_verdict(&s, "API.Example.Test."), QueryVerdict::Forward);
        assert_eq!(name_verdict(&s, "x.api.example.test"), QueryVerdict::Refuse);
        assert_eq!(name_verdict(&s, "example.test"), QueryVerdict::Refuse);
    }

    #[test]
    fn a_star_matches_within_exactly_one_label() {
        let s = [set(vec![pattern("*.example.test")])];
        assert_eq!(name_verdict(&s, "api.example.test"), QueryVerdict::Forward);
        assert_eq!(name_verdict(&s, "b.example.test."), QueryVerdict::Forward);
        assert_eq!(name_verdict(&s, "a.b.example.test"), QueryVerdict::Refuse);
        assert_eq!(name_verdict(&s, "example.test"), QueryVerdict::Refuse);
        assert_eq!(name_verdict(&s, "apiexample.test"), QueryVerdict::Refuse);
        let partial = [set(vec![pattern("api-*.example.test")])];
        assert_eq!(
            name_verdict(&partial, "api-v2.example.test"),
            QueryVerdict::Forward
        );
        assert_eq!(
            name_verdict(&partial, "web.example.test"),
            QueryVerdict::Refuse
        );
    }

    #[test]
    fn double_star_spans_labels_and_a_lone_star_matches_everything() {
        let s = [set(vec![pattern("**.example.test")])];
        assert_eq!(name_verdict(&s, "a.b.example.test"), QueryVerdict::Forward);
        assert_eq!(name_verdict(&s, "example.test"), QueryVerdict::Refuse);
        let all = [set(vec![pattern("*")])];
        assert_eq!(name_verdict(&all, "anything.at.all"), QueryVerdict::Forward);
    }

    #[test]
    fn rule_sets_are_ored_and_an_empty_one_refuses() {
        let s = [set(vec![name("a.test")]), set(vec![name("b.test")])];
        assert_eq!(name_verdict(&s, "b.test"), QueryVerdict::Forward);
        assert_eq!(name_verdict(&[set(vec![])], "a.test"), QueryVerdict::Refuse);
        assert_eq!(name_verdict(&[], "a.test"), QueryVerdict::Refuse);
    }
}
