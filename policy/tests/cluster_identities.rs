//! Identities allocated by the control plane: bound into an agent's engine, they make remote
//! pods match selectors, local pods with the same labels share them, and unbinding removes
//! every entry naming them.

use std::collections::BTreeMap;

use palisade_policy::engine::{EndpointSpec, Engine, EngineConfig};
use palisade_policy::identity::Identity;
use palisade_policy::ir::{Direction, proto};
use palisade_policy::labels::LabelSet;
use palisade_policy::load;

const ALLOW_WEB_TO_DB: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

fn pod(name: &str, app: &str, ip: &str) -> EndpointSpec {
    EndpointSpec {
        name: format!("prod/{name}").into(),
        namespace: "prod".into(),
        labels: std::sync::Arc::new(BTreeMap::from([("app".to_string(), app.to_string())])),
        service_account: "default".into(),
        ip: ip.parse().expect("ip"),
        ports: Vec::new(),
    }
}

fn verdict(engine: &Engine, subject: &str, peer: Identity) -> Option<u8> {
    engine
        .map_state(subject)
        .expect("compiled")
        .lookup(Direction::Ingress, peer, None, proto::TCP, 5432)
        .value
        .map(|v| v.verdict)
}

fn engine_with_policy() -> Engine {
    let mut engine = Engine::new(EngineConfig::default());
    for p in load::load_file("db.yaml", ALLOW_WEB_TO_DB).expect("valid policy") {
        let key = p.key.clone();
        engine.replace_policy(&key, Some(p));
    }
    engine
}

#[test]
fn a_bound_remote_identity_is_allowed_by_label_and_unbinding_removes_it() {
    let mut engine = engine_with_policy();
    engine
        .add_endpoint(pod("db", "db", "10.0.0.1"))
        .expect("db");
    let web_labels = engine.endpoint_labels(&pod("web", "web", "10.0.1.1"));
    let web = Identity(70_000);
    let other = Identity(70_001);
    assert!(engine.bind_identity(web, web_labels.clone()).expect("bind"));
    let other_labels = engine.endpoint_labels(&pod("x", "cache", "10.0.1.2"));
    assert!(engine.bind_identity(other, other_labels).expect("bind"));
    let allowed = verdict(&engine, "prod/db", web);
    assert!(
        allowed.is_some_and(|v| v != 0),
        "web → db allowed: {allowed:?}"
    );
    assert_eq!(verdict(&engine, "prod/db", other), None, "cache is not web");
    // Binding the same pair again is a no-op.
    assert!(
        !engine
            .bind_identity(web, web_labels.clone())
            .expect("rebind")
    );
    // The same labels under a second id (two nodes bound a new set from their id blocks): an
    // alias, allowed by the same rules while the cluster converges on one of them.
    let alias = Identity(70_002);
    assert!(
        engine
            .bind_identity(alias, web_labels.clone())
            .expect("alias")
    );
    assert!(verdict(&engine, "prod/db", alias).is_some_and(|v| v != 0));
    assert!(engine.set_canonical_identity(alias));
    assert!(engine.unbind_identity(alias));
    assert_eq!(verdict(&engine, "prod/db", alias), None);
    // An id already bound to other labels conflicts.
    let err = engine
        .bind_identity(other, web_labels)
        .expect_err("id already bound");
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("cache")),
        "{err}: {cause:?}"
    );
    assert!(engine.unbind_identity(web));
    assert_eq!(
        verdict(&engine, "prod/db", web),
        None,
        "entries naming it are gone"
    );
    assert!(engine.labels(web).is_none());
}

#[test]
fn a_local_pod_takes_the_identity_bound_for_its_labels() {
    // As in the agent: the control plane, not the engine, decides when an identity goes.
    let mut engine = Engine::new(EngineConfig {
        retain_unreferenced_identities: true,
        ..EngineConfig::default()
    });
    let spec = pod("web", "web", "10.0.0.2");
    let id = Identity(80_000);
    engine
        .bind_identity(id, engine.endpoint_labels(&spec))
        .expect("bind");
    assert_eq!(engine.add_endpoint(spec).expect("web"), id);
    // A local endpoint holds its identity: unbinding is refused while it exists.
    assert!(!engine.unbind_identity(id));
    engine.remove_endpoint("prod/web");
    assert!(engine.unbind_identity(id));
}

#[test]
fn label_sets_round_trip_through_the_control_planes_strings() {
    let engine = Engine::new(EngineConfig::default());
    let labels = engine.endpoint_labels(&pod("web", "web", "10.0.0.2"));
    let strings = labels.to_strings();
    assert!(strings.contains(&"k8s:app=web".to_string()), "{strings:?}");
    assert_eq!(LabelSet::from_strings(&strings).expect("parse"), labels);
    let err = LabelSet::from_strings(&["app=web"]).expect_err("no source");
    assert!(err.contains("labels[0]"), "{err}");
    let err = LabelSet::from_strings(&["k8s:app", "bogus:x=y"]).expect_err("bad source");
    assert!(err.contains("labels[1]") && err.contains("bogus"), "{err}");
}

#[test]
fn take_changed_reports_only_the_endpoints_a_change_touched() {
    let mut engine = engine_with_policy();
    engine
        .add_endpoint(pod("db", "db", "10.0.0.1"))
        .expect("db");
    engine
        .add_endpoint(pod("cache", "cache", "10.0.0.3"))
        .expect("cache");
    assert_eq!(engine.take_changed().len(), 2, "both were compiled");
    assert!(engine.take_changed().is_empty(), "taken once");
    // A web pod appears: its own state, and db's (its ingress now names web); not cache's.
    engine
        .add_endpoint(pod("web", "web", "10.0.0.2"))
        .expect("web");
    let changed = engine.take_changed();
    assert!(
        changed.contains("prod/web") && changed.contains("prod/db"),
        "{changed:?}"
    );
    assert!(!changed.contains("prod/cache"), "{changed:?}");
    engine.remove_endpoint("prod/cache");
    assert_eq!(
        engine.take_changed().into_iter().collect::<Vec<_>>(),
        vec![std::sync::Arc::<str>::from("prod/cache")]
    );
}
