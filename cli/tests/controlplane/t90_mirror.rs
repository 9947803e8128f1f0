//! `palisade mirror` with a second control plane standing in for the Kubernetes API server (its
//! Kubernetes-compatible endpoint, over HTTPS with a token, driven by the real kubectl): objects
//! applied to the "cluster" appear in the main control plane, changes and deletions follow, a
//! policy applied to the main control plane directly is left alone, and a mirror started after
//! a deletion removes the stale copy on its initial resync.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::{BIN, ControlPlane, scratch};

/// The mirror process, killed on drop.
struct Mirror(Child);

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mirror(kubeconfig: &str, dest: &ControlPlane, log: &std::path::Path) -> Mirror {
    let log = std::fs::File::create(log).expect("mirror log");
    Mirror(
        Command::new(BIN)
            .args(["mirror", "--kubeconfig", kubeconfig, "--source", "east"])
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

fn kubectl(kubeconfig: &str, args: &[&str], stdin: &str) {
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
