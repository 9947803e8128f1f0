//! The typed operations of the control plane's REST API (see `control-plane/README.md`).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use palisade_api::controlplane::{
    Endpoint, IdBlock, Identity, NodeRecord, NodeRegistration, PolicyKey, PolicyRecord,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::Result;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::outcome::{ApplyOutcome, WaitOutcome, WatchBatch};
use crate::transport::{Call, Method, Reply, Transport};

/// A blocking client of one control plane (any of its members). Cheap to share by reference
/// across threads; each call may fail over to another member.
pub struct Client {
    transport: Transport,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.transport.servers().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

#[derive(Deserialize)]
struct Revision {
    revision: u64,
}

#[derive(Deserialize)]
struct Existed {
    existed: bool,
}

#[derive(Deserialize)]
struct PolicyList {
    revision: u64,
    items: Vec<PolicyRecord>,
}

#[derive(Deserialize)]
struct WaitDone {
    revision: u64,
    nodes: usize,
}

#[derive(Deserialize)]
struct Laggard {
    node: String,
    acked_revision: u64,
}

#[derive(Deserialize)]
struct WaitTimedOut {
    revision: u64,
    laggards: Vec<Laggard>,
}

fn millis(d: Duration) -> String {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).to_string()
}

fn decode<T: DeserializeOwned>(call: &Call<'_>, body: Value) -> Result<T> {
    serde_json::from_value(body).map_err(|source| ClientError::Decode {
        what: format!("the answer to {}", call.describe()),
        source,
    })
}

fn is_success(r: &Reply) -> bool {
    (200..300).contains(&r.status)
}

impl Client {
    /// A client of the servers in `cfg`. Fails on an empty server list, a malformed URL or an
    /// unusable token; does not contact any server.
    pub fn new(cfg: ClientConfig) -> Result<Client> {
        Ok(Client {
            transport: Transport::new(&cfg)?,
        })
    }

    /// The configured servers, normalized.
    pub fn servers(&self) -> Vec<String> {
        self.transport.servers().map(str::to_owned).collect()
    }

    /// A 2xx answer's body, decoded; any other status is an [`ClientError::Api`].
    fn expect<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T> {
        let r = self.transport.call(call)?;
        if is_success(&r) {
            decode(call, r.body)
        } else {
            Err(ClientError::from_answer(r.status, r.body))
        }
    }

    /// Like [`Client::expect`], with 404 as `None`.
    fn found<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<Option<T>> {
        let r = self.transport.call(call)?;
        match r.status {
            404 => Ok(None),
            _ if is_success(&r) => decode(call, r.body).map(Some),
            status => Err(ClientError::from_answer(status, r.body)),
        }
    }

    // === nodes ===

    /// Registers (or re-registers) a node; answers its record with the pod CIDR it holds.
    pub fn register_node(&self, reg: &NodeRegistration) -> Result<NodeRecord> {
        let body = serde_json::to_value(reg).map_err(|source| ClientError::Decode {
            what: "the node registration".to_owned(),
            source,
        })?;
        let mut call = Call::new(Method::Post, &["v1", "nodes"]);
        call.body = Some(&body);
        self.expect(&call)
    }

    /// Renews a node's lease.
    pub fn heartbeat(&self, node: &str) -> Result<()> {
        let path = ["v1", "nodes", node, "heartbeat"];
        self.expect::<Value>(&Call::new(Method::Post, &path))
            .map(drop)
    }

    /// Records that `node` enforces policy revision `revision`; answers the node's acknowledged
    /// revision (it only moves forward, so it may be higher than `revision`).
    pub fn ack(&self, node: &str, revision: u64) -> Result<u64> {
        let path = ["v1", "nodes", node, "ack"];
        let body = json!({ "revision": revision });
        let mut call = Call::new(Method::Post, &path);
        call.body = Some(&body);
        self.expect::<Revision>(&call).map(|r| r.revision)
    }

    /// Every node as JSON: the record plus `acked_revision`, `last_heartbeat_ms` and `live`.
    pub fn list_nodes(&self) -> Result<Vec<Value>> {
        self.expect::<Items<Value>>(&Call::new(Method::Get, &["v1", "nodes"]))
            .map(|i| i.items)
    }

    /// One node as JSON (see [`Client::list_nodes`]), `None` when unknown.
    pub fn get_node(&self, name: &str) -> Result<Option<Value>> {
        self.found(&Call::new(Method::Get, &["v1", "nodes", name]))
    }

