//! The web UI (issue 7): the lab's control plane serves it (`--ui-listen`), `palisade ui --lab`
//! forwards it to the host, and headless Chromium (Debian's `chromium`, from the bootstrap)
//! loads it while the lab carries real traffic: an allowed connection (n1-p1 → n2-p1:80), one
//! the policy denies (n1-p2 → n2-p1:80), and HTTP requests through the agent's L7 proxy
//! (n1-p1 → n2-p1:8080, `GET /get` allowed, `GET /admin` denied with a 403). The rendered DOM
//! must show the workloads on the service map, the denied connection as a red (`dropped`) edge
//! and only that, the HTTP method, path and status on the green and red L7 edges, and the denied
//! flow in the flow table, which the verdict filter narrows to drops; the namespace picker offers
//! the lab's namespaces. The JSON API behind the page
//! refuses callers without the lab's read token and names the field of a bad filter.
//!
//! `PALISADE_UI_SCREENSHOT=docs/ui-service-map.png` also saves a screenshot of the page.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palisade_lab::Lab;

use crate::util::{Cleanup, bin, lab_name, ok, palisade};

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: n2-p1-from-n1-p1}
spec:
  endpointSelector: {matchLabels: {app: n2-p1}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: n1-p1}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: n1-p1}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http: [{method: GET, path: /get}]
";

/// n2-p1's address (`n<i>-p<j>` is `10.200.i.(10+j)`).
const SERVER: &str = "10.200.2.11";

