//! The watchers, the writes to the control plane (the blocking client runs on tokio's
//! blocking pool) and the status written back on each source object.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use palisade_api::controlplane::PolicyKey;
use palisade_cp_client::{Client, ClientError};
use serde_json::Value;

use crate::metrics;
use crate::translate::{KINDS, Kind, Outcome, mirrored_from, status_patch};

/// Why the mirror stopped.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A watcher task ended abnormally.
    #[error("the watcher of `{kind}` stopped: {reason}")]
    Watcher {
        /// The kind it watched.
        kind: &'static str,
        /// Why.
        reason: String,
    },
}

/// Mirrors every kind of [`KINDS`] from the cluster `kube` into `dest`, naming the copies'
/// source `source`. Runs until a watcher task fails (watch errors themselves are retried with
/// kube-rs's default backoff).
pub async fn run(kube: kube::Client, dest: Client, source: String) -> Result<(), MirrorError> {
    let dest = Arc::new(dest);
    let mut tasks = Vec::new();
    for kind in KINDS {
        let (kube, dest, source) = (kube.clone(), dest.clone(), source.clone());
        tasks.push((
            kind.kind,
            tokio::spawn(mirror_kind(kube, dest, source, kind)),
        ));
    }
    let mut outcome = Ok(());
    for (kind, t) in tasks {
        if let Err(e) = t.await {
            outcome = Err(MirrorError::Watcher {
                kind,
                reason: e.to_string(),
            });
            break;
        }
    }
    // The blocking client owns a runtime of its own: drop it where blocking is allowed.
    let _ = tokio::task::spawn_blocking(move || drop(dest)).await;
    outcome
}

/// Runs `f` with the control-plane client on the blocking pool; logs and drops its error (the
/// next event or resync retries).
async fn with_dest<T: Send + 'static>(
    dest: &Arc<Client>,
    what: String,
    f: impl FnOnce(&Client) -> Result<T, palisade_cp_client::ClientError> + Send + 'static,
) -> Option<T> {
    let d = dest.clone();
    match tokio::task::spawn_blocking(move || f(&d)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(%what, error = %e, "control plane refused");
            None
        }
        Err(e) => {
            tracing::warn!(%what, error = %e, "control-plane call panicked");
            None
        }
    }
}

/// What this mirror last stored of each object of a kind with no status to write back: an event
/// whose copy is the same is not sent again (a pod's status churn — conditions, container states,
/// restarts — makes many events and no change to its copy). Emptied on every (re)list, whose
/// objects are stored again (a no-op for unchanged ones).
type Copies = BTreeMap<String, Value>;

/// The objects of a kind whose copy this mirror keeps in the control plane (storage keys), for
/// `palisade_mirror_objects`. Kept across re-lists: the copies stay while the watch restarts.
type Held = BTreeSet<String>;

/// Copies `o` into the control plane, then records the outcome on `o`'s status (kinds with
/// the subresource). Returns the copy's key (`None` when `o` cannot be translated).
async fn apply(
    kube: &kube::Client,
    dest: &Arc<Client>,
    kind: Kind,
    source: &str,
    o: &DynamicObject,
    copies: &mut Copies,
    held: &mut Held,
) -> Option<PolicyKey> {
    let v = serde_json::to_value(o).unwrap_or(Value::Null);
    let (key, object) = match kind.to_policy(&v, source) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(kind = kind.kind, error = %e, "cannot mirror");
            return None;
        }
    };
    if !kind.needs_copy(&object) {
        // A namespace without labels: no copy, and an earlier one (it had labels) goes.
        copies.remove(&key.storage_key());
        held.remove(&key.storage_key());
        delete_copy(dest, kind, key, source).await;
        return None;
    }
    if !kind.status && copies.get(&key.storage_key()) == Some(&object) {
        return Some(key);
    }
    let k = key.clone();
    let sent = object.clone();
    let outcome = with_dest(dest, key.storage_key(), move |d| store(d, &k, &sent)).await;
    match &outcome {
        Some(Outcome::Accepted { revision }) => {
            tracing::info!(key = %key.storage_key(), revision, "mirrored");
            metrics::applied(kind.kind, "accepted");
            held.insert(key.storage_key());
            if !kind.status {
                copies.insert(key.storage_key(), object);
            }
        }
        Some(Outcome::Rejected { message }) => {
            tracing::warn!(key = %key.storage_key(), %message, "the control plane refused the copy");
            metrics::applied(kind.kind, "rejected");
            held.remove(&key.storage_key());
        }
        // Unreachable or failing: no status, the next event or resync retries.
        None => metrics::applied(kind.kind, "error"),
    }
    if kind.status
        && let Some(outcome) = outcome
    {
        write_status(kube, kind, o, &v, &outcome).await;
    }
    Some(key)
}