    /// Removes a node (its pod CIDR and endpoints are freed); `false` when it did not exist.
    pub fn delete_node(&self, name: &str) -> Result<bool> {
        self.expect::<Existed>(&Call::new(Method::Delete, &["v1", "nodes", name]))
            .map(|e| e.existed)
    }

    // === identities ===

    /// The identity of a label set, allocated if new (labels are sorted and deduplicated by the
    /// server; the same set always gets the same id).
    pub fn allocate_identity(&self, labels: &[String]) -> Result<Identity> {
        let body = json!({ "labels": labels });
        let mut call = Call::new(Method::Post, &["v1", "identities"]);
        call.body = Some(&body);
        self.expect(&call)
    }

    /// The node's leased id block (a fresh one with `replace`, when it used the old one up).
    pub fn lease_id_block(&self, node: &str, count: u32, replace: bool) -> Result<IdBlock> {
        let body = json!({ "count": count, "replace": replace });
        let path = ["v1", "nodes", node, "id-block"];
        let mut call = Call::new(Method::Post, &path);
        call.body = Some(&body);
        self.expect(&call)
    }

    /// Commits a binding the node made from its block; returns the label set's canonical
    /// identity (another id than `id` when the set already had one: `id` is then its alias).
    pub fn bind_identity(&self, node: &str, id: u32, labels: &[String]) -> Result<Identity> {
        let body = json!({ "id": id, "labels": labels });
        let path = ["v1", "nodes", node, "bindings"];
        let mut call = Call::new(Method::Post, &path);
        call.body = Some(&body);
        self.expect(&call)
    }

    /// Every identity.
    pub fn list_identities(&self) -> Result<Vec<Identity>> {
        self.expect::<Items<Identity>>(&Call::new(Method::Get, &["v1", "identities"]))
            .map(|i| i.items)
    }

    /// One identity, `None` when unknown.
    pub fn get_identity(&self, id: u32) -> Result<Option<Identity>> {
        let id = id.to_string();
        self.found(&Call::new(Method::Get, &["v1", "identities", &id]))
    }

    /// Releases an identity; `false` when it did not exist (409 while an endpoint uses it).
    pub fn release_identity(&self, id: u32) -> Result<bool> {
        let id = id.to_string();
        self.expect::<Existed>(&Call::new(Method::Delete, &["v1", "identities", &id]))
            .map(|e| e.existed)
    }

    // === endpoints ===

    /// Creates or updates the endpoint at `ep.ip`.
    pub fn put_endpoint(&self, ep: &Endpoint) -> Result<Endpoint> {
        let ip = ep.ip.to_string();
        let mut body = json!({ "identity": ep.identity, "node": ep.node });
        if !ep.ports.is_empty() {
            // Only when there are some: a control plane from before named ports refuses the
            // unknown field.
            body["ports"] = json!(ep.ports);
        }
        let path = ["v1", "endpoints", &ip];
        let mut call = Call::new(Method::Put, &path);
        call.body = Some(&body);
        self.expect(&call)
    }

    /// Removes the endpoint at `ip`; `false` when there was none.
    pub fn delete_endpoint(&self, ip: IpAddr) -> Result<bool> {
        let ip = ip.to_string();
        self.expect::<Existed>(&Call::new(Method::Delete, &["v1", "endpoints", &ip]))
            .map(|e| e.existed)
    }

    /// One endpoint, `None` when there is none at `ip`.
    pub fn get_endpoint(&self, ip: IpAddr) -> Result<Option<Endpoint>> {
        let ip = ip.to_string();
        self.found(&Call::new(Method::Get, &["v1", "endpoints", &ip]))
    }

    /// Every endpoint of the cluster.
    pub fn list_endpoints(&self) -> Result<Vec<Endpoint>> {
        self.expect::<Items<Endpoint>>(&Call::new(Method::Get, &["v1", "endpoints"]))
            .map(|i| i.items)
    }

    // === policies ===

    /// Stores `object` under `key` once the server's policy engine accepted it (422 otherwise,
    /// with the engine's field and reason). An identical re-apply changes nothing.
    pub fn apply_policy(&self, key: &PolicyKey, object: &Value) -> Result<ApplyOutcome> {
        let path = ["v1", "policies", &key.kind, &key.namespace, &key.name];
        let mut call = Call::new(Method::Put, &path);
        call.body = Some(object);
        self.expect(&call)
    }

