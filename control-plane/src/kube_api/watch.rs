//! `?watch=1`: a stream of newline-separated `{"type", "object"}` events over a chunked 200
//! answer, as the Kubernetes API frames them. From `resourceVersion` N > 0 it streams every policy
//! change after N; without one (or with `0`) it first sends every matching object as `ADDED`.
//! With `allowWatchBookmarks=true` an idle stream sends a `BOOKMARK` (an object carrying only the
//! current resource version) every [`BOOKMARK_EVERY`]. A version this member's change feed no
//! longer reaches back to ends the stream with an `ERROR` event carrying a `410 Expired`
//! `Status` (what client-go's reflector expects: list again). Deletions carry the object's name
//! and the revision of the deletion only: the feed keeps no copy of the last state.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resources::{CLUSTER_SCOPE, Resource};
use super::status::KubeError;
use crate::app::PolicyKey;
use crate::ops::{Consistency, OpError, Ops};

/// How long an idle watch waits before it sends a bookmark (when asked to).
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// The longest a watch lasts without `timeoutSeconds` (clients re-watch from their last version).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One `labelSelector` / `fieldSelector` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn parse(term: &str) -> Requirement {
        if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some(k) = term.trim().strip_prefix('!') {
            Requirement::NotExists(k.trim().to_owned())
        } else {
            Requirement::Exists(term.trim().to_owned())
        }
    }

    fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v),
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        }
    }
}

fn requirements(q: &HashMap<String, String>, param: &str) -> Vec<Requirement> {
    q.get(param)
        .map(|s| {
            s.split(',')
                .filter(|t| !t.trim().is_empty())
                .map(Requirement::parse)
                .collect()
        })
        .unwrap_or_default()
}

/// Which objects a list or watch covers.
#[derive(Debug, Clone)]
pub struct Filter {
    res: &'static Resource,
    namespace: Option<String>,
    fields: Vec<Requirement>,
    labels: Vec<Requirement>,
}

impl Filter {
    /// The filter of a request on `res` (in `namespace`, when given) with `q`'s selectors; only
    /// `metadata.name` and `metadata.namespace` are supported field selectors (as for CRDs).
    pub fn new(
        res: &'static Resource,
        namespace: Option<String>,
        q: &HashMap<String, String>,
    ) -> Result<Filter, KubeError> {
        let fields = requirements(q, "fieldSelector");
        for f in &fields {
            let (Requirement::Equals(k, _) | Requirement::NotEquals(k, _)) = f else {
                return Err(KubeError::bad_request(format!(
                    "fieldSelector: `{f:?}` is not `field=value` or `field!=value`"
                )));
            };
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(KubeError::bad_request(format!(
                    "fieldSelector: field label not supported: {k}"
                )));
            }
        }
        Ok(Filter {
            res,
            namespace,
            fields,
            labels: requirements(q, "labelSelector"),
        })
    }

    /// Whether the stored key is in scope (kind, namespace, field selectors).
    pub fn matches_key(&self, key: &PolicyKey) -> bool {
        if key.kind != self.res.kind {
            return false;
        }
        if let Some(ns) = &self.namespace
            && key.namespace != *ns
        {
            return false;
        }
        let namespace = (key.namespace != CLUSTER_SCOPE).then(|| key.namespace.clone());
        self.fields.iter().all(|f| {
            f.matches(|k| match k {
                "metadata.name" => Some(key.name.clone()),
                "metadata.namespace" => namespace.clone(),
                _ => None,
            })
        })
    }

    /// Whether the object's labels match the label selector.
    pub fn matches_object(&self, o: &Value) -> bool {
        let labels = &o["metadata"]["labels"];
        self.labels
            .iter()
            .all(|l| l.matches(|k| labels.get(k).and_then(Value::as_str).map(str::to_owned)))
    }
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// The watch stream's state between polls.
struct Watcher {
    ops: Ops,
    filter: Filter,
    from: u64,
    bookmarks: bool,
    deadline: Instant,
    /// Events ready to send.
    pending: Vec<Bytes>,
    done: bool,
}

