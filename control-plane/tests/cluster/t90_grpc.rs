//! The automation gRPC API (`--grpc-listen`): policy writes and reads through a follower,
//! invalid input refused with the field, the change stream resumed on another member after the
//! one serving it is SIGKILLed, bearer-token roles, and `Wait` naming the node that never acks;
//! with `--tls-dir`, TLS only and node certificates may read and watch only.

use std::path::Path;
use std::time::Duration;

use palisade_api::grpc::WAIT_FAILURE_METADATA;
use palisade_api::grpc::v1;
use palisade_api::grpc::v1::cluster_service_client::ClusterServiceClient;
use palisade_api::grpc::v1::node_service_client::NodeServiceClient;
use palisade_api::grpc::v1::policy_service_client::PolicyServiceClient;
use palisade_api::grpc::v1::watch_service_client::WatchServiceClient;
use prost::Message;
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Streaming};

use crate::fixture::{TestCluster, certs, policy, tls_client};

const ADMIN: &str = "admin-0123456789abcdef";
const READ: &str = "read-0123456789abcdef";
const MEMBER: &str = "member-0123456789abcdef";

/// `msg` with `authorization: Bearer TOKEN` when a token is given.
fn authed<T>(msg: T, token: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(r)
}

fn key(name: &str) -> Option<v1::PolicyKey> {
    Some(v1::PolicyKey {
        kind: "CiliumNetworkPolicy".into(),
        namespace: "default".into(),
        name: name.into(),
    })
}

fn apply(name: &str, object: &Value) -> v1::ApplyPolicyRequest {
    v1::ApplyPolicyRequest {
        key: key(name),
        object_json: object.to_string(),
    }
}

