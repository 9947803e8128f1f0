//! `palisade mirror` with a second control plane standing in for the Kubernetes API server (its
//! Kubernetes-compatible endpoint, over HTTPS with a token, driven by the real kubectl): objects
//! applied to the "cluster" appear in the main control plane, changes and deletions follow, a
//! policy applied to the main control plane directly is left alone, and a mirror started after
//! a deletion removes the stale copy on its initial resync. The mirror writes the outcome back on
//! each Cilium object's status subresource: accepted with the copy's revision, or refused with
//! the engine's field error, once per change (no write loop). Namespaces' labels are copied and
//! follow relabelling.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::{BIN, ControlPlane, curl, free_port, scratch};

/// The mirror process, killed on drop.
struct Mirror(Child);

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mirror(kubeconfig: &str, dest: &ControlPlane, log: &std::path::Path) -> Mirror {
    start_mirror_with(kubeconfig, dest, log, &[])
}

fn start_mirror_with(
    kubeconfig: &str,
    dest: &ControlPlane,
    log: &std::path::Path,
    extra: &[&str],
) -> Mirror {
    let log = std::fs::File::create(log).expect("mirror log");
    Mirror(
        Command::new(BIN)
            .args(["mirror", "--kubeconfig", kubeconfig, "--source", "east"])
            .args(extra)
            .env("PALISADE_SERVER", &dest.url)
            .env_remove("PALISADE_TOKEN_FILE")
            .env_remove("PALISADE_TLS_DIR")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn palisade mirror"),
    )
}

fn kubectl(kubeconfig: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl ({e}): install it with scripts/bootstrap.sh")
        });
    if let Some(mut p) = c.stdin.take() {
        p.write_all(stdin.as_bytes()).expect("kubectl stdin");
    }
    let out = c.wait_with_output().expect("kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kind/namespace/name` → the stored object, in the main control plane.
fn stored(dest: &ControlPlane) -> Vec<(String, Value)> {
    let v: Value =
        serde_json::from_str(dest.palisade(&["policy", "list", "-o", "json"]).ok()).expect("json");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let k = &p["key"];
            let key = format!(
                "{}/{}/{}",
                k["kind"].as_str().unwrap_or_default(),
                k["namespace"].as_str().unwrap_or_default(),
                k["name"].as_str().unwrap_or_default()
            );
            (key, p["object"].clone())
        })
        .collect()
}

