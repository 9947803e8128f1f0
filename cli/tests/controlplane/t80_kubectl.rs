//! The real `kubectl` against the control plane's Kubernetes-compatible policy API (HTTPS, an
//! admin token, a kubeconfig written by `palisade kubeconfig`): apply (create, then a changed
//! re-apply), get -o yaml, diff, edit, get -w, create of an existing object, server-side apply,
//! an invalid object refused with the engine's field error, delete; every step checked against
//! `palisade policy list/get` (the REST view of the same Raft state). Needs `kubectl` on PATH
//! (`scripts/bootstrap.sh` installs it); the test fails, it does not skip, without it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::fixture::{ControlPlane, Run, curl, scratch};

/// Seed-style objects: one of each served kind.
const POLICIES: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
  labels: {team: shop}
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: client}
      toPorts:
        - ports:
            - {port: "80", protocol: TCP}
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: dns
spec:
  endpointSelector:
    matchLabels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}
  ingress:
    - fromEndpoints:
        - {}
      toPorts:
        - ports:
            - {port: "53", protocol: UDP}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
  namespace: prod
spec:
  podSelector:
    matchLabels: {app: db}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector:
            matchLabels: {app: api}
      ports:
        - {protocol: TCP, port: 5432}
"#;

struct Kube {
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Kube {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            // kubectl diff writes its temporary files here.
            .env("TMPDIR", &self.dir);
        c
    }

    fn run_env(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap_or_else(|e| {
            panic!("cannot run kubectl ({e}): install it with scripts/bootstrap.sh")
        });
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).expect("kubectl stdin");
        }
        let out = child.wait_with_output().expect("kubectl output");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        self.run_env(args, stdin, &[])
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(self.run(&a, None).ok()).expect("kubectl json")
    }
}

/// `palisade policy get KIND NS NAME -o json`, the stored object (REST API).
fn stored(cp: &ControlPlane, token: &str, kind: &str, ns: &str, name: &str) -> Value {
    let key = format!("{kind}/{ns}/{name}");
    let out = cp.palisade(&["policy", "get", &key, "-o", "json", "--token-file", token]);
    serde_json::from_str(out.ok()).expect("policy get json")
}

