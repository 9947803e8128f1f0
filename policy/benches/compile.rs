//! Policy engine benchmarks: a full compile of 1,000 policies against 10,000 identities, and the
//! two incremental updates (one identity appears; one policy changes).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-policy cargo bench -p palisade-policy --bench compile -- --measurement-time 5
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_policy::engine::{EndpointSpec, Engine, EngineConfig};
use palisade_policy::ir::NormalizedPolicy;
use palisade_policy::load;

const IDENTITIES: usize = 10_000;
const POLICIES: usize = 1_000;

fn endpoint(i: usize) -> EndpointSpec {
    let ns = format!("ns{}", i % 100);
    EndpointSpec {
        name: format!("{ns}/pod{i}").into(),
        namespace: ns.into(),
        labels: std::sync::Arc::new(BTreeMap::from([
            ("app".to_string(), format!("app{}", i % 1000)),
            ("instance".to_string(), i.to_string()),
        ])),
        service_account: "default".into(),
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000u32 + i as u32)),
        ports: vec![],
    }
}

/// Policy `k`: selects app{k} (10 identities) in ns{k%100}; allows app{k+100} on 80 and
/// 8000-8100, denies app{k+200}, egress to app{k+300} on 5432, to world and a CIDR. Every tenth
/// is a NetworkPolicy, every tenth+1 a CCNP.
fn policy_text(k: usize, port: u16) -> String {
    let ns = format!("ns{}", k % 100);
    let app = |d: usize| format!("app{}", (k + d) % 1000);
    match k % 10 {
        0 => format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: {a}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: {b}}}}}}}, {{ipBlock: {{cidr: 10.0.0.0/20, except: [10.0.1.0/24]}}}}]\n    ports: [{{port: {port}}}, {{port: 8000, endPort: 8100}}]\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}}}]\n",
            a = app(0),
            b = app(100)
        ),
        1 => format!(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: p{k}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {a}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: {b}}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n  ingressDeny:\n  - fromEntities: [world]\n",
            a = app(0),
            b = app(100)
        ),
        _ => format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{k}, namespace: {ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {a}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: {b}}}}}]\n    toPorts:\n    - ports: [{{port: \"{port}\", protocol: TCP}}, {{port: \"8000\", endPort: 8100, protocol: TCP}}]\n      rules: {{http: [{{method: GET, path: /api/.*}}]}}\n  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{app: {c}}}}}]\n  egress:\n  - toEndpoints: [{{matchLabels: {{app: {d}}}}}]\n    toPorts: [{{ports: [{{port: \"5432\", protocol: TCP}}]}}]\n  - toEntities: [world]\n    toPorts: [{{ports: [{{port: \"443\"}}]}}]\n  - toCIDRSet: [{{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]\n",
            a = app(0),
            b = app(100),
            c = app(200),
            d = app(300)
        ),
    }
}

fn policies(port: u16) -> Vec<NormalizedPolicy> {
    (0..POLICIES)
        .flat_map(|k| {
            load::load_file("bench.yaml", &policy_text(k, port)).expect("valid bench policy")
        })
        .collect()
}

fn world() -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    for i in 0..IDENTITIES {
        e.add_endpoint(endpoint(i)).expect("endpoint");
    }
    for p in policies(80) {
        let key = p.key.clone();
        e.replace_policy(&key, Some(p));
    }
    e
}

fn bench(c: &mut Criterion) {
    let pols = policies(80);
    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function("compile_1000_policies_10000_identities", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let pols = pols.clone();
                let start = Instant::now();
                let mut e = Engine::new(EngineConfig::default());
                for i in 0..IDENTITIES {
                    e.add_endpoint(endpoint(i)).expect("endpoint");
                }
                for p in pols {
                    let key = p.key.clone();
                    e.replace_policy(&key, Some(p));
                }
                total += start.elapsed();
                black_box(&e);
            }
            total
        })
    });
    g.finish();

    let mut e = world();
    let entries: usize = e
        .endpoints()
        .keys()
        .filter_map(|n| e.map_state(n))
        .map(|m| m.entries.len())
        .sum();
    eprintln!(
        "world: {} endpoints, {} policies, {} selectors, {} map entries",
        e.endpoints().len(),
        POLICIES,
        e.selector_cache().len(),
        entries
    );

    let mut g = c.benchmark_group("policy_incremental");
    g.sample_size(20);
    let mut n = IDENTITIES;
    g.bench_function("identity_appears", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // A new pod with a new label set, selected by and peering with existing policies.
                let spec = endpoint(n);
                let name = spec.name.clone();
                n += 1;
                let start = Instant::now();
                e.add_endpoint(spec).expect("endpoint");
                total += start.elapsed();
                e.remove_endpoint(&name);
            }
            total
        })
    });
    let changed = load::load_file("bench.yaml", &policy_text(5, 81))
        .expect("valid")
        .remove(0);
    let original = load::load_file("bench.yaml", &policy_text(5, 80))
        .expect("valid")
        .remove(0);
    let key = original.key.clone();
    let mut flip = false;
    g.bench_function("policy_changes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let p = if flip {
                    original.clone()
                } else {
                    changed.clone()
                };
                flip = !flip;
                let start = Instant::now();
                black_box(e.replace_policy(&key, Some(p)));
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
