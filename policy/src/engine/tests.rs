use super::*;
use crate::ir::{PolicyKind, proto};
use crate::load::load_file;
use crate::verdict::{Connection, Peer, Verdict};

fn ep(name: &str, app: &str, ip: &str) -> EndpointSpec {
    let (ns, _) = name.split_once('/').expect("ns/pod");
    EndpointSpec {
        name: name.into(),
        namespace: ns.into(),
        labels: Arc::new(BTreeMap::from([("app".to_string(), app.to_string())])),
        service_account: "default".into(),
        ip: ip.parse().expect("ip"),
        ports: vec![],
    }
}

const ALLOW_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]\n    ports: [{port: 80}]\n";

fn tcp(from: &str, to: &str, port: u16) -> Connection {
    Connection {
        from: Peer::Endpoint(from.into()),
        to: Peer::Endpoint(to.into()),
        protocol: proto::TCP,
        port,
        http: None,
    }
}

#[test]
fn replace_policy_reports_affected_identities_and_a_rising_revision() {
    let mut e = Engine::new(EngineConfig::default());
    let a = e.add_endpoint(ep("x/a", "a", "10.0.0.1")).expect("a");
    let b = e.add_endpoint(ep("x/b", "b", "10.0.0.2")).expect("b");
    assert_eq!(e.check(&tcp("x/b", "x/a", 80)).verdict, Verdict::Allow);
    let p = load_file("p.yaml", ALLOW_B).expect("valid").remove(0);
    let key = p.key.clone();
    assert_eq!(key.kind, PolicyKind::NetworkPolicy);
    let (affected, r1) = e.replace_policy(&key, Some(p));
    assert_eq!(affected, BTreeSet::from([a]));
    assert!(!affected.contains(&b));
    assert_eq!(e.check(&tcp("x/b", "x/a", 80)).verdict, Verdict::Allow);
    assert_eq!(e.check(&tcp("x/b", "x/a", 81)).verdict, Verdict::Deny);
    let (affected, r2) = e.replace_policy(&key, None);
    assert!(r2 > r1);
    assert_eq!(affected, BTreeSet::from([a]));
    assert_eq!(e.check(&tcp("x/b", "x/a", 81)).verdict, Verdict::Allow);
    assert!(
        e.selector_cache().is_empty(),
        "selectors are released with their last user"
    );
}

#[test]
fn a_new_peer_identity_updates_existing_endpoints_incrementally() {
    let mut e = Engine::new(EngineConfig::default());
    e.add_endpoint(ep("x/a", "a", "10.0.0.1")).expect("a");
    let p = load_file("p.yaml", ALLOW_B).expect("valid").remove(0);
    let key = p.key.clone();
    e.replace_policy(&key, Some(p));
    let before = e.map_state("x/a").expect("compiled").entries.len();
    let b = e.add_endpoint(ep("x/b", "b", "10.0.0.2")).expect("b");
    let m = e.map_state("x/a").expect("compiled");
    assert!(m.entries.len() > before);
    assert!(
        m.entries
            .keys()
            .any(|k| k.identity == b.0 && k.dport == 80 && k.port_prefix_len == 16)
    );
    assert_eq!(e.check(&tcp("x/b", "x/a", 80)).verdict, Verdict::Allow);
    // Same labels in another pod: same identity, nothing to recompute for peers.
    let b2 = e.add_endpoint(ep("x/b2", "b", "10.0.0.3")).expect("b2");
    assert_eq!(b, b2);
    assert!(matches!(
        e.add_endpoint(ep("x/b2", "b", "10.0.0.4")),
        Err(EngineError::Duplicate { .. })
    ));
}