/// The `kind/namespace/name` keys `palisade policy list` shows.
fn listed(cp: &ControlPlane, token: &str) -> Vec<String> {
    let out = cp.palisade(&["policy", "list", "-o", "json", "--token-file", token]);
    let v: Value = serde_json::from_str(out.ok()).expect("policy list json");
    let mut keys: Vec<String> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let k = &p["key"];
            format!(
                "{}/{}/{}",
                k["kind"].as_str().unwrap_or_default(),
                k["namespace"].as_str().unwrap_or_default(),
                k["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    keys.sort();
    keys
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p.to_string_lossy().into_owned()
}

#[test]
fn kubectl_drives_the_policy_objects() {
    let cp = ControlPlane::start_tls("kubectl");
    let token = cp
        .token_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .expect("token file");
    let dir = scratch("kubectl");
    let kubeconfig = dir.join("kubeconfig");
    let kc = kubeconfig.to_string_lossy().into_owned();
    cp.palisade(&["kubeconfig", "--token-file", &token, "-o", &kc])
        .ok();
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(text.contains("certificate-authority-data"), "{text}");
    assert!(text.contains(&cp.url), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kubeconfig).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600));
    // kubectl would drop the token over plain HTTP and get 401s: refused up front.
    let plain = cp.palisade(&[
        "kubeconfig",
        "--server",
        "http://127.0.0.1:1",
        "--token-file",
        &token,
    ]);
    assert!(plain.error_line(2).contains("https://"), "{plain:#?}");
    let k = Kube {
        kubeconfig,
        dir: dir.clone(),
    };

    // Create all three kinds.
    let file = write(&dir, "policies.yaml", POLICIES);
    let out = k.run(&["apply", "-f", &file], None);
    let created = out.ok();
    for what in [
        "ciliumnetworkpolicy.cilium.io/web created",
        "ciliumclusterwidenetworkpolicy.cilium.io/dns created",
        "networkpolicy.networking.k8s.io/db created",
    ] {
        assert!(created.contains(what), "{out:#?}");
    }
    assert_eq!(
        listed(&cp, &token),
        [
            "CiliumClusterwideNetworkPolicy/-/dns",
            "CiliumNetworkPolicy/default/web",
            "NetworkPolicy/prod/db"
        ]
    );
    let web = k.json(&["get", "cnp", "web"]);
    assert_eq!(web["metadata"]["generation"], 1);
    assert_eq!(web["metadata"]["labels"]["team"], "shop");
    let uid = web["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(uid.len(), 36, "{web}");
    let rest = stored(&cp, &token, "CiliumNetworkPolicy", "default", "web");
    assert_eq!(rest["object"]["metadata"]["uid"], uid.as_str(), "{rest}");
    assert_eq!(
        web["metadata"]["resourceVersion"],
        rest["revision"].to_string().as_str()
    );
    let yaml = k.run(&["get", "ccnp", "dns", "-o", "yaml"], None);
    assert!(yaml.ok().contains("k8s-app: kube-dns"), "{yaml:#?}");

    // A changed re-apply: diff shows it, apply configures only what changed.
    let changed = POLICIES
        .replace(
            "{port: \"80\", protocol: TCP}",
            "{port: \"8080\", protocol: TCP}",
        )
        .replace("port: 5432", "port: 5433");
    let changed_file = write(&dir, "changed.yaml", &changed);
    let diff = k.run(&["diff", "-f", &changed_file], None);
    assert_eq!(diff.code, Some(1), "{diff:#?}");
    assert!(
        diff.stdout.contains("-      - port: \"80\"")
            && diff.stdout.contains("+      - port: \"8080\""),
        "{diff:#?}"
    );
    let out = k.run(&["apply", "-f", &changed_file], None);
    let applied = out.ok();
    assert!(
        applied.contains("ciliumnetworkpolicy.cilium.io/web configured"),
        "{out:#?}"
    );
    assert!(
        applied.contains("ciliumclusterwidenetworkpolicy.cilium.io/dns unchanged"),
        "{out:#?}"
    );
    assert!(
        applied.contains("networkpolicy.networking.k8s.io/db configured"),
        "{out:#?}"
    );
    let rest = stored(&cp, &token, "CiliumNetworkPolicy", "default", "web");
    assert_eq!(
        rest["object"]["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"],
        "8080"
    );
    assert_eq!(rest["object"]["metadata"]["generation"], 2);
    assert_eq!(rest["object"]["metadata"]["uid"], uid.as_str());
    let db = stored(&cp, &token, "NetworkPolicy", "prod", "db");
    assert_eq!(db["object"]["spec"]["ingress"][0]["ports"][0]["port"], 5433);
    let diff = k.run(&["diff", "-f", &changed_file], None);
    assert_eq!(diff.code, Some(0), "no difference left: {diff:#?}");

    // edit (a merge patch for the CRD, a strategic merge patch for NetworkPolicy).
    let editor = write(
        &dir,
        "editor.sh",
        "#!/bin/sh\nsed -i -e 's/app: client/app: edited/' -e 's/app: api/app: edited/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (what, args) in [
        (
            "ciliumnetworkpolicy.cilium.io/web edited",
            ["edit", "cnp", "web", "-n", "default"],
        ),
        (
            "networkpolicy.networking.k8s.io/db edited",
            ["edit", "netpol", "db", "-n", "prod"],
        ),
    ] {
        let out = k.run_env(&args, None, &[("KUBE_EDITOR", editor.as_str())]);
        assert!(out.ok().contains(what), "{out:#?}");
    }
    let rest = stored(&cp, &token, "CiliumNetworkPolicy", "default", "web");
    assert_eq!(
        rest["object"]["spec"]["ingress"][0]["fromEndpoints"][0]["matchLabels"]["app"],
        "edited"
    );
    let db = stored(&cp, &token, "NetworkPolicy", "prod", "db");
    assert_eq!(
        db["object"]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"],
        "edited"
    );
    assert_eq!(db["object"]["spec"]["ingress"][0]["ports"][0]["port"], 5433);

    // get -w sees a policy written through the REST API.
    let mut watcher = k
        .cmd(&["get", "cnp", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watcher.stdout.take().expect("watch stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The header and the initial `web`, before anything changes.
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("web")) {
        lines.push(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("initial list"),
        );
    }
    let late = POLICIES
        .split("---")
        .next()
        .unwrap_or_default()
        .replace("name: web", "name: late");
    cp.palisade_stdin(
        &["policy", "apply", "-f", "-", "--token-file", &token],
        Some(&late),
    )
    .ok();
    let seen = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l.contains("late") => break Some(l),
            Ok(l) => lines.push(l),
            Err(_) => break None,
        }
    };
    let _ = watcher.kill();
    let _ = watcher.wait();
    let seen = seen.unwrap_or_else(|| panic!("the watch saw no event for `late`: {lines:?}"));
    assert!(seen.starts_with("ADDED"), "{seen}");

    // create of an existing object: 409 AlreadyExists.
    let out = k.run(&["create", "-f", &file], None);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("AlreadyExists") && out.stderr.contains("\"web\" already exists"),
        "{out:#?}"
    );

    // An invalid object: refused with the engine's field error, nothing written.
    let before = listed(&cp, &token);
    let bad = POLICIES
        .split("---")
        .next()
        .unwrap_or_default()
        .replace("name: web", "name: bad")
        .replace("\"80\"", "\"70000\"");
    let out = k.run(&["apply", "-f", "-"], Some(&bad));
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr
            .contains("spec.ingress[0].toPorts[0].ports[0].port")
            && out.stderr.contains("70000")
            && out.stderr.contains("is invalid"),
        "{out:#?}"
    );
    assert_eq!(listed(&cp, &token), before);

    // Server-side apply: create, then a re-apply that drops a label removes it.
    let ssa = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: ssa\n  labels: {a: \"1\", b: \"2\"}\nspec:\n  endpointSelector: {matchLabels: {app: ssa}}\n  ingress: [{fromEndpoints: [{}]}]\n";
    let out = k.run(&["apply", "--server-side", "-f", "-"], Some(ssa));
    assert!(
        out.ok()
            .contains("ciliumclusterwidenetworkpolicy.cilium.io/ssa serverside-applied"),
        "{out:#?}"
    );
    let out = k.run(
        &["apply", "--server-side", "-f", "-"],
        Some(&ssa.replace(", b: \"2\"", "")),
    );
    assert!(out.ok().contains("serverside-applied"), "{out:#?}");
    let o = serde_json::from_str::<Value>(
        k.run(
            &[
                "get",
                "--raw",
                "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/ssa",
            ],
            None,
        )
        .ok(),
    )
    .expect("ssa json");
    assert_eq!(
        o["metadata"]["labels"],
        serde_json::json!({"a": "1"}),
        "{o}"
    );
    assert_eq!(
        o["metadata"]["managedFields"][0]["manager"], "kubectl",
        "{o}"
    );
    assert_eq!(
        o["metadata"]["managedFields"][0]["operation"], "Apply",
        "{o}"
    );

    // delete: gone from both views.
    let out = k.run(&["delete", "-f", &file], None);
    let deleted = out.ok();
    for what in [
        "ciliumnetworkpolicy.cilium.io \"web\" deleted",
        "ciliumclusterwidenetworkpolicy.cilium.io \"dns\" deleted",
        "networkpolicy.networking.k8s.io \"db\" deleted",
    ] {
        assert!(deleted.contains(what), "{out:#?}");
    }
    assert_eq!(
        listed(&cp, &token),
        [
            "CiliumClusterwideNetworkPolicy/-/ssa",
            "CiliumNetworkPolicy/default/late"
        ]
    );
    let names: Vec<String> = k.json(&["get", "cnp,ccnp,netpol", "-A"])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["late", "ssa"]);
    let out = k.run(&["get", "cnp", "web"], None);
    assert!(
        out.stderr.contains("NotFound") || out.stderr.contains("not found"),
        "{out:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watch_bookmarks_and_expired_resource_versions() {
    let mut cp = ControlPlane::start_tls("kubectl-watch");
    let token = cp
        .token_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .expect("token file");
    let dir = scratch("kubectl-watch");
    let kubeconfig = dir.join("kubeconfig");
    let kc = kubeconfig.to_string_lossy().into_owned();
    cp.palisade(&["kubeconfig", "--token-file", &token, "-o", &kc])
        .ok();
    let k = Kube {
        kubeconfig,
        dir: dir.clone(),
    };
    let one = POLICIES.split("---").next().unwrap_or_default();
    k.run(&["apply", "-f", "-"], Some(one)).ok();
    k.run(
        &["apply", "-f", "-"],
        Some(&one.replace("name: web", "name: web2")),
    )
    .ok();
    let list = k.run(
        &[
            "get",
            "--raw",
            "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies",
        ],
        None,
    );
    let list: Value = serde_json::from_str(list.ok()).expect("list json");
    assert_eq!(list["kind"], "CiliumNetworkPolicyList");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(rv, "2");
    // From revision 1: the second object, then a bookmark at the current revision while idle.
    let path = "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies?watch=1&resourceVersion=1&allowWatchBookmarks=true&timeoutSeconds=7";
    let out = k.run(&["get", "--raw", path], None);
    let events: Vec<Value> = out
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event a line"))
        .collect();
    assert_eq!(events[0]["type"], "ADDED", "{events:?}");
    assert_eq!(events[0]["object"]["metadata"]["name"], "web2");
    assert!(
        events[1..]
            .iter()
            .any(|e| e["type"] == "BOOKMARK" && e["object"]["metadata"]["resourceVersion"] == "2"),
        "{events:?}"
    );
    // After a restart this member's change feed starts afresh: revision 1 is too old.
    cp.restart();
    let out = k.run(&["get", "--raw", path], None);
    let last: Value =
        serde_json::from_str(out.ok().lines().last().unwrap_or_default()).expect("an ERROR event");
    assert_eq!(last["type"], "ERROR", "{last}");
    assert_eq!(last["object"]["code"], 410, "{last}");
    assert_eq!(last["object"]["reason"], "Expired", "{last}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A namespace with labels, as users keep it next to their policies.
const NAMESPACE: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n  labels: {env: prod}\n";

/// `v1/Namespace` objects (their labels are part of their pods' identities): kubectl creates,
/// labels (a patch), lists, reads and deletes them; `palisade policy apply` takes the same
/// YAML; an invalid label is refused with the field named; every step is checked against the
/// REST view of the same Raft state.
#[test]
fn kubectl_drives_namespaces_and_their_labels() {
    let cp = ControlPlane::start_tls("kubectl-ns");
    let token = cp
        .token_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .expect("token file");
    let dir = scratch("kubectl-ns");
    let kubeconfig = dir.join("kubeconfig");
    let kc = kubeconfig.to_string_lossy().into_owned();
    cp.palisade(&["kubeconfig", "--token-file", &token, "-o", &kc])
        .ok();
    let k = Kube {
        kubeconfig,
        dir: dir.clone(),
    };
    // The stored labels, but for the one every namespace carries (implied, may be stored).
    let labels = |name: &str| {
        let mut l =
            stored(&cp, &token, "Namespace", "-", name)["object"]["metadata"]["labels"].clone();
        if let Some(m) = l.as_object_mut() {
            m.remove("kubernetes.io/metadata.name");
        }
        l
    };

    let file = write(&dir, "ns.yaml", NAMESPACE);
    let out = k.run(&["apply", "-f", &file], None);
    assert!(out.ok().contains("namespace/team-a created"), "{out:#?}");
    assert_eq!(labels("team-a"), serde_json::json!({"env": "prod"}));
    let o = k.json(&["get", "namespace", "team-a"]);
    assert_eq!(o["metadata"]["labels"]["env"], "prod", "{o}");
    assert_eq!(
        o["metadata"]["labels"]["kubernetes.io/metadata.name"], "team-a",
        "{o}"
    );
    assert_eq!(o["status"]["phase"], "Active", "{o}");

    // Relabel: kubectl sends a patch; the stored labels follow.
    let out = k.run(
        &[
            "label",
            "namespace",
            "team-a",
            "env=dev",
            "tier=2",
            "--overwrite",
        ],
        None,
    );
    assert!(out.ok().contains("namespace/team-a labeled"), "{out:#?}");
    assert_eq!(
        labels("team-a"),
        serde_json::json!({"env": "dev", "tier": "2"})
    );
    let out = k.run(&["label", "namespace", "team-a", "tier-"], None);
    out.ok();
    assert_eq!(labels("team-a"), serde_json::json!({"env": "dev"}));

    // The list holds the stored namespace and `default` (which exists without an object).
    let list = k.json(&["get", "namespaces"]);
    let names: Vec<&str> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"team-a") && names.contains(&"default"),
        "{list}"
    );

    // An invalid label: refused with the field named, the stored labels unchanged.
    let bad = write(
        &dir,
        "bad.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n  labels: {env: \"-x\"}\n",
    );
    let out = k.run(&["apply", "-f", &bad], None);
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("metadata.labels.env"), "{out:#?}");
    assert_eq!(labels("team-a"), serde_json::json!({"env": "dev"}));

    // The same YAML through `palisade policy apply`.
    let b = write(
        &dir,
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-b\n  labels: {env: prod}\n",
    );
    let out = cp.palisade(&["policy", "apply", "-f", &b, "--token-file", &token]);
    assert!(out.ok().contains("namespace/team-b created"), "{out:#?}");
    let o = k.json(&["get", "ns", "team-b"]);
    assert_eq!(o["metadata"]["labels"]["env"], "prod", "{o}");
    let out = cp.palisade(&["policy", "apply", "-f", &bad, "--token-file", &token]);
    assert!(
        out.error_line(2).contains("metadata.labels.env"),
        "{out:#?}"
    );

    // Delete: gone from both views, with what the namespace held (as on Kubernetes); other
    // namespaces keep theirs.
    let held = write(
        &dir,
        "held.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: team-a}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: team-b}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: team-c}\nspec: {podSelector: {}}\n",
    );
    k.run(&["apply", "-f", &held], None).ok();
    assert!(listed(&cp, &token).contains(&"NetworkPolicy/team-a/deny".to_string()));
    let out = k.run(&["delete", "namespace", "team-a"], None);
    assert!(
        out.ok().contains("namespace \"team-a\" deleted"),
        "{out:#?}"
    );
    assert!(
        !listed(&cp, &token).contains(&"Namespace/-/team-a".to_string()),
        "{:?}",
        listed(&cp, &token)
    );
    let out = k.run(&["get", "namespace", "team-a"], None);
    assert!(
        out.stderr.contains("NotFound") || out.stderr.contains("not found"),
        "{out:#?}"
    );
    let now = listed(&cp, &token);
    assert!(
        !now.contains(&"NetworkPolicy/team-a/deny".to_string())
            && now.contains(&"NetworkPolicy/team-b/deny".to_string()),
        "{now:?}"
    );
    // A namespace that exists only because a policy lives in it goes the same way.
    let out = k.run(&["delete", "namespace", "team-c"], None);
    assert!(
        out.ok().contains("namespace \"team-c\" deleted"),
        "{out:#?}"
    );
    assert!(
        !listed(&cp, &token).contains(&"NetworkPolicy/team-c/deny".to_string()),
        "{:?}",
        listed(&cp, &token)
    );
}