/// Kills `palisade ui` when dropped.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed when dropped (Chromium's throwaway profile, the policy file).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Headless Chromium on `url` with its own profile: the DOM after the page's scripts ran (or,
/// with `screenshot`, a PNG there).
fn chromium(profile: &std::path::Path, url: &str, screenshot: Option<&str>) -> String {
    let mut args = vec![
        "60".to_string(),
        "chromium".to_string(),
        "--headless".to_string(),
        // Root has no user namespace sandbox here.
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--hide-scrollbars".to_string(),
        "--no-first-run".to_string(),
        format!("--user-data-dir={}", profile.display()),
        // Virtual time waits for the page's fetches: a few polls happen within it.
        "--virtual-time-budget=6000".to_string(),
        "--window-size=1400,1000".to_string(),
    ];
    match screenshot {
        Some(path) => args.push(format!("--screenshot={path}")),
        None => args.push("--dump-dom".to_string()),
    }
    args.push(url.to_string());
    let out = Command::new("timeout")
        .args(&args)
        .output()
        .expect("run chromium (installed by scripts/bootstrap.sh)");
    assert_eq!(
        out.status.code(),
        Some(0),
        "chromium {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attributes of every `<tag ...>` in `dom`.
fn tags(dom: &str, tag: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{tag} ");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let end = after.find('>').unwrap_or(after.len());
        let mut attrs = BTreeMap::new();
        let mut s = &after[..end];
        while let Some(eq) = s.find("=\"") {
            let name = s[..eq].trim().to_string();
            let v = &s[eq + 2..];
            let close = v.find('"').unwrap_or(v.len());
            attrs.insert(name, v[..close].to_string());
            s = v.get(close + 1..).unwrap_or("");
        }
        out.push(attrs);
        rest = &after[end..];
    }
    out
}

/// `curl` on the forwarded UI: status and body.
fn curl(url: &str, token: Option<&str>) -> (u16, String) {
    let mut args = vec!["-s", "-m", "15", "-w", "\n%{http_code}"];
    let header;
    if let Some(t) = token {
        header = format!("Authorization: Bearer {t}");
        args.extend(["-H", &header]);
    }
    args.push(url);
    let out = Command::new("curl").args(&args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_web_ui_maps_workloads_and_shows_the_denied_flow_as_a_red_edge() {
    let name = lab_name("ui");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    // No such lab (yet): a clear error, no listener.
    let missing = palisade(&["ui", "--lab", &name, "--listen", "127.0.0.1:0"]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains(&format!("lab `{name}` does not exist")),
        "{missing:?}"
    );
    ok(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--control-plane-voters",
        "1",
    ]);
    let scratch = TempDir(std::env::temp_dir().join(format!("palisade-ui-test-{name}")));
    std::fs::create_dir_all(&scratch.0).expect("scratch dir");
    let policy = scratch.0.join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy file");
    ok(&[
        "policy",
        "apply",
        "--lab",
        &name,
        "-f",
        policy.to_str().expect("utf8"),
    ]);
    ok(&["policy", "wait", "--lab", &name, "--timeout", "20s"]);
    let probe = |from: &str| {
        palisade(&[
            "lab", "probe", "--name", &name, from, "n2-p1", "--port", "80",
        ])
    };
    let allowed = probe("n1-p1");
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "n1-p1 -> n2-p1: {allowed:?}"
    );
    let denied = probe("n1-p2");
    assert_eq!(denied.status.code(), Some(1), "n1-p2 -> n2-p1: {denied:?}");
    // HTTP through the L7 proxy: a real server in n2-p1, curl in n1-p1.
    let _server = Helper(
        Command::new("ip")
            .args(["netns", "exec", &format!("pal-{name}-n2-p1")])
            .arg(bin())
            .args(["workload", "serve", "--http", "8080", "--name", "n2-p1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("http server"),
    );
    let http = |path: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("pal-{name}-n1-p1"), "curl"])
            .args(["-s", "-o", "/dev/null", "-m", "3", "-w", "%{http_code}"])
            .arg(format!("http://{SERVER}:8080{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http("/get") != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "the HTTP server in n2-p1 never answered GET /get"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http("/admin"), "403", "the L7 rules deny GET /admin");
    std::thread::sleep(Duration::from_millis(500));

    // `palisade ui` prints the URL first, then forwards until killed.
    let mut child = Command::new(bin())
        .args(["ui", "--lab", &name, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("palisade ui");
    let stdout = child.stdout.take().expect("stdout");
    let helper = Helper(child);
    let mut url = String::new();
    BufReader::new(stdout)
        .read_line(&mut url)
        .expect("the URL line");
    let url = url.trim().to_string();
    let (base, fragment) = url.split_once("/#").expect("http://ADDR/#token=...");
    let token = fragment
        .strip_prefix("token=")
        .expect("a token in the fragment");
    assert!(base.starts_with("http://127.0.0.1:"), "{url}");

    // The JSON API: a read token is required; a bad filter names its field.
    let (code, body) = curl(&format!("{base}/api/v1/namespaces"), None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = curl(&format!("{base}/api/v1/namespaces"), Some(token));
    assert_eq!(code, 200, "{body}");
    let ns: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ns["namespaces"], serde_json::json!(["default"]), "{body}");
    let (code, body) = curl(&format!("{base}/api/v1/flows?verdict=MAYBE"), Some(token));
    assert_eq!(code, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(err["field"], "verdict", "{body}");

    let profile = TempDir(scratch.0.join("chromium-profile"));
    // The namespace picker, on a page whose URL names no namespace: it offers "all" and the
    // lab's namespaces, which only the API can have told it.
    let dom = chromium(&profile.0, &format!("{base}/#{fragment}"), None);
    let picker = dom
        .split_once("<select id=\"namespace\"")
        .and_then(|(_, rest)| rest.split_once("</select>"))
        .map(|(inside, _)| inside)
        .unwrap_or_else(|| panic!("no namespace picker: {dom}"));
    let offered: Vec<String> = tags(picker, "option")
        .into_iter()
        .filter_map(|o| o.get("value").cloned())
        .collect();
    assert_eq!(offered, ["", "default"], "{picker}");
    let dom = chromium(
        &profile.0,
        &format!("{base}/#namespace=default&{fragment}"),
        None,
    );
    let body = tags(&dom, "body");
    assert_eq!(
        body.first()
            .and_then(|b| b.get("data-state"))
            .map(String::as_str),
        Some("ready"),
        "the page did not render its data: {dom}"
    );
    // The workloads on the map.
    let workloads: Vec<String> = tags(&dom, "g")
        .into_iter()
        .filter_map(|g| g.get("data-workload").cloned())
        .collect();
    for w in ["default/n1-p1", "default/n1-p2", "default/n2-p1"] {
        assert!(
            workloads.iter().any(|x| x == w),
            "{w} not on the map: {workloads:?}"
        );
    }
    // The edges: the allowed pair green, the denied pair red and only red (n1 forwarded the
    // packet, n2 dropped it: one connection, dropped).
    let edges: Vec<BTreeMap<String, String>> = tags(&dom, "path")
        .into_iter()
        .filter(|p| p.get("class").is_some_and(|c| c.starts_with("edge ")))
        .collect();
    let edge = |from: &str, verdict: &str| {
        edges.iter().find(|e| {
            e["data-from"] == from
                && e["data-to"] == "default/n2-p1"
                && e["data-verdict"] == verdict
        })
    };
    let allowed = edge("default/n1-p1", "forwarded").unwrap_or_else(|| panic!("{edges:?}"));
    assert!(edge("default/n1-p2", "dropped").is_some(), "{edges:?}");
    assert!(edge("default/n1-p2", "forwarded").is_none(), "{edges:?}");
    // L7 on the edges: the allowed request on the green edge, the denied one (and only that)
    // on a red one, which carries no L4 drop on port 80.
    assert!(
        allowed["data-http"].contains("GET /get → 200") && allowed["data-ports"].contains("TCP/80"),
        "{allowed:?}"
    );
    let l7_denied = edge("default/n1-p1", "dropped").unwrap_or_else(|| panic!("{edges:?}"));
    assert_eq!(l7_denied["data-http"], "GET /admin → 403", "{l7_denied:?}");
    assert_eq!(l7_denied["data-ports"], "TCP/8080", "{l7_denied:?}");
    assert!(
        dom.contains("class=\"edge dropped\""),
        "the dropped edge is drawn with the red class: {dom}"
    );
    // The flow table lists the denied flow.
    let rows = tags(&dom, "tr");
    let flow_rows: Vec<&BTreeMap<String, String>> = rows
        .iter()
        .filter(|r| r.contains_key("data-uuid"))
        .collect();
    assert!(
        flow_rows.iter().any(|r| r["data-verdict"] == "DROPPED"
            && r["data-from"] == "default/n1-p2"
            && r["data-to"] == "default/n2-p1"
            && r["data-protocol"] == "TCP"),
        "{flow_rows:?}"
    );
    assert!(flow_rows.iter().any(|r| r["data-verdict"] == "FORWARDED"));

    // The table's verdict filter, from the URL: drops only.
    let dom = chromium(
        &profile.0,
        &format!("{base}/#namespace=default&verdict=DROPPED&{fragment}"),
        None,
    );
    let rows = tags(&dom, "tr");
    let verdicts: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.get("data-verdict").map(String::as_str))
        .collect();
    assert!(!verdicts.is_empty(), "no rows: {dom}");
    assert!(verdicts.iter().all(|v| *v == "DROPPED"), "{verdicts:?}");
    // Pod and protocol filters: n1-p1's HTTP requests only.
    let dom = chromium(
        &profile.0,
        &format!("{base}/#namespace=default&pod=n1-p1&protocol=http&{fragment}"),
        None,
    );
    let rows: Vec<BTreeMap<String, String>> = tags(&dom, "tr")
        .into_iter()
        .filter(|r| r.contains_key("data-uuid"))
        .collect();
    assert!(rows.len() >= 2, "GET /get and GET /admin: {dom}");
    assert!(
        rows.iter().all(|r| r["data-protocol"] == "HTTP"
            && r["data-from"] == "default/n1-p1"
            && r["data-to"] == "default/n2-p1"),
        "{rows:?}"
    );

    if let Ok(path) = std::env::var("PALISADE_UI_SCREENSHOT") {
        chromium(
            &profile.0,
            &format!("{base}/#namespace=default&{fragment}"),
            Some(&path),
        );
    }
    drop(helper);
}