#[test]
fn deny_rule_ids_and_origins_explain_verdicts() {
    let mut e = Engine::new(EngineConfig::default());
    e.add_endpoint(ep("x/a", "a", "10.0.0.1")).expect("a");
    e.add_endpoint(ep("x/b", "b", "10.0.0.2")).expect("b");
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: d, namespace: x}\nspecs:\n- endpointSelector: {matchLabels: {app: a}}\n  ingress: [{fromEndpoints: [{}]}]\n- endpointSelector: {matchLabels: {app: a}}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: b}}]\n    toPorts: [{ports: [{port: \"22\", protocol: TCP}]}]\n";
    for p in load_file("d.yaml", text).expect("valid") {
        let key = p.key.clone();
        e.replace_policy(&key, Some(p));
    }
    let v = e.check(&tcp("x/b", "x/a", 22));
    assert_eq!(v.verdict, Verdict::Deny);
    let rule = e.deciding_rule(&v);
    assert!(
        rule.contains("CiliumNetworkPolicy x/d specs[1].ingressDeny[0]"),
        "{rule}"
    );
    let v = e.check(&tcp("x/b", "x/a", 23));
    assert!(e.deciding_rule(&v).contains("specs[0].ingress[0]"));
}

#[test]
fn rule_origins_list_rules_not_default_deny_statements() {
    let mut e = Engine::new(EngineConfig::default());
    e.add_endpoint(ep("x/a", "a", "10.0.0.1")).expect("a");
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: d, namespace: x}\nspecs:\n- endpointSelector: {matchLabels: {app: a}}\n  ingress: [{fromEndpoints: [{}]}]\n- endpointSelector: {matchLabels: {app: a}}\n  ingressDeny: [{fromEndpoints: [{matchLabels: {app: b}}]}]\n";
    for p in load_file("d.yaml", text).expect("valid") {
        let key = p.key.clone();
        e.replace_policy(&key, Some(p));
    }
    let rules: Vec<(u32, String)> = e
        .rule_origins()
        .map(|(id, o)| (id, o.to_string()))
        .collect();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules[0].1.ends_with("specs[0].ingress[0]"), "{rules:?}");
    assert!(rules[1].1.ends_with("specs[1].ingressDeny[0]"), "{rules:?}");
    // Each id is its origin's, and a replaced policy's ids are gone (never reused).
    for (id, o) in &rules {
        assert_eq!(
            e.origin(*id).map(|x| x.to_string()).as_deref(),
            Some(o.as_str())
        );
    }
    for p in load_file("d.yaml", text).expect("valid") {
        let key = p.key.clone();
        e.replace_policy(&key, Some(p));
    }
    let again: Vec<u32> = e.rule_origins().map(|(id, _)| id).collect();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|id| rules.iter().all(|(old, _)| old < id)));
}

#[test]
fn retained_identity_survives_delete_and_recreate_until_released() {
    let mut e = Engine::new(EngineConfig {
        retain_unreferenced_identities: true,
        ..EngineConfig::default()
    });
    for p in load_file("p.yaml", ALLOW_B).expect("policy") {
        e.replace_policy(&p.key.clone(), Some(p));
    }
    e.add_endpoint(ep("x/a", "a", "10.0.0.1")).expect("a");
    let b = e.add_endpoint(ep("x/b", "b", "10.0.0.2")).expect("b");
    assert!(e.remove_endpoint("x/b"));
    // Re-created at a new address: same labels, same identity, and a's policy still names it.
    let again = e.add_endpoint(ep("x/b", "b", "10.0.0.9")).expect("b again");
    assert_eq!(again, b);
    assert_eq!(e.check(&tcp("x/b", "x/a", 80)).verdict, Verdict::Allow);
    // Nothing is collected while the identity is in use; once unused, collection releases it.
    assert!(e.release_unreferenced_identities().is_empty());
    assert!(e.remove_endpoint("x/b"));
    assert_eq!(e.release_unreferenced_identities(), vec![b]);
    assert!(e.identities().labels(b).is_none(), "released");
}

#[test]
fn without_retention_the_identity_goes_with_its_last_endpoint() {
    let mut e = Engine::new(EngineConfig::default());
    let b = e.add_endpoint(ep("x/b", "b", "10.0.0.2")).expect("b");
    assert!(e.remove_endpoint("x/b"));
    assert!(e.identities().labels(b).is_none());
}