/// A pod as a user (or a Deployment) writes it: far more than identities need.
const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: api-0
  namespace: shop
  labels: {app: api, tier: backend}
spec:
  serviceAccountName: api-sa
  nodeName: node-1
  containers:
    - name: main
      image: registry.example/api:1.2
      ports:
        - {name: http, containerPort: 8080, protocol: TCP}
        - {containerPort: 9090}
    - name: metrics
      image: registry.example/exporter:3
      ports:
        - {name: metrics, containerPort: 9100}
"#;

/// `v1/Pod` records (where agents on a Kubernetes node find a pod's labels, service account and
/// named ports): kubectl creates one, lists it with `get pods -A`, relabels it, writes its
/// addresses through the status subresource (as a kubelet does), and deletes it; an invalid
/// named port and an invalid address are refused with the field named; every step is checked
/// against the REST view of the same Raft state.
#[test]
fn kubectl_drives_pods() {
    let cp = ControlPlane::start_tls("kubectl-pods");
    let token = cp
        .token_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .expect("token file");
    let dir = scratch("kubectl-pods");
    let kubeconfig = dir.join("kubeconfig");
    let kc = kubeconfig.to_string_lossy().into_owned();
    cp.palisade(&["kubeconfig", "--token-file", &token, "-o", &kc])
        .ok();
    let k = Kube {
        kubeconfig,
        dir: dir.clone(),
    };
    let record = || stored(&cp, &token, "Pod", "shop", "api-0")["object"].clone();

    let file = write(&dir, "pod.yaml", POD);
    let out = k.run(&["apply", "-f", &file], None);
    assert!(out.ok().contains("pod/api-0 created"), "{out:#?}");
    let r = record();
    assert_eq!(
        r["metadata"]["labels"],
        serde_json::json!({"app": "api", "tier": "backend"}),
        "{r}"
    );
    assert_eq!(r["spec"]["serviceAccountName"], "api-sa", "{r}");
    assert_eq!(r["spec"]["containers"][1]["ports"][0]["name"], "metrics");

    // `get pods -A`: every namespace, as a cluster admin would look.
    let out = k.run(&["get", "pods", "-A"], None);
    let table = out.ok();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("shop") && l.contains("api-0")),
        "{out:#?}"
    );
    let all = k.json(&["get", "pods", "--all-namespaces"]);
    assert_eq!(all["items"][0]["kind"], "Pod", "{all}");
    assert_eq!(all["items"][0]["metadata"]["namespace"], "shop", "{all}");
    let o = k.json(&["get", "pod", "api-0", "-n", "shop"]);
    assert_eq!(o["spec"]["nodeName"], "node-1", "{o}");
    let out = k.run(&["get", "pods", "-n", "other"], None);
    assert!(!out.ok().contains("api-0"), "{out:#?}");

    // Relabel: kubectl sends a strategic merge patch; the stored labels follow.
    let out = k.run(
        &[
            "label",
            "pod",
            "api-0",
            "-n",
            "shop",
            "app=api-v2",
            "--overwrite",
        ],
        None,
    );
    assert!(out.ok().contains("pod/api-0 labeled"), "{out:#?}");
    assert_eq!(record()["metadata"]["labels"]["app"], "api-v2");

    // Addresses go through the status subresource, as the kubelet writes them (curl: kubectl
    // before v1.24 has no `--subresource`).
    let status = "/api/v1/namespaces/shop/pods/api-0/status";
    let (code, o) = curl(
        &cp,
        "PATCH",
        status,
        r#"{"status": {"podIPs": [{"ip": "10.0.1.5"}], "phase": "Running"}}"#,
    );
    assert_eq!(code, 200, "{o}");
    assert_eq!(record()["status"]["podIPs"][0]["ip"], "10.0.1.5");
    assert_eq!(
        record()["metadata"]["labels"]["app"],
        "api-v2",
        "status only"
    );
    let (code, o) = curl(
        &cp,
        "PATCH",
        status,
        r#"{"status": {"podIPs": [{"ip": "10.0.1.500"}]}}"#,
    );
    assert_eq!(code, 422, "{o}");
    assert_eq!(
        o["details"]["causes"][0]["field"], "status.podIPs[0].ip",
        "{o}"
    );
    assert_eq!(record()["status"]["podIPs"][0]["ip"], "10.0.1.5");

    // A pod's spec is fixed once created (as on Kubernetes): a changed port is refused and the
    // record stays as it was.
    let changed = write(
        &dir,
        "changed.yaml",
        &POD.replace(
            "name: metrics, containerPort: 9100",
            "name: metrics, containerPort: 9101",
        ),
    );
    let out = k.run(&["apply", "-f", &changed], None);
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains("spec: Invalid value: Forbidden"),
        "{out:#?}"
    );
    assert_eq!(
        record()["spec"]["containers"][1]["ports"][0]["containerPort"],
        9100
    );

    // An invalid named port: refused with the field named, nothing stored.
    let bad = write(
        &dir,
        "bad.yaml",
        &POD.replace("name: api-0", "name: api-1").replace(
            "name: metrics, containerPort",
            "name: Metrics, containerPort",
        ),
    );
    let out = k.run(&["apply", "-f", &bad], None);
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains("spec.containers[1].ports[0].name"),
        "{out:#?}"
    );
    assert!(
        !listed(&cp, &token).contains(&"Pod/shop/api-1".to_string()),
        "{:?}",
        listed(&cp, &token)
    );

    let out = k.run(&["delete", "pod", "api-0", "-n", "shop"], None);
    assert!(out.ok().contains("pod \"api-0\" deleted"), "{out:#?}");
    assert!(
        !listed(&cp, &token).contains(&"Pod/shop/api-0".to_string()),
        "{:?}",
        listed(&cp, &token)
    );
    let out = k.run(&["get", "pods", "-A"], None);
    assert!(!out.stdout.contains("api-0"), "{out:#?}");
}

