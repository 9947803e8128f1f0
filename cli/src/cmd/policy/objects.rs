//! Policy objects read from files for `policy apply` and `policy delete -f`: each document
//! (or `List` item) becomes the JSON object to send and the key it is stored under.
//!
//! Parsing and validation are pure (text in, objects or the first error out) so they are unit
//! tested here; reading files and stdin is the only IO.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use palisade_api::controlplane::PolicyKey;
use palisade_policy::error::{DocRef, InputError};
use palisade_policy::{load, namespace, pod};
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// The namespace key of cluster-scoped kinds (`CiliumClusterwideNetworkPolicy`).
pub const CLUSTER_SCOPED: &str = "-";

/// One policy object to apply or delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Where it is stored.
    pub key: PolicyKey,
    /// The object as sent (JSON), namespace filled in for namespaced kinds.
    pub object: Json,
    /// Where it came from, `FILE: document N` (and `items[i]` inside a `List`).
    pub origin: String,
}

impl Object {
    /// `ciliumnetworkpolicy.cilium.io/NAME`, the way kubectl names objects.
    pub fn display_name(&self) -> String {
        let group = self.object["apiVersion"]
            .as_str()
            .and_then(|a| a.split_once('/'))
            .map(|(g, _)| format!(".{g}"))
            .unwrap_or_default();
        let ns = if self.key.namespace == CLUSTER_SCOPED {
            String::new()
        } else {
            format!(" (namespace {})", self.key.namespace)
        };
        format!(
            "{}{group}/{}{ns}",
            self.key.kind.to_lowercase(),
            self.key.name
        )
    }
}

/// A file's name (as shown in errors) and contents; `-` is standard input.
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            out.push(("<stdin>".to_owned(), text));
            continue;
        }
        for f in files_of(p)? {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read `{}`", f.display()))?;
            out.push((f.display().to_string(), text));
        }
    }
    Ok(out)
}

/// `path` itself, or a directory's `*.yaml`, `*.yml` and `*.json` files (not recursive, sorted).
fn files_of(path: &Path) -> Result<Vec<PathBuf>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list `{}`", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| ["yaml", "yml", "json"].contains(&x))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(anyhow!(
            "`{}` holds no *.yaml, *.yml or *.json file",
            path.display()
        ));
    }
    Ok(files)
}

/// Every object of every source, each validated by the policy engine exactly as the server
/// will (the same loader), so that an invalid set is refused before anything is sent. The
/// first error names the file, the document and the field. Two documents with the same key
/// are refused too: one of them would silently win.
pub fn parse_all(sources: &[(String, String)]) -> Result<Vec<Object>> {
    let mut out: Vec<Object> = Vec::new();
    for (name, text) in sources {
        out.extend(parse(name, text, true)?);
    }
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for o in &out {
        if let Some(first) = seen.insert(o.key.storage_key(), &o.origin) {
            return Err(anyhow!(
                "{}: `{}` is also defined by {first}",
                o.origin,
                o.key.storage_key()
            ));
        }
    }
    if out.is_empty() {
        return Err(anyhow!("no policy object found in the input"));
    }
    Ok(out)
}

/// The objects of one file. With `validate`, the policy engine must accept each one; without,
/// only the envelope (kind, name) is read (enough to delete).
pub fn parse(file: &str, text: &str, validate: bool) -> Result<Vec<Object>, InputError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_ref = DocRef::Document(i + 1);
        let value = Yaml::deserialize(doc).map_err(|e| {
            InputError::new(file, doc_ref.clone(), "", format!("invalid YAML/JSON: {e}"))
        })?;
        if value.is_null() {
            continue;
        }
        let items = match value.get("kind").and_then(Yaml::as_str) {
            Some("List") => match value.get("items") {
                Some(Yaml::Sequence(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(k, v)| (format!("items[{k}]"), v.clone()))
                    .collect(),
                _ => {
                    return Err(InputError::new(
                        file,
                        doc_ref,
                        "items",
                        "a List needs an `items` sequence",
                    ));
                }
            },
            _ => vec![(String::new(), value)],
        };
        for (prefix, item) in items {
            out.push(object(file, &doc_ref, &prefix, item, validate)?);
        }
    }
    Ok(out)
}

/// The object of a suite's `policies[i]`, validated like a document of a file (what
/// `palisade lab test` applies to the lab's control plane).
pub fn suite_policy(file: &str, i: usize, item: Yaml) -> Result<Object, InputError> {
    object(file, &DocRef::SuitePolicy(i), "", item, true)
}

fn at(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_owned()
    } else {
        format!("{prefix}.{path}")
    }
}

