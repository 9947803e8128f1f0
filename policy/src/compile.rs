//! From rules to datapath entries: the per-peer contributions of each rule, how overlapping
//! contributions combine (deny precedence, L7, audit, defaults), and how one endpoint's entries
//! are built so that the first hit of the datapath lookup is the complete answer.
//!
//! ```text
//!  rules selecting the endpoint ──► contributions (peer id | 0, L4 key, kind)
//!                                        │ grouped by peer id
//!                                        ▼
//!  slice(0)  = keys of id 0,   value = combine(id-0 contributions covering the key)
//!  slice(i)  = keys of id i ∪ id-0 keys strictly inside them,
//!              value = combine(id-i and id-0 contributions covering the key)
//! ```
//! A slice depends only on its own identity's contributions and identity 0's, so a new peer
//! identity costs one slice per affected endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::identity::Identity;
use crate::ir::L7;
use crate::mapstate::{
    FLAG_AUDIT, FLAG_FALLBACK, L4Key, PolicyKey, PolicyValue, RULE_DEFAULT_ALLOW, VERDICT_ALLOW,
    VERDICT_DENY, VERDICT_REDIRECT,
};

/// What one rule says about a peer and L4 key.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Deny.
    Deny,
    /// Allow.
    Allow,
    /// Allow through the L7 proxy enforcing these rules.
    Redirect(Arc<L7>),
    /// No policy enforces the direction: everything passes.
    DefaultAllow,
    /// Only audit-mode policies enforce the direction: passes, reported as AUDIT.
    AuditDefault,
}

/// One contribution.
#[derive(Debug, Clone)]
pub struct Contribution {
    /// What it says.
    pub kind: Kind,
    /// From a policy in audit mode.
    pub audit: bool,
    /// Rule id.
    pub rule: u32,
}

/// Proxy ports for redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts {
    /// HTTP proxy.
    pub http: u16,
    /// DNS proxy.
    pub dns: u16,
}

/// Combines every contribution that covers one key into its value.
///
/// Precedence: an enforced deny wins; then any plain allow (it makes L7 rules on the same traffic
/// moot, as Cilium documents); then redirects (their L7 rules merged); then an audit-mode deny
/// alone (passes, AUDIT); then the defaults. An audit-mode deny beside an allow sets the audit
/// flag: the traffic passes but would be denied if the policy were enforced.
pub fn combine<'a>(
    cs: impl IntoIterator<Item = &'a Contribution>,
    ports: ProxyPorts,
) -> Option<(PolicyValue, Vec<Arc<L7>>)> {
    let mut deny: Option<u32> = None;
    let mut audit_deny: Option<u32> = None;
    let mut allow: Option<u32> = None;
    let mut redirect: Option<u32> = None;
    let mut l7s: Vec<Arc<L7>> = Vec::new();
    let mut default_allow = false;
    let mut audit_default: Option<u32> = None;
    let min = |o: &mut Option<u32>, r: u32| *o = Some(o.map_or(r, |x| x.min(r)));
    for c in cs {
        match &c.kind {
            Kind::Deny if c.audit => min(&mut audit_deny, c.rule),
            Kind::Deny => min(&mut deny, c.rule),
            Kind::Allow => min(&mut allow, c.rule),
            Kind::Redirect(l7) => {
                min(&mut redirect, c.rule);
                if !l7s.iter().any(|x| Arc::ptr_eq(x, l7)) {
                    l7s.push(l7.clone());
                }
            }
            Kind::DefaultAllow => default_allow = true,
            Kind::AuditDefault => min(&mut audit_default, c.rule),
        }
    }
    let v = |verdict, flags, proxy_port, rule| PolicyValue {
        verdict,
        flags,
        proxy_port,
        rule,
    };
    if let Some(r) = deny {
        return Some((v(VERDICT_DENY, 0, 0, r), vec![]));
    }
    let audit_flag = if audit_deny.is_some() { FLAG_AUDIT } else { 0 };
    if let Some(r) = allow {
        return Some((
            v(VERDICT_ALLOW, audit_flag, 0, audit_deny.unwrap_or(r)),
            vec![],
        ));
    }
    if let Some(r) = redirect {
        let port = if l7s.iter().all(|l| l.http.is_empty() && !l.dns.is_empty()) {
            ports.dns
        } else {
            ports.http
        };
        return Some((
            v(VERDICT_REDIRECT, audit_flag, port, audit_deny.unwrap_or(r)),
            l7s,
        ));
    }
    if let Some(r) = audit_deny {
        return Some((v(VERDICT_ALLOW, FLAG_AUDIT, 0, r), vec![]));
    }
    if default_allow {
        return Some((
            v(VERDICT_ALLOW, FLAG_FALLBACK, 0, RULE_DEFAULT_ALLOW),
            vec![],
        ));
    }
    if let Some(r) = audit_default {
        return Some((v(VERDICT_ALLOW, FLAG_AUDIT | FLAG_FALLBACK, 0, r), vec![]));
    }
    None
}

