//! The watchers and the writes to the control plane (the blocking client runs on tokio's
//! blocking pool).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use palisade_api::controlplane::PolicyKey;
use palisade_cp_client::Client;
use serde_json::Value;

use crate::translate::{KINDS, Kind, mirrored_from};

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

async fn apply(
    dest: &Arc<Client>,
    kind: Kind,
    source: &str,
    o: &DynamicObject,
) -> Option<PolicyKey> {
    let v = serde_json::to_value(o).unwrap_or(Value::Null);
    let (key, object) = match kind.to_policy(&v, source) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(kind = kind.kind, error = %e, "cannot mirror");
            return None;
        }
    };
    let k = key.clone();
    let applied = with_dest(dest, key.storage_key(), move |d| {
        d.apply_policy(&k, &object)
    })
    .await;
    if applied.is_some() {
        tracing::info!(key = %key.storage_key(), "mirrored");
    }
    Some(key)
}

/// Deletes `key` when the stored object is this mirror's copy.
async fn delete_copy(dest: &Arc<Client>, key: PolicyKey, source: &str) {
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
        }
    }
}

async fn mirror_kind(kube: kube::Client, dest: Arc<Client>, source: String, kind: Kind) {
    let ar = ApiResource {
        group: kind.group.to_owned(),
        version: kind.version.to_owned(),
        api_version: format!("{}/{}", kind.group, kind.version),
        kind: kind.kind.to_owned(),
        plural: kind.plural.to_owned(),
    };
    let api: Api<DynamicObject> = Api::all_with(kube, &ar);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(k) = apply(&dest, kind, &source, &o).await {
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
                        delete_copy(&dest, rec.key, &source).await;
                    }
                }
            }
            Ok(watcher::Event::Apply(o)) => {
                apply(&dest, kind, &source, &o).await;
            }
            Ok(watcher::Event::Delete(o)) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                let key = kind.key(o.metadata.namespace.as_deref(), &name);
                delete_copy(&dest, key, &source).await;
            }
            Err(e) => tracing::warn!(kind = kind.kind, error = %e, "watch failed; retrying"),
        }
    }
}