/// Waits until `ok` holds of the main control plane's objects (10 s at most).
fn eventually(dest: &ControlPlane, what: &str, ok: impl Fn(&[(String, Value)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stored(dest);
        if ok(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn keys(s: &[(String, Value)]) -> Vec<&str> {
    s.iter().map(|(k, _)| k.as_str()).collect()
}

const CNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: web\n  labels: {team: shop}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n    - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n";
const NETPOL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]\n";

const NAMESPACE: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n  labels: {env: prod}\n";

#[test]
fn the_mirror_copies_the_clusters_policies() {
    let cluster = ControlPlane::start_tls("mirror-src");
    let dest = ControlPlane::start("mirror-dst");
    let dir = scratch("mirror");
    let kc = dir.join("kubeconfig").to_string_lossy().into_owned();
    let token = cluster
        .token_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .expect("token");
    cluster
        .palisade(&["kubeconfig", "--token-file", &token, "-o", &kc])
        .ok();
    // A policy of the main control plane's own, which the mirror must leave alone.
    let own = CNP.replace("name: web", "name: local");
    dest.palisade_stdin(&["policy", "apply", "-f", "-"], Some(&own))
        .ok();
    kubectl(&kc, &["apply", "-f", "-"], CNP);

    let log = dir.join("mirror.log");
    let mirror = start_mirror(&kc, &dest, &log);
    eventually(&dest, "the initial list is copied", |s| {
        keys(s)
            == [
                "CiliumNetworkPolicy/default/local",
                "CiliumNetworkPolicy/default/web",
            ]
    });
    let web = stored(&dest)
        .into_iter()
        .find(|(k, _)| k.ends_with("/web"))
        .map(|(_, o)| o)
        .unwrap_or_default();
    assert_eq!(
        web["metadata"]["annotations"]["policy.palisade.io/mirrored-from"],
        "east"
    );
    assert_eq!(web["metadata"]["labels"]["team"], "shop");
    assert!(web["metadata"].get("uid").is_none(), "{web}");

    // Watch events: a create, a change, a deletion.
    kubectl(&kc, &["apply", "-f", "-"], NETPOL);
    kubectl(
        &kc,
        &["apply", "-f", "-"],
        &CNP.replace("\"80\"", "\"8080\""),
    );
    eventually(&dest, "the new and changed objects are copied", |s| {
        s.iter().any(|(k, _)| k == "NetworkPolicy/prod/db")
            && s.iter().any(|(k, o)| {
                k.ends_with("/web")
                    && o["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] == "8080"
            })
    });
    kubectl(&kc, &["delete", "cnp", "web"], "");
    eventually(&dest, "the deletion follows", |s| {
        keys(s) == ["CiliumNetworkPolicy/default/local", "NetworkPolicy/prod/db"]
    });

    // Namespaces: their labels are copied (what a namespaceSelector matches), a relabelling
    // follows, and a namespace left without labels needs no copy (nor do `default` and `prod`,
    // which the stand-in lists without labels).
    kubectl(&kc, &["apply", "-f", "-"], NAMESPACE);
    let labelled = |env: &'static str| {
        move |s: &[(String, Value)]| {
            s.iter().any(|(k, o)| {
                k == "Namespace/-/team-a"
                    && o["metadata"]["labels"]["env"] == env
                    && o["metadata"]["annotations"]["policy.palisade.io/mirrored-from"] == "east"
            })
        }
    };
    eventually(&dest, "the namespace's labels are copied", labelled("prod"));
    kubectl(
        &kc,
        &["label", "ns", "team-a", "env=dev", "--overwrite"],
        "",
    );
    eventually(&dest, "the relabelling follows", labelled("dev"));
    kubectl(&kc, &["label", "ns", "team-a", "env-"], "");
    eventually(&dest, "a namespace without labels has no copy", |s| {
        keys(s) == ["CiliumNetworkPolicy/default/local", "NetworkPolicy/prod/db"]
    });

    // Deleted while no mirror runs: the next mirror's initial resync removes the copy only.
    drop(mirror);
    kubectl(&kc, &["delete", "netpol", "db", "-n", "prod"], "");
    std::thread::sleep(Duration::from_millis(300));
    assert!(keys(&stored(&dest)).contains(&"NetworkPolicy/prod/db"));
    let _mirror = start_mirror(&kc, &dest, &log);
    eventually(&dest, "the resync removes the stale copy", |s| {
        keys(s) == ["CiliumNetworkPolicy/default/local"]
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cluster's object `cnp/<name>`, through kubectl.
fn cnp(kubeconfig: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl(
        kubeconfig,
        &["get", "cnp", name, "-o", "json"],
        "",
    ))
    .expect("json")
}

/// The `Accepted` condition of `o`.
fn accepted(o: &Value) -> Value {
    o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Accepted")
        .cloned()
        .unwrap_or_default()
}

/// The revision of the main control plane's copy `key` (`kind/namespace/name`).
fn revision(dest: &ControlPlane, key: &str) -> Option<u64> {
    let v: Value =
        serde_json::from_str(dest.palisade(&["policy", "list", "-o", "json"]).ok()).expect("json");
    v["items"].as_array().into_iter().flatten().find_map(|p| {
        let k = &p["key"];
        let k = format!(
            "{}/{}/{}",
            k["kind"].as_str()?,
            k["namespace"].as_str()?,
            k["name"].as_str()?
        );
        (k == key).then(|| p["revision"].as_u64()).flatten()
    })
}

/// Waits until `ok` holds of the cluster's `cnp/<name>` (10 s at most).
fn eventually_cnp(kubeconfig: &str, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = cnp(kubeconfig, name);
        if ok(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "{what}: {o:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const PORT_FIELD: &str = "`spec.ingress[0].toPorts[0].ports[0].port`";

const CCNP: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: dns}\nspec:\n  endpointSelector: {}\n  egress:\n    - toPorts: [{ports: [{port: \"53\", protocol: UDP}]}]\n";

#[test]
fn the_mirror_writes_status_back() {
    // The stand-in checks the envelope only, as an API server holding the CRDs does: an object
    // the policy engine refuses gets into the "cluster", and only the main control plane
    // refuses it.
    let mut cluster =
        ControlPlane::start_tls_with("mstat-src", &["--policy-validation", "envelope"]);
    let dest = ControlPlane::start("mstat-dst");
    let dir = scratch("mstat");
    let kc = dir.join("kubeconfig").to_string_lossy().into_owned();
    let token = cluster
        .token_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .expect("token");
    cluster
        .palisade(&["kubeconfig", "--token-file", &token, "-o", &kc])
        .ok();
    let bad = CNP
        .replace("name: web", "name: bad")
        .replace("\"80\"", "\"70000\"");
    kubectl(&kc, &["apply", "-f", "-"], CNP);
    kubectl(&kc, &["apply", "-f", "-"], &bad);
    kubectl(&kc, &["apply", "-f", "-"], CCNP);
    kubectl(&kc, &["apply", "-f", "-"], NETPOL);

    // The status subresource changes the status only: the spec in the same patch is ignored,
    // and the generation stays; a stale resourceVersion is a conflict; NetworkPolicy has none.
    let web_status = "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/web/status";
    let stale = cnp(&kc, "web")["metadata"]["resourceVersion"].clone();
    let (code, out) = curl(
        &cluster,
        "PATCH",
        web_status,
        r#"{"status": {"note": "kept"}, "spec": {"endpointSelector": {}}}"#,
    );
    assert_eq!(code, 200, "{out}");
    let mut put = out.clone();
    put["metadata"]["resourceVersion"] = stale;
    put["status"] = serde_json::json!({"note": "lost"});
    let (code, out) = curl(&cluster, "PUT", web_status, &put.to_string());
    assert_eq!(
        (code, &out["reason"]),
        (409, &Value::from("Conflict")),
        "{out}"
    );
    let (code, out) = curl(
        &cluster,
        "GET",
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/db/status",
        "",
    );
    assert_eq!(code, 404, "{out}");
    let web = cnp(&kc, "web");
    assert_eq!(web["status"]["note"], "kept", "{web:#}");
    assert_eq!(web["spec"]["endpointSelector"]["matchLabels"]["app"], "web");
    assert_eq!(web["metadata"]["generation"], 1);

    let log = dir.join("mirror.log");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mirror = start_mirror_with(&kc, &dest, &log, &["--metrics-listen", &metrics_addr]);
    eventually(
        &dest,
        "the valid objects are copied, the invalid one refused",
        |s| {
            keys(s)
                == [
                    "CiliumClusterwideNetworkPolicy/-/dns",
                    "CiliumNetworkPolicy/default/web",
                    "NetworkPolicy/prod/db",
                ]
        },
    );
    let web = eventually_cnp(&kc, "web", "web is accepted", |o| {
        accepted(o)["status"] == "True"
    });
    let rev = revision(&dest, "CiliumNetworkPolicy/default/web").expect("web's copy");
    let c = accepted(&web);
    assert_eq!(web["status"]["policyRevision"], rev, "{web:#}");
    assert_eq!(c["reason"], "Stored");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("policy revision {rev}")),
        "{c}"
    );
    assert_eq!(c["observedGeneration"], 1);
    assert_eq!(web["status"]["note"], "kept", "other status fields stay");
    let b = eventually_cnp(&kc, "bad", "bad is refused", |o| {
        accepted(o)["status"] == "False"
    });
    let c = accepted(&b);
    assert_eq!(c["reason"], "Invalid");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains(PORT_FIELD),
        "the engine's field error: {c}"
    );
    assert!(b["status"].get("policyRevision").is_none(), "{b:#}");

    // The cluster-scoped kind gets its status too.
    let dns = (0..100)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            serde_json::from_str::<Value>(&kubectl(&kc, &["get", "ccnp", "dns", "-o", "json"], ""))
                .expect("json")
        })
        .find(|o| accepted(o)["status"] == "True")
        .expect("dns is accepted");
    let rev = revision(&dest, "CiliumClusterwideNetworkPolicy/-/dns").expect("dns's copy");
    assert_eq!(dns["status"]["policyRevision"], rev, "{dns:#}");

    // No write loop: each status write is a watch event the mirror sees, and it writes nothing
    // again for it (the cluster's revision stays put).
    let list_revision = || {
        let raw = "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies";
        let l: Value =
            serde_json::from_str(&kubectl(&kc, &["get", "--raw", raw], "")).expect("json");
        l["metadata"]["resourceVersion"].clone()
    };
    let before = list_revision();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(list_revision(), before);
    // And exactly one status write per object so far (web, bad, dns): the watch event of each
    // write found its status already current.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text.matches("status written").count(), 3, "{text}");

    // The mirror's /metrics says the same: copies held by kind (bad's was refused), the
    // refusal, the three status writes, no watch trouble.
    let m = scrape(&metrics_addr);
    for (series, want) in [
        (
            r#"palisade_mirror_objects{kind="CiliumNetworkPolicy"}"#,
            1.0,
        ),
        (
            r#"palisade_mirror_objects{kind="CiliumClusterwideNetworkPolicy"}"#,
            1.0,
        ),
        (r#"palisade_mirror_objects{kind="NetworkPolicy"}"#, 1.0),
        (
            r#"palisade_mirror_status_writes_total{kind="CiliumNetworkPolicy",result="written"}"#,
            2.0,
        ),
        (
            r#"palisade_mirror_status_writes_total{kind="CiliumClusterwideNetworkPolicy",result="written"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metric(&m, series), Some(want), "{series}:\n{m}");
    }
    for series in [
        r#"palisade_mirror_applies_total{kind="CiliumNetworkPolicy",outcome="accepted"}"#,
        r#"palisade_mirror_applies_total{kind="CiliumNetworkPolicy",outcome="rejected"}"#,
        r#"palisade_mirror_applies_total{kind="NetworkPolicy",outcome="accepted"}"#,
    ] {
        assert!(metric(&m, series) >= Some(1.0), "{series}:\n{m}");
    }
    assert!(!m.contains("palisade_mirror_watch_errors_total"), "{m}");
    assert!(!m.contains("outcome=\"error\""), "{m}");
    // A second mirror cannot have the same address: it stops at once, naming the flag.
    let out = Command::new(BIN)
        .args(["mirror", "--kubeconfig", &kc, "--source", "east"])
        .args(["--metrics-listen", &metrics_addr])
        .env("PALISADE_SERVER", &dest.url)
        .env_remove("PALISADE_TOKEN_FILE")
        .env_remove("PALISADE_TLS_DIR")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("second mirror");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("--metrics-listen `{metrics_addr}`")),
        "{out:?}"
    );

    // Fixing the object flips the condition; a spec write through the main resource leaves
    // the status alone (the note stays, the mirror updates its condition).
    kubectl(
        &kc,
        &["apply", "-f", "-"],
        &bad.replace("\"70000\"", "\"443\""),
    );
    let b = eventually_cnp(&kc, "bad", "the fixed object is accepted", |o| {
        accepted(o)["status"] == "True"
    });
    let rev = revision(&dest, "CiliumNetworkPolicy/default/bad").expect("bad's copy");
    assert_eq!(b["status"]["policyRevision"], rev, "{b:#}");
    assert_eq!(accepted(&b)["observedGeneration"], 2);
    kubectl(
        &kc,
        &["apply", "-f", "-"],
        &CNP.replace("\"80\"", "\"8080\""),
    );
    let web = eventually_cnp(&kc, "web", "the new generation is recorded", |o| {
        accepted(o)["observedGeneration"] == 2
    });
    assert_eq!(web["status"]["note"], "kept", "{web:#}");
    let rev = revision(&dest, "CiliumNetworkPolicy/default/web").expect("web's copy");
    assert_eq!(web["status"]["policyRevision"], rev, "{web:#}");

    // What a user sees with the real kubectl.
    let yaml = kubectl(&kc, &["get", "cnp", "-o", "yaml"], "");
    assert!(yaml.contains("type: Accepted"), "{yaml}");
    assert!(yaml.contains("policyRevision:"), "{yaml}");

    // The fixed object's copy is held now; a deletion in the cluster is counted.
    kubectl(&kc, &["delete", "netpol", "db", "-n", "prod"], "");
    let m = eventually_metrics(&metrics_addr, "the deletion is counted", |m| {
        metric(m, r#"palisade_mirror_deletes_total{kind="NetworkPolicy"}"#) == Some(1.0)
    });
    assert_eq!(
        metric(&m, r#"palisade_mirror_objects{kind="CiliumNetworkPolicy"}"#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"palisade_mirror_objects{kind="NetworkPolicy"}"#),
        Some(0.0),
        "{m}"
    );

    // The "cluster" goes away and comes back: the watches fail, are retried and counted
    // (re-lists are counted in the pods test, whose cut watch gets `410 Expired`).
    cluster.restart();
    let cnp_errors = r#"palisade_mirror_watch_errors_total{kind="CiliumNetworkPolicy"}"#;
    eventually_metrics(&metrics_addr, "watch errors are counted", |m| {
        metric(m, cnp_errors) >= Some(1.0)
    });
    // A re-list: the mirror is paused while the cluster changes and restarts, so its watch
    // resumes from a resource version the restarted change feed does not reach back to
    // (`410 Expired`) and it lists again, which is counted.
    let pid = mirror.0.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    };
    signal("-STOP");
    kubectl(
        &kc,
        &["label", "cnp", "web", "relisted=yes", "--overwrite"],
        "",
    );
    cluster.restart();
    signal("-CONT");
    let cnp_restarts = r#"palisade_mirror_watch_restarts_total{kind="CiliumNetworkPolicy"}"#;
    eventually_metrics(&metrics_addr, "the re-list is counted", |m| {
        metric(m, cnp_restarts) >= Some(1.0)
    });
    eventually(&dest, "the change made while paused is copied", |s| {
        s.iter()
            .any(|(k, o)| k.ends_with("/web") && o["metadata"]["labels"]["relisted"] == "yes")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The mirror's `/metrics` page (a plain HTTP/1.1 GET).
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the mirror's metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of one series (name and labels exactly as rendered).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn eventually_metrics(addr: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(addr);
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod as a Deployment makes it: identities need its labels, service account, node, named
/// ports and addresses, nothing else.
const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: NAME\n  namespace: shop\n  labels: {app: api}\nspec:\n  serviceAccountName: api-sa\n  nodeName: node-1\n  containers:\n    - name: main\n      image: api:1\n      ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]\n";

fn pod(name: &str) -> String {
    POD.replace("NAME", name)
}

/// Pods: the mirror copies each as the trimmed record agents read (labels, service account,
/// node, named ports, addresses), follows relabelling and deletion, writes nothing for status
/// churn, and converges after its watch is cut mid-stream (the stand-in killed and restarted:
/// its change feed starts over, the watch answers `410 Expired`, the mirror lists again).
#[test]
fn the_mirror_copies_pods_as_identities_need_them() {
    let mut cluster = ControlPlane::start_tls("mpods-src");
    let dest = ControlPlane::start("mpods-dst");
    let dir = scratch("mpods");
    let kc = dir.join("kubeconfig").to_string_lossy().into_owned();
    let token = cluster
        .token_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .expect("token");
    cluster
        .palisade(&["kubeconfig", "--token-file", &token, "-o", &kc])
        .ok();
    kubectl(&kc, &["apply", "-f", "-"], &pod("api-0"));
    let status = "/api/v1/namespaces/shop/pods/api-0/status";
    let ips = r#"{"status": {"phase": "Running", "podIPs": [{"ip": "10.0.1.5"}]}}"#;
    assert_eq!(curl(&cluster, "PATCH", status, ips).0, 200);

    let log = dir.join("mirror.log");
    let mirror = start_mirror(&kc, &dest, &log);
    let copy_of = |name: &str| {
        let key = format!("Pod/shop/{name}");
        stored(&dest)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, o)| o)
    };
    eventually(&dest, "the pod is copied", |s| {
        s.iter().any(|(k, _)| k == "Pod/shop/api-0")
    });
    let copy = copy_of("api-0").expect("copy");
    assert_eq!(
        copy["metadata"]["labels"],
        serde_json::json!({"app": "api"})
    );
    assert_eq!(
        copy["metadata"]["annotations"],
        serde_json::json!({"policy.palisade.io/mirrored-from": "east"})
    );
    assert_eq!(copy["spec"]["serviceAccountName"], "api-sa");
    assert_eq!(copy["spec"]["nodeName"], "node-1");
    assert_eq!(
        copy["spec"]["containers"][0]["ports"],
        serde_json::json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}]),
        "named ports only"
    );
    assert_eq!(
        copy["status"],
        serde_json::json!({"podIPs": [{"ip": "10.0.1.5"}]})
    );
    assert!(
        copy["spec"]["containers"][0].get("image").is_none(),
        "{copy}"
    );
    let first = revision(&dest, "Pod/shop/api-0").expect("revision");

    // Status churn (readiness flapping) changes nothing the copy holds: no write. A second pod
    // created after it marks that the mirror has seen the churn (one watcher per kind, in order).
    for ready in ["False", "True", "False"] {
        let churn = format!(
            r#"{{"status": {{"conditions": [{{"type": "Ready", "status": "{ready}"}}]}}}}"#
        );
        assert_eq!(curl(&cluster, "PATCH", status, &churn).0, 200);
    }
    kubectl(&kc, &["apply", "-f", "-"], &pod("marker"));
    eventually(&dest, "the marker pod is copied", |s| {
        s.iter().any(|(k, _)| k == "Pod/shop/marker")
    });
    assert_eq!(
        revision(&dest, "Pod/shop/api-0"),
        Some(first),
        "status churn must not rewrite the copy"
    );

    // Relabel and delete follow.
    kubectl(
        &kc,
        &[
            "label",
            "pod",
            "api-0",
            "-n",
            "shop",
            "app=api-v2",
            "--overwrite",
        ],
        "",
    );
    eventually(&dest, "the relabelling follows", |_| {
        copy_of("api-0").is_some_and(|o| o["metadata"]["labels"]["app"] == "api-v2")
    });
    kubectl(&kc, &["delete", "pod", "marker", "-n", "shop"], "");
    eventually(&dest, "the deletion follows", |s| {
        !s.iter().any(|(k, _)| k == "Pod/shop/marker")
    });

    // The watch cut mid-stream: the stand-in is killed and restarted (its change feed starts
    // over). Changes made after it still arrive: the watch resumes or the mirror lists again.
    cluster.restart();
    kubectl(
        &kc,
        &[
            "label",
            "pod",
            "api-0",
            "-n",
            "shop",
            "app=api-v3",
            "--overwrite",
        ],
        "",
    );
    kubectl(&kc, &["apply", "-f", "-"], &pod("late"));
    eventually(
        &dest,
        "the mirror converges after the interrupted watch",
        |s| {
            s.iter().any(|(k, _)| k == "Pod/shop/late")
                && copy_of("api-0").is_some_and(|o| o["metadata"]["labels"]["app"] == "api-v3")
        },
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("watch failed; retrying"),
        "the watch was cut: {text}"
    );

    // Deleted while no mirror runs: the next mirror's initial list removes the copy.
    drop(mirror);
    kubectl(&kc, &["delete", "pod", "late", "-n", "shop"], "");
    let _mirror = start_mirror(&kc, &dest, &dir.join("mirror2.log"));
    eventually(&dest, "the resync removes the stale pod copy", |s| {
        !s.iter().any(|(k, _)| k == "Pod/shop/late") && s.iter().any(|(k, _)| k == "Pod/shop/api-0")
    });
    let _ = std::fs::remove_dir_all(&dir);
}