/// Issues an operator certificate of `role` from the member's CA into `out` (with `ca.pem`),
/// through the real `certs issue` command.
fn operator_certificate(cp: &ControlPlane, role: &str, name: &str, out: &Path) {
    let ca = cp.dir.join("ca").to_string_lossy().into_owned();
    let out = out.to_string_lossy().into_owned();
    crate::fixture::run(
        &[
            "controlplane",
            "certs",
            "issue",
            "--ca-dir",
            &ca,
            "--name",
            name,
            "--role",
            role,
            "--out",
            &out,
        ],
        &[],
        None,
    )
    .ok();
}

/// A kubeconfig written by `palisade kubeconfig` for the certificate in `tls` (no token).
fn certificate_kubeconfig(cp: &ControlPlane, tls: &Path, dir: &Path) -> Kube {
    let kubeconfig = dir.join("kubeconfig");
    let (kc, tls) = (
        kubeconfig.to_string_lossy().into_owned(),
        tls.to_string_lossy().into_owned(),
    );
    crate::fixture::run(
        &[
            "kubeconfig",
            "--server",
            &cp.url,
            "--tls-dir",
            &tls,
            "-o",
            &kc,
        ],
        &[],
        None,
    )
    .ok();
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(
        text.contains("client-certificate-data") && text.contains("client-key-data"),
        "{text}"
    );
    assert!(!text.contains("token"), "no token in it: {text}");
    Kube {
        kubeconfig,
        dir: dir.to_owned(),
    }
}

