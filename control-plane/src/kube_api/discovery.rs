//! Discovery documents (the legacy, unaggregated form: kubectl falls back to it when the server
//! answers `application/json`): `/api` (`APIVersions`), `/api/v1` (`APIResourceList`: namespaces
//! and pods), `/apis` (`APIGroupList`), `/apis/<group>`
//! (`APIGroup`) and `/apis/<group>/<version>` (`APIResourceList`), and `/version`.

use serde_json::{Value, json};

use super::resources::{RESOURCES, group_versions};

/// The verbs every served resource supports.
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `/api`.
pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

/// `/api/v1`: namespaces (their labels are part of their pods' identities) and pods (the labels,
/// service account and named ports agents take for pods a kubelet names without them).
pub fn core_resources() -> Value {
    resources("", "v1").unwrap_or_else(|| json!({}))
}

/// A namespace that exists without a stored object (one policies live in, or `default`).
pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {palisade_policy::namespace::NAME_LABEL: name}},
           "status": {"phase": "Active"}})
}

fn group(name: &str) -> Option<Value> {
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == name)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": name, "versions": versions, "preferredVersion": preferred}))
}

/// `/apis`.
pub fn groups() -> Value {
    let mut names: Vec<&str> = group_versions().into_iter().map(|(g, _)| g).collect();
    names.dedup();
    let groups: Vec<Value> = names.into_iter().filter_map(group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn api_group(name: &str) -> Option<Value> {
    let mut g = group(name)?;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `/apis/<group>/<version>`.
pub fn resources(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| {
            let categories: &[&str] = match (r.group, r.kind) {
                ("cilium.io", _) => &["cilium", "ciliumpolicy"],
                // As the API server lists it: no `kubectl get all` for namespaces.
                (_, "Namespace") => &[],
                _ => &["all"],
            };
            let main = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                   "kind": r.kind, "verbs": VERBS, "shortNames": r.short_names,
                   "categories": categories});
            // The status subresource, listed as an API server lists a CRD's.
            let status = r.status.then(|| {
                json!({"name": format!("{}/status", r.plural), "singularName": "",
                       "namespaced": r.namespaced, "kind": r.kind,
                       "verbs": ["get", "patch", "update"]})
            });
            std::iter::once(main).chain(status)
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version, "resources": resources}))
}

/// `/version`: the Kubernetes version this API imitates, and Palisade's.
pub fn version() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": format!("v1.32.0-palisade.{}", env!("CARGO_PKG_VERSION")),
           "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_both_groups_and_their_resources() {
        let g = groups();
        let names: Vec<&str> = g["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str())
            .collect();
        assert_eq!(names, ["cilium.io", "networking.k8s.io"]);
        let r = resources("cilium.io", "v2").expect("cilium.io/v2");
        let names: Vec<&str> = r["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "ciliumnetworkpolicies",
                "ciliumnetworkpolicies/status",
                "ciliumclusterwidenetworkpolicies",
                "ciliumclusterwidenetworkpolicies/status"
            ]
        );
        assert_eq!(r["resources"][2]["namespaced"], false);
        assert_eq!(
            r["resources"][3]["verbs"],
            json!(["get", "patch", "update"])
        );
        let n = resources("networking.k8s.io", "v1").expect("networking.k8s.io/v1");
        assert_eq!(n["resources"].as_array().map(Vec::len), Some(1));
        assert!(resources("cilium.io", "v1").is_none());
    }

    #[test]
    fn the_core_group_lists_namespaces_and_pods_with_their_status() {
        let core = core_resources();
        assert_eq!(core["groupVersion"], "v1", "{core}");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(names, ["namespaces", "pods", "pods/status"]);
        assert_eq!(core["resources"][1]["namespaced"], true);
        assert_eq!(core["resources"][1]["shortNames"], json!(["po"]));
        assert_eq!(core["resources"][0]["categories"], json!([]));
    }
}
