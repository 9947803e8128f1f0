//! Property: for random worlds and policies, the compiled-entry lookup (the datapath's) gives the
//! same verdict, audit flag and rule as evaluating the rules directly; whether endpoints arrive
//! before the policies (full compile) or after them (incremental identity updates).

use std::collections::BTreeMap;
use std::net::IpAddr;

use palisade_policy::engine::{EndpointSpec, Engine, EngineConfig, NamedPort};
use palisade_policy::identity::Identity;
use palisade_policy::ir::{Direction, proto};
use palisade_policy::load;
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Ep {
    ns: &'static str,
    app: &'static str,
    tier: Option<&'static str>,
    http_port: Option<u16>,
}

fn ep_strategy() -> impl Strategy<Value = Ep> {
    (
        prop::sample::select(vec!["x", "y"]),
        prop::sample::select(vec!["a", "b", "c"]),
        prop::option::of(prop::sample::select(vec!["web", "db"])),
        prop::option::of(prop::sample::select(vec![80u16, 8080])),
    )
        .prop_map(|(ns, app, tier, http_port)| Ep {
            ns,
            app,
            tier,
            http_port,
        })
}

fn peer_strategy(k8s: bool) -> BoxedStrategy<Value> {
    if k8s {
        prop_oneof![
            prop::sample::select(vec!["a", "b", "c"]).prop_map(|a| json!({"podSelector": {"matchLabels": {"app": a}}})),
            Just(json!({"namespaceSelector": {}})),
            prop::sample::select(vec!["x", "y"])
                .prop_map(|n| json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": n}}, "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}})),
            Just(json!({"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.2/32"]}})),
            Just(json!({"ipBlock": {"cidr": "203.0.113.0/24"}})),
        ]
        .boxed()
    } else {
        prop_oneof![
            prop::sample::select(vec!["a", "b", "c"]).prop_map(|a| json!({"fromEndpoints": [{"matchLabels": {"app": a}}]})),
            Just(json!({"fromEndpoints": [{}]})),
            Just(json!({"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "y"}}]})),
            prop::sample::select(vec!["world", "cluster", "host", "all"]).prop_map(|e| json!({"fromEntities": [e]})),
            Just(json!({"fromCIDRSet": [{"cidr": "203.0.113.0/24", "except": ["203.0.113.2/32"]}]})),
            Just(json!({})),
        ]
        .boxed()
    }
}

fn ports_strategy(k8s: bool) -> BoxedStrategy<Option<Value>> {
    if k8s {
        prop::option::of(prop_oneof![
            Just(json!([{"port": 80}])),
            Just(json!([{"port": 53, "protocol": "UDP"}])),
            Just(json!([{"port": 70, "endPort": 90}])),
            Just(json!([{"port": "http"}])),
            Just(json!([{"protocol": "UDP"}])),
        ])
        .boxed()
    } else {
        prop::option::of(prop_oneof![
            Just(json!([{"ports": [{"port": "80", "protocol": "TCP"}]}])),
            Just(json!([{"ports": [{"port": "53", "protocol": "UDP"}]}])),
            Just(json!([{"ports": [{"port": "70", "endPort": 90, "protocol": "TCP"}]}])),
            Just(json!([{"ports": [{"port": "http", "protocol": "TCP"}]}])),
            Just(json!([{"ports": [{"port": "80"}]}])),
            Just(json!([{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}}])),
        ])
        .boxed()
    }
}

#[derive(Debug, Clone)]
struct Pol {
    kind: u8,
    ns: &'static str,
    subject_app: Option<&'static str>,
    audit: bool,
    rules: Vec<(bool, bool, Value, Option<Value>, bool)>, // (egress, deny, peer, ports, icmp)
    default_deny_off: bool,
}

fn pol_strategy() -> impl Strategy<Value = Pol> {
    (
        0u8..3,
        prop::sample::select(vec!["x", "y"]),
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.15),
    )
        .prop_flat_map(|(kind, ns, subject_app, audit, default_deny_off)| {
            let k8s = kind == 2;
            prop::collection::vec(
                (
                    any::<bool>(),
                    prop::bool::weighted(0.3),
                    peer_strategy(k8s),
                    ports_strategy(k8s),
                    prop::bool::weighted(0.1),
                ),
                1..4,
            )
            .prop_map(move |rules| Pol {
                kind,
                ns,
                subject_app,
                audit,
                rules,
                default_deny_off,
            })
        })
}

