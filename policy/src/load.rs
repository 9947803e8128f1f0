//! Loading policy objects from text (YAML or JSON, one or more documents, `kind: List`).
//!
//! Pure: callers read files and pass their contents. A file is all or nothing: the first error
//! names the file, the document, the field path and the reason, and no policy of the file is
//! returned.

use palisade_api::crd::{
    CILIUM_API_VERSION, CiliumNetworkPolicy, NETWORKING_API_VERSION, NetworkPolicy,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::error::{DocRef, InputError};
use crate::ir::{self, NormalizedPolicy};

/// Parses and normalizes every policy in one file's contents.
pub fn load_file(file: &str, text: &str) -> Result<Vec<NormalizedPolicy>, InputError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_ref = DocRef::Document(i + 1);
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                return Err(InputError::new(
                    file,
                    doc_ref,
                    "",
                    format!("invalid YAML/JSON: {e}"),
                ));
            }
        };
        load_value(file, doc_ref, "", value, &mut out)?;
    }
    Ok(out)
}

fn typed<T: DeserializeOwned>(
    file: &str,
    doc: &DocRef,
    prefix: &str,
    value: Value,
) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = join(prefix, if inner == "." { "" } else { &inner });
        InputError::new(file, doc.clone(), path, e.into_inner().to_string())
    })
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Loads one document (already parsed), appending its policies. `prefix` is the path of the
/// document inside its container (`items[3]` in a `List`).
pub fn load_value(
    file: &str,
    doc: DocRef,
    prefix: &str,
    value: Value,
    out: &mut Vec<NormalizedPolicy>,
) -> Result<(), InputError> {
    if value.is_null() {
        return Ok(());
    }
    let Some(map) = value.as_mapping() else {
        return Err(InputError::new(
            file,
            doc,
            prefix,
            "a policy document must be a mapping",
        ));
    };
    let get = |k: &str| {
        map.get(Value::String(k.to_string()))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let kind = get("kind");
    let api = get("apiVersion");
    let kind_path = join(prefix, "kind");
    let api_path = join(prefix, "apiVersion");
    let Some(kind) = kind else {
        return Err(InputError::new(file, doc, kind_path, "`kind` is required"));
    };
    let expect_api = |want: &str| -> Result<(), InputError> {
        match &api {
            Some(a) if a == want => Ok(()),
            Some(a) => Err(InputError::new(
                file,
                doc.clone(),
                api_path.clone(),
                format!("`{kind}` needs apiVersion `{want}`, not `{a}`"),
            )),
            None => Err(InputError::new(
                file,
                doc.clone(),
                api_path.clone(),
                "`apiVersion` is required",
            )),
        }
    };
    let field_err =
        |e: ir::FieldError| InputError::new(file, doc.clone(), join(prefix, &e.path), e.reason);
    match kind.as_str() {
        "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => {
            expect_api(CILIUM_API_VERSION)?;
            let p: CiliumNetworkPolicy = typed(file, &doc, prefix, value)?;
            let cw = kind == "CiliumClusterwideNetworkPolicy";
            out.push(ir::normalize_cilium(&p, cw).map_err(field_err)?);
        }
        "NetworkPolicy" => {
            expect_api(NETWORKING_API_VERSION)?;
            let p: NetworkPolicy = typed(file, &doc, prefix, value)?;
            out.push(ir::normalize_k8s(&p).map_err(field_err)?);
        }
        "List" => {
            let items = map
                .get(Value::String("items".into()))
                .cloned()
                .unwrap_or(Value::Null);
            let Value::Sequence(items) = items else {
                return Err(InputError::new(
                    file,
                    doc,
                    join(prefix, "items"),
                    "a List needs an `items` sequence",
                ));
            };
            for (i, item) in items.into_iter().enumerate() {
                load_value(
                    file,
                    doc.clone(),
                    &join(prefix, &format!("items[{i}]")),
                    item,
                    out,
                )?;
            }
        }
        other => {
            return Err(InputError::new(
                file,
                doc,
                kind_path,
                format!(
                    "unknown kind `{other}` (expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_json() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}}\n---\n{\"apiVersion\": \"cilium.io/v2\", \"kind\": \"CiliumNetworkPolicy\", \"metadata\": {\"name\": \"b\"}, \"spec\": {\"endpointSelector\": {}, \"ingress\": [{}]}}\n---\n";
        let ps = load_file("f.yaml", text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].key.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn errors_name_file_document_path_and_reason() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}}\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: b}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"70000\"\n";
        let e = load_file("f.yaml", text).unwrap_err();
        assert_eq!(e.document, DocRef::Document(2));
        assert_eq!(e.path, "spec.ingress[0].toPorts[0].ports[0].port");
        assert!(e.reason.contains("out of range"), "{e}");
        assert!(
            e.to_string()
                .starts_with("f.yaml: document 2: `spec.ingress[0].toPorts[0].ports[0].port`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: b}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpointz: []\n";
        let e = load_file("f.yaml", text).unwrap_err();
        assert!(e.path.starts_with("spec.ingress[0]"), "{e}");
        assert!(e.reason.contains("unknown field `fromEndpointz`"), "{e}");
    }
}
