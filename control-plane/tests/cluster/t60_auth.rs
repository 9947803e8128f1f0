//! Bearer tokens: unauthenticated and wrong-role requests are refused; members forward with
//! their own token.

use std::time::Duration;

use serde_json::json;

use crate::fixture::TestCluster;

const ADMIN: &str = "admin-0123456789abcdef";
const READ: &str = "read-0123456789abcdef";
const MEMBER: &str = "member-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_wrong_role_requests_are_refused() -> anyhow::Result<()> {
    let mut c = TestCluster::new(3, &[])?;
    let dir = c.dir.path().to_owned();
    for (name, token) in [("admin", ADMIN), ("read", READ), ("member", MEMBER)] {
        let path = dir.join(format!("{name}.tokens"));
        std::fs::write(&path, format!("# {name} tokens\n{token}\n"))?;
        c.extra_args.push(format!("--{name}-token-file"));
        c.extra_args.push(path.display().to_string());
    }
    for id in 1..=3 {
        c.spawn(id, id == 1)?;
    }
    c.token = Some(READ.to_owned());
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20)).await?;
    let follower = if leader == 1 { 2 } else { 1 };
    let body = json!({"labels": ["app=secure"]});

    // No token, a wrong token: 401 with a JSON error.
    let r = c
        .http
        .post(c.url(follower, "/v1/identities"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let e: serde_json::Value = r.json().await?;
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains("bearer")),
        "{e}"
    );
    let r = c
        .http
        .get(c.url(follower, "/v1/identities"))
        .bearer_auth("not-a-token-at-all-0000")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);

    // The Kubernetes-compatible API refuses the same way, with `Status` objects.
    let cnps = "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies";
    let r = c.http.get(c.url(follower, cnps)).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let s: serde_json::Value = r.json().await?;
    assert_eq!(
        (&s["kind"], &s["reason"]),
        (&json!("Status"), &json!("Unauthorized")),
        "{s}"
    );
    let (code, s) = c.post(follower, cnps, &json!({})).await?;
    assert_eq!((code, &s["reason"]), (403, &json!("Forbidden")), "{s}");
    let (code, s) = c.get(follower, cnps).await?;
    assert_eq!(
        (code, &s["kind"]),
        (200, &json!("CiliumNetworkPolicyList")),
        "{s}"
    );

    // A read token reads but cannot write; nothing is committed.
    let (code, e) = c.post(follower, "/v1/identities", &body).await?;
    assert_eq!(code, 403, "{e}");
    let (code, list) = c.get(follower, "/v1/identities").await?;
    assert_eq!(
        (code, list["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{list}"
    );

    // A user token cannot call the member endpoints; a member token cannot call the API.
    let r = c
        .http
        .post(c.url(leader, "/internal/v1/propose"))
        .bearer_auth(ADMIN)
        .json(&json!({"allocate_identity": {"labels": ["x=y"]}}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    let r = c
        .http
        .post(c.url(leader, "/v1/identities"))
        .bearer_auth(MEMBER)
        .json(&body)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);

    // An admin token writes through a follower (which forwards with the member token).
    c.token = Some(ADMIN.to_owned());
    let (code, v) = c.post(follower, "/v1/identities", &body).await?;
    assert_eq!(code, 201, "{v}");
    c.token = Some(READ.to_owned());
    let (code, list) = c.get(follower, "/v1/identities").await?;
    assert_eq!(
        (code, list["items"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{list}"
    );

    // The open endpoints stay open.
    let r = c.http.get(c.url(follower, "/healthz")).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    Ok(())
}
