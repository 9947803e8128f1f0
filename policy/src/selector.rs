//! Peer and subject selectors, normalized, and how they match an identity.

use std::fmt;

use ipnet::IpNet;

use crate::identity::Identity;
use crate::labels::{LabelSet, Source};

/// How a label requirement relates its key to values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// Value is one of these (`matchLabels` is `In` with one value).
    In(Vec<String>),
    /// Label absent or value none of these.
    NotIn(Vec<String>),
    /// Label present.
    Exists,
    /// Label absent.
    DoesNotExist,
}

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// Source the key must come from (`None`: any source).
    pub source: Option<Source>,
    /// Label key.
    pub key: String,
    /// Operator and values.
    pub op: Op,
}

impl Requirement {
    fn matches(&self, labels: &LabelSet) -> bool {
        let v = labels.get(self.source, &self.key);
        match &self.op {
            Op::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
            Op::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        }
    }
}

/// A Cilium entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// Outside the cluster (reserved world ids and CIDR identities).
    World,
    /// IPv4 outside the cluster.
    WorldIpv4,
    /// IPv6 outside the cluster.
    WorldIpv6,
    /// Every endpoint of the local cluster plus host, remote-node, init, health, unmanaged,
    /// ingress and kube-apiserver.
    Cluster,
    /// The local host.
    Host,
    /// Other nodes.
    RemoteNode,
    /// The API server.
    KubeApiserver,
    /// The ingress proxy.
    Ingress,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// Health endpoints.
    Health,
    /// Endpoints not managed by Palisade.
    Unmanaged,
    /// Everything.
    All,
    /// Nothing.
    None,
}

impl Entity {
    /// Parses an entity name as written in policies.
    pub fn parse(s: &str) -> Option<Entity> {
        Some(match s {
            "world" => Entity::World,
            "world-ipv4" => Entity::WorldIpv4,
            "world-ipv6" => Entity::WorldIpv6,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "kube-apiserver" => Entity::KubeApiserver,
            "ingress" => Entity::Ingress,
            "init" => Entity::Init,
            "health" => Entity::Health,
            "unmanaged" => Entity::Unmanaged,
            "all" => Entity::All,
            "none" => Entity::None,
            _ => return None,
        })
    }
}

/// A DNS name matcher (`matchName` or `matchPattern`), lowercase, without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FqdnMatch {
    /// Exact name.
    Name(String),
    /// Pattern: `*` matches within one label, a leading `**.` any number (≥ 1) of labels.
    Pattern(String),
}

impl FqdnMatch {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            FqdnMatch::Name(n) => *n == name,
            FqdnMatch::Pattern(p) => {
                if p == "*" {
                    return true;
                }
                if let Some(rest) = p.strip_prefix("**.") {
                    // One or more labels, then `rest`.
                    let mut s = name.as_str();
                    while let Some((_, tail)) = s.split_once('.') {
                        if glob_labels(rest, tail) {
                            return true;
                        }
                        s = tail;
                    }
                    return false;
                }
                glob_labels(p, &name)
            }
        }
    }
}

/// Matches a pattern whose `*` never crosses a `.` against a name.
fn glob_labels(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    p.len() == n.len()
        && p.iter()
            .zip(n.iter())
            .all(|(p, n)| glob(p.as_bytes(), n.as_bytes()))
}

/// `*` matches any run of bytes; linear-space dynamic programming (no backtracking blow-up).
fn glob(p: &[u8], s: &[u8]) -> bool {
    // reach[j]: the pattern prefix consumed so far can match s[..j].
    let mut reach = vec![false; s.len() + 1];
    reach[0] = true;
    for &c in p {
        if c == b'*' {
            for j in 1..=s.len() {
                reach[j] = reach[j] || reach[j - 1];
            }
        } else {
            for j in (1..=s.len()).rev() {
                reach[j] = reach[j - 1] && s[j - 1] == c;
            }
            reach[0] = false;
        }
    }
    reach[s.len()]
}