const FQDN_EGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toFQDNs: [{matchName: api.example.test}, {matchPattern: '*.b.example.test'}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

fn egress_entry(e: &Engine, id: Identity, port: u16) -> bool {
    e.map_state("x/a")
        .expect("compiled")
        .entries
        .keys()
        .any(|k| {
            k.identity == id.0 && k.direction == crate::mapstate::DIR_EGRESS && k.dport == port
        })
}

#[test]
fn addresses_learned_from_dns_get_identities_that_fqdn_selectors_match() {
    let mut e = Engine::new(EngineConfig::default());
    e.add_endpoint(ep("x/a", "a", "10.0.0.1")).expect("a");
    let p = load_file("p.yaml", FQDN_EGRESS).expect("valid").remove(0);
    e.replace_policy(&p.key.clone(), Some(p));
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let names = |ns: &[&str]| ns.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let api = e
        .set_fqdn_names(ip, &names(&["API.example.test."]))
        .expect("set")
        .expect("identity");
    assert!(
        egress_entry(&e, api, 80),
        "matchName allows the learned address"
    );
    // Another name for the same address: a new label set, the old identity goes.
    let both = e
        .set_fqdn_names(ip, &names(&["api.example.test", "x.b.example.test"]))
        .expect("set")
        .expect("identity");
    assert_ne!(api, both);
    assert!(e.labels(api).is_none(), "released");
    assert!(egress_entry(&e, both, 80));
    assert!(!egress_entry(&e, api, 80));
    // A name no selector matches: an identity, but no entry.
    let other_ip: IpAddr = "192.0.2.11".parse().unwrap();
    let deep = e
        .set_fqdn_names(other_ip, &names(&["a.x.b.example.test"]))
        .expect("set")
        .expect("identity");
    assert!(!egress_entry(&e, deep, 80), "`*` matches exactly one label");
    // Forgetting the address removes its entries and its identity.
    assert_eq!(e.set_fqdn_names(ip, &BTreeSet::new()).expect("unset"), None);
    assert!(!egress_entry(&e, both, 80));
    assert!(e.labels(both).is_none());
    assert_eq!(e.fqdn_ips().len(), 1);
}

#[test]
fn a_restored_address_keeps_its_identity_and_its_entries_when_the_id_is_free() {
    use crate::identity::{Identity, LOCAL_SCOPE_CLUSTER};
    let names = |ns: &[&str]| ns.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let old = Identity::new(LOCAL_SCOPE_CLUSTER, 7);
    // A restarted agent: the address comes back before the endpoint and the policy.
    let mut e = Engine::new(EngineConfig::default());
    let got = e
        .restore_fqdn_names(ip, &names(&["api.example.test"]), old)
        .expect("restore")
        .expect("identity");
    assert_eq!(got, old, "the id it had");
    e.add_endpoint(ep("x/a", "a", "10.0.0.1")).expect("a");
    let p = load_file("p.yaml", FQDN_EGRESS).expect("valid").remove(0);
    e.replace_policy(&p.key.clone(), Some(p));
    assert!(egress_entry(&e, old, 80), "toFQDNs selects the restored id");
    // Another address learned later never gets that id.
    let other = e
        .set_fqdn_names("192.0.2.11".parse().unwrap(), &names(&["web.example.test"]))
        .expect("set")
        .expect("identity");
    assert_ne!(other, old);
    // An id already taken (or not node-local) is not bound: a fresh one instead.
    let taken = e
        .restore_fqdn_names(
            "192.0.2.12".parse().unwrap(),
            &names(&["db.example.test"]),
            old,
        )
        .expect("restore")
        .expect("identity");
    assert!(taken != old && taken.is_local_scope());
    let cluster = e
        .restore_fqdn_names(
            "192.0.2.13".parse().unwrap(),
            &names(&["x.example.test"]),
            Identity::new(0, 7_000),
        )
        .expect("restore")
        .expect("identity");
    assert!(cluster.is_local_scope());
}

/// x/a may reach pods labelled `app=db` on their named port `pg` only.
const TO_DB_PG: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-db, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: db}}}]\n    ports: [{port: pg}]\n";

#[test]
fn egress_named_ports_resolve_against_pods_on_other_nodes() {
    // Node 1's engine: x/a is local; x/db runs on node 2, known by identity and address.
    let mut e = Engine::new(EngineConfig::default());
    let db_labels = e.endpoint_labels(&ep("x/db", "db", "10.0.2.5"));
    // The id the control plane gave db's label set.
    let db_id = Identity(5000);
    e.add_endpoint(ep("x/a", "a", "10.0.1.5")).expect("a");
    e.bind_identity(db_id, db_labels).expect("bind db");
    let p = load_file("p.yaml", TO_DB_PG).expect("valid").remove(0);
    e.replace_policy(&p.key.clone(), Some(p));
    let egress = |e: &Engine, port| {
        e.map_state("x/a")
            .expect("compiled")
            .lookup_identity(Direction::Egress, db_id, proto::TCP, port)
            .is_some_and(|(_, v)| !crate::mapstate::is_fallback(&v))
    };
    assert!(
        !egress(&e, 5432),
        "db's ports are unknown: `pg` resolves to nothing"
    );
    let pg = NamedPort {
        name: "pg".into(),
        port: 5432,
        protocol: proto::TCP,
    };
    assert!(e.set_remote_pod("10.0.2.5".parse().unwrap(), Some((db_id, vec![pg.clone()]))));
    assert!(
        e.take_changed().contains("x/a"),
        "a's policy was recompiled"
    );
    assert!(egress(&e, 5432), "`pg` is db's 5432");
    assert!(!egress(&e, 5433));
    assert!(!e.set_remote_pod("10.0.2.5".parse().unwrap(), Some((db_id, vec![pg]))));
    assert!(e.set_remote_pod("10.0.2.5".parse().unwrap(), None));
    assert!(
        !egress(&e, 5432),
        "db is gone: `pg` resolves to nothing again"
    );
}

