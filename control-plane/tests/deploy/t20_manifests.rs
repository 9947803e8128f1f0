//! `deploy/kubernetes/` and `deploy/crds/`: every manifest parses (serde_yaml), names what it is,
//! and hangs together (selectors select the pod templates, Services and the PodDisruptionBudget
//! select the control plane, every volume mount has its volume, the mirror's ClusterRole grants
//! read access and status updates only); then the real `kubectl` decodes each file as it would
//! for `kubectl create` (`annotate --local --dry-run=client -o yaml`: no API server needed, a
//! broken file fails). The test fails, it does not skip, without `kubectl` on PATH
//! (`scripts/bootstrap.sh` installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["deploy/kubernetes", "deploy/crds"] {
        let d = root().join(dir);
        out.extend(
            std::fs::read_dir(&d)
                .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml")),
        );
    }
    out.sort();
    out
}

fn docs(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde_yaml::with::singleton_map_recursive::deserialize(d)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Runs the real kubectl's client-side decoding of `file`; the names of what it read.
fn kubectl_decode(file: &Path) -> Result<Vec<String>, String> {
    let out = Command::new("kubectl")
        .args([
            "--kubeconfig",
            "/dev/null",
            "annotate",
            "--local",
            "--dry-run=client",
        ])
        .args(["-o", "name", "palisade.io/checked=true", "-f"])
        .arg(file)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl ({e}): install it with scripts/bootstrap.sh")
        });
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

const CLUSTER_SCOPED: [&str; 4] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
];

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &Value, target: &Value) -> bool {
    let (sel, tgt) = (labels(selector), labels(target));
    !sel.is_empty() && sel.iter().all(|(k, v)| tgt.get(k) == Some(v))
}

/// What is wrong with the set of objects (empty when nothing is).
fn check(objects: &[(String, Value)]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut pods: Vec<(String, Value)> = Vec::new();
    for (origin, o) in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let here = format!("{origin}: {kind}/{name}");
        if !o["apiVersion"].is_string() || kind.is_empty() || name.is_empty() {
            errors.push(format!(
                "{here}: apiVersion, kind and metadata.name are required"
            ));
        }
        let ns = o["metadata"]["namespace"].as_str();
        if CLUSTER_SCOPED.contains(&kind) != ns.is_none() {
            errors.push(format!("{here}: namespace {ns:?} for a {kind}"));
        }
        if matches!(kind, "StatefulSet" | "DaemonSet" | "Deployment") {
            let spec = &o["spec"];
            let template = &spec["template"];
            if !selects(
                &spec["selector"]["matchLabels"],
                &template["metadata"]["labels"],
            ) {
                errors.push(format!(
                    "{here}: the selector does not select the pod template"
                ));
            }
            let mut volumes: Vec<&str> = template["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["name"].as_str())
                .collect();
            volumes.extend(
                spec["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v["metadata"]["name"].as_str()),
            );
            for list in ["initContainers", "containers"] {
                for c in template["spec"][list].as_array().into_iter().flatten() {
                    let cname = c["name"].as_str().unwrap_or_default();
                    if cname.is_empty() || !c["image"].is_string() {
                        errors.push(format!("{here}: a container without name or image"));
                    }
                    for m in c["volumeMounts"].as_array().into_iter().flatten() {
                        let v = m["name"].as_str().unwrap_or_default();
                        if !volumes.contains(&v) {
                            errors.push(format!("{here}: {cname} mounts undeclared volume `{v}`"));
                        }
                    }
                }
            }
            pods.push((here.clone(), template["metadata"]["labels"].clone()));
        }
        if kind == "StatefulSet" {
            let svc = o["spec"]["serviceName"].as_str().unwrap_or_default();
            let headless = objects.iter().any(|(_, s)| {
                s["kind"] == "Service"
                    && s["metadata"]["name"] == svc
                    && s["spec"]["clusterIP"] == "None"
            });
            if !headless {
                errors.push(format!(
                    "{here}: serviceName `{svc}` is not a headless Service here"
                ));
            }
            if !o["spec"]["replicas"].is_u64() {
                errors.push(format!("{here}: replicas must be an integer"));
            }
        }
    }
    for (origin, o) in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let selector = match kind {
            "Service" => &o["spec"]["selector"],
            "PodDisruptionBudget" => &o["spec"]["selector"]["matchLabels"],
            _ => continue,
        };
        if !pods.iter().any(|(_, l)| selects(selector, l)) {
            errors.push(format!("{origin}: {kind} selects no pod template"));
        }
    }
    errors
}

fn all_objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for f in files() {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let parsed = docs(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!parsed.is_empty(), "{}: no objects", f.display());
        out.extend(parsed.into_iter().map(|d| (f.display().to_string(), d)));
    }
    out
}