/// A normalized selector: what a subject or a peer clause selects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// Label requirements, ANDed. Unless one requirement names a `reserved:` key, only
    /// endpoint (pod) identities can match.
    Labels(Vec<Requirement>),
    /// An entity.
    Entity(Entity),
    /// A CIDR with exceptions: matches CIDR identities inside it (and the world ids for a /0).
    Cidr {
        /// The block.
        net: IpNet,
        /// Excluded sub-blocks.
        except: Vec<IpNet>,
    },
    /// DNS names (matches externals whose name matches).
    Fqdn(Vec<FqdnMatch>),
}

/// What a selector needs to know beyond an identity's labels.
#[derive(Debug, Clone)]
pub struct MatchContext {
    /// Name of the local cluster (the `io.cilium.k8s.policy.cluster` value of its pods).
    pub cluster_name: String,
}

impl Selector {
    /// Whether the selector matches identity `id` with labels `labels`.
    pub fn matches(&self, id: Identity, labels: &LabelSet, ctx: &MatchContext) -> bool {
        let is_pod = labels.has_source(Source::K8s);
        match self {
            Selector::Labels(reqs) => {
                let reserved_ok = reqs.iter().any(|r| r.source == Some(Source::Reserved));
                (is_pod || (reserved_ok && id.is_reserved()))
                    && reqs.iter().all(|r| r.matches(labels))
            }
            Selector::Entity(e) => match e {
                Entity::All => true,
                Entity::None => false,
                Entity::World => {
                    matches!(
                        id,
                        Identity::WORLD | Identity::WORLD_IPV4 | Identity::WORLD_IPV6
                    ) || id.is_local_scope()
                }
                Entity::WorldIpv4 => {
                    id == Identity::WORLD_IPV4
                        || cidr_of(labels).is_some_and(|n| n.addr().is_ipv4())
                }
                Entity::WorldIpv6 => {
                    id == Identity::WORLD_IPV6
                        || cidr_of(labels).is_some_and(|n| n.addr().is_ipv6())
                }
                Entity::Cluster => {
                    (is_pod
                        && labels.get(Some(Source::K8s), crate::labels::CLUSTER_LABEL)
                            == Some(&ctx.cluster_name))
                        || matches!(
                            id,
                            Identity::HOST
                                | Identity::REMOTE_NODE
                                | Identity::INIT
                                | Identity::HEALTH
                                | Identity::UNMANAGED
                                | Identity::INGRESS
                                | Identity::KUBE_APISERVER
                        )
                }
                Entity::Host => id == Identity::HOST,
                Entity::RemoteNode => id == Identity::REMOTE_NODE,
                Entity::KubeApiserver => id == Identity::KUBE_APISERVER,
                Entity::Ingress => id == Identity::INGRESS,
                Entity::Init => id == Identity::INIT,
                Entity::Health => id == Identity::HEALTH,
                Entity::Unmanaged => id == Identity::UNMANAGED,
            },
            Selector::Cidr { net, except } => {
                if net.prefix_len() == 0 {
                    let fam_ok = match id {
                        Identity::WORLD => true,
                        Identity::WORLD_IPV4 => net.addr().is_ipv4(),
                        Identity::WORLD_IPV6 => net.addr().is_ipv6(),
                        _ => false,
                    };
                    if fam_ok {
                        return true;
                    }
                }
                match cidr_of(labels) {
                    Some(p) if id.is_local_scope() => {
                        net.contains(&p) && !except.iter().any(|e| e.contains(&p))
                    }
                    _ => false,
                }
            }
            Selector::Fqdn(ms) => {
                id.is_local_scope()
                    && labels
                        .iter()
                        .any(|(s, k, _)| s == Source::Fqdn && ms.iter().any(|m| m.matches(k)))
            }
        }
    }
}

