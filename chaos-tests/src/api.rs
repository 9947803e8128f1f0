//! The calls the suite records, made over plain HTTP to one member at a time (no failover, no
//! retry: the test decides where each call goes, and sees exactly what became of it). Writes
//! carry the caller's `Idempotency-Key`, so the storm can retry one elsewhere and have it take
//! effect once.

use std::time::Duration;

use serde_json::{Value, json};

use crate::models::Allocated;

/// Why a call has no answer, split by what it means for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No connection was made: the request never reached a server.
    NotSent(String),
    /// The server refused it with a 4xx: it was not applied.
    Refused(u16, String),
    /// Anything else (a timeout, a reset, a 5xx): it may or may not have been applied.
    Unknown(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotSent(e) => write!(f, "not sent: {e}"),
            CallError::Refused(s, e) => write!(f, "refused ({s}): {e}"),
            CallError::Unknown(e) => write!(f, "unknown outcome: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

/// The policy kind and namespace every recorded policy lives in.
pub const POLICY_PATH: &str = "/v1/policies/CiliumNetworkPolicy/default";

/// A policy object named `name` whose distinguishing integer (its port) is `value`.
pub fn policy_object(name: &str, value: u64) -> Value {
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": name}},
                 "ingress": [{"toPorts": [{"ports": [{"port": value.to_string(), "protocol": "TCP"}]}]}]}
    })
}

/// The distinguishing integer of a stored policy object.
pub fn policy_value(object: &Value) -> Option<u64> {
    object["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"]
        .as_str()?
        .parse()
        .ok()
}

/// One member's API.
pub struct Api {
    http: reqwest::blocking::Client,
    base: String,
}

impl Api {
    /// A client of the member at `base` (`http://ip:port`); each call gives up after `timeout`.
    /// Build it on the thread (and so in the network namespace) that will use it.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Api> {
        Ok(Api {
            http: reqwest::blocking::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Result<(u16, Value), CallError> {
        let resp = req.send().map_err(|e| {
            if e.is_connect() && !e.is_timeout() {
                CallError::NotSent(e.to_string())
            } else {
                CallError::Unknown(e.to_string())
            }
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp
            .json()
            .map_err(|e| CallError::Unknown(format!("{status}: {e}")))?;
        match status {
            200..=299 => Ok((status, body)),
            400..=499 => Err(CallError::Refused(status, body.to_string())),
            _ => Err(CallError::Unknown(format!("{status}: {body}"))),
        }
    }

    /// `POST /v1/identities` under idempotency key `key`.
    pub fn allocate(&self, labels: &[String], key: &str) -> Result<Allocated, CallError> {
        let (status, v) = self.send(
            self.http
                .post(format!("{}/v1/identities", self.base))
                .header("Idempotency-Key", key)
                .json(&json!({ "labels": labels })),
        )?;
        let id = v["id"]
            .as_u64()
            .ok_or_else(|| CallError::Unknown(format!("no id in {v}")))?;
        Ok(Allocated {
            id,
            created: status == 201,
        })
    }

    /// `PUT` policy `name` with value `value` under idempotency key `key`: the revision and
    /// whether it changed anything.
    pub fn apply(&self, name: &str, value: u64, key: &str) -> Result<(u64, bool), CallError> {
        let (_, v) = self.send(
            self.http
                .put(format!("{}{POLICY_PATH}/{name}", self.base))
                .header("Idempotency-Key", key)
                .json(&policy_object(name, value)),
        )?;
        written(&v)
    }

    /// `DELETE` policy `name` under idempotency key `key`.
    pub fn delete(&self, name: &str, key: &str) -> Result<(u64, bool), CallError> {
        let (_, v) = self.send(
            self.http
                .delete(format!("{}{POLICY_PATH}/{name}", self.base))
                .header("Idempotency-Key", key),
        )?;
        written(&v)
    }

    /// `GET` policy `name` (linearizable read): its value and last-changed revision, `None` when
    /// absent.
    pub fn get(&self, name: &str) -> Result<Option<(u64, u64)>, CallError> {
        match self.send(self.http.get(format!("{}{POLICY_PATH}/{name}", self.base))) {
            Ok((_, v)) => {
                let value = policy_value(&v["object"])
                    .ok_or_else(|| CallError::Unknown(format!("no value in {v}")))?;
                let rev = v["revision"]
                    .as_u64()
                    .ok_or_else(|| CallError::Unknown(format!("no revision in {v}")))?;
                Ok(Some((value, rev)))
            }
            Err(CallError::Refused(404, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The policy revision (`GET /v1/policies`).
    pub fn policy_revision(&self) -> Result<u64, CallError> {
        let (_, v) = self.send(self.http.get(format!("{}/v1/policies", self.base)))?;
        v["revision"]
            .as_u64()
            .ok_or_else(|| CallError::Unknown(format!("no revision in {v}")))
    }

    /// Every identity as (first label, id); `local` reads this member's applied state without
    /// asking the leader (to see what this member itself holds).
    pub fn identities(&self, local: bool) -> Result<Vec<(String, u64)>, CallError> {
        let q = if local { "?consistency=local" } else { "" };
        let (_, v) = self.send(self.http.get(format!("{}/v1/identities{q}", self.base)))?;
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some((i["labels"][0].as_str()?.to_owned(), i["id"].as_u64()?)))
            .collect())
    }

    /// `GET /v1/cluster/status`.
    pub fn status(&self) -> Result<Value, CallError> {
        Ok(self
            .send(self.http.get(format!("{}/v1/cluster/status", self.base)))?
            .1)
    }
}

fn written(v: &Value) -> Result<(u64, bool), CallError> {
    match (v["revision"].as_u64(), v["changed"].as_bool()) {
        (Some(r), Some(c)) => Ok((r, c)),
        _ => Err(CallError::Unknown(format!("unexpected answer {v}"))),
    }
}
