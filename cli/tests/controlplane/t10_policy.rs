//! `policy apply|get|list|delete`: the YAML users have for Kubernetes, applied unchanged; an
//! invalid set applies nothing.

use serde_json::Value;

use crate::fixture::{ControlPlane, scratch};

/// A CiliumNetworkPolicy without a namespace, a NetworkPolicy and a CiliumClusterwideNetworkPolicy,
/// as kubectl users write them.
pub const SET: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {}
  egress:
    - toPorts: [{ports: [{port: \"53\", protocol: UDP}]}]
";

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn keys(list: &Value) -> Vec<String> {
    let mut k: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}",
                p["key"]["kind"].as_str().expect("kind"),
                p["key"]["namespace"].as_str().expect("namespace"),
                p["key"]["name"].as_str().expect("name")
            )
        })
        .collect();
    k.sort();
    k
}

#[test]
fn apply_get_list_reapply_delete() {
    let cp = ControlPlane::start("apply");
    let dir = scratch("apply-files");
    let file = dir.join("set.yaml");
    std::fs::write(&file, SET).expect("write");
    let file = file.to_str().expect("utf-8");

    let out = cp.palisade(&["policy", "apply", "-f", file]);
    assert_eq!(
        out.ok(),
        "ciliumnetworkpolicy.cilium.io/web (namespace default) created\n\
         networkpolicy.networking.k8s.io/deny-all (namespace prod) created\n\
         ciliumclusterwidenetworkpolicy.cilium.io/dns created\n\
         policy revision 3\n"
    );

    // Table, JSON and YAML agree.
    let table = cp.palisade(&["policy", "list"]);
    let lines: Vec<Vec<&str>> = table
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["KIND", "NAMESPACE", "NAME", "REVISION"]);
    assert!(
        lines.contains(&vec!["CiliumNetworkPolicy", "default", "web", "1"]),
        "{lines:?}"
    );
    assert!(
        lines.contains(&vec!["NetworkPolicy", "prod", "deny-all", "2"]),
        "{lines:?}"
    );
    assert!(
        lines.contains(&vec!["CiliumClusterwideNetworkPolicy", "-", "dns", "3"]),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().map(Vec::as_slice),
        Some(&["policy", "revision", "3"][..])
    );
    let list = json(cp.palisade(&["policy", "list", "-o", "json"]).ok());
    assert_eq!(list["revision"], 3);
    assert_eq!(
        keys(&list),
        [
            "CiliumClusterwideNetworkPolicy/-/dns",
            "CiliumNetworkPolicy/default/web",
            "NetworkPolicy/prod/deny-all"
        ]
    );
    let yaml: Value =
        serde_yaml::from_str(cp.palisade(&["policy", "list", "-o", "yaml"]).ok()).expect("YAML");
    assert_eq!(yaml, list);

    // The stored object is the document, with the namespace kubectl would have given it.
    let got = json(
        cp.palisade(&["policy", "get", "cnp/default/web", "-o", "json"])
            .ok(),
    );
    assert_eq!(got["revision"], 1);
    assert_eq!(got["object"]["metadata"]["namespace"], "default");
    assert_eq!(
        got["object"]["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"],
        "80"
    );
    let got: Value = serde_yaml::from_str(
        cp.palisade(&[
            "policy",
            "get",
            "CiliumClusterwideNetworkPolicy/dns",
            "-o",
            "yaml",
        ])
        .ok(),
    )
    .expect("YAML");
    assert_eq!(got["key"]["namespace"], "-");
    assert_eq!(
        got["object"]["spec"]["egress"][0]["toPorts"][0]["ports"][0]["protocol"],
        "UDP"
    );
    let row = cp.palisade(&["policy", "get", "netpol/prod/deny-all"]);
    assert!(
        row.ok()
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["NetworkPolicy", "prod", "deny-all", "2"]),
        "{row:?}"
    );
    let missing = cp.palisade(&["policy", "get", "cnp/default/nope"]);
    assert!(
        missing
            .error_line(2)
            .contains("`CiliumNetworkPolicy/default/nope` not found"),
        "{missing:?}"
    );

    // Re-applying (from a directory, then from stdin) changes nothing, not even the revision.
    let again = cp.palisade(&["policy", "apply", "-f", dir.to_str().expect("utf-8")]);
    assert_eq!(again.ok().matches(" unchanged\n").count(), 3, "{again:?}");
    assert!(again.ok().ends_with("policy revision 3\n"), "{again:?}");
    let stdin = cp.palisade_stdin(&["policy", "apply", "-f", "-"], Some(SET));
    assert_eq!(stdin.ok().matches(" unchanged\n").count(), 3, "{stdin:?}");
    // A changed document is `configured` and bumps the revision.
    let changed = SET.replace("port: \"80\"", "port: \"8080\"");
    let out = cp.palisade_stdin(&["policy", "apply", "-f", "-"], Some(&changed));
    assert!(
        out.ok()
            .contains("ciliumnetworkpolicy.cilium.io/web (namespace default) configured\n"),
        "{out:?}"
    );
    assert!(out.ok().ends_with("policy revision 4\n"), "{out:?}");

    // Delete by key, again (absent: exit 1), then the rest by file.
    let out = cp.palisade(&["policy", "delete", "cnp/web"]);
    assert_eq!(
        out.ok(),
        "CiliumNetworkPolicy/default/web deleted\npolicy revision 5\n"
    );
    let out = cp.palisade(&["policy", "delete", "cnp/web"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout
            .contains("CiliumNetworkPolicy/default/web not found"),
        "{out:?}"
    );
    cp.palisade(&["policy", "delete", "cnp/web", "--ignore-not-found"])
        .ok();
    let out = cp.palisade(&["policy", "delete", "-f", file, "--ignore-not-found"]);
    assert!(
        out.ok().contains("NetworkPolicy/prod/deny-all deleted\n"),
        "{out:?}"
    );
    assert!(
        out.ok()
            .contains("CiliumClusterwideNetworkPolicy/-/dns deleted\n"),
        "{out:?}"
    );
    let list = json(cp.palisade(&["policy", "list", "-o", "json"]).ok());
    assert_eq!(list["items"], Value::Array(vec![]), "{list}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_document_applies_nothing() {
    let cp = ControlPlane::start("invalid");
    let dir = scratch("invalid-files");
    // Document 3 of the first file is invalid; the second file is valid.
    let bad = SET.replace("port: \"53\"", "port: \"70000\"");
    std::fs::write(dir.join("a.yaml"), &bad).expect("write");
    std::fs::write(dir.join("b.yaml"), OTHER).expect("write");
    let a = dir.join("a.yaml");
    let b = dir.join("b.yaml");
    let out = cp.palisade(&[
        "policy",
        "apply",
        "-f",
        b.to_str().expect("utf-8"),
        "-f",
        a.to_str().expect("utf-8"),
    ]);
    let line = out.error_line(2);
    assert!(line.contains("a.yaml: document 3"), "{line}");
    assert!(
        line.contains("`spec.egress[0].toPorts[0].ports[0].port`"),
        "{line}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // An unknown field is named too.
    let typo = SET.replace("fromEndpoints", "fromEndpointz");
    let out = cp.palisade_stdin(&["policy", "apply", "-f", "-"], Some(&typo));
    let line = out.error_line(2);
    assert!(line.contains("<stdin>: document 1"), "{line}");
    assert!(line.contains("fromEndpointz"), "{line}");

    // Nothing of either set reached the control plane.
    let list = json(cp.palisade(&["policy", "list", "-o", "json"]).ok());
    assert_eq!(list["revision"], 0, "{list}");
    assert_eq!(list["items"], Value::Array(vec![]), "{list}");

    // Bad keys and missing files are one-line errors too.
    assert!(
        cp.palisade(&["policy", "get", "deploy/a/b"])
            .error_line(2)
            .contains("unknown kind `deploy`")
    );
    let out = cp.palisade(&["policy", "apply", "-f", "/nonexistent/p.yaml"]);
    assert!(
        out.error_line(2)
            .contains("cannot read `/nonexistent/p.yaml`"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A valid set of its own, applied together with an invalid one.
pub const OTHER: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
";