impl Watcher {
    /// The next chunk: pending events first, then the next poll's.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if !self.pending.is_empty() {
                return Some(self.pending.remove(0));
            }
            if self.done || Instant::now() >= self.deadline {
                return None;
            }
            let wait = self
                .deadline
                .saturating_duration_since(Instant::now())
                .min(BOOKMARK_EVERY);
            match self.ops.next_policy_changes(self.from, wait).await {
                Ok((revision, changes)) => {
                    for c in changes {
                        let Some(key) = parse_key(&c.key) else {
                            continue;
                        };
                        if !self.filter.matches_key(&key) {
                            continue;
                        }
                        let (kind, object) = match &c.record {
                            Some(r) if r.created_revision == r.revision => {
                                ("ADDED", self.filter.res.render(r))
                            }
                            Some(r) => ("MODIFIED", self.filter.res.render(r)),
                            None => ("DELETED", self.filter.res.tombstone(&key, c.revision)),
                        };
                        if self.filter.matches_object(&object) || kind == "DELETED" {
                            self.pending.push(event(kind, &object));
                        }
                    }
                    let idle = self.pending.is_empty();
                    self.from = revision;
                    if idle && self.bookmarks && Instant::now() < self.deadline {
                        let marker = json!({"apiVersion": self.filter.res.api_version(),
                            "kind": self.filter.res.kind,
                            "metadata": {"resourceVersion": revision.to_string()}});
                        self.pending.push(event("BOOKMARK", &marker));
                    }
                }
                Err(OpError::Gone { from }) => {
                    let status = KubeError::expired(format!(
                        "too old resource version: {from} (this member's change feed no longer reaches back to it)"
                    ))
                    .status();
                    self.pending.push(event("ERROR", &status));
                    self.done = true;
                }
                Err(e) => {
                    let status = KubeError::from_op(self.filter.res, "", e).status();
                    self.pending.push(event("ERROR", &status));
                    self.done = true;
                }
            }
        }
    }
}

/// `kind/namespace/name` back into a key.
fn parse_key(s: &str) -> Option<PolicyKey> {
    let mut parts = s.splitn(3, '/');
    Some(PolicyKey {
        kind: parts.next()?.to_owned(),
        namespace: parts.next()?.to_owned(),
        name: parts.next()?.to_owned(),
    })
}

/// Starts a watch (see the module doc).
pub async fn watch(
    ops: Ops,
    filter: Filter,
    q: &HashMap<String, String>,
) -> Result<Response, KubeError> {
    let timeout = match q.get("timeoutSeconds") {
        None => DEFAULT_TIMEOUT,
        Some(s) => Duration::from_secs(s.parse().map_err(|_| {
            KubeError::bad_request(format!("timeoutSeconds: `{s}` is not a number of seconds"))
        })?),
    };
    let rv = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            KubeError::bad_request(format!("resourceVersion: `{s}` is not a resource version"))
        })?),
    };
    let mut pending = Vec::new();
    let from = match rv {
        Some(n) => n,
        None => {
            // The current state as ADDED events, then the changes after it.
            let (revision, records) = ops
                .list_policies(Consistency::Linearizable)
                .await
                .map_err(|e| KubeError::from_op(filter.res, "", e))?;
            let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
            for r in records.iter().filter(|r| filter.matches_key(&r.key)) {
                let o = filter.res.render(r);
                if filter.matches_object(&o) {
                    by_key.insert(r.key.storage_key(), o);
                }
            }
            pending.extend(by_key.values().map(|o| event("ADDED", o)));
            revision
        }
    };
    let watcher = Watcher {
        ops,
        filter,
        from,
        bookmarks: matches!(
            q.get("allowWatchBookmarks").map(String::as_str),
            Some("true" | "1")
        ),
        deadline: Instant::now() + timeout,
        pending,
        done: false,
    };
    let stream = futures::stream::unfold(watcher, |mut w| async move {
        w.next().await.map(|b| (Ok::<_, Infallible>(b), w))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_api::resources::RESOURCES;

    #[test]
    fn selectors_filter_keys_and_labels() {
        let q: HashMap<String, String> = [
            ("fieldSelector".to_owned(), "metadata.name=a".to_owned()),
            ("labelSelector".to_owned(), "app=web,!legacy".to_owned()),
        ]
        .into();
        let f = Filter::new(&RESOURCES[0], Some("default".into()), &q).expect("filter");
        assert!(f.matches_key(&RESOURCES[0].key(Some("default"), "a")));
        assert!(!f.matches_key(&RESOURCES[0].key(Some("default"), "b")));
        assert!(!f.matches_key(&RESOURCES[0].key(Some("prod"), "a")));
        assert!(f.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!f.matches_object(&json!({"metadata": {"labels": {"app": "web", "legacy": "1"}}})));
        let bad: HashMap<String, String> =
            [("fieldSelector".to_owned(), "spec.x=1".to_owned())].into();
        let e = Filter::new(&RESOURCES[0], None, &bad).expect_err("unsupported field");
        assert!(e.message.contains("spec.x"), "{e:?}");
    }
}