/// One object: converted to JSON (what is sent), namespace settled, then validated.
fn object(
    file: &str,
    doc: &DocRef,
    prefix: &str,
    item: Yaml,
    validate: bool,
) -> Result<Object, InputError> {
    let err =
        |path: &str, reason: String| InputError::new(file, doc.clone(), at(prefix, path), reason);
    // JSON has string keys only; YAML allows others, which no policy object has.
    let mut json: Json = serde_json::to_value(&item)
        .map_err(|e| err("", format!("not representable as JSON: {e}")))?;
    let kind = json["kind"].as_str().map(str::to_owned);
    let name = json["metadata"]["name"].as_str().map(str::to_owned);
    let namespaced = match kind.as_deref() {
        // A Pod record: where agents on a Kubernetes node find a pod's labels, service account
        // and named ports (the mirror writes them; tests and hand-run nodes apply them).
        Some("CiliumNetworkPolicy" | "NetworkPolicy" | pod::KIND) => true,
        // A Namespace's labels are part of its pods' identities: stored beside the policies.
        Some("CiliumClusterwideNetworkPolicy" | namespace::KIND) => false,
        // The loader's message lists the kinds; without validation, say it here.
        _ if !validate => {
            return Err(err(
                "kind",
                "expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy, Namespace or Pod"
                    .to_owned(),
            ));
        }
        _ => true,
    };
    if let Some(meta) = json.get_mut("metadata").and_then(Json::as_object_mut) {
        if namespaced {
            // What kubectl does: an object without a namespace goes to `default`. Written into
            // the object so that the stored object says where it applies.
            meta.entry("namespace")
                .or_insert_with(|| Json::String("default".to_owned()));
        } else {
            // Cluster-scoped: Kubernetes ignores a namespace here, and so does the engine.
            meta.remove("namespace");
        }
    }
    if validate && kind.as_deref() == Some(namespace::KIND) {
        namespace::parse(&json).map_err(|e| err(&e.field, e.reason))?;
    } else if validate && kind.as_deref() == Some(pod::KIND) {
        pod::parse(&json).map_err(|e| err(&e.field, e.reason))?;
    } else if validate {
        // The same loader, on the same JSON, as the server's validator: what passes here
        // passes there (unless the server's engine is a different version).
        let as_yaml: Yaml = serde_yaml::to_value(&json).map_err(|e| err("", e.to_string()))?;
        let mut policies = Vec::new();
        load::load_value(file, doc.clone(), prefix, as_yaml, &mut policies)?;
        if policies.len() != 1 {
            return Err(err(
                "",
                format!("must hold exactly one policy, not {}", policies.len()),
            ));
        }
    }
    let (Some(kind), Some(name)) = (kind, name.filter(|n| !n.is_empty())) else {
        return Err(err("metadata.name", "a name is required".to_owned()));
    };
    if name.contains('/') || name.len() > 253 {
        return Err(err(
            "metadata.name",
            "must be 1 to 253 characters without `/`".to_owned(),
        ));
    }
    let namespace = if namespaced {
        json["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned()
    } else {
        CLUSTER_SCOPED.to_owned()
    };
    Ok(Object {
        key: PolicyKey {
            kind,
            namespace,
            name,
        },
        object: json,
        origin: if prefix.is_empty() {
            format!("{file}: {doc}")
        } else {
            format!("{file}: {doc}: {prefix}")
        },
    })
}

/// Parses `KIND/NAMESPACE/NAME`, or `KIND/NAME` (namespace `default`, or `-` for the
/// cluster-scoped kind). Kinds are case-insensitive and may be short: `cnp`, `ccnp`, `netpol`.
pub fn parse_key(s: &str) -> Result<PolicyKey> {
    let parts: Vec<&str> = s.split('/').collect();
    let (kind, ns, name) = match parts.as_slice() {
        [k, ns, n] => (*k, Some(*ns), *n),
        [k, n] => (*k, None, *n),
        _ => {
            return Err(anyhow!(
                "`{s}`: expected KIND/NAMESPACE/NAME or KIND/NAME, e.g. cnp/default/allow-web"
            ));
        }
    };
    let kind = match kind.to_ascii_lowercase().as_str() {
        "cnp" | "ciliumnetworkpolicy" | "ciliumnetworkpolicies" => "CiliumNetworkPolicy",
        "ccnp" | "ciliumclusterwidenetworkpolicy" | "ciliumclusterwidenetworkpolicies" => {
            "CiliumClusterwideNetworkPolicy"
        }
        "netpol" | "networkpolicy" | "networkpolicies" => "NetworkPolicy",
        "ns" | "namespace" | "namespaces" => namespace::KIND,
        "po" | "pod" | "pods" => pod::KIND,
        _ => {
            return Err(anyhow!(
                "`{s}`: unknown kind `{kind}` (CiliumNetworkPolicy/cnp, CiliumClusterwideNetworkPolicy/ccnp, NetworkPolicy/netpol, Namespace/ns, Pod/po)"
            ));
        }
    };
    let cluster = matches!(kind, "CiliumClusterwideNetworkPolicy" | namespace::KIND);
    let namespace = match ns {
        Some(ns) if cluster && ns != CLUSTER_SCOPED => {
            return Err(anyhow!(
                "`{s}`: {kind} is cluster-scoped: its namespace is `-` (or write KIND/NAME)"
            ));
        }
        Some(ns) => ns,
        None if cluster => CLUSTER_SCOPED,
        None => "default",
    };
    if namespace.is_empty() || name.is_empty() {
        return Err(anyhow!("`{s}`: empty namespace or name"));
    }
    Ok(PolicyKey {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: all, namespace: ignored}
spec: {endpointSelector: {}, ingress: [{}]}
";

    #[test]
    fn keys_namespaces_and_names() {
        let objs = parse("set.yaml", SET, true).expect("valid");
        let keys: Vec<String> = objs.iter().map(|o| o.key.storage_key()).collect();
        assert_eq!(
            keys,
            [
                "CiliumNetworkPolicy/default/web",
                "NetworkPolicy/prod/deny",
                "CiliumClusterwideNetworkPolicy/-/all"
            ]
        );
        // The default namespace is written into the object; a cluster-scoped one is dropped.
        assert_eq!(objs[0].object["metadata"]["namespace"], "default");
        assert!(objs[2].object["metadata"].get("namespace").is_none());
        // YAML numbers stay numbers, strings stay strings.
        assert_eq!(
            objs[0].object["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"],
            "80"
        );
        assert_eq!(
            objs[0].display_name(),
            "ciliumnetworkpolicy.cilium.io/web (namespace default)"
        );
        assert_eq!(
            objs[2].display_name(),
            "ciliumclusterwidenetworkpolicy.cilium.io/all"
        );
        assert_eq!(objs[1].origin, "set.yaml: document 2");
    }

    #[test]
    fn invalid_documents_name_file_document_and_field() {
        let bad = SET.replace("port: \"80\"", "port: \"70000\"");
        let e = parse("set.yaml", &bad, true).expect_err("invalid");
        assert_eq!(e.document, DocRef::Document(1));
        assert_eq!(e.path, "spec.ingress[0].toPorts[0].ports[0].port");
        // Without validation (delete -f) only the envelope matters.
        assert_eq!(parse("set.yaml", &bad, false).expect("envelope").len(), 3);
        let e = parse(
            "x.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n",
            true,
        )
        .expect_err("kind");
        assert!(e.to_string().contains("unknown kind `Deployment`"), "{e}");
        // A Pod record is read as agents read it: namespace `default` filled in, fields named.
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {app: x}}\nspec: {containers: [{name: c, ports: [{name: HTTP, containerPort: 80}]}]}\n";
        let e = parse("p.yaml", pod, true).expect_err("port name");
        assert_eq!(e.path, "spec.containers[0].ports[0].name", "{e}");
        let ok = parse("p.yaml", &pod.replace("HTTP", "http"), true).expect("pod");
        assert_eq!(ok[0].key.storage_key(), "Pod/default/a");
        let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: cilium.io/v2, kind: CiliumNetworkPolicy, metadata: {name: a}, spec: {endpointSelector: {}, ingrss: []}}\n";
        let e = parse("l.yaml", list, true).expect_err("list item");
        assert!(e.path.starts_with("items[0]"), "{e}");
    }

    #[test]
    fn duplicates_and_empty_input_are_refused() {
        let two = vec![
            ("a.yaml".to_owned(), SET.to_owned()),
            ("b.yaml".to_owned(), SET.to_owned()),
        ];
        let e = parse_all(&two).expect_err("duplicate");
        assert!(
            e.to_string().contains("also defined by a.yaml: document 1"),
            "{e}"
        );
        let e = parse_all(&[("e.yaml".to_owned(), "---\n".to_owned())]).expect_err("empty");
        assert!(e.to_string().contains("no policy object"), "{e}");
    }

    #[test]
    fn keys_from_the_command_line() {
        let k = parse_key("cnp/prod/web").expect("key");
        assert_eq!(k.storage_key(), "CiliumNetworkPolicy/prod/web");
        assert_eq!(
            parse_key("NetworkPolicy/deny").expect("key").namespace,
            "default"
        );
        assert_eq!(parse_key("ccnp/all").expect("key").namespace, "-");
        assert!(parse_key("ccnp/prod/all").is_err());
        assert_eq!(
            parse_key("po/shop/api-0").expect("key").storage_key(),
            "Pod/shop/api-0"
        );
        assert!(parse_key("deploy/a/b").is_err());
        assert!(parse_key("web").is_err());
    }
}