#[test]
fn ip_blocks_match_pods_on_other_nodes() {
    // Node 1's engine: x/a is local, with an egress ipBlock over node 2's pod /24 except one
    // address; pods on node 2 are known only by address and identity.
    let mut e = Engine::new(EngineConfig::default());
    e.add_endpoint(ep("x/a", "a", "10.0.1.5")).expect("a");
    let p = load_file(
        "p.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: cidr, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n  egress:\n    - to: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.9/32]}}]\n",
    )
    .expect("valid")
    .remove(0);
    e.replace_policy(&p.key.clone(), Some(p));
    let peers = |e: &Engine| -> Vec<String> {
        e.map_state("x/a")
            .expect("compiled")
            .pod_ip_entries(&e.pod_ips())
            .iter()
            .map(|x| x.peer.to_string())
            .collect()
    };
    assert!(peers(&e).is_empty(), "no pod in the block yet");
    assert!(e.set_remote_pod("10.0.2.5".parse().unwrap(), Some((Identity(5000), vec![]))));
    assert!(e.set_remote_pod("10.0.2.9".parse().unwrap(), Some((Identity(5001), vec![]))));
    assert!(e.set_remote_pod("10.0.3.5".parse().unwrap(), Some((Identity(5002), vec![]))));
    assert_eq!(e.pod_ips().len(), 4, "local and remote pods");
    assert_eq!(
        peers(&e),
        ["10.0.2.5"],
        "inside the block, outside its except"
    );
    assert!(!e.set_remote_pod("10.0.2.5".parse().unwrap(), Some((Identity(5000), vec![]))));
    assert!(e.set_remote_pod("10.0.2.5".parse().unwrap(), None));
    assert!(peers(&e).is_empty(), "the pod left");
}

#[test]
fn policy_prefixes_get_node_local_identities_that_their_selectors_match() {
    let mut e = Engine::new(EngineConfig::default());
    e.add_endpoint(ep("x/a", "a", "10.0.1.5")).expect("a");
    let p = load_file(
        "p.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: out, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  egress:\n    - toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]\n    - toCIDR: [0.0.0.0/0]\n      toPorts: [{ports: [{port: \"53\", protocol: UDP}]}]\n",
    )
    .expect("valid")
    .remove(0);
    e.replace_policy(&p.key.clone(), Some(p.clone()));
    let ids = e.sync_cidr_identities().expect("sync").clone();
    let block: ipnet::IpNet = "203.0.113.0/24".parse().unwrap();
    let except: ipnet::IpNet = "203.0.113.128/25".parse().unwrap();
    assert_eq!(
        ids.keys().copied().collect::<Vec<_>>(),
        [block, except],
        "the block and its exception; /0 is world's"
    );
    assert!(ids.values().all(|id| id.is_local_scope()));
    let allowed = |e: &Engine, id: Identity, port| {
        e.map_state("x/a")
            .expect("compiled")
            .lookup_identity(Direction::Egress, id, proto::TCP, port)
            .is_some_and(|(_, v)| {
                !crate::mapstate::is_fallback(&v) && v.verdict != crate::mapstate::VERDICT_DENY
            })
    };
    assert!(
        allowed(&e, ids[&block], 443),
        "the block's identity is selected"
    );
    assert!(!allowed(&e, ids[&except], 443), "the exception's is not");
    // Idempotent; the prefixes go with the policy and their identities are released.
    assert_eq!(e.sync_cidr_identities().expect("again"), &ids);
    e.replace_policy(&p.key.clone(), None);
    assert!(e.sync_cidr_identities().expect("after delete").is_empty());
}

