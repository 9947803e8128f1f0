//! `--tls-dir`: certificates made with the real `certs` subcommands; members replicate over
//! mutual TLS and forward over HTTPS with their member certificate (no member token here); the
//! Raft port refuses node certificates and certificates of another CA; the client API is
//! HTTPS-only, tokens still apply, and a node certificate acts for its own node only.

use std::path::Path;
use std::time::{Duration, Instant};

use palisade_control_plane::grpc::pb::RaftPayload;
use palisade_control_plane::grpc::pb::raft_service_client::RaftServiceClient;
use serde_json::{Value, json};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::fixture::{TestCluster, certs, tls_client};

const ADMIN: &str = "admin-0123456789abcdef";
const READ: &str = "read-0123456789abcdef";
const WG_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// A Vote RPC to `raft_addr` over TLS trusting `ca_dir`, presenting the cert of `identity`.
async fn raft_vote(raft_addr: &str, ca_dir: &Path, identity: &Path) -> Result<(), tonic::Status> {
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&ca_dir.join("ca.pem"))))
        .identity(Identity::from_pem(
            read(&identity.join("cert.pem")),
            read(&identity.join("key.pem")),
        ));
    let endpoint = Endpoint::from_shared(format!("https://{raft_addr}"))
        .and_then(|e| e.tls_config(tls))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    RaftServiceClient::new(channel)
        .vote(RaftPayload {
            data: b"{}".to_vec(),
            chunk: Vec::new(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_talk_mutual_tls_and_agents_act_for_their_own_node() -> anyhow::Result<()> {
    let mut c = TestCluster::new(3, &[])?;
    let dir = c.dir.path().to_owned();
    let ca = dir.join("ca");
    certs(&["init-ca", "--dir", s(&ca)])?;
    assert!(
        certs(&["init-ca", "--dir", s(&ca)]).is_err(),
        "init-ca must refuse to overwrite"
    );
    for id in 1..=3 {
        let out = c.tls_dir(id);
        let name = format!("cp-{id}");
        certs(&[
            "issue",
            "--ca-dir",
            s(&ca),
            "--name",
            &name,
            "--role",
            "member",
            "--out",
            s(&out),
            "--san",
            "127.0.0.1",
        ])?;
    }
    let node_a = dir.join("node-a");
    certs(&[
        "issue",
        "--ca-dir",
        s(&ca),
        "--name",
        "node-a",
        "--role",
        "node",
        "--out",
        s(&node_a),
    ])?;
    let other_ca = dir.join("other-ca");
    let other_member = dir.join("other-member");
    certs(&["init-ca", "--dir", s(&other_ca)])?;
    certs(&[
        "issue",
        "--ca-dir",
        s(&other_ca),
        "--name",
        "cp-1",
        "--role",
        "member",
        "--out",
        s(&other_member),
        "--san",
        "127.0.0.1",
    ])?;

    // Admin and read tokens, no member token: members forward with their certificates.
    for (name, token) in [("admin", ADMIN), ("read", READ)] {
        let path = dir.join(format!("{name}.tokens"));
        std::fs::write(&path, format!("{token}\n"))?;
        c.extra_args.push(format!("--{name}-token-file"));
        c.extra_args.push(path.display().to_string());
    }
    c.tls = true;
    c.http = tls_client(&ca, None)?;
    c.token = Some(READ.to_owned());
    for id in 1..=3 {
        c.spawn(id, id == 1)?;
    }
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20)).await?;
    let follower = if leader == 1 { 2 } else { 1 };

    // A write on a follower is forwarded to the leader (https, member certificate) and
    // replicated to every member over mutual TLS.
    c.token = Some(ADMIN.to_owned());
    let (code, v) = c
        .post(follower, "/v1/identities", &json!({"labels": ["app=tls"]}))
        .await?;
    assert_eq!(code, 201, "{v}");
    c.token = Some(READ.to_owned());
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in 1..=3 {
        loop {
            let (code, list) = c.get(id, "/v1/identities?consistency=local").await?;
            if code == 200 && list["items"].as_array().map(Vec::len) == Some(1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} did not apply: {list}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The API speaks TLS only.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let r = plain
        .get(format!("http://{}/healthz", c.api(leader)))
        .send()
        .await;
    assert!(r.is_err(), "plain http answered: {r:?}");

    // A TLS client without a client certificate: tokens as without TLS.
    let r = c
        .http
        .get(c.url(follower, "/v1/identities"))
        .bearer_auth(READ)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let r = c.http.get(c.url(follower, "/v1/identities")).send().await?;
    assert_eq!(r.status().as_u16(), 401);

    // The Raft port: a member certificate of this CA reaches the service (the empty vote is
    // refused as undecodable, not unauthenticated); a node certificate and a certificate of
    // another CA are refused.
    let raft = c.raft(leader);
    let e = raft_vote(&raft, &ca, &c.tls_dir(follower))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(e, Some(tonic::Code::InvalidArgument));
    let e = raft_vote(&raft, &ca, &node_a).await.err();
    assert_eq!(
        e.as_ref().map(tonic::Status::code),
        Some(tonic::Code::PermissionDenied),
        "{e:?}"
    );
    let e = raft_vote(&raft, &ca, &other_member).await;
    assert!(e.is_err(), "a certificate of another CA was accepted");

    // The agent of node-a (its node certificate, no token): registers and heartbeats as
    // node-a, reads, but may not act for node-b nor call admin endpoints.
    let agent = tls_client(&ca, Some(&node_a))?;
    let url = |path: &str| c.url(follower, path);
    let register = |name: &str| json!({"name": name, "address": "192.0.2.10", "wireguard_public_key": WG_KEY, "wireguard_epoch": 1});
    let r = agent
        .post(url("/v1/nodes"))
        .json(&register("node-a"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    let r = agent.post(url("/v1/nodes/node-a/heartbeat")).send().await?;
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    let r = agent.get(url("/v1/nodes/node-a")).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let r = agent.post(url("/v1/nodes/node-b/heartbeat")).send().await?;
    assert_eq!(r.status().as_u16(), 403);
    let e: Value = r.json().await?;
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("`node-b`")),
        "{e}"
    );
    let r = agent
        .post(url("/v1/nodes"))
        .json(&register("node-b"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    let r = agent
        .put(url("/v1/policies/CiliumNetworkPolicy/default/x"))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(
        r.status().as_u16(),
        403,
        "a node certificate limits even an admin token"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_an_empty_tls_dir_creates_the_cluster_ca() -> anyhow::Result<()> {
    let mut c = TestCluster::new(1, &[])?;
    c.tls = true;
    c.spawn(1, true)?;
    let dir = c.tls_dir(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("key.pem").exists() || !dir.join("ca.pem").exists() {
        assert!(Instant::now() < deadline, "no certificates in {dir:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca-key.pem", "key.pem"] {
        let mode = std::fs::metadata(dir.join(key))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    c.http = tls_client(&dir, None)?;
    c.wait_leader(&[1], Duration::from_secs(20)).await?;
    // More members: issue their certificates from the first member's CA.
    let out = c.dir.path().join("m2");
    certs(&[
        "issue",
        "--ca-dir",
        s(&dir),
        "--name",
        "member-2",
        "--role",
        "member",
        "--out",
        s(&out),
        "--san",
        "127.0.0.1",
    ])?;
    let r = tls_client(&out, Some(&out))?
        .get(c.url(1, "/v1/cluster/status"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    Ok(())
}