async fn channel(c: &TestCluster, id: u64) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(c.grpc_url(id))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// The next `n` changes of a watch stream (each within 10 s).
async fn next_changes(s: &mut Streaming<v1::Change>, n: usize) -> anyhow::Result<Vec<v1::Change>> {
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), s.message()).await??;
        match next {
            Some(c) => out.push(c),
            None => anyhow::bail!("the watch ended after {} changes", out.len()),
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automation_api_over_grpc() -> anyhow::Result<()> {
    let mut c = TestCluster::new(3, &[])?;
    c.grpc = true;
    let dir = c.dir.path().to_owned();
    for (name, token) in [("admin", ADMIN), ("read", READ), ("member", MEMBER)] {
        let path = dir.join(format!("{name}.tokens"));
        std::fs::write(&path, format!("{token}\n"))?;
        c.extra_args.push(format!("--{name}-token-file"));
        c.extra_args.push(path.display().to_string());
    }
    for id in 1..=3 {
        c.spawn(id, id == 1)?;
    }
    c.token = Some(ADMIN.to_owned());
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20)).await?;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let (served_by, other) = (followers[0], followers[1]);
    let mut policies = PolicyServiceClient::new(channel(&c, served_by).await?);

    // Unauthenticated and read-role writes are refused; nothing is committed.
    let e = policies
        .apply(authed(apply("web", &policy("web", 80)), None)?)
        .await
        .err();
    assert_eq!(
        e.as_ref().map(|e| e.code()),
        Some(Code::Unauthenticated),
        "{e:?}"
    );
    let e = policies
        .apply(authed(apply("web", &policy("web", 80)), Some(READ))?)
        .await
        .err();
    assert_eq!(
        e.as_ref().map(|e| e.code()),
        Some(Code::PermissionDenied),
        "{e:?}"
    );
    assert!(
        e.is_some_and(|e| e.message().contains("read token") && e.message().contains("admin")),
        "the refusal names the roles"
    );
    let list = policies
        .list(authed(v1::ListPoliciesRequest::default(), Some(READ))?)
        .await?
        .into_inner();
    assert_eq!((list.revision, list.items.len()), (0, 0), "{list:?}");

    // A watch from 0 on a follower (read role), before any write.
    let mut watch = WatchServiceClient::new(channel(&c, served_by).await?);
    let mut stream = watch
        .watch(authed(v1::WatchRequest { from_revision: 0 }, Some(READ))?)
        .await?
        .into_inner();

    // Apply, re-apply, get, list and delete through the follower.
    let w = policies
        .apply(authed(apply("web", &policy("web", 80)), Some(ADMIN))?)
        .await?
        .into_inner();
    assert_eq!((w.revision, w.changed), (1, true));
    let w = policies
        .apply(authed(apply("web", &policy("web", 80)), Some(ADMIN))?)
        .await?
        .into_inner();
    assert_eq!(
        (w.revision, w.changed),
        (1, false),
        "an identical re-apply does not bump"
    );
    let p = policies
        .get(authed(
            v1::GetPolicyRequest {
                key: key("web"),
                consistency: v1::Consistency::Linearizable.into(),
            },
            Some(READ),
        )?)
        .await?
        .into_inner();
    assert_eq!(p.revision, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&p.object_json)?,
        policy("web", 80)
    );
    let w = policies
        .apply(authed(apply("db", &policy("db", 5432)), Some(ADMIN))?)
        .await?
        .into_inner();
    assert_eq!(w.revision, 2);

    // Invalid input: INVALID_ARGUMENT naming the field, nothing committed.
    let mut bad_port = policy("web", 81);
    bad_port["spec"]["ingress"] =
        json!([{"toPorts": [{"ports": [{"port": "70000", "protocol": "TCP"}]}]}]);
    let e = policies
        .apply(authed(apply("web", &bad_port), Some(ADMIN))?)
        .await
        .err();
    assert_eq!(
        e.as_ref().map(|e| e.code()),
        Some(Code::InvalidArgument),
        "{e:?}"
    );
    assert!(
        e.as_ref().is_some_and(|e| e
            .message()
            .contains("spec.ingress[0].toPorts[0].ports[0].port")),
        "{e:?}"
    );
    let e = policies
        .apply(authed(
            v1::ApplyPolicyRequest {
                key: None,
                object_json: "{}".into(),
            },
            Some(ADMIN),
        )?)
        .await
        .err();
    assert!(
        e.as_ref()
            .is_some_and(|e| e.code() == Code::InvalidArgument && e.message().contains("`key`")),
        "{e:?}"
    );
    let e = policies
        .apply(authed(
            v1::ApplyPolicyRequest {
                key: key("web"),
                object_json: "{not json".into(),
            },
            Some(ADMIN),
        )?)
        .await
        .err();
    assert!(
        e.as_ref().is_some_and(
            |e| e.code() == Code::InvalidArgument && e.message().contains("`object_json`")
        ),
        "{e:?}"
    );
    let list = policies
        .list(authed(v1::ListPoliciesRequest::default(), Some(READ))?)
        .await?
        .into_inner();
    assert_eq!((list.revision, list.items.len()), (2, 2), "{list:?}");
    let p = policies
        .get(authed(
            v1::GetPolicyRequest {
                key: key("web"),
                consistency: v1::Consistency::Local.into(),
            },
            Some(READ),
        )?)
        .await?
        .into_inner();
    assert_eq!(
        serde_json::from_str::<Value>(&p.object_json)?,
        policy("web", 80)
    );

    let w = policies
        .delete(authed(
            v1::DeletePolicyRequest { key: key("db") },
            Some(ADMIN),
        )?)
        .await?
        .into_inner();
    assert_eq!((w.revision, w.changed), (3, true));
    let e = policies
        .get(authed(
            v1::GetPolicyRequest {
                key: key("db"),
                consistency: 0,
            },
            Some(READ),
        )?)
        .await
        .err();
    assert_eq!(e.map(|e| e.code()), Some(Code::NotFound));

    // The watch got the three changes in order, the delete with an empty value (values are
    // level-triggered: the db apply may already show it deleted).
    let got = next_changes(&mut stream, 3).await?;
    let seen: Vec<(&str, &str)> = got
        .iter()
        .map(|c| (c.kind.as_str(), c.key.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("policy", "CiliumNetworkPolicy/default/web"),
            ("policy", "CiliumNetworkPolicy/default/db"),
            ("policy", "CiliumNetworkPolicy/default/db"),
        ],
        "{got:?}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&got[0].value_json)?["object"],
        policy("web", 80)
    );
    assert_eq!(got[2].value_json, "", "{got:?}");
    let revisions: Vec<u64> = got.iter().map(|c| c.revision).collect();
    let policy_revisions: Vec<u64> = got.iter().map(|c| c.policy_revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "{revisions:?}"
    );
    assert_eq!(policy_revisions, vec![1, 2, 3]);
    let last = revisions[2];

    // The member serving the watch dies; writes go on; a watch on another member resumes from
    // the last revision received and gets the rest without gaps.
    c.kill(served_by);
    let mut policies = PolicyServiceClient::new(channel(&c, other).await?);
    for (name, port) in [("api", 8080), ("cache", 6379)] {
        policies
            .apply(authed(apply(name, &policy(name, port)), Some(ADMIN))?)
            .await?;
    }
    let mut watch = WatchServiceClient::new(channel(&c, leader).await?);
    let mut stream = watch
        .watch(authed(
            v1::WatchRequest {
                from_revision: last,
            },
            Some(READ),
        )?)
        .await?
        .into_inner();
    let got = next_changes(&mut stream, 2).await?;
    let resumed: Vec<(u64, &str)> = got.iter().map(|c| (c.revision, c.key.as_str())).collect();
    assert_eq!(
        resumed,
        vec![
            (last + 1, "CiliumNetworkPolicy/default/api"),
            (last + 2, "CiliumNetworkPolicy/default/cache"),
        ]
    );
    // A revision newer than anything still streams (nothing yet); the stream stays open.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err(),
        "no change should arrive"
    );

    // Wait: a registered node that never acks is named in DEADLINE_EXCEEDED.
    let (code, n) = c
        .post(
            leader,
            "/v1/nodes",
            &json!({"name": "node-lazy", "address": "192.0.2.7",
                    "wireguard_public_key": "YJ6Zl2CQxkVa9X8YpX6Hx2bX0pQb1V8B3Qm5cS0xHh0=",
                    "wireguard_epoch": 1}),
        )
        .await?;
    assert_eq!(code, 200, "{n}");
    let e = policies
        .wait(authed(
            v1::WaitPoliciesRequest {
                revision: None,
                timeout_ms: 500,
            },
            Some(READ),
        )?)
        .await
        .err();
    assert_eq!(
        e.as_ref().map(|e| e.code()),
        Some(Code::DeadlineExceeded),
        "{e:?}"
    );
    let e = e.ok_or_else(|| anyhow::anyhow!("wait succeeded"))?;
    assert!(e.message().contains("`node-lazy` (acked 0)"), "{e:?}");
    let details = e
        .metadata()
        .get_bin(WAIT_FAILURE_METADATA)
        .ok_or_else(|| anyhow::anyhow!("no {WAIT_FAILURE_METADATA}"))?
        .to_bytes()?;
    let failure = v1::WaitFailure::decode(details)?;
    assert_eq!(failure.revision, 5);
    assert_eq!(
        failure.laggards,
        vec![v1::Laggard {
            node: "node-lazy".into(),
            acked_revision: 0
        }]
    );
    // Once it acks, the wait succeeds.
    let (code, a) = c
        .post(leader, "/v1/nodes/node-lazy/ack", &json!({"revision": 5}))
        .await?;
    assert_eq!(code, 200, "{a}");
    let done = policies
        .wait(authed(
            v1::WaitPoliciesRequest {
                revision: Some(5),
                timeout_ms: 5_000,
            },
            Some(READ),
        )?)
        .await?
        .into_inner();
    assert_eq!((done.revision, done.nodes), (5, 1));

    // Typed reads: the node with its acknowledgement, the cluster with the leader's lag view.
    let mut nodes = NodeServiceClient::new(channel(&c, other).await?);
    let n = nodes
        .get(authed(
            v1::GetNodeRequest {
                name: "node-lazy".into(),
                consistency: 0,
            },
            Some(READ),
        )?)
        .await?
        .into_inner();
    assert_eq!(
        (n.acked_revision, n.live, n.address.as_str()),
        (5, true, "192.0.2.7")
    );
    let mut cluster = ClusterServiceClient::new(channel(&c, leader).await?);
    let s = cluster
        .status(authed(v1::ClusterStatusRequest {}, Some(READ))?)
        .await?
        .into_inner();
    assert_eq!(
        (s.state.as_str(), s.leader, s.voters.len()),
        ("leader", Some(leader), 3)
    );
    assert!(
        s.voters.iter().any(|v| v.id == other && v.lag.is_some()),
        "{s:?}"
    );
    Ok(())
}

