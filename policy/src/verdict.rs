//! Connection verdicts from compiled state: the source's egress AND the destination's ingress,
//! each through the datapath lookup, with the L7 rules of redirects applied to an HTTP request.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::engine::Engine;
use crate::identity::Identity;
use crate::ir::{Direction, HttpRequest};
use crate::mapstate::{Lookup, RULE_DEFAULT_ALLOW, VERDICT_DENY, VERDICT_REDIRECT};

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Passes.
    Allow,
    /// Dropped (or refused by the L7 proxy).
    Deny,
    /// Passes, but a policy in audit mode would have denied it.
    Audit,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        })
    }
}

/// One end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// An endpoint, by name.
    Endpoint(String),
    /// An external peer, by name.
    External(String),
    /// The node hosting the other end.
    Host,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Endpoint(n) | Peer::External(n) => f.write_str(n),
            Peer::Host => f.write_str("host"),
        }
    }
}

/// A connection attempt.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Source.
    pub from: Peer,
    /// Destination.
    pub to: Peer,
    /// Protocol number.
    pub protocol: u8,
    /// Destination port (ICMP: type).
    pub port: u16,
    /// HTTP request, for L7 rules.
    pub http: Option<HttpRequest>,
}

/// The verdict of one direction.
#[derive(Debug, Clone, Serialize)]
pub struct SideVerdict {
    /// Direction.
    pub direction: Direction,
    /// Endpoint whose policy was consulted.
    pub endpoint: String,
    /// Peer identity used in the lookup.
    pub peer_identity: u32,
    /// Result of the lookup.
    pub lookup: Lookup,
    /// Verdict of this side.
    pub verdict: Verdict,
    /// Rule that decided (None: default deny, or allow-localhost).
    pub rule: Option<u32>,
    /// Human explanation.
    pub reason: String,
}

/// The verdict of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionVerdict {
    /// Overall verdict.
    pub verdict: Verdict,
    /// Egress at the source (None when the source is not an endpoint).
    pub egress: Option<SideVerdict>,
    /// Ingress at the destination (None when the destination is not an endpoint).
    pub ingress: Option<SideVerdict>,
}

/// A peer that names nothing known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown peer `{name}` (not an endpoint, an external or `host`)")]
pub struct UnknownPeer {
    /// The name.
    pub name: String,
}

impl Engine {
    /// Resolves a peer name: `host`, an endpoint `ns/pod`, or an external.
    pub fn peer(&self, name: &str) -> Result<Peer, UnknownPeer> {
        if name == "host" {
            Ok(Peer::Host)
        } else if self.endpoints().contains_key(name) {
            Ok(Peer::Endpoint(name.to_string()))
        } else if self.externals().contains_key(name) {
            Ok(Peer::External(name.to_string()))
        } else {
            Err(UnknownPeer {
                name: name.to_string(),
            })
        }
    }

    fn peer_identity(&self, p: &Peer) -> (Identity, Option<IpAddr>) {
        match p {
            Peer::Endpoint(n) => self
                .endpoints()
                .get(n.as_str())
                .map_or((Identity::ANY, None), |e| (e.identity, Some(e.spec.ip))),
            Peer::External(n) => self
                .externals()
                .get(n)
                .map_or((Identity::ANY, None), |e| (e.identity, None)),
            Peer::Host => (Identity::HOST, None),
        }
    }

    /// Describes a rule id for tables and traces.
    pub fn describe_rule(&self, rule: Option<u32>, direction: Direction, endpoint: &str) -> String {
        match rule {
            Some(RULE_DEFAULT_ALLOW) => {
                format!("no policy selects {endpoint} for {direction}: default allow")
            }
            Some(r) => match self.origin(r) {
                Some(o) => o.to_string(),
                None => format!("rule {r}"),
            },
            None => {
                let Some(ep) = self.endpoints().get(endpoint) else {
                    return "default deny".into();
                };
                let sp = self.selector_policy(ep.identity);
                let by: Vec<String> = sp.default_deny[direction as usize]
                    .iter()
                    .filter_map(|d| self.origin(*d))
                    .map(|o| o.resource.to_string())
                    .collect();
                format!("default deny ({direction}) from {}", by.join(", "))
            }
        }
    }