const ALLOW_B_NAMED: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-b-http, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]\n    ports: [{port: http}]\n";

fn with_http(mut spec: EndpointSpec, port: u16) -> EndpointSpec {
    spec.ports = vec![NamedPort {
        name: "http".into(),
        port,
        protocol: proto::TCP,
    }];
    spec
}

fn shared(e: &Engine, x: &str, y: &str) -> bool {
    Arc::ptr_eq(
        e.shared_map_state(x).expect("x compiled"),
        e.shared_map_state(y).expect("y compiled"),
    )
}

#[test]
fn endpoints_of_one_identity_share_their_compiled_state_until_it_differs() {
    let mut e = Engine::new(EngineConfig::default());
    let p = load_file("p.yaml", ALLOW_B_NAMED).expect("valid").remove(0);
    e.replace_policy(&p.key.clone(), Some(p));
    let a1 = e
        .add_endpoint(with_http(ep("x/a1", "a", "10.0.0.1"), 80))
        .expect("a1");
    let a2 = e
        .add_endpoint(with_http(ep("x/a2", "a", "10.0.0.2"), 80))
        .expect("a2");
    let a3 = e
        .add_endpoint(with_http(ep("x/a3", "a", "10.0.0.3"), 8080))
        .expect("a3");
    assert!(a1 == a2 && a2 == a3, "one label set, one identity");
    let labels = |n: &str| Arc::clone(&e.endpoints()[n].spec.labels);
    assert!(
        Arc::ptr_eq(&labels("x/a1"), &labels("x/a3")),
        "one copy of the labels"
    );
    let spec = |n: &str| e.endpoints()[n].spec.clone();
    assert!(
        Arc::ptr_eq(&spec("x/a1").namespace, &spec("x/a3").namespace)
            && Arc::ptr_eq(&spec("x/a1").service_account, &spec("x/a3").service_account),
        "one copy of the namespace and service account"
    );
    // No peer yet: the named port resolves into no entry, so all three states are equal.
    assert!(shared(&e, "x/a1", "x/a2") && shared(&e, "x/a1", "x/a3"));

    // A peer edits every state; the endpoints that got the same edit share again, and a3,
    // whose `http` is 8080, gets its own.
    e.add_endpoint(ep("x/b1", "b", "10.0.0.8")).expect("b1");
    assert!(shared(&e, "x/a1", "x/a2"), "equal states are stored once");
    assert!(!shared(&e, "x/a1", "x/a3"), "a3's state differs");
    // A second peer identity (one more label): the same once more.
    let mut b = ep("x/b", "b", "10.0.0.9");
    Arc::make_mut(&mut b.labels).insert("v".into(), "2".into());
    let b = e.add_endpoint(b).expect("b");
    assert!(shared(&e, "x/a1", "x/a2"));
    assert!(!shared(&e, "x/a1", "x/a3"));
    assert_eq!(e.check(&tcp("x/b", "x/a2", 80)).verdict, Verdict::Allow);
    assert_eq!(e.check(&tcp("x/b", "x/a3", 80)).verdict, Verdict::Deny);
    assert_eq!(e.check(&tcp("x/b", "x/a3", 8080)).verdict, Verdict::Allow);
    // Each state was compiled for its own endpoint, shared or not.
    for name in ["x/a1", "x/a2", "x/a3"] {
        let ep = e.endpoints().get(name).expect("endpoint").clone();
        assert_eq!(
            e.map_state(name).expect("compiled"),
            &e.compile_endpoint(&ep),
            "{name}"
        );
    }

    // Releasing the peer's identity drops its entries from every state, still shared, and
    // forgets its own state even while someone (a map writer) still holds it.
    let held = Arc::clone(e.shared_map_state("x/b").expect("b compiled"));
    assert!(e.remove_endpoint("x/b"));
    assert!(!e.states.contains_key(&b));
    drop(held);
    assert!(shared(&e, "x/a1", "x/a2"));
    for name in ["x/a1", "x/a2", "x/a3"] {
        let m = e.map_state(name).expect("compiled");
        assert!(m.entries.keys().all(|k| k.identity != b.0), "{name}");
    }

    // One endpoint leaving does not touch the state the others hold.
    let before = e.map_state("x/a2").expect("compiled").clone();
    assert!(e.remove_endpoint("x/a1"));
    assert_eq!(e.map_state("x/a2"), Some(&before));
    assert!(e.map_state("x/a1").is_none());
}
