//! The web UI (`--ui-listen`) of a real member: the embedded page with its Content-Security-
//! Policy, the JSON endpoints (no agents registered: no flows, no error), bad filters refused
//! with the field; without token files, requests addressed to a DNS name are refused (no DNS
//! rebinding); with token files, `/api` needs a read token while the page itself is public.

use std::time::Duration;

use serde_json::Value;

use crate::fixture::{TestCluster, free_port};

const ADMIN: &str = "admin-0123456789abcdef";
const READ: &str = "read-0123456789abcdef";
const MEMBER: &str = "member-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_serves_its_page_and_json_and_guards_the_api() -> anyhow::Result<()> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let c = TestCluster::start(1, &["--ui-listen", &listen]).await?;
    let ui = |path: &str| format!("http://{listen}{path}");

    let r = c.http.get(ui("/")).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let page = r.text().await?;
    assert!(
        page.contains("<svg id=\"map\"") && page.contains("src=\"app.js\""),
        "{page}"
    );
    let r = c.http.get(ui("/app.js")).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/javascript"))
    );

    let (code, body) = get(&c, &ui("/api/v1/namespaces"), None, None).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body["namespaces"].is_array(), "{body}");
    let (code, body) = get(&c, &ui("/api/v1/flows?namespace=demo&limit=10"), None, None).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["flows"], serde_json::json!([]), "{body}");
    assert!(
        body["cursor"]
            .as_str()
            .is_some_and(|s| s.parse::<u128>().is_ok()),
        "{body}"
    );
    let (code, body) = get(&c, &ui("/api/v1/map"), None, None).await?;
    assert_eq!(
        (code, &body["edges"]),
        (200, &serde_json::json!([])),
        "{body}"
    );
    let (code, body) = get(&c, &ui("/api/v1/flows?protocol=quic"), None, None).await?;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("protocol")),
        "{body}"
    );
    // A page on another site resolving its name to this address (DNS rebinding) gets nothing.
    let (code, body) = get(&c, &ui("/api/v1/flows"), Some("rebind.example:12000"), None).await?;
    assert_eq!(code, 403, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_token_files_the_api_needs_a_read_token() -> anyhow::Result<()> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut c = TestCluster::new(1, &["--ui-listen", &listen])?;
    let dir = c.dir.path().to_owned();
    for (name, token) in [("admin", ADMIN), ("read", READ), ("member", MEMBER)] {
        let path = dir.join(format!("{name}.tokens"));
        std::fs::write(&path, format!("{token}\n"))?;
        c.extra_args.push(format!("--{name}-token-file"));
        c.extra_args.push(path.display().to_string());
    }
    c.spawn(1, true)?;
    c.token = Some(READ.to_owned());
    c.wait_leader(&[1], Duration::from_secs(20)).await?;
    let ui = |path: &str| format!("http://{listen}{path}");

    // The page carries no data: public.
    assert_eq!(c.http.get(ui("/")).send().await?.status().as_u16(), 200);
    let r = c.http.get(ui("/api/v1/namespaces")).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let (code, _) = get(&c, &ui("/api/v1/flows"), None, Some("not-a-token-000000")).await?;
    assert_eq!(code, 401);
    for token in [READ, ADMIN] {
        let (code, body) = get(&c, &ui("/api/v1/flows"), None, Some(token)).await?;
        assert_eq!(code, 200, "{body}");
    }
    // With tokens the name in `Host` does not matter: the token is the check.
    let (code, body) = get(&c, &ui("/api/v1/flows"), Some("ui.example"), Some(READ)).await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

/// GET with an optional `Host` and bearer token: status and JSON body.
async fn get(
    c: &TestCluster,
    url: &str,
    host: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = c.http.get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}