fn to_object(i: usize, p: &Pol) -> Value {
    let annotations = if p.audit {
        json!({"policy.palisade.io/audit": "true"})
    } else {
        json!({})
    };
    let sel = match p.subject_app {
        Some(a) => json!({"matchLabels": {"app": a}}),
        None => json!({}),
    };
    if p.kind == 2 {
        let mut ingress = vec![];
        let mut egress = vec![];
        for (eg, _deny, peer, ports, _) in &p.rules {
            let mut r = serde_json::Map::new();
            r.insert(if *eg { "to" } else { "from" }.into(), json!([peer]));
            if let Some(ps) = ports {
                r.insert("ports".into(), ps.clone());
            }
            if *eg {
                egress.push(Value::Object(r))
            } else {
                ingress.push(Value::Object(r))
            }
        }
        return json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("p{i}"), "namespace": p.ns, "annotations": annotations},
            "spec": {"podSelector": sel, "ingress": ingress, "egress": egress}});
    }
    let mut spec = serde_json::Map::new();
    spec.insert("endpointSelector".into(), sel);
    for (eg, deny, peer, ports, icmp) in &p.rules {
        let mut r = serde_json::Map::new();
        if let Value::Object(m) = peer {
            for (k, v) in m {
                let k = if *eg {
                    k.replacen("from", "to", 1)
                } else {
                    k.clone()
                };
                r.insert(k, v.clone());
            }
        }
        if let Some(Value::Array(ps)) = ports {
            let mut ps = ps.clone();
            if *deny {
                for p in ps.iter_mut() {
                    if let Value::Object(m) = p {
                        m.remove("rules");
                    }
                }
            }
            r.insert("toPorts".into(), Value::Array(ps));
        }
        if *icmp {
            r.insert("icmps".into(), json!([{"fields": [{"type": 8}]}]));
        }
        let section = match (eg, deny) {
            (false, false) => "ingress",
            (false, true) => "ingressDeny",
            (true, false) => "egress",
            (true, true) => "egressDeny",
        };
        let e = spec.entry(section).or_insert_with(|| json!([]));
        if let Value::Array(a) = e {
            a.push(Value::Object(r));
        }
    }
    if p.default_deny_off {
        spec.insert(
            "enableDefaultDeny".into(),
            json!({"ingress": false, "egress": false}),
        );
    }
    let kind = if p.kind == 0 {
        "CiliumNetworkPolicy"
    } else {
        "CiliumClusterwideNetworkPolicy"
    };
    let mut meta = json!({"name": format!("p{i}"), "annotations": annotations});
    if p.kind == 0 {
        meta["namespace"] = json!(p.ns);
    }
    json!({"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": Value::Object(spec)})
}

