//! Which peers' states reach the view: each (node, generation) is decided once per chitchat
//! version — verified with [`super::sign`], checked against the highest sequence number accepted
//! for the node (replays), or left alone while its new signature is on its way — and only
//! accepted states are shown. Drops are counted once, by reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chitchat::ChitchatId;
use rustls_pki_types::UnixTime;

use super::seal::DropReason;
use super::sign::{self, StateVerifier};
use super::transport::Drops;
use super::{GossipView, NodeGossip, Peer};

/// What was decided about one node state (one node, one generation, one chitchat version).
#[derive(Debug, Clone)]
pub(super) enum Verdict {
    /// Verified: the peer as shown.
    Accepted(Peer),
    /// Newer keys than the signature arrived (its new signature is on its way): the last
    /// accepted state of the node stays.
    InTransit,
    /// No keys at all yet: nothing claimed.
    Empty,
    /// Dropped (counted when decided).
    Dropped(DropReason),
}

/// Peers' states as verified: each (node, generation) at its latest chitchat version decided
/// once, drops counted once, and only accepted states shown.
pub(super) struct Trust {
    verifier: StateVerifier,
    drops: Arc<Drops>,
    /// (node, generation) → the version decided and the verdict.
    decided: BTreeMap<(String, u64), (u64, Verdict)>,
    /// (node, generation) → the last state accepted.
    accepted: BTreeMap<(String, u64), Peer>,
    /// node → the highest sequence number accepted for it (kept across generations).
    highest: BTreeMap<String, u64>,
}

impl Trust {
    pub(super) fn new(verifier: StateVerifier, drops: Arc<Drops>) -> Trust {
        Trust {
            verifier,
            drops,
            decided: BTreeMap::new(),
            accepted: BTreeMap::new(),
            highest: BTreeMap::new(),
        }
    }

    /// The other nodes' latest accepted generations, decoded.
    pub(super) fn build_view(&mut self, cc: &chitchat::Chitchat) -> GossipView {
        let me = cc.self_chitchat_id().node_id.to_string();
        let live: BTreeSet<&ChitchatId> = cc.live_nodes().collect();
        let mut present: BTreeSet<(String, u64)> = BTreeSet::new();
        let now = sign::unix_now();
        for (id, ns) in cc.node_states() {
            if *id.node_id == *me {
                continue;
            }
            let at = (id.node_id.to_string(), id.generation_id);
            present.insert(at.clone());
            if self
                .decided
                .get(&at)
                .is_some_and(|(v, _)| *v == ns.max_version())
            {
                continue;
            }
            let verdict = self.decide(&at, ns, now);
            if let Verdict::Dropped(r) = verdict {
                self.drops.count(r);
            }
            if let Verdict::Accepted(p) = &verdict {
                self.accepted.insert(at.clone(), p.clone());
            }
            self.decided.insert(at, (ns.max_version(), verdict));
        }
        // Forget what chitchat forgot (its grace period ended).
        self.decided.retain(|k, _| present.contains(k));
        self.accepted.retain(|k, _| present.contains(k));
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        for id in cc.node_states().keys() {
            let at = (id.node_id.to_string(), id.generation_id);
            let Some(p) = self.accepted.get(&at) else {
                continue;
            };
            if peers
                .get(&at.0)
                .is_some_and(|q| q.generation > id.generation_id)
            {
                continue;
            }
            let mut p = p.clone();
            p.live = live.contains(id);
            peers.insert(at.0, p);
        }
        GossipView { peers }
    }

    /// Verifies one node state (see [`sign`]).
    fn decide(&mut self, at: &(String, u64), ns: &chitchat::NodeState, now: UnixTime) -> Verdict {
        let (node, generation) = (at.0.as_str(), at.1);
        if ns.key_values_including_deleted().next().is_none() {
            return Verdict::Empty;
        }
        let Some(sig_version) = ns.get_versioned(sign::SIG_KEY).map(|v| v.version) else {
            return Verdict::Dropped(DropReason::Unsigned);
        };
        if ns
            .key_values_including_deleted()
            .any(|(_, v)| v.version > sig_version)
        {
            return Verdict::InTransit;
        }
        let seq = match self.verifier.verify(node, generation, ns.key_values(), now) {
            Ok(seq) => seq,
            Err(r) => return Verdict::Dropped(r),
        };
        if self.highest.get(node).is_some_and(|h| seq < *h) {
            return Verdict::Dropped(DropReason::Replayed);
        }
        self.highest.insert(node.to_string(), seq);
        let (state, ignored) = NodeGossip::from_kv(
            ns.key_values()
                .filter(|(k, _)| *k != sign::CERT_KEY && *k != sign::SIG_KEY),
        );
        Verdict::Accepted(Peer {
            live: false,
            address: ns.chitchat_id().gossip_advertise_addr,
            generation,
            version: ns.max_version(),
            seq,
            state,
            ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::gossip::NodeSigner;

    fn trust(ca: &sign::tests::TestCa) -> Trust {
        Trust::new(ca.verifier(), Arc::default())
    }

    /// `NodeState::for_test` is node `test-node`, generation 0; `kv` set in order, then signed.
    fn signed_state(s: &NodeSigner, seq: u64, kv: &[(&str, &str)]) -> chitchat::NodeState {
        let mut ns = chitchat::NodeState::for_test();
        for (k, v) in kv {
            ns.set(*k, *v);
        }
        ns.set(sign::CERT_KEY, s.cert_value());
        let sig = s.sign("test-node", 0, seq, ns.key_values()).expect("sign");
        ns.set(sign::SIG_KEY, sig);
        ns
    }

    #[test]
    fn an_older_signed_state_is_a_replay_and_newer_unsigned_keys_are_in_transit() {
        let ca = sign::tests::TestCa::new();
        let s = ca.signer("test-node");
        let mut t = trust(&ca);
        let at = ("test-node".to_string(), 0);
        let now = sign::unix_now();
        assert!(matches!(
            t.decide(&at, &chitchat::NodeState::for_test(), now),
            Verdict::Empty
        ));
        let old = signed_state(&s, 100, &[("ep/10.200.2.10", "300")]);
        let new = signed_state(&s, 200, &[("ep/10.200.2.11", "300")]);
        let Verdict::Accepted(p) = t.decide(&at, &old, now) else {
            panic!("the first signed state is accepted");
        };
        assert_eq!((p.seq, p.state.endpoints.len(), p.ignored), (100, 1, 0));
        assert!(matches!(t.decide(&at, &new, now), Verdict::Accepted(_)));
        assert!(
            matches!(
                t.decide(&at, &old, now),
                Verdict::Dropped(DropReason::Replayed)
            ),
            "the older signed state again"
        );
        // A key newer than the signature: the next signature is on its way, or a forger
        // appended a key; either way not merged, and not counted.
        let mut appended = new.clone();
        appended.set("ep/10.200.2.99", "300");
        assert!(matches!(t.decide(&at, &appended, now), Verdict::InTransit));
        let mut unsigned = chitchat::NodeState::for_test();
        unsigned.set("ep/10.200.2.99", "300");
        assert!(matches!(
            t.decide(&at, &unsigned, now),
            Verdict::Dropped(DropReason::Unsigned)
        ));
    }
}