    /// One stored policy object, `None` when absent.
    pub fn get_policy(&self, key: &PolicyKey) -> Result<Option<PolicyRecord>> {
        let path = ["v1", "policies", &key.kind, &key.namespace, &key.name];
        self.found(&Call::new(Method::Get, &path))
    }

    /// The current policy revision and every stored policy object.
    pub fn list_policies(&self) -> Result<(u64, Vec<PolicyRecord>)> {
        self.expect::<PolicyList>(&Call::new(Method::Get, &["v1", "policies"]))
            .map(|l| (l.revision, l.items))
    }

    /// Deletes a policy object (`changed` is false when it was absent).
    pub fn delete_policy(&self, key: &PolicyKey) -> Result<ApplyOutcome> {
        let path = ["v1", "policies", &key.kind, &key.namespace, &key.name];
        self.expect(&Call::new(Method::Delete, &path))
    }

    /// Waits up to `timeout` (the server caps it at 600 s) until every live node acknowledged
    /// `revision` (the current policy revision when `None`).
    pub fn wait_policies(&self, revision: Option<u64>, timeout: Duration) -> Result<WaitOutcome> {
        let mut call = Call::new(Method::Get, &["v1", "policies", "wait"]);
        if let Some(r) = revision {
            call.query.push(("revision", r.to_string()));
        }
        call.query.push(("timeout_ms", millis(timeout)));
        call.hold = timeout;
        let r = self.transport.call(&call)?;
        if is_success(&r) {
            let d: WaitDone = decode(&call, r.body)?;
            return Ok(WaitOutcome::Done {
                revision: d.revision,
                nodes: d.nodes,
            });
        }
        // A 504 with `laggards` is the wait's own timeout; without them (a Raft read timing
        // out) it is an ordinary error.
        if r.status == 504 && r.body.get("laggards").is_some() {
            let t: WaitTimedOut = decode(&call, r.body)?;
            return Ok(WaitOutcome::TimedOut {
                revision: t.revision,
                laggards: t
                    .laggards
                    .into_iter()
                    .map(|l| (l.node, l.acked_revision))
                    .collect(),
            });
        }
        Err(ClientError::from_answer(r.status, r.body))
    }

    // === change feed ===

    /// Long-polls the change feed: answers as soon as there are changes after `from`, or empty
    /// after `timeout` (the server caps it at 300 s), at most `limit` changes.
    /// [`ClientError::Compacted`] when the member's feed no longer reaches back to `from`: read
    /// [`Client::watch_revision`], list, then watch from that revision.
    pub fn watch(&self, from: u64, timeout: Duration, limit: usize) -> Result<WatchBatch> {
        let mut call = Call::new(Method::Get, &["v1", "watch"]);
        call.query.push(("from", from.to_string()));
        call.query.push(("timeout_ms", millis(timeout)));
        call.query.push(("limit", limit.to_string()));
        call.hold = timeout;
        let r = self.transport.call(&call)?;
        match r.status {
            410 => Err(ClientError::Compacted { from }),
            _ if is_success(&r) => decode(&call, r.body),
            status => Err(ClientError::from_answer(status, r.body)),
        }
    }

    /// The current change revision (linearizable): list, then watch from it.
    pub fn watch_revision(&self) -> Result<u64> {
        self.expect::<Revision>(&Call::new(Method::Get, &["v1", "watch", "revision"]))
            .map(|r| r.revision)
    }

    // === cluster ===

    /// The answering member's view of the cluster: `id`, `state`, `leader`, `term`,
    /// `last_log_index`, `commit_index`, `voters`/`learners` with `matched_index`, ...
    pub fn cluster_status(&self) -> Result<Value> {
        self.expect(&Call::new(Method::Get, &["v1", "cluster", "status"]))
    }

    /// The leader's view (only the leader knows what each member matched, hence the lags):
    /// asks the answering member, then the leader it names when that is another member. Falls
    /// back to the first answer when the leader cannot be asked.
    pub fn leader_status(&self) -> Result<Value> {
        let first = self.cluster_status()?;
        if first["state"] == "leader" {
            return Ok(first);
        }
        let Some(addr) = first["leader_api_addr"].as_str() else {
            return Ok(first);
        };
        let call = Call::new(Method::Get, &["v1", "cluster", "status"]);
        match self.transport.call_member(addr, &call) {
            Ok(r) if is_success(&r) => decode(&call, r.body),
            _ => Ok(first),
        }
    }
}
