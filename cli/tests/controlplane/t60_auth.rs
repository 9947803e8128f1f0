//! A control plane that requires bearer tokens: refused without one (clearly), accepted with the
//! token file from the flag or the environment.

use crate::fixture::{ControlPlane, run, scratch};

#[test]
fn tokens_from_a_file() {
    let cp = ControlPlane::start_with_token("auth");
    let token_file = cp.token_file.clone().expect("token file");
    let token_file = token_file.to_str().expect("utf-8");

    let out = cp.palisade(&["policy", "list"]);
    let line = out.error_line(2);
    assert!(line.contains("server refused (401)"), "{line}");
    assert!(line.contains("missing bearer token"), "{line}");
    assert!(line.contains("--token-file"), "{line}");

    let out = cp.palisade(&["policy", "list", "--token-file", token_file]);
    assert!(out.ok().contains("policy revision 0"), "{out:?}");
    let out = run(
        &["cluster", "status"],
        &[
            ("PALISADE_SERVER", &cp.url),
            ("PALISADE_TOKEN_FILE", token_file),
        ],
        None,
    );
    assert!(out.ok().contains("(leader)"), "{out:?}");

    // A wrong token is refused, and the token never shows in the error.
    let dir = scratch("auth-wrong");
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "not-the-admin-token-at-all\n").expect("write");
    let out = cp.palisade(&[
        "node",
        "list",
        "--token-file",
        wrong.to_str().expect("utf-8"),
    ]);
    let line = out.error_line(2);
    assert!(line.contains("invalid bearer token"), "{line}");
    assert!(!line.contains("not-the-admin-token"), "{line}");
    // An unreadable token file is a local error.
    let out = cp.palisade(&["node", "list", "--token-file", "/nonexistent/token"]);
    assert!(
        out.error_line(2)
            .contains("cannot read token file `/nonexistent/token`"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node token (`--node-token-file`, what a Kubernetes DaemonSet's agents present without a
/// node certificate) makes the agents' writes and reads, and nothing else: no policy, no node
/// removal.
#[test]
fn a_node_token_makes_the_agents_writes_and_nothing_else() {
    use palisade_api::controlplane::{Endpoint, NodeRegistration};
    use palisade_cp_client::{Client, ClientConfig, ClientError, TlsConfig};

    let dir = scratch("node-token");
    let tokens = dir.join("node.tokens");
    std::fs::write(&tokens, "node-token-of-the-daemonset-0001\n").expect("write");
    let tokens_arg = tokens.to_str().expect("utf-8");
    let cp = ControlPlane::start_tls_with("node-token", &["--node-token-file", tokens_arg]);
    let tls = TlsConfig::from_dir(cp.tls_dir.as_ref().expect("tls")).expect("tls dir");
    let config = ClientConfig::from_flags(std::slice::from_ref(&cp.url), Some(tokens.as_path()))
        .expect("client config")
        .with_tls(tls);
    let agent = Client::new(config).expect("client");

    let node = agent
        .register_node(&NodeRegistration {
            name: "node-a".into(),
            address: "192.0.2.10".parse().expect("ip"),
            wireguard_public_key: "YJ6Zl2CQxkVa9X8YpX6Hx2bX0pQb1V8B3Qm5cS0xHh0=".into(),
            wireguard_epoch: 1,
            pod_cidr: None,
        })
        .expect("a node token registers a node");
    agent.heartbeat("node-a").expect("heartbeat");
    agent.ack("node-a", 0).expect("ack");
    let id = agent
        .allocate_identity(&["k8s:app=web".into()])
        .expect("allocate an identity");
    let ip = std::net::IpAddr::V4((u32::from(node.pod_cidr.network()) + 10).into());
    agent
        .put_endpoint(&Endpoint {
            ip,
            identity: id.id,
            node: "node-a".into(),
            ports: vec![],
        })
        .expect("put an endpoint");
    agent.list_policies().expect("read policies");

    // Refused, naming the role: removing a node, and any policy write.
    match agent.delete_node("node-a") {
        Err(ClientError::Api {
            status, message, ..
        }) => {
            assert_eq!(status, 403);
            assert!(message.contains("a node token may not call"), "{message}");
        }
        other => panic!("a node token removed a node: {other:?}"),
    }
    let policy = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n";
    let out = cp.palisade_stdin(
        &["policy", "apply", "-f", "-", "--token-file", tokens_arg],
        Some(policy),
    );
    let line = out.error_line(2);
    assert!(
        line.contains("403") && line.contains("node token may not call"),
        "{out:?}"
    );
    let admin = cp.token_file.clone().expect("admin token");
    let listed = cp.palisade(&[
        "policy",
        "list",
        "--token-file",
        admin.to_str().expect("utf-8"),
    ]);
    assert!(listed.ok().contains("policy revision 0"), "{listed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