fn build(eps: &[Ep], pols: &[Pol], endpoints_first: bool) -> Engine {
    let mut engine = Engine::new(EngineConfig::default());
    let text: String = pols
        .iter()
        .enumerate()
        .map(|(i, p)| format!("---\n{}\n", to_object(i, p)))
        .collect();
    let policies = load::load_file("gen.yaml", &text).expect("generated policies are valid");
    let add_eps = |engine: &mut Engine| {
        for (i, e) in eps.iter().enumerate() {
            let mut labels = BTreeMap::from([("app".to_string(), e.app.to_string())]);
            if let Some(t) = e.tier {
                labels.insert("tier".into(), t.into());
            }
            let ports = e
                .http_port
                .map(|p| {
                    vec![NamedPort {
                        name: "http".into(),
                        port: p,
                        protocol: proto::TCP,
                    }]
                })
                .unwrap_or_default();
            let spec = EndpointSpec {
                name: format!("{}/p{i}", e.ns).into(),
                namespace: e.ns.into(),
                labels: std::sync::Arc::new(labels),
                service_account: "default".into(),
                ip: format!("10.0.0.{}", i + 1).parse().expect("ip"),
                ports,
            };
            engine.add_endpoint(spec).expect("endpoint");
        }
        engine
            .add_external("ext1", "203.0.113.1".parse().expect("ip"))
            .expect("ext");
        engine
            .add_external("ext2", "203.0.113.2".parse().expect("ip"))
            .expect("ext");
        engine
            .add_external("ext3", "198.51.100.1".parse().expect("ip"))
            .expect("ext");
    };
    if endpoints_first {
        add_eps(&mut engine);
    }
    for p in policies {
        let key = p.key.clone();
        engine.replace_policy(&key, Some(p));
    }
    if !endpoints_first {
        add_eps(&mut engine);
    }
    engine
}

fn check_all(engine: &Engine) -> Result<(), TestCaseError> {
    let mut peers: Vec<(Identity, Option<IpAddr>, String)> = engine
        .endpoints()
        .values()
        .map(|e| (e.identity, Some(e.spec.ip), e.spec.name.to_string()))
        .collect();
    peers.extend(
        engine
            .externals()
            .values()
            .map(|x| (x.identity, None, x.name.clone())),
    );
    peers.push((Identity::HOST, None, "host".into()));
    for ep in engine.endpoints().values() {
        let m = engine.map_state(&ep.spec.name).expect("compiled");
        for dir in [Direction::Ingress, Direction::Egress] {
            for (pid, pip, pname) in &peers {
                for (protocol, port) in [
                    (proto::TCP, 80u16),
                    (proto::TCP, 8080),
                    (proto::TCP, 69),
                    (proto::TCP, 70),
                    (proto::TCP, 90),
                    (proto::TCP, 91),
                    (proto::UDP, 53),
                    (proto::UDP, 80),
                    (proto::ICMP, 8),
                    (proto::SCTP, 80),
                ] {
                    let got = m.lookup(dir, *pid, *pip, protocol, port).value;
                    let want = engine.evaluate_direct(ep, dir, *pid, *pip, protocol, port);
                    prop_assert_eq!(
                        got.map(|v| (v.verdict, v.flags, v.rule)),
                        want.map(|v| (v.verdict, v.flags, v.rule)),
                        "{} {} peer {} {}/{}",
                        ep.spec.name,
                        dir,
                        pname,
                        protocol,
                        port
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn compiled_lookup_agrees_with_direct_evaluation(
        eps in prop::collection::vec(ep_strategy(), 2..6),
        pols in prop::collection::vec(pol_strategy(), 1..5),
    ) {
        let full = build(&eps, &pols, true);
        let incremental = build(&eps, &pols, false);
        check_all(&full)?;
        check_all(&incremental)?;
        // The incremental path builds exactly the entries a full compile does.
        for name in full.endpoints().keys() {
            let a = full.map_state(name).expect("compiled");
            let b = incremental.map_state(name).expect("compiled");
            prop_assert_eq!(&a.entries, &b.entries, "{}", name);
            // Removing and re-adding an endpoint (it gets a fresh identity) leaves no entry for
            // the old identity and keeps every lookup equal to direct evaluation.
            let mut c = full.clone();
            let spec = c.endpoints()[name].spec.clone();
            let old = c.endpoints()[name].identity;
            let shared = c.endpoints().values().filter(|e| e.identity == old).count() > 1;
            c.remove_endpoint(name);
            c.add_endpoint(spec).expect("re-add");
            if !shared {
                for n in c.endpoints().keys() {
                    prop_assert!(c.map_state(n).expect("compiled").entries.keys().all(|k| k.identity != old.0), "{} keeps {}", n, old);
                }
            }
            check_all(&c)?;
        }
    }
}