/// The entries of one direction built from contributions grouped by peer identity.
pub type Slices = BTreeMap<Identity, Vec<(L4Key, Contribution)>>;

/// Builds the entries of `slice(id)` given the contributions of `id` and of identity 0.
pub fn build_slice(
    id: Identity,
    own: &[(L4Key, Contribution)],
    wildcard: &[(L4Key, Contribution)],
    direction: u8,
    ports: ProxyPorts,
    out: &mut Vec<(PolicyKey, PolicyValue, Vec<Arc<L7>>)>,
) {
    let mut keys: BTreeSet<L4Key> = own.iter().map(|(k, _)| *k).collect();
    if id != Identity::ANY {
        let own_keys: Vec<L4Key> = keys.iter().copied().collect();
        for (k0, _) in wildcard {
            if !keys.contains(k0) && own_keys.iter().any(|k| k.covers(k0)) {
                keys.insert(*k0);
            }
        }
    }
    for key in keys {
        let covering = own
            .iter()
            .chain(if id != Identity::ANY { wildcard } else { &[] })
            .filter(|(k, _)| k.covers(&key))
            .map(|(_, c)| c);
        if let Some((value, l7)) = combine(covering, ports) {
            let pk = PolicyKey {
                identity: id.0,
                direction,
                protocol: key.protocol,
                port_prefix_len: key.prefix_len,
                pad: 0,
                dport: key.port,
                pad2: 0,
            };
            out.push((pk, value, l7));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ProxyPorts = ProxyPorts {
        http: 15001,
        dns: 15053,
    };

    fn c(kind: Kind, audit: bool, rule: u32) -> Contribution {
        Contribution { kind, audit, rule }
    }

    #[test]
    fn deny_wins_then_allow_then_redirect() {
        let l7 = Arc::new(L7::default());
        let v = combine(&[c(Kind::Allow, false, 2), c(Kind::Deny, false, 3)], P)
            .unwrap()
            .0;
        assert_eq!((v.verdict, v.rule), (VERDICT_DENY, 3));
        let v = combine(
            &[
                c(Kind::Redirect(l7.clone()), false, 2),
                c(Kind::Allow, false, 4),
            ],
            P,
        )
        .unwrap()
        .0;
        assert_eq!(v.verdict, VERDICT_ALLOW);
        let v = combine(
            &[c(Kind::Redirect(l7), false, 2), c(Kind::Deny, true, 5)],
            P,
        )
        .unwrap()
        .0;
        assert_eq!(
            (v.verdict, v.flags, v.rule),
            (VERDICT_REDIRECT, FLAG_AUDIT, 5)
        );
        let v = combine(&[c(Kind::AuditDefault, true, 7)], P).unwrap().0;
        assert_eq!(v.flags, FLAG_AUDIT | FLAG_FALLBACK);
        assert!(combine(&[], P).is_none());
    }

    #[test]
    fn slices_carry_wildcard_denies_into_identity_keys() {
        let any = L4Key::ANY;
        let tcp80 = L4Key {
            protocol: 6,
            prefix_len: 16,
            port: 80,
        };
        let own = vec![(any, c(Kind::Allow, false, 1))];
        let wild = vec![(tcp80, c(Kind::Deny, false, 2))];
        let mut out = Vec::new();
        build_slice(Identity(300), &own, &wild, 0, P, &mut out);
        assert_eq!(out.len(), 2);
        let k80 = out.iter().find(|(k, _, _)| k.protocol == 6).unwrap();
        assert_eq!(k80.1.verdict, VERDICT_DENY);
    }
}