#[test]
fn every_manifest_parses_hangs_together_and_kubectl_reads_it() {
    let objects = all_objects();
    let errors = check(&objects);
    assert!(errors.is_empty(), "{errors:#?}");
    let kinds: Vec<&str> = objects
        .iter()
        .filter_map(|(_, o)| o["kind"].as_str())
        .collect();
    for k in [
        "StatefulSet",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(&k), "no {k} in deploy/");
    }
    let sts = objects
        .iter()
        .find(|(_, o)| o["kind"] == "StatefulSet")
        .map(|(_, o)| o.clone())
        .unwrap_or_default();
    assert_eq!(sts["spec"]["replicas"], 3);
    // The members serve gRPC (automation, the agents' change stream, the flow relay) and the
    // web UI, and Services expose both.
    let start = sts["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        start.contains("--grpc-listen 0.0.0.0:9001") && start.contains("--ui-listen 0.0.0.0:12000"),
        "{start}"
    );
    let service_ports: Vec<String> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == "Service")
        .flat_map(|(_, o)| o["spec"]["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["targetPort"].as_str().map(str::to_owned))
        .collect();
    for port in ["api", "grpc", "ui"] {
        assert!(
            service_ports.iter().any(|p| p == port),
            "no Service for `{port}`"
        );
    }
    assert!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"].is_object());
    let ds = objects
        .iter()
        .find(|(_, o)| o["kind"] == "DaemonSet")
        .map(|(_, o)| o.clone())
        .unwrap_or_default();
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
    assert!(
        ds["spec"]["template"]["spec"]["containers"][0]["args"]
            .to_string()
            .contains("--control-plane-grpc=https://palisade-api.palisade-system.svc:9001"),
        "the agents follow the gRPC change stream"
    );
    assert!(
        ds["spec"]["template"]["spec"]["initContainers"][0]["args"][0]
            .as_str()
            .is_some_and(|s| s.contains("palisade-cni"))
    );

    // The mirror runs in the cluster under its own service account (the role below), with no
    // kubeconfig: in-cluster configuration.
    let mirror = objects
        .iter()
        .find(|(_, o)| o["kind"] == "Deployment" && o["metadata"]["name"] == "palisade-mirror")
        .map(|(_, o)| o.clone())
        .unwrap_or_default();
    let pod = &mirror["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "palisade-mirror", "{mirror}");
    assert_eq!(
        pod["containers"][0]["command"],
        serde_json::json!(["palisade", "mirror"])
    );
    assert!(
        !pod["containers"][0]["args"]
            .to_string()
            .contains("kubeconfig"),
        "{mirror}"
    );
    // Its metrics on a port of its own (host network: the agent has 9962), declared.
    assert!(
        pod["containers"][0]["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "--metrics-listen=0.0.0.0:9963")),
        "{mirror}"
    );
    assert_eq!(
        pod["containers"][0]["ports"][0]["containerPort"], 9963,
        "{mirror}"
    );

    // The mirror's role: read on the policy kinds, namespaces and pods (what identities are made
    // of; no ServiceAccounts), patch on status only (kube-rs `patch_status` sends a PATCH).
    let role = objects
        .iter()
        .find(|(_, o)| o["kind"] == "ClusterRole")
        .map(|(_, o)| o.clone())
        .unwrap_or_default();
    let mut grants: Vec<String> = Vec::new();
    for r in role["rules"].as_array().into_iter().flatten() {
        for g in r["apiGroups"].as_array().into_iter().flatten() {
            for res in r["resources"].as_array().into_iter().flatten() {
                for v in r["verbs"].as_array().into_iter().flatten() {
                    grants.push(format!(
                        "{}/{}:{}",
                        g.as_str().unwrap_or_default(),
                        res.as_str().unwrap_or_default(),
                        v.as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    grants.sort();
    let mut want: Vec<String> = Vec::new();
    for (g, res) in [
        ("cilium.io", "ciliumnetworkpolicies"),
        ("cilium.io", "ciliumclusterwidenetworkpolicies"),
        ("networking.k8s.io", "networkpolicies"),
        ("", "namespaces"),
        ("", "pods"),
    ] {
        for v in ["get", "list", "watch"] {
            want.push(format!("{g}/{res}:{v}"));
        }
    }
    want.push("cilium.io/ciliumnetworkpolicies/status:patch".into());
    want.push("cilium.io/ciliumclusterwidenetworkpolicies/status:patch".into());
    want.sort();
    assert_eq!(grants, want);

    // The real kubectl reads every file, object for object.
    for f in files() {
        let names =
            kubectl_decode(&f).unwrap_or_else(|e| panic!("kubectl refused {}: {e}", f.display()));
        let count = objects
            .iter()
            .filter(|(o, _)| *o == f.display().to_string())
            .count();
        assert_eq!(names.len(), count, "{}: {names:?}", f.display());
    }
}

#[test]
fn broken_manifests_are_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sts = root().join("deploy/kubernetes/20-controlplane.yaml");
    let text = std::fs::read_to_string(&sts).expect("read");
    // Broken YAML: kubectl refuses the file.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        text.replacen("  serviceName:", "serviceName:\n   x:", 1),
    )
    .expect("write");
    assert!(
        kubectl_decode(&broken).is_err(),
        "kubectl accepted broken YAML"
    );
    // A mount of an undeclared volume and a selector that selects nothing: the checks refuse.
    let bad = text
        .replacen("{name: data, mountPath", "{name: dta, mountPath", 1)
        .replacen(
            "  minAvailable: 2\n  selector:\n    matchLabels: {app.kubernetes.io/name: palisade-controlplane}",
            "  minAvailable: 2\n  selector:\n    matchLabels: {app.kubernetes.io/name: nothing}",
            1,
        );
    let objects: Vec<(String, Value)> = docs(&bad)
        .expect("still YAML")
        .into_iter()
        .map(|d| ("bad".to_owned(), d))
        .collect();
    let errors = check(&objects);
    assert!(
        errors.iter().any(|e| e.contains("undeclared volume `dta`")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("PodDisruptionBudget selects no pod template")),
        "{errors:#?}"
    );
}