/// The prefix of a CIDR identity.
pub fn cidr_of(labels: &LabelSet) -> Option<IpNet> {
    labels
        .iter()
        .find(|(s, _, _)| *s == Source::Cidr)
        .and_then(|(_, k, _)| k.parse().ok())
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Labels(reqs) if reqs.is_empty() => f.write_str("{}"),
            Selector::Labels(reqs) => {
                let parts: Vec<String> = reqs
                    .iter()
                    .map(|r| {
                        let k = match r.source {
                            Some(s) => format!("{}:{}", s.as_str(), r.key),
                            None => r.key.clone(),
                        };
                        match &r.op {
                            Op::In(v) if v.len() == 1 => format!("{k}={}", v[0]),
                            Op::In(v) => format!("{k} in ({})", v.join(",")),
                            Op::NotIn(v) => format!("{k} notin ({})", v.join(",")),
                            Op::Exists => k,
                            Op::DoesNotExist => format!("!{k}"),
                        }
                    })
                    .collect();
                write!(f, "{{{}}}", parts.join(","))
            }
            Selector::Entity(e) => write!(f, "entity:{e:?}"),
            Selector::Cidr { net, except } if except.is_empty() => write!(f, "cidr:{net}"),
            Selector::Cidr { net, except } => {
                let ex: Vec<String> = except.iter().map(|e| e.to_string()).collect();
                write!(f, "cidr:{net} except {}", ex.join(","))
            }
            Selector::Fqdn(ms) => write!(f, "fqdn:{ms:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::pod_labels;
    use std::collections::BTreeMap;

    fn ctx() -> MatchContext {
        MatchContext {
            cluster_name: "default".into(),
        }
    }

    #[test]
    fn label_selectors_match_pods_only_unless_reserved() {
        let pod = pod_labels(
            &BTreeMap::from([("app".into(), "a".into())]),
            "x",
            &BTreeMap::new(),
            "default",
            "default",
        );
        let all = Selector::Labels(vec![]);
        assert!(all.matches(Identity(256), &pod, &ctx()));
        let mut host = LabelSet::new();
        host.insert(Source::Reserved, "host", "");
        assert!(!all.matches(Identity::HOST, &host, &ctx()));
        let res = Selector::Labels(vec![Requirement {
            source: Some(Source::Reserved),
            key: "host".into(),
            op: Op::Exists,
        }]);
        assert!(res.matches(Identity::HOST, &host, &ctx()));
        let notin = Selector::Labels(vec![Requirement {
            source: None,
            key: "app".into(),
            op: Op::NotIn(vec!["b".into()]),
        }]);
        assert!(notin.matches(Identity(256), &pod, &ctx()));
    }

    #[test]
    fn fqdn_patterns() {
        assert!(FqdnMatch::Pattern("*.cilium.io".into()).matches("sub.cilium.io"));
        assert!(!FqdnMatch::Pattern("*.cilium.io".into()).matches("cilium.io"));
        assert!(!FqdnMatch::Pattern("*.cilium.io".into()).matches("a.b.cilium.io"));
        assert!(FqdnMatch::Pattern("**.cilium.io".into()).matches("a.b.cilium.io"));
        assert!(FqdnMatch::Pattern("part*ial.com".into()).matches("partial.com"));
        assert!(FqdnMatch::Name("cilium.io".into()).matches("cilium.io."));
        assert!(FqdnMatch::Pattern("a*b*c".into()).matches("aXXbYc"));
        assert!(!FqdnMatch::Pattern("a*b*c".into()).matches("aXXbY"));
        let long = format!("{}x", "a".repeat(200));
        assert!(!FqdnMatch::Pattern("*a*a*a*a*a*a*a*a*a*a*b".into()).matches(&long));
    }

    #[test]
    fn cidr_selects_cidr_identities_and_world_for_slash_zero() {
        let mut l = LabelSet::new();
        l.insert(Source::Cidr, "203.0.113.10/32", "");
        let id = Identity::new(crate::identity::LOCAL_SCOPE_CLUSTER, 1);
        let sel = Selector::Cidr {
            net: "203.0.113.0/24".parse().unwrap(),
            except: vec!["203.0.113.8/29".parse().unwrap()],
        };
        assert!(!sel.matches(id, &l, &ctx()));
        let sel = Selector::Cidr {
            net: "0.0.0.0/0".parse().unwrap(),
            except: vec![],
        };
        assert!(sel.matches(id, &l, &ctx()));
        assert!(sel.matches(Identity::WORLD, &LabelSet::new(), &ctx()));
    }
}