/// A TLS channel to member `id`'s gRPC API trusting the CA of `ca_dir`, presenting the
/// certificate of the tls dir `identity` when given.
async fn tls_channel(
    c: &TestCluster,
    id: u64,
    ca_dir: &Path,
    identity: Option<&Path>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca_dir.join("ca.pem"))?));
    if let Some(dir) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join("cert.pem"))?,
            std::fs::read(dir.join("key.pem"))?,
        ));
    }
    let url = c.grpc_url(id).replace("http://", "https://");
    Ok(Channel::from_shared(url)?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_node_certificates_may_only_read_and_watch() -> anyhow::Result<()> {
    let mut c = TestCluster::new(1, &[])?;
    c.grpc = true;
    let dir = c.dir.path().to_owned();
    let p = |p: &Path| p.display().to_string();
    let ca = dir.join("ca");
    let node_a = dir.join("node-a");
    certs(&["init-ca", "--dir", &p(&ca)])?;
    certs(&[
        "issue",
        "--ca-dir",
        &p(&ca),
        "--name",
        "cp-1",
        "--role",
        "member",
        "--out",
        &p(&c.tls_dir(1)),
        "--san",
        "127.0.0.1",
    ])?;
    certs(&[
        "issue",
        "--ca-dir",
        &p(&ca),
        "--name",
        "node-a",
        "--role",
        "node",
        "--out",
        &p(&node_a),
    ])?;
    for (name, token) in [("admin", ADMIN), ("read", READ)] {
        let path = dir.join(format!("{name}.tokens"));
        std::fs::write(&path, format!("{token}\n"))?;
        c.extra_args.push(format!("--{name}-token-file"));
        c.extra_args.push(path.display().to_string());
    }
    c.tls = true;
    c.http = tls_client(&ca, None)?;
    c.token = Some(READ.to_owned());
    c.spawn(1, true)?;
    c.wait_leader(&[1], Duration::from_secs(20)).await?;

    // TLS only: a plain client gets no answer.
    let plain = match channel(&c, 1).await {
        Ok(ch) => PolicyServiceClient::new(ch)
            .list(authed(v1::ListPoliciesRequest::default(), Some(READ))?)
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!plain, "the grpc api answered plain text under --tls-dir");

    // Without a client certificate the tokens decide.
    let mut policies = PolicyServiceClient::new(tls_channel(&c, 1, &ca, None).await?);
    let e = policies
        .apply(authed(apply("web", &policy("web", 80)), Some(READ))?)
        .await
        .err();
    assert_eq!(e.map(|e| e.code()), Some(Code::PermissionDenied));
    let w = policies
        .apply(authed(apply("web", &policy("web", 80)), Some(ADMIN))?)
        .await?
        .into_inner();
    assert_eq!((w.revision, w.changed), (1, true));

    // A node certificate reads and watches, but never writes, whatever token it carries.
    let ch = tls_channel(&c, 1, &ca, Some(&node_a)).await?;
    let mut policies = PolicyServiceClient::new(ch.clone());
    let e = policies
        .delete(authed(
            v1::DeletePolicyRequest { key: key("web") },
            Some(ADMIN),
        )?)
        .await
        .err();
    assert_eq!(
        e.as_ref().map(|e| e.code()),
        Some(Code::PermissionDenied),
        "{e:?}"
    );
    assert!(
        e.is_some_and(|e| e.message().contains("node certificate of `node-a`")),
        "the refusal names the certificate"
    );
    let list = policies
        .list(authed(v1::ListPoliciesRequest::default(), None)?)
        .await?
        .into_inner();
    assert_eq!(list.items.len(), 1);
    let mut stream = WatchServiceClient::new(ch)
        .watch(authed(v1::WatchRequest { from_revision: 0 }, None)?)
        .await?
        .into_inner();
    let got = next_changes(&mut stream, 1).await?;
    assert_eq!(got[0].key, "CiliumNetworkPolicy/default/web");

    // SIGTERM with a watch open: the stream ends (UNAVAILABLE: resume elsewhere) and the member
    // exits promptly rather than waiting for the watcher.
    let started = std::time::Instant::now();
    c.terminate(1)?;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await?;
    assert!(
        matches!(&end, Err(e) if e.code() == Code::Unavailable) || matches!(end, Ok(None)),
        "{end:?}"
    );
    Ok(())
}