/// The seed's own policies (`deploy/examples/zero-trust/`, the tutorial's files, unchanged)
/// applied, diffed and deleted with kubectl through a client-certificate kubeconfig: an admin
/// certificate may do everything, a read certificate may only read.
#[test]
fn kubectl_drives_the_seed_policies_with_operator_certificates() {
    let cp = ControlPlane::start_tls("kubectl-seed");
    let token = cp
        .token_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .expect("token file");
    let dir = scratch("kubectl-seed");
    let (admin_tls, read_tls) = (dir.join("admin-tls"), dir.join("read-tls"));
    operator_certificate(&cp, "admin", "ops", &admin_tls);
    operator_certificate(&cp, "read", "auditor", &read_tls);
    let (admin_dir, read_dir) = (dir.join("admin"), dir.join("read"));
    std::fs::create_dir_all(&admin_dir).expect("dir");
    std::fs::create_dir_all(&read_dir).expect("dir");
    let admin = certificate_kubeconfig(&cp, &admin_tls, &admin_dir);
    let reader = certificate_kubeconfig(&cp, &read_tls, &read_dir);

    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/zero-trust");
    let seed = seed.to_string_lossy().into_owned();
    // The directory in file order, as a user applies it: 06 and 08 replace objects of 03 and
    // 04 (the tutorial's L7 and service-account steps), so those are "configured".
    let out = admin.run(&["apply", "-f", &seed], None);
    let applied = out.ok();
    for what in [
        "ciliumnetworkpolicy.cilium.io/default-deny created",
        "ciliumnetworkpolicy.cilium.io/api-ingress configured",
        "ciliumclusterwidenetworkpolicy.cilium.io/cluster-default-deny created",
        "ciliumnetworkpolicy.cilium.io/api-egress-partner created",
    ] {
        assert!(applied.contains(what), "{what}: {out:#?}");
    }
    let mut expected: Vec<String> = [
        "allow-dns",
        "api-egress",
        "api-egress-partner",
        "api-ingress",
        "db-ingress",
        "default-deny",
        "frontend-egress",
        "frontend-ingress",
        "to-frontend",
    ]
    .iter()
    .map(|n| format!("CiliumNetworkPolicy/demo/{n}"))
    .collect();
    expected.insert(
        0,
        "CiliumClusterwideNetworkPolicy/-/cluster-default-deny".into(),
    );
    assert_eq!(listed(&cp, &token), expected);
    // The stored object is the file's, field for field (the L7 step's rules included).
    let file = std::fs::read_to_string(format!("{seed}/06-api-l7.yaml")).expect("seed file");
    let from_file: Value = serde_yaml::from_str(&file).expect("seed yaml");
    let rest = stored(&cp, &token, "CiliumNetworkPolicy", "demo", "api-ingress");
    assert_eq!(rest["object"]["spec"], from_file["spec"], "{rest}");

    // diff: nothing left to change for a file applied last; the replaced step differs.
    let first = format!("{seed}/01-default-deny.yaml");
    let diff = admin.run(&["diff", "-f", &first], None);
    assert_eq!(diff.code, Some(0), "{diff:#?}");
    let replaced = format!("{seed}/03-frontend-to-api.yaml");
    let diff = admin.run(&["diff", "-f", &replaced], None);
    assert_eq!(
        diff.code,
        Some(1),
        "06 replaced 03's api-ingress: {diff:#?}"
    );

    // The read certificate reads, and is refused a write with Kubernetes' Forbidden.
    let got = reader.json(&["get", "cnp", "-n", "demo"]);
    assert_eq!(got["items"].as_array().map(Vec::len), Some(9), "{got}");
    let refused = reader.run(&["delete", "-f", &first], None);
    assert_ne!(refused.code, Some(0), "{refused:#?}");
    assert!(
        refused.stderr.contains("Forbidden") && refused.stderr.contains("read certificate"),
        "{refused:#?}"
    );
    assert_eq!(
        listed(&cp, &token).len(),
        10,
        "nothing deleted by the reader"
    );

    // delete -f removes them all (the duplicated names are already gone the second time).
    let out = admin.run(&["delete", "-f", &seed, "--ignore-not-found"], None);
    assert!(
        out.ok()
            .contains("ciliumclusterwidenetworkpolicy.cilium.io \"cluster-default-deny\" deleted"),
        "{out:#?}"
    );
    assert!(listed(&cp, &token).is_empty(), "all deleted");
}