    fn side(
        &self,
        direction: Direction,
        endpoint: &str,
        peer: &Peer,
        c: &Connection,
    ) -> SideVerdict {
        let (pid, pip) = self.peer_identity(peer);
        let lookup = match self.map_state(endpoint) {
            Some(m) => m.lookup(direction, pid, pip, c.protocol, c.port),
            None => Lookup {
                key: None,
                value: None,
                by_ip: false,
            },
        };
        let (verdict, rule, reason) = match lookup.value {
            None => (
                Verdict::Deny,
                None,
                "no entry matches: default deny".to_string(),
            ),
            Some(v) if v.verdict == VERDICT_DENY => {
                (Verdict::Deny, Some(v.rule), "deny entry".to_string())
            }
            Some(v) => {
                let base = if v.audit() {
                    Verdict::Audit
                } else {
                    Verdict::Allow
                };
                if v.verdict == VERDICT_REDIRECT
                    && let (Some(req), Some(key)) = (&c.http, lookup.key)
                {
                    let l7 = self.map_state(endpoint).and_then(|m| m.l7.get(&key));
                    let ok = l7.is_none_or(|sets| sets.iter().any(|s| s.allows_http(req)));
                    if ok {
                        (
                            base,
                            Some(v.rule),
                            format!(
                                "redirect to proxy port {}: L7 rules allow the request",
                                v.proxy_port
                            ),
                        )
                    } else {
                        (
                            Verdict::Deny,
                            Some(v.rule),
                            format!(
                                "redirect to proxy port {}: no L7 rule allows the request (403)",
                                v.proxy_port
                            ),
                        )
                    }
                } else if v.verdict == VERDICT_REDIRECT {
                    (
                        base,
                        Some(v.rule),
                        format!("redirect to proxy port {}", v.proxy_port),
                    )
                } else if lookup.by_ip {
                    (
                        base,
                        Some(v.rule),
                        "ipBlock matches the peer's IP".to_string(),
                    )
                } else {
                    (base, Some(v.rule), "allow entry".to_string())
                }
            }
        };
        SideVerdict {
            direction,
            endpoint: endpoint.to_string(),
            peer_identity: pid.0,
            lookup,
            verdict,
            rule,
            reason,
        }
    }

    /// The verdict of a connection: allowed only if the source's egress and the destination's
    /// ingress both allow it. Traffic from the destination's own node (`host`) is always allowed
    /// at ingress (Kubernetes and Cilium's default allow-localhost).
    pub fn check(&self, c: &Connection) -> ConnectionVerdict {
        let egress = match &c.from {
            Peer::Endpoint(n) => Some(self.side(Direction::Egress, n, &c.to, c)),
            _ => None,
        };
        let ingress = match &c.to {
            Peer::Endpoint(n) if c.from == Peer::Host => Some(SideVerdict {
                direction: Direction::Ingress,
                endpoint: n.clone(),
                peer_identity: Identity::HOST.0,
                lookup: Lookup {
                    key: None,
                    value: None,
                    by_ip: false,
                },
                verdict: Verdict::Allow,
                rule: None,
                reason: "traffic from the endpoint's own node is always allowed (allow-localhost)"
                    .into(),
            }),
            Peer::Endpoint(n) => Some(self.side(Direction::Ingress, n, &c.from, c)),
            _ => None,
        };
        let sides = [&egress, &ingress];
        let verdict = if sides
            .iter()
            .any(|s| s.as_ref().is_some_and(|s| s.verdict == Verdict::Deny))
        {
            Verdict::Deny
        } else if sides
            .iter()
            .any(|s| s.as_ref().is_some_and(|s| s.verdict == Verdict::Audit))
        {
            Verdict::Audit
        } else {
            Verdict::Allow
        };
        ConnectionVerdict {
            verdict,
            egress,
            ingress,
        }
    }

    /// The rule that decided a connection, described: the denying side for a deny, the audited
    /// side for an audit, both sides for an allow.
    pub fn deciding_rule(&self, v: &ConnectionVerdict) -> String {
        let describe = |s: &SideVerdict| {
            if s.lookup.value.is_none() && s.verdict == Verdict::Allow {
                return format!("{}: allow-localhost", s.direction);
            }
            let d = self.describe_rule(s.rule, s.direction, &s.endpoint);
            if s.reason.contains("L7") {
                format!("{}: {d} (L7)", s.direction)
            } else {
                format!("{}: {d}", s.direction)
            }
        };
        let sides: Vec<&SideVerdict> = [&v.egress, &v.ingress].into_iter().flatten().collect();
        let pick: Vec<String> = match v.verdict {
            Verdict::Allow => sides.iter().map(|s| describe(s)).collect(),
            other => sides
                .iter()
                .filter(|s| s.verdict == other)
                .take(1)
                .map(|s| describe(s))
                .collect(),
        };
        pick.join("; ")
    }
}