/// Stores `object` under `key`: the copy's revision, or the engine's refusal. Other errors
/// (the control plane unreachable, a refused token) are returned: they say nothing about the
/// object.
fn store(d: &Client, key: &PolicyKey, object: &Value) -> Result<Outcome, ClientError> {
    match d.apply_policy(key, object) {
        Ok(a) if a.changed => Ok(Outcome::Accepted {
            revision: a.revision,
        }),
        // Unchanged: the answer's revision is the current one, not the copy's.
        Ok(a) => Ok(Outcome::Accepted {
            revision: d.get_policy(key)?.map_or(a.revision, |r| r.revision),
        }),
        Err(ClientError::Api {
            status: 400 | 422,
            message,
            field,
            ..
        }) => Ok(Outcome::rejected(field.as_deref(), &message)),
        Err(e) => Err(e),
    }
}

/// Patches the status of the source object `o` (`v` as JSON) with `outcome`, unless it already
/// records it. A failure is logged: the next event or resync writes it again.
async fn write_status(
    kube: &kube::Client,
    kind: Kind,
    o: &DynamicObject,
    v: &Value,
    outcome: &Outcome,
) {
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let Some(patch) = status_patch(v, outcome, &now) else {
        return;
    };
    let name = o.metadata.name.clone().unwrap_or_default();
    let ar = kind.api_resource();
    let api: Api<DynamicObject> = match (&o.metadata.namespace, kind.namespaced) {
        (Some(ns), true) => Api::namespaced_with(kube.clone(), ns, &ar),
        _ => Api::all_with(kube.clone(), &ar),
    };
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(kind = kind.kind, %name, "status written");
            metrics::status_write(kind.kind, "written");
        }
        Err(e) => {
            tracing::warn!(kind = kind.kind, %name, error = %e, "cannot write the status");
            metrics::status_write(kind.kind, "failed");
        }
    }
}

/// Deletes `key` when the stored object is this mirror's copy.
async fn delete_copy(dest: &Arc<Client>, kind: Kind, key: PolicyKey, source: &str) {
    let k = key.clone();
    let stored = with_dest(dest, key.storage_key(), move |d| d.get_policy(&k)).await;
    if let Some(Some(rec)) = stored
        && mirrored_from(&rec.object, source)
    {
        let k = key.clone();
        if with_dest(dest, key.storage_key(), move |d| d.delete_policy(&k))
            .await
            .is_some()
        {
            tracing::info!(key = %key.storage_key(), "deleted mirrored copy");
            metrics::deleted(kind.kind);
        }
    }
}

async fn mirror_kind(kube: kube::Client, dest: Arc<Client>, source: String, kind: Kind) {
    let api: Api<DynamicObject> = Api::all_with(kube.clone(), &kind.api_resource());
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut copies = Copies::new();
    let mut held = Held::new();
    let mut lists = 0u64;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => {
                listed.clear();
                copies.clear();
                if lists > 0 {
                    metrics::watch_restarted(kind.kind);
                }
                lists += 1;
            }
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(k) =
                    apply(&kube, &dest, kind, &source, &o, &mut copies, &mut held).await
                {
                    listed.insert(k.storage_key());
                }
            }
            Ok(watcher::Event::InitDone) => {
                // A resync: copies of objects the cluster no longer has go.
                let all = with_dest(&dest, "list".into(), |d| d.list_policies()).await;
                for rec in all.map(|(_, items)| items).unwrap_or_default() {
                    if rec.key.kind == kind.kind
                        && !listed.contains(&rec.key.storage_key())
                        && mirrored_from(&rec.object, &source)
                    {
                        held.remove(&rec.key.storage_key());
                        delete_copy(&dest, kind, rec.key, &source).await;
                    }
                }
            }
            Ok(watcher::Event::Apply(o)) => {
                apply(&kube, &dest, kind, &source, &o, &mut copies, &mut held).await;
            }
            Ok(watcher::Event::Delete(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                let key = kind.key(o.metadata.namespace.as_deref(), &name);
                copies.remove(&key.storage_key());
                held.remove(&key.storage_key());
                delete_copy(&dest, kind, key, &source).await;
            }
            Err(e) => {
                tracing::warn!(kind = kind.kind, error = %e, "watch failed; retrying");
                metrics::watch_error(kind.kind);
            }
        }
        metrics::held(kind.kind, held.len());
    }
}

impl Kind {
    /// The kube-rs description of the kind.
    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_owned(),
            version: self.version.to_owned(),
            api_version: self.api_version(),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }
}
