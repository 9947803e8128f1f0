//! Peer reconciliation (sans-IO): turns the peer list the control plane streams to the agent
//! (one current key per node) into the add/remove commands a tunnel backend takes, keeping a
//! peer's previous key for the grace period after it rotated so that rotation stays
//! make-before-break.
//!
//! ```text
//!  desired peers (name, key, epoch, endpoint, allowed IPs) ──► Reconciler::update(now)
//!      new name            → AddPeer
//!      name gone           → RemovePeer                       (node left)
//!      newer epoch         → AddPeerKey; old epoch retired at `now`
//!      retired > grace     → RemovePeerKey                    (on a later update or tick)
//!      endpoint/IPs/same-epoch key changed → RemovePeer + AddPeer   (peers are never modified)
//!      older epoch         → ignored (a stale update)
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::userspace::{PeerConfig, TunnelError, UserspaceTunnel};

/// One change to apply to a tunnel backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCommand {
    /// Add a peer.
    AddPeer(PeerConfig),
    /// Remove a peer and all its keys.
    RemovePeer(String),
    /// Add a newer key of a peer alongside its current ones.
    AddPeerKey {
        /// The peer.
        name: String,
        /// Its new key.
        key: crate::PublicKey,
        /// The key's epoch.
        epoch: u64,
    },
    /// Remove a key whose grace period ended.
    RemovePeerKey {
        /// The peer.
        name: String,
        /// The retired epoch.
        epoch: u64,
    },
}

struct Known {
    /// The config as last applied (its key is the newest).
    config: PeerConfig,
    /// Older epochs still installed, with when they were superseded.
    retired: Vec<(u64, Instant)>,
}

/// Remembers what was applied and computes what to change next.
pub struct Reconciler {
    grace: Duration,
    known: BTreeMap<String, Known>,
}

impl Reconciler {
    /// A reconciler that keeps a peer's superseded key for `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            known: BTreeMap::new(),
        }
    }

    /// The commands that bring the backend from the last applied state to `desired` at `now`.
    /// The caller applies them in order (see [`Reconciler::apply`]).
    pub fn update(&mut self, desired: &[PeerConfig], now: Instant) -> Vec<PeerCommand> {
        let mut commands = Vec::new();
        let wanted: BTreeMap<&str, &PeerConfig> =
            desired.iter().map(|p| (p.name.as_str(), p)).collect();

        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.known.remove(&name);
            commands.push(PeerCommand::RemovePeer(name));
        }

        for (name, want) in wanted {
            let Some(known) = self.known.get_mut(name) else {
                self.known.insert(
                    name.to_string(),
                    Known {
                        config: want.clone(),
                        retired: Vec::new(),
                    },
                );
                commands.push(PeerCommand::AddPeer(want.clone()));
                continue;
            };
            let have = &known.config;
            let moved = have.endpoint != want.endpoint || have.allowed_ips != want.allowed_ips;
            let rekeyed_in_place = want.epoch == have.epoch && want.public_key != have.public_key;
            if moved || rekeyed_in_place {
                commands.push(PeerCommand::RemovePeer(name.to_string()));
                commands.push(PeerCommand::AddPeer(want.clone()));
                *known = Known {
                    config: want.clone(),
                    retired: Vec::new(),
                };
            } else if want.epoch > have.epoch {
                commands.push(PeerCommand::AddPeerKey {
                    name: name.to_string(),
                    key: want.public_key,
                    epoch: want.epoch,
                });
                known.retired.push((have.epoch, now));
                known.config = want.clone();
            }
        }
        commands.extend(self.expire(now));
        commands
    }

    /// Retired keys whose grace period has ended at `now` (call periodically as well).
    pub fn expire(&mut self, now: Instant) -> Vec<PeerCommand> {
        let mut commands = Vec::new();
        for (name, known) in &mut self.known {
            known.retired.retain(|(epoch, since)| {
                let keep = now.duration_since(*since) < self.grace;
                if !keep {
                    commands.push(PeerCommand::RemovePeerKey {
                        name: name.clone(),
                        epoch: *epoch,
                    });
                }
                keep
            });
        }
        commands
    }

    /// Applies commands to a userspace tunnel, stopping at the first error.
    pub fn apply(commands: &[PeerCommand], tunnel: &UserspaceTunnel) -> Result<(), TunnelError> {
        for command in commands {
            match command {
                PeerCommand::AddPeer(config) => tunnel.add_peer(config.clone())?,
                PeerCommand::RemovePeer(name) => {
                    tunnel.remove_peer(name);
                }
                PeerCommand::AddPeerKey { name, key, epoch } => {
                    tunnel.add_peer_key(name, *key, *epoch)?
                }
                PeerCommand::RemovePeerKey { name, epoch } => {
                    tunnel.remove_peer_key(name, *epoch)?
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKey;

    fn peer(name: &str, key: &NodeKey, port: u16) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            public_key: key.public_key(),
            epoch: key.epoch(),
            endpoint: ([192, 0, 2, 1], port).into(),
            allowed_ips: vec!["10.1.0.0/24".parse().unwrap()],
        }
    }

    #[test]
    fn lifecycle() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut r = Reconciler::new(grace);
        let k1 = NodeKey::generate(1);
        let a1 = peer("a", &k1, 51820);
        assert_eq!(
            r.update(std::slice::from_ref(&a1), t0),
            vec![PeerCommand::AddPeer(a1.clone())]
        );
        // Nothing changed: nothing to do.
        assert!(r.update(std::slice::from_ref(&a1), t0).is_empty());

        // Rotation: the new key is added, the old one kept until the grace period ends.
        let k2 = NodeKey::generate(2);
        let a2 = peer("a", &k2, 51820);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            r.update(std::slice::from_ref(&a2), t1),
            vec![PeerCommand::AddPeerKey {
                name: "a".into(),
                key: k2.public_key(),
                epoch: 2
            }]
        );
        assert!(r.expire(t1 + grace / 2).is_empty());
        assert_eq!(
            r.expire(t1 + grace),
            vec![PeerCommand::RemovePeerKey {
                name: "a".into(),
                epoch: 1
            }]
        );
        assert!(r.expire(t1 + grace * 2).is_empty());

        // A stale update (older epoch) is ignored.
        assert!(r.update(std::slice::from_ref(&a1), t1).is_empty());

        // A moved endpoint is a remove and an add, never a modification.
        let moved = peer("a", &k2, 51821);
        assert_eq!(
            r.update(std::slice::from_ref(&moved), t1),
            vec![
                PeerCommand::RemovePeer("a".into()),
                PeerCommand::AddPeer(moved)
            ]
        );

        // The node leaves.
        assert_eq!(r.update(&[], t1), vec![PeerCommand::RemovePeer("a".into())]);
    }
}
